r"""DEIS, the diffusion exponential integrator sampler (Zhang & Chen, ICLR 2023), multistep in
:math:`\log\rho`, as diffusers' ``DEISMultistepScheduler`` (``algorithm_type="deis"``, ``solver_type="logrho"``).

With :math:`\rho = \sigma/\alpha = e^{-\lambda}` the probability-flow ODE is :math:`d(x/\alpha) = \hat\epsilon\,d\rho`,
so a step from :math:`s_0` to :math:`t` is exactly

.. math::

    \frac{x_t}{\alpha_t} = \frac{x_{s_0}}{\alpha_{s_0}} + \int_{\rho_{s_0}}^{\rho_t} \hat\epsilon\, d\rho .

DEIS replaces :math:`\hat\epsilon` by its Lagrange polynomial in :math:`\log\rho` through the last
``order`` noise predictions :math:`m_0, m_1, m_2` (at :math:`\rho_{s_0}, \rho_{s_1}, \rho_{s_2}`) and integrates it in
closed form: :math:`x_t = \alpha_t(x_{s_0}/\alpha_{s_0} + \sum_i c_i m_i)`, :math:`c_i = \int_{\rho_{s_0}}^{\rho_t}\ell_i(\log\rho)\,d\rho`.
Order 1 is DDIM. The antiderivatives (with :math:`u = \log\rho` and the basis' nodes :math:`b` -- the node
of :math:`\ell_i` -- and :math:`c, d`): :math:`\int \frac{u - c}{b - c}\,d\rho = \rho\frac{u - c - 1}{b - c}` and
:math:`\int \frac{(u - c)(u - d)}{(b - c)(b - d)}\,d\rho = \rho\frac{(u - c)(u - d) - (2u - c - d) + 2}{(b - c)(b - d)}`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from .base import StepCoeffs, option, register
from .multistep import GridSolver, History

__all__ = ["DEIS", "deis_step"]


def _linear(rho, u, b, c):
    """The antiderivative in rho of the linear Lagrange basis in u = log rho with node b (0 at c)."""
    return rho * (u - c - 1.0) / (b - c)


def _quadratic(rho, u, b, c, d):
    """The antiderivative in rho of the quadratic Lagrange basis in u = log rho with node b (0 at c and d)."""
    return rho * ((u - c) * (u - d) - (2.0 * u - c - d) + 2.0) / ((b - c) * (b - d))


def deis_step(x, eps0, hist: History, c: StepCoeffs, order):
    r"""DEIS from ``s`` to ``t`` (see the module docstring): ``eps0`` the noise prediction at ``s``, ``hist.m1``,
    ``hist.m2`` (at log-SNRs ``hist.lam1``, ``hist.lam2``) the ones before; ``order`` 1-3, possibly traced.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> x, eps = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> first = sv.solvers.deis_step(x, eps, sv.solvers.History.init(x), grid.coeffs(0, 1), 1)   # order 1: DDIM
      >>> c = grid.coeffs(0, 1)
      >>> ddim = c.alpha_t * (x - c.sigma_s * eps) / c.alpha_s + c.sigma_t * eps
      >>> bool(jnp.allclose(first, ddim, atol=1e-6))
      True
    """
    u_t, u0, u1, u2 = -c.lam_t, -c.lam_s, -hist.lam1, -hist.lam2  # log rho
    rho_t, rho0 = jnp.exp(u_t), jnp.exp(u0)
    ratio = jnp.exp(c.log_alpha_t - c.log_alpha_s)
    first = ratio * x - (c.sigma_t * jnp.expm1(c.lam_t - c.lam_s)) * eps0

    def integral(f, *nodes):
        return f(rho_t, u_t, *nodes) - f(rho0, u0, *nodes)

    second = c.alpha_t * (x / c.alpha_s + integral(_linear, u0, u1) * eps0 + integral(_linear, u1, u0) * hist.m1)
    third = c.alpha_t * (x / c.alpha_s + integral(_quadratic, u0, u1, u2) * eps0
                         + integral(_quadratic, u1, u2, u0) * hist.m1 + integral(_quadratic, u2, u0, u1) * hist.m2)
    return jnp.where(order >= 3, third, jnp.where(order >= 2, second, first))


@register
@struct.dataclass
class DEIS(GridSolver):
    """Multistep DEIS in log rho (:func:`deis_step`), orders 1-3, noise predictions in its history
    (tests/test_deis.py holds it to diffusers' DEISMultistepScheduler)."""

    order: int = option(2, choices=(1, 2, 3), help="the multistep order, 1-3")
    lower_order_final: bool = option(True, help="lower the order at the last steps below 15 steps, as diffusers")

    model_at_grid_points = True
    name = "deis"
    repeat_ready = True
    description = "multistep DEIS in log rho, orders 1-3 (Zhang & Chen 2023)"
    max_order = 3

    def __post_init__(self):
        super().__post_init__()
        self._check_order()

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        eps = self.noise_of(x, eps, d0, grid, k)
        return x, deis_step(x, eps, hist, grid.coeffs(k, k + 1), order), eps
