"""The one sampling loop, and the sampling functions built on it: ``sample``, ``sample_ode``, ``invert_ode``.

:func:`integrate` is one ``lax.scan`` over a grid's intervals that calls a solver's
``step`` (:mod:`sdevp_jax.solvers`) and threads ``x``, the solver's own state and the
step index; it holds no method names and no solver math. (The adaptive solver
integrates the whole interval itself, a ``while_loop`` inside diffrax.) Noise is addressed per sample, in the manner of
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

from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import DTypeLike

from . import _checks, solvers
from .denoiser import (LEARNED_VARIANCE, Denoiser, GuidedModel, check_learned_output, is_stateful, renoises,
                       variance_type)
from .solvers import Grid, Noise, Solver
from .solvers.adaptive import Adaptive, ode_span, schedule_jumps, tsit5_solve  # noqa: F401  (re-exported)
from .scheduler import ScoreSdeVpSchedulerState, require_timesteps

__all__ = ["sample", "sample_ode", "invert_ode", "integrate", "run", "per_sample_normal", "SamplerInfo", "INVERTIBLE"]

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


def _check_model_output(state, model_fn: ModelFn, x: jax.Array, t: jax.Array, cond=None) -> None:
    """Trace ``model_fn`` once abstractly and check it returns an array of x's shape (:func:`split_output`'s
    shape for a learned variance)."""
    args = (x, t) if cond is None else (x, t, cond)
    call = "model_fn(x, t)" if cond is None else "model_fn(x, t, cond)"
    context = f"{call} failed for x {x.shape} and t {t.shape}"
    if isinstance(model_fn, GuidedModel):  # its first call, memory fresh
        fn = model_fn

        def model_fn(*a):
            return fn.apply(fn.init(a[0]), *a, *((None,) if len(a) == 2 else ()))[0]
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
    if variance_type(state) in LEARNED_VARIANCE:
        check_learned_output(state, "model_fn's output", out.shape, x.shape)
    elif out.shape != x.shape:
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
    if key is not None:  # None: a deterministic run from x_init (checked where the solver is known)
        _checks.prng_key("key", key)
    shape = _checks.sample_shape("shape", shape)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a float dtype, got {jnp.dtype(dtype)}")
    dtype = jnp.dtype(dtype)
    check_cond(cond, shape[0])
    _check_model_output(
        state,
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


def integrate(solver: Solver, model: Denoiser, x: jax.Array, grid: Grid, sample_keys, unroll: int = 1,
              noise=None, sample_index=None):
    """Run ``solver`` over ``grid``'s intervals from ``x``: one ``lax.scan``; returns ``(x, solver_state, nfe)``.

    A stateful guided model's memory (:class:`~sdevp_jax.denoiser.GuidedModel`) rides in the carry,
    from ``model_fn.init(x)``, through every call in the solver's order. Step ``k`` (from ``grid.t[k]``,
    ``k < solver.num_steps(n)``) draws its noise (or takes it from the given ``noise``, see
    :class:`~sdevp_jax.solvers.Noise`) from the slots
    ``1 + k s`` to ``k s + s`` of each sample's stream, ``s = solver.noise_slots``
    (slot 0 is the prior draw). The step index rides in the carry (not as an arange
    over the steps), so nothing but the grid has the length of the loop. ``nfe`` is
    the network calls the traced steps report (a Python int).
    """
    event = x.shape[1:]
    slots = solver.noise_slots
    per_step = []

    def body(carry, _):
        x, state, k, memory = carry
        draws = Noise(sample_keys, 1 + k * slots, event, model.dtype, noise, sample_index)
        held = model.holding(memory)
        x, state, info = solver.step(held, x, state, grid, k, draws)
        per_step.append(info.nfe)
        return (x, state, k + 1, held.held()), None

    # a solver's begin_index (diffusers' set_begin_index): x is at that grid point; the steps before it are not run
    begin = getattr(solver, "begin_index", 0)
    num_steps = solver.num_steps(grid.num_points) - begin
    if num_steps < 1:
        raise ValueError(f"begin_index = {begin} must be below the grid's last point, {grid.num_points - 1}: the "
                         f"loop starts at that grid point and steps from it")
    memory = model.model_fn.init(x) if model.stateful else ()
    (x, state, _, memory), _ = lax.scan(body, (x, solver.init(x, grid), jnp.int32(begin), memory), None,
                                        length=num_steps, unroll=unroll)
    x, state, info = solver.finish(model.holding(memory), x, state, grid)
    return x, state, per_step[0] * num_steps + info.nfe


def run(solver: Solver, state, model_fn, x, sample_keys, dtype, cond=None, unroll: int = 1, reverse: bool = False,
        noise=None, sample_index=None, times=None):
    """``solver`` from ``x`` down ``state``'s grid (up with ``reverse``); returns ``(x, solver_state, nfe_per_sample)``.

    Builds the model boundary and the grid (in the work ``dtype``, the schedule's
    coefficients computed once, outside the loop) and runs :func:`integrate`, or the
    adaptive solver's own ``solve``. Solvers with ``in_work_dtype`` carry ``x`` in the
    work dtype; the SDE updates take and return the samples' own dtype, as diffusers'
    step does.
    """
    batch = x.shape[0]
    model = Denoiser(state, model_fn, x.dtype, dtype, cond)
    check_guided_model(solver, model_fn)
    check_model_times(solver, state, inversion=times is not None)
    if isinstance(solver, Adaptive):
        check_zero_snr_start(solver, state, state.timesteps)
        x, nfe = solver.solve(model, x)
        return x, None, nfe.astype(jnp.int32)
    if times is None:  # else the caller's (an inversion's, ascending)
        times = solver.times(state, dtype)
        check_zero_snr_start(solver, state, times)
        if reverse:
            times = times[::-1]
    grid = Grid.build(state.schedule.cast(dtype), times, solver.coefficients)
    if solver.in_work_dtype:
        x = x.astype(dtype)
    x, solver_state, nfe = integrate(solver, model, x, grid, sample_keys, unroll, noise, sample_index)
    return x, solver_state, jnp.full((batch,), nfe, jnp.int32)


def check_model_times(solver: Solver, state, inversion: bool = False) -> None:
    """Refuse a state with per-point model times (``state.model_times``) for a solver that calls the model
    anywhere but once at each grid point (``Solver.model_at_grid_points``), or for an inversion: there a model
    time belongs to no single call."""
    if getattr(state, "model_times", None) is None:
        return
    if inversion:
        raise ValueError("the state has model_times (a model time per grid point, fitted for sampling); invert_ode "
                         "does not apply them: set the grid again without model_times")
    if not solver.model_at_grid_points:
        ready = [n for n, c in solvers.REGISTRY.items() if c.model_at_grid_points]
        raise ValueError(f"the state has model_times (the model's time at each grid point), which only the methods "
                         f"that call the model at grid points alone apply: {ready}; method {solver.name!r} calls "
                         f"it between grid points (or is not a grid solver)")


def check_guided_model(solver: Solver, model_fn) -> None:
    """Refuse a guided model the solver cannot run: a renoising one (CFG++) with a solver that does not take
    its noise from the second prediction, a stateful one with the adaptive solver (it steps each sample on its
    own, under ``vmap``, where no memory is threaded)."""
    if renoises(model_fn) and not solver.renoise_ready:
        ready = [n for n, c in solvers.REGISTRY.items() if c.renoise_ready]
        raise ValueError(f"{type(model_fn).__name__} renoises with the unconditional prediction, which only the "
                         f"methods {ready} take; method {solver.name!r} does not")
    if is_stateful(model_fn) and isinstance(solver, Adaptive):
        raise ValueError(f"{type(model_fn).__name__} keeps memory across the run's calls, which the adaptive "
                         f"solver (each sample on its own steps) does not thread: pass a fixed-grid method")


def check_zero_snr_start(solver: Solver, state: ScoreSdeVpSchedulerState, times) -> None:
    r"""Refuse a run through :math:`t = 1` of a zero-terminal-SNR schedule (:math:`\alpha = 0`) that cannot be
    computed there, at trace time (a grid that is traced is not checked).

    At :math:`\alpha = 0` the data prediction of a v- or x0-model is finite (:math:`\hat x_0 = -v`), that of an
    ε-model, :math:`(x - \sigma\hat\epsilon)/\alpha`, is not: the noise prediction there is ``x`` itself and
    carries nothing of the data. The solvers whose steps use only the data prediction and
    :math:`\sigma_t/\sigma_s` (``solver.zero_snr_start``) have a finite limit there; the others need
    :math:`\beta(t)` or the log-SNR finite.
    """
    schedule = state.schedule
    if not getattr(schedule, "zero_terminal_snr", False):
        return
    host = _checks.concrete(times)
    if host is None or not bool(np.any(host >= schedule.t_max)):
        return
    where = ("the grid reaches t = 1, where this zero-terminal-SNR schedule has alpha = 0 and an infinite "
             "log-SNR (Lin et al. 2024)")
    below = "or start below t = 1 (e.g. timestep_spacing='leading', or set_timesteps(..., timesteps=...))"
    if state.prediction_type == "epsilon":
        raise ValueError(
            f"{solver.name}: {where}: an epsilon-prediction model's data prediction (x - sigma * eps) / alpha is "
            f"undefined there (at alpha = 0 the noise prediction is x itself and carries nothing of the data). "
            f"Sample a v- or x0-prediction model (zero-SNR models are trained with v-prediction), {below}")
    if not solver.zero_snr_start:
        always = [n for n, c in solvers.REGISTRY.items() if c.zero_snr_start is True]
        some = [n for n, c in solvers.REGISTRY.items() if isinstance(c.zero_snr_start, property)]
        raise ValueError(
            f"{solver.name}: {where}; this method's step needs beta(t) or the log-SNR finite. The methods that "
            f"start there (their steps use the data prediction and sigma_t/sigma_s alone): {', '.join(always)}, "
            f"and with some options {', '.join(some)} (unipc with predict_x0=True and solver_type='bh2', the "
            f"single-step solvers with algorithm_type='dpmsolver++'); {below}")


def config_solver(state: ScoreSdeVpSchedulerState) -> tuple[str, dict]:
    """``(method, options)`` of the solver of the state's diffusers config
    (:meth:`~sdevp_jax.config.DiscreteConfig.solver_options`)."""
    return state.diffusers_config.solver_options()


def solver_from(solver, predictor, corrector, snr, corrector_steps, step_rule) -> Solver:
    """The solver ``sample`` runs: ``solver`` itself or by name, else the predictor and corrector named."""
    if solver is not None:
        given = {"predictor": (predictor, None), "corrector": (corrector, None), "snr": (snr, 0.16),
                 "corrector_steps": (corrector_steps, 1), "step_rule": (step_rule, "sigma")}
        for name, (value, default) in given.items():
            if value is not default and value != default:
                raise ValueError(f"give either solver= or {name}=, not both (got {name}={value!r})")
        if isinstance(solver, str):
            solver = solvers.make(solver)
        if not isinstance(solver, Solver):
            raise TypeError(f"solver must be a sdevp_jax.solvers.Solver or a registered name, "
                            f"got {type(solver).__name__}")
        if solver.kind == "corrector":
            raise ValueError(f"solver={solver.name!r} is a corrector: it runs at fixed time, inside "
                             f"sv.solvers.PredictorCorrector(predictor, corrector), or as corrector=")
        return solver
    pred = solvers.make(solvers.get("euler_maruyama" if predictor is None else predictor, "predictor", "predictor").name)
    if corrector is None:
        return pred
    correct = solvers.get(corrector, "corrector", "corrector")(snr=snr, step_rule=step_rule)
    return solvers.PredictorCorrector(pred, correct, _checks.positive_int("corrector_steps", corrector_steps))


def sample(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    predictor: Optional[str] = None,
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
    solver: Union[Solver, str, None] = None,
    return_info: bool = False,
    noise=None,
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

    Any solver: ``solver=`` takes a solver object (``sv.solvers.UniPC(order=3)``,
    ``sv.solvers.PredictorCorrector(...)``) or a registered name
    (``sv.list_methods()``), which runs with its default options; ``predictor``,
    ``corrector`` and their options then stay at their defaults. An ODE solver
    returns its last point (``denoise`` applies to the SDE solvers only).

    Args:
      state: a state after :func:`set_timesteps`.
      model_fn: ``(x, t) -> prediction`` with ``x`` of ``shape`` and ``t`` of shape
        ``(batch,)`` the model's time input (:func:`~sdevp_jax.model_time`: the
        continuous time, or a discrete schedule's training label); it returns
        ``state.prediction_type`` (the noise by default), an array of ``shape``. For
        a network trained on the paper's labels wrap it as ``lambda x, t: net(x, t * 999)``.
      key: a PRNG key (``jax.random.key`` or legacy ``PRNGKey``); ``None`` only with ``x_init`` and a
        deterministic solver (nothing to draw).
      shape: ``(batch, *event)``, a non-empty tuple of positive ints.
      predictor: one of ``sv.list_methods("predictor")``; ``None`` (default): ``"euler_maruyama"``,
        or, for a state loaded from a diffusers DDIM, DDPM, DPMSolverMultistep or UniPC config and
        no ``solver`` or ``corrector`` given, that scheduler's own solver
        (:meth:`~sdevp_jax.config.DiscreteConfig.solver_options`; a config whose method this
        package lacks is refused, naming it).
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

      solver: ``None`` (the ``predictor``/``corrector`` arguments), a
        :class:`~sdevp_jax.solvers.Solver` or a registered name.
      return_info: also return a :class:`SamplerInfo` with the network calls made.
      noise: the noise to use instead of the keyed draws (to replay another implementation's
        stream): an array of shape ``(draws, batch, *event)``, draw ``k s + j`` the ``j``-th of step
        ``k`` (``s`` the solver's ``noise_slots``: 1, or with a corrector ``1 + corrector_steps``), or a
        function ``(draw, sample_index) -> event-shaped array`` (``sample_index`` = ``index_offset + b``),
        traced inside the loop. ``None`` (default): each sample's keyed stream. ``x_T`` still comes from
        ``key`` or ``x_init`` (with both given noise and ``x_init``, ``key`` may be ``None``).

    Returns:
      The samples, an array of ``shape`` and ``dtype`` (or ``(samples, info)``).

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> sample = jax.jit(sv.sample, static_argnums=(1, 3))   # model_fn and shape static
      >>> x = sample(state, model_fn, jax.random.key(0), (4, 2))
      >>> x.shape, x.dtype
      ((4, 2), dtype('float32'))
    """
    shape, dtype = check_common(state, model_fn, key, shape, dtype, "sample", cond)
    if solver is None and predictor is None and corrector is None and state.diffusers_config is not None:
        method, options = config_solver(state)  # the state's diffusers scheduler's own solver
        solver = solvers.make(method, **options)
    solver = solver_from(solver, predictor, corrector, snr, corrector_steps, step_rule).check()
    return _draw(solver, state, model_fn, key, shape, dtype, index_offset, resolve_unroll(unroll), x_init, cond,
                 denoise, return_info, noise)


