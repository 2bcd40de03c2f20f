r"""UniPC (Zhao et al., NeurIPS 2023): the UniP predictor and the UniC corrector, orders 1-3.

At each grid point the new model evaluation first corrects the step just taken
(UniC, raising its order by one at no extra network call), then the predictor (UniP)
takes the next step from the corrected point. The solver's memory is the
:class:`~sdevp_jax.solvers.multistep.History` of the last predictions, the point
the last predictor started from and that predictor's order.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from .base import StepCoeffs, bool_option, choice_option, option, register
from .multistep import GridSolver, History

__all__ = ["UniPC", "unipc_predict", "unipc_correct"]

VARIANTS = ("bh2", "bh1")


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


def _solve(r, b, rks):
    r"""``rho`` solving ``r rho = b``, where the columns belong to the points ``rks``.

    A point at :math:`\lambda = -\infty` (the start of a zero-terminal-SNR run, :math:`\alpha = 0`) has
    :math:`r = -\infty`. As :math:`r \to -\infty` the system's solution tends to: that point's
    :math:`\rho` times its difference :math:`(m - D_0)/r` goes to 0, and the others' :math:`\rho` solve
    the first :math:`p - 1` rows without it. Replacing its column by the last unit vector gives that
    limit exactly (its own :math:`\rho` then only balances the last row; its difference is 0).
    """
    p = r.shape[0]
    finite = jnp.stack([jnp.isfinite(rk) for rk in rks])
    unit = (jnp.arange(p) == p - 1).astype(r.dtype)
    return jnp.linalg.solve(jnp.where(finite[None, :], r, unit[:, None]), b)


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
    r"""The UniP predictor (Zhao et al. 2023, Algorithm 2, data prediction).

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

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d0 = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> sv.solvers.unipc_predict(x, d0, sv.solvers.History.init(x), c, 1).shape
      (2, 2)
    """
    h, hh, b_h, rks, d1s, ratio, scale = _unipc_parts(hist, c, d0, variant, predict_x0)
    x1 = ratio * x - (scale * jnp.expm1(hh)) * d0
    second = x1 - (scale * b_h * 0.5) * d1s[0]
    r3, b3 = _unipc_system(rks + [jnp.ones_like(h)], hh, b_h, 3)
    rho = _solve(r3[:-1, :-1], b3[:-1], rks)
    third = x1 - (scale * b_h) * (rho[0] * d1s[0] + rho[1] * d1s[1])
    return jnp.where(order >= 3, third, jnp.where(order >= 2, second, x1))


def unipc_correct(x_prev, d0, hist: History, c: StepCoeffs, d_t, order, *, variant: str = "bh2",
                  predict_x0: bool = True):
    r"""The UniC corrector (Zhao et al. 2023, Algorithm 1, data prediction).

    Redoes the step just taken from ``x_prev`` (at ``s``, prediction ``d0``, older
    predictions in ``hist``) to ``t`` with the new evaluation ``d_t`` at ``t`` added:

    .. math::

        x_t^c = \frac{\sigma_t}{\sigma_s}x_s - \alpha_t\varphi_1 D_0
                - \alpha_t B(h)\Big(\sum_{k=1}^{p-1}\rho_k\,\frac{D_k - D_0}{r_k} + \rho_p (D_t - D_0)\Big),

    :math:`\rho` solving the full :math:`p \times p` system (:math:`\rho = 1/2` at ``p = 1``);
    ``order`` is the order ``p`` of the predictor step being corrected; ``predict_x0`` as for
    :func:`unipc_predict`.

    Examples:
      >>> grid = sv.solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
      >>> c = grid.coeffs(0, 1)
      >>> x, d0 = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
      >>> x_t = sv.solvers.unipc_predict(x, d0, sv.solvers.History.init(x), c, 1)   # the predictor's point
      >>> d_t = jnp.full((2, 2), 0.5)   # the model's data prediction at x_t, then the step is redone with it
      >>> sv.solvers.unipc_correct(x, d0, sv.solvers.History.init(x), c, d_t, 1).shape
      (2, 2)
    """
    h, hh, b_h, rks, d1s, ratio, scale = _unipc_parts(hist, c, d0, variant, predict_x0)
    x1 = ratio * x_prev - (scale * jnp.expm1(hh)) * d0
    d1_t = d_t - d0
    one = jnp.ones_like(h)
    first = x1 - (scale * b_h) * (0.5 * d1_t)
    r2, b2 = _unipc_system([rks[0], one], hh, b_h, 2)
    rho2 = _solve(r2, b2, [rks[0], one])
    second = x1 - (scale * b_h) * (rho2[0] * d1s[0] + rho2[1] * d1_t)
    r3, b3 = _unipc_system(rks + [one], hh, b_h, 3)
    rho3 = _solve(r3, b3, rks + [one])
    third = x1 - (scale * b_h) * (rho3[0] * d1s[0] + rho3[1] * d1s[1] + rho3[2] * d1_t)
    return jnp.where(order >= 3, third, jnp.where(order >= 2, second, first))


@register
@struct.dataclass
class UniPC(GridSolver):
    """UniPC: UniC on the last step, then UniP on the next, in data (default) or noise prediction."""

    order: int = option(2, choices=(1, 2, 3), help="the predictor's order, 1-3 (UniC adds one)")
    solver_type: str = option("bh2", choices=VARIANTS, help="B(h): 'bh2' (default, e^h - 1) or 'bh1' (h)")
    lower_order_final: bool = option(True, help="lower the order at the last steps, as diffusers")
    predict_x0: bool = option(True, help=(
        "data prediction (default, as diffusers); False: the noise-prediction form (Zhao et al. give both)"))

    model_at_grid_points = True
    name = "unipc"
    repeat_ready = True
    diffusers_scheduler = "UniPCMultistepScheduler"
    description = "UniPC: UniP predictor + UniC corrector, bh1/bh2, orders 1-3 (Zhao et al. 2023)"
    order_rule = "unipc"
    max_order = 3
    invertible = True

    @classmethod
    def default_order(cls) -> int:
        return cls.order + 1  # the corrector raises the predictor's order by one

    @property
    def zero_snr_start(self) -> bool:
        r"""In data prediction with ``bh2`` only: the noise form's ``alpha_t/alpha_s`` and ``bh1``'s
        :math:`B(h) = -h` (with UniC's fixed first-order :math:`\rho = 1/2`) are infinite when the step starts
        at :math:`\lambda = -\infty`."""
        return self.predict_x0 and self.solver_type == "bh2"

    def __post_init__(self):
        super().__post_init__()
        self._check_order()
        choice_option("solver_type", self.solver_type, VARIANTS)
        bool_option("predict_x0", self.predict_x0)
        if not self.predict_x0 and self.thresholding:
            raise ValueError("thresholding acts on the data prediction: it needs predict_x0=True")

    def repeated(self, x, hist, grid, eps, d0):
        """The zero-length step at the last grid time: UniC corrects the last step with the model there (the
        predictor then stays where it is)."""
        k = grid.num_points - 1
        if not self.predict_x0:
            d0 = eps
        previous = History(hist.m2, hist.m3, hist.m3, hist.lam2, hist.lam3, hist.lam3, hist.x_prev, hist.order_prev)
        return unipc_correct(hist.x_prev, hist.m1, previous, grid.coeffs(k - 1, k), d0, hist.order_prev,
                             variant=self.solver_type, predict_x0=self.predict_x0)

    def update(self, x, hist, grid, k, eps, d0, order, noise):
        if not self.predict_x0:
            d0 = eps  # the noise-prediction form keeps the noise predictions in its history
        previous = History(hist.m2, hist.m3, hist.m3, hist.lam2, hist.lam3, hist.lam3, hist.x_prev, hist.order_prev)
        corrected = unipc_correct(hist.x_prev, hist.m1, previous, grid.coeffs(k - 1, k), d0, hist.order_prev,
                                  variant=self.solver_type, predict_x0=self.predict_x0)
        x = jnp.where(hist.order_prev > 0, corrected, x)  # a step before it: the run's first step has none
        x_next = unipc_predict(x, d0, hist, grid.coeffs(k, k + 1), order, variant=self.solver_type,
                               predict_x0=self.predict_x0)
        return x, x_next, d0
