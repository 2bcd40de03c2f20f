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
from flax import struct

from .denoiser import GuidedModel, eps_from_prediction, prediction_from_eps, time_from_model_time, x0_from_prediction
from .scheduler import ScoreSdeVpSchedulerState

__all__ = ["cfg", "classifier_guidance", "apg", "apg_combine", "cfg_zero_star", "cfg_zero_star_scale", "autoguidance",
           "cfg_pp", "guidance_schedule", "GuidanceSchedule", "APG", "CFGZeroStar", "CFGPlusPlus"]


def _per_sample_scale(scale: Any, x: jax.Array) -> jax.Array:
    """A guidance scale (0-d, ``(1,)`` as diffusers' Flax pipelines pass it, or ``(batch,)``) shaped to broadcast
    over ``x`` from the left."""
    scale = jnp.asarray(scale)
    if scale.ndim == 1:
        if scale.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"scale of shape {scale.shape} must be 0-d, (1,) or (batch,) = ({x.shape[0]},)")
        return scale.reshape((-1,) + (1,) * (x.ndim - 1))
    if scale.ndim != 0:
        raise ValueError(f"scale must be 0-d, (1,) or of shape (batch,), got shape {scale.shape}")
    return scale


def _interleave(a: Any, b: Any) -> jax.Array:
    """Rows ``a[0], b[0], a[1], b[1], ...``: sample ``i``'s two rows stay together, so a batch sharded over
    devices stays sharded the same way (a concatenation would move rows between devices)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def _check_scale(scale: Any) -> None:
    """A guidance scale known on the host must be real and finite (a traced one is checked for shape on use); a
    schedule (a callable of the continuous time) is checked where it is called."""
    if _checks.is_traced(scale) or callable(scale):
        return
    host = np.asarray(scale)
    if not np.issubdtype(host.dtype, np.floating) and not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"scale must be a real number or array, got {host.dtype}")
    if not np.all(np.isfinite(host)):
        raise ValueError(f"scale must be finite, got {scale}")


def _check_schedule_state(scale: Any, state: Any) -> None:
    if callable(scale) and state is None:
        raise ValueError("a scale schedule (a callable of t) needs state= (to read the model's time input as a "
                         "continuous time)")


def _alpha_sigma_at(state: ScoreSdeVpSchedulerState, t: jax.Array, x: jax.Array, dtype) -> tuple:
    """The schedule's ``(alpha, sigma)`` at the model's time input ``t``, per sample, shaped to broadcast over ``x``."""
    tb = _checks.per_sample(time_from_model_time(state, t), x.shape[0], dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return state.schedule.cast(dtype).alpha_sigma(tb)


def _scale_at(scale: Any, x: jax.Array, t: jax.Array, state: Any, dtype) -> jax.Array:
    """The guidance scale per sample at the model's time input ``t``, shaped to broadcast over ``x``: ``scale``
    itself, or a schedule's value (:class:`GuidanceSchedule`, any callable of the continuous time)."""
    if callable(scale):
        scale = scale(time_from_model_time(state, t))
    return _per_sample_scale(scale, x).astype(dtype)


