"""sv.set_timesteps' grids on every schedule, and sv.model_time / sv.time_from_model_time.

Each grid is checked against the definition of its spacing, in float32 and in float64
(the grid's dtype is JAX's default float). Tolerances count roundings in units of the
grid dtype's unit roundoff ``u`` (2^-24 or 2^-53).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import grids, schedules

N_TRAIN = 1000
SCHEDULES = {
    "linear": lambda: schedules.linear(),
    "cosine": lambda: schedules.cosine(),
    "ddpm_linear": lambda: schedules.from_diffusers("linear", 0.0001, 0.02, N_TRAIN),
    "sd_scaled_linear": lambda: schedules.from_diffusers("scaled_linear", 0.00085, 0.012, N_TRAIN),
    "iddpm_squaredcos_cap_v2": lambda: schedules.from_diffusers("squaredcos_cap_v2", num_train_timesteps=N_TRAIN),
}
DISCRETE = [name for name in SCHEDULES if name not in ("linear", "cosine")]
DTYPES = [np.float32, np.float64]


def x64_if(dtype):
    """float64 grids need jax_enable_x64 (set_timesteps builds them in JAX's default float)."""
    return jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()


def unit_roundoff(dtype):
    return float(np.finfo(dtype).eps) / 2


def state_of(name, **kwargs):
    return sv.create_state(schedule=SCHEDULES[name](), **kwargs)


def lam64(schedule, t):
    """log-SNR of the grid's own (exactly representable) times, evaluated in float64."""
    with jax.enable_x64(True):
        return np.asarray(schedule.log_snr(jnp.asarray(np.asarray(t, np.float64))))


def lam_slope64(schedule, t):
    r"""|d lambda/dt| = beta/(2 sigma^2) (from lambda' = d log alpha/dt - (sigma^2)'/(2 sigma^2), float64)."""
    with jax.enable_x64(True):
        t = jnp.asarray(np.asarray(t, np.float64))
        return np.asarray(schedule.beta(t) / (2.0 * jnp.square(schedule.sigma(t))))


# ---------------------------------------------------------------- continuous grids: ends and order


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_continuous_grids_run_from_t_max_to_sampling_eps(name, dtype):
    for spacing in grids.CONTINUOUS_SPACINGS:
        with x64_if(dtype):
            state = sv.set_timesteps(state_of(name), 12, spacing=spacing)
            grid = np.asarray(state.timesteps)
            one = np.asarray(sv.set_timesteps(state, 1, spacing=spacing).timesteps)
        assert state.spacing == spacing and grid.dtype == dtype and grid.shape == (12,)
        assert np.all(np.diff(grid) < 0), spacing
        # The end points bitwise: t_max (1, or the cosine schedule's ~0.998) and sampling_eps, rounded once.
        assert grid[0] == np.asarray(state.schedule.t_max, dtype), spacing
        assert grid[-1] == np.asarray(state.sampling_eps, dtype), spacing
        # One point: [t_max], as linspace(t_max, eps, 1) is.
        np.testing.assert_array_equal(one, np.asarray([state.schedule.t_max], dtype), err_msg=spacing)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_logsnr_grid_is_uniform_in_lambda(name, dtype):
    r"""lambda(t_i) = linspace(lambda(t_max), lambda(eps), N)_i to rounding.

    The grid maps lambda_i, each within a few u (|lambda_i| + Lambda) of its exact value
    (the end points' log_snr, then linspace; Lambda = max |lambda| of the ends), through
    t_from_log_snr, whose result is within a few u of the exact t(lambda_i) relative to t,
    and rounds it to the dtype (u t). Through the slope |lambda'(t)| = beta/(2 sigma^2),
    an error dt in t is an error |lambda'| dt in lambda, so in lambda the grid is exact to
    K u (Lambda + t |lambda'(t)|); K = 16 allows 4 roundings of each kind with margin.
    """
    with x64_if(dtype):
        state = sv.set_timesteps(state_of(name), 40, spacing="logsnr")
        grid = np.asarray(state.timesteps)
    lam = lam64(state.schedule, grid)
    target = np.linspace(lam[0], lam[-1], grid.shape[0])
    scale = np.max(np.abs(lam[[0, -1]])) + grid * lam_slope64(state.schedule, grid)
    np.testing.assert_array_less(np.abs(lam - target), 16 * unit_roundoff(dtype) * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_karras_grid_is_uniform_in_the_seventh_root_of_sigma_over_alpha(name, dtype):
    r"""(sigma/alpha)^(1/7) = exp(-lambda/7) is linspace between its end values (Karras et al. 2022, eq. 5).

    As for the logsnr grid, with the root's own roundings (exp, linspace, log: relative
    u each in the root r, i.e. 7 u in lambda = -7 log r): tolerance in lambda
    K u (Lambda + 7 + t |lambda'(t)|), K = 16. The grid is not the logsnr grid (which is
    uniform in lambda itself): an interior point differs from it by far more than that.
    """
    n = 40
    with x64_if(dtype):
        state = sv.set_timesteps(state_of(name), n, spacing="karras")
        grid = np.asarray(state.timesteps)
        logsnr = np.asarray(sv.set_timesteps(state, n, spacing="logsnr").timesteps)
    lam = lam64(state.schedule, grid)
    root = np.linspace(np.exp(-lam[0] / 7.0), np.exp(-lam[-1] / 7.0), n)
    target = -7.0 * np.log(root)
    scale = np.max(np.abs(lam[[0, -1]])) + 7.0 + grid * lam_slope64(state.schedule, grid)
    tol = 16 * unit_roundoff(dtype) * scale
    np.testing.assert_array_less(np.abs(lam - target), tol)
    lam_uniform = np.linspace(lam[0], lam[-1], n)
    assert np.max(np.abs(lam - lam_uniform)) > 1e3 * np.max(tol)
    assert not np.array_equal(grid, logsnr)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("spacing, transform", [("time_uniform", lambda t: t), ("time_quadratic", np.sqrt)])
def test_time_grids_are_uniform_in_t_or_sqrt_t(name, spacing, transform, dtype):
    """linspace in t, or in sqrt(t): values <= 1, each within a few roundings (linspace, sqrt, square,
    the cast of the ends): 8 u absolute in t or sqrt(t)."""
    with x64_if(dtype):
        grid = np.asarray(sv.set_timesteps(state_of(name), 33, spacing=spacing).timesteps)
    values = transform(grid.astype(np.float64))
    target = np.linspace(values[0], values[-1], grid.shape[0])
    np.testing.assert_allclose(values, target, rtol=0, atol=8 * unit_roundoff(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_grid_is_diffusers_linspace_and_the_linear_default(dtype):
    with x64_if(dtype):
        base = sv.create_state()
        default = sv.set_timesteps(base, 25)
        reference = sv.set_timesteps(base, 25, spacing="reference")
        assert default.spacing == reference.spacing == "reference" and default.uses_reference_step
        np.testing.assert_array_equal(default.timesteps, reference.timesteps)
        np.testing.assert_array_equal(reference.timesteps, jnp.linspace(1.0, base.sampling_eps, 25))  # bitwise
        assert reference.timesteps.dtype == dtype


# ---------------------------------------------------------------- label grids


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DISCRETE)
def test_label_grids_are_diffusers_labels(name, dtype):
    """model_time of the grid is diffusers' labels exactly, integers in the grid's dtype (DDIMScheduler's family by
    default): t = (n + 1)/N rounded to the dtype gives t N - 1 within its rounding of n, and model_time returns
    the nearest integer there, so a model that casts its time to int gets the right label."""
    n = 20
    for spacing in grids.LABEL_SPACINGS:
        for steps_offset in (0, 1):
            with x64_if(dtype):
                state = sv.set_timesteps(state_of(name), n, spacing=spacing, steps_offset=steps_offset)
                labels = np.asarray(sv.model_time(state, state.timesteps))
            expected = grids.diffusers_label_spacing(N_TRAIN, n, spacing, steps_offset)
            assert state.spacing == spacing and state.timesteps.dtype == dtype and labels.dtype == dtype
            np.testing.assert_array_equal(labels, expected)
            np.testing.assert_array_equal(labels.astype(np.int64), expected)
            assert np.all(np.diff(np.asarray(state.timesteps)) < 0)


def test_label_grid_follows_the_config_class_and_steps_offset():
    """A state carrying a diffusers config: its spacing and steps_offset are the defaults, and its
    class picks the family (DPMSolverMultistep's drops the last point of an (n + 1)-point grid)."""
    cfg = sv.config.discrete_config({"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "scaled_linear",
                                     "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "leading",
                                     "steps_offset": 1})
    state = sv.create_state(schedule=cfg.schedule, diffusers_config=cfg)
    assert grids.default_spacing(state) == "leading"
    grid_state = sv.set_timesteps(state, 10)
    labels = np.rint(np.asarray(sv.model_time(grid_state, grid_state.timesteps))).astype(np.int64)
    expected = grids.diffusers_label_spacing(N_TRAIN, 10, "leading", 1, scheduler="DPMSolverMultistepScheduler")
    np.testing.assert_array_equal(labels, expected)
    assert not np.array_equal(expected, grids.diffusers_label_spacing(N_TRAIN, 10, "leading", 1))
    # steps_offset= overrides the config's
    again = sv.set_timesteps(state, 10, steps_offset=0)
    np.testing.assert_array_equal(np.rint(np.asarray(sv.model_time(again, again.timesteps))).astype(np.int64),
                                  expected - 1)


def test_default_spacing_as_documented():
    assert grids.default_spacing(state_of("linear")) == "reference"
    for name in ["cosine"] + DISCRETE:
        state = state_of(name)
        assert grids.default_spacing(state) == "logsnr"
        assert sv.set_timesteps(state, 5).spacing == "logsnr"
    cfg = sv.config.discrete_config({"_class_name": "DDIMScheduler", "clip_sample": False,
                                     "timestep_spacing": "trailing"})
    assert grids.default_spacing(sv.create_state(schedule=cfg.schedule, diffusers_config=cfg)) == "trailing"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["linear", "cosine", "sd_scaled_linear"])
def test_custom_timesteps(name, dtype):
    times = np.array([0.9, 0.5, 0.25, 0.01])
    with x64_if(dtype):
        state = sv.set_timesteps(state_of(name), timesteps=times)
        same = sv.set_timesteps(state_of(name), 4, timesteps=times)
    assert state.spacing == "custom" and not state.uses_reference_step and state.num_inference_steps == 4
    np.testing.assert_array_equal(state.timesteps, times.astype(dtype))
    np.testing.assert_array_equal(same.timesteps, state.timesteps)


# ---------------------------------------------------------------- model_time


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_model_time_is_the_identity_on_continuous_schedules(name, dtype):
    with x64_if(dtype):
        state = sv.set_timesteps(state_of(name), 17, spacing="logsnr")
        t = state.timesteps
        for f in (sv.model_time, sv.time_from_model_time):
            out = f(state, t)
            assert out.dtype == t.dtype
            np.testing.assert_array_equal(out, t)  # bitwise: the same values, no arithmetic
        assert float(sv.model_time(state, 0.5)) == 0.5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DISCRETE)
def test_model_time_is_the_training_label_on_discrete_schedules(name, dtype):
    u = unit_roundoff(dtype)
    rng = np.random.default_rng(0)
    with x64_if(dtype):
        state = state_of(name)
        t = jnp.asarray(rng.uniform(1.0 / N_TRAIN, 1.0, 64), dtype)
        labels = sv.model_time(state, t)
        assert labels.dtype == dtype
        np.testing.assert_array_equal(labels, t * N_TRAIN - 1.0)  # the definition, in t's dtype (none of these
        # 64 times is within the rounding of a training time, where the label is the integer)
        back = sv.time_from_model_time(state, labels)
        np.testing.assert_array_equal(back, (labels + 1.0) / N_TRAIN)
        # t -> label -> t: t N - 1 and (n + 1) round at values <= N (2 N u absolute in the label,
        # 2 u in t after the division), the division once more (u t): |error| <= 4 u.
        np.testing.assert_allclose(back, t, rtol=0, atol=4 * u)
        # Integer labels: on the training grid, and as ints.
        ints = np.arange(N_TRAIN)
        on_grid = sv.time_from_model_time(state, ints)
        assert on_grid.dtype == jnp.zeros(()).dtype
        np.testing.assert_allclose(on_grid, (ints + 1.0) / N_TRAIN, rtol=2 * u, atol=0)
        # label (n + 1)/N N - 1: within the rounding of the time, so exactly the integer n
        np.testing.assert_array_equal(sv.model_time(state, on_grid), ints)
        # off the training grid by more than that rounding: the fractional label itself
        half = jnp.asarray((ints[:-1] + 1.5) / N_TRAIN, dtype)
        np.testing.assert_array_equal(sv.model_time(state, half), half * N_TRAIN - 1.0)
        assert not np.any(np.asarray(sv.model_time(state, half)) == np.round(np.asarray(sv.model_time(state, half))))
        assert float(sv.model_time(state, 1.0)) == N_TRAIN - 1
        assert float(sv.time_from_model_time(state, 0)) == np.asarray(1.0 / N_TRAIN, dtype)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_dpm_solver_steps_through_set_timesteps_logsnr_grid(name):
    # one log-SNR grid builder: on a default (not asked-for) grid dpm_solver builds its own log-SNR grid
    # between the state's end points, which is set_timesteps' "logsnr" grid between the same end points
    from sdevp_jax.solvers.dpm import DPMSolver

    state = state_of(name)
    logsnr = sv.set_timesteps(state, 12, spacing="logsnr")
    default = sv.set_timesteps(state, 12).replace(timesteps=logsnr.timesteps, spacing_given=False)
    if default.uses_reference_step:  # the reference grid: its own end points, 1 and sampling_eps
        default = sv.set_timesteps(state, 12)
    np.testing.assert_array_equal(np.asarray(DPMSolver().times(default, jnp.float32)), np.asarray(logsnr.timesteps))


# ------------------------------------------------------------------------------- Align Your Steps

SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}
#: The published 10-step timestep tables (Sabour et al. 2024), the same schedules as AYS_SIGMAS in labels.
AYS_TIMESTEPS = {"sd15": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24],
                 "sdxl": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13]}


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_align_your_steps_at_10_steps_is_the_published_table(model):
    """The published noise levels, mapped to Stable Diffusion's labels, agree with the published timestep
    tables: within 0.6 labels (the tables' 3-decimal rounding of sigma/alpha and integer labels)."""
    sd = sv.load_config({"_class_name": "DDIMScheduler", **SD_SCHEDULE})
    state = sv.set_timesteps(sd, timesteps=sv.grids.align_your_steps(sd, 10, model))
    labels = np.asarray(sv.model_time(state, state.timesteps), np.float64)
    np.testing.assert_allclose(labels, AYS_TIMESTEPS[model], atol=0.6)
    sigma_over_alpha = np.exp(-np.asarray(state.schedule.log_snr(state.timesteps), np.float64))
    np.testing.assert_allclose(sigma_over_alpha[1:], sv.grids.AYS_SIGMAS[model][1:], rtol=1e-5)


