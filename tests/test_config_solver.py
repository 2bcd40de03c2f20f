"""A diffusers config carries its scheduler's solver: sampling a loaded state with no method given."""

import json
import os

import jax
import numpy as np
import pytest

import sdevp_jax as sv

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def solver_of(cls, **fields):
    return sv.load_config({"_class_name": cls, **SD, **fields}).diffusers_config.solver_options()


@pytest.mark.parametrize("cls, fields, expected", [
    ("DDIMScheduler", {"clip_sample": False}, ("ddim", {"final_sigmas_type": "zero"})),
    ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}, ("ddim", {"final_sigmas_type": "last"})),
    ("DDPMScheduler", {}, ("ancestral", {})),
    ("EulerDiscreteScheduler", {}, ("ddim", {"final_sigmas_type": "zero"})),
    ("EulerAncestralDiscreteScheduler", {}, ("euler_ancestral", {})),
    ("LMSDiscreteScheduler", {}, ("lms", {"order": 4})),
    ("PNDMScheduler", {}, ("pndm", {"warmup": "prk_diffusers", "final_sigmas_type": "last"})),
    ("HeunDiscreteScheduler", {"clip_sample": True}, ("heun_sigma", {})),
    ("KDPM2DiscreteScheduler", {}, ("kdpm2", {})),
    ("KDPM2AncestralDiscreteScheduler", {}, ("kdpm2_ancestral", {})),
    ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True},
     ("pndm", {"warmup": "improved_euler", "final_sigmas_type": "zero"})),
    ("DPMSolverMultistepScheduler", {}, ("dpm_solver_pp", {"order": 2, "solver_type": "midpoint",
                                                           "lower_order_final": True, "final_sigmas_type": "zero"})),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "lower_order_final": False},
     ("dpm_solver_pp", {"order": 3, "solver_type": "midpoint", "lower_order_final": False,
                        "final_sigmas_type": "zero", "third_order": "diffusers"})),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
     ("sde_dpm_solver_pp", {"order": 2, "solver_type": "heun", "lower_order_final": True,
                            "final_sigmas_type": "zero"})),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
     ("sde_dpm_solver_pp", {"order": 3, "solver_type": "midpoint", "lower_order_final": True,
                            "final_sigmas_type": "zero", "third_order": "diffusers"})),
    ("FlaxDPMSolverMultistepScheduler", {"solver_order": 1},
     ("dpm_solver_pp", {"order": 1, "solver_type": "midpoint", "lower_order_final": True,
                        "final_sigmas_type": "zero"})),
    ("DDIMScheduler", {"clip_sample": False, "thresholding": True, "sample_max_value": 2.0},
     ("ddim", {"final_sigmas_type": "zero", "thresholding": True, "dynamic_thresholding_ratio": 0.995,
               "sample_max_value": 2.0})),
    ("DPMSolverMultistepScheduler", {"thresholding": True, "dynamic_thresholding_ratio": 0.9},
     ("dpm_solver_pp", {"order": 2, "solver_type": "midpoint", "lower_order_final": True,
                        "final_sigmas_type": "zero", "thresholding": True, "dynamic_thresholding_ratio": 0.9,
                        "sample_max_value": 1.0})),
    ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "predict_x0": False},
     ("unipc", {"order": 3, "solver_type": "bh1", "predict_x0": False, "lower_order_final": True,
                "final_sigmas_type": "zero"})),
])
def test_a_config_names_its_schedulers_solver(cls, fields, expected):
    assert solver_of(cls, **fields) == expected
    method, options = expected
    assert sv.solvers.make(method, **options).check()  # every mapped option is the solver's own


@pytest.mark.parametrize("cls, fields, match", [
    ("PNDMScheduler", {"timestep_spacing": "linspace"}, "timestep_spacing='linspace' has no equivalent"),
    ("PNDMScheduler", {"prediction_type": "v_prediction"}, "combines the model's raw v outputs"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}, "algorithm_type='dpmsolver' has no equivalent"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver"}, "'sde-dpmsolver' has no equivalent"),
    ("UniPCMultistepScheduler", {"disable_corrector": [0]}, r"disable_corrector=\[0\] has no equivalent"),
])
def test_a_config_whose_method_is_missing_is_refused_by_name(cls, fields, match):
    with pytest.raises(ValueError, match=match):
        solver_of(cls, **fields)
    state = sv.set_timesteps(sv.load_config({"_class_name": cls, **SD, **fields}), 5)
    model = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    with pytest.raises(ValueError, match=match):
        sv.sample_ode(state, model, jax.random.key(0), (4, 2))
    # a method given: sampled as asked
    assert sv.sample_ode(state, model, jax.random.key(0), (4, 2), method="ddim").shape == (4, 2)


