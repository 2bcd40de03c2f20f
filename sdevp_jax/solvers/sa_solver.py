r"""SA-Solver (Xue et al., NeurIPS 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
Models"): a stochastic Adams predictor-corrector for the variance-controlled reverse SDE, as diffusers'
``SASolverScheduler``.

**The SDE.** With :math:`\tau(t) \ge 0` the reverse-time SDEs

.. math::

    dx = \Big[f(t)x - \frac{1 + \tau^2(t)}{2}g^2(t)\nabla_x\log p_t(x)\Big]dt + \tau(t)g(t)\,d\bar w_t

all have the marginals of the forward process (the paper's variance-controlled diffusion SDE): :math:`\tau = 0`
is the probability-flow ODE, :math:`\tau = 1` the reverse SDE of Song et al. In log-SNR
:math:`\lambda = \log(\alpha/\sigma)`, with :math:`\tau` constant over a step from :math:`s` to :math:`t`,
:math:`h = \lambda_t - \lambda_s` and :math:`r = 1 + \tau^2`, its solution in terms of the data prediction
:math:`D(\lambda) = \hat x_0` is exactly (variation of constants; the paper's data reparameterization)

.. math::

    x_t = \frac{\sigma_t}{\sigma_s}e^{-\tau^2 h}x_s + r\,\alpha_t\int_0^h e^{-ru}\,D(\lambda_t - u)\,du
          + \sigma_t\sqrt{1 - e^{-2\tau^2 h}}\;\xi,

and in terms of the noise prediction :math:`\hat\epsilon` (the paper's noise form, ``algorithm_type=
"noise_prediction"``; with :math:`y = x/\alpha`, :math:`\rho = e^{-\lambda}`: :math:`dy = r\hat\epsilon\,d\rho +
\tau\,dW` in :math:`\rho^2`)

.. math::

    x_t = \frac{\alpha_t}{\alpha_s}x_s - r\,\sigma_t\int_0^h e^{u}\,\hat\epsilon(\lambda_t - u)\,du
          + \tau\sigma_t\sqrt{e^{2h} - 1}\;\xi .

**The steps.** Both replace the prediction by its Lagrange polynomial in :math:`\lambda` through the solver's
points and integrate it exactly (:func:`sa_weights`). The SA-Predictor (a stochastic Adams-Bashforth step) of
order :math:`p` interpolates the predictions at :math:`s` and the :math:`p - 1` grid points before; the
SA-Corrector (Adams-Moulton) of order :math:`c` redoes the step just taken with the model's evaluation at the
predicted point added as a node at :math:`t` (and :math:`c - 2` points before :math:`s`), with the same draw
:math:`\xi` -- the network call the next step needs anyway, so it costs no evaluation (the paper's PEC mode).
With :math:`\tau = 0` the predictor of order 1 is DDIM (DPM-Solver++(1)); with :math:`\tau = 1` it is the first
order SDE-DPM-Solver++.

**The weights.** With :math:`v = u/h` (the nodes at :math:`v_j = (\lambda_t - \lambda_j)/h`: 0 at :math:`t`, 1
at :math:`s`, beyond 1 before) the coefficient of the prediction at node :math:`j` is
:math:`h\,w_j` with :math:`w_j = \int_0^1 e^{-zv}\ell_j(v)\,dv`, :math:`z = rh` (data) or :math:`-h` (noise).
:math:`\ell_j` is expanded in powers of :math:`v` and each :math:`\psi_k(z) = \int_0^1 e^{-zv}v^k\,dv` is computed
by its power series where :math:`|z| < 1` (no cancellation: the closed form
:math:`\psi_k = (k\psi_{k-1} - e^{-z})/z` loses about :math:`\log_{10} k!/|z|^k` digits there) and by that
recursion elsewhere, where it is well conditioned. diffusers (like the authors' code) expands the Lagrange
polynomials in powers of :math:`\lambda` itself and integrates :math:`e^{r\lambda}\lambda^k` from
:math:`\lambda_s` to :math:`\lambda_t`: the same numbers in exact arithmetic.

**Where diffusers differs.** At order 2 in data prediction diffusers (and the authors' ``sample_few_steps``,
not their ``sample_more_steps``) replaces the linear term of both steps: the predictor's by
:math:`r\alpha_t\frac{h^2}{2}\frac{D_0 - D_1}{\lambda_s - \lambda_1}` and the corrector's by
:math:`r\alpha_t\frac h2(D_t - D_0)` (the exact integrals of the linear interpolants carry
:math:`h^2 g(rh)` and :math:`h\,g(rh)` there, :math:`g(z) = (z - 1 + e^{-z})/z^2 = \tfrac12 - \tfrac z6 + \dots`):
an :math:`O(h^3)` change per step that keeps the order; with :math:`\tau = 0` these are UniPC's ``bh1`` steps
(its order-2 predictor and first-order corrector). ``second_order="lagrange"`` (the default) keeps the paper's
exact integrals; ``second_order="diffusers"`` reproduces diffusers.

**tau.** :math:`\tau(t)` is ``tau`` on the steps that start at a time ``tau_t_min <= t <= tau_t_max`` and 0
elsewhere (the authors' choice: stochastic only in the middle of the run), taken constant over each step, at
the step's start as diffusers takes it (the authors' code takes it at the step's end). The defaults are the authors' ``0.2 <= t <= 0.8`` in continuous time;
diffusers' ``tau_func`` default, ``1 if 200 <= label <= 800``, is ``[201/N, 801/N]`` on a discrete schedule of
``N`` labels (label ``n`` at ``t = (n + 1)/N``), which a ``SASolverScheduler`` config loads with. ``tau = 0``
samples the probability-flow ODE (deterministic; no noise is drawn).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .. import _checks
from .base import StepCoeffs, StepInfo, bool_option, choice_option, option, positive_int_option, register
from .multistep import GridSolver, History, step_orders

__all__ = ["SASolver", "SAState", "sa_weights", "sa_predict", "sa_correct", "sa_corrector_orders"]

ALGORITHMS = ("data_prediction", "noise_prediction")
SECOND_ORDER = ("lagrange", "diffusers")
MAX_ORDER = 4
_SERIES_TERMS = 24  # |z| < 1: the series' remainder is below 1/24! ~ 2e-24


def _psi(z, n: int) -> jax.Array:
    r""":math:`\psi_k(z) = \int_0^1 e^{-zv}v^k\,dv` for ``k < n`` (shape ``(n,)``): the power series
    :math:`\sum_m (-z)^m/(m!\,(k + m + 1))` where :math:`|z| < 1`, else the recursion
    :math:`\psi_0 = (1 - e^{-z})/z`, :math:`\psi_k = (k\psi_{k-1} - e^{-z})/z`."""
    small = jnp.abs(z) < 1.0
    zs = jnp.where(small, z, jnp.zeros_like(z))  # each branch at arguments where it is finite
    zr = jnp.where(small, jnp.ones_like(z), z)
    m = jnp.arange(_SERIES_TERMS, dtype=z.dtype)
    terms = jnp.cumprod(jnp.concatenate([jnp.ones((1,), z.dtype), -zs / m[1:]]))  # (-z)^m / m!
    k = jnp.arange(n, dtype=z.dtype)
    series = jnp.sum(terms[None, :] / (k[:, None] + m[None, :] + 1.0), axis=1)
    e = jnp.exp(-zr)
    rec = [-jnp.expm1(-zr) / zr]
    for j in range(1, n):
        rec.append((j * rec[-1] - e) / zr)
    return jnp.where(small, series, jnp.stack(rec))


def _lagrange_weights(nodes, psi, order: int) -> list:
    """The weights of :func:`sa_weights` from ``psi`` (:func:`_psi` of at least ``order`` entries)."""
    weights = []
    for j in range(order):
        coef = [jnp.ones_like(psi[0])]  # the monomial coefficients of prod_{m != j} (v - v_m), lowest first
        denom = jnp.ones_like(psi[0])
        for m in range(order):
            if m == j:
                continue
            shifted = [jnp.zeros_like(psi[0])] + coef  # v * poly
            coef = [a - nodes[m] * b for a, b in zip(shifted, coef + [jnp.zeros_like(psi[0])])]
            denom = denom * (nodes[j] - nodes[m])
        weights.append(sum(c * psi[i] for i, c in enumerate(coef)) / denom)
    return weights


def sa_weights(nodes, z, order: int) -> list:
    r"""The weights :math:`w_j = \int_0^1 e^{-zv}\ell_j(v)\,dv` of the Lagrange basis through ``nodes[:order]``
    (:math:`v_j`, 0-d each; see the module docstring): a step's coefficient of the prediction at node ``j`` is
    :math:`r\alpha_t h\,w_j` (data, :math:`z = rh`) or :math:`-r\sigma_t h\,w_j` (noise, :math:`z = -h`).

    Examples:
      >>> w = sv.solvers.sa_weights([jnp.array(1.0)], jnp.array(0.5), 1)   # one node: (1 - e^{-z})/z
      >>> bool(jnp.allclose(w[0], -jnp.expm1(-0.5) / 0.5))
      True
      >>> w = sv.solvers.sa_weights([jnp.array(0.0), jnp.array(1.0)], jnp.array(1e-9), 2)  # z -> 0: trapezoid
      >>> [round(float(v), 6) for v in w]
      [0.5, 0.5]
    """
    z = jnp.asarray(z)
    return _lagrange_weights(nodes, _psi(z, order), order)


def _update(x_s, preds, lams, c: StepCoeffs, order, tau, xi, *, algorithm_type: str, second_order: str,
            max_order):
    """The step from ``s`` to ``t`` (``c``) with the predictions ``preds`` made at log-SNRs ``lams`` (the first
    ``order`` of them), :math:`\\tau` = ``tau`` and the draw ``xi`` (``None``: no noise term). ``order`` may be
    traced; the weights of the orders up to ``max_order`` are formed (only ``order``'s if it is a Python int)."""
    data = algorithm_type == "data_prediction"
    h = c.lam_t - c.lam_s
    r = 1.0 + tau * tau
    z = r * h if data else -h
    nodes = [(c.lam_t - lam) / h for lam in lams]
    dtype = h.dtype
    static = isinstance(order, (int, np.integer))
    if static:
        positive_int_option("order", order, MAX_ORDER, "sa_solver")
    candidates = [int(order)] if static else range(1, (max_order or MAX_ORDER) + 1)
    psi = _psi(z, max(candidates))
    total = [jnp.zeros((), dtype) for _ in range(MAX_ORDER)]
    for n in candidates:
        w = _lagrange_weights(nodes, psi, n)
        if n == 2 and data and second_order == "diffusers":
            delta = (0.5 - (psi[0] - psi[1])) / (nodes[1] - nodes[0])  # psi_0 - psi_1 = (z - 1 + e^{-z}) / z^2
            w = [w[0] + delta, w[1] - delta]
        w = w + [jnp.zeros((), dtype)] * (MAX_ORDER - n)
        total = w if static else [jnp.where(order == n, w[j], total[j]) for j in range(MAX_ORDER)]
    used = max(candidates)
    combo = sum(total[j] * preds[j] for j in range(used))
    if data:
        x_t = (c.sigma_t / c.sigma_s * jnp.exp(-tau * tau * h)) * x_s + (r * c.alpha_t * h) * combo
        scale = c.sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * tau * tau * h))
    else:
        x_t = jnp.exp(c.log_alpha_t - c.log_alpha_s) * x_s - (r * c.sigma_t * h) * combo
        scale = tau * c.sigma_t * jnp.sqrt(jnp.expm1(2.0 * h))
    return x_t if xi is None else x_t + scale * xi


