r"""The model boundary: the model's time input, its output's conversions, and the one place ``model_fn`` is called.

What a model takes and returns is defined here: :func:`model_time` (the continuous time, or a
discrete schedule's training label) and its inverse, the prediction types
(:data:`PREDICTION_TYPES`: ε, v, :math:`x_0`) and their conversions (:func:`eps_from_prediction`,
:func:`prediction_from_eps`, :func:`x0_from_prediction`), which the scheduler's reference step,
the guidance combinators and the mixtures use too.

A :class:`Denoiser` binds the user's model to the scheduler state, the samples'
dtype and their conditions. It calls ``model_fn(x, model_time(state, t))`` (or
``model_fn(x, t, cond)``) with ``x`` in the samples' dtype and the model's own time
input (:func:`~sdevp_jax.model_time`: the continuous time, or a discrete schedule's
training label), and converts what the model returns (``state.prediction_type``:
:math:`\epsilon`, ``v`` or :math:`x_0`) once, into what each solver's paper uses:

* :meth:`Denoiser.output`: the raw prediction, for the SDE updates, which take it as
  diffusers' ``step_pred`` does and convert it on entry;
* :meth:`Denoiser.eps`: :math:`\hat\epsilon` in the work dtype, the schedule at ``t``
  computed here (the fixed-step ODE solvers, the adaptive solver);
* :meth:`Denoiser.eps_x0`: :math:`(\hat\epsilon, \hat x_0)` with the grid's
  precomputed :math:`\alpha, \sigma` (the grid solvers).

Guidance (:func:`~sdevp_jax.cfg`, :func:`~sdevp_jax.classifier_guidance`) composes in
front of it: a guided model is another ``model_fn``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Optional

import jax
import jax.numpy as jnp

import numpy as np
from jax.typing import ArrayLike

from . import _checks, grids

if TYPE_CHECKING:  # annotations only: the scheduler builds on this module
    from .scheduler import ScoreSdeVpSchedulerState

__all__ = [
    "Denoiser",
    "GuidedModel",
    "clip_range",
    "LEARNED_VARIANCE",
    "variance_type",
    "split_output",
    "check_learned_output",
    "PREDICTION_TYPES",
    "model_time",
    "time_from_model_time",
    "model_time_dtype",
    "eps_from_prediction",
    "prediction_from_eps",
    "x0_from_prediction",
]


class GuidedModel:
    r"""A model combinator the loop cooperates with, beyond ``model_fn(x, t[, cond]) -> prediction``.

    Two cooperations, each a class attribute:

    * ``stateful``: the prediction depends on the run's earlier calls (APG's momentum, CFG-Zero*'s
      first calls). ``init(x) -> memory`` is the memory before the first call, a pytree whose leaves
      lead with the batch (one row per sample, so it follows its sample through chunks and devices);
      the loop threads it from call to call (:func:`sdevp_jax.loops.integrate`), in the order the
      solver calls the model.
    * ``renoise``: besides the guided prediction, ``apply`` returns a second prediction of the
      same parametrization, the one a solver renoises with (CFG++: the unconditional one). The
      solvers with ``renoise_ready`` take the data prediction from the first and the noise from
      the second.

    ``apply(memory, x, t, cond) -> (prediction, renoise_prediction or None, memory)``. Called
    directly (``guided(x, t[, cond])``), a combinator that needs neither gives its prediction;
    the others are refused there, since outside a loop there is nobody to thread the memory or
    take the second prediction.
    """

    stateful: bool = False
    renoise: bool = False

    def init(self, x: jax.Array) -> Any:
        return ()

    def apply(self, memory, x, t, cond):  # pragma: no cover - every combinator overrides it
        raise NotImplementedError

    def __call__(self, x, t, cond=None):
        if self.stateful or self.renoise:
            need = "memory across the run's calls" if self.stateful else "a solver that renoises with its second output"
            raise TypeError(f"{type(self).__name__} needs {need}: pass it as model_fn to sample, sample_ode or "
                            f"invert_ode, which thread it (it cannot be called as a plain model_fn)")
        return self.apply((), x, t, cond)[0]


def is_stateful(model_fn) -> bool:
    """Whether ``model_fn`` keeps memory across a run's calls (:class:`GuidedModel`)."""
    return isinstance(model_fn, GuidedModel) and model_fn.stateful


