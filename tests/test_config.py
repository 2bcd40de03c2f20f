"""diffusers scheduler_config.json: load, save, round trip, and refusal to overwrite."""

import json

import pytest

import sdevp_jax as sv


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
    ('{"_class_name": "DDPMScheduler"}', "_class_name must be 'ScoreSdeVpScheduler'"),
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
