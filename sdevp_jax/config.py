"""Read and write diffusers' ``scheduler_config.json`` for ``ScoreSdeVpScheduler``.

diffusers saves a scheduler's config as a JSON object with ``_class_name``,
``_diffusers_version`` and the ``__init__`` arguments -- for this scheduler
``num_train_timesteps``, ``beta_min``, ``beta_max`` and ``sampling_eps``. These
functions map that file to and from a :class:`~sdevp_jax.ScoreSdeVpSchedulerState`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ._io import atomic_write
from .scheduler import ScoreSdeVpSchedulerState, create_state

__all__ = ["load_config", "save_config", "config_dict", "state_from_config"]

CLASS_NAME = "ScoreSdeVpScheduler"
# The diffusers release whose scheduler this package reproduces (and whose files it reads).
DIFFUSERS_VERSION = "0.42.1"
FIELDS = ("num_train_timesteps", "beta_min", "beta_max", "sampling_eps")


def config_dict(state: ScoreSdeVpSchedulerState) -> dict:
    """The diffusers config of ``state`` (the four fields plus ``_class_name``/``_diffusers_version``)."""
    return {
        "_class_name": CLASS_NAME,
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": int(state.num_train_timesteps),
        "beta_min": float(state.beta_min),
        "beta_max": float(state.beta_max),
        "sampling_eps": float(state.sampling_eps),
    }


def state_from_config(config: dict, *, source: str = "config") -> ScoreSdeVpSchedulerState:
    """Validate a diffusers config dict and build the state (timesteps unset).

    Keys starting with ``_`` other than ``_class_name`` are metadata and ignored;
    a missing field takes diffusers' default; an unknown field is an error.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
    name = config.get("_class_name", CLASS_NAME)
    if name != CLASS_NAME:
        raise ValueError(f"{source}: _class_name must be {CLASS_NAME!r}, got {name!r}")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in FIELDS)
    if unknown:
        raise ValueError(f"{source}: unknown fields {unknown}; a {CLASS_NAME} config has {list(FIELDS)}")
    return create_state(**{k: config[k] for k in FIELDS if k in config})


def load_config(path: str | os.PathLike) -> ScoreSdeVpSchedulerState:
    """Load a ``scheduler_config.json`` (a file, or a directory containing one) into a state."""
    path = Path(path)
    if path.is_dir():
        path = path / "scheduler_config.json"
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    return state_from_config(config, source=str(path))


def save_config(state: ScoreSdeVpSchedulerState, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``state``'s config as diffusers does (a directory gets ``scheduler_config.json``).

    Refuses to replace an existing file unless ``overwrite=True``; writes atomically.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "scheduler_config.json"
    text = json.dumps(config_dict(state), indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()), overwrite=overwrite)
