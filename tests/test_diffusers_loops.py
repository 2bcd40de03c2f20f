r"""The full-loop tests of diffusers' own scheduler test files, run through sdevp_jax.

diffusers' ``tests/schedulers/test_scheduler_*.py`` assert ``sum(|x|)`` and ``mean(|x|)`` of a loop of each scheduler
on SchedulerCommonTest's dummy model ``sample * t / (t + 1)`` (``t`` the scheduler's timestep label) from its
``dummy_sample_deter`` (an ``arange`` ramp, (4, 3, 8, 8); (4, 3, 8) in UniPC's 1D class). The golden
(tests/golden/diffusers_loops.npz, by tests/golden/make_diffusers_loops_golden.py) holds every such test for the
schedulers sdevp_jax serves, with their numbers (cited by file and test), diffusers 0.42.1's float32 run (which
reproduces each of them) and its float64 run, and the generator's normal draws of the stochastic loops. Here
sdevp_jax runs each loop from the same config (``sv.load_config``), with the dummy model as a ``model_fn`` of the
model label sdevp_jax gives it (:func:`sdevp_jax.model_time`: diffusers' timestep at each grid point), from the same
start and with the same draws (``noise=``):

* float64: within 1e-10 relative (max-norm) of diffusers' float64 run, every case;
* float32: ``sum(|x|)`` and ``mean(|x|)`` within the tolerances their test asserts (1e-2 and 1e-3, or the test's own)
  of the numbers in their test file; where diffusers' own float32 run is farther than that from its float64 run
  (DDPM's ``test_full_loop_with_noise``, whose ``1 - alphas_cumprod[1]/alphas_cumprod[0]`` cancels, and seven more:
  :data:`FLOAT32_OFF`), of the float64 value (:func:`float32_targets`).

The loops the tests write that sdevp_jax does not run as written, each tested below:

* the sigma-space ``*Discrete`` schedulers' tests rebind ``sample`` to ``scale_model_input``'s output before
  ``step``, so each step starts from :math:`x/\sqrt{1 + \sigma^2}`: not a sampling loop (the v-prediction Euler
  test ends at :math:`|x| \sim 10^{-13}`). Their expected numbers are of that recursion. sdevp_jax is tested on the
  same configs, start and draws in the loop diffusers' pipelines run (``step`` on the unscaled sample), which the
  golden runs too (``<case>/pipeline``);
* PNDM with ``prediction_type="v_prediction"``: refused by name (:func:`test_refused_by_name`);
* DPMSolverSinglestep and LMSDiscrete started inside the grid (``test_full_loop_with_noise``,
  ``test_full_uneven_loop``): diffusers keeps the whole grid's order schedule (the single-step groups, LMS' order
  ``min(step_index + 1, 4)`` with the Lagrange weights of grid points never visited), which a grid that starts there
  does not carry (:func:`test_a_grid_that_starts_inside_runs_its_own_order_schedule`); ``sample_ode``'s
  ``begin_index`` runs them on the whole grid from that point, as diffusers does (in the parity tests above);
* DPMSolverSDE (torchsde's Brownian tree noise), LCM and TCD: not served, refused by class name.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "golden", "diffusers_loops.npz"))
CASES = [str(c) for c in GOLDEN["cases"]]
RTOL64 = 1e-10

REFUSED = {"PNDMScheduler/test_full_loop_with_v_prediction": "combines the model's raw v outputs"}
#: the sigma grids of the sigma-space classes: their model labels are diffusers' fractional labels, which diffusers
#: casts to float32 (sdevp_jax's default, tested against tests/golden/classical.npz) and the golden's float64 run
#: keeps in float64 (its _Numpy64): those runs take the labels unrounded
EXACT_LABELS = {c for c in CASES if "karras" in c and "Discrete" in c.split("/")[0]}
INSIDE = ["DPMSolverSinglestepScheduler/test_full_loop_with_noise", "DPMSolverSinglestepScheduler/test_full_uneven_loop",
          "LMSDiscreteScheduler/test_full_loop_with_noise"]
RUN = [c for c in CASES if c not in REFUSED]
#: the fast tier: three short loops (a label grid from add_noise, a stochastic multistep loop, a stochastic
#: sigma-space loop from add_noise); the others in the slow tier
FAST = {"DDIMScheduler/test_full_loop_with_noise", "SASolverScheduler/test_full_loop_no_noise",
        "EulerAncestralDiscreteScheduler/test_full_loop_with_noise"}


def _tier(cases):
    return [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in cases]


def is_sigma_space(case: str) -> bool:
    return "Discrete" in case.split("/")[0]


def config(case: str) -> dict:
    return json.loads(str(GOLDEN[f"{case}/config"]))


def dummy_model(x: jax.Array, label: jax.Array) -> jax.Array:
    """SchedulerCommonTest's ``dummy_model``: ``x * t / (t + 1)``, ``t`` diffusers' timestep in the dtype of ``x``
    (sdevp_jax's model time on these label and sigma grids), per sample."""
    t = jnp.broadcast_to(label, x.shape[:1]).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return x * t / (t + 1)


def noise_of(case: str, pipeline: bool):
    if pipeline:
        return GOLDEN[f"{case}/pipeline/noise"] if f"{case}/pipeline/noise" in GOLDEN else None
    return GOLDEN[str(GOLDEN[f"{case}/noise"])] if f"{case}/noise" in GOLDEN else None


def start_sample(case: str) -> np.ndarray:
    r"""The sample entering the loop (float64): diffusers' sigma-space sample :math:`x/\alpha` is sdevp_jax's
    :math:`x` over :math:`\alpha = 1/\sqrt{1 + \sigma^2}` at its start."""
    x_start = GOLDEN[f"{case}/x_start"]
    if is_sigma_space(case):
        return x_start / np.sqrt(1.0 + float(GOLDEN[f"{case}/sigma_start"]) ** 2)
    return x_start


def from_point(state, start: int):
    """The state's grid from its point ``start`` on (and, on a sigma grid, the model labels there)."""
    labels = None if state.model_labels is None else state.model_labels[start:]
    return state.replace(timesteps=state.timesteps[start:], model_labels=labels)


def run(case: str, dtype, pipeline: bool = False) -> np.ndarray:
    """The loop of ``case`` by sdevp_jax in ``dtype``: the last sample (at sigma = 0 or, inverting, the grid's top)."""
    n, mode, start = int(GOLDEN[f"{case}/n"]), str(GOLDEN[f"{case}/mode"]), int(GOLDEN[f"{case}/t_start"])
    x_start = jnp.asarray(start_sample(case)).astype(dtype)
    noise = noise_of(case, pipeline)
    base = sv.load_config(config(case))
    if "Inverse" in case:
        return np.asarray(sv.invert_ode(sv.set_timesteps(base, n), dummy_model, x_start))
    if case.startswith("DDPMScheduler/"):
        # the tests loop over the training labels (or its last ones); diffusers draws no noise at label 0, and the
        # loop's last step (denoise=True) adds none: a zero row for it
        labels = GOLDEN[f"{case}/labels"]
        state = sv.set_timesteps(base, timesteps=sv.time_from_model_time(base, labels))
        z = np.concatenate([noise, np.zeros_like(noise[:1])])
        return np.asarray(sv.sample(state, dummy_model, None, x_start.shape, predictor="ancestral", x_init=x_start,
                                    noise=jnp.asarray(z).astype(dtype), dtype=dtype, denoise=True))
    state = sv.set_timesteps(base, n, label_rounding="exact" if case in EXACT_LABELS else None)
    options = {}
    if case in INSIDE:  # diffusers keeps the whole grid's order schedule: the loop starts inside the grid
        options["begin_index"] = start if mode == "noise" else 3
    elif mode == "noise":  # the tests' add_noise start at grid point t_start (diffusers' timesteps[t_start * order])
        state = from_point(state, start)
    if noise is not None:
        if is_sigma_space(case) or case.startswith("SASolverScheduler/"):
            # one draw per interval; diffusers' draw at its step to sigma = 0 is scaled by 0, and so is SA-Solver's at
            # the zero-length last step of its sigma grids
            noise = noise[: state.timesteps.shape[0] - 1]
        options["noise"] = jnp.asarray(noise).astype(dtype)
    return np.asarray(sv.sample_ode(state, dummy_model, None, x_start.shape, x_init=x_start, dtype=dtype, **options))


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


def test_the_golden_covers_the_full_loop_tests():
    assert "diffusers 0.42.1" in list(GOLDEN["versions"])
    assert {c.split("/")[0] for c in CASES} == {
        "DDIMScheduler", "DDIMInverseScheduler", "DDPMScheduler", "DEISMultistepScheduler",
        "DPMSolverMultistepScheduler", "DPMSolverMultistepInverseScheduler", "DPMSolverSinglestepScheduler",
        "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler",
        "SASolverScheduler", "UniPCMultistepScheduler"}
    assert len(CASES) == 69
    # diffusers' float32 run reproduces the number in their test file, every case
    assert all(bool(GOLDEN[f"{c}/reproduced32"]) for c in CASES)


@pytest.mark.parametrize("case", _tier([c for c in RUN if not is_sigma_space(c)]))
def test_float64_parity(case, x64):
    got = run(case, jnp.float64)
    assert rel_err(got, GOLDEN[f"{case}/final"]) <= RTOL64, rel_err(got, GOLDEN[f"{case}/final"])


@pytest.mark.parametrize("case", _tier([c for c in RUN if is_sigma_space(c)]))
def test_float64_parity_of_the_pipeline_loop(case, x64):
    got = run(case, jnp.float64, pipeline=True)
    ref = GOLDEN[f"{case}/pipeline/final"]
    assert rel_err(got, ref) <= RTOL64, rel_err(got, ref)


def _assert_sums(got: np.ndarray, want_sum: float, sum_tol: float, want_mean: float, mean_tol: float, what: str):
    s, m = float(np.sum(np.abs(got))), float(np.mean(np.abs(got)))
    assert np.isnan(want_sum) or abs(s - want_sum) < sum_tol, f"{what}: sum {s} vs {want_sum} (tolerance {sum_tol})"
    assert abs(m - want_mean) < mean_tol, f"{what}: mean {m} vs {want_mean} (tolerance {mean_tol})"


def float32_targets(case: str, pipeline: bool) -> tuple[float, float, float, float, bool]:
    r"""What a float32 run's ``sum(|x|)``, ``mean(|x|)`` are held to: ``(sum, sum tolerance, mean, mean tolerance,
    exact)``.

    Their test's number (the pipeline loops: diffusers' float32 run of it) within their test's tolerances -- unless
    diffusers' own float32 run is farther than those from the exact value (its float64 run; :data:`FLOAT32_OFF`
    lists them, measured), or float32 cannot resolve their sum's tolerance: then the exact value (``exact`` True).
    A float32 sample's elements are rounded at their last operation alone by up to :math:`u|x|/2` each (u =
    2^-24), which a sum of N elements can add up to :math:`N u \max|x|/2`, and a loop of a few steps to a few times
    that: the sum's tolerance is at least :math:`2 N u \max|x|`, which on the sums of 6e4 to 1e5 of the
    sigma-space tests' ``add_noise`` starts is 0.013 to 0.024, above their 1e-2.
    """
    prefix = f"{case}/pipeline" if pipeline else case
    exact = GOLDEN[f"{prefix}/final"]
    s64, m64 = float(np.sum(np.abs(exact))), float(np.mean(np.abs(exact)))
    want_sum, sum_tol, want_mean, mean_tol = GOLDEN[f"{case}/expected"]
    if pipeline:
        want_sum, want_mean = float(GOLDEN[f"{prefix}/sum32"]), float(GOLDEN[f"{prefix}/mean32"])
    resolvable = 2.0 * exact.size * 2.0**-24 * float(np.max(np.abs(exact)))
    off = (not np.isnan(want_sum) and abs(want_sum - s64) >= sum_tol) or abs(want_mean - m64) >= mean_tol
    if off or (not np.isnan(want_sum) and resolvable > sum_tol):  # (a test that asserts no sum: none here either)
        return (s64 if not np.isnan(want_sum) else np.nan, max(float(sum_tol), resolvable), m64, float(mean_tol),
                True)
    return float(want_sum), float(sum_tol), float(want_mean), float(mean_tol), False


#: where diffusers' float32 run is farther from its float64 run than their test's tolerance (sum, mean; measured by
#: :func:`test_float32_off_cases_as_measured`): there sdevp_jax's float32 is held to the float64 value
FLOAT32_OFF = {
    "DDPMScheduler/test_full_loop_with_noise": (-0.0207, -2.7e-5),
    "DPMSolverMultistepInverseScheduler/test_full_loop_no_noise_thres": (-1.562, -0.00203),
    "EulerDiscreteScheduler/test_full_loop_with_noise/pipeline": (0.0670, 8.7e-5),
    "HeunDiscreteScheduler/test_full_loop_with_noise/pipeline": (0.0277, 3.6e-5),
    "KDPM2DiscreteScheduler/test_full_loop_with_noise/pipeline": (-0.1214, -1.58e-4),
    "KDPM2AncestralDiscreteScheduler/test_full_loop_with_noise/pipeline": (-0.01167, -1.52e-5),
    "SASolverScheduler/test_full_loop_device_karras_sigmas": (-0.02146, -2.79e-5),
    "LMSDiscreteScheduler/test_full_loop_with_noise/pipeline": (0.2133, 2.78e-4),
}


@pytest.mark.parametrize("case", _tier(RUN))
def test_float32_within_their_tolerances(case):
    """sdevp_jax's float32 run passes their test's assertions (:func:`float32_targets`)."""
    pipeline = is_sigma_space(case)
    want_sum, sum_tol, want_mean, mean_tol, _ = float32_targets(case, pipeline)
    got = run(case, jnp.float32, pipeline=pipeline)
    assert got.dtype == np.float32
    _assert_sums(got, want_sum, sum_tol, want_mean, mean_tol, case)


def test_float32_off_cases_as_measured():
    """diffusers' float32 is off its float64 value beyond their tolerance exactly where :data:`FLOAT32_OFF` says, by
    what it says (to 2 digits). DDPM's: its step computes :math:`\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}` from
    float32 ``alphas_cumprod``, which cancels at t = 1 (:math:`\bar\alpha_1/\bar\alpha_0 = 0.9998`: a float32
    rounding of ``alphas_cumprod`` is 2.4e-4 of :math:`\beta_1`): its 387.9466 is 0.021 from the exact 387.967,
    more than the test's 1e-2."""
    off = {}
    for case in RUN:
        pipeline = is_sigma_space(case)
        prefix = f"{case}/pipeline" if pipeline else case
        exact = GOLDEN[f"{prefix}/final"]
        gap = (float(GOLDEN[f"{prefix}/sum32"]) - float(np.sum(np.abs(exact))),
               float(GOLDEN[f"{prefix}/mean32"]) - float(np.mean(np.abs(exact))))
        _, sum_tol, _, mean_tol = GOLDEN[f"{case}/expected"]
        if (not np.isnan(sum_tol) and abs(gap[0]) >= sum_tol) or abs(gap[1]) >= mean_tol:
            off[prefix] = gap
    assert set(off) == set(FLOAT32_OFF)
    for key, (gap_sum, gap_mean) in off.items():
        np.testing.assert_allclose((gap_sum, gap_mean), FLOAT32_OFF[key], rtol=0.02, err_msg=key)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_by_name(case):
    """Configs sdevp_jax does not run as diffusers does: an error naming the option, at load or at sampling."""
    shape = GOLDEN[f"{case}/x_start"].shape
    with pytest.raises(ValueError, match=REFUSED[case]):
        state = sv.set_timesteps(sv.load_config(config(case)), int(GOLDEN[f"{case}/n"]))
        sv.sample_ode(state, dummy_model, None, shape, x_init=jnp.zeros(shape))


@pytest.mark.parametrize("name", ["DPMSolverSDEScheduler", "LCMScheduler", "TCDScheduler"])
def test_unserved_schedulers_are_refused_by_class_name(name):
    with pytest.raises(ValueError, match="_class_name must be one of"):
        sv.load_config({"_class_name": name})


@pytest.mark.parametrize("case", _tier(INSIDE))
def test_a_grid_that_starts_inside_runs_its_own_order_schedule(case, x64):
    """A grid sliced from diffusers' grid at the start point runs its own order schedule (single-step groups from its
    first point; LMS from order 1), while diffusers continues the whole grid's: the two differ by far more than
    rounding (measured: 0.15, 0.006 and 0.84 relative). ``begin_index`` on the whole grid reproduces diffusers
    (:func:`test_float64_parity` and the pipeline test above); here the sliced run is held apart from it."""
    n, mode = int(GOLDEN[f"{case}/n"]), str(GOLDEN[f"{case}/mode"])
    start = int(GOLDEN[f"{case}/t_start"]) if mode == "noise" else 3
    state = from_point(sv.set_timesteps(sv.load_config(config(case)), n), start)
    x_start = start_sample(case)
    got = np.asarray(sv.sample_ode(state, dummy_model, None, x_start.shape, x_init=jnp.asarray(x_start),
                                   dtype=jnp.float64))
    assert rel_err(got, GOLDEN[f"{case}/pipeline/final" if is_sigma_space(case) else f"{case}/final"]) > 1e-3


def test_begin_index_is_refused_where_it_has_no_meaning():
    """begin_index needs the samples at that point (x_init) and one of the solvers that keep a whole grid's order
    schedule; elsewhere a grid that starts there is the same run."""
    state = sv.set_timesteps(sv.load_config(config(INSIDE[0])), 10)
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="pass the samples there as x_init"):
        sv.sample_ode(state, dummy_model, jax.random.key(0), x.shape, begin_index=3)
    with pytest.raises(ValueError, match="begin_index applies to the methods"):
        sv.sample_ode(state, dummy_model, None, x.shape, x_init=x, method="dpm_solver_pp", begin_index=3)
    with pytest.raises(ValueError, match="begin_index must be an int >= 0"):
        sv.sample_ode(state, dummy_model, None, x.shape, x_init=x, begin_index=-1)
    with pytest.raises(ValueError, match="must be below the grid's last point"):
        sv.sample_ode(state, dummy_model, None, x.shape, x_init=x, begin_index=10)
    with pytest.raises(ValueError, match="deterministic dpm_solver_singlestep only"):
        sv.sample_ode(state, dummy_model, jax.random.key(0), x.shape, x_init=x, method="sde_dpm_solver_singlestep",
                      begin_index=3)


@pytest.mark.parametrize("case", [c for c in RUN if is_sigma_space(c)])
def test_the_sigma_space_tests_loops_are_not_the_pipelines(case):
    """Their test loop (``step`` on ``scale_model_input``'s output) and the pipeline loop differ by far more than any
    tolerance here: their expected numbers are of a different recursion, which sdevp_jax does not run."""
    assert rel_err(GOLDEN[f"{case}/final"], GOLDEN[f"{case}/pipeline/final"]) > 1e-2
