"""Resumable sampling jobs: verified chunks written atomically, a manifest, nothing computed twice.

A job draws ``num_samples`` samples in chunks of ``batch_size`` into a directory::

    DIR/manifest.json              the job's configuration, id and versions, written first
    DIR/chunks/chunk_000000.json   chunk 0's record: the job's id, the chunk's rows, the file's SHA-256
    DIR/chunks/chunk_000000.npy    samples [0, batch_size), float array (n, *event_shape)
    DIR/chunks/chunk_000001.json   ...
    DIR/samples.npz                array ``samples``: all chunks in order, written last (its SHA-256
                                   in the manifest)

Every file is written to a temporary name and renamed into place, so after a
crash at any moment (``kill -9`` included) each file is either complete or absent;
a chunk's record is written before the chunk, so a chunk file never exists without
the record that vouches for it. Running the same job again reads the manifest,
checks that the configuration is the same and verifies every chunk on disk: a chunk
is adopted only if its record names this job (:func:`job_id`, a digest of the
configuration and versions) and its bytes have the recorded SHA-256. A truncated or
altered chunk of this job is computed again (a warning names it); a chunk file of
another job, or one without a record, is never adopted nor overwritten: the run stops
with a one-line error naming the file. ``samples.npz`` is rebuilt when it is missing
or is not the file the manifest records. A lock on the directory (``flock``, :func:`job_lock`) keeps a
second job out while one runs; stale temporaries are removed under it. A chunk with a non-finite
sample is not written and the job stops, naming the chunk (``allow_nonfinite`` keeps
such chunks, and the record counts them).

Chunk ``c`` holds samples ``[c B, (c + 1) B)`` (``B = batch_size``, at most
``num_samples``) and is computed by the same compiled single-device program whenever
and wherever it runs: each device of a process takes whole chunks of its own, and a
chunk is never split over devices (XLA may round a program partitioned over devices
differently). So the result is bitwise the same as an uninterrupted run's, and on one
machine (as tested) does not depend on how chunks were shared between processes or on
the number of devices (hosts with other CPUs may compile other code; on CPU, a
convolution's bits change once the forced devices outnumber the cores, as XLA:CPU
splits it over the threads each device gets: see :mod:`sdevp_jax.distributed`). The noise of
sample ``b`` depends only on ``(seed, b)`` (see :mod:`sdevp_jax.loops`); a job with
another batch size draws the same samples to float rounding, not bitwise (XLA compiles
other shapes differently). A different configuration (``batch_size`` included)
pointed at an existing job directory is refused, never mixed in.

Over several processes (:mod:`sdevp_jax.distributed`), chunk ``c`` is computed by
process ``c % process_count`` and written to the shared directory; process 0
writes the manifest and assembles ``samples.npz``. The processes first check that they
run the same job (:func:`~sdevp_jax.distributed.agree_on`), and each step ends with an
agreement (:func:`~sdevp_jax.distributed.agree`): when any process fails, every process
stops with the same one-line message.

The model a job samples is named by three fields of :class:`JobSpec`, resolved when
the spec is built and recorded in the manifest, so that resuming with another
schedule, prediction type or grid is refused like any other change:

* ``scheduler`` (a diffusers config: ``ScoreSdeVpScheduler``'s four fields, or a
  discrete scheduler's config -- stored as :func:`~sdevp_jax.config.discrete_config_dict`
  writes it) and ``schedule``, the noise schedule as JSON:
  ``{"kind": "linear", "beta_min": b0, "beta_max": b1}`` (the ``scheduler``'s),
  ``{"kind": "cosine", "s": s}`` (a continuous cosine schedule; ``scheduler`` then keeps
  only ``num_train_timesteps`` and ``sampling_eps``), or ``{"kind": "discrete",
  "beta_schedule": ..., "beta_start": ..., "beta_end": ..., "num_train_timesteps": ...,
  "trained_betas": ...}`` (a discrete config's, the one way to name a discrete schedule);
* ``prediction_type``: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``;
* ``spacing``: the grid of :func:`~sdevp_jax.set_timesteps` (one of ``sv.SPACINGS``), or
  ``"custom"`` for a job on its own ``timesteps`` (a grid fitted by :func:`~sdevp_jax.fit_grid`
  and saved with :func:`~sdevp_jax.fitting.save_grid`: :func:`with_saved_grid` puts a job on it
  after checking that it was fitted for the job's schedule, solver and model). The manifest
  records the times themselves, so a job never resumes on another grid: mixing the samples
  of two grids in one job is refused like any other change.

Left out (``None``), each takes the scheduler config's: the linear schedule, epsilon
and ScoreSdeVpScheduler's ``"reference"`` grid for a ``ScoreSdeVpScheduler`` config (a
manifest without these fields means exactly that), the file's
schedule, prediction type and ``timestep_spacing`` for a discrete one. Given, they
must agree with a discrete config (its model is fixed by the file): a contradiction
is a ValueError.

A job runs any method of ``sv.list_methods("predictor")``, ``("ode")`` and
``("sde_solver")``. The options of :func:`~sdevp_jax.sample_ode`'s solvers (``order``,
``solver_type``, ``eta``, ``lower_order_final``, ``final_sigmas_type``, ``third_order``,
``thresholding``, ``dynamic_thresholding_ratio``, ``sample_max_value``) are fields of
:class:`JobSpec`; each applies to some methods only (:func:`solver_defaults`): left out
(``None``) it takes the method's default, given to a method it does not apply to it is
a ValueError. The manifest records the options that apply, resolved, so another
option is another job; a manifest without these fields means the
defaults, and resumes as such. A stochastic solver (``sde_dpm_solver_pp``, ``ddim``
with ``eta > 0``) draws sample ``b``'s noise from ``(seed, b)`` alone, as the
predictors do, so a chunked or resumed job equals the uninterrupted run.

A job may draw from one class and guide it (:class:`JobSpec`'s ``class_label``,
``guidance_scale``, ``guidance_interval``, ``guidance_rescale``). Every sample of the
job gets the same condition, ``cond = full((batch,), class_label)`` (int32), built
inside each chunk's compiled call, so a chunk's condition depends on nothing but the
spec and a resumed or chunked job equals the uninterrupted one as above. The default
model is then the embedded class-conditional mixture
(:func:`~sdevp_jax.mixtures.default_class_mixture` in ``prod(event_shape)`` dimensions, exact
``p(x | c)`` under the job's schedule); a user's model is called ``model_fn(x, t, cond)``
with those class indices, and :data:`~sdevp_jax.NULL_CLASS` (-1) as the unconditional
condition that classifier-free guidance (:func:`~sdevp_jax.cfg`, one batched call of both
halves) asks for. The manifest records the condition and the guidance where they apply
(the guidance's fields only with a ``guidance_scale``); a manifest without them was
unconditional, and resumes as such; another class or guidance is another job.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import math
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import __version__, _checks, grids, schedules
from ._cache import compilation_cache
from ._io import atomic_write
from .config import (_same, discrete_config, discrete_config_dict, discrete_state, is_discrete_class,
                     state_from_config)
from .distributed import agree_on, together
from . import solvers
from .loops import sample
from .guidance import cfg
from .mixtures import NULL_CLASS, default_class_mixture, default_mixture, make_class_model, make_mixture_eps_fn
from .samplers import METHODS, check_step_rule, list_methods
from .denoiser import check_prediction_type
from .grids import LABEL_SPACINGS, SPACINGS, default_spacing
from .scheduler import create_state, set_timesteps

__all__ = ["JobSpec", "JobError", "JobMismatchError", "JobIntegrityError", "JobLockedError", "JobWriteError",
           "NonFiniteChunkError", "ModelError", "JobWarning", "run_job", "verify_chunks", "job_lock", "job_id", "check_resources", "load_model", "job_model", "job_cond", "job_state",
           "schedule_json", "solver_defaults", "with_saved_grid", "grid_metadata",
           "SOLVER_FIELDS", "CONDITION_FIELDS", "DEFAULT_CLASSES"]

MANIFEST = "manifest.json"
#: 2: chunk records (``chunk_NNNNNN.json``), the job's id and ``samples.npz``'s SHA-256 in the manifest.
FORMAT = 2
DTYPES = ("float16", "bfloat16", "float32", "float64")
CORRECTOR_FIELDS = ("snr", "corrector_steps", "step_rule")  # part of a job's identity only when a corrector runs
SCHEDULE_KINDS = ("linear", "cosine", "discrete")
SAMPLE_ODE_KINDS = ("ode", "sde_solver")  # the kinds that sample_ode runs
#: The solver options a job records where they apply (:func:`solver_defaults`): every option of every
#: solver that sample_ode runs, read from the registry (JobSpec has a field of each name; a test checks).
SOLVER_FIELDS = tuple(dict.fromkeys(name for method in solvers.names(SAMPLE_ODE_KINDS)
                                    for name in solvers.option_fields(solvers.get(method))))
#: The condition and guidance fields of a job, with the values that mean "unconditional".
CONDITION_FIELDS = {"class_label": None, "guidance_scale": None, "guidance_interval": None, "guidance_rescale": 0.0}
GUIDANCE_FIELDS = ("guidance_scale", "guidance_interval", "guidance_rescale")
#: The class of each component of the default model's mixture, as :func:`~sdevp_jax.mixtures.default_class_mixture`
#: groups them (a host-side copy, so that a spec is checked without starting JAX; a test compares them).
DEFAULT_CLASSES = (0, 0, 1, 1, 2)


class JobError(Exception):
    """A job cannot go on; the message is one line that names the file or option and what to do."""


class JobMismatchError(JobError, ValueError):
    """The directory holds a job whose configuration (or versions) differ from this one."""


class JobIntegrityError(JobError, ValueError):
    """A chunk in the job's directory is not this job's (another job's, or without a record)."""


class JobLockedError(JobError, RuntimeError):
    """Another process is running a job in the same directory."""


class JobWriteError(JobError, OSError):
    """A file of the job cannot be written (disk full, permissions): nothing partial is left."""


class NonFiniteChunkError(JobError, ValueError):
    """A chunk holds NaN or inf samples; it is not written (unless ``allow_nonfinite``)."""


class ModelError(JobError, ValueError):
    """The user's model raised while it was traced (its message names the model and the error)."""


class JobWarning(UserWarning):
    """Something of the job's was found wrong and is being redone (a corrupt chunk, a stale samples.npz)."""


@dataclasses.dataclass(frozen=True)
class _JobFields:
    """Everything that determines a job's samples.

    Attributes:
      num_samples: the number of samples, >= 1.
      batch_size: samples per compiled call and per chunk file, >= 1.
      seed: the PRNG seed, in [0, 2**32).
      steps: ``num_inference_steps`` of the scheduler.
      method: a predictor or ODE method of the registry (``sv.list_methods()``).
      corrector: ``None`` or a corrector name (predictors only).
      snr, corrector_steps, step_rule: the corrector's options (``step_rule`` one of
        ``sv.STEP_RULES``, see ``sv.langevin_correct``); without a corrector they change
        nothing, and are left out of the job's identity (``to_json``).
      event_shape: the shape of one sample.
      model: ``"default"`` (the embedded mixture in ``prod(event_shape)`` dimensions, exact
        under the job's schedule, returning its prediction type) or ``"module:function"``,
        a user's ``model_fn(x, t)`` that takes :func:`~sdevp_jax.model_time` and returns
        ``prediction_type``.
      scheduler: a diffusers config: ``ScoreSdeVpScheduler``'s fields (``num_train_timesteps``,
        ``beta_min``, ``beta_max``, ``sampling_eps``), or a discrete scheduler's config
        (with its ``_class_name``; stored in :func:`~sdevp_jax.config.discrete_config_dict`'s form).
      dtype: the samples' dtype name, one of ``DTYPES``.
      schedule, prediction_type, spacing: see the module docstring; ``None`` means the
        scheduler config's, and the spec holds the resolved values once built.
      order, solver_type, eta, lower_order_final, final_sigmas_type, third_order, thresholding, ...:
        one field per option of the registered solvers (:data:`SOLVER_FIELDS`: read from the
        solver classes, after the fields above), for the methods they apply to
        (:func:`solver_defaults`); ``None`` means the method's default, and the spec holds the
        resolved values once built (``None`` where an option does not apply).
      class_label: ``None`` (unconditional) or the class every sample is drawn from: for the
        default model one of the embedded class-conditional mixture's classes
        (``0 <= class_label < 3``, :data:`DEFAULT_CLASSES`), for a user's model any int >= 0
        (its ``model_fn(x, t, cond)`` gets it per sample).
      guidance_scale: ``None`` (the conditional model) or classifier-free guidance's scale
        ``w >= 0`` (:func:`~sdevp_jax.cfg` with the null class; 1 is the conditional model, 0
        the unconditional one); needs ``class_label``. Negative scales (guiding away from
        the class the job names) are refused.
      guidance_interval: ``None`` or ``(t_lo, t_hi)``, continuous times with
        ``0 <= t_lo < t_hi <= 1``: guide only there (the conditional model elsewhere).
      guidance_rescale: CFG-rescale's ``phi`` in ``[0, 1]`` (0: none).
      timesteps: ``None`` (the grid of ``spacing``) or the job's own grid of times, a strictly
        decreasing sequence of ``steps`` floats inside the schedule's range, run as
        ``set_timesteps(state, timesteps=...)`` (a grid fitted by :func:`~sdevp_jax.fit_grid`:
        :func:`with_saved_grid` reads one from its file and checks it against the job);
        the spacing is then ``"custom"``. Recorded in the manifest time by time, so that a job
        never resumes on another grid.
    """

    num_samples: int
    batch_size: int
    seed: int
    steps: int
    method: str = "euler_maruyama"
    corrector: Optional[str] = None
    snr: float = 0.16
    corrector_steps: int = 1
    step_rule: str = "sigma"
    event_shape: tuple[int, ...] = (2,)
    model: str = "default"
    scheduler: dict = dataclasses.field(default_factory=lambda: {
        "num_train_timesteps": 2000, "beta_min": 0.1, "beta_max": 20.0, "sampling_eps": 1e-3})
    dtype: str = "float32"
    schedule: Optional[dict] = None
    prediction_type: Optional[str] = None
    spacing: Optional[str] = None
    class_label: Optional[int] = None
    guidance_scale: Optional[float] = None
    guidance_interval: Optional[tuple[float, float]] = None
    guidance_rescale: float = 0.0
    timesteps: Optional[tuple[float, ...]] = None

    def __post_init__(self):
        for name in ("num_samples", "batch_size", "steps", "corrector_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed!r}")
        if self.num_samples > 2**32:
            raise ValueError(f"num_samples must be <= 2**32 (sample indices are uint32), got {self.num_samples}")
        # A chunk never holds more than the job's samples: a larger batch would compute rows it drops.
        object.__setattr__(self, "batch_size", min(self.batch_size, self.num_samples))
        if not isinstance(self.model, str):
            raise TypeError(f"model must be 'default' or a 'module:function' string, got {self.model!r}")
        choices = list_methods("predictor") + [m for kind in SAMPLE_ODE_KINDS for m in list_methods(kind)]
        if not isinstance(self.method, str) or self.method not in choices:
            raise ValueError(f"method must be one of {choices}, got {self.method!r}")
        if self.corrector is not None:
            if self.corrector not in list_methods("corrector"):
                raise ValueError(f"corrector must be one of {list_methods('corrector')} or None, got {self.corrector!r}")
            if METHODS[self.method].kind != "predictor":
                raise ValueError(f"a corrector needs a predictor method, got the {METHODS[self.method].kind} method "
                                 f"{self.method!r}")
            if isinstance(self.snr, bool) or not isinstance(self.snr, (int, float)) or not math.isfinite(self.snr) \
                    or self.snr <= 0:
                raise ValueError(f"snr must be a finite number > 0 (the corrector's signal-to-noise ratio), "
                                 f"got {self.snr!r}")
        for name, value in _resolve_solver_options(self).items():
            object.__setattr__(self, name, value)
        check_step_rule(self.step_rule)
        if not self.event_shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.event_shape):
            raise ValueError(f"event_shape must be a non-empty tuple of ints >= 1, got {self.event_shape!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for name, value in _resolve_condition(self).items():
            object.__setattr__(self, name, value)
        # On the host only: a multi-process job builds its spec before jax.distributed.initialize,
        # so nothing here may start JAX's backend (no set_timesteps).
        state, scheduler = _config_state(self)  # validates
        object.__setattr__(self, "scheduler", scheduler)
        object.__setattr__(self, "schedule", schedule_json(state))
        object.__setattr__(self, "prediction_type", state.prediction_type)
        timesteps = _resolve_timesteps(self, state)
        object.__setattr__(self, "timesteps", timesteps)
        object.__setattr__(self, "spacing",
                           "custom" if timesteps is not None else _check_spacing(state, self.spacing, self.steps))

    def solver_options(self) -> dict:
        """The solver options that apply to the method, resolved: ``sv.solvers.make(method, **options)``."""
        return {name: getattr(self, name) for name in SOLVER_FIELDS if getattr(self, name) is not None}

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def to_json(self) -> dict:
        """The job's identity, as stored in the manifest: every field that changes the samples."""
        config = dataclasses.asdict(self) | {"event_shape": list(self.event_shape)}
        if self.guidance_interval is not None:
            config["guidance_interval"] = list(self.guidance_interval)
        if self.timesteps is not None:
            config["timesteps"] = list(self.timesteps)
        return identity(config)

    @classmethod
    def from_json(cls, data: dict) -> "JobSpec":
        data = data | {"event_shape": tuple(data["event_shape"])}
        for name in ("guidance_interval", "timesteps"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)

    @property
    def conditional(self) -> bool:
        """Whether the job draws from a class (its model is called ``model_fn(x, t, cond)``)."""
        return self.class_label is not None


#: The job's configuration: :class:`_JobFields`' fields, then one field per solver option of the
#: registry (:data:`SOLVER_FIELDS`), each ``None`` by default: a new solver's options are job fields
#: (recorded, checked, resumed) without an edit here.
JobSpec = dataclasses.make_dataclass(
    "JobSpec", [(name, Optional[object], dataclasses.field(default=None)) for name in SOLVER_FIELDS],
    bases=(_JobFields,), frozen=True)
JobSpec.__module__, JobSpec.__doc__ = __name__, _JobFields.__doc__


def solver_defaults(method: str, thresholding: bool = False) -> dict:
    """The solver options that apply to ``method``, each with its default: the solver class's options.

    Read from the registry (:func:`sdevp_jax.solvers.option_defaults`): ``order`` for the
    multistep methods, ``eta`` for ``ddim``, ``final_sigmas_type`` and ``thresholding`` for every
    grid solver (``dynamic_thresholding_ratio`` and ``sample_max_value`` with ``thresholding``
    on), ``rtol``/``atol``/``max_steps`` for ``adaptive``, and so on. The predictors take none
    here (the corrector's options are :data:`CORRECTOR_FIELDS`).

    Examples:
      >>> sv.jobs.solver_defaults("euler_maruyama")
      {}
      >>> sorted(sv.jobs.solver_defaults("ddim"))
      ['eta', 'final_sigmas_type', 'thresholding']
    """
    if method not in solvers.names(SAMPLE_ODE_KINDS):
        return {}
    return solvers.option_defaults(solvers.get(method), thresholding=thresholding)


def option_methods(name: str) -> list[str]:
    """The methods that solver option ``name`` applies to (with ``thresholding`` on)."""
    return [m for m in METHODS if name in solver_defaults(m, thresholding=True)]


def _resolve_solver_options(spec: "JobSpec") -> dict:
    """``spec``'s solver options, resolved and checked on the host: a value per field of SOLVER_FIELDS.

    The solver is built from them (its class checks its options) and its normalised
    options are the job's.

    Raises:
      ValueError, TypeError: an option given to a method it does not apply to, or out of its range
        (the solver classes' messages).
    """
    applicable = solver_defaults(spec.method, thresholding=bool(spec.thresholding))
    for name in SOLVER_FIELDS:
        if name not in applicable and getattr(spec, name) is not None:
            if name in ("dynamic_thresholding_ratio", "sample_max_value") and "thresholding" in applicable:
                raise ValueError(f"{name} is an option of thresholding; set thresholding=True (got {name}="
                                 f"{getattr(spec, name)!r} without it)")
            raise ValueError(f"{name} applies to the methods {option_methods(name)} only; method={spec.method!r} "
                             f"takes none, got {name}={getattr(spec, name)!r}")
    resolved = {name: applicable[name] if getattr(spec, name) is None else getattr(spec, name) for name in applicable}
    if applicable:
        solver = solvers.make(spec.method, **resolved).check()
        if resolved.get("third_order", "taylor") != "taylor" and solver.order < 3:
            raise ValueError(f"third_order={resolved['third_order']!r} changes only order 3's steps; "
                             f"this job's order is {solver.order}")
        options = solver.options()
        resolved = {name: float(options[name]) if isinstance(applicable[name], float) else options[name]
                    for name in applicable}
    return {name: resolved.get(name) for name in SOLVER_FIELDS}


def _number(name: str, value, allowed: str) -> float:
    """``value`` as a finite float (ints accepted, bools not), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")
    return float(value)


def _resolve_condition(spec: "JobSpec") -> dict:
    """``spec``'s class and guidance fields, checked and normalised on the host (floats, a tuple).

    Raises:
      ValueError: a class outside the default model's classes (or negative), guidance
        without a class, guidance options without a scale, a negative scale, an interval
        outside ``[0, 1]``, empty or reversed, a rescale outside ``[0, 1]``.
    """
    label = spec.class_label
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
            raise ValueError(f"class_label must be None or an int >= 0, got {label!r}")
        label = int(label)
        if spec.model == "default" and label >= len(set(DEFAULT_CLASSES)):
            raise ValueError(f"class_label must be one of the default model's classes 0..{max(DEFAULT_CLASSES)}, "
                             f"got {label}")
    rescale = _number("guidance_rescale", spec.guidance_rescale, "in [0, 1]")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {rescale}")
    scale, interval = spec.guidance_scale, spec.guidance_interval
    if scale is None:
        given = [name for name, value in (("guidance_interval", interval), ("guidance_rescale", rescale))
                 if value != CONDITION_FIELDS[name]]
        if given:
            raise ValueError(f"{given[0]} is an option of classifier-free guidance; it needs guidance_scale")
    else:
        if label is None:
            raise ValueError("guidance_scale needs class_label (the class that guidance steers towards)")
        scale = _number("guidance_scale", scale, ">= 0")
        if scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1: the conditional model, 0: the unconditional one), "
                             f"got {scale}")
    if interval is not None:
        if isinstance(interval, (str, bytes)) or not hasattr(interval, "__len__") or len(interval) != 2:
            raise ValueError(f"guidance_interval must be None or (t_lo, t_hi), got {interval!r}")
        lo, hi = (_number("guidance_interval", v, "in [0, 1]") for v in interval)
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= t_lo < t_hi <= 1 (continuous times), "
                             f"got ({lo}, {hi})")
        interval = (lo, hi)
    return {"class_label": label, "guidance_scale": scale, "guidance_interval": interval,
            "guidance_rescale": rescale}


def _resolve_timesteps(spec: "JobSpec", state) -> Optional[tuple[float, ...]]:
    """``spec.timesteps`` as a tuple of floats, checked on the host against ``spec.steps``, ``spec.spacing``
    and the schedule's range (``None`` stays ``None``).

    Raises:
      ValueError, TypeError: not a strictly decreasing 1-D sequence of finite real numbers in the
        schedule's range, a length other than ``steps``, or a ``spacing`` other than ``"custom"``.
    """
    if spec.timesteps is None:
        return None
    if spec.spacing not in (None, "custom"):
        raise ValueError(f"timesteps give the job's grid; spacing={spec.spacing!r} contradicts them (leave it out)")
    values = _checks.host_real_array("timesteps", spec.timesteps)
    grids.check_grid(state, values, "timesteps")
    if values.shape[0] != spec.steps:
        raise ValueError(f"steps must equal len(timesteps) = {values.shape[0]}, got {spec.steps}")
    return tuple(float(t) for t in values)


def identity(config: dict) -> dict:
    """A job config without the options that change nothing, with the fields a manifest may lack filled in.

    Manifests written before these normalisations hold the corrector's options and lack
    ``schedule``/``prediction_type``/``spacing``, which then meant the linear schedule of
    their ``scheduler``, epsilon and the ``"reference"`` grid, and lack the solver options
    (:data:`SOLVER_FIELDS`), which meant the method's defaults; they compare equal after
    it, so such jobs still resume. Solver options that do not apply to the method are
    left out. The class and guidance fields (:data:`CONDITION_FIELDS`) are kept only where
    they apply: ``class_label`` for a conditional job, the guidance's with a
    ``guidance_scale``; a manifest without them was unconditional. ``timesteps`` is kept
    only for a job on its own grid; a manifest without it ran the grid of its ``spacing``.
    """
    dropped = [k for k in CONDITION_FIELDS if config.get("class_label") is None
               or (k in GUIDANCE_FIELDS and config.get("guidance_scale") is None)]
    dropped += ["timesteps"] if config.get("timesteps") is None else []  # a job on a spacing's grid
    config = {k: v for k, v in config.items() if k not in dropped}
    method = config.get("method", "euler_maruyama")
    applicable = solver_defaults(method, thresholding=bool(config.get("thresholding")))
    config = {k: v for k, v in config.items() if k not in SOLVER_FIELDS or k in applicable}
    config = config | {k: v for k, v in applicable.items() if config.get(k) is None}
    if "schedule" not in config:
        scheduler = config.get("scheduler") or {}
        config = config | {"schedule": {"kind": "linear", "beta_min": scheduler.get("beta_min", 0.1),
                                        "beta_max": scheduler.get("beta_max", 20.0)}}
    config = config | {k: v for k, v in (("prediction_type", "epsilon"), ("spacing", "reference")) if k not in config}
    if config.get("corrector") is None:
        return {k: v for k, v in config.items() if k not in CORRECTOR_FIELDS}
    return config


def schedule_json(state) -> dict:
    """The JSON of ``state.schedule`` that a job records (see the module docstring).

    Raises:
      ValueError: a discrete schedule without a diffusers config (built by hand), or a
        schedule whose numbers are not concrete.

    Examples:
      >>> sv.jobs.schedule_json(sv.create_state(schedule=sv.schedules.cosine()))
      {'kind': 'cosine', 's': 0.008}
    """
    schedule = state.schedule
    if isinstance(schedule, schedules.LinearSchedule):
        return {"kind": "linear", "beta_min": float(schedule.beta_min), "beta_max": float(schedule.beta_max)}
    if isinstance(schedule, schedules.CosineSchedule):
        return {"kind": "cosine", "s": float(schedule.s)}
    cfg = state.diffusers_config
    if cfg is None:
        raise ValueError("a job's discrete schedule comes from a diffusers discrete scheduler config (scheduler=); "
                         "this state's was built by hand")
    return {"kind": "discrete", "beta_schedule": cfg.beta_schedule, "beta_start": cfg.beta_start,
            "beta_end": cfg.beta_end, "num_train_timesteps": cfg.num_train_timesteps,
            "trained_betas": None if cfg.trained_betas is None else list(cfg.trained_betas)}


def _config_state(spec: "JobSpec"):
    """The state (no grid) of ``spec``'s scheduler, schedule and prediction type, and the scheduler dict to record."""
    scheduler, wanted = spec.scheduler, spec.schedule
    if not isinstance(scheduler, dict):
        raise ValueError(f"scheduler must be a dict (a diffusers config), got {type(scheduler).__name__}")
    if wanted is not None and (not isinstance(wanted, dict) or wanted.get("kind") not in SCHEDULE_KINDS):
        raise ValueError(f"schedule must be None or a dict with 'kind' one of {list(SCHEDULE_KINDS)}, got {wanted!r}")
    if is_discrete_class(scheduler.get("_class_name")):
        cfg = discrete_config(dict(scheduler), source="scheduler")
        state, scheduler = discrete_state(cfg), discrete_config_dict(cfg)
    elif wanted is not None and wanted["kind"] == "cosine":
        unknown = sorted(set(wanted) - {"kind", "s"})
        if unknown:
            raise ValueError(f"schedule: unknown fields {unknown} for kind 'cosine'; it has ['s']")
        base = state_from_config(dict(scheduler), source="scheduler")
        for key, default in (("beta_min", 0.1), ("beta_max", 20.0)):
            if scheduler.get(key, default) != default:
                raise ValueError(f"scheduler: {key} = {scheduler[key]!r} is the linear schedule's and contradicts "
                                 "schedule kind 'cosine'; leave beta_min/beta_max out")
        scheduler = {k: v for k, v in scheduler.items() if k not in ("beta_min", "beta_max")}
        state = create_state(num_train_timesteps=base.num_train_timesteps, sampling_eps=base.sampling_eps,
                             schedule=schedules.cosine(wanted.get("s", 0.008)))
    elif wanted is not None and wanted["kind"] == "discrete":
        raise ValueError("schedule: a discrete schedule comes from a diffusers discrete scheduler's config given as "
                         "scheduler= (e.g. DDIMScheduler, with trained_betas for betas of your own), not from schedule=")
    else:
        state = state_from_config(dict(scheduler), source="scheduler")
    if wanted is not None:
        resolved = schedule_json(state)
        if any(key not in resolved or not _same(resolved[key], value) for key, value in wanted.items()):
            raise ValueError(f"schedule {wanted!r} contradicts the scheduler config, whose schedule is {resolved!r}")
    if spec.prediction_type is not None:
        check_prediction_type(spec.prediction_type)
        cfg = state.diffusers_config
        if cfg is not None and spec.prediction_type != cfg.prediction_type:
            raise ValueError(f"prediction_type {spec.prediction_type!r} contradicts the scheduler config "
                             f"({cfg.class_name}), whose prediction_type is {cfg.prediction_type!r}")
        state = state.replace(prediction_type=spec.prediction_type)
    return state, scheduler


def _check_spacing(state, spacing: Optional[str], steps: int) -> str:
    """``spacing`` (``None``: the state's default) if ``set_timesteps`` accepts it for ``state``; on the host."""
    if spacing is None:
        spacing = default_spacing(state)
    if not isinstance(spacing, str) or spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, SPACINGS))}, got {spacing!r}")
    kind = type(state.schedule).__name__
    if spacing == "reference" and not isinstance(state.schedule, schedules.LinearSchedule):
        raise ValueError(f"spacing='reference' (ScoreSdeVpScheduler's grid) exists for the linear schedule only; "
                         f"this job's schedule is {kind}")
    if spacing in grids.SIGMA_SPACINGS and not state.schedule.is_discrete:
        raise ValueError(f"spacing={spacing!r} spaces a discrete model's noise levels and needs a discrete "
                         f"schedule; this job's schedule is {kind}")
    if spacing in LABEL_SPACINGS:
        if not state.schedule.is_discrete:
            raise ValueError(f"spacing={spacing!r} picks training labels and needs a discrete schedule; this job's "
                             f"schedule is {kind}")
        cfg = state.diffusers_config
        grids.diffusers_label_spacing(state.num_train_timesteps, steps, spacing, cfg.steps_offset,
                                      scheduler=cfg.class_name if cfg.class_name in grids.SPACING_SCHEDULERS
                                      else "DDIMScheduler")  # NumPy: checks steps against the labels
    return spacing


