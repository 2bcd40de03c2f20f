"""Regenerate ``tests/golden/schedules.npz``: diffusers' ``alphas_cumprod`` for its discrete beta schedules.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_schedule_golden.py

For each case below the file holds

* ``<name>/float32``: ``DDPMScheduler(...).alphas_cumprod`` exactly as diffusers builds it
  (float32 betas, ``torch.cumprod`` in float32);
* ``<name>/float64``: the same formulas in float64: ``torch.linspace(..., dtype=float64)``
  (squared for ``scaled_linear``), iDDPM's ``betas_for_alpha_bar`` loop in Python floats
  without diffusers' final float32 cast (checked below to round to diffusers' betas
  bit for bit), then ``torch.cumprod`` in float64;

and ``versions``. The suite reads the file without torch (tests/test_schedules.py).
"""

from __future__ import annotations

import math
import os

import numpy as np

from _golden import write_npz  # noqa: E402  (beside this script)
import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "schedules.npz")
NUM_TRAIN_TIMESTEPS = 1000

#: name -> (beta_schedule, beta_start, beta_end): DDPM, Stable Diffusion, iDDPM.
CASES = {
    "linear": ("linear", 1e-4, 0.02),
    "scaled_linear": ("scaled_linear", 0.00085, 0.012),
    "squaredcos_cap_v2": ("squaredcos_cap_v2", 1e-4, 0.02),
}


def betas_float64(beta_schedule: str, beta_start: float, beta_end: float, n: int) -> torch.Tensor:
    """diffusers' betas for ``beta_schedule``, in float64 (its formulas, without the float32 cast)."""
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2

    def alpha_bar(t: float) -> float:  # diffusers.schedulers.scheduling_ddpm.betas_for_alpha_bar, "cosine"
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float64)


def main() -> None:
    out: dict[str, np.ndarray] = {}
    for name, (schedule, start, end) in CASES.items():
        sched = DDPMScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=start, beta_end=end, beta_schedule=schedule
        )
        assert sched.alphas_cumprod.dtype == torch.float32
        out[f"{name}/float32"] = sched.alphas_cumprod.numpy()
        betas = betas_float64(schedule, start, end, NUM_TRAIN_TIMESTEPS)
        if schedule == "squaredcos_cap_v2":  # the Python-float loop is diffusers' own, before its cast
            assert torch.equal(betas.to(torch.float32), sched.betas), "betas_for_alpha_bar changed"
        out[f"{name}/float64"] = torch.cumprod(1.0 - betas, dim=0).numpy()
    write_npz(PATH, out)


if __name__ == "__main__":
    main()
