r"""Regenerate ``tests/golden/deis.npz``: diffusers' DEISMultistepScheduler loops, in float64.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_deis_golden.py

Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels); orders 1-3 at 6 and 16 steps
(below and above the 15 steps under which diffusers lowers the last orders), ``lower_order_final=False``,
``trailing`` labels, a v-model and thresholding. The scheduler runs in float64: its tables are replaced by
their float64 values (``_golden.float64_tables``), and after ``set_timesteps`` its float32 ``sigmas`` are
recomputed in float64 at its labels (the last is label 0's sigma, where DEIS ends) and checked to round to
its own.

The model is exact and closed form (a test re-runs it without torch): data :math:`x_0 \sim N(\mu, s^2 I)`
(:data:`MU` = 0.5, :data:`S` = 0.8 for the plain cases, 2 for thresholding, ``D = 3``), at label ``n`` with
:math:`a^2 =` ``alphas_cumprod[n]`` :math:`\hat\epsilon = \sigma(x - a\mu)/(a^2 s^2 + \sigma^2)` (or
:math:`v = a\hat\epsilon - \sigma\hat x_0`).

The file holds ``x_T`` (``(8, 3)``, ``default_rng(11)``), ``alphas_cumprod`` and per case
``<option>/<order>/<steps>``: ``config`` (the JSON of the scheduler's fields), ``labels`` and ``final``. The
samples run as ``(8, 3, 1)`` (diffusers' thresholding needs an axis after the channels), stored as ``(8, 3)``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

import diffusers
from _golden import float64_tables, write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "deis.npz")
MU, D, B = 0.5, 3, 8
BASE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CASES = [("plain", order, steps, {"solver_order": order}) for order in (1, 2, 3) for steps in (6, 16)]
CASES += [
    ("no_lower_order_final", 3, 6, {"solver_order": 3, "lower_order_final": False}),
    ("trailing", 2, 10, {"solver_order": 2, "timestep_spacing": "trailing"}),
    ("v_prediction", 3, 10, {"solver_order": 3, "prediction_type": "v_prediction"}),
    ("thresholding", 2, 10, {"solver_order": 2, "thresholding": True, "sample_max_value": 1.5}),
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


def run(fields: dict, steps: int, x_t: np.ndarray):
    sched = diffusers.DEISMultistepScheduler(**BASE, **fields)
    float64_tables(sched, torch.tensor(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dtype=torch.float64))
    sched.set_timesteps(steps)
    train = ((1 - acp64()) / acp64()) ** 0.5
    sigmas = torch.tensor(np.concatenate([train[sched.timesteps.numpy()], [train[0]]]), dtype=torch.float64)
    assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-6, atol=0), "sigmas changed"
    sched.sigmas = sigmas
    x = torch.tensor(x_t[..., None], dtype=torch.float64)  # (B, C, 1): thresholding needs a pixel axis
    for t in sched.timesteps:
        out = model(x.numpy(), int(t), fields.get("prediction_type", "epsilon"), scale(fields))
        x = sched.step(torch.tensor(out, dtype=torch.float64), t, x).prev_sample
    return sched.timesteps.numpy().astype(np.int64), x.numpy()[..., 0]


def main() -> None:
    torch.set_default_dtype(torch.float64)
    x_t = np.random.default_rng(11).normal(size=(B, D))
    arrays = {"x_T": x_t, "alphas_cumprod": acp64()}
    for name, order, steps, fields in CASES:
        key = f"{name}/{order}/{steps}"
        labels, final = run(fields, steps, x_t)
        assert np.all(np.isfinite(final)), key
        arrays.update({f"{key}/config": np.array(json.dumps(fields)), f"{key}/labels": labels, f"{key}/final": final})
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