def renoises(model_fn) -> bool:
    """Whether ``model_fn`` returns a second prediction to renoise with (:class:`GuidedModel`, CFG++)."""
    return isinstance(model_fn, GuidedModel) and model_fn.renoise


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """``model_fn`` bound to ``state``, the samples' dtype ``sample_dtype``, the work ``dtype`` and ``cond``.

    For a stateful :class:`GuidedModel`, ``memory`` is a one-item list holding its memory while
    one step is traced (:meth:`holding`): each call replaces it, and the loop reads it back after
    the step.
    """

    state: Any
    model_fn: Callable
    sample_dtype: Any
    dtype: Any
    cond: Any = None
    memory: Any = dataclasses.field(default=None, compare=False)

    def with_cond(self, cond) -> "Denoiser":
        """The same model with the conditions ``cond`` (one sample's, inside a per-sample solver)."""
        return dataclasses.replace(self, cond=cond)

    @property
    def stateful(self) -> bool:
        return is_stateful(self.model_fn)

    @property
    def renoises(self) -> bool:
        return renoises(self.model_fn)

    def holding(self, memory) -> "Denoiser":
        """The model for one traced step, holding the stateful model's ``memory`` (itself if not stateful)."""
        if not self.stateful:
            return self
        return dataclasses.replace(self, memory=[memory])

    def held(self) -> Any:
        """The memory after the calls made through this model (``()`` if not stateful)."""
        return self.memory[0] if self.stateful else ()

    def _call(self, x: jax.Array, t_model: jax.Array):
        """``(prediction, renoise prediction or None)`` of ``model_fn`` at ``x``, ``t_model`` (with ``cond``)."""
        fn = self.model_fn
        if not isinstance(fn, GuidedModel):
            return (fn(x, t_model) if self.cond is None else fn(x, t_model, self.cond)), None
        if fn.stateful and self.memory is None:
            raise TypeError(f"{type(fn).__name__} keeps memory across a run's calls; this loop does not thread it")
        memory = self.memory[0] if fn.stateful else ()
        out, again, memory = fn.apply(memory, x, t_model, self.cond)
        if fn.stateful:  # the scan's carry keeps its dtypes
            self.memory[0] = jax.tree.map(lambda new, old: jnp.asarray(new).astype(old.dtype), memory, self.memory[0])
        return out, again

    def __call__(self, x: jax.Array, t_model: jax.Array) -> jax.Array:
        """``model_fn`` at ``x`` and the model's time input ``t_model``, with ``cond`` where given."""
        return self._call(x, t_model)[0]

    def output(self, x: jax.Array, t_vec: jax.Array) -> jax.Array:
        """The model's raw prediction at grid times ``t_vec`` (``(batch,)``), in the model's dtype."""
        return self(x, model_time(self.state, t_vec))

    def eps(self, x: jax.Array, t) -> jax.Array:
        r""":math:`\hat\epsilon(x, t)` in the work dtype; ``t`` 0-d or ``(batch,)``."""
        t_vec = jnp.broadcast_to(jnp.asarray(t, model_time_dtype(self.state)), (x.shape[0],))
        out = split_output(self.state, self(x.astype(self.sample_dtype), model_time(self.state, t_vec)), x)[0]
        out = out.astype(self.dtype)
        if self.state.prediction_type == "epsilon":
            return out
        tb = t_vec.astype(self.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return eps_from_prediction(self.state.prediction_type, out, x.astype(self.dtype),
                                   *self.state.schedule.cast(self.dtype).alpha_sigma(tb))

    def model_time_at(self, lam: jax.Array) -> jax.Array:
        r"""The model's time input at the log-SNR ``lam`` (0-d, traced; between grid points), as diffusers' sigma-space
        schedulers (KDPM2) compute it there: on a discrete schedule, the training label interpolated linearly in
        :math:`\log(\sigma/\alpha) = -\lambda` between the labels' (diffusers' ``_sigma_to_t``:
        :func:`sdevp_jax.grids.sigma_to_label` in JAX, clamped to ``[0, N - 1]``); on a continuous one, the time
        itself (:meth:`t_from_log_snr`), which :func:`model_time` gives such a model.

        Examples:
          >>> state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers("linear")), 5)
          >>> model = sv.denoiser.Denoiser(state, lambda x, t: x, jnp.float32, jnp.float32)
          >>> lam = state.schedule.log_snr(jnp.array((499 + 1) / 1000))   # label 499's log-SNR
          >>> round(float(model.model_time_at(lam)), 3)
          499.0
        """
        dtype = model_time_dtype(self.state)
        lam = jnp.asarray(lam).astype(dtype)
        schedule = self.state.schedule.cast(dtype)
        if not schedule.is_discrete:
            return schedule.t_from_log_snr(lam)
        log_alpha = jnp.asarray(schedule.knots).astype(dtype)[1:]  # at labels 0..N-1
        log_rho = 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha)) - log_alpha  # log(sigma/alpha), increasing
        return jnp.interp(-lam, log_rho, jnp.arange(log_rho.shape[0], dtype=dtype))

    @property
    def clip_range(self) -> Optional[float]:
        """The bound the state's diffusers config clips the data prediction to (:func:`clip_range`)."""
        return clip_range(self.state)

    def eps_x0(self, x: jax.Array, t, alpha, sigma, model_t=None) -> tuple[jax.Array, jax.Array]:
        r""":math:`(\hat\epsilon, \hat x_0)` in the work dtype at the grid time ``t`` (0-d), where the
        schedule is ``alpha``, ``sigma``. ``model_t`` (0-d), where given, is the model's time input in place of
        :func:`model_time` of ``t`` (``t`` is then not used): a point off the grid whose label a solver computes
        (:meth:`model_time_at`).

        With a renoising model (CFG++), :math:`\hat x_0` is the guided prediction's and
        :math:`\hat\epsilon` the second prediction's."""
        if model_t is None:
            t_vec = model_time(self.state, jnp.full((x.shape[0],), t, model_time_dtype(self.state)))
        else:
            t_vec = jnp.full((x.shape[0],), model_t, model_time_dtype(self.state))
        out, again = self._call(x.astype(self.sample_dtype), t_vec)
        out = split_output(self.state, out, x)[0].astype(self.dtype)
        x0 = x0_from_prediction(self.state.prediction_type, out, x, alpha, sigma)
        if again is not None:
            out = split_output(self.state, again, x)[0].astype(self.dtype)
        eps = eps_from_prediction(self.state.prediction_type, out, x, alpha, sigma)
        return eps, x0


