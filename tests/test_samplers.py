"""Predictors, the Langevin corrector, predictor-corrector sampling and the method registry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import sde

N = 50
BMIN, BMAX = 0.1, 20.0


@pytest.fixture(scope="module")
def state():
    return sv.set_timesteps(sv.create_state(), N)


def arrays(seed, shape=(4, 3)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(3)]


def coefficients(t):
    beta_i = (BMIN + t * (BMAX - BMIN)) / N
    m = -0.25 * t**2 * (BMAX - BMIN) - 0.5 * t * BMIN
    return beta_i, np.sqrt(-np.expm1(2 * m))


# ---------------------------------------------------------------- step formulas, against numpy


def test_euler_maruyama_is_step_pred(state):
    x, eps, z = (jnp.asarray(a, jnp.float32) for a in arrays(0))
    a = sv.euler_maruyama(state, eps, x, 0.4, None, noise=z)
    b = sv.step_pred(state, eps, x, 0.4, None, noise=z)
    np.testing.assert_array_equal(a.prev_sample, b.prev_sample)


def test_reverse_diffusion_formula(state, x64):
    x, eps, z = arrays(1)
    t = 0.37
    beta_i, sigma = coefficients(t)
    score = -eps / sigma
    mean = (2 - np.sqrt(1 - beta_i)) * x + beta_i * score
    out = sv.reverse_diffusion(state, jnp.asarray(eps), jnp.asarray(x), t, None, noise=jnp.asarray(z))
    np.testing.assert_allclose(out.prev_sample_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(out.prev_sample, mean + np.sqrt(beta_i) * z, rtol=1e-13)


def test_ancestral_formula(state, x64):
    x, eps, z = arrays(2)
    t = np.array([1.0, 0.5, 0.1, 1e-3])
    beta_i, sigma = coefficients(t)
    beta_i, sigma = beta_i[:, None], sigma[:, None]
    mean = (x - beta_i * eps / sigma) / np.sqrt(1 - beta_i)
    out = sv.ancestral(state, jnp.asarray(eps), jnp.asarray(x), jnp.asarray(t), None, noise=jnp.asarray(z))
    np.testing.assert_allclose(out.prev_sample_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(out.prev_sample, mean + np.sqrt(beta_i) * z, rtol=1e-13)


@pytest.mark.parametrize("step_rule", ["sigma", "snr_batch", "snr_sample"])
def test_langevin_formula(state, x64, step_rule):
    x, eps, z = arrays(3)
    t, snr = 0.6, 0.16
    beta_i, sigma = coefficients(t)
    score = -eps / sigma
    g = np.linalg.norm(score, axis=1, keepdims=True)
    n = np.linalg.norm(z, axis=1, keepdims=True)
    if step_rule == "snr_batch":
        g, n = g.mean(), n.mean()
    if step_rule == "sigma":
        step = 2 * (1 - beta_i) * (snr * sigma) ** 2
    else:
        step = 2 * (1 - beta_i) * (snr * n / g) ** 2
    out = sv.langevin_correct(state, jnp.asarray(eps), jnp.asarray(x), t, None, noise=jnp.asarray(z),
                              snr=snr, step_rule=step_rule)
    np.testing.assert_allclose(out.prev_sample_mean, x + step * score, rtol=1e-13)
    np.testing.assert_allclose(out.prev_sample, x + step * score + np.sqrt(2 * step) * z, rtol=1e-13)
    # the update's signal-to-noise ratio is snr * sqrt(alpha_i) per sample with per-sample norms
    if step_rule == "snr_sample":
        ratio = np.linalg.norm(step * score, axis=1) / np.linalg.norm(np.sqrt(2 * step) * z, axis=1)
        np.testing.assert_allclose(ratio, snr * np.sqrt(1 - beta_i), rtol=1e-12)


def test_langevin_sigma_rule_is_per_sample_in_t(state, x64):
    """With a per-sample t the sigma rule's step is 2 alpha_i (r sigma(t_b))^2 for each row b."""
    x, eps, z = arrays(4)
    t = np.array([0.9, 0.5, 0.2, 0.01])
    beta_i, sigma = coefficients(t)
    step = (2 * (1 - beta_i) * (0.1 * sigma) ** 2)[:, None]
    out = sv.langevin_correct(state, jnp.asarray(eps), jnp.asarray(x), jnp.asarray(t), None,
                              noise=jnp.asarray(z), snr=0.1)
    np.testing.assert_allclose(out.prev_sample_mean, x - step * eps / sigma[:, None], rtol=1e-13)


def test_langevin_rejects_unknown_step_rule(state):
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"step_rule must be one of \['sigma', 'snr_batch', 'snr_sample'\]"):
        sv.langevin_correct(state, x, x, 0.5, jax.random.key(0), step_rule="paper")


