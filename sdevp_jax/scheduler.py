r"""The reference scheduler: diffusers' ``ScoreSdeVpScheduler`` as pure functions, for every VP model.

This module reproduces, digit for digit, the semantics of
``diffusers.schedulers.deprecated.scheduling_sde_vp.ScoreSdeVpScheduler``:

* ``set_timesteps(N)`` sets ``timesteps = linspace(1, sampling_eps, N)``;
* ``step_pred`` takes the model's *noise prediction* :math:`\hat\epsilon` (diffusers
  calls the argument ``score``), turns it into a score
  :math:`s = -\hat\epsilon / \sigma(t)`, and takes one Euler--Maruyama step of the
  reverse SDE (Song et al., ICLR 2021, eq. 6 with the VP coefficients):

  .. math::

      \bar x = x + \big(-\tfrac12\beta(t) x - \beta(t) s\big)\,\Delta t, \qquad
      x' = \bar x + \sqrt{\beta(t)}\sqrt{-\Delta t}\; z, \quad z \sim N(0, I).

Reference quirk, kept on purpose: :math:`\Delta t = -1/N` with :math:`N` the number
of timesteps, although the grid's spacing is :math:`(1 - \varepsilon)/(N - 1)`. The
``N`` steps therefore integrate over a total time of exactly 1; the scheme is
still consistent (the two differ by :math:`O(1/N^2)` per step).

The one deliberate difference from diffusers: :math:`\sigma(t)` is computed with
``expm1`` (see :mod:`sdevp_jax.sde`), which is more accurate near ``sampling_eps``
and agrees with diffusers to rounding elsewhere.

**Every VP model.** The state also holds the noise schedule (:mod:`sdevp_jax.schedules`:
the paper's linear one by default, cosine, or a discrete model's), the model's
``prediction_type`` (ε, v or :math:`x_0`, converted to ε once, where each step
receives the model's output) and the name of its grid. The reference semantics
above are those of the ``"reference"`` grid, the linear schedule's default (the parity
tests against diffusers' ScoreSdeVpScheduler run on it); on every other grid a step from
``t`` spans its own interval ``[t_next, t]``. The grids themselves are built in
:mod:`sdevp_jax.grids`; the model's time input (a discrete model sees its training
labels) and the conversion of its output live at the model boundary,
:mod:`sdevp_jax.denoiser`. This module holds the state, its checks, :func:`create_state`,
:func:`set_timesteps` and the reference step.

Checks under ``jit`` (no silent NaN). Under ``jax.jit(sv.sample, static_argnums=(1, 3))``
the state's floats are tracers, so a check on their values cannot run at trace
time. Each check therefore runs where the value is known:

* the config (``beta_min > 0``, ``beta_max > beta_min``, ``0 < sampling_eps < t_max``,
  and ``sampling_eps >= 1/N_train`` for a discrete schedule) is checked by
  :func:`create_state` and by ``state.replace`` whenever the values are concrete,
  and every grid by :func:`set_timesteps`, so a state's grid lies in
  ``[sampling_eps, t_max]``, away from :math:`\sigma(0) = 0`;
* the discrete chain's bound ``num_inference_steps > beta_max`` (see
  :mod:`sdevp_jax.samplers`) is checked against the static field
  ``min_discrete_steps``, recorded from the concrete ``beta_max`` by ``create_state``
  and ``replace``: a jitted call raises a ValueError at trace time;
* a step's ``t`` is checked on the host when it is a Python number or a NumPy
  value. A ``t`` that is a ``jax.Array`` is not read back (on an accelerator that
  would stall an eager loop at every step); under a trace it is checked by
  :func:`jax.experimental.checkify.debug_check` (except inside the package's own
  loops, whose ``t`` come from the validated grid), as is the discrete bound when
  ``beta_max`` itself is traced (a state built inside ``jit``/``vmap``/``grad``).
  Those checks raise only when the caller wraps the function with
  ``checkify.checkify`` (``err.throw()``); without it they compile away and a
  ``t <= 0`` or a ``beta_max >= num_inference_steps`` gives NaN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from . import _checks, grids, schedules, sde
from .denoiser import (LEARNED_VARIANCE, check_learned_output, check_prediction_type, eps_from_prediction,
                       split_output, variance_type)
from .grids import smallest_time

# Names importable from sdevp_jax.scheduler for compatibility (deprecated spellings); they live at the model boundary
# (sdevp_jax.denoiser) and in sdevp_jax.grids: the same objects, importable from here for this release.
from .denoiser import (PREDICTION_TYPES, model_time, model_time_dtype, prediction_from_eps,  # noqa: E402,F401
                       time_from_model_time, x0_from_prediction)
from .grids import SPACINGS, default_spacing, max_inference_steps  # noqa: E402,F401

__all__ = [
    "ScoreSdeVpSchedulerState",
    "StepOutput",
    "create_state",
    "set_timesteps",
    "step_pred",
]


def _static(default):
    """A field that is pytree metadata (a Python value: it changes the program), not a leaf."""
    return dataclasses.field(default=default, metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ScoreSdeVpSchedulerState:
    """The scheduler's configuration and timestep grid: an immutable pytree.

    The schedule's numbers and ``sampling_eps`` are pytree leaves (so a state can be
    passed to ``jax.jit``, batched with ``jax.vmap`` or differentiated); they are
    Python floats when built by :func:`create_state` from concrete values. The rest
    is static.

    ``state.replace(**fields)`` checks concrete config values as
    :func:`create_state` does, checks a concrete ``timesteps`` as :func:`set_timesteps`
    checks its own grids (1-D, finite, strictly decreasing, inside the schedule's
    range) and keeps ``min_discrete_steps`` up to date; on the
    linear schedule it also takes ``beta_min``/``beta_max`` (a ``dataclasses.replace``
    or the raw constructor does neither: use ``replace``).

    Attributes:
      schedule: the noise schedule (:mod:`sdevp_jax.schedules`): ``linear`` (the
        paper's and diffusers', the default), ``cosine`` or ``discrete``.
      sampling_eps: the smallest time, in ``(0, schedule.t_max)`` (``>= 1/N_train`` for a
        discrete schedule, whose labels start at ``t = 1/N_train``).
      timesteps: the grid of continuous times, strictly decreasing, shape ``(N,)``;
        ``None`` until :func:`set_timesteps` is called.
      num_train_timesteps: static; 2000 by default (diffusers' ScoreSdeVpScheduler),
        the schedule's ``N_train`` for a discrete schedule.
      min_discrete_steps: static; on the ``"reference"`` grid of the linear schedule,
        the smallest ``num_inference_steps`` the discrete chain accepts,
        ``floor(beta_max) + 1`` (its per-step rates ``beta(t)/N`` must be < 1),
        recorded whenever ``beta_max`` is concrete; ``None`` when it was traced or the
        schedule is not linear. Static so that a jitted sampler can check it at trace
        time (a jitted function compiles once per value of ``floor(beta_max)``).
      prediction_type: static; what ``model_fn`` returns: ``"epsilon"`` (the noise),
        ``"v_prediction"`` (:math:`v = \\alpha\\epsilon - \\sigma x_0`, Salimans & Ho 2022)
        or ``"sample"`` (:math:`x_0`).
      spacing: static; the name of the grid in ``timesteps`` (one of :data:`SPACINGS`,
        or ``"custom"`` for ``set_timesteps(timesteps=...)``); ``None`` before.
      spacing_given: static; whether the grid's spacing (or ``timesteps``) was passed to
        :func:`set_timesteps` rather than taken from :func:`~sdevp_jax.grids.default_spacing`.
        ``dpm_solver`` follows only a grid that was asked for; on a default grid it
        steps through its own log-SNR grid between the same end points.
      diffusers_config: static; the :class:`~sdevp_jax.config.DiscreteConfig` the state
        was loaded from (its ``timestep_spacing``, ``steps_offset`` and class set the
        default grid, and :func:`~sdevp_jax.save_config` writes it back), else ``None``.
      model_labels: on diffusers' sigma grids (:data:`~sdevp_jax.grids.SIGMA_SPACINGS`), the
        label the model receives at each grid time (diffusers' rounded or truncated one,
        :func:`~sdevp_jax.grids.sigma_grid`), shape ``(N,)``; ``None`` on every other grid, where
        a discrete model receives :math:`tN_{train} - 1`.
      model_times: ``None``, or the time :math:`s_k` the model is evaluated at for grid point ``k``, shape
        ``(N,)``, in the grid's units (continuous times; ``set_timesteps(..., model_times=...)``): a solver that
        calls the model only at grid points (``Solver.model_at_grid_points``) steps with the grid's
        :math:`t_k` and gives the model :func:`~sdevp_jax.model_time` of :math:`s_k` there (the time itself
        for a continuous schedule, the label :math:`s_k N_{train} - 1` for a discrete one). Learned
        decoupled model times (Tong et al. 2025, LD3) or a time shift (Li et al. 2024); fitted by
        :func:`~sdevp_jax.fit_grid` with ``fit_model_times=True``. ``None``: the grid's own times.
    """

    schedule: Any
    sampling_eps: Any
    timesteps: Optional[jax.Array] = None
    num_train_timesteps: int = _static(2000)
    min_discrete_steps: Optional[int] = _static(None)
    prediction_type: str = _static("epsilon")
    spacing: Optional[str] = _static(None)
    spacing_given: bool = _static(False)
    diffusers_config: Any = _static(None)
    model_labels: Optional[jax.Array] = None
    model_times: Optional[jax.Array] = None

    def replace(self, **updates: Any) -> "ScoreSdeVpSchedulerState":
        """A new state with ``updates``, checked as :func:`create_state` checks (see the class docstring)."""
        return _replace(self, **updates)

    @property
    def num_inference_steps(self) -> Optional[int]:
        """``N``, the number of timesteps (``None`` before :func:`set_timesteps`)."""
        return None if self.timesteps is None else self.timesteps.shape[0]

    @property
    def beta_min(self) -> Any:
        """The linear schedule's :math:`\\beta_{\\min}` (an AttributeError on other schedules)."""
        return _linear_field(self, "beta_min")

    @property
    def beta_max(self) -> Any:
        """The linear schedule's :math:`\\beta_{\\max}` (an AttributeError on other schedules)."""
        return _linear_field(self, "beta_max")

    @property
    def t_max(self) -> Any:
        """The largest time of the schedule: 1, or about 0.998 for the cosine schedule."""
        return self.schedule.t_max

    @property
    def uses_reference_step(self) -> bool:
        """Whether the steps are ScoreSdeVpScheduler's: ``dt = -1/N`` and rates ``beta(t)/N``.

        True on the ``"reference"`` grid (the linear schedule's default); on every
        other grid each step spans its own interval ``[t_next, t]``.
        """
        return self.spacing == "reference"

    def __len__(self) -> int:
        return self.num_train_timesteps


def _linear_field(state: ScoreSdeVpSchedulerState, name: str) -> Any:
    if not isinstance(state.schedule, schedules.LinearSchedule):
        raise AttributeError(
            f"state.{name} exists on the linear schedule only; this state's schedule is "
            f"{type(state.schedule).__name__} (use state.schedule)"
        )
    return getattr(state.schedule, name)


def _min_discrete_steps(schedule: Any) -> Optional[int]:
    """``floor(max beta_max) + 1`` of a linear schedule with a concrete ``beta_max`` (else ``None``)."""
    if not isinstance(schedule, schedules.LinearSchedule):
        return None
    value = _checks.concrete(schedule.beta_max)
    if value is None or value.size == 0 or not np.all(np.isfinite(value)):
        return None
    return int(math.floor(float(np.max(value)))) + 1


def _check_linear(beta_min: Any, beta_max: Any) -> None:
    """The linear schedule's ranges, elementwise, for the values that are concrete (tracers are skipped)."""
    bmin, bmax = _checks.concrete(beta_min), _checks.concrete(beta_max)
    for name, value in (("beta_min", bmin), ("beta_max", bmax)):
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite, got {value}")
    if bmin is not None and not np.all(bmin > 0):
        raise ValueError(f"beta_min must be > 0, got {beta_min}")
    if bmin is not None and bmax is not None and not np.all(bmax > bmin):
        raise ValueError(f"beta_max must be > beta_min = {beta_min}, got {beta_max}")
    schedules.check_beta_max(beta_max)


def _check_eps(sampling_eps: Any, schedule: Any, num_train_timesteps: int) -> None:
    """``sampling_eps`` finite and in the schedule's range (when concrete)."""
    eps = _checks.concrete(sampling_eps)
    if eps is None:
        return
    if not np.all(np.isfinite(eps)):
        raise ValueError(f"sampling_eps must be finite, got {eps}")
    low, shown = grids.eps_range(schedule, num_train_timesteps)
    t_max = _checks.concrete(schedule.t_max)
    above = np.all(eps >= low) if schedule.is_discrete else np.all(eps > low)
    if not above or (t_max is not None and not np.all(eps < t_max)):
        raise ValueError(f"sampling_eps must be in {shown}, got {sampling_eps}")
    floor = smallest_time(schedule)
    if not np.all(eps >= floor):
        raise grids.below_floor("sampling_eps", sampling_eps, floor, "t_max)")


def _replace(self: ScoreSdeVpSchedulerState, **updates: Any) -> ScoreSdeVpSchedulerState:
    """A new state with ``updates``: checked like :func:`create_state`, ``min_discrete_steps`` kept up to date."""
    if "beta_min" in updates or "beta_max" in updates:
        if "schedule" in updates:
            raise ValueError("give either schedule or beta_min/beta_max to replace, not both")
        bmin = updates.pop("beta_min", None)
        bmax = updates.pop("beta_max", None)
        bmin = self.beta_min if bmin is None else bmin
        bmax = self.beta_max if bmax is None else bmax
        _check_linear(bmin, bmax)
        updates["schedule"] = schedules.LinearSchedule(beta_min=bmin, beta_max=bmax)
    if "schedule" in updates or "sampling_eps" in updates:
        schedule = updates.get("schedule", self.schedule)
        _check_eps(updates.get("sampling_eps", self.sampling_eps), schedule, self.num_train_timesteps)
    if "schedule" in updates and "min_discrete_steps" not in updates:
        updates["min_discrete_steps"] = _min_discrete_steps(updates["schedule"])
    if "prediction_type" in updates:
        check_prediction_type(updates["prediction_type"])
    if "timesteps" in updates and "model_labels" not in updates:
        updates["model_labels"] = None  # the labels belong to the grid they were computed with
    if "timesteps" in updates and "model_times" not in updates:
        updates["model_times"] = None  # so do the model times
    new = dataclasses.replace(self, **updates)  # the dataclass's own replace: no checks
    labels = _checks.concrete(new.model_labels)
    if labels is not None and (new.timesteps is None or labels.shape != tuple(new.timesteps.shape)):
        raise ValueError(f"model_labels must have the shape of timesteps, got {labels.shape} for "
                         f"{None if new.timesteps is None else tuple(new.timesteps.shape)}")
    if new.model_times is not None:
        if new.model_labels is not None:
            raise ValueError("model_times and model_labels (a sigma grid's or label_rounding's labels) both give the "
                             "model's time input at the grid's points: give one of them")
        if new.timesteps is None or tuple(new.model_times.shape) != tuple(new.timesteps.shape):
            raise ValueError(f"model_times must have the shape of timesteps, got {tuple(new.model_times.shape)} for "
                             f"{None if new.timesteps is None else tuple(new.timesteps.shape)}")
        host = _checks.concrete(new.model_times)
        if host is not None:
            from .denoiser import check_times

            check_times(new, np.asarray(host), "model_times")
    if updates.get("timesteps") is not None or (new.timesteps is not None and ("schedule" in updates or "sampling_eps" in updates)):
        grids.check_grid(new, new.timesteps, "timesteps")
    return new


class StepOutput(NamedTuple):
    """What :func:`step_pred` returns; unpacks as ``x, x_mean``.

    Attributes:
      prev_sample: :math:`x'`, the sample at the next (smaller) time, with noise.
      prev_sample_mean: :math:`\\bar x`, the same step without the noise term.
    """

    prev_sample: jax.Array
    prev_sample_mean: jax.Array


def create_state(
    num_train_timesteps: Optional[int] = None,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    sampling_eps: Optional[float] = None,
    *,
    schedule: Any = None,
    prediction_type: str = "epsilon",
    diffusers_config: Any = None,
) -> ScoreSdeVpSchedulerState:
    """Build a validated scheduler state (defaults: diffusers' and the paper's).

    Args:
      num_train_timesteps: int in ``[1, 2**24]`` (float32; ``[1, 2**31 - 1]`` under x64: see
        :func:`~sdevp_jax.schedules.check_num_train_timesteps`); ``None`` means 2000 (diffusers' ScoreSdeVpScheduler)
        for a continuous schedule and the schedule's ``N_train`` for a discrete one,
        which it must equal if given. Only reported, as ``len(state)``, for
        continuous schedules.
      beta_min: finite, > 0 (the linear schedule's; unused with ``schedule``).
      beta_max: finite, > ``beta_min`` and at most ``sqrt(finfo.max)`` of JAX's default
        float dtype (1.8e19 in float32; larger overflows), likewise.
      sampling_eps: the smallest time: ``None`` means 1e-3 for a continuous schedule
        and ``1/N_train`` (label 0) for a discrete one; in ``(0, t_max)``, and
        ``>= 1/N_train`` for a discrete schedule; at least the schedule's
        ``smallest_time`` in JAX's default float dtype (4.7e-37 for the default linear
        schedule in float32), below which :math:`\\sigma(t)^2` is not a normal number.
      schedule: a schedule of :mod:`sdevp_jax.schedules`; ``None`` means
        ``schedules.linear(beta_min, beta_max)``, the paper's schedule (diffusers'
        ``ScoreSdeVpScheduler``).
      prediction_type: what the model returns: ``"epsilon"``, ``"v_prediction"`` or
        ``"sample"`` (see :data:`PREDICTION_TYPES`).
      diffusers_config: a :class:`~sdevp_jax.config.DiscreteConfig` to record (set
        by :func:`~sdevp_jax.load_config`).

    Returns:
      A :class:`ScoreSdeVpSchedulerState` with ``timesteps=None``.

    Raises:
      TypeError: a value of the wrong type (``bool``, a string, an array of rank > 0).
      ValueError: a value out of range, NaN or infinite; an unknown ``prediction_type``.

    Examples:
      >>> state = sv.create_state()
      >>> state.beta_min, state.beta_max, state.sampling_eps, state.timesteps is None
      (0.1, 20.0, 0.001, True)
      >>> sv.create_state(schedule=sv.schedules.cosine(), prediction_type="v_prediction").prediction_type
      'v_prediction'
    """
    prediction_type = check_prediction_type(prediction_type)
    if schedule is None:
        beta_min = _checks.real_scalar("beta_min", beta_min)
        beta_max = _checks.real_scalar("beta_max", beta_max)
        _check_linear(beta_min, beta_max)
        schedule = schedules.LinearSchedule(beta_min=beta_min, beta_max=beta_max)
    elif not isinstance(schedule, schedules.SCHEDULE_TYPES):
        raise TypeError(
            "schedule must be None or a schedule from sv.schedules (linear, cosine, discrete), "
            f"got {type(schedule).__name__}"
        )
    if schedule.is_discrete:
        if num_train_timesteps is not None and num_train_timesteps != schedule.num_train_timesteps:
            raise ValueError(
                f"num_train_timesteps = {num_train_timesteps!r} must equal the discrete schedule's "
                f"N_train = {schedule.num_train_timesteps}"
            )
        num_train_timesteps = schedule.num_train_timesteps
    num_train_timesteps = schedules.check_num_train_timesteps(
        2000 if num_train_timesteps is None else num_train_timesteps
    )
    if sampling_eps is None:
        sampling_eps = 1.0 / num_train_timesteps if schedule.is_discrete else 1e-3
    sampling_eps = _checks.real_scalar("sampling_eps", sampling_eps)
    _check_eps(sampling_eps, schedule, num_train_timesteps)
    return ScoreSdeVpSchedulerState(
        schedule=schedule,
        sampling_eps=sampling_eps,
        num_train_timesteps=num_train_timesteps,
        min_discrete_steps=_min_discrete_steps(schedule),
        prediction_type=prediction_type,
        diffusers_config=diffusers_config,
    )


def set_timesteps(
    state: ScoreSdeVpSchedulerState,
    num_inference_steps: Optional[int] = None,
    *,
    spacing: Optional[str] = None,
    timesteps: Optional[ArrayLike] = None,
    steps_offset: Optional[int] = None,
    label_rounding: Optional[str] = None,
    model_times: Optional[ArrayLike] = None,
) -> ScoreSdeVpSchedulerState:
    r"""Return a new state with a grid of ``num_inference_steps`` decreasing times.

    The input state is left as it was. ``state.timesteps`` always holds continuous
    times, in JAX's default float dtype (float64 under ``jax_enable_x64``, float32
    otherwise), from the top of the schedule (``t_max``) down to ``sampling_eps``.
    ``spacing`` (:data:`~sdevp_jax.grids.SPACINGS`; ``None`` means :func:`~sdevp_jax.grids.default_spacing`):

    * ``"reference"`` (the linear schedule only; its default): diffusers'
      ``linspace(1, sampling_eps, N)``, stepped as ScoreSdeVpScheduler steps it --
      ``dt = -1/N`` for every step and the discrete chain's rates ``beta(t)/N``
      (the paper's code). ``dpm_solver``
      builds its own log-SNR grid between the same end points on it.
    * ``"time_uniform"``: ``linspace(t_max, sampling_eps, N)``.
    * ``"time_quadratic"``: uniform in :math:`\sqrt t` (DPM-Solver's, Lu et al. 2022).
    * ``"logsnr"``: uniform in :math:`\lambda = \log(\alpha/\sigma)` (Lu et al. 2022).
    * ``"karras"``: :math:`\sigma/\alpha` uniform in its :math:`1/\rho`-th power,
      :math:`\rho = 7` (Karras et al., NeurIPS 2022, eq. 5).
    * ``"linspace"``, ``"leading"``, ``"trailing"`` (discrete schedules only):
      diffusers' training labels (:func:`sdevp_jax.grids.diffusers_label_spacing`, of
      the state's config class, DDIMScheduler's by default), at :math:`t = (n + 1)/N_{train}`;
      ``steps_offset`` (default: the config's, else 0) shifts ``leading``.
    * ``"karras_sigmas"``, ``"exponential_sigmas"``, ``"beta_sigmas"``, ``"lu_lambdas"`` (discrete
      schedules only): diffusers' sigma grids (:func:`sdevp_jax.grids.sigma_grid`), whose model
      labels the state keeps in ``model_labels``.

    On every grid but ``"reference"`` step ``i`` spans ``[t_{i+1}, t_i]``, the last
    one ``[0, t_{N-1}]``: the steps of :mod:`sdevp_jax.samplers` use that interval
    (Euler--Maruyama's ``dt``, the discrete chain's exact rate
    :math:`1 - \alpha(t_i)^2/\alpha(t_{i+1})^2`).

    Args:
      state: a state from :func:`create_state`.
      num_inference_steps: a Python int >= 1 (static: it sets an array length), at most
        :func:`~sdevp_jax.grids.max_inference_steps` (checked before anything is allocated); may be left
        out with ``timesteps``.
      spacing: the grid's name, or ``None``.
      timesteps: instead of ``spacing``, any strictly decreasing 1-D array of times
        in ``(0, t_max]`` (``[1/N_train, 1]`` for a discrete schedule), on the host;
        recorded as ``spacing = "custom"``.
      steps_offset: an int >= 0, for the label spacings.
      label_rounding: a discrete schedule's model labels at the grid's times (:data:`LABEL_ROUNDINGS`):
        ``None`` (default) diffusers' rule on its sigma grids (rounded, or truncated where its class
        truncates) and the exact label elsewhere; ``"exact"`` the fractional label (on a sigma grid,
        diffusers' log-sigma interpolation before its rounding); ``"round"`` or ``"truncate"`` that label
        rounded to the nearest integer or truncated, as diffusers feeds its model on its fractional-label
        grids while stepping with the unrounded noise level. Off the grid's times (a solver's
        intermediate points) the model always gets the exact label.
      model_times: ``None`` (default), or one time per grid point, shape ``(N,)``, on the host: the time the
        model is evaluated at for grid point ``k`` while the solver steps with the grid's time there (the
        state's ``model_times``; from :func:`~sdevp_jax.fit_grid` with ``fit_model_times=True``). Each in the
        schedule's range; not with a grid that has its own labels (a sigma grid, ``label_rounding``). Only
        the solvers that call the model at grid points alone run such a state (``Solver.model_at_grid_points``:
        ``ddim``, ``dpm_solver_pp``, ``sde_dpm_solver_pp``, ``unipc``, ``deis``, ``ipndm``); the others refuse it.

    Returns:
      The new state.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 1000)
      >>> state.timesteps.shape, state.spacing, float(state.timesteps[0])
      ((1000,), 'reference', 1.0)
      >>> sv.set_timesteps(sv.create_state(), 20, spacing="logsnr").spacing
      'logsnr'
    """
    if not isinstance(state, ScoreSdeVpSchedulerState):
        raise TypeError(f"state must be a ScoreSdeVpSchedulerState from sv.create_state, got {type(state).__name__}")
    if model_times is not None:
        new = set_timesteps(state, num_inference_steps, spacing=spacing, timesteps=timesteps,
                            steps_offset=steps_offset, label_rounding=label_rounding)
        try:
            times = np.asarray(model_times, np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"model_times must be an array of times, got {type(model_times).__name__}") from err
        if times.ndim != 1 or not np.all(np.isfinite(times)):
            raise ValueError(f"model_times must be a 1-D array of finite times, got {times}")
        return new.replace(model_times=jnp.asarray(times, new.timesteps.dtype))
    if label_rounding is not None and label_rounding not in LABEL_ROUNDINGS:
        raise ValueError(f"label_rounding must be None or one of {list(LABEL_ROUNDINGS)}, got {label_rounding!r}")
    if label_rounding is not None and not state.schedule.is_discrete:
        raise ValueError(f"label_rounding={label_rounding!r} applies to a discrete schedule's labels; this state's "
                         f"schedule is {type(state.schedule).__name__}, whose model takes the continuous time")
    if timesteps is not None:
        if spacing is not None:
            raise ValueError("give spacing or timesteps, not both")
        grid = grids.custom_grid(state, timesteps)
        if num_inference_steps is not None and num_inference_steps != grid.shape[0]:
            raise ValueError(
                f"num_inference_steps = {num_inference_steps!r} must equal len(timesteps) = {grid.shape[0]}"
            )
        return state.replace(timesteps=grid, spacing="custom", spacing_given=True,
                             model_labels=_rounded_labels(state, grid, None, label_rounding))
    n = _checks.positive_int("num_inference_steps", num_inference_steps)
    most = grids.max_inference_steps(state)
    if n > most:
        raise ValueError(
            f"num_inference_steps must be in [1, {most}]: a strictly decreasing grid in [sampling_eps, t_max] "
            f"holds at most that many {_checks.default_float().name} times (and steps are indexed with int32), got {n}"
        )
    given = spacing is not None
    spacing = grids.default_spacing(state) if spacing is None else spacing
    if not isinstance(spacing, str) or spacing not in grids.SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, grids.SPACINGS))}, got {spacing!r}")
    if spacing == "reference":
        if not isinstance(state.schedule, schedules.LinearSchedule):
            raise ValueError(
                "spacing='reference' (ScoreSdeVpScheduler's grid and step) exists for the linear schedule only; "
                f"this state's schedule is {type(state.schedule).__name__}"
            )
        grid = jnp.linspace(1.0, state.sampling_eps, n)
    elif spacing in grids.LABEL_SPACINGS:
        grid, labels = grids.label_grid(state, n, spacing, steps_offset)
        if labels is not None:  # fractional labels of the sigma-space schedulers
            return state.replace(timesteps=grid, spacing=spacing, spacing_given=given,
                                 model_labels=_rounded_labels(state, grid, labels, label_rounding))
    elif spacing in grids.SIGMA_SPACINGS:
        grid, labels = grids.sigma_grid(state, n, spacing, rounding=label_rounding)
        return state.replace(timesteps=grid, spacing=spacing, spacing_given=given, model_labels=labels)
    else:
        grid = grids.continuous_grid(state, n, spacing)
    return state.replace(timesteps=grid, spacing=spacing, spacing_given=given,
                         model_labels=_rounded_labels(state, grid, None, label_rounding))


