r"""diffusers' training-label spacings of its discrete schedulers, and labels <-> times.

A discrete-time model is trained on integer labels :math:`n = 0, \dots, N-1`
(``N = num_train_timesteps``); :mod:`sdevp_jax.schedules` places label :math:`n` at
the continuous time :math:`t_n = (n + 1)/N` (Lu et al., NeurIPS 2022, app. D). diffusers'
discrete schedulers choose ``num_inference_steps`` of those labels by their config's
``timestep_spacing`` (Lin et al., WACV 2024, "Common diffusion noise schedules and
sample steps are flawed", table 2). :func:`diffusers_label_spacing` reproduces the
``timesteps`` that ``set_timesteps`` of diffusers 0.42.1 computes; it is pure NumPy on
the host (the grid is static: it fixes the number of steps of a compiled loop).

**The schedulers differ** (read from their ``set_timesteps``), in three families,
with ``N`` training steps, ``n`` inference steps, ``o = steps_offset``:

* ``"DDPMScheduler"``, ``"DDIMScheduler"`` (and ``PNDMScheduler``'s base grid before
  its PRK/PLMS reordering, not reproduced here):

  - ``linspace``: ``round(linspace(0, N - 1, n))`` reversed (``N - 1`` down to 0);
  - ``leading``: ``k * (N // n) + o`` for ``k = n - 1, ..., 0``;
  - ``trailing``: ``round(arange(N, 0, -N/n)) - 1`` (ends above 0 unless ``n = N``).

* ``"DPMSolverMultistepScheduler"``, ``"UniPCMultistepScheduler"``: the grid is built
  with ``n + 1`` points and the last (label 0 or ``o``) dropped, since these solvers
  end with a step to :math:`\sigma = 0` instead:

  - ``linspace``: ``round(linspace(0, N - 1, n + 1))`` reversed, without its last 0;
  - ``leading``: ``k * (N // (n + 1)) + o`` for ``k = n, ..., 1``;
  - ``trailing``: as the first family.

  (DPMSolverMultistep also shortens the grid by ``lambda_min_clipped``; only its
  default ``-inf``, which changes nothing, is reproduced.)

* ``"EulerDiscreteScheduler"``, ``"LMSDiscreteScheduler"``: as the first family but in
  float32 and **without rounding** ``linspace``, whose labels are then fractional
  (the model is called at interpolated labels).

``steps_offset`` only shifts ``leading``; ``linspace`` and ``trailing`` ignore it. With
``n = N`` the second family's ``leading`` has ``N // (N + 1) = 0`` and repeats label
``o``; diffusers returns that grid as it is, and so does this function.
"""

from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike

from . import _checks

__all__ = [
    "LABEL_SPACINGS",
    "SPACING_SCHEDULERS",
    "diffusers_label_spacing",
    "labels_to_times",
    "times_to_labels",
]

#: The ``timestep_spacing`` values :func:`diffusers_label_spacing` understands.
LABEL_SPACINGS = ("linspace", "leading", "trailing")

#: diffusers scheduler class -> its spacing family (see the module docstring).
SPACING_SCHEDULERS = {
    "DDPMScheduler": "ddim",
    "DDIMScheduler": "ddim",
    "DPMSolverMultistepScheduler": "multistep",
    "UniPCMultistepScheduler": "multistep",
    "EulerDiscreteScheduler": "euler",
    "LMSDiscreteScheduler": "euler",
}


