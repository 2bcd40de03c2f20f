r"""What the grid solvers (DDIM, DPM-Solver++, SDE-DPM-Solver++, UniPC) share: options, memory, last step.

All work in the exponential-integrator form of Lu et al. in
:math:`\lambda = \log(\alpha/\sigma)`: a step from time :math:`s` to :math:`t` has
:math:`h = \lambda_t - \lambda_s`, and, with :math:`D` the model's data prediction
:math:`\hat x_0`, the exact solution of the probability-flow ODE is

.. math::

    x_t = \frac{\sigma_t}{\sigma_s} x_s + \sigma_t \int_{\lambda_s}^{\lambda_t} e^{\lambda} D(\lambda)\, d\lambda

(DPM-Solver++, Lu et al. 2022b, eq. 9); each solver approximates :math:`D` in
:math:`\lambda` by a polynomial through its past evaluations (its :class:`History`)
and integrates it exactly. The order used at each step is a static table
(:func:`step_orders`): the warm-up of a multistep method (order ``k + 1`` at step
``k``) and diffusers' lowering of the order at the last steps (``lower_order_final``).
With ``final_sigmas_type="zero"`` (diffusers' default) a last step goes to
:math:`\sigma = 0`, where every update reduces to the data prediction at the last
grid time: one more network call.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .base import Grid, Solver, StepInfo, bool_option, choice_option, option, positive_int_option

__all__ = ["History", "GridSolver", "step_orders", "dynamic_threshold", "FINAL_SIGMAS_TYPES"]

FINAL_SIGMAS_TYPES = ("zero", "last", "repeat")


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


def begin_index_option(value, name: str) -> None:
    """``begin_index`` must be an int >= 0 (a grid point; its upper bound, the grid's last point, is checked by the
    loop)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"begin_index must be an int >= 0 (the grid point {name} starts at), got {value!r}")


