"""sdevp_jax.config.discrete_config: diffusers' discrete scheduler configs, read, checked, written back."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

from sdevp_jax import config, schedules

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "spacings.npz")

# Stable Diffusion v1.5's scheduler_config.json, from diffusers' documented PNDMScheduler fields.
SD15 = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
SD15.pop("clip_sample")  # PNDM has no clip_sample; the SD 1.x file's is DDIM's (tested below)


def golden_configs():
    with np.load(GOLDEN) as data:
        return {k.split("/", 1)[1]: json.loads(str(data[k])) for k in data.files if k.startswith("config/")}


@pytest.mark.parametrize("name", sorted(golden_configs()))
def test_reads_and_writes_back_the_files_diffusers_writes(name):
    """diffusers 0.42.1's save_config output (every field) parses and round-trips unchanged."""
    saved = golden_configs()[name]
    cfg = config.discrete_config(saved)
    assert config.discrete_config_dict(cfg) == saved
    assert cfg.class_name == saved["_class_name"] and cfg.steps_offset == saved["steps_offset"]
    # A minimal file (class and clip_sample only) resolves to the same config, defaults and all.
    if name.endswith("/default"):
        minimal = {k: saved[k] for k in ("_class_name", "_diffusers_version", "clip_sample") if k in saved}
        assert config.discrete_config(minimal) == cfg


def test_stable_diffusion_v15(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD15))
    cfg = config.discrete_config(tmp_path)
    assert (cfg.beta_schedule, cfg.timestep_spacing, cfg.steps_offset, cfg.prediction_type) == (
        "scaled_linear", "leading", 1, "epsilon")
    np.testing.assert_array_equal(cfg.schedule.knots, schedules.from_diffusers("scaled_linear", 0.00085, 0.012).knots)
    np.testing.assert_array_equal(cfg.label_spacing(10), np.arange(9, -1, -1) * 100 + 1)
    # Written back with the two fields diffusers 0.6 did not write yet, at their PNDM defaults
    # (PNDM has no rescale_betas_zero_snr field).
    assert config.discrete_config_dict(cfg) == dict(SD15, prediction_type="epsilon", timestep_spacing="leading")
    ddim = dict(SD15, _class_name="DDIMScheduler", clip_sample=False)
    del ddim["skip_prk_steps"]
    back = config.discrete_config_dict(config.discrete_config(ddim))
    assert config.discrete_config(back) == config.discrete_config(ddim)


def test_trained_betas_round_trip():
    betas = list(np.linspace(1e-4, 0.02, 10))
    cfg = config.discrete_config({"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.42.1",
                                  "num_train_timesteps": 10,
                                  "trained_betas": betas, "prediction_type": "v_prediction"})
    assert cfg.schedule.num_train_timesteps == 10 and cfg.prediction_type == "v_prediction"
    assert config.discrete_config(config.discrete_config_dict(cfg)) == cfg


@pytest.mark.parametrize("change, match", [
    ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "_class_name must be one of"),
    ({"clip_sample": 1}, "clip_sample = 1 changes sampling"),
    ({"thresholding": True}, "thresholding = True changes sampling and is not supported for DDPMScheduler"),
    ({"_class_name": "KDPM2AncestralDiscreteScheduler", "use_karras_sigmas": True},
     "use_karras_sigmas = True changes sampling and is supported for DPMSolverMultistepScheduler"),
    ({"_class_name": "EulerDiscreteScheduler", "final_sigmas_type": "sigma_min"},
     "final_sigmas_type = 'sigma_min' changes sampling and is supported for DPMSolverMultistepScheduler"),
    ({"final_sigmas_type": "last"}, "final_sigmas_type = 'last' changes sampling"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule must be one of"),
    ({"timestep_spacing": "karras"}, "timestep_spacing must be one of"),
    ({"prediction_type": "flow"}, "prediction_type must be one of"),
    ({"rescale_betas_zero_snr": "true"}, "rescale_betas_zero_snr must be true or false, got 'true'"),
    ({"trained_betas": [0.01] * 5}, "trained_betas has 5 entries but num_train_timesteps = 1000"),
    ({"steps_offset": -1}, "steps_offset must be an int >= 0"),
    ({"snr": 0.1}, r"unknown fields \['snr'\]"),
])
def test_unsupported_or_contradictory_fields(change, match):
    base = {"_class_name": "DPMSolverMultistepScheduler"}
    if "clip_sample" in change:
        base = {"_class_name": "DDIMScheduler", "clip_sample": False}
    if "thresholding" in change:  # the grid solvers' configs threshold; DDPM's ancestral step does not
        base = {"_class_name": "DDPMScheduler", "clip_sample": False}
    with pytest.raises(ValueError, match=match):
        config.discrete_config(dict(base, **change))


