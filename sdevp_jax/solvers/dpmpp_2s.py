r"""DPM-Solver++(2S): the single-step second-order DPM-Solver++ (Lu et al. 2022b, Algorithm 1).

Each step from :math:`s` to :math:`t` (:math:`h = \lambda_t - \lambda_s`) evaluates the
model twice: at :math:`x_s`, and at an intermediate point :math:`u` at the time
:math:`s_1` with :math:`\lambda_{s_1} = \lambda_s + r h` (the paper's :math:`r = 1/2`),
reached by a first-order step; the two data predictions then give the slope in
:math:`\lambda` of the exponential integrator:

.. math::

    u = \frac{\sigma_{s_1}}{\sigma_s} x_s - \alpha_{s_1}(e^{-rh} - 1) D_s, \qquad
    D = \Big(1 - \frac{1}{2r}\Big) D_s + \frac{1}{2r} D(u, s_1),

.. math::

    x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t (e^{-h} - 1) D .

No memory across steps (single-step); ``2 (N - 1)`` network calls, plus one with
``final_sigmas_type="zero"``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from .base import StepInfo, option, register
from .multistep import GridSolver

__all__ = ["DPMSolverPP2S", "dpmpp_2s_step"]


def dpmpp_2s_step(x, d_s, d_mid, c, c_mid, r):
    r"""The step of :mod:`this module <sdevp_jax.solvers.dpmpp_2s>` given both data predictions.

    ``c`` holds the schedule at ``s`` and ``t``, ``c_mid`` at ``s`` and the intermediate time (as
    :class:`~sdevp_jax.solvers.base.StepCoeffs`); ``d_mid`` is the model's data prediction at
    :func:`dpmpp_2s_midpoint`'s point.
    """
    h = c.lam_t - c.lam_s
    d = (1.0 - 0.5 / r) * d_s + (0.5 / r) * d_mid
    return (c.sigma_t / c.sigma_s) * x - (c.alpha_t * jnp.expm1(-h)) * d


def dpmpp_2s_midpoint(x, d_s, c_mid):
    """The first-order point ``u`` at the intermediate time (``c_mid``: from ``s`` to it)."""
    return (c_mid.sigma_t / c_mid.sigma_s) * x - (c_mid.alpha_t * jnp.expm1(c_mid.lam_s - c_mid.lam_t)) * d_s


@register
@struct.dataclass
class DPMSolverPP2S(GridSolver):
    """DPM-Solver++(2S) along the state's grid, the intermediate point at a fraction ``r`` of each step in
    log-SNR."""

    r: float = option(0.5, help="where in each step (in log-SNR) the second evaluation is, in (0, 1]")

    name = "dpm_solver_pp_2s"
    description = "single-step DPM-Solver++(2S), two network calls per step (Lu et al. 2022b, Alg. 1)"
    nfe_formula = "2 (N - 1) (+ 1 with final_sigmas_type='zero')"
    order = 2

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.r, bool) or not isinstance(self.r, (int, float)) or not 0.0 < self.r <= 1.0:
            raise ValueError(f"r must be a number in (0, 1], got {self.r!r}")

    def nfe(self, num_points):
        return 2 * (num_points - 1) + (1 if self.final_zero else 0)

    def init(self, x, grid):
        return ()

    def step(self, model, x, state, grid, k, noise):
        c = grid.coeffs(k, k + 1)
        schedule = model.state.schedule.cast(x.dtype)
        lam_mid = c.lam_s + self.r * (c.lam_t - c.lam_s)
        t_mid = schedule.t_from_log_snr(lam_mid)
        log_alpha_mid = schedule.log_alpha(t_mid)
        alpha_mid, sigma_mid = jnp.exp(log_alpha_mid), schedule.sigma(t_mid)
        c_mid = c._replace(lam_t=lam_mid, alpha_t=alpha_mid, sigma_t=sigma_mid, log_alpha_t=log_alpha_mid)
        _, d_s = self.predict(model, x, grid, k)
        u = dpmpp_2s_midpoint(x, d_s, c_mid)
        _, d_mid = self.predict_at(model, u, t_mid, alpha_mid, sigma_mid)
        return dpmpp_2s_step(x, d_s, d_mid, c, c_mid, self.r), state, StepInfo(2)
