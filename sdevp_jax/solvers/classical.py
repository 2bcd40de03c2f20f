r"""The classical samplers of diffusers' sigma-space schedulers: Euler ancestral and the linear multistep method.

diffusers' ``EulerAncestralDiscreteScheduler`` and ``LMSDiscreteScheduler`` (after k-diffusion, Karras et al.,
NeurIPS 2022) step the variance-exploding form of a VP model: with :math:`\rho = \sigma/\alpha` (their ``sigma``)
and :math:`\bar x = x/\alpha` (their ``sample``), the probability-flow ODE is

.. math::

    \frac{d\bar x}{d\rho} = \hat\epsilon(x, t) \qquad\text{(Karras et al. 2022, eq. 4 with } s = 1\text{)},

and a step from :math:`s` to :math:`t` is :math:`\bar x_t = \bar x_s + \int_{\rho_s}^{\rho_t}\hat\epsilon\,d\rho`.
Euler's method on it is DDIM (:func:`~sdevp_jax.solvers.ddim_step` with :math:`\eta = 0`, the same update in
exact arithmetic), which is why an ``EulerDiscreteScheduler`` config samples with ``method="ddim"``. The solvers
here take :math:`\rho` from the grid (:math:`e^{-\lambda}`) and return :math:`x = \alpha\bar x`; diffusers'
fractional labels are served by the state's grid (:func:`sdevp_jax.grids.interpolated_label_grid`).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from .base import StepCoeffs, StepInfo, option, register
from .multistep import GridSolver, History

__all__ = ["EulerAncestral", "euler_ancestral_step", "LMS", "lms_step", "lms_coefficients"]


def _rho(lam):
    r""":math:`\rho = \sigma/\alpha = e^{-\lambda}`."""
    return jnp.exp(-lam)


def euler_ancestral_step(x0, eps, c: StepCoeffs, z):
    r"""Euler ancestral (k-diffusion's ``sample_euler_ancestral``, diffusers' ``EulerAncestralDiscreteScheduler``)
    from ``s`` to ``t``, in :math:`\rho = \sigma/\alpha`:

    .. math::

        \rho_\uparrow = \rho_t\sqrt{1 - \rho_t^2/\rho_s^2},\quad \rho_\downarrow = \sqrt{\rho_t^2 - \rho_\uparrow^2}
        = \rho_t^2/\rho_s,\qquad
        \frac{x_t}{\alpha_t} = \frac{x_s}{\alpha_s} + (\rho_\downarrow - \rho_s)\hat\epsilon + \rho_\uparrow z:

    an Euler step of the probability-flow ODE down to :math:`\rho_\downarrow`, then fresh noise back up to
    :math:`\rho_t` (the variance-exploding ancestral step, not DDPM's posterior: :math:`\rho_\uparrow^2 =
    \rho_t^2(\rho_s^2 - \rho_t^2)/\rho_s^2`). ``z`` is a standard normal draw of ``x``'s shape. Written with
    the predictions ``x0`` (:math:`\hat x_0 = x_s/\alpha_s - \rho_s\hat\epsilon`) and ``eps`` it reads
    :math:`x_t = \alpha_t(\hat x_0 + \rho_\downarrow\hat\epsilon + \rho_\uparrow z)`, finite at
    :math:`\alpha_s = 0` (a zero-terminal-SNR start: :math:`\rho_\downarrow = 0`, :math:`\rho_\uparrow = \rho_t`).

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, eps, z = jnp.ones((2, 2)), jnp.full((2, 2), 0.5), jnp.zeros((2, 2))
      >>> rho_s, rho_t = c.sigma_s / c.alpha_s, c.sigma_t / c.alpha_t
      >>> mean = c.alpha_t * (x / c.alpha_s + (rho_t**2 / rho_s - rho_s) * eps)   # z = 0: the Euler step to rho_down
      >>> x0 = x / c.alpha_s - rho_s * eps
      >>> bool(jnp.allclose(sv.solvers.euler_ancestral_step(x0, eps, c, z), mean, atol=1e-6))
      True
    """
    rho_t = _rho(c.lam_t)
    up = rho_t * jnp.sqrt(jnp.maximum(-jnp.expm1(2.0 * (c.lam_s - c.lam_t)), 0.0))
    down = rho_t * jnp.exp(c.lam_s - c.lam_t)  # rho_t^2 / rho_s
    return c.alpha_t * (x0 + down * eps + up * z)


@register
@struct.dataclass
class EulerAncestral(GridSolver):
    """Euler ancestral in sigma/alpha (:func:`euler_ancestral_step`); step ``k``'s noise slot ``1 + k``; with
    ``final_sigmas_type="zero"`` (diffusers') the last step to sigma = 0 is the data prediction (its noise
    scale is 0 there)."""

    zero_snr_start = True
    name = "euler_ancestral"
    diffusers_scheduler = "EulerAncestralDiscreteScheduler"
    kind = "sde_solver"
    description = "Euler ancestral in sigma/alpha, stochastic, per-sample keyed noise (k-diffusion; Karras et al. 2022)"
    order = 1
    noise_slots = 1

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        eps = self.noise_of(x, eps, d0, grid, k)
        return x, euler_ancestral_step(d0, eps, grid.coeffs(k, k + 1), noise.draw()), d0


def _poly_mul_linear(coefs, root):
    """The coefficients (lowest first) of ``poly(u) * (u - root)`` from ``poly``'s."""
    out = [-root * coefs[0]]
    for i in range(1, len(coefs)):
        out.append(coefs[i - 1] - root * coefs[i])
    out.append(coefs[-1])
    return out


def lms_coefficients(rho_nodes, rho_t, order: int):
    r"""The linear multistep coefficients :math:`c_j = \int_{\rho_0}^{\rho_t}\ell_j(\rho)\,d\rho`, ``j < order``:
    the Lagrange basis polynomials :math:`\ell_j` of the nodes ``rho_nodes[:order]`` (:math:`\rho_0` the current
    point's, then the earlier ones), integrated exactly.

    Each :math:`\ell_j` is a polynomial of degree ``order - 1`` in :math:`u = \rho - \rho_0`: its coefficients
    are the product of the linear factors :math:`(u - d_m)/(d_j - d_m)`, :math:`d_m = \rho_m - \rho_0`, and its
    integral over :math:`[0, h]`, :math:`h = \rho_t - \rho_0`, is :math:`\sum_i a_i h^{i+1}/(i + 1)` (diffusers
    integrates the same polynomial numerically, ``scipy.integrate.quad``). ``order`` is a Python int in 1-4.

    Examples:
      >>> [float(c) for c in sv.solvers.lms_coefficients([1.0, 2.0], 0.5, 2)]   # trapezoid-like AB2 in rho
      [-0.625, 0.125]
    """
    d = [rho_nodes[m] - rho_nodes[0] for m in range(order)]
    h = rho_t - rho_nodes[0]
    out = []
    for j in range(order):
        coefs, denom = [jnp.ones_like(h)], jnp.ones_like(h)
        for m in range(order):
            if m != j:
                coefs = _poly_mul_linear(coefs, d[m])
                denom = denom * (d[j] - d[m])
        integral = sum(a * h ** (i + 1) / (i + 1) for i, a in enumerate(coefs))
        out.append(integral / denom)
    return out


def lms_step(x, eps0, hist: History, c: StepCoeffs, order, rho_t=None):
    r"""The linear multistep method in :math:`\rho = \sigma/\alpha` (diffusers' ``LMSDiscreteScheduler``;
    Karras et al. 2022's k-diffusion ``sample_lms``) from ``s`` to ``t``:

    .. math::

        \frac{x_t}{\alpha_t} = \frac{x_s}{\alpha_s} + \sum_{j < p} c_j\,\hat\epsilon_j,\qquad
        c_j = \int_{\rho_s}^{\rho_t}\ell_j(\rho)\,d\rho

    (:func:`lms_coefficients`; :math:`\hat\epsilon_0` = ``eps0`` at :math:`\rho_s`, then ``hist.m1``, ``m2``,
    ``m3`` at ``hist.lam1``, ...): Adams--Bashforth of order ``p`` (1-4, possibly traced) on the grid's own,
    non-uniform :math:`\rho`. ``rho_t`` overrides :math:`\rho_t` (0: the step to :math:`\sigma = 0`, where
    :math:`\alpha_t = 1`, with ``c.alpha_t`` 1). Order 1 is DDIM.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, eps = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> ddim = c.alpha_t * (x - c.sigma_s * eps) / c.alpha_s + c.sigma_t * eps
      >>> bool(jnp.allclose(sv.solvers.lms_step(x, eps, sv.solvers.History.init(x), c, 1), ddim, atol=1e-6))
      True
    """
    rho_t = _rho(c.lam_t) if rho_t is None else rho_t
    nodes = [_rho(c.lam_s), _rho(hist.lam1), _rho(hist.lam2), _rho(hist.lam3)]
    preds = [eps0, hist.m1, hist.m2, hist.m3]
    base = x / c.alpha_s

    def of_order(p):
        coeffs = lms_coefficients(nodes, rho_t, p)
        return base + sum(cj.astype(x.dtype) * m for cj, m in zip(coeffs, preds[:p]))

    out = jnp.where(order >= 4, of_order(4), jnp.where(order >= 3, of_order(3),
                                                       jnp.where(order >= 2, of_order(2), of_order(1))))
    return c.alpha_t * out


@register
@struct.dataclass
class LMS(GridSolver):
    """The linear multistep method in sigma/alpha (:func:`lms_step`), orders 1-4 (``min(order, k + 1)`` at step
    ``k``), noise predictions in its history. With ``final_sigmas_type="zero"`` (diffusers') the last step goes to
    sigma = 0 with the same order-``p`` formula (one more network call), as diffusers' LMS does: not the bare data
    prediction of the other grid solvers."""

    order: int = option(4, choices=(1, 2, 3, 4), help="the multistep order, 1-4 (diffusers' step default 4)")

    name = "lms"
    diffusers_scheduler = "LMSDiscreteScheduler"
    description = "linear multistep (Adams-Bashforth) in sigma/alpha, orders 1-4 (k-diffusion; Karras et al. 2022)"
    max_order = 4

    def __post_init__(self):
        super().__post_init__()
        self._check_order()

    def orders(self, num_points: int):
        """``min(order, k + 1)`` at step ``k``, the step to sigma = 0 included (diffusers lowers none at the end)."""
        return jnp.minimum(self.order, jnp.arange(num_points) + 1).astype(jnp.int32)

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        eps = self.noise_of(x, eps, d0, grid, k)
        return x, lms_step(x, eps, hist, grid.coeffs(k, k + 1), order), eps

    def finish(self, model, x, hist: History, grid):
        """With ``final_sigmas_type="zero"``: the order-``p`` step from the last grid point to sigma = 0."""
        if not self.final_zero:
            return x, hist, StepInfo(0)
        last = grid.num_points - 1
        eps, d0 = self.predict(model, x, grid, last)
        eps = self.noise_of(x, eps, d0, grid, last)
        c = grid.coeffs(last, last)._replace(alpha_t=jnp.ones_like(grid.alpha[last]))
        x = lms_step(x, eps, hist, c, self.orders(grid.num_points)[last], rho_t=jnp.zeros_like(grid.lam[last]))
        return x, hist, StepInfo(1)
