r"""The embedded closed-form Gaussian mixtures: exact models to run and check samplers with.

If :math:`x_0 \sim \sum_k w_k N(\mu_k, \operatorname{diag}(s_k^2))`, then under the VP
SDE :math:`x_t \sim \sum_k w_k N(\alpha(t)\mu_k, \operatorname{diag}(v_k(t)))` with
:math:`v_k(t) = \alpha(t)^2 s_k^2 + \sigma(t)^2` (the kernel of :mod:`sdevp_jax.sde`).
Its score is :math:`\nabla\log p_t(x) = \sum_k r_k(x)\,(\alpha\mu_k - x)/v_k`, with
:math:`r_k` the posterior responsibilities, and the ideal noise prediction is
:math:`\hat\epsilon(x, t) = -\sigma(t)\nabla\log p_t(x)` -- in closed form, at every
``t``, in any dimension. It lets anyone run and check the scheduler without a
trained network. :class:`ClassMixture` groups the components into classes: an exact
class-conditional model (:func:`make_class_model`, with :data:`NULL_CLASS` for the
unconditional one) and its classifier (:func:`make_class_log_prob`), to check guidance with.

The namespace is ``sv.mixtures``; the deprecated top-level spellings (``sv.default_mixture``
...) resolve to these objects, with a DeprecationWarning, until their removal in 0.6.

Samples of any event shape are flattened to ``D = prod(event_shape)`` dimensions.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike

from . import _checks, schedules
from .denoiser import time_from_model_time
from .scheduler import ScoreSdeVpSchedulerState

__all__ = [
    "GaussianMixture",
    "make_mixture",
    "default_mixture",
    "diffused_log_prob",
    "mixture_eps",
    "make_mixture_eps_fn",
    "sample_mixture",
    "assign_modes",
    "ClassMixture",
    "make_class_mixture",
    "default_class_mixture",
    "make_class_model",
    "make_class_log_prob",
    "sample_class_mixture",
    "NULL_CLASS",
]


@struct.dataclass
class GaussianMixture:
    """A diagonal Gaussian mixture, an immutable pytree.

    Attributes:
      weights: mixing weights, shape ``(K,)``, positive, summing to 1.
      means: component means, shape ``(K, D)``.
      scales: component standard deviations per dimension, shape ``(K, D)``, > 0.
    """

    weights: jax.Array
    means: jax.Array
    scales: jax.Array

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]


def make_mixture(weights: ArrayLike, means: ArrayLike, scales: ArrayLike) -> GaussianMixture:
    """Validate and build a :class:`GaussianMixture`.

    Args:
      weights: shape ``(K,)``, positive; normalised to sum to 1.
      means: shape ``(K, D)``, finite.
      scales: shape ``(K, D)``, ``(K,)`` or scalar (isotropic), > 0.

    Examples:
      >>> m = sv.mixtures.make_mixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.2, 0.2])
      >>> m.means.shape
      (2, 2)
    """
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must have shape (K,) with K >= 1, got {w.shape}")
    if mu.ndim != 2 or mu.shape[0] != w.shape[0] or mu.shape[1] == 0:
        raise ValueError(f"means must have shape (K, D) = ({w.shape[0]}, D), got {mu.shape}")
    s = np.asarray(scales, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    try:
        s = np.broadcast_to(s, mu.shape)
    except ValueError:
        raise ValueError(f"scales must broadcast to means' shape {mu.shape}, got {s.shape}") from None
    if not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError(f"weights must be finite and > 0, got {w}")
    if not np.all(np.isfinite(mu)):
        raise ValueError("means must be finite")
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("scales must be finite and > 0")
    dtype = jnp.zeros(()).dtype  # JAX's default float dtype
    return GaussianMixture(
        weights=jnp.asarray(w / w.sum(), dtype),
        means=jnp.asarray(mu, dtype),
        scales=jnp.asarray(s, dtype),
    )


def default_mixture(dim: int = 2) -> GaussianMixture:
    """The embedded default: five modes of unequal weight on a ring of radius 1.5.

    Weights 0.35, 0.25, 0.2, 0.12, 0.08; each mode has standard deviation 0.15 in
    the ring's plane (the first two coordinates). For ``dim > 2`` the other
    coordinates are N(0, 0.5^2) in every component.

    Examples:
      >>> sv.mixtures.default_mixture().means.shape, sv.mixtures.default_mixture(dim=64).means.shape
      ((5, 2), (5, 64))
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
        raise ValueError(f"dim must be an int >= 2, got {dim!r}")
    angles = 2.0 * np.pi * np.arange(5) / 5 + np.pi / 2
    means = np.zeros((5, dim))
    means[:, 0] = 1.5 * np.cos(angles)
    means[:, 1] = 1.5 * np.sin(angles)
    scales = np.full((5, dim), 0.5)
    scales[:, :2] = 0.15
    return make_mixture([0.35, 0.25, 0.2, 0.12, 0.08], means, scales)


