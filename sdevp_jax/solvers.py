r"""The few-step solvers along a grid: DPM-Solver, DDIM, DPM-Solver++ (2M, 3M), SDE-DPM-Solver++ (2M) and UniPC.

Each is a pure ``step`` beside its siblings, over the small state the loop threads
through :func:`jax.lax.scan` (:class:`History`: the last model predictions and their
log-SNRs, and for UniPC the point the last predictor started from). All work in
the exponential-integrator form of Lu et al. in
:math:`\lambda = \log(\alpha/\sigma)`: a step from time :math:`s` to :math:`t` has
:math:`h = \lambda_t - \lambda_s`, and, with :math:`D` the model's data prediction
:math:`\hat x_0`, the exact solution of the probability-flow ODE is

.. math::

    x_t = \frac{\sigma_t}{\sigma_s} x_s + \sigma_t \int_{\lambda_s}^{\lambda_t} e^{\lambda} D(\lambda)\, d\lambda

(DPM-Solver++, Lu et al. 2022b, eq. 9); each solver approximates :math:`D` in
:math:`\lambda` by a polynomial through its past evaluations and integrates it
exactly. Coefficients come from the loop as :class:`StepCoeffs`.

The order used at each step is a static table (:func:`step_orders`): the warm-up of
a multistep method (order ``k + 1`` at step ``k``) and diffusers' lowering of the
order at the last steps (``lower_order_final``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "History",
    "StepCoeffs",
    "step_orders",
    "dpm_solver_step",
    "ddim_step",
    "dpmpp_step",
    "sde_dpmpp_step",
    "unipc_predict",
    "unipc_correct",
    "dynamic_threshold",
]


class StepCoeffs(NamedTuple):
    """The schedule at the ends of one step, ``s`` (from) and ``t`` (to), in the work dtype (0-d each)."""

    lam_s: jax.Array
    lam_t: jax.Array
    alpha_s: jax.Array
    sigma_s: jax.Array
    alpha_t: jax.Array
    sigma_t: jax.Array
    log_alpha_s: jax.Array
    log_alpha_t: jax.Array


class History(NamedTuple):
    """A multistep solver's memory: the last three predictions and the log-SNRs they were made at.

    ``m1`` is the most recent (made at ``lam1``), ``m2``/``m3`` the ones before. For
    UniPC also ``x_prev``, the point its last predictor started from, and
    ``order_prev``, that predictor's order (its corrector redoes that step).
    """

    m1: jax.Array
    m2: jax.Array
    m3: jax.Array
    lam1: jax.Array
    lam2: jax.Array
    lam3: jax.Array
    x_prev: jax.Array
    order_prev: jax.Array

    @classmethod
    def init(cls, x: jax.Array) -> "History":
        zero = jnp.zeros((), x.dtype)
        # distinct, finite placeholder log-SNRs: never used (the warm-up order masks them) but never 0/0
        return cls(jnp.zeros_like(x), jnp.zeros_like(x), jnp.zeros_like(x), zero - 1.0, zero - 2.0, zero - 3.0,
                   x, jnp.zeros((), jnp.int32))

    def push(self, m: jax.Array, lam: jax.Array, x_prev: jax.Array, order: jax.Array) -> "History":
        return History(m, self.m1, self.m2, lam, self.lam1, self.lam2, x_prev, order)


def step_orders(num_steps: int, order: int, lower_order_final: bool, final_zero: bool, rule: str) -> np.ndarray:
    """The order of each of ``num_steps`` steps (host NumPy int32), as diffusers schedules it.

    ``rule="dpmsolver"`` (DPMSolverMultistepScheduler): ``min(order, k + 1)``, first
    order at the last step when it goes to :math:`\\sigma = 0` or when
    ``lower_order_final`` and fewer than 15 steps, and at most second order at the
    step before in that case. ``rule="unipc"`` (UniPCMultistepScheduler):
    ``min(order, k + 1)`` and, with ``lower_order_final``, ``min(order, num_steps - k)``
    at every length.
    """
    orders = np.minimum(order, np.arange(num_steps) + 1)
    if rule == "unipc":
        if lower_order_final:
            orders = np.minimum(orders, num_steps - np.arange(num_steps))
    else:
        short = lower_order_final and num_steps < 15
        if num_steps >= 1 and (final_zero or short):
            orders[-1] = 1
        if num_steps >= 2 and short:
            orders[-2] = min(orders[-2], 2)
    return orders.astype(np.int32)


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


def ddim_step(x, x0, eps, c: StepCoeffs, eta, z):
    r"""DDIM (Song, Meng & Ermon, ICLR 2021, eq. 12) from ``s`` to ``t``.

    .. math::

        x_t = \alpha_t \hat x_0 + \sqrt{\sigma_t^2 - \sigma_\eta^2}\,\hat\epsilon + \sigma_\eta z,
        \qquad \sigma_\eta = \eta\,\frac{\sigma_t}{\sigma_s}\sqrt{1 - \alpha_s^2/\alpha_t^2}.

    ``eta = 0`` is deterministic (the probability-flow ODE's first-order
    exponential integrator, DPM-Solver-1) and ``z`` may be ``None``; ``eta = 1`` is
    the DDPM posterior (``fixed_small``) variance.
    """
    if z is None:
        return c.alpha_t * x0 + c.sigma_t * eps
    sigma_eta = eta * (c.sigma_t / c.sigma_s) * jnp.sqrt(-jnp.expm1(2.0 * (c.log_alpha_s - c.log_alpha_t)))
    direction = jnp.sqrt(jnp.maximum(jnp.square(c.sigma_t) - jnp.square(sigma_eta), 0.0))
    return c.alpha_t * x0 + direction * eps + sigma_eta * z


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


def sde_dpmpp_step(x, d0, hist: History, c: StepCoeffs, order, z, *, solver_type: str = "midpoint"):
    r"""SDE-DPM-Solver++ (Lu et al. 2022b, sec. 5 and app. B), first or second order (2M).

    The exact solution of the reverse SDE's linear part with the data prediction
    polynomial in :math:`\lambda` (noise enters through :math:`e^{-2h}`):

    .. math::

        x_t = \frac{\sigma_t}{\sigma_s}e^{-h} x_s + \alpha_t(1 - e^{-2h})\big(D_0 + \tfrac12 D_{1,0}\big)
              + \sigma_t\sqrt{1 - e^{-2h}}\; z

    (the ``midpoint`` second-order term; ``heun`` uses
    :math:`\alpha_t\big(\frac{1 - e^{-2h}}{-2h} + 1\big) D_{1,0}` instead, as diffusers does).
    """
    h = c.lam_t - c.lam_s
    one_minus = -jnp.expm1(-2.0 * h)
    x1 = (c.sigma_t / c.sigma_s * jnp.exp(-h)) * x + (c.alpha_t * one_minus) * d0 + (c.sigma_t * jnp.sqrt(one_minus)) * z
    d1_0 = (d0 - hist.m1) / ((c.lam_s - hist.lam1) / h)
    if solver_type == "midpoint":
        correction = (0.5 * c.alpha_t * one_minus) * d1_0
    else:
        correction = (c.alpha_t * (one_minus / (-2.0 * h) + 1.0)) * d1_0
    return jnp.where(order >= 2, x1 + correction, x1)


def _unipc_system(rks, hh, b_h, p):
    """UniPC's ``R`` (``p x p``, rows ``rks**i``) and ``b`` (``b_i = i! phi_{i+1}(hh) / B(h)``)."""
    phi1 = jnp.expm1(hh)
    phi_k = phi1 / hh - 1.0
    factorial = 1.0
    rows, b = [], []
    for i in range(1, p + 1):
        rows.append(jnp.stack([r ** (i - 1) for r in rks]))
        b.append(phi_k * factorial / b_h)
        factorial *= i + 1
        phi_k = phi_k / hh - 1.0 / factorial
    return jnp.stack(rows), jnp.stack(b)