def diffusers_label_spacing(
    num_train_timesteps: int,
    num_inference_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
    *,
    scheduler: str = "DDIMScheduler",
) -> np.ndarray:
    """The training labels, decreasing, that diffusers' ``scheduler`` samples at.

    Args:
      num_train_timesteps: ``N``, an int >= 1.
      num_inference_steps: ``n``, an int in ``[1, N]``.
      spacing: ``"linspace"``, ``"leading"`` or ``"trailing"`` (``timestep_spacing``).
      steps_offset: an int >= 0, added to the ``leading`` labels only (as diffusers does).
      scheduler: the diffusers class whose variant to reproduce, one of
        :data:`SPACING_SCHEDULERS` (the families differ; see the module docstring).

    Returns:
      A host NumPy array of shape ``(n,)``: int64 labels, except for the Euler/LMS
      family, whose labels are float32 as in diffusers (fractional for ``linspace``).
      Equal to diffusers 0.42.1's ``scheduler.timesteps`` (tested exactly against
      goldens from tests/golden/make_spacing_golden.py).
    """
    big_n = _checks.positive_int("num_train_timesteps", num_train_timesteps)
    n = _checks.positive_int("num_inference_steps", num_inference_steps)
    offset = _checks.int_at_least("steps_offset", steps_offset, 0)
    if n > big_n:
        raise ValueError(
            f"num_inference_steps must be in [1, num_train_timesteps] = [1, {big_n}], got {n}"
        )
    if not isinstance(spacing, str) or spacing not in LABEL_SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, LABEL_SPACINGS))}, got {spacing!r}")
    if not isinstance(scheduler, str) or scheduler not in SPACING_SCHEDULERS:
        raise ValueError(
            f"scheduler must be one of {', '.join(map(repr, SPACING_SCHEDULERS))}, got {scheduler!r}"
        )
    family = SPACING_SCHEDULERS[scheduler]
    # The multistep solvers build n + 1 points and drop the smallest.
    points = n + 1 if family == "multistep" else n
    if spacing == "linspace":
        grid = np.linspace(0.0, big_n - 1, points)
        if family != "euler":
            grid = np.round(grid)
    elif spacing == "leading":
        grid = np.arange(points, dtype=np.int64) * (big_n // points) + offset
    else:  # trailing: every family counts down from N in steps of N/n, then shifts by one
        grid = np.round(np.arange(float(big_n), 0.0, -big_n / n)) - 1.0
    if spacing != "trailing":
        grid = grid[::-1]
        if family == "multistep":
            grid = grid[:-1]
    dtype = np.float32 if family == "euler" else np.int64
    return np.ascontiguousarray(grid).astype(dtype)


def labels_to_times(labels: ArrayLike, num_train_timesteps: int) -> np.ndarray:
    r"""Continuous times of training labels: :math:`t = (n + 1)/N` (float64, host).

    The time convention of :func:`sdevp_jax.schedules.discrete`; fractional labels
    (Euler's ``linspace``) map linearly. Labels must lie in ``[0, N - 1]``.
    """
    big_n = _checks.positive_int("num_train_timesteps", num_train_timesteps)
    labels = _checks.host_real_array("labels", labels)
    bad = np.flatnonzero(~((labels >= 0.0) & (labels <= big_n - 1)))
    if bad.size:
        raise ValueError(
            f"labels must lie in [0, num_train_timesteps - 1] = [0, {big_n - 1}], "
            f"got labels[{bad[0]}] = {float(labels.flat[bad[0]])!r}"
        )
    return (labels + 1.0) / big_n


def times_to_labels(times: ArrayLike, num_train_timesteps: int) -> np.ndarray:
    r"""The inverse of :func:`labels_to_times`: :math:`n = tN - 1` (float64, host).

    Times must lie in ``[1/N, 1]`` (labels ``[0, N - 1]``); an integer label comes
    back as the float of that integer up to float64 rounding of ``t N`` (round it
    with ``np.rint`` if an int is needed).
    """
    big_n = _checks.positive_int("num_train_timesteps", num_train_timesteps)
    times = _checks.host_real_array("times", times)
    bad = np.flatnonzero(~((times * big_n >= 1.0) & (times <= 1.0)))
    if bad.size:
        raise ValueError(
            f"times must lie in [1/num_train_timesteps, 1] = [{1.0 / big_n!r}, 1], "
            f"got times[{bad[0]}] = {float(times.flat[bad[0]])!r}"
        )
    return times * big_n - 1.0
