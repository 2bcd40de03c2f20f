r"""The adaptive solver: diffrax's Tsit5 with a PID step-size controller, each sample on its own steps.

Tsit5 (Tsitouras 2011) is a 5th-order explicit Runge-Kutta pair with a 4th-order
error estimate; the controller (diffrax's ``PIDController``) accepts a step when the
estimate is below ``atol + rtol |y|``. Each sample is solved with its own steps (its
step sizes do not depend on the rest of the batch), under ``jax.vmap``; the batch
runs until its slowest sample is done. This solver is not stepped by the generic
loop: it integrates the whole interval itself (:meth:`Adaptive.solve`).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .. import _checks
from ..denoiser import model_time_dtype
from .base import Solver, option, register
from .ode import drift

__all__ = ["Adaptive", "tsit5_solve", "schedule_jumps", "ode_span"]


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


@register
@struct.dataclass
class Adaptive(Solver):
    """Tsit5 with a PID controller at ``rtol``/``atol``, at most ``max_steps`` steps per sample."""

    rtol: float = option(1e-5, help="the relative tolerance, > 0")
    atol: float = option(1e-5, help="the absolute tolerance, > 0")
    max_steps: int = option(4096, help="the step budget per sample (an error past it)")

    name = "adaptive"
    description = "probability-flow ODE, diffrax Tsit5 with PID step-size control, per sample"
    nfe_formula = "1 + 6 * steps"
    order = 5

    def __post_init__(self):
        _checks.positive_real("rtol", self.rtol)
        _checks.positive_real("atol", self.atol)
        _checks.positive_int("max_steps", self.max_steps)

    def nfe(self, num_points):
        raise ValueError("the adaptive solver's network calls depend on the samples: see SamplerInfo.nfe_per_sample")

    def solve(self, model, x):
        """Integrate ``x`` from the top of ``model.state``'s grid to its bottom; returns ``(x, nfe per sample)``.

        Tsit5 is first-same-as-last: one evaluation at ``t0``, then six per step tried.
        """
        state, dtype = model.state, model.dtype
        t_dtype = model_time_dtype(state)

        def field(t, y, cond_1):
            y1 = y[None]
            t1 = jnp.full((1,), t, t_dtype)
            return drift(state, dtype, model.with_cond(cond_1).eps(y1, t1), y1.astype(dtype), t1)[0]

        t0, t1 = ode_span(state, dtype)

        def solve(y0, cond_b):
            cond_1 = None if model.cond is None else jax.tree.map(lambda c: c[None], cond_b)
            # No jump_ts here (the likelihood has them): stepping to each of a discrete schedule's 1000 knots
            # would cost >= 1000 steps per sample; across the jumps the samples still pass the statistics
            # tests (tests/test_schedule_statistics.py), at an ODE error of ~2e-3 instead of ~3e-4.
            return tsit5_solve(field, y0, t0, t1, self.rtol, self.atol, self.max_steps, args=cond_1)

        y, steps = jax.vmap(solve)(x.astype(dtype), model.cond)
        return y, 1 + 6 * steps
