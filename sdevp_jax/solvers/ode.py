r"""Fixed-step Runge-Kutta solvers of the probability-flow ODE in time: Euler and Heun.

.. math::

    \frac{dx}{dt} = -\tfrac12\beta(t)\Big(x - \frac{\hat\epsilon(x, t)}{\sigma(t)}\Big)
    \qquad\text{(Song et al. 2021, eq. 13)},

stepped through the grid's times themselves (:math:`\Delta t = t_{k+1} - t_k < 0`).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from .base import Solver, StepInfo, register

__all__ = ["Euler", "Heun", "drift", "drift_from_eps"]


def drift_from_eps(schedule, eps, x, t):
    r""":math:`-\tfrac12\beta(t)(x - \hat\epsilon/\sigma(t))` for a cast ``schedule``, ``t`` broadcastable to ``x``."""
    return -0.5 * schedule.beta(t) * (x - eps / schedule.sigma(t))


def drift(state, dtype, eps, x, t):
    """The probability-flow velocity at a scalar or ``(batch,)`` time ``t``, in ``dtype``.

    The schedule is cast here, inside whatever is being traced (as
    :func:`~sdevp_jax.probability_flow_drift` does): a cast hoisted out of diffrax's
    trace made XLA round the jitted and the eager adaptive solves differently.
    """
    t = jnp.asarray(t).astype(dtype)
    if t.ndim == 1:
        t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return drift_from_eps(state.schedule.cast(dtype), eps, x, t)


@register
@struct.dataclass
class Euler(Solver):
    """Euler's method: :math:`x_{k+1} = x_k + \\Delta t\\, f(x_k, t_k)` (order 1)."""

    name = "euler"
    description = "probability-flow ODE, Euler on the timestep grid"
    order = 1
    invertible = True

    def step(self, model, x, state, grid, k, noise):
        t, t_next = grid.t[k], grid.t[k + 1]
        d1 = drift(model.state, x.dtype, model.eps(x, t), x, t)
        return x + (t_next - t) * d1, state, StepInfo(1)


@register
@struct.dataclass
class Heun(Solver):
    """Heun's method (explicit trapezoidal RK2): Euler's point, then the mean of the two slopes (order 2)."""

    name = "heun"
    description = "probability-flow ODE, Heun (RK2) on the timestep grid"
    nfe_formula = "2 (N - 1)"
    order = 2
    invertible = True

    def nfe(self, num_points):
        return 2 * (num_points - 1)

    def step(self, model, x, state, grid, k, noise):
        t, t_next = grid.t[k], grid.t[k + 1]
        d1 = drift(model.state, x.dtype, model.eps(x, t), x, t)
        x_euler = x + (t_next - t) * d1
        d2 = drift(model.state, x.dtype, model.eps(x_euler, t_next), x_euler, t_next)
        return x + (t_next - t) * 0.5 * (d1 + d2), state, StepInfo(2)
