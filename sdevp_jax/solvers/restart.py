r"""Restart sampling (Xu et al., NeurIPS 2023, "Restart Sampling for Improving Generative Processes").

The probability-flow ODE is solved with EDM's second-order Heun step (Karras et al. 2022, Alg. 1) in
:math:`\bar x = x/\alpha` and :math:`\rho = \sigma/\alpha`, where it reads :math:`d\bar x/d\rho = \hat\epsilon`:

.. math::

    \bar x' = \bar x + (\rho_{k+1} - \rho_k)\hat\epsilon(\bar x, \rho_k), \qquad
    \bar x_{k+1} = \bar x + (\rho_{k+1} - \rho_k)\tfrac12\big(\hat\epsilon(\bar x, \rho_k)
                   + \hat\epsilon(\bar x', \rho_{k+1})\big),

along the state's grid, then (``final_sigmas_type="zero"``, the default) a last step to :math:`\sigma = 0` that
returns the data prediction (EDM's final Euler step). Each restart interval ``(n, K, t_min, t_max)`` (the
authors' ``restart_info`` entry :math:`[N_{Restart}, K, t_{min}, t_{max}]`, levels in :math:`\rho`, EDM's
:math:`\sigma`) acts at the grid point
whose :math:`\rho` is nearest ``t_min`` (among the points after the first): on arriving there the sampler, ``K``
times, jumps up to ``t_max`` with the forward process's own noise (the paper's eq. 4: :math:`\bar x \leftarrow
\bar x + \sqrt{t_{max}^2 - \rho_{min}^2}\,z`, which carries the exact marginal at :math:`\rho_{min}` to the exact
one at :math:`t_{max}`) and solves back down to that point in ``n - 1`` Heun steps on the Karras grid
:math:`(t_{max}^{1/7} + \tfrac{j}{n-1}(\rho_{min}^{1/7} - t_{max}^{1/7}))^7`. ``s_noise`` scales the jump's noise
(the authors' runs: 1.003), and ``restart_gamma`` > 0 adds EDM's churn (Karras et al. 2022, Alg. 2) to the
restart steps (the authors' ``restart_gamma``, 0.05 in their runs): the step starts from
:math:`\hat\rho = (1 + \gamma)\rho` after adding :math:`\sqrt{\hat\rho^2 - \rho^2}\,s_{noise} z`. It applies
to every restart step by default, or with ``churn_range=(S_min, S_max)`` (EDM's :math:`S_{tmin}, S_{tmax}`) to
those starting at a level in :math:`[S_{min}, S_{max}]`, as the authors' code applies it (their command line's
``S_min``, ``S_max``: 0.01 and 1 in every published run, which hold every restart level of the CIFAR-10
configurations but not the ImageNet-64 ones' intervals above 1, e.g. ``(3, 1, 19.35, 40.79)``).

The published CIFAR-10 VP configuration, 18 main steps (Karras, :math:`\rho` from 80 to 0.002) and one restart
interval ``(3, 2, 0.06, 0.30)`` (43 network calls), is ``restarts=((3, 2, 0.06, 0.30),)``, ``s_noise=1.003``,
``restart_gamma=0.05`` on that grid (``churn_range=(0.01, 1)`` changes nothing there); the ImageNet-64 ones need
``churn_range=(0.01, 1)``.

A point nearest ``t_min`` that lies at or above ``t_max`` gets no jump (its pass re-solves upward from it); pick
``t_max`` above the grid's points near ``t_min``.

Parity with the authors' ``restart_sampler`` (Newbeeer/diffusion_restart_sampling,
``benchmarks/generate_restart.py`` at commit 8cbcb07; ``tests/test_restart.py``, five configurations including the
published CIFAR-10 VP one and an ImageNet-64 one, on an exact mixture denoiser with the same noise): the samples
agree to 1.8e-15 relative in float64 with their function run with its restart grid in float64. As published, their
``get_steps`` builds each restart grid from a float32 ``arange``, and torch keeps the pass's levels, the jump's
scale, the churned level and the step sizes in float32: their network calls' levels lie within 9.2 u (u = 2^-24) of
the exact ones, and their samples within 1.5e-7 relative of these (measured there). That is the same method rounded,
not offered as an option. Where their code differs in configurations that none of their published runs reaches, this
module does not follow it: (i) they take the point nearest ``t_min`` among all main levels and the final 0, so a
``t_min`` nearest the first level restarts nothing there and one below half the last level restarts from the final
sample, at 0 (here: the nearest point after the first, at most the last grid point); (ii) intervals that share a
point keep only the last in their dict (here each runs, in the given order); (iii) their main steps' EDM churn
(``S_churn``, 0 in their runs) is not offered.

The run is a static sequence of Heun steps (the main steps with each restart's ``K (n - 1)`` steps inserted
after the step that reaches its point), ordered at the start from the grid's :math:`\rho`; each carries its two
levels, a jump scale (nonzero on the first step of a restart pass) and whether churn applies. Noise: two slots
per step, the jump's and the churn's.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .base import Grid, Solver, StepInfo, choice_option, option, register

__all__ = ["Restart", "restart_plan"]

KARRAS_RHO = 7.0


class Plan(NamedTuple):
    """The sequence of Heun steps: their levels (``rho_from``, ``rho_to``), the main grid point each ends at
    (``point``, -1 inside a restart pass), the jump scale before each, whether churn applies, and the level x is at
    when the step begins (``rho_in``: ``rho_from``, but a restart pass's point for its first step)."""

    rho_from: jax.Array
    rho_to: jax.Array
    point: jax.Array
    jump: jax.Array
    churn: jax.Array
    rho_in: Optional[jax.Array] = None


def _check_restarts(restarts) -> tuple:
    """``restarts`` as a tuple of ``(n_steps, K, t_min, t_max)`` tuples (lists accepted: a job's JSON), checked."""
    if not isinstance(restarts, (tuple, list)):
        raise TypeError(f"restarts must be a tuple of (n_steps, K, t_min, t_max) tuples, got {restarts!r}")
    out = []
    for entry in restarts:
        if not isinstance(entry, (tuple, list)) or len(entry) != 4:
            raise ValueError(f"each restart must be a tuple (n_steps, K, t_min, t_max), got {entry!r}")
        n, k, t_min, t_max = entry
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"a restart's n_steps (its grid points, the authors' N_Restart) must be an int >= 2, "
                             f"got {n!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"a restart's K (its passes) must be an int >= 0, got {k!r}")
        for name, value in (("t_min", t_min), ("t_max", t_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
                raise ValueError(f"a restart's {name} must be a finite number > 0 (a level sigma/alpha), got {value!r}")
        if not t_max > t_min:
            raise ValueError(f"a restart's t_max must be > t_min, got t_min={t_min!r}, t_max={t_max!r}")
        out.append((n, k, float(t_min), float(t_max)))
    return tuple(out)


def _check_churn_range(churn_range) -> tuple:
    """``churn_range`` as ``()`` or a ``(S_min, S_max)`` tuple of floats (a list accepted: a job's JSON), checked."""
    if not isinstance(churn_range, (tuple, list)) or len(churn_range) not in (0, 2):
        raise ValueError(f"churn_range must be () (every restart step) or a pair (S_min, S_max), got {churn_range!r}")
    if not churn_range:
        return ()
    lo, hi = churn_range
    for name, value in (("S_min", lo), ("S_max", hi)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < float("inf"):
            raise ValueError(f"churn_range's {name} must be a finite number >= 0 (a level sigma/alpha), got {value!r}")
    if not hi >= lo:
        raise ValueError(f"churn_range's S_max must be >= its S_min, got {tuple(churn_range)!r}")
    return float(lo), float(hi)


def restart_plan(rho, restarts, restart_gamma: float = 0.0, churn_range=()) -> Plan:
    """The Heun steps of a run over the main levels ``rho`` (shape ``(N,)``, decreasing, possibly traced) with
    ``restarts`` (see the module docstring), as a :class:`Plan` of ``(N - 1) + sum(K (n - 1))`` steps. A restart
    step churns where ``restart_gamma > 0`` and, given ``churn_range = (S_min, S_max)``, its level before the churn
    lies in ``[S_min, S_max]``.

    Examples:
      >>> plan = sv.solvers.restart_plan(jnp.array([10.0, 1.0, 0.3, 0.1]), ((3, 2, 0.25, 2.0),))
      >>> plan.rho_from.shape, [int(p) for p in plan.point]
      ((7,), [1, 2, -1, -1, -1, -1, 3])
    """
    n_main = rho.shape[0]
    dtype = rho.dtype
    keys, rho_from, rho_to, point, jump, churn = [], [], [], [], [], []
    m = jnp.arange(n_main - 1)
    keys.append(2 * m), rho_from.append(rho[:-1]), rho_to.append(rho[1:]), point.append(m + 1)
    jump.append(jnp.zeros(n_main - 1, dtype)), churn.append(jnp.zeros(n_main - 1, bool))
    for n, k, t_min, t_max in restarts:
        if k == 0:
            continue
        idx = 1 + jnp.argmin(jnp.abs(rho[1:] - t_min))  # the point it restarts at, after the first
        low = rho[idx]
        j = jnp.arange(n, dtype=dtype)
        sub = (t_max ** (1.0 / KARRAS_RHO) + j / (n - 1) * (low ** (1.0 / KARRAS_RHO) - t_max ** (1.0 / KARRAS_RHO)))
        sub = sub**KARRAS_RHO
        sub = sub.at[-1].set(low)
        steps = k * (n - 1)
        keys.append(jnp.full(steps, 2 * (idx - 1) + 1))
        levels = jnp.tile(sub[:-1], k)  # each step's level before its churn
        rho_from.append(levels), rho_to.append(jnp.tile(sub[1:], k))
        point.append(jnp.full(steps, -1))
        first = jnp.zeros(n - 1, dtype).at[0].set(jnp.sqrt(jnp.maximum(t_max**2 - low * low, 0.0)))
        within = jnp.full(steps, True) if not churn_range else (levels >= churn_range[0]) & (levels <= churn_range[1])
        jump.append(jnp.tile(first, k)), churn.append(within & (restart_gamma > 0.0))
    if len(keys) == 1:  # no restart pass: the main steps in order, each starting where the last ended
        return Plan(rho_from[0], rho_to[0], point[0], jump[0], churn[0], rho_from[0])
    order = jnp.argsort(jnp.concatenate(keys), stable=True)
    plan = Plan(*(jnp.concatenate(parts)[order] for parts in (rho_from, rho_to, point, jump, churn)))
    # the level x is at when a step begins: the previous step's end (a restart pass begins at its point, below)
    return plan._replace(rho_in=jnp.concatenate([plan.rho_from[:1], plan.rho_to])[:-1])


#: Restart's last steps: to sigma = 0 (EDM's) or ending at the last grid time (no zero-length "repeat" step).
RESTART_FINAL_SIGMAS_TYPES = ("zero", "last")


class State(NamedTuple):
    plan: Plan


@register
@struct.dataclass
class Restart(Solver):
    """Restart sampling (:func:`restart_plan`; the module docstring): EDM's Heun in sigma/alpha along the grid, a
    last step to sigma = 0, and restart intervals; two noise slots per step (the jump's, the churn's)."""

    restarts: tuple = option((), help=(
        "the restart intervals, a tuple of (n_steps, K, t_min, t_max) tuples in sigma/alpha levels (the authors' "
        "[N_Restart, K, t_min, t_max]; default (): none, EDM's Heun sampler)"))
    s_noise: float = option(1.0, help="the factor on the jump's and the churn's noise (default 1; the authors': 1.003)")
    restart_gamma: float = option(0.0, help=(
        "EDM's churn gamma at each restart step (default 0; the authors' runs: 0.05)"))
    churn_range: tuple = option((), help=(
        "(S_min, S_max): restart_gamma's churn only on the restart steps that start at a level sigma/alpha in "
        "[S_min, S_max] (EDM's S_tmin, S_tmax; the authors' runs: (0.01, 1)); default (): on every restart step"))
    final_sigmas_type: str = option("zero", choices=RESTART_FINAL_SIGMAS_TYPES, help=(
        "the last step: 'zero' (default, EDM's): one more network call, to sigma = 0; 'last': end at the last grid "
        "time"))

    name = "restart"
    kind = "sde_solver"
    description = ("Restart sampling: EDM's Heun in sigma/alpha with forward-noise restarts over intervals "
                   "(Xu et al. 2023)")
    nfe_formula = "2 (N - 1) + sum of 2 K (n - 1) over the restart intervals (+ 1 with final_sigmas_type='zero')"
    order = 2
    noise_slots = 2

    def __post_init__(self):
        object.__setattr__(self, "restarts", _check_restarts(self.restarts))
        object.__setattr__(self, "churn_range", _check_churn_range(self.churn_range))
        choice_option("final_sigmas_type", self.final_sigmas_type, RESTART_FINAL_SIGMAS_TYPES)
        for name in ("s_noise", "restart_gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0 (method='restart'), got {value!r}")

    def num_steps(self, num_points: int) -> int:
        return num_points - 1 + sum(k * (n - 1) for n, k, _, _ in self.restarts)

    def nfe(self, num_points: int) -> int:
        return 2 * self.num_steps(num_points) + (1 if self.final_sigmas_type == "zero" else 0)

    def init(self, x, grid: Grid) -> State:
        return State(restart_plan(grid.sigma / grid.alpha, self.restarts, self.restart_gamma, self.churn_range))

    def _eps(self, model, xbar, rho, k_point, grid: Grid):
        """The noise prediction at level ``rho``: at the grid's time where the step is on the grid (``k_point`` >= 0),
        else at the schedule's time of that level."""
        schedule = model.state.schedule.cast(xbar.dtype)
        off_grid = schedule.t_from_log_snr(-jnp.log(rho))
        t = jnp.where(k_point >= 0, grid.t[jnp.maximum(k_point, 0)], off_grid)
        alpha = jax.lax.rsqrt(1.0 + rho * rho)
        eps, _ = model.eps_x0(alpha * xbar, t, alpha, rho * alpha)
        return eps

    def step(self, model, x, state: State, grid: Grid, k, noise):
        plan = state.plan
        rho, rho_next, point = plan.rho_from[k], plan.rho_to[k], plan.point[k]
        here = jnp.where(point >= 0, point - 1, -1)  # the grid point a main step starts from
        rho_in = plan.rho_in[k]
        xbar = x * jnp.sqrt(1.0 + rho_in * rho_in)  # x / alpha at the level x is at
        xbar = xbar + (plan.jump[k] * self.s_noise) * noise.draw(0)  # the restart's forward jump, 0 elsewhere
        if self.restart_gamma > 0.0:
            rho_hat = jnp.where(plan.churn[k], (1.0 + self.restart_gamma) * rho, rho)
            # sqrt(rho_hat^2 - rho^2), written so that a step without churn adds exactly 0
            scale = jnp.where(plan.churn[k], rho * np.sqrt((1.0 + self.restart_gamma) ** 2 - 1.0), 0.0)
            xbar = xbar + (scale * self.s_noise) * noise.draw(1)
            here = jnp.where(plan.churn[k], -1, here)
            rho = rho_hat
        d = self._eps(model, xbar, rho, here, grid)
        x_euler = xbar + (rho_next - rho) * d
        d_next = self._eps(model, x_euler, rho_next, point, grid)
        xbar = xbar + (rho_next - rho) * 0.5 * (d + d_next)
        return jax.lax.rsqrt(1.0 + rho_next * rho_next) * xbar, state, StepInfo(2)

    def finish(self, model, x, state: State, grid: Grid):
        """EDM's last step to sigma = 0 (``final_sigmas_type="zero"``): the data prediction at the last grid point."""
        if self.final_sigmas_type != "zero":
            return x, state, StepInfo(0)
        last = grid.num_points - 1
        _, x0 = model.eps_x0(x, grid.t[last], grid.alpha[last], grid.sigma[last])
        return x0, state, StepInfo(1)