def _diffused(mixture: GaussianMixture, alpha: jax.Array, sigma: jax.Array, dtype: Any):
    """Means ``(B, K, D)``-broadcastable and variances of the diffused components."""
    mu = mixture.means.astype(dtype)
    var0 = jnp.square(mixture.scales.astype(dtype))
    a = alpha[:, None, None]
    s = sigma[:, None, None]
    return a * mu[None], jnp.square(a) * var0[None] + jnp.square(s)


def _component_log_probs(mixture, x, alpha, sigma):
    """``log w_k + log N(x_b; alpha mu_k, v_k)``, shape ``(B, K)``, and the pieces."""
    dtype = x.dtype
    mean, var = _diffused(mixture, alpha, sigma, dtype)
    diff = x[:, None, :] - mean
    log_norm = -0.5 * jnp.sum(jnp.log(2.0 * math.pi * var), axis=-1)
    log_comp = log_norm - 0.5 * jnp.sum(jnp.square(diff) / var, axis=-1)
    return jnp.log(mixture.weights.astype(dtype))[None] + log_comp, diff, var


def _flatten(x: ArrayLike, mixture: GaussianMixture) -> tuple[jax.Array, tuple[int, ...]]:
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have shape (batch, *event), got {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != mixture.dim:
        raise ValueError(
            f"x's event shape {x.shape[1:]} has {flat.shape[1]} entries; the mixture has D = {mixture.dim}"
        )
    return flat, x.shape


def diffused_log_prob(
    mixture: GaussianMixture, x: ArrayLike, alpha: ArrayLike = 1.0, sigma: ArrayLike = 0.0
) -> jax.Array:
    r""":math:`\log p(x)` of :math:`\alpha X_0 + \sigma Z`, :math:`X_0` ~ the mixture.

    Args:
      mixture: the data distribution.
      x: shape ``(batch, *event)`` with ``prod(event) == D``.
      alpha, sigma: 0-d or ``(batch,)``; ``(1, 0)`` gives the mixture itself.

    Returns:
      Shape ``(batch,)``, in nats.

    Examples:
      >>> m = sv.mixtures.default_mixture()
      >>> sv.mixtures.diffused_log_prob(m, jnp.zeros((3, 2)), alpha=0.5, sigma=0.9).shape
      (3,)
    """
    flat, _ = _flatten(x, mixture)
    dtype = _checks.compute_dtype(flat.dtype)
    flat = flat.astype(dtype)
    batch = flat.shape[0]
    logits, _, _ = _component_log_probs(
        mixture, flat, _checks.per_sample(alpha, batch, dtype), _checks.per_sample(sigma, batch, dtype)
    )
    return jax.nn.logsumexp(logits, axis=-1)


def mixture_eps(
    mixture: GaussianMixture,
    x: ArrayLike,
    t: ArrayLike,
    beta_min: ArrayLike = 0.1,
    beta_max: ArrayLike = 20.0,
    *,
    schedule: Any = None,
) -> jax.Array:
    r"""The exact noise prediction :math:`-\sigma(t)\nabla_x\log p_t(x)` of the diffused mixture.

    Args:
      mixture: the data distribution.
      x: shape ``(batch, *event)``, ``prod(event) == D``.
      t: the continuous time, 0-d or ``(batch,)``, in the schedule's range.
      beta_min, beta_max: the linear schedule's coefficients (used when ``schedule`` is ``None``).
      schedule: any VP schedule of :mod:`sdevp_jax.schedules`: the mixture is
        diffused by its :math:`\alpha(t), \sigma(t)` alone, so it stays exact.

    Returns:
      An array of x's shape and dtype (computed in at least float32).

    Examples:
      >>> m = sv.mixtures.default_mixture()
      >>> sv.mixtures.mixture_eps(m, jnp.zeros((3, 2)), jnp.full((3,), 0.5)).shape
      (3, 2)
    """
    if schedule is None:
        schedule = schedules.LinearSchedule(beta_min=beta_min, beta_max=beta_max)
    eps, _ = _mixture_eps_x0(mixture, x, t, schedule, with_x0=False)
    return eps


def _mixture_eps_x0(mixture: GaussianMixture, x: ArrayLike, t: ArrayLike, schedule: Any, with_x0: bool = True):
    r"""The exact :math:`\hat\epsilon` and, with ``with_x0``, :math:`\hat x_0 = E[x_0 \mid x_t]` (x's shape, dtype).

    :math:`\hat x_0 = \sum_k r_k(\mu_k + \alpha s_k^2 (x - \alpha\mu_k)/(\alpha^2 s_k^2 + \sigma^2))` with the
    responsibilities :math:`r_k` (the Gaussian posterior mean per component), finite at :math:`\alpha = 0`
    (a zero-terminal-SNR schedule's :math:`t = 1`, where it is the data mean) where
    :math:`(x - \sigma\hat\epsilon)/\alpha` is 0/0.
    """
    flat, shape = _flatten(x, mixture)
    dtype = _checks.compute_dtype(flat.dtype)
    xf = flat.astype(dtype)
    t = _checks.per_sample(t, xf.shape[0], dtype)
    alpha, sigma = schedule.cast(dtype).alpha_sigma(t)
    logits, diff, var = _component_log_probs(mixture, xf, alpha, sigma)
    resp = jax.nn.softmax(logits, axis=-1)
    out_dtype = x.dtype if hasattr(x, "dtype") else dtype
    eps = (sigma[:, None] * jnp.sum(resp[..., None] * diff / var, axis=1)).reshape(shape).astype(out_dtype)
    if not with_x0:
        return eps, None
    return eps, _posterior_mean(mixture, resp, diff, var, alpha).reshape(shape).astype(out_dtype)


def _posterior_mean(mixture: GaussianMixture, resp, diff, var, alpha) -> jax.Array:
    r""":math:`E[x_0 \mid x_t] = \sum_k r_k(\mu_k + \alpha s_k^2 (x - \alpha\mu_k)/v_k)`, shape ``(B, D)``, from
    :func:`_component_log_probs`' pieces and the responsibilities ``resp``."""
    var0 = jnp.square(mixture.scales.astype(diff.dtype))[None]
    post = mixture.means.astype(diff.dtype)[None] + alpha[:, None, None] * var0 * diff / var
    return jnp.sum(resp[..., None] * post, axis=1)


def make_mixture_eps_fn(
    state: ScoreSdeVpSchedulerState, mixture: GaussianMixture
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    r"""``model_fn(x, t)`` for :func:`sdevp_jax.sample`: the exact model of ``mixture`` under ``state``.

    Exact under ``state.schedule`` (any VP schedule), it takes the model's time input
    (:func:`~sdevp_jax.model_time`: a discrete schedule's label) and returns
    ``state.prediction_type`` -- the noise, :math:`v = \alpha\hat\epsilon - \sigma\hat x_0` or
    :math:`\hat x_0` -- each from its exact closed form (the posterior mean :math:`\hat x_0` is finite at
    :math:`\alpha = 0`, a zero-terminal-SNR schedule's start).

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> model_fn(jnp.zeros((3, 2)), jnp.full((3,), 0.5)).shape
      (3, 2)
    """
    schedule, prediction_type = state.schedule, state.prediction_type

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        t = time_from_model_time(state, t)
        if prediction_type == "epsilon":
            return mixture_eps(mixture, x, t, schedule=schedule)
        x = jnp.asarray(x)
        eps, x0 = _mixture_eps_x0(mixture, x, t, schedule)
        if prediction_type == "sample":
            return x0
        dtype = _checks.compute_dtype(x.dtype)
        tb = _checks.per_sample(t, x.shape[0], dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        alpha, sigma = schedule.cast(dtype).alpha_sigma(tb)
        return (alpha * eps.astype(dtype) - sigma * x0.astype(dtype)).astype(x.dtype)  # v (Salimans & Ho 2022)

    return model_fn


def sample_mixture(
    mixture: GaussianMixture,
    key: jax.Array,
    num_samples: int,
    *,
    alpha: ArrayLike = 1.0,
    sigma: ArrayLike = 0.0,
) -> jax.Array:
    r"""Exact samples of :math:`\alpha X_0 + \sigma Z`, shape ``(num_samples, D)``.

    Examples:
      >>> sv.mixtures.sample_mixture(sv.mixtures.default_mixture(), jax.random.key(0), 5).shape
      (5, 2)
    """
    k_comp, k_noise, k_z = jax.random.split(key, 3)
    comp = jax.random.choice(k_comp, mixture.num_components, (num_samples,), p=mixture.weights)
    x0 = mixture.means[comp] + mixture.scales[comp] * jax.random.normal(
        k_noise, (num_samples, mixture.dim), mixture.means.dtype
    )
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    return alpha * x0 + sigma * z


def assign_modes(mixture: GaussianMixture, x: ArrayLike) -> jax.Array:
    """Index of the most responsible component of each sample (at t = 0), shape ``(batch,)``.

    Examples:
      >>> m = sv.mixtures.default_mixture()
      >>> sv.mixtures.assign_modes(m, m.means)   # each mode's mean is its own
      Array([0, 1, 2, 3, 4], dtype=int32)
    """
    flat, _ = _flatten(x, mixture)
    flat = flat.astype(_checks.compute_dtype(flat.dtype))
    ones = jnp.ones((flat.shape[0],), flat.dtype)
    logits, _, _ = _component_log_probs(mixture, flat, ones, 0.0 * ones)
    return jnp.argmax(logits, axis=-1)


# --------------------------------------------------------------------------- class-conditional mixture


@struct.dataclass
class ClassMixture:
    """A Gaussian mixture whose components are grouped into classes: ``p(x | c)`` is the mixture of class ``c``'s.

    Attributes:
      mixture: the whole mixture (its weights are ``p(k)``; a class's prior ``p(c)`` is
        the sum of its components' weights).
      classes: the class of each component, shape ``(K,)``, ints in ``[0, num_classes)``.
      num_classes: static.
    """

    mixture: GaussianMixture
    classes: jax.Array
    num_classes: int = struct.field(pytree_node=False)


def make_class_mixture(mixture: GaussianMixture, classes: ArrayLike) -> ClassMixture:
    """Group ``mixture``'s components into classes: ``classes[k]`` is component ``k``'s, every class non-empty.

    Examples:
      >>> cm = sv.mixtures.make_class_mixture(sv.mixtures.default_mixture(), [0, 0, 1, 1, 2])
      >>> cm.num_classes
      3
    """
    labels = np.asarray(classes)
    if labels.shape != (mixture.num_components,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"classes must be {mixture.num_components} ints (one per component), got {labels.dtype} {labels.shape}"
        )
    num = int(labels.max()) + 1
    if labels.min() < 0 or len(np.unique(labels)) != num:
        raise ValueError(f"classes must use every class 0..C-1 at least once, got {labels.tolist()}")
    return ClassMixture(mixture=mixture, classes=jnp.asarray(labels, jnp.int32), num_classes=num)


def default_class_mixture(dim: int = 2) -> ClassMixture:
    """The default mixture's five modes in three classes: {0, 1}, {2, 3}, {4} (priors 0.6, 0.32, 0.08).

    Examples:
      >>> cm = sv.mixtures.default_class_mixture()   # classes {0, 1}, {2, 3}, {4} of the default modes
      >>> cm.num_classes
      3
    """
    return make_class_mixture(default_mixture(dim), [0, 0, 1, 1, 2])


#: The ``cond`` value that asks :func:`make_class_model` for the unconditional model.
NULL_CLASS = -1


def _check_class_cond(cm: ClassMixture, cond: Any, batch: int) -> jax.Array:
    """``cond`` of shape ``(batch,)``, ints; when concrete, each in ``0..K-1`` or :data:`NULL_CLASS`.

    A traced ``cond`` is checked for shape and dtype only (its values are unknown at
    trace time); :func:`_class_member` makes an out-of-range traced label act as
    :data:`NULL_CLASS`, so the output stays finite.
    """
    host = None if _checks.is_traced(cond) else np.asarray(cond)
    cond = jnp.asarray(cond)
    if cond.shape != (batch,) or not jnp.issubdtype(cond.dtype, jnp.integer):
        raise ValueError(f"cond must be class indices of shape (batch,) = ({batch},), ints, got {cond.dtype} {cond.shape}")
    if host is not None:
        bad = np.flatnonzero(~(((host >= 0) & (host < cm.num_classes)) | (host == NULL_CLASS)))
        if bad.size:
            raise ValueError(
                f"cond must hold class indices in 0..{cm.num_classes - 1} or NULL_CLASS = {NULL_CLASS}, "
                f"got cond[{bad[0]}] = {int(host[bad[0]])}"
            )
    return cond


def _class_member(cm: ClassMixture, cond: jax.Array) -> jax.Array:
    """``(B, K)``: whether component ``k`` belongs to sample ``b``'s class; every component for
    :data:`NULL_CLASS` and for any label outside ``0..K-1`` (only a traced ``cond`` can hold one)."""
    known = (cond >= 0) & (cond < cm.num_classes)
    return ~known[:, None] | (cm.classes[None, :] == cond[:, None])


def _class_logits(cm: ClassMixture, x, t, schedule, dtype):
    """Components' ``log w_k N(x; alpha mu_k, v_k)``, shape ``(B, K)``, and the pieces, at continuous ``t``."""
    alpha, sigma = schedule.cast(dtype).alpha_sigma(_checks.per_sample(t, x.shape[0], dtype))
    logits, diff, var = _component_log_probs(cm.mixture, x, alpha, sigma)
    return logits, diff, var, sigma


def make_class_model(state: ScoreSdeVpSchedulerState, cm: ClassMixture) -> Callable:
    r"""``model_fn(x, t, cond)``: the exact conditional model of ``cm`` under ``state``, class ``cond`` per sample.

    ``cond`` holds a class index per sample in ``0..K-1``, or :data:`NULL_CLASS` (-1) for
    the unconditional model; a concrete ``cond`` holding anything else is a ValueError.
    A traced ``cond`` cannot be checked at trace time (under ``jit`` its values are
    unknown, and a ``checkify`` check would raise only under ``checkify.checkify``):
    there a label outside ``0..K-1`` gives the unconditional model, as
    :data:`NULL_CLASS` does -- a finite, documented output rather than the NaN of a class
    with no components. The noise prediction of :math:`p_t(x \mid c)` is the mixture
    formula with the responsibilities restricted to class ``c``'s components; it is
    returned as ``state.prediction_type`` (v and x0 from the posterior mean, finite at
    :math:`\alpha = 0`), with ``t`` the model's time input.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_class_model(state, sv.mixtures.default_class_mixture())
      >>> model_fn(jnp.zeros((2, 2)), jnp.full((2,), 0.5), jnp.array([1, sv.NULL_CLASS])).shape
      (2, 2)
    """
    schedule, prediction_type = state.schedule, state.prediction_type

    def model_fn(x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        flat, shape = _flatten(x, cm.mixture)
        dtype = _checks.compute_dtype(flat.dtype)
        xf = flat.astype(dtype)
        cond = _check_class_cond(cm, cond, xf.shape[0])
        t_cont = time_from_model_time(state, t)
        logits, diff, var, sigma = _class_logits(cm, xf, t_cont, schedule, dtype)
        member = _class_member(cm, cond)
        resp = jax.nn.softmax(jnp.where(member, logits, -jnp.inf), axis=-1)
        eps = (sigma[:, None] * jnp.sum(resp[..., None] * diff / var, axis=1)).reshape(shape)
        if prediction_type == "epsilon":
            return eps.astype(x.dtype)
        t_vec = _checks.per_sample(t_cont, xf.shape[0], dtype)
        x0 = _posterior_mean(cm.mixture, resp, diff, var, schedule.cast(dtype).alpha(t_vec)).reshape(shape)
        if prediction_type == "sample":
            return x0.astype(x.dtype)
        alpha_b, sigma_b = schedule.cast(dtype).alpha_sigma(t_vec.reshape((-1,) + (1,) * (len(shape) - 1)))
        return (alpha_b * eps - sigma_b * x0).astype(x.dtype)  # v = alpha eps - sigma x0 (finite at alpha = 0)

    return model_fn


def make_class_log_prob(state: ScoreSdeVpSchedulerState, cm: ClassMixture) -> Callable:
    r"""``log_prob_fn(x, t, cond)``: the exact :math:`\log p_t(c \mid x)` of ``cm`` per sample (Bayes' rule).

    :math:`\log\sum_{k \in c} w_k N_k(x) - \log\sum_k w_k N_k(x)` with the components
    diffused to time ``t`` (the model's time input, as ``model_fn`` gets it). ``cond`` as for
    :func:`make_class_model`: :data:`NULL_CLASS` (and, under trace, a label outside
    ``0..K-1``) is the class of every component, so its log-probability is 0 and its
    gradient 0 (no guidance), finite rather than the NaN gradient of :math:`\log 0`.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> log_prob = sv.mixtures.make_class_log_prob(state, sv.mixtures.default_class_mixture())
      >>> log_prob(jnp.zeros((2, 2)), jnp.full((2,), 0.5), jnp.array([0, 1])).shape
      (2,)
    """
    schedule = state.schedule

    def log_prob_fn(x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        flat, _ = _flatten(x, cm.mixture)
        dtype = _checks.compute_dtype(flat.dtype)
        cond = _check_class_cond(cm, cond, flat.shape[0])
        logits, *_ = _class_logits(cm, flat.astype(dtype), time_from_model_time(state, t), schedule, dtype)
        member = _class_member(cm, cond)
        return jax.nn.logsumexp(jnp.where(member, logits, -jnp.inf), axis=-1) - jax.nn.logsumexp(logits, axis=-1)

    return log_prob_fn


def sample_class_mixture(cm: ClassMixture, key: jax.Array, classes: ArrayLike) -> jax.Array:
    """Exact samples of ``p(x | c)``, one per entry of ``classes`` (shape ``(n,)``): ``(n, D)``.

    Examples:
      >>> cm = sv.mixtures.default_class_mixture()
      >>> x = sv.mixtures.sample_class_mixture(cm, jax.random.key(0), jnp.full((6,), 2))
      >>> sorted(set(sv.mixtures.assign_modes(cm.mixture, x).tolist()))   # class 2 is mode 4
      [4]
    """
    classes = jnp.asarray(classes)
    k_comp, k_noise = jax.random.split(key)
    member = cm.classes[None, :] == classes[:, None]
    logits = jnp.where(member, jnp.log(cm.mixture.weights)[None, :], -jnp.inf)
    comp = jax.random.categorical(k_comp, logits, axis=-1)
    z = jax.random.normal(k_noise, (classes.shape[0], cm.mixture.dim), cm.mixture.means.dtype)
    return cm.mixture.means[comp] + cm.mixture.scales[comp] * z
