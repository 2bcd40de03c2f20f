r"""Variance-preserving noise schedules: one protocol for every VP model.

A VP model diffuses data as :math:`x_t = \alpha(t) x_0 + \sigma(t) \epsilon` with
:math:`\alpha(t)^2 + \sigma(t)^2 = 1`, for :math:`t` in :math:`(t_{\min}, t_{\max}]`
(Song et al., ICLR 2021, sec. 3.4; the forward SDE is
:math:`dx = -\tfrac12\beta(t) x\,dt + \sqrt{\beta(t)}\,dw`). A schedule is fixed by
:math:`\log\alpha(t)`; everything else follows from it:

.. math::

    \sigma = \sqrt{-\operatorname{expm1}(2\log\alpha)}, \qquad
    \beta(t) = -2\,\frac{d\log\alpha}{dt}, \qquad
    \lambda(t) = \log\frac{\alpha}{\sigma}
               = \log\alpha - \tfrac12\log\!\big(-\operatorname{expm1}(2\log\alpha)\big),

and the inverse of :math:`\lambda` goes through
:math:`\log\alpha = -\tfrac12\operatorname{softplus}(-2\lambda)` (Lu et al., NeurIPS
2022, "DPM-Solver", sec. 3 and app. D).

Every schedule here is an immutable pytree (a ``flax.struct`` dataclass) with the same
methods: ``log_alpha(t)``, ``alpha(t)``, ``sigma(t)``, ``alpha_sigma(t)``, ``beta(t)``,
``log_snr(t)``, ``t_from_log_snr(lam)``, ``cast(dtype)``, and the properties ``t_min``,
``t_max`` and ``is_discrete``. Numbers a user may ``vmap`` over or differentiate (``beta_min``,
``beta_max``, ``s``, a discrete schedule's knots) are leaves; the number of training
steps of a discrete schedule is static.

* :func:`linear` -- the paper's continuous schedule, the coefficients of
  :mod:`sdevp_jax.sde` bit for bit;
* :func:`cosine` -- Nichol & Dhariwal (ICML 2021, eq. 17) in continuous time;
* :func:`discrete` -- a discrete-time model's ``betas`` or ``alphas_cumprod`` on the
  continuous time of Lu et al. (2022, app. D), with :func:`from_diffusers` for the
  ``beta_schedule`` names of diffusers' discrete schedulers.

The methods are elementwise in ``t`` and do no range checks (they run inside compiled
loops); times outside ``(t_min, t_max]`` are the caller's to reject on the host.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike

from . import _checks, sde

__all__ = [
    "LinearSchedule",
    "CosineSchedule",
    "DiscreteSchedule",
    "linear",
    "cosine",
    "discrete",
    "from_diffusers",
    "rescale_zero_terminal_snr",
    "DIFFUSERS_BETA_SCHEDULES",
    "COSINE_BETA_CAP",
    "COSINE_S_MAX",
    "SCHEDULE_TYPES",
]

#: The ``beta_schedule`` names :func:`from_diffusers` understands.
DIFFUSERS_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

#: The cosine schedule's largest rate :math:`\beta(t_{\max})`. iDDPM caps its discrete
#: betas at 0.999 over 1000 steps, i.e. a continuous rate of about 0.999 * 1000; the
#: same cap fixes ``t_max`` (DPM-Solver's ``cosine_beta_max``, Lu et al. 2022).
COSINE_BETA_CAP = 999.0


class _VPSchedule:
    """The protocol's methods that follow from ``log_alpha`` alone (a mixin)."""

    def log_alpha(self, t: ArrayLike) -> jax.Array:  # pragma: no cover - overridden
        raise NotImplementedError

    def alpha(self, t: ArrayLike) -> jax.Array:
        r""":math:`\alpha(t) = e^{\log\alpha(t)}`."""
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: ArrayLike) -> jax.Array:
        r""":math:`\sigma(t) = \sqrt{-\operatorname{expm1}(2\log\alpha(t))}` (no ``1 - exp`` cancellation)."""
        return sde._sigma_of_m(self.log_alpha(t))

    def alpha_sigma(self, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
        r""":math:`(\alpha(t), \sigma(t))` from one evaluation of :math:`\log\alpha(t)`."""
        m = self.log_alpha(t)
        return jnp.exp(m), sde._sigma_of_m(m)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        r""":math:`\lambda(t) = \log\alpha - \tfrac12\log(-\operatorname{expm1}(2\log\alpha))`.

        Accurate at both ends as long as :math:`\log\alpha` is: near :math:`t = 0` the
        ``expm1`` keeps the digits of :math:`\sigma^2`, near :math:`t_{\max}` the second
        term is small.
        """
        m = self.log_alpha(t)
        return m - 0.5 * jnp.log(-jnp.expm1(2.0 * m))

    @property
    def t_min(self) -> float:
        """The open lower end of the time range: ``alpha = 1``, ``sigma = 0``, ``log_snr = inf`` there."""
        return 0.0

    def smallest_time(self, dtype: Any) -> Optional[float]:  # pragma: no cover - overridden
        r"""The smallest ``t`` whose arithmetic in ``dtype`` keeps :math:`\sigma(t)^2` a normal number.

        Below it :math:`-\operatorname{expm1}(2\log\alpha)` is subnormal or 0 (XLA flushes
        subnormals to zero on CPU), so :math:`\sigma = 0`, :math:`\lambda = \infty` and
        the score :math:`-\epsilon/\sigma` is not finite. ``None`` when the schedule's
        numbers are traced. Each schedule derives it from its own formula for
        :math:`\log\alpha` with a factor of 2 to 4 to spare for rounding.
        """
        raise NotImplementedError


def _host(value: Any) -> Optional[np.ndarray]:
    """A schedule number as float64 NumPy when it is concrete, else ``None`` (a tracer)."""
    if _checks.is_traced(value):
        return None
    return np.asarray(value, np.float64)


def _float_t(t: ArrayLike) -> jax.Array:
    """``t`` as a floating JAX array (an int becomes the default float dtype)."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    return t


# --------------------------------------------------------------------------- linear


@struct.dataclass
class LinearSchedule(_VPSchedule):
    r"""The VP SDE's linear schedule :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`.

    Every method calls the function of :mod:`sdevp_jax.sde` of the same meaning, so the
    results are bitwise those of :mod:`sdevp_jax.sde` (tested in float32 and float64).
    Valid on :math:`(0, 1]`.
    """

    beta_min: Any
    beta_max: Any

    def log_alpha(self, t: ArrayLike) -> jax.Array:
        r""":math:`\log\alpha(t) = -\tfrac14 t^2(\beta_{\max} - \beta_{\min}) - \tfrac12 t\beta_{\min}`."""
        return sde.log_mean_coeff(t, self.beta_min, self.beta_max)

    def alpha(self, t: ArrayLike) -> jax.Array:
        return sde.alpha(t, self.beta_min, self.beta_max)

    def sigma(self, t: ArrayLike) -> jax.Array:
        return sde.sigma(t, self.beta_min, self.beta_max)

    def alpha_sigma(self, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
        return sde.alpha_sigma(t, self.beta_min, self.beta_max)

    def beta(self, t: ArrayLike) -> jax.Array:
        r""":math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`."""
        return sde.beta(t, self.beta_min, self.beta_max)

    def log_snr(self, t: ArrayLike) -> jax.Array:
        return sde.log_snr(t, self.beta_min, self.beta_max)

    def t_from_log_snr(self, lam: ArrayLike) -> jax.Array:
        r"""The inverse of :meth:`log_snr`: the positive root of a quadratic (see :func:`sde.t_of_log_snr`)."""
        return sde.t_of_log_snr(lam, self.beta_min, self.beta_max)

    @property
    def t_max(self) -> float:
        return 1.0

    def smallest_time(self, dtype: Any) -> Optional[float]:
        r""":math:`4\,\text{tiny}/\min(\beta_{\min}, 1)`, ``tiny = finfo(dtype).tiny`` (4.7e-37 at the defaults in float32).

        :math:`-2\log\alpha(t) \ge \beta_{\min} t`, computed from ``0.5 * t * beta_min``:
        at this ``t`` that product is ``2 tiny`` and ``0.5 t`` is normal, so
        :math:`\sigma(t)^2 \ge 4\,\text{tiny}` (see :meth:`_VPSchedule.smallest_time`).
        """
        bmin = _host(self.beta_min)
        if bmin is None or bmin.size == 0:
            return None
        return 4.0 * float(jnp.finfo(dtype).tiny) / min(float(np.min(bmin)), 1.0)

    @property
    def is_discrete(self) -> bool:
        return False

    def cast(self, dtype) -> "LinearSchedule":
        """The schedule with ``beta_min``/``beta_max`` as arrays of ``dtype`` (how every step computes)."""
        return LinearSchedule(beta_min=jnp.asarray(self.beta_min, dtype), beta_max=jnp.asarray(self.beta_max, dtype))


def check_beta_max(beta_max: Any, dtype: Any = None) -> None:
    """A concrete ``beta_max`` (any shape) at most :func:`~sdevp_jax._checks.largest_rate` of ``dtype`` (default: JAX's default float)."""
    value = _host(beta_max)
    if value is None:
        return
    dtype = _checks.default_float() if dtype is None else jnp.dtype(dtype)
    bound = _checks.largest_rate(dtype)
    if not np.all(value <= bound):
        raise ValueError(
            f"beta_max must be <= sqrt(finfo({dtype.name}).max) = {bound:.4g} (the schedule's arithmetic forms "
            f"beta_max**2-sized terms, which overflow beyond it), got {beta_max}"
        )


def linear(beta_min: Any = 0.1, beta_max: Any = 20.0) -> LinearSchedule:
    """The paper's linear schedule; ``0 < beta_min < beta_max <= sqrt(finfo.max)`` (checked when concrete; tracers pass).

    The upper bound (1.8e19 in float32, JAX's default float dtype) is
    :func:`~sdevp_jax._checks.largest_rate`'s: a larger ``beta_max`` overflows.

    Examples:
      >>> lin = sv.schedules.linear()   # beta_min=0.1, beta_max=20
      >>> float(lin.beta(jnp.array(1.0))), lin.t_max
      (20.0, 1.0)
    """
    beta_min = _checks.positive_real("beta_min", beta_min)
    beta_max = _checks.positive_real("beta_max", beta_max)
    if not (_checks.is_traced(beta_min) or _checks.is_traced(beta_max)) and not beta_max > beta_min:
        raise ValueError(f"beta_max must be > beta_min = {beta_min}, got {beta_max}")
    check_beta_max(beta_max)
    return LinearSchedule(beta_min=beta_min, beta_max=beta_max)


# --------------------------------------------------------------------------- cosine


@struct.dataclass
class CosineSchedule(_VPSchedule):
    r"""The cosine schedule of Nichol & Dhariwal (ICML 2021, "Improved DDPM", eq. 17).

    .. math::

        \bar\alpha(t) = \frac{f(t)}{f(0)}, \quad
        f(t) = \cos^2\theta(t), \quad \theta(t) = \frac{t + s}{1 + s}\,\frac{\pi}{2},
        \qquad \log\alpha = \tfrac12\log\bar\alpha, \qquad
        \beta(t) = \frac{\pi}{1 + s}\tan\theta(t).

    **Keeping** :math:`\beta` **finite.** :math:`\beta(t) \to \infty` as :math:`t \to 1`
    (:math:`\alpha(1) = 0`). The schedule is therefore defined on :math:`(0, t_{\max}]`
    with :math:`t_{\max}` the time where :math:`\beta` reaches :data:`COSINE_BETA_CAP`
    = 999, the continuous counterpart of iDDPM's cap of its discrete betas at 0.999
    over 1000 steps (and DPM-Solver's ``cosine_beta_max``, Lu et al. 2022):

    .. math::

        t_{\max} = \frac{2(1 + s)}{\pi}\arctan\frac{999(1 + s)}{\pi} - s
        \approx 0.99800 \ (s = 0.008),

    where :math:`\lambda(t_{\max}) \approx -5.78` (DDPM's linear schedule ends at
    :math:`\lambda \approx -5.06`). The schedule is the exact closed form on that
    range -- nothing is clipped -- and samplers start at ``t_max``; times above it
    are out of range (:math:`\beta` turns negative past :math:`t = 1` in floating
    point).

    **Accuracy.** With :math:`\theta_0 = \theta(0)`, :math:`\delta = t\pi/(2(1+s))` and
    :math:`\varphi = (1 - t)\pi/(2(1+s)) = \pi/2 - \theta`,

    .. math::

        \log\alpha = \log\frac{\cos\theta}{\cos\theta_0}
                   = \operatorname{log1p}\big(-2\sin^2\tfrac\delta2 - \tan\theta_0\sin\delta\big)
                     \ (t \le \tfrac12), \qquad
                   = \log\sin\varphi - \log\cos\theta_0 \ (t > \tfrac12),

    so neither end subtracts nearly equal numbers; :meth:`t_from_log_snr` is written
    the same way.
    """

    s: Any

    def _theta0(self) -> tuple[Any, Any]:
        r""":math:`(\tan\theta_0, \log\cos\theta_0)`, :math:`\theta_0 = \tfrac{s}{1+s}\tfrac\pi2`.

        Python floats (rounded once, to the dtype of ``t``, where used) when ``s`` is a
        concrete number; arrays when it is an array or a tracer.
        """
        if isinstance(self.s, (int, float)):
            theta0 = self.s / (1.0 + self.s) * (0.5 * math.pi)
            return math.tan(theta0), math.log(math.cos(theta0))
        theta0 = self.s / (1.0 + self.s) * (0.5 * math.pi)
        return jnp.tan(theta0), jnp.log(jnp.cos(theta0))

    def log_alpha(self, t: ArrayLike) -> jax.Array:
        r""":math:`\log\alpha(t) = \log\cos\theta(t) - \log\cos\theta(0)` (see the class docstring)."""
        t = _float_t(t)
        half = jnp.asarray(0.5, t.dtype)
        scale = (0.5 * math.pi) / (1.0 + self.s)
        tan0, logcos0 = self._theta0()
        t_lo = jnp.where(t <= half, t, half)  # each branch sees only its own half (finite gradients)
        t_hi = jnp.where(t <= half, half, t)
        delta = t_lo * scale
        small = jnp.log1p(-2.0 * jnp.sin(0.5 * delta) ** 2 - tan0 * jnp.sin(delta))
        large = jnp.log(jnp.sin((1.0 - t_hi) * scale)) - logcos0
        return jnp.where(t <= half, small, large)

    def beta(self, t: ArrayLike) -> jax.Array:
        r""":math:`\beta(t) = \frac{\pi}{1+s}\tan\theta(t)`; near :math:`t = 1` as :math:`\cot\varphi`."""
        t = _float_t(t)
        half = jnp.asarray(0.5, t.dtype)
        scale = (0.5 * math.pi) / (1.0 + self.s)
        t_lo = jnp.where(t <= half, t, half)
        t_hi = jnp.where(t <= half, half, t)
        tan_lo = jnp.tan((t_lo + self.s) * scale)
        phi = (1.0 - t_hi) * scale
        tan_hi = jnp.cos(phi) / jnp.sin(phi)
        return (2.0 * scale) * jnp.where(t <= half, tan_lo, tan_hi)

    def t_from_log_snr(self, lam: ArrayLike) -> jax.Array:
        r"""The inverse of :meth:`log_snr`, in closed form through :math:`\arctan`.

        From :math:`\alpha^2 = \cos^2\theta/\cos^2\theta_0` and
        :math:`\sigma^2/\alpha^2 = e^{-2\lambda}`:
        :math:`\tan^2\theta = \tan^2\theta_0 + e^{-2\lambda}/\cos^2\theta_0` (a sum of
        positive terms), and, with :math:`T = \tan\theta`,

        .. math::

            \theta - \theta_0 = \arctan\frac{T - \tan\theta_0}{1 + T\tan\theta_0},
            \qquad T - \tan\theta_0 = \frac{e^{-2\lambda}}{\cos^2\theta_0\,(T + \tan\theta_0)},

        so :math:`t = (\theta - \theta_0)\,2(1+s)/\pi` keeps its digits as
        :math:`t \to 0` (no :math:`\theta - \theta_0` cancellation).
        """
        lam = _float_t(lam)
        tan0, logcos0 = self._theta0()
        e = jnp.exp(-2.0 * lam - 2.0 * logcos0)  # e^{-2 lam} / cos^2(theta0)
        big_t = jnp.sqrt(tan0**2 + e)
        dtheta = jnp.arctan2(e / (big_t + tan0), 1.0 + big_t * tan0)
        return dtheta * ((1.0 + self.s) * (2.0 / math.pi))

    @property
    def t_max(self) -> Any:
        r""":math:`t` where :math:`\beta(t) =` :data:`COSINE_BETA_CAP` (about 0.998 for ``s = 0.008``)."""
        s = self.s
        if _checks.is_traced(s) or isinstance(s, jax.Array):
            return jnp.arctan(COSINE_BETA_CAP * (1.0 + s) / jnp.pi) * (2.0 * (1.0 + s) / jnp.pi) - s
        return math.atan(COSINE_BETA_CAP * (1.0 + s) / math.pi) * (2.0 * (1.0 + s) / math.pi) - s

    def smallest_time(self, dtype: Any) -> Optional[float]:
        r"""From :math:`-\log\alpha \approx \tan\theta_0\,\delta + \delta^2/2`, :math:`\delta = t\pi/(2(1+s))`.

        The lower half computes ``log1p(-2 sin(delta/2)**2 - tan0 sin(delta))``; either
        term alone keeps the argument normal: ``tan0 * delta >= 2 tiny`` (with ``delta``
        itself normal) or ``delta >= 4 sqrt(tiny)`` (the only one for ``s = 0``).
        """
        s = _host(self.s)
        if s is None or s.size == 0:
            return None
        tiny = float(jnp.finfo(dtype).tiny)
        scale = (0.5 * math.pi) / (1.0 + s)
        tan0 = np.tan(s / (1.0 + s) * (0.5 * math.pi))
        with np.errstate(divide="ignore"):
            by_tan = np.where(tan0 > 0, 2.0 * tiny * np.maximum(1.0, 1.0 / np.where(tan0 > 0, tan0, 1.0)), np.inf)
        delta = np.minimum(by_tan, 4.0 * math.sqrt(tiny))
        return float(np.max(np.maximum(delta / scale, 2.0 * tiny)))

    @property
    def is_discrete(self) -> bool:
        return False

    def cast(self, dtype) -> "CosineSchedule":
        """The schedule for computing in ``dtype``: a Python ``s`` stays one (rounded where used), an array is cast."""
        if isinstance(self.s, (int, float)):
            return self
        return CosineSchedule(s=jnp.asarray(self.s, dtype))


#: The largest offset ``s`` of :func:`cosine`: :math:`999/4 - 1 = 248.75`.
#: On :math:`t \le \tfrac12` :meth:`CosineSchedule.beta` evaluates :math:`\tan((t + s)\,\pi/(2(1+s)))`,
#: whose rounding (``u`` per operation) is amplified by :math:`\theta/\varphi \le 2(1 + s)`
#: (:math:`\varphi = \pi/2 - \theta \ge \pi/(4(1+s))` there). Every ``s`` already has
#: :math:`\beta`'s relative error of about :math:`u/(1 - t_{\max}) \approx 999u/2` at
#: ``t_max``, where :math:`1 - t_{\max} \approx 2/999` (the rounding of ``t`` itself); ``s``
#: up to this bound keeps the lower half no less accurate than that (measured in float32:
#: 1.6e-6 at s = 0.008, 1.3e-5 at s = 100, 1.6e-3 at s = 1e4).
COSINE_S_MAX = COSINE_BETA_CAP / 4.0 - 1.0


def cosine(s: Any = 0.008) -> CosineSchedule:
    """The cosine schedule of Nichol & Dhariwal (2021) with offset ``s`` in ``[0, COSINE_S_MAX]`` (checked when concrete).

    :data:`COSINE_S_MAX` = 248.75 is where the schedule's float arithmetic stops
    keeping its accuracy (see there); iDDPM's ``s`` is 0.008.

    Examples:
      >>> cos = sv.schedules.cosine()
      >>> round(float(cos.t_max), 4), round(float(cos.beta(cos.t_max)), 1)
      (0.998, 999.0)
    """
    s = _checks.real_scalar("s", s)
    if not _checks.is_traced(s) and not 0.0 <= s <= COSINE_S_MAX:
        raise ValueError(
            f"s must be in [0, {COSINE_S_MAX}] (beyond it the schedule's beta loses more than the "
            f"float digits it loses at t_max), got {s}"
        )
    return CosineSchedule(s=s)


# --------------------------------------------------------------------------- discrete


@struct.dataclass
class DiscreteSchedule(_VPSchedule):
    r"""A discrete-time model's schedule in continuous time (Lu et al. 2022, app. D).

    Label :math:`n = 0, \dots, N-1` (``N = num_train_timesteps``) sits at time
    :math:`t_n = (n + 1)/N`, and :math:`\log\alpha` is piecewise linear in :math:`t`
    between the knots :math:`(0, 0), (t_0, \log\alpha_0), \dots, (1, \log\alpha_{N-1})`,
    :math:`\log\alpha_n = \tfrac12\log\bar\alpha_n` (``alphas_cumprod``). Hence
    :math:`\alpha(t_n)^2 = \bar\alpha_n` (to rounding), :math:`\beta(t)` is piecewise
    constant, :math:`-2N(\log\alpha_{k} - \log\alpha_{k-1})` on the ``k``-th piece
    (:math:`= -N\log(1 - \beta_k)`, close to :math:`N\beta_k`),
    and :math:`\lambda` is monotone, so its inverse finds the piece by a sorted search
    and inverts the linear piece. Valid on :math:`(0, 1]`.

    A zero-terminal-SNR schedule (``alphas_cumprod[N-1] = 0``, Lin et al. 2024) has
    :math:`\log\alpha = -\infty` at :math:`t = 1`, which no linear piece reaches: on its
    last piece :math:`\alpha` itself is linear in :math:`t`, :math:`\alpha = \alpha_{N-2}(1 - f)`
    with :math:`f = tN - (N - 1)` (the rescaling of Lin et al. is linear in :math:`\alpha`
    too), so :math:`\beta = 2N/(1 - f)` there, :math:`\alpha(1) = 0`, :math:`\sigma(1) = 1` and
    :math:`\lambda(1) = -\infty` exactly.

    The per-piece increments are stored beside the knots, each computed from the
    input directly in float64 (:math:`\tfrac12\operatorname{log1p}(-\beta_n)`), so that
    :math:`\beta(t)` keeps full relative precision in float32 (a difference of two
    float32 knots of size ~5 would lose up to ~1e-3 of a :math:`\beta` ~ 0.1).

    Attributes:
      knots: :math:`(\log\alpha \text{ at } t = k/N)_{k = 0..N}`, shape ``(N + 1,)``,
        ``knots[0] = 0``, strictly decreasing; a float64 NumPy array when built by
        :func:`discrete` (cast to the dtype of ``t`` at each use).
      increments: ``knots[k + 1] - knots[k] < 0``, shape ``(N,)``, likewise.
      num_train_timesteps: static, ``N``.
      zero_terminal_snr: static, whether ``alphas_cumprod[N-1] = 0`` (``knots[N] = increments[N-1] = -inf``).
    """

    knots: Any
    increments: Any
    num_train_timesteps: int = struct.field(pytree_node=False)
    zero_terminal_snr: bool = struct.field(pytree_node=False, default=False)

    def _piece(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(k, frac)``: ``t N = k + frac`` with the piece index ``k`` in ``[0, N - 1]``."""
        n = self.num_train_timesteps
        u = t * n
        k = jnp.clip(jnp.floor(u), 0, n - 1)
        return k.astype(jnp.int32), u - k

    def log_alpha(self, t: ArrayLike) -> jax.Array:
        r"""Linear interpolation of :math:`\log\alpha` between the knots at :math:`t = k/N`."""
        t = _float_t(t)
        k, frac = self._piece(t)
        knots = jnp.asarray(self.knots).astype(t.dtype)
        step = jnp.asarray(self.increments).astype(t.dtype)
        if not self.zero_terminal_snr:
            return knots[k] + frac * step[k]
        last = k == self.num_train_timesteps - 1  # alpha linear in t on the piece that ends at alpha = 0
        return knots[k] + jnp.where(last, jnp.log1p(-frac), frac * jnp.where(last, 0.0, step[k]))

    def beta(self, t: ArrayLike) -> jax.Array:
        r""":math:`\beta = -2N(\log\alpha_{k+1} - \log\alpha_k)` on the piece :math:`t \in [k/N, (k+1)/N)`
        (:math:`2N/(1 - f)` on a zero-terminal-SNR schedule's last piece, infinite at :math:`t = 1`)."""
        t = _float_t(t)
        k, frac = self._piece(t)
        rate = (-2.0 * self.num_train_timesteps) * jnp.asarray(self.increments).astype(t.dtype)[k]
        if not self.zero_terminal_snr:
            return rate
        last = k == self.num_train_timesteps - 1
        return jnp.where(last, (2.0 * self.num_train_timesteps) / (1.0 - frac), rate)

    def t_from_log_snr(self, lam: ArrayLike) -> jax.Array:
        r"""The inverse of :meth:`log_snr`: :math:`m = -\tfrac12\operatorname{softplus}(-2\lambda)`,
        the piece by ``searchsorted`` over the decreasing knots, then
        :math:`t = (k + (m - \log\alpha_k)/(\log\alpha_{k+1} - \log\alpha_k))/N`
        (:math:`t = (N - 1 - \operatorname{expm1}(m - \log\alpha_{N-2}))/N` on a zero-terminal-SNR
        schedule's last piece; :math:`\lambda = -\infty` gives :math:`t = 1`)."""
        lam = _float_t(lam)
        knots = jnp.asarray(self.knots).astype(lam.dtype)
        step = jnp.asarray(self.increments).astype(lam.dtype)
        m = -0.5 * jax.nn.softplus(-2.0 * lam)
        n = self.num_train_timesteps
        k = jnp.clip(jnp.searchsorted(-knots, -m, side="right") - 1, 0, n - 1)
        if not self.zero_terminal_snr:
            return (k.astype(lam.dtype) + (m - knots[k]) / step[k]) / n
        last = k == n - 1  # alpha = alpha_{N-2} (1 - f) there
        frac = jnp.where(last, -jnp.expm1(m - knots[k]), (m - knots[k]) / jnp.where(last, -1.0, step[k]))
        return (k.astype(lam.dtype) + frac) / n

    @property
    def t_max(self) -> float:
        return 1.0

    def smallest_time(self, dtype: Any) -> Optional[float]:
        r"""``max(2 tiny, 4 tiny/(N |increments[0]|))``: on the first piece :math:`\log\alpha = tN \cdot` ``increments[0]``.

        (The discrete schedule's own times start at ``1/N`` far above it; this
        bounds the continuous times that :func:`~sdevp_jax.add_noise` and a step accept.)
        """
        first = _host(self.increments)
        if first is None or first.size == 0:
            return None
        tiny = float(jnp.finfo(dtype).tiny)
        return max(2.0 * tiny, 4.0 * tiny / (self.num_train_timesteps * abs(float(first.reshape(-1)[0]))))

    @property
    def is_discrete(self) -> bool:
        return True

    def cast(self, dtype) -> "DiscreteSchedule":
        """The schedule itself: its knots are cast to the dtype of ``t`` at each use."""
        return self


def _host_1d(name: str, value: Any) -> np.ndarray:
    """A concrete, non-empty, finite 1-D real array, as float64 NumPy."""
    array = _checks.host_real_array(name, value)
    if array.ndim != 1 or array.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; {name}[{int(np.argmin(np.isfinite(array)))}] is not")
    return array


def discrete(betas: Optional[ArrayLike] = None, alphas_cumprod: Optional[ArrayLike] = None) -> DiscreteSchedule:
    r"""A discrete-time model's schedule from its ``betas`` or its ``alphas_cumprod`` (exactly one).

    ``betas`` must lie in (0, 1); ``alphas_cumprod`` (:math:`\bar\alpha_n =
    \prod_{i \le n}(1 - \beta_i)`) must be strictly decreasing in (0, 1]. Computed on
    the host in float64: :math:`\log\alpha_n = \tfrac12\sum_{i\le n}\operatorname{log1p}(-\beta_i)`
    or :math:`\tfrac12\log\bar\alpha_n`. The last label alone may have zero SNR (Lin et al.
    2024; :func:`rescale_zero_terminal_snr`): ``betas[-1] = 1`` or ``alphas_cumprod[-1] = 0``
    gives a schedule with ``zero_terminal_snr`` (:math:`\alpha(1) = 0`, see :class:`DiscreteSchedule`).

    Examples:
      >>> sched = sv.schedules.discrete(betas=jnp.linspace(1e-4, 0.02, 1000))
      >>> sched.is_discrete, sched.num_train_timesteps
      (True, 1000)
    """
    if (betas is None) == (alphas_cumprod is None):
        raise ValueError(
            "give exactly one of betas and alphas_cumprod, got "
            + ("both" if betas is not None else "neither")
        )
    if betas is not None:
        b = _host_1d("betas", betas)
        zero_terminal = bool(b[-1] == 1.0)
        inside = (b > 0.0) & (b < 1.0)
        inside[-1] |= zero_terminal
        bad = np.flatnonzero(~inside)
        if bad.size:
            raise ValueError(f"betas must lie in (0, 1) (the last may be 1: zero terminal SNR), got "
                             f"betas[{bad[0]}] = {float(b[bad[0]])!r}")
        with np.errstate(divide="ignore"):  # log1p(-1) = -inf: zero terminal SNR
            increments = 0.5 * np.log1p(-b)
        log_alpha = np.cumsum(increments)
    else:
        a = _host_1d("alphas_cumprod", alphas_cumprod)
        zero_terminal = bool(a[-1] == 0.0)
        inside = (a > 0.0) & (a <= 1.0)
        inside[-1] |= zero_terminal
        bad = np.flatnonzero(~inside)
        if bad.size:
            raise ValueError(f"alphas_cumprod must lie in (0, 1] (the last may be 0: zero terminal SNR), got "
                             f"alphas_cumprod[{bad[0]}] = {float(a[bad[0]])!r}")
        steps = np.flatnonzero(np.diff(a) >= 0.0)
        if steps.size:
            i = steps[0]
            raise ValueError(
                "alphas_cumprod must be strictly decreasing, got "
                f"alphas_cumprod[{i}] = {a[i]!r} <= alphas_cumprod[{i + 1}] = {a[i + 1]!r}"
            )
        with np.errstate(divide="ignore"):  # log(0) = -inf: zero terminal SNR
            log_alpha = 0.5 * np.log(a)
            previous = np.concatenate([np.ones(1), a[:-1]])
            # log1p keeps the digits of a small drop (no log a - log a' cancellation); a large one (ratio < 1/2)
            # takes the log of the ratio, which (a - a')/a' = -1 + 1e-23 would round away
            ratio = a / previous
            increments = 0.5 * np.where(ratio > 0.5, np.log1p((a - previous) / previous), np.log(ratio))
    if not np.all(increments < 0.0) or not np.all(np.diff(log_alpha) < 0.0) or not log_alpha[0] < 0.0:
        # betas this close to 0 (or alphas_cumprod this close to 1) round to a flat knot.
        raise ValueError(
            "the schedule's log alpha must be strictly decreasing in float64; "
            "betas are too close to 0 (or alphas_cumprod to 1) to resolve"
        )
    check_increments(increments, "betas" if betas is not None else "alphas_cumprod")
    knots = np.concatenate([np.zeros(1), log_alpha])
    return DiscreteSchedule(knots=knots, increments=increments, num_train_timesteps=int(log_alpha.shape[0]),
                            zero_terminal_snr=zero_terminal)


def rescale_zero_terminal_snr(alphas_cumprod: ArrayLike) -> np.ndarray:
    r"""``alphas_cumprod`` rescaled to zero terminal SNR (Lin et al., WACV 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Algorithm 1), in float64 on the host.

    :math:`\sqrt{\bar\alpha}` is shifted so that its last value is 0 and scaled so that its first
    is unchanged: :math:`\sqrt{\bar\alpha'_n} = (\sqrt{\bar\alpha_n} - \sqrt{\bar\alpha_{N-1}})
    \sqrt{\bar\alpha_0}/(\sqrt{\bar\alpha_0} - \sqrt{\bar\alpha_{N-1}})`. diffusers'
    ``rescale_betas_zero_snr`` applies the same map (to float32 betas).

    Examples:
      >>> acp = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
      >>> zsnr = sv.schedules.rescale_zero_terminal_snr(acp)
      >>> float(zsnr[-1]), bool(zsnr[0] == acp[0])
      (0.0, True)
      >>> sv.schedules.discrete(alphas_cumprod=zsnr).zero_terminal_snr
      True
    """
    a = _host_1d("alphas_cumprod", alphas_cumprod)
    if a.shape[0] < 2 or not np.all((a > 0.0) & (a <= 1.0)) or not np.all(np.diff(a) < 0.0):
        raise ValueError("alphas_cumprod must be strictly decreasing in (0, 1] with at least 2 entries, "
                         f"got {a.shape[0]} entries from {a[0]!r} to {a[-1]!r}")
    root = np.sqrt(a)
    first, last = root[0], root[-1]
    rescaled = (root - last) * (first / (first - last))
    rescaled[0], rescaled[-1] = first, 0.0
    return rescaled * rescaled


def check_increments(increments: np.ndarray, name: str, dtype: Any = None) -> None:
    r"""Each piece's :math:`\tfrac12\operatorname{log1p}(-\beta_n)` a normal number of ``dtype`` (default: JAX's default float).

    The knots and increments are cast to the compute dtype at each use; an increment
    below ``finfo(dtype).tiny`` there (a beta below about ``2 tiny``: 2.4e-38 in float32)
    becomes 0 (XLA flushes subnormals), so :math:`\beta = 0` on that piece, :math:`\sigma`
    is 0 at the first label and the inverse of :math:`\lambda` divides by 0.
    """
    dtype = _checks.default_float() if dtype is None else jnp.dtype(dtype)
    tiny = float(jnp.finfo(dtype).tiny)
    small = np.flatnonzero(~(np.abs(increments) >= tiny))
    if small.size:
        i = int(small[0])
        raise ValueError(
            f"{name} too close to {'0' if name == 'betas' else '1'} for {dtype.name}: each beta_n must be >= about "
            f"2 * finfo({dtype.name}).tiny = {2.0 * tiny:.4g} (its log1p(-beta_n)/2 a normal {dtype.name} number), "
            f"got beta[{i}] = {-math.expm1(2.0 * float(increments[i]))!r}"
        )


#: The schedule classes a state accepts.
SCHEDULE_TYPES = (LinearSchedule, CosineSchedule, DiscreteSchedule)


def _cosine_betas(n: int) -> np.ndarray:
    r"""iDDPM's uncapped betas :math:`1 - \cos^2 b_i/\cos^2 a_i`, :math:`a_i = \theta(i/n)`, :math:`b_i = \theta((i+1)/n)`.

    Written as :math:`\sin d\,\sin(2a + d)/\cos^2 a` with :math:`d = b - a` (no ``1 - ratio``
    cancellation for small betas) and, in the upper half, with :math:`c = \pi/2 - a`
    computed from :math:`1 - i/n`, as :math:`\sin d\,\sin(2c - d)/\sin^2 c` (no cosine of an
    angle near :math:`\pi/2`). float64, on the host.
    """
    i = np.arange(n, dtype=np.float64)
    d = (math.pi / 2) / (1.008 * n)
    a = (i / n + 0.008) / 1.008 * (math.pi / 2)
    c = ((n - i) / n) / 1.008 * (math.pi / 2)
    lower = np.sin(d) * np.sin(2.0 * a + d) / np.cos(a) ** 2
    upper = np.sin(d) * np.sin(2.0 * c - d) / np.sin(c) ** 2
    return np.where(i < n / 2, lower, upper)


def check_num_train_timesteps(value: Any) -> int:
    """An int in ``[1, max_train_timesteps]`` of JAX's default float (16777216 in float32; see :func:`~sdevp_jax._checks.max_train_timesteps`)."""
    n = _checks.positive_int("num_train_timesteps", value)
    bound = _checks.max_train_timesteps(_checks.default_float())
    if n > bound:
        raise ValueError(
            f"num_train_timesteps must be in [1, {bound}] (the labels' times (n + 1)/N must be distinct "
            f"{_checks.default_float().name} numbers, indexed with int32), got {n}"
        )
    return n


def from_diffusers(
    beta_schedule: str = "linear",
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    num_train_timesteps: int = 1000,
    trained_betas: Optional[ArrayLike] = None,
    rescale_betas_zero_snr: bool = False,
    terminal_alphas_cumprod: Optional[float] = None,
) -> DiscreteSchedule:
    r"""The discrete schedule of a diffusers scheduler config, its betas computed in float64.

    * ``"linear"``: ``linspace(beta_start, beta_end, N)`` (DDPM, Ho et al. 2020);
    * ``"scaled_linear"``: ``linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2`` (Stable Diffusion);
    * ``"squaredcos_cap_v2"``: iDDPM's :math:`\beta_n = \min(1 - \bar\alpha(\tfrac{n+1}N)/\bar\alpha(\tfrac nN), 0.999)`
      with :math:`\bar\alpha(t) = \cos^2(\tfrac{t + 0.008}{1.008}\tfrac\pi2)`
      (Nichol & Dhariwal 2021, eq. 17; ``beta_start`` and ``beta_end`` are unused),
      evaluated as :math:`\sin(b - a)\sin(b + a)/\cos^2 a` to avoid ``1 - ratio``'s cancellation.

    ``trained_betas``, when given, are used as they are (as diffusers does) and the
    other fields are ignored except ``num_train_timesteps``, which must match their length.
    diffusers computes the same betas in float32; see tests/golden/make_schedule_golden.py.

    ``rescale_betas_zero_snr``: the betas' ``alphas_cumprod`` rescaled to zero terminal SNR
    (:func:`rescale_zero_terminal_snr`, Lin et al. 2024), a schedule with ``zero_terminal_snr``.
    ``terminal_alphas_cumprod``: with it, the last ``alphas_cumprod`` replaced by this number in
    (0, ``alphas_cumprod[-2]``) instead of 0 -- diffusers' DPMSolverMultistep, UniPC and Euler
    schedulers set it to ``2**-24`` so that their first :math:`\sigma/\alpha` is finite; use it only
    to reproduce them (it moves the first step's start from :math:`\alpha = 0` to :math:`\alpha = 2^{-12}`).

    Examples:
      >>> sd = sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000)   # Stable Diffusion's
      >>> round(float(sd.alpha(jnp.array(1.0)) ** 2), 6)   # alphas_cumprod[999]
      0.00466
    """
    n = check_num_train_timesteps(num_train_timesteps)
    if not isinstance(rescale_betas_zero_snr, (bool, np.bool_)):
        raise TypeError(f"rescale_betas_zero_snr must be a bool, got {rescale_betas_zero_snr!r}")
    if terminal_alphas_cumprod is not None and not rescale_betas_zero_snr:
        raise ValueError("terminal_alphas_cumprod replaces the zero last alphas_cumprod of "
                         "rescale_betas_zero_snr=True; it needs rescale_betas_zero_snr=True")
    if trained_betas is not None:
        betas = _host_1d("trained_betas", trained_betas)
        if betas.shape[0] != n:
            raise ValueError(
                f"num_train_timesteps = {n} must equal len(trained_betas) = {betas.shape[0]}"
            )
        try:
            return _rescaled(discrete(betas=betas), betas, rescale_betas_zero_snr, terminal_alphas_cumprod)
        except ValueError as err:
            raise ValueError(f"trained_betas: {err}") from None
    if beta_schedule not in DIFFUSERS_BETA_SCHEDULES:
        raise ValueError(
            f"beta_schedule must be one of {', '.join(map(repr, DIFFUSERS_BETA_SCHEDULES))}, got {beta_schedule!r}"
        )
    if beta_schedule == "squaredcos_cap_v2":
        betas = np.minimum(_cosine_betas(n), 0.999)
    else:
        start = _checks.real_scalar("beta_start", beta_start)
        end = _checks.real_scalar("beta_end", beta_end)
        if beta_schedule == "linear":
            betas = np.linspace(start, end, n, dtype=np.float64)
        else:
            if start < 0 or end < 0:
                raise ValueError(f"scaled_linear needs beta_start, beta_end >= 0, got {start}, {end}")
            betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    return _rescaled(discrete(betas=betas), betas, rescale_betas_zero_snr, terminal_alphas_cumprod)


def _rescaled(schedule: DiscreteSchedule, betas: np.ndarray, rescale: bool, terminal: Optional[float]):
    """``schedule`` (of ``betas``, validated), or its zero-terminal-SNR rescaling with the last value ``terminal``."""
    if not rescale:
        return schedule
    acp = rescale_zero_terminal_snr(np.cumprod(1.0 - betas))
    if terminal is not None:
        value = _checks.real_scalar("terminal_alphas_cumprod", terminal)
        if not 0.0 < value < acp[-2]:
            raise ValueError(f"terminal_alphas_cumprod must be in (0, alphas_cumprod[-2] = {acp[-2]!r}) after the "
                             f"rescaling, got {value!r}")
        acp[-1] = value
    return discrete(alphas_cumprod=acp)