@pytest.mark.parametrize("step_rule", ["snr_batch", "snr_sample"])
def test_langevin_with_zero_score_does_not_move_or_nan(state, step_rule):
    x = jnp.ones((2, 3))
    out = sv.langevin_correct(state, jnp.zeros((2, 3)), x, 0.5, None, noise=jnp.ones((2, 3)), step_rule=step_rule)
    np.testing.assert_array_equal(out.prev_sample, x)


@pytest.mark.parametrize("step", [sv.reverse_diffusion, sv.ancestral, sv.langevin_correct])
def test_discrete_steps_keep_dtype_and_check_beta_over_n(state, step):
    x = jnp.ones((2, 3), jnp.bfloat16)
    assert step(state, x, x, 0.5, jax.random.key(0)).prev_sample.dtype == jnp.bfloat16
    few = sv.set_timesteps(sv.create_state(), 20)  # beta_max / N = 1: the per-step rate reaches 1
    with pytest.raises(ValueError, match="num_inference_steps > beta_max"):
        step(few, x, x, 0.5, jax.random.key(0))


def test_langevin_rejects_bad_snr(state):
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="snr must be > 0"):
        sv.langevin_correct(state, x, x, 0.5, jax.random.key(0), snr=0.0)


def test_probability_flow_drift_formula(state, x64):
    x, eps, _ = arrays(4)
    t = 0.3
    beta_t = BMIN + t * (BMAX - BMIN)
    _, sigma = coefficients(t)
    np.testing.assert_allclose(sv.probability_flow_drift(state, jnp.asarray(eps), jnp.asarray(x), t),
                               -0.5 * beta_t * (x - eps / sigma), rtol=1e-13)


# ---------------------------------------------------------------- predictor-corrector loop


@pytest.mark.parametrize("step_rule", ["sigma", "snr_sample"])
def test_predictor_corrector_loop_order_and_noise_slots(state, x64, step_rule):
    """sample(predictor=P, corrector=langevin, M) == the documented loop: M Langevin steps, then P.

    In float64: the norm-based corrector step amplifies float32 rounding
    differences between the scan and this eager loop over 50 steps.
    """
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    key, batch, m = jax.random.key(3), 3, 2
    keys = [jax.random.fold_in(key, b) for b in range(batch)]

    # The loop's pieces are jitted once each (the slot and t are traced), so the 50 x (m + 1) steps reuse
    # three compiled programs instead of dispatching every operation eagerly; the arithmetic is the same.
    @jax.jit
    def z(slot):
        return jnp.stack([jax.random.normal(jax.random.fold_in(k, slot), (2,), jnp.float64) for k in keys])

    correct = jax.jit(lambda x, t_vec, noise: sv.langevin_correct(state, model_fn(x, t_vec), x, t_vec, None,
                                                                  noise=noise, snr=0.2, step_rule=step_rule))
    predict = jax.jit(lambda x, t_vec, noise: sv.ancestral(state, model_fn(x, t_vec), x, t_vec, None, noise=noise))
    x = z(0)
    for i, t in enumerate(state.timesteps):
        t_vec = jnp.full((batch,), t)
        for j in range(m):
            x, _ = correct(x, t_vec, z(1 + i * (1 + m) + j))
        x, x_mean = predict(x, t_vec, z(1 + i * (1 + m) + m))
    # both denoise settings traced into one jitted program (one compilation instead of two)
    sampled = jax.jit(lambda key: [sv.sample(state, model_fn, key, (batch, 2), predictor="ancestral",
                                             corrector="langevin", corrector_steps=m, snr=0.2, step_rule=step_rule,
                                             denoise=denoise, dtype=jnp.float64) for denoise in (True, False)])(key)
    for got, expected in zip(sampled, (x_mean, x)):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


# (predictor, step_rule) of the PC runs below, each at a batch of 9 and of 4, key 0
PC_BATCH_CASES = {"sigma": ("reverse_diffusion", "sigma"), "snr_sample": ("reverse_diffusion", "snr_sample"),
                  "snr_batch": ("euler_maruyama", "snr_batch")}


@functools.lru_cache(maxsize=None)
def pc_batch_runs():
    """``{(case, batch): samples}`` of PC_BATCH_CASES at batches 9 and 4 (Langevin corrector, N = 50, the
    default mixture, key 0). The six runs are traced into one jitted program, computed once for the three
    tests below (one compilation instead of six); each run is its own loop, compiled for its own batch."""
    state = sv.set_timesteps(sv.create_state(), N)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())

    def runs(key):
        return {(case, b): sv.sample(state, model_fn, key, (b, 2), predictor=predictor, corrector="langevin",
                                     step_rule=step_rule)
                for case, (predictor, step_rule) in PC_BATCH_CASES.items() for b in (9, 4)}

    return {k: np.asarray(v) for k, v in jax.jit(runs)(jax.random.key(0)).items()}


