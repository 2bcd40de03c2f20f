r"""The classical samplers of diffusers' discrete schedulers: Euler ancestral, LMS, PNDM, Heun in sigma, KDPM2.

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

PNDM (Liu et al., ICLR 2022; diffusers' ``PNDMScheduler``) steps with the same update, written in
:math:`\bar\alpha` (its transfer part, :func:`pndm_transfer`), and a noise estimate from a linear multistep
combination of its past predictions after a Runge--Kutta or improved-Euler warm-up (:class:`PNDM`).

Heun in :math:`\rho` (:class:`HeunSigma`), KDPM2 and KDPM2 ancestral (:class:`KDPM2`, :class:`KDPM2Ancestral`) call
the model twice a step; KDPM2's second call is at a noise level between grid points, where the solver gives the
model diffusers' label explicitly (:meth:`~sdevp_jax.denoiser.Denoiser.model_time_at`, the ``model_t`` argument
of :meth:`~sdevp_jax.denoiser.Denoiser.eps_x0`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from .base import StepCoeffs, StepInfo, choice_option, option, register
from .ipndm import ipndm_step
from .multistep import GridSolver, History, begin_index_option

__all__ = ["EulerAncestral", "euler_ancestral_step", "LMS", "lms_step", "lms_coefficients", "PNDM", "pndm_transfer",
           "PNDM_WARMUPS", "HeunSigma", "heun_sigma_step", "KDPM2", "kdpm2_step", "KDPM2Ancestral",
           "kdpm2_ancestral_step"]


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
    #: start at this grid point (diffusers' set_begin_index, img2img; :func:`sdevp_jax.sample_ode`'s ``begin_index``):
    #: each step keeps the whole grid's order ``min(order, k + 1)`` and its weights on the grid's points before the
    #: start, whose noise predictions it never made count as 0, as diffusers does (not an option of jobs or the CLI,
    #: which start from the prior)
    begin_index: int = struct.field(pytree_node=False, default=0)

    name = "lms"
    diffusers_scheduler = "LMSDiscreteScheduler"
    description = "linear multistep (Adams-Bashforth) in sigma/alpha, orders 1-4 (k-diffusion; Karras et al. 2022)"
    max_order = 4

    def __post_init__(self):
        super().__post_init__()
        self._check_order()
        begin_index_option(self.begin_index, self.name)

    def init(self, x, grid) -> History:
        """The empty history; with ``begin_index`` b > 0, the grid's points b - 3 .. b - 1 (those that exist) with
        zero noise predictions: diffusers' LMS started at point b takes order ``min(order, b + 1)`` at once, its
        Lagrange weights on those points, and sums only the predictions it made (``zip`` stops at the shorter)."""
        hist = History.init(x)
        for j in range(min(self.begin_index, 3), 0, -1):
            hist = hist.push(jnp.zeros_like(x), grid.lam[self.begin_index - j], x, jnp.zeros((), jnp.int32))
        return hist

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


PNDM_WARMUPS = ("prk", "prk_diffusers", "improved_euler")


def pndm_transfer(x, eps, c: StepCoeffs):
    r"""PNDM's transfer part :math:`\phi` (Liu et al., ICLR 2022, "Pseudo numerical methods for diffusion models on
    manifolds", eq. 9) from ``s`` to ``t`` with the noise estimate ``eps``:

    .. math::

        x_t = \sqrt{\bar\alpha_t/\bar\alpha_s}\,x_s - \frac{\bar\alpha_t - \bar\alpha_s}{\bar\alpha_s
        \sqrt{1 - \bar\alpha_t} + \sqrt{\bar\alpha_s(1 - \bar\alpha_s)\bar\alpha_t}}\,\epsilon
        = \alpha_t\Big(\frac{x_s}{\alpha_s} + (\rho_t - \rho_s)\,\epsilon\Big),

    DDIM's update (the two forms are equal: multiply the coefficient's numerator and denominator by
    :math:`\alpha_s\sigma_t - \alpha_t\sigma_s`); computed in the second. ``c.alpha_t = 1``, ``c.sigma_t = 0``
    is the step to :math:`\sigma = 0`.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, eps = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> a_s, a_t = c.alpha_s**2, c.alpha_t**2   # alphas_cumprod at s and t
      >>> eq9 = (a_t / a_s) ** 0.5 * x - (a_t - a_s) * eps / (a_s * (1 - a_t) ** 0.5 + (a_s * (1 - a_s) * a_t) ** 0.5)
      >>> bool(jnp.allclose(sv.solvers.pndm_transfer(x, eps, c), eq9, atol=1e-6))
      True
    """
    d_rho = c.sigma_t / c.alpha_t - c.sigma_s / c.alpha_s
    return c.alpha_t * (x / c.alpha_s + d_rho * eps)


@register
@struct.dataclass
class PNDM(GridSolver):
    r"""PNDM (Liu et al., ICLR 2022): the pseudo linear multistep method (PLMS, eq. 12) on the transfer part
    :func:`pndm_transfer`, after a warm-up, as diffusers' ``PNDMScheduler``.

    Every step from the fourth (pseudo Runge--Kutta warm-up) or second (``"improved_euler"``) on is PLMS: one
    network call, the noise estimate the Adams--Bashforth combination of fixed uniform-step coefficients of this
    point's prediction and the last three (orders 2, 3 while they fill in after ``"improved_euler"``), put through
    :math:`\phi`: the update of iPNDM (:func:`~sdevp_jax.solvers.ipndm_step`, Zhang & Chen's "improved PNDM",
    which replaces the warm-up by lower orders). The warm-up:

    * ``"prk"`` (default; the paper's F-PNDM): the first three steps are the pseudo Runge--Kutta method
      (eq. 13), classical RK4 with :math:`\phi` as its step: four calls each, two at the step's time midpoint
      :math:`t - \delta/2`. Needs at least three steps.
    * ``"prk_diffusers"`` (diffusers' ``skip_prk_steps=False``, discrete schedules): the same with diffusers'
      integer-label midpoints. For a step of ``r`` labels from label ``T``, its first half-step goes to label
      ``T - r // 2`` but the two midpoint calls and the second half-step are at label ``T - r + r // 2``: the
      paper's midpoint when ``r`` is even, one label apart (the model called off the sample's noise level) when
      it is odd.
    * ``"improved_euler"`` (diffusers' ``skip_prk_steps=True``, Stable Diffusion's): the first step is the pseudo
      improved Euler method (Heun's, with :math:`\phi`): two calls, at the step's start and end.

    Network calls: one per step, plus 9 (pseudo Runge--Kutta) or 1 (``"improved_euler"``) for the warm-up,
    counted in the run's total (reported with the last step), and one more with ``final_sigmas_type="zero"``, whose
    last step to sigma = 0 is a PLMS step (not the bare data prediction).
    """

    warmup: str = option("prk", choices=PNDM_WARMUPS, help=(
        "the first steps: 'prk' (default; pseudo Runge-Kutta, 3 steps of 4 calls), 'prk_diffusers' (the same with "
        "diffusers' integer-label midpoints) or 'improved_euler' (one step of 2 calls; diffusers' "
        "skip_prk_steps=True)"))

    name = "pndm"
    diffusers_scheduler = "PNDMScheduler"
    description = "PNDM: pseudo linear multistep after a pseudo Runge-Kutta or improved-Euler warm-up (Liu et al. 2022)"
    nfe_formula = "N - 1 + 9 (prk warm-up) or + 1 (improved_euler), + 1 to sigma = 0"
    max_order = 4
    order = 4

    def __post_init__(self):
        super().__post_init__()
        choice_option("warmup", self.warmup, PNDM_WARMUPS)

    @property
    def _extra_calls(self) -> int:
        return 1 if self.warmup == "improved_euler" else 9

    def nfe(self, num_points: int) -> int:
        return num_points - 1 + self._extra_calls + (1 if self.final_zero else 0)

    def _warmup_steps(self) -> int:
        return 1 if self.warmup == "improved_euler" else 3

    def init(self, x, grid):
        if self.warmup != "improved_euler" and grid.num_points < 4:
            raise ValueError(f"pndm with warmup={self.warmup!r} takes three pseudo Runge-Kutta steps first: the grid "
                             f"needs at least 4 points (num_inference_steps >= 4), got {grid.num_points}; use "
                             f"warmup='improved_euler' for fewer")
        return History.init(x)

    def _eps(self, model, x, grid, k):
        eps, d0 = self.predict(model, x, grid, k)
        return self.noise_of(x, eps, d0, grid, k)

    def _eps_at(self, model, x, t, alpha, sigma):
        eps, d0 = self.predict_at(model, x, t, alpha, sigma)
        return eps if not self.thresholding else (x - alpha * d0) / sigma

    def _midpoints(self, state, grid, k):
        """The pseudo Runge-Kutta midpoints of step ``k``: the time the first half-step goes to and the time of the
        two midpoint calls (and of the second half-step), each with the schedule's ``alpha``, ``sigma`` there."""
        t_s, t_t = grid.t[k], grid.t[k + 1]
        schedule = state.schedule.cast(grid.t.dtype)
        if self.warmup == "prk":
            t_mid = 0.5 * (t_s + t_t)
            return (t_mid, *schedule.alpha_sigma(t_mid)), (t_mid, *schedule.alpha_sigma(t_mid))
        if not schedule.is_discrete:
            raise ValueError("pndm with warmup='prk_diffusers' reproduces diffusers' integer-label midpoints and "
                             "needs a discrete schedule; use warmup='prk' (the time midpoint)")
        big_n = state.num_train_timesteps
        half = jnp.floor(jnp.round((t_s - t_t) * big_n) / 2.0) / big_n  # r // 2 labels, as a time
        first, call = t_s - half, t_t + half
        return (first, *schedule.alpha_sigma(first)), (call, *schedule.alpha_sigma(call))

    @property
    def warmup_steps(self) -> int:
        """The warm-up's steps: 3 (pseudo Runge--Kutta) or 1 (``"improved_euler"``)."""
        return self._warmup_steps()

    @property
    def warmup_calls(self) -> int:
        """The model calls of each warm-up step: 4 (pseudo Runge--Kutta) or 2 (``"improved_euler"``)."""
        return 2 if self.warmup == "improved_euler" else 4

    def warmup_time(self, state, grid, k, j: int):
        """The time of call ``j`` (``0 <= j <`` :attr:`warmup_calls`, a Python int) of warm-up step ``k``: point
        ``k``, the midpoint call time (pseudo Runge--Kutta's calls 1 and 2), point ``k + 1``."""
        if j == 0:
            return grid.t[k]
        if j == self.warmup_calls - 1:
            return grid.t[k + 1]
        return self._midpoints(state, grid, k)[1][0]

    def warmup_call(self, model, x, start, acc, grid, k, j: int):
        r"""Call ``j`` (a Python int, ``0 <= j <`` :attr:`warmup_calls`) of the warm-up step over interval ``k``
        from ``start``, the model called at ``x`` (``start`` for ``j = 0``; else what call ``j - 1`` returned) and
        :meth:`warmup_time`: ``(y, acc, eps)``, ``eps`` its noise prediction, ``acc`` the running combination of
        the step's predictions (give ``acc`` = anything at ``j = 0``), ``y`` the sample of call ``j + 1``, or after
        the last call the step's result. Pseudo improved Euler: :math:`y_1 = \phi(x, \epsilon_0)`, then
        :math:`\phi(x, (\epsilon_0 + \epsilon_1)/2)`; pseudo Runge--Kutta (eq. 13): RK4's stages, each a transfer
        :math:`\phi` from ``start``, the last with :math:`(\epsilon_1 + 2\epsilon_2 + 2\epsilon_3 + \epsilon_4)/6`.

        Examples:
          >>> state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers("linear")), 10)
          >>> solver = sv.solvers.make("pndm", warmup="improved_euler")
          >>> grid = sv.solvers.Grid.build(state.schedule, solver.times(state, jnp.float32))
          >>> model = sv.denoiser.Denoiser(state, lambda x, t: 0.5 * x, jnp.float32, jnp.float32)
          >>> x = jnp.ones((1, 2))
          >>> y, acc, e0 = solver.warmup_call(model, x, x, None, grid, 0, 0)
          >>> out, _, e1 = solver.warmup_call(model, y, x, acc, grid, 0, 1)
          >>> ref, _, _ = solver.step(model, x, solver.init(x, grid), grid, 0, None)  # both calls inside
          >>> bool(jnp.allclose(out, ref)) and bool(jnp.allclose(e1, 0.5 * y))
          True
        """
        c = grid.coeffs(k, k + 1)
        last = self.warmup_calls - 1
        if j == 0 or j == last:
            eps = self._eps(model, x, grid, k + 1 if j == last else k)
        if self.warmup == "improved_euler":
            if j == 0:
                return pndm_transfer(start, eps, c), eps, eps
            return pndm_transfer(start, 0.5 * (acc + eps), c), acc, eps
        (_, alpha_1, sigma_1), (t_mid, alpha_mid, sigma_mid) = self._midpoints(model.state, grid, k)
        if j == 0:
            return pndm_transfer(start, eps, c._replace(alpha_t=alpha_1, sigma_t=sigma_1)), eps, eps
        if j == last:
            return pndm_transfer(start, (acc + eps) / 6.0, c), acc, eps
        eps = self._eps_at(model, x, t_mid, alpha_mid, sigma_mid)
        to = c._replace(alpha_t=alpha_mid, sigma_t=sigma_mid) if j == 1 else c
        return pndm_transfer(start, eps, to), acc + 2.0 * eps, eps

    def _warmup_step(self, model, x, grid, k):
        """The warm-up step over interval ``k``: its calls in turn; ``(x_next, first prediction)``."""
        y, acc, first = self.warmup_call(model, x, x, None, grid, k, 0)
        for j in range(1, self.warmup_calls):
            y, acc, _ = self.warmup_call(model, y, x, acc, grid, k, j)
        return y, first

    def _plms(self, model, x, hist, grid, k):
        eps = self._eps(model, x, grid, k)
        order = jnp.minimum(k + 1, 4) if self.warmup == "improved_euler" else 4
        return ipndm_step(x, eps, hist, grid.coeffs(k, k + 1), order), eps

    def step(self, model, x, hist: History, grid, k, noise):
        x_next, eps = jax.lax.cond(k < self._warmup_steps(), lambda: self._warmup_step(model, x, grid, k),
                                   lambda: self._plms(model, x, hist, grid, k))
        return x_next, self.remember(hist, eps, x, grid, k), StepInfo(1)

    def remember(self, hist: History, eps, x, grid, k) -> History:
        """The memory after the step over interval ``k`` from ``x``: ``eps``, the prediction at point ``k``, pushed
        (the one PLMS combines; for the warm-up steps the first call's)."""
        return hist.push(eps, grid.lam[k], x, jnp.int32(0))

    def finish(self, model, x, hist: History, grid):
        """With ``final_sigmas_type="zero"``: a PLMS step from the last grid point to sigma = 0; the warm-up's
        extra calls are reported here (the scan's steps report one call each)."""
        if not self.final_zero:
            return x, hist, StepInfo(self._extra_calls)
        last = grid.num_points - 1
        eps = self._eps(model, x, grid, last)
        order = min(last + 1, 4) if self.warmup == "improved_euler" else 4
        c = grid.coeffs(last, last)._replace(alpha_t=jnp.ones_like(grid.alpha[last]),
                                             sigma_t=jnp.zeros_like(grid.sigma[last]))
        return ipndm_step(x, eps, hist, c, order), hist, StepInfo(1 + self._extra_calls)


def _rho_alpha_sigma(lam):
    r""":math:`\alpha = \sqrt{\operatorname{sigmoid}(2\lambda)}`,
    :math:`\sigma = \sqrt{\operatorname{sigmoid}(-2\lambda)}` at a log-SNR :math:`\lambda` off the grid."""
    return jnp.sqrt(jax.nn.sigmoid(2.0 * lam)), jnp.sqrt(jax.nn.sigmoid(-2.0 * lam))


class _SigmaSolver(GridSolver):
    """What the two-call sigma-space solvers share: the noise prediction a step in rho uses, and the model at a
    log-SNR between grid points, two calls a step."""

    nfe_formula = "2 (N - 1) (+ 1 with final_sigmas_type='zero')"

    def nfe(self, num_points: int) -> int:
        return 2 * (num_points - 1) + (1 if self.final_zero else 0)

    def _noise(self, model, x, eps, d0, alpha, sigma):
        """The slope d(x/alpha)/d(rho): the model's noise prediction, or with a thresholded or clipped data prediction
        the one it implies, (x - alpha d0)/sigma (diffusers' Heun and KDPM2 step with (sample - x0)/sigma)."""
        if self.thresholding or model.clip_range is not None:
            return (x - alpha * d0) / sigma
        return eps

    def _slope(self, model, x, grid, k):
        eps, d0 = self.predict(model, x, grid, k)
        return self._noise(model, x, eps, d0, grid.alpha[k], grid.sigma[k])

    def _slope_at(self, model, x, lam):
        """The slope at log-SNR ``lam`` (0-d, off the grid): the model called at that noise level's time with
        diffusers' label there (:meth:`~sdevp_jax.denoiser.Denoiser.model_time_at`)."""
        alpha, sigma = _rho_alpha_sigma(lam)
        eps, d0 = self.predict_at(model, x, None, alpha, sigma, model_t=model.model_time_at(lam))
        return self._noise(model, x, eps, d0, alpha, sigma)


def heun_sigma_step(x, d1, d2, c: StepCoeffs):
    r"""Heun's method in :math:`\rho = \sigma/\alpha` (EDM, Karras et al. 2022, Algorithm 1 without churn; diffusers'
    ``HeunDiscreteScheduler``) from ``s`` to ``t``, given the slopes ``d1`` (the noise prediction at ``x``) and ``d2``
    (at Euler's point :math:`\alpha_t(x/\alpha_s + (\rho_t - \rho_s) d_1)`):
    :math:`x_t = \alpha_t\big(x/\alpha_s + (\rho_t - \rho_s)(d_1 + d_2)/2\big)`.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> euler = sv.solvers.pndm_transfer(x, d, c)   # equal slopes: Euler's (DDIM's) step
      >>> bool(jnp.allclose(sv.solvers.heun_sigma_step(x, d, d, c), euler, atol=1e-6))
      True
    """
    return pndm_transfer(x, 0.5 * (d1 + d2), c)


@register
@struct.dataclass
class HeunSigma(_SigmaSolver):
    """Heun's method in sigma/alpha (:func:`heun_sigma_step`): two calls a step, at its ends; with
    ``final_sigmas_type="zero"`` (diffusers') the last step to sigma = 0 is the data prediction (diffusers' Euler step
    there). ``heun`` is Heun's method on the probability-flow ODE in time t: another method (in exact arithmetic
    they differ, as the ODE's variable differs)."""

    name = "heun_sigma"
    diffusers_scheduler = "HeunDiscreteScheduler"
    description = "Heun's method in sigma/alpha, 2 calls a step (EDM's sampler; Karras et al. 2022)"
    order = 2

    def step(self, model, x, hist, grid, k, noise):
        c = grid.coeffs(k, k + 1)
        d1 = self._slope(model, x, grid, k)
        d2 = self._slope(model, pndm_transfer(x, d1, c), grid, k + 1)
        return heun_sigma_step(x, d1, d2, c), hist, StepInfo(2)


def kdpm2_step(x, d_mid, c: StepCoeffs):
    r"""The second half of KDPM2 (k-diffusion's ``sample_dpm_2``, diffusers' ``KDPM2DiscreteScheduler``; DPM-Solver-2
    in :math:`\rho`, Karras et al. 2022): :math:`x_t = \alpha_t(x_s/\alpha_s + (\rho_t - \rho_s)\,d_m)` with
    ``d_mid`` the noise prediction at the midpoint :math:`\rho_m = \sqrt{\rho_s\rho_t}` (the log-SNR midpoint),
    reached by an Euler step :math:`x_m = \alpha_m(x_s/\alpha_s + (\rho_m - \rho_s) d_s)`.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> bool(jnp.allclose(sv.solvers.kdpm2_step(x, d, c), sv.solvers.pndm_transfer(x, d, c), atol=1e-6))
      True
    """
    return pndm_transfer(x, d_mid, c)


@register
@struct.dataclass
class KDPM2(_SigmaSolver):
    """KDPM2 (:func:`kdpm2_step`): two calls a step, at its start and at the log-SNR midpoint, the model there given
    diffusers' label (its ``_sigma_to_t`` of the midpoint's noise level); with ``final_sigmas_type="zero"``
    (diffusers') the last step to sigma = 0 is the data prediction (diffusers' Euler step there)."""

    name = "kdpm2"
    diffusers_scheduler = "KDPM2DiscreteScheduler"
    description = "KDPM2: DPM-Solver-2 in sigma/alpha with a log-SNR midpoint, 2 calls a step (k-diffusion)"
    order = 2

    def step(self, model, x, hist, grid, k, noise):
        c = grid.coeffs(k, k + 1)
        lam_mid = 0.5 * (c.lam_s + c.lam_t)
        alpha_mid, sigma_mid = _rho_alpha_sigma(lam_mid)
        d1 = self._slope(model, x, grid, k)
        x_mid = pndm_transfer(x, d1, c._replace(alpha_t=alpha_mid, sigma_t=sigma_mid))
        d_mid = self._slope_at(model, x_mid, lam_mid)
        return kdpm2_step(x, d_mid, c), hist, StepInfo(2)


def kdpm2_ancestral_step(x, d_mid, c: StepCoeffs, z):
    r"""KDPM2 ancestral (k-diffusion's ``sample_dpm_2_ancestral``, diffusers' ``KDPM2AncestralDiscreteScheduler``)
    from ``s`` to ``t``: KDPM2's step down to :math:`\rho_\downarrow = \rho_t^2/\rho_s` (as Euler ancestral's, its
    midpoint :math:`\sqrt{\rho_s\rho_\downarrow} = \rho_t`), then fresh noise up to :math:`\rho_t`:
    :math:`x_t = \alpha_t(x_s/\alpha_s + (\rho_\downarrow - \rho_s) d_m + \rho_\uparrow z)`,
    :math:`\rho_\uparrow = \rho_t\sqrt{1 - \rho_t^2/\rho_s^2}`, ``d_mid`` the noise prediction at the midpoint.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d, z = jnp.ones((2, 2)), jnp.full((2, 2), 0.5), jnp.zeros((2, 2))
      >>> rho_s, rho_t = c.sigma_s / c.alpha_s, c.sigma_t / c.alpha_t
      >>> mean = c.alpha_t * (x / c.alpha_s + (rho_t**2 / rho_s - rho_s) * d)
      >>> bool(jnp.allclose(sv.solvers.kdpm2_ancestral_step(x, d, c, z), mean, atol=1e-6))
      True
    """
    rho_s, rho_t = _rho(c.lam_s), _rho(c.lam_t)
    up = rho_t * jnp.sqrt(jnp.maximum(-jnp.expm1(2.0 * (c.lam_s - c.lam_t)), 0.0))
    down = rho_t * jnp.exp(c.lam_s - c.lam_t)
    return c.alpha_t * (x / c.alpha_s + (down - rho_s) * d_mid + up * z)


@register
@struct.dataclass
class KDPM2Ancestral(_SigmaSolver):
    """KDPM2 ancestral (:func:`kdpm2_ancestral_step`): two calls a step, at its start and at rho_t reached by an
    Euler step (the log-SNR midpoint of rho_s and rho_down), the model there given diffusers' label of that noise
    level; step ``k``'s noise slot ``1 + k``. With ``final_sigmas_type="zero"`` (diffusers') the last step to
    sigma = 0 is the data prediction."""

    name = "kdpm2_ancestral"
    diffusers_scheduler = "KDPM2AncestralDiscreteScheduler"
    kind = "sde_solver"
    description = "KDPM2 ancestral: KDPM2 to rho_t^2/rho_s, then noise up to rho_t, 2 calls a step (k-diffusion)"
    order = 1
    noise_slots = 1

    def step(self, model, x, hist, grid, k, noise):
        c = grid.coeffs(k, k + 1)
        lam_mid = c.lam_t  # sqrt(rho_s rho_down) = rho_t
        d1 = self._slope(model, x, grid, k)
        x_mid = pndm_transfer(x, d1, c)
        d_mid = self._slope_at(model, x_mid, lam_mid)
        return kdpm2_ancestral_step(x, d_mid, c, noise.draw()), hist, StepInfo(2)
