"""Regenerate ``tests/golden/flax_configs.json``: the configs and label grids of diffusers 0.39's Flax schedulers.

diffusers 0.39.0 is the last release with Flax schedulers, and it is what Flax model
repositories carry. Run from the repository root, in an environment of its own (it installs
with jax 0.10.2 and flax 0.12.8; no torch)::

    pip install diffusers==0.39.0 jax==0.10.2 jaxlib==0.10.2 flax==0.12.8
    python tests/golden/make_flax_config_golden.py

The file holds, per Flax scheduler class of diffusers:

* ``default``: the JSON object ``save_config`` writes for the class with its defaults;
* ``sd``: the same for Stable Diffusion's schedule (scaled_linear 0.00085..0.012, and
  ``clip_sample = False``, ``steps_offset = 1``, ``set_alpha_to_one = False`` where the class
  has them), for the variance-preserving classes;
* ``timesteps``: ``state.timesteps`` after ``set_timesteps(state, n, shape)`` of the ``sd``
  config, for ``n`` in :data:`STEPS`, as lists (ints, or floats for the Euler / LMS grids).

The suite reads it without diffusers (tests/test_config.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np

import diffusers

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "flax_configs.json")
STEPS = (10, 25, 30, 50)
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SD_IF_PRESENT = {"clip_sample": False, "steps_offset": 1, "set_alpha_to_one": False}
VE = ("FlaxKarrasVeScheduler", "FlaxScoreSdeVeScheduler")


def saved(scheduler) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        scheduler.save_config(directory)
        with open(os.path.join(directory, "scheduler_config.json")) as f:
            return json.load(f)


def main() -> None:
    warnings.simplefilter("ignore")
    out = {"versions": {"diffusers": diffusers.__version__}, "classes": {}}
    names = sorted(n for n in dir(diffusers) if n.startswith("Flax") and n.endswith("Scheduler"))
    for name in names:
        cls = getattr(diffusers, name)
        entry = {"default": saved(cls())}
        if name not in VE:
            fields = entry["default"]
            sd = cls(**SD, **{k: v for k, v in SD_IF_PRESENT.items() if k in fields})
            entry["sd"] = saved(sd)
            state = sd.create_state()
            entry["timesteps"] = {str(n): np.asarray(sd.set_timesteps(state, n, (1, 4, 8, 8)).timesteps).tolist()
                                  for n in STEPS}
        out["classes"][name] = entry
    with open(PATH, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {PATH}: {', '.join(names)}")


if __name__ == "__main__":
    main()
