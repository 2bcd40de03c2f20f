"""The compiled sampling loops: the reverse SDE (``sample``) and the probability-flow ODE (``sample_ode``).

Each is one ``lax.scan`` over the timesteps (the adaptive ODE solver is a
``while_loop``, inside diffrax). Noise is addressed per sample, in the manner of
EDM's ``StackedRandomGenerator`` (Karras et al., 2022): sample ``b`` of a call owns
the key ``fold_in(key, b)``, and its noise at slot ``j`` is
``normal(fold_in(fold_in(key, b), j), event_shape)`` -- slot 0 for the prior draw
:math:`x_T`, then the slots of the steps (see :func:`sample`). The noise of sample
``b`` therefore depends only on ``(key, b)``: bitwise the same in a batch of 1 or
of 4096, and a batch can be cut into chunks (``index_offset``). The samples
themselves are bitwise the same when the compiled shapes are equal (a sample at
any position of an equal-sized batch, a resumed job's chunks); across batch
sizes they agree to float rounding amplified by the dynamics (on CPU after 200
steps, 1e-7 to 1e-4 on samples of size 1, depending on the model), because XLA
compiles the model and the update differently for different shapes
(tests/test_invariance.py derives the bound).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import DTypeLike

from . import _checks
from .samplers import CORRECTORS, PREDICTORS, check_step_rule, lookup
from .samplers import drift_from_eps
from .scheduler import (
    ScoreSdeVpSchedulerState,
    eps_from_prediction,
    model_time,
    x0_from_prediction,
    model_time_dtype,
    next_times,
    require_timesteps,
    times_from_grid,
)

__all__ = ["sample", "sample_ode", "invert_ode", "per_sample_normal", "sde_loop", "SamplerInfo"]

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


def _check_model_output(model_fn: ModelFn, x: jax.Array, t: jax.Array, cond=None) -> None:
    """Trace ``model_fn`` once abstractly and check it returns an array of x's shape."""
    args = (x, t) if cond is None else (x, t, cond)
    call = "model_fn(x, t)" if cond is None else "model_fn(x, t, cond)"
    context = f"{call} failed for x {x.shape} and t {t.shape}"
    try:
        out = jax.eval_shape(model_fn, *args)
    except (TypeError, ValueError) as err:
        if type(err) not in (TypeError, ValueError):
            # JAX's own errors (a Python `if` on a traced value: TracerBoolConversionError, ...)
            # take a tracer, not a message, to construct: keep the error and add where it came from.
            err.add_note(f"sdevp_jax: {context} (model_fn is traced: use jnp.where / lax.cond, not Python branches on x or t)")
            raise
        raise type(err)(f"{context}: {err}") from err
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        raise TypeError(f"model_fn must return one array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(
            f"model_fn must return the noise prediction with x's shape {x.shape}, got {out.shape}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"model_fn must return a float array, got dtype {out.dtype}")


class SamplerInfo(NamedTuple):
    """Diagnostics of a sampling call (returned with ``return_info=True``).

    Attributes:
      nfe: the batched network calls made: ``model_fn`` evaluations on the whole
        batch (0-d int32). For the adaptive solver, which steps each sample on
        its own, this is the largest per-sample count.
      nfe_per_sample: the calls each sample needed, shape ``(batch,)`` int32.
    """

    nfe: jax.Array
    nfe_per_sample: jax.Array


def check_common(state, model_fn, key, shape, dtype, caller, cond=None):
    """Checks shared by the loops; returns ``(shape, dtype)`` normalised."""
    require_timesteps(state, caller)
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t) -> prediction, got {type(model_fn).__name__}")
    _checks.prng_key("key", key)
    shape = _checks.sample_shape("shape", shape)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a float dtype, got {jnp.dtype(dtype)}")
    dtype = jnp.dtype(dtype)
    check_cond(cond, shape[0])
    _check_model_output(
        model_fn,
        jax.ShapeDtypeStruct(shape, dtype),
        jax.ShapeDtypeStruct((shape[0],), state.timesteps.dtype),
        cond,
    )
    return shape, dtype


def check_cond(cond, batch: int) -> None:
    """``cond`` is ``None`` or a pytree whose every leaf is an array with the batch as its leading axis."""
    if cond is None:
        return
    leaves, _ = jax.tree.flatten(cond)
    if not leaves:
        raise ValueError("cond must be None or a pytree with at least one array leaf")
    for path, leaf in jax.tree_util.tree_flatten_with_path(cond)[0]:
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) == 0 or shape[0] != batch:
            where = jax.tree_util.keystr(path) or "cond"
            raise ValueError(
                f"cond: every leaf must have the batch ({batch}) as its leading axis; "
                f"leaf {where} has shape {shape if shape is not None else type(leaf).__name__}"
            )


def with_cond(model_fn, cond):
    """``model_fn`` with ``cond`` bound: ``(x, t) -> model_fn(x, t, cond)`` (``model_fn`` itself without one).

    The loops below call the bound model on the whole batch, so ``cond``'s rows stay
    with their samples; the per-sample solvers (adaptive, likelihood) slice ``cond``
    with their sample instead.
    """
    if cond is None:
        return model_fn
    return lambda x, t: model_fn(x, t, cond)


def check_x_init(x_init, shape, dtype):
    """``x_init`` (the starting samples instead of the prior draw) checked and cast to ``dtype``, or ``None``."""
    if x_init is None:
        return None
    x_init = _checks.float_array("x_init", x_init)
    if x_init.shape != tuple(shape):
        raise ValueError(f"x_init must have shape {tuple(shape)}, got {x_init.shape}")
    return x_init.astype(dtype)


