"""Run diffusers' own ScoreSdeVpScheduler (torch, CPU) on the parity cases.

Needs ``torch`` and ``diffusers``; imported only by the golden generator and by the
live parity test (skipped when diffusers is not importable). The scheduler's
noise draw is replaced by the case's injected noise.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from diffusers.schedulers.deprecated import scheduling_sde_vp
from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

import parity_cases as cases

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@contextlib.contextmanager
def _injected(noises, dtype):
    """Make the scheduler's ``randn_tensor`` return ``noises`` in turn."""
    stream = iter(noises)
    original = scheduling_sde_vp.randn_tensor
    previous_default = torch.get_default_dtype()

    def fake(shape, **kwargs):
        z = torch.as_tensor(next(stream), dtype=TORCH_DTYPES[dtype])
        assert tuple(z.shape) == tuple(shape), (z.shape, shape)
        return z

    scheduling_sde_vp.randn_tensor = fake
    torch.set_default_dtype(TORCH_DTYPES[dtype])  # so set_timesteps' linspace has this dtype
    try:
        yield
    finally:
        scheduling_sde_vp.randn_tensor = original
        torch.set_default_dtype(previous_default)


def _scheduler(config_index: int, n: int):
    beta_min, beta_max, eps = cases.CONFIGS[config_index]
    scheduler = ScoreSdeVpScheduler(beta_min=beta_min, beta_max=beta_max, sampling_eps=eps)
    scheduler.set_timesteps(n)
    return scheduler


def timesteps(config_index: int, n: int, dtype: str) -> np.ndarray:
    with _injected([], dtype):
        return _scheduler(config_index, n).timesteps.numpy()


def step(config_index, n, x, eps, noise, t_index, dtype):
    """diffusers' ``step_pred`` from grid time(s) ``t_index``: returns ``t, x, x_mean``."""
    td = TORCH_DTYPES[dtype]
    with _injected([noise], dtype):
        scheduler = _scheduler(config_index, n)
        t = scheduler.timesteps[torch.as_tensor(t_index)]
        out, mean = scheduler.step_pred(
            torch.as_tensor(eps, dtype=td), torch.as_tensor(x, dtype=td), t
        )
    return t.numpy(), out.numpy(), mean.numpy()


def loop(config_index, n, x_init, noises, dtype):
    """The pipelines' loop with the toy model: returns the final ``x`` and ``x_mean``."""
    td = TORCH_DTYPES[dtype]
    with _injected(list(noises), dtype):
        scheduler = _scheduler(config_index, n)
        x = torch.as_tensor(x_init, dtype=td)
        for t in scheduler.timesteps:
            t_vec = t * torch.ones(x.shape[0], dtype=td)
            eps = torch.as_tensor(cases.loop_model_numpy(x.numpy(), t_vec.numpy()), dtype=td)
            x, x_mean = scheduler.step_pred(eps, x, t_vec)
    return x.numpy(), x_mean.numpy()
