"""diffusers scheduler_config.json: load, save, round trip, and refusal to overwrite."""

import dataclasses
import json
import os

import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import config

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "spacings.npz")


def test_round_trip_keeps_every_field(tmp_path):
    state = sv.create_state(num_train_timesteps=1000, beta_min=0.05, beta_max=12.5, sampling_eps=1e-5)
    path = sv.save_config(state, tmp_path)
    assert path.name == "scheduler_config.json"
    loaded = sv.load_config(tmp_path)
    assert (loaded.num_train_timesteps, loaded.beta_min, loaded.beta_max, loaded.sampling_eps) == (1000, 0.05, 12.5, 1e-5)
    saved = json.loads(path.read_text())
    assert saved["_class_name"] == "ScoreSdeVpScheduler" and "_diffusers_version" in saved


def test_loads_the_file_diffusers_writes(tmp_path):
    """The exact layout diffusers' save_config produces for ScoreSdeVpScheduler (beta_max an int)."""
    (tmp_path / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "ScoreSdeVpScheduler", "_diffusers_version": "0.42.1",
        "beta_max": 20, "beta_min": 0.1, "num_train_timesteps": 2000, "sampling_eps": 0.001}))
    state = sv.load_config(tmp_path / "scheduler_config.json")
    assert (state.beta_min, state.beta_max, state.sampling_eps, state.num_train_timesteps) == (0.1, 20.0, 1e-3, 2000)


def test_missing_fields_take_diffusers_defaults(tmp_path):
    (tmp_path / "c.json").write_text('{"_class_name": "ScoreSdeVpScheduler", "beta_max": 10}')
    state = sv.load_config(tmp_path / "c.json")
    assert (state.beta_min, state.beta_max, state.sampling_eps) == (0.1, 10.0, 1e-3)