def _two_predictions(model_fn: Callable, x: jax.Array, t: jax.Array, cond: Any, null_cond: Any):
    """``(model_fn(x, t, cond), model_fn(x, t, null_cond))`` as one call of twice the batch, each sample's two rows
    side by side (a batch sharded over devices stays where it is)."""
    batch = x.shape[0]
    null = jax.tree.map(lambda n, c: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), null_cond, cond)
    both = jax.tree.map(_interleave, cond, null)
    out = model_fn(_interleave(x, x), _interleave(t, t), both).reshape((batch, 2) + x.shape[1:])
    return out[:, 0], out[:, 1]


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
      scale: :math:`w`, 0-d, ``(1,)`` or ``(batch,)``, any float -- a leaf, so a jitted or vmapped
        function of it compiles once for every value. ``w = 1`` is the conditional
        model, ``w = 0`` the unconditional one. Or a schedule over the continuous time,
        :func:`guidance_schedule` or any callable ``t -> w`` (``t`` of shape ``(batch,)``;
        needs ``state``).
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
      state: the scheduler state, to read model times as continuous times for ``interval`` and a
        scale schedule.

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
    _check_schedule_state(scale, state)
    rescale = _checks.real_scalar("rescale", rescale)
    if not _checks.is_traced(rescale) and not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must be in [0, 1], got {rescale}")
    _check_scale(scale)

    def guided(x: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        out_c, out_u = _two_predictions(model_fn, x, t, cond, null_cond)
        w = _scale_at(scale, x, t, state, out_c.dtype)
        if bounds is not None:
            t_cont = time_from_model_time(state, t)
            inside = (t_cont >= bounds[0]) & (t_cont <= bounds[1])
            w = jnp.where(inside.reshape((-1,) + (1,) * (x.ndim - 1)), w, jnp.ones((), out_c.dtype))
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
        alpha, sigma = _alpha_sigma_at(state, t, x, dtype)
        eps = eps_from_prediction(state.prediction_type, out.astype(dtype), xc, alpha, sigma)
        eps = eps - _per_sample_scale(scale, x).astype(dtype) * sigma * grad
        return prediction_from_eps(state.prediction_type, eps, xc, alpha, sigma).astype(out.dtype)

    return guided


SCHEDULE_KINDS = ("constant", "linear", "cosine")


@struct.dataclass
class GuidanceSchedule:
    r"""A guidance scale that varies over the continuous time :math:`t` (1 the noise, 0 the data).

    .. math::

        w(t) = 1 + (w - 1)\,r(t),\qquad r(t) = \begin{cases} 1 & \text{constant} \\
        2(1 - t) & \text{linear} \\ 1 - \cos\big(\pi(1 - t)\big) & \text{cosine} \end{cases}

    The guidance strength :math:`w - 1` ramped up from 0 at the noise end (the conditional model,
    :math:`w(1) = 1`) to twice itself at the data end, the increasing ramps that Wang et al. (2024,
    "Analysis of classifier-free guidance weight schedulers") found to beat a constant scale.
    Each ramp's mean over :math:`t \in [0, 1]` is 1, so every schedule's mean scale is :math:`w`:
    schedules compare at equal mean guidance. ``scale`` is a leaf (0-d or ``(batch,)``); ``kind`` is
    static.

    Examples:
      >>> ramp = sv.guidance_schedule("linear", 3.0)
      >>> [float(w) for w in ramp(jnp.array([1.0, 0.5, 0.0]))]
      [1.0, 3.0, 5.0]
    """

    scale: Any
    kind: str = struct.field(pytree_node=False, default="constant")

    def __call__(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        scale = jnp.asarray(self.scale, t.dtype)
        if scale.ndim == 1:
            if t.ndim != 1 or t.shape[0] != scale.shape[0]:
                raise ValueError(f"a per-sample scale of shape {scale.shape} needs one time per sample, got t of "
                                 f"shape {t.shape}")
        if self.kind == "constant":
            ramp = jnp.ones_like(t)
        elif self.kind == "linear":
            ramp = 2.0 * (1.0 - t)
        else:
            ramp = 1.0 - jnp.cos(jnp.pi * (1.0 - t))
        return 1.0 + (scale - 1.0) * ramp


def guidance_schedule(kind: str, scale: Any) -> GuidanceSchedule:
    """A :class:`GuidanceSchedule` of ``kind`` (``"constant"``, ``"linear"``, ``"cosine"``) and mean scale ``scale``,
    for the ``scale`` argument of every guidance combinator (with ``state=``)."""
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"kind must be one of {list(SCHEDULE_KINDS)}, got {kind!r}")
    _check_scale(scale)
    return GuidanceSchedule(scale, kind)


def _to_x0(state, out, x, t, dtype):
    """The data prediction of the model output ``out`` at ``x`` and the model time input ``t``; and ``alpha``,
    ``sigma`` there (shaped to broadcast over ``x``)."""
    alpha, sigma = _alpha_sigma_at(state, t, x, dtype)
    return x0_from_prediction(state.prediction_type, out.astype(dtype), x.astype(dtype), alpha, sigma), alpha, sigma


def _from_x0(state, x0, x, alpha, sigma, dtype):
    """The model's own parametrization of the data prediction ``x0`` at ``x`` (the inverse of :func:`_to_x0`)."""
    eps = (x.astype(x0.dtype) - alpha * x0) / sigma
    return prediction_from_eps(state.prediction_type, eps, x.astype(x0.dtype), alpha, sigma).astype(dtype)


def _per_sample_sum(v: jax.Array) -> jax.Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)), keepdims=True)


