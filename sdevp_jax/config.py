"""Read and write diffusers' ``scheduler_config.json``: ``ScoreSdeVpScheduler`` and the discrete VP schedulers.

diffusers saves a scheduler's config as a JSON object with ``_class_name``,
``_diffusers_version`` and the ``__init__`` arguments. Two kinds map to and from a
:class:`~sdevp_jax.ScoreSdeVpSchedulerState`:

* ``ScoreSdeVpScheduler`` (``num_train_timesteps``, ``beta_min``, ``beta_max``,
  ``sampling_eps``): the linear schedule with an epsilon-model; a file without
  ``_class_name`` is read as one.
* the discrete schedulers of :data:`DISCRETE_CLASSES` (DDPM, DDIM, DPMSolverMultistep,
  UniPCMultistep, EulerDiscrete, EulerAncestralDiscrete, PNDM, LMSDiscrete, HeunDiscrete, KDPM2Discrete,
  KDPM2AncestralDiscrete, ...): a :func:`discrete_config`, whose
  state is ``create_state(schedule=cfg.schedule, prediction_type=cfg.prediction_type,
  diffusers_config=cfg)`` -- its ``set_timesteps`` defaults to the config's
  ``timestep_spacing`` and ``steps_offset`` and the class's labels. diffusers 0.39 and
  earlier also shipped Flax versions of six of them, whose files carry the class name with a
  ``Flax`` prefix (``FlaxDDIMScheduler``, ...; :data:`FLAX_CLASSES`): they load as the class
  without the prefix and are written back under their own name, with their own fields.

Every other state (a cosine schedule, a discrete schedule built by hand, a linear
schedule with a v- or x0-model) has no diffusers config file: :func:`save_config`
refuses it with a ValueError rather than write a file that would load as another model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import _checks, schedules
from ._io import atomic_write
from .scheduler import ScoreSdeVpSchedulerState, create_state

__all__ = [
    "load_config",
    "save_config",
    "config_dict",
    "state_from_config",
    "discrete_state",
    "DiscreteConfig",
    "discrete_config",
    "discrete_config_dict",
]

CLASS_NAME = "ScoreSdeVpScheduler"
# The diffusers release whose scheduler this package reproduces (and whose files it reads).
DIFFUSERS_VERSION = "0.42.1"
FIELDS = ("num_train_timesteps", "beta_min", "beta_max", "sampling_eps")


def config_dict(state: ScoreSdeVpSchedulerState) -> dict:
    """The diffusers config of ``state``: what :func:`save_config` writes.

    A state loaded from a discrete scheduler's config gives that config back
    (:func:`discrete_config_dict`); a linear-schedule epsilon state without one gives
    ``ScoreSdeVpScheduler``'s four fields plus ``_class_name``/``_diffusers_version``.

    Raises:
      ValueError: the state has no diffusers config file (a cosine schedule, a
        discrete schedule built by hand, a linear schedule with a v- or x0-model), or it
        was changed after loading so that its config no longer describes it.
    """
    if state.diffusers_config is not None:
        return discrete_config_dict(_check_describes(state.diffusers_config, state))
    if state.schedule.is_discrete:
        raise ValueError(
            "save_config: this state's discrete schedule was built by hand (no diffusers_config); it has no "
            "diffusers config file. Load it from a discrete scheduler's config (sv.load_config, e.g. with "
            "trained_betas) to be able to save it"
        )
    if not isinstance(state.schedule, schedules.LinearSchedule):
        raise ValueError(
            f"save_config: a {type(state.schedule).__name__} has no diffusers config file (diffusers has no "
            "continuous-time scheduler for it; only ScoreSdeVpScheduler's linear schedule and the discrete "
            "schedulers' configs are written)"
        )
    if state.prediction_type != "epsilon":
        raise ValueError(
            f"save_config: ScoreSdeVpScheduler's config has no prediction_type field (its model predicts "
            f"epsilon); this state's prediction_type is {state.prediction_type!r}, which no diffusers config "
            "file of the linear schedule can record"
        )
    return {
        "_class_name": CLASS_NAME,
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": int(state.num_train_timesteps),
        "beta_min": float(state.beta_min),
        "beta_max": float(state.beta_max),
        "sampling_eps": float(state.sampling_eps),
    }


def _check_describes(config: "DiscreteConfig", state: ScoreSdeVpSchedulerState) -> "DiscreteConfig":
    """``config`` if loading it gives ``state``'s schedule, prediction type and ``sampling_eps``; else a ValueError."""
    if not isinstance(config, DiscreteConfig):
        raise TypeError(f"state.diffusers_config must be a DiscreteConfig, got {type(config).__name__}")
    problems = []
    if state.prediction_type != config.prediction_type:
        problems.append(f"prediction_type {state.prediction_type!r} (the config's: {config.prediction_type!r})")
    ours = state.schedule
    theirs = config.schedule
    if not (
        isinstance(ours, schedules.DiscreteSchedule)
        and ours.num_train_timesteps == theirs.num_train_timesteps
        and not _checks.is_traced(ours.knots)
        and np.array_equal(np.asarray(ours.knots), np.asarray(theirs.knots))
    ):
        problems.append("a schedule other than the config's")
    eps = _checks.host_value(state.sampling_eps)
    if eps is None or not np.all(eps == 1.0 / config.num_train_timesteps):
        problems.append(
            f"sampling_eps = {state.sampling_eps!r} (a discrete config has no such field: it means "
            f"1/num_train_timesteps = {1.0 / config.num_train_timesteps!r})"
        )
    if problems:
        raise ValueError(
            f"save_config: the state's diffusers_config ({config.class_name}) no longer describes it: "
            + "; ".join(problems)
        )
    return config


def state_from_config(config: dict, *, source: str = "config", zero_snr: str = "exact",
                      flax_labels: bool = False) -> ScoreSdeVpSchedulerState:
    """Validate a diffusers config dict and build the state (timesteps unset).

    ``_class_name`` picks the kind: absent or ``ScoreSdeVpScheduler``, the linear
    schedule (keys starting with ``_`` are metadata and ignored; a missing field
    takes diffusers' default; an unknown field is an error); one of
    :data:`DISCRETE_CLASSES`, :func:`discrete_state` of :func:`discrete_config`
    (whose errors it raises).
    """
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
    name = config.get("_class_name", CLASS_NAME)
    if not isinstance(name, str):
        raise ValueError(f"{source}: _class_name must be a string, one of {_known_classes()}, got {name!r}")
    if is_discrete_class(name):
        return discrete_state(discrete_config(config, source=source, zero_snr=zero_snr, flax_labels=flax_labels))
    if name != CLASS_NAME:
        _check_class_name(name, source)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in FIELDS)
    if unknown:
        raise ValueError(f"{source}: unknown fields {unknown}; a {CLASS_NAME} config has {list(FIELDS)}")
    return create_state(**{k: config[k] for k in FIELDS if k in config})


