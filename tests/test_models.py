"""The embedded closed-form Gaussian-mixture models (sdevp_jax.mixtures)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import sde


def small_mixture():
    return sv.mixtures.make_mixture([0.2, 0.5, 0.3], [[-1.0, 0.5, 0.0], [1.0, -0.5, 0.2], [0.0, 1.0, -1.0]],
                           [[0.3, 0.2, 0.4], [0.25, 0.5, 0.1], [0.6, 0.3, 0.2]])


def test_eps_is_minus_sigma_times_the_autodiff_score(x64):
    mixture = small_mixture()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)))
    t = jnp.array([1e-3, 0.01, 0.1, 0.3, 0.7, 1.0])
    a, s = sde.alpha(t, 0.1, 20.0), sde.sigma(t, 0.1, 20.0)

    def log_p(xb, ab, sb):
        return sv.mixtures.diffused_log_prob(mixture, xb[None], ab, sb)[0]

    score = jax.vmap(jax.grad(log_p))(x, a, s)
    np.testing.assert_allclose(sv.mixtures.mixture_eps(mixture, x, t), -s[:, None] * score, rtol=1e-10, atol=1e-12)


def test_log_prob_is_a_normalised_density():
    mixture = sv.mixtures.default_mixture()
    a, s = 0.8, 0.3
    grid = np.linspace(-4.0, 4.0, 401)
    xx, yy = np.meshgrid(grid, grid)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    mass = float(jnp.sum(jnp.exp(sv.mixtures.diffused_log_prob(mixture, pts, a, s)))) * (grid[1] - grid[0]) ** 2
    # Riemann sum of a smooth density whose narrowest scale (0.8*0.15 ⊕ 0.3 = 0.32) spans
    # 16 grid cells, and whose mass outside [-4, 4]^2 is < 1e-6: error far below 1e-4.
    assert abs(mass - 1.0) < 1e-4


def test_single_gaussian_log_prob_matches_the_formula(x64):
    mixture = sv.mixtures.make_mixture([1.0], [[0.5, -1.0]], [[0.3, 2.0]])
    x = jnp.array([[0.1, 0.2], [1.0, -3.0]])
    var = np.array([0.3, 2.0]) ** 2
    expected = -0.5 * np.sum(np.log(2 * np.pi * var) + (np.asarray(x) - [0.5, -1.0]) ** 2 / var, axis=1)
    np.testing.assert_allclose(sv.mixtures.diffused_log_prob(mixture, x), expected, rtol=1e-13)


def test_eps_at_t_one_of_standard_normal_like_data_is_x():
    """For N(0, I) data the diffused law stays N(0, I), whose eps is sigma(t) * x."""
    mixture = sv.mixtures.make_mixture([1.0], [[0.0, 0.0]], 1.0)
    x = jnp.array([[0.3, -1.2]])
    np.testing.assert_allclose(sv.mixtures.mixture_eps(mixture, x, 0.4), sde.sigma(0.4, 0.1, 20.0) * x, rtol=1e-6)


def test_image_shaped_inputs_flatten_to_the_mixture_dimension():
    mixture = sv.mixtures.default_mixture(dim=12)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 2, 2)), jnp.float32)
    out = sv.mixtures.mixture_eps(mixture, x, jnp.array([0.2, 0.9]))
    flat = sv.mixtures.mixture_eps(mixture, x.reshape(2, 12), jnp.array([0.2, 0.9]))
    assert out.shape == x.shape
    np.testing.assert_array_equal(out.reshape(2, 12), flat)
    with pytest.raises(ValueError, match="the mixture has D = 12"):
        sv.mixtures.mixture_eps(mixture, jnp.ones((2, 5)), 0.5)


def test_exact_samples_have_the_mixture_moments():
    mixture = small_mixture()
    n = 100_000
    x = np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(0), n, alpha=0.5, sigma=0.5), np.float64)
    w, mu, sc = (np.asarray(a, np.float64) for a in (mixture.weights, mixture.means, mixture.scales))
    mean = 0.5 * w @ mu
    second = w @ (0.25 * (sc**2 + mu**2) + 0.25)
    var = second - mean**2
    # the sample mean's standard error is sqrt(var / n); allow 5 of them
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(var / n))


def test_assign_modes_recovers_the_component_of_each_mean():
    mixture = sv.mixtures.default_mixture()
    np.testing.assert_array_equal(sv.mixtures.assign_modes(mixture, mixture.means), np.arange(5))


def test_default_mixture_in_higher_dimensions():
    m = sv.mixtures.default_mixture(dim=5)
    assert m.means.shape == (5, 5) and m.dim == 5 and m.num_components == 5
    np.testing.assert_allclose(jnp.sum(m.weights), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="dim must be an int >= 2"):
        sv.mixtures.default_mixture(dim=1)


@pytest.mark.parametrize("args, match", [
    (([0.5, -0.5], [[0.0], [1.0]], 1.0), "weights must be finite and > 0"),
    (([1.0], [[0.0, 1.0]], 0.0), "scales must be finite and > 0"),
    (([1.0], [0.0, 1.0], 1.0), r"means must have shape \(K, D\)"),
    (([1.0, 1.0], [[0.0, 1.0]], 1.0), r"means must have shape \(K, D\)"),
    (([1.0], [[np.nan]], 1.0), "means must be finite"),
    (([1.0], [[0.0, 1.0]], [1.0, 2.0, 3.0]), "scales must broadcast"),
])
def test_make_mixture_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        sv.mixtures.make_mixture(*args)


def test_the_mixtures_top_level_names_are_deprecated_aliases_of_sv_mixtures():
    # the 0.3/0.4 spelling still resolves to the same object, with a warning naming the new one;
    # the names that stay at the top level (guidance's NULL_CLASS) do not warn
    moved = sorted(set(sv.mixtures.__all__) - {"NULL_CLASS"})
    assert len(moved) == 14 and not set(moved) & set(sv.__all__)
    for name in moved:
        with pytest.warns(DeprecationWarning, match=rf"sdevp_jax\.{name} is deprecated.*sdevp_jax\.mixtures\.{name}"):
            assert getattr(sv, name) is getattr(sv.mixtures, name)
    assert sv.NULL_CLASS == sv.mixtures.NULL_CLASS
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        sv.not_a_name


def test_the_models_module_is_a_deprecated_alias_of_mixtures_and_guidance():
    import importlib
    import sys

    sys.modules.pop("sdevp_jax.models", None)
    with pytest.warns(DeprecationWarning, match=r"sdevp_jax\.models is deprecated.*sdevp_jax\.mixtures"):
        models = importlib.import_module("sdevp_jax.models")
    assert models.default_mixture is sv.mixtures.default_mixture and models.cfg is sv.cfg
    # the names the scheduler module documented before the split are the same objects in their new homes
    from sdevp_jax import scheduler

    assert scheduler.model_time is sv.model_time and scheduler.SPACINGS is sv.grids.SPACINGS
    assert scheduler.prediction_from_eps is sv.denoiser.prediction_from_eps
