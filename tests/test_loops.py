"""The compiled sampling loop sv.sample: contracts (jit, vmap, keys, batch invariance, memory) and errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

STEPS = 20


@pytest.fixture(scope="module")
def setup():
    state = sv.set_timesteps(sv.create_state(), STEPS)
    return state, sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())


def jit_sample():
    return jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("dtype",))


def test_sample_shape_dtype_and_finiteness(setup):
    state, model_fn = setup
    x = sv.sample(state, model_fn, jax.random.key(0), (6, 2))
    assert x.shape == (6, 2) and x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))


def test_sample_is_the_loop_of_step_pred_with_per_sample_noise(setup):
    """sample == a Python loop of step_pred fed the documented per-sample noise streams."""
    state, model_fn = setup
    key = jax.random.key(7)
    batch = 3
    sample_keys = [jax.random.fold_in(key, b) for b in range(batch)]

    def noise(slot):
        return jnp.stack([jax.random.normal(jax.random.fold_in(k, slot), (2,)) for k in sample_keys])

    x = noise(0)
    for i, t in enumerate(state.timesteps):
        t_vec = jnp.full((batch,), t)
        x, x_mean = sv.step_pred(state, model_fn(x, t_vec), x, t_vec, None, noise=noise(i + 1))
    np.testing.assert_allclose(sv.sample(state, model_fn, key, (batch, 2)), x_mean, rtol=1e-5, atol=1e-6)


def test_jit_equals_no_jit(setup):
    state, model_fn = setup
    key = jax.random.key(1)
    eager = sv.sample(state, model_fn, key, (8, 2))
    jitted = jit_sample()(state, model_fn, key, (8, 2))
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)


def test_same_key_is_bitwise_identical_and_other_keys_differ(setup):
    state, model_fn = setup
    f = jit_sample()
    a = f(state, model_fn, jax.random.key(3), (8, 2))
    b = f(state, model_fn, jax.random.key(3), (8, 2))
    c = f(state, model_fn, jax.random.key(4), (8, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.any(np.asarray(a) == np.asarray(c))


def test_typed_and_legacy_keys_agree(setup):
    state, model_fn = setup
    np.testing.assert_array_equal(
        sv.sample(state, model_fn, jax.random.key(11), (4, 2)),
        sv.sample(state, model_fn, jax.random.PRNGKey(11), (4, 2)),
    )


@pytest.mark.parametrize("make_keys", [lambda: jax.random.split(jax.random.key(0), 5),
                                       lambda: jax.random.split(jax.random.PRNGKey(0), 5)],
                         ids=["typed", "legacy"])
def test_vmap_over_keys_equals_a_loop_over_keys(setup, make_keys):
    state, model_fn = setup
    keys = make_keys()
    batched = jax.jit(jax.vmap(lambda k: sv.sample(state, model_fn, k, (4, 2))))(keys)
    assert batched.shape == (5, 4, 2)
    f = jit_sample()
    for i in range(5):
        np.testing.assert_allclose(batched[i], f(state, model_fn, keys[i], (4, 2)), rtol=1e-6, atol=1e-6)


def test_batch_invariance_sample_b_is_the_same_in_batches_of_1_7_and_64(setup):
    """To 1e-5, not bitwise: XLA sums and fuses differently for other batch sizes (the noise
    itself is bitwise; see tests/test_invariance.py for the tolerance's derivation)."""
    state, model_fn = setup
    f = jit_sample()
    key = jax.random.key(5)
    big = np.asarray(f(state, model_fn, key, (64, 2)))
    seven = np.asarray(f(state, model_fn, key, (7, 2)))
    np.testing.assert_allclose(seven, big[:7], rtol=0, atol=1e-5)
    for b in (0, 3, 6):  # a batch of 1 whose only sample has global index b
        one = np.asarray(f(state, model_fn, key, (1, 2), index_offset=b))
        np.testing.assert_allclose(one[0], big[b], rtol=0, atol=1e-5)


def test_index_offset_chunks_reassemble_the_batch(setup):
    state, model_fn = setup
    f = jax.jit(sv.sample, static_argnums=(1, 3))
    key = jax.random.key(9)
    whole = np.asarray(f(state, model_fn, key, (12, 2)))
    chunks = [np.asarray(f(state, model_fn, key, (4, 2), index_offset=o)) for o in (0, 4, 8)]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_jit_sample_traces_once_across_keys_and_offsets(setup):
    state, model_fn = setup

    @chex.assert_max_traces(n=1)
    def traced(state, key, offset):
        return sv.sample(state, model_fn, key, (4, 2), index_offset=offset)

    f = jax.jit(traced)
    for seed in range(4):
        f(state, jax.random.key(seed), seed * 4)


def test_image_shaped_samples(setup):
    state, _ = setup
    mixture = sv.mixtures.default_mixture(dim=12)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    x = sv.sample(state, model_fn, jax.random.key(0), (3, 3, 2, 2))
    assert x.shape == (3, 3, 2, 2) and bool(jnp.all(jnp.isfinite(x)))


def test_bfloat16_samples(setup):
    state, model_fn = setup
    x = jit_sample()(state, model_fn, jax.random.key(0), (16, 2), dtype=jnp.bfloat16)
    x32 = jit_sample()(state, model_fn, jax.random.key(0), (16, 2))
    assert x.dtype == jnp.bfloat16
    # bfloat16 keeps 8 bits: the samples agree with float32's to a few bf16 ulps of |x| <~ 2.
    np.testing.assert_allclose(x.astype(jnp.float32), x32, atol=0.1)


def test_memory_does_not_grow_with_the_step_count():
    """Compiled temporary memory is the same for 10 and 1000 steps (the scan carries only x)."""
    mixture = sv.mixtures.default_mixture()
    sizes = []
    for n in (10, 2000):
        state = sv.set_timesteps(sv.create_state(), n)
        model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
        compiled = jax.jit(sv.sample, static_argnums=(1, 3)).lower(
            state, model_fn, jax.random.key(0), (256, 2)).compile()
        stats = compiled.memory_analysis()
        sizes.append(stats.temp_size_in_bytes)
    # the timestep grid itself is an argument (argument_size grows with it); temporaries do not grow
    assert sizes[1] <= sizes[0], sizes


# ---------------------------------------------------------------- errors


def test_sample_before_set_timesteps(setup):
    _, model_fn = setup
    with pytest.raises(ValueError, match="set_timesteps"):
        sv.sample(sv.create_state(), model_fn, jax.random.key(0), (4, 2))


@pytest.mark.parametrize("shape, err", [((), ValueError), (4, TypeError), ((0, 2), ValueError),
                                        ((4, -1), ValueError), ((4.0, 2), TypeError), (None, TypeError)])
def test_bad_shape(setup, shape, err):
    state, model_fn = setup
    with pytest.raises(err, match="shape"):
        sv.sample(state, model_fn, jax.random.key(0), shape)


def test_model_fn_returning_the_wrong_shape(setup):
    state, _ = setup
    with pytest.raises(ValueError, match=r"model_fn must return the noise prediction with x's shape \(4, 2\), got \(4,\)"):
        sv.sample(state, lambda x, t: x[:, 0], jax.random.key(0), (4, 2))
    with pytest.raises(TypeError, match="model_fn must return one array"):
        sv.sample(state, lambda x, t: (x, x), jax.random.key(0), (4, 2))
    with pytest.raises(TypeError, match="model_fn must be callable"):
        sv.sample(state, "model", jax.random.key(0), (4, 2))


def test_bad_key_and_dtype(setup):
    state, model_fn = setup
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        sv.sample(state, model_fn, 0, (4, 2))
    with pytest.raises(TypeError, match="dtype must be a float dtype"):
        sv.sample(state, model_fn, jax.random.key(0), (4, 2), dtype=jnp.int32)


def test_errors_surface_at_trace_time_under_jit(setup):
    state, _ = setup
    f = jax.jit(sv.sample, static_argnums=(1, 3))
    with pytest.raises(ValueError, match="model_fn must return"):
        f(state, lambda x, t: x[:, :1], jax.random.key(0), (4, 2))


@pytest.mark.parametrize("offset, err", [(-1, ValueError), (2**32 - 3, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_index_offset(setup, offset, err):
    state, model_fn = setup
    with pytest.raises(err, match="index_offset"):
        sv.sample(state, model_fn, jax.random.key(0), (4, 2), index_offset=offset)


def test_largest_index_offset_is_accepted(setup):
    state, model_fn = setup
    x = sv.sample(state, model_fn, jax.random.key(0), (4, 2), index_offset=np.uint32(2**32 - 4))
    assert bool(jnp.all(jnp.isfinite(x)))


def test_unroll_changes_nothing_but_speed(setup):
    state, model_fn = setup
    f = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("unroll",))
    base = f(state, model_fn, jax.random.key(0), (8, 2))
    for unroll in (2, 8):
        np.testing.assert_allclose(f(state, model_fn, jax.random.key(0), (8, 2), unroll=unroll), base,
                                   rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unroll must be an int >= 1"):
        sv.sample(state, model_fn, jax.random.key(0), (8, 2), unroll=0)


def test_default_unroll_is_8_on_gpu_and_1_elsewhere(monkeypatch):
    """unroll=None resolves per backend (measured: benchmarks/results/gpu_suite.md, options.md)."""
    from sdevp_jax import loops

    assert loops.default_unroll() == 1 and loops.resolve_unroll(None) == 1  # the tests run on CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert loops.resolve_unroll(None) == 8 and loops.resolve_unroll(3) == 3
    with pytest.raises(ValueError, match="unroll must be an int >= 1"):
        loops.resolve_unroll(0)


@pytest.mark.parametrize("method", ["dpm_solver", "ddim", "unipc", "adaptive"])
def test_a_deterministic_method_from_x_init_needs_no_key(method):
    """key=None with x_init: the run a key would give bitwise (the key only draws x_T, which x_init replaces)."""
    state = sv.set_timesteps(sv.create_state(), 6)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2))
    x_init = jax.random.normal(jax.random.key(5), (3, 2))
    no_key = sv.sample_ode(state, model_fn, None, (3, 2), x_init=x_init, method=method)
    keyed = sv.sample_ode(state, model_fn, jax.random.key(0), (3, 2), x_init=x_init, method=method)
    np.testing.assert_array_equal(no_key, keyed)


def test_key_none_without_x_init_or_with_a_stochastic_method_is_refused():
    state = sv.set_timesteps(sv.create_state(), 6)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2))
    x_init = jnp.ones((3, 2))
    with pytest.raises(ValueError, match="key=None needs x_init"):
        sv.sample_ode(state, model_fn, None, (3, 2), method="ddim")
    with pytest.raises(ValueError, match="key=None: method 'ddim' draws noise at every step"):
        sv.sample_ode(state, model_fn, None, (3, 2), x_init=x_init, method="ddim", eta=1.0)
    with pytest.raises(ValueError, match="key=None: method 'euler_maruyama' draws noise"):
        sv.sample(state, model_fn, None, (3, 2), x_init=x_init)


