"""The examples run (at a tiny size; the real runs are not tests)."""

import importlib.util
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_digits_smoke(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "examples" / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_digits", module)  # flax's dataclasses look their module up
    spec.loader.exec_module(module)
    args = ["--train-steps", "40", "--sample-steps", "20", "--num-test", "3", "--out", str(tmp_path)]
    with jax.numpy_dtype_promotion("standard"):  # optax mixes its int step count with floats
        assert module.main(args) == 0
    metrics = json.loads((tmp_path / "digits_metrics.json").read_text())
    assert np.isfinite(metrics["bits_per_dim_mean"]) and metrics["test_digits"] == 3
    assert (tmp_path / "digits_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert module.main(args) == 2  # never overwrite without --force
    assert "--force" in capsys.readouterr().err
