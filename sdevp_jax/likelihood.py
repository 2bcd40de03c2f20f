r"""Exact log-likelihood through the probability-flow ODE, and bits per dimension.

With the probability-flow ODE :math:`dx/dt = f(x, t)` (see
:func:`~sdevp_jax.probability_flow_drift`), the instantaneous change of variables
(Chen et al. 2018; Song et al., ICLR 2021, eq. 39) gives

.. math::

    \log p_\varepsilon(x) = \log p_1(x(1)) + \int_\varepsilon^1 \nabla\!\cdot f(x(t), t)\,dt,
    \qquad x(\varepsilon) = x,

with the prior :math:`p_1 = N(0, I)`. The ODE and the integral are solved together
by diffrax (Tsit5, PID step control) on device, each sample with its own steps.
The divergence is exact (the trace of the Jacobian; ``D`` Jacobian-vector
products, for small dimensions) or Hutchinson's unbiased estimate
:math:`v^\top (\partial f/\partial x)\, v` with one probe :math:`v` per sample,
Rademacher or Gaussian, fixed along the trajectory (Grathwohl et al. 2019).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _checks
from .loops import check_cond, make_sample_keys, with_cond
from .solvers.adaptive import schedule_jumps, tsit5_solve
from .samplers import probability_flow_drift
from .denoiser import model_time, model_time_dtype
from .scheduler import ScoreSdeVpSchedulerState

__all__ = ["log_likelihood", "bits_per_dim", "TRACE_ESTIMATORS"]

TRACE_ESTIMATORS = ("hutchinson_rademacher", "hutchinson_gaussian", "exact")
DATA_RANGE_WIDTHS = {"[0, 1]": 1.0, "[-1, 1]": 2.0}


def log_likelihood(
    state: ScoreSdeVpSchedulerState,
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x: ArrayLike,
    key: Optional[jax.Array],
    *,
    trace: str = "hutchinson_rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    prior_logp: Optional[Callable[[jax.Array], jax.Array]] = None,
    cond=None,
) -> jax.Array:
    r""":math:`\log p_\varepsilon(x)` in nats, per sample, through the probability-flow ODE.

    Args:
      state: the scheduler state (its schedule, prediction type and ``sampling_eps``;
        timesteps need not be set). The ODE runs from ``sampling_eps`` to the
        schedule's ``t_max``.
      model_fn: ``(x, t) -> prediction`` with ``t`` of shape ``(batch,)`` the model's
        time input (as for :func:`~sdevp_jax.sample`).
      x: data, shape ``(batch, ...)``; the likelihood is of the data at
        ``t = sampling_eps`` (as in the paper).
      key: a PRNG key for the Hutchinson probes (sample ``b``'s from
        ``fold_in(key, b)``); may be ``None`` with ``trace="exact"``.
      trace: ``"hutchinson_rademacher"``, ``"hutchinson_gaussian"`` or ``"exact"``.
      rtol, atol: the ODE solver's tolerances, > 0.
      max_steps: the solver's step budget per sample.
      prior_logp: ``x_1 -> log p_1(x_1)`` for one sample (shape ``event``), a 0-d float
        (it is vmapped over the batch; checked at trace time); the default is the standard normal, the VP SDE's prior. (The data's own
        :math:`p_1` differs from it by :math:`O(\alpha(t_{\max}))`, about 0.007 at the
        paper's defaults; that difference is part of the model's likelihood.)
      cond: ``None`` or the samples' conditions (a pytree of arrays with the batch as
        leading axis): then :math:`\log p(x \mid c)` through ``model_fn(x, t, cond)``.

    Returns:
      Shape ``(batch,)``, float32 or wider. Vmap-able and jit-able.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> x = sv.mixtures.sample_mixture(sv.mixtures.default_mixture(), jax.random.key(0), 4)
      >>> logp = sv.log_likelihood(state, model_fn, x, jax.random.key(1), trace="exact")   # nats per sample
      >>> logp.shape, bool(jnp.all(jnp.isfinite(logp)))
      ((4,), True)
    """
    x = _checks.float_array("x", x)
    if x.ndim < 1:
        raise ValueError(f"x must have shape (batch, ...), got {x.shape}")
    if trace not in TRACE_ESTIMATORS:
        raise ValueError(f"trace must be one of {list(TRACE_ESTIMATORS)}, got {trace!r}")
    if trace != "exact":
        _checks.prng_key("key", key)
    rtol = _checks.positive_real("rtol", rtol)
    atol = _checks.positive_real("atol", atol)
    max_steps = _checks.positive_int("max_steps", max_steps)
    dtype = _checks.compute_dtype(x.dtype)
    batch, event = x.shape[0], x.shape[1:]
    _check_prior_logp(prior_logp, event, dtype)
    check_cond(cond, batch)
    dim = math.prod(event)

    t_dtype = model_time_dtype(state)  # the dtype sample/sample_ode pass t in, for the same model inputs

    def field(t, y, args):
        probe, cond_1 = args
        x_b, _ = y
        t1 = jnp.full((1,), t, t_dtype)
        model = with_cond(model_fn, cond_1)

        def f(z):
            return probability_flow_drift(state, model(z[None], model_time(state, t1)).astype(dtype), z[None], t1)[0]

        if trace == "exact":
            velocity, jvp = jax.linearize(f, x_b)
            basis = jnp.eye(dim, dtype=dtype).reshape((dim, *event))
            divergence = jnp.sum(jax.vmap(jvp)(basis).reshape(dim, dim).diagonal())
        else:
            velocity, jv = jax.jvp(f, (x_b,), (probe,))
            divergence = jnp.sum(jv * probe)
        return velocity, divergence

    def solve(x_b, probe, cond_b):
        cond_1 = None if cond is None else jax.tree.map(lambda c: c[None], cond_b)
        (x_1, delta), _ = tsit5_solve(field, (x_b, jnp.zeros((), dtype)), jnp.asarray(state.sampling_eps, dtype),
                                      jnp.asarray(state.schedule.t_max, dtype), rtol, atol, max_steps, args=(probe, cond_1),
                                      jump_ts=schedule_jumps(state, dtype))
        if prior_logp is None:
            prior = -0.5 * dim * math.log(2.0 * math.pi) - 0.5 * jnp.sum(jnp.square(x_1))
        else:
            prior = jnp.asarray(prior_logp(x_1), dtype)
        return prior + delta

    if trace == "exact":
        probes = jnp.zeros(x.shape, dtype)
    else:
        keys = make_sample_keys(key, batch, 0)
        if trace == "hutchinson_rademacher":
            probes = jax.vmap(lambda k: jax.random.rademacher(k, event, dtype))(keys)
        else:
            probes = jax.vmap(lambda k: jax.random.normal(k, event, dtype))(keys)
    return jax.vmap(solve)(x.astype(dtype), probes, cond)


def _check_prior_logp(prior_logp, event, dtype) -> None:
    """``prior_logp`` maps one sample (shape ``event``) to a 0-d float: traced once, before any solving."""
    if prior_logp is None:
        return
    if not callable(prior_logp):
        raise TypeError(f"prior_logp must be None or callable x_1 -> log p_1(x_1), got {type(prior_logp).__name__}")
    # One real call on one zero sample, vmapped as the solve vmaps it (not eval_shape: a prior that
    # computes with its own constants on the host, e.g. float(alpha(t_max)), works under vmap but not
    # under jit's staging).
    out = jax.vmap(prior_logp)(jnp.zeros((1, *event), dtype))
    out = jax.ShapeDtypeStruct(out.shape[1:], out.dtype) if hasattr(out, "shape") and out.ndim >= 1 else out
    if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
        shown = f"{out.dtype} of shape {out.shape}" if hasattr(out, "shape") else type(out).__name__
        raise ValueError(
            f"prior_logp must return one float per sample: called on one sample of shape {tuple(event)}, "
            f"it returned {shown} (want a 0-d float)"
        )


def bits_per_dim(
    state: ScoreSdeVpSchedulerState,
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x: ArrayLike,
    key: Optional[jax.Array],
    *,
    data_range: Optional[str] = None,
    num_bins: int = 256,
    **kwargs,
) -> jax.Array:
    r"""Negative log-likelihood in bits per dimension, per sample: :math:`-\log_2 p(x) / D` + offset.

    For discrete data (8-bit images: ``num_bins = 256``) the caller dequantizes
    (adds uniform noise of one bin to the integers) and scales; ``data_range`` then
    adds minus the log of the bin width, so the number is comparable with
    discrete-data results: for 8-bit data ``"[0, 1]"`` (bins of 1/256) adds 8 bits
    and ``"[-1, 1]"`` (bins of 2/256) adds 7. ``None`` adds nothing.

    Args:
      state, model_fn, x, key: as for :func:`log_likelihood`.
      data_range: ``None``, ``"[0, 1]"`` or ``"[-1, 1]"``.
      num_bins: the number of levels of the discrete data (256 for 8 bits).
      **kwargs: passed to :func:`log_likelihood` (``trace``, ``rtol``, ...).

    Returns:
      Shape ``(batch,)``.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> x = sv.mixtures.sample_mixture(sv.mixtures.default_mixture(), jax.random.key(0), 4)
      >>> bpd = sv.bits_per_dim(state, model_fn, x, jax.random.key(1), trace="exact", data_range="[-1, 1]")
      >>> bpd.shape
      (4,)
    """
    if data_range is not None and data_range not in DATA_RANGE_WIDTHS:
        raise ValueError(f"data_range must be None or one of {list(DATA_RANGE_WIDTHS)}, got {data_range!r}")
    x = _checks.float_array("x", x)
    dim = math.prod(x.shape[1:])
    nats = log_likelihood(state, model_fn, x, key, **kwargs)
    num_bins = _checks.positive_int("num_bins", num_bins)
    offset = 0.0 if data_range is None else math.log2(num_bins / DATA_RANGE_WIDTHS[data_range])
    return -nats / (dim * math.log(2.0)) + offset
