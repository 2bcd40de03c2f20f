r"""Regenerate ``tests/golden/zero_snr.npz``: diffusers' loops on a zero-terminal-SNR schedule, in float64.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_zero_snr_golden.py

Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels) with
``rescale_betas_zero_snr=True`` (Lin et al. 2024), ``timestep_spacing="trailing"`` (so the first
label is 999, where ``alphas_cumprod`` is 0), and a v-prediction (or x0-prediction) model. The
schedulers run in float64: after construction their ``betas`` are replaced by diffusers' own
``rescale_zero_terminal_snr`` applied to the float64 betas, and ``alphas``, ``alphas_cumprod`` (and
for DPMSolverMultistep and UniPC, which set the last ``alphas_cumprod`` to ``2**-24``, that clamp and
their ``alpha_t``, ``sigma_t``, ``lambda_t``, ``sigmas``) recomputed from them as their ``__init__`` does;
``set_timesteps`` casts those two classes' ``sigmas`` to float32, so they are recomputed after it in
float64 at the same labels (and checked to round to diffusers' own), and torch's default dtype is
float64 (UniPC's step builds tensors of it), and DPMSolverMultistep's module sees a ``torch`` whose
``float32`` is float64 (its step casts the sample to ``torch.float32``).

The model is exact and closed form, so a test without torch re-runs it: data
:math:`x_0 \sim N(\mu, s^2 I)` (:data:`MU` = 0.5, :data:`S` = 0.8, ``D = 3``), at label ``n`` with
:math:`a^2 =` ``alphas_cumprod[n]`` (the unclamped one, 0 at label 999: the model was trained on
the zero-SNR schedule), :math:`\hat\epsilon = \sigma(x - a\mu)/(a^2 s^2 + \sigma^2)`, the posterior
mean :math:`\hat x_0 = \mu + a s^2 (x - a\mu)/(a^2 s^2 + \sigma^2)` and
:math:`v = a\hat\epsilon - \sigma\hat x_0` (Salimans & Ho 2022).

The file holds ``x_T`` (``(8, 3)``, ``default_rng(7)``), ``alphas_cumprod`` (the unclamped
float64 table) and per case ``<scheduler>/<prediction_type>/<option>/<steps>``: ``labels`` and
``final`` (the last ``prev_sample``); for DDPM (``fixed_small``) also ``noise`` (``(steps, 8, 3)``,
``default_rng(8)``, handed to each step through a patched ``randn_tensor``).
"""

from __future__ import annotations

import os

import numpy as np
import torch

import diffusers
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_module
from _golden import Float32As64, ddpm_noise, write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "zero_snr.npz")
MU, S, D, B = 0.5, 0.8, 3, 8
CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
              rescale_betas_zero_snr=True)


def betas64() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return rescale_zero_terminal_snr(betas)


def acp64() -> np.ndarray:
    return torch.cumprod(1.0 - betas64(), dim=0).numpy()


def model(x: np.ndarray, label: int, prediction_type: str) -> np.ndarray:
    a2 = acp64()[label]
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
    x0 = MU + a * S * S * (x - a * MU) / (a2 * S * S + sigma * sigma)
    return x0 if prediction_type == "sample" else a * eps - sigma * x0


def float64(sched, clamp: bool) -> None:
    sched.betas = betas64()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    if clamp:
        sched.alphas_cumprod[-1] = 2**-24
        sched.alpha_t = torch.sqrt(sched.alphas_cumprod)
        sched.sigma_t = torch.sqrt(1 - sched.alphas_cumprod)
        sched.lambda_t = torch.log(sched.alpha_t) - torch.log(sched.sigma_t)
        sched.sigmas = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5


def make(kind: str, prediction_type: str, option):
    common = dict(CONFIG, prediction_type=prediction_type)
    if kind == "DDIM":
        return diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common), False
    if kind == "DDPM":
        return diffusers.DDPMScheduler(clip_sample=False, variance_type="fixed_small", **common), False
    if kind == "DPMSolverMultistep":
        return diffusers.DPMSolverMultistepScheduler(solver_order=option, **common), True
    return diffusers.UniPCMultistepScheduler(solver_order=option, **common), True


def run(kind: str, prediction_type: str, option, steps: int, x_t, noise):
    sched, clamp = make(kind, prediction_type, option)
    float64(sched, clamp)
    sched.set_timesteps(steps)
    if clamp:  # set_timesteps casts the sigmas to float32: recomputed in float64 at the same labels
        a = sched.alphas_cumprod[sched.timesteps.long()]
        sigmas = torch.cat([((1.0 - a) / a).sqrt(), torch.zeros(1, dtype=torch.float64)])
        assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-6, atol=0), "sigmas changed"
        sched.sigmas = sigmas
    x = torch.tensor(x_t, dtype=torch.float64)
    with ddpm_noise(noise if noise is not None else []):
        for t in sched.timesteps:
            out = torch.tensor(model(x.numpy(), int(t), prediction_type), dtype=torch.float64)
            x = sched.step(out, t, x, eta=0.0).prev_sample if kind == "DDIM" else sched.step(out, t, x).prev_sample
    return sched.timesteps.numpy().astype(np.int64), x.numpy()


CASES = [("DDIM", "v_prediction", 0, 10), ("DDIM", "v_prediction", 0, 25), ("DDIM", "sample", 0, 10),
         ("DDPM", "v_prediction", 0, 10), ("DDPM", "v_prediction", 0, 25),
         ("DPMSolverMultistep", "v_prediction", 2, 10), ("DPMSolverMultistep", "v_prediction", 3, 10),
         ("DPMSolverMultistep", "v_prediction", 3, 25),
         ("UniPCMultistep", "v_prediction", 2, 10), ("UniPCMultistep", "v_prediction", 3, 10),
         ("UniPCMultistep", "v_prediction", 3, 25)]


def main() -> None:
    torch.set_default_dtype(torch.float64)  # UniPC's step builds tensors of the default dtype
    dpm_module.torch = Float32As64(torch)  # DPMSolverMultistep's step casts the sample to torch.float32
    x_t = np.random.default_rng(7).normal(size=(B, D))
    arrays = {"x_T": x_t, "alphas_cumprod": acp64()}
    for kind, prediction_type, option, steps in CASES:
        noise = np.random.default_rng(8).normal(size=(steps, B, D)) if kind == "DDPM" else None
        key = f"{kind}/{prediction_type}/{option}/{steps}"
        labels, final = run(kind, prediction_type, option, steps, x_t, noise)
        assert np.all(np.isfinite(final)), key
        arrays.update({f"{key}/labels": labels, f"{key}/final": final})
        if noise is not None:
            arrays[f"{key}/noise"] = noise
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