#: ``variance_type`` values whose models return the prediction and a variance: twice x's channels.
LEARNED_VARIANCE = ("learned", "learned_range")


def variance_type(state: ScoreSdeVpSchedulerState) -> Optional[str]:
    """The state's diffusers config's ``variance_type`` (:attr:`~sdevp_jax.config.DiscreteConfig.variance_type`)."""
    config = state.diffusers_config
    return None if config is None else config.variance_type


def split_output(state: ScoreSdeVpSchedulerState, out: jax.Array, x: jax.Array) -> tuple[jax.Array, Any]:
    """``(prediction, variance half or None)`` of a model output: a learned-variance model (ADM, iDDPM, DiT;
    ``variance_type`` ``"learned"`` or ``"learned_range"``) returns twice x's channels along axis 1, the
    prediction first (Nichol & Dhariwal 2021); every other model returns x's shape."""
    if variance_type(state) not in LEARNED_VARIANCE:
        return out, None
    check_learned_output(state, "model_fn", out.shape, x.shape)
    channels = x.shape[1]
    return out[:, :channels], out[:, channels:]


def output_shape(state: ScoreSdeVpSchedulerState, shape: tuple) -> tuple:
    """The shape ``model_fn`` returns for samples of ``shape`` (:func:`split_output`)."""
    if variance_type(state) in LEARNED_VARIANCE and len(shape) > 1:
        return (shape[0], 2 * shape[1]) + tuple(shape[2:])
    return tuple(shape)


def check_learned_output(state: ScoreSdeVpSchedulerState, name: str, out_shape: tuple, x_shape: tuple) -> None:
    """A ValueError unless ``name``'s shape is twice x's channels along axis 1, as a learned variance asks."""
    if len(x_shape) < 2:
        raise ValueError(f"x must have a channel axis, shape (batch, channels, ...), for a learned variance (the "
                         f"state's variance_type is {variance_type(state)!r}: the model returns 2 x channels), "
                         f"got {tuple(x_shape)}")
    want = output_shape(state, x_shape)
    if tuple(out_shape) != want:
        raise ValueError(f"{name} must have shape {want}, twice x's channels along axis 1 (the prediction, then the "
                         f"variance: the state's variance_type is learned, {variance_type(state)!r}), got {tuple(out_shape)}")


