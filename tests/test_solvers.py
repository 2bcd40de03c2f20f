"""The grid solvers (sdevp_jax/solvers.py through sv.sample_ode): orders, inversion, stochastic steps, options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import solvers

# A smooth two-mode mixture: its ODE is not stiff, so the solvers reach their asymptotic orders
# at moderate step counts (as in test_ode.py).
SMOOTH = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.0, 0.0]], scales=0.5)


def _setup(n, schedule=None, spacing="logsnr", prediction_type="epsilon"):
    state = sv.create_state(schedule=schedule, prediction_type=prediction_type)
    state = sv.set_timesteps(state, n, spacing=spacing)
    return state, sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture(**SMOOTH))


@pytest.fixture(scope="module")
def reference():
    """A tight adaptive solve (rtol = atol = 1e-11, float64) of 16 samples down the same log-SNR span."""
    with jax.enable_x64(True):
        state, model_fn = _setup(2)
        x = sv.sample_ode(state, model_fn, jax.random.key(0), (16, 2), method="adaptive", rtol=1e-11,
                          atol=1e-11, dtype=jnp.float64, max_steps=100_000)
    return np.asarray(x)


def _slope(steps, errors):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


# Theory: DDIM 1; DPM-Solver++ order k is k; UniPC's corrector raises the predictor's order p to p + 1
# (Zhao et al. 2023, Thm. 3.1). Fitted over 32..256 steps (errors >= 1e-9, far above the reference's
# own ~1e-11), within +-0.3 as diffrax's tests and test_ode.py have it.
ORDERS = [
    ("ddim", {}, 1),
    ("dpm_solver_pp", {"order": 2}, 2),
    ("dpm_solver_pp", {"order": 2, "solver_type": "heun"}, 2),
    ("dpm_solver_pp", {"order": 3}, 3),
    ("unipc", {"order": 1}, 2),
    ("unipc", {"order": 2}, 3),
    ("unipc", {"order": 2, "solver_type": "bh1"}, 3),
    ("unipc", {"order": 2, "predict_x0": False}, 3),
    ("dpm_solver_pp_2s", {}, 2),  # single-step: 2 calls per step, the same order in the step count
]


@pytest.mark.slow
@pytest.mark.parametrize("method, options, order", ORDERS)
def test_grid_solvers_reach_their_order(x64, reference, method, options, order):
    steps = np.array([32, 64, 128, 256])
    errors = []
    for n in steps:
        state, model_fn = _setup(int(n) + 1)
        x = sv.sample_ode(state, model_fn, jax.random.key(0), (16, 2), method=method, dtype=jnp.float64,
                          final_sigmas_type="last", **options)
        errors.append(float(np.max(np.abs(np.asarray(x) - reference))))
    assert abs(_slope(steps, errors) - order) < 0.3, (_slope(steps, errors), errors)


@pytest.mark.slow
def test_third_order_taylor_term_against_diffusers_half_term(x64, reference):
    """DPM-Solver++ 3M: the exact Taylor coefficient of the second difference reaches order 3; diffusers'
    (and the official code's) half coefficient stays near order 2 and is less accurate at every step count."""
    steps = np.array([32, 64, 128, 256])
    errors = {"taylor": [], "diffusers": []}
    for n in steps:
        state, model_fn = _setup(int(n) + 1)
        for variant in errors:
            x = sv.sample_ode(state, model_fn, jax.random.key(0), (16, 2), method="dpm_solver_pp", order=3,
                              third_order=variant, dtype=jnp.float64, final_sigmas_type="last")
            errors[variant].append(float(np.max(np.abs(np.asarray(x) - reference))))
    assert abs(_slope(steps, errors["taylor"]) - 3) < 0.3, errors
    assert _slope(steps, errors["diffusers"]) < 2.4, errors
    assert all(t < d for t, d in zip(errors["taylor"], errors["diffusers"])), errors


@pytest.mark.slow
@pytest.mark.parametrize("method, options, order", [("ddim", {}, 1), ("dpm_solver_pp", {"order": 2}, 2),
                                                    ("unipc", {"order": 2}, 3), ("heun", {}, 2)])
def test_inversion_then_sampling_returns_the_data_at_the_solvers_order(x64, method, options, order):
    """invert_ode up the grid, then sample_ode down it: x0 comes back with an error falling at the order.

    Two solves at the same order add their errors, so the fitted slope is the solver's (within 0.45:
    the round trip's error constants partly cancel at the coarsest grids; heun's measured 3.0 is
    within 1 of its order 2 and is asserted only as >= 2 - 0.3).
    """
    x0 = sv.mixtures.sample_mixture(sv.mixtures.make_mixture(**SMOOTH), jax.random.key(3), 16).astype(jnp.float64)
    steps = np.array([16, 32, 64, 128])
    errors = []
    for n in steps:
        state, model_fn = _setup(int(n) + 1)
        latents = sv.invert_ode(state, model_fn, x0, method=method, **options)
        extra = {} if method == "heun" else {"final_sigmas_type": "last"}
        back = sv.sample_ode(state, model_fn, jax.random.key(0), x0.shape, method=method, x_init=latents,
                             dtype=jnp.float64, **options, **extra)
        errors.append(float(np.max(np.abs(np.asarray(back) - np.asarray(x0)))))
    slope = _slope(steps, errors)
    assert slope > order - 0.3, (slope, errors)
    assert errors[-1] < errors[0] / 2 ** (order * 3 - 1), errors


def test_final_step_to_sigma_zero_is_the_data_prediction_at_the_last_grid_time():
    state, model_fn = _setup(8)
    key = jax.random.key(1)
    for method in ("ddim", "dpm_solver_pp", "unipc"):
        # lower_order_final off: with it the two runs' step tables differ (the run ending at the last grid
        # time lowers the order of its own last step), so their points at the last grid time would too.
        last, info_last = sv.sample_ode(state, model_fn, key, (5, 2), method=method, final_sigmas_type="last",
                                        lower_order_final=False, return_info=True)
        zero, info_zero = sv.sample_ode(state, model_fn, key, (5, 2), method=method, lower_order_final=False,
                                        return_info=True)
        t = jnp.full((5,), state.timesteps[-1])
        alpha, sigma = state.schedule.alpha_sigma(t[:, None])
        x0 = (last - sigma * model_fn(last, t)) / alpha
        # the same arithmetic on the same inputs, up to XLA's fusion in the compiled loop
        np.testing.assert_allclose(zero, x0, rtol=1e-6, atol=1e-6)
        assert int(info_zero.nfe) == int(info_last.nfe) + 1 == 8


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize("method", ["ddim", "dpm_solver_pp", "unipc"])
def test_every_prediction_type_gives_the_eps_models_samples(method, prediction_type):
    """A v- or x0-model converted from the exact eps-model samples the same (cosine schedule, float32).

    Tolerance: the conversions are exact up to float32 rounding of O(1) numbers (a few ulps, 1e-6),
    amplified along 9 steps by at most alpha_t/alpha_s growth and the x0 <-> eps division by alpha
    at the noisy end; 1e-4 absolute is above what this measured (< 1e-5) and far below the samples' scale.
    """
    key = jax.random.key(5)
    state, model_fn = _setup(10, schedule=sv.schedules.cosine())
    other, other_fn = _setup(10, schedule=sv.schedules.cosine(), prediction_type=prediction_type)
    a = sv.sample_ode(state, model_fn, key, (6, 2), method=method)
    b = sv.sample_ode(other, other_fn, key, (6, 2), method=method)
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("method, options", [("ddim", {"eta": 1.0}), ("sde_dpm_solver_pp", {})])
def test_stochastic_solvers_are_batch_invariant_and_keyed_per_sample(method, options):
    """Sample b's noise comes from fold_in(key, index_offset + b): the first two of a batch of 5 equal a
    batch of 2 (to the float rounding that XLA's batch-size-dependent code allows, as test_ode.py states),
    a chunk at index_offset equals that slice, and another key changes every sample."""
    state, model_fn = _setup(12, schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000))
    f = jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method",))
    five = f(state, model_fn, jax.random.key(2), (5, 2), method=method, **options)
    two = f(state, model_fn, jax.random.key(2), (2, 2), method=method, **options)
    np.testing.assert_allclose(two, five[:2], rtol=2e-5, atol=2e-5)
    chunk = f(state, model_fn, jax.random.key(2), (3, 2), method=method, index_offset=2, **options)
    np.testing.assert_allclose(chunk, five[2:], rtol=2e-5, atol=2e-5)
    other = f(state, model_fn, jax.random.key(3), (5, 2), method=method, **options)
    assert np.all(np.abs(np.asarray(other) - np.asarray(five)) > 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("method, options, steps", [("ddim", {"eta": 1.0}, 200), ("sde_dpm_solver_pp", {}, 100),
                                                    ("unipc", {}, 25), ("dpm_solver_pp", {}, 25)])
def test_solvers_draw_the_mixture_on_stable_diffusions_schedule(method, options, steps):
    """Moments and mode weights of the default 2-D mixture within derived tolerances.

    With final_sigmas_type="zero" the solvers end at sigma = 0, so the target is the mixture itself.
    B = 8000 samples: a mode weight w has SE sqrt(w(1-w)/B) <= 0.0056, a mean coordinate SE
    s/sqrt(B) <= 0.0126 (s <= 1.13); allow 5 SE plus a discretisation bias measured below 0.01
    at these step counts (bias measured with 4x the steps: changes < 0.005).
    """
    mixture = sv.mixtures.default_mixture(2)
    state = sv.set_timesteps(
        sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000)), steps)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    batch = 8000
    x = np.asarray(jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method",))(
        state, model_fn, jax.random.key(11), (batch, 2), method=method, **options))
    weights = np.bincount(np.asarray(sv.mixtures.assign_modes(mixture, x)), minlength=5) / batch
    w = np.asarray(mixture.weights)
    assert np.all(np.abs(weights - w) <= 5 * np.sqrt(w * (1 - w) / batch) + 0.01), (weights, w)
    exact = np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(12), 200_000))
    assert np.all(np.abs(x.mean(0) - exact.mean(0)) <= 5 * exact.std(0) / np.sqrt(batch) + 0.01)
    # std: SE of a sample std ~ s / sqrt(2B) for a near-normal marginal; bimodal marginals ~2x that
    assert np.all(np.abs(x.std(0) - exact.std(0)) <= 10 * exact.std(0) / np.sqrt(2 * batch) + 0.01)