def _draw(state, **kwargs):
    model = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    fn = sv.sample_ode if kwargs.pop("ode", True) else sv.sample
    return np.asarray(fn(state, model, jax.random.key(1), (16, 2), **kwargs))


@pytest.mark.slow  # five sampling programs
def test_sampling_with_no_method_is_the_configs_solver():
    dpm = sv.set_timesteps(sv.load_config({"_class_name": "DPMSolverMultistepScheduler", **SD,
                                           "solver_order": 3, "solver_type": "heun"}), 12)
    np.testing.assert_array_equal(_draw(dpm), _draw(dpm, method="dpm_solver_pp", order=3, solver_type="heun",
                                                    third_order="diffusers"))
    # an option given on top replaces the config's alone
    np.testing.assert_array_equal(_draw(dpm, order=2), _draw(dpm, method="dpm_solver_pp", order=2,
                                                             solver_type="heun"))
    ddpm = sv.set_timesteps(sv.load_config({"_class_name": "DDPMScheduler", **SD, "clip_sample": False}), 12)
    np.testing.assert_array_equal(_draw(ddpm, ode=False), _draw(ddpm, ode=False, predictor="ancestral"))
    # a state without a diffusers config keeps the package's defaults: dpm_solver, and Euler-Maruyama for sample
    plain = sv.set_timesteps(sv.create_state(), 12)
    np.testing.assert_array_equal(_draw(plain), _draw(plain, method="dpm_solver"))


# ---------------------------------------------------------- against diffusers: the config's own solver

G = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "solvers.npz")))
SCHEDULES = {"linear": ("linear", 1e-4, 0.02), "scaled_linear": ("scaled_linear", 0.00085, 0.012)}
#: every option case of the solver golden at 6 steps (tests/test_solver_parity.py runs them by explicit options)
#: but DDIM's eta = 1: eta is an argument of diffusers' step, not of its config
CONFIG_CASES = sorted(k.rsplit("/", 1)[0] for k in G if k.endswith("/options") and k.rsplit("/", 2)[1] == "6"
                      and "eta=1.0" not in k)


def diffusers_config(case: str) -> dict:
    """The diffusers config of a golden option case: the scheduler and fields the golden ran it with."""
    schedule, prediction_type, _, _ = case.split("/")
    beta_schedule, start, end = SCHEDULES[schedule]
    options = json.loads(str(G[f"{case}/options"]))
    base = {"beta_schedule": beta_schedule, "beta_start": start, "beta_end": end, "prediction_type": prediction_type}
    last = options["final_sigmas_type"] == "last"
    if options["method"] == "ddim":
        return {"_class_name": "DDIMScheduler", **base, "clip_sample": False, "set_alpha_to_one": not last}
    common = {**base, "solver_order": options["order"], "lower_order_final": options["lower_order_final"],
              "final_sigmas_type": "sigma_min" if last else "zero"}
    if options["method"] == "unipc":
        return {"_class_name": "UniPCMultistepScheduler", **common, "solver_type": options["solver_type"],
                "predict_x0": options.get("predict_x0", True)}
    algorithm = {"dpm_solver_pp": "dpmsolver++", "sde_dpm_solver_pp": "sde-dpmsolver++"}[options["method"]]
    return {"_class_name": "DPMSolverMultistepScheduler", **common, "algorithm_type": algorithm,
            "solver_type": options["solver_type"]}


def golden_model(case: str):
    import test_solver_parity as parity  # the golden's exact model (Gaussian rows, then mixture rows)

    schedule, prediction_type, _, _ = case.split("/")
    return parity.exact_model(parity.alphas_cumprod(schedule), prediction_type)


@pytest.mark.slow  # 76 cases op by op
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_a_loaded_config_samples_as_its_diffusers_scheduler(case, x64):
    """The golden's scheduler config, loaded, on ``set_timesteps(state, 6)``'s grid, sampled with no method:
    diffusers' samples within 1e-10 relative (each half of the batch), as tests/test_solver_parity.py bars."""
    state = sv.set_timesteps(sv.load_config(diffusers_config(case)), 6)
    labels = np.asarray(sv.model_time(state, state.timesteps), np.float64)
    want = G.get(f"{case}/grid_labels", G[f"{case}/labels"])
    np.testing.assert_allclose(labels, want, atol=1e-6)  # sigma_min: the config's grid ends at label 0
    x_t = G["x_T"]
    with jax.disable_jit():
        x = np.asarray(sv.sample_ode(state, golden_model(case), jax.random.key(int(G["seed"])), x_t.shape,
                                     x_init=jax.numpy.asarray(x_t), dtype=jax.numpy.float64))
    ref = G[f"{case}/final"]
    err = max(float(np.max(np.abs(x[h] - ref[h])) / np.max(np.abs(ref[h]))) for h in (np.s_[:4], np.s_[4:]))
    assert err <= 1e-10, err