def clip_range(state: ScoreSdeVpSchedulerState) -> Optional[float]:
    r"""``r`` where the state's diffusers config clips the data prediction to ``[-r, r]`` (``clip_sample``), else None.

    The steps that form a data prediction :math:`\hat x_0` clip it there, as diffusers' DDPM and
    DDIM schedulers do: DDIM, DPM-Solver++ (and its SDE variant), UniPC in its data-prediction
    form and the ancestral (DDPM) step; with ``thresholding`` on, a grid solver thresholds
    instead (diffusers' precedence). The noise-prediction steps (Euler-Maruyama, the
    reverse diffusion and Langevin steps, the ODE methods in :math:`\epsilon`: ``dpm_solver``,
    ``euler``, ``heun``, ``adaptive``, UniPC with ``predict_x0=False``) form none and are unchanged.
    Clipping is not smooth: while it acts, a multistep solver's differences of clipped
    predictions are not those of a smooth function, and the solver's order does not hold.
    """
    config = state.diffusers_config
    return None if config is None else config.clip_sample_range


#: The model parametrizations a state can name (``prediction_type``), as diffusers names them.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: Any) -> str:
    """``prediction_type`` if it is one of :data:`PREDICTION_TYPES`, else a ValueError listing them."""
    if not isinstance(prediction_type, str) or prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {', '.join(map(repr, PREDICTION_TYPES))}, got {prediction_type!r}"
        )
    return prediction_type


def model_time(state: ScoreSdeVpSchedulerState, t: ArrayLike) -> jax.Array:
    r"""The time input ``model_fn`` receives at continuous time ``t``: the one convention of the package.

    A continuous schedule's model sees ``t`` itself (for a network trained on the
    paper's labels, wrap it as ``lambda x, t: net(x, t * 999)``). A discrete
    schedule's model sees its training label :math:`n = t N_{train} - 1`, a float in the dtype of ``t``,
    exactly an integer where ``t`` is a training time (to the rounding of ``t``: the nearest integer within
    :math:`2\epsilon (n + 1)`, so a model that casts it to int gets the right label); on diffusers'
    sigma grids, at the grid's times, the label diffusers gives its model there
    (``state.model_labels``). Where the state has ``model_times`` (a time :math:`s_k` per grid point), at
    the grid's time :math:`t_k` the model receives this function's value at :math:`s_k` instead (continuous
    or discrete). Host values are checked against the schedule's range.

    Examples:
      >>> state = sv.create_state(schedule=sv.schedules.from_diffusers("linear", 1e-4, 0.02, 1000))
      >>> [float(n) for n in sv.model_time(state, jnp.array([1.0, 0.5, 0.001]))]   # label n at t = (n + 1)/1000
      [999.0, 499.0, 0.0]
      >>> float(sv.model_time(sv.create_state(), jnp.array(0.5)))   # a continuous schedule: t itself
      0.5
    """
    t_host = _checks.host_value(t)
    if t_host is not None:
        check_times(state, t_host, "t")
    t = jnp.asarray(t)
    model_times = getattr(state, "model_times", None)
    if not state.schedule.is_discrete:
        if model_times is None:
            return t
        if not jnp.issubdtype(t.dtype, jnp.floating):
            t = t.astype(_checks.default_float())
        label, table = t, model_times.astype(t.dtype)
    else:
        if not jnp.issubdtype(t.dtype, jnp.floating):
            t = t.astype(_checks.default_float())
        label = _label(state, t)
        table = state.model_labels if model_times is None else _label(state, model_times.astype(t.dtype))
        if table is None:
            return label
    # at the grid's times the table's input: diffusers' label on a sigma grid, or the model time of the point
    # (state.model_times); elsewhere (a solver's intermediate point) the time's own
    grid = state.timesteps.astype(t.dtype)
    gap = jnp.abs(grid[None, :] - t.reshape(-1, 1))
    nearest = jnp.argmin(gap, axis=1)
    on_grid = jnp.min(gap, axis=1) <= 4.0 * jnp.finfo(t.dtype).eps * t.reshape(-1)
    return jnp.where(on_grid, table.astype(t.dtype)[nearest], label.reshape(-1)).reshape(t.shape)


def _label(state: ScoreSdeVpSchedulerState, t: jax.Array) -> jax.Array:
    """A discrete schedule's label :math:`tN_{train} - 1` at the float times ``t`` (see :func:`model_time`)."""
    label = t * state.num_train_timesteps - 1.0
    # a training time gives its integer label exactly: t N - 1 misses it by the rounding of t (a model that casts
    # its time to int would get 249 for 249.99998); within that rounding, 2 eps (n + 1), the nearest integer
    nearest = jnp.round(label)
    rounding = 2.0 * jnp.finfo(t.dtype).eps * (jnp.abs(label) + 1.0)
    return jnp.where(jnp.abs(label - nearest) <= rounding, nearest, label)