def job_state(spec: JobSpec):
    """The state ``spec`` samples with: its scheduler, schedule and prediction type, on its grid of ``steps``.

    The spec names its spacing even when it is the state's default; a default one is
    built as a default (``set_timesteps`` without ``spacing``), so that ``dpm_solver``
    treats it as it treats any default grid (see :func:`~sdevp_jax.sample_ode`).

    Examples:
      >>> state = sv.jobs.job_state(sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10))
      >>> len(state.timesteps), state.spacing
      (10, 'reference')
    """
    state, _ = _config_state(spec)
    if spec.timesteps is not None:
        return set_timesteps(state, timesteps=np.asarray(spec.timesteps, np.float64))
    spacing = None if spec.spacing == default_spacing(state) else spec.spacing
    return set_timesteps(state, spec.steps, spacing=spacing)


def with_saved_grid(spec: JobSpec, grid, *, model: Optional[str] = None) -> JobSpec:
    """``spec`` on a grid saved by :func:`~sdevp_jax.fitting.save_grid`, checked against the job first.

    The file must have been fitted for this job's sampler and model: the same schedule
    (:func:`~sdevp_jax.fitting.schedule_description`: its parameters, ``sampling_eps``,
    ``prediction_type``), the same ``method`` with the same options (those that differ from
    the method's defaults), the model identity ``model`` (``spec.model`` when not given),
    and, where the file records them (``sdevp-jax fit-grid`` does), the same ``event_shape``
    and the same class and guidance (the model that was fitted is the guided one). Any
    difference is a ValueError that names every field that differs, with both values; a
    grid is never used for a sampler or a model it was not fitted for.

    Args:
      spec: the job; its ``steps`` and ``spacing`` are replaced by the grid's length and ``"custom"``.
      grid: the file's path, or the :class:`~sdevp_jax.fitting.SavedGrid` that
        :func:`~sdevp_jax.fitting.load_grid` read from it.
      model: the model identity the grid was saved with.

    Returns:
      ``spec`` with ``timesteps`` (the file's times, float64 as saved), ``steps`` and ``spacing="custom"``.

    Examples:
      >>> import os, tempfile
      >>> spec = sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10, method="dpm_solver_pp")
      >>> state = sv.jobs.job_state(spec)
      >>> path = os.path.join(tempfile.mkdtemp(), "grid.json")
      >>> times = np.asarray(sv.set_timesteps(state, 5, spacing="logsnr").timesteps, np.float64)
      >>> _ = sv.fitting.save_grid(path, times, state=state, method="dpm_solver_pp", model="default")
      >>> on_grid = sv.jobs.with_saved_grid(spec, path)
      >>> on_grid.steps, on_grid.spacing, len(sv.jobs.job_state(on_grid).timesteps)
      (5, 'custom', 5)
      >>> sv.jobs.with_saved_grid(spec, path, model="my-net")
      Traceback (most recent call last):
      ...
      ValueError: ... was fitted for another job: model 'default' in the file, 'my-net' here
    """
    from . import fitting

    saved = grid if isinstance(grid, fitting.SavedGrid) else fitting.load_grid(grid)
    where = "the grid" if isinstance(grid, fitting.SavedGrid) else str(grid)
    if saved.model_times is not None:
        raise ValueError(f"{where} records model times (fit_grid(..., fit_model_times=True)), which a job does not "
                         f"apply: sample it with sv.sample_ode on sv.set_timesteps(state, timesteps=..., "
                         f"model_times=...) (sdevp_jax.fitting.load_grid reads both)")
    model = spec.model if model is None else model
    differ = []

    def compare(name, theirs, ours):
        if theirs != ours:
            differ.append(f"{name} {theirs!r} in the file, {ours!r} here")

    state, _ = _config_state(spec)
    here = fitting.schedule_description(state)
    theirs = fitting.recorded_schedule(saved.schedule, here)
    keys = ["class"] if theirs.get("class") != here["class"] else sorted(set(theirs) | set(here))
    for key in keys:  # another class of schedule: its parameters are other parameters, not shown
        compare(f"schedule {key}", theirs.get(key), here.get(key))
    compare("method", saved.method, spec.method)
    if saved.method == spec.method and spec.method in solvers.names(SAMPLE_ODE_KINDS):
        theirs = fitting._given_options(solvers.make(saved.method, **saved.options))
        ours = fitting._given_options(solvers.make(spec.method, **spec.solver_options()))
        for key in sorted(set(theirs) | set(ours)):
            compare(key, theirs.get(key, "default"), ours.get(key, "default"))
    compare("model", saved.model, model)
    for key, ours in grid_metadata(spec).items():
        if key in saved.extra:
            compare(key, saved.extra[key], ours)
    if differ:
        raise ValueError(f"{where} was fitted for another job: {'; '.join(differ)}")
    times = tuple(float(t) for t in saved.timesteps)
    return dataclasses.replace(spec, steps=len(times), spacing="custom", timesteps=times)


