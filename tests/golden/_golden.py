"""What every golden script shares: the versions it ran with, and an atomic write of the .npz."""

from __future__ import annotations

import os

import numpy as np


def versions() -> np.ndarray:
    """The diffusers and torch versions that produced a golden file (stored in it as ``versions``)."""
    import diffusers
    import torch

    return np.array([f"diffusers {diffusers.__version__}", f"torch {torch.__version__}"])


def write_npz(path: str, arrays: dict) -> None:
    """``arrays`` plus ``versions`` to ``path``, through a temporary file renamed into place."""
    arrays = dict(arrays, versions=versions())
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    print(f"wrote {len(arrays)} arrays to {path}: {arrays['versions']}")
