"""Arguments that pass a plain range check but break the arithmetic: each ends in a clear error or stays finite.

The float-range bounds are those of JAX's default float dtype (float32 here), so
each refused value is also shown to work under x64 where float64 holds it, and
each bound is shown to be usable: the value at the bound gives finite results.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import mixtures, schedules

KEY = jax.random.key(0)
F32_TINY = float(jnp.finfo(jnp.float32).tiny)


def _state(steps=3, **kwargs):
    return sv.set_timesteps(sv.create_state(**kwargs), steps)


# ---------------------------------------------------------------- values that underflow or overflow in float32


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sv.create_state(sampling_eps=1e-40), r"sampling_eps must be in \[4\.702e-37"),
        (lambda: sv.set_timesteps(sv.create_state(), timesteps=[1.0, 0.5, 1e-38]), r"timesteps's last time must be in"),
        (lambda: sv.step_pred(_state(), jnp.ones((1, 2)), jnp.ones((1, 2)), 1e-40, KEY), r"^t must be in \[4\.702e-37"),
        (lambda: sv.add_noise(sv.create_state(), jnp.ones((1, 2)), jnp.ones((1, 2)), 1e-40), r"^t must be 0 or in"),
        (lambda: sv.model_time(sv.create_state(), 1e-40), r"^t must be in \[4\.702e-37"),
        (lambda: sv.dsm_loss(sv.create_state(), lambda x, t: x, jnp.ones((1, 2)), KEY, eps=1e-40), r"^eps must be in"),
        (lambda: sv.create_state(beta_max=1e39), r"beta_max must be <= sqrt\(finfo\(float32\)\.max\)"),
        (lambda: schedules.linear(beta_max=1e39), r"beta_max must be <= sqrt"),
        (lambda: schedules.discrete(betas=np.full(4, 1e-300)), r"betas too close to 0 for float32"),
        (lambda: schedules.from_diffusers(trained_betas=[1e-300] * 4, num_train_timesteps=4), r"^trained_betas: betas too close"),
    ],
    ids=["sampling_eps", "custom_grid", "step_pred_t", "add_noise_t", "model_time_t", "dsm_eps",
         "create_state_beta_max", "linear_beta_max", "discrete_betas", "trained_betas"],
)
def test_float32_underflow_and_overflow_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_float_bounds_are_usable_and_follow_the_dtype():
    # At the smallest time (4 tiny / beta_min) sigma^2 = 4 tiny exactly in float32 arithmetic: a
    # normal number, so the score and log-SNR are finite and a step from there is finite.
    floor = schedules.linear().smallest_time(jnp.float32)
    assert floor == pytest.approx(4 * F32_TINY / 0.1)
    state = _state(sampling_eps=floor)
    sch = state.schedule.cast(jnp.float32)
    t = jnp.asarray(floor, jnp.float32)
    assert float(sch.sigma(t)) > 0 and math.isfinite(float(sch.log_snr(t)))
    out = sv.step_pred(state, jnp.ones((1, 2)), jnp.ones((1, 2)), floor, KEY)
    assert np.all(np.isfinite(np.asarray(out.prev_sample)))
    # The largest beta_max: every formula of the schedule, the log-SNR inverse included, stays finite.
    big = schedules.linear(0.1, 1.8e19).cast(jnp.float32)
    ts = jnp.asarray([1e-3, 0.5, 1.0], jnp.float32)
    for value in (big.log_snr(ts), big.t_from_log_snr(big.log_snr(ts)), big.beta(ts), big.sigma(ts)):
        assert np.all(np.isfinite(np.asarray(value)))
    # float64 represents what float32 cannot: the same values are accepted under x64.
    with jax.enable_x64(True):
        assert sv.create_state(sampling_eps=1e-40).sampling_eps == 1e-40
        schedules.discrete(betas=np.full(4, 1e-300))


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sv.set_timesteps(sv.create_state(), 10**12), r"num_inference_steps must be in \[1, \d+\]"),
        (lambda: sv.create_state(num_train_timesteps=10**12), r"num_train_timesteps must be in \[1, 16777216\]"),
        (lambda: schedules.from_diffusers(num_train_timesteps=10**12), r"num_train_timesteps must be in \[1, 16777216\]"),
    ],
    ids=["set_timesteps", "create_state", "from_diffusers"],
)
def test_sizes_beyond_the_stated_maximum_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_max_inference_steps_counts_the_floats_between_the_grid_ends():
    state = sv.create_state()
    # float32 bit patterns of 1.0 and of 1e-3 rounded up: the count is their difference plus one.
    lo = np.float32(1e-3)
    lo = lo if float(lo) >= 1e-3 else np.nextafter(lo, np.float32(1))
    expected = int(np.float32(1.0).view(np.int32)) - int(lo.view(np.int32)) + 1
    assert sv.grids.max_inference_steps(state) == expected


# ---------------------------------------------------------------- state.replace(timesteps=...)


@pytest.mark.parametrize("grid", [[0.1, 0.5, 1.0], [1.0, 0.5, 0.0]], ids=["increasing", "reaches_zero"])
def test_replace_validates_a_concrete_grid(grid):
    state = _state()
    with pytest.raises(ValueError, match=r"^timesteps must"):
        state.replace(timesteps=jnp.asarray(grid, jnp.float32))


# ---------------------------------------------------------------- add_noise's host t


@pytest.mark.parametrize("t", [2.0, -0.5, float("nan")])
def test_add_noise_refuses_a_host_t_outside_its_range(t):
    with pytest.raises(ValueError, match=r"^t must be 0 or in \[4\.702e-37, t_max = 1\.0\]"):
        sv.add_noise(sv.create_state(), jnp.ones((1, 2)), jnp.ones((1, 2)), t)


def test_add_noise_keeps_t_zero():
    x0 = jnp.asarray([[0.5, -1.0]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(sv.add_noise(sv.create_state(), x0, jnp.ones((1, 2)), 0.0)), np.asarray(x0))


# ---------------------------------------------------------------- classifier guidance, likelihood prior


def test_classifier_guidance_requires_one_log_prob_per_sample():
    state = sv.create_state()
    guided = sv.classifier_guidance(state, lambda x, t: x, lambda x, t, c: -jnp.square(x), 1.0)
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"log_prob_fn must return .* shape \(batch,\) = \(2,\); got float32 of shape \(2, 3\)"):
        jax.eval_shape(guided, x, jnp.full((2,), 0.5, jnp.float32), jnp.zeros((2,), jnp.int32))


def test_log_likelihood_requires_a_scalar_prior_per_sample():
    state = sv.create_state()
    with pytest.raises(ValueError, match=r"prior_logp must return one float per sample.*shape \(2,\)"):
        sv.log_likelihood(state, lambda x, t: x, jnp.ones((1, 2)), None, trace="exact", max_steps=8,
                          prior_logp=lambda z: -0.5 * jnp.square(z))


# ---------------------------------------------------------------- the cosine schedule's offset


def test_cosine_offset_is_bounded_and_its_default_grid_works_up_to_the_bound():
    with pytest.raises(ValueError, match=r"^s must be in \[0, 248\.75\]"):
        schedules.cosine(1000.0)
    for s in (100.0, schedules.COSINE_S_MAX):
        state = sv.set_timesteps(sv.create_state(schedule=schedules.cosine(s)), 4)
        grid = np.asarray(state.timesteps, np.float64)
        assert grid[0] <= state.t_max and np.all(np.diff(grid) < 0)


# ---------------------------------------------------------------- CFG-rescale on one-entry samples


def test_cfg_rescale_is_finite_on_one_entry_samples():
    def model(x, t, c):  # a conditional model whose guided output has one entry per sample
        return x * (1.0 + c.astype(x.dtype))[:, None]

    x = jnp.asarray([[0.5], [-2.0]], jnp.float32)
    t = jnp.full((2,), 0.5, jnp.float32)
    cond = jnp.asarray([1, 2], jnp.int32)
    rescaled = sv.cfg(model, 3.0, 0, rescale=0.7)(x, t, cond)
    plain = sv.cfg(model, 3.0, 0)(x, t, cond)
    # A one-entry sample's std is 0: nothing to rescale, so the ratio is 1 and the output is the
    # unrescaled one, up to the rounding of phi * y + (1 - phi) * y (two float32 roundings: 2 ulp).
    assert np.all(np.isfinite(np.asarray(rescaled)))
    np.testing.assert_allclose(np.asarray(rescaled), np.asarray(plain), rtol=2 * float(jnp.finfo(jnp.float32).eps))


# ---------------------------------------------------------------- class labels


def test_class_model_refuses_a_concrete_label_outside_its_classes_and_is_finite_under_trace():
    state = sv.create_state()
    cm = mixtures.default_class_mixture()
    model = mixtures.make_class_model(state, cm)
    x = jnp.asarray([[0.3, -0.2]], jnp.float32)
    t = jnp.full((1,), 0.5, jnp.float32)
    with pytest.raises(ValueError, match=r"cond must hold class indices in 0\.\.2 or NULL_CLASS = -1, got cond\[0\] = 5"):
        model(x, t, jnp.asarray([5], jnp.int32))
    # Under jit the value is unknown at trace time: an out-of-range label gives the unconditional model.
    traced = jax.jit(model)(x, t, jnp.asarray([5], jnp.int32))
    null = model(x, t, jnp.asarray([mixtures.NULL_CLASS], jnp.int32))
    assert np.all(np.isfinite(np.asarray(traced)))
    np.testing.assert_allclose(np.asarray(traced), np.asarray(null), rtol=1e-6)  # jit vs eager: rounding only
    log_prob = jax.jit(mixtures.make_class_log_prob(state, cm))
    assert float(log_prob(x, t, jnp.asarray([5], jnp.int32))[0]) == 0.0


# ---------------------------------------------------------------- inpainting ignores the unknown entries


def test_inpaint_ignores_nan_in_the_unknown_entries():
    state = sv.set_timesteps(sv.create_state(), 3, spacing="time_uniform")
    model = mixtures.make_mixture_eps_fn(state, mixtures.default_mixture())
    mask = jnp.asarray([[1, 0]], jnp.int32)
    y_nan = jnp.asarray([[0.5, jnp.nan]], jnp.float32)
    y_zero = jnp.asarray([[0.5, 0.0]], jnp.float32)
    with_nan = np.asarray(sv.inpaint(state, model, KEY, y_nan, mask))
    assert np.all(np.isfinite(with_nan))
    # the unknown entry is selected out, never multiplied: the result is the same bits as with 0 there
    np.testing.assert_array_equal(with_nan, np.asarray(sv.inpaint(state, model, KEY, y_zero, mask)))


# ---------------------------------------------------------------- a model that branches on a tracer


def test_a_python_branch_on_a_tracer_raises_jaxs_own_error():
    def model(x, t):
        if x.sum() > 0:
            return x
        return -x

    with pytest.raises(jax.errors.TracerBoolConversionError) as info:
        sv.sample(_state(), model, KEY, (1, 2))
    assert any("model_fn(x, t) failed" in note for note in getattr(info.value, "__notes__", []))