@pytest.mark.parametrize("step_rule", ["sigma", "snr_sample"])
def test_pc_sampling_is_batch_invariant_with_per_sample_rules(step_rule):
    """The per-sample rules keep each sample's noise and step its own.

    Compared to 1e-6 (not bitwise): XLA vectorises the model's exp/log differently
    for batches of 9 and 4, and 50 steps amplify that last-ulp difference (see
    tests/test_invariance.py for the tolerance).
    """
    big, small = pc_batch_runs()[step_rule, 9], pc_batch_runs()[step_rule, 4]
    np.testing.assert_allclose(small, big[:4], rtol=0, atol=1e-6)


def test_pc_sampling_with_batch_mean_norms_couples_the_batch():
    """The reference code's batch-mean norms: each sample depends on the rest of its batch."""
    big_m, small_m = pc_batch_runs()["snr_batch", 9], pc_batch_runs()["snr_batch", 4]
    assert np.max(np.abs(small_m - big_m[:4])) > 1e-3


@pytest.mark.parametrize("kwargs, err, match", [
    ({"predictor": "heun"}, ValueError, "predictor must be one of"),
    ({"corrector": "ald"}, ValueError, "corrector must be one of"),
    ({"corrector": "langevin", "corrector_steps": 0}, ValueError, "corrector_steps must be an int >= 1"),
    ({"corrector": "langevin", "snr": -1.0}, ValueError, "snr must be > 0"),
    ({"corrector": "langevin", "snr": float("nan")}, ValueError, "snr must be finite"),
    ({"corrector": "langevin", "step_rule": "batch"}, ValueError, "step_rule must be one of"),
])
def test_sample_rejects_bad_sampler_options(state, kwargs, err, match):
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    with pytest.raises(err, match=match):
        sv.sample(state, model_fn, jax.random.key(0), (2, 2), **kwargs)


# ---------------------------------------------------------------- registry


def test_registry_lists_every_method_by_kind():
    assert sv.list_methods("predictor") == ["euler_maruyama", "reverse_diffusion", "ancestral"]
    assert sv.list_methods("corrector") == ["langevin"]
    assert sv.list_methods("ode") == ["euler", "heun", "dpm_solver", "ddim", "dpm_solver_pp", "unipc", "adaptive",
                                      "dpm_solver_pp_2s", "deis", "ipndm",
                                      "dpm_solver_singlestep", "lms", "pndm", "heun_sigma",
                                      "kdpm2"]  # the registry's order
    assert sv.list_methods("sde_solver") == ["sde_dpm_solver_pp", "sde_dpm_solver_singlestep", "sa_solver",
                                            "euler_ancestral", "kdpm2_ancestral", "er_sde", "restart"]
    assert sv.list_methods() == list(sv.METHODS)
    assert all(isinstance(m, sv.MethodInfo) and m.description for m in sv.METHODS.values())
    with pytest.raises(ValueError, match="kind must be one of"):
        sv.list_methods("sde")


# ---------------------------------------------------------------- statistics


def target_check(x, mixture, a, s, m_samples):
    """Mode weights and mean within 5 standard errors (see test_statistics for the derivation)."""
    w = np.asarray(mixture.weights, np.float64)
    freq = np.bincount(np.asarray(sv.mixtures.assign_modes(mixture, x)), minlength=len(w)) / m_samples
    np.testing.assert_array_less(np.abs(freq - w), 5 * np.sqrt(w * (1 - w) / m_samples))
    means, scales = np.asarray(mixture.means, np.float64), np.asarray(mixture.scales, np.float64)
    mu = a * (w @ means)
    var = w @ (a**2 * (scales**2 + means**2)) + s**2 - mu**2
    np.testing.assert_array_less(np.abs(x.mean(0) - mu), 5 * np.sqrt(var / m_samples))


@pytest.mark.slow
@pytest.mark.parametrize("predictor, corrector, dim, step_rule, m_samples", [
    ("reverse_diffusion", None, 2, "sigma", 5000),
    ("ancestral", None, 2, "sigma", 5000),
    ("euler_maruyama", "langevin", 2, "sigma", 5000),
    ("euler_maruyama", "langevin", 2, "snr_batch", 5000),
    ("euler_maruyama", "langevin", 64, "sigma", 2000),
])
def test_samplers_reach_the_mixture_at_1000_steps(predictor, corrector, dim, step_rule, m_samples):
    """The paper's N = 1000; 5-standard-error tolerances at M samples.

    The default corrector step rule ("sigma") in 2 and 64 dimensions, and the
    paper's batch-mean rule in 2-D; the per-sample rule's bias in low dimension
    is shown in tests/test_corrector.py.
    """
    mixture = sv.mixtures.default_mixture(dim)
    state = sv.set_timesteps(sv.create_state(), 1000)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    x = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("predictor", "corrector", "step_rule"))(
        state, model_fn, jax.random.key(11), (m_samples, dim), predictor=predictor, corrector=corrector,
        step_rule=step_rule)
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    target_check(x, mixture, float(sde.alpha(1e-3, BMIN, BMAX)), float(sde.sigma(1e-3, BMIN, BMAX)), m_samples)
