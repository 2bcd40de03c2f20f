r"""Regenerate ``tests/golden/variance.npz``: diffusers' DDPM loop with each ``variance_type``, in float64.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_variance_golden.py

The model is exact and closed form (tests re-run it without torch): data
:math:`x_0 \sim N(\mu, s^2 I)`, ``D = 3`` channels, :data:`MU` = 0.3, :data:`S` = 0.5, and
:math:`\hat\epsilon = \sigma_n (x - a_n\mu)/(a_n^2 s^2 + \sigma_n^2)`, :math:`a_n^2 =`
``alphas_cumprod[n]``. For ``learned`` and ``learned_range`` the model returns ``2D`` channels,
:math:`[\hat\epsilon, \hat v]`, with :math:`\hat v = \tanh(x)/2` for ``learned_range`` (a value
in (-1, 1), the interpolation weight's range) and :math:`\hat v = (1 + \tanh(x)^2)\,\beta_n/2` for
``learned`` (a positive variance, which diffusers uses as the variance itself). The
scheduler runs in float64 (``betas``, ``alphas``, ``alphas_cumprod`` replaced by their float64
values: linear 1e-4..0.02 over 1000 labels), ``clip_sample=False``.

The file holds ``x_T`` (``(8, 3)``, ``default_rng(5)``) and per case ``<variance_type>/<steps>``:
``labels``, ``final`` (the last ``prev_sample``; ``fixed_large_log`` is NaN there: diffusers takes
the square root of ``log(beta)`` < 0) and ``noise`` (``(steps, 8, 3)``, ``default_rng(6)``, handed
to each step through a patched ``randn_tensor``; diffusers adds none at label 0).
"""

from __future__ import annotations

import os

import numpy as np
import torch

import diffusers
from _golden import ddpm_noise, write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "variance.npz")
MU, S, D, B = 0.3, 0.5, 3, 8
STEPS = (10, 50)
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


def betas64() -> np.ndarray:
    return np.linspace(1e-4, 0.02, 1000)


def model(x: np.ndarray, label: int, variance_type: str) -> np.ndarray:
    acp = np.cumprod(1.0 - betas64())
    a2 = acp[label]
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
    if variance_type == "learned_range":
        return np.concatenate([eps, np.tanh(x) / 2], axis=1)
    if variance_type == "learned":
        return np.concatenate([eps, (1 + np.tanh(x) ** 2) * betas64()[label] / 2], axis=1)
    return eps


def run(variance_type: str, steps: int, x_t: np.ndarray, noise: np.ndarray):
    sched = diffusers.DDPMScheduler(variance_type=variance_type, clip_sample=False)
    sched.betas = torch.tensor(betas64(), dtype=torch.float64)
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    sched.set_timesteps(steps)
    x = torch.tensor(x_t, dtype=torch.float64)
    with ddpm_noise(noise):
        for t in sched.timesteps:
            out = torch.tensor(model(x.numpy(), int(t), variance_type), dtype=torch.float64)
            x = sched.step(out, t, x).prev_sample
    return sched.timesteps.numpy().astype(np.int64), x.numpy()


def main() -> None:
    x_t = np.random.default_rng(5).normal(size=(B, D))
    arrays = {"x_T": x_t}
    for variance_type in VARIANCE_TYPES:
        for steps in STEPS:
            noise = np.random.default_rng(6).normal(size=(steps, B, D))
            labels, final = run(variance_type, steps, x_t, noise)
            key = f"{variance_type}/{steps}"
            arrays.update({f"{key}/labels": labels, f"{key}/final": final, f"{key}/noise": noise})
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
