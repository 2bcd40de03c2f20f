"""log_likelihood and bits_per_dim against the closed-form density of the diffused mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import sde

A_EPS, S_EPS = float(sde.alpha(1e-3, 0.1, 20.0)), float(sde.sigma(1e-3, 0.1, 20.0))
A_ONE, S_ONE = float(sde.alpha(1.0, 0.1, 20.0)), float(sde.sigma(1.0, 0.1, 20.0))


@pytest.fixture(scope="module")
def setup():
    state = sv.create_state()
    mixture = sv.default_mixture()
    x = sv.sample_mixture(mixture, jax.random.key(0), 6, alpha=A_EPS, sigma=S_EPS)
    return state, mixture, sv.make_mixture_eps_fn(state, mixture), x


def test_exact_trace_matches_the_closed_form_within_1e_3_nats(setup):
    """With the data's own p_1 as the prior, what remains is the ODE and trace error (measured 1.2e-4)."""
    state, mixture, model_fn, x = setup

    def prior(x1):
        return sv.diffused_log_prob(mixture, x1[None], A_ONE, S_ONE)[0]

    ll = sv.log_likelihood(state, model_fn, x, None, trace="exact", prior_logp=prior)
    closed = sv.diffused_log_prob(mixture, x, A_EPS, S_EPS)
    assert ll.shape == (6,)
    np.testing.assert_array_less(np.abs(np.asarray(ll - closed)), 1e-3)
    # the default N(0, I) prior differs from p_1 by O(alpha(1)) ~ 0.007 nats here: the model's likelihood
    default = sv.log_likelihood(state, model_fn, x, None, trace="exact")
    assert float(jnp.max(jnp.abs(default - closed))) < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("trace", ["hutchinson_rademacher", "hutchinson_gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(setup, trace):
    """200 probes of one point (one batch: each row draws its own probe) average to the exact trace."""
    state, _, model_fn, x = setup
    exact = float(sv.log_likelihood(state, model_fn, x[:1], None, trace="exact")[0])
    estimates = np.asarray(sv.log_likelihood(state, model_fn, jnp.repeat(x[:1], 200, axis=0), jax.random.key(3),
                                             trace=trace))
    stderr = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert stderr > 0  # the probes did vary
    assert abs(estimates.mean() - exact) < 4 * stderr, (estimates.mean(), exact, stderr)


def test_bits_per_dim_offsets(setup):
    state, _, model_fn, x = setup
    nats = sv.log_likelihood(state, model_fn, x[:2], None, trace="exact")
    bpd = sv.bits_per_dim(state, model_fn, x[:2], None, trace="exact")
    np.testing.assert_allclose(bpd, -nats / (2 * np.log(2)), rtol=1e-6)
    np.testing.assert_allclose(sv.bits_per_dim(state, model_fn, x[:2], None, trace="exact", data_range="[0, 1]"),
                               bpd + 8, rtol=1e-6)
    np.testing.assert_allclose(sv.bits_per_dim(state, model_fn, x[:2], None, trace="exact", data_range="[-1, 1]"),
                               bpd + 7, rtol=1e-6)
    np.testing.assert_allclose(sv.bits_per_dim(state, model_fn, x[:2], None, trace="exact", data_range="[0, 1]",
                                               num_bins=17), bpd + np.log2(17), rtol=1e-6)
    with pytest.raises(ValueError, match="data_range must be None or one of"):
        sv.bits_per_dim(state, model_fn, x[:2], None, data_range="[0, 255]")


def test_log_likelihood_vmaps_and_rejects_bad_options(setup):
    state, _, model_fn, x = setup
    batched = jax.vmap(lambda xb: sv.log_likelihood(state, model_fn, xb, None, trace="exact"))(x.reshape(3, 2, 2))
    np.testing.assert_allclose(batched.reshape(-1), sv.log_likelihood(state, model_fn, x, None, trace="exact"),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="trace must be one of"):
        sv.log_likelihood(state, model_fn, x, None, trace="skilling")
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        sv.log_likelihood(state, model_fn, x, None)
    with pytest.raises(ValueError, match="rtol must be > 0"):
        sv.log_likelihood(state, model_fn, x, None, trace="exact", rtol=0.0)


def test_log_likelihood_passes_t_in_the_samplers_dtype(x64):
    """Under x64 with float32 data the grid is float64: the model must see t as sample/sample_ode give it."""
    state = sv.set_timesteps(sv.create_state(), 5)
    seen = {}

    def model_fn(name):
        def f(x, t):
            seen.setdefault(name, set()).add(t.dtype)
            return 0.1 * x
        return f

    x = jnp.zeros((2, 2), jnp.float32)
    sv.sample(state, model_fn("sample"), jax.random.key(0), x.shape)
    sv.sample_ode(state, model_fn("sample_ode"), jax.random.key(0), x.shape, method="adaptive", rtol=1e-2, atol=1e-2)
    sv.log_likelihood(state, model_fn("log_likelihood"), x, None, trace="exact", rtol=1e-2, atol=1e-2)
    assert seen["sample"] == {jnp.dtype(jnp.float64)}
    assert seen["log_likelihood"] == seen["sample"] == seen["sample_ode"]
