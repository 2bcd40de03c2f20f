"""The persistent compilation cache (sdevp_jax._cache) as the CLI and jobs use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.monitoring
import numpy as np
import pytest

from sdevp_jax import _cache, cli, jobs

ROOT = Path(__file__).resolve().parent.parent
TINY = ["sample", "--steps", "20", "--num-samples", "50", "--batch-size", "32", "--no-plot", "--no-progress"]
HIT = "/jax/compilation_cache/cache_hits"


def entries(cache: Path) -> set[str]:
    """The compiled executables in a cache directory (JAX also keeps '-atime' files beside them)."""
    return {p.name for p in cache.iterdir() if p.name.endswith("-cache")}


@pytest.fixture
def cache_hits():
    """A list that collects JAX's persistent-cache hit events while the test runs."""
    hits = []

    def listener(event, **kwargs):
        if event == HIT:
            hits.append(event)

    jax.monitoring.register_event_listener(listener)
    yield hits
    jax.monitoring.unregister_event_listener(listener)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(_cache.ENV_VAR, str(tmp_path / "mine"))
    assert _cache.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.default_cache_dir() == tmp_path / "xdg" / "sdevp-jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cache.default_cache_dir() == tmp_path / "home" / ".cache" / "sdevp-jax" / "jax"


def test_import_changes_no_jax_setting():
    """A library must not switch on a global cache on import: check in a fresh interpreter."""
    code = ("import jax; before = (jax.config.jax_compilation_cache_dir, "
            "jax.config.jax_persistent_cache_min_compile_time_secs); import sdevp_jax, sdevp_jax.cli, sdevp_jax.jobs; "
            "after = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs); "
            "assert before == after == (None, 1.0), (before, after)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_context_restores_the_settings(tmp_path):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    with _cache.compilation_cache(tmp_path / "c") as path:
        assert path == tmp_path / "c" and path.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(path)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs) == before
    with _cache.compilation_cache(None) as path:
        assert path is None and jax.config.jax_compilation_cache_dir == before[0]
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cache_dir"):
        with _cache.compilation_cache(tmp_path / "file"):
            pass


def test_second_cli_run_loads_the_sampler_from_the_cache(tmp_path, cache_hits):
    cache = tmp_path / "cache"
    assert cli.main([*TINY, "--out", str(tmp_path / "a"), "--cache-dir", str(cache)]) == 0
    first = entries(cache)
    assert len(first) >= 1 and cache_hits == []  # the sampler was compiled and written
    assert cli.main([*TINY, "--out", str(tmp_path / "b"), "--cache-dir", str(cache)]) == 0
    assert entries(cache) == first  # nothing new was compiled ...
    assert len(cache_hits) >= 1  # ... because the executable was loaded
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in "ab")
    np.testing.assert_array_equal(a, b)  # bitwise: the loaded executable computes the same


def test_no_cache_and_the_default_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(_cache.ENV_VAR, str(tmp_path / "env"))
    assert cli.main([*TINY, "--out", str(tmp_path / "a"), "--no-cache"]) == 0
    assert not (tmp_path / "env").exists()
    assert cli.main([*TINY, "--out", str(tmp_path / "b")]) == 0
    assert len(entries(tmp_path / "env")) >= 1
    assert cli.main([*TINY, "--out", str(tmp_path / "c"), "--no-cache", "--cache-dir", str(tmp_path)]) == 2
    (tmp_path / "file").write_text("")
    assert cli.main([*TINY, "--out", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "file" / "x")]) == 2


class Interrupt(Exception):
    pass


def test_resumed_job_reuses_the_cache(tmp_path, cache_hits):
    """A job killed after its first chunk, resumed: the resumed run loads the sampler compiled by the first."""
    spec = jobs.JobSpec(num_samples=96, batch_size=32, seed=3, steps=20)
    cache, out = tmp_path / "cache", tmp_path / "job"

    def stop_after_first_chunk(done, total):
        if done > 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        jobs.run_job(spec, out, progress=stop_after_first_chunk, cache_dir=cache)
    assert len(list((out / "chunks").glob("chunk_*.npy"))) == 1
    written = entries(cache)
    assert len(written) == 1 and cache_hits == []
    jobs.run_job(spec, out, cache_dir=cache)
    assert entries(cache) == written and len(cache_hits) == 1
    assert np.load(out / "samples.npz")["samples"].shape == (96, 2)