def check_noise(solver: Solver, state, noise, shape, dtype):
    """Given noise (``sample(..., noise=)``) checked against the run it replaces the draws of: the array as
    ``(draws, batch, *event)`` in the work dtype, or the function; ``None`` stays ``None``."""
    if noise is None:
        return None
    if not solver.stochastic:
        raise ValueError(f"noise=: method {solver.name!r} draws no noise (it is deterministic given x_T)")
    if callable(noise):
        return noise
    noise = _checks.float_array("noise", noise)
    draws = solver.num_steps(solver.times(state, dtype).shape[0]) * solver.noise_slots
    want = (draws, shape[0]) + tuple(shape[1:])
    if tuple(noise.shape) != want:
        raise ValueError(f"noise must have shape (draws, batch, *event) = {want}: {solver.name!r} takes "
                         f"{solver.noise_slots} draw(s) per step over {draws // solver.noise_slots} steps; "
                         f"got {tuple(noise.shape)}")
    return noise.astype(dtype)


def _draw(solver, state, model_fn, key, shape, dtype, index_offset, unroll, x_init, cond, denoise, return_info,
          noise=None):
    """Draw ``x_T`` (slot 0 of each sample's stream, unless ``x_init``), run ``solver``, return as asked."""
    n = state.timesteps.shape[0]
    if solver.in_work_dtype and not isinstance(solver, Adaptive) and n < 2:
        raise ValueError(f"method={solver.name!r} steps between grid points: num_inference_steps must be >= 2, "
                         f"got {n}")
    work = _checks.compute_dtype(dtype)
    noise = check_noise(solver, state, noise, shape, work)
    if key is None:
        if x_init is None:
            raise ValueError("key=None needs x_init: the key draws x_T (pass a PRNG key, or the starting samples)")
        if solver.stochastic and noise is None:
            raise ValueError(f"key=None: method {solver.name!r} draws noise at every step; pass a PRNG key "
                             f"(or the noise itself, noise=)")
        keys = None
    else:
        keys = make_sample_keys(key, shape[0], index_offset)
    x = check_x_init(x_init, shape, dtype)
    if x is None:
        x = per_sample_normal(keys, 0, shape[1:], work).astype(dtype)
    sample_index = jnp.asarray(index_offset, jnp.uint32) + jnp.arange(shape[0], dtype=jnp.uint32)
    x, solver_state, nfe_per_sample = run(solver, state, model_fn, x, keys, work, cond, unroll,
                                          noise=noise, sample_index=sample_index)
    if denoise and not solver.in_work_dtype:
        x = solver_state  # the SDE updates' state: the last one's noise-free mean
    x = x.astype(dtype)
    if return_info:
        return x, SamplerInfo(jnp.max(nfe_per_sample), nfe_per_sample)
    return x


