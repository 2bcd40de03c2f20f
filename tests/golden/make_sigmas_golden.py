r"""Regenerate ``tests/golden/sigmas.npz``: diffusers' DPMSolverMultistep, UniPC and DEIS loops on their sigma grids
(``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``, ``use_lu_lambdas``) and with
``lambda_min_clipped``, ``euler_at_final`` and ``final_sigmas_type="sigma_min"``, in float64.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_sigmas_golden.py

Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels), an epsilon model. The
schedulers run in float64: after construction ``betas``, ``alphas``, ``alphas_cumprod``, ``alpha_t``,
``sigma_t``, ``lambda_t`` and ``sigmas`` are replaced by their float64 values (computed as their
``__init__`` does), torch's default dtype is float64 (UniPC's step builds tensors of it), and
DPMSolverMultistep's module sees a ``torch`` whose ``float32`` is float64 (its step casts the sample to
``torch.float32``). ``set_timesteps`` casts the step's sigmas to float32; they are recomputed after it in
float64 by the scheduler's own ``_convert_to_karras`` (..._lu, _exponential, _beta) from the float64
training sigmas, or at the labels for label grids, and checked to round to diffusers' own. The labels
(``timesteps``) are diffusers' own: computed in float64 before its cast.

The model is exact and closed form (a test re-runs it without torch): data :math:`x_0 \sim N(\mu, s^2 I)`
(:data:`MU` = 0.5, :data:`S` = 0.8, ``D = 3``) and at label ``n`` with :math:`a^2 =` ``alphas_cumprod[n]``
:math:`\hat\epsilon = \sigma(x - a\mu)/(a^2 s^2 + \sigma^2)`.

The file holds ``x_T`` (``(8, 3)``, ``default_rng(9)``), ``alphas_cumprod`` (float64) and per case
``<scheduler>/<option>/<order>/<steps>``: ``config`` (the JSON of the scheduler's extra fields),
``labels``, ``sigmas`` (float64, the last being 0 or sigma_min, or on a sigma grid with ``sigma_min`` its last
sigma again: a zero-length last step), ``final`` (the last ``prev_sample``) and ``diffusers_nan``: where
diffusers' zero-length last step returns NaN (DPM-Solver++(3M) without ``lower_order_final`` lowering it, at
15 steps or more: its ``r0 / (r0 + r1)`` is inf / inf), ``final`` is the sample before that step, the step's
limit (every term of the update vanishes with ``h``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

import diffusers
from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_module
from _golden import Float32As64, float64_tables, write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "sigmas.npz")
MU, S, D, B = 0.5, 0.8, 3, 8
BASE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
GRIDS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")

# (scheduler, option name, extra config fields, order, steps)
CASES = [("DPMSolverMultistep", field.removeprefix("use_"), {field: True}, 2, steps)
         for field in GRIDS for steps in (10, 25)]
CASES += [
    ("DPMSolverMultistep", "karras_sigmas", {"use_karras_sigmas": True}, 3, 10),
    ("DPMSolverMultistep", "lambda_min_clipped", {"lambda_min_clipped": -3.0}, 2, 10),
    ("DPMSolverMultistep", "lambda_min_clipped_trailing", {"lambda_min_clipped": -3.0, "timestep_spacing": "trailing"},
     2, 10),
    ("DPMSolverMultistep", "euler_at_final", {"euler_at_final": True, "final_sigmas_type": "sigma_min"}, 2, 10),
    ("DPMSolverMultistep", "euler_at_final", {"euler_at_final": True, "final_sigmas_type": "sigma_min"}, 3, 10),
]
CASES += [("UniPCMultistep", field.removeprefix("use_"), {field: True}, order, 10)
          for field in GRIDS[:3] for order in (2, 3)]
# DEIS on its sigma grids: they end at sigma_min, then (always) a zero-length step
CASES += [("DEISMultistep", grid.removeprefix("use_"), {grid: True}, order, 10)
          for grid, order in (("use_karras_sigmas", 2), ("use_exponential_sigmas", 3), ("use_beta_sigmas", 2))]
# final_sigmas_type="sigma_min" on a sigma grid: the grid ends at sigma_min, then a zero-length step
CASES += [("DPMSolverMultistep", f"{grid.removeprefix('use_')}_sigma_min", {grid: True, "final_sigmas_type": "sigma_min"},
           order, steps) for grid, order, steps in (("use_karras_sigmas", 2, 10), ("use_karras_sigmas", 3, 10),
                                                    ("use_exponential_sigmas", 2, 10), ("use_lu_lambdas", 2, 25),
                                                    ("use_karras_sigmas", 3, 20))]
CASES += [("UniPCMultistep", f"{grid.removeprefix('use_')}_sigma_min", {grid: True, "final_sigmas_type": "sigma_min"},
           order, steps) for grid, order, steps in (("use_karras_sigmas", 2, 10), ("use_karras_sigmas", 3, 10),
                                                    ("use_exponential_sigmas", 2, 20))]


def acp64() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    return np.cumprod(1.0 - betas)


def model(x: np.ndarray, label: int) -> np.ndarray:
    a2 = acp64()[label]
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    return sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)


def float64(sched) -> None:
    float64_tables(sched, torch.tensor(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dtype=torch.float64))


def float64_sigmas(sched, fields: dict, steps: int) -> torch.Tensor:
    """The step's sigmas as ``set_timesteps`` computes them, in float64."""
    acp = sched.alphas_cumprod.numpy()
    train = ((1 - acp) / acp) ** 0.5
    flipped = np.flip(train).copy()
    if fields.get("use_karras_sigmas"):
        sigmas = sched._convert_to_karras(in_sigmas=flipped, num_inference_steps=steps)
    elif fields.get("use_lu_lambdas"):
        sigmas = np.exp(sched._convert_to_lu(in_lambdas=np.flip(np.log(train)).copy(), num_inference_steps=steps))
    elif fields.get("use_exponential_sigmas"):
        sigmas = sched._convert_to_exponential(in_sigmas=flipped, num_inference_steps=steps)
    elif fields.get("use_beta_sigmas"):
        sigmas = sched._convert_to_beta(in_sigmas=flipped, num_inference_steps=steps)
    else:
        sigmas = train[sched.timesteps.numpy()]
    if fields.get("final_sigmas_type") != "sigma_min" and not isinstance(sched, diffusers.DEISMultistepScheduler):
        last = 0.0
    else:  # a label grid's last step goes to label 0's sigma; a sigma grid's repeats its last sigma
        last = sigmas[-1] if any(fields.get(g) for g in GRIDS) else train[0]
    return torch.tensor(np.concatenate([sigmas, [last]]), dtype=torch.float64)


