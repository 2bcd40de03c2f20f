"""diffusers' sigma grids and grid options: Karras, exponential, beta and lambda-uniform sigmas, lambda_min_clipped,
euler_at_final.

Parity with diffusers 0.42.1's DPMSolverMultistep and UniPC loops in float64 (tests/golden/sigmas.npz, by
tests/golden/make_sigmas_golden.py) on Stable Diffusion's schedule with an exact Gaussian epsilon model: the
labels the model is called at, the noise levels stepped through, and the final samples; the grid formulas
and the label rule tested directly; the refusals. DPMSolverSinglestep's sigma grids with final_sigmas_type="sigma_min"
are tested here once and in tests/test_dpm_singlestep.py in full.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import betainc

import sdevp_jax as sv

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "sigmas.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))
MU, S = 0.5, 0.8  # the golden's data: N(MU, S^2) in 3-D
RTOL = 1e-10  # float64 parity bar, as the other diffusers goldens
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def case_config(case):
    kind, _, order, _ = case.split("/")
    return {"_class_name": f"{kind}Scheduler", **SD, "solver_order": int(order),
            **json.loads(str(GOLDEN[f"{case}/config"]))}


def exact_model(x, label):
    """The golden's model: the posterior-mean noise of N(MU, S^2) data at an integer label."""
    a2 = jnp.asarray(GOLDEN["alphas_cumprod"])[jnp.round(label).astype(jnp.int32)][:, None]
    a, sigma = jnp.sqrt(a2), jnp.sqrt(1.0 - a2)
    return sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)


def test_the_golden_covers_every_option():
    assert len(CASES) == 30 and "diffusers 0.42.1" in list(GOLDEN["versions"])
    names = {case.split("/")[1] for case in CASES}
    assert set(sv.grids.SIGMA_SPACINGS) | {"lambda_min_clipped", "lambda_min_clipped_trailing",
                                           "euler_at_final"} | {f"{g}_sigma_min" for g in (
                                               "karras_sigmas", "exponential_sigmas", "lu_lambdas")} == names
    # the one case where diffusers' zero-length last step returns NaN (the golden holds its finite limit)
    assert [c for c in CASES if bool(GOLDEN[f"{c}/diffusers_nan"])] == ["DPMSolverMultistep/karras_sigmas_sigma_min/3/20"]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.endswith("/25") else c for c in CASES])
def test_parity_with_diffusers(case, x64):
    """The config's own grid and solver: the model's labels exactly, the noise levels and the samples to 1e-10.

    With final_sigmas_type="sigma_min" a label grid ends at label 0, where diffusers' last step goes; a sigma grid
    ends there already and diffusers repeats it, a zero-length step that sv takes as final_sigmas_type="repeat"
    (one more network call; UniPC's last correction). Where diffusers' zero-length step returns NaN (DPM-Solver++
    (3M) at 20 steps: inf / inf in its coefficients) the golden holds that step's limit, the sample before it.
    """
    state = sv.set_timesteps(sv.load_config(case_config(case)), int(case.split("/")[3]))
    config = state.diffusers_config
    appended = config.ends_at_sigma_min and config.sigma_spacing is None
    labels = np.asarray(sv.model_time(state, state.timesteps))
    np.testing.assert_array_equal(labels, np.append(GOLDEN[f"{case}/labels"], [0] if appended else []))
    sigmas = np.asarray(jnp.exp(-state.schedule.log_snr(state.timesteps)))
    np.testing.assert_allclose(sigmas, GOLDEN[f"{case}/sigmas"][: None if appended else -1], rtol=1e-12)
    x_t = jnp.asarray(GOLDEN["x_T"])
    x = np.asarray(sv.sample_ode(state, exact_model, jax.random.key(0), x_t.shape, x_init=x_t, dtype=jnp.float64))
    ref = GOLDEN[f"{case}/final"]
    assert float(np.max(np.abs(x - ref)) / np.max(np.abs(ref))) <= RTOL


def test_the_grids_are_their_formulas(x64):
    """Karras: sigma^(1/7) uniform (Karras et al. 2022, eq. 5); exponential and lu: log sigma uniform; beta: the
    Beta(0.6, 0.6) CDF of the rescaled sigmas uniform (Lee et al. 2024); all from label 999's sigma to label 0's."""
    sched = sv.schedules.from_diffusers(**SD)
    train = sv.grids.training_sigmas(sched)
    lo, hi = train[0], train[-1]
    n = 7
    for spacing in sv.grids.SIGMA_SPACINGS:
        sig = sv.grids.diffusers_sigmas(sched, n, spacing)
        np.testing.assert_allclose([sig[0], sig[-1]], [hi, lo], rtol=1e-12)
        if spacing == "karras_sigmas":
            steps = np.diff(sig ** (1 / 7))
        elif spacing == "beta_sigmas":
            steps = np.diff(betainc(0.6, 0.6, (sig - lo) / (hi - lo)))
        else:
            steps = np.diff(np.log(sig))
        np.testing.assert_allclose(steps, steps[0], rtol=1e-9)


