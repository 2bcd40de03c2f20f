r"""Training: the VP forward marginal and the continuous-time denoising score-matching loss.

Pure functions, safe under ``jax.jit``, ``jax.vmap`` and ``jax.grad``, for use inside
Flax/optax training steps.

The loss (Song et al., ICLR 2021, eq. 7, in noise-prediction form): with
:math:`t \sim U(\varepsilon, 1)`, :math:`z \sim N(0, I)` and
:math:`x_t = \alpha(t) x_0 + \sigma(t) z`, the score target is :math:`-z/\sigma(t)`,
and with the model's score :math:`-\hat\epsilon/\sigma` the weighted score error is

.. math::

    \lambda(t)\,\lVert -\hat\epsilon/\sigma + z/\sigma\rVert^2
    = \frac{\lambda(t)}{\sigma(t)^2}\lVert \hat\epsilon(x_t, t) - z\rVert^2 .

The default weighting :math:`\lambda = \sigma^2` gives the plain
:math:`\lVert\hat\epsilon - z\rVert^2` (Ho et al. 2020); ``likelihood_weighting=True``
takes :math:`\lambda = g(t)^2 = \beta(t)`, for which the loss bounds the negative
log-likelihood (Song, Durkan, Murray & Ermon, NeurIPS 2021, "Maximum likelihood
training of score-based diffusion models", Thm. 1), i.e. the factor
:math:`\beta(t)/\sigma(t)^2`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _checks, sde
from .loops import make_sample_keys
from .scheduler import ScoreSdeVpSchedulerState, broadcast_t

__all__ = ["add_noise", "dsm_loss"]


def add_noise(state: ScoreSdeVpSchedulerState, x0: ArrayLike, noise: ArrayLike, t: ArrayLike) -> jax.Array:
    r"""The VP marginal :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\text{noise}`.

    Args:
      state: any scheduler state (only its ``beta_min``/``beta_max`` are used).
      x0: clean data, shape ``(batch, ...)``, float.
      noise: standard normal noise of ``x0``'s shape.
      t: 0-d or ``(batch,)``, in (0, 1] (``t = 0`` gives ``x0``).

    Returns:
      ``x_t``, of ``x0``'s shape and dtype (computed in at least float32).
    """
    x0 = _checks.float_array("x0", x0)
    noise = _checks.float_array("noise", noise)
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {x0.shape}, got {noise.shape}")
    dtype = _checks.compute_dtype(x0.dtype)
    t = broadcast_t(jnp.asarray(t).astype(dtype), x0)
    bmin, bmax = jnp.asarray(state.beta_min, dtype), jnp.asarray(state.beta_max, dtype)
    mean, std = sde.marginal_mean_std(x0.astype(dtype), t, bmin, bmax)
    return (mean + std * noise.astype(dtype)).astype(x0.dtype)


def dsm_loss(
    state: ScoreSdeVpSchedulerState,
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: ArrayLike,
    key: jax.Array,
    *,
    likelihood_weighting: bool = False,
    eps: float = 1e-5,
) -> jax.Array:
    r"""Continuous-time denoising score matching in :math:`\epsilon` form: a scalar loss.

    Each sample ``b`` draws its own :math:`t_b \sim U(\text{eps}, 1)` and
    :math:`z_b \sim N(0, I)` from ``fold_in(key, b)``, so a sample's term does not
    depend on the batch it is in. The per-sample loss is summed over the sample's
    dimensions and averaged over the batch (as the paper's code does with
    ``reduce_mean=False``).

    Args:
      state: the scheduler state (its SDE; timesteps need not be set).
      model_fn: ``(x_t, t) -> eps_hat``, ``t`` of shape ``(batch,)`` -- e.g. a Flax
        module's ``lambda x, t: module.apply(params, x, t)``.
      x0: a batch of data, ``(batch, ...)``.
      key: a PRNG key.
      likelihood_weighting: weight by :math:`\beta(t)/\sigma(t)^2` (see the module
        docstring) instead of 1.
      eps: the smallest training time, in (0, 1).

    Returns:
      The loss, a float32 (or wider) scalar.
    """
    x0 = _checks.float_array("x0", x0)
    if x0.ndim < 1:
        raise ValueError(f"x0 must have shape (batch, ...), got {x0.shape}")
    _checks.prng_key("key", key)
    eps = _checks.real_scalar("eps", eps)
    if not _checks.is_traced(eps) and not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in the open interval (0, 1), got {eps}")
    batch = x0.shape[0]
    dtype = _checks.compute_dtype(x0.dtype)
    keys = make_sample_keys(key, batch, 0)

    def draw(k):
        k_t, k_z = jax.random.split(k)
        return (jax.random.uniform(k_t, (), dtype, minval=eps, maxval=1.0),
                jax.random.normal(k_z, x0.shape[1:], dtype))

    t, z = jax.vmap(draw)(keys)
    # The noise in x_t is z in x0's dtype (rounded for bfloat16/float16 data); the
    # target is that same noise, so a model that recovers it exactly scores 0.
    z = z.astype(x0.dtype)
    x_t = add_noise(state, x0, z, t)
    eps_hat = model_fn(x_t, t)
    if getattr(eps_hat, "shape", None) != x0.shape:
        raise ValueError(f"model_fn must return an array of x0's shape {x0.shape}, got {getattr(eps_hat, 'shape', eps_hat)}")
    per_sample = jnp.sum(jnp.square(eps_hat.astype(dtype) - z.astype(dtype)).reshape(batch, -1), axis=1)
    if likelihood_weighting:
        bmin, bmax = jnp.asarray(state.beta_min, dtype), jnp.asarray(state.beta_max, dtype)
        per_sample = per_sample * sde.beta(t, bmin, bmax) / jnp.square(sde.sigma(t, bmin, bmax))
    return jnp.mean(per_sample)
