r"""The variance-preserving SDE: one source of truth for its coefficients.

The VP SDE of Song et al. (ICLR 2021, eq. 11) is

.. math::

    dx = -\tfrac12 \beta(t)\, x\, dt + \sqrt{\beta(t)}\, dw,
    \qquad \beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min}),

whose perturbation kernel is :math:`x_t \mid x_0 \sim N(\alpha(t) x_0, \sigma(t)^2 I)` with

.. math::

    m(t) = \log \alpha(t) = -\tfrac14 t^2 (\beta_{\max} - \beta_{\min}) - \tfrac12 t \beta_{\min},
    \qquad \sigma(t) = \sqrt{1 - e^{2 m(t)}} = \sqrt{-\operatorname{expm1}(2 m(t))}.

Every function here is elementwise in ``t`` and pure; dtypes follow the usual
promotion of ``t`` with the (possibly weakly typed) config scalars. Callers that
need a particular precision cast ``t`` and the config first (see
``scheduler.step_pred``).

``sigma`` uses ``expm1``: ``1 - exp(2 m)`` cancels catastrophically as ``t -> 0``
(at ``t = 1e-3`` it keeps only about four of float32's seven digits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "beta",
    "log_mean_coeff",
    "alpha",
    "sigma",
    "alpha_sigma",
    "drift",
    "diffusion",
    "marginal_mean_std",
    "log_snr",
    "t_of_log_snr",
]


def beta(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r"""The noise rate :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`.

    Examples:
      >>> round(float(sv.sde.beta(0.5, 0.1, 20.0)), 4)
      10.05
    """
    return beta_min + t * (beta_max - beta_min)


def log_mean_coeff(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r""":math:`m(t) = \log\alpha(t) = -\int_0^t \beta(s)/2\, ds`.

    The operations are ordered as in diffusers' ``ScoreSdeVpScheduler`` so that
    float32 results round the same way.

    Examples:
      >>> round(float(sv.sde.log_mean_coeff(1.0, 0.1, 20.0)), 4)   # -(0.1 + 20)/4
      -5.025
    """
    t = jnp.asarray(t)
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def alpha(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r"""The signal coefficient :math:`\alpha(t) = e^{m(t)}` of the perturbation kernel.

    Examples:
      >>> round(float(sv.sde.alpha(1.0, 0.1, 20.0)), 5)
      0.00657
    """
    return jnp.exp(log_mean_coeff(t, beta_min, beta_max))


def _sigma_of_m(m: jax.Array) -> jax.Array:
    r""":math:`\sigma = \sqrt{1 - e^{2m}}`, as :math:`\sqrt{-\operatorname{expm1}(2m)}`: the one place it is written."""
    return jnp.sqrt(-jnp.expm1(2.0 * m))


def sigma(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r"""The noise scale :math:`\sigma(t) = \sqrt{-\operatorname{expm1}(2 m(t))}` of the kernel.

    Examples:
      >>> round(float(sv.sde.sigma(1e-3, 0.1, 20.0)), 5)   # expm1: accurate near t = 0
      0.01049
    """
    return _sigma_of_m(log_mean_coeff(t, beta_min, beta_max))


def alpha_sigma(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> tuple[jax.Array, jax.Array]:
    r""":math:`(\alpha(t), \sigma(t))` from one evaluation of :math:`m(t)`; equal to :func:`alpha` and :func:`sigma`.

    Examples:
      >>> a, s = sv.sde.alpha_sigma(0.5, 0.1, 20.0)
      >>> round(float(a**2 + s**2), 6)
      1.0
    """
    m = log_mean_coeff(t, beta_min, beta_max)
    return jnp.exp(m), _sigma_of_m(m)


def drift(x: ArrayLike, beta_t: ArrayLike) -> jax.Array:
    r"""The forward drift :math:`f(x, t) = -\tfrac12 \beta(t) x`, given :math:`\beta(t)`.

    Examples:
      >>> sv.sde.drift(jnp.ones(2), 2.0)
      Array([-1., -1.], dtype=float32)
    """
    return -0.5 * beta_t * x


def diffusion(beta_t: ArrayLike) -> jax.Array:
    r"""The forward diffusion coefficient :math:`g(t) = \sqrt{\beta(t)}`, given :math:`\beta(t)`.

    Examples:
      >>> float(sv.sde.diffusion(4.0))
      2.0
    """
    return jnp.sqrt(beta_t)


def marginal_mean_std(
    x0: ArrayLike, t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""Mean :math:`\alpha(t) x_0` and std :math:`\sigma(t)` of :math:`x_t \mid x_0`.

    ``t`` must broadcast against ``x0`` (reshape a per-sample ``t`` to
    ``(batch, 1, ..., 1)`` first).

    Examples:
      >>> mean, std = sv.sde.marginal_mean_std(jnp.ones(2), 0.5, 0.1, 20.0)
      >>> mean.shape, round(float(std), 4)
      ((2,), 0.9597)
    """
    alpha_t, sigma_t = alpha_sigma(t, beta_min, beta_max)
    return alpha_t * x0, sigma_t


def log_snr(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r"""The half log signal-to-noise ratio :math:`\lambda(t) = \log(\alpha(t)/\sigma(t))`.

    Written as :math:`m - \tfrac12\log(-\operatorname{expm1}(2m))`, which keeps its
    digits at both ends (Lu et al., NeurIPS 2022, sec. 3.1 and app. on the VP schedule).

    Examples:
      >>> round(float(sv.sde.log_snr(0.5, 0.1, 20.0)), 4)
      -1.2276
    """
    m = log_mean_coeff(t, beta_min, beta_max)
    return m - 0.5 * jnp.log(-jnp.expm1(2.0 * m))


def t_of_log_snr(lam: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r"""The inverse of :func:`log_snr` on the linear schedule (Lu et al. 2022, app. on the VP schedule).

    :math:`m = -\tfrac12\log(1 + e^{-2\lambda})` (a softplus), then the positive root of
    :math:`\tfrac14\Delta\beta\,t^2 + \tfrac12\beta_{\min} t + m = 0`, written as
    :math:`t = -2m / (\tfrac12\beta_{\min} + \sqrt{\tfrac14\beta_{\min}^2 - \Delta\beta\, m})`
    to avoid cancellation.

    Examples:
      >>> lam = sv.sde.log_snr(0.3, 0.1, 20.0)
      >>> round(float(sv.sde.t_of_log_snr(lam, 0.1, 20.0)), 5)
      0.3
    """
    m = -0.5 * jax.nn.softplus(-2.0 * jnp.asarray(lam))
    return -2.0 * m / (0.5 * beta_min + jnp.sqrt(0.25 * beta_min**2 - (beta_max - beta_min) * m))
