r"""Regenerate ``tests/golden/dpm_inverse.npz``: diffusers' ``DPMSolverMultistepInverseScheduler`` loops in float64.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_dpm_inverse_golden.py

DPM-Solver++ run upwards as diffusers' inverse scheduler runs it: the model at each label of its ascending
``timesteps`` (linspace from label 0, leading from ``steps_offset``, trailing to the noisiest label), each step
to the next label's sigma and the last to the noisiest label's (``trailing``: the noisiest label again, a
zero-length step); on its sigma grids (``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``)
through those noise levels, ascending, at their rounded (Karras) or truncated labels, the last step zero-length at
the noisiest (its sigmas recomputed in float64 by its own ``_convert_to_karras`` etc.). Stable Diffusion's schedule; the scheduler's tables replaced by their float64 values
(``float64_tables``), its sigmas recomputed in float64 at its labels after ``set_timesteps`` (which casts them
to float32), torch's default dtype float64, and its module's ``torch.float32`` float64 (its step casts the
sample).

The model is exact and closed form (data :math:`N(\mu, s^2 I)`, :data:`MU` = 0.5, ``S`` = 0.8; thresholding
cases 2.0). The file holds ``alphas_cumprod``, ``x0`` (``(8, 3)``, ``default_rng(6)``) and per case
``<name>/<order>/<steps>``: ``config``, ``labels`` (ascending), ``sigmas`` and ``final``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

import diffusers
from diffusers.schedulers import scheduling_dpmsolver_multistep_inverse as inverse_module
from _golden import Float32As64, converted_sigmas, float64_tables, write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "dpm_inverse.npz")
MU, D, B = 0.5, 3, 8
BASE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CASES = [("linspace", order, steps, {"solver_order": order}) for order in (1, 2, 3) for steps in (10, 16)]
CASES += [
    ("leading", 2, 10, {"solver_order": 2, "timestep_spacing": "leading", "steps_offset": 1}),
    ("trailing", 2, 10, {"solver_order": 2, "timestep_spacing": "trailing"}),
    ("heun", 2, 10, {"solver_order": 2, "solver_type": "heun"}),
    ("no_lower_order_final", 3, 10, {"solver_order": 3, "lower_order_final": False}),
    ("euler_at_final", 2, 16, {"solver_order": 2, "euler_at_final": True}),
    ("v_prediction", 2, 10, {"solver_order": 2, "prediction_type": "v_prediction"}),
    ("thresholding", 2, 10, {"solver_order": 2, "thresholding": True, "sample_max_value": 1.5}),
]
# its sigma grids: ascending from label 0's sigma to the noisiest label's, then a zero-length last step there
CASES += [
    ("karras_sigmas", 2, 10, {"solver_order": 2, "use_karras_sigmas": True}),
    ("karras_sigmas_v_prediction", 2, 10, {"solver_order": 2, "use_karras_sigmas": True,
                                           "prediction_type": "v_prediction", "lower_order_final": False}),
    ("exponential_sigmas", 2, 10, {"solver_order": 2, "use_exponential_sigmas": True}),
    ("beta_sigmas", 3, 10, {"solver_order": 3, "use_beta_sigmas": True}),
]


def acp64() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)


def scale(fields: dict) -> float:
    return 2.0 if fields.get("thresholding") else 0.8


def model(x: np.ndarray, label: int, prediction_type: str, s: float) -> np.ndarray:
    a2 = acp64()[label]
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    eps = sigma * (x - a * MU) / (a2 * s * s + sigma * sigma)
    if prediction_type == "epsilon":
        return eps
    return a * eps - sigma * (MU + a * s * s * (x - a * MU) / (a2 * s * s + sigma * sigma))


def run(fields: dict, steps: int, x0: np.ndarray):
    sched = diffusers.DPMSolverMultistepInverseScheduler(**BASE, **fields)
    float64_tables(sched, torch.tensor(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dtype=torch.float64))
    sched.set_timesteps(steps)
    train = ((1 - acp64()) / acp64()) ** 0.5
    labels = sched.timesteps.numpy()
    grid = converted_sigmas(sched, fields, train, steps)  # its own conversion of the float64 training sigmas
    if grid is not None:
        assert len(np.unique(labels)) == steps, "diffusers dropped a repeated label"
        sigmas = torch.tensor(np.concatenate([grid, grid[-1:]]), dtype=torch.float64)
    else:
        sigmas = torch.tensor(np.concatenate([train[labels], [train[999]]]), dtype=torch.float64)
    assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-6, atol=0), "sigmas changed"
    sched.sigmas = sigmas
    x = torch.tensor(x0[..., None], dtype=torch.float64)  # (B, C, 1): thresholding needs a pixel axis
    for t in sched.timesteps:
        out = model(x.numpy(), int(t), fields.get("prediction_type", "epsilon"), scale(fields))
        x = sched.step(torch.tensor(out, dtype=torch.float64), t, x).prev_sample
    return labels.astype(np.int64), sigmas.numpy(), x.numpy()[..., 0]


def main() -> None:
    torch.set_default_dtype(torch.float64)
    inverse_module.torch = Float32As64(torch)
    try:
        x0 = MU + 0.8 * np.random.default_rng(6).normal(size=(B, D))
        arrays = {"x0": x0, "alphas_cumprod": acp64()}
        for name, order, steps, fields in CASES:
            key = f"{name}/{order}/{steps}"
            labels, sigmas, final = run(fields, steps, x0)
            assert np.all(np.isfinite(final)), key
            arrays.update({f"{key}/config": np.array(json.dumps(fields)), f"{key}/labels": labels,
                           f"{key}/sigmas": sigmas, f"{key}/final": final})
    finally:
        inverse_module.torch = torch
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
