r"""iPNDM, the improved pseudo numerical method (Zhang & Chen, ICLR 2023, "DEIS", sec. 4 / app. F; the
sampler GITS, Chen et al. 2024, pairs with its fitted grids): Adams--Bashforth in :math:`\rho = \sigma/\alpha`.

In EDM's variables (:math:`\bar x = x/\alpha`, :math:`\rho`) the probability-flow ODE is
:math:`d\bar x/d\rho = \hat\epsilon`; iPNDM steps it with the explicit Adams--Bashforth formulas of fixed
(uniform-step) coefficients through the last ``order`` noise predictions, lower orders while the history
fills (``min(order, k + 1)``):

.. math::

    \bar x_{k+1} = \bar x_k + (\rho_{k+1} - \rho_k)\,\Big\{\epsilon_k,\;
    \tfrac{3\epsilon_k - \epsilon_{k-1}}{2},\;
    \tfrac{23\epsilon_k - 16\epsilon_{k-1} + 5\epsilon_{k-2}}{12},\;
    \tfrac{55\epsilon_k - 59\epsilon_{k-1} + 37\epsilon_{k-2} - 9\epsilon_{k-3}}{24}\Big\}.

The coefficients are the uniform-step ones on every grid (as the authors' code, zju-pi/diff-sampler, has
them), so on a non-uniform grid in :math:`\rho` the method is not of its nominal order (tests/test_ipndm.py
measures it). Order 1 is DDIM.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from .base import StepCoeffs, option, register
from .multistep import GridSolver, History

__all__ = ["IPNDM", "ipndm_step"]


def ipndm_step(x, eps0, hist: History, c: StepCoeffs, order):
    r"""iPNDM from ``s`` to ``t`` (see the module docstring): ``eps0`` the noise prediction at ``s``, ``hist.m1``,
    ``m2``, ``m3`` the ones before (most recent first); ``order`` 1-4, possibly traced.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> x, eps = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> c = grid.coeffs(0, 1)
      >>> ddim = c.alpha_t * (x - c.sigma_s * eps) / c.alpha_s + c.sigma_t * eps
      >>> bool(jnp.allclose(sv.solvers.ipndm_step(x, eps, sv.solvers.History.init(x), c, 1), ddim, atol=1e-6))
      True
    """
    m1, m2, m3 = hist.m1, hist.m2, hist.m3
    slope = jnp.where(order >= 4, (55.0 * eps0 - 59.0 * m1 + 37.0 * m2 - 9.0 * m3) / 24.0,
                      jnp.where(order >= 3, (23.0 * eps0 - 16.0 * m1 + 5.0 * m2) / 12.0,
                                jnp.where(order >= 2, (3.0 * eps0 - m1) / 2.0, eps0)))
    d_rho = c.sigma_t / c.alpha_t - c.sigma_s / c.alpha_s
    return c.alpha_t * (x / c.alpha_s + d_rho * slope)


@register
@struct.dataclass
class IPNDM(GridSolver):
    """iPNDM (:func:`ipndm_step`), orders 1-4, noise predictions in its history (tests/test_ipndm.py holds it to
    the authors' code)."""

    order: int = option(4, choices=(1, 2, 3, 4), help="the Adams-Bashforth order, 1-4 (the authors' default 4)")

    model_at_grid_points = True
    name = "ipndm"
    description = "iPNDM: Adams-Bashforth in sigma/alpha with uniform-step coefficients, orders 1-4 (Zhang & Chen 2023)"
    max_order = 4

    def __post_init__(self):
        super().__post_init__()
        self._check_order()

    def orders(self, num_points: int):
        return jnp.minimum(self.order, jnp.arange(num_points - 1) + 1).astype(jnp.int32)

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        eps = self.noise_of(x, eps, d0, grid, k)
        return x, ipndm_step(x, eps, hist, grid.coeffs(k, k + 1), order), eps
