"""What every golden script shares: the versions it ran with, an atomic write of the .npz, given DDPM noise."""

from __future__ import annotations

import contextlib
import os

import numpy as np


def versions() -> np.ndarray:
    """The diffusers and torch versions that produced a golden file (stored in it as ``versions``)."""
    import diffusers
    import torch

    return np.array([f"diffusers {diffusers.__version__}", f"torch {torch.__version__}"])


def write_npz(path: str, arrays: dict) -> None:
    """``arrays`` plus ``versions`` to ``path``, through a temporary file renamed into place."""
    arrays = dict(arrays, versions=versions())
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    print(f"wrote {len(arrays)} arrays to {path}: {arrays['versions']}")


@contextlib.contextmanager
def ddpm_noise(noise):
    """Within it, diffusers' DDPMScheduler.step adds ``noise[k]`` (as float64) at its k-th draw, not its generator's."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_module
    import torch

    draws = iter(noise)
    real = ddpm_module.randn_tensor
    ddpm_module.randn_tensor = lambda shape, **kw: torch.tensor(next(draws), dtype=torch.float64)
    try:
        yield
    finally:
        ddpm_module.randn_tensor = real


class Float32As64:
    """Stands in for ``torch`` in a scheduler module: ``float32`` is ``torch.float64``, all else torch's (so that a
    step's ``sample.to(torch.float32)`` keeps a float64 run in float64)."""

    def __init__(self, torch):
        self._torch = torch
        self.float32 = torch.float64

    def __getattr__(self, name):
        return getattr(self._torch, name)


def float64_tables(sched, betas) -> None:
    """Replace a multistep scheduler's tables by their float64 values from float64 ``betas`` (a torch tensor), as its
    ``__init__`` computes them: ``alphas``, ``alphas_cumprod``, ``alpha_t``, ``sigma_t``, ``lambda_t``, ``sigmas``."""
    import torch

    sched.betas = betas
    sched.alphas = 1.0 - betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    sched.alpha_t = torch.sqrt(sched.alphas_cumprod)
    sched.sigma_t = torch.sqrt(1 - sched.alphas_cumprod)
    sched.lambda_t = torch.log(sched.alpha_t) - torch.log(sched.sigma_t)
    sched.sigmas = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5


def converted_sigmas(sched, fields: dict, in_sigmas, steps: int):
    """The scheduler's own sigma grid of ``fields`` (``use_karras_sigmas``: ``_convert_to_karras``;
    ``use_exponential_sigmas``, ``use_beta_sigmas`` likewise) from ``in_sigmas``, as a float64 array; ``None`` for a
    label grid. LMSDiscrete's ``_convert_to_karras`` takes no step count (it reads its own)."""
    import inspect

    if fields.get("use_karras_sigmas"):
        if "num_inference_steps" in inspect.signature(sched._convert_to_karras).parameters:
            return np.asarray(sched._convert_to_karras(in_sigmas=in_sigmas, num_inference_steps=steps), np.float64)
        return np.asarray(sched._convert_to_karras(in_sigmas=in_sigmas), np.float64)
    if fields.get("use_exponential_sigmas"):
        return np.asarray(sched._convert_to_exponential(in_sigmas=in_sigmas, num_inference_steps=steps), np.float64)
    if fields.get("use_beta_sigmas"):
        return np.asarray(sched._convert_to_beta(in_sigmas=in_sigmas, num_inference_steps=steps), np.float64)
    return None