def test_sigma_to_label_interpolates_log_sigma(x64):
    sched = sv.schedules.from_diffusers(**SD)
    log_train = np.log(sv.grids.training_sigmas(sched))
    labels = np.array([0.0, 3.25, 500.5, 998.75, 999.0])
    k = np.minimum(np.floor(labels).astype(int), 998)
    f = labels - k
    sigmas = np.exp((1 - f) * log_train[k] + f * log_train[k + 1])
    np.testing.assert_allclose(sv.grids.sigma_to_label(sigmas, sched), labels, rtol=0, atol=1e-9)
    # clamped to the training range, as diffusers' _sigma_to_t
    np.testing.assert_array_equal(sv.grids.sigma_to_label([1e-6, 1e6], sched), [0.0, 999.0])


@pytest.mark.parametrize("spacing, rule", [("karras_sigmas", np.round), ("lu_lambdas", np.round),
                                           ("exponential_sigmas", np.trunc), ("beta_sigmas", np.trunc)])
def test_labels_are_rounded_or_truncated_as_diffusers(spacing, rule, x64):
    """Without a config a sigma grid takes DPMSolverMultistep's rule: Karras and lu labels rounded, exponential and
    beta truncated (diffusers casts their fractional labels to int64)."""
    sched = sv.schedules.from_diffusers(**SD)
    state = sv.set_timesteps(sv.create_state(schedule=sched), 12, spacing=spacing)
    fractional = sv.grids.sigma_to_label(sv.grids.diffusers_sigmas(sched, 12, spacing), sched)
    assert np.any(np.abs(np.round(fractional) - np.trunc(fractional)) > 0)  # the two rules differ on this grid
    np.testing.assert_array_equal(np.asarray(state.model_labels), rule(fractional))
    np.testing.assert_array_equal(np.asarray(sv.model_time(state, state.timesteps)), rule(fractional))


def test_model_labels_belong_to_their_grid(x64):
    sched = sv.schedules.from_diffusers(**SD)
    state = sv.set_timesteps(sv.create_state(schedule=sched), 8, spacing="karras_sigmas")
    between = (state.timesteps[2] + state.timesteps[3]) / 2  # off the grid: the continuous label t N - 1
    np.testing.assert_allclose(float(sv.model_time(state, between)), float(between) * 1000 - 1, rtol=1e-12)
    assert sv.set_timesteps(state, 8, spacing="logsnr").model_labels is None
    assert state.replace(timesteps=state.timesteps[:4]).model_labels is None
    with pytest.raises(ValueError, match="model_labels must have the shape of timesteps"):
        state.replace(model_labels=state.model_labels[:3])


def test_lambda_min_clipped_leaves_out_the_lowest_log_snrs(x64):
    state = sv.set_timesteps(sv.load_config({"_class_name": "DPMSolverMultistepScheduler",
                                             "lambda_min_clipped": -3.0}), 10)
    labels = np.round(np.asarray(sv.model_time(state, state.timesteps))).astype(int)
    lam = np.asarray(state.schedule.log_snr(jnp.asarray((labels + 1) / 1000.0)))
    assert labels[0] < 999 and np.all(lam >= -3.0)
    above = np.asarray(state.schedule.log_snr(jnp.asarray((state.diffusers_config.last_timestep + 1) / 1000.0)))
    assert above < -3.0  # the first label left out is below the clip


def test_euler_at_final_lowers_the_last_step_on_long_grids():
    """At 15 or more steps diffusers lowers the last step only with euler_at_final (or to sigma = 0)."""
    plain = sv.solvers.make("dpm_solver_pp", order=3, final_sigmas_type="last")
    euler = sv.solvers.make("dpm_solver_pp", order=3, final_sigmas_type="last", euler_at_final=True)
    np.testing.assert_array_equal(np.asarray(plain.orders(21))[-2:], [3, 3])
    np.testing.assert_array_equal(np.asarray(euler.orders(21))[-2:], [3, 1])
    with pytest.raises(ValueError, match="euler_at_final is an option of dpm_solver_pp, sde_dpm_solver_pp"):
        sv.sample_ode(sv.set_timesteps(sv.create_state(), 5), lambda x, t: x, jax.random.key(0), (2, 2),
                      method="unipc", euler_at_final=True)


@pytest.mark.parametrize("change, match", [
    ({"_class_name": "KDPM2DiscreteScheduler", "use_karras_sigmas": True},
     "use_karras_sigmas = True changes sampling and is supported for DPMSolverMultistepScheduler"),
    ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "are all True; diffusers' grids are exclusive"),
    ({"lambda_min_clipped": float("nan")}, "lambda_min_clipped must be a number or -inf"),
    ({"lambda_min_clipped": True}, "lambda_min_clipped must be a number or -inf"),
])
def test_unsupported_sigma_options_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        sv.load_config({"_class_name": "DPMSolverMultistepScheduler", **change})


