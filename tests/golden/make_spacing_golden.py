"""Regenerate ``tests/golden/spacings.npz``: diffusers' label grids and scheduler configs.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_spacing_golden.py

The file holds

* ``timesteps/<Class>/<spacing>/<num_inference_steps>/<steps_offset>``: ``Class(...).timesteps``
  after ``set_timesteps(num_inference_steps)`` with ``num_train_timesteps = 1000`` and that
  ``timestep_spacing`` and ``steps_offset``, as NumPy (int64, or float32 for Euler), for the
  classes of :data:`CLASSES` (LMSDiscreteScheduler needs scipy and shares Euler's grid code);
* ``config/<Class>``: the JSON text diffusers' ``save_config`` writes for a Stable-Diffusion
  schedule (scaled_linear 0.00085..0.012, ``steps_offset = 1``, ``clip_sample = False``
  where the class has it), and ``config/<Class>/default``: the class with its defaults
  except ``clip_sample = False`` (diffusers' default ``True`` is refused by the reader);
* ``versions``.

The suite reads the file without torch (tests/test_spacings.py).
"""

from __future__ import annotations

import inspect
import os
import tempfile

import numpy as np

import diffusers  # noqa: E402
from _golden import write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "spacings.npz")
NUM_TRAIN_TIMESTEPS = 1000
CLASSES = (
    "DDPMScheduler",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "EulerDiscreteScheduler",
)
CONFIG_CLASSES = CLASSES + ("PNDMScheduler",)
SPACINGS = ("linspace", "leading", "trailing")
STEPS = (1, 5, 10, 25, 50, 999, 1000)
OFFSETS = (0, 1)


def saved_config(cls, **kwargs) -> str:
    """The text of ``scheduler_config.json`` that ``cls(**kwargs).save_config`` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        cls(**kwargs).save_config(tmp)
        with open(os.path.join(tmp, "scheduler_config.json")) as f:
            return f.read()


def main() -> None:
    out: dict[str, np.ndarray] = {}
    for name in CLASSES:
        cls = getattr(diffusers, name)
        for spacing in SPACINGS:
            for steps in STEPS:
                for offset in OFFSETS:
                    sched = cls(
                        num_train_timesteps=NUM_TRAIN_TIMESTEPS, timestep_spacing=spacing, steps_offset=offset
                    )
                    sched.set_timesteps(steps)
                    out[f"timesteps/{name}/{spacing}/{steps}/{offset}"] = sched.timesteps.numpy()
    for name in CONFIG_CLASSES:
        cls = getattr(diffusers, name)
        params = inspect.signature(cls.__init__).parameters
        clip = {"clip_sample": False} if "clip_sample" in params else {}
        sd = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, **clip)
        if name == "PNDMScheduler":
            sd.update(skip_prk_steps=True, set_alpha_to_one=False)
        out[f"config/{name}"] = np.array(saved_config(cls, **sd))
        out[f"config/{name}/default"] = np.array(saved_config(cls, **clip))
    write_npz(PATH, out)


if __name__ == "__main__":
    main()
