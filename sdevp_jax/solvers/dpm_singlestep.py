r"""Single-step DPM-Solver on the grid's own points (Lu et al., NeurIPS 2022, "DPM-Solver", sec. 3.3 and
app. A; Lu et al. 2022b, "DPM-Solver++"), as diffusers' ``DPMSolverSinglestepScheduler`` runs it.

The grid's steps are taken in groups of one, two or three (orders 1, 2, 3; :func:`singlestep_orders`).
A group of order :math:`p` starts at a grid point :math:`s_{p-1}` and makes one network call at each of its
points :math:`s_{p-1}, \dots, s_0`; the step that ends the group goes from the group's start straight to
the point after :math:`s_0`, with all :math:`p` predictions (the intermediate points :math:`u_1, u_2` of
DPM-Solver-2 and -3 are the grid points themselves, reached by the group's lower-order steps). With
:math:`h = \lambda_t - \lambda_{s_{p-1}}` and :math:`r_i = (\lambda_{s_i} - \lambda_{s_{p-1}})/h`, in the
data prediction (``"dpmsolver++"``, :math:`\varphi = e^{-h} - 1`):

.. math::

    x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t\varphi D_0
          + \begin{cases}
              -\tfrac12\alpha_t\varphi D_1 & \text{order 2, midpoint} \\
              \alpha_t(\varphi/h + 1) D_1 & \text{order 2, heun} \\
              \alpha_t(\varphi/h + 1) D_{1,1} & \text{order 3, midpoint (DPM-Solver-3's last stage)} \\
              \alpha_t(\varphi/h + 1) D_1 - \alpha_t\big((\varphi + h)/h^2 - \tfrac12\big) D_2 & \text{order 3, heun}
            \end{cases}

with :math:`D_0 = m_{p-1}`, order 2: :math:`D_1 = (m_0 - m_1)/r_0`; order 3:
:math:`D_{1,0} = (m_1 - m_2)/r_1`, :math:`D_{1,1} = (m_0 - m_2)/r_0`,
:math:`D_1 = (r_0 D_{1,0} - r_1 D_{1,1})/(r_0 - r_1) \approx hD'` and
:math:`D_2 = 2(D_{1,1} - D_{1,0})/(r_0 - r_1) \approx h^2 D''`, whose coefficient is the exact Taylor
integral :math:`-\alpha_t(h^2/2 - h + 1 - e^{-h})/h^2`. The noise-prediction form (``"dpmsolver"``, the
first paper's) is the same with :math:`\alpha \leftrightarrow \sigma`, :math:`h \to -h` and the noise
predictions; SDE-DPM-Solver++ (Lu et al. 2022b, app. B) takes :math:`e^{-h}` into the first term,
:math:`1 - e^{-2h}` for :math:`-\varphi` and adds :math:`\sigma_t\sqrt{1 - e^{-2h}}\,z`.

With ``final_sigmas_type="repeat"`` (diffusers' ``final_sigmas_type="sigma_min"`` on its sigma grids, which end at
:math:`\sigma_{min}` already) the run ends with a zero-length step from the last point to itself, one more network
call, and that step counts in the order groups as diffusers' ``get_order_list`` counts it. It is a step of the loop
(its own noise slot in the SDE form). In a group of order 1 it leaves :math:`x` where it is (exactly: :math:`h = 0`
makes :math:`\varphi = 0` and :math:`\sigma_t/\sigma_s = 1`, and the SDE noise's :math:`\sqrt{1 - e^{-2h}} = 0`).
In a group of order :math:`p \ge 2` it is the group's last step with :math:`t = s_0`: from the group's start
:math:`s_{p-1}` to the last grid point again, :math:`h = \lambda_{s_0} - \lambda_{s_{p-1}} \ne 0` and
:math:`r_0 = 1`, so nothing divides by zero: it replaces :math:`x_{s_0}`, which the group's lower-order step reached
from :math:`s_{p-1}`, by the order-:math:`p` step over the same interval with the prediction at :math:`s_0` as well
(for ``heun``, exact for predictions polynomial of degree :math:`p - 1` in :math:`\lambda`). diffusers 0.42.1 gives
finite results in every such case (measured in float64: orders 1-3, the three algorithms and solver types, its
Karras, exponential and beta grids, 10 to 25 steps, ``lower_order_final`` both ways).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

from .base import StepCoeffs, StepInfo, choice_option, option, register
from .dpm import DPMPP_TYPES
from .multistep import GridSolver, History, begin_index_option

__all__ = ["DPMSolverSinglestep", "SDEDPMSolverSinglestep", "singlestep_orders", "singlestep_dpm_step"]

ALGORITHMS = ("dpmsolver++", "dpmsolver")


def singlestep_orders(num_steps: int, order: int, lower_order_final: bool, final_zero: bool) -> np.ndarray:
    """The order of each of ``num_steps`` steps (host NumPy int32), as diffusers' ``get_order_list`` sets them.

    Groups ``1, 2, ..., order`` repeat; with ``lower_order_final`` (forced on by diffusers when the steps
    do not divide into whole groups, or when the last step goes to :math:`\\sigma = 0`) the last group is
    cut short: order 3 ends ``..., 1, 2, 1`` (``num_steps`` divisible by 3), ``..., 1`` or ``..., 1, 2``;
    order 2 ends ``..., 1, 1`` (even) or ``..., 1``. The step to :math:`\\sigma = 0` is first order.

    Examples:
      >>> sv.solvers.singlestep_orders(7, 3, lower_order_final=False, final_zero=True)
      array([1, 2, 3, 1, 2, 3, 1], dtype=int32)
    """
    lower = lower_order_final or final_zero or num_steps % order != 0
    groups, rest = divmod(num_steps, order)
    if not lower:
        orders = list(range(1, order + 1)) * groups
    elif order == 3:
        orders = [1, 2, 3] * (groups - 1) + [1, 2, 1] if rest == 0 else [1, 2, 3] * groups + [1, 2][:rest]
    elif order == 2:
        orders = [1, 2] * (groups - 1) + [1, 1] if rest == 0 else [1, 2] * groups + [1]
    else:
        orders = [1] * num_steps
    orders = np.asarray(orders[:num_steps], np.int32)
    if final_zero and num_steps:
        orders[-1] = 1
    return orders


def singlestep_dpm_step(x_start, preds, lams, c: StepCoeffs, order, *, solver_type="midpoint",
                        algorithm="dpmsolver++", z=None, third_order="taylor"):
    r"""The step that ends a group (see the module docstring), from its start ``x_start`` to ``t``.

    ``preds = (m_0, m_1, m_2)`` are the predictions at the group's points from the latest back (data
    predictions, or noise predictions for ``algorithm="dpmsolver"``), ``lams = (lambda_{s_0}, lambda_{s_1},
    lambda_{s_2})`` their log-SNRs; ``c`` the schedule at the group's start (``s``) and at ``t``; ``order`` (1-3,
    possibly traced) the group's order, which picks the start ``s_{order-1}`` among them. ``z``: the noise of
    SDE-DPM-Solver++ (``algorithm="dpmsolver++"``), else ``None``.

    SDE-DPM-Solver++'s terms are the exact integrals of the Taylor terms against its kernel
    :math:`2e^{-2(h - u)}` (Lu et al. 2022b, app. B): with :math:`\omega = 1 - e^{-2h}`,
    :math:`\alpha_t\omega D_0 + \alpha_t(1 - \omega/(2h)) D_1 + \alpha_t(\tfrac12 - 1/(2h) + \omega/(4h^2)) D_2`
    (:math:`D_2 \approx h^2 D''`). diffusers 0.42.1's order-3 ``heun`` step has :math:`-\tfrac12` where the last
    coefficient has :math:`+\tfrac12`, an O(1) error in a term that should be O(h) (``third_order="diffusers"``
    reproduces it; tests/test_dpm_singlestep.py measures both).
    """
    m0, m1, m2 = preds
    lam0, lam1, lam2 = lams
    h = c.lam_t - c.lam_s
    d0 = jnp.where(order >= 3, m2, jnp.where(order >= 2, m1, m0))  # the prediction at the group's start
    r0_2 = (lam0 - lam1) / h  # order 2: s_1 the start, s_0 the later point
    d1_2 = (m0 - m1) / r0_2
    r0, r1 = (lam0 - lam2) / h, (lam1 - lam2) / h  # order 3: s_2 the start
    d1_0, d1_1 = (m1 - m2) / r1, (m0 - m2) / r0
    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
    if z is not None:  # SDE-DPM-Solver++
        om = -jnp.expm1(-2.0 * h)
        lin = c.alpha_t * (1.0 - om / (2.0 * h))
        half = 0.5 if third_order == "taylor" else -0.5
        first = (c.sigma_t / c.sigma_s) * jnp.exp(-h) * x_start + (c.alpha_t * om) * d0
        second = first + (0.5 * c.alpha_t * om if solver_type == "midpoint" else lin) * d1_2
        if solver_type == "midpoint":
            third = first + lin * d1_1
        else:
            third = first + lin * d1 + (c.alpha_t * (half + (om - 2.0 * h) / (4.0 * h * h))) * d2
        x_t = jnp.where(order >= 3, third, jnp.where(order >= 2, second, first))
        return x_t + (c.sigma_t * jnp.sqrt(om)) * z
    if algorithm == "dpmsolver":  # the noise form: alpha <-> sigma, h -> -h
        scale, phi, hh = c.sigma_t, jnp.expm1(h), -h
        base = jnp.exp(c.log_alpha_t - c.log_alpha_s) * x_start
    else:
        scale, phi, hh = c.alpha_t, jnp.expm1(-h), h
        base = (c.sigma_t / c.sigma_s) * x_start
    lin = scale * (phi / hh + 1.0)
    first = base - (scale * phi) * d0
    second = first + (-0.5 * scale * phi if solver_type == "midpoint" else lin) * d1_2
    if solver_type == "midpoint":
        third = first + lin * d1_1
    else:
        third = first + lin * d1 - (scale * ((phi + hh) / (hh * hh) - 0.5)) * d2
    return jnp.where(order >= 3, third, jnp.where(order >= 2, second, first))


@register
@struct.dataclass
class DPMSolverSinglestep(GridSolver):
    """Single-step DPM-Solver on the grid's points (:func:`singlestep_dpm_step`), orders 1-3, in data
    (``"dpmsolver++"``) or noise (``"dpmsolver"``) prediction. Its memory: the group's start and the
    predictions made since (tests/test_dpm_singlestep.py holds it to diffusers' DPMSolverSinglestepScheduler)."""

    order: int = option(2, choices=(1, 2, 3), help="the largest group's order, 1-3")
    solver_type: str = option("midpoint", choices=DPMPP_TYPES, help="the second- and third-order terms")
    algorithm_type: str = option("dpmsolver++", choices=ALGORITHMS, help=(
        "'dpmsolver++' (data prediction, default) or 'dpmsolver' (noise prediction, Lu et al. 2022a)"))
    lower_order_final: bool = option(True, help=(
        "cut the last group short (as this package's other solvers, default True; diffusers' default is False, "
        "which its config carries; forced on by an uneven number of steps or a last step to sigma = 0)"))
    #: start at this grid point (diffusers' set_begin_index, img2img; :func:`sdevp_jax.sample_ode`'s ``begin_index``):
    #: the groups stay the whole grid's, a group entered midway lowered to the predictions made since the start, as
    #: diffusers does (not an option of jobs or the CLI, which start from the prior)
    begin_index: int = struct.field(pytree_node=False, default=0)

    name = "dpm_solver_singlestep"
    description = "single-step DPM-Solver(++) on the grid's points, orders 1-3 (Lu et al. 2022a,b)"
    max_order = 3
    repeat_ready = True

    def __post_init__(self):
        super().__post_init__()
        self._check_order()
        choice_option("solver_type", self.solver_type, DPMPP_TYPES)
        choice_option("algorithm_type", self.algorithm_type, ALGORITHMS)
        if self.algorithm_type == "dpmsolver" and self.thresholding:
            raise ValueError("thresholding acts on the data prediction: it needs algorithm_type='dpmsolver++'")
        begin_index_option(self.begin_index, self.name)

    @property
    def zero_snr_start(self) -> bool:
        """In data prediction only (the noise form's ``alpha_t/alpha_s`` is infinite from alpha = 0)."""
        return self.algorithm_type == "dpmsolver++"

    @property
    def _repeat(self) -> bool:
        return self.final_sigmas_type == "repeat"

    def num_steps(self, num_points: int) -> int:
        """One step per interval, and with ``final_sigmas_type="repeat"`` the zero-length step at the last point (a
        step of the loop: it ends an order group and, in the SDE form, draws its noise)."""
        return num_points - 1 + (1 if self._repeat else 0)

    def orders(self, num_points: int):
        """The order of each step of the loop (:meth:`num_steps`), diffusers' groups over all of its steps (the step
        to sigma = 0 or the zero-length one included)."""
        num_steps = num_points - 1 + (1 if self.final_call else 0)
        orders = singlestep_orders(num_steps, self.order, self.lower_order_final, self.final_zero)
        # started at begin_index b, step k has the predictions of points b..k: diffusers lowers its group's order to
        # that many (its "while model_outputs[-order] is None")
        made = np.maximum(np.arange(orders.shape[0]) - self.begin_index + 1, 1)
        return jnp.asarray(np.minimum(orders, made).astype(np.int32)[: self.num_steps(num_points)])

    def finish(self, model, x, hist, grid):
        """As the other grid solvers' (the step to sigma = 0), but the zero-length step is the loop's last."""
        if self._repeat:
            return x, hist, StepInfo(0)
        return super().finish(model, x, hist, grid)

    def _sde_terms(self, noise) -> dict:
        """The SDE form's arguments of :func:`singlestep_dpm_step` (none here)."""
        return {}

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        pred = eps if self.algorithm_type == "dpmsolver" else d0
        start = jnp.maximum(k - order + 1, 0)  # the group's first point
        x_start = jnp.where(order == 1, x, hist.x_prev)
        c = grid.coeffs(start, jnp.minimum(k + 1, grid.num_points - 1))  # (the zero-length step: to point k)
        x_next = singlestep_dpm_step(x_start, (pred, hist.m1, hist.m2), (grid.lam[k], hist.lam1, hist.lam2), c,
                                     order, solver_type=self.solver_type, algorithm=self.algorithm_type,
                                     **self._sde_terms(noise))
        # remember the group's start (in History.x_prev) with the prediction
        return x_start, x_next, pred


@register
@struct.dataclass
class SDEDPMSolverSinglestep(DPMSolverSinglestep):
    """SDE-DPM-Solver++ in single-step groups (diffusers' ``algorithm_type="sde-dpmsolver++"``); step ``k``'s
    noise slot ``1 + k``."""

    third_order: str = option("taylor", choices=("taylor", "diffusers"), help=(
        "order 3 heun's second-derivative term: 'taylor' (default, the exact integral) or 'diffusers' (its sign of "
        "the 1/2, an O(1) error)"))

    name = "sde_dpm_solver_singlestep"
    kind = "sde_solver"
    description = "single-step SDE-DPM-Solver++ on the grid's points, orders 1-3, per-sample keyed noise"
    noise_slots = 1

    def __post_init__(self):
        super().__post_init__()
        if self.algorithm_type != "dpmsolver++":
            raise ValueError("the SDE form is SDE-DPM-Solver++ (data prediction): algorithm_type must be 'dpmsolver++'")
        choice_option("third_order", self.third_order, ("taylor", "diffusers"))
        if self.begin_index != 0:
            raise ValueError("begin_index is served for the deterministic dpm_solver_singlestep only (a stochastic "
                             f"run's noise slots count from the grid's top), got begin_index={self.begin_index!r}")

    def _sde_terms(self, noise) -> dict:
        return {"z": noise.draw(), "third_order": self.third_order}