#: ``set_timesteps``' ``label_rounding`` values (``None``: the grid's default).
LABEL_ROUNDINGS = ("exact", "round", "truncate")


def _rounded_labels(state: ScoreSdeVpSchedulerState, grid: jax.Array, labels, rounding: Optional[str]):
    """The model labels at ``grid``'s times with ``rounding``: ``labels`` (the grid's own fractional labels, or
    ``None`` for :math:`tN - 1`) rounded or truncated; ``None`` or ``"exact"``: ``labels`` unchanged."""
    if rounding is None or rounding == "exact":
        return labels
    exact = np.asarray(grid, np.float64) * state.num_train_timesteps - 1.0 if labels is None else np.asarray(labels)
    return jnp.asarray(np.round(exact) if rounding == "round" else np.trunc(exact), grid.dtype)


def next_times(state: ScoreSdeVpSchedulerState) -> jax.Array:
    """Each grid time's successor: ``timesteps[1:]`` and then 0, shape ``(N,)``."""
    grid = state.timesteps
    return jnp.concatenate([grid[1:], jnp.zeros((1,), grid.dtype)])


def _next_time_of(state: ScoreSdeVpSchedulerState, t: jax.Array) -> jax.Array:
    """The grid time after ``t`` (0 after the last): the largest grid time below ``t`` -- ``t`` on the grid."""
    grid = state.timesteps.astype(t.dtype)
    following = jnp.concatenate([grid, jnp.zeros((1,), t.dtype)])
    index = jnp.sum(grid[None, :] >= t.reshape(-1, 1), axis=1)  # grid points at or above t
    return following[index].reshape(t.shape)