def grid_metadata(spec: JobSpec) -> dict:
    """What :func:`with_saved_grid` checks beyond the schedule, method and model identity: the job's
    ``event_shape`` and its class and guidance (``save_grid``'s ``metadata``, as ``sdevp-jax fit-grid`` writes it)."""
    config = spec.to_json()
    return {"event_shape": list(spec.event_shape),
            "condition": {k: config[k] for k in CONDITION_FIELDS if k in config}}


def versions() -> dict:
    """The versions a job's numbers depend on (recorded in, and checked against, the manifest)."""
    from importlib.metadata import version

    return {"sdevp_jax": __version__, "jax": jax.__version__, "jaxlib": version("jaxlib")}


def load_model(spec: JobSpec, state) -> Callable:
    """The job's ``model_fn``: the embedded mixture, or the ``module:function`` it names.

    For a conditional job (``class_label`` given) the embedded model is the exact
    class-conditional mixture, ``model_fn(x, t, cond)``, and a user's function must take
    ``(x, t, cond)`` too (checked by its signature where Python can read it). The
    guidance is not applied here (:func:`job_model` does).

    Examples:
      >>> spec = sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10)   # model="default"
      >>> model_fn = sv.jobs.load_model(spec, sv.jobs.job_state(spec))
      >>> model_fn(jnp.zeros((4, 2)), jnp.full((4,), 0.5)).shape
      (4, 2)
    """
    if spec.model == "default":
        dim = math.prod(spec.event_shape)
        if dim < 2:
            raise ValueError(f"the default model needs at least 2 dimensions, got event_shape {spec.event_shape}")
        if spec.conditional:
            return make_class_model(state, default_class_mixture(dim))
        return make_mixture_eps_fn(state, default_mixture(dim))
    module_name, sep, attr = spec.model.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model must be 'default' or 'module:function', got {spec.model!r}")
    if module_name.startswith("."):
        raise ValueError(f"model {spec.model!r}: the module must be an absolute import path (no leading '.'), "
                         "importable from the current directory or PYTHONPATH")
    try:
        model_fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load model {spec.model!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 -- the user's module raised while importing
        raise ValueError(f"cannot load model {spec.model!r}: importing it raised {type(err).__name__}: {err}") from None
    if not callable(model_fn):
        raise ValueError(f"model {spec.model!r} is not callable")
    if spec.conditional and not _takes_three_arguments(model_fn):
        raise ValueError(f"model {spec.model!r} takes no condition: a job with class_label calls "
                         "model_fn(x, t, cond) (cond: the class per sample, int32; -1 the null class of guidance)")
    return _named_model(model_fn, spec.model)


def _named_model(model_fn: Callable, name: str) -> Callable:
    """``model_fn``, with any exception it raises while traced re-raised as one that names the model."""

    def wrapped(*args):
        try:
            return model_fn(*args)
        except Exception as err:  # noqa: BLE001 -- the user's code: say whose error it is
            raise ModelError(f"model {name!r} raised {type(err).__name__}: "
                             f"{str(err).strip().splitlines()[0] if str(err).strip() else '(no message)'}") from err

    return wrapped


def _takes_three_arguments(fn: Callable) -> bool:
    """Whether ``fn(x, t, cond)`` binds (True where the signature cannot be read)."""
    import inspect

    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins and C extensions)
        return True
    return True


