r"""Regenerate ``tests/golden/ddim_inverse.npz``: diffusers' ``DDIMInverseScheduler`` loops in float64.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_ddim_inverse_golden.py

DDIM inversion as diffusers runs it (its inversion pipelines: the model called at each label of the
ascending ``timesteps``, then ``step``): each step goes from ``timestep - N_train // num_inference_steps``
(``initial_alpha_cumprod`` below label 0: 1 with ``set_alpha_to_one``, else ``alphas_cumprod[0]``) to the
label the model was evaluated at, with the data prediction clipped to ``[-clip_sample_range,
clip_sample_range]`` when ``clip_sample`` (its default). Stable Diffusion's schedule, its ``alphas_cumprod``
recomputed in float64 after construction (``alphas_cumprod`` and ``initial_alpha_cumprod``).

The model is exact and closed form (:func:`model`; data :math:`N(\mu, s^2 I)`, :data:`MU` = 0.5, ``S``
per case), so a test without torch re-runs it. The file holds ``alphas_cumprod`` and per case
``<name>/<steps>``: ``config`` (JSON of the scheduler's fields), ``labels`` (ascending, as diffusers steps
them), ``x0`` (``(8, 3)``: the data inverted, ``MU + S (z - MU)`` with ``z`` from ``default_rng(5)``, ``S``
0.8, or 1.5 where the case clips) and ``final`` (the last sample).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

import diffusers
from _golden import write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "ddim_inverse.npz")
MU, D, B = 0.5, 3, 8
BASE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CASES = [
    ("sd", 10, {"steps_offset": 1, "clip_sample": False}),  # Stable Diffusion's inversion config
    ("sd", 25, {"steps_offset": 1, "clip_sample": False}),
    ("clip", 10, {"steps_offset": 1}),  # clip_sample (default True), data spread past [-1, 1]
    ("no_alpha_to_one", 10, {"set_alpha_to_one": False, "clip_sample": False}),  # a zero-length first step
    ("no_alpha_to_one_clip", 10, {"set_alpha_to_one": False}),  # that step clips
    ("trailing", 20, {"timestep_spacing": "trailing", "clip_sample": False}),
    ("v_prediction", 10, {"prediction_type": "v_prediction", "steps_offset": 1, "clip_sample": False}),
]


def acp64() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)


def spread(fields: dict) -> float:
    return 1.5 if fields.get("clip_sample", True) else 0.8


def model(x: np.ndarray, label: int, prediction_type: str, s: float) -> np.ndarray:
    a2 = acp64()[label]
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    eps = sigma * (x - a * MU) / (a2 * s * s + sigma * sigma)
    if prediction_type == "epsilon":
        return eps
    return a * eps - sigma * (MU + a * s * s * (x - a * MU) / (a2 * s * s + sigma * sigma))


def run(fields: dict, steps: int, x0: np.ndarray):
    sched = diffusers.DDIMInverseScheduler(**BASE, **fields)
    sched.alphas_cumprod = torch.tensor(acp64(), dtype=torch.float64)
    if not fields.get("set_alpha_to_one", True):
        sched.initial_alpha_cumprod = sched.alphas_cumprod[0]
    sched.set_timesteps(steps)
    x = torch.tensor(x0, dtype=torch.float64)
    for t in sched.timesteps:
        out = model(x.numpy(), int(t), fields.get("prediction_type", "epsilon"), spread(fields))
        x = sched.step(torch.tensor(out, dtype=torch.float64), t, x).prev_sample
    return sched.timesteps.numpy().astype(np.int64), x.numpy()


def main() -> None:
    torch.set_default_dtype(torch.float64)
    x0 = MU + np.random.default_rng(5).normal(size=(B, D))
    arrays = {"alphas_cumprod": acp64()}
    for name, steps, fields in CASES:
        key = f"{name}/{steps}"
        data = MU + spread(fields) * (x0 - MU)  # with clipping, data spread past [-1, 1]
        labels, final = run(fields, steps, data)
        assert np.all(np.isfinite(final)), key
        arrays.update({f"{key}/config": np.array(json.dumps(fields)), f"{key}/labels": labels, f"{key}/x0": data,
                       f"{key}/final": final})
    fields = {"set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}
    sched = diffusers.DDIMScheduler(**BASE, **fields)
    sched.alphas_cumprod = torch.tensor(acp64(), dtype=torch.float64)
    sched.final_alpha_cumprod = sched.alphas_cumprod[0]
    sched.set_timesteps(10)
    x_t = np.random.default_rng(7).normal(size=(B, D))
    x = torch.tensor(x_t, dtype=torch.float64)
    for t in sched.timesteps:
        x = sched.step(torch.tensor(model(x.numpy(), int(t), "epsilon", 0.8), dtype=torch.float64), t, x).prev_sample
    arrays.update({"forward/offset1/10/config": np.array(json.dumps(fields)), "forward/offset1/10/x_T": x_t,
                   "forward/offset1/10/labels": sched.timesteps.numpy().astype(np.int64),
                   "forward/offset1/10/final": x.numpy()})
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
