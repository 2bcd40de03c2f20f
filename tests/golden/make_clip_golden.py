r"""Regenerate ``tests/golden/clip.npz``: diffusers' DDIM and DDPM loops with ``clip_sample=True``, in float64.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_clip_golden.py

The model is exact and closed form, so a test without torch re-runs it: data
:math:`x_0 \sim N(\mu, s^2 I)` in ``D = 3`` dimensions with :data:`MU` = 0.5 and :data:`S` = 2,
wide enough that the data prediction leaves ``[-1, 1]`` at most steps (so the clip acts), and
:math:`\hat\epsilon = \sigma_n (x - a_n\mu)/(a_n^2 s^2 + \sigma_n^2)` with :math:`a_n^2 =`
``alphas_cumprod[n]`` (``v = a_n \hat\epsilon - \sigma_n \hat x_0`` for the v-model, Salimans & Ho 2022).
The schedulers run in float64: after construction ``betas``, ``alphas``, ``alphas_cumprod``
are replaced by their float64 values (linear betas 1e-4..0.02 over 1000 labels) and DDIM's
``final_alpha_cumprod`` by 1 (``set_alpha_to_one=True``).

The file holds ``x_T`` (float64, ``(8, 3)``, from ``numpy.random.default_rng(3)``), and per
case ``<scheduler>/<prediction_type>/<clip_sample_range>/<steps>``: ``labels`` (the
scheduler's timesteps), ``final`` (the last ``prev_sample``), ``unclipped`` (the same loop with
``clip_sample=False``), and for DDPM ``noise`` (``(steps, 8, 3)``, float64 from
``default_rng(4)``, handed to each step through a patched ``randn_tensor``). DDIM runs with
``eta = 0``; DDPM with ``variance_type="fixed_large"``.
"""

from __future__ import annotations

import os

import numpy as np
import torch

import diffusers
from _golden import ddpm_noise, write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "clip.npz")
MU, S, D, B = 0.5, 2.0, 3, 8
STEPS = (10, 25)
RANGES = (1.0, 1.5)
PREDICTIONS = ("epsilon", "v_prediction")


def acp64() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))


def model(x: np.ndarray, label: int, prediction_type: str) -> np.ndarray:
    a2 = acp64()[label]
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
    if prediction_type == "epsilon":
        return eps
    x0 = (x - sigma * eps) / a
    return a * eps - sigma * x0


def float64(sched) -> None:
    sched.betas = torch.tensor(np.linspace(1e-4, 0.02, 1000), dtype=torch.float64)
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)


def run(kind: str, prediction_type: str, clip_range: float, steps: int, clip: bool, x_t, noise):
    common = dict(prediction_type=prediction_type, clip_sample=clip, clip_sample_range=clip_range)
    if kind == "DDIM":
        sched = diffusers.DDIMScheduler(set_alpha_to_one=True, **common)
    else:
        sched = diffusers.DDPMScheduler(variance_type="fixed_large", **common)
    float64(sched)
    sched.set_timesteps(steps)
    x = torch.tensor(x_t, dtype=torch.float64)
    with ddpm_noise(noise if noise is not None else []):  # DDIM at eta 0 draws none
        for t in sched.timesteps:
            out = torch.tensor(model(x.numpy(), int(t), prediction_type), dtype=torch.float64)
            x = sched.step(out, t, x, eta=0.0).prev_sample if kind == "DDIM" else sched.step(out, t, x).prev_sample
    return sched.timesteps.numpy().astype(np.int64), x.numpy()


def main() -> None:
    x_t = np.random.default_rng(3).normal(size=(B, D))
    arrays = {"x_T": x_t}
    for kind in ("DDIM", "DDPM"):
        for prediction_type in PREDICTIONS:
            for clip_range in RANGES:
                for steps in STEPS:
                    noise = np.random.default_rng(4).normal(size=(steps, B, D)) if kind == "DDPM" else None
                    key = f"{kind}/{prediction_type}/{clip_range}/{steps}"
                    labels, final = run(kind, prediction_type, clip_range, steps, True, x_t, noise)
                    _, unclipped = run(kind, prediction_type, clip_range, steps, False, x_t, noise)
                    arrays.update({f"{key}/labels": labels, f"{key}/final": final, f"{key}/unclipped": unclipped})
                    if noise is not None:
                        arrays[f"{key}/noise"] = noise
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
