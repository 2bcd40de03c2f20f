"""Regenerate ``tests/golden/sde_vp_parity.npz`` from diffusers' ScoreSdeVpScheduler.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_parity_golden.py

The suite reads the file without torch; see tests/parity_cases.py for the grid.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from _golden import write_npz  # noqa: E402  (beside this script)
import mpmath  # noqa: E402

import diffusers_reference as ref  # noqa: E402
import parity_cases as cases  # noqa: E402


def exact_step(config_index, n, x, eps, noise, t):
    """The reference step in 40-digit arithmetic, from the exact float inputs given.

    ``t`` is 0-d or (batch,); returns float64 ``x, x_mean`` rounded once at the end.
    """
    mpmath.mp.dps = 40
    beta_min, beta_max, _ = (mpmath.mpf(v) for v in cases.CONFIGS[config_index])
    t = np.broadcast_to(np.asarray(t, np.float64).reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
    dt = -mpmath.mpf(1) / n
    out, out_mean = np.empty(x.shape), np.empty(x.shape)
    for i in np.ndindex(x.shape):
        ti = mpmath.mpf(float(t[i]))
        m = -ti**2 * (beta_max - beta_min) / 4 - ti * beta_min / 2
        std = mpmath.sqrt(-mpmath.expm1(2 * m))
        beta = beta_min + ti * (beta_max - beta_min)
        xi = mpmath.mpf(float(x[i]))
        mean = xi + (-beta * xi / 2 + beta * mpmath.mpf(float(eps[i])) / std) * dt
        out_mean[i] = float(mean)
        out[i] = float(mean + mpmath.sqrt(beta) * mpmath.sqrt(-dt) * mpmath.mpf(float(noise[i])))
    return out, out_mean


def main() -> None:
    out: dict[str, np.ndarray] = {}
    for dtype in cases.DTYPES:
        for c in range(len(cases.CONFIGS)):
            for n in cases.NUM_STEPS:
                out[f"timesteps_c{c}_n{n}/{dtype}"] = ref.timesteps(c, n, dtype)
        for index, (name, c, n, shape, form, pos) in enumerate(cases.step_cases()):
            x, eps, noise, t_index = cases.step_inputs(index, n, shape, form, pos)
            t, x_next, x_mean = ref.step(c, n, x, eps, noise, t_index, dtype)
            out[f"{name}/{dtype}/t"] = t
            out[f"{name}/{dtype}/x"] = x_next
            out[f"{name}/{dtype}/x_mean"] = x_mean
            # The exact result for this dtype's inputs (x, eps, noise and t as rounded to it).
            rounded = [np.asarray(a, dtype).astype(np.float64) for a in (x, eps, noise)]
            exact, exact_mean = exact_step(c, n, *rounded, t.astype(np.float64))
            out[f"{name}/{dtype}/exact_x"] = exact
            out[f"{name}/{dtype}/exact_x_mean"] = exact_mean
        for index, (c, n, shape) in enumerate(cases.LOOP_CASES):
            x_init, noises = cases.loop_inputs(index, n, shape)
            x_last, x_mean = ref.loop(c, n, x_init, noises, dtype)
            out[f"loop{index}/{dtype}/x"] = x_last
            out[f"loop{index}/{dtype}/x_mean"] = x_mean
    path = os.path.join(os.path.dirname(HERE), cases.GOLDEN_PATH)
    write_npz(path, out)


if __name__ == "__main__":
    main()
