r"""Every time grid: :func:`~sdevp_jax.set_timesteps`' spacings, their checks, and diffusers' label spacings.

:data:`SPACINGS` names the grids a state can hold; :func:`default_spacing` picks one;
:func:`continuous_grid` builds the time-uniform, time-quadratic, log-SNR and Karras grids
(:func:`log_snr_grid`, the one builder of grids spaced in :math:`\lambda`, also gives
``dpm_solver`` its grid), :func:`label_grid` a discrete model's training labels,
:func:`custom_grid` a user's times, and :func:`check_grid` holds every grid to the same
rules (finite, strictly decreasing, inside the schedule's range, above the schedule's
``smallest_time``). The rest of this docstring is about diffusers' label spacings.


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

  DPMSolverMultistep also shortens the grid by ``lambda_min_clipped``: the labels whose
  :math:`\lambda` is below it are left out (``last_timestep = N - #{n: lambda_n < clip}``
  replaces ``N`` in ``linspace`` and ``leading``, and starts ``trailing``'s ``arange``).

* ``"EulerDiscreteScheduler"``, ``"EulerAncestralDiscreteScheduler"``, ``"LMSDiscreteScheduler"``,
  ``"HeunDiscreteScheduler"``, ``"KDPM2DiscreteScheduler"``, ``"KDPM2AncestralDiscreteScheduler"``: as the
  first family but in float32 and **without rounding** ``linspace``, whose labels are then fractional
  (the model is called at interpolated labels; their noise levels are the training ones interpolated linearly
  in the label, which :func:`interpolated_label_grid` places on the schedule).

``steps_offset`` only shifts ``leading``; ``linspace`` and ``trailing`` ignore it. With
``n = N`` the second family's ``leading`` has ``N // (N + 1) = 0`` and repeats label
``o``; diffusers returns that grid as it is, and so does this function.

**diffusers' sigma grids** (:data:`SIGMA_SPACINGS`, a config's ``use_karras_sigmas``,
``use_exponential_sigmas``, ``use_beta_sigmas``, ``use_lu_lambdas``) are not label grids: they
space :math:`\sigma/\alpha` between its values at label ``N - 1`` and label 0 (Karras et al. 2022,
eq. 5 with :math:`\rho = 7`; log-uniform; the Beta(0.6, 0.6) quantiles of Lee et al. 2024, "Beta
Sampling is All You Need"; uniform in :math:`\lambda`, Lu et al. 2022), step through those exact
noise levels, and call the model at a label interpolated linearly in :math:`\log(\sigma/\alpha)`
between training labels, rounded (Karras, :math:`\lambda`) or truncated (exponential, beta; and
DPMSolverMultistep's Karras and :math:`\lambda` grids on ``squaredcos_cap_v2``), or, for EulerDiscrete,
HeunDiscrete and LMSDiscrete (:data:`SIGMA_RANGE_CLASSES`), kept fractional in float32 -- those three space their
grids between the noise levels of their ``timestep_spacing`` grid's first and last labels.
:func:`sigma_grid` gives the times and those labels; the state keeps the labels
(``model_labels``) and :func:`~sdevp_jax.model_time` hands them to the model at the grid's times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _checks, schedules

if TYPE_CHECKING:  # annotations only: the scheduler builds on this module
    from .scheduler import ScoreSdeVpSchedulerState

__all__ = [
    "SPACINGS",
    "CONTINUOUS_SPACINGS",
    "LABEL_SPACINGS",
    "KARRAS_RHO",
    "default_spacing",
    "max_inference_steps",
    "log_snr_grid",
    "AYS_SIGMAS",
    "align_your_steps",
    "SPACING_SCHEDULERS",
    "diffusers_label_spacing",
    "labels_to_times",
    "times_to_labels",
    "SIGMA_SPACINGS",
    "training_sigmas",
    "diffusers_sigmas",
    "sigma_to_label",
    "SIGMA_RANGE_CLASSES",
    "sigma_grid",
    "interpolated_label_grid",
]

#: The ``timestep_spacing`` values :func:`diffusers_label_spacing` understands.
LABEL_SPACINGS = ("linspace", "leading", "trailing")

#: diffusers scheduler class -> its spacing family (see the module docstring).
SPACING_SCHEDULERS = {
    "DDPMScheduler": "ddim",
    "DDIMScheduler": "ddim",
    "DPMSolverMultistepScheduler": "multistep",
    "DPMSolverSinglestepScheduler": "multistep",
    "DEISMultistepScheduler": "multistep",
    "SASolverScheduler": "multistep",
    "UniPCMultistepScheduler": "multistep",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler",
    "HeunDiscreteScheduler": "euler",
    "KDPM2DiscreteScheduler": "euler",
    "KDPM2AncestralDiscreteScheduler": "euler",
    "LMSDiscreteScheduler": "euler",
}


def diffusers_label_spacing(
    num_train_timesteps: int,
    num_inference_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
    *,
    scheduler: str = "DDIMScheduler",
    last_timestep: Optional[int] = None,
) -> np.ndarray:
    """The training labels, decreasing, that diffusers' ``scheduler`` samples at.

    Args:
      num_train_timesteps: ``N``, an int >= 1.
      num_inference_steps: ``n``, an int in ``[1, N]``.
      spacing: ``"linspace"``, ``"leading"`` or ``"trailing"`` (``timestep_spacing``).
      steps_offset: an int >= 0, added to the ``leading`` labels only (as diffusers does).
      scheduler: the diffusers class whose variant to reproduce, one of
        :data:`SPACING_SCHEDULERS` (the families differ; see the module docstring).
      last_timestep: DPMSolverMultistep's ``lambda_min_clipped`` cut, in ``[1, N]`` (default ``N``:
        no cut); the grid then has ``num_inference_steps`` labels except ``trailing``'s, which keeps
        ``N/n`` between them and so has fewer.

    Returns:
      A host NumPy array of shape ``(n,)``: int64 labels, except for the Euler/LMS
      family, whose labels are float32 as in diffusers (fractional for ``linspace``).
      Equal to diffusers 0.42.1's ``scheduler.timesteps`` (tested exactly against
      goldens from tests/golden/make_spacing_golden.py).

    Examples:
      >>> sv.grids.diffusers_label_spacing(1000, 10, "leading", steps_offset=1)
      array([901, 801, 701, 601, 501, 401, 301, 201, 101,   1])
      >>> sv.grids.diffusers_label_spacing(1000, 10, "trailing")
      array([999, 899, 799, 699, 599, 499, 399, 299, 199,  99])
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
    last = big_n if last_timestep is None else _checks.positive_int("last_timestep", last_timestep)
    if last > big_n:
        raise ValueError(f"last_timestep must be in [1, num_train_timesteps = {big_n}], got {last}")
    # The multistep solvers build n + 1 points and drop the smallest.
    points = n + 1 if family == "multistep" else n
    if spacing == "linspace":
        grid = np.linspace(0.0, last - 1, points)
        if family != "euler":
            grid = np.round(grid)
    elif spacing == "leading":
        grid = np.arange(points, dtype=np.int64) * (last // points) + offset
    else:  # trailing: every family counts down from N in steps of N/n, then shifts by one
        grid = np.round(np.arange(float(last), 0.0, -big_n / n)) - 1.0
    if spacing != "trailing":
        grid = grid[::-1]
        if family == "multistep":
            grid = grid[:-1]
    dtype = np.float32 if family == "euler" else np.int64
    return np.ascontiguousarray(grid).astype(dtype)


def inverse_label_spacing(num_train_timesteps: int, n: int, spacing: str, steps_offset: int) -> np.ndarray:
    """The labels diffusers' DPMSolverMultistepInverseScheduler steps through, descending as a grid is stored: its
    ``n`` ascending labels (``linspace`` from 0, ``leading`` from ``steps_offset``, ``trailing`` to the noisiest)
    and the noisiest label it ends at (for ``trailing`` its last label already: the grid then ends there and the
    solver repeats it, a zero-length step)."""
    top = num_train_timesteps - 1
    if spacing == "linspace":
        labels = np.linspace(0, top, n + 1).round()[:-1].astype(np.int64)
    elif spacing == "leading":
        labels = (np.arange(0, n + 1) * ((top + 1) // (n + 1))).round()[:-1].astype(np.int64) + steps_offset
    else:
        labels = np.arange(top + 1, 0, -num_train_timesteps / n).round()[::-1].astype(np.int64) - 1
    labels = np.unique(labels)  # as diffusers drops duplicates (n = num_train_timesteps)
    if labels[-1] != top:
        labels = np.append(labels, top)
    return labels[::-1].copy()


def labels_to_times(labels: ArrayLike, num_train_timesteps: int) -> np.ndarray:
    r"""Continuous times of training labels: :math:`t = (n + 1)/N` (float64, host).

    The time convention of :func:`sdevp_jax.schedules.discrete`; fractional labels
    (Euler's ``linspace``) map linearly. Labels must lie in ``[0, N - 1]``.

    Examples:
      >>> sv.grids.labels_to_times([999, 499, 0], 1000)
      array([1.   , 0.5  , 0.001])
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

    Examples:
      >>> sv.grids.times_to_labels([1.0, 0.5, 0.001], 1000)
      array([999., 499.,   0.])
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


# --------------------------------------------------------------------------- the grids of set_timesteps

#: The grids of :func:`set_timesteps`: ScoreSdeVpScheduler's own (``"reference"``, the linear
#: schedule only), the continuous ones, and diffusers' label spacings (discrete schedules only).
CONTINUOUS_SPACINGS = ("time_uniform", "time_quadratic", "logsnr", "karras")


#: diffusers' sigma grids, by the config field that asks for each (``use_karras_sigmas``, ...).
SIGMA_SPACINGS = ("karras_sigmas", "exponential_sigmas", "beta_sigmas", "lu_lambdas")

SPACINGS = ("reference",) + CONTINUOUS_SPACINGS + LABEL_SPACINGS + SIGMA_SPACINGS


#: The exponent of the ``"karras"`` grid (Karras et al., NeurIPS 2022, eq. 5).
KARRAS_RHO = 7.0


def smallest_time(schedule: Any, dtype: Any = None) -> float:
    """The schedule's :meth:`~sdevp_jax.schedules.LinearSchedule.smallest_time` in ``dtype`` (default: JAX's default float), 0 if unknown."""
    value = schedule.smallest_time(_checks.default_float() if dtype is None else dtype)
    return 0.0 if value is None else value


def below_floor(name: str, value: Any, floor: float, upper: str, dtype: Any = None) -> ValueError:
    dtype = jnp.dtype(_checks.default_float() if dtype is None else dtype)
    return ValueError(
        f"{name} must be in [{floor:.4g}, {upper}: below {floor:.4g} sigma(t)**2 is not a normal "
        f"{dtype.name} number (sigma = 0, log_snr = inf), got {value}"
    )


def eps_range(schedule: Any, num_train_timesteps: int) -> tuple[float, str]:
    """The smallest ``sampling_eps`` allowed, and how to say it."""
    if schedule.is_discrete:
        return 1.0 / num_train_timesteps, f"[1/num_train_timesteps, 1) = [{1.0 / num_train_timesteps!r}, 1)"
    t_max = schedule.t_max
    shown = "1" if isinstance(t_max, float) and t_max == 1.0 else repr(t_max)
    return 0.0, f"the open interval (0, {shown})"


def default_spacing(state: ScoreSdeVpSchedulerState) -> str:
    """The grid ``set_timesteps`` builds without ``spacing``.

    ``"reference"`` (ScoreSdeVpScheduler's own) on the linear schedule; the config's
    sigma grid (``use_karras_sigmas`` ... : :data:`SIGMA_SPACINGS`), else its ``timestep_spacing``,
    for a state loaded from a diffusers config; else
    ``"logsnr"``, uniform in :math:`\\lambda`, which bounds every step's
    :math:`\\beta h \\approx 2\\,\\Delta\\lambda\\,\\sigma^2` however steep the schedule is near
    its end (the cosine schedule's :math:`\\beta` reaches 999, a discrete cosine
    schedule's about 6900: a time-uniform grid would need thousands of steps there).

    Examples:
      >>> sv.grids.default_spacing(sv.create_state())
      'reference'
      >>> sv.grids.default_spacing(sv.create_state(schedule=sv.schedules.cosine()))
      'logsnr'
    """
    if state.diffusers_config is not None:
        return state.diffusers_config.sigma_spacing or state.diffusers_config.timestep_spacing
    if isinstance(state.schedule, schedules.LinearSchedule):
        return "reference"
    return "logsnr"


def max_inference_steps(state: ScoreSdeVpSchedulerState) -> int:
    """The most steps :func:`set_timesteps` accepts: ``min(2**31 - 1, floats in [sampling_eps, t_max])``.

    A grid must be strictly decreasing in its dtype (JAX's default float), so it
    cannot hold more points than there are such floats between its ends (about
    8.4e7 in float32 for ``sampling_eps = 1e-3``); the loops index steps with int32.
    With a traced ``sampling_eps`` or ``t_max``, only the int32 bound applies.

    Examples:
      >>> sv.grids.max_inference_steps(sv.create_state()) > 10**7
      True
    """
    eps, t_max = _checks.concrete(state.sampling_eps), _checks.concrete(state.schedule.t_max)
    if eps is None or t_max is None or eps.size == 0:
        return _checks.INT32_MAX
    low, high = float(np.min(eps)), float(np.max(t_max))
    if not 0.0 < low <= high:
        return _checks.INT32_MAX
    return min(_checks.INT32_MAX, _checks.floats_between(low, high, _checks.default_float()))


def check_grid(state: ScoreSdeVpSchedulerState, grid: Any, name: str) -> None:
    """A concrete grid: finite, strictly decreasing, inside the schedule's range."""
    values = _checks.concrete(grid)
    if values is None:
        return
    if values.ndim != 1 or values.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite, got {values}")
    steps = np.flatnonzero(np.diff(values) >= 0)
    if steps.size:
        i = int(steps[0])
        raise ValueError(
            f"{name} must be strictly decreasing (in the grid's float dtype), got "
            f"{name}[{i}] = {float(values[i])!r} <= {name}[{i + 1}] = {float(values[i + 1])!r}"
        )
    low, shown = eps_range(state.schedule, state.num_train_timesteps)
    t_max = _checks.concrete(state.schedule.t_max)
    top_ok = t_max is None or values[0] <= t_max
    bottom_ok = values[-1] >= low if state.schedule.is_discrete else values[-1] > low
    if not (top_ok and bottom_ok):
        where = "[1/num_train_timesteps, 1]" if state.schedule.is_discrete else f"(0, t_max = {state.schedule.t_max!r}]"
        raise ValueError(f"{name} must lie in {where}, got values from {float(values[-1])!r} to {float(values[0])!r}")
    floor = smallest_time(state.schedule)
    if not values[-1] >= floor:
        raise below_floor(f"{name}'s last time", float(values[-1]), floor, f"t_max = {state.schedule.t_max!r}]")


def custom_grid(state: ScoreSdeVpSchedulerState, timesteps: Any) -> jax.Array:
    values = _checks.host_real_array("timesteps", timesteps)
    check_grid(state, values, "timesteps")
    grid = jnp.asarray(values, _checks.default_float())
    check_grid(state, grid, "timesteps")  # still strictly decreasing after rounding to the grid's dtype
    return grid


def label_grid(state: ScoreSdeVpSchedulerState, n: int, spacing: str,
               steps_offset: Optional[int]) -> tuple[jax.Array, Optional[jax.Array]]:
    """``(times, model_labels)`` of diffusers' label spacing ``spacing``: ``model_labels`` is ``None`` (the model's
    label is :math:`tN - 1`) except on the fractional labels of the sigma-space schedulers
    (:func:`interpolated_label_grid`)."""
    if not state.schedule.is_discrete:
        raise ValueError(
            f"spacing={spacing!r} picks training labels and needs a discrete schedule; this state's schedule "
            f"is {type(state.schedule).__name__} (use one of {', '.join(map(repr, CONTINUOUS_SPACINGS))})"
        )
    config = state.diffusers_config
    if steps_offset is None:
        steps_offset = 0 if config is None else config.steps_offset
    family = "DDIMScheduler"
    if config is not None and config.class_name in SPACING_SCHEDULERS:
        family = config.class_name
    last = None if config is None else config.last_timestep  # DPMSolverMultistep's lambda_min_clipped
    labels = None if config is None else config.flax_labels_of(n, spacing, steps_offset)
    if config is not None and config.class_name == "DPMSolverMultistepInverseScheduler":
        labels = inverse_label_spacing(state.num_train_timesteps, n, spacing, steps_offset)
    if labels is None:
        labels = diffusers_label_spacing(state.num_train_timesteps, n, spacing, steps_offset, scheduler=family,
                                         last_timestep=last)
    if config is not None and config.ends_at_sigma_min and labels[-1] != 0:
        # diffusers' final_sigmas_type="sigma_min": the last step ends at label 0's noise level, not at 0; the grid
        # ends there and the config's solver stops at its last point (final_sigmas_type="last")
        labels = np.concatenate([labels, [0]])
    if SPACING_SCHEDULERS[family] == "euler" and np.any(labels != np.round(labels)):
        return interpolated_label_grid(state, labels, f"the {spacing!r} grid of {n} steps")
    times = labels_to_times(labels, state.num_train_timesteps)
    grid = jnp.asarray(times, _checks.default_float())
    check_grid(state, grid, f"the {spacing!r} grid of {n} steps")
    return grid, None


def interpolated_label_grid(state: ScoreSdeVpSchedulerState, labels: ArrayLike,
                            name: str) -> tuple[jax.Array, jax.Array]:
    r"""``(times, labels)`` of fractional training ``labels`` as diffusers' sigma-space schedulers place them.

    EulerDiscrete, EulerAncestralDiscrete, LMSDiscrete, HeunDiscrete and KDPM2 interpolate the noise level
    :math:`\sigma/\alpha` *linearly in the label* between training labels (``np.interp``) and give the model the
    fractional label itself. The schedule places a fractional label elsewhere (:math:`\log\alpha` linear in
    :math:`t`), so the times are where the schedule has diffusers' interpolated noise level (:meth:`t_from_log_snr`),
    and the state keeps the labels (``model_labels``) for :func:`~sdevp_jax.model_time` to hand to the model there.
    """
    labels = np.asarray(labels, np.float64)
    sigmas = np.interp(labels, np.arange(state.num_train_timesteps), training_sigmas(state.schedule))
    dtype = _checks.default_float()
    big_n = state.num_train_timesteps
    times = np.asarray(state.schedule.cast(dtype).t_from_log_snr(jnp.asarray(-np.log(sigmas), dtype)), np.float64)
    times = np.clip(times, 1.0 / big_n, 1.0)
    times[labels == big_n - 1] = 1.0  # the ends exactly where the labels are the schedule's ends
    times[labels == 0] = 1.0 / big_n
    grid = jnp.asarray(times, dtype)
    check_grid(state, grid, name)
    return grid, jnp.asarray(labels, dtype)


def _round_down(value: Any, dtype: Any) -> jax.Array:
    """A concrete ``value`` rounded to ``dtype`` toward 0 (a traced one to nearest), so that a grid's top is not above it.

    The cosine schedule's ``t_max`` is a float64 number; rounded to nearest in float32 it
    lies above ``t_max`` for about half the offsets ``s`` (every ``s`` above about 1.5).
    """
    host = _checks.concrete(value)
    if host is None:
        return jnp.asarray(value, dtype)
    rounded = np.asarray(host, dtype)
    rounded = np.where(rounded.astype(np.float64) > host, np.nextafter(rounded, np.zeros((), dtype)), rounded)
    return jnp.asarray(rounded, dtype)


def continuous_grid(state: ScoreSdeVpSchedulerState, n: int, spacing: str) -> jax.Array:
    dtype = _checks.default_float()
    schedule = state.schedule.cast(dtype)
    t_hi = _round_down(state.schedule.t_max, dtype)
    t_lo = jnp.asarray(state.sampling_eps, dtype)
    if spacing == "time_uniform":
        return jnp.linspace(t_hi, t_lo, n)
    if spacing == "time_quadratic":
        # the end points exactly (the square root is accurate to rounding in between); t_max last,
        # so that a one-point grid is [t_max], as linspace's is
        grid = jnp.square(jnp.linspace(jnp.sqrt(t_hi), jnp.sqrt(t_lo), n)).at[-1].set(t_lo).at[0].set(t_hi)
    else:
        grid = log_snr_grid(schedule, t_hi, t_lo, n, spacing)
    check_grid(state, grid, f"the {spacing!r} grid of {n} steps")
    return grid


def log_snr_grid(schedule: Any, top: jax.Array, bottom: jax.Array, n: int, spacing: str = "logsnr") -> jax.Array:
    r"""``n`` times from ``top`` down to ``bottom`` spaced in :math:`\lambda = \log(\alpha/\sigma)`: the one log-SNR grid.

    ``"logsnr"``: uniform in :math:`\lambda` (Lu et al., NeurIPS 2022, sec. 3.3); ``"karras"``:
    :math:`\sigma/\alpha = e^{-\lambda}` uniform in its :math:`1/\rho`-th power, :math:`\rho` =
    :data:`KARRAS_RHO` (Karras et al., NeurIPS 2022, eq. 5). ``schedule``, ``top`` and ``bottom``
    in one dtype, the grid's. The end points are set exactly (the maps :math:`t \mapsto \lambda
    \mapsto t` are accurate to rounding in between); a one-point grid is ``[top]``, as
    ``linspace``'s is. :func:`set_timesteps`'s ``"logsnr"`` and ``"karras"`` grids and
    the grid ``dpm_solver`` steps through on a default grid are this function's. On a
    zero-terminal-SNR schedule a grid from :math:`t = 1` (:math:`\lambda = -\infty`) is ``1`` and
    then ``n - 1`` times spaced from the last training label before it, :math:`t = (N - 1)/N`.

    Examples:
      >>> lin = sv.schedules.linear()
      >>> t = sv.grids.log_snr_grid(lin, jnp.array(1.0), jnp.array(1e-3), 5)
      >>> lam = lin.log_snr(t)
      >>> bool(jnp.allclose(jnp.diff(lam), jnp.diff(lam)[0], rtol=1e-4))   # equal steps in lambda
      True
    """
    if spacing not in ("logsnr", "karras"):
        raise ValueError(f"spacing must be 'logsnr' or 'karras', got {spacing!r}")
    if n == 1:
        return jnp.reshape(top, (1,))
    lam_hi, lam_lo = schedule.log_snr(top), schedule.log_snr(bottom)
    grid = _lambda_spaced(schedule, lam_hi, lam_lo, n, spacing, top.dtype)
    if getattr(schedule, "zero_terminal_snr", False):
        # From alpha = 0 (lambda = -inf) no spacing in lambda can start: the grid is t = 1 itself, then n - 1
        # times spaced from the last training label before it, (N - 1)/N, whose lambda is finite.
        last_label = jnp.asarray((schedule.num_train_timesteps - 1) / schedule.num_train_timesteps, top.dtype)
        tail = _lambda_spaced(schedule, schedule.log_snr(jnp.minimum(top, last_label)), lam_lo, n - 1, spacing,
                              top.dtype)
        grid = jnp.where(jnp.isfinite(lam_hi), grid, jnp.concatenate([jnp.reshape(top, (1,)), tail]))
    return grid.at[0].set(top).at[-1].set(bottom)


def _lambda_spaced(schedule: Any, lam_hi: jax.Array, lam_lo: jax.Array, n: int, spacing: str, dtype: Any) -> jax.Array:
    """``n`` times whose log-SNRs run from ``lam_hi`` to ``lam_lo`` as :func:`log_snr_grid`'s ``spacing`` says."""
    if spacing == "logsnr":
        lam = jnp.linspace(lam_hi, lam_lo, n, dtype=dtype)
    else:  # karras: (sigma/alpha)^(1/rho) = exp(-lam/rho) uniform (not -lam/rho: that is logsnr)
        root = jnp.linspace(jnp.exp(-lam_hi / KARRAS_RHO), jnp.exp(-lam_lo / KARRAS_RHO), n, dtype=dtype)
        lam = -KARRAS_RHO * jnp.log(root)
    return schedule.t_from_log_snr(lam)


#: Align Your Steps (Sabour, Fidler & Kreis 2024): the 10-step schedules the authors published for Stable
#: Diffusion 1.5 and SDXL, as noise levels sigma/alpha (diffusers ships the same figures as ``AysSchedules``),
#: largest first, without the final 0.
AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.38, 0.234, 0.113),
}


def align_your_steps(state: "ScoreSdeVpSchedulerState", num_inference_steps: int, model: str = "sd15") -> np.ndarray:
    r"""The Align-Your-Steps grid of ``model`` (:data:`AYS_SIGMAS`) at ``num_inference_steps`` grid times.

    For 10 steps the published noise levels :math:`\sigma/\alpha`; for another count the
    authors' rule: :math:`\log(\sigma/\alpha)` interpolated linearly over ``num_inference_steps``
    equally spaced points of the table's index range (Sabour et al. 2024). Each level
    becomes the time where the state's schedule has it, :math:`\lambda = -\log(\sigma/\alpha)`
    (:meth:`t_from_log_snr`); the grid solvers then take their last step to :math:`\sigma = 0`,
    as the published schedules end. The tables were fitted to Stable Diffusion's schedule
    (scaled_linear, 0.00085 to 0.012): on it the grid's labels lie within 0.6 of the
    published timestep tables (tested). A first level beyond the schedule's largest by more
    than the table's rounding is an error.

    Returns:
      The times, float64 on the host, strictly decreasing: pass them to
      ``set_timesteps(state, timesteps=...)``.

    Examples:
      >>> sd = sv.load_config({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
      ...                      "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False})
      >>> t = sv.grids.align_your_steps(sd, 10)
      >>> state = sv.set_timesteps(sd, timesteps=t)
      >>> [round(float(x)) for x in sv.model_time(state, state.timesteps)[:3]]
      [999, 850, 736]
    """
    if model not in AYS_SIGMAS:
        raise ValueError(f"model must be one of {', '.join(map(repr, AYS_SIGMAS))}, got {model!r}")
    n = _checks.positive_int("num_inference_steps", num_inference_steps)
    if n < 2:
        raise ValueError(f"num_inference_steps must be an int >= 2 (the grid's first and last levels), got {n}")
    table = np.log(np.asarray(AYS_SIGMAS[model], np.float64))
    levels = np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, table.size), table)
    schedule = state.schedule.cast(jnp.float64) if jax.config.jax_enable_x64 else state.schedule
    times = np.asarray(schedule.t_from_log_snr(jnp.asarray(-levels)), np.float64)
    t_max = float(schedule.t_max)
    # the tables give 3 decimals: sigma/alpha = 14.615 is Stable Diffusion's largest level rounded
    if not times[0] <= t_max * (1.0 + 1e-4):
        top = float(np.exp(-np.asarray(schedule.log_snr(jnp.asarray(t_max)))))
        raise ValueError(f"the {model!r} table starts at sigma/alpha = {AYS_SIGMAS[model][0]}, beyond this "
                         f"schedule's largest noise level {top:.4g}: the tables are for Stable Diffusion's schedule")
    times = np.minimum(times, t_max)
    if not np.all(np.diff(times) < 0) or not times[-1] > 0:
        raise ValueError(f"the {model!r} levels do not map to strictly decreasing positive times on this schedule")
    return times


# --------------------------------------------------------------------------- diffusers' sigma grids


#: The Beta distribution's parameters of ``beta_sigmas`` (Lee et al. 2024; diffusers' defaults).
BETA_SIGMAS_AB = (0.6, 0.6)


def training_sigmas(schedule: Any) -> np.ndarray:
    r""":math:`\sigma/\alpha = \sqrt{(1 - \bar\alpha_n)/\bar\alpha_n}` at a discrete schedule's labels ``n = 0..N-1``
    (float64, host; diffusers' ``sigmas`` before ``set_timesteps`` picks among them)."""
    knots = _checks.concrete(getattr(schedule, "knots", None))
    if not getattr(schedule, "is_discrete", False) or knots is None:
        raise ValueError("diffusers' sigma grids need a discrete schedule with concrete (not traced) knots")
    acp = np.exp(2.0 * np.asarray(knots, np.float64)[1:])
    with np.errstate(divide="ignore"):
        return ((1.0 - acp) / acp) ** 0.5


def diffusers_sigmas(schedule: Any, num_inference_steps: int, spacing: str,
                     bounds: Optional[tuple[float, float]] = None) -> np.ndarray:
    r"""The ``num_inference_steps`` noise levels :math:`\sigma/\alpha`, decreasing, of diffusers' ``spacing``.

    Between :math:`\sigma_{\max}` (label ``N - 1``) and :math:`\sigma_{\min}` (label 0):
    ``"karras_sigmas"`` :math:`(\sigma_{\max}^{1/\rho} + r(\sigma_{\min}^{1/\rho} - \sigma_{\max}^{1/\rho}))^\rho`,
    :math:`\rho = 7`, ``r`` uniform on [0, 1] (Karras et al. 2022, eq. 5); ``"exponential_sigmas"`` and
    ``"lu_lambdas"`` :math:`\log\sigma` uniform (equal to rounding; they differ in their labels);
    ``"beta_sigmas"`` :math:`\sigma_{\min} + q(\sigma_{\max} - \sigma_{\min})` with ``q`` the
    Beta(0.6, 0.6) quantiles of ``1 - r`` (Lee et al. 2024). A zero-terminal-SNR schedule's
    :math:`\sigma_{\max}` is infinite: refused (diffusers' DPMSolverMultistep and UniPC clamp it,
    ``load_config(..., zero_snr="diffusers")``). ``bounds`` ``(sigma_min, sigma_max)`` replaces those two ends
    (EulerDiscrete, HeunDiscrete and LMSDiscrete space their sigma grids between the noise levels of the first and
    last labels of their ``timestep_spacing`` grid: :func:`sigma_grid`).

    Examples:
      >>> sd = sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012)
      >>> sigmas, train = sv.grids.diffusers_sigmas(sd, 4, "karras_sigmas"), sv.grids.training_sigmas(sd)
      >>> bool(np.allclose([sigmas[0], sigmas[-1]], [train[-1], train[0]]))   # label 999's sigma down to label 0's
      True
      >>> bool(np.allclose(np.diff(sigmas ** (1 / 7)), np.diff(sigmas ** (1 / 7))[0]))   # uniform in sigma^(1/7)
      True
    """
    n = _checks.positive_int("num_inference_steps", num_inference_steps)
    if spacing not in SIGMA_SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, SIGMA_SPACINGS))}, got {spacing!r}")
    sigmas = training_sigmas(schedule)
    sigma_min, sigma_max = (float(sigmas[0]), float(sigmas[-1])) if bounds is None else map(float, bounds)
    if not np.isfinite(sigma_max):
        raise ValueError(f"spacing={spacing!r} spaces sigma/alpha up to its value at the last label, which is "
                         "infinite on a zero-terminal-SNR schedule (alpha = 0); load the config with "
                         "zero_snr='diffusers' (diffusers' 2**-24 clamp) or use a label spacing")
    ramp = np.linspace(0.0, 1.0, n)
    if spacing == "karras_sigmas":
        low, high = sigma_min ** (1.0 / KARRAS_RHO), sigma_max ** (1.0 / KARRAS_RHO)
        return (high + ramp * (low - high)) ** KARRAS_RHO
    if spacing in ("exponential_sigmas", "lu_lambdas"):
        return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))
    from scipy.special import betaincinv  # the Beta quantile function

    quantiles = betaincinv(BETA_SIGMAS_AB[0], BETA_SIGMAS_AB[1], 1.0 - ramp)
    return sigma_min + quantiles * (sigma_max - sigma_min)