def _unipc_parts(hist: History, c: StepCoeffs, d0, variant, predict_x0):
    """What UniP and UniC share: ``h``, ``hh``, ``B(h)``, the ratios ``r_k``, the differences, and the
    first-order point's two coefficients (data prediction: ``sigma_t/sigma_s`` and ``alpha_t``; noise
    prediction: ``alpha_t/alpha_s`` and ``sigma_t``)."""
    h = c.lam_t - c.lam_s
    hh = -h if predict_x0 else h
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    rks = [(hist.lam1 - c.lam_s) / h, (hist.lam2 - c.lam_s) / h]
    d1s = [(hist.m1 - d0) / rks[0], (hist.m2 - d0) / rks[1]]
    if predict_x0:
        ratio, scale = c.sigma_t / c.sigma_s, c.alpha_t
    else:
        ratio, scale = jnp.exp(c.log_alpha_t - c.log_alpha_s), c.sigma_t
    return h, hh, b_h, rks, d1s, ratio, scale


def unipc_predict(x, d0, hist: History, c: StepCoeffs, order, *, variant: str = "bh2", predict_x0: bool = True):
    r"""The UniP predictor of UniPC (Zhao et al., NeurIPS 2023, Algorithm 2, data prediction).

    .. math::

        x_t = \frac{\sigma_t}{\sigma_s}x_s - \alpha_t\varphi_1 D_0
              - \alpha_t B(h)\sum_{k=1}^{p-1}\rho_k\,\frac{D_k - D_0}{r_k},
        \qquad \varphi_1 = e^{-h} - 1,

    :math:`r_k = (\lambda_{s_k} - \lambda_s)/h` for the previous points, :math:`B(h) = -h`
    (``bh1``) or :math:`e^{-h} - 1` (``bh2``), and :math:`\rho` solving the order
    conditions :math:`R\rho = b` (the paper's eq. 8; :math:`\rho = 1/2` at order 2, as the
    paper and diffusers take it). ``hist.m1``, ``m2`` are the predictions before ``d0``.
    With ``predict_x0=False`` the predictions are noise predictions and the update is the
    same in the noise form: :math:`x_t = \frac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^{h} - 1)\epsilon_0
    - \sigma_t B(h)\sum_k\rho_k\ldots`, :math:`B(h) = h` or :math:`e^h - 1`.
    """
    h, hh, b_h, rks, d1s, ratio, scale = _unipc_parts(hist, c, d0, variant, predict_x0)
    x1 = ratio * x - (scale * jnp.expm1(hh)) * d0
    second = x1 - (scale * b_h * 0.5) * d1s[0]
    r3, b3 = _unipc_system(rks + [jnp.ones_like(h)], hh, b_h, 3)
    rho = jnp.linalg.solve(r3[:-1, :-1], b3[:-1])
    third = x1 - (scale * b_h) * (rho[0] * d1s[0] + rho[1] * d1s[1])
    return jnp.where(order >= 3, third, jnp.where(order >= 2, second, x1))


