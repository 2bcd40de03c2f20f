"""The compiled sampling loop: the whole reverse SDE as one ``lax.scan``.

Noise is addressed per sample, in the manner of EDM's ``StackedRandomGenerator``
(Karras et al., 2022): sample ``b`` of a call owns the key ``fold_in(key, b)``, and
its noise at slot ``j`` is ``normal(fold_in(fold_in(key, b), j), event_shape)`` --
slot 0 for the prior draw :math:`x_T`, slot ``i + 1`` for step ``i``. Sample ``b``
therefore depends only on ``(key, b)``: it is the same in a batch of 1 or of 4096,
and a batch can be cut into chunks (``index_offset``) without changing any sample.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from . import _checks
from .scheduler import ScoreSdeVpSchedulerState, require_timesteps, step_pred

__all__ = ["sample", "per_sample_normal"]

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def per_sample_normal(
    sample_keys: jax.Array, slot: jax.Array | int, event_shape: tuple[int, ...], dtype: DTypeLike
) -> jax.Array:
    """Standard normal noise of shape ``(batch, *event_shape)``, row ``b`` from ``sample_keys[b]``.

    Args:
      sample_keys: per-sample keys, shape ``(batch,)`` (typed) or ``(batch, 2)`` (raw).
      slot: which draw of each sample's stream (0 = prior, ``i + 1`` = step ``i``).
      event_shape: the shape of one sample.
      dtype: a float dtype.
    """
    def one(k):
        return jax.random.normal(jax.random.fold_in(k, slot), event_shape, dtype)

    return jax.vmap(one)(sample_keys)


def _check_model_output(model_fn: ModelFn, x: jax.Array, t: jax.Array) -> None:
    """Trace ``model_fn`` once abstractly and check it returns an array of x's shape."""
    try:
        out = jax.eval_shape(model_fn, x, t)
    except (TypeError, ValueError) as err:
        raise type(err)(f"model_fn(x, t) failed for x {x.shape} and t {t.shape}: {err}") from err
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        raise TypeError(f"model_fn must return one array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(
            f"model_fn must return the noise prediction with x's shape {x.shape}, got {out.shape}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"model_fn must return a float array, got dtype {out.dtype}")


def sample(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    dtype: DTypeLike = jnp.float32,
    index_offset: int | jax.Array = 0,
) -> jax.Array:
    r"""Draw samples by running the reverse VP SDE with :func:`step_pred`, in one ``lax.scan``.

    Draws :math:`x_T \sim N(0, I)`, then for each ``t`` in ``state.timesteps`` calls
    ``model_fn(x, t_vec)`` (``t_vec`` of shape ``(batch,)``, the continuous time in
    ``[sampling_eps, 1]``) and applies :func:`step_pred`. Returns the last step's
    ``x_mean``, the denoised sample, as diffusers' pipelines do.

    Not jitted inside: jit the call, with ``model_fn`` and ``shape`` static, e.g.
    ``sample_fn = jax.jit(sv.sample, static_argnums=(1, 3))``; build ``sample_fn``
    and ``model_fn`` once and reuse them (a static ``model_fn`` is cached by
    identity, so a new closure recompiles). It then traces once per shape
    and step count, makes no host round trip inside the loop, and uses memory
    independent of the number of steps. ``jax.vmap`` over a batch of keys works.

    Args:
      state: a state after :func:`set_timesteps`.
      model_fn: ``(x, t) -> eps_hat`` with ``x`` of ``shape`` and ``t`` of shape
        ``(batch,)``; must return an array of ``shape``. For a network trained on the
        paper's labels wrap it as ``lambda x, t: net(x, t * 999)``.
      key: a PRNG key (``jax.random.key`` or legacy ``PRNGKey``).
      shape: ``(batch, *event)``, a non-empty tuple of positive ints.
      dtype: the float dtype of the samples (bfloat16 allowed; coefficients stay float32).
      index_offset: the global index of this call's first sample: sample ``b`` of
        the call is sample ``index_offset + b`` of the stream of ``key``. An int
        (or 0-d integer array) with ``0 <= index_offset`` and
        ``index_offset + batch <= 2**32``; pass ``np.uint32(offset)`` to a jitted
        call to reuse one compilation for every offset up to ``2**32``.

    Returns:
      The samples, an array of ``shape`` and ``dtype``.
    """
    require_timesteps(state, "sample")
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t) -> eps_hat, got {type(model_fn).__name__}")
    _checks.prng_key("key", key)
    shape = _checks.sample_shape("shape", shape)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a float dtype, got {jnp.dtype(dtype)}")
    dtype = jnp.dtype(dtype)
    batch, event = shape[0], shape[1:]
    noise_dtype = _checks.compute_dtype(dtype)
    timesteps = state.timesteps

    _check_model_output(
        model_fn,
        jax.ShapeDtypeStruct(shape, dtype),
        jax.ShapeDtypeStruct((batch,), timesteps.dtype),
    )

    _checks.index_offset("index_offset", index_offset, batch)
    indices = jnp.asarray(index_offset, jnp.uint32) + jnp.arange(batch, dtype=jnp.uint32)
    sample_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    x_init = per_sample_normal(sample_keys, 0, event, noise_dtype).astype(dtype)

    def body(carry, t):
        x, _, i = carry
        t_vec = jnp.full((batch,), t, timesteps.dtype)
        eps_hat = model_fn(x, t_vec)
        z = per_sample_normal(sample_keys, i + 1, event, noise_dtype)
        x_next, x_mean = step_pred(state, eps_hat, x, t_vec, None, noise=z)
        return (x_next, x_mean, i + 1), None

    # The step index rides in the carry (not as an arange over the steps), so
    # nothing but the timestep grid itself has the length of the loop.
    (_, x_mean, _), _ = lax.scan(body, (x_init, x_init, jnp.uint32(0)), timesteps)
    return x_mean
