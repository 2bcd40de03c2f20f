"""Inpainting and colorization by the replacement method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import sde


def test_inpaint_keeps_known_entries_exactly_and_fills_the_rest():
    state = sv.set_timesteps(sv.create_state(), 50)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim=4))
    y = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)), jnp.float32)
    mask = jnp.array([1, 0, 1, 0])
    x = sv.inpaint(state, model_fn, jax.random.key(0), y, mask)
    np.testing.assert_array_equal(x[:, [0, 2]], y[:, [0, 2]])
    assert bool(jnp.all(jnp.isfinite(x))) and not np.allclose(x[:, [1, 3]], y[:, [1, 3]])
    # batch invariance: the first 2 rows alone are the same
    np.testing.assert_array_equal(sv.inpaint(state, model_fn, jax.random.key(0), y[:2], mask), x[:2])


@pytest.mark.slow
def test_unknown_entries_of_independent_gaussian_follow_their_marginal():
    """Independent dims: knowing dims 0-1 says nothing about dims 2-3, whose law stays N(a mu, a^2 s^2 + s_t^2).

    M = 10,000 samples at N = 1000; mean and variance within 5 standard errors
    (se of the mean sqrt(v/M); of the variance v sqrt(2/(M-1)) for a Gaussian).
    """
    state = sv.set_timesteps(sv.create_state(), 1000)
    mu, scale = np.array([0.5, -1.0, 0.8, -0.3]), np.array([0.3, 0.5, 0.4, 0.7])
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture([1.0], [mu], [scale]))
    m = 10_000
    y = jnp.tile(jnp.asarray([[3.0, -3.0, 0.0, 0.0]], jnp.float32), (m, 1))  # unlikely known values on purpose
    x = np.asarray(jax.jit(lambda k: sv.inpaint(state, model_fn, k, y, jnp.array([1, 1, 0, 0])))(jax.random.key(1)),
                   np.float64)
    a, s = float(sde.alpha(1e-3, 0.1, 20.0)), float(sde.sigma(1e-3, 0.1, 20.0))
    mean, var = a * mu[2:], a**2 * scale[2:] ** 2 + s**2
    np.testing.assert_array_less(np.abs(x[:, 2:].mean(0) - mean), 5 * np.sqrt(var / m))
    np.testing.assert_array_less(np.abs(x[:, 2:].var(0, ddof=1) - var), 5 * var * np.sqrt(2 / (m - 1)))


def test_inpaint_with_a_corrector_and_bad_masks():
    state = sv.set_timesteps(sv.create_state(), 30)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim=4))
    y = jnp.ones((3, 4))
    x = sv.inpaint(state, model_fn, jax.random.key(0), y, jnp.array([1, 0, 0, 1]), corrector="langevin")
    np.testing.assert_array_equal(x[:, 0], 1.0)
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        sv.inpaint(state, model_fn, jax.random.key(0), y, jnp.full((4,), 0.5))
    with pytest.raises(ValueError, match="must broadcast to y's shape"):
        sv.inpaint(state, model_fn, jax.random.key(0), y, jnp.ones((5,)))


def test_colorize_keeps_the_grey_image():
    state = sv.set_timesteps(sv.create_state(), 40)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim=3 * 2 * 2))
    gray = jnp.asarray(np.random.default_rng(2).uniform(-0.5, 0.5, (4, 2, 2)), jnp.float32)
    x = sv.colorize(state, model_fn, jax.random.key(0), gray)
    assert x.shape == (4, 3, 2, 2) and bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_allclose(x.mean(axis=1), gray, atol=2e-6)
    np.testing.assert_allclose(sv.colorize(state, model_fn, jax.random.key(0), gray[:, None]), x, atol=1e-6)
    assert float(jnp.std(x - x.mean(axis=1, keepdims=True))) > 0.01  # colour was added


def test_color_decoupling_is_orthogonal_with_the_grey_axis_first():
    m = np.asarray(sv.inverse.COLOR_DECOUPLING)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-15)
    np.testing.assert_allclose(m[0], np.full(3, 1 / np.sqrt(3)))


# ---------------------------------------------------------------- conditioning: the known entries choose the mode
#
# Two well-separated modes, +-3 in every coordinate with scale 0.3: once some
# coordinates are observed from one mode, the posterior probability of the other
# is below exp(-100), so the unknown coordinates must follow the observed mode
# (the marginal would put half of them in the other). Without the replacement
# step the fill is the marginal: sign agreement near 0.5 and a mean near 0.

A_EPS = float(sde.alpha(1e-3, 0.1, 20.0))


def conditioning_checks(observed_sign, filled, mode_mean):
    """Sign agreement > 0.99 and the mean of the filled values near alpha(eps) times the mode's.

    The mean's tolerance: 5 standard errors (the filled values' std over sqrt(n),
    n ~ 300 per mode) plus 0.05 for the replacement method's own bias at N = 100
    (it is approximate; measured deviations: below 0.005 for inpainting, 0.02 and
    0.07, i.e. 1 and 3 standard errors, for colorization). Without the replacement the mean is near 0, at least
    2 away.
    """
    agree = np.mean(np.sign(filled) == observed_sign[:, None])
    assert agree > 0.99, agree
    for sign in (1.0, -1.0):
        rows = observed_sign == sign
        assert rows.sum() > 250  # both modes were observed
        part = filled[rows]
        tol = 5 * part.std(0, ddof=1) / np.sqrt(len(part)) + 0.05
        np.testing.assert_array_less(np.abs(part.mean(0) - sign * A_EPS * mode_mean), tol)


@pytest.mark.slow
def test_inpainting_follows_the_observed_mode():
    state = sv.set_timesteps(sv.create_state(), 100)
    mixture = sv.mixtures.make_mixture([0.5, 0.5], [[3.0] * 4, [-3.0] * 4], 0.3)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    y = sv.mixtures.sample_mixture(mixture, jax.random.key(7), 600)  # each row from one mode
    x = jax.jit(lambda k: sv.inpaint(state, model_fn, k, y, jnp.array([1, 1, 1, 0])))(jax.random.key(8))
    conditioning_checks(np.sign(np.asarray(y[:, 0])), np.asarray(x[:, 3:], np.float64), 3.0)


@pytest.mark.slow
def test_colorization_follows_the_mode_the_grey_level_reveals():
    """Colour modes (3, 1, 2) and (-3, -1, -2): grey levels 2 and -2 tell them apart; the colour
    difference red - green (+2 or -2) must follow, where the marginal would give either sign."""
    state = sv.set_timesteps(sv.create_state(), 100)
    mixture = sv.mixtures.make_mixture([0.5, 0.5], [[3.0, 1.0, 2.0], [-3.0, -1.0, -2.0]], 0.3)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    colour = sv.mixtures.sample_mixture(mixture, jax.random.key(9), 600)  # (batch, 3): channels, one pixel
    gray = colour.mean(axis=1, keepdims=True)  # (batch, 1): one pixel
    x = jax.jit(lambda k: sv.colorize(state, model_fn, k, gray))(jax.random.key(10))
    assert x.shape == (600, 3, 1)
    red_minus_green = np.asarray(x[:, 0] - x[:, 1], np.float64)
    conditioning_checks(np.sign(np.asarray(gray[:, 0])), red_minus_green, 2.0)
