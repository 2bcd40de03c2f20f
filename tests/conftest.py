"""Test configuration: make silent dtype and rank promotion errors, as diffrax's suite does.

Under "strict" dtype promotion a float32 array never silently meets a float64 or
bfloat16 one, and under "raise" rank promotion a (batch,) vector never silently
broadcasts against (batch, dim): the library has to cast and reshape explicitly.
"""

import os
import sys

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# Shared test helpers (parity_cases.py) live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache_in_tmp(tmp_path_factory):
    """The CLI's default persistent compilation cache under pytest's tmp dir, never the user's ~/.cache."""
    old = os.environ.get("SDEVP_JAX_CACHE_DIR")
    os.environ["SDEVP_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    yield
    if old is None:
        del os.environ["SDEVP_JAX_CACHE_DIR"]
    else:
        os.environ["SDEVP_JAX_CACHE_DIR"] = old


@pytest.fixture
def x64():
    """Run the test with 64-bit floats enabled (and back to the default after)."""
    with jax.enable_x64(True):
        yield


# The fast tier. `pytest -m "not slow"` is the edit-test loop; besides the tests marked slow in
# their files, the tests whose measured time (tests/slow_tier.txt, written by tests/measure_tier.py
# from a `--durations=0` run of that tier on the project's 2-core VM) was above its threshold are
# in the slow tier. The full suite (`pytest`, what CI runs) runs every test either way.
_SLOW_TIER = os.path.join(os.path.dirname(__file__), "slow_tier.txt")


def pytest_collection_modifyitems(config, items):
    if not os.path.exists(_SLOW_TIER):
        return
    with open(_SLOW_TIER) as f:
        measured = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    for item in items:
        if item.nodeid in measured:
            item.add_marker(pytest.mark.slow)