def require_timesteps(state: ScoreSdeVpSchedulerState, caller: str) -> int:
    """The number of timesteps, or a ValueError if :func:`set_timesteps` was not called."""
    if not isinstance(state, ScoreSdeVpSchedulerState):
        raise TypeError(
            f"{caller}: state must be a ScoreSdeVpSchedulerState from sv.create_state, "
            f"got {type(state).__name__}"
        )
    if state.timesteps is None:
        raise ValueError(
            f"{caller}: state.timesteps is not set; call sv.set_timesteps(state, num_inference_steps) first"
        )
    return state.timesteps.shape[0]


def check_t(t: jax.Array, t_host: Optional[np.ndarray], schedule: Any = None, dtype: Any = None) -> None:
    """``t`` finite and > 0: on the host if it is there, with ``checkify.debug_check`` if traced.

    A host ``t`` must also be at least ``schedule``'s ``smallest_time`` in the compute
    ``dtype`` (below it sigma(t) is 0 in floating point). A concrete ``jax.Array`` is
    not read back (that would sync with the device at every eager step); see the
    module docstring. The package's loops build their steps with ``trusted=True``
    (:class:`PreparedStep`): their ``t`` come from a validated grid, and their compiled
    program stays free of a per-step check and the same from one trace to the next (a
    ``checkify.debug_check`` numbers its error codes per process, which would change the
    persistent compilation cache's key).
    """
    message = "t must be finite and > 0 (sigma(0) = 0)"
    if t_host is not None:
        if not np.all(np.isfinite(t_host) & (t_host > 0)):
            raise ValueError(f"{message}, got {t_host}")
        if schedule is not None:
            floor = smallest_time(schedule, dtype)
            if not np.all(t_host >= floor):
                raise grids.below_floor("t", t_host, floor, f"t_max = {schedule.t_max!r}]", dtype)
    elif _checks.is_traced(t):
        checkify.debug_check(jnp.all(jnp.isfinite(t) & (t > 0)), message)


