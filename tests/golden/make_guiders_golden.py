r"""Regenerate ``tests/golden/guiders.npz``: diffusers' guiders combining given predictions, in float64.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_guiders_golden.py

diffusers' guiders (``diffusers.guiders``: ``AdaptiveProjectedGuidance``,
``ClassifierFreeZeroStarGuidance``, ``AutoGuidance``) take the conditional and unconditional predictions
of each step and return the guided one; they hold a step counter (CFG-Zero*'s zero-init) and APG's
momentum buffer. Here each runs :data:`STEPS` steps on fixed float64 predictions (``(STEPS, 3, 2, 4, 4)``,
``default_rng(11)``: a batch of 3 samples of 2 x 4 x 4 entries; the unconditional ones the conditional
ones plus noise, so the guidance direction is not small), with ``guider.set_state(step=k, ...)`` before
step ``k`` as a pipeline does.

The file holds ``pred_cond``, ``pred_uncond`` and per case ``<guider>/<name>``: ``config`` (JSON of the
guider's arguments) and ``pred`` (``(STEPS, 3, 2, 4, 4)``, each step's guided prediction).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from diffusers.guiders import AdaptiveProjectedGuidance, AutoGuidance, ClassifierFreeZeroStarGuidance
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

from _golden import write_npz

STEPS = 5
SHAPE = (3, 2, 4, 4)

APG_CASES = {
    "cfg_limit": dict(guidance_scale=4.0, eta=1.0, adaptive_projected_guidance_rescale=0.0),
    "eta0": dict(guidance_scale=4.0, eta=0.0, adaptive_projected_guidance_rescale=0.0),
    "eta0_threshold": dict(guidance_scale=4.0, eta=0.0, adaptive_projected_guidance_rescale=2.0),
    "momentum": dict(guidance_scale=4.0, eta=0.0, adaptive_projected_guidance_rescale=2.5,
                     adaptive_projected_guidance_momentum=-0.5),
    "eta_half_momentum": dict(guidance_scale=2.5, eta=0.5, adaptive_projected_guidance_rescale=0.0,
                              adaptive_projected_guidance_momentum=0.3),
    # the paper's formula y_c + (w - 1) update is diffusers' original formulation at scale w - 1
    "original_momentum": dict(guidance_scale=3.0, eta=0.0, adaptive_projected_guidance_rescale=2.5,
                              adaptive_projected_guidance_momentum=-0.5, use_original_formulation=True),
}
ZERO_STAR_CASES = {
    "no_zero_init": dict(guidance_scale=4.0, zero_init_steps=0),
    "zero_init_2": dict(guidance_scale=4.0, zero_init_steps=2),
}
AUTO_CASES = {
    "scale_2": dict(guidance_scale=2.0, auto_guidance_layers=[0], dropout=1.0),
}


def run(guider, cond, uncond):
    out = []
    for k in range(STEPS):
        guider.set_state(step=k, num_inference_steps=STEPS, timestep=torch.tensor(999 - 100 * k))
        momentum = getattr(guider, "adaptive_projected_guidance_momentum", None)
        if k == 0 and momentum is not None:  # what the guider's prepare_inputs does at a pipeline's step 0
            guider.momentum_buffer = MomentumBuffer(momentum)
        out.append(guider.forward(torch.tensor(cond[k]), torch.tensor(uncond[k])).pred.numpy())
    return np.stack(out)


def main():
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(11)
    cond = rng.standard_normal((STEPS,) + SHAPE)
    uncond = cond + 0.7 * rng.standard_normal((STEPS,) + SHAPE)
    arrays = {"pred_cond": cond, "pred_uncond": uncond}
    for cls, cases in ((AdaptiveProjectedGuidance, APG_CASES), (ClassifierFreeZeroStarGuidance, ZERO_STAR_CASES),
                       (AutoGuidance, AUTO_CASES)):
        for name, config in cases.items():
            arrays[f"{cls.__name__}/{name}/config"] = np.array(json.dumps(config))
            arrays[f"{cls.__name__}/{name}/pred"] = run(cls(**config), cond, uncond)
    write_npz(os.path.join(os.path.dirname(__file__), "guiders.npz"), arrays)


if __name__ == "__main__":
    main()