def test_diffusers_default_clip_sample_clips_to_one():
    """DDIM's and DDPM's default clip_sample is True: a file without the field clips the data prediction to
    [-1, 1] (tests/test_clip_sample.py tests the clipping against diffusers)."""
    assert config.discrete_config({"_class_name": "DDPMScheduler"}).clip_sample_range == 1.0
    assert config.discrete_config({"_class_name": "DDIMScheduler", "clip_sample": False}).clip_sample_range is None


def test_stable_diffusion_1x_file_loads_with_its_foreign_clip_sample():
    """SD 1.x's scheduler_config.json (a PNDMScheduler) carries DDIM's clip_sample, which PNDM does not have:
    diffusers ignores it, so do we -- whatever its value -- and write it back unchanged."""
    sd = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
          "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
          "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
          "clip_sample": False}
    cfg = config.discrete_config(sd)
    assert dict(cfg.extra)["clip_sample"] is False
    assert config.discrete_config_dict(cfg)["clip_sample"] is False
    assert config.discrete_config(dict(sd, clip_sample=True)).class_name == "PNDMScheduler"
    state = sv.load_config(sd)
    assert state.schedule.is_discrete and state.diffusers_config == cfg


def test_foreign_thresholding_and_final_sigmas_type_are_ignored_as_diffusers_ignores_them():
    """PNDM and DDIM have no final_sigmas_type, PNDM no thresholding: a file carrying them loads, kept and
    written back, and they change nothing (the grid is the one without them)."""
    pndm = config.discrete_config({"_class_name": "PNDMScheduler", "thresholding": True,
                                   "final_sigmas_type": "sigma_min"})
    plain_pndm = config.discrete_config({"_class_name": "PNDMScheduler"})
    assert dict(pndm.extra)["thresholding"] is True
    assert pndm.ends_at_sigma_min == plain_pndm.ends_at_sigma_min  # set_alpha_to_one's, not final_sigmas_type's
    assert pndm.solver_options() == plain_pndm.solver_options()
    assert config.discrete_config_dict(pndm)["final_sigmas_type"] == "sigma_min"
    ddim = config.discrete_config({"_class_name": "DDIMScheduler", "clip_sample": False,
                                   "final_sigmas_type": "sigma_min"})
    plain = config.discrete_config({"_class_name": "DDIMScheduler", "clip_sample": False})
    np.testing.assert_array_equal(ddim.label_spacing(10), plain.label_spacing(10))
    assert ddim.solver_options() == plain.solver_options()


