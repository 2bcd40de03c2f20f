"""The VP SDE's coefficients (sdevp_jax.sde)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdevp_jax import sde

BMIN, BMAX = 0.1, 20.0


def test_beta_is_linear_from_beta_min_to_beta_max():
    t = jnp.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(sde.beta(t, BMIN, BMAX), [0.1, 0.1 + 0.25 * 19.9, 20.0], rtol=1e-6)


def test_log_mean_coeff_is_minus_half_the_integral_of_beta(x64):
    # d m / dt = -beta(t) / 2 and m(0) = 0 define m; check both with autodiff.
    t = jnp.linspace(0.0, 1.0, 11)
    dm = jax.vmap(jax.grad(lambda s: sde.log_mean_coeff(s, BMIN, BMAX)))(t)
    np.testing.assert_allclose(dm, -0.5 * sde.beta(t, BMIN, BMAX), rtol=1e-14)
    assert sde.log_mean_coeff(0.0, BMIN, BMAX) == 0.0


def test_alpha_and_sigma_preserve_variance(x64):
    t = jnp.linspace(1e-5, 1.0, 101)
    a, s = sde.alpha(t, BMIN, BMAX), sde.sigma(t, BMIN, BMAX)
    np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-14)
    mean, std = sde.marginal_mean_std(2.0, t, BMIN, BMAX)
    np.testing.assert_allclose(mean, 2.0 * a, rtol=1e-15)
    np.testing.assert_allclose(std, s, rtol=1e-15)


@pytest.mark.parametrize("t", [1e-5, 1e-4, 1e-3, 1e-2, 0.5, 1.0])
def test_sigma_float32_is_accurate_near_zero(t):
    """expm1 keeps sigma to a few float32 ulps where 1 - exp loses digits.

    The float64 value with expm1 is the reference (float64's own error is ~1e-16).
    """
    m64 = -0.25 * t**2 * (BMAX - BMIN) - 0.5 * t * BMIN
    exact = np.sqrt(-np.expm1(2.0 * m64))
    ours = float(sde.sigma(jnp.float32(t), jnp.float32(BMIN), jnp.float32(BMAX)))
    naive = float(np.sqrt(np.float32(1.0) - np.exp(np.float32(2.0) * np.float32(m64))))
    rel_ours = abs(ours - exact) / exact
    assert rel_ours < 4 * np.finfo(np.float32).eps
    if t <= 1e-3:  # the cancellation the issue warns of: 1 - exp loses ~3 digits
        assert abs(naive - exact) / exact > 30 * rel_ours


def test_drift_and_diffusion():
    beta_t = jnp.float32(4.0)
    np.testing.assert_allclose(sde.drift(jnp.array([2.0, -1.0]), beta_t), [-4.0, 2.0])
    np.testing.assert_allclose(sde.diffusion(beta_t), 2.0)
