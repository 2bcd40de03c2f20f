"""The grid of parity cases against diffusers' ScoreSdeVpScheduler (numpy only).

Shared by the golden generator (``tests/golden/make_parity_golden.py``, which runs
diffusers) and by ``tests/test_parity.py`` (which runs sdevp_jax). Every input is
derived from a fixed seed, in float64; the float32 cases use the same inputs cast
to float32.
"""

from __future__ import annotations

import itertools

import numpy as np

GOLDEN_PATH = "golden/sde_vp_parity.npz"

# (beta_min, beta_max, sampling_eps): the paper's defaults and two others.
CONFIGS = [(0.1, 20.0, 1e-3), (0.05, 12.5, 1e-5), (1.0, 5.0, 0.2)]
NUM_STEPS = [1, 2, 10, 1000]
SHAPES = [(5,), (5, 3), (2, 3, 4, 4)]
T_FORMS = ["scalar", "vector"]
# (config, N, shape); not config 1, whose sampling_eps = 1e-5 is where diffusers'
# float64 itself loses ~10 digits (the step cases cover it against exact results).
LOOP_CASES = [(0, 10, (4, 3)), (0, 100, (4, 3)), (2, 50, (3, 2, 2))]
DTYPES = ["float64", "float32"]


def grid_positions(n: int) -> list[int]:
    """The grid indices stepped from: first, middle, last (deduplicated)."""
    return sorted({0, n // 2, n - 1})


def step_cases():
    """Yield ``(name, config_index, n, shape, t_form, position)`` for every step case."""
    for c, n, shape, form in itertools.product(range(len(CONFIGS)), NUM_STEPS, SHAPES, T_FORMS):
        for pos in grid_positions(n):
            yield f"step_c{c}_n{n}_s{'x'.join(map(str, shape))}_{form}_p{pos}", c, n, shape, form, pos


def step_inputs(index: int, n: int, shape: tuple[int, ...], form: str, pos: int):
    """``x, eps_hat, noise`` (float64) and the grid indices of ``t`` for case ``index``."""
    rng = np.random.default_rng(1000 + index)
    x = rng.standard_normal(shape)
    eps = rng.standard_normal(shape)
    noise = rng.standard_normal(shape)
    if form == "scalar":
        t_index = np.array(pos)
    else:  # a different grid time for each sample, starting at pos
        t_index = (pos + np.arange(shape[0])) % n
    return x, eps, noise, t_index


def loop_inputs(index: int, n: int, shape: tuple[int, ...]):
    """``x_T`` and the per-step noise ``(n, *shape)`` (float64) of loop case ``index``."""
    rng = np.random.default_rng(5000 + index)
    return rng.standard_normal(shape), rng.standard_normal((n,) + shape)


def loop_model_numpy(x, t):
    """The toy noise predictor of the loop cases: ``sin(x) * (1 + t)``, t of shape (batch,)."""
    return np.sin(x) * (1.0 + t.reshape(t.shape + (1,) * (x.ndim - 1)))