def _nodes(pred, hist: History, lam):
    return (pred, hist.m1, hist.m2, hist.m3), (lam, hist.lam1, hist.lam2, hist.lam3)


def sa_predict(x, pred, hist: History, c: StepCoeffs, order, tau, xi, *, algorithm_type: str = "data_prediction",
               second_order: str = "lagrange", max_order: Optional[int] = None):
    r"""The SA-Predictor of ``order`` (1-4, possibly traced) from ``s`` to ``t`` (``c``): ``pred`` is the
    prediction at ``s`` (data or noise, by ``algorithm_type``), ``hist.m1``-``m3`` those at ``hist.lam1``-``lam3``
    before it; ``tau`` the step's :math:`\tau` and ``xi`` its standard normal draw (``None``: the noise term left
    out); ``max_order`` bounds a traced ``order`` (default 4). The module docstring has the formulas.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d0 = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> hist = sv.solvers.History.init(x)
      >>> sa = sv.solvers.sa_predict(x, d0, hist, c, 1, 0.0, None)   # tau = 0, order 1: DPM-Solver++(1), DDIM
      >>> bool(jnp.allclose(sa, sv.solvers.dpmpp_step(x, d0, hist, c, 1)))
      True
    """
    preds, lams = _nodes(pred, hist, c.lam_s)
    return _update(x, preds, lams, c, order, tau, xi, algorithm_type=algorithm_type, second_order=second_order,
                   max_order=max_order)