@pytest.mark.parametrize("content, match", [
    ('{"_class_name": "DDPMScheduler", "clip_sample": null}', "clip_sample = None changes sampling"),
    ('{"_class_name": "KarrasVeScheduler"}', "'KarrasVeScheduler' is a variance-exploding scheduler"),
    ('{"_class_name": "MyScheduler"}', "_class_name must be one of 'ScoreSdeVpScheduler', 'DDPMScheduler'"),
    ('{"_class_name": "ScoreSdeVpScheduler", "snr": 0.1}', r"unknown fields \['snr'\]"),
    ('{"beta_min": -1}', "beta_min must be > 0"),
    ("[1, 2]", "expected a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_bad_configs_are_refused_clearly(tmp_path, content, match):
    path = tmp_path / "scheduler_config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        sv.load_config(path)


def test_save_never_overwrites_silently(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        sv.save_config(sv.create_state(), path)
    assert path.read_text() == "mine"
    sv.save_config(sv.create_state(), path, overwrite=True)
    assert sv.load_config(path).beta_max == 20.0
    assert [p.name for p in tmp_path.iterdir()] == ["scheduler_config.json"]  # no temporary left behind


# --------------------------------------------------------------------------- discrete schedulers


def discrete_files() -> dict:
    """diffusers 0.42.1's save_config output of each discrete class (tests/golden/make_spacing_golden.py),
    Stable-Diffusion-style and default (and the classes of tests/golden/make_classical_golden.py and
    make_singlestep_golden.py), plus an LMSDiscreteScheduler file written by hand (v-prediction,
    trained_betas: the fields the goldens do not cover)."""
    with np.load(GOLDEN) as data:
        files = {k.split("/", 1)[1]: json.loads(str(data[k])) for k in data.files if k.startswith("config/")}
    for other in ("classical.npz", "singlestep.npz"):  # the classes they made loadable
        with np.load(os.path.join(os.path.dirname(GOLDEN), other)) as data:
            files |= {k.split("/", 1)[1]: json.loads(str(data[k])) for k in data.files if k.startswith("config/")}
    files["LMSDiscreteScheduler"] = {
        "_class_name": "LMSDiscreteScheduler", "_diffusers_version": "0.42.1", "num_train_timesteps": 20,
        "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": [float(b) for b in np.linspace(1e-3, 0.2, 20)], "prediction_type": "v_prediction",
        "timestep_spacing": "trailing", "steps_offset": 0, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False,
    }
    return files


@pytest.mark.parametrize("name", sorted(discrete_files()))
def test_discrete_config_load_save_load(name, tmp_path):
    """Every discrete class: load -> state (schedule, prediction type, default grid) -> save -> load, unchanged."""
    saved = discrete_files()[name]
    (tmp_path / "scheduler_config.json").write_text(json.dumps(saved))
    state = sv.load_config(tmp_path)
    cfg = config.discrete_config(saved)
    assert state.diffusers_config == cfg and state.prediction_type == cfg.prediction_type
    np.testing.assert_array_equal(state.schedule.knots, cfg.schedule.knots)
    assert state.num_train_timesteps == cfg.num_train_timesteps
    assert state.sampling_eps == 1.0 / cfg.num_train_timesteps
    # set_timesteps without spacing follows the file: its timestep_spacing, steps_offset and class's labels
    # (labels (n + 1)/N -> n again: exact to the grid's float rounding, n <= 999 < 2**10).
    grid = sv.set_timesteps(state, 7)
    assert grid.spacing == cfg.timestep_spacing
    labels = cfg.label_spacing(7)
    if cfg.ends_at_sigma_min and labels[-1] != 0:  # the grid ends at label 0, where the class's last step goes
        labels = np.append(labels, 0)
    np.testing.assert_allclose(np.asarray(sv.model_time(grid, grid.timesteps)), labels, rtol=0, atol=1e-3)
    # the dict form loads the same state
    assert sv.load_config(saved).diffusers_config == cfg
    (tmp_path / "again").mkdir()
    path = sv.save_config(grid, tmp_path / "again")
    assert json.loads(path.read_text()) == saved  # the file comes back field for field
    assert sv.load_config(path).diffusers_config == cfg


def test_save_refuses_states_without_a_diffusers_config(tmp_path):
    """Cosine, hand-built discrete, non-epsilon linear, or a loaded state changed after loading: a ValueError, no file."""
    sd = sv.load_config(discrete_files()["PNDMScheduler"])
    cases = [
        (sv.create_state(schedule=sv.schedules.cosine()), "CosineSchedule has no diffusers config file"),
        (sv.create_state(schedule=sv.schedules.discrete(betas=[0.1, 0.2])), "built by hand"),
        (sv.create_state(prediction_type="v_prediction"), "no prediction_type field"),
        (sd.replace(prediction_type="sample"), "no longer describes it: prediction_type 'sample'"),
        (sd.replace(sampling_eps=0.01), "no longer describes it: sampling_eps"),
        (sd.replace(schedule=sv.schedules.from_diffusers("linear")), "no longer describes it: a schedule other"),
    ]
    for state, match in cases:
        with pytest.raises(ValueError, match=match):
            sv.save_config(state, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_discrete_save_never_overwrites_silently(tmp_path):
    state = sv.load_config(discrete_files()["DDIMScheduler"])
    path = tmp_path / "scheduler_config.json"
    path.write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        sv.save_config(state, path)
    assert path.read_text() == "mine"
    sv.save_config(state, path, overwrite=True)
    assert sv.load_config(path).diffusers_config == state.diffusers_config


@pytest.mark.parametrize("change, match", [
    ({"rescale_betas_zero_snr": 1}, "rescale_betas_zero_snr must be true or false"),
    ({"clip_sample": None}, "clip_sample = None changes sampling"),
    ({"timestep_spacing": "logsnr"}, "timestep_spacing must be one of"),
])
def test_discrete_errors_are_discrete_configs(change, match):
    with pytest.raises(ValueError, match=match):
        sv.load_config(dict(discrete_files()["DDIMScheduler"], **change))


# ------------------------------------------------------------------- diffusers 0.39's Flax schedulers

with open(os.path.join(os.path.dirname(__file__), "golden", "flax_configs.json")) as _f:
    FLAX = json.load(_f)  # by tests/golden/make_flax_config_golden.py (diffusers 0.39.0)
FLAX_VP = sorted(config.FLAX_CLASSES)


def test_flax_golden_covers_every_flax_scheduler_of_diffusers_0_39():
    assert FLAX["versions"]["diffusers"] == "0.39.0"
    assert sorted(FLAX["classes"]) == sorted(FLAX_VP + ["FlaxKarrasVeScheduler", "FlaxScoreSdeVeScheduler"])


@pytest.mark.parametrize("name", FLAX_VP)
def test_a_flax_schedulers_file_loads_as_its_torch_class_and_is_written_back_as_read(name, tmp_path):
    saved = FLAX["classes"][name]["sd"]
    (tmp_path / "scheduler_config.json").write_text(json.dumps(saved))
    state = sv.load_config(tmp_path)
    cfg = state.diffusers_config
    assert (cfg.class_name, cfg.flax_class) == (config.FLAX_CLASSES[name][0], name)
    assert cfg.beta_schedule == "scaled_linear" and cfg.prediction_type == "epsilon"
    # the torch class's model and grid fields the Flax class lacks take the torch class's defaults
    torch_cfg = config.discrete_config(dict(saved, _class_name=cfg.class_name))
    assert (cfg.timestep_spacing, cfg.steps_offset) == (torch_cfg.timestep_spacing, torch_cfg.steps_offset)
    # written back under its own name with the fields it was read with, nothing added
    assert config.discrete_config_dict(cfg) == saved
    out = sv.save_config(state, tmp_path / "again")
    assert json.loads(out.read_text()) == saved


@pytest.mark.parametrize("name", FLAX_VP)
def test_a_flax_schedulers_labels_are_the_torch_classs_up_to_its_float32_rounding(name):
    """sdevp-jax samples a Flax config on its torch class's labels. DDIM, DDPM and PNDM's Flax grids are those
    labels exactly; DPM-Solver's rounds a float32 linspace (one label off at some step counts, e.g. 833 for 832
    at 30 steps), Euler's is the float32 linspace (float rounding) and LMS' truncates that to integers (< 1)."""
    cfg = sv.load_config(FLAX["classes"][name]["sd"]).diffusers_config
    worst = 0.0
    for n, flax_labels in FLAX["classes"][name]["timesteps"].items():
        labels = np.asarray(cfg.label_spacing(int(n)), np.float64)
        flax_labels = np.asarray(flax_labels, np.float64)
        if name == "FlaxPNDMScheduler":
            # PNDM's Runge-Kutta warm-up (Liu et al. 2022) adds the midpoints of its first three steps (the lower
            # label + ratio // 2) to the base grid, which is the torch class's: this package's labels exactly
            half = {float(x) for x in labels[1:4] + (1000 // int(n)) // 2}
            assert set(flax_labels.tolist()) == set(labels.tolist()) | half, (n, flax_labels[:8], labels[:4])
            continue
        assert labels.shape == flax_labels.shape, (n, labels.shape, flax_labels.shape)
        worst = max(worst, float(np.max(np.abs(labels - flax_labels))))
    bound = {"FlaxDPMSolverMultistepScheduler": 1.0, "FlaxEulerDiscreteScheduler": 1e-3,
             "FlaxLMSDiscreteScheduler": 1.0}.get(name, 0.0)
    assert worst <= bound, (name, worst)
    if name == "FlaxDPMSolverMultistepScheduler":
        labels = np.asarray(cfg.label_spacing(30))
        assert 832 in labels and 833 not in labels and 833 in FLAX["classes"][name]["timesteps"]["30"]


@pytest.mark.parametrize("name", FLAX_VP)
def test_a_flax_schedulers_default_file_loads_as_its_torch_classs(name):
    default = FLAX["classes"][name]["default"]
    cfg = sv.load_config(default).diffusers_config
    assert cfg.flax_class == name
    # FlaxDDIM / FlaxDDPM default to clip_sample = True (to [-1, 1]), as their torch classes
    assert cfg.clip_sample_range == (1.0 if default.get("clip_sample") else None)


@pytest.mark.parametrize("name", ["FlaxKarrasVeScheduler", "FlaxScoreSdeVeScheduler", "ScoreSdeVeScheduler"])
def test_variance_exploding_configs_are_refused_by_name(name):
    cfg = FLAX["classes"].get(name, {"default": {"_class_name": name}})["default"]
    with pytest.raises(ValueError, match=f"_class_name '{name}' is a variance-exploding scheduler"):
        sv.load_config(cfg)


def test_a_field_the_flax_class_does_not_have_is_refused():
    saved = dict(FLAX["classes"]["FlaxDDIMScheduler"]["sd"], timestep_spacing="trailing")
    with pytest.raises(ValueError, match=r"unknown fields \['timestep_spacing'\] for FlaxDDIMScheduler"):
        sv.load_config(saved)


def test_a_job_records_a_flax_config_and_samples_its_torch_classs_model():
    from sdevp_jax import jobs

    saved = FLAX["classes"]["FlaxDPMSolverMultistepScheduler"]["sd"]
    spec = jobs.JobSpec(num_samples=1, batch_size=1, seed=0, steps=10, method="dpm_solver_pp", scheduler=saved)
    flax_state = jobs.job_state(spec)
    torch_spec = dataclasses.replace(spec, scheduler=dict(saved, _class_name="DPMSolverMultistepScheduler"))
    torch_state = jobs.job_state(torch_spec)
    np.testing.assert_array_equal(np.asarray(flax_state.timesteps), np.asarray(torch_state.timesteps))
    assert flax_state.diffusers_config.flax_class == "FlaxDPMSolverMultistepScheduler"


def test_a_saved_pipeline_folder_loads_its_scheduler_subfolders_config(tmp_path):
    """A diffusers pipeline saved with save_pretrained keeps the scheduler's config in scheduler/: load_config of the
    pipeline's folder reads it; a folder with neither is a FileNotFoundError naming both places."""
    config = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "beta_end": 0.012, "clip_sample": False}
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    (tmp_path / "model_index.json").write_text(json.dumps({"scheduler": ["diffusers", "DDIMScheduler"]}))
    from_pipeline = sv.load_config(tmp_path)
    from_dict = sv.load_config(config)
    np.testing.assert_array_equal(from_pipeline.schedule.knots, from_dict.schedule.knots)
    assert from_pipeline.diffusers_config.class_name == "DDIMScheduler"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no scheduler_config.json, neither in it nor in its scheduler/"):
        sv.load_config(empty)


@pytest.mark.parametrize("name", ["FlaxDPMSolverMultistepScheduler", "FlaxDDIMScheduler", "FlaxDDPMScheduler"])
def test_flax_labels_are_the_flax_classs_own(name):
    """load_config(..., flax_labels=True): the grid's model labels are the ones diffusers 0.39's Flax class built
    (tests/golden/flax_configs.json), at every step count the golden holds, exactly; for DPM-Solver they differ
    from the torch class's at 30 steps (833 for 832)."""
    for n, flax in FLAX["classes"][name]["timesteps"].items():
        state = sv.set_timesteps(sv.load_config(FLAX["classes"][name]["sd"], flax_labels=True), int(n))
        labels = np.asarray(sv.model_time(state, state.timesteps))
        if state.diffusers_config.ends_at_sigma_min and flax[-1] != 0:
            # DDIM with set_alpha_to_one = false: its last step goes on to label 0's alphas_cumprod, which the grid
            # holds as its last point (no model call there)
            assert labels[-1] == 0
            labels = labels[:-1]
        np.testing.assert_array_equal(labels, np.asarray(flax, np.float32))
    if name == "FlaxDPMSolverMultistepScheduler":
        torch_state = sv.set_timesteps(sv.load_config(FLAX["classes"][name]["sd"]), 30)
        assert 832 in np.asarray(sv.model_time(torch_state, torch_state.timesteps))


def test_flax_labels_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="flax_labels=True applies to the config of one of diffusers' Flax"):
        sv.load_config({"_class_name": "DDIMScheduler"}, flax_labels=True)
    with pytest.raises(ValueError, match="flax_labels=True is not served for FlaxEulerDiscreteScheduler"):
        sv.load_config(FLAX["classes"]["FlaxEulerDiscreteScheduler"]["sd"], flax_labels=True)
    with pytest.raises(TypeError, match="flax_labels must be a bool"):
        sv.load_config(FLAX["classes"]["FlaxDDIMScheduler"]["sd"], flax_labels="yes")