GIVEN_NOISE_RUNS = [("sample", {}), ("sample", {"predictor": "ancestral"}),
                    ("sample", {"predictor": "reverse_diffusion", "corrector": "langevin", "corrector_steps": 2}),
                    ("sample_ode", {"method": "ddim", "eta": 1.0}), ("sample_ode", {"method": "sde_dpm_solver_pp"}),
                    ("sample_ode", {"method": "sde_dpm_solver_singlestep"})]


@pytest.mark.parametrize("loop, options", GIVEN_NOISE_RUNS, ids=[str(o) for _, o in GIVEN_NOISE_RUNS])
def test_given_noise_replays_the_keyed_run(loop, options, x64):
    """noise= with the keyed draws themselves (draw d of sample b: normal(fold_in(fold_in(key, offset + b), 1 + d)),
    as an array and as a function) gives the keyed run: the loop takes the given draws where it would draw, in
    the same order; other noise gives another run. The programs differ (a draw fused into the step or read from
    memory), so XLA may round differently: float64, 1e-12 (30 steps of O(1) arithmetic; float32 differed by
    up to 3 ulps)."""
    state = sv.set_timesteps(sv.create_state(), 30)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2))
    run = getattr(sv, loop)
    key, batch, offset = jax.random.key(7), 3, 5
    kw = dict(index_offset=offset, dtype=jnp.float64, **options)
    keyed = run(state, model_fn, key, (batch, 2), **kw)
    solver = (sv.loops.solver_from(None, options.get("predictor"), options.get("corrector"), 0.16,
                                   options.get("corrector_steps", 1), "sigma") if loop == "sample"
              else sv.loops.ode_solver(options["method"], **{k: v for k, v in options.items() if k != "method"}))
    draws = solver.num_steps(solver.times(state, jnp.float64).shape[0]) * solver.noise_slots

    def fn(d, i):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), 1 + d), (2,), jnp.float64)

    index = offset + jnp.arange(batch, dtype=jnp.uint32)
    array = jax.vmap(lambda d: jax.vmap(lambda i: fn(d, i))(index))(jnp.arange(draws, dtype=jnp.uint32))
    for given in (array, fn):
        np.testing.assert_allclose(run(state, model_fn, key, (batch, 2), noise=given, **kw), keyed, rtol=1e-12,
                                   atol=1e-12)
    other = run(state, model_fn, key, (batch, 2), noise=-array, **kw)
    assert not np.allclose(other, keyed)


def test_given_noise_of_the_wrong_shape_or_for_a_deterministic_method_is_refused():
    state = sv.set_timesteps(sv.create_state(), 10)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2))
    with pytest.raises(ValueError, match=r"noise must have shape \(draws, batch, \*event\) = \(10, 3, 2\)"):
        sv.sample(state, model_fn, jax.random.key(0), (3, 2), noise=jnp.zeros((9, 3, 2)))
    with pytest.raises(ValueError, match="noise=: method 'dpm_solver_pp' draws no noise"):
        sv.sample_ode(state, model_fn, jax.random.key(0), (3, 2), method="dpm_solver_pp", noise=jnp.zeros((9, 3, 2)))
    # x_init and noise given: nothing left for a key to draw
    x = sv.sample(state, model_fn, None, (3, 2), x_init=jnp.ones((3, 2)), noise=jnp.zeros((10, 3, 2)))
    assert np.all(np.isfinite(x))