def discrete_state(config: "DiscreteConfig") -> ScoreSdeVpSchedulerState:
    """The state of a discrete scheduler's config: its schedule and prediction type, the config recorded.

    ``sampling_eps`` is ``1/num_train_timesteps`` (label 0); ``set_timesteps(state, n)``
    then uses the config's ``timestep_spacing``, ``steps_offset`` and class.
    """
    return create_state(schedule=config.schedule, prediction_type=config.prediction_type, diffusers_config=config)


def load_config(path_or_dict: str | os.PathLike | dict, *, zero_snr: str = "exact",
                flax_labels: bool = False) -> ScoreSdeVpSchedulerState:
    """Load a ``scheduler_config.json`` (a file, a directory containing one, a saved diffusers pipeline whose
    ``scheduler/`` subfolder holds it, or its dict) into a state.

    A ``ScoreSdeVpScheduler`` config (or one without ``_class_name``) gives the linear
    schedule; a config of one of :data:`DISCRETE_CLASSES` (DDPM, DDIM, DPMSolverMultistep,
    UniPCMultistep, EulerDiscrete, EulerAncestralDiscrete, PNDM, LMSDiscrete, HeunDiscrete, KDPM2Discrete,
    KDPM2AncestralDiscrete, ...) gives :func:`discrete_state`. Errors:
    a ValueError naming the field (see :func:`discrete_config`).

    ``zero_snr`` serves a config with ``rescale_betas_zero_snr = true`` (zero terminal SNR, Lin et al. 2024):
    ``"exact"`` (default) keeps its last label's ``alphas_cumprod = 0``, so a run from that label starts at
    :math:`\alpha = 0` exactly (v- and x0-models, with the data-prediction solvers:
    :func:`sdevp_jax.loops.check_zero_snr_start`); ``"diffusers"`` reproduces diffusers' DPMSolverMultistep,
    UniPC and Euler schedulers, which replace that 0 by ``2**-24`` (:data:`ZERO_SNR_CLAMP_CLASSES`).

    ``flax_labels=True`` samples a config of one of diffusers' Flax schedulers on the labels that Flax
    class builds (:attr:`DiscreteConfig.flax_labels`) instead of its torch class's.

    Examples:
      >>> state = sv.load_config({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
      ...                         "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
      ...                         "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 1,
      ...                         "clip_sample": False})
      >>> state.schedule.is_discrete, state.prediction_type, sv.set_timesteps(state, 50).spacing
      (True, 'epsilon', 'leading')
    """
    if isinstance(path_or_dict, dict):
        return state_from_config(path_or_dict, zero_snr=zero_snr, flax_labels=flax_labels)
    config, source = read_config_file(path_or_dict)
    return state_from_config(config, source=source, zero_snr=zero_snr, flax_labels=flax_labels)


