r"""ER-SDE-Solver (Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDE for diffusion
models"), orders 1-3, in its VP form.

In :math:`\bar x = x/\alpha` and :math:`\rho = \sigma/\alpha` the extended reverse-time SDE (ER SDE) with a noise
scale function :math:`\varphi(\rho)` has, over a step from :math:`\rho_s` to :math:`\rho_t < \rho_s`, the exact
solution

.. math::

    \bar x_t = \frac{\varphi(\rho_t)}{\varphi(\rho_s)}\bar x_s
               + \varphi(\rho_t)\int_{\rho_t}^{\rho_s}\frac{\varphi'(\rho)}{\varphi(\rho)^2}\,x_\theta(\rho)\,d\rho
               + \sqrt{\rho_t^2 - \rho_s^2\frac{\varphi(\rho_t)^2}{\varphi(\rho_s)^2}}\;z

(the paper's eq. for the VP SDE; :math:`x_\theta` the data prediction). :math:`\varphi(\rho) = \rho` is the
probability-flow ODE (no noise; order 1 is DDIM), :math:`\varphi(\rho) = \rho^2` the reverse SDE (order 1 is
DDPM's ancestral step, DDIM with :math:`\eta = 1`). Expanding :math:`x_\theta` in Taylor terms at :math:`\rho_s`
and integrating by parts gives the ER-SDE-Solver-1, -2, -3 updates (with :math:`r = \varphi(\rho_t)/\varphi(\rho_s)`):

.. math::

    \bar x_t = r\bar x_s + (1 - r)x_\theta(\rho_s)
               + \Big(\rho_t - \rho_s + \varphi(\rho_t)\int_{\rho_t}^{\rho_s}\frac{d\rho}{\varphi}\Big) D_1
               + \Big(\tfrac12(\rho_t - \rho_s)^2
                      + \varphi(\rho_t)\int_{\rho_t}^{\rho_s}\frac{\rho - \rho_s}{\varphi}\,d\rho\Big) D_2
               + \text{noise},

:math:`D_1 \approx x_\theta'(\rho_s)`, :math:`D_2 \approx x_\theta''(\rho_s)`. As the authors' algorithm and code
(QinpengCui/ER-SDE-Solver, ``er_sde_solver.py``, ``vp_*_order_taylor``) have them, :math:`D_1` is the backward
difference :math:`(x_{\theta,s} - x_{\theta,s-1})/(\rho_s - \rho_{s-1})` and :math:`D_2 = 2(D_1 - D_1^{prev})
/(\rho_s - \rho_{s-2})` (``first_derivative="authors"``, the default); the backward difference is first-order
accurate, so order 3's step is exact for predictions linear in :math:`\rho`, not quadratic, and its global error
is of order 2 (tests/test_er_sde.py measures it). ``first_derivative="taylor"`` adds
:math:`(\rho_s - \rho_{s-1})` times the second divided difference, the derivative of the interpolating quadratic:
exact for quadratics, order 3. The two integrals of :math:`1/\varphi` have no closed form for most
:math:`\varphi`; they are computed by 24-point Gauss--Legendre quadrature in :math:`\log\rho` (to rounding on
the step's interval, ``quadrature="gauss"``, the default), or by the authors' code's 100-point left Riemann sum
in :math:`\rho` (``quadrature="riemann"``), whose relative error does not vanish with the step. The authors' code
also drops a step's noise when its variance (in :math:`\bar x`) is below :math:`10^{-6}`
(``variance_floor=1e-6`` reproduces it; default 0).

The noise scale functions are the authors' (``customized_func``; each has :math:`\varphi(\rho)/\rho`
nondecreasing, so the variance is :math:`\ge 0`): ``"sde_5"`` :math:`\rho(e^{\rho^{0.3}} + 10)`, the code's
default and the one of the paper's ER-SDE-Solver-3 results; ``"ode"`` :math:`\rho`; ``"sde"`` :math:`\rho^2`
(the reverse SDE); ``"sde_1"`` :math:`\rho(e^{-1/\rho} + 10)`; ``"sde_2"`` :math:`\rho^{1.5}`; ``"sde_3"``
:math:`\rho^{2.5}`; ``"sde_4"`` :math:`\rho^{0.9}\log_{10}(1 + 100\rho^{1.5})`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

from .base import StepCoeffs, choice_option, option, register
from .multistep import GridSolver, History

__all__ = ["ERSDE", "er_sde_step", "NOISE_SCALES"]


def _sde_5(x):
    return x * (jnp.exp(x**0.3) + 10.0)


#: The noise scale functions phi(rho) by name (the authors' customized_func types 7, 1, 2, 3 with eta = 0, 4-6).
NOISE_SCALES = {
    "sde_5": _sde_5,
    "ode": lambda x: x,
    "sde": lambda x: x * x,
    "sde_1": lambda x: x * (jnp.exp(-1.0 / x) + 10.0),
    "sde_2": lambda x: x**1.5,
    "sde_3": lambda x: x**2.5,
    "sde_4": lambda x: x**0.9 * jnp.log10(1.0 + 100.0 * x**1.5),
}
QUADRATURES = ("gauss", "riemann")
FIRST_DERIVATIVES = ("authors", "taylor")
_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(24)
_RIEMANN_POINTS = 100


def _integrals(phi, rho_t, rho_s, quadrature):
    r"""The step's two integrals: :math:`\int_{\rho_t}^{\rho_s} d\rho/\varphi` and
    :math:`\int_{\rho_t}^{\rho_s} (\rho - \rho_s)/\varphi\,d\rho`."""
    dtype = rho_s.dtype
    if quadrature == "riemann":  # the authors': nodes rho_t + k/100 (rho_s - rho_t), k < 100, weights (rho_s - rho_t)/100
        k = jnp.arange(_RIEMANN_POINTS, dtype=dtype)
        rho = rho_t + k / float(_RIEMANN_POINTS) * (rho_s - rho_t)
        w = (rho_s - rho_t) / float(_RIEMANN_POINTS)
        inv = 1.0 / phi(rho)
        return jnp.sum(inv * w), jnp.sum((rho - rho_s) * inv * w)
    lo, hi = jnp.log(rho_t), jnp.log(rho_s)  # in u = log rho: d rho = rho du, a smooth integrand down to small rho
    u = 0.5 * (hi + lo) + 0.5 * (hi - lo) * jnp.asarray(_GAUSS_NODES, dtype)
    rho = jnp.exp(u)
    w = 0.5 * (hi - lo) * jnp.asarray(_GAUSS_WEIGHTS, dtype) * rho / phi(rho)
    return jnp.sum(w), jnp.sum((rho - rho_s) * w)


def er_sde_step(x, x0, hist: History, c: StepCoeffs, order, z, *, noise_scale: str = "sde_5",
                quadrature: str = "gauss", first_derivative: str = "authors", variance_floor: float = 0.0):
    r"""ER-SDE-Solver from ``s`` to ``t`` (see the module docstring): ``x0`` the data prediction at ``s``,
    ``hist.m1``, ``hist.m2`` the ones before (at log-SNRs ``hist.lam1``, ``hist.lam2``: :math:`\rho = e^{-\lambda}`);
    ``order`` 1-3, possibly traced; ``z`` the step's standard normal draw (``None``: no noise).

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, x0 = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> ode = sv.solvers.er_sde_step(x, x0, sv.solvers.History.init(x), c, 1, None, noise_scale="ode")
      >>> ddim = sv.solvers.ddim_step(x, x0, (x - c.alpha_s * x0) / c.sigma_s, c, 0.0, None)   # phi = rho: DDIM
      >>> bool(jnp.allclose(ode, ddim, atol=1e-6))
      True
    """
    phi = NOISE_SCALES[noise_scale]
    rho_s, rho_t = c.sigma_s / c.alpha_s, c.sigma_t / c.alpha_t
    rho_1, rho_2 = jnp.exp(-hist.lam1), jnp.exp(-hist.lam2)
    phi_t = phi(rho_t)
    r = phi_t / phi(rho_s)
    bar = r * (x / c.alpha_s) + (1.0 - r) * x0
    s_int, s_d_int = _integrals(phi, rho_t, rho_s, quadrature)
    d1 = (x0 - hist.m1) / (rho_s - rho_1)
    d1_prev = (hist.m1 - hist.m2) / (rho_1 - rho_2)
    d2 = 2.0 * (d1 - d1_prev) / (rho_s - rho_2)
    d1_third = d1 + 0.5 * (rho_s - rho_1) * d2 if first_derivative == "taylor" else d1
    c1 = (rho_t - rho_s) + phi_t * s_int
    c2 = 0.5 * (rho_t - rho_s) ** 2 + phi_t * s_d_int
    bar = jnp.where(order >= 3, bar + c1 * d1_third + c2 * d2, jnp.where(order >= 2, bar + c1 * d1, bar))
    if z is not None:
        var = rho_t * rho_t - rho_s * rho_s * r * r
        var = jnp.where(jnp.abs(var) < variance_floor, 0.0, var)
        bar = bar + jnp.sqrt(jnp.maximum(var, 0.0)) * z
    return c.alpha_t * bar


@register
@struct.dataclass
class ERSDE(GridSolver):
    """ER-SDE-Solver (:func:`er_sde_step`), orders 1-3 (default 3, the paper's ER-SDE-Solver-3), order ``min(order,
    k + 1)`` at step ``k`` as the authors' code; step ``k``'s noise slot ``1 + k`` (tests/test_er_sde.py holds it to
    the authors' code)."""

    order: int = option(3, choices=(1, 2, 3), help="the Taylor order, 1-3 (default 3: ER-SDE-Solver-3)")
    noise_scale: str = option("sde_5", choices=tuple(NOISE_SCALES), help=(
        "the noise scale function phi(rho) of the ER SDE: 'sde_5' (default, rho (exp(rho^0.3) + 10)), 'ode' (rho: the "
        "probability-flow ODE), 'sde' (rho^2: the reverse SDE), 'sde_1'-'sde_4' (the authors' other choices)"))
    quadrature: str = option("gauss", choices=QUADRATURES, help=(
        "the integrals of 1/phi: 'gauss' (default, 24-point Gauss-Legendre in log rho) or 'riemann' (the authors' "
        "100-point left sum)"))
    first_derivative: str = option("authors", choices=FIRST_DERIVATIVES, help=(
        "order 3's first-derivative estimate: 'authors' (default, the backward difference: order 2 globally) or "
        "'taylor' (the interpolating quadratic's: order 3)"))
    variance_floor: float = option(0.0, help=(
        "a step's noise variance (in x/alpha) below this is dropped (default 0; the authors' code: 1e-6)"))

    name = "er_sde"
    kind = "sde_solver"
    description = "ER-SDE-Solver 1-3 with a noise scale function, per-sample keyed noise (Cui et al. 2023)"
    max_order = 3
    noise_slots = 1

    def __post_init__(self):
        super().__post_init__()
        self._check_order()
        choice_option("noise_scale", self.noise_scale, tuple(NOISE_SCALES))
        choice_option("quadrature", self.quadrature, QUADRATURES)
        choice_option("first_derivative", self.first_derivative, FIRST_DERIVATIVES)
        floor = self.variance_floor
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor < float("inf"):
            raise ValueError(f"variance_floor must be a finite number >= 0 (method='er_sde'), got {floor!r}")

    @property
    def stochastic(self) -> bool:
        """False for ``noise_scale="ode"`` (the probability-flow ODE: no noise is drawn)."""
        return self.noise_scale != "ode"

    def orders(self, num_points: int):
        return jnp.minimum(self.order, jnp.arange(num_points - 1) + 1).astype(jnp.int32)

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        z = noise.draw() if self.stochastic else None
        x_next = er_sde_step(x, d0, hist, grid.coeffs(k, k + 1), order, z, noise_scale=self.noise_scale,
                             quadrature=self.quadrature, first_derivative=self.first_derivative,
                             variance_floor=self.variance_floor)
        return x, x_next, d0