def make_sample_keys(key, batch, index_offset):
    """The per-sample keys ``fold_in(key, index_offset + b)``, b < batch."""
    _checks.index_offset("index_offset", index_offset, batch)
    indices = jnp.asarray(index_offset, jnp.uint32) + jnp.arange(batch, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def default_unroll() -> int:
    """The scan ``unroll`` that ``unroll=None`` means: 8 on a GPU backend, 1 elsewhere.

    Measured (``benchmarks/results/gpu_suite.md``, one NVIDIA H200, 1000 steps):
    unrolling 8 steps per loop iteration takes the per-step time of the analytic
    mixture model from 13.6 to 10.2 µs at batch (256, 3072) and from 5.6 to 2.3 µs
    at (16, 2), and of the small Flax UNet of ``benchmarks/unet.py`` from 328 to
    279 µs, at about three times the compile time (the UNet: 2.6 s to 7.9 s for
    the first call; a real network's body is copied 8 times into the loop, so
    pass ``unroll=1`` where compile time matters more, or use the CLI's persistent
    compilation cache). On CPU every unroll above 1 measured slower
    (``benchmarks/results/options.md``); TPU is not measured yet, so it keeps 1.
    """
    return 8 if jax.default_backend() == "gpu" else 1


def resolve_unroll(unroll: Optional[int]) -> int:
    """``unroll`` checked (an int >= 1), or :func:`default_unroll` for ``None``."""
    return default_unroll() if unroll is None else _checks.positive_int("unroll", unroll)


def sde_options(predictor, corrector, corrector_steps, snr, step_rule):
    """Checked ``(predict, correct, num_corrector, corrector_options)`` for :func:`sde_loop`."""
    predict = PREDICTORS[lookup("predictor", predictor, "predictor")]
    if corrector is None:
        return predict, None, 0, {}
    correct = CORRECTORS[lookup("corrector", corrector, "corrector")]
    options = {"snr": _checks.positive_real("snr", snr), "step_rule": check_step_rule(step_rule)}
    return predict, correct, _checks.positive_int("corrector_steps", corrector_steps), options


def sde_loop(state, model_fn, sample_keys, shape, dtype, predict, correct, num_corrector, corrector_options, unroll,
             project=None, x_init=None):
    """The reverse-SDE scan shared by :func:`sample` and the inverse-problem solvers.

    At each grid time ``t`` it runs ``num_corrector`` corrector updates at ``t``,
    then the predictor from ``t`` to the next time (see :func:`sample` for why this
    order); after every update, ``project(x, x_mean, t_vec, z)`` (if given) may
    replace part of the sample, with its own standard normal ``z``. Noise slots of
    sample ``b``: 0 for x_T; update ``u`` of step ``i`` (``u < M`` the correctors,
    ``u = M`` the predictor) uses slot ``1 + (i (1 + M) + u) k`` (and the next one
    for ``project``), ``k = 2`` with ``project`` and 1 without.
    Returns the last ``(x, x_mean)``: the predictor's.
    """
    batch, event = shape[0], shape[1:]
    noise_dtype = _checks.compute_dtype(dtype)
    timesteps = state.timesteps
    if x_init is None:
        x_init = per_sample_normal(sample_keys, 0, event, noise_dtype).astype(dtype)
    per_update = 1 if project is None else 2

    def update(step_fn, x, t_vec, t_next_vec, slot, **kwargs):
        z = per_sample_normal(sample_keys, slot, event, noise_dtype)
        out = model_fn(x, model_time(state, t_vec))
        x, x_mean = step_fn(state, out, x, t_vec, None, noise=z, t_next=t_next_vec, **kwargs)
        if project is not None:
            x, x_mean = project(x, x_mean, t_vec, per_sample_normal(sample_keys, slot + 1, event, noise_dtype))
        return x, x_mean

    def body(carry, ts):
        x, _, i = carry
        t, t_next = ts
        t_vec = jnp.full((batch,), t, timesteps.dtype)
        t_next_vec = jnp.full((batch,), t_next, timesteps.dtype)
        first = 1 + i * ((1 + num_corrector) * per_update)
        for j in range(num_corrector):  # static: unrolled at trace time
            x, _ = update(correct, x, t_vec, t_next_vec, first + j * per_update, **corrector_options)
        x, x_mean = update(predict, x, t_vec, t_next_vec, first + num_corrector * per_update)
        return (x, x_mean, i + 1), None

    # The step index rides in the carry (not as an arange over the steps), so
    # nothing but the timestep grid (and its successors) has the length of the loop.
    with times_from_grid():
        (x_last, x_mean, _), _ = lax.scan(body, (x_init, x_init, jnp.uint32(0)), (timesteps, next_times(state)),
                                          unroll=unroll)
    return x_last, x_mean


def sample(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    predictor: str = "euler_maruyama",
    corrector: Optional[str] = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    step_rule: str = "sigma",
    denoise: bool = True,
    dtype: DTypeLike = jnp.float32,
    index_offset: int | jax.Array = 0,
    unroll: Optional[int] = None,
    x_init: Optional[jax.Array] = None,
    cond=None,
) -> jax.Array:
    r"""Draw samples with the reverse VP SDE: any predictor, any corrector, in one ``lax.scan``.

    Draws :math:`x_T \sim N(0, I)`, then for each ``t`` in ``state.timesteps``: if a
    ``corrector`` is named, ``corrector_steps`` corrector steps at ``t``, then one
    ``predictor`` step from ``t`` (each update with its own model call
    ``model_fn(x, t_vec)``, ``t_vec`` of shape ``(batch,)``, the model's time input
    at the grid time, see :func:`~sdevp_jax.model_time`). With the defaults it is exactly diffusers'
    ``ScoreSdeVpScheduler`` loop and returns the last step's ``x_mean``.

    Order of predictor and corrector: the paper's code's (Song et al. 2021,
    ``score_sde``'s ``pc_sampler``), corrector first. At the top of step ``i`` the
    sample is at time ``t_i``, so the corrector, which targets :math:`p_{t_i}` with
    the score at ``t_i``, runs where its target is; the predictor then moves the
    sample on to the next time. (The paper's Algorithms 2-3 write the predictor
    first, which runs each corrector at the time the predictor has just left.)
    The last update is therefore the predictor, and ``denoise=True`` returns its
    noise-free mean, a denoising step; a corrector's noise-free mean
    :math:`x + \epsilon s` would shrink each mode of variance ``v`` by about
    :math:`2\epsilon/v`, not remove the last noise.

    Not jitted inside: jit the call, with ``model_fn`` and ``shape`` static, e.g.
    ``sample_fn = jax.jit(sv.sample, static_argnums=(1, 3))``; build ``sample_fn``
    and ``model_fn`` once and reuse them (a static ``model_fn`` is cached by
    identity, so a new closure recompiles). It then traces once per shape and
    configuration, makes no host round trip inside the loop, and uses memory
    independent of the number of steps. ``jax.vmap`` over a batch of keys works.

    Noise: sample ``b`` uses only ``fold_in(key, index_offset + b)``; from it, slot 0
    draws :math:`x_T`, and step ``i`` uses slots ``1 + i (1 + M)`` to ``i (1 + M) + M``
    for its ``M = corrector_steps`` corrector updates and slot ``1 + i (1 + M) + M``
    for the predictor (``M = 0`` without a corrector).

    Args:
      state: a state after :func:`set_timesteps`.
      model_fn: ``(x, t) -> prediction`` with ``x`` of ``shape`` and ``t`` of shape
        ``(batch,)`` the model's time input (:func:`~sdevp_jax.model_time`: the
        continuous time, or a discrete schedule's training label); it returns
        ``state.prediction_type`` (the noise by default), an array of ``shape``. For
        a network trained on the paper's labels wrap it as ``lambda x, t: net(x, t * 999)``.
      key: a PRNG key (``jax.random.key`` or legacy ``PRNGKey``).
      shape: ``(batch, *event)``, a non-empty tuple of positive ints.
      predictor: one of ``sv.list_methods("predictor")``.
      corrector: ``None`` or one of ``sv.list_methods("corrector")``.
      snr: the corrector's signal-to-noise ratio ``r`` > 0 (the paper's 0.16 for VP).
      corrector_steps: corrector steps per timestep, an int >= 1.
      step_rule: the corrector's step size, ``"sigma"`` (default: per sample, a
        function of ``t``), ``"snr_batch"`` (the paper's code: batch-mean norms, so
        samples depend on their batch) or ``"snr_sample"`` (per-sample norms, biased
        in low dimension); see :func:`~sdevp_jax.langevin_correct`.
      denoise: return the last predictor step's noise-free ``x_mean`` (default), else its ``x``.
      dtype: the float dtype of the samples (bfloat16 allowed; coefficients stay float32).
      index_offset: the global index of this call's first sample: sample ``b`` of
        the call is sample ``index_offset + b`` of the stream of ``key``. An int
        (or 0-d integer array) with ``0 <= index_offset`` and
        ``index_offset + batch <= 2**32``; pass ``np.uint32(offset)`` to a jitted
        call to reuse one compilation for every offset.
      unroll: steps per iteration of the compiled loop (``lax.scan``'s ``unroll``),
        an int >= 1, or ``None`` for the backend's default (:func:`default_unroll`:
        8 on GPU, 1 elsewhere). Only speed and compile time change (results
        equal to 1e-6 on CPU in the tests, not bitwise: XLA fuses an unrolled body
        differently); see :func:`default_unroll` for the
        measurements and the trade-off.
      x_init: the starting samples :math:`x_T`, ``shape``, instead of the prior draw
        of slot 0 (the steps' noise slots are unchanged).
      cond: ``None``, or the samples' conditions: a pytree whose every leaf has the
        batch as its leading axis (row ``b`` is sample ``b``'s condition). The model is
        then called ``model_fn(x, t, cond)``; a chunk at ``index_offset`` takes the
        matching rows, a sharded batch shards them with it.

    Returns:
      The samples, an array of ``shape`` and ``dtype``.
    """
    shape, dtype = check_common(state, model_fn, key, shape, dtype, "sample", cond)
    x_init = check_x_init(x_init, shape, dtype)
    x_last, x_mean = sde_loop(state, with_cond(model_fn, cond), make_sample_keys(key, shape[0], index_offset), shape, dtype,
                              *sde_options(predictor, corrector, corrector_steps, snr, step_rule),
                              resolve_unroll(unroll), x_init=x_init)
    return x_mean if denoise else x_last


def _ode_grid(state, method, dtype):
    r"""The times the fixed-step ODE methods step through, from the top of the grid to its bottom.

    ``state.timesteps`` itself, except for ``dpm_solver`` on a grid whose spacing was
    not asked for (``set_timesteps`` without ``spacing``): there it steps through its
    own ``N`` points uniform in log-SNR between the same end points, the grid its
    convergence rests on (on the linear schedule's ``"reference"`` grid, as it always
    did; on a diffusers config's label spacing, whose last steps are coarse in
    :math:`\lambda`, 20 points of ``leading`` left 13 % of the samples of a sharp
    mixture off its modes where the log-SNR grid left 0.05 %).
    """
    if method != "dpm_solver" or state.spacing_given:
        return state.timesteps.astype(dtype)
    schedule = state.schedule.cast(dtype)
    if state.uses_reference_step:
        top, bottom = jnp.asarray(1.0, dtype), jnp.asarray(state.sampling_eps, dtype)
    else:
        top, bottom = state.timesteps[0].astype(dtype), state.timesteps[-1].astype(dtype)
    lam = jnp.linspace(schedule.log_snr(top), schedule.log_snr(bottom), state.timesteps.shape[0], dtype=dtype)
    t = schedule.t_from_log_snr(lam)
    # the end points exactly (the inverse is accurate to rounding in between)
    return t.at[0].set(top).at[-1].set(bottom)


def model_eps(state, model_fn, dtype_out, dtype):
    r"""``eps(x, t)``: ``model_fn`` at ``(x, model_time(t))``, called in the samples' dtype, as a noise prediction.

    The model boundary of the ODE loops: the model sees its own time input
    (:func:`~sdevp_jax.model_time`) and returns ``state.prediction_type``, converted
    here, once, to :math:`\hat\epsilon` in the work ``dtype``. ``t`` is 0-d or ``(batch,)``.
    """
    t_dtype = model_time_dtype(state)

    def eps(x, t):
        t_vec = jnp.broadcast_to(jnp.asarray(t, t_dtype), (x.shape[0],))
        out = model_fn(x.astype(dtype_out), model_time(state, t_vec)).astype(dtype)
        if state.prediction_type == "epsilon":
            return out
        tb = t_vec.astype(dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return eps_from_prediction(state.prediction_type, out, x.astype(dtype), *state.schedule.cast(dtype).alpha_sigma(tb))

    return eps


def _drift(state, dtype, e, x, t):
    """The probability-flow velocity at a scalar or ``(batch,)`` time ``t``, in ``dtype``.

    The schedule is cast here, inside whatever is being traced (as
    :func:`~sdevp_jax.probability_flow_drift` does): a cast hoisted out of diffrax's
    trace made XLA round the jitted and the eager adaptive solves differently.
    """
    t = jnp.asarray(t).astype(dtype)
    if t.ndim == 1:
        t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return drift_from_eps(state.schedule.cast(dtype), e, x, t)


def _fixed_step_ode(state, model_fn, x, method, dtype, order=3, reverse=False):
    """Euler, Heun or multistep DPM-Solver (order 1-3) through the grid (upwards with ``reverse``); returns (x, nfe)."""
    dtype_out = x.dtype
    grid = _ode_grid(state, method, dtype)
    if reverse:
        grid = grid[::-1]
    schedule = state.schedule.cast(dtype)
    eps = model_eps(state, model_fn, dtype_out, dtype)
    x = x.astype(dtype)

    if method in ("euler", "heun"):
        def body(x, ts):
            t, t_next = ts
            d1 = _drift(state, dtype, eps(x, t), x, t)
            x_euler = x + (t_next - t) * d1
            if method == "euler":
                return x_euler, None
            d2 = _drift(state, dtype, eps(x_euler, t_next), x_euler, t_next)
            return x + (t_next - t) * 0.5 * (d1 + d2), None

        with times_from_grid():
            x, _ = lax.scan(body, x, (grid[:-1], grid[1:]))
        return x, (1 if method == "euler" else 2) * (grid.shape[0] - 1)

    # dpm_solver: multistep DPM-Solver in eps form (sdevp_jax.solvers.dpm_solver_step), orders 1, 2,
    # then 3, capped at ``order``.
    from .solvers import dpm_solver_step

    lam = schedule.log_snr(grid)
    log_alpha = schedule.log_alpha(grid)
    sigma = schedule.sigma(grid)

    def body(carry, k):
        x, e1, e2, h1, h2 = carry  # previous eps values and the lambda steps before them
        e0 = eps(x, grid[k])
        h = lam[k + 1] - lam[k]
        use2 = (k >= 1).astype(dtype) if order >= 2 else jnp.zeros((), dtype)
        use3 = (k >= 2).astype(dtype) if order >= 3 else jnp.zeros((), dtype)
        x_next = dpm_solver_step(x, e0, e1, e2, h, h1, h2, log_alpha[k + 1] - log_alpha[k], sigma[k + 1],
                                 use2, use3)
        return (x_next, e0, e1, h, h1), None

    one = jnp.ones((), dtype)
    init = (x, jnp.zeros_like(x), jnp.zeros_like(x), one, one)
    with times_from_grid():
        (x, *_), _ = lax.scan(body, init, jnp.arange(grid.shape[0] - 1))
    return x, grid.shape[0] - 1


#: The grid solvers of :mod:`sdevp_jax.solvers`, with their default and largest order and their step rule.
GRID_SOLVERS = {
    "ddim": (1, 1, "dpmsolver"),
    "dpm_solver_pp": (2, 3, "dpmsolver"),
    "sde_dpm_solver_pp": (2, 2, "dpmsolver"),
    "unipc": (2, 3, "unipc"),
}
SOLVER_TYPES = {"dpm_solver_pp": ("midpoint", "heun"), "sde_dpm_solver_pp": ("midpoint", "heun"),
                "unipc": ("bh2", "bh1")}
FINAL_SIGMAS_TYPES = ("zero", "last")


class GridSolverOptions(NamedTuple):
    """The checked options of a grid solver (see :func:`sample_ode`); ``eta`` may be traced."""

    method: str
    order: int
    solver_type: Optional[str]
    lower_order_final: bool
    final_zero: bool
    eta: object
    third_order: str
    thresholding: Optional[tuple]
    predict_x0: bool = True


def grid_solver_options(method, order, solver_type, lower_order_final, final_sigmas_type, eta, third_order,
                        thresholding, dynamic_thresholding_ratio, sample_max_value, predict_x0=True):
    """Check a grid solver's options: a ValueError naming the option and its allowed values."""
    default_order, max_order, _ = GRID_SOLVERS[method]
    order = default_order if order is None else _checks.positive_int("order", order)
    if order > max_order:
        raise ValueError(f"order must be in [1, {max_order}] for method={method!r}, got {order}")
    allowed = SOLVER_TYPES.get(method, (None,))
    solver_type = allowed[0] if solver_type is None else solver_type
    if solver_type not in allowed:
        raise ValueError(f"solver_type must be one of {list(allowed)} for method={method!r}, got {solver_type!r}")
    final_sigmas_type = "zero" if final_sigmas_type is None else final_sigmas_type
    if final_sigmas_type not in FINAL_SIGMAS_TYPES:
        raise ValueError(f"final_sigmas_type must be one of {list(FINAL_SIGMAS_TYPES)}, got {final_sigmas_type!r}")
    if third_order not in ("taylor", "diffusers"):
        raise ValueError(f"third_order must be 'taylor' or 'diffusers', got {third_order!r}")
    if not isinstance(lower_order_final, bool):
        raise TypeError(f"lower_order_final must be a bool, got {lower_order_final!r}")
    if method == "ddim":
        eta = _checks.real_scalar("eta", eta)
        if not _checks.is_traced(eta) and not eta >= 0.0:
            raise ValueError(f"eta must be >= 0, got {eta}")
    elif eta != 0.0:
        raise ValueError(f"eta is DDIM's option; method={method!r} takes none, got eta={eta!r}")
    threshold = None
    if thresholding:
        ratio = _checks.real_scalar("dynamic_thresholding_ratio", dynamic_thresholding_ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {ratio}")
        max_value = _checks.positive_real("sample_max_value", sample_max_value)
        threshold = (ratio, max_value)
    if not isinstance(predict_x0, bool):
        raise TypeError(f"predict_x0 must be a bool, got {predict_x0!r}")
    if not predict_x0 and method != "unipc":
        raise ValueError(f"predict_x0=False (the noise-prediction form) is UniPC's option, not {method!r}'s")
    if not predict_x0 and threshold is not None:
        raise ValueError("thresholding acts on the data prediction: it needs predict_x0=True")
    return GridSolverOptions(method, order, solver_type, lower_order_final, final_sigmas_type == "zero", eta,
                             third_order, threshold, predict_x0)


def _grid_solver(state, model_fn, x, opts: GridSolverOptions, sample_keys, dtype, grid=None):
    """DDIM, DPM-Solver++, SDE-DPM-Solver++ or UniPC through ``grid`` (default: the state's); returns (x, nfe).

    One scan over the ``N - 1`` steps between grid points, the solver's
    :class:`~sdevp_jax.solvers.History` in the carry, then with ``final_zero`` one last
    step to :math:`\\sigma = 0`: the data prediction at the last grid time (what every
    first-order update to :math:`\\sigma = 0` reduces to; diffusers 0.42.1's UniPC with
    ``solver_type="bh1"`` evaluates that step as ``B(h) * 0`` with ``B(h) = -h = -inf`` and
    returns NaN, see tests/golden/make_solver_golden.py). Stochastic steps draw step
    ``k``'s noise from slot ``1 + k`` of each sample's stream.
    """
    from . import solvers

    dtype_out = x.dtype
    event = x.shape[1:]
    grid = state.timesteps.astype(dtype) if grid is None else grid
    n = grid.shape[0]
    schedule = state.schedule.cast(dtype)
    lam = schedule.log_snr(grid)
    log_alpha = schedule.log_alpha(grid)
    alpha = jnp.exp(log_alpha)
    sigma = schedule.sigma(grid)
    t_dtype = model_time_dtype(state)
    rule = GRID_SOLVERS[opts.method][2]
    num_steps = n - 1 + (1 if opts.final_zero else 0)
    orders = jnp.asarray(solvers.step_orders(num_steps, opts.order, opts.lower_order_final, opts.final_zero,
                                             rule)[: n - 1])

    def predict(x, k):
        """The model at grid point ``k``: ``(eps_hat, x0_hat)`` in the work dtype."""
        t_vec = jnp.full((x.shape[0],), grid[k], t_dtype)
        out = model_fn(x.astype(dtype_out), model_time(state, t_vec)).astype(dtype)
        eps = eps_from_prediction(state.prediction_type, out, x, alpha[k], sigma[k])
        x0 = x0_from_prediction(state.prediction_type, out, x, alpha[k], sigma[k])
        if opts.thresholding is not None:
            x0 = solvers.dynamic_threshold(x0, *opts.thresholding)
        return eps, x0

    def coeffs(s, t):
        return solvers.StepCoeffs(lam[s], lam[t], alpha[s], sigma[s], alpha[t], sigma[t], log_alpha[s], log_alpha[t])

    stochastic = opts.method == "sde_dpm_solver_pp" or (
        opts.method == "ddim" and (_checks.is_traced(opts.eta) or opts.eta != 0.0))

    def body(carry, k):
        x, hist = carry
        c = coeffs(k, k + 1)
        z = per_sample_normal(sample_keys, 1 + k, event, dtype) if stochastic else None
        eps, d0 = predict(x, k)
        order = orders[k]
        if opts.method == "unipc":
            if not opts.predict_x0:
                d0 = eps  # UniPC's noise-prediction form keeps the noise predictions in its history
            previous = solvers.History(hist.m2, hist.m3, hist.m3, hist.lam2, hist.lam3, hist.lam3,
                                       hist.x_prev, hist.order_prev)
            corrected = solvers.unipc_correct(hist.x_prev, hist.m1, previous, coeffs(k - 1, k), d0,
                                              hist.order_prev, variant=opts.solver_type,
                                              predict_x0=opts.predict_x0)
            x = jnp.where(k > 0, corrected, x)
            x_next = solvers.unipc_predict(x, d0, hist, c, order, variant=opts.solver_type,
                                           predict_x0=opts.predict_x0)
        elif opts.method == "dpm_solver_pp":
            x_next = solvers.dpmpp_step(x, d0, hist, c, order, solver_type=opts.solver_type,
                                        third_order=opts.third_order)
        elif opts.method == "sde_dpm_solver_pp":
            x_next = solvers.sde_dpmpp_step(x, d0, hist, c, order, z, solver_type=opts.solver_type)
        else:
            x_next = solvers.ddim_step(x, d0, eps, c, opts.eta, z)
        return (x_next, hist.push(d0, lam[k], x, order)), None

    x = x.astype(dtype)
    with times_from_grid():
        (x, _), _ = lax.scan(body, (x, solvers.History.init(x)), jnp.arange(n - 1))
        if opts.final_zero:
            _, x = predict(x, n - 1)
    return x, num_steps


def schedule_jumps(state, dtype):
    """The times where the schedule's beta jumps, for the adaptive solver's controller, or ``None``.

    A discrete schedule's beta is piecewise constant between its knots ``k/N``;
    a step across a jump has no smooth error estimate, and stepping over its 1000
    jumps left the likelihood (:func:`~sdevp_jax.log_likelihood`, which passes these)
    of a Stable Diffusion-schedule Gaussian 1e-2 nats off
    (float32 defaults; 4e-4 in float64 at 1e-8). Passing the knots as
    ``jump_ts`` makes diffrax step to each one (8e-4 and 5e-6). A host float64 array:
    the same knots as a float32 device array left the error at 3e-2 (measured).
    """
    if not state.schedule.is_discrete:
        return None
    n = state.num_train_timesteps
    return np.arange(1, n) / n


def tsit5_solve(field, y0, t0, t1, rtol, atol, max_steps, args=None, jump_ts=None):
    """Solve ``dy/dt = field(t, y, args)`` from ``t0`` to ``t1`` with diffrax's Tsit5 and a PID controller.

    The one adaptive-ODE setup of the package (the ODE sampler and the
    likelihood both use it). ``y0`` may be any pytree; returns ``(y(t1), steps)``
    with ``steps`` diffrax's count of steps taken (accepted and rejected).
    ``jump_ts``: times where the field is discontinuous (:func:`schedule_jumps`).
    Past ``max_steps`` diffrax raises.
    """
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        args=args,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, jump_ts=jump_ts),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
    )
    return jax.tree.map(lambda y: y[0], sol.ys), sol.stats["num_steps"]


def ode_span(state, dtype):
    """``(t0, t1)`` of the adaptive solver: ``(1, sampling_eps)`` on the reference grid, else the grid's end points."""
    if state.uses_reference_step:
        return jnp.asarray(1.0, dtype), jnp.asarray(state.sampling_eps, dtype)
    return state.timesteps[0].astype(dtype), state.timesteps[-1].astype(dtype)


def _adaptive_ode(state, model_fn, x, dtype, rtol, atol, max_steps, cond=None):
    """Tsit5 with a PID controller (diffrax), each sample with its own steps; returns (x, nfe per sample)."""
    dtype_out = x.dtype
    t_dtype = model_time_dtype(state)

    def field(t, y, cond_1):
        y1 = y[None]
        t1 = jnp.full((1,), t, t_dtype)
        eps = model_eps(state, with_cond(model_fn, cond_1), dtype_out, dtype)
        return _drift(state, dtype, eps(y1, t1), y1.astype(dtype), t1)[0]

    t0, t1 = ode_span(state, dtype)

    def solve(y0, cond_b):
        cond_1 = None if cond is None else jax.tree.map(lambda c: c[None], cond_b)
        # No jump_ts here (the likelihood has them): stepping to each of a discrete schedule's 1000 knots
        # would cost >= 1000 steps per sample; across the jumps the samples still pass the statistics
        # tests (tests/test_schedule_statistics.py), at an ODE error of ~2e-3 instead of ~3e-4.
        return tsit5_solve(field, y0, t0, t1, rtol, atol, max_steps, args=cond_1)

    y, steps = jax.vmap(solve)(x.astype(dtype), cond)
    # Tsit5 is first-same-as-last: one evaluation at t0, then six per step tried.
    return y, 1 + 6 * steps


def sample_ode(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    method: str = "dpm_solver",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    return_info: bool = False,
    dtype: DTypeLike = jnp.float32,
    index_offset: int | jax.Array = 0,
    order: Optional[int] = None,
    x_init: Optional[jax.Array] = None,
    eta: float = 0.0,
    solver_type: Optional[str] = None,
    lower_order_final: bool = True,
    final_sigmas_type: Optional[str] = None,
    third_order: str = "taylor",
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    predict_x0: bool = True,
    cond=None,
):
    r"""Draw samples by solving the probability-flow ODE down the state's grid (``t_max`` to ``sampling_eps`` by default).

    .. math::

        \frac{dx}{dt} = -\tfrac12\beta(t)\Big(x - \frac{\hat\epsilon(x, t)}{\sigma(t)}\Big)
        \qquad\text{(Song et al. 2021, eq. 13).}

    Deterministic given :math:`x_T`: the key only draws :math:`x_T`, per sample, as
    in :func:`sample` (the :math:`x_T` of sample ``b`` depends only on
    ``(key, index_offset + b)``, bitwise; the result to float rounding).

    Methods (``sv.list_methods("ode")``), with ``N = len(state.timesteps)``:

    * ``"euler"`` (order 1) and ``"heun"`` (order 2): fixed steps through the
      state's grid, ``N - 1`` and ``2 (N - 1)`` network calls.
    * ``"dpm_solver"`` (order 3, or ``order``): multistep DPM-Solver in :math:`\epsilon` form, an
      exponential integrator of the ODE in log-SNR :math:`\lambda = \log(\alpha/\sigma)`
      (Lu et al., NeurIPS 2022), along ``state.timesteps`` when its spacing was
      asked for (``set_timesteps(..., spacing=...)`` or ``timesteps=``); on a default
      grid it steps through ``N`` points uniform in :math:`\lambda` between the same
      end points (the default off the linear schedule is that grid already);
      ``N - 1`` network calls. The few-step method: ``N`` of 10 to 20 is typical.
    * ``"adaptive"``: diffrax's Tsit5 (5th order) with a PID step-size controller
      at ``rtol``/``atol``, on device; each sample is solved with its own steps (so
      its step sizes do not depend on the rest of the batch), and the batch runs
      until its slowest sample is done.

    Args:
      state: a state after :func:`set_timesteps` (``N >= 2`` for the fixed-step methods).
      model_fn: ``(x, t) -> eps_hat``, as for :func:`sample`.
      key: a PRNG key; draws :math:`x_T` only.
      shape: ``(batch, *event)``.
      method: the solver, one of ``sv.list_methods("ode")``.
      rtol, atol: tolerances of the adaptive solver, > 0.
      max_steps: the adaptive solver's step budget per sample (an error past it).
      return_info: also return a :class:`SamplerInfo` with the network calls made.
      dtype: the samples' float dtype; the solver runs in ``compute_dtype(dtype)``.
      index_offset: as for :func:`sample`.
      order: the multistep order: ``dpm_solver`` 1-3 (default 3; order 1 is DDIM with
        :math:`\eta = 0`, DPM-Solver-1, Lu et al. 2022, sec. 4.1), ``dpm_solver_pp`` 1-3
        (default 2: "2M"; 3: "3M"), ``sde_dpm_solver_pp`` 1-2 (default 2), ``unipc``
        1-3 (default 2); ``None`` for the default. Other methods ignore it.
      x_init: the starting samples at the top of the grid, ``shape``, instead of the
        prior draw from ``key`` (the key then drives only the stochastic steps). With a
        grid that starts below ``t_max`` and a noised image this is SDEdit.
      eta: ``ddim``'s :math:`\eta \ge 0` (0: deterministic; 1: DDPM's posterior
        variance); a leaf, so it may be traced.
      solver_type: ``dpm_solver_pp`` / ``sde_dpm_solver_pp``: ``"midpoint"`` (default,
        the paper's 2M) or ``"heun"`` (diffusers' names); ``unipc``: ``"bh2"`` (default)
        or ``"bh1"``.
      lower_order_final: lower the order at the last steps as diffusers does (its
        default): DPM-Solver++ below 15 steps, UniPC always (see
        :func:`sdevp_jax.solvers.step_orders`).
      final_sigmas_type: the grid solvers' last step: ``"zero"`` (default, diffusers'):
        one more network call and a step to :math:`\sigma = 0`, returning the data
        prediction at the last grid time; ``"last"``: end at the last grid time.
        The other methods always end at the last grid time.
      third_order: ``dpm_solver_pp``'s third-order term: ``"taylor"`` (default, exact
        Taylor coefficients) or ``"diffusers"`` (half the second-derivative term, as
        diffusers and the official code; see :func:`sdevp_jax.solvers.dpmpp_step`).
      thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding
        of the data prediction (Saharia et al. 2022) in the grid solvers, for
        pixel-space models whose data lie in ``[-sample_max_value, sample_max_value]``.
      predict_x0: ``unipc`` in data prediction (default, as diffusers) or, with ``False``,
        in its noise-prediction form (Zhao et al. 2023 give both).
      cond: the samples' conditions, as for :func:`sample`.

    Returns:
      The samples (array of ``shape`` and ``dtype``), or ``(samples, info)``.
    """
    shape, dtype = check_common(state, model_fn, key, shape, dtype, "sample_ode", cond)
    method = lookup(("ode", "sde_solver"), method, "method")
    n = state.timesteps.shape[0]
    if method != "adaptive" and n < 2:
        raise ValueError(f"method={method!r} steps between grid points: num_inference_steps must be >= 2, got {n}")
    grid_opts = None
    if method in GRID_SOLVERS:
        grid_opts = grid_solver_options(method, order, solver_type, lower_order_final, final_sigmas_type, eta,
                                        third_order, thresholding, dynamic_thresholding_ratio, sample_max_value,
                                        predict_x0)
    else:
        order = 3 if order is None else _checks.positive_int("order", order)
        if order > 3:
            raise ValueError(f"order must be 1, 2 or 3 (dpm_solver's), got {order}")
        if final_sigmas_type not in (None, "last"):
            raise ValueError(f"final_sigmas_type={final_sigmas_type!r} needs a grid solver "
                             f"({', '.join(GRID_SOLVERS)}); method={method!r} ends at the last grid time")
    if method == "adaptive":
        rtol = _checks.positive_real("rtol", rtol)
        atol = _checks.positive_real("atol", atol)
        max_steps = _checks.positive_int("max_steps", max_steps)
    batch, event = shape[0], shape[1:]
    work_dtype = _checks.compute_dtype(dtype)
    keys = make_sample_keys(key, batch, index_offset)
    x = check_x_init(x_init, shape, dtype)
    if x is None:
        x = per_sample_normal(keys, 0, event, work_dtype).astype(dtype)
    if method == "adaptive":
        x, nfe_per_sample = _adaptive_ode(state, model_fn, x, work_dtype, rtol, atol, max_steps, cond)
        nfe_per_sample = nfe_per_sample.astype(jnp.int32)
    elif grid_opts is not None:
        x, nfe = _grid_solver(state, with_cond(model_fn, cond), x, grid_opts, keys, work_dtype)
        nfe_per_sample = jnp.full((batch,), nfe, jnp.int32)
    else:
        x, nfe = _fixed_step_ode(state, with_cond(model_fn, cond), x, method, work_dtype, order)
        nfe_per_sample = jnp.full((batch,), nfe, jnp.int32)
    x = x.astype(dtype)
    if return_info:
        return x, SamplerInfo(jnp.max(nfe_per_sample), nfe_per_sample)
    return x


#: The methods :func:`invert_ode` runs: every deterministic fixed-grid solver.
INVERTIBLE = ("ddim", "dpm_solver_pp", "unipc", "dpm_solver", "euler", "heun")


def invert_ode(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    x0: jax.Array,
    *,
    method: str = "ddim",
    order: Optional[int] = None,
    solver_type: Optional[str] = None,
    lower_order_final: bool = True,
    third_order: str = "taylor",
    return_info: bool = False,
    cond=None,
    predict_x0: bool = True,
):
    r"""Run the probability-flow ODE upwards: from ``x0`` at the grid's last time to its first.

    DDIM inversion (Song, Meng & Ermon 2021, sec. 4.3; Mokady et al. 2023) and its
    higher-order counterparts: the same solver steps as :func:`sample_ode`, through
    the reversed grid (``h = \lambda_t - \lambda_s`` is then negative; the formulas
    hold as they are). ``sample_ode(state, model_fn, key, x0.shape, method=method,
    x_init=invert_ode(state, model_fn, x0, method=method), final_sigmas_type="last")``
    returns ``x0`` up to the solver's error, which falls at its order (tested).

    Args:
      state: a state after :func:`set_timesteps`, ``N >= 2``; on the linear schedule's
        ``"reference"`` grid ``dpm_solver`` inverts through its own log-SNR grid.
      model_fn: as for :func:`sample_ode`.
      x0: the data (treated as the sample at the grid's last time), ``(batch, ...)``, float.
      method: one of :data:`INVERTIBLE` (deterministic: ``ddim`` with ``eta = 0``).
      order, solver_type, lower_order_final, third_order, predict_x0: as for :func:`sample_ode`.
      return_info: also return a :class:`SamplerInfo`.
      cond: the samples' conditions, as for :func:`sample`.

    Returns:
      The latents at the grid's first time, of ``x0``'s shape and dtype (or ``(latents, info)``).
    """
    require_timesteps(state, "invert_ode")
    if not isinstance(method, str) or method not in INVERTIBLE:
        raise ValueError(f"method must be one of {list(INVERTIBLE)}, got {method!r}")
    x0 = _checks.float_array("x0", x0)
    if x0.ndim < 1:
        raise ValueError(f"x0 must have shape (batch, ...), got {x0.shape}")
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t) -> prediction, got {type(model_fn).__name__}")
    check_cond(cond, x0.shape[0])
    _check_model_output(model_fn, jax.ShapeDtypeStruct(x0.shape, x0.dtype),
                        jax.ShapeDtypeStruct((x0.shape[0],), state.timesteps.dtype), cond)
    model_fn = with_cond(model_fn, cond)
    n = state.timesteps.shape[0]
    if n < 2:
        raise ValueError(f"invert_ode steps between grid points: num_inference_steps must be >= 2, got {n}")
    work = _checks.compute_dtype(x0.dtype)
    if method in GRID_SOLVERS:
        opts = grid_solver_options(method, order, solver_type, lower_order_final, "last", 0.0, third_order,
                                   False, 0.995, 1.0, predict_x0)
        x, nfe = _grid_solver(state, model_fn, x0, opts, None, work, grid=state.timesteps.astype(work)[::-1])
    else:
        order = 3 if order is None else _checks.positive_int("order", order)
        if order > 3:
            raise ValueError(f"order must be 1, 2 or 3 (dpm_solver's), got {order}")
        x, nfe = _fixed_step_ode(state, model_fn, x0, method, work, order, reverse=True)
    x = x.astype(x0.dtype)
    if return_info:
        nfe_per_sample = jnp.full((x0.shape[0],), nfe, jnp.int32)
        return x, SamplerInfo(jnp.max(nfe_per_sample), nfe_per_sample)
    return x