#: sample_ode's solver options and the value that means "the method's default" (not passed on).
ODE_OPTIONS = {"order": None, "solver_type": None, "eta": None, "s_noise": None, "lower_order_final": None,
               "final_sigmas_type": None, "third_order": "taylor", "thresholding": False,
               "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "predict_x0": True, "euler_at_final": False,
               "algorithm_type": None, "predictor_order": None, "corrector_order": None, "tau": None,
               "tau_t_min": None, "tau_t_max": None, "second_order": None, "warmup": None, "noise_scale": None,
               "quadrature": None, "first_derivative": None, "variance_floor": None, "restarts": None,
               "restart_gamma": None, "churn_range": None, "rtol": 1e-5, "atol": 1e-5, "max_steps": 4096}


def ode_solver(method, kind=("ode", "sde_solver"), **options) -> Solver:
    """The solver ``method`` names with the options ``sample_ode`` was given (see :func:`sample_ode`)."""
    if isinstance(method, Solver):
        given = [name for name, value in options.items() if not _is_default(value, ODE_OPTIONS[name])]
        if given:
            raise ValueError(f"method is a solver object: give its options to it, not {given}")
        return method
    cls = solvers.get(method, kind)
    fields = solvers.option_fields(cls)
    passed = {}
    for name, value in options.items():
        if _is_default(value, ODE_OPTIONS[name]):
            continue
        if name not in fields:
            if name == "order" and "predictor_order" in fields:
                raise ValueError(f"method={method!r} has two orders: give predictor_order and corrector_order "
                                 f"(1-4), not order={value!r}")
            if name == "order":  # documented: the methods without an order ignore it
                _checks.positive_int("order", value)
                if value > 3:
                    raise ValueError(f"order must be 1, 2 or 3, got {value}")
                continue
            if name == "lower_order_final":  # likewise: there is no order to lower
                solvers.base.bool_option("lower_order_final", value)
                continue
            if name == "final_sigmas_type" and value == "last":  # every other method ends at the last grid time
                continue
            if name == "final_sigmas_type":
                raise ValueError(f"final_sigmas_type={value!r} needs a grid solver "
                                 f"({', '.join(solvers.methods_with('final_sigmas_type'))}); method={method!r} "
                                 f"ends at the last grid time")
            if name in ("eta", "s_noise"):
                raise ValueError(f"{name} is an option of {', '.join(solvers.methods_with(name))}; "
                                 f"method={method!r} takes none, got {name}={value!r}")
            if name == "predict_x0":
                raise ValueError(f"predict_x0=False (the noise-prediction form) is UniPC's option, not {method!r}'s")
            if name in ("algorithm_type", "euler_at_final", "predictor_order", "corrector_order", "tau", "tau_t_min",
                        "tau_t_max", "second_order", "warmup"):
                raise ValueError(f"{name} is an option of {', '.join(solvers.methods_with(name))}, "
                                 f"not of method={method!r}")
            if name == "solver_type":
                raise ValueError(f"solver_type must be one of [None] for method={method!r}, got {value!r}")
        passed[name] = value
    for name in ("dynamic_thresholding_ratio", "sample_max_value"):
        if name in passed and not options.get("thresholding"):
            del passed[name]  # as before: thresholding's options are read only with thresholding on
    return solvers.make(cls.name, kind, **passed)


