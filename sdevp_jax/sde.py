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
    "drift",
    "diffusion",
    "marginal_mean_std",
]


def beta(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r"""The noise rate :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`."""
    return beta_min + t * (beta_max - beta_min)


def log_mean_coeff(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r""":math:`m(t) = \log\alpha(t) = -\int_0^t \beta(s)/2\, ds`.

    The operations are ordered as in diffusers' ``ScoreSdeVpScheduler`` so that
    float32 results round the same way.
    """
    t = jnp.asarray(t)
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def alpha(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r"""The signal coefficient :math:`\alpha(t) = e^{m(t)}` of the perturbation kernel."""
    return jnp.exp(log_mean_coeff(t, beta_min, beta_max))


def sigma(t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike) -> jax.Array:
    r"""The noise scale :math:`\sigma(t) = \sqrt{-\operatorname{expm1}(2 m(t))}` of the kernel."""
    return jnp.sqrt(-jnp.expm1(2.0 * log_mean_coeff(t, beta_min, beta_max)))


def drift(x: ArrayLike, beta_t: ArrayLike) -> jax.Array:
    r"""The forward drift :math:`f(x, t) = -\tfrac12 \beta(t) x`, given :math:`\beta(t)`."""
    return -0.5 * beta_t * x


def diffusion(beta_t: ArrayLike) -> jax.Array:
    r"""The forward diffusion coefficient :math:`g(t) = \sqrt{\beta(t)}`, given :math:`\beta(t)`."""
    return jnp.sqrt(beta_t)


def marginal_mean_std(
    x0: ArrayLike, t: ArrayLike, beta_min: ArrayLike, beta_max: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""Mean :math:`\alpha(t) x_0` and std :math:`\sigma(t)` of :math:`x_t \mid x_0`.

    ``t`` must broadcast against ``x0`` (reshape a per-sample ``t`` to
    ``(batch, 1, ..., 1)`` first).
    """
    m = log_mean_coeff(t, beta_min, beta_max)
    return jnp.exp(m) * x0, jnp.sqrt(-jnp.expm1(2.0 * m))
