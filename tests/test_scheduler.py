"""The reference scheduler: state, set_timesteps, step_pred (contracts and errors)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv


@pytest.fixture
def state():
    return sv.set_timesteps(sv.create_state(), 10)


# ---------------------------------------------------------------- create_state


def test_create_state_defaults_are_diffusers_and_the_papers():
    s = sv.create_state()
    assert (s.beta_min, s.beta_max, s.sampling_eps) == (0.1, 20.0, 1e-3)
    assert s.num_train_timesteps == 2000 and len(s) == 2000
    assert s.timesteps is None and s.num_inference_steps is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta_min": 0.0}, "beta_min must be > 0"),
        ({"beta_min": -1.0}, "beta_min must be > 0"),
        ({"beta_max": 0.1}, "beta_max must be > beta_min"),
        ({"beta_min": 5.0, "beta_max": 1.0}, "beta_max must be > beta_min"),
        ({"sampling_eps": 0.0}, r"sampling_eps must be in the open interval \(0, 1\)"),
        ({"sampling_eps": 1.0}, r"sampling_eps must be in the open interval \(0, 1\)"),
        ({"sampling_eps": -1e-3}, r"sampling_eps must be in the open interval \(0, 1\)"),
        ({"beta_min": float("nan")}, "beta_min must be finite"),
        ({"beta_max": float("inf")}, "beta_max must be finite"),
        ({"sampling_eps": float("nan")}, "sampling_eps must be finite"),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be an int >= 1"),
    ],
)
def test_create_state_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sv.create_state(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta_min": "0.1"}, "beta_min must be a real number"),
        ({"beta_max": True}, "beta_max must be a real number"),
        ({"sampling_eps": np.array([1e-3, 2e-3])}, "sampling_eps must be a real number"),
        ({"num_train_timesteps": 2.5}, "num_train_timesteps must be an int"),
    ],
)
def test_create_state_rejects_bad_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        sv.create_state(**kwargs)


def test_create_state_accepts_numpy_and_jax_scalars():
    s = sv.create_state(beta_min=np.float32(0.5), beta_max=jnp.asarray(7.0), sampling_eps=1e-4)
    assert (s.beta_min, s.beta_max) == (0.5, 7.0)


# ---------------------------------------------------------------- set_timesteps and the state


def test_set_timesteps_is_linspace_from_one_to_eps_and_leaves_input_unchanged():
    s0 = sv.create_state(sampling_eps=1e-2)
    s1 = sv.set_timesteps(s0, 5)
    assert s0.timesteps is None
    np.testing.assert_allclose(s1.timesteps, np.linspace(1.0, 1e-2, 5), rtol=1e-7)
    assert s1.num_inference_steps == 5
    s2 = sv.set_timesteps(s1, 3)
    assert s1.timesteps.shape == (5,) and s2.timesteps.shape == (3,)


def test_set_timesteps_single_step_is_t_one():
    np.testing.assert_array_equal(sv.set_timesteps(sv.create_state(), 1).timesteps, [1.0])


@pytest.mark.parametrize("n, err", [(0, ValueError), (-3, ValueError), (2.0, TypeError), ("10", TypeError), (True, TypeError), (None, TypeError)])
def test_set_timesteps_rejects_bad_step_counts(n, err):
    with pytest.raises(err, match="num_inference_steps must be an int >= 1"):
        sv.set_timesteps(sv.create_state(), n)


def test_set_timesteps_accepts_numpy_ints():
    assert sv.set_timesteps(sv.create_state(), np.int64(7)).num_inference_steps == 7


def test_state_is_immutable(state):
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.beta_min = 1.0
    replaced = state.replace(beta_max=10.0)
    assert state.beta_max == 20.0 and replaced.beta_max == 10.0


def test_state_is_a_pytree_usable_under_jit_and_vmap(state):
    leaves, treedef = jax.tree.flatten(state)
    assert len(leaves) == 4  # beta_min, beta_max, sampling_eps, timesteps; num_train_timesteps is static
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.num_train_timesteps == 2000

    x = jnp.ones((3, 2))
    out = jax.jit(lambda s: sv.step_pred(s, x, x, 0.5, None, noise=x).prev_sample_mean)(state)
    np.testing.assert_allclose(out, sv.step_pred(state, x, x, 0.5, None, noise=x).prev_sample_mean, rtol=1e-6)

    # vmap over a batch of beta_max values: a state with a batched leaf.
    beta_maxes = jnp.array([10.0, 20.0])

    def mean_for(bmax):
        return sv.step_pred(state.replace(beta_max=bmax), x, x, 0.5, None, noise=x).prev_sample_mean

    batched = jax.vmap(mean_for)(beta_maxes)
    for i, bmax in enumerate([10.0, 20.0]):
        np.testing.assert_allclose(batched[i], mean_for(bmax), rtol=1e-6)


# ---------------------------------------------------------------- step_pred


def test_step_pred_returns_a_named_tuple_that_unpacks(state):
    x = jnp.ones((2, 3))
    out = sv.step_pred(state, x, x, 0.5, jax.random.key(0))
    assert isinstance(out, sv.StepOutput)
    x_next, x_mean = out
    assert x_next is out.prev_sample and x_mean is out.prev_sample_mean


def test_step_pred_noise_enters_with_sqrt_beta_over_n(state):
    """x - x_mean = sqrt(beta(t)) * sqrt(1/N) * z, with the injected z."""
    x = jnp.zeros((4,))
    z = jnp.array([1.0, -2.0, 0.5, 3.0])
    x_next, x_mean = sv.step_pred(state, x, x, 0.5, None, noise=z)
    beta = 0.1 + 0.5 * 19.9
    np.testing.assert_allclose(x_next - x_mean, np.sqrt(beta / 10) * np.asarray(z), rtol=1e-6)


def test_step_pred_key_draws_standard_normal_noise(state):
    x = jnp.zeros((4,))
    key = jax.random.key(3)
    x_next, x_mean = sv.step_pred(state, x, x, 0.5, key)
    scale = np.sqrt((0.1 + 0.5 * 19.9) / 10)
    np.testing.assert_allclose((x_next - x_mean) / scale, jax.random.normal(key, (4,)), rtol=1e-5)


def test_typed_and_legacy_keys_give_the_same_step(state):
    x = jnp.ones((3, 2))
    a = sv.step_pred(state, x, x, 0.3, jax.random.key(5))
    b = sv.step_pred(state, x, x, 0.3, jax.random.PRNGKey(5))
    np.testing.assert_array_equal(a.prev_sample, b.prev_sample)


def test_step_pred_vector_t_broadcasts_from_the_left(state):
    """Row b of a (B,) t step equals a 0-d t step of row b alone."""
    rng = np.random.default_rng(0)
    x, eps, z = (jnp.asarray(rng.standard_normal((3, 2, 4)), jnp.float32) for _ in range(3))
    t = jnp.array([1.0, 0.5, 0.01])
    batched = sv.step_pred(state, eps, x, t, None, noise=z)
    for b in range(3):
        single = sv.step_pred(state, eps[b], x[b], t[b], None, noise=z[b])
        np.testing.assert_allclose(batched.prev_sample[b], single.prev_sample, rtol=1e-6)


def test_step_pred_jit_equals_eager(state):
    rng = np.random.default_rng(1)
    x, eps = (jnp.asarray(rng.standard_normal((5, 3)), jnp.float32) for _ in range(2))
    t = jnp.linspace(1.0, 0.1, 5)
    key = jax.random.key(0)
    eager = sv.step_pred(state, eps, x, t, key)
    jitted = jax.jit(sv.step_pred)(state, eps, x, t, key)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_step_pred_keeps_x_dtype_and_computes_in_float32(state, dtype):
    rng = np.random.default_rng(2)
    x64, eps64, z64 = (rng.standard_normal((8, 3)) for _ in range(3))
    x, eps, z = (jnp.asarray(a, dtype) for a in (x64, eps64, z64))
    out = sv.step_pred(state, eps, x, 0.3, None, noise=z)
    assert out.prev_sample.dtype == dtype and out.prev_sample_mean.dtype == dtype
    # Same inputs in float32: the low-precision result is its rounding (the
    # coefficients were not computed in low precision).
    ref = sv.step_pred(state, eps.astype(jnp.float32), x.astype(jnp.float32), 0.3, None, noise=z.astype(jnp.float32))
    np.testing.assert_array_equal(out.prev_sample, ref.prev_sample.astype(dtype))


def test_step_pred_in_float64(state, x64):
    s = sv.set_timesteps(sv.create_state(), 10)
    x = jnp.ones((2,), jnp.float64)
    out = sv.step_pred(s, x, x, 0.5, jax.random.key(0))
    assert out.prev_sample.dtype == jnp.float64


def test_step_pred_is_differentiable(state):
    x = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)
    z = jnp.ones((3, 2))

    def loss(x, t):
        return jnp.sum(sv.step_pred(state, 0.5 * x, x, t, None, noise=z).prev_sample ** 2)

    gx, gt = jax.grad(loss, argnums=(0, 1))(x, jnp.float32(0.4))
    assert jnp.all(jnp.isfinite(gx)) and jnp.isfinite(gt)
    # check d/dx against a central finite difference along a random direction (float32: loose)
    v = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2)), jnp.float32)
    h = 1e-2
    fd = (loss(x + h * v, 0.4) - loss(x - h * v, 0.4)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(gx, v), fd, rtol=1e-3)


def test_step_pred_vmaps_over_keys(state):
    x = jnp.ones((3,))
    keys = jax.random.split(jax.random.key(0), 4)
    batched = jax.vmap(lambda k: sv.step_pred(state, x, x, 0.5, k).prev_sample)(keys)
    for i in range(4):
        np.testing.assert_array_equal(batched[i], sv.step_pred(state, x, x, 0.5, keys[i]).prev_sample)


# ---------------------------------------------------------------- step_pred errors


def test_step_before_set_timesteps_is_an_error():
    x = jnp.ones((2,))
    with pytest.raises(ValueError, match="set_timesteps"):
        sv.step_pred(sv.create_state(), x, x, 0.5, jax.random.key(0))


def test_model_output_shape_must_match_x(state):
    with pytest.raises(ValueError, match=r"model_output must have x's shape \(2, 3\), got \(2, 4\)"):
        sv.step_pred(state, jnp.ones((2, 4)), jnp.ones((2, 3)), 0.5, jax.random.key(0))


@pytest.mark.parametrize("t_shape", [(3,), (2, 1), (1,)])
def test_t_must_match_x_batch(state, t_shape):
    with pytest.raises(ValueError, match="t"):
        sv.step_pred(state, jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.full(t_shape, 0.5), jax.random.key(0))


def test_non_float_x_is_a_type_error(state):
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        sv.step_pred(state, jnp.ones((2,)), jnp.ones((2,), jnp.int32), 0.5, jax.random.key(0))
    with pytest.raises(TypeError, match="x must be a float array"):
        sv.step_pred(state, jnp.ones((2,)), [1.0, 2.0], 0.5, jax.random.key(0))


@pytest.mark.parametrize("t", [0.0, -0.5, float("nan"), float("inf")])
def test_concrete_bad_t_is_an_error_not_a_nan(state, t):
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        sv.step_pred(state, jnp.ones((2,)), jnp.ones((2,)), t, jax.random.key(0))


def test_bad_key_and_noise(state):
    x = jnp.ones((2,))
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        sv.step_pred(state, x, x, 0.5, None)
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        sv.step_pred(state, x, x, 0.5, 42)
    with pytest.raises(ValueError, match="single PRNG key"):
        sv.step_pred(state, x, x, 0.5, jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ValueError, match="noise must have x's shape"):
        sv.step_pred(state, x, x, 0.5, None, noise=jnp.ones((3,)))


def test_errors_are_raised_at_trace_time_under_jit(state):
    f = jax.jit(sv.step_pred)
    with pytest.raises(ValueError, match="model_output must have x's shape"):
        f(state, jnp.ones((2, 4)), jnp.ones((2, 3)), 0.5, jax.random.key(0))
    with pytest.raises(ValueError, match="set_timesteps"):
        f(sv.create_state(), jnp.ones((2,)), jnp.ones((2,)), 0.5, jax.random.key(0))


def test_step_pred_traces_once_per_shape(state):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(s, eps, x, t, key):
        return sv.step_pred(s, eps, x, t, key)

    x = jnp.ones((4, 2))
    for seed in range(3):
        step(state, x, x, jnp.full((4,), 0.5 + 0.1 * seed), jax.random.key(seed))
