r"""One solver step at a time, the model's output given: the per-step form of :func:`sdevp_jax.loops.integrate`.

:func:`~sdevp_jax.sample_ode` calls the model inside its loop. A caller that owns the loop and calls
the model itself -- diffusers' scheduler API, ``scheduler.step(state, model_output, timestep, sample)``
-- needs the solver the other way round: given the model's output at the current grid point, the next
point. A :class:`Stepper` is that: a solver on a fixed grid (the schedule's coefficients computed once, on
the host, as :func:`~sdevp_jax.loops.run` computes them), whose :meth:`Stepper.step` runs the solver's
``step`` with its one model call answered by the given output, and, at the call after the last interval,
the solver's ``finish`` (the last model call of the grid solvers' step to :math:`\sigma = 0`). The
``k``-th call (``k < num_calls``) takes the model's output at :meth:`Stepper.model_time` ``(k)``, so a
loop of ``num_calls`` model calls and steps computes what :func:`~sdevp_jax.sample_ode` computes with
the same model, grid and solver (``tests/test_stepper.py`` compares them).

Only solvers that call the model once per step (and at most once in ``finish``) can be stepped so; the
others (Heun, KDPM2, PNDM's warm-up, the predictor-corrector pairs, the adaptive solver) are
refused by name (:class:`sdevp_jax.compat.PNDMStepper` steps PNDM, its warm-up's calls answered one at a time). The reverse-SDE predictors (``ancestral``: DDPM's step) step too; their state is the last
update's noise-free mean (what :func:`~sdevp_jax.sample` returns with ``denoise=True``). Stochastic solvers draw
from per-sample keys (:func:`~sdevp_jax.loops.make_sample_keys`)
at the slots :func:`~sdevp_jax.loops.integrate` gives step ``k``, so their noise is the loop's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from . import solvers
from .denoiser import Denoiser, model_time, output_shape
from .loops import check_zero_snr_start, make_sample_keys
from .scheduler import ScoreSdeVpSchedulerState, require_timesteps
from .solvers import Grid, GridSolver, Noise, Solver
from .solvers.adaptive import Adaptive

__all__ = ["Stepper", "make_sample_keys", "model_calls", "solver_grid"]


def _given(state, output, sample_dtype, dtype) -> Denoiser:
    """A model boundary whose model returns ``output`` whatever it is asked (the caller's model call)."""
    return Denoiser(state, lambda x, t: output, sample_dtype, dtype)


def model_calls(solver: Solver, state: ScoreSdeVpSchedulerState, dtype=jnp.float32) -> tuple[int, int]:
    """``(per_step, in_finish)``: the model calls ``solver``'s ``step`` and ``finish`` make, counted by tracing
    them (abstractly, on a one-element sample) on ``state``'s grid; a call inside both branches of a
    ``lax.cond`` counts twice. The counting model returns the shape the state's model returns (twice the
    channels for a learned variance, :func:`~sdevp_jax.denoiser.output_shape`)."""
    count = [0]

    def counting(x, t):
        count[0] += 1
        return jnp.zeros(output_shape(state, x.shape), x.dtype)

    with jax.ensure_compile_time_eval():
        times = solver.times(state, dtype)
        grid = Grid.build(state.schedule.cast(dtype), times, solver.coefficients)
    model = Denoiser(state, counting, dtype, dtype)
    x = jax.ShapeDtypeStruct((1, 1), dtype)
    keys = make_sample_keys(jax.random.key(0), 1, 0)

    def one_step(x):
        noise = Noise(keys, jnp.int32(1), (1,), dtype)
        return solver.step(model, x, solver.init(x, grid), grid, jnp.int32(0), noise)[0]

    jax.eval_shape(one_step, x)
    per_step, count[0] = count[0], 0
    jax.eval_shape(lambda x: solver.finish(model, x, solver.init(x, grid), grid)[0], x)
    return per_step, count[0]


def solver_grid(solver: Solver, state: ScoreSdeVpSchedulerState, dtype) -> Grid:
    """``solver``'s grid on ``state``'s timesteps, its coefficients computed once in ``dtype`` (concrete, on the
    host, as :func:`~sdevp_jax.loops.run` computes them); a zero-SNR start the solver cannot take is refused."""
    with jax.ensure_compile_time_eval():
        times = solver.times(state, dtype)
        check_zero_snr_start(solver, state, times)
        return Grid.build(state.schedule.cast(dtype), times, solver.coefficients)


@dataclasses.dataclass(frozen=True)
class Stepper:
    r"""``solver`` on ``state``'s grid, stepped one model call at a time (see the module docstring).

    Build it with :meth:`create`. ``num_calls`` is the model calls of the whole run (``solver.nfe``);
    call :meth:`step` with ``k = 0, 1, ..., num_calls - 1`` (``k`` may be traced: a ``lax.fori_loop``
    index), each time with the model's output at ``x`` and :meth:`model_time` ``(k)``.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers("linear")), 10)
      >>> stepper = sv.Stepper.create(state, "dpm_solver_pp")
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> x = jax.random.normal(jax.random.key(0), (4, 2))
      >>> carry = stepper.init(x)
      >>> y = x
      >>> for k in range(stepper.num_calls):
      ...     t = jnp.full((4,), stepper.model_time(k))
      ...     y, carry = stepper.step(carry, model_fn(y, t), y, k)
      >>> ref = sv.sample_ode(state, model_fn, None, (4, 2), x_init=x, method="dpm_solver_pp")
      >>> bool(jnp.allclose(y, ref, rtol=0, atol=1e-6))
      True
    """

    solver: Solver
    state: ScoreSdeVpSchedulerState
    grid: Grid
    dtype: Any
    num_steps: int
    num_calls: int

    @classmethod
    def create(cls, state: ScoreSdeVpSchedulerState, solver: Union[Solver, str], dtype=jnp.float32,
               **options) -> "Stepper":
        """The stepper of ``solver`` (an object, or a registered name made with ``options``) on ``state``'s grid
        (a state after :func:`~sdevp_jax.set_timesteps`), computing in ``dtype``."""
        require_timesteps(state, "Stepper.create")
        if isinstance(solver, str):
            solver = solvers.make(solver, **options)
        elif options:
            raise ValueError(f"options {sorted(options)} apply to a solver given by name, not to a solver object")
        if not isinstance(solver, Solver):
            raise TypeError(f"solver must be a sdevp_jax.solvers.Solver or a registered name, got {type(solver).__name__}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a float dtype, got {jnp.dtype(dtype)}")
        dtype = jnp.dtype(dtype)
        if isinstance(solver, Adaptive) or solver.kind == "corrector":
            raise ValueError(f"solver {solver.name!r} cannot be stepped one model call at a time (it chooses its "
                             f"own steps or corrects at fixed time); pass a fixed-grid solver with one model call "
                             f"per step")
        solver = solver.check()
        per_step, in_finish = model_calls(solver, state, dtype)
        if per_step != 1 or in_finish > 1:
            raise ValueError(f"solver {solver.name!r} calls the model {per_step} times per step (and {in_finish} "
                             f"times after the last): a stepper answers one model call per step; pass a solver "
                             f"with one call per step (ddim, dpm_solver_pp, sde_dpm_solver_pp, unipc, deis, ipndm, "
                             f"lms, euler, euler_ancestral, ...)")
        grid = solver_grid(solver, state, dtype)
        num_steps = solver.num_steps(grid.num_points)
        return cls(solver, state, grid, dtype, num_steps, num_steps + in_finish)

    def init(self, x: jax.Array) -> Any:
        """The solver's state before the first call (its memory, shaped like ``x``)."""
        return self.solver.init(x.astype(self.dtype) if self.solver.in_work_dtype else x, self.grid)

    def time(self, k) -> jax.Array:
        """The grid time of call ``k`` (0-d; the last grid time for the call in ``finish``)."""
        return self.grid.t[jnp.minimum(k, self.grid.num_points - 1)]

    def model_time(self, k) -> jax.Array:
        """The model's time input at call ``k`` (:func:`~sdevp_jax.model_time`: on a discrete schedule the training
        label, diffusers' ``timestep``)."""
        with jax.ensure_compile_time_eval():
            labels = model_time(self.state, self.grid.t.astype(self.state.timesteps.dtype))
        return labels[jnp.minimum(k, self.grid.num_points - 1)]

    def step(self, solver_state, model_output: jax.Array, x: jax.Array, k, sample_keys: Optional[jax.Array] = None,
             first=0):
        """``(x_next, solver_state)``: call ``k`` of the run, ``model_output`` the model's output at ``x`` and
        :meth:`model_time` ``(k)`` (its ``prediction_type``). ``k < num_steps``: the solver's step over interval
        ``k``; ``k = num_steps``: its ``finish``. ``sample_keys`` (``(batch,)``, :func:`make_sample_keys`): each
        sample's noise stream, for a stochastic solver (slots ``1 + k s`` to ``k s + s`` at step ``k``, as
        :func:`~sdevp_jax.loops.integrate`). ``first`` (possibly traced): the call the run started at, for a run
        that starts mid-grid (diffusers' img2img): a multistep solver warms up from there, its memory empty
        (:meth:`~sdevp_jax.solvers.GridSolver.step`). ``x_next`` has ``x``'s dtype."""
        if self.solver.stochastic and sample_keys is None:
            raise ValueError(f"solver {self.solver.name!r} draws noise: pass sample_keys (sv.stepper.make_sample_keys)")
        model = _given(self.state, model_output, x.dtype, self.dtype)
        work = x.astype(self.dtype) if self.solver.in_work_dtype else x
        k = jnp.asarray(k, jnp.int32)
        slots = self.solver.noise_slots
        noise = Noise(sample_keys, 1 + k * slots, x.shape[1:], self.dtype)

        def advance(carry):
            work, solver_state = carry
            if isinstance(self.solver, GridSolver):
                out, solver_state, _ = self.solver.step(model, work, solver_state, self.grid, k, noise, first)
            else:
                out, solver_state, _ = self.solver.step(model, work, solver_state, self.grid, k, noise)
            return out.astype(work.dtype), solver_state

        def finish(carry):
            work, solver_state = carry
            out, solver_state, _ = self.solver.finish(model, work, solver_state, self.grid)
            return out.astype(work.dtype), solver_state

        if self.num_calls == self.num_steps:
            out, solver_state = advance((work, solver_state))
        else:
            out, solver_state = lax.cond(k < self.num_steps, advance, finish, (work, solver_state))
        return out.astype(x.dtype), solver_state

