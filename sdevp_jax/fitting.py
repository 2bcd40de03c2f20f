r"""Time grids fitted to the user's own model: GITS's dynamic programme and gradient descent through the sampler.

A fixed spacing (``"logsnr"``, ``"karras"``, ...) is a guess that holds for every model
alike; at 4 to 10 network calls the error of a solver depends much on where its few
steps fall, and the best places depend on the model's own trajectories. :func:`fit_grid`
chooses the grid times for one solver and one model from a batch of starting points
:math:`x_T` (drawn from a key, as :func:`~sdevp_jax.sample_ode` draws them) and a
*teacher*: the same model's probability-flow ODE solved from the same :math:`x_T` with
many steps. Two algorithms:

* ``algorithm="dp"``: GITS (Chen et al., "On the Trajectory Regularity of ODE-based
  Diffusion Sampling", ICML 2024, sec. 4). The teacher's trajectory is recorded at ``M``
  fine grid times :math:`t_0 > \dots > t_{M-1}`; the cost :math:`c_{ij}` of one
  first-order step (DDIM, the exact Euler step in :math:`\sigma/\alpha`) from the
  teacher's point :math:`x_{t_i}` to :math:`t_j` is its distance to the teacher's
  :math:`x_{t_j}`, averaged over the batch; a dynamic programme then chooses the path of
  exactly ``N - 1`` steps from :math:`t_0` to :math:`t_{M-1}` through fine grid times
  whose summed cost is least (the authors' weighted sum, ``coeff`` below). The cost is a
  first-order step's whatever solver will run the grid, as in the paper; the grid is a
  subset of the fine grid.
* ``algorithm="gradient"``: gradient descent on the grid itself. The ``N - 2`` interior
  times are a monotone function of ``N - 1`` free numbers :math:`\theta`:
  :math:`\lambda_k = \lambda_0 + (\lambda_{N-1} - \lambda_0) \sum_{m<k} \mathrm{softmax}(\theta)_m`
  in log-SNR :math:`\lambda = \log(\alpha/\sigma)`, so every :math:`\theta` is a strictly
  decreasing grid with the two end points fixed. The loss is the mean squared difference
  between the solver's output (the compiled :func:`~sdevp_jax.sample`, one ``lax.scan``,
  with the grid a traced array) and the teacher's output, differentiated with
  ``jax.grad`` and minimised with optax's Adam. The state is rebuilt inside the loss with
  ``state.replace(timesteps=grid, spacing="custom", spacing_given=True)``; the host-side
  checks of a grid (decreasing, inside the schedule's range, the zero-terminal-SNR start)
  run on a concrete grid and are skipped for a traced one, so :func:`fit_grid` checks the
  fixed end points once on the host, and the parametrisation keeps every iterate valid. With ``free_end=True`` the last time is fitted
  too (for the grid solvers that return the data prediction at the last grid time, whose
  place is then a free choice rather than ``sampling_eps``).

  With ``fit_model_times=True`` the model's time is fitted with the grid, per grid point:
  the solver steps with the grid's :math:`t_k`, and the model is evaluated at
  :math:`s_k` (``state.model_times``, see :func:`~sdevp_jax.set_timesteps`): decoupled model
  times as learned by LD3 (Tong et al., "Learning to Discretize Denoising Diffusion ODEs",
  ICLR 2025), a time shift as the exposure-bias time-shift sampler's (Li et al., ICLR 2024).
  :math:`s_k` is the time at the log-SNR :math:`\lambda_k + \delta_k`, the shifts
  :math:`\delta_k` free parameters initialised at 0 and fitted jointly with :math:`\theta`;
  written as :math:`s_k = t_k + (t(\lambda_k + \delta_k) - t(\lambda_k))`, so that
  :math:`\delta = 0` gives :math:`s_k = t_k` in every bit and the fit starts as the
  grid-only one. :math:`\lambda_k + \delta_k` is clipped to the fitted grid's log-SNR range
  (the model is not evaluated outside the schedule's top and ``sampling_eps``). Only the
  solvers that call the model once at each grid point and nowhere else
  (``Solver.model_at_grid_points``: ``ddim``, ``dpm_solver_pp``, ``unipc``, ``deis``,
  ``ipndm``) give :math:`s_k` one meaning; the others (``heun``, ``euler``, the single-step
  methods, ``dpm_solver``, ...) are refused.

Both return the grid as a host NumPy array for ``sv.set_timesteps(state, timesteps=grid)``,
and :func:`save_grid` / :func:`load_grid` keep it with what it was fitted for.

Memory of the gradient: reverse-mode differentiation through ``lax.scan`` stores, for each
of the solver's steps, the residuals of that step's forward computation: the carry (the
samples, the multistep history) and whatever the model's backward pass needs (its
activations at that step). Memory therefore grows linearly with the number of steps.
``checkpoint=True`` wraps the model in ``jax.checkpoint``, so that per step only the model's
inputs are kept and its activations are recomputed in the backward pass (one more forward
call of the model per step); measured in ``docs/guides/fitted-grids.md``.

The package's imports flow one way (schedules, scheduler, models, solvers, loops); this
module builds on the loops, as :mod:`sdevp_jax.training` and :mod:`sdevp_jax.likelihood` do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from . import _checks, grids, solvers
from ._io import atomic_write
from .denoiser import Denoiser, GuidedModel, is_stateful
from .loops import check_common, check_zero_snr_start, make_sample_keys, per_sample_normal, sample, sample_ode
from .scheduler import ScoreSdeVpSchedulerState, set_timesteps

__all__ = ["fit_grid", "num_points_for_nfe", "dp_select", "gits_costs", "teacher_trajectory", "FitInfo",
           "save_grid", "load_grid", "SavedGrid", "schedule_description", "recorded_schedule", "ALGORITHMS", "FORMAT"]

#: the fitting algorithms of :func:`fit_grid`
ALGORITHMS = ("dp", "gradient")

#: the ``format`` field of a file written by :func:`save_grid`
FORMAT = "sdevp_jax.fitted_grid"
_VERSION = 1
#: the version of a file that records model times (``save_grid(..., model_times=...)``): readers of version 1
#: alone refuse it rather than run its grid without them; :func:`load_grid` reads both
_VERSION_MODEL_TIMES = 2


class FitInfo(NamedTuple):
    """What :func:`fit_grid` returns besides the grid (with ``return_info=True``).

    Attributes:
      loss: the fitted grid's mean squared error to the teacher on the fitting batch (the
        student's output minus the teacher's, squared, averaged over samples and dimensions).
      initial_loss: the same for the grid the fit started from (``algorithm="gradient"``), or
        for the ``"logsnr"`` grid of as many points (``algorithm="dp"``), for comparison.
      history: the loss at each iteration of the gradient descent (empty for ``"dp"``).
      num_points: ``N``, the fitted grid's length.
      nfe: the solver's network calls on it.
      teacher_nfe: the network calls of the teacher run (per sample).
      dp_cost: the dynamic programme's optimal cost (``"dp"``; ``nan`` otherwise).
      model_times: with ``fit_model_times=True``, the fitted model time of each grid point; ``None`` otherwise.
    """

    loss: float
    initial_loss: float
    history: np.ndarray
    num_points: int
    nfe: int
    teacher_nfe: int
    dp_cost: float
    model_times: Optional[np.ndarray] = None


def _solver(method, options: dict) -> solvers.Solver:
    """The student solver: a fixed-grid deterministic method (``kind == "ode"``, not the adaptive one)."""
    if isinstance(method, solvers.Solver):
        if options:
            raise ValueError(f"method is a solver object: give its options to it, not {sorted(options)}")
        solver = method
    else:
        if not isinstance(method, str):
            raise TypeError(f"method must be a registered method name or a sdevp_jax.solvers.Solver, got {method!r}")
        solver = solvers.make(method, **options)
    fixed = [n for n, c in solvers.REGISTRY.items() if c.kind == "ode" and n != "adaptive"]
    if solver.kind != "ode" or solver.name == "adaptive" or getattr(solver, "eta", 0.0) != 0.0:
        raise ValueError(f"fit_grid fits the grid of a deterministic fixed-grid solver, one of {fixed} (ddim with "
                         f"eta = 0); got method {solver.name!r}")
    return solver.check()


def num_points_for_nfe(method, nfe: int, **options) -> int:
    """The grid length ``N`` on which ``method`` (with ``options``) makes exactly ``nfe`` network calls.

    The grid solvers with ``final_sigmas_type="zero"`` (their default: a last call at the
    last grid time, whose data prediction is the output) make ``N`` calls on ``N`` points;
    with ``"last"`` ``N - 1``; ``heun`` ``2 (N - 1)``; ``euler`` and ``dpm_solver`` ``N - 1``
    (each solver's :meth:`~sdevp_jax.solvers.Solver.nfe`).

    Raises:
      ValueError: no grid gives ``nfe`` calls (e.g. an odd ``nfe`` for ``heun``), or ``N < 2``.

    Examples:
      >>> sv.fitting.num_points_for_nfe("dpm_solver_pp", 5)
      5
      >>> sv.fitting.num_points_for_nfe("dpm_solver_pp", 5, final_sigmas_type="last")
      6
      >>> sv.fitting.num_points_for_nfe("heun", 6)
      4
    """
    solver = _solver(method, options)
    nfe = _checks.positive_int("nfe", nfe)
    for n in range(2, 2 * nfe + 3):
        if solver.nfe(n) == nfe:
            return n
    raise ValueError(f"no grid of >= 2 points gives method {solver.name!r} exactly nfe = {nfe} network calls "
                     f"(its calls on N points: {solver.nfe_formula})")


def _ends(state: ScoreSdeVpSchedulerState) -> jax.Array:
    """The fitted grids' end points: the schedule's top and ``sampling_eps`` (those of every continuous spacing)."""
    return grids.continuous_grid(state, 2, "time_uniform")


def _fine_grid(state, fine_points: int, fine_spacing: str) -> jax.Array:
    if fine_spacing not in ("logsnr", "karras", "time_uniform", "time_quadratic"):
        raise ValueError(f"fine_spacing must be one of 'logsnr', 'karras', 'time_uniform', 'time_quadratic', "
                         f"got {fine_spacing!r}")
    return grids.continuous_grid(state, fine_points, fine_spacing)


def _with_grid(state: ScoreSdeVpSchedulerState, grid) -> ScoreSdeVpSchedulerState:
    """``state`` on ``grid`` (traced or concrete), as ``set_timesteps(state, timesteps=grid)`` records it."""
    return state.replace(timesteps=grid, spacing="custom", spacing_given=True)


def _x0_at(state, model_fn, x, t, dtype, cond):
    """The model's data prediction at time ``t`` (0-d), in ``dtype``: what a grid solver's last call returns."""
    model = Denoiser(state, model_fn, x.dtype, dtype, cond)
    schedule = state.schedule.cast(dtype)
    alpha, sigma = schedule.alpha_sigma(t)
    return model.eps_x0(x.astype(dtype), t, alpha, sigma)


def teacher_trajectory(state, model_fn, x_T, times, *, teacher: str = "heun", teacher_substeps: int = 4,
                       dtype: DTypeLike = jnp.float32, cond=None):
    r"""The teacher's solution from ``x_T`` at each of ``times`` (decreasing, ``times[0]`` the start).

    Between consecutive times the teacher (a method of :func:`~sdevp_jax.sample_ode`) takes
    ``teacher_substeps`` steps uniform in log-SNR (a self-starting method such as ``heun``,
    the default, therefore runs the same steps as through the whole refined grid at once;
    a multistep method restarts at each of ``times``).

    Returns:
      ``(xs, nfe)``: the trajectory, shape ``(len(times), *x_T.shape)`` (``xs[0]`` is ``x_T``),
      in ``dtype``; ``nfe`` the teacher's network calls per sample.

    Examples:
      >>> state = sv.create_state()
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> times = sv.set_timesteps(state, 5, spacing="logsnr").timesteps
      >>> xs, nfe = sv.fitting.teacher_trajectory(state, model_fn, jnp.ones((3, 2)), times)
      >>> xs.shape, nfe
      ((5, 3, 2), 32)
    """
    substeps = _checks.positive_int("teacher_substeps", teacher_substeps)
    times = jnp.asarray(times)
    schedule = state.schedule.cast(times.dtype)
    lam = schedule.log_snr(times)
    frac = jnp.linspace(0.0, 1.0, substeps + 1, dtype=times.dtype)
    seg = schedule.t_from_log_snr(lam[:-1, None] + (lam[1:] - lam[:-1])[:, None] * frac[None, :])
    seg = seg.at[:, 0].set(times[:-1]).at[:, -1].set(times[1:])  # the segments' end points exactly
    shape = tuple(x_T.shape)
    key = jax.random.key(0)  # unused by a deterministic teacher: x_init gives x_T

    def one(x, grid):
        x, info = sample_ode(_with_grid(state, grid), model_fn, key, shape, method=teacher, x_init=x, dtype=dtype,
                             final_sigmas_type="last", cond=cond, return_info=True)
        return x, info.nfe

    one = jax.jit(one)
    xs, nfe = [x_T.astype(dtype)], 0
    for i in range(seg.shape[0]):
        x, calls = one(xs[-1], seg[i])
        xs.append(x)
        nfe += int(calls)
    return jnp.stack(xs), nfe


def gits_costs(state, model_fn, xs, times, *, dtype: DTypeLike = jnp.float32, cond=None, metric: str = "l2"):
    r"""GITS's cost matrix: ``c[i, j]`` the batch-mean distance of one DDIM step from the teacher's
    ``xs[i]`` at ``times[i]`` to ``times[j]`` from the teacher's ``xs[j]`` (``j > i``; ``inf`` elsewhere).

    The step is the first-order exponential integrator (DDIM with :math:`\eta = 0`, Song et al.
    2021, eq. 12): :math:`x_j = \alpha_j \hat x_0(x_i, t_i) + \sigma_j \hat\epsilon(x_i, t_i)`,
    one model call at each fine time. ``metric``: ``"l2"`` (the Euclidean norm of each sample's
    difference, the authors' ``l2``) or ``"l1"``. The distance is taken between VP samples
    :math:`x`, the space the solvers and the gradient fit's loss use; the authors' code runs in
    EDM's variance-exploding form, where the sample is :math:`x/\alpha`, so their cost of a step to
    :math:`t_j` is this one divided by :math:`\alpha_j`.

    Returns:
      ``(costs, nfe)``: an ``(M, M)`` float64 NumPy array and the model calls made (``M - 1``).
    """
    if metric not in ("l2", "l1"):
        raise ValueError(f"metric must be 'l2' or 'l1', got {metric!r}")
    times = jnp.asarray(times, dtype)
    schedule = state.schedule.cast(dtype)
    alpha, sigma = schedule.alpha_sigma(times)
    m = times.shape[0]
    xs = jnp.asarray(xs).astype(dtype)

    @jax.jit
    def row(x, t, xs):
        eps, x0 = _x0_at(state, model_fn, x, t, dtype, cond)
        shape = (m,) + (1,) * x.ndim
        step = alpha.reshape(shape) * x0[None] + sigma.reshape(shape) * eps[None]  # to every fine time
        diff = (step - xs).reshape(m, x.shape[0], -1)
        dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1)) if metric == "l2" else jnp.sum(jnp.abs(diff), axis=-1)
        return jnp.mean(dist, axis=1)

    costs = np.full((m, m), np.inf)
    for i in range(m - 1):
        c = np.asarray(row(xs[i], times[i], xs), np.float64)
        costs[i, i + 1:] = c[i + 1:]
    return costs, m - 1


def dp_select(costs, num_steps: int, coeff: float = 1.0) -> tuple[np.ndarray, float]:
    r"""The path of exactly ``num_steps`` steps from fine point 0 to fine point ``M - 1`` of least weighted cost.

    With ``V_1(i) = c[i, M-1]`` and ``V_k(i) = min_{i<j<M-1} c[i, j] + coeff * V_{k-1}(j)``, the
    path's cost is ``V_K(0) = c_1 + coeff c_2 + coeff^2 c_3 + ...`` over its steps in order
    (GITS's recursion, Chen et al. 2024; ``coeff > 1`` weighs the later, low-noise steps more).
    Ties go to the smallest index.

    Args:
      costs: ``(M, M)``, ``costs[i, j]`` for ``j > i`` (the rest is ignored).
      num_steps: ``K``, an int in ``[1, M - 1]``.
      coeff: the weight > 0.

    Returns:
      ``(indices, cost)``: ``K + 1`` increasing fine-grid indices from 0 to ``M - 1``, and ``V_K(0)``.

    Examples:
      >>> c = np.array([[0, 1, 5, 9], [0, 0, 1, 6], [0, 0, 0, 1], [0, 0, 0, 0]], float)
      >>> idx, cost = sv.fitting.dp_select(c, 2)   # 0 -> 1 -> 3 costs 1 + 6, 0 -> 2 -> 3 costs 5 + 1
      >>> idx.tolist(), cost
      ([0, 2, 3], 6.0)
      >>> sv.fitting.dp_select(c, 3)[0].tolist()   # three steps: every point
      [0, 1, 2, 3]
    """
    c = np.asarray(costs, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"costs must be a square (M, M) array with M >= 2, got shape {c.shape}")
    m = c.shape[0]
    k_total = _checks.positive_int("num_steps", num_steps)
    if k_total > m - 1:
        raise ValueError(f"num_steps must be in [1, {m - 1}] (the fine grid has {m} points), got {k_total}")
    coeff = float(_checks.positive_real("coeff", coeff))
    upper = np.triu(np.ones((m, m), bool), 1)
    c = np.where(upper, c, np.inf)
    value = np.full((k_total + 1, m), np.inf)
    choice = np.zeros((k_total + 1, m), np.int64)
    value[1] = c[:, m - 1]
    value[1, m - 1] = np.inf
    for k in range(2, k_total + 1):
        total = c[:, :m - 1] + coeff * value[k - 1][None, :m - 1]  # from i through j < M - 1
        choice[k] = np.argmin(total, axis=1)
        value[k] = total[np.arange(m), choice[k]]
    path, i = [0], 0
    for k in range(k_total, 1, -1):
        i = int(choice[k, i])
        path.append(i)
    path.append(m - 1)
    return np.asarray(path, np.int64), float(value[k_total, 0])


def _theta_of(lam: jax.Array) -> jax.Array:
    """The free parameters of a grid given by its log-SNRs (increasing): the logs of its increments' shares."""
    inc = jnp.diff(lam)
    return jnp.log(inc / jnp.sum(inc))


def _grid_of(theta: jax.Array, ends: jax.Array, schedule) -> jax.Array:
    """The grid of ``theta``: the end points exactly, the interior from the cumulative softmax in log-SNR."""
    lam0, lam1 = schedule.log_snr(ends[0]), schedule.log_snr(ends[1])
    frac = jnp.cumsum(jax.nn.softmax(theta))[:-1]
    inner = schedule.t_from_log_snr(lam0 + (lam1 - lam0) * frac)
    return jnp.concatenate([ends[:1], inner, ends[1:]])


def fit_grid(
    state: ScoreSdeVpSchedulerState,
    model_fn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    method: Union[str, solvers.Solver],
    nfe: int,
    algorithm: str = "dp",
    cond=None,
    dtype: DTypeLike = jnp.float32,
    teacher: str = "heun",
    teacher_substeps: int = 4,
    fine_points: int = 61,
    fine_spacing: str = "karras",
    coeff: float = 1.15,
    metric: str = "l2",
    init: Union[str, Any] = "logsnr",
    iterations: int = 200,
    learning_rate: float = 0.05,
    optimizer: Any = None,
    checkpoint: bool = False,
    free_end: bool = False,
    fit_model_times: bool = False,
    return_info: bool = False,
    **options,
):
    r"""A grid of times for ``method`` at ``nfe`` network calls, fitted to ``model_fn`` (see the module docstring).

    The batch :math:`x_T` is drawn from ``key`` as :func:`~sdevp_jax.sample_ode` draws it
    (sample ``b`` from ``fold_in(key, b)``); the teacher solves the same model's ODE from it
    through ``fine_points`` times of ``fine_spacing`` (between the schedule's top and
    ``state.sampling_eps``, the fitted grid's fixed end points) with ``teacher_substeps``
    ``teacher`` steps between consecutive ones. The teacher's output is its last point, or,
    when the student ends with a call at the last grid time (``final_sigmas_type="zero"``,
    the grid solvers' default), the model's data prediction there, which is what the
    student returns.

    NFE: the grid has ``N = num_points_for_nfe(method, nfe, **options)`` points: ``N = nfe``
    for the grid solvers with ``final_sigmas_type="zero"`` (``N - 1`` steps and the last
    call), ``nfe + 1`` with ``"last"``, ``nfe / 2 + 1`` for ``heun``.

    Args:
      state: a state from :func:`~sdevp_jax.create_state` (its timesteps, if any, are not used).
      model_fn: ``(x, t) -> prediction`` as for :func:`~sdevp_jax.sample` (not a stateful guided model).
      key: draws the fitting batch :math:`x_T`.
      shape: ``(batch, *event)`` of the fitting batch.
      method: the student, a deterministic fixed-grid method (``sv.list_methods("ode")`` but
        ``adaptive``) or a solver object; ``**options`` are its options (``order=3``, ...).
      nfe: the student's network calls per sample.
      algorithm: ``"dp"`` (GITS) or ``"gradient"``.
      cond: the batch's conditions, as for :func:`~sdevp_jax.sample`.
      dtype: the samples' dtype (float32 by default; float64 under ``jax_enable_x64``).
      teacher: the teacher's method (a :func:`~sdevp_jax.sample_ode` method, self-starting ones best).
      teacher_substeps: the teacher's steps between consecutive fine times, an int >= 1.
      fine_points: ``M``, the fine grid's length, an int >= N (GITS's default: 61).
      fine_spacing: the fine grid's spacing: ``"karras"`` (default; the authors' fine grid is
        EDM's :math:`\rho = 7` one), ``"logsnr"``, ``"time_uniform"`` or ``"time_quadratic"``.
      coeff: ``"dp"``: the weight of :func:`dp_select` (the authors' sampling scripts use 1.15).
      metric: ``"dp"``: the step cost's distance, ``"l2"`` or ``"l1"`` (:func:`gits_costs`).
      init: ``"gradient"``: the starting grid, a spacing name of :func:`~sdevp_jax.set_timesteps`
        (``"logsnr"`` by default, ``"karras"``, ``"time_quadratic"``, ``"time_uniform"``),
        ``"dp"`` (the GITS grid, with the ``"dp"`` options above) or an array of ``N`` times
        with this state's end points.
      iterations: ``"gradient"``: optimiser steps, an int >= 1.
      learning_rate: ``"gradient"``: Adam's step size on the log-increments :math:`\theta`.
      optimizer: ``"gradient"``: an optax ``GradientTransformation`` instead of ``optax.adam(learning_rate)``.
      checkpoint: ``"gradient"``: wrap the model in ``jax.checkpoint`` (its activations are
        recomputed in the backward pass instead of stored per step).
      free_end: ``"gradient"`` with a solver that ends with a call at the last grid time
        (``final_sigmas_type="zero"``): fit the last time too, anywhere above ``sampling_eps``
        (its log-SNR is a sigmoid of one more parameter), since the output is the data
        prediction there; ``False`` (default): the last time is ``sampling_eps``.
      fit_model_times: ``"gradient"`` with a solver that calls the model at grid points alone
        (``Solver.model_at_grid_points``): fit a model time per grid point too (a shift in
        log-SNR from the point's time, starting at 0; see the module docstring).
      return_info: also return a :class:`FitInfo`.

    Returns:
      The grid, a float64 NumPy array of ``N`` strictly decreasing times, for
      ``sv.set_timesteps(state, timesteps=grid)`` (or ``(grid, info)``). The ``"gradient"``
      fit returns the iterate of least loss on the fitting batch. With ``fit_model_times=True``,
      ``(grid, model_times)`` (or ``(grid, model_times, info)``): the model times, float64,
      one per grid point, for ``sv.set_timesteps(state, timesteps=grid, model_times=model_times)``.

    Examples:
      >>> state = sv.create_state()
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> grid = sv.fit_grid(state, model_fn, jax.random.key(0), (64, 2), method="dpm_solver_pp", nfe=5,
      ...                    fine_points=21, teacher_substeps=2)
      >>> grid.shape, bool(np.all(np.diff(grid) < 0))
      ((5,), True)
      >>> x = sv.sample_ode(sv.set_timesteps(state, timesteps=grid), model_fn, jax.random.key(1), (4, 2),
      ...                   method="dpm_solver_pp")
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    solver = _solver(method, options)
    n = num_points_for_nfe(solver, nfe)
    if is_stateful(model_fn):
        raise ValueError(f"{type(model_fn).__name__} keeps memory across a run's calls; fit_grid evaluates the "
                         f"model outside one run (the teacher's segments, the DP's steps): pass a stateless model")
    if checkpoint and isinstance(model_fn, GuidedModel):
        raise ValueError("checkpoint=True wraps a plain function model_fn in jax.checkpoint; got a guided model "
                         f"{type(model_fn).__name__}")
    m = _checks.positive_int("fine_points", fine_points)
    init_dp = isinstance(init, str) and init == "dp"
    if algorithm == "dp" or init_dp:
        if m < n:
            raise ValueError(f"fine_points must be >= the grid's {n} points, got {m}")
    iterations = _checks.positive_int("iterations", iterations)
    if fit_model_times and algorithm != "gradient":
        raise ValueError("fit_model_times=True fits the model times by gradient descent: algorithm='gradient'")
    if fit_model_times and not solver.model_at_grid_points:
        ready = [name for name, c in solvers.REGISTRY.items() if c.model_at_grid_points and c.kind == "ode"]
        raise ValueError(f"fit_model_times=True fits one model time per grid point, for a solver that calls the model "
                         f"at grid points alone, one of {ready}; method {solver.name!r} calls it between grid points")
    if free_end and not (algorithm == "gradient" and getattr(solver, "final_zero", False)):
        raise ValueError("free_end=True fits the last time of algorithm='gradient' for a solver whose output is the "
                         "data prediction at the last grid time (final_sigmas_type='zero')")
    fine = _fine_grid(state, m, fine_spacing)
    if algorithm == "gradient" and not init_dp:
        start = _initial_grid(state, n, init, None)
    shape, dtype = check_common(_with_grid(state, _ends(state)), model_fn, key, shape, dtype, "fit_grid", cond)
    # the sampling functions check a concrete grid on the host (state.replace: decreasing, in range; the
    # zero-SNR start) and skip a traced one: the parametrisation keeps every iterate decreasing between the
    # fixed ends, and the ends are checked here, concretely
    check_zero_snr_start(solver, state, _ends(state))
    if getattr(state.schedule, "zero_terminal_snr", False):
        raise ValueError("fit_grid places the grid in log-SNR between the schedule's top and sampling_eps; a "
                         "zero-terminal-SNR schedule's top has log-SNR = -inf: not supported")
    keys = make_sample_keys(key, shape[0], 0)
    x_T = per_sample_normal(keys, 0, shape[1:], _checks.compute_dtype(dtype)).astype(dtype)
    work = _checks.compute_dtype(dtype)

    xs, teacher_nfe = teacher_trajectory(state, model_fn, x_T, fine, teacher=teacher,
                                         teacher_substeps=teacher_substeps, dtype=dtype, cond=cond)
    final_zero = bool(getattr(solver, "final_zero", False))
    target = xs[-1]
    if final_zero:
        target = _x0_at(state, model_fn, xs[-1], fine[-1].astype(work), work, cond)[1].astype(dtype)
        teacher_nfe += 1

    run_model = jax.checkpoint(model_fn) if checkpoint else model_fn

    def student(grid, x, model_times=None):
        on_grid = _with_grid(state, grid)
        if model_times is not None:
            on_grid = on_grid.replace(model_times=model_times)
        return sample(on_grid, run_model, key, shape, solver=solver, x_init=x, dtype=dtype, cond=cond, unroll=1)

    def loss_of_grid(grid, x, y, model_times=None):
        return jnp.mean(jnp.square((student(grid, x, model_times) - y).astype(work)))

    loss_jit = jax.jit(loss_of_grid)
    dp_cost = math.nan
    dp_grid = None
    if algorithm == "dp" or init_dp:
        costs, _ = gits_costs(state, model_fn, xs, fine, dtype=work, cond=cond, metric=metric)
        idx, dp_cost = dp_select(costs, n - 1, coeff)
        dp_grid = np.asarray(fine, np.float64)[idx]
    history = np.zeros((0,))
    model_times = None
    if algorithm == "dp":
        grid = dp_grid
        start = np.asarray(grids.continuous_grid(state, n, "logsnr"), np.float64)
    else:
        if init_dp:
            start = dp_grid
        grid, model_times, history = _descend(state, loss_jit, loss_of_grid, start, x_T, target, iterations,
                                              learning_rate, optimizer, free_end, fit_model_times)
    grid = np.asarray(grid, np.float64)
    if grid.shape[0] >= 2 and not np.all(np.diff(grid) < 0):  # cannot happen for the parametrisation; checked
        raise FloatingPointError(f"the fitted grid is not strictly decreasing in float64: {grid}")
    if not return_info:
        return grid if model_times is None else (grid, model_times)
    dt = _checks.default_float()  # the grids' dtype, as set_timesteps stores them
    given = None if model_times is None else jnp.asarray(model_times, dt)
    loss = float(loss_jit(jnp.asarray(grid, dt), x_T, target, given))
    initial = float(loss_jit(jnp.asarray(start, dt), x_T, target))
    info = FitInfo(loss, initial, history, n, solver.nfe(n), teacher_nfe, dp_cost, model_times)
    return (grid, info) if model_times is None else (grid, model_times, info)


def _initial_grid(state, n: int, init, dp_grid) -> np.ndarray:
    if isinstance(init, str):
        if init == "dp":
            return dp_grid
        if init not in ("logsnr", "karras", "time_uniform", "time_quadratic"):
            raise ValueError(f"init must be 'logsnr', 'karras', 'time_uniform', 'time_quadratic', 'dp' or an "
                             f"array of {n} times, got {init!r}")
        return np.asarray(grids.continuous_grid(state, n, init), np.float64)
    start = np.asarray(init, np.float64)
    ends = np.asarray(_ends(state), np.float64)
    if start.shape != (n,):
        raise ValueError(f"init must have shape ({n},) (the grid of nfe's points), got {start.shape}")
    if not (np.all(np.diff(start) < 0) and np.allclose(start[[0, -1]], ends, rtol=1e-6, atol=0.0)):
        raise ValueError(f"init must be strictly decreasing from {ends[0]} to {ends[1]} (the fitted grid's ends), "
                         f"got {start}")
    return start


def _descend(state, loss_jit, loss_of_grid, start, x_T, target, iterations, learning_rate, optimizer,
             free_end=False, fit_model_times=False):
    """Adam on the log-increments of the grid in log-SNR (and, with ``free_end``, on the last time's place; with
    ``fit_model_times``, on the model times' log-SNR shifts); returns the iterate of least loss (its grid, its
    model times or ``None``) and the loss history."""
    try:
        import optax
    except ImportError as err:  # pragma: no cover - optax is in the test and docs extras
        raise ImportError("algorithm='gradient' needs optax (pip install 'sdevp-jax[fit]' or optax)") from err
    if optimizer is None:
        optimizer = optax.adam(_checks.positive_real("learning_rate", learning_rate))
    dt = _checks.default_float()
    schedule = state.schedule.cast(dt)
    ends = jnp.asarray(start[[0, -1]], dt)
    lam = schedule.log_snr(jnp.asarray(start, dt))
    params = {"theta": _theta_of(lam)}
    if free_end:
        # the last time's log-SNR lam_end = lam_hi - (lam_hi - lam_0) sigmoid(phi), below the fixed end's lam_hi;
        # phi = -7 starts it 0.09 % of the range above the fixed end
        params["end"] = jnp.asarray(-7.0, dt)
    if fit_model_times:
        params["shift"] = jnp.zeros(lam.shape, dt)

    def grid_of(params):
        if not free_end:
            return _grid_of(params["theta"], ends, schedule)
        lam0, lam_hi = schedule.log_snr(ends[0]), schedule.log_snr(ends[1])
        last = schedule.t_from_log_snr(lam_hi - (lam_hi - lam0) * jax.nn.sigmoid(params["end"]))
        return _grid_of(params["theta"], jnp.stack([ends[0], last]), schedule)

    def times_of(params, grid):
        return _model_times_of(params["shift"], grid, ends, schedule) if fit_model_times else None

    def loss_of_params(params, x, y):
        grid = grid_of(params)
        return loss_of_grid(grid, x, y, times_of(params, grid))

    @jax.jit
    def update(params, opt_state, x, y):
        loss, grad = jax.value_and_grad(loss_of_params)(params, x, y)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 counts
            updates, opt_state = optimizer.update(grad, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, loss

    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    best, best_loss, history = params, math.inf, []
    for _ in range(iterations):
        new, opt_state, loss = update(params, opt_state, x_T, target)
        loss = float(loss)
        history.append(loss)
        if loss < best_loss:  # the loss is that of params, before the update
            best, best_loss = params, loss
        params = new
    last = float(loss_jit(grid_of(params), x_T, target, times_of(params, grid_of(params))))
    history.append(last)
    if last < best_loss:
        best = params
    grid = grid_of(best)
    model_times = None if not fit_model_times else np.asarray(times_of(best, grid), np.float64)
    return np.asarray(grid, np.float64), model_times, np.asarray(history)


def _model_times_of(shift: jax.Array, grid: jax.Array, ends: jax.Array, schedule) -> jax.Array:
    r"""The model times of ``grid`` shifted by ``shift`` in log-SNR: :math:`s_k = t_k + (t(\lambda_k + \delta_k)
    - t(\lambda_k))`, the shifted log-SNR clipped to that of ``ends``; ``shift = 0`` gives ``grid`` bitwise."""
    lam = schedule.log_snr(grid)
    lo, hi = schedule.log_snr(ends[0]), schedule.log_snr(ends[1])
    return grid + (schedule.t_from_log_snr(jnp.clip(lam + shift, lo, hi)) - schedule.t_from_log_snr(lam))

# ---------------------------------------------------------------------------------------------- saving and loading


class SavedGrid(NamedTuple):
    """A grid file's contents (:func:`load_grid`).

    Attributes:
      timesteps: the grid, float64, strictly decreasing.
      method: the solver's registered name.
      options: the solver's options that differ from its defaults (``sv.solvers.make(method, **options)``
        rebuilds it).
      nfe: the solver's network calls on the grid.
      schedule: the schedule's description (its class and parameters, ``sampling_eps``,
        ``prediction_type``), as :func:`schedule_description` writes it.
      model: the model identity string the user gave.
      extra: any further fields the user gave to :func:`save_grid` (``metadata``).
      model_times: the model time of each grid point (``fit_grid(..., fit_model_times=True)``), float64, or
        ``None`` where the file records none: ``sv.set_timesteps(state, timesteps=saved.timesteps,
        model_times=saved.model_times)`` applies them.
    """

    timesteps: np.ndarray
    method: str
    options: dict
    nfe: int
    schedule: dict
    model: str
    extra: dict
    model_times: Optional[np.ndarray] = None


def schedule_description(state: ScoreSdeVpSchedulerState) -> dict:
    """The state's schedule as JSON-able fields: its class, each parameter (a number as a float, a table such
    as a discrete schedule's knots by the SHA-256 digest of its float64 bytes), ``sampling_eps`` and
    ``prediction_type``."""
    import dataclasses
    import hashlib

    schedule = state.schedule
    out: dict = {"class": type(schedule).__name__}
    for field in dataclasses.fields(schedule):
        value = getattr(schedule, field.name)
        if isinstance(value, (bool, int, str)):
            out[field.name] = value
            continue
        data = np.asarray(value, np.float64)
        if data.ndim == 0:  # before ascontiguousarray, which makes a 0-d array 1-d
            out[field.name] = float(data)
        else:
            out[field.name + "_sha256"] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    out["sampling_eps"] = float(np.asarray(state.sampling_eps))
    out["prediction_type"] = state.prediction_type
    return out


def _jsonable(value):
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    array = np.asarray(value)
    if array.ndim == 0 and np.issubdtype(array.dtype, np.floating):
        return float(array)
    raise TypeError(f"cannot write the option value {value!r} to JSON")


def _given_options(solver: solvers.Solver) -> dict:
    """The solver's options that differ from its class's defaults (``sv.solvers.make(name, **them)`` rebuilds it)."""
    fields = solvers.option_fields(type(solver))
    out = {}
    for name, field in fields.items():
        value = getattr(solver, name)
        if not (isinstance(value, type(field.default)) and value == field.default):
            out[name] = _jsonable(value)
    return out


def save_grid(path, timesteps, *, state: ScoreSdeVpSchedulerState, method: Union[str, solvers.Solver], model: str,
              options: Optional[dict] = None, metadata: Optional[dict] = None, overwrite: bool = False,
              model_times=None) -> Path:
    """Write a fitted grid and what it was fitted for to the JSON file ``path``, atomically.

    Records the grid (each float64 time exactly: JSON's shortest round-trip decimal), the
    solver's name and its options that differ from the defaults, its NFE on the grid, the schedule
    (:func:`schedule_description`) and ``model``, a string the user chooses to name the model
    (e.g. a checkpoint's name and hash). An existing file is an error unless ``overwrite=True``.

    Args:
      path: the file to write.
      timesteps: the grid (from :func:`fit_grid`), strictly decreasing.
      state: the state the grid was fitted on (its schedule is recorded).
      method: the solver's name or object; ``options`` its options (a name's defaults otherwise).
      model: the model's identity, a non-empty string.
      metadata: further JSON-able fields to keep (returned as :attr:`SavedGrid.extra`).
      overwrite: replace an existing file.
      model_times: the grid's model times (:func:`fit_grid` with ``fit_model_times=True``), one per point, for a
        solver that applies them (``Solver.model_at_grid_points``); recorded exactly, in a file of version 2
        (files without them stay version 1).

    Examples:
      >>> import tempfile, os
      >>> path = os.path.join(tempfile.mkdtemp(), "grid.json")
      >>> state = sv.create_state()
      >>> grid = np.asarray(sv.set_timesteps(state, 5, spacing="logsnr").timesteps, np.float64)
      >>> _ = sv.fitting.save_grid(path, grid, state=state, method="dpm_solver_pp", model="mixture-2d")
      >>> saved = sv.fitting.load_grid(path)
      >>> saved.method, saved.nfe, bool(np.array_equal(saved.timesteps, grid))
      ('dpm_solver_pp', 5, True)
    """
    solver = _solver(method, dict(options or {}))
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a non-empty string naming the model, got {model!r}")
    grid = np.asarray(timesteps, np.float64)
    if grid.ndim != 1 or grid.shape[0] < 2 or not np.all(np.isfinite(grid)) or not np.all(np.diff(grid) < 0):
        raise ValueError(f"timesteps must be a strictly decreasing 1-D array of >= 2 finite times, got {grid}")
    grids.custom_grid(state, grid)  # inside the schedule's range, as set_timesteps would check
    shifted = None
    if model_times is not None:
        if not solver.model_at_grid_points:
            raise ValueError(f"model_times apply to a solver that calls the model at grid points alone "
                             f"(Solver.model_at_grid_points); method {solver.name!r} does not")
        shifted = np.asarray(model_times, np.float64)
        if shifted.shape != grid.shape or not np.all(np.isfinite(shifted)):
            raise ValueError(f"model_times must be {grid.shape[0]} finite times, one per grid point, got {shifted}")
        set_timesteps(state, timesteps=grid, model_times=shifted)  # in the schedule's range
    record = {
        "format": FORMAT,
        "version": _VERSION if shifted is None else _VERSION_MODEL_TIMES,
        "timesteps": [float(t) for t in grid],
        "method": solver.name,
        "options": _given_options(solver),
        "nfe": int(solver.nfe(grid.shape[0])),
        "schedule": schedule_description(state),
        "model": model,
        "metadata": dict(metadata or {}),
    }
    if shifted is not None:
        record["model_times"] = [float(t) for t in shifted]
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()), overwrite=bool(overwrite))


def recorded_schedule(recorded: dict, here: dict) -> dict:
    """A grid file's schedule fields, compared with ``here`` (:func:`schedule_description` of a state).

    Files written by sdevp-jax 0.6.0 record a number parameter such as ``beta_min`` as the
    SHA-256 digest of its float64 bytes (key ``beta_min_sha256``) instead of the number;
    where that digest is the one of ``here``'s number, the field is read as that number,
    so those files keep loading on the schedule they were fitted on.
    """
    import hashlib

    out = dict(recorded)
    for key, digest in recorded.items():
        name = key[:-len("_sha256")]
        if key.endswith("_sha256") and isinstance(here.get(name), float) and name not in recorded:
            if hashlib.sha256(np.asarray([here[name]], np.float64).tobytes()).hexdigest() == digest:
                del out[key]
                out[name] = here[name]
    return out


def load_grid(path, *, state: Optional[ScoreSdeVpSchedulerState] = None, model: Optional[str] = None) -> SavedGrid:
    """Read a file written by :func:`save_grid`.

    With ``state`` the recorded schedule must equal the state's (a ValueError names the
    differing fields); with ``model`` the recorded model identity must equal it.
    ``sv.set_timesteps(state, timesteps=saved.timesteps)`` then runs the grid with
    ``sv.sample_ode(..., method=saved.method, **saved.options)`` (the options that differ
    from the method's defaults suffice); a file with model times (version 2) needs
    ``sv.set_timesteps(state, timesteps=saved.timesteps, model_times=saved.model_times)``.
    """
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fitted grid file (format {FORMAT!r})")
    version = record.get("version")
    if version not in (_VERSION, _VERSION_MODEL_TIMES):
        raise ValueError(f"{path}: version {version!r} is not one this package reads ({_VERSION}, "
                         f"{_VERSION_MODEL_TIMES})")
    shifted = record.get("model_times")
    if (shifted is not None) != (version == _VERSION_MODEL_TIMES):
        raise ValueError(f"{path}: a file of version {version} must {'' if version == _VERSION_MODEL_TIMES else 'not '}"
                         f"record model_times")
    saved = SavedGrid(np.asarray(record["timesteps"], np.float64), record["method"], dict(record["options"]),
                      int(record["nfe"]), dict(record["schedule"]), record["model"], dict(record.get("metadata", {})),
                      None if shifted is None else np.asarray(shifted, np.float64))
    if saved.model_times is not None and saved.model_times.shape != saved.timesteps.shape:
        raise ValueError(f"{path}: model_times must have one time per grid point ({saved.timesteps.shape[0]}), "
                         f"got {saved.model_times.shape}")
    if state is not None:
        here = schedule_description(state)
        theirs = recorded_schedule(saved.schedule, here)
        differ = sorted(k for k in set(here) | set(theirs) if here.get(k) != theirs.get(k))
        if differ:
            raise ValueError(f"{path} was fitted on another schedule: {', '.join(differ)} differ "
                             f"(file {[theirs.get(k) for k in differ]}, state {[here.get(k) for k in differ]})")
    if model is not None and model != saved.model:
        raise ValueError(f"{path} was fitted for model {saved.model!r}, not {model!r}")
    return saved
