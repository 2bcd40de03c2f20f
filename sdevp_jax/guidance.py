r"""Guidance: model combinators in front of the model boundary.

A guided model is another ``model_fn`` (as optax's transformations compose, the loop
sees one model): :func:`cfg` mixes a conditional and an unconditional prediction
(classifier-free guidance, Ho & Salimans 2022, with an interval of times, Kynkäänniemi
et al. 2024, and CFG-rescale, Lin et al. 2024), :func:`classifier_guidance` adds a
classifier's gradient (Dhariwal & Nichol 2021).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .denoiser import eps_from_prediction, prediction_from_eps, time_from_model_time
from .scheduler import ScoreSdeVpSchedulerState

__all__ = ["cfg", "classifier_guidance"]


def _per_sample_scale(scale: Any, x: jax.Array) -> jax.Array:
    """A guidance scale (0-d or ``(batch,)``) shaped to broadcast over ``x`` from the left."""
    scale = jnp.asarray(scale)
    if scale.ndim == 1:
        if scale.shape[0] != x.shape[0]:
            raise ValueError(f"scale of shape {scale.shape} must be 0-d or (batch,) = ({x.shape[0]},)")
        return scale.reshape((-1,) + (1,) * (x.ndim - 1))
    if scale.ndim != 0:
        raise ValueError(f"scale must be 0-d or of shape (batch,), got shape {scale.shape}")
    return scale


def _interleave(a: Any, b: Any) -> jax.Array:
    """Rows ``a[0], b[0], a[1], b[1], ...``: sample ``i``'s two rows stay together, so a batch sharded over
    devices stays sharded the same way (a concatenation would move rows between devices)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def _check_scale(scale: Any) -> None:
    """A guidance scale known on the host must be real and finite (a traced one is checked for shape on use)."""
    if _checks.is_traced(scale):
        return
    host = np.asarray(scale)
    if not np.issubdtype(host.dtype, np.floating) and not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"scale must be a real number or array, got {host.dtype}")
    if not np.all(np.isfinite(host)):
        raise ValueError(f"scale must be finite, got {scale}")


def _check_interval(interval: Any) -> Optional[tuple[float, float]]:
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be None or (t_lo, t_hi), got {interval!r}") from None
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(f"interval must satisfy 0 <= t_lo < t_hi <= 1 (continuous times), got ({lo}, {hi})")
    return lo, hi


def cfg(
    model_fn: Callable,
    scale: Any,
    null_cond: Any,
    *,
    interval: Optional[tuple[float, float]] = None,
    rescale: float = 0.0,
    state: Optional[ScoreSdeVpSchedulerState] = None,
) -> Callable:
    r"""Classifier-free guidance (Ho & Salimans 2022) as a model combinator: ``guided(x, t, cond)``.

    .. math::

        \hat y = \hat y_u + w\,(\hat y_c - \hat y_u),

    with :math:`\hat y_c = ` ``model_fn(x, t, cond)`` and :math:`\hat y_u =`
    ``model_fn(x, t, null_cond)`` evaluated as **one** batched call of twice the
    batch (each sample's two rows side by side, ``x[0], x[0], x[1], ...``, so a batch
    sharded over devices needs no communication). The combination is taken
    in the model's own parametrization: its weights :math:`(1 - w, w)` sum to 1 and
    the ε, v and :math:`x_0` of the same :math:`x` are affine functions of each other,
    so it equals guidance in ε for every prediction type; only the rescale below
    depends on the space, and it is taken there as diffusers takes it.

    Args:
      model_fn: ``(x, t, cond) -> prediction``.
      scale: :math:`w`, 0-d or ``(batch,)``, any float -- a leaf, so a jitted or vmapped
        function of it compiles once for every value. ``w = 1`` is the conditional
        model, ``w = 0`` the unconditional one.
      null_cond: the unconditional condition: a pytree like one row of ``cond`` (it is
        broadcast to the batch) or like ``cond`` itself.
      interval: ``(t_lo, t_hi)`` in continuous time, ``0 <= t_lo < t_hi <= 1``: guide only
        there, use the conditional model (``w = 1``) elsewhere (Kynkäänniemi et al.,
        NeurIPS 2024); needs ``state`` for a discrete schedule (its model time is a label).
      rescale: CFG-rescale :math:`\phi \in [0, 1]` (Lin et al., WACV 2024, eq. 15-16):
        :math:`\hat y \leftarrow \phi\,\hat y\,\frac{\operatorname{std}(\hat y_c)}{\operatorname{std}(\hat y)} + (1 - \phi)\hat y`,
        the standard deviations per sample over its entries. Meant for
        high-dimensional outputs (images, latents), where those are stable: with a few
        entries the guided output's std can be near 0 and the ratio huge (in 2-D, phi =
        0.5 at w = 3 threw a sample to |x| = 63), so use it there with care. Where
        :math:`\operatorname{std}(\hat y) = 0` (a one-entry sample, or a constant one) there is
        nothing to rescale: the ratio is taken as 1 there, and that sample's output is
        the unrescaled :math:`\hat y` up to the rounding of :math:`\phi \hat y + (1 - \phi) \hat y`.
      state: the scheduler state, to read model times as continuous times for ``interval``.

    Returns:
      ``guided(x, t, cond)``, a model for ``sample(..., cond=...)`` and every other loop.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> class_model = sv.mixtures.make_class_model(state, sv.mixtures.default_class_mixture())
      >>> guided = sv.cfg(class_model, 3.0, sv.NULL_CLASS)   # guided(x, t, cond)
      >>> x = sv.sample_ode(state, guided, jax.random.key(0), (4, 2), method="ddim", cond=jnp.full((4,), 1))
      >>> x.shape
      (4, 2)
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t, cond) -> prediction, got {type(model_fn).__name__}")
    bounds = _check_interval(interval)
    if bounds is not None and state is None:
        raise ValueError("interval needs state= (to read the model's time input as a continuous time)")
    rescale = _checks.real_scalar("rescale", rescale)
    if not _checks.is_traced(rescale) and not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must be in [0, 1], got {rescale}")
    _check_scale(scale)

    def guided(x: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        batch = x.shape[0]
        null = jax.tree.map(lambda n, c: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), null_cond, cond)
        both = jax.tree.map(_interleave, cond, null)
        out = model_fn(_interleave(x, x), _interleave(t, t), both).reshape((batch, 2) + x.shape[1:])
        out_c, out_u = out[:, 0], out[:, 1]
        w = _per_sample_scale(scale, x).astype(out.dtype)
        if bounds is not None:
            t_cont = t if not state.schedule.is_discrete else time_from_model_time(state, t)
            inside = (t_cont >= bounds[0]) & (t_cont <= bounds[1])
            w = jnp.where(inside.reshape((-1,) + (1,) * (x.ndim - 1)), w, jnp.ones((), out.dtype))
        y = out_u + w * (out_c - out_u)
        if _checks.is_traced(rescale) or rescale != 0.0:
            axes = tuple(range(1, x.ndim))
            std_y = jnp.std(y, axis=axes, keepdims=True)
            flat = std_y == 0  # nothing to rescale (0/0 otherwise): ratio 1
            ratio = jnp.where(flat, jnp.ones((), y.dtype), jnp.std(out_c, axis=axes, keepdims=True)
                              / jnp.where(flat, jnp.ones((), y.dtype), std_y))
            y = rescale * (y * ratio) + (1.0 - rescale) * y
        return y

    return guided


def _per_sample_log_prob(value: Any, batch: int) -> jax.Array:
    """``log_prob_fn``'s output, required (at trace time) to be one float per sample, shape ``(batch,)``."""
    shape = getattr(value, "shape", None)
    if shape != (batch,) or not jnp.issubdtype(value.dtype, jnp.floating):
        shown = f"{value.dtype} of shape {shape}" if shape is not None else type(value).__name__
        raise ValueError(
            f"log_prob_fn must return one float log-probability per sample, shape (batch,) = ({batch},); got {shown}"
        )
    return value