def job_model(spec: JobSpec, state, model_fn: Callable) -> Callable:
    """``model_fn`` with the job's guidance: :func:`~sdevp_jax.cfg` with the null class, or itself.

    The null condition is :data:`~sdevp_jax.NULL_CLASS`; the interval is read in
    continuous time through ``state`` (a discrete schedule's model time is a label).

    Examples:
      >>> spec = sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10, class_label=1, guidance_scale=3.0)
      >>> state = sv.jobs.job_state(spec)
      >>> guided = sv.jobs.job_model(spec, state, sv.jobs.load_model(spec, state))   # cfg at scale 3
      >>> guided(jnp.zeros((4, 2)), jnp.full((4,), 0.5), sv.jobs.job_cond(spec, 4)).shape
      (4, 2)
    """
    if spec.guidance_scale is None:
        return model_fn
    return cfg(model_fn, spec.guidance_scale, NULL_CLASS, interval=spec.guidance_interval,
               rescale=spec.guidance_rescale, state=state)


def job_cond(spec: JobSpec, batch: int) -> Optional[jax.Array]:
    """The condition of a chunk of ``batch`` rows: ``full((batch,), class_label)``, int32 (None: unconditional).

    Examples:
      >>> sv.jobs.job_cond(sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10, class_label=2), 4)
      Array([2, 2, 2, 2], dtype=int32)
      >>> sv.jobs.job_cond(sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10), 4) is None
      True
    """
    if not spec.conditional:
        return None
    return jnp.full((batch,), spec.class_label, jnp.int32)


