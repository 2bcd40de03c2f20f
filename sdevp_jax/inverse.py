r"""Inverse problems by the replacement method: inpainting and colorization.

Song et al. (ICLR 2021, appendix I): run the reverse SDE on the whole sample and,
after every predictor and corrector update at time :math:`t`, replace the known
entries with a fresh draw of the known data diffused to :math:`t`,
:math:`\alpha(t)\,y + \sigma(t)\,z` (the reference uses the update's own ``t``; so
do we). The unknown entries are thereby sampled (approximately) from
:math:`p(x_{\text{unknown}} \mid y)`.

One difference from the paper's code, on purpose: its returned ``x_mean`` keeps
the unknown region of the noisy ``x``. Ours is the noise-free ``x_mean`` in the
unknown region and ``y`` itself in the known region, exactly.

Colorization is inpainting in a rotated colour space: with an orthogonal
:math:`M` whose first row is :math:`(1, 1, 1)/\sqrt3`, the first channel of
:math:`u = Mx` is :math:`\sqrt3` times the grey image (the channel mean), known;
the other two are unknown. The VP SDE is invariant under orthogonal maps, so the
same sampler runs in :math:`u` with the model :math:`u \mapsto M\hat\epsilon(M^\top u)`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _checks
from .loops import solver_from, check_common, make_sample_keys, per_sample_normal, resolve_unroll, run
from .solvers import Projected
from .scheduler import ScoreSdeVpSchedulerState

__all__ = ["inpaint", "colorize", "COLOR_DECOUPLING"]

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

# Orthonormal rows: the (scaled) grey axis, then two colour-difference axes.
COLOR_DECOUPLING = (
    (1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)),
    (1 / math.sqrt(2), -1 / math.sqrt(2), 0.0),
    (1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)),
)


def inpaint(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    key: jax.Array,
    y: ArrayLike,
    mask: ArrayLike,
    *,
    predictor: str = "euler_maruyama",
    corrector: Optional[str] = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    step_rule: str = "sigma",
    unroll: Optional[int] = None,
    index_offset: int | jax.Array = 0,
    cond=None,
) -> jax.Array:
    """Fill in the unknown entries of ``y`` (``mask == 0``) with the replacement method.

    Args:
      state: a state after :func:`~sdevp_jax.set_timesteps`.
      model_fn: ``(x, t) -> prediction`` as for :func:`~sdevp_jax.sample` (any schedule,
        any prediction type).
      key: a PRNG key; sample ``b`` uses ``fold_in(key, index_offset + b)`` only.
      y: the observations, shape ``(batch, ...)``, float; its unknown entries are ignored
        (selected out, so they may hold anything, NaN included).
      mask: 1 where ``y`` is known, 0 where it is not; ``y``'s shape, or broadcastable to it.
      predictor, corrector, snr, corrector_steps, step_rule, unroll, index_offset, cond:
        as for :func:`~sdevp_jax.sample`.

    Returns:
      Shape and dtype of ``y``: ``y`` where ``mask`` is 1 (exactly), the denoised
      sample elsewhere.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> y = jnp.array([[1.5, 0.0], [0.0, 1.5]])   # the first coordinate known, the second to fill
      >>> x = sv.inpaint(state, model_fn, jax.random.key(0), y, jnp.array([1, 0]))
      >>> x.shape, bool(jnp.all(x[:, 0] == y[:, 0]))
      ((2, 2), True)
    """
    y = _checks.float_array("y", y)
    mask = jnp.asarray(mask)
    try:
        mask = jnp.broadcast_to(mask, y.shape)
    except ValueError:
        raise ValueError(f"mask of shape {mask.shape} must broadcast to y's shape {y.shape}") from None
    if not _checks.is_traced(mask) and not bool(jnp.all((mask == 0) | (mask == 1))):
        raise ValueError("mask must contain only 0 and 1 (1 where y is known)")
    shape, dtype = check_common(state, model_fn, key, y.shape, y.dtype, "inpaint", cond)
    solver = solver_from(None, predictor, corrector, snr, corrector_steps, step_rule).check()
    work = _checks.compute_dtype(dtype)
    known = mask == 1
    # selected, not multiplied: y's unknown entries (NaN, inf, anything) never enter the arithmetic
    y_work = jnp.where(known, y, jnp.zeros((), y.dtype)).astype(work)
    schedule = state.schedule.cast(work)

    def project(x, x_mean, t_vec, z):
        t = t_vec.astype(work).reshape((-1,) + (1,) * (len(shape) - 1))
        alpha, std = schedule.alpha_sigma(t)
        mean = alpha * y_work
        x = jnp.where(known, mean + std * z, x.astype(work))
        x_mean = jnp.where(known, mean, x_mean.astype(work))
        return x.astype(dtype), x_mean.astype(dtype)

    keys = make_sample_keys(key, shape[0], index_offset)
    x_init = per_sample_normal(keys, 0, shape[1:], work).astype(dtype)
    _, x_mean, _ = run(Projected.around(solver, project), state, model_fn, x_init, keys, work, cond,
                       resolve_unroll(unroll))
    return jnp.where(known, y, x_mean)


def _rotate(matrix: jax.Array, x: jax.Array) -> jax.Array:
    """Apply a 3x3 matrix to the channel axis (axis 1) of ``x``."""
    return jnp.einsum("ij,bj...->bi...", matrix.astype(x.dtype), x)


def colorize(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    key: jax.Array,
    gray: ArrayLike,
    **kwargs,
) -> jax.Array:
    """Colour images whose grey version (the mean of the 3 channels) is ``gray``.

    Args:
      state: a state after :func:`~sdevp_jax.set_timesteps`.
      model_fn: an epsilon-model of colour images, ``(batch, 3, *spatial)`` (channels on axis 1).
      key: a PRNG key.
      gray: shape ``(batch, *spatial)`` or ``(batch, 1, *spatial)``, float.
      **kwargs: the sampler options of :func:`inpaint`.

    Returns:
      Shape ``(batch, 3, *spatial)``, whose channel mean equals ``gray`` to float rounding.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim=3 * 2 * 2))
      >>> gray = jnp.zeros((2, 2, 2))   # (batch, H, W)
      >>> rgb = sv.colorize(state, model_fn, jax.random.key(0), gray)
      >>> rgb.shape, bool(jnp.allclose(rgb.mean(axis=1), gray, atol=1e-5))
      ((2, 3, 2, 2), True)
    """
    gray = _checks.float_array("gray", gray)
    if gray.ndim >= 2 and gray.shape[1] == 1 and gray.ndim > 2:
        gray = gray[:, 0]
    if gray.ndim < 2:
        raise ValueError(f"gray must have shape (batch, *spatial) or (batch, 1, *spatial), got {gray.shape}")
    matrix = jnp.asarray(COLOR_DECOUPLING, _checks.compute_dtype(gray.dtype))
    shape = (gray.shape[0], 3, *gray.shape[1:])
    y_u = jnp.zeros(shape, gray.dtype).at[:, 0].set((math.sqrt(3.0) * gray).astype(gray.dtype))
    mask = jnp.zeros(shape, jnp.int32).at[:, 0].set(1)

    def model_u(u, t, *cond):  # (u, t) or (u, t, cond): the condition passes through
        return _rotate(matrix, model_fn(_rotate(matrix.T, u), t, *cond))

    u = inpaint(state, model_u, key, y_u, mask, **kwargs)
    return _rotate(matrix.T, u).astype(gray.dtype)