def classifier_guidance(
    state: ScoreSdeVpSchedulerState, model_fn: Callable, log_prob_fn: Callable, scale: Any
) -> Callable:
    r"""Classifier guidance (Dhariwal & Nichol 2021, sec. 4) as a model combinator: ``guided(x, t, cond)``.

    .. math::

        \hat\epsilon_w = \hat\epsilon - w\,\sigma(t)\,\nabla_x \log p_t(c \mid x),

    the noise prediction of :math:`p_t(x)\,p_t(c \mid x)^w` (its score is the model's
    plus :math:`w` times the classifier's), with the gradient by ``jax.grad`` of the
    user's ``log_prob_fn(x, t, cond) -> (batch,)`` (``t`` the model's time input). The
    output is converted back to ``state.prediction_type``. With the exact classifier
    and ``w = 1`` it is the exact conditional model (tested).

    Args:
      state: the scheduler state (schedule, prediction type, model time).
      model_fn: ``(x, t) -> prediction`` (an unconditional model) or ``(x, t, cond)``;
        it is called with ``cond`` only if it takes three arguments.
      log_prob_fn: ``(x, t, cond) -> log p(c | x_t)``, one float per sample, shape
        ``(batch,)`` (checked at trace time: a ``(batch, K)`` output would be summed into
        the gradient silently).
      scale: :math:`w`, 0-d or ``(batch,)``, a leaf.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> cm = sv.mixtures.default_class_mixture()
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, cm.mixture)   # the unconditional model
      >>> guided = sv.classifier_guidance(state, model_fn, sv.mixtures.make_class_log_prob(state, cm), 2.0)
      >>> guided(jnp.ones((4, 2)), jnp.full((4,), 0.5), jnp.full((4,), 1)).shape
      (4, 2)
    """
    if not callable(model_fn) or not callable(log_prob_fn):
        raise TypeError("model_fn and log_prob_fn must be callable")
    _check_scale(scale)
    import inspect

    try:
        takes_cond = len(inspect.signature(model_fn).parameters) >= 3
    except (TypeError, ValueError):
        takes_cond = True

    def guided(x: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        out = model_fn(x, t, cond) if takes_cond else model_fn(x, t)
        dtype = _checks.compute_dtype(x.dtype)
        xc = x.astype(dtype)
        grad = jax.grad(lambda z: jnp.sum(_per_sample_log_prob(log_prob_fn(z, t, cond), x.shape[0])))(xc)
        tb = _checks.per_sample(time_from_model_time(state, t), x.shape[0], dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        alpha, sigma = state.schedule.cast(dtype).alpha_sigma(tb)
        eps = eps_from_prediction(state.prediction_type, out.astype(dtype), xc, alpha, sigma)
        eps = eps - _per_sample_scale(scale, x).astype(dtype) * sigma * grad
        return prediction_from_eps(state.prediction_type, eps, xc, alpha, sigma).astype(out.dtype)

    return guided