def test_sample_x_init_replaces_the_prior_draw_only():
    state, model_fn = _setup(6, spacing=None)
    key = jax.random.key(4)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(3, dtype=jnp.uint32))
    x_T = sv.loops.per_sample_normal(keys, 0, (2,), jnp.float32)
    np.testing.assert_array_equal(sv.sample(state, model_fn, key, (3, 2), x_init=x_T),
                                  sv.sample(state, model_fn, key, (3, 2)))
    shifted = sv.sample(state, model_fn, key, (3, 2), x_init=x_T + 1.0)
    assert not np.allclose(shifted, sv.sample(state, model_fn, key, (3, 2)))
    with pytest.raises(ValueError, match=r"x_init must have shape \(3, 2\)"):
        sv.sample(state, model_fn, key, (3, 2), x_init=x_T[:2])


def test_dynamic_threshold_matches_its_definition():
    x0 = jax.random.normal(jax.random.key(0), (4, 3, 5)) * jnp.array([0.2, 1.0, 3.0, 10.0])[:, None, None]
    out = solvers.dynamic_threshold(x0, 0.9, 2.5)
    flat = np.abs(np.asarray(x0).reshape(4, -1))
    s = np.clip(np.quantile(flat, 0.9, axis=1), 1.0, 2.5)[:, None, None]
    np.testing.assert_allclose(out, np.clip(np.asarray(x0), -s, s) / s, rtol=1e-6)