def run(kind: str, fields: dict, order: int, steps: int, x_t: np.ndarray):
    cls = getattr(diffusers, f"{kind}Scheduler")
    sched = cls(solver_order=order, **BASE, **fields)
    float64(sched)
    sched.set_timesteps(steps)
    sigmas = float64_sigmas(sched, fields, steps)
    assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-6, atol=0), "sigmas changed"
    sched.sigmas = sigmas
    x = torch.tensor(x_t, dtype=torch.float64)
    before = x
    for t in sched.timesteps:
        out = torch.tensor(model(x.numpy(), int(t)), dtype=torch.float64)
        before, x = x, sched.step(out, t, x).prev_sample
    nan = not np.all(np.isfinite(x.numpy()))
    if nan:  # diffusers' zero-length last step (DPM-Solver++(3M): inf / inf); its limit leaves x where it was
        assert fields.get("final_sigmas_type") == "sigma_min" and np.all(np.isfinite(before.numpy()))
        x = before
    return sched.timesteps.numpy().astype(np.int64), sigmas.numpy(), x.numpy(), nan


def main() -> None:
    torch.set_default_dtype(torch.float64)
    dpm_module.torch = Float32As64(torch)
    try:
        x_t = np.random.default_rng(9).normal(size=(B, D))
        arrays = {"x_T": x_t, "alphas_cumprod": acp64()}
        for kind, name, fields, order, steps in CASES:
            key = f"{kind}/{name}/{order}/{steps}"
            labels, sigmas, final, nan = run(kind, fields, order, steps, x_t)
            assert np.all(np.isfinite(final)), key
            arrays.update({f"{key}/config": np.array(json.dumps(fields)), f"{key}/labels": labels,
                           f"{key}/sigmas": sigmas, f"{key}/final": final, f"{key}/diffusers_nan": np.array(nan)})
    finally:
        dpm_module.torch = torch
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
