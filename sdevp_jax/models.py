r"""An exact noise-prediction model: a Gaussian mixture diffused by the VP SDE.

If :math:`x_0 \sim \sum_k w_k N(\mu_k, \operatorname{diag}(s_k^2))`, then under the VP
SDE :math:`x_t \sim \sum_k w_k N(\alpha(t)\mu_k, \operatorname{diag}(v_k(t)))` with
:math:`v_k(t) = \alpha(t)^2 s_k^2 + \sigma(t)^2` (the kernel of :mod:`sdevp_jax.sde`).
Its score is :math:`\nabla\log p_t(x) = \sum_k r_k(x)\,(\alpha\mu_k - x)/v_k`, with
:math:`r_k` the posterior responsibilities, and the ideal noise prediction is
:math:`\hat\epsilon(x, t) = -\sigma(t)\nabla\log p_t(x)` -- in closed form, at every
``t``, in any dimension. It lets anyone run and check the scheduler without a
trained network.

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
from .scheduler import ScoreSdeVpSchedulerState, prediction_from_eps, time_from_model_time

__all__ = [
    "GaussianMixture",
    "make_mixture",
    "default_mixture",
    "diffused_log_prob",
    "mixture_eps",
    "make_mixture_eps_fn",
    "sample_mixture",
    "assign_modes",
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


def _per_sample(v: ArrayLike, batch: int, dtype: Any) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(v, dtype).reshape(-1), (batch,))


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
    """
    flat, _ = _flatten(x, mixture)
    dtype = _checks.compute_dtype(flat.dtype)
    flat = flat.astype(dtype)
    batch = flat.shape[0]
    logits, _, _ = _component_log_probs(
        mixture, flat, _per_sample(alpha, batch, dtype), _per_sample(sigma, batch, dtype)
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
    """
    flat, shape = _flatten(x, mixture)
    dtype = _checks.compute_dtype(flat.dtype)
    xf = flat.astype(dtype)
    t = _per_sample(t, xf.shape[0], dtype)
    if schedule is None:
        schedule = schedules.LinearSchedule(beta_min=beta_min, beta_max=beta_max)
    alpha, sigma = schedule.cast(dtype).alpha_sigma(t)
    logits, diff, var = _component_log_probs(mixture, xf, alpha, sigma)
    resp = jax.nn.softmax(logits, axis=-1)
    eps = sigma[:, None] * jnp.sum(resp[..., None] * diff / var, axis=1)
    return eps.reshape(shape).astype(x.dtype if hasattr(x, "dtype") else dtype)


def make_mixture_eps_fn(
    state: ScoreSdeVpSchedulerState, mixture: GaussianMixture
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``model_fn(x, t)`` for :func:`sdevp_jax.sample`: the exact model of ``mixture`` under ``state``.

    Exact under ``state.schedule`` (any VP schedule), it takes the model's time input
    (:func:`~sdevp_jax.model_time`: a discrete schedule's label) and returns
    ``state.prediction_type`` -- the noise, :math:`v` or :math:`x_0` -- converted from
    the exact noise prediction by :func:`~sdevp_jax.scheduler.prediction_from_eps`.
    (The name is kept from when the noise was the only prediction type.)
    """
    schedule, prediction_type = state.schedule, state.prediction_type

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        t = time_from_model_time(state, t)
        eps = mixture_eps(mixture, x, t, schedule=schedule)
        if prediction_type == "epsilon":
            return eps
        x = jnp.asarray(x)
        dtype = _checks.compute_dtype(x.dtype)
        tb = _per_sample(t, x.shape[0], dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        alpha, sigma = schedule.cast(dtype).alpha_sigma(tb)
        out = prediction_from_eps(prediction_type, eps.astype(dtype), x.astype(dtype), alpha, sigma)
        return out.astype(x.dtype)

    return model_fn


def sample_mixture(
    mixture: GaussianMixture,
    key: jax.Array,
    num_samples: int,
    *,
    alpha: ArrayLike = 1.0,
    sigma: ArrayLike = 0.0,
) -> jax.Array:
    r"""Exact samples of :math:`\alpha X_0 + \sigma Z`, shape ``(num_samples, D)``."""
    k_comp, k_noise, k_z = jax.random.split(key, 3)
    comp = jax.random.choice(k_comp, mixture.num_components, (num_samples,), p=mixture.weights)
    x0 = mixture.means[comp] + mixture.scales[comp] * jax.random.normal(
        k_noise, (num_samples, mixture.dim), mixture.means.dtype
    )
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    return alpha * x0 + sigma * z


def assign_modes(mixture: GaussianMixture, x: ArrayLike) -> jax.Array:
    """Index of the most responsible component of each sample (at t = 0), shape ``(batch,)``."""
    flat, _ = _flatten(x, mixture)
    flat = flat.astype(_checks.compute_dtype(flat.dtype))
    ones = jnp.ones((flat.shape[0],), flat.dtype)
    logits, _, _ = _component_log_probs(mixture, flat, ones, 0.0 * ones)
    return jnp.argmax(logits, axis=-1)