APG_FORMULATIONS = ("paper", "diffusers")


def apg_combine(pred_cond, pred_uncond, scale, *, eta=0.0, norm_threshold=0.0, average=None, momentum=0.0,
                formulation: str = "paper"):
    r"""Adaptive projected guidance's update of two predictions (Sadat et al., ICLR 2025, Algorithm 1).

    With :math:`\Delta = \hat y_c - \hat y_u`: momentum (``average``, the running average of
    :math:`\Delta` before this call, or ``None``: :math:`\Delta \leftarrow \Delta + \beta\,\bar\Delta`,
    the average's new value), the norm threshold :math:`r` (:math:`\Delta \leftarrow
    \Delta\min(1, r/\lVert\Delta\rVert)`, off for ``0``), then the split of :math:`\Delta` into its
    parts parallel and orthogonal to :math:`\hat y_c`, :math:`\Delta_\parallel` and :math:`\Delta_\perp`:

    .. math::

        \hat y = \hat y_c + (w - 1)\,(\Delta_\perp + \eta\,\Delta_\parallel)

    (``formulation="paper"``). Norms and projections are per sample over all its entries.
    diffusers' ``AdaptiveProjectedGuidance`` (by default) computes
    :math:`\hat y_u + w(\Delta_\perp + \eta\Delta_\parallel)` instead (``formulation="diffusers"``): the
    same where the update is :math:`\Delta` itself (:math:`\eta = 1`, no threshold, no momentum), which
    is plain CFG; otherwise the two differ by :math:`(1 - \eta)\Delta_\parallel` and the clipped part.

    Returns ``(prediction, average)`` (``average`` ``None`` without momentum).

    Examples:
      >>> c, u = jnp.array([[1.0, 0.0]]), jnp.array([[0.5, 0.5]])
      >>> sv.apg_combine(c, u, 3.0, eta=1.0)[0]   # eta = 1, no threshold or momentum: CFG, u + 3 (c - u)
      Array([[ 2., -1.]], dtype=float32)
      >>> sv.apg_combine(c, u, 3.0, eta=0.0)[0]   # only the part of c - u orthogonal to c
      Array([[ 1., -1.]], dtype=float32)
    """
    diff = pred_cond - pred_uncond
    if average is not None:
        diff = diff + momentum * average
        average = diff
    if _checks.is_traced(norm_threshold) or norm_threshold > 0:
        norm = jnp.sqrt(_per_sample_sum(diff * diff))
        diff = diff * jnp.minimum(1.0, norm_threshold / norm)
    # the direction of y_c, with torch.nn.functional.normalize's floor of 1e-12 on the norm (0 stays 0)
    unit = pred_cond / jnp.maximum(jnp.sqrt(_per_sample_sum(pred_cond * pred_cond)), 1e-12)
    parallel = _per_sample_sum(diff * unit) * unit
    update = (diff - parallel) + eta * parallel
    if formulation == "paper":
        return pred_cond + (scale - 1.0) * update, average
    return pred_uncond + scale * update, average


class APG(GuidedModel):
    """Adaptive projected guidance as a model (:func:`apg`); with momentum it keeps the running average of the
    guidance direction per sample, which the loop threads."""

    def __init__(self, model_fn, scale, null_cond, state, eta, norm_threshold, momentum, formulation, space):
        self.model_fn, self.scale, self.null_cond, self.state = model_fn, scale, null_cond, state
        self.eta, self.norm_threshold, self.momentum = eta, norm_threshold, momentum
        self.formulation, self.space = formulation, space
        self.stateful = _checks.is_traced(momentum) or momentum != 0.0

    def init(self, x):
        return jnp.zeros(x.shape, _checks.compute_dtype(x.dtype)) if self.stateful else ()

    def apply(self, memory, x, t, cond):
        out_c, out_u = _two_predictions(self.model_fn, x, t, cond, self.null_cond)
        dtype = _checks.compute_dtype(out_c.dtype)
        if self.space == "x0":
            y_c, alpha, sigma = _to_x0(self.state, out_c, x, t, dtype)
            y_u = _to_x0(self.state, out_u, x, t, dtype)[0]
        else:
            y_c, y_u = out_c.astype(dtype), out_u.astype(dtype)
        w = _scale_at(self.scale, x, t, self.state, dtype)
        y, average = apg_combine(y_c, y_u, w, eta=self.eta, norm_threshold=self.norm_threshold,
                                 average=memory if self.stateful else None, momentum=self.momentum,
                                 formulation=self.formulation)
        if self.space == "x0":
            y = _from_x0(self.state, y, x, alpha, sigma, out_c.dtype)
        return y.astype(out_c.dtype), None, average if self.stateful else ()