def _is_default(value, default) -> bool:
    if default is None or isinstance(default, (bool, str)):
        return value is default or (not _checks.is_traced(value) and type(value) is type(default) and value == default)
    return not _checks.is_traced(value) and not isinstance(value, bool) and value == default


def sample_ode(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    method: Union[str, Solver, None] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    return_info: bool = False,
    dtype: DTypeLike = jnp.float32,
    index_offset: int | jax.Array = 0,
    order: Optional[int] = None,
    x_init: Optional[jax.Array] = None,
    eta: Optional[float] = None,
    s_noise: Optional[float] = None,
    solver_type: Optional[str] = None,
    lower_order_final: Optional[bool] = None,
    final_sigmas_type: Optional[str] = None,
    third_order: str = "taylor",
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    predict_x0: bool = True,
    euler_at_final: bool = False,
    algorithm_type: Optional[str] = None,
    predictor_order: Optional[int] = None,
    corrector_order: Optional[int] = None,
    tau: Optional[float] = None,
    tau_t_min: Optional[float] = None,
    tau_t_max: Optional[float] = None,
    second_order: Optional[str] = None,
    warmup: Optional[str] = None,
    noise_scale: Optional[str] = None,
    quadrature: Optional[str] = None,
    first_derivative: Optional[str] = None,
    variance_floor: Optional[float] = None,
    restarts: Optional[tuple] = None,
    restart_gamma: Optional[float] = None,
    churn_range: Optional[tuple] = None,
    begin_index: int = 0,
    cond=None,
    noise=None,
):
    r"""Draw samples by solving the probability-flow ODE down the state's grid (``t_max`` to ``sampling_eps`` by default).

    .. math::

        \frac{dx}{dt} = -\tfrac12\beta(t)\Big(x - \frac{\hat\epsilon(x, t)}{\sigma(t)}\Big)
        \qquad\text{(Song et al. 2021, eq. 13).}

    Deterministic given :math:`x_T`: the key only draws :math:`x_T`, per sample, as
    in :func:`sample` (the :math:`x_T` of sample ``b`` depends only on
    ``(key, index_offset + b)``, bitwise; the result to float rounding).

    ``sample_ode(state, model_fn, key, shape, method=name, **options)`` is
    ``sample(state, model_fn, key, shape, solver=sv.solvers.make(name, **options), unroll=1)``
    with the options' old spellings kept: an option left at its default here is
    not passed on, and one the method does not take raises a ValueError naming it
    (``order`` and ``lower_order_final`` excepted: a method without an order to set or
    lower ignores them, as it did). ``sample(..., solver=...)`` is the one way to
    sample; ``sample_ode`` is kept as this spelling of it.

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
      key: a PRNG key; draws :math:`x_T` only (``None`` with ``x_init``: nothing to draw, for a
        deterministic method).
      shape: ``(batch, *event)``.
      method: the solver, one of ``sv.list_methods("ode")`` (or ``"sde_dpm_solver_pp"``), or a
        :class:`~sdevp_jax.solvers.Solver` (then no other solver option may be given). ``None``
        (default): ``"dpm_solver"``, or, for a state loaded from a diffusers config, that
        scheduler's own solver and options (:meth:`~sdevp_jax.config.DiscreteConfig.solver_options`;
        the options given here replace the config's; a config whose method this package lacks
        is refused, naming it).
      rtol, atol: tolerances of the adaptive solver, > 0.
      max_steps: the adaptive solver's step budget per sample (an error past it).
      return_info: also return a :class:`SamplerInfo` with the network calls made.
      dtype: the samples' float dtype; the solver runs in ``compute_dtype(dtype)``.
      index_offset: as for :func:`sample`.
      order: the multistep order: ``dpm_solver`` 1-3 (default 3; order 1 is DDIM with
        :math:`\eta = 0`, DPM-Solver-1, Lu et al. 2022, sec. 4.1), ``dpm_solver_pp`` 1-3
        (default 2: "2M"; 3: "3M"), ``sde_dpm_solver_pp`` 1-3 (default 2), ``unipc``
        1-3 (default 2); ``None`` for the default. Other methods ignore it.
      x_init: the starting samples at the top of the grid, ``shape``, instead of the
        prior draw from ``key`` (the key then drives only the stochastic steps). With a
        grid that starts below ``t_max`` and a noised image this is SDEdit.
      eta: ``ddim``'s :math:`\eta \ge 0` (default 0: deterministic; 1: DDPM's posterior
        variance); ``sde_dpm_solver_pp``'s (default 1: the reverse SDE; 0: the probability-flow ODE,
        k-diffusion's ``eta``); ``None`` for the method's default; a leaf, so it may be traced.
      s_noise: ``sde_dpm_solver_pp``'s factor on the injected noise (default 1, k-diffusion's); ``restart``'s
        on its jumps and churn (default 1).
      solver_type: ``dpm_solver_pp`` / ``sde_dpm_solver_pp``: ``"midpoint"`` (default,
        the paper's 2M) or ``"heun"`` (diffusers' names); ``unipc``: ``"bh2"`` (default)
        or ``"bh1"``.
      lower_order_final: lower the order at the last steps as diffusers does (``None``:
        the method's default, on for ``dpm_solver_pp``, ``sde_dpm_solver_pp``, ``unipc`` and
        ``deis`` as in diffusers, off for the single-step solvers and ``dpm_solver``):
        DPM-Solver++ below 15 steps, UniPC always (see :func:`sdevp_jax.solvers.step_orders`).
      final_sigmas_type: the grid solvers' last step: ``"zero"`` (default, diffusers'):
        one more network call and a step to :math:`\sigma = 0`, returning the data
        prediction at the last grid time; ``"last"``: end at the last grid time.
        The other methods always end at the last grid time.
      third_order: ``dpm_solver_pp``'s third-order term: ``"taylor"`` (default, exact
        Taylor coefficients) or ``"diffusers"`` (half the second-derivative term, as
        diffusers and the official code; see :func:`sdevp_jax.solvers.dpmpp_step`);
        ``sde_dpm_solver_pp``'s: ``"taylor"``, ``"k-diffusion"`` (half) or ``"diffusers"``
        (see :func:`sdevp_jax.solvers.sde_dpmpp_step`).
      thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding
        of the data prediction (Saharia et al. 2022) in the grid solvers, for
        pixel-space models whose data lie in ``[-sample_max_value, sample_max_value]``.
      predict_x0: ``unipc`` in data prediction (default, as diffusers) or, with ``False``,
        in its noise-prediction form (Zhao et al. 2023 give both).
      euler_at_final: ``dpm_solver_pp`` and ``sde_dpm_solver_pp``: a first-order last step on every grid
        (diffusers' option; it matters with ``final_sigmas_type="last"``).
      algorithm_type: ``dpm_solver_singlestep``'s ``"dpmsolver++"`` (``None``: its default, the data
        prediction) or ``"dpmsolver"`` (the noise prediction); ``sa_solver``'s ``"data_prediction"`` (its
        default) or ``"noise_prediction"``.
      predictor_order, corrector_order, tau, tau_t_min, tau_t_max, second_order: ``sa_solver``'s options (its
        orders 1-4, the noise scale :math:`\tau \ge 0` on the steps starting in ``[tau_t_min, tau_t_max]``, its
        order-2 coefficients; see :class:`sdevp_jax.solvers.SASolver`); ``None``: its defaults.
      warmup: ``pndm``'s first steps: ``"prk"`` (``None``: its default, pseudo Runge--Kutta), ``"prk_diffusers"``
        (the same with diffusers' integer-label midpoints) or ``"improved_euler"`` (diffusers' ``skip_prk_steps=True``).
      noise_scale, quadrature, first_derivative, variance_floor: ``er_sde``'s noise scale function, its
        integrals' quadrature, order 3's first-derivative estimate and the variance below which a step's
        noise is dropped (``None``: its defaults; see :class:`sdevp_jax.solvers.ERSDE`).
      restarts, restart_gamma, churn_range: ``restart``'s intervals ``((n_steps, K, t_min, t_max), ...)``, its
        churn and the levels ``(S_min, S_max)`` it applies within (see :class:`sdevp_jax.solvers.Restart`;
        ``s_noise`` scales its noise).
      begin_index: ``dpm_solver_singlestep``'s and ``lms``' start inside the grid (diffusers'
        ``set_begin_index``, img2img): ``x_init`` is at grid point ``begin_index`` and the loop steps from there
        with the whole grid's order schedule (see :class:`sdevp_jax.solvers.LMS`,
        :class:`sdevp_jax.solvers.DPMSolverSinglestep`); default 0.
      cond: the samples' conditions, as for :func:`sample`.
      noise: for a stochastic method, the noise instead of the keyed draws, as for :func:`sample`.

    Returns:
      The samples (array of ``shape`` and ``dtype``), or ``(samples, info)``.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 11)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> x, info = sv.sample_ode(state, model_fn, jax.random.key(0), (4, 2), method="dpm_solver", return_info=True)
      >>> x.shape, int(info.nfe)
      ((4, 2), 10)
    """
    shape, dtype = check_common(state, model_fn, key, shape, dtype, "sample_ode", cond)
    options = dict(order=order, eta=eta, s_noise=s_noise, solver_type=solver_type,
                   lower_order_final=lower_order_final,
                   final_sigmas_type=final_sigmas_type, third_order=third_order, thresholding=thresholding,
                   dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
                   predict_x0=predict_x0, euler_at_final=euler_at_final, algorithm_type=algorithm_type,
                   predictor_order=predictor_order, corrector_order=corrector_order, tau=tau, tau_t_min=tau_t_min,
                   tau_t_max=tau_t_max, second_order=second_order, warmup=warmup, noise_scale=noise_scale,
                   quadrature=quadrature, first_derivative=first_derivative, variance_floor=variance_floor,
                   restarts=restarts, restart_gamma=restart_gamma, churn_range=churn_range)
    if begin_index != 0 and x_init is None:
        raise ValueError(f"begin_index = {begin_index!r} starts the loop at that grid point: pass the samples there "
                         f"as x_init (e.g. a noised image, diffusers' img2img)")
    if method is None:  # the state's diffusers scheduler's own solver, else DPM-Solver
        method, defaults = config_solver(state) if state.diffusers_config is not None else ("dpm_solver", {})
        if solvers.get(method).kind == "predictor":
            return _draw(solvers.make(method), state, model_fn, key, shape, dtype, index_offset, 1, x_init, cond,
                         False, return_info, noise)
        # the options given replace the config's; those left at their defaults do not
        options = dict(defaults, **{k: v for k, v in options.items() if not _is_default(v, ODE_OPTIONS[k])})
    solver = ode_solver(method, rtol=rtol, atol=atol, max_steps=max_steps, **options).check()
    if begin_index != 0:  # (not a solver option of jobs or the CLI: they start from the prior)
        takers = [name for name, cls in solvers.REGISTRY.items() if "begin_index" in cls.__dataclass_fields__]
        if solver.name not in takers:
            raise ValueError(f"begin_index applies to the methods {takers} (diffusers' schedulers whose loop "
                             f"started inside the grid keeps the whole grid's order schedule); method="
                             f"{solver.name!r} starts where its grid starts: pass the grid from that point instead")
        solver = solver.replace(begin_index=begin_index)
    return _draw(solver, state, model_fn, key, shape, dtype, index_offset, 1, x_init, cond, False, return_info, noise)