def chunk_path(out: Path, c: int) -> Path:
    return out / "chunks" / f"chunk_{c:06d}.npy"


def record_path(out: Path, c: int) -> Path:
    """The record of chunk ``c``: the job it belongs to and the SHA-256 of its file."""
    return out / "chunks" / f"chunk_{c:06d}.json"


def chunk_size(spec: JobSpec, c: int) -> int:
    return min(spec.batch_size, spec.num_samples - c * spec.batch_size)


def job_id(spec: JobSpec) -> str:
    """The job's identity: the SHA-256 of its configuration (``to_json``) and versions.

    Two specs that draw the same samples have the same id; any field that changes a
    sample (the seed, the model, the batch size ...) or another version changes it.

    Examples:
      >>> import dataclasses
      >>> spec = sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10)
      >>> len(sv.jobs.job_id(spec)), sv.jobs.job_id(spec) == sv.jobs.job_id(dataclasses.replace(spec, seed=1))
      (64, False)
    """
    text = json.dumps({"config": spec.to_json(), "versions": versions()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_file(path: Path, write: Callable, *, overwrite: bool = True) -> None:
    """``atomic_write(path, write)``; an OSError (disk full, permissions) becomes one line naming the file."""
    try:
        atomic_write(path, write, overwrite=overwrite)
    except FileExistsError:
        raise
    except OSError as err:
        raise JobWriteError(f"cannot write {path}: {err.strerror or err}; free space (or fix the permissions) "
                            "and run the same command again") from None


def _write_bytes(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    _write_file(path, lambda f: f.write(data), overwrite=overwrite)


def _write_manifest(spec: JobSpec, out: Path, finished, *, complete: bool = False, create: bool = False,
                    samples_sha256: Optional[str] = None) -> None:
    manifest = {"format": FORMAT, "job": job_id(spec), "config": spec.to_json(), "versions": versions(),
                "num_chunks": spec.num_chunks, "finished_chunks": sorted(finished), "complete": complete}
    if samples_sha256 is not None:
        manifest["samples_sha256"] = samples_sha256
    _write_bytes(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode(), overwrite=not create)


def _read_json(path: Path):
    """The JSON in ``path``, or a one-line ValueError that names the file and why it cannot be read."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else (
            "nested too deeply" if isinstance(err, RecursionError) else f"{type(err).__name__}: {err}")
        raise ValueError(f"{path} cannot be read as JSON ({reason})") from None


def check_manifest(spec: JobSpec, out: Path) -> Optional[dict]:
    """The manifest in ``out`` if it matches ``spec`` (None if there is none); JobMismatchError otherwise."""
    path = out / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        manifest = _read_json(path)
        theirs = identity(manifest["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise JobMismatchError(f"{path} is not a sdevp-jax job manifest ({err}); move it away or use another "
                               "output directory") from None
    ours = spec.to_json()
    diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if diff:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in diff)
        raise JobMismatchError(f"{out} holds a different job ({detail}); use another output directory")
    if manifest.get("versions") != versions() or manifest.get("format") != FORMAT:
        raise JobMismatchError(
            f"{out} was started with {manifest.get('versions')}; this is {versions()}: the samples could differ, so "
            "finish it with the same versions or use another output directory")
    return manifest


def _read_record(path: Path):
    """Chunk record ``path`` as a dict; None if absent; the string "unreadable" if it is not a record."""
    if not path.exists():
        return None
    try:
        record = _read_json(path)
    except ValueError:
        return "unreadable"
    return record if isinstance(record, dict) else "unreadable"


def _check_chunk(spec: JobSpec, out: Path, c: int, ident: str) -> tuple[str, str]:
    """Classify chunk ``c`` on disk: ``(status, detail)``.

    ``"good"``: the file and its record are this job's and the file's SHA-256 is the
    recorded one. ``"missing"``: no file (a record of this job without one is what a
    crash between the two writes leaves: the record is written first). ``"corrupt"``:
    this job's record, but the file's bytes are not the ones recorded (truncated,
    altered). ``"foreign"``: a file without a record, or with another job's record.
    ``"nonfinite"`` is ``"good"``'s detail when the record counts non-finite samples.
    """
    npy, rec = chunk_path(out, c), record_path(out, c)
    record = _read_record(rec)
    ours = isinstance(record, dict) and record.get("job") == ident and record.get("chunk") == c
    if not npy.exists():
        if record is None or ours:
            return "missing", ""
        return "foreign", f"{rec} is not a record of this job"
    if record is None:
        return "foreign", f"{npy} has no record ({rec.name}), so it was not written by this job"
    if not ours:
        other = record.get("job", "?") if isinstance(record, dict) else "?"
        return "foreign", (f"{npy} belongs to another job (its record {rec.name} names job {str(other)[:12]}; this "
                           f"job is {ident[:12]})")
    try:
        digest = hashlib.sha256(npy.read_bytes()).hexdigest()
    except OSError as err:
        return "corrupt", f"{npy} cannot be read ({err.strerror or err})"
    if digest != record.get("sha256"):
        return "corrupt", f"{npy} is not the file its record describes (truncated or altered: SHA-256 differs)"
    return "good", "nonfinite" if record.get("nonfinite") else ""


def _stray_chunk_files(spec: JobSpec, out: Path) -> list[Path]:
    """Chunk files and records in ``out/chunks`` with an index beyond this job's chunks."""
    pattern = re.compile(r"chunk_(\d{6,})\.(npy|json)")
    chunks = out / "chunks"
    if not chunks.is_dir():
        return []
    return sorted(p for p in chunks.iterdir()
                  if (m := pattern.fullmatch(p.name)) and int(m.group(1)) >= spec.num_chunks)


def verify_chunks(spec: JobSpec, out: Path, *, allow_nonfinite: bool = False) -> tuple[list[int], list[int]]:
    """Check every chunk of ``spec`` in ``out``: ``(good, to_compute)``, on the host.

    A chunk is adopted only if its record names this job and the file's SHA-256 is the
    recorded one. A truncated or altered chunk of this job is recomputed (a
    :class:`JobWarning` names it); a chunk of another job (or one without a record) is
    never adopted and never overwritten: a :class:`JobIntegrityError` names the file.

    Raises:
      JobIntegrityError: a chunk file or record in ``out/chunks`` is not this job's.
      NonFiniteChunkError: a chunk kept with ``allow_nonfinite`` holds non-finite
        samples and ``allow_nonfinite`` is False now.

    Examples:
      >>> import pathlib, tempfile
      >>> out = pathlib.Path(tempfile.mkdtemp()) / "job"
      >>> spec = sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10)
      >>> _ = sv.run_job(spec, out)
      >>> sv.jobs.verify_chunks(spec, out)   # (chunks adopted, chunks to compute)
      ([0, 1], [])
    """
    ident = job_id(spec)
    good, todo = [], []
    stray = _stray_chunk_files(spec, out)
    for path in stray:
        record = _read_record(path.with_suffix(".json"))
        if not (isinstance(record, dict) and record.get("job") == ident):
            raise JobIntegrityError(f"{path} is not a chunk of this job ({spec.num_chunks} chunks): move it out of "
                                    f"{out / 'chunks'} or use another output directory")
    for c in range(spec.num_chunks):
        status, detail = _check_chunk(spec, out, c, ident)
        if status == "foreign":
            raise JobIntegrityError(f"{detail}: move it (and its .json record) out of {out / 'chunks'} or use "
                                    "another output directory; it is never mixed into this job")
        if status == "corrupt":
            warnings.warn(f"{detail}: computing it again", JobWarning, stacklevel=3)
        if status == "good" and detail == "nonfinite" and not allow_nonfinite:
            raise NonFiniteChunkError(f"{chunk_path(out, c)} holds non-finite samples, kept by allow_nonfinite "
                                      "(--allow-nonfinite): pass it again to finish this job with them")
        (good if status == "good" else todo).append(c)
    return good, todo


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the temporaries of writes that a crash interrupted (our own names only).

    ``atomic_write`` names them ``.NAME.XXXXXXXX.tmp`` beside ``NAME``; a killed
    process leaves its unfinished one behind. They were never renamed into place,
    so nothing refers to them; the job's lock (:func:`job_lock`) ensures that no
    other job is writing one in this directory.
    """
    names = "|".join(re.escape(n) for n in (MANIFEST, "samples.npz", "samples.png"))
    patterns = [(out, re.compile(rf"\.({names})\..+\.tmp")),
                (out / "chunks", re.compile(r"\.chunk_\d{6,}\.(npy|json)\..+\.tmp"))]
    for directory, pattern in patterns:
        if directory.is_dir():
            for path in directory.iterdir():
                if pattern.fullmatch(path.name):
                    path.unlink(missing_ok=True)


_HELD_LOCKS: set = set()


@contextlib.contextmanager
def job_lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on directory ``out`` for the block: two jobs never write one directory at once.

    The lock is ``flock`` on the directory itself (no file is added), which the kernel
    releases when the process ends, ``kill -9`` included, so a crash never leaves a
    directory locked. Re-entrant within a process. It holds between the processes of
    one host; a directory shared between hosts (NFS) is not locked against a job
    started on another host.

    Raises:
      JobLockedError: another process holds the lock.

    Examples:
      >>> import pathlib, tempfile
      >>> out = pathlib.Path(tempfile.mkdtemp())
      >>> with sv.jobs.job_lock(out):
      ...     pass   # a second job_lock(out), in another process, raises JobLockedError here
      ...
    """
    out = Path(out)
    key = out.resolve()
    if key in _HELD_LOCKS:
        yield
        return
    import fcntl

    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise JobLockedError(f"another process is running a job in {out}: wait for it to finish, or use another "
                             "output directory") from None
    try:
        _HELD_LOCKS.add(key)
        yield
    finally:
        _HELD_LOCKS.discard(key)
        os.close(fd)  # releases the lock


DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
#: A chunk's working set in memory, in multiples of its samples' bytes: the sample, its noise,
#: the model's output and the host copy (a floor; a large network needs more).
CHUNK_WORKING_SET = 4


def physical_memory() -> Optional[int]:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_resources(spec: JobSpec, memory: Optional[int] = None) -> None:
    """Refuse a job whose chunk cannot fit in this machine's memory, before any work.

    A chunk of ``batch_size`` samples of ``event_shape`` needs at least
    :data:`CHUNK_WORKING_SET` times its bytes (``batch_size * prod(event_shape) *``
    the dtype's size) at once; the whole job never does (``samples.npz`` is
    streamed from the chunks).

    Raises:
      ValueError: naming ``event_shape`` when one sample is already too large, else
        ``batch_size``, with the largest batch that fits.

    Examples:
      >>> sv.jobs.check_resources(sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10))   # fits: no error
      >>> try:
      ...     sv.jobs.check_resources(sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10), memory=1)
      ... except ValueError as e:
      ...     print("refused:", "event_shape" in str(e))   # 1 byte of memory: not even one sample fits
      ...
      refused: True
    """
    memory = physical_memory() if memory is None else memory
    if memory is None:
        return
    sample = math.prod(spec.event_shape) * DTYPE_BYTES[spec.dtype] * CHUNK_WORKING_SET
    if sample > memory:
        raise ValueError(f"event_shape {spec.event_shape} needs {sample / 2**30:.3g} GiB per sample in memory "
                         f"({CHUNK_WORKING_SET}x its {spec.dtype} bytes), more than this machine's "
                         f"{memory / 2**30:.3g} GiB")
    if sample * spec.batch_size > memory:
        raise ValueError(f"batch_size {spec.batch_size} needs {sample * spec.batch_size / 2**30:.3g} GiB per chunk "
                         f"in memory, more than this machine's {memory / 2**30:.3g} GiB: use batch_size <= "
                         f"{memory // sample}")


def _check_disk(spec: JobSpec, out: Path, chunks_to_write: int, write_samples: bool) -> None:
    """Refuse to start when ``out``'s file system lacks the space the remaining files need."""
    per_sample = math.prod(spec.event_shape) * DTYPE_BYTES[spec.dtype]
    needed = chunks_to_write * spec.batch_size * per_sample + (spec.num_samples * per_sample if write_samples else 0)
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return
    if needed > free:
        raise JobWriteError(f"{out} has {free / 2**20:.4g} MiB free; the job needs about {needed / 2**20:.4g} MiB "
                            "more (its chunks and samples.npz): free space or use another output directory")


def _sampler(spec: JobSpec, state, model_fn):
    """A jitted ``(key, index_offset) -> samples`` for one chunk of ``batch_size`` rows: one single-device program.

    Each device of the process runs this same program on whole chunks of its own; a
    chunk is never split over devices. XLA may fuse and round a program partitioned
    over several devices differently from the single-device one, while one
    single-device program gives the same bits on every device of a host: so a job's
    samples do not depend on the device count.
    """
    shape = (spec.batch_size, *spec.event_shape)
    model_fn = job_model(spec, state, model_fn)
    if METHODS[spec.method].kind in SAMPLE_ODE_KINDS:
        solver = solvers.make(spec.method, **spec.solver_options())

        def draw(key, offset):  # unroll 1, as sample_ode (the program a job compiles is the same on every backend)
            return sample(state, model_fn, key, shape, solver=solver, dtype=spec.dtype, index_offset=offset,
                          cond=job_cond(spec, spec.batch_size), unroll=1)
    else:
        def draw(key, offset):
            return sample(state, model_fn, key, shape, predictor=spec.method, corrector=spec.corrector, snr=spec.snr,
                          corrector_steps=spec.corrector_steps, step_rule=spec.step_rule, dtype=spec.dtype,
                          index_offset=offset, cond=job_cond(spec, spec.batch_size))
    return jax.jit(draw)


def _compile(draw, key, cache_dir):
    """``draw`` compiled ahead of its first call for ``key``'s device, through the persistent cache (if any)."""
    with compilation_cache(cache_dir):
        return draw.lower(key, np.uint32(0)).compile()


def _npy_bytes(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return buffer.getvalue()


def _nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """The indices of the rows of ``x`` with a non-finite entry.

    bfloat16 (ml_dtypes', NumPy kind ``"V"``) is read through float32, which holds each of its
    values exactly; every other dtype is tested as it is (a float64 beyond float32's range is finite).
    """
    flat = x.reshape(len(x), -1)
    if flat.dtype.kind == "V":
        flat = flat.astype(np.float32)
    return np.flatnonzero(~np.all(np.isfinite(flat), axis=1))


def _write_chunk(spec: JobSpec, out: Path, c: int, x: np.ndarray, ident: str, device, *,
                 allow_nonfinite: bool) -> None:
    """Write chunk ``c``: its record first, then the file, each atomically.

    Raises:
      NonFiniteChunkError: ``x`` holds a non-finite sample and ``allow_nonfinite`` is False.
    """
    bad = _nonfinite_rows(x)
    start = c * spec.batch_size
    if len(bad) and not allow_nonfinite:
        raise NonFiniteChunkError(
            f"chunk {c} (samples {start}..{start + len(x) - 1}) has {len(bad)} non-finite samples, the first sample "
            f"{start + int(bad[0])}: not written. The model returned NaN or inf, or the grid or dtype is too coarse "
            f"for this schedule ({spec.dtype}, {spec.steps} steps); allow_nonfinite (--allow-nonfinite) keeps them")
    data = _npy_bytes(x)
    record = {"job": ident, "chunk": c, "rows": [start, start + len(x)], "shape": list(x.shape),
              "dtype": np.lib.format.dtype_to_descr(x.dtype), "sha256": hashlib.sha256(data).hexdigest(),
              "nonfinite": len(bad), "device": str(device)}
    # The record goes first: a chunk file never exists without the record that vouches for it.
    _write_bytes(record_path(out, c), (json.dumps(record) + "\n").encode())
    _write_bytes(chunk_path(out, c), data)


def _write_samples(spec: JobSpec, out: Path) -> str:
    """Stream every chunk, in order, into ``samples.npz`` (array ``samples``); returns the file's SHA-256.

    The archive holds one uncompressed ``samples.npy`` member, as ``np.savez`` writes
    it, built chunk by chunk so that the whole never sits in memory.
    """
    path = out / "samples.npz"
    first = np.load(chunk_path(out, 0), mmap_mode="r")
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (spec.num_samples, *spec.event_shape)}
    digest = hashlib.sha256()

    class Hashing(io.RawIOBase):
        def __init__(self, file):
            self.file = file

        def writable(self):
            return True

        def write(self, data):
            digest.update(data)
            return self.file.write(data)

        def flush(self):
            self.file.flush()

        def tell(self):
            return self.file.tell()

    def write(file):
        with zipfile.ZipFile(Hashing(file), "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("samples.npy", "w", force_zip64=True) as member:
                try:
                    np.lib.format.write_array_header_1_0(member, header)
                except ValueError:  # a header too long for format 1.0
                    np.lib.format.write_array_header_2_0(member, header)
                for c in range(spec.num_chunks):
                    part = np.load(chunk_path(out, c))
                    expected = (chunk_size(spec, c), *spec.event_shape)
                    if part.shape != expected or part.dtype != first.dtype:
                        raise JobIntegrityError(f"{chunk_path(out, c)} has shape {part.shape} and dtype {part.dtype}; "
                                                f"expected {expected} and {first.dtype}")
                    member.write(np.ascontiguousarray(part).tobytes())

    _write_file(path, write)
    return digest.hexdigest()


def _file_sha256(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        return None


def _spec_fields(spec: JobSpec, allow_nonfinite: bool) -> dict:
    """What every process of a job must agree on: the spec's fields, the versions, ``allow_nonfinite``.

    Not the output path: hosts may mount the shared directory at different paths. Processes
    that write to different directories are caught when process 0 verifies every chunk.
    """
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    return fields | {"versions": versions(), "allow_nonfinite": allow_nonfinite}


def run_job(spec: JobSpec, out: str | Path, *, model_fn: Optional[Callable] = None,
            progress: Optional[Callable[[int, int], None]] = None,
            cache_dir: Optional[str | Path] = None, allow_nonfinite: bool = False, force: bool = False,
            outputs: Sequence[str] = (), finalize: Optional[Callable[[Path], None]] = None) -> Path:
    """Run (or resume) ``spec`` in directory ``out``; returns the path of ``samples.npz``.

    In order: the job's directory is locked (:func:`job_lock`); the manifest, if any,
    must be this job's; every chunk on disk is verified (:func:`verify_chunks`); the
    sampler is built and compiled -- so a bad model or option fails before anything is
    written; then the manifest is claimed, stale temporaries are removed, the missing
    chunks are computed, each device of the process taking whole chunks of its own, and
    ``samples.npz`` is (re)built unless the manifest records it complete with the
    SHA-256 it has. A non-finite sample stops the job before its chunk is written
    (:class:`NonFiniteChunkError`) unless ``allow_nonfinite``.

    Args:
      spec: the job.
      out: the job directory (created if missing).
      model_fn: overrides ``spec.model``'s loading (for callers that hold the function); for a
        conditional job it is called ``model_fn(x, t, cond)``, and the job's guidance wraps it.
      progress: called as ``progress(done, total)`` with this process's sample counts,
        once before the first chunk and after each one.
      cache_dir: a directory for JAX's persistent compilation cache (see
        :mod:`sdevp_jax._cache`), so that a rerun or a resumed job loads the compiled
        sampler instead of compiling it; ``None`` leaves JAX's settings alone.
      allow_nonfinite: write chunks that hold NaN or inf samples (the record counts them).
      force: with no manifest in ``out``, delete the files of ``outputs`` and a
        ``samples.npz`` that are there (not a job's); without it they are refused.
      outputs: names of other files in ``out`` that belong to the job (the CLI's picture).
      finalize: called as ``finalize(samples_path)`` by process 0 at the end, still holding
        the directory's lock (the CLI writes its picture there).

    Raises:
      JobMismatchError: ``out`` holds another job, or one started with other versions, or
        files that are not a job's (without ``force``).
      JobIntegrityError: a chunk in ``out/chunks`` is another job's.
      JobLockedError: another process is running a job in ``out``.
      NonFiniteChunkError, JobWriteError: see above.
      ProcessesDisagreeError: with several processes, any failure of any process, on all.

    Examples:
      >>> import pathlib, tempfile
      >>> import numpy as np
      >>> out = pathlib.Path(tempfile.mkdtemp()) / "job"
      >>> spec = sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=10)
      >>> path = sv.run_job(spec, out)   # OUT/samples.npz, OUT/manifest.json, OUT/chunks/
      >>> np.load(path)["samples"].shape, path.name
      ((8, 2), 'samples.npz')
    """
    out = Path(out)
    process, count = jax.process_index(), jax.process_count()
    if count > 1:
        agree_on(_spec_fields(spec, allow_nonfinite), "the processes of this job")
    with contextlib.ExitStack() as stack:
        def open_job():
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise JobWriteError(f"cannot create the output directory {out}: {err.strerror or err}") from None
            stack.enter_context(job_lock(out))
            manifest = check_manifest(spec, out)
            if manifest is None:
                foreign = [out / name for name in ("samples.npz", *outputs) if (out / name).exists()]
                if foreign and not force:
                    raise JobMismatchError(f"{foreign[0]} exists and is not from a sdevp-jax job; pass force=True "
                                           "(--force) to overwrite it")
                for path in foreign:
                    path.unlink()
            good, _ = verify_chunks(spec, out, allow_nonfinite=allow_nonfinite)
            return manifest, np.isin(np.arange(spec.num_chunks), good).astype(np.uint8)

        if process == 0:
            manifest, status = together("opening the job", open_job)
        else:
            manifest, status = together("opening the job", lambda: (None, np.zeros(spec.num_chunks, np.uint8)))
        if count > 1:
            from jax.experimental import multihost_utils

            status = np.asarray(multihost_utils.broadcast_one_to_all(status))
        good = set(np.flatnonzero(status).tolist())
        mine = [c for c in range(spec.num_chunks) if c % count == process]
        todo = [c for c in mine if c not in good]

        devices = jax.local_devices()[: max(1, min(len(todo), len(jax.local_devices())))]

        def build():
            if spec.dtype == "float64" and not jax.config.jax_enable_x64:
                raise ValueError("dtype 'float64' needs JAX's 64-bit mode (JAX_ENABLE_X64=1 or "
                                 "jax.config.update('jax_enable_x64', True)); without it the samples would be float32")
            check_resources(spec)
            if not todo:
                return None
            state = job_state(spec)
            fn = load_model(spec, state) if model_fn is None else model_fn
            draw = _sampler(spec, state, fn)
            keys = [jax.device_put(jax.random.key(spec.seed), d) for d in devices]
            return keys, [_compile(draw, k, cache_dir) for k in keys]

        built = together("building the sampler", build)

        def claim():
            try:
                (out / "chunks").mkdir(exist_ok=True)
            except OSError as err:
                raise JobWriteError(f"cannot create {out / 'chunks'}: {err.strerror or err}") from None
            if manifest is None:
                _write_manifest(spec, out, sorted(good), create=True)
            _remove_stale_temporaries(out)
            for c in range(spec.num_chunks):  # records that a crash left without their chunk
                if c not in good and not chunk_path(out, c).exists():
                    record_path(out, c).unlink(missing_ok=True)
            write_samples = manifest is None or not manifest.get("complete")
            _check_disk(spec, out, spec.num_chunks - len(good), write_samples)

        together("claiming the job directory", claim if process == 0 else lambda: None)

        total = sum(chunk_size(spec, c) for c in mine)
        done = total - sum(chunk_size(spec, c) for c in todo)
        if progress:
            progress(done, total)
        ident = job_id(spec)
        finished = set(good)

        def compute():
            if not todo:
                return
            keys, executables = built
            in_flight: collections.deque = collections.deque()

            def finish():
                c, device, y = in_flight.popleft()
                x = np.asarray(y)[: chunk_size(spec, c)]
                _write_chunk(spec, out, c, x, ident, device, allow_nonfinite=allow_nonfinite)
                finished.add(c)
                nonlocal done
                done += len(x)
                if count == 1:
                    _write_manifest(spec, out, finished)
                if progress:
                    progress(done, total)

            # Each device runs whole chunks; two per device in flight keep every device busy while
            # the host writes the previous ones (JAX dispatches asynchronously).
            for i, c in enumerate(todo):
                d = i % len(devices)
                in_flight.append((c, devices[d], executables[d](keys[d], np.uint32(c * spec.batch_size))))
                if len(in_flight) >= 2 * len(devices):
                    finish()
            while in_flight:
                finish()

        together("computing the chunks", compute)
        samples_path = out / "samples.npz"

        def assemble():
            # The chunks other processes wrote in this run: verified (record and checksum) before use.
            check = [c for c in range(spec.num_chunks) if c not in good and c not in todo]
            for c in check:
                status, detail = _check_chunk(spec, out, c, ident)
                if status != "good":
                    raise JobIntegrityError(f"chunk {c}: {detail or 'missing'} after every process finished")
            recorded = None if manifest is None else manifest.get("samples_sha256")
            complete = manifest is not None and manifest.get("complete") and not todo and not check
            if complete and recorded is not None and _file_sha256(samples_path) == recorded:
                return
            if complete and samples_path.exists():
                warnings.warn(f"{samples_path} is not the file the manifest records (missing, truncated or "
                              "altered): building it again from the chunks", JobWarning, stacklevel=4)
            digest = _write_samples(spec, out)
            _write_manifest(spec, out, range(spec.num_chunks), complete=True, samples_sha256=digest)

        together("writing samples.npz", assemble if process == 0 else lambda: None)
        if finalize is not None:
            together("finishing the job", (lambda: finalize(samples_path)) if process == 0 else lambda: None)
    return samples_path
