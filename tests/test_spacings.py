"""sdevp_jax.grids: diffusers' label spacings (exact, against goldens) and labels <-> times."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdevp_jax import grids, schedules

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "spacings.npz")


def golden_timesteps():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files if k.startswith("timesteps/")}


CASES = sorted(golden_timesteps())


def test_golden_covers_every_case_of_the_script():
    """5 classes x 3 spacings x 7 step counts x 2 offsets, made by diffusers 0.42.1."""
    assert len(CASES) == 5 * 3 * 7 * 2
    with np.load(GOLDEN) as data:
        assert "diffusers 0.42.1" in list(data["versions"])


@pytest.mark.parametrize("key", CASES)
def test_equals_diffusers_timesteps_exactly(key):
    _, scheduler, spacing, steps, offset = key.split("/")
    expected = golden_timesteps()[key]
    ours = grids.diffusers_label_spacing(1000, int(steps), spacing, int(offset), scheduler=scheduler)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)  # integers (or float32 Euler labels): bit-exact


def test_variants_differ_where_documented():
    """The families really differ (so ``scheduler=`` matters): DPM drops the 0 of an (n+1)-point grid."""
    ddim = grids.diffusers_label_spacing(1000, 10, "linspace", scheduler="DDIMScheduler")
    dpm = grids.diffusers_label_spacing(1000, 10, "linspace", scheduler="DPMSolverMultistepScheduler")
    euler = grids.diffusers_label_spacing(1000, 25, "linspace", scheduler="EulerDiscreteScheduler")  # step 999/24
    assert ddim[-1] == 0 and dpm[-1] > 0 and ddim[0] == dpm[0] == 999
    assert euler.dtype == np.float32 and not np.all(euler == np.round(euler))
    lead = grids.diffusers_label_spacing(1000, 10, "leading", 1)
    np.testing.assert_array_equal(lead, np.arange(9, -1, -1) * 100 + 1)
    np.testing.assert_array_equal(grids.diffusers_label_spacing(1000, 10, "trailing", 1), np.arange(999, 0, -100))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(spacing="karras"), ValueError, "spacing must be one of 'linspace', 'leading', 'trailing'"),
    (dict(num_inference_steps=1001), ValueError, r"num_inference_steps must be in \[1, num_train_timesteps\]"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps must be an int >= 1"),
    (dict(num_inference_steps=10.0), TypeError, "num_inference_steps must be an int"),
    (dict(num_train_timesteps="1000"), TypeError, "num_train_timesteps must be an int"),
    (dict(steps_offset=-1), ValueError, "steps_offset must be an int >= 0"),
    (dict(steps_offset=True), TypeError, "steps_offset must be an int >= 0"),
    (dict(scheduler="PNDMScheduler"), ValueError, "scheduler must be one of"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(num_train_timesteps=1000, num_inference_steps=10, spacing="leading", steps_offset=0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        grids.diffusers_label_spacing(**args)


def test_labels_to_times_matches_the_discrete_schedule():
    """Label n sits at t = (n + 1)/N, where schedules.discrete has alpha(t_n)^2 = alphas_cumprod[n]."""
    n_train = 1000
    labels = grids.diffusers_label_spacing(n_train, 25, "leading", 1)
    t = grids.labels_to_times(labels, n_train)
    np.testing.assert_array_equal(t, (labels + 1.0) / n_train)
    sched = schedules.from_diffusers("scaled_linear", 0.00085, 0.012, n_train)
    # log alpha at a knot: k = tN is an integer up to rounding of (n + 1)/N * N, so frac is
    # 0 or 1 - ~1e-16 and the interpolation error is below |increment| * 2.2e-16 + rounding: 1e-13.
    with jax.enable_x64(True):
        log_alpha = np.asarray(sched.log_alpha(jnp.asarray(t, jnp.float64)))
    np.testing.assert_allclose(log_alpha, sched.knots[labels + 1], rtol=0, atol=1e-13)


def test_times_to_labels_inverts_with_float_labels():
    n_train = 1000
    labels = np.array([0.0, 0.5, 17.25, 998.0, 999.0])
    back = grids.times_to_labels(grids.labels_to_times(labels, n_train), n_train)
    # (n + 1)/N * N - 1: two roundings of relative 2^-53 on a value <= 1000 -> |error| <= 1000 * 2.3e-16.
    np.testing.assert_allclose(back, labels, rtol=0, atol=1000 * 2.3e-16)
    euler = grids.diffusers_label_spacing(n_train, 7, "linspace", scheduler="EulerDiscreteScheduler")
    np.testing.assert_allclose(grids.times_to_labels(grids.labels_to_times(euler, n_train), n_train), euler,
                               rtol=0, atol=1000 * 2.3e-16)


@pytest.mark.parametrize("fn, value, match", [
    (grids.labels_to_times, [-1.0], r"labels must lie in \[0, num_train_timesteps - 1\] = \[0, 999\]"),
    (grids.labels_to_times, [999.5], r"labels\[0\] = 999.5"),
    (grids.labels_to_times, [np.nan], "labels must lie in"),
    (grids.times_to_labels, [0.0], r"times must lie in \[1/num_train_timesteps, 1\]"),
    (grids.times_to_labels, [1.0001], "times must lie in"),
])
def test_conversion_ranges(fn, value, match):
    with pytest.raises(ValueError, match=match):
        fn(np.asarray(value), 1000)
    with pytest.raises(TypeError, match="must be an array of real numbers"):
        fn(np.array([True]), 1000)