def test_align_your_steps_interpolates_log_sigma_between_the_published_levels():
    sd = sv.load_config({"_class_name": "DDIMScheduler", **SD_SCHEDULE})
    ten, nineteen = sv.grids.align_your_steps(sd, 10), sv.grids.align_your_steps(sd, 19)
    # 19 points of the index range hold the 10 published ones at every other point
    np.testing.assert_allclose(nineteen[::2], ten, rtol=1e-6)
    # in between, log(sigma/alpha) is the mean of its neighbours' (linear interpolation)
    lam = np.asarray(sd.schedule.log_snr(nineteen), np.float64)
    np.testing.assert_allclose(lam[1:-1:2], (lam[:-2:2] + lam[2::2]) / 2, rtol=1e-5)
    for n in (2, 3, 7, 25, 60):
        t = sv.grids.align_your_steps(sd, n, "sdxl")
        assert t.shape == (n,) and np.all(np.diff(t) < 0) and t[-1] > 0 and t[0] == sd.schedule.t_max


@pytest.mark.parametrize("kwargs, match", [
    ({"num_inference_steps": 1}, "num_inference_steps must be an int >= 2"),
    ({"num_inference_steps": 10, "model": "sd3"}, "model must be one of 'sd15', 'sdxl'"),
])
def test_align_your_steps_refuses_bad_arguments(kwargs, match):
    sd = sv.load_config({"_class_name": "DDIMScheduler", **SD_SCHEDULE})
    with pytest.raises(ValueError, match=match):
        sv.grids.align_your_steps(sd, **kwargs)


def test_align_your_steps_refuses_a_schedule_that_does_not_reach_its_noise():
    short = sv.load_config({"_class_name": "DDIMScheduler", "beta_start": 1e-4, "beta_end": 0.002,
                            "clip_sample": False})
    with pytest.raises(ValueError, match=r"starts at sigma/alpha = 14.615, beyond this schedule's largest"):
        sv.grids.align_your_steps(short, 10)