# ------------------------------------------------------------------- every option of every class: a table
#
# diffusers 0.42.1's save_config output of each discrete class (tests/golden/spacings.npz, classical.npz,
# singlestep.npz), with one option set as diffusers would write it. "samples": loads and its config's solver samples
# (finite, 4 steps); "method": loads, and sampling names the method this package lacks; any other value: the load's
# refusal, which names the field. Each served row's parity with diffusers is tested where it is implemented (test_clip_sample,
# test_variance_types, test_zero_snr, test_sigma_grids, test_config_solver, test_classical, test_dpm_singlestep).
V = {"prediction_type": "v_prediction"}  # zero terminal SNR: its first label has alpha = 0 (no epsilon model)
OPTION_TABLE = [
    ("DDPMScheduler", {"clip_sample": True}, "samples"),
    ("DDPMScheduler", {"variance_type": "learned_range"}, "samples"),
    ("DDPMScheduler", {"rescale_betas_zero_snr": True, **V}, "samples"),
    ("DDPMScheduler", {"thresholding": True}, "thresholding = True changes sampling and is not supported for DDPM"),
    ("DDIMScheduler", {"clip_sample": True}, "samples"),
    ("DDIMScheduler", {"rescale_betas_zero_snr": True, **V}, "samples"),
    ("DDIMScheduler", {"thresholding": True}, "samples"),
    ("DPMSolverMultistepScheduler", {"rescale_betas_zero_snr": True, **V}, "samples"),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "samples"),
    ("DPMSolverMultistepScheduler", {"use_exponential_sigmas": True}, "samples"),
    ("DPMSolverMultistepScheduler", {"use_beta_sigmas": True}, "samples"),
    ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True}, "samples"),
    ("DPMSolverMultistepScheduler", {"lambda_min_clipped": -5.1}, "samples"),
    ("DPMSolverMultistepScheduler", {"euler_at_final": True}, "samples"),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min"}, "samples"),
    ("DPMSolverMultistepScheduler", {"thresholding": True}, "samples"),
    ("DPMSolverMultistepScheduler", {"variance_type": "learned_range"}, "samples"),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, "samples"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}, "method"),
    ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}, "samples"),
    ("DPMSolverSinglestepScheduler", {"final_sigmas_type": "sigma_min"}, "samples"),
    ("DPMSolverSinglestepScheduler", {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}, "samples"),
    ("DPMSolverSinglestepScheduler", {"use_beta_sigmas": True, "final_sigmas_type": "sigma_min",
                                      "algorithm_type": "sde-dpmsolver++"}, "samples"),
    ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min",
                                      "algorithm_type": "dpmsolver"}, "samples"),
    ("UniPCMultistepScheduler", {"rescale_betas_zero_snr": True, **V}, "samples"),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True}, "samples"),
    ("UniPCMultistepScheduler", {"use_exponential_sigmas": True}, "samples"),
    ("UniPCMultistepScheduler", {"use_beta_sigmas": True}, "samples"),
    ("UniPCMultistepScheduler", {"final_sigmas_type": "sigma_min"}, "samples"),
    ("UniPCMultistepScheduler", {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}, "samples"),
    ("UniPCMultistepScheduler", {"thresholding": True}, "samples"),
    ("UniPCMultistepScheduler", {"disable_corrector": [0]}, "method"),
    ("EulerDiscreteScheduler", {}, "samples"),
    ("EulerDiscreteScheduler", {"rescale_betas_zero_snr": True, **V}, "samples"),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "samples"),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}, "samples"),
    ("EulerDiscreteScheduler", {"use_beta_sigmas": True, "timestep_spacing": "trailing"}, "samples"),
    ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min"}, "final_sigmas_type = 'sigma_min' changes"),
    ("EulerAncestralDiscreteScheduler", {}, "samples"),
    ("EulerAncestralDiscreteScheduler", {"rescale_betas_zero_snr": True, **V}, "samples"),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, "samples"),
    ("HeunDiscreteScheduler", {}, "samples"),
    ("HeunDiscreteScheduler", {"clip_sample": True}, "samples"),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True}, "samples"),
    ("HeunDiscreteScheduler", {"use_exponential_sigmas": True, "clip_sample": True}, "samples"),
    ("KDPM2DiscreteScheduler", {}, "samples"),
    ("KDPM2DiscreteScheduler", {"timestep_spacing": "leading"}, "samples"),
    ("KDPM2AncestralDiscreteScheduler", {}, "samples"),
    ("KDPM2AncestralDiscreteScheduler", {"use_exponential_sigmas": True}, "use_exponential_sigmas = True changes"),
    ("PNDMScheduler", {}, "samples"),
    ("PNDMScheduler", {"skip_prk_steps": True}, "samples"),
    ("PNDMScheduler", {"set_alpha_to_one": True}, "samples"),
    ("PNDMScheduler", {"timestep_spacing": "linspace"}, "method"),
    ("LMSDiscreteScheduler", {}, "samples"),
    ("LMSDiscreteScheduler", {"use_beta_sigmas": True}, "samples"),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True, "use_beta_sigmas": True}, "grids are exclusive"),
    ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}, "use_karras_sigmas = True changes sampling"),
]


def _table_id(row):
    return f"{row[0]}-{','.join(f'{k}={v}' for k, v in row[1].items()) or 'default'}"


@pytest.mark.slow  # 43 compiled 4-step runs
@pytest.mark.parametrize("cls, change, outcome", OPTION_TABLE, ids=[_table_id(r) for r in OPTION_TABLE])
def test_every_option_of_every_class_is_served_or_refused_by_name(cls, change, outcome):
    saved = _default_files()[cls]
    assert all(k in saved for k in change if k != "prediction_type"), "the class writes the field itself"
    cfg = dict(saved, **change)
    if outcome not in ("samples", "method"):
        with pytest.raises(ValueError, match=outcome):
            sv.load_config(cfg)
        return
    state = sv.set_timesteps(sv.load_config(cfg), 4)
    learned = state.diffusers_config.variance_type in sv.denoiser.LEARNED_VARIANCE

    def model(x, t):
        return jnp.concatenate([0.1 * x, jnp.zeros_like(x)], axis=1) if learned else 0.1 * x

    if outcome == "method":
        with pytest.raises(ValueError, match="no (verified )?equivalent"):
            sv.sample_ode(state, model, jax.random.key(0), (2, 3))
        return
    x = sv.sample(state, model, jax.random.key(0), (2, 3)) if cls == "DDPMScheduler" else \
        sv.sample_ode(state, model, jax.random.key(0), (2, 3))
    assert x.shape == (2, 3) and bool(jnp.all(jnp.isfinite(x)))


def _default_files():
    from test_config import discrete_files

    files = {k.split("/")[0]: v for k, v in discrete_files().items() if k.endswith("/default")}
    return files | {"LMSDiscreteScheduler": discrete_files()["LMSDiscreteScheduler"]}
