"""add_noise and the DSM loss: values, weighting, gradients, and a short optax training run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sdevp_jax as sv
from sdevp_jax import sde


def test_add_noise_is_the_vp_marginal(x64):
    state = sv.create_state()
    rng = np.random.default_rng(0)
    x0, z = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    t = np.array([1e-3, 0.5, 1.0])
    a, s = sde.alpha(t, 0.1, 20.0)[:, None], sde.sigma(t, 0.1, 20.0)[:, None]
    np.testing.assert_allclose(sv.add_noise(state, jnp.asarray(x0), jnp.asarray(z), jnp.asarray(t)),
                               a * x0 + s * z, rtol=1e-14)
    with pytest.raises(ValueError, match="noise must have x0's shape"):
        sv.add_noise(state, jnp.ones((3, 4)), jnp.ones((3, 5)), 0.5)


def test_dsm_loss_matches_its_definition(x64):
    """Recompute the loss from the documented per-sample draws: t ~ U(eps, 1), z ~ N(0, I) from fold_in(key, b)."""
    state = sv.create_state()
    x0 = jnp.asarray(np.random.default_rng(1).standard_normal((5, 3)))
    key = jax.random.key(4)

    def model_fn(x, t):
        return jnp.tanh(x) * t[:, None]

    expected = {False: 0.0, True: 0.0}
    for b in range(5):
        k_t, k_z = jax.random.split(jax.random.fold_in(key, b))
        t = jax.random.uniform(k_t, (), jnp.float64, minval=1e-5, maxval=1.0)
        z = jax.random.normal(k_z, (3,), jnp.float64)
        x_t = sde.alpha(t, 0.1, 20.0) * x0[b] + sde.sigma(t, 0.1, 20.0) * z
        err = float(jnp.sum((model_fn(x_t[None], t[None])[0] - z) ** 2))
        expected[False] += err / 5
        expected[True] += err * float(sde.beta(t, 0.1, 20.0) / sde.sigma(t, 0.1, 20.0) ** 2) / 5
    for weighting in (False, True):
        got = sv.dsm_loss(state, model_fn, x0, key, likelihood_weighting=weighting)
        np.testing.assert_allclose(got, expected[weighting], rtol=1e-12)


@pytest.mark.slow
def test_exact_eps_scores_lower_than_a_perturbed_one():
    """The exact eps minimises E||eps_hat - z||^2; a 10% perturbation raises it by ~0.01 E||eps||^2 > 0.

    With common random numbers (same key) the difference is 0.01 E||eps*||^2 + 0.2 E[eps*.(eps* - z)],
    whose second term has mean 0; over 20,000 samples its noise is far below the first term.
    """
    state = sv.create_state()
    mixture = sv.mixtures.default_mixture()
    exact = sv.mixtures.make_mixture_eps_fn(state, mixture)
    x0 = sv.mixtures.sample_mixture(mixture, jax.random.key(0), 20_000)
    key = jax.random.key(1)
    base = sv.dsm_loss(state, exact, x0, key)
    worse = sv.dsm_loss(state, lambda x, t: 1.1 * exact(x, t), x0, key)
    shifted = sv.dsm_loss(state, lambda x, t: exact(x, t) + 0.05, x0, key)
    assert base < worse and base < shifted


class TinyEps(nn.Module):
    """A small MLP epsilon-network on 2-D data with a sinusoidal time input."""

    @nn.compact
    def __call__(self, x, t):
        freqs = jnp.arange(1, 5, dtype=x.dtype)[None, :]
        emb = jnp.concatenate([jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], -1)
        h = jnp.concatenate([x, emb], axis=-1)
        for width in (64, 64):
            h = nn.silu(nn.Dense(width)(h))
        return nn.Dense(x.shape[-1])(h)


@pytest.mark.slow
def test_loss_falls_with_flax_and_optax_and_gradients_are_finite():
    state = sv.create_state()
    net = TinyEps()
    params = net.init(jax.random.key(0), jnp.ones((1, 2)), jnp.ones((1,)))
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)
    data = sv.mixtures.sample_mixture(sv.mixtures.default_mixture(), jax.random.key(1), 4096)

    @jax.jit
    def step(params, opt_state, key):
        k_batch, k_loss = jax.random.split(key)
        x0 = data[jax.random.choice(k_batch, data.shape[0], (256,))]
        loss, grads = jax.value_and_grad(
            lambda p: sv.dsm_loss(state, lambda x, t: net.apply(p, x, t), x0, k_loss))(params)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes its int step count with floats
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    def eval_loss(params):  # a fixed large batch and key: the same estimator before and after
        return float(sv.dsm_loss(state, lambda x, t: net.apply(params, x, t), data, jax.random.key(99)))

    before = eval_loss(params)
    key = jax.random.key(2)
    for _ in range(300):
        key, sub = jax.random.split(key)
        params, opt_state, loss, grads = step(params, opt_state, sub)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    after = eval_loss(params)
    # the untrained net predicts ~0, so the loss starts near E||z||^2 = 2; it must fall clearly
    assert after < 0.8 * before, (before, after)


def test_dsm_loss_rejects_bad_input():
    state = sv.create_state()
    with pytest.raises(ValueError, match=r"eps must be in the open interval \(0, 1\)"):
        sv.dsm_loss(state, lambda x, t: x, jnp.ones((2, 2)), jax.random.key(0), eps=0.0)
    with pytest.raises(ValueError, match="model_fn must return an array of x0's shape"):
        sv.dsm_loss(state, lambda x, t: x[:, :1], jnp.ones((2, 2)), jax.random.key(0))
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        sv.dsm_loss(state, lambda x, t: x, jnp.ones((2, 2)), 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_dsm_loss_targets_the_noise_that_was_added(monkeypatch, dtype):
    """Low-precision data: x_t holds z rounded to x0's dtype, and the loss must target that z.

    A model that returns the very noise add_noise used scores exactly 0; with the
    unrounded z as target it would score sum((round(z) - z)^2) ~ D * (2^-9 |z|)^2 > 0.
    """
    from sdevp_jax import training

    used = {}
    real_add_noise = training.add_noise

    def spy(state, x0, noise, t):
        used["noise"] = noise
        return real_add_noise(state, x0, noise, t)

    monkeypatch.setattr(training, "add_noise", spy)
    x0 = jnp.zeros((4, 8), dtype)
    loss = sv.dsm_loss(sv.create_state(), lambda x, t: used["noise"], x0, jax.random.key(0))
    assert used["noise"].dtype == dtype
    assert float(loss) == 0.0
