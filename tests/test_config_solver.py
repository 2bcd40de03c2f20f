"""A diffusers config carries its scheduler's solver: sampling a loaded state with no method given."""

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
    ("DPMSolverMultistepScheduler", {}, ("dpm_solver_pp", {"order": 2, "solver_type": "midpoint",
                                                           "lower_order_final": True, "final_sigmas_type": "zero"})),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "lower_order_final": False},
     ("dpm_solver_pp", {"order": 3, "solver_type": "midpoint", "lower_order_final": False,
                        "final_sigmas_type": "zero", "third_order": "diffusers"})),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
     ("sde_dpm_solver_pp", {"order": 2, "solver_type": "heun", "lower_order_final": True,
                            "final_sigmas_type": "zero"})),
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
    ("PNDMScheduler", {}, "PNDMScheduler samples with PNDM's pseudo linear multistep method"),
    ("LMSDiscreteScheduler", {}, "LMSDiscreteScheduler samples with the linear multistep method"),
    ("EulerDiscreteScheduler", {}, "EulerDiscreteScheduler samples with Euler's method in sigma"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}, "algorithm_type='dpmsolver' has no equivalent"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver"}, "'sde-dpmsolver' has no equivalent"),
    ("DPMSolverMultistepScheduler", {"euler_at_final": True}, "euler_at_final=True has no equivalent"),
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
