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
import numpy as np
from jax.typing import ArrayLike

from . import _checks
from .loops import check_cond, make_sample_keys, with_cond
from .denoiser import model_time
from .grids import smallest_time
from .scheduler import ScoreSdeVpSchedulerState, broadcast_t

__all__ = ["add_noise", "dsm_loss"]


def add_noise(state: ScoreSdeVpSchedulerState, x0: ArrayLike, noise: ArrayLike, t: ArrayLike) -> jax.Array:
    r"""The VP marginal :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\text{noise}`.

    Args:
      state: any scheduler state (only its schedule is used).
      x0: clean data, shape ``(batch, ...)``, float.
      noise: standard normal noise of ``x0``'s shape.
      t: the continuous time, 0-d or ``(batch,)``: 0 (which gives ``x0``) or in
        ``[t_lo, t_max]``, ``t_lo`` the schedule's ``smallest_time`` in the compute dtype
        (below it :math:`\sigma(t)` rounds to 0; 4.7e-37 for the default linear schedule
        in float32). Checked when ``t`` is on the host (a Python number or NumPy value);
        convert a discrete model's labels with :func:`~sdevp_jax.time_from_model_time`.

    Returns:
      ``x_t``, of ``x0``'s shape and dtype (computed in at least float32).

    Examples:
      >>> state = sv.create_state()
      >>> x0, noise = jnp.ones((2, 3)), jnp.zeros((2, 3))
      >>> x_t = sv.add_noise(state, x0, noise, 0.5)   # alpha(0.5) x0 + sigma(0.5) noise
      >>> bool(jnp.allclose(x_t, sv.sde.alpha(0.5, 0.1, 20.0) * x0))
      True
    """
    x0 = _checks.float_array("x0", x0)
    noise = _checks.float_array("noise", noise)
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {x0.shape}, got {noise.shape}")
    dtype = _checks.compute_dtype(x0.dtype)
    t_host = _checks.host_value(t)
    if t_host is not None:
        _check_noise_time(state, np.asarray(t_host, np.float64), dtype)
    t = broadcast_t(jnp.asarray(t).astype(dtype), x0)
    alpha, sigma = state.schedule.cast(dtype).alpha_sigma(t)
    return (alpha * x0.astype(dtype) + sigma * noise.astype(dtype)).astype(x0.dtype)


def _check_noise_time(state: ScoreSdeVpSchedulerState, t: np.ndarray, dtype) -> None:
    """Host times of :func:`add_noise`: finite, 0 or in ``[smallest_time, t_max]``."""
    floor = smallest_time(state.schedule, dtype)
    t_max = state.schedule.t_max
    top = None if _checks.is_traced(t_max) else float(np.max(np.asarray(t_max)))
    ok = np.isfinite(t) & ((t == 0) | (t >= floor))
    if top is not None:
        ok &= t <= top * (1 + 1e-6)  # t_max rounded to float32 may lie just above the float64 t_max
    if not np.all(ok):
        bad = float(t.reshape(-1)[np.flatnonzero(~ok.reshape(-1))[0]])
        raise ValueError(
            f"t must be 0 or in [{floor:.4g}, t_max = {t_max!r}] (below {floor:.4g} sigma(t) is 0 in "
            f"{jnp.dtype(dtype).name}), got {bad!r}"
        )