def unipc_correct(x_prev, d0, hist: History, c: StepCoeffs, d_t, order, *, variant: str = "bh2",
                  predict_x0: bool = True):
    r"""The UniC corrector of UniPC (Zhao et al. 2023, Algorithm 1, data prediction).

    Redoes the step just taken from ``x_prev`` (at ``s``, prediction ``d0``, older
    predictions in ``hist``) to ``t`` with the new evaluation ``d_t`` at ``t`` added,
    which raises the order by one at no extra network call:

    .. math::

        x_t^c = \frac{\sigma_t}{\sigma_s}x_s - \alpha_t\varphi_1 D_0
                - \alpha_t B(h)\Big(\sum_{k=1}^{p-1}\rho_k\,\frac{D_k - D_0}{r_k} + \rho_p (D_t - D_0)\Big),

    :math:`\rho` solving the full :math:`p \times p` system (:math:`\rho = 1/2` at ``p = 1``);
    ``order`` is the order ``p`` of the predictor step being corrected; ``predict_x0`` as for
    :func:`unipc_predict`.
    """
    h, hh, b_h, rks, d1s, ratio, scale = _unipc_parts(hist, c, d0, variant, predict_x0)
    x1 = ratio * x_prev - (scale * jnp.expm1(hh)) * d0
    d1_t = d_t - d0
    one = jnp.ones_like(h)
    first = x1 - (scale * b_h) * (0.5 * d1_t)
    r2, b2 = _unipc_system([rks[0], one], hh, b_h, 2)
    rho2 = jnp.linalg.solve(r2, b2)
    second = x1 - (scale * b_h) * (rho2[0] * d1s[0] + rho2[1] * d1_t)
    r3, b3 = _unipc_system(rks + [one], hh, b_h, 3)
    rho3 = jnp.linalg.solve(r3, b3)
    third = x1 - (scale * b_h) * (rho3[0] * d1s[0] + rho3[1] * d1s[1] + rho3[2] * d1_t)
    return jnp.where(order >= 3, third, jnp.where(order >= 2, second, first))


def dynamic_threshold(x0, ratio, max_value):
    r"""Dynamic thresholding of a data prediction (Saharia et al., NeurIPS 2022, "Imagen", sec. 2.3).

    Per sample, :math:`s` = the ``ratio`` quantile of :math:`|\hat x_0|` over its
    entries, clipped to ``[1, max_value]``; then :math:`\hat x_0 \leftarrow
    \operatorname{clip}(\hat x_0, -s, s)/s` (as diffusers' ``_threshold_sample``).
    """
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.clip(jnp.quantile(flat, ratio, axis=1), 1.0, max_value)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return jnp.clip(x0, -s, s) / s
