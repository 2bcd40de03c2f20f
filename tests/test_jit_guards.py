"""No silent NaN under jit: every check that guards against a NaN also holds when the state is traced.

The README's pattern ``jax.jit(sv.sample, static_argnums=(1, 3))`` traces the
state's floats; the checks must then run from static information (trace time)
or, where the value is truly unknown until run time, under ``checkify``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import sdevp_jax as sv

BOUND = "num_inference_steps > beta_max"


@pytest.fixture(scope="module")
def state10():
    return sv.set_timesteps(sv.create_state(), 10)  # N = 10 < beta_max = 20: the discrete chain's rates exceed 1


@pytest.fixture(scope="module")
def model_fn(state10):
    return sv.mixtures.make_mixture_eps_fn(state10, sv.mixtures.default_mixture())


@pytest.mark.parametrize("options", [
    {"predictor": "reverse_diffusion"},
    {"predictor": "ancestral"},
    {"corrector": "langevin"},
])
def test_jitted_sample_raises_for_the_discrete_bound(state10, model_fn, options):
    sample_fn = jax.jit(lambda s, k: sv.sample(s, model_fn, k, (4, 2), **options))
    with pytest.raises(ValueError, match=r"num_inference_steps > beta_max.*num_inference_steps=10.*beta_max"):
        sample_fn(state10, jax.random.key(0))


def test_readme_pattern_raises_and_the_bound_is_exact(state10, model_fn):
    sample_fn = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("predictor",))
    with pytest.raises(ValueError, match=BOUND):
        sample_fn(state10, model_fn, jax.random.key(0), (4, 2), predictor="ancestral")
    # N = 21 > beta_max = 20 is allowed, N = 20 is not; the jitted run is then finite.
    ok = sv.set_timesteps(state10, 21)
    assert np.all(np.isfinite(sample_fn(ok, model_fn, jax.random.key(0), (4, 2), predictor="ancestral")))
    with pytest.raises(ValueError, match=BOUND):
        sample_fn(sv.set_timesteps(state10, 20), model_fn, jax.random.key(0), (4, 2), predictor="ancestral")


def test_jitted_inpaint_raises_for_the_discrete_bound(state10, model_fn):
    y = jnp.zeros((4, 2))
    mask = jnp.array([1.0, 0.0])
    f = jax.jit(lambda s, k: sv.inpaint(s, model_fn, k, y, mask, predictor="reverse_diffusion"))
    with pytest.raises(ValueError, match=BOUND):
        f(state10, jax.random.key(0))


@pytest.mark.parametrize("step", [sv.reverse_diffusion, sv.ancestral, sv.langevin_correct])
def test_jitted_step_functions_raise_for_the_discrete_bound(state10, step):
    x = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=BOUND):
        jax.jit(lambda s: step(s, x, x, jnp.full((3,), 0.5), None, noise=x))(state10)


def test_replace_keeps_the_static_bound_up_to_date(state10):
    x = jnp.ones((3, 2))
    step = jax.jit(lambda s: sv.ancestral(s, x, x, jnp.full((3,), 0.5), None, noise=x).prev_sample)
    low = state10.replace(beta_max=9.5)  # N = 10 > 9.5: allowed
    assert low.min_discrete_steps == 10
    assert np.all(np.isfinite(step(low)))
    with pytest.raises(ValueError, match=BOUND):
        step(low.replace(beta_max=jnp.asarray(10.0)))  # a concrete device value is recorded too


def test_replace_checks_concrete_config_like_create_state(state10):
    with pytest.raises(ValueError, match="sampling_eps must be in the open interval"):
        state10.replace(sampling_eps=0.0)  # its grid would reach t = 0, where sigma = 0
    with pytest.raises(ValueError, match="beta_max must be > beta_min"):
        state10.replace(beta_max=0.05)
    with pytest.raises(ValueError, match="beta_min must be > 0"):
        state10.replace(beta_min=jnp.asarray(-1.0))


def test_traced_beta_max_is_checked_under_checkify(state10):
    """A state built from a traced beta_max has no static bound: checkify reports the violation."""
    x = jnp.ones((3, 2))

    def f(bmax):
        s = sv.set_timesteps(sv.create_state(beta_max=bmax), 10)
        return sv.reverse_diffusion(s, x, x, jnp.full((3,), 0.5), None, noise=x).prev_sample

    checked = jax.jit(checkify.checkify(f))
    err, _ = checked(jnp.asarray(20.0))
    with pytest.raises(checkify.JaxRuntimeError, match=BOUND):
        err.throw()
    err, out = checked(jnp.asarray(9.0))
    err.throw()  # no error: 9 < 10
    assert np.all(np.isfinite(out))
    # vmap over beta_max, the reason the betas are pytree leaves: one bad member is reported
    err, _ = jax.jit(checkify.checkify(jax.vmap(f)))(jnp.array([5.0, 20.0]))
    with pytest.raises(checkify.JaxRuntimeError, match=BOUND):
        err.throw()


@pytest.mark.parametrize("t", [0.0, -0.5, float("nan")])
def test_traced_t_is_checked_under_checkify(state10, t):
    x = jnp.ones((3, 2))
    f = jax.jit(checkify.checkify(lambda t: sv.step_pred(state10, x, x, t, None, noise=x).prev_sample))
    err, _ = f(jnp.full((3,), 0.5).at[1].set(t))
    with pytest.raises(checkify.JaxRuntimeError, match="t must be finite and > 0"):
        err.throw()
    err, _ = f(jnp.full((3,), 0.5))
    err.throw()


@pytest.mark.parametrize("t", [0.0, np.float32(-1.0), np.array([0.5, 0.0, 0.5])])
def test_host_t_is_checked_eagerly_and_under_jit(state10, t):
    """A t on the host (a Python or NumPy value) is checked without touching the device."""
    x = jnp.ones((3, 2))
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        sv.step_pred(state10, x, x, t, None, noise=x)