def dsm_loss(
    state: ScoreSdeVpSchedulerState,
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: ArrayLike,
    key: jax.Array,
    *,
    likelihood_weighting: bool = False,
    eps: float = 1e-5,
    cond=None,
) -> jax.Array:
    r"""Denoising score matching for the state's model parametrization: a scalar loss.

    Each sample ``b`` draws its own time :math:`t_b` and :math:`z_b \sim N(0, I)` from
    ``fold_in(key, b)``, so a sample's term does not depend on the batch it is in.
    :math:`t_b \sim U(\text{eps}, t_{\max})` for a continuous schedule; for a discrete
    one a training label uniform on ``0..N_train - 1`` (DDPM's training, Ho et al.
    2020), :math:`t_b = (n + 1)/N_{train}`. The model is called at
    :func:`~sdevp_jax.model_time` and trained on its own target:
    :math:`\lVert \hat\epsilon - z\rVert^2`, :math:`\lVert \hat v - v\rVert^2` with
    :math:`v = \alpha z - \sigma x_0` (Salimans & Ho 2022), or
    :math:`\lVert \hat x_0 - x_0\rVert^2`, summed over the sample's dimensions and
    averaged over the batch (as the paper's code does with ``reduce_mean=False``).

    Args:
      state: the scheduler state (its schedule and ``prediction_type``; timesteps need not be set).
      model_fn: ``(x_t, t) -> prediction``, ``t`` of shape ``(batch,)`` the model's time
        input -- e.g. a Flax module's ``lambda x, t: module.apply(params, x, t)``.
      x0: a batch of data, ``(batch, ...)``.
      key: a PRNG key.
      likelihood_weighting: weight each sample so that the loss is the
        likelihood-weighted score error :math:`\beta(t)/\sigma(t)^2\,\lVert\hat\epsilon - z\rVert^2`
        (see the module docstring) whatever the parametrization: the squared error
        of the model's output times :math:`c^2\beta/\sigma^2`, with
        :math:`\hat\epsilon - z = c\,(\text{output} - \text{target})`, :math:`c = 1`
        (ε), :math:`\alpha` (v), :math:`-\alpha/\sigma` (:math:`x_0`).
      eps: the smallest training time of a continuous schedule, in ``(0, t_max)`` and at
        least the schedule's ``smallest_time`` in the compute dtype.
      cond: ``None`` or the samples' conditions (a pytree of arrays with the batch as
        leading axis): the model is then called ``model_fn(x_t, t, cond)``. (For
        classifier-free guidance, train with the condition replaced by the null one
        for a random share of the samples: that choice is the caller's.)

    Returns:
      The loss, a float32 (or wider) scalar.

    Examples:
      >>> state = sv.create_state()
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> x0 = sv.mixtures.sample_mixture(sv.mixtures.default_mixture(), jax.random.key(0), 64)
      >>> loss = sv.dsm_loss(state, model_fn, x0, jax.random.key(1))
      >>> loss.shape, bool(jnp.isfinite(loss))
      ((), True)
      >>> grads = jax.grad(lambda x: sv.dsm_loss(state, model_fn, x, jax.random.key(1)))(x0)   # any leaf differentiates
      >>> grads.shape
      (64, 2)
    """
    x0 = _checks.float_array("x0", x0)
    if x0.ndim < 1:
        raise ValueError(f"x0 must have shape (batch, ...), got {x0.shape}")
    _checks.prng_key("key", key)
    eps = _checks.real_scalar("eps", eps)
    t_max = state.schedule.t_max
    if not _checks.is_traced(eps) and not _checks.is_traced(t_max) and not 0.0 < eps < t_max:
        shown = "1" if t_max == 1.0 else f"t_max = {t_max!r}"
        raise ValueError(f"eps must be in the open interval (0, {shown}), got {eps}")
    batch = x0.shape[0]
    dtype = _checks.compute_dtype(x0.dtype)
    floor = smallest_time(state.schedule, dtype)
    if not _checks.is_traced(eps) and not state.schedule.is_discrete and not eps >= floor:
        raise ValueError(
            f"eps must be in [{floor:.4g}, t_max) (below {floor:.4g} sigma(t) is 0 in {dtype.name}), got {eps}"
        )
    keys = make_sample_keys(key, batch, 0)
    schedule = state.schedule.cast(dtype)
    n_train = state.num_train_timesteps

    def draw(k):
        k_t, k_z = jax.random.split(k)
        if state.schedule.is_discrete:
            label = jax.random.randint(k_t, (), 0, n_train)
            t = (label.astype(dtype) + 1.0) / n_train
        else:
            t = jax.random.uniform(k_t, (), dtype, minval=eps, maxval=t_max)
        return t, jax.random.normal(k_z, x0.shape[1:], dtype)

    t, z = jax.vmap(draw)(keys)
    # The noise in x_t is z in x0's dtype (rounded for bfloat16/float16 data); the
    # target is that same noise, so a model that recovers it exactly scores 0.
    z = z.astype(x0.dtype)
    x_t = add_noise(state, x0, z, t)
    check_cond(cond, batch)
    output = with_cond(model_fn, cond)(x_t, model_time(state, t))
    if getattr(output, "shape", None) != x0.shape:
        raise ValueError(f"model_fn must return an array of x0's shape {x0.shape}, got {getattr(output, 'shape', output)}")
    tb = t.reshape((-1,) + (1,) * (x0.ndim - 1))
    alpha, sigma = schedule.alpha_sigma(tb)
    if state.prediction_type == "epsilon":
        target = z.astype(dtype)
    elif state.prediction_type == "v_prediction":
        target = alpha * z.astype(dtype) - sigma * x0.astype(dtype)
    else:
        target = x0.astype(dtype)
    per_sample = jnp.sum(jnp.square(output.astype(dtype) - target).reshape(batch, -1), axis=1)
    if likelihood_weighting:
        weight = schedule.beta(t) / jnp.square(schedule.sigma(t))
        if state.prediction_type != "epsilon":
            alpha_1 = alpha.reshape(batch)
            factor = alpha_1 if state.prediction_type == "v_prediction" else alpha_1 / sigma.reshape(batch)
            weight = weight * jnp.square(factor)
        per_sample = per_sample * weight
    return jnp.mean(per_sample)