def apg(model_fn: Callable, scale: Any, null_cond: Any, *, state: ScoreSdeVpSchedulerState, eta: Any = 0.0,
        norm_threshold: Any = 0.0, momentum: float = 0.0, formulation: str = "paper", space: str = "x0") -> APG:
    r"""Adaptive projected guidance (Sadat et al., ICLR 2025, "Eliminating oversaturation and artifacts of
    high guidance scales in diffusion models") as a model combinator (:func:`apg_combine`).

    Both predictions come from one call of twice the batch (as :func:`cfg`); the update is taken
    on the data prediction :math:`\hat x_0`, as its authors recommend (``space="x0"``; ``"output"``
    takes it on the model's own output, as diffusers' guider sees a pipeline's noise prediction),
    and returned in the state's prediction type. With momentum :math:`\beta \ne 0` the running
    average is memory the loop threads from call to call, one per sample (reset at each run, as
    diffusers resets it at the first step).

    Args:
      model_fn: ``(x, t, cond) -> prediction``.
      scale: :math:`w` (0-d, ``(batch,)`` or a schedule, as :func:`cfg`'s); ``w = 1`` is the
        conditional model.
      null_cond: the unconditional condition (as :func:`cfg`'s).
      state: the scheduler state (prediction type, schedule, model time).
      eta: the weight of the parallel part (the paper recommends 0; 1 with no threshold or momentum is CFG).
      norm_threshold: :math:`r \ge 0`, the largest norm of the update per sample (0: none). It is a norm
        over all of a sample's entries, so its useful value grows with the data's size.
      momentum: :math:`\beta` (the paper uses negative values, e.g. -0.5; 0: none), a Python float.
      formulation: ``"paper"`` (default) or ``"diffusers"`` (see :func:`apg_combine`).
      space: ``"x0"`` (default) or ``"output"``.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> class_model = sv.mixtures.make_class_model(state, sv.mixtures.default_class_mixture())
      >>> guided = sv.apg(class_model, 3.0, sv.NULL_CLASS, state=state, momentum=-0.5)
      >>> sv.sample_ode(state, guided, jax.random.key(0), (4, 2), method="ddim", cond=jnp.full((4,), 1)).shape
      (4, 2)
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t, cond) -> prediction, got {type(model_fn).__name__}")
    if state is None:
        raise ValueError("apg needs state= (the schedule and prediction type, to take the data prediction)")
    _check_scale(scale)
    eta = _checks.real_scalar("eta", eta)
    norm_threshold = _checks.real_scalar("norm_threshold", norm_threshold)
    if not _checks.is_traced(norm_threshold) and not norm_threshold >= 0.0:
        raise ValueError(f"norm_threshold must be >= 0 (0: no threshold), got {norm_threshold}")
    if _checks.is_traced(momentum):
        raise TypeError("momentum must be a Python float (it decides whether the loop threads memory), got a traced value")
    momentum = _checks.real_scalar("momentum", momentum)
    if not -1.0 < momentum < 1.0:
        raise ValueError(f"momentum must be in (-1, 1) (a running average that stays bounded), got {momentum}")
    if formulation not in APG_FORMULATIONS:
        raise ValueError(f"formulation must be one of {list(APG_FORMULATIONS)}, got {formulation!r}")
    if space not in ("x0", "output"):
        raise ValueError(f"space must be 'x0' or 'output', got {space!r}")
    return APG(model_fn, scale, null_cond, state, eta, norm_threshold, momentum, formulation, space)


def cfg_zero_star_scale(pred_cond: jax.Array, pred_uncond: jax.Array) -> jax.Array:
    r"""CFG-Zero*'s optimised scale per sample (Fan et al. 2025, eq. 8): :math:`s^* = \langle\hat y_c, \hat y_u\rangle
    / (\lVert\hat y_u\rVert^2 + 10^{-8})`, the :math:`s` minimising :math:`\lVert\hat y_c - s\,\hat y_u\rVert` (the
    :math:`10^{-8}` as diffusers', against 0/0), shaped ``(batch, 1, ...)``."""
    return _per_sample_sum(pred_cond * pred_uncond) / (_per_sample_sum(pred_uncond * pred_uncond) + 1e-8)


class CFGZeroStar(GuidedModel):
    """CFG-Zero* as a model (:func:`cfg_zero_star`); with zero-init calls it counts each sample's calls."""

    def __init__(self, model_fn, scale, null_cond, state, zero_init_steps):
        self.model_fn, self.scale, self.null_cond, self.state = model_fn, scale, null_cond, state
        self.zero_init_steps = zero_init_steps
        self.stateful = zero_init_steps > 0

    def init(self, x):
        return jnp.zeros((x.shape[0],), jnp.int32) if self.stateful else ()

    def apply(self, memory, x, t, cond):
        out_c, out_u = _two_predictions(self.model_fn, x, t, cond, self.null_cond)
        dtype = _checks.compute_dtype(out_c.dtype)
        y_c, y_u = out_c.astype(dtype), out_u.astype(dtype)
        y_u = cfg_zero_star_scale(y_c, y_u) * y_u
        w = _scale_at(self.scale, x, t, self.state, dtype)
        y = y_u + w * (y_c - y_u)
        if not self.stateful:
            return y.astype(out_c.dtype), None, ()
        zero = (memory < self.zero_init_steps).reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(zero, jnp.zeros((), dtype), y).astype(out_c.dtype), None, memory + 1


def cfg_zero_star(model_fn: Callable, scale: Any, null_cond: Any, *, zero_init_steps: int = 0,
                  state: Optional[ScoreSdeVpSchedulerState] = None) -> CFGZeroStar:
    r"""CFG-Zero* (Fan et al. 2025, "CFG-Zero*: improved classifier-free guidance for flow matching models").

    .. math::

        \hat y = s^*\hat y_u + w\,(\hat y_c - s^*\hat y_u)

    with :math:`s^*` per sample (:func:`cfg_zero_star_scale`), on the model's own output as the paper
    and diffusers' ``ClassifierFreeZeroStarGuidance`` take it (unlike :func:`cfg`, the result depends
    on the parametrization: :math:`s^*` scales one prediction). ``s* = 1`` is :func:`cfg`.

    ``zero_init_steps = K > 0``: the first ``K`` calls of each run return 0 (the paper's zero-init,
    sec. 3.3: for a flow model, a zero velocity; diffusers counts steps, one call each for its
    multistep schedulers). For a VP model a zero output is a zero noise (ε), a zero velocity (v) or a
    zero data prediction (x₀), none of which leaves the sample where it is; the default is 0.
    The count is memory the loop threads, one per sample.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> class_model = sv.mixtures.make_class_model(state, sv.mixtures.default_class_mixture())
      >>> guided = sv.cfg_zero_star(class_model, 3.0, sv.NULL_CLASS)
      >>> guided(jnp.ones((4, 2)), jnp.full((4,), 0.5), jnp.full((4,), 1)).shape
      (4, 2)
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t, cond) -> prediction, got {type(model_fn).__name__}")
    _check_scale(scale)
    _check_schedule_state(scale, state)
    zero_init_steps = _checks.int_at_least("zero_init_steps", zero_init_steps, 0)
    return CFGZeroStar(model_fn, scale, null_cond, state, zero_init_steps)


def autoguidance(model_fn: Callable, guide_fn: Callable, scale: Any, *,
                 state: Optional[ScoreSdeVpSchedulerState] = None) -> Callable:
    r"""Autoguidance (Karras et al., NeurIPS 2024, "Guiding a diffusion model with a bad version of itself").

    .. math::

        \hat y = \hat y_g + w\,(\hat y_m - \hat y_g),

    the main model ``model_fn`` guided away from a weaker model ``guide_fn`` of the same task (smaller
    or less trained), both called with the same ``x``, ``t`` and ``cond`` -- two networks, so two
    calls. As in :func:`cfg`, the weights sum to 1, so the combination is the same in ε, v and
    :math:`x_0`. ``w = 1`` is the main model. ``scale`` may be a schedule (with ``state``).

    Both models are ``(x, t) -> prediction`` or both ``(x, t, cond) -> prediction``.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> main = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> guided = sv.autoguidance(main, lambda x, t: 0.9 * main(x, t), 2.0)
      >>> guided(jnp.ones((4, 2)), jnp.full((4,), 0.5)).shape
      (4, 2)
    """
    if not callable(model_fn) or not callable(guide_fn):
        raise TypeError("model_fn and guide_fn must be callable")
    _check_scale(scale)
    _check_schedule_state(scale, state)

    def guided(x: jax.Array, t: jax.Array, *cond: Any) -> jax.Array:
        out_m, out_g = model_fn(x, t, *cond), guide_fn(x, t, *cond)
        if out_m.shape != out_g.shape:
            raise ValueError(f"guide_fn returned shape {out_g.shape}, model_fn {out_m.shape}: they must agree")
        w = _scale_at(scale, x, t, state, out_m.dtype)
        return out_g + w * (out_m - out_g)

    return guided


class CFGPlusPlus(GuidedModel):
    """CFG++ as a model (:func:`cfg_pp`): the guided prediction and the unconditional one to renoise with."""

    renoise = True

    def __init__(self, model_fn, scale, null_cond, state):
        self.model_fn, self.scale, self.null_cond, self.state = model_fn, scale, null_cond, state

    def apply(self, memory, x, t, cond):
        out_c, out_u = _two_predictions(self.model_fn, x, t, cond, self.null_cond)
        w = _scale_at(self.scale, x, t, self.state, out_c.dtype)
        return out_u + w * (out_c - out_u), out_u, ()


def cfg_pp(model_fn: Callable, scale: Any, null_cond: Any, *,
           state: Optional[ScoreSdeVpSchedulerState] = None) -> CFGPlusPlus:
    r"""CFG++ (Chung et al., ICLR 2025, "CFG++: manifold-constrained classifier free guidance for diffusion
    models"): the step's data prediction is guided, its renoising direction unconditional.

    With :math:`\hat\epsilon_\lambda = \hat\epsilon_u + \lambda(\hat\epsilon_c - \hat\epsilon_u)`,
    :math:`\lambda \in [0, 1]` (``scale``), DDIM's step becomes (the paper's Algorithm 1)

    .. math::

        x_t = \alpha_t\,\frac{x_s - \sigma_s\hat\epsilon_\lambda}{\alpha_s} + \sigma_t\,\hat\epsilon_u .

    The solvers cooperate (``renoise_ready``): ``ddim`` takes its noise from the unconditional
    prediction, ``dpm_solver_pp`` replaces its first-order part by this step and keeps its
    higher-order terms in the guided predictions (:meth:`~sdevp_jax.solvers.DPMSolverPP.renoised`).
    ``lambda = 0`` is the unconditional model. On DDIM, CFG++ at :math:`\lambda` is :func:`cfg` at the
    step's scale :math:`w = \lambda/(1 - e^{-h})` (:math:`h` the step in log-SNR), which grows as the
    steps shrink: the two are not equal at any constant scale.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> class_model = sv.mixtures.make_class_model(state, sv.mixtures.default_class_mixture())
      >>> guided = sv.cfg_pp(class_model, 0.6, sv.NULL_CLASS)
      >>> sv.sample_ode(state, guided, jax.random.key(0), (4, 2), method="ddim", cond=jnp.full((4,), 1)).shape
      (4, 2)
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t, cond) -> prediction, got {type(model_fn).__name__}")
    _check_scale(scale)
    _check_schedule_state(scale, state)
    if not callable(scale) and not _checks.is_traced(scale):
        host = np.asarray(scale)
        if np.any(host < 0) or np.any(host > 1):
            raise ValueError(f"scale (CFG++'s lambda) must be in [0, 1], got {scale}")
    return CFGPlusPlus(model_fn, scale, null_cond, state)