def test_step_orders_reproduce_diffusers_schedules():
    # DPMSolverMultistep: warm-up, then first order at the last step to sigma = 0 and second order before
    # it below 15 steps (diffusers' lower_order_final); at 15 steps and more only the last step is lowered.
    assert solvers.step_orders(5, 3, True, True, "dpmsolver").tolist() == [1, 2, 3, 2, 1]
    assert solvers.step_orders(16, 3, True, True, "dpmsolver").tolist() == [1, 2] + [3] * 13 + [1]
    assert solvers.step_orders(16, 3, True, False, "dpmsolver").tolist() == [1, 2] + [3] * 14
    assert solvers.step_orders(5, 3, False, False, "dpmsolver").tolist() == [1, 2, 3, 3, 3]
    # UniPCMultistep: min(order, steps left) at every length
    assert solvers.step_orders(6, 3, True, True, "unipc").tolist() == [1, 2, 3, 3, 2, 1]


@pytest.mark.parametrize("kwargs, err, match", [
    ({"method": "ddim", "eta": -0.5}, ValueError, "eta must be >= 0"),
    ({"method": "dpm_solver_pp", "eta": 1.0}, ValueError, "eta is DDIM's option"),
    ({"method": "dpm_solver_pp", "order": 4}, ValueError, r"order must be in \[1, 3\]"),
    ({"method": "sde_dpm_solver_pp", "order": 3}, ValueError, r"order must be in \[1, 2\]"),
    ({"method": "unipc", "solver_type": "midpoint"}, ValueError, "solver_type must be one of"),
    ({"method": "dpm_solver_pp", "final_sigmas_type": "sigma_min"}, ValueError, "final_sigmas_type must be one of"),
    ({"method": "dpm_solver", "final_sigmas_type": "zero"}, ValueError, "needs a grid solver"),
    ({"method": "dpm_solver_pp", "third_order": "half"}, ValueError, "third_order must be"),
    ({"method": "unipc", "thresholding": True, "dynamic_thresholding_ratio": 1.5}, ValueError,
     r"dynamic_thresholding_ratio must be in \(0, 1\]"),
    ({"method": "unipc", "lower_order_final": 1}, TypeError, "lower_order_final must be a bool"),
    ({"method": "dpm_solver_pp", "predict_x0": False}, ValueError, "UniPC's option"),
    ({"method": "unipc", "predict_x0": False, "thresholding": True}, ValueError, "needs predict_x0=True"),
])
def test_bad_solver_options_are_named(kwargs, err, match):
    state, model_fn = _setup(5)
    with pytest.raises(err, match=match):
        sv.sample_ode(state, model_fn, jax.random.key(0), (2, 2), **kwargs)


def test_invert_ode_refuses_what_it_cannot_invert():
    state, model_fn = _setup(5)
    x0 = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        sv.invert_ode(state, model_fn, x0, method="adaptive")
    with pytest.raises(ValueError, match="method must be one of"):
        sv.invert_ode(state, model_fn, x0, method="sde_dpm_solver_pp")
    with pytest.raises(ValueError, match="set_timesteps"):
        sv.invert_ode(sv.create_state(), model_fn, x0)
