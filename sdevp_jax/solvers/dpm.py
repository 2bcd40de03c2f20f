r"""The DPM-Solver family and DDIM: exponential integrators of the probability-flow ODE in log-SNR.

* :class:`DPMSolver`: multistep DPM-Solver in noise prediction (Lu et al., NeurIPS 2022), orders 1-3;
* :class:`DDIM`: DDIM (Song, Meng & Ermon, ICLR 2021), deterministic or with :math:`\eta > 0`;
* :class:`DPMSolverPP`: multistep DPM-Solver++ in data prediction (Lu et al. 2022b), 2M and 3M;
* :class:`SDEDPMSolverPP`: SDE-DPM-Solver++ (Lu et al. 2022b), first order, 2M and 3M, with
  k-diffusion's ``eta`` between the probability-flow ODE and the reverse SDE.

The last three are grid solvers (:mod:`sdevp_jax.solvers.multistep`): they share the
diffusers options (``final_sigmas_type``, thresholding, ``lower_order_final``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from .. import _checks, grids
from .base import Grid, Solver, StepCoeffs, StepInfo, bool_option, choice_option, option, register
from .multistep import GridSolver, History, step_orders

__all__ = ["DPMSolver", "DDIM", "DPMSolverPP", "SDEDPMSolverPP", "dpm_solver_step", "ddim_step", "dpmpp_step",
           "sde_dpmpp_step", "SDE_THIRD_ORDER"]

DPMPP_TYPES = ("midpoint", "heun")
THIRD_ORDER = ("taylor", "diffusers")


def dpm_solver_step(x, e0, e1, e2, h, h1, h2, log_alpha_ratio, sigma_t, use2, use3):
    r"""Multistep DPM-Solver in noise prediction (Lu et al., NeurIPS 2022, eq. 3.7 and app. B), orders 1-3.

    .. math::

        x_t = \frac{\alpha_t}{\alpha_s} x_s - \sigma_t\big(\varphi_1\epsilon_0 + \varphi_2\epsilon'
              + \varphi_3\epsilon''\big),
        \quad \varphi_1 = e^h - 1,\ \varphi_2 = \varphi_1 - h,\ \varphi_3 = \varphi_2 - \tfrac12 h^2,

    the exact integrals of the Taylor terms of :math:`\epsilon` in :math:`\lambda`, with
    :math:`\epsilon'` and :math:`\epsilon''` from divided differences of the last three
    predictions (``e1``, ``e2`` made ``h1``, ``h2`` before) -- the full second-derivative
    term :math:`\varphi_3`, not the half the official code uses (it measured order 2.9
    against 2.2). ``use2``/``use3`` (0 or 1) switch the second and third order on;
    ``log_alpha_ratio`` is :math:`\log\alpha_t - \log\alpha_s`.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> h = c.lam_t - c.lam_s
      >>> x, eps = jnp.ones((2, 2)), jnp.zeros((2, 2))   # eps = 0: only the alpha ratio acts
      >>> x_t = sv.solvers.dpm_solver_step(x, eps, eps, eps, h, h, h, c.log_alpha_t - c.log_alpha_s, c.sigma_t, 0, 0)
      >>> bool(jnp.allclose(x_t, c.alpha_t / c.alpha_s * x))
      True
    """
    f01 = (e0 - e1) / h1
    f12 = (e1 - e2) / h2
    f012 = (f01 - f12) / (h1 + h2)
    d1 = use2 * (f01 + use3 * h1 * f012)
    d2 = use3 * 2.0 * f012
    phi1 = jnp.expm1(h)
    phi2 = phi1 - h
    phi3 = phi2 - 0.5 * h * h
    return jnp.exp(log_alpha_ratio) * x - sigma_t * (phi1 * e0 + phi2 * d1 + phi3 * d2)


@register
@struct.dataclass
class DPMSolver(Solver):
    """Multistep DPM-Solver (:func:`dpm_solver_step`) along the state's grid, or its own log-SNR grid.

    On a grid whose spacing was not asked for (``set_timesteps`` without ``spacing``)
    it steps through ``N`` points uniform in log-SNR between the same end points, the
    grid its convergence rests on (on the linear schedule's ``"reference"`` grid; on a
    diffusers config's label spacing, whose last steps are coarse in :math:`\\lambda`,
    20 points of ``leading`` left 13 % of the samples of a sharp mixture off its modes
    where the log-SNR grid left 0.05 %). Its memory: the last two noise predictions and
    the log-SNR steps before them.
    """

    order: int = option(3, choices=(1, 2, 3), help="the multistep order, 1-3 (1 is DDIM with eta = 0)")
    lower_order_final: bool = option(False, help=(
        "below 15 steps, first order at the last step and at most second at the one before (diffusers' rule, "
        "DEIS' last step); off by default"))

    name = "dpm_solver"
    description = ("probability-flow ODE, multistep DPM-Solver (order 1-3, default 3) in eps form along the state's "
                   "grid, its own log-SNR grid on the reference grid (Lu et al. 2022)")
    invertible = True

    def __post_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int) or not 1 <= self.order <= 3:
            raise ValueError(f"order must be 1, 2 or 3 (dpm_solver's), got {self.order!r}")
        bool_option("lower_order_final", self.lower_order_final)

    def times(self, state, dtype):
        if state.spacing_given:
            return state.timesteps.astype(dtype)
        schedule = state.schedule.cast(dtype)
        if state.uses_reference_step:
            top, bottom = jnp.asarray(1.0, dtype), jnp.asarray(state.sampling_eps, dtype)
        else:
            top, bottom = state.timesteps[0].astype(dtype), state.timesteps[-1].astype(dtype)
        return grids.log_snr_grid(schedule, top, bottom, state.timesteps.shape[0])

    def init(self, x, grid):
        one = jnp.ones((), x.dtype)
        return jnp.zeros_like(x), jnp.zeros_like(x), one, one  # previous eps values and the lambda steps before them

    def step(self, model, x, memory, grid: Grid, k, noise):
        e1, e2, h1, h2 = memory
        dtype = x.dtype
        e0 = model.eps(x, grid.t[k])
        h = grid.lam[k + 1] - grid.lam[k]
        orders = jnp.asarray(step_orders(grid.num_points - 1, self.order, self.lower_order_final, False, "dpmsolver"))
        use2 = (orders[k] >= 2).astype(dtype)
        use3 = (orders[k] >= 3).astype(dtype)
        x_next = dpm_solver_step(x, e0, e1, e2, h, h1, h2, grid.log_alpha[k + 1] - grid.log_alpha[k],
                                 grid.sigma[k + 1], use2, use3)
        return x_next, (e0, e1, h, h1), StepInfo(1)


def ddim_step(x, x0, eps, c: StepCoeffs, eta, z):
    r"""DDIM (Song, Meng & Ermon, ICLR 2021, eq. 12) from ``s`` to ``t``.

    .. math::

        x_t = \alpha_t \hat x_0 + \sqrt{\sigma_t^2 - \sigma_\eta^2}\,\hat\epsilon + \sigma_\eta z,
        \qquad \sigma_\eta = \eta\,\frac{\sigma_t}{\sigma_s}\sqrt{1 - \alpha_s^2/\alpha_t^2}.

    ``eta = 0`` is deterministic (the probability-flow ODE's first-order
    exponential integrator, DPM-Solver-1) and ``z`` may be ``None``; ``eta = 1`` is
    the DDPM posterior (``fixed_small``) variance.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)   # from t = 0.8 to t = 0.5
      >>> x0_hat, eps_hat = jnp.ones((2, 2)), jnp.zeros((2, 2))
      >>> x = c.alpha_s * x0_hat + c.sigma_s * eps_hat   # a point the prediction explains exactly
      >>> x_t = sv.solvers.ddim_step(x, x0_hat, eps_hat, c, 0.0, jnp.zeros((2, 2)))
      >>> bool(jnp.allclose(x_t, c.alpha_t * x0_hat))
      True
    """
    if z is None:
        return c.alpha_t * x0 + c.sigma_t * eps
    sigma_eta = eta * (c.sigma_t / c.sigma_s) * jnp.sqrt(-jnp.expm1(2.0 * (c.log_alpha_s - c.log_alpha_t)))
    direction = jnp.sqrt(jnp.maximum(jnp.square(c.sigma_t) - jnp.square(sigma_eta), 0.0))
    return c.alpha_t * x0 + direction * eps + sigma_eta * z


@register
@struct.dataclass
class DDIM(GridSolver):
    """DDIM (:func:`ddim_step`); ``eta`` is a leaf (it may be traced), step ``k``'s noise slot ``1 + k``."""

    eta: float = option(0.0, static=False, help="eta >= 0 (default 0: deterministic; 1: DDPM's posterior variance)")
    #: where the model is called in a step from s to t: at s (the method), or at t with x and the conversions at s
    #: (diffusers' DDIMInverseScheduler; :func:`sdevp_jax.invert_ode`'s ``evaluate_at``). Not an option of sampling.
    evaluate_at: str = struct.field(pytree_node=False, default="start")

    zero_snr_start = True
    renoise_ready = True
    model_at_grid_points = True
    name = "ddim"
    diffusers_scheduler = "DDIMScheduler"
    description = "DDIM (Song, Meng & Ermon 2021); eta > 0 makes it stochastic, per-sample keyed noise"
    order = 1
    noise_slots = 1
    invertible = True

    def check(self) -> "DDIM":
        """``eta`` checked (a real >= 0 where it is concrete); called by the sampling functions."""
        eta = _checks.real_scalar("eta", self.eta)
        if not _checks.is_traced(eta) and not eta >= 0.0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        return self.replace(eta=eta)

    @property
    def stochastic(self) -> bool:
        return _checks.is_traced(self.eta) or self.eta != 0.0

    def init(self, x, grid):
        return History.init(x)

    def predict(self, model, x, grid, k):
        if self.evaluate_at == "end":  # the model at the step's end time, its output read at the start's alpha, sigma
            return self.predict_at(model, x, grid.t[k + 1], grid.alpha[k], grid.sigma[k])
        return super().predict(model, x, grid, k)

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        z = noise.draw() if self.stochastic else None
        return x, ddim_step(x, d0, eps, grid.coeffs(k, k + 1), self.eta, z), d0