def read_config_file(path: str | os.PathLike) -> tuple[dict, str]:
    """The JSON of a ``scheduler_config.json`` and its path: a file, a directory holding one, or a saved
    diffusers pipeline (its ``scheduler/`` subfolder holds it, next to ``model_index.json``)."""
    path = Path(path)
    if path.is_dir():
        here, pipeline = path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"
        if not here.exists() and pipeline.exists():
            here = pipeline
        elif not here.exists():
            raise FileNotFoundError(f"{path}: a directory with no scheduler_config.json, neither in it nor in its "
                                    f"scheduler/ subfolder (a saved diffusers pipeline's)")
        path = here
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text), str(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be a scheduler config") from None


def save_config(state: ScoreSdeVpSchedulerState, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``state``'s config as diffusers does (a directory gets ``scheduler_config.json``).

    What is written is :func:`config_dict`: a loaded discrete config as it was read
    (``load -> save -> load`` gives an equal config), else ``ScoreSdeVpScheduler``'s.
    Refuses to replace an existing file unless ``overwrite=True``; writes atomically.

    Raises:
      ValueError: the state has no diffusers config file (see :func:`config_dict`).
      FileExistsError: the file exists and ``overwrite`` is False.

    Examples:
      >>> import json, pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "scheduler_config.json"
      >>> _ = sv.save_config(sv.create_state(), path)   # ScoreSdeVpScheduler's four fields
      >>> json.loads(path.read_text())["_class_name"]
      'ScoreSdeVpScheduler'
      >>> sv.load_config(path).beta_max
      20.0
    """
    config = config_dict(state)  # before touching the file system
    path = Path(path)
    if path.is_dir():
        path = path / "scheduler_config.json"
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()), overwrite=overwrite)


# --------------------------------------------------------------------------- discrete schedulers
#
# The scheduler_config.json of diffusers' discrete VP schedulers. Read by
# :func:`discrete_config`, turned into a state by :func:`discrete_state`.

#: Fields every discrete class has, with diffusers 0.42.1's defaults (the model and its grid).
_MODEL_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}

#: Fields that do not change the model or the grid, with the values this package accepts:
#: ``None`` means any value (a choice of diffusers' solver, which sdevp-jax makes by its own
#: arguments, or a setting inert under the accepted values of the others); a tuple lists the
#: accepted values, the first being diffusers' default.
_EXTRA_FIELDS: dict[str, Optional[tuple]] = {
    "clip_sample": (True, False),  # DDPM / DDIM / Heun: the data prediction clipped to +-clip_sample_range
    "clip_sample_range": None,
    "thresholding": (False, True),  # dynamic thresholding: the config's grid solver applies it (not DDPM's)
    "dynamic_thresholding_ratio": None,
    "sample_max_value": None,
    "set_alpha_to_one": None,
    "skip_prk_steps": None,
    # DDPM's reverse variance; "learned"/"learned_range" models return 2C channels (also DPMSolverMultistep's)
    "variance_type": (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned",
                      "learned_range"),
    "solver_order": None,
    "algorithm_type": None,
    "solver_type": None,
    "lower_order_final": None,
    "euler_at_final": None,
    "predict_x0": None,
    "disable_corrector": None,
    "solver_p": (None,),
    # diffusers' sigma grids (sdevp_jax.grids.SIGMA_SPACINGS), served for SIGMA_CLASSES
    "use_karras_sigmas": (False, True),
    "use_exponential_sigmas": (False, True),
    "use_beta_sigmas": (False, True),
    "use_lu_lambdas": (False, True),
    "use_flow_sigmas": (False,),
    "flow_shift": None,
    "use_dynamic_shifting": (False,),
    "time_shift_type": None,
    "final_sigmas_type": ("zero", "sigma_min"),  # "sigma_min" stops at label 0's sigma instead of 0
    "lambda_min_clipped": None,  # DPMSolverMultistep's label grids leave out the labels whose log-SNR is below it
    "interpolation_type": ("linear",),
    "timestep_type": ("discrete",),
    "sigma_min": (None,),
    "sigma_max": (None,),
    "shift_terminal": (None,),
    "predictor_order": None,  # SASolverScheduler's orders, served by sa_solver's options (1-4, checked at loading)
    "corrector_order": None,
    "tau_func": (None,),  # SASolverScheduler's default tau function (a callable is not JSON; only null loads)
}

#: class -> (its default timestep_spacing, its extra fields with diffusers' defaults).
DISCRETE_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "DDPMScheduler": ("leading", {
        "variance_type": "fixed_small", "clip_sample": True, "thresholding": False,
        "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    }),
    "DDIMScheduler": ("leading", {
        "clip_sample": True, "set_alpha_to_one": True, "thresholding": False,
        "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    }),
    "DDIMInverseScheduler": ("leading", {"clip_sample": True, "set_alpha_to_one": True, "clip_sample_range": 1.0}),
    "DPMSolverMultistepInverseScheduler": ("linspace", {
        "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
        "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False,
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
        "use_flow_sigmas": False, "flow_shift": 1.0, "lambda_min_clipped": -math.inf, "variance_type": None,
    }),
    "DPMSolverMultistepScheduler": ("linspace", {
        "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
        "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
        "use_flow_sigmas": False, "flow_shift": 1.0, "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf, "variance_type": None, "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }),
    "DPMSolverSinglestepScheduler": ("linspace", {
        "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
        "lower_order_final": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
        "use_beta_sigmas": False, "use_flow_sigmas": False, "flow_shift": 1.0, "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf, "variance_type": None, "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }),
    "DEISMultistepScheduler": ("linspace", {
        "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
        "algorithm_type": "deis", "solver_type": "logrho", "lower_order_final": True, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False, "flow_shift": 1.0,
        "use_dynamic_shifting": False, "time_shift_type": "exponential",
    }),
    "UniPCMultistepScheduler": ("linspace", {
        "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0, "predict_x0": True, "solver_type": "bh2", "lower_order_final": True,
        "disable_corrector": [], "solver_p": None, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False,
        "flow_shift": 1.0, "final_sigmas_type": "zero", "use_dynamic_shifting": False,
        "time_shift_type": "exponential", "sigma_min": None, "sigma_max": None, "shift_terminal": None,
    }),
    "EulerDiscreteScheduler": ("linspace", {
        "interpolation_type": "linear", "use_karras_sigmas": False, "use_exponential_sigmas": False,
        "use_beta_sigmas": False, "sigma_min": None, "sigma_max": None, "timestep_type": "discrete",
        "final_sigmas_type": "zero",
    }),
    "SASolverScheduler": ("linspace", {
        "predictor_order": 2, "corrector_order": 2, "tau_func": None, "thresholding": False,
        "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "data_prediction",
        "lower_order_final": True, "use_karras_sigmas": False, "use_exponential_sigmas": False,
        "use_beta_sigmas": False, "use_flow_sigmas": False, "flow_shift": 1.0, "lambda_min_clipped": -math.inf,
        "variance_type": None,
    }),
    "EulerAncestralDiscreteScheduler": ("linspace", {}),
    "HeunDiscreteScheduler": ("linspace", {
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False, "clip_sample": False,
        "clip_sample_range": 1.0,
    }),
    "KDPM2DiscreteScheduler": ("linspace", {
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    }),
    "KDPM2AncestralDiscreteScheduler": ("linspace", {
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    }),
    "PNDMScheduler": ("leading", {"skip_prk_steps": False, "set_alpha_to_one": False}),
    "LMSDiscreteScheduler": ("linspace", {
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    }),
}
#: Classes whose ``__init__`` defaults of the model's fields differ from :data:`_MODEL_DEFAULTS` (a file without the
#: field means these).
_CLASS_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    name: {"beta_start": 0.00085, "beta_end": 0.012}
    for name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
}
#: diffusers <= 0.39's Flax schedulers (removed in 0.40) -> the class whose fields and defaults they share,
#: and the fields of :data:`_MODEL_DEFAULTS` their ``__init__`` has (read off ``save_config`` of each class with
#: its defaults, diffusers 0.39.0; tests/golden/make_flax_config_golden.py). Their label grids are the torch
#: class's, except where the Flax class builds them in float32: at 30 steps FlaxDPMSolverMultistepScheduler
#: steps through label 833 where DPMSolverMultistepScheduler (and this package) use 832, and
#: FlaxLMSDiscreteScheduler / FlaxEulerDiscreteScheduler's labels differ by float32 rounding (665.99994 for
#: 666 at 10 steps; LMS truncates them to integers). Loaded here, such a config samples on the torch class's grid.
FLAX_CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "FlaxDDPMScheduler": ("DDPMScheduler", ()),
    "FlaxDDIMScheduler": ("DDIMScheduler", ("steps_offset",)),
    "FlaxDPMSolverMultistepScheduler": ("DPMSolverMultistepScheduler", ("timestep_spacing",)),
    "FlaxEulerDiscreteScheduler": ("EulerDiscreteScheduler", ("timestep_spacing",)),
    "FlaxPNDMScheduler": ("PNDMScheduler", ("steps_offset",)),
    "FlaxLMSDiscreteScheduler": ("LMSDiscreteScheduler", ()),
}
#: Variance-exploding schedulers (torch and Flax): a model of another SDE, refused by name.
VE_CLASSES = ("ScoreSdeVeScheduler", "KarrasVeScheduler", "FlaxScoreSdeVeScheduler", "FlaxKarrasVeScheduler")
_FLAX_BASE_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                     "prediction_type")


def is_discrete_class(name: Any) -> bool:
    """Whether ``name`` is a ``_class_name`` :func:`discrete_config` reads (:data:`DISCRETE_CLASSES` or
    :data:`FLAX_CLASSES`)."""
    return isinstance(name, str) and (name in DISCRETE_CLASSES or name in FLAX_CLASSES)


def _known_classes() -> str:
    return ", ".join(map(repr, (CLASS_NAME,) + tuple(DISCRETE_CLASSES) + tuple(FLAX_CLASSES)))


def _check_class_name(name: Any, source: str) -> None:
    """Refuse a ``_class_name`` this package does not read, saying why for the variance-exploding ones."""
    if name in VE_CLASSES:
        raise ValueError(
            f"{source}: _class_name {name!r} is a variance-exploding scheduler (x_t = x_0 + sigma_t z, Song et al. "
            f"2021 / Karras et al. 2022), a model of another SDE; this package samples variance-preserving "
            f"models, whose configs are one of {_known_classes()}"
        )
    raise ValueError(f"{source}: _class_name must be one of {_known_classes()}, got {name!r}")


#: Classes whose ``final_sigmas_type="sigma_min"`` is served: the grid ends at label 0 and the solver stops there.
SIGMA_MIN_CLASSES = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler")

#: diffusers' inverse schedulers: their configs load for :func:`sdevp_jax.invert_ode` (:meth:`DiscreteConfig.inverse_solver`).
INVERSE_CLASSES = ("DDIMInverseScheduler", "DPMSolverMultistepInverseScheduler")

#: Classes whose ``thresholding`` is served, by the grid solver of :meth:`DiscreteConfig.solver_options`.
THRESHOLDING_CLASSES = ("DDIMScheduler", "DPMSolverMultistepScheduler", "DPMSolverMultistepInverseScheduler",
                        "DPMSolverSinglestepScheduler",
                        "DEISMultistepScheduler", "UniPCMultistepScheduler", "SASolverScheduler")

#: Classes whose sigma grids (``use_karras_sigmas``, ...) are served: :data:`sdevp_jax.grids.SIGMA_SPACINGS`,
#: by config field, in the order diffusers' ``set_timesteps`` tests them.
SIGMA_CLASSES = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                 "DEISMultistepScheduler", "SASolverScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
                 "LMSDiscreteScheduler", "DPMSolverMultistepInverseScheduler")
_SIGMA_FIELDS = {"use_karras_sigmas": "karras_sigmas", "use_lu_lambdas": "lu_lambdas",
                 "use_exponential_sigmas": "exponential_sigmas", "use_beta_sigmas": "beta_sigmas"}

#: Classes that clip the data prediction with ``clip_sample`` / ``clip_sample_range``.
CLIP_CLASSES = ("DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "HeunDiscreteScheduler")

#: Classes whose label grids leave out the labels below ``lambda_min_clipped`` (:attr:`DiscreteConfig.last_timestep`).
LAMBDA_CLIP_CLASSES = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "SASolverScheduler")

#: Classes without ``rescale_betas_zero_snr`` in their ``__init__``.
_NO_ZERO_SNR_FIELD = ("PNDMScheduler", "LMSDiscreteScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
                      "SASolverScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                      "KDPM2AncestralDiscreteScheduler")
#: Classes without ``timestep_spacing`` and ``steps_offset``: their label grid is always ``linspace``'s.
_NO_SPACING_FIELDS = ("DPMSolverSinglestepScheduler",)
#: Classes that, with ``rescale_betas_zero_snr``, set the last ``alphas_cumprod`` to ``2**-24`` instead of 0
#: (diffusers 0.42.1: "close to 0 without being 0 so first sigma is not inf"); DDIM and DDPM keep the 0.
ZERO_SNR_CLAMP_CLASSES = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
                          "EulerAncestralDiscreteScheduler")
#: That value, diffusers' float16 smallest subnormal.
DIFFUSERS_ZERO_SNR_CLAMP = 2.0**-24
#: How a zero-terminal-SNR config's last label is served (:func:`load_config`'s ``zero_snr``).
ZERO_SNR_MODES = ("exact", "diffusers")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclasses.dataclass(frozen=True)
class DiscreteConfig:
    """A diffusers discrete scheduler's config, validated: the model, its grid, and the rest.

    Attributes:
      class_name: the diffusers class (``_class_name``), a key of :data:`DISCRETE_CLASSES`.
      num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: the noise
        schedule as diffusers names it (``trained_betas`` a tuple of floats or ``None``).
      prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
      timestep_spacing: ``"linspace"``, ``"leading"`` or ``"trailing"`` (see
        :func:`sdevp_jax.grids.diffusers_label_spacing`).
      steps_offset: an int >= 0.
      extra: every other field of the file (sorted), each at a value that does not change
        the model or the grid, kept so that :func:`discrete_config_dict` writes it back;
        metadata keys (``_diffusers_version``) included.
      flax_class: for a file of one of diffusers' Flax schedulers (:data:`FLAX_CLASSES`),
        its ``_class_name`` (``class_name`` is then the class it shares its fields with);
        ``None`` otherwise.
      flax_fields: with ``flax_class``, the fields of the file, which
        :func:`discrete_config_dict` writes back (and no others).
      rescale_betas_zero_snr: the betas rescaled to zero terminal SNR (Lin et al. 2024).
      flax_labels: with ``flax_class``, sample on the labels the Flax class builds (in float32 JAX
        arithmetic: ``FlaxDPMSolverMultistepScheduler``'s ``linspace`` and ``trailing`` grids round a float32
        ``linspace``/``arange``, one label off the torch class's at some step counts, e.g. 833 for 832 at 30
        steps), not the torch class's, and end where it ends (the Flax DPM-Solver's last step goes to label 0's
        noise level, the torch class's to sigma = 0); for DDIM, DDPM and PNDM the two are the same.
      zero_snr: with ``rescale_betas_zero_snr``, ``"exact"`` (the last label's ``alphas_cumprod`` is 0,
        :math:`\alpha(1) = 0`) or ``"diffusers"`` (``2**-24`` for :data:`ZERO_SNR_CLAMP_CLASSES`, as diffusers
        sets it; DDIM and DDPM keep 0 there too). Not written to the file.
    """

    class_name: str
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    trained_betas: Optional[tuple]
    prediction_type: str
    timestep_spacing: str
    steps_offset: int
    extra: tuple = ()
    flax_class: Optional[str] = None
    flax_fields: tuple = ()
    rescale_betas_zero_snr: bool = False
    zero_snr: str = "exact"
    flax_labels: bool = False

    @property
    def clip_sample_range(self) -> Optional[float]:
        r"""The bound ``r`` the data prediction is clipped to, ``[-r, r]``, or ``None``.

        diffusers' DDPMScheduler and DDIMScheduler (and their Flax versions) clip the data
        prediction :math:`\hat x_0` of each step to ``[-clip_sample_range, clip_sample_range]``
        when ``clip_sample`` is true (their default; the saved config of diffusers' DDPM pixel
        models), and so does HeunDiscreteScheduler (default false); the other classes have no such field and
        ignore one a file carries.
        """
        extra = dict(self.extra)
        if self.class_name not in CLIP_CLASSES or not extra.get("clip_sample"):
            return None
        return float(extra.get("clip_sample_range", 1.0))

    @property
    def ends_at_sigma_min(self) -> bool:
        """``final_sigmas_type = "sigma_min"`` (DPMSolverMultistep, DPMSolverSinglestep, UniPC; DEIS always; PNDM and
        DDIM with ``set_alpha_to_one = false``, PNDM's default): the
        label grid gets label 0 appended, and the config's solver ends there (``final_sigmas_type="last"``) instead
        of stepping to sigma = 0 (with a method given, pass ``final_sigmas_type="last"`` to it to end there as
        diffusers does)."""
        if self.flax_labels and self.flax_class == "FlaxDPMSolverMultistepScheduler":
            return True  # the Flax class's last step goes to label 0 (its prev_timestep 0), not to sigma = 0
        if self.class_name in ("DEISMultistepScheduler", "SASolverScheduler"):  # they always end at label 0's sigma
            return True
        if self.class_name == "PNDMScheduler":  # set_alpha_to_one=False: its last step goes to label 0's alphas_cumprod
            return not dict(self.extra).get("set_alpha_to_one", False)
        if self.class_name == "DDIMScheduler":  # likewise (with steps_offset > 0 its last label is not 0)
            return not dict(self.extra).get("set_alpha_to_one", True)
        return self.class_name in SIGMA_MIN_CLASSES and dict(self.extra).get("final_sigmas_type") == "sigma_min"

    @property
    def sigma_spacing(self) -> Optional[str]:
        """The sigma grid the config asks for (``use_karras_sigmas`` -> ``"karras_sigmas"``, ...; see
        :func:`sdevp_jax.grids.sigma_grid`), or ``None`` (its ``timestep_spacing`` labels)."""
        if self.class_name not in SIGMA_CLASSES:
            return None
        extra = dict(self.extra)
        return next((spacing for field, spacing in _SIGMA_FIELDS.items() if extra.get(field)), None)

    @property
    def last_timestep(self) -> Optional[int]:
        """DPMSolverMultistep's and DPMSolverSinglestep's label grids with a finite ``lambda_min_clipped``: ``N`` less
        the number of labels whose log-SNR is below it (diffusers' ``last_timestep``); ``None`` otherwise."""
        clip = dict(self.extra).get("lambda_min_clipped", -math.inf)
        if self.class_name not in LAMBDA_CLIP_CLASSES or clip == -math.inf:
            return None
        from . import grids

        log_snr = -np.log(grids.training_sigmas(self.schedule))  # decreasing with the label
        return self.num_train_timesteps - int(np.searchsorted(log_snr[::-1], clip, side="left"))

    @property
    def variance_type(self) -> Optional[str]:
        """The config's ``variance_type`` where the class has one (DDPM: its reverse variance, default
        ``"fixed_small"``; DPMSolverMultistep and DPMSolverSinglestep: ``None`` or a learned variance), else
        ``None``."""
        if self.class_name not in ("DDPMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                                   "SASolverScheduler"):
            return None
        return dict(self.extra).get("variance_type")

    def solver_options(self) -> tuple[str, dict]:
        """``(method, options)``: the registered solver that samples as this config's diffusers scheduler.

        DDIMScheduler: ``"ddim"`` (eta 0; its last step to alphas_cumprod = 1 with
        ``set_alpha_to_one``, else ending at label 0); DDPMScheduler: the ``"ancestral"``
        predictor (its variance by ``variance_type``); DPMSolverMultistepScheduler:
        ``algorithm_type`` ``"dpmsolver++"`` -> ``"dpm_solver_pp"``, ``"sde-dpmsolver++"`` ->
        ``"sde_dpm_solver_pp"``, with ``solver_order``, ``solver_type``, ``lower_order_final``,
        ``final_sigmas_type``, thresholding, and diffusers' third-order term (``third_order=
        "diffusers"``, see :func:`sdevp_jax.solvers.dpmpp_step` and :func:`~sdevp_jax.solvers.sde_dpmpp_step`); UniPCMultistepScheduler:
        ``"unipc"`` with ``solver_order``, ``solver_type``, ``predict_x0``, ``lower_order_final``,
        ``final_sigmas_type``, thresholding (a config's ``thresholding`` applies through this solver:
        with a method given, pass ``thresholding=True`` to it; DPMSolverMultistep's ``euler_at_final``
        likewise); DPMSolverSinglestepScheduler: ``"dpm_solver_singlestep"`` with ``algorithm_type``
        ``"dpmsolver++"`` or ``"dpmsolver"``, ``"sde_dpm_solver_singlestep"`` (diffusers' third-order term) for
        ``"sde-dpmsolver++"``; DEISMultistepScheduler: ``"deis"``, ending at label 0's noise level as diffusers
        does; SASolverScheduler: ``"sa_solver"`` with its orders and ``algorithm_type``, ending at label 0's noise
        level, its default ``tau_func`` (1 for labels 200 to 800: ``tau_t_min = 201/N``, ``tau_t_max = 801/N``)
        and its second-order terms (``second_order="diffusers"``); EulerDiscreteScheduler: ``"ddim"`` (Euler in
        sigma/alpha is DDIM's update, ending with a step to sigma = 0); EulerAncestralDiscreteScheduler:
        ``"euler_ancestral"``; LMSDiscreteScheduler: ``"lms"`` of order 4 (its ``step``'s default);
        HeunDiscreteScheduler: ``"heun_sigma"`` (its ``clip_sample`` through the state); KDPM2DiscreteScheduler:
        ``"kdpm2"``; KDPM2AncestralDiscreteScheduler: ``"kdpm2_ancestral"``; PNDMScheduler: ``"pndm"``
        (``skip_prk_steps`` -> ``warmup="improved_euler"``, else ``"prk_diffusers"``; with ``set_alpha_to_one``
        false, its default, the grid ends at label 0, where its last step goes). The inverse schedulers
        (:data:`INVERSE_CLASSES`) are refused here: :func:`sdevp_jax.invert_ode` runs them. Every other case
        raises a ValueError naming the method this package lacks (diffusers' ``"dpmsolver"`` and
        ``"sde-dpmsolver"`` forms, a ``disable_corrector`` list, PNDM on ``linspace`` or ``trailing`` labels or with
        a v-model): pass a method.
        """
        extra = dict(self.extra)
        source = self.flax_class or self.class_name
        if self.class_name in INVERSE_CLASSES:
            raise ValueError(f"{source} inverts (data to latents): pass its state to sv.invert_ode, which steps as "
                             f"it does; to sample, load the forward scheduler's config or pass a method")
        thresholding = {}
        if extra.get("thresholding") and self.class_name in THRESHOLDING_CLASSES:  # (elsewhere a foreign field)
            thresholding = {"thresholding": True, "dynamic_thresholding_ratio": extra["dynamic_thresholding_ratio"],
                            "sample_max_value": extra["sample_max_value"]}
        # the options DPMSolverMultistep and UniPC share
        # diffusers' sigma_min: on a label grid the step to label 0's sigma (appended to the grid); on a sigma grid,
        # which ends there already, a zero-length last step
        final = ("repeat" if self.sigma_spacing is not None else "last") if self.ends_at_sigma_min else "zero"
        multistep = {"lower_order_final": extra.get("lower_order_final", True), "final_sigmas_type": final,
                     **thresholding}
        if self.class_name == "DDIMScheduler":
            return "ddim", {"final_sigmas_type": "zero" if extra.get("set_alpha_to_one", True) else "last",
                            **thresholding}
        if self.class_name == "DDPMScheduler":
            return "ancestral", {}
        if self.class_name == "DPMSolverMultistepScheduler":
            names = {"dpmsolver++": "dpm_solver_pp", "sde-dpmsolver++": "sde_dpm_solver_pp"}
            algorithm = extra.get("algorithm_type", "dpmsolver++")
            if algorithm not in names:
                raise ValueError(f"{source} with algorithm_type={algorithm!r} has no equivalent here (dpm_solver is "
                                 f"the official multistep DPM-Solver, not diffusers' form): pass a method")
            options = {"order": extra.get("solver_order", 2), "solver_type": extra.get("solver_type", "midpoint"),
                       **multistep}
            if extra.get("euler_at_final"):
                options["euler_at_final"] = True
            if options["order"] == 3:  # diffusers' own third-order terms (see dpmpp_step, sde_dpmpp_step)
                options["third_order"] = "diffusers"
            return names[algorithm], options
        if self.class_name == "DEISMultistepScheduler":
            # its label grids end at label 0's sigma; its sigma grids there already, then a zero-length step
            return "deis", {"order": extra.get("solver_order", 2), "lower_order_final": multistep["lower_order_final"],
                            "final_sigmas_type": "repeat" if self.sigma_spacing is not None else "last",
                            **thresholding}
        if self.class_name == "SASolverScheduler":
            # diffusers' default tau_func, 1 for the labels 200 <= n <= 800 (whatever N), at t = (n + 1) / N; and its
            # second-order steps in data prediction (see sdevp_jax.solvers.sa_solver)
            algorithm = extra.get("algorithm_type", "data_prediction")
            n = self.num_train_timesteps
            return "sa_solver", {"predictor_order": extra.get("predictor_order", 2),
                                 "corrector_order": extra.get("corrector_order", 2), "algorithm_type": algorithm,
                                 "lower_order_final": multistep["lower_order_final"],
                                 "final_sigmas_type": "repeat" if self.sigma_spacing is not None else "last",
                                 "tau": 1.0, "tau_t_min": 201.0 / n, "tau_t_max": 801.0 / n,
                                 "second_order": "diffusers" if algorithm == "data_prediction" else "lagrange",
                                 **thresholding}
        if self.class_name == "DPMSolverSinglestepScheduler":
            algorithm = extra.get("algorithm_type", "dpmsolver++")
            options = {"order": extra.get("solver_order", 2), "solver_type": extra.get("solver_type", "midpoint"),
                       "lower_order_final": extra.get("lower_order_final", False),
                       "final_sigmas_type": multistep["final_sigmas_type"], **thresholding}
            if algorithm == "sde-dpmsolver++":
                return "sde_dpm_solver_singlestep", {**options, "third_order": "diffusers"}
            if algorithm not in ("dpmsolver++", "dpmsolver"):
                raise ValueError(f"{source} with algorithm_type={algorithm!r} has no equivalent here: pass a method")
            return "dpm_solver_singlestep", {**options, "algorithm_type": algorithm}
        if self.class_name == "UniPCMultistepScheduler":
            if extra.get("disable_corrector"):
                raise ValueError(f"{source} with disable_corrector={extra['disable_corrector']!r} has no equivalent "
                                 f"here: pass a method")
            return "unipc", {"order": extra.get("solver_order", 2), "solver_type": extra.get("solver_type", "bh2"),
                             "predict_x0": extra.get("predict_x0", True), **multistep}
        if self.class_name == "EulerDiscreteScheduler":  # Euler in sigma/alpha is DDIM's update (test_classical.py)
            return "ddim", {"final_sigmas_type": "zero"}
        if self.class_name == "EulerAncestralDiscreteScheduler":
            return "euler_ancestral", {}
        if self.class_name == "LMSDiscreteScheduler":  # diffusers' step's default order, which its pipelines keep
            return "lms", {"order": 4}
        two_calls = {"HeunDiscreteScheduler": "heun_sigma", "KDPM2DiscreteScheduler": "kdpm2",
                     "KDPM2AncestralDiscreteScheduler": "kdpm2_ancestral"}
        if self.class_name in two_calls:
            return two_calls[self.class_name], {}
        # PNDMScheduler: its steps go N // n labels down from each label, which only the leading labels are
        if self.timestep_spacing != "leading":
            raise ValueError(f"{source} with timestep_spacing={self.timestep_spacing!r} has no equivalent here: "
                             f"diffusers' PNDM steps num_train_timesteps // num_inference_steps labels down from each "
                             f"label, and calls the model at the next {self.timestep_spacing} label, which is another; "
                             f"pass a method (e.g. method='pndm' steps between the grid's own points)")
        if self.prediction_type == "v_prediction":
            raise ValueError(f"{source} with prediction_type='v_prediction' has no equivalent here: diffusers' PNDM "
                             f"combines the model's raw v outputs and converts the combination to a noise prediction "
                             f"at the step's start; method='pndm' combines each point's own noise prediction, as the "
                             f"paper's (pass it to sample with that)")
        return "pndm", {"warmup": "improved_euler" if extra.get("skip_prk_steps") else "prk_diffusers",
                        "final_sigmas_type": "last" if self.ends_at_sigma_min else "zero"}

    def flax_labels_of(self, num_inference_steps: int, spacing: str, steps_offset: int) -> Optional[np.ndarray]:
        """With :attr:`flax_labels`, the labels of the Flax class where they are not the torch class's (its
        ``spacing`` grid of ``num_inference_steps``), else ``None``."""
        if self.flax_labels and self.flax_class == "FlaxDPMSolverMultistepScheduler":
            return _flax_dpm_solver_labels(self.num_train_timesteps, num_inference_steps, spacing, steps_offset)
        return None

    def inverse_solver(self) -> tuple[str, dict]:
        """``(method, options)`` with which :func:`sdevp_jax.invert_ode` steps as this inverse scheduler does:
        DDIMInverseScheduler: ``ddim`` (its ``evaluate_at`` and ``start`` are set by ``invert_ode``);
        DPMSolverMultistepInverseScheduler: ``dpm_solver_pp`` with ``solver_order``, ``solver_type``,
        ``lower_order_final``, ``euler_at_final`` and thresholding, ending at the noisiest label's noise level
        (``trailing`` and the sigma grids, which reach it at their last point: a zero-length last step there,
        ``final_sigmas_type="repeat"``)."""
        extra = dict(self.extra)
        if self.class_name == "DDIMInverseScheduler":
            return "ddim", {}
        algorithm = extra.get("algorithm_type", "dpmsolver++")
        if algorithm != "dpmsolver++":
            raise ValueError(f"{self.class_name} with algorithm_type={algorithm!r} has no equivalent here (an "
                             f"inversion is deterministic and in the data prediction: 'dpmsolver++'); pass a method")
        options = {"order": extra.get("solver_order", 2), "solver_type": extra.get("solver_type", "midpoint"),
                   "lower_order_final": extra.get("lower_order_final", True),
                   "final_sigmas_type": "repeat" if self.timestep_spacing == "trailing" or self.sigma_spacing is not None
                   else "last"}
        if extra.get("euler_at_final"):
            options["euler_at_final"] = True
        if options["order"] == 3:
            options["third_order"] = "diffusers"
        if extra.get("thresholding"):
            options |= {"thresholding": True, "dynamic_thresholding_ratio": extra["dynamic_thresholding_ratio"],
                        "sample_max_value": extra["sample_max_value"]}
        return "dpm_solver_pp", options

    @functools.cached_property
    def schedule(self):
        """The :class:`~sdevp_jax.schedules.DiscreteSchedule` of this config (built on the host, once: loading,
        the state, ``last_timestep`` and saving read the same one)."""
        from . import schedules

        clamp = (self.rescale_betas_zero_snr and self.zero_snr == "diffusers"
                 and self.class_name in ZERO_SNR_CLAMP_CLASSES)
        return schedules.from_diffusers(
            self.beta_schedule, self.beta_start, self.beta_end, self.num_train_timesteps, self.trained_betas,
            rescale_betas_zero_snr=self.rescale_betas_zero_snr,
            terminal_alphas_cumprod=DIFFUSERS_ZERO_SNR_CLAMP if clamp else None,
        )

    def label_spacing(self, num_inference_steps: int):
        """The labels diffusers' ``class_name`` samples at (:func:`sdevp_jax.grids.diffusers_label_spacing`); with
        :attr:`flax_labels`, its Flax class's."""
        from . import grids

        flax = self.flax_labels_of(num_inference_steps, self.timestep_spacing, self.steps_offset)
        if flax is not None:
            return flax

        name = self.class_name if self.class_name in grids.SPACING_SCHEDULERS else "DDIMScheduler"
        return grids.diffusers_label_spacing(
            self.num_train_timesteps, num_inference_steps, self.timestep_spacing, self.steps_offset, scheduler=name
        )


def _flax_dpm_solver_labels(num_train: int, n: int, spacing: str, steps_offset: int) -> np.ndarray:
    """FlaxDPMSolverMultistepScheduler's labels (diffusers 0.39), in its float32 JAX arithmetic."""
    import jax
    import jax.numpy as jnp

    f32 = jnp.float32

    def labels():
        if spacing == "linspace":
            out = jnp.round(jnp.linspace(0.0, num_train - 1.0, n + 1, dtype=f32))[::-1][:-1]
        elif spacing == "leading":
            out = jnp.round(jnp.arange(0, n + 1, dtype=f32) * (num_train // (n + 1)))[::-1][:-1] + steps_offset
        else:
            out = jnp.round(jnp.arange(num_train, 0, -num_train / n, dtype=f32)) - 1
        return out.astype(jnp.int32)

    # run as the Flax class's set_timesteps runs (eagerly or in its pipeline's jit): XLA's float32 linspace rounds
    # some points differently from JAX's constant folding under jax.ensure_compile_time_eval (166.50002 and 166.5 at
    # 30 steps: labels 167 and 166), so in a thread of its own, out of the caller's trace and evaluation context
    # (both are thread-local)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: np.asarray(jax.jit(labels)(), np.int64)).result()


def _same(a: Any, b: Any) -> bool:
    """JSON equality where ``-inf == -inf`` and ``1 == 1.0`` but ``True != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def discrete_config(config: Any, *, source: str = "config", zero_snr: str = "exact",
                    flax_labels: bool = False) -> DiscreteConfig:
    """Read a discrete scheduler's ``scheduler_config.json`` (a dict, a file, or a directory holding one).

    Missing fields take the class's diffusers 0.42.1 defaults (so a DDIM/DDPM file without
    ``clip_sample`` clips the data prediction to ``[-1, 1]``, :attr:`DiscreteConfig.clip_sample_range`).
    Errors, each a ``ValueError`` naming the field: an unknown ``_class_name``; a field the class does
    not have; an unsupported value of a field that changes sampling (
    ``thresholding``, ``use_karras_sigmas``, ``final_sigmas_type``, ...; see
    :data:`_EXTRA_FIELDS`); ``beta_schedule`` outside linear, scaled_linear,
    squaredcos_cap_v2; ``trained_betas`` whose length is not ``num_train_timesteps``.
    ``rescale_betas_zero_snr = true`` gives a zero-terminal-SNR schedule, served as ``zero_snr`` says
    (:attr:`DiscreteConfig.zero_snr`).
    """
    from . import grids, schedules

    if isinstance(config, (str, os.PathLike)):
        config, source = read_config_file(config)
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
    name = config.get("_class_name")
    flax_class = None
    if isinstance(name, str) and name in FLAX_CLASSES:
        flax_class, name = name, FLAX_CLASSES[name][0]
        flax_fields = set(_FLAX_BASE_FIELDS + FLAX_CLASSES[flax_class][1])
        model_only = sorted(k for k in config if (k in _MODEL_DEFAULTS or k == "timestep_spacing")
                            and k not in flax_fields)
        if model_only:
            raise ValueError(f"{source}: unknown fields {model_only} for {flax_class}; its fields of the model "
                             f"and the grid are {sorted(flax_fields)}")
    if not isinstance(name, str) or name not in DISCRETE_CLASSES:
        _check_class_name(name, source)
    default_spacing, extra_defaults = DISCRETE_CLASSES[name]
    model = dict(_MODEL_DEFAULTS, **_CLASS_MODEL_DEFAULTS.get(name, {}), timestep_spacing=default_spacing)
    if name in _NO_ZERO_SNR_FIELD:
        del model["rescale_betas_zero_snr"]
    if name in _NO_SPACING_FIELDS:
        del model["timestep_spacing"], model["steps_offset"]
    # A field of another diffusers scheduler (Stable Diffusion 1.x's PNDMScheduler file carries DDIM's
    # clip_sample) is ignored by diffusers for this class, whatever its value: kept and written back.
    foreign = {k: v for k, v in config.items()
               if k in _EXTRA_FIELDS and k not in model and k not in extra_defaults}
    unknown = sorted(k for k in config if not k.startswith("_") and k not in model and k not in extra_defaults
                     and k not in foreign)
    if unknown:
        raise ValueError(
            f"{source}: unknown fields {unknown} for {name}; it has {sorted(model) + sorted(extra_defaults)}"
        )
    model.update({k: v for k, v in config.items() if k in model})
    if name in _NO_SPACING_FIELDS:
        model.update(timestep_spacing="linspace", steps_offset=0)
    extra = dict(extra_defaults)
    extra.update({k: v for k, v in config.items() if k in extra_defaults or (k.startswith("_") and k != "_class_name")})
    extra.update(foreign)
    for key, value in extra.items():
        allowed = _EXTRA_FIELDS.get(key) if key not in foreign else None
        if allowed is not None and not any(_same(value, a) for a in allowed):
            raise ValueError(
                f"{source}: {key} = {value!r} changes sampling and is not supported; "
                f"allowed: {', '.join(map(repr, allowed))}"
            )
    own = {k: v for k, v in extra.items() if k not in foreign}  # the class's fields (a foreign one is ignored)
    if own.get("final_sigmas_type") == "sigma_min" and name not in SIGMA_MIN_CLASSES:
        raise ValueError(f"{source}: final_sigmas_type = 'sigma_min' changes sampling and is supported for "
                         f"{', '.join(SIGMA_MIN_CLASSES)} only; allowed: 'zero'")
    asked = [k for k in _SIGMA_FIELDS if own.get(k) is True]
    if asked and name not in SIGMA_CLASSES:
        raise ValueError(f"{source}: {asked[0]} = True changes sampling and is supported for "
                         f"{', '.join(SIGMA_CLASSES)} only; allowed: False")
    if len(asked) > 1:
        raise ValueError(f"{source}: {' and '.join(asked)} are all True; diffusers' grids are exclusive: set one")
    if name == "DPMSolverMultistepInverseScheduler" and own.get("lambda_min_clipped", -math.inf) != -math.inf:
        raise ValueError(f"{source}: lambda_min_clipped = {own['lambda_min_clipped']!r} changes the inverse grid's top "
                         f"and is not supported for DPMSolverMultistepInverseScheduler; allowed: -inf")
    if name == "DPMSolverMultistepInverseScheduler" and own.get("variance_type") is not None:
        raise ValueError(f"{source}: variance_type = {own['variance_type']!r} is not supported for "
                         f"DPMSolverMultistepInverseScheduler; allowed: null")
    if "lambda_min_clipped" in own:
        clip = own["lambda_min_clipped"]
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or math.isnan(clip) or clip == math.inf:
            raise ValueError(f"{source}: lambda_min_clipped must be a number or -inf (the smallest log-SNR of the "
                             f"grid), got {clip!r}")
    if name == "SASolverScheduler":
        _check_sasolver(own, source)
    if own.get("thresholding") is True and name not in THRESHOLDING_CLASSES:
        raise ValueError(f"{source}: thresholding = True changes sampling and is not supported for {name} (its "
                         f"step here does not apply dynamic thresholding); allowed: False")
    if name in CLIP_CLASSES and own.get("clip_sample") is True:
        bound = own.get("clip_sample_range", 1.0)
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0.0 < bound < math.inf:
            raise ValueError(f"{source}: clip_sample_range must be a number > 0 (the data prediction is clipped "
                             f"to [-clip_sample_range, clip_sample_range]), got {bound!r}")
    zero_terminal = model.pop("rescale_betas_zero_snr", False)
    if not isinstance(zero_terminal, bool):
        raise ValueError(f"{source}: rescale_betas_zero_snr must be true or false, got {zero_terminal!r}")
    if not isinstance(flax_labels, bool):
        raise TypeError(f"flax_labels must be a bool, got {flax_labels!r}")
    if flax_labels and flax_class is None:
        raise ValueError(f"{source}: flax_labels=True applies to the config of one of diffusers' Flax schedulers "
                         f"({', '.join(FLAX_CLASSES)}); this is a {name}'s")
    if flax_labels and flax_class in ("FlaxEulerDiscreteScheduler", "FlaxLMSDiscreteScheduler"):
        raise ValueError(f"{source}: flax_labels=True is not served for {flax_class} (its float32 labels are "
                         f"fractional); allowed: flax_labels=False, its torch class's labels")
    if zero_snr not in ZERO_SNR_MODES:
        raise ValueError(f"zero_snr must be one of {', '.join(map(repr, ZERO_SNR_MODES))}, got {zero_snr!r}")
    if model["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(
            f"{source}: prediction_type must be one of {', '.join(map(repr, PREDICTION_TYPES))}, "
            f"got {model['prediction_type']!r}"
        )
    if model["timestep_spacing"] not in grids.LABEL_SPACINGS:
        raise ValueError(
            f"{source}: timestep_spacing must be one of {', '.join(map(repr, grids.LABEL_SPACINGS))}, "
            f"got {model['timestep_spacing']!r}"
        )
    if name == "DDIMInverseScheduler" and model["timestep_spacing"] == "linspace":
        raise ValueError(f"{source}: timestep_spacing must be 'leading' or 'trailing' for DDIMInverseScheduler (its "
                         f"set_timesteps has no 'linspace'), got 'linspace'")
    if model["trained_betas"] is None and model["beta_schedule"] not in schedules.DIFFUSERS_BETA_SCHEDULES:
        raise ValueError(
            f"{source}: beta_schedule must be one of {', '.join(map(repr, schedules.DIFFUSERS_BETA_SCHEDULES))}, "
            f"got {model['beta_schedule']!r}"
        )
    try:
        n = _checks.positive_int("num_train_timesteps", model["num_train_timesteps"])
        offset = _checks.int_at_least("steps_offset", model["steps_offset"], 0)
        trained = model["trained_betas"]
        if trained is not None:
            trained = tuple(float(b) for b in schedules._host_1d("trained_betas", trained))
            if len(trained) != n:
                raise ValueError(
                    f"trained_betas has {len(trained)} entries but num_train_timesteps = {n}; they must agree"
                )
        result = DiscreteConfig(
            class_name=name,
            num_train_timesteps=n,
            beta_start=_checks.real_scalar("beta_start", model["beta_start"]),
            beta_end=_checks.real_scalar("beta_end", model["beta_end"]),
            beta_schedule=model["beta_schedule"],
            trained_betas=trained,
            prediction_type=model["prediction_type"],
            timestep_spacing=model["timestep_spacing"],
            steps_offset=offset,
            extra=tuple(sorted(extra.items())),
            flax_class=flax_class,
            flax_fields=tuple(sorted(config)) if flax_class else (),
            rescale_betas_zero_snr=zero_terminal,
            zero_snr=zero_snr,
            flax_labels=flax_labels,
        )
        result.schedule  # validates the betas (in (0, 1), a resolvable log alpha)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{source}: {err}") from None
    return result


def _check_sasolver(fields: dict, source: str) -> None:
    """SASolverScheduler's own fields: its algorithm, its orders (1-4), thresholding in data prediction only."""
    algorithm = fields.get("algorithm_type", "data_prediction")
    if algorithm not in ("data_prediction", "noise_prediction"):
        raise ValueError(f"{source}: algorithm_type must be 'data_prediction' or 'noise_prediction' for "
                         f"SASolverScheduler, got {algorithm!r}")
    for key in ("predictor_order", "corrector_order"):
        value = fields.get(key, 2)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
            raise ValueError(f"{source}: {key} must be an int in [1, 4] for SASolverScheduler, got {value!r}")
    if fields.get("thresholding") is True and algorithm == "noise_prediction":
        raise ValueError(f"{source}: thresholding = True with algorithm_type = 'noise_prediction' is not supported "
                         f"(diffusers 0.42.1's SASolverScheduler indexes its tables with timestep=None there and "
                         f"fails); allowed: thresholding = False, or algorithm_type = 'data_prediction'")


def discrete_config_dict(config: DiscreteConfig) -> dict:
    """The inverse of :func:`discrete_config`: the JSON object diffusers would write.

    Holds ``_class_name``, ``_diffusers_version`` (the one read, else this package's
    :data:`DIFFUSERS_VERSION`), the schedule and grid fields (``rescale_betas_zero_snr`` where
    the class has it) and every field of ``extra``.
    """
    out: dict[str, Any] = {"_class_name": config.class_name, "_diffusers_version": DIFFUSERS_VERSION}
    out.update(dict(config.extra))
    out.update(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        trained_betas=None if config.trained_betas is None else list(config.trained_betas),
        prediction_type=config.prediction_type,
        timestep_spacing=config.timestep_spacing,
        steps_offset=config.steps_offset,
    )
    if config.class_name not in _NO_ZERO_SNR_FIELD:
        out["rescale_betas_zero_snr"] = config.rescale_betas_zero_snr
    if config.class_name in _NO_SPACING_FIELDS:
        del out["timestep_spacing"], out["steps_offset"]
    if config.flax_class is not None:  # the Flax class's own file: its name, the fields it was read with
        out = {k: v for k, v in out.items() if k in config.flax_fields}
        out["_class_name"] = config.flax_class
    return dict(sorted(out.items()))