def sigma_to_label(sigmas: ArrayLike, schedule: Any) -> np.ndarray:
    r"""The fractional training labels of noise levels :math:`\sigma/\alpha` (float64, host), as diffusers finds them.

    :math:`\log\sigma` interpolated linearly between the labels' (``log(max(sigma, 1e-10))``, clamped to
    ``[0, N - 1]``): diffusers' ``_sigma_to_t``. Examples:

      >>> sd = sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012)
      >>> sv.grids.sigma_to_label(sv.grids.training_sigmas(sd)[[0, 500, 999]], sd)
      array([  0., 500., 999.])
    """
    log_sigmas = np.log(training_sigmas(schedule))
    log_sigma = np.log(np.maximum(np.asarray(sigmas, np.float64), 1e-10))
    low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


#: diffusers' classes whose sigma grids span the noise levels of their ``timestep_spacing`` grid's first and last
#: labels (interpolated linearly in the label) rather than the training labels' (``N - 1`` and 0), and give the model
#: the fractional label in float32.
SIGMA_RANGE_CLASSES = ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler")


def sigma_label_rounding(spacing: str, scheduler: str = "DPMSolverMultistepScheduler",
                         beta_schedule: Optional[str] = None) -> str:
    """How diffusers' ``scheduler`` turns a sigma grid's fractional labels into the model's: ``"round"``,
    ``"truncate"`` (its int64 cast) or ``"float32"`` (the sigma-space classes, :data:`SIGMA_RANGE_CLASSES`: the
    fractional label rounded to float32, their ``timesteps``' dtype), read from its ``set_timesteps``."""
    if scheduler in SIGMA_RANGE_CLASSES:
        return "float32"
    if spacing in ("exponential_sigmas", "beta_sigmas"):
        return "truncate"
    if scheduler == "DPMSolverMultistepScheduler" and beta_schedule == "squaredcos_cap_v2":
        return "truncate"
    return "round"