def _differences(d0, hist: History, c: StepCoeffs):
    """DPM-Solver++'s scaled divided differences ``(D1_2nd, D1_3rd, D2)`` of the data predictions.

    With :math:`r_0 = h_0/h`, :math:`r_1 = h_1/h` (the two previous steps in
    :math:`\\lambda` relative to this one): :math:`D_{1,0} = (m_0 - m_1)/r_0 \\approx hD'`,
    :math:`D_{1,1} = (m_1 - m_2)/r_1`, and for third order
    :math:`D_1 = D_{1,0} + \\tfrac{r_0}{r_0 + r_1}(D_{1,0} - D_{1,1}) \\approx hD'` and
    :math:`D_2 = (D_{1,0} - D_{1,1})/(r_0 + r_1) \\approx \\tfrac12 h^2 D''` (Taylor expansion).
    """
    h = c.lam_t - c.lam_s
    r0 = (c.lam_s - hist.lam1) / h
    r1 = (hist.lam1 - hist.lam2) / h
    d1_0 = (d0 - hist.m1) / r0
    d1_1 = (hist.m1 - hist.m2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return d1_0, d1, d2


def dpmpp_step(x, d0, hist: History, c: StepCoeffs, order, *, solver_type: str = "midpoint",
               third_order: str = "taylor"):
    r"""Multistep DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++", Algorithm 2 and its third-order extension).

    With :math:`h = \lambda_t - \lambda_s` and :math:`\varphi_1 = e^{-h} - 1`:

    .. math::

        x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t\varphi_1 D_0
              + \text{(order 2)}\ \begin{cases}
                  -\tfrac12\alpha_t\varphi_1 D_{1,0} & \text{midpoint (the paper's 2M)} \\
                  \alpha_t(\varphi_1/h + 1) D_{1,0} & \text{heun}
                \end{cases}
              + \text{(order 3)}\ \alpha_t(\varphi_1/h + 1) D_1
                - c_3\,\alpha_t\Big(\frac{\varphi_1 + h}{h^2} - \frac12\Big) D_2 .

    The second- and third-derivative coefficients are the exact integrals
    :math:`\sigma_t\int e^{\lambda}(\lambda - \lambda_s)^k/k!\,d\lambda` of the Taylor
    terms, so with :math:`D_2 \approx \tfrac12 h^2 D''` the third-order term needs
    :math:`c_3 = 2` (``third_order="taylor"``, the default). diffusers' scheduler (like
    the official DPM-Solver code) uses :math:`c_3 = 1`, half the term
    (``third_order="diffusers"``, kept to reproduce it; benchmarks/results say what it
    costs). ``order`` (1, 2 or 3, possibly traced) selects the terms.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d0 = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)   # d0: the data prediction at s
      >>> first = sv.solvers.dpmpp_step(x, d0, sv.solvers.History.init(x), c, 1)   # order 1 is DDIM
      >>> ddim = sv.solvers.ddim_step(x, d0, (x - c.alpha_s * d0) / c.sigma_s, c, 0.0, jnp.zeros((2, 2)))
      >>> bool(jnp.allclose(first, ddim, atol=1e-6))
      True
    """
    h = c.lam_t - c.lam_s
    phi1 = jnp.expm1(-h)
    x1 = (c.sigma_t / c.sigma_s) * x - (c.alpha_t * phi1) * d0
    d1_0, d1, d2 = _differences(d0, hist, c)
    if solver_type == "midpoint":
        second = x1 - (0.5 * c.alpha_t * phi1) * d1_0
    else:
        second = x1 + (c.alpha_t * (phi1 / h + 1.0)) * d1_0
    c3 = 2.0 if third_order == "taylor" else 1.0
    third = x1 + (c.alpha_t * (phi1 / h + 1.0)) * d1 - (c3 * c.alpha_t * ((phi1 + h) / (h * h) - 0.5)) * d2
    return jnp.where(order >= 3, third, jnp.where(order >= 2, second, x1))


@register
@struct.dataclass
class DPMSolverPP(GridSolver):
    """Multistep DPM-Solver++ (:func:`dpmpp_step`), 2M (default) or 3M."""

    order: int = option(2, choices=(1, 2, 3), help="the multistep order, 1-3 (2: '2M'; 3: '3M')")
    solver_type: str = option("midpoint", choices=DPMPP_TYPES, help="the second-order term: midpoint or heun")
    lower_order_final: bool = option(True, help="lower the order at the last steps below 15 steps, as diffusers")
    euler_at_final: bool = option(False, help=(
        "a first-order last step whatever the grid (diffusers' euler_at_final; with final_sigmas_type='zero' "
        "it is first order anyway)"))
    third_order: str = option("taylor", choices=THIRD_ORDER, help=(
        "order 3's term: 'taylor' (default, exact Taylor coefficients) or 'diffusers' (half the "
        "second-derivative term, as diffusers and the official code)"))

    zero_snr_start = True
    renoise_ready = True
    model_at_grid_points = True
    name = "dpm_solver_pp"
    repeat_ready = True
    diffusers_scheduler = "DPMSolverMultistepScheduler"
    description = "multistep DPM-Solver++ in data prediction, 2M (midpoint/heun) or 3M (Lu et al. 2022b)"
    max_order = 3
    invertible = True

    def __post_init__(self):
        super().__post_init__()
        self._check_order()
        choice_option("solver_type", self.solver_type, DPMPP_TYPES)
        choice_option("third_order", self.third_order, THIRD_ORDER)

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        x_next = dpmpp_step(x, d0, hist, grid.coeffs(k, k + 1), order, solver_type=self.solver_type,
                            third_order=self.third_order)
        return x, x_next, d0

    def renoised(self, x_next, x, eps, d0, grid, k):
        r"""CFG++ (Chung et al., ICLR 2025): the first-order part :math:`\frac{\sigma_t}{\sigma_s}x_s -
        \alpha_t\varphi_1 D_0` of :func:`dpmpp_step` becomes DDIM's CFG++ step :math:`\alpha_t D_0 +
        \sigma_t\hat\epsilon_u` (the guided data prediction renoised with the unconditional noise); the
        higher-order terms in the guided predictions stay. The two differ by
        :math:`\frac{\sigma_t}{\sigma_s}(\alpha_s D_0 + \sigma_s\hat\epsilon_u - x_s)`, zero when
        :math:`D_0` and :math:`\hat\epsilon_u` explain :math:`x_s` together (no guidance)."""
        c = grid.coeffs(k, k + 1)
        return x_next + (c.sigma_t / c.sigma_s) * (c.alpha_s * d0 + c.sigma_s * eps - x)


def sde_dpmpp_step(x, d0, hist: History, c: StepCoeffs, order, z, *, solver_type: str = "midpoint", eta=1.0,
                   s_noise=1.0, third_order: str = "taylor"):
    r"""SDE-DPM-Solver++ (Lu et al. 2022b, sec. 5 and app. B), orders 1-3, with k-diffusion's ``eta``.

    The reverse SDE family :math:`dx = [f x - \tfrac{1+\eta^2}{2} g^2\nabla\log p]\,dt + \eta g\,d\bar w`
    (:math:`\eta = 0` the probability-flow ODE, :math:`\eta = 1` the reverse SDE) written in
    :math:`\lambda` with the data prediction :math:`D` has, over a step :math:`h = \lambda_t - \lambda_s`, the
    exact solution of its linear part

    .. math::

        x_t = \frac{\sigma_t}{\sigma_s}e^{-\eta h} x_s
              + \alpha_t\int_0^h (1+\eta)\,e^{-(1+\eta)(h - v)} D(\lambda_s + v)\,dv
              + \sigma_t\sqrt{1 - e^{-2\eta h}}\; z

    (SDE-DPM-Solver++'s eq. for :math:`\eta = 1`; k-diffusion's ``sample_dpmpp_2m_sde`` /
    ``sample_dpmpp_3m_sde`` for any :math:`\eta`; its ``s_noise`` multiplies :math:`z`). With
    :math:`H = (1+\eta)h`, :math:`\varphi_2 = (e^{-H} - 1)/H + 1` and :math:`\varphi_3 = \varphi_2/H - \tfrac12`,
    the Taylor terms of :math:`D` integrate exactly to

    .. math::

        \alpha_t(1 - e^{-H}) D_0 + \alpha_t\varphi_2\, hD' - \alpha_t\varphi_3\, h^2 D''
        \quad(\text{order 1, 2, 3 take 1, 2, 3 terms}).

    Order 2 replaces :math:`hD'` by the divided difference :math:`D_{1,0}` (:func:`_differences`): ``heun``
    with the exact coefficient :math:`\varphi_2`, ``midpoint`` (the paper's 2M) with
    :math:`\tfrac12(1 - e^{-H})`. Order 3 uses :math:`D_1 \approx hD'` and :math:`D_2 \approx \tfrac12 h^2 D''`,
    so the exact term is :math:`-2\alpha_t\varphi_3 D_2` (``third_order="taylor"``, the default);
    ``"k-diffusion"`` (``sample_dpmpp_3m_sde``) takes half of it, :math:`-\alpha_t\varphi_3 D_2`, the half term
    of DPM-Solver++ 3M as diffusers and the official code write it; ``"diffusers"`` (diffusers'
    ``sde-dpmsolver++`` order 3) has :math:`-\alpha_t(\varphi_3 + 1) D_2`, its :math:`-\tfrac12` for
    :math:`+\tfrac12`: an O(1) coefficient where the term is O(h). At order 3 the warm-up's order-2 step is
    ``solver_type``'s (k-diffusion's 3M SDE: ``heun``). :math:`\eta = 0` is :func:`dpmpp_step` (``taylor`` and
    ``k-diffusion`` there being its ``taylor`` and ``diffusers``).

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d0, z = jnp.ones((2, 2)), jnp.full((2, 2), 0.5), jax.random.normal(jax.random.key(0), (2, 2))
      >>> sv.solvers.sde_dpmpp_step(x, d0, sv.solvers.History.init(x), c, 1, z).shape
      (2, 2)
      >>> ode = sv.solvers.dpmpp_step(x, d0, sv.solvers.History.init(x), c, 1)   # eta = 0: DPM-Solver++
      >>> bool(jnp.allclose(sv.solvers.sde_dpmpp_step(x, d0, sv.solvers.History.init(x), c, 1, z, eta=0.0), ode))
      True
    """
    h = c.lam_t - c.lam_s
    big_h = (1.0 + eta) * h
    one_minus = -jnp.expm1(-big_h)
    phi2 = 1.0 - one_minus / big_h
    phi3 = phi2 / big_h - 0.5
    x1 = (c.sigma_t / c.sigma_s * jnp.exp(-eta * h)) * x + (c.alpha_t * one_minus) * d0
    d1_0, d1, d2 = _differences(d0, hist, c)
    if solver_type == "midpoint":
        second = x1 + (0.5 * c.alpha_t * one_minus) * d1_0
    else:
        second = x1 + (c.alpha_t * phi2) * d1_0
    c3 = {"taylor": 2.0 * phi3, "k-diffusion": phi3, "diffusers": phi3 + 1.0}[third_order]
    third = x1 + (c.alpha_t * phi2) * d1 - (c.alpha_t * c3) * d2
    x_next = jnp.where(order >= 3, third, jnp.where(order >= 2, second, x1))
    if z is None:
        return x_next
    return x_next + (c.sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)) * s_noise) * z