def time_from_model_time(state: ScoreSdeVpSchedulerState, model_t: ArrayLike) -> jax.Array:
    r"""The inverse of :func:`model_time`: ``t`` itself, or :math:`(n + 1)/N_{train}` for a label ``n``.

    Examples:
      >>> state = sv.create_state(schedule=sv.schedules.from_diffusers("linear", 1e-4, 0.02, 1000))
      >>> float(sv.time_from_model_time(state, jnp.array(499.0)))
      0.5
    """
    host = _checks.host_value(model_t)
    model_t = jnp.asarray(model_t)
    if not jnp.issubdtype(model_t.dtype, jnp.floating):
        model_t = model_t.astype(_checks.default_float())
    if not state.schedule.is_discrete:
        if host is not None:
            check_times(state, host, "model_t")
        return model_t
    n = state.num_train_timesteps
    if host is not None:
        bad = np.flatnonzero(~((host >= 0) & (host <= n - 1)).reshape(-1))
        if bad.size:
            raise ValueError(
                f"model_t, a discrete schedule's label, must lie in [0, num_train_timesteps - 1] = [0, {n - 1}], "
                f"got {float(host.reshape(-1)[bad[0]])!r}"
            )
    return (model_t + 1.0) / n


def check_times(state: ScoreSdeVpSchedulerState, t: np.ndarray, name: str) -> None:
    """Host times inside ``(0, t_max]`` (``[1/N_train, 1]`` for a discrete schedule)."""
    t = np.asarray(t, np.float64).reshape(-1)
    low, _ = grids.eps_range(state.schedule, state.num_train_timesteps)
    t_max = _checks.concrete(state.schedule.t_max)
    ok = np.isfinite(t) & ((t >= low * (1 - 1e-6)) if state.schedule.is_discrete else (t > 0))
    if t_max is not None:
        ok &= t <= np.max(t_max) * (1 + 1e-6)
    bad = np.flatnonzero(~ok)
    if bad.size:
        where = "[1/num_train_timesteps, 1]" if state.schedule.is_discrete else f"(0, t_max = {state.schedule.t_max!r}]"
        raise ValueError(f"{name} must lie in {where}, got {float(t[bad[0]])!r}")
    floor = grids.smallest_time(state.schedule)
    if not np.all(t >= floor):
        raise grids.below_floor(name, float(np.min(t)), floor, f"t_max = {state.schedule.t_max!r}]")


def model_time_dtype(state: ScoreSdeVpSchedulerState) -> np.dtype:
    """The dtype every loop passes ``t`` to ``model_fn`` in: the grid's (JAX's default float before a grid is set)."""
    if state.timesteps is None:
        return jnp.zeros(()).dtype
    return state.timesteps.dtype


def eps_from_prediction(prediction_type: str, output: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    r"""The noise prediction :math:`\hat\epsilon` from a model output of ``prediction_type``.

    With :math:`x = \alpha x_0 + \sigma\epsilon` and :math:`v = \alpha\epsilon - \sigma x_0`
    (Salimans & Ho, ICLR 2022): :math:`\hat\epsilon = \alpha v + \sigma x` from a v-model,
    :math:`\hat\epsilon = (x - \alpha\hat x_0)/\sigma` from an :math:`x_0`-model; an
    ε-model's output is returned as it is (no arithmetic).
    """
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha * output + sigma * x
    return (x - alpha * output) / sigma


def prediction_from_eps(prediction_type: str, eps: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    r"""The inverse of :func:`eps_from_prediction`: :math:`v = (\epsilon - \sigma x)/\alpha`, :math:`x_0 = (x - \sigma\epsilon)/\alpha`."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return (eps - sigma * x) / alpha
    return (x - sigma * eps) / alpha


def x0_from_prediction(prediction_type: str, output: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    r"""The data prediction :math:`\hat x_0` from a model output of ``prediction_type``.

    :math:`(x - \sigma\hat\epsilon)/\alpha` from an ε-model, :math:`\alpha x - \sigma v` from a
    v-model (Salimans & Ho 2022), the output itself from an :math:`x_0`-model: the
    forms diffusers' solvers use, so that their roundings match.
    """
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - sigma * output
    return output
