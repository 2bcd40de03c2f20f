"""Host-side argument checks shared by the public functions.

Every check runs at call or trace time (never inside compiled code) and raises
``TypeError`` for a wrong kind of value and ``ValueError`` for a wrong value,
with a message that names the argument, what it got and what is allowed.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
    """Whether ``value`` is an abstract tracer (its value unknown until run time)."""
    return isinstance(value, jax.core.Tracer)


def host_value(value: Any) -> Any:
    """``value`` as a NumPy array when it lives on the host (a Python number, a NumPy value), else ``None``.

    A ``jax.Array`` -- concrete on a device or a tracer -- gives ``None``: reading
    it back would wait for the device (a sync per call on an accelerator), so
    callers check such values another way (statically, or with ``checkify``).
    """
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return None
    if isinstance(value, (int, float, np.ndarray, np.generic)) and not isinstance(value, (bool, np.bool_)):
        return np.asarray(value)
    return None


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` as a Python int >= ``minimum``; bools and non-integers are a TypeError."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int >= {minimum}, got the bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int >= {minimum}, got {value!r} of type {type(value).__name__}"
        ) from None
    if number < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {number}")
    return number


def positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int >= 1; bools and non-integers are a TypeError."""
    return int_at_least(name, value, 1)


def host_real_array(name: str, value: Any) -> np.ndarray:
    """A concrete real array (any shape) as float64 NumPy, for values used on the host.

    Tracers, bools and non-numbers are a TypeError.
    """
    if is_traced(value):
        raise TypeError(f"{name} must be concrete (it is used on the host), got a tracer")
    array = np.asarray(value)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be an array of real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def real_scalar(name: str, value: Any) -> Any:
    """A 0-d real number; a finite Python float when it is concrete.

    Tracers (a state built under ``jit`` or ``vmap``) are returned unchanged after
    a shape and dtype check: their values are not known at trace time.
    """
    if is_traced(value):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"{name} must be a 0-d float, got a traced {value.aval}")
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got the bool {value!r}")
    array = np.asarray(value)
    if array.shape != () or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise TypeError(
            f"{name} must be a real number, got {value!r} of type {type(value).__name__}"
        )
    number = float(array)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def float_array(name: str, value: Any) -> jax.Array:
    """``value`` as a JAX array of a floating dtype (TypeError otherwise)."""
    if not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be a float array, got {type(value).__name__}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    return jnp.asarray(value)


def prng_key(name: str, key: Any) -> None:
    """Accept one typed key (``jax.random.key``) or one legacy uint32 key (``PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(
                f"{name} must be a single PRNG key, got a key array of shape {shape}; "
                "use jax.vmap to sample with a batch of keys"
            )
        return
    if dtype == jnp.uint32 and shape is not None and len(shape) == 1:
        if shape in ((2,), (4,)):  # threefry / rbg raw keys
            return
        raise ValueError(
            f"{name} must be a single PRNG key; got a uint32 array of shape {shape} "
            "(a raw key has shape (2,) or (4,)); use jax.vmap for a batch of keys"
        )
    raise TypeError(
        f"{name} must be a JAX PRNG key from jax.random.key(seed) or "
        f"jax.random.PRNGKey(seed), got {type(key).__name__}"
        + (f" of dtype {dtype} and shape {shape}" if dtype is not None else "")
    )


def sample_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A non-empty tuple of positive ints, ``(batch, *event)``."""
    if isinstance(shape, (int, np.integer)) or not isinstance(shape, (tuple, list)):
        raise TypeError(
            f"{name} must be a non-empty tuple of ints (batch, *event), got {shape!r}"
        )
    if len(shape) == 0:
        raise ValueError(f"{name} must be non-empty: (batch, *event); got ()")
    return tuple(positive_int(f"{name}[{i}]", s) for i, s in enumerate(shape))


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype coefficients are computed in: ``dtype`` if at least float32 wide, else float32.

    Written out rather than ``jnp.promote_types`` so that it also holds under
    strict dtype promotion (where bfloat16 and float32 have no implicit path).
    """
    dtype = jnp.dtype(dtype)
    return dtype if dtype.itemsize >= 4 else jnp.dtype(jnp.float32)


def index_offset(name: str, value: Any, batch: int) -> None:
    """A sample-index offset: a 0-d integer; when concrete, ``0 <= value <= 2**32 - batch``."""
    if is_traced(value):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(f"{name} must be a 0-d integer, got a traced {value.aval}")
        return
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int >= 0, got the bool {value!r}")
    try:
        offset = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int >= 0, got {value!r}") from None
    if not 0 <= offset <= 2**32 - batch:
        raise ValueError(
            f"{name} must be in [0, 2**32 - batch] = [0, {2**32 - batch}] "
            f"(sample indices are uint32), got {offset}"
        )


def positive_real(name: str, value: Any) -> Any:
    """A real scalar > 0 (checked when concrete; a tracer passes through after a shape check)."""
    value = real_scalar(name, value)
    if not is_traced(value) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def default_float() -> np.dtype:
    """JAX's default float dtype: float64 under ``jax_enable_x64``, float32 otherwise (grids and states use it)."""
    return jnp.dtype(jnp.result_type(float))