def step_orders(num_steps: int, order: int, lower_order_final: bool, final_zero: bool, rule: str) -> np.ndarray:
    """The order of each of ``num_steps`` steps (host NumPy int32), as diffusers schedules it.

    ``rule="dpmsolver"`` (DPMSolverMultistepScheduler): ``min(order, k + 1)``, first
    order at the last step when it goes to :math:`\\sigma = 0` (``final_zero``; also with diffusers'
    ``euler_at_final``) or when
    ``lower_order_final`` and fewer than 15 steps, and at most second order at the
    step before in that case. ``rule="unipc"`` (UniPCMultistepScheduler):
    ``min(order, k + 1)`` and, with ``lower_order_final``, ``min(order, num_steps - k)``
    at every length.

    Examples:
      >>> sv.solvers.step_orders(5, 3, lower_order_final=True, final_zero=True, rule="dpmpp")
      array([1, 2, 3, 2, 1], dtype=int32)
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


def dynamic_threshold(x0, ratio, max_value):
    r"""Dynamic thresholding of a data prediction (Saharia et al., NeurIPS 2022, "Imagen", sec. 2.3).

    Per sample, :math:`s` = the ``ratio`` quantile of :math:`|\hat x_0|` over its
    entries, clipped to ``[1, max_value]``; then :math:`\hat x_0 \leftarrow
    \operatorname{clip}(\hat x_0, -s, s)/s` (as diffusers' ``_threshold_sample``).

    Examples:
      >>> x0 = jnp.array([[3.0, -0.5], [0.2, 0.1]])
      >>> sv.solvers.dynamic_threshold(x0, 0.995, 1.0)
      Array([[ 1. , -0.5],
             [ 0.2,  0.1]], dtype=float32)
    """
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.clip(jnp.quantile(flat, ratio, axis=1), 1.0, max_value)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return jnp.clip(x0, -s, s) / s


@struct.dataclass
class GridSolver(Solver):
    """The options and plumbing every grid solver shares (a base, not registered).

    Subclasses set ``max_order`` and ``order_rule`` (``"dpmsolver"`` or ``"unipc"``, see
    :func:`step_orders`) and implement ``update(x, hist, grid, k, eps, d0, order, noise) ->
    (x_from, x_next, m)``: the step from point ``k`` (at ``x``, predictions ``eps``/``d0``,
    of ``order``) to ``k + 1``, returning the point it stepped from (UniPC corrects it
    first), the new point and the prediction to remember.
    """

    final_sigmas_type: str = option("zero", choices=FINAL_SIGMAS_TYPES, help=(
        "the last step: 'zero' (default, diffusers'): one more network call, to sigma = 0; "
        "'last': end at the last grid time; 'repeat': a zero-length step there, one more network call "
        "(diffusers' sigma_min on its sigma grids: UniPC corrects its last step with it)"))
    thresholding: bool = option(False, help=(
        "dynamic thresholding of the data prediction (Saharia et al. 2022), for pixel-space models"))
    dynamic_thresholding_ratio: float = option(0.995, requires="thresholding", help=(
        "with thresholding: the quantile of |x0| (default 0.995; in (0, 1])"))
    sample_max_value: float = option(1.0, requires="thresholding", help=(
        "with thresholding: the largest threshold, the data's bound (default 1)"))

    order_rule = "dpmsolver"
    max_order = 1
    #: whether final_sigmas_type="repeat" is served: the solvers diffusers takes through a zero-length last step
    repeat_ready = False
    nfe_formula = "N - 1 (+ 1 with final_sigmas_type 'zero' or 'repeat')"

    def __post_init__(self):
        choice_option("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES)
        if self.final_sigmas_type == "repeat" and not self.repeat_ready:
            from .base import REGISTRY

            ready = [n for n, c in REGISTRY.items() if getattr(c, "repeat_ready", False)]
            raise ValueError(f"final_sigmas_type='repeat' (diffusers' zero-length last step) applies to {ready}; "
                             f"not to {self.name!r}")
        bool_option("thresholding", self.thresholding)
        if hasattr(self, "lower_order_final"):
            bool_option("lower_order_final", self.lower_order_final)
        if hasattr(self, "euler_at_final"):
            bool_option("euler_at_final", self.euler_at_final)
        if self.thresholding:
            from .. import _checks

            ratio = _checks.real_scalar("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio)
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {ratio}")
            _checks.positive_real("sample_max_value", self.sample_max_value)

    @property
    def final_zero(self) -> bool:
        return self.final_sigmas_type == "zero"

    @property
    def final_call(self) -> bool:
        """Whether the run ends with one more network call at the last grid time ('zero' or 'repeat')."""
        return self.final_sigmas_type in ("zero", "repeat")

    def _check_order(self) -> None:
        positive_int_option("order", self.order, self.max_order, self.name)

    def nfe(self, num_points: int) -> int:
        return num_points - 1 + (1 if self.final_call else 0)

    def orders(self, num_points: int) -> jax.Array:
        """The order of each step between grid points (a constant int32 array), the last step to sigma = 0 or the
        zero-length one counted as diffusers counts them."""
        num_steps = num_points - 1 + (1 if self.final_call else 0)
        first_order_last = self.final_zero or getattr(self, "euler_at_final", False)
        return jnp.asarray(step_orders(num_steps, self.order, getattr(self, "lower_order_final", True),
                                       first_order_last, self.order_rule)[: num_points - 1])

    def predict(self, model, x, grid: Grid, k):
        """The model at grid point ``k``: ``(eps_hat, x0_hat)`` in the work dtype, ``x0_hat`` thresholded or clipped
        (:func:`~sdevp_jax.denoiser.clip_range`)."""
        return self.predict_at(model, x, grid.t[k], grid.alpha[k], grid.sigma[k])

    def predict_at(self, model, x, t, alpha, sigma, model_t=None):
        """The model at time ``t`` (0-d), where the schedule is ``alpha``, ``sigma``; as :meth:`predict`. ``model_t``:
        the model's time input there, where a solver computes it (:meth:`~sdevp_jax.denoiser.Denoiser.eps_x0`)."""
        eps, x0 = model.eps_x0(x, t, alpha, sigma, model_t=model_t)
        if self.thresholding:
            x0 = dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        elif model.clip_range is not None:  # the state's config: diffusers' clip_sample
            x0 = jnp.clip(x0, -model.clip_range, model.clip_range)
        return eps, x0

    def noise_of(self, x, eps, d0, grid: Grid, k):
        """The noise prediction a noise-form step uses at point ``k``: the model's ``eps``, or with thresholding
        the one the thresholded data prediction ``d0`` implies, :math:`(x - \\alpha d_0)/\\sigma` (diffusers'
        conversion)."""
        if not self.thresholding:
            return eps
        return (x - grid.alpha[k] * d0) / grid.sigma[k]

    def init(self, x, grid: Grid) -> History:
        return History.init(x)

    def step(self, model, x, hist: History, grid: Grid, k, noise, first=0):
        """Predict at point ``k``, take the solver's ``update`` to ``k + 1``, remember the prediction. ``first``:
        the point the run started from (a run started mid-grid, diffusers' img2img, warms up from there as from
        point 0: its order at most ``k - first + 1``, as diffusers' ``lower_order_nums`` counts)."""
        eps, d0 = self.predict(model, x, grid, k)
        order = self.orders(grid.num_points)[k]
        if not (isinstance(first, int) and first == 0):
            order = jnp.minimum(order, k - first + 1)
        x_from, x_next, m = self.update(x, hist, grid, k, eps, d0, order, noise)
        if model.renoises:
            x_next = self.renoised(x_next, x_from, eps, d0, grid, k)
        return x_next, hist.push(m, grid.lam[k], x_from, order), StepInfo(1)

    def renoised(self, x_next, x, eps, d0, grid: Grid, k):
        """The step's result when the model renoises (CFG++, ``renoise_ready`` solvers): as computed by
        default, for a step that already takes its noise from ``eps`` (DDIM)."""
        return x_next

    def finish(self, model, x, hist: History, grid: Grid):
        """With ``final_sigmas_type="zero"``: the data prediction at the last grid time (the step to sigma = 0);
        with ``"repeat"``: the zero-length step there (:meth:`repeated`)."""
        if not self.final_call:
            return x, hist, StepInfo(0)
        eps, x0 = self.predict(model, x, grid, grid.num_points - 1)
        if self.final_zero:
            return x0, hist, StepInfo(1)
        return self.repeated(x, hist, grid, eps, x0), hist, StepInfo(1)

    def repeated(self, x, hist: History, grid: Grid, eps, d0):
        """The zero-length step at the last grid time, given the model there: ``x`` itself, the limit at
        :math:`h = 0` of the exponential integrators' updates (their terms vanish with :math:`e^{-h} - 1`; diffusers'
        arithmetic of 0/0 there can give NaN, e.g. DPM-Solver++(3M), where the limit is finite)."""
        return x