def _check_t_max(state: ScoreSdeVpSchedulerState, t_host: np.ndarray) -> None:
    """A step's host ``t`` at most the schedule's ``t_max`` (the cosine schedule's beta is infinite at 1: NaN)."""
    t_max = _checks.concrete(state.schedule.t_max)
    t = np.asarray(t_host, np.float64)
    if t_max is not None and not np.all(t <= np.max(t_max) * (1 + 1e-6)):
        raise ValueError(f"t must be <= the schedule's t_max = {state.schedule.t_max!r}, got {t_host}")


def broadcast_t(t: jax.Array, x: jax.Array) -> jax.Array:
    """Check ``t`` (0-d or ``(batch,)``) against ``x`` and shape it to broadcast from the left."""
    if t.ndim == 0:
        return t
    if t.ndim != 1:
        raise ValueError(f"t must be 0-d or of shape (batch,), got shape {t.shape}")
    if x.ndim == 0 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t of shape {t.shape} must match x's batch dimension: x has shape {x.shape}"
        )
    return t.reshape(t.shape + (1,) * (x.ndim - 1))


class PreparedStep:
    """The checked inputs of one step and the per-sample time, in the compute dtype.

    Shared by :func:`step_pred` and every sampler in :mod:`sdevp_jax.samplers`, so
    that they validate alike (at call or trace time) and compute alike: in
    ``compute_dtype(x.dtype)`` (at least float32), returning ``x``'s dtype. The
    model's output is converted to the noise prediction here, once
    (:func:`eps_from_prediction`), and the step's interval is found here: ``h = 1/N``
    on the ``"reference"`` grid, ``t - t_next`` on every other.
    """

    def __init__(self, caller, state, model_output, x, t, key, noise, t_next=None, *, trusted=False):
        """``trusted``: the inputs come from a loop over a validated grid (the solvers of
        :mod:`sdevp_jax.solvers`), so nothing is checked; the arithmetic is the same."""
        self.n = state.timesteps.shape[0] if trusted else require_timesteps(state, caller)
        self.caller = caller
        self.state = state
        t_host = None
        if trusted:
            self.x, out, t = x, model_output, t
        else:
            self.x = _checks.float_array("x", x)
            out = _checks.float_array("model_output", model_output)
            if variance_type(state) in LEARNED_VARIANCE:
                check_learned_output(state, "model_output", out.shape, self.x.shape)
            elif out.shape != self.x.shape:
                raise ValueError(f"model_output must have x's shape {self.x.shape}, got {out.shape}")
            t_host = _checks.host_value(t)
            t = jnp.asarray(t)
            if not (jnp.issubdtype(t.dtype, jnp.floating) or jnp.issubdtype(t.dtype, jnp.integer)):
                raise TypeError(f"t must be a real number or array, got dtype {t.dtype}")
            check_t(t, t_host, state.schedule, _checks.compute_dtype(self.x.dtype))
            if t_host is not None:
                _check_t_max(state, t_host)
            if noise is None:
                _checks.prng_key("key", key)
            else:
                noise = _checks.float_array("noise", noise)
                if noise.shape != self.x.shape:
                    raise ValueError(f"noise must have x's shape {self.x.shape}, got {noise.shape}")
        self.dtype = _checks.compute_dtype(self.x.dtype)
        self.schedule = state.schedule.cast(self.dtype)
        self.t = broadcast_t(t.astype(self.dtype), self.x)
        self.xc = self.x.astype(self.dtype)
        self._alpha_sigma = None
        if state.uses_reference_step:
            self.t_next = None
        else:
            if t_next is None:
                t_next = _next_time_of(state, t.astype(self.dtype))
            else:
                t_next_host = None if trusted else _checks.host_value(t_next)
                if t_next_host is not None and t_host is not None and not np.all(
                    (t_next_host >= 0) & (t_next_host < t_host)
                ):
                    raise ValueError(f"t_next must be in [0, t), got t_next={t_next_host}, t={t_host}")
                t_next = jnp.asarray(t_next)
            self.t_next = broadcast_t(t_next.astype(self.dtype), self.x)
        out, variance = split_output(state, out, self.x)
        self.model_variance = None if variance is None else variance.astype(self.dtype)
        self.output = out.astype(self.dtype)
        self.eps = eps_from_prediction(state.prediction_type, self.output, self.xc,
                                       *(self.alpha_sigma() if state.prediction_type != "epsilon" else (None, None)))
        self._key, self._noise = key, noise

    def x0(self) -> jax.Array:
        r"""The data prediction :math:`\hat x_0` from the model's output (:func:`x0_from_prediction`: diffusers'
        forms; from a v- or x0-model it is finite at :math:`\alpha = 0`, where :math:`(x - \sigma\hat\epsilon)/\alpha`
        is not)."""
        return x0_from_prediction(self.state.prediction_type, self.output, self.xc, *self.alpha_sigma())

    def alpha_sigma(self) -> tuple[jax.Array, jax.Array]:
        if self._alpha_sigma is None:
            self._alpha_sigma = self.schedule.alpha_sigma(self.t)
        return self._alpha_sigma

    def beta(self) -> jax.Array:
        return self.schedule.beta(self.t)

    def sigma(self) -> jax.Array:
        return self.alpha_sigma()[1] if self._alpha_sigma is not None else self.schedule.sigma(self.t)

    def step_size(self) -> Any:
        """The step's ``h = -dt``: the reference's ``1/N`` (a Python float), else ``t - t_next``."""
        if self.t_next is None:
            return 1.0 / self.n
        return self.t - self.t_next

    def rate(self) -> jax.Array:
        r"""The discrete VP chain's per-step rate :math:`\beta_i` (see :mod:`sdevp_jax.samplers`).

        On the ``"reference"`` grid the paper's code's :math:`\beta(t)/N` (checked
        :math:`< 1` by :func:`check_reference_rate`); on every other grid the exact
        :math:`1 - \alpha(t)^2/\alpha(t_{next})^2 = -\operatorname{expm1}(2(\log\alpha(t) - \log\alpha(t_{next})))`,
        always in (0, 1) -- for a discrete model on its training grid these are its training betas.
        """
        if self.t_next is None:
            check_reference_rate(self, self.state, self.caller)
            return self.beta() / self.n
        return -jnp.expm1(2.0 * (self.schedule.log_alpha(self.t) - self.schedule.log_alpha(self.t_next)))

    def sqrt_keep(self, rate: jax.Array) -> jax.Array:
        r""":math:`\sqrt{1 - \beta_i}` for ``rate`` :math:`= \beta_i` from :meth:`rate`.

        Off the reference grid it is :math:`\alpha(t)/\alpha(t_{next})`, computed as
        :math:`\exp(\log\alpha(t) - \log\alpha(t_{next}))`: ``sqrt(1 - rate)`` would
        keep no float32 digits where :math:`\beta_i` is within 1e-7 of 1 (a large
        first step of a steep schedule).
        """
        if self.t_next is None:
            return jnp.sqrt(1.0 - rate)
        return jnp.exp(self.schedule.log_alpha(self.t) - self.schedule.log_alpha(self.t_next))

    def z(self) -> jax.Array:
        """The step's standard normal noise: the given ``noise``, or a draw from ``key``."""
        if self._noise is None:
            return jax.random.normal(self._key, self.x.shape, self.dtype)
        return self._noise.astype(self.dtype)

    def out(self, x_next: jax.Array, x_mean: jax.Array) -> StepOutput:
        return StepOutput(x_next.astype(self.x.dtype), x_mean.astype(self.x.dtype))