def sa_correct(x_prev, pred_t, hist: History, c: StepCoeffs, order, tau, xi, *,
               algorithm_type: str = "data_prediction", second_order: str = "lagrange",
               max_order: Optional[int] = None):
    r"""The SA-Corrector of ``order`` (1-4, possibly traced): the step from ``s`` (at ``x_prev``) to ``t`` (``c``)
    redone with ``pred_t``, the model's prediction at the predicted point at ``t``, as a node; ``hist.m1``-``m3``
    are the predictions at ``s`` and before (log-SNRs ``hist.lam1``-``lam3``, ``hist.lam1`` being
    :math:`\lambda_s`); ``tau`` and ``xi`` the predictor's own; ``max_order`` as for :func:`sa_predict`.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d0 = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> hist = sv.solvers.History.init(x).push(d0, c.lam_s, x, 1)   # the prediction at s
      >>> d_t = jnp.full((2, 2), 0.5)   # the model at the predictor's point: the same, so the step is unchanged
      >>> sa = sv.solvers.sa_correct(x, d_t, hist, c, 2, 0.0, None)
      >>> bool(jnp.allclose(sa, sv.solvers.sa_predict(x, d0, sv.solvers.History.init(x), c, 1, 0.0, None)))
      True
    """
    preds, lams = _nodes(pred_t, hist, c.lam_t)
    return _update(x_prev, preds, lams, c, order, tau, xi, algorithm_type=algorithm_type, second_order=second_order,
                   max_order=max_order)