#: The methods :func:`invert_ode` runs: every deterministic solver through a fixed grid.
INVERTIBLE = tuple(name for name, cls in solvers.REGISTRY.items() if cls.invertible)


def _prepend_start(state, times, start, repeat: bool):
    """``times`` (ascending) with ``start`` before them; ``start`` must lie in ``[0, times[0]]`` (equal only with
    ``repeat``: diffusers' zero-length first step)."""
    start = _checks.real_scalar("start", start)
    first = float(np.asarray(times[0]))
    if not (0.0 <= start < first or (repeat and start == first)):
        raise ValueError(f"start must be in [0, {first!r}) (the grid's last time {first!r}: x0 is the sample at an "
                         f"earlier time; 0 for clean data), got {start!r}")
    if start == 0.0 and state.prediction_type == "sample":
        raise ValueError("start=0 with an x0-prediction model: the step from sigma = 0 reads the noise as "
                         "(x - alpha x0_hat) / sigma, 0/0 there; invert from the grid's last time (start=None)")
    return jnp.concatenate([jnp.asarray([start], times.dtype), times])


def _check_inverse_labels(config, n: int) -> None:
    """diffusers' DDIMInverseScheduler steps from ``label - N_train // n`` to ``label``: the previous label only where
    the grid's labels are that far apart (``leading``, or ``trailing`` with ``n`` dividing ``N_train``)."""
    big_n = config.num_train_timesteps
    if config.timestep_spacing == "trailing" and big_n % n:
        raise ValueError(f"DDIMInverseScheduler with timestep_spacing='trailing' and {n} steps: its steps start at "
                         f"label - {big_n} // {n}, which is not the previous label of its grid when {n} does not "
                         f"divide num_train_timesteps = {big_n} (x would be read at a time it is not at); use a "
                         f"step count that divides it, or 'leading'")