#: The most steps of a grid and the most training labels: the loops and the label arithmetic index
#: them with int32 (the step counter of ``lax.scan``, a discrete schedule's piece index).
INT32_MAX = 2**31 - 1


def largest_rate(dtype: Any) -> float:
    r"""The largest noise rate :math:`\beta` the schedules accept: :math:`\sqrt{\text{finfo(dtype).max}}`.

    A schedule's arithmetic forms :math:`\beta`-squared-sized terms (the linear schedule's
    log-SNR inverse computes :math:`\tfrac14\beta_{\min}^2 - \Delta\beta\,\log\alpha`, with
    :math:`|\log\alpha| \le \beta_{\max}/2`), so a larger :math:`\beta` overflows to inf (and a
    ``beta_max`` above ``finfo.max`` is inf already): 1.8e19 in float32, 1.3e154 in float64.
    """
    return math.sqrt(float(jnp.finfo(dtype).max))


def max_train_timesteps(dtype: Any) -> int:
    r"""The most training steps ``N``: ``min(2**31 - 1, 2**(nmant + 1))`` (16777216 in float32).

    A discrete schedule places label ``n`` at :math:`t = (n + 1)/N` and recovers it as
    :math:`tN - 1`: those are distinct floats of ``dtype`` and exact integers only while
    :math:`N \le 2^{\text{nmant} + 1}`; its piece index is an int32.
    """
    return min(INT32_MAX, 2 ** (int(jnp.finfo(dtype).nmant) + 1))


def floats_between(low: float, high: float, dtype: Any) -> int:
    """How many floats of ``dtype`` lie in ``[low, high]`` (``0 < low <= high``): the most points of a strictly decreasing grid there."""
    dtype = np.dtype(dtype)
    ints = {4: np.int32, 8: np.int64}[dtype.itemsize]
    lo = np.asarray(low, dtype)
    hi = np.asarray(high, dtype)
    if float(lo) < low:
        lo = np.nextafter(lo, np.asarray(np.inf, dtype))
    if float(hi) > high:
        hi = np.nextafter(hi, np.asarray(0, dtype))
    # positive floats are ordered as their bit patterns
    return max(0, int(hi.view(ints)) - int(lo.view(ints)) + 1)


def per_sample(v: Any, batch: int, dtype: Any) -> jax.Array:
    """``v`` (0-d or one value per sample) as a ``(batch,)`` vector of ``dtype``."""
    return jnp.broadcast_to(jnp.asarray(v, dtype).reshape(-1), (batch,))


def concrete(value: Any) -> Optional[np.ndarray]:
    """``value`` as a NumPy array if it is known now (host or a concrete ``jax.Array``), else ``None``."""
    if is_traced(value):
        return None
    host = host_value(value)
    if host is not None:
        return host
    return np.asarray(value) if isinstance(value, jax.Array) else None
