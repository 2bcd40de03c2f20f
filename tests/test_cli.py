"""Tests of the ``sdevp-jax`` console script (sdevp_jax.cli), run in-process."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from sdevp_jax import cli

TINY = ["--steps", "20", "--num-samples", "50", "--no-progress"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_sample(out: Path, *extra: str) -> int:
    return cli.main(["sample", *TINY, "--out", str(out), *extra])


def load(out: Path) -> np.ndarray:
    with np.load(out / "samples.npz") as data:
        assert list(data.keys()) == ["samples"]
        return data["samples"]


@pytest.fixture(scope="module")
def base_out(tmp_path_factory) -> Path:
    """One run with batch size 16 (chunks 16, 16, 16 and a padded 2), seed 0."""
    out = tmp_path_factory.mktemp("base") / "nested" / "out"  # created by the CLI
    assert run_sample(out, "--batch-size", "16", "--seed", "0") == 0
    return out


def test_writes_samples_and_plot(base_out):
    samples = load(base_out)
    assert samples.shape == (50, 2)
    assert samples.dtype == np.float32
    assert np.all(np.isfinite(samples))
    assert (base_out / "samples.png").read_bytes().startswith(PNG_SIGNATURE)
    # No temporary files are left behind.
    assert sorted(p.name for p in base_out.iterdir()) == ["samples.npz", "samples.png"]


def test_summary_line(tmp_path, capsys):
    assert run_sample(tmp_path, "--batch-size", "64") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "samples.npz" in out[0] and "samples.png" in out[0] and "50 samples" in out[0]


def test_chunking_is_exact(base_out, tmp_path):
    assert run_sample(tmp_path, "--batch-size", "64", "--seed", "0") == 0
    np.testing.assert_array_equal(load(tmp_path), load(base_out))


def test_seed_changes_samples(base_out, tmp_path):
    assert run_sample(tmp_path, "--batch-size", "16", "--seed", "1") == 0
    assert not np.array_equal(load(tmp_path), load(base_out))


@pytest.mark.parametrize("existing", ["samples.npz", "samples.png"])
def test_refuses_to_overwrite_without_force(tmp_path, capsys, existing):
    precious = tmp_path / existing
    precious.write_bytes(b"user data, not ours")
    assert run_sample(tmp_path) == 2
    err = capsys.readouterr().err
    assert "--force" in err and existing in err
    assert precious.read_bytes() == b"user data, not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # nothing computed or written


def test_rerun_needs_force(tmp_path, capsys):
    assert run_sample(tmp_path, "--seed", "3") == 0
    before = {name: (tmp_path / name).read_bytes() for name in cli.OUTPUT_NAMES}
    capsys.readouterr()
    assert run_sample(tmp_path, "--seed", "4") == 2
    assert "--force" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in cli.OUTPUT_NAMES} == before
    assert run_sample(tmp_path, "--seed", "4", "--force") == 0
    assert (tmp_path / "samples.npz").read_bytes() != before["samples.npz"]
    assert load(tmp_path).shape == (50, 2)


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--steps", "0"],
        ["sample", "--num-samples", "-1"],
        ["sample", "--batch-size", "0"],
        ["sample", "--seed", "-1"],
        ["sample", "--seed", str(2**32)],
        ["sample", "--steps", "abc"],
        ["sample", "--bogus"],
        ["nope"],
        [],
    ],
)
def test_bad_arguments_return_2(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out must not be created either
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip()
    assert list(tmp_path.iterdir()) == []


def test_help_returns_0(capsys):
    assert cli.main(["sample", "--help"]) == 0
    assert "--num-samples" in capsys.readouterr().out


def test_console_script_declared():
    (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "sdevp-jax"]
    assert entry.load() is cli.main


def test_module_runs_as_script():
    proc = subprocess.run(
        [sys.executable, "-m", "sdevp_jax.cli", "sample", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--steps" in proc.stdout