def check_reference_rate(p: PreparedStep, state: ScoreSdeVpSchedulerState, caller: str) -> None:
    r"""On the reference grid, :math:`\beta_{\max} < N` (else :math:`\sqrt{1 - \beta_i}` is NaN).

    Checked at call or trace time -- also under ``jit``, where the state's floats
    are tracers -- from ``beta_max`` itself when it is on the host, else from the
    state's static ``min_discrete_steps``. Only when ``beta_max`` was traced when
    the state was built (a state made inside ``jit``/``vmap``/``grad``) is neither
    known; then the check is a ``checkify.debug_check``, which raises under
    ``checkify.checkify`` and is compiled away otherwise (see the module docstring).
    """
    bmax = _checks.host_value(state.beta_max)
    if bmax is not None:
        ok, shown = bool(np.all(bmax < p.n)), f"beta_max={state.beta_max}"
    elif state.min_discrete_steps is not None:
        ok = p.n >= state.min_discrete_steps
        shown = f"beta_max >= {state.min_discrete_steps - 1} (num_inference_steps must be >= {state.min_discrete_steps})"
    else:
        checkify.debug_check(jnp.all(jnp.asarray(state.beta_max) < p.n),
                             f"{caller} needs num_inference_steps > beta_max; got num_inference_steps={p.n}")
        ok, shown = True, ""
    if not ok:
        raise ValueError(
            f"{caller} needs num_inference_steps > beta_max (its per-step rate beta(t)/N "
            f"must be < 1): got num_inference_steps={p.n}, {shown}"
        )


