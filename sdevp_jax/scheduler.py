r"""The reference scheduler: diffusers' ``ScoreSdeVpScheduler`` as pure functions.

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

Checks under ``jit`` (no silent NaN). Under ``jax.jit(sv.sample, static_argnums=(1, 3))``
the state's floats are tracers, so a check on their values cannot run at trace
time. Each check therefore runs where the value is known:

* the config (``beta_min > 0``, ``beta_max > beta_min``, ``0 < sampling_eps < 1``) is
  checked by :func:`create_state` and by ``state.replace`` whenever the values are
  concrete, so a state's grid lies in ``[sampling_eps, 1]``, away from
  :math:`\sigma(0) = 0`;
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

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import checkify
from jax.typing import ArrayLike

from . import _checks, sde

__all__ = [
    "ScoreSdeVpSchedulerState",
    "StepOutput",
    "create_state",
    "set_timesteps",
    "step_pred",
    "model_time_dtype",
]


@struct.dataclass
class ScoreSdeVpSchedulerState:
    """The scheduler's configuration and timestep grid: an immutable pytree.

    The float config fields are pytree leaves (so a state can be passed to
    ``jax.jit``, batched with ``jax.vmap`` or differentiated); they are Python
    floats when built by :func:`create_state` from concrete values.
    ``num_train_timesteps`` is static metadata that the sampler never uses
    (diffusers only reports it as the scheduler's ``len``).

    ``state.replace(**fields)`` checks concrete config values as
    :func:`create_state` does and keeps ``min_discrete_steps`` up to date (a
    ``dataclasses.replace`` or the raw constructor does neither: use ``replace``).

    Attributes:
      beta_min: :math:`\\beta_{\\min} > 0`.
      beta_max: :math:`\\beta_{\\max} > \\beta_{\\min}`.
      sampling_eps: the last timestep, in (0, 1).
      timesteps: ``linspace(1, sampling_eps, N)``, shape ``(N,)``; ``None`` until
        :func:`set_timesteps` is called.
      num_train_timesteps: static; defaults to 2000 as in diffusers.
      min_discrete_steps: static; the smallest ``num_inference_steps`` the discrete
        chain accepts, ``floor(beta_max) + 1`` (its per-step rates ``beta(t)/N`` must
        be < 1), recorded whenever ``beta_max`` is concrete; ``None`` when it was
        traced. Static so that a jitted sampler can check it at trace time; a
        jitted function therefore compiles once per value of ``floor(beta_max)``.
    """

    beta_min: Any
    beta_max: Any
    sampling_eps: Any
    timesteps: Optional[jax.Array] = None
    num_train_timesteps: int = struct.field(pytree_node=False, default=2000)
    min_discrete_steps: Optional[int] = struct.field(pytree_node=False, default=None)

    @property
    def num_inference_steps(self) -> Optional[int]:
        """``N``, the number of timesteps (``None`` before :func:`set_timesteps`)."""
        return None if self.timesteps is None else self.timesteps.shape[0]

    def __len__(self) -> int:
        return self.num_train_timesteps


def _concrete(value: Any) -> Optional[np.ndarray]:
    """``value`` as a NumPy array if it is known now (host or a concrete ``jax.Array``), else ``None``."""
    if _checks.is_traced(value):
        return None
    host = _checks.host_value(value)
    if host is not None:
        return host
    return np.asarray(value) if isinstance(value, jax.Array) else None


def _min_discrete_steps(beta_max: Any) -> Optional[int]:
    """``floor(max beta_max) + 1`` from a concrete ``beta_max`` (``None`` when traced or not finite)."""
    value = _concrete(beta_max)
    if value is None or value.size == 0 or not np.all(np.isfinite(value)):
        return None
    return int(math.floor(float(np.max(value)))) + 1


def _check_config(beta_min: Any, beta_max: Any, sampling_eps: Any) -> None:
    """The config's ranges, elementwise, for the values that are concrete (tracers are skipped)."""
    bmin, bmax, eps = _concrete(beta_min), _concrete(beta_max), _concrete(sampling_eps)
    for name, value in (("beta_min", bmin), ("beta_max", bmax), ("sampling_eps", eps)):
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite, got {value}")
    if bmin is not None and not np.all(bmin > 0):
        raise ValueError(f"beta_min must be > 0, got {beta_min}")
    if bmin is not None and bmax is not None and not np.all(bmax > bmin):
        raise ValueError(f"beta_max must be > beta_min = {beta_min}, got {beta_max}")
    if eps is not None and not np.all((eps > 0.0) & (eps < 1.0)):
        raise ValueError(f"sampling_eps must be in the open interval (0, 1), got {sampling_eps}")


def _replace(self: ScoreSdeVpSchedulerState, **updates: Any) -> ScoreSdeVpSchedulerState:
    """A new state with ``updates``: checked like :func:`create_state`, ``min_discrete_steps`` kept up to date."""
    config = {k: updates.get(k, getattr(self, k)) for k in ("beta_min", "beta_max", "sampling_eps")}
    if any(k in updates for k in config):
        _check_config(**config)
    if "beta_max" in updates and "min_discrete_steps" not in updates:
        updates["min_discrete_steps"] = _min_discrete_steps(updates["beta_max"])
    return dataclasses.replace(self, **updates)


# flax.struct installs a plain dataclasses.replace; ours also checks and keeps the static bound.
ScoreSdeVpSchedulerState.replace = _replace


class StepOutput(NamedTuple):
    """What :func:`step_pred` returns; unpacks as ``x, x_mean``.

    Attributes:
      prev_sample: :math:`x'`, the sample at the next (smaller) time, with noise.
      prev_sample_mean: :math:`\\bar x`, the same step without the noise term.
    """

    prev_sample: jax.Array
    prev_sample_mean: jax.Array


def create_state(
    num_train_timesteps: int = 2000,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    sampling_eps: float = 1e-3,
) -> ScoreSdeVpSchedulerState:
    """Build a validated scheduler state (defaults: diffusers' and the paper's).

    Args:
      num_train_timesteps: int >= 1; only reported, as ``len(state)``.
      beta_min: finite, > 0.
      beta_max: finite, > ``beta_min``.
      sampling_eps: finite, in the open interval (0, 1).

    Returns:
      A :class:`ScoreSdeVpSchedulerState` with ``timesteps=None``.

    Raises:
      TypeError: a value of the wrong type (``bool``, a string, an array of rank > 0).
      ValueError: a value out of range, NaN or infinite.
    """
    num_train_timesteps = _checks.positive_int("num_train_timesteps", num_train_timesteps)
    beta_min = _checks.real_scalar("beta_min", beta_min)
    beta_max = _checks.real_scalar("beta_max", beta_max)
    sampling_eps = _checks.real_scalar("sampling_eps", sampling_eps)
    _check_config(beta_min, beta_max, sampling_eps)
    return ScoreSdeVpSchedulerState(
        beta_min=beta_min,
        beta_max=beta_max,
        sampling_eps=sampling_eps,
        num_train_timesteps=num_train_timesteps,
        min_discrete_steps=_min_discrete_steps(beta_max),
    )


def set_timesteps(
    state: ScoreSdeVpSchedulerState, num_inference_steps: int
) -> ScoreSdeVpSchedulerState:
    """Return a new state whose grid is ``linspace(1, sampling_eps, num_inference_steps)``.

    The input state is left as it was. The grid has JAX's default float dtype
    (float64 under ``jax_enable_x64``, float32 otherwise).

    Args:
      state: a state from :func:`create_state`.
      num_inference_steps: a Python int >= 1 (static: it sets an array length).

    Returns:
      The new state.
    """
    n = _checks.positive_int("num_inference_steps", num_inference_steps)
    timesteps = jnp.linspace(1.0, state.sampling_eps, n)
    return state.replace(timesteps=timesteps)


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


def model_time_dtype(state: ScoreSdeVpSchedulerState) -> np.dtype:
    """The dtype every loop passes ``t`` to ``model_fn`` in: the grid's (JAX's default float before a grid is set)."""
    if state.timesteps is None:
        return jnp.zeros(()).dtype
    return state.timesteps.dtype


_TIMES_FROM_GRID = contextvars.ContextVar("sdevp_jax_times_from_grid", default=False)


@contextlib.contextmanager
def times_from_grid():
    """While tracing a loop over ``state.timesteps``: its steps' ``t`` need no check.

    The grid was validated where it was built (``set_timesteps`` on a checked
    state), so the loops trace their steps inside this block. That keeps the
    compiled loop free of a per-step check, and keeps its program the same from
    one trace to the next (a ``checkify.debug_check`` numbers its error codes per
    process, which would change the persistent compilation cache's key).
    """
    token = _TIMES_FROM_GRID.set(True)
    try:
        yield
    finally:
        _TIMES_FROM_GRID.reset(token)


def check_t(t: jax.Array, t_host: Optional[np.ndarray]) -> None:
    """``t`` finite and > 0: on the host if it is there, with ``checkify.debug_check`` if traced.

    A concrete ``jax.Array`` is not read back (that would sync with the device
    at every eager step); see the module docstring. Inside :func:`times_from_grid`
    a traced ``t`` is not checked: it comes from a validated grid.
    """
    message = "t must be finite and > 0 (sigma(0) = 0)"
    if t_host is not None:
        if not np.all(np.isfinite(t_host) & (t_host > 0)):
            raise ValueError(f"{message}, got {t_host}")
    elif _checks.is_traced(t) and not _TIMES_FROM_GRID.get():
        checkify.debug_check(jnp.all(jnp.isfinite(t) & (t > 0)), message)


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
    ``compute_dtype(x.dtype)`` (at least float32), returning ``x``'s dtype.
    """

    def __init__(self, caller, state, model_output, x, t, key, noise):
        self.n = require_timesteps(state, caller)
        self.x = _checks.float_array("x", x)
        eps = _checks.float_array("model_output", model_output)
        if eps.shape != self.x.shape:
            raise ValueError(f"model_output must have x's shape {self.x.shape}, got {eps.shape}")
        t_host = _checks.host_value(t)
        t = jnp.asarray(t)
        if not (jnp.issubdtype(t.dtype, jnp.floating) or jnp.issubdtype(t.dtype, jnp.integer)):
            raise TypeError(f"t must be a real number or array, got dtype {t.dtype}")
        check_t(t, t_host)
        if noise is None:
            _checks.prng_key("key", key)
        else:
            noise = _checks.float_array("noise", noise)
            if noise.shape != self.x.shape:
                raise ValueError(f"noise must have x's shape {self.x.shape}, got {noise.shape}")
        self.dtype = _checks.compute_dtype(self.x.dtype)
        self.t = broadcast_t(t.astype(self.dtype), self.x)
        self.beta_min = jnp.asarray(state.beta_min, self.dtype)
        self.beta_max = jnp.asarray(state.beta_max, self.dtype)
        self.xc = self.x.astype(self.dtype)
        self.eps = eps.astype(self.dtype)
        self._key, self._noise = key, noise

    def beta(self) -> jax.Array:
        return sde.beta(self.t, self.beta_min, self.beta_max)

    def sigma(self) -> jax.Array:
        return sde.sigma(self.t, self.beta_min, self.beta_max)

    def z(self) -> jax.Array:
        """The step's standard normal noise: the given ``noise``, or a draw from ``key``."""
        if self._noise is None:
            return jax.random.normal(self._key, self.x.shape, self.dtype)
        return self._noise.astype(self.dtype)

    def out(self, x_next: jax.Array, x_mean: jax.Array) -> StepOutput:
        return StepOutput(x_next.astype(self.x.dtype), x_mean.astype(self.x.dtype))


def step_pred(
    state: ScoreSdeVpSchedulerState,
    model_output: ArrayLike,
    x: ArrayLike,
    t: ArrayLike,
    key: Optional[jax.Array],
    *,
    noise: Optional[ArrayLike] = None,
) -> StepOutput:
    r"""One Euler--Maruyama step of the reverse VP SDE, exactly as diffusers takes it.

    Pure: safe under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. The coefficients
    and the update are computed in ``promote_types(x.dtype, float32)`` (float32
    for bfloat16/float16/float32 ``x``, float64 for float64 ``x``); both outputs
    have ``x``'s dtype.

    Args:
      state: a state after :func:`set_timesteps`; its ``N`` sets :math:`\Delta t = -1/N`.
      model_output: the model's noise prediction :math:`\hat\epsilon(x, t)`, shape of ``x``.
      x: the current sample, any float dtype, shape ``(batch, ...)`` (or any shape
        when ``t`` is 0-d).
      t: the current time, 0-d or shape ``(batch,)``; a ``(batch,)`` vector
        broadcasts from the left over ``x``'s trailing dimensions.
      key: a PRNG key (``jax.random.key`` or legacy ``PRNGKey``) for :math:`z`; may
        be ``None`` when ``noise`` is given.
      noise: optional :math:`z`, shape of ``x``; replaces the draw from ``key``.

    Returns:
      ``StepOutput(prev_sample, prev_sample_mean)``, which unpacks as ``x, x_mean``.

    Raises:
      ValueError: timesteps not set; shapes that do not match; a ``t`` on the host
        (Python number, NumPy value) that is not finite and > 0 (a traced ``t`` is
        checked under ``checkify``; see the module docstring).
      TypeError: non-float ``x``/``model_output``/``noise``; a bad ``key``.
    """
    p = PreparedStep("step_pred", state, model_output, x, t, key, noise)
    # The reference computes x + (-beta x / 2 - beta * (-eps / std)) * dt with
    # dt = -h = -1/N. With its per-sample coefficients collected, that is
    #     x_mean = x + [(h beta / 2) x - (h beta / std) eps],
    # the same number with fewer roundings on the sample arrays; the increment in
    # brackets is formed first, so its rounding error is relative to the
    # increment, not to x (which matters for small h).
    h = 1.0 / p.n  # the reference's |dt|: 1/N, not the grid spacing.
    beta_t = p.beta()
    coeff_x = 0.5 * h * beta_t
    coeff_eps = h * beta_t / p.sigma()
    coeff_z = sde.diffusion(beta_t) * math.sqrt(h)  # g(t) sqrt(-dt), in the reference's order
    x_mean = p.xc + (coeff_x * p.xc - coeff_eps * p.eps)
    return p.out(x_mean + coeff_z * p.z(), x_mean)