def test_singlestep_sigma_min_on_a_sigma_grid_loads_and_matches_diffusers(x64):
    """DPMSolverSinglestep with a sigma grid and final_sigmas_type="sigma_min" (its other fields diffusers' defaults:
    order 2, midpoint, lower_order_final false) loads, with final_sigmas_type="repeat": diffusers' zero-length last
    step ends the last order group, [1, 2] over 10 steps, the order-2 step from the ninth point to the tenth again.
    Its final samples against diffusers 0.42.1's (tests/golden/singlestep.npz; tests/test_dpm_singlestep.py holds
    the other algorithms, orders and grids) to 1e-10."""
    from gaussian_model import label_gaussian_model

    golden = np.load(os.path.join(os.path.dirname(__file__), "golden", "singlestep.npz"))
    state = sv.set_timesteps(sv.load_config({"_class_name": "DPMSolverSinglestepScheduler", **SD,
                                             "use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}), 10)
    method, options = state.diffusers_config.solver_options()
    assert (method, options["final_sigmas_type"], options["order"]) == ("dpm_solver_singlestep", "repeat", 2)
    case = "dpmsolver++/midpoint/2/exponential_sigmas_sigma_min/10"
    model = label_gaussian_model(golden["alphas_cumprod"], "epsilon", S, MU)
    x = np.asarray(sv.sample_ode(state, model, jax.random.key(int(golden["seed"])), golden["x_T"].shape,
                                 dtype=jnp.float64))
    ref = golden[f"{case}/final"]
    assert float(np.max(np.abs(x - ref)) / np.max(np.abs(ref))) <= RTOL


def test_sigma_grids_need_a_finite_sigma_max():
    """A zero-terminal-SNR schedule's sigma/alpha is infinite at its last label; diffusers' clamp makes it finite."""
    cfg = {"_class_name": "UniPCMultistepScheduler", **SD, "prediction_type": "v_prediction",
           "rescale_betas_zero_snr": True, "use_karras_sigmas": True}
    with pytest.raises(ValueError, match="infinite on a zero-terminal-SNR schedule"):
        sv.set_timesteps(sv.load_config(cfg), 10)
    state = sv.set_timesteps(sv.load_config(cfg, zero_snr="diffusers"), 10)
    assert float(state.timesteps[0]) == 1.0 and float(state.model_labels[0]) == 999.0
    with pytest.raises(ValueError, match="need a discrete schedule"):
        sv.set_timesteps(sv.create_state(), 10, spacing="karras_sigmas")


@pytest.mark.parametrize("rounding, rule", [("round", np.round), ("truncate", np.trunc)])
def test_label_rounding_feeds_the_model_rounded_labels_at_the_grids_times(rounding, rule, x64):
    """label_rounding on a fractional-label grid (sv's log-SNR grid of a discrete schedule): the model sees the
    rounded labels at the grid's times and the solver steps with the unrounded noise levels, so a run equals the
    exact-label run of a model that rounds its own time input (dpm_solver_pp calls the model at grid times only)."""
    state = sv.load_config({"_class_name": "DPMSolverMultistepScheduler", **SD})
    exact = sv.set_timesteps(state, 8, spacing="logsnr")
    rounded = sv.set_timesteps(state, 8, spacing="logsnr", label_rounding=rounding)
    np.testing.assert_array_equal(rounded.timesteps, exact.timesteps)
    labels = np.asarray(sv.model_time(exact, exact.timesteps))
    assert np.any(labels != np.round(labels))  # the grid's labels are fractional
    np.testing.assert_array_equal(np.asarray(sv.model_time(rounded, rounded.timesteps)), rule(labels))
    x_t = jnp.asarray(GOLDEN["x_T"])
    model = sv.mixtures.make_mixture_eps_fn(exact, sv.mixtures.default_mixture(3))
    kw = dict(x_init=x_t, dtype=jnp.float64, method="dpm_solver_pp", final_sigmas_type="last")
    got = sv.sample_ode(rounded, model, None, x_t.shape, **kw)
    jrule = jnp.round if rule is np.round else jnp.trunc
    want = sv.sample_ode(exact, lambda x, t: model(x, jrule(t)), None, x_t.shape, **kw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
    assert not np.allclose(np.asarray(got), np.asarray(sv.sample_ode(exact, model, None, x_t.shape, **kw)), atol=1e-6)
    # on a sigma grid "exact" keeps diffusers' fractional log-sigma labels, which it would round
    sigma = sv.set_timesteps(state, 8, spacing="karras_sigmas", label_rounding="exact")
    default = sv.set_timesteps(state, 8, spacing="karras_sigmas")
    np.testing.assert_array_equal(np.round(np.asarray(sigma.model_labels)), np.asarray(default.model_labels))
    assert np.any(np.asarray(sigma.model_labels) != np.asarray(default.model_labels))


def test_label_rounding_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match=r"label_rounding must be None or one of \['exact', 'round', 'truncate'\]"):
        sv.set_timesteps(sv.load_config({"_class_name": "DDIMScheduler"}), 5, label_rounding="floor")
    with pytest.raises(ValueError, match="applies to a discrete schedule's labels"):
        sv.set_timesteps(sv.create_state(), 5, spacing="logsnr", label_rounding="round")