def sigma_grid(state: "ScoreSdeVpSchedulerState", n: int, spacing: str,
               rounding: Optional[str] = None) -> tuple[jax.Array, jax.Array]:
    r"""``(times, labels)`` of diffusers' sigma grid ``spacing`` (:func:`diffusers_sigmas`) on ``state``'s schedule.

    ``times`` (JAX's default float) are where the schedule has those noise levels
    (:math:`\lambda = -\log(\sigma/\alpha)`, :meth:`t_from_log_snr`; 1 where the level is label ``N - 1``'s,
    ``1/N`` where it is label 0's); ``labels`` are the model's labels there, diffusers' (:func:`sigma_to_label`,
    rounded, truncated or rounded to float32 as the state's config class does, DPMSolverMultistep's rule without a
    config), or with ``rounding`` (``"exact"``, ``"round"``, ``"truncate"``) that rule instead. The grid spans the
    training labels' noise levels, except for :data:`SIGMA_RANGE_CLASSES`, whose grid spans those of the first and
    last labels of the config's ``timestep_spacing`` grid (diffusers builds the label grid, interpolates its noise
    levels, then respaces between its ends: ``leading`` and ``trailing`` grids span less than the training range).
    """
    config = state.diffusers_config
    scheduler = config.class_name if config is not None else "DPMSolverMultistepScheduler"
    beta_schedule = config.beta_schedule if config is not None else None
    big_n = state.num_train_timesteps
    top, bottom = float(big_n - 1), 0.0
    bounds = None
    if scheduler in SIGMA_RANGE_CLASSES:
        ends = diffusers_label_spacing(big_n, n, config.timestep_spacing, config.steps_offset,
                                       scheduler=scheduler)[[0, -1]].astype(np.float64)
        top, bottom = float(ends[0]), float(ends[1])
        train = training_sigmas(state.schedule)
        high, low = np.interp(ends, np.arange(big_n), train)
        bounds = (float(low), float(high))
    sigmas = diffusers_sigmas(state.schedule, n, spacing, bounds)
    labels = sigma_to_label(sigmas, state.schedule)
    rule = sigma_label_rounding(spacing, scheduler, beta_schedule) if rounding is None else rounding
    if scheduler == "DPMSolverMultistepInverseScheduler" and rounding is None:
        model_labels = np.round(labels) if rule == "round" else np.trunc(labels)
        if np.unique(model_labels).size < n:
            raise ValueError(f"the {spacing!r} grid of {n} steps gives DPMSolverMultistepInverseScheduler's model a "
                             f"label twice; diffusers then drops the repeated labels but not their noise levels, "
                             f"which no longer match: use fewer steps or a label spacing")
    if rule == "float32":
        labels = labels.astype(np.float32).astype(np.float64)
    elif rule != "exact":
        labels = np.round(labels) if rule == "round" else np.trunc(labels)
    dtype = _checks.default_float()
    times = np.asarray(state.schedule.cast(dtype).t_from_log_snr(jnp.asarray(-np.log(sigmas), dtype)), np.float64)
    times = np.clip(times, 1.0 / big_n, 1.0)
    if top == big_n - 1:
        times[0] = 1.0  # sigma_max is the last label's
    if n > 1 and bottom == 0.0:
        times[-1] = 1.0 / big_n  # sigma_min the first label's
    grid = jnp.asarray(times, dtype)
    check_grid(state, grid, f"the {spacing!r} grid of {n} steps")
    return grid, jnp.asarray(labels, dtype)