def step_pred(
    state: ScoreSdeVpSchedulerState,
    model_output: ArrayLike,
    x: ArrayLike,
    t: ArrayLike,
    key: Optional[jax.Array],
    *,
    noise: Optional[ArrayLike] = None,
    t_next: Optional[ArrayLike] = None,
) -> StepOutput:
    r"""One Euler--Maruyama step of the reverse VP SDE, exactly as diffusers takes it.

    Pure: safe under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. The coefficients
    and the update are computed in ``promote_types(x.dtype, float32)`` (float32
    for bfloat16/float16/float32 ``x``, float64 for float64 ``x``); both outputs
    have ``x``'s dtype.

    Args:
      state: a state after :func:`set_timesteps`; on the ``"reference"`` grid its ``N``
        sets :math:`\Delta t = -1/N` (diffusers' step); on any other grid
        :math:`\Delta t = t_{next} - t`.
      model_output: the model's output at ``(x, t)``, of ``state.prediction_type``
        (ScoreSdeVpScheduler's: the noise prediction :math:`\hat\epsilon`), shape of ``x``.
      x: the current sample, any float dtype, shape ``(batch, ...)`` (or any shape
        when ``t`` is 0-d).
      t: the current time, 0-d or shape ``(batch,)``; a ``(batch,)`` vector
        broadcasts from the left over ``x``'s trailing dimensions.
      key: a PRNG key (``jax.random.key`` or legacy ``PRNGKey``) for :math:`z`; may
        be ``None`` when ``noise`` is given.
      noise: optional :math:`z`, shape of ``x``; replaces the draw from ``key``.
      t_next: off the reference grid, the time the step goes to (0-d or
        ``(batch,)``, in ``[0, t)``); default: the grid time after ``t`` (0 after the last).

    Returns:
      ``StepOutput(prev_sample, prev_sample_mean)``, which unpacks as ``x, x_mean``.

    Raises:
      ValueError: timesteps not set; shapes that do not match; a ``t`` on the host
        (Python number, NumPy value) that is not finite and > 0 (a traced ``t`` is
        checked under ``checkify``; see the module docstring).
      TypeError: non-float ``x``/``model_output``/``noise``; a bad ``key``.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 1000)
      >>> x = jax.random.normal(jax.random.key(0), (4, 2))
      >>> eps_hat = jnp.zeros((4, 2))   # the model's noise prediction at (x, t)
      >>> x, x_mean = sv.step_pred(state, eps_hat, x, state.timesteps[0], jax.random.key(1))
      >>> x.shape, x_mean.shape
      ((4, 2), (4, 2))
    """
    return step_pred_update(PreparedStep("step_pred", state, model_output, x, t, key, noise, t_next))


def step_pred_update(p: PreparedStep) -> StepOutput:
    """:func:`step_pred`'s arithmetic on prepared (checked, or trusted) inputs."""
    # The reference computes x + (-beta x / 2 - beta * (-eps / std)) * dt with
    # dt = -h = -1/N. With its per-sample coefficients collected, that is
    #     x_mean = x + [(h beta / 2) x - (h beta / std) eps],
    # the same number with fewer roundings on the sample arrays; the increment in
    # brackets is formed first, so its rounding error is relative to the
    # increment, not to x (which matters for small h).
    h = p.step_size()  # the reference's |dt|: 1/N, not the grid spacing; t - t_next off the reference grid.
    beta_t = p.beta()
    coeff_x = 0.5 * h * beta_t
    coeff_eps = h * beta_t / p.sigma()
    # g(t) sqrt(-dt), in the reference's order
    coeff_z = sde.diffusion(beta_t) * (math.sqrt(h) if isinstance(h, float) else jnp.sqrt(h))
    x_mean = p.xc + (coeff_x * p.xc - coeff_eps * p.eps)
    return p.out(x_mean + coeff_z * p.z(), x_mean)