def sa_corrector_orders(num_steps: int, order: int, lower_order_final: bool) -> np.ndarray:
    """The order of the corrector that redoes each of ``num_steps`` steps (host NumPy int32), as diffusers'
    SASolverScheduler: ``min(order, k + 2)`` (one node more than the predictor's warm-up) and, with
    ``lower_order_final``, ``min(order, num_steps - k + 1)``.

    Examples:
      >>> sv.solvers.sa_corrector_orders(6, 4, True)
      array([2, 3, 4, 4, 3, 2], dtype=int32)
    """
    k = np.arange(num_steps)
    orders = np.minimum(order, k + 2)
    if lower_order_final:
        orders = np.minimum(orders, num_steps - k + 1)
    return orders.astype(np.int32)


class SAState(NamedTuple):
    """SA-Solver's memory: the :class:`~sdevp_jax.solvers.multistep.History` of predictions (its ``x_prev`` the
    point the last predictor started from, its ``order_prev`` the order of the corrector that redoes that step)
    and ``xi``, that predictor's draw, which the corrector reuses."""

    hist: History
    xi: jax.Array


@register
@struct.dataclass
class SASolver(GridSolver):
    """SA-Solver: the SA-Corrector on the last step, then the SA-Predictor on the next (:func:`sa_predict`,
    :func:`sa_correct`), one network call per grid point; step ``k``'s noise slot ``1 + k``
    (tests/test_sasolver.py holds it to diffusers' SASolverScheduler)."""

    predictor_order: int = option(2, choices=(1, 2, 3, 4), help="the SA-Predictor's order, 1-4 (diffusers' default 2)")
    corrector_order: int = option(2, choices=(1, 2, 3, 4), help="the SA-Corrector's order, 1-4 (diffusers' default 2)")
    algorithm_type: str = option("data_prediction", choices=ALGORITHMS, help=(
        "'data_prediction' (default, as diffusers) or 'noise_prediction' (the paper's noise form)"))
    tau: float = option(1.0, static=False, help=(
        "the SDE's noise scale tau >= 0 where it applies (0: the probability-flow ODE; 1: the reverse SDE)"))
    tau_t_min: float = option(0.2, static=False, help=(
        "tau applies to the steps starting at tau_t_min <= t <= tau_t_max (default 0.2 to 0.8), 0 elsewhere"))
    tau_t_max: float = option(0.8, static=False, help="the end of tau's interval of start times (see tau_t_min)")
    second_order: str = option("lagrange", choices=SECOND_ORDER, help=(
        "order 2's coefficients in data prediction: 'lagrange' (default, the paper's exact integrals) or "
        "'diffusers' (its h^2/2 and h/2 linear terms)"))
    lower_order_final: bool = option(True, help="lower both orders at the last steps, as diffusers")

    name = "sa_solver"
    diffusers_scheduler = "SASolverScheduler"
    kind = "sde_solver"
    description = "SA-Solver: stochastic Adams predictor-corrector, orders 1-4, tau-controlled SDE (Xue et al. 2023)"
    order_rule = "unipc"
    max_order = MAX_ORDER
    noise_slots = 1
    repeat_ready = True

    def __post_init__(self):
        super().__post_init__()
        positive_int_option("predictor_order", self.predictor_order, MAX_ORDER, self.name)
        positive_int_option("corrector_order", self.corrector_order, MAX_ORDER, self.name)
        choice_option("algorithm_type", self.algorithm_type, ALGORITHMS)
        choice_option("second_order", self.second_order, SECOND_ORDER)
        bool_option("lower_order_final", self.lower_order_final)
        if self.algorithm_type == "noise_prediction" and self.second_order == "diffusers":
            raise ValueError("second_order='diffusers' changes the data-prediction steps only: it needs "
                             "algorithm_type='data_prediction'")

    @property
    def order(self) -> int:
        """The order of accuracy with ``tau = 0`` (see tests/test_solvers.py for the measured orders)."""
        return min(self.corrector_order, self.predictor_order + 1)

    @classmethod
    def default_order(cls) -> int:
        return 2  # predictor and corrector of order 2

    def check(self) -> "SASolver":
        """``tau >= 0`` and ``tau_t_min <= tau_t_max``, where they are concrete; called by the sampling functions."""
        values = {name: _checks.real_scalar(name, getattr(self, name)) for name in ("tau", "tau_t_min", "tau_t_max")}
        tau, low, high = values["tau"], values["tau_t_min"], values["tau_t_max"]
        if not _checks.is_traced(tau) and not tau >= 0.0:
            raise ValueError(f"tau must be >= 0 (the SDE's noise scale), got {tau}")
        if not (_checks.is_traced(low) or _checks.is_traced(high)) and not low <= high:
            raise ValueError(f"tau_t_min must be <= tau_t_max (tau's interval of start times), got {low} > {high}")
        return self.replace(**values)

    @property
    def stochastic(self) -> bool:
        return _checks.is_traced(self.tau) or isinstance(self.tau, jax.Array) or self.tau != 0.0

    def _num_steps(self, num_points: int) -> int:
        return num_points - 1 + (1 if self.final_call else 0)

    def orders(self, num_points: int) -> jax.Array:
        """The predictor's order at each step (diffusers': ``min(p, k + 1)``, and ``min(p, N - k)``)."""
        return jnp.asarray(step_orders(self._num_steps(num_points), self.predictor_order, self.lower_order_final,
                                       self.final_zero, "unipc")[: num_points - 1])

    def corrector_orders(self, num_points: int) -> jax.Array:
        """The order of the corrector that redoes each step (:func:`sa_corrector_orders`)."""
        return jnp.asarray(sa_corrector_orders(self._num_steps(num_points), self.corrector_order,
                                               self.lower_order_final)[: num_points - 1])

    def tau_at(self, t):
        """:math:`\\tau` of the step that starts at time ``t``: ``tau`` inside ``[tau_t_min, tau_t_max]``, else 0."""
        inside = (t >= jnp.asarray(self.tau_t_min, t.dtype)) & (t <= jnp.asarray(self.tau_t_max, t.dtype))
        return jnp.where(inside, jnp.asarray(self.tau, t.dtype), jnp.zeros((), t.dtype))

    def init(self, x, grid) -> SAState:
        return SAState(History.init(x), jnp.zeros_like(x))

    def step(self, model, x, state: SAState, grid, k, noise):
        """Predict at point ``k``; correct the last step with it; take the predictor to ``k + 1``."""
        hist, xi_prev = state
        eps, d0 = self.predict(model, x, grid, k)
        data = self.algorithm_type == "data_prediction"
        pred = d0 if data else self.noise_of(x, eps, d0, grid, k)
        kw = dict(algorithm_type=self.algorithm_type, second_order=self.second_order)
        last = jnp.maximum(k - 1, 0)
        xi_old = xi_prev if self.stochastic else None
        corrected = sa_correct(hist.x_prev, pred, hist, grid.coeffs(last, k), hist.order_prev,
                               self.tau_at(grid.t[last]), xi_old, max_order=self.corrector_order, **kw)
        x = jnp.where(k > 0, corrected, x)
        xi = noise.draw() if self.stochastic else jnp.zeros_like(x)
        x_next = sa_predict(x, pred, hist, grid.coeffs(k, k + 1), self.orders(grid.num_points)[k],
                            self.tau_at(grid.t[k]), xi if self.stochastic else None, max_order=self.predictor_order,
                            **kw)
        hist = hist.push(pred, grid.lam[k], x, self.corrector_orders(grid.num_points)[k])
        return x_next, SAState(hist, xi), StepInfo(1)

    def finish(self, model, x, state: SAState, grid):
        """With ``final_sigmas_type="repeat"`` (diffusers' sigma grids, whose last step is zero-length): the model at
        the last grid point and the SA-Corrector of the step that reached it; the zero-length predictor after it
        leaves the sample as it is (every term of :func:`sa_predict` but the sample's vanishes with ``h``). Else as
        the other grid solvers."""
        if self.final_sigmas_type != "repeat":
            return super().finish(model, x, state, grid)
        k = grid.num_points - 1
        if k == 0:  # one point: no step to correct (diffusers' first step skips its corrector)
            return x, state, StepInfo(1)
        hist, xi_prev = state
        eps, d0 = self.predict(model, x, grid, k)
        data = self.algorithm_type == "data_prediction"
        pred = d0 if data else self.noise_of(x, eps, d0, grid, k)
        corrected = sa_correct(hist.x_prev, pred, hist, grid.coeffs(k - 1, k), hist.order_prev,
                               self.tau_at(grid.t[k - 1]), xi_prev if self.stochastic else None,
                               max_order=self.corrector_order, algorithm_type=self.algorithm_type,
                               second_order=self.second_order)
        return corrected, state, StepInfo(1)