SDE_THIRD_ORDER = ("taylor", "k-diffusion", "diffusers")


@register
@struct.dataclass
class SDEDPMSolverPP(GridSolver):
    """SDE-DPM-Solver++ (:func:`sde_dpmpp_step`), 2M (default) or 3M, k-diffusion's ``eta`` and ``s_noise`` as
    leaves (they may be traced); step ``k``'s noise slot ``1 + k``. With ``eta = 1``, ``s_noise = 1`` (the
    defaults) it is diffusers' ``sde-dpmsolver++``; with ``lower_order_final=False`` and
    ``final_sigmas_type="zero"`` k-diffusion's ``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde`` (3M:
    ``solver_type="heun"``, ``third_order="k-diffusion"``; tests/test_sde_dpmpp.py holds it to both)."""

    order: int = option(2, choices=(1, 2, 3), help="the multistep order, 1-3 (2: '2M'; 3: '3M')")
    solver_type: str = option("midpoint", choices=DPMPP_TYPES, help="the second-order term: midpoint or heun")
    lower_order_final: bool = option(True, help="lower the order at the last steps below 15 steps, as diffusers")
    euler_at_final: bool = option(False, help=(
        "a first-order last step whatever the grid (diffusers' euler_at_final; with final_sigmas_type='zero' "
        "it is first order anyway)"))
    eta: float = option(1.0, static=False, help=(
        "the SDE's noise, eta >= 0 (default 1: the reverse SDE; 0: the probability-flow ODE, "
        "DPM-Solver++; k-diffusion's eta)"))
    s_noise: float = option(1.0, static=False, help=(
        "a factor >= 0 on the injected noise (default 1; k-diffusion's s_noise, < 1 leaves the samples "
        "less noisy than the SDE)"))
    third_order: str = option("taylor", choices=SDE_THIRD_ORDER, help=(
        "order 3's second-derivative term: 'taylor' (default, the exact integral), 'k-diffusion' (half of it, "
        "as sample_dpmpp_3m_sde) or 'diffusers' (diffusers' sde-dpmsolver++ order 3, an O(1) coefficient)"))

    zero_snr_start = True
    model_at_grid_points = True
    name = "sde_dpm_solver_pp"
    repeat_ready = True
    diffusers_scheduler = "DPMSolverMultistepScheduler"
    kind = "sde_solver"
    description = "SDE-DPM-Solver++ 2M/3M with k-diffusion's eta, stochastic, per-sample keyed noise (Lu et al. 2022b)"
    max_order = 3
    noise_slots = 1

    def __post_init__(self):
        super().__post_init__()
        self._check_order()
        choice_option("solver_type", self.solver_type, DPMPP_TYPES)
        choice_option("third_order", self.third_order, SDE_THIRD_ORDER)

    def check(self) -> "SDEDPMSolverPP":
        """``eta`` and ``s_noise`` checked (reals >= 0 where they are concrete); called by the sampling functions."""
        values = {}
        for name in ("eta", "s_noise"):
            value = _checks.real_scalar(name, getattr(self, name))
            if not _checks.is_traced(value) and not value >= 0.0:
                raise ValueError(f"{name} must be >= 0 (method='sde_dpm_solver_pp'), got {value}")
            values[name] = value
        return self.replace(**values)

    @property
    def stochastic(self) -> bool:
        """False only where ``eta`` or ``s_noise`` is a concrete 0 (then the step is DPM-Solver++'s, no draw)."""
        if _checks.is_traced(self.eta) or _checks.is_traced(self.s_noise):
            return True
        return self.eta != 0.0 and self.s_noise != 0.0

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        z = noise.draw() if self.stochastic else None
        x_next = sde_dpmpp_step(x, d0, hist, grid.coeffs(k, k + 1), order, z, solver_type=self.solver_type,
                                eta=self.eta, s_noise=self.s_noise, third_order=self.third_order)
        return x, x_next, d0
