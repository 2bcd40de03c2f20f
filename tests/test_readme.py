"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

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