def invert_ode(
    state: ScoreSdeVpSchedulerState,
    model_fn: ModelFn,
    x0: jax.Array,
    *,
    method: Optional[str] = None,
    order: Optional[int] = None,
    solver_type: Optional[str] = None,
    lower_order_final: Optional[bool] = None,
    third_order: str = "taylor",
    return_info: bool = False,
    cond=None,
    predict_x0: bool = True,
    evaluate_at: Optional[str] = None,
    start: Optional[float] = None,
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
      x0: the data (treated as the sample at the grid's last time, or at ``start``), ``(batch, ...)``, float.
      method: one of :data:`INVERTIBLE` (deterministic: ``ddim`` with ``eta = 0``); ``None`` (default):
        ``ddim``, which for a state loaded from a ``DDIMInverseScheduler`` config steps as that scheduler
        does (below).
      order, solver_type, lower_order_final, third_order, predict_x0: as for :func:`sample_ode`.
      evaluate_at: ``ddim``'s model call in a step from ``s`` up to ``t``: ``"start"`` (default: at ``s``,
        DDIM's explicit step) or ``"end"`` (at ``t``, with ``x`` and the output's conversion at ``s``: diffusers'
        ``DDIMInverseScheduler``, whose pipelines call the model at the label the step goes to).
      start: the time ``x0`` is at, below the grid's last time: ``0`` for clean data (:math:`\sigma = 0`,
        diffusers' ``set_alpha_to_one``); the run then takes one more step (one more network call), from
        ``start`` to the grid's last time. ``None`` (default): the grid's last time. A ``DDIMInverseScheduler``
        config sets both: ``evaluate_at="end"``, and ``start`` 0 (``set_alpha_to_one``) or label 0's time (a
        zero-length first step where the grid starts at label 0: it changes ``x0`` only by ``clip_sample``).
      return_info: also return a :class:`SamplerInfo`.
      cond: the samples' conditions, as for :func:`sample`.

    Returns:
      The latents at the grid's first time, of ``x0``'s shape and dtype (or ``(latents, info)``).

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> x0 = sv.mixtures.sample_mixture(sv.mixtures.default_mixture(), jax.random.key(0), 4)
      >>> latents = sv.invert_ode(state, model_fn, x0, method="ddim")   # DDIM inversion, data -> noise
      >>> latents.shape
      (4, 2)
    """
    require_timesteps(state, "invert_ode")
    if method is not None and (not isinstance(method, str) or method not in INVERTIBLE):
        raise ValueError(f"method must be one of {list(INVERTIBLE)}, got {method!r}")
    x0 = _checks.float_array("x0", x0)
    if x0.ndim < 1:
        raise ValueError(f"x0 must have shape (batch, ...), got {x0.shape}")
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t) -> prediction, got {type(model_fn).__name__}")
    check_cond(cond, x0.shape[0])
    _check_model_output(state, model_fn, jax.ShapeDtypeStruct(x0.shape, x0.dtype),
                        jax.ShapeDtypeStruct((x0.shape[0],), state.timesteps.dtype), cond)
    n = state.timesteps.shape[0]
    config = state.diffusers_config
    inverse_config = config is not None and config.class_name == "DDIMInverseScheduler"
    if n < 2 and not inverse_config and start is None:
        raise ValueError(f"invert_ode steps between grid points: num_inference_steps must be >= 2, got {n}")
    if method is None and config is not None and config.class_name == "DPMSolverMultistepInverseScheduler":
        name, options = config.inverse_solver()  # the inverse scheduler's own solver and options
        solver = solvers.make(name, **options).check()
    else:
        method = "ddim" if method is None else method
        if evaluate_at is None:
            evaluate_at = "end" if inverse_config and method == "ddim" else "start"
        if evaluate_at not in ("start", "end"):
            raise ValueError(f"evaluate_at must be 'start' or 'end', got {evaluate_at!r}")
        if evaluate_at == "end" and method != "ddim":
            raise ValueError(f"evaluate_at='end' (diffusers' DDIMInverseScheduler's convention) applies to "
                             f"method='ddim', not {method!r}")
        solver = ode_solver(method, "ode", order=order, solver_type=solver_type, lower_order_final=lower_order_final,
                            third_order=third_order, predict_x0=predict_x0, final_sigmas_type="last").check()
        if evaluate_at == "end":
            solver = solver.replace(evaluate_at="end")
    work = _checks.compute_dtype(x0.dtype)
    times = solver.times(state, work)
    check_zero_snr_start(solver, state, times)  # an inversion ending at alpha = 0
    times = times[::-1]
    repeat_start = False
    if start is None and inverse_config:
        extra = dict(config.extra)
        start = 0.0 if extra.get("set_alpha_to_one", True) else 1.0 / state.num_train_timesteps
        repeat_start = True  # diffusers steps from there even where the grid starts there (a zero-length step)
        _check_inverse_labels(config, n)
    if start is not None:
        times = _prepend_start(state, times, start, repeat_start)
    x, _, nfe_per_sample = run(solver, state, model_fn, x0, None, work, cond, times=times)
    x = x.astype(x0.dtype)
    if return_info:
        return x, SamplerInfo(jnp.max(nfe_per_sample), nfe_per_sample)
    return x
