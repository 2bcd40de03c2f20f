"""The README's Python examples run as written."""

import re
from pathlib import Path

import numpy as np
import pytest

import sdevp_jax as sv

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.slow
def test_readme_examples_run():
    assert len(BLOCKS) >= 2
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
    # "Conditions and guidance": class 1 is the modes 2 and 3; guided samples land there
    modes = np.asarray(sv.mixtures.assign_modes(namespace["cm"].mixture, namespace["xg"]))
    assert np.isin(modes, [2, 3]).all()
