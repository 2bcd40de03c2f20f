r"""Drop-ins for diffusers' Flax schedulers (diffusers <= 0.39, maxdiffusion), backed by sdevp_jax's solvers.

Each class has the API diffusers' Flax pipelines and maxdiffusion's generate scripts call:
``from_pretrained(path, subfolder=...)`` -> ``(scheduler, state)``, ``from_config``, ``create_state``,
``set_timesteps(state, num_inference_steps, shape)``, ``scale_model_input``,
``step(state, model_output, timestep, sample)`` (an output with ``prev_sample``, ``state`` and
``to_tuple()``), ``add_noise``, ``save_pretrained`` and the state's ``init_noise_sigma`` and
``timesteps``. A pipeline switches with ``scheduler=`` and ``params["scheduler"] = state``:

* :class:`DDIMAdapter` for ``FlaxDDIMScheduler``: ``ddim``;
* :class:`DDPMAdapter` for ``FlaxDDPMScheduler``: ``ancestral`` (the torch ``DDPMScheduler``'s step, with the
  config's ``variance_type``; each sample's noise from the state's key);
* :class:`DPMSolverMultistepAdapter` for ``FlaxDPMSolverMultistepScheduler``: ``dpm_solver_pp``, or
  ``sde_dpm_solver_pp`` with ``algorithm_type="sde-dpmsolver++"`` (the torch class's variant);
* :class:`EulerDiscreteAdapter` for ``FlaxEulerDiscreteScheduler``: ``ddim`` in :math:`\sigma/\alpha`;
* :class:`LMSDiscreteAdapter` for ``FlaxLMSDiscreteScheduler``: ``lms``;
* :class:`PNDMAdapter` for ``FlaxPNDMScheduler``: ``pndm`` with ``warmup="improved_euler"``
  (``skip_prk_steps=True``) or ``"prk_diffusers"``, its warm-up steps of several model calls answered one
  call at a time (:class:`PNDMStepper`; the state counts the calls, as the Flax class's);
* :class:`UniPCMultistepAdapter` for torch's ``UniPCMultistepScheduler`` (diffusers has no Flax UniPC): ``unipc``.

The config (the Flax class's fields) is read by :func:`sdevp_jax.load_config` as the scheduler's
torch class, which chooses the solver and the grid; ``flax_labels=True`` puts the grid on the labels
the Flax class builds where they differ (the DPM-Solver's float32 ``linspace``), so that results equal
the Flax scheduler's (``tests/test_compat_pipeline.py``). Each step runs the solver through a
:class:`~sdevp_jax.stepper.Stepper`: the call's index is found from ``timestep`` (the nearest label of
the grid, so the pipeline's ``int32`` cast of a fractional label finds its step), the solver's memory
and, for the stochastic ones, each sample's key (:func:`~sdevp_jax.stepper.make_sample_keys` of the
key given to :meth:`create_state`) ride in the state, a pytree a ``lax.fori_loop`` carries.

A run that starts mid-grid (img2img's ``strength``) is recognised by its first call: a multistep solver
warms up from there (orders 1, 2, ... as the Flax DPM-Solver's ``lower_order_nums``).

The sigma-space classes (Euler, LMS) step samples scaled by :math:`1/\alpha` and show the model
:math:`x/\sqrt{\sigma^2 + 1}`, as diffusers does: the adapter converts to the VP sample
:math:`x_{VP} = \alpha x_\sigma` at each step and back, so the pipeline's own arithmetic
(``init_noise_sigma``, ``scale_model_input``) is unchanged.

Refused by name: the variance-exploding ``FlaxScoreSdeVeScheduler`` and ``FlaxKarrasVeScheduler``.

Saving and reloading a pipeline: diffusers records each component as ``[library, class]`` in
``model_index.json`` and, when loading, looks the library up in its table of loadable classes
(``LOADABLE_CLASSES``) and the class on the library's top-level module. When diffusers is installed
the adapters derive from its ``FlaxSchedulerMixin`` (so the pipeline saves them and hands their state to
``params["scheduler"]`` on loading), this module adds ``"sdevp_jax"`` to that table, and
``sdevp_jax.<AdapterName>`` resolves to the class: ``FlaxStableDiffusionPipeline.from_pretrained(saved)``
then reloads a pipeline saved with an adapter (after ``import sdevp_jax.compat``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
from flax import struct

from .config import load_config
from .scheduler import set_timesteps as _set_timesteps
from .denoiser import Denoiser, model_time
from .solvers import Noise
from .stepper import Stepper, make_sample_keys, solver_grid

__all__ = ["ADAPTERS", "AdapterState", "AdapterOutput", "SchedulerAdapter", "DDIMAdapter", "DDPMAdapter",
           "DPMSolverMultistepAdapter", "EulerDiscreteAdapter", "UniPCMultistepAdapter", "LMSDiscreteAdapter",
           "PNDMAdapter", "PNDMStepper", "register_with_diffusers"]

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

#: the Flax classes no adapter replaces, and why
REFUSED = {
    "FlaxScoreSdeVeScheduler": "variance-exploding: sdevp_jax samples variance-preserving models",
    "FlaxKarrasVeScheduler": "variance-exploding: sdevp_jax samples variance-preserving models",
}


def _diffusers_bases() -> tuple:
    """``(FlaxSchedulerMixin,)`` where diffusers <= 0.39 is installed, else ``()``."""
    if importlib.util.find_spec("diffusers") is None:
        return ()
    try:
        from diffusers.schedulers.scheduling_utils_flax import FlaxSchedulerMixin
    except ImportError:  # diffusers >= 0.40 has no Flax code
        return ()
    return (FlaxSchedulerMixin,)


@struct.dataclass
class AdapterState:
    """An adapter's state, a pytree: the grid's labels (``timesteps``, the model's ``timestep`` at each call),
    ``init_noise_sigma``, the solver's memory, the key of :meth:`SchedulerAdapter.create_state` and the
    per-sample keys drawn from it (``()`` where there are none), the call the run started at (``first``, -1 before
    the first step: img2img starts mid-grid) and the steps it was set for."""

    timesteps: jax.Array
    init_noise_sigma: jax.Array
    solver_state: Any = ()
    key: Any = ()
    sample_keys: Any = ()
    first: Any = -1
    num_inference_steps: Optional[int] = struct.field(pytree_node=False, default=None)


class AdapterOutput:
    """What :meth:`SchedulerAdapter.step` returns: ``prev_sample`` and ``state`` (diffusers'
    ``FlaxSchedulerOutput``); ``to_tuple()`` gives both."""

    def __init__(self, prev_sample, state):
        self.prev_sample = prev_sample
        self.state = state

    def to_tuple(self):
        return self.prev_sample, self.state

    def __getitem__(self, i):
        return self.to_tuple()[i]


class _Config(dict):
    """The scheduler's config: a dict whose fields read as attributes too (diffusers' ``scheduler.config.x``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class SchedulerAdapter(*_diffusers_bases()):
    """The base of the adapters (see the module docstring); a subclass names the diffusers class whose config
    it reads (``config_class``), ``sigma_space`` for the classes that step :math:`x/\\alpha`, and its
    Flax class's defaults.

    Args:
      flax_labels: sample on the labels the Flax class builds (:func:`sdevp_jax.load_config`), where they
        differ from its torch class's.
      dtype: the dtype the solver computes in (the Flax classes' ``dtype``).
      **config: the scheduler's fields (those of the diffusers class it replaces).
    """

    config_class: ClassVar[str] = ""
    flax_class: ClassVar[Optional[str]] = None
    sigma_space: ClassVar[bool] = False
    defaults: ClassVar[dict] = {}
    config_name = SCHEDULER_CONFIG_NAME
    _compatibles: ClassVar[list] = []
    has_compatibles = True

    def __init__(self, flax_labels: bool = False, dtype=jnp.float32, **config):
        if not isinstance(flax_labels, bool):
            raise TypeError(f"flax_labels must be a bool, got {flax_labels!r}")
        unknown = sorted(set(config) - set(self.defaults) - {"_class_name", "_diffusers_version"})
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown config fields {unknown}; allowed: {sorted(self.defaults)}")
        fields = {k: v for k, v in config.items() if not k.startswith("_")}
        self.config = _Config({**self.defaults, **fields})
        self.dtype = jnp.dtype(dtype)
        self.flax_labels = flax_labels
        self.base_state = load_config(self._source(), flax_labels=flax_labels)
        self.method, self.options = self.base_state.diffusers_config.solver_options()
        self._steppers: dict[int, Stepper] = {}

    def _source(self) -> dict:
        """The config :func:`sdevp_jax.load_config` reads: the Flax class's (or the torch class's) fields."""
        return {"_class_name": self.flax_class or self.config_class, **self.config}

    # -- construction, saving, loading ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict, return_unused_kwargs: bool = False, **kwargs):
        """The adapter of ``config`` (a dict; fields it does not know are returned with ``return_unused_kwargs``,
        as diffusers' ``from_config`` does, else ignored)."""
        config = {**dict(config), **kwargs}
        known = {k: v for k, v in config.items() if k in cls.defaults or k in ("flax_labels", "dtype")}
        unused = {k: v for k, v in config.items() if k not in known and not k.startswith("_")}
        scheduler = cls(**known)
        return (scheduler, unused) if return_unused_kwargs else scheduler

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder: Optional[str] = None,
                        return_unused_kwargs: bool = False, **kwargs):
        """``(scheduler, state)`` from a saved ``scheduler_config.json`` (a folder, with ``subfolder``), as the Flax
        classes' ``from_pretrained``; ``(scheduler, state, unused)`` with ``return_unused_kwargs``. A config
        saved by any diffusers scheduler of the family loads (its ``_class_name`` is not checked)."""
        path = Path(pretrained_model_name_or_path)
        if subfolder:
            path = path / subfolder
        if path.is_dir():
            path = path / SCHEDULER_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {SCHEDULER_CONFIG_NAME} at {path} (local folders only: sdevp_jax does not "
                                    f"download)")
        config = json.loads(path.read_text())
        scheduler, unused = cls.from_config(config, return_unused_kwargs=True, **kwargs)
        state = scheduler.create_state()
        return (scheduler, state, unused) if return_unused_kwargs else (scheduler, state)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Write ``scheduler_config.json`` (this class's name, its fields and ``flax_labels``) to ``save_directory``."""
        if push_to_hub:
            raise ValueError("push_to_hub is not served: sdevp_jax writes local files only")
        os.makedirs(save_directory, exist_ok=True)
        config = {"_class_name": type(self).__name__, **self.config, "flax_labels": self.flax_labels}
        (Path(save_directory) / SCHEDULER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))

    save_config = save_pretrained

    @property
    def has_state(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.config["num_train_timesteps"]

    # -- the scheduler API ------------------------------------------------------------------------------------
    def stepper(self, num_inference_steps: int) -> Stepper:
        """The :class:`~sdevp_jax.stepper.Stepper` of ``num_inference_steps`` steps (built once per count)."""
        if num_inference_steps not in self._steppers:
            with jax.ensure_compile_time_eval():
                state = _set_timesteps(self.base_state, num_inference_steps)
                stepper = Stepper.create(state, self.method, self.dtype, **self.options)
            if stepper.num_calls != num_inference_steps:
                raise ValueError(f"{type(self).__name__}: {self.method} makes {stepper.num_calls} model calls on "
                                 f"{num_inference_steps} steps; the Flax loop makes one per step")
            self._steppers[num_inference_steps] = stepper
        return self._steppers[num_inference_steps]

    def create_state(self, common=None, key: Optional[jax.Array] = None) -> AdapterState:
        """The state before :meth:`set_timesteps`: the training labels, ``init_noise_sigma`` and ``key`` (a PRNG
        key: the stochastic solvers' noise, each sample's stream ``fold_in(key, b)``; ``common`` is
        accepted and ignored, the schedule is the config's)."""
        if key is not None:
            from . import _checks

            _checks.prng_key("key", key)
        with jax.ensure_compile_time_eval():
            labels = jnp.arange(self.config["num_train_timesteps"] - 1, -1, -1).astype(jnp.float32)
            sigma = self._sigma_of_label(labels[0]) if self.sigma_space else 1.0
        return AdapterState(labels, jnp.asarray(self._init_noise_sigma(sigma), self.dtype),
                            key=() if key is None else key)

    def _init_noise_sigma(self, sigma_max):
        if not self.sigma_space:
            return 1.0
        if self.config.get("timestep_spacing", "linspace") in ("linspace", "trailing"):
            return sigma_max
        return (sigma_max ** 2 + 1.0) ** 0.5

    def _sigma_of_label(self, label):
        """:math:`\\sigma/\\alpha` at a training label (0-d), from the schedule's cumulative alphas."""
        t = (label + 1.0) / self.config["num_train_timesteps"]
        alpha, sigma = self.base_state.schedule.cast(jnp.float32).alpha_sigma(jnp.asarray(t, jnp.float32))
        return sigma / alpha

    def set_timesteps(self, state: AdapterState, num_inference_steps: int, shape: tuple = (),
                      key: Optional[jax.Array] = None) -> AdapterState:
        """The state on the grid of ``num_inference_steps`` (a Python int), the solver's memory shaped by
        ``shape`` (the samples', batch first) and, for a stochastic solver, the per-sample keys of ``key``
        (default: the state's)."""
        stepper = self.stepper(num_inference_steps)
        if not shape:
            raise ValueError("shape (the samples', batch first) is needed: the solver's memory has it")
        x = jnp.zeros(tuple(shape), self.dtype)
        key = state.key if key is None else key
        sample_keys = ()
        if stepper.solver.stochastic:
            if isinstance(key, tuple):
                raise ValueError(f"{type(self).__name__} with {stepper.solver.name!r} draws noise: pass key= to "
                                 f"create_state or set_timesteps")
            sample_keys = make_sample_keys(key, shape[0], 0)
        with jax.ensure_compile_time_eval():
            labels = jnp.stack([stepper.model_time(k) for k in range(stepper.num_calls)]).astype(jnp.float32)
            sigma = self._sigma_of_label(labels[0]) if self.sigma_space else 1.0
        return state.replace(timesteps=labels, init_noise_sigma=jnp.asarray(self._init_noise_sigma(sigma), self.dtype),
                             solver_state=stepper.init(x), key=key, sample_keys=sample_keys, first=jnp.int32(-1),
                             num_inference_steps=num_inference_steps)

    def _index(self, state: AdapterState, timestep) -> jax.Array:
        """The call whose label is nearest ``timestep`` (0-d, possibly traced)."""
        t = jnp.asarray(timestep).astype(jnp.float32).reshape(-1)[0]
        return jnp.argmin(jnp.abs(state.timesteps - t)).astype(jnp.int32)

    def _alpha_at(self, stepper: Stepper, k) -> jax.Array:
        """:math:`\\alpha` at call ``k``'s grid time (the sample of a sigma-space class is :math:`x_{VP}/\\alpha`)."""
        return stepper.grid.alpha[jnp.minimum(k, stepper.grid.num_points - 1)] if stepper.grid.alpha is not None \
            else stepper.state.schedule.cast(stepper.dtype).alpha_sigma(stepper.time(k))[0]

    def scale_model_input(self, state: AdapterState, sample: jax.Array, timestep=None) -> jax.Array:
        """The model's input: ``sample`` itself, or for a sigma-space class :math:`x/\\sqrt{\\sigma^2 + 1}` (the VP
        sample)."""
        if not self.sigma_space:
            return sample
        if state.num_inference_steps is None:
            raise ValueError("call set_timesteps before scale_model_input")
        stepper = self.stepper(state.num_inference_steps)
        return (sample * self._alpha_at(stepper, self._index(state, timestep))).astype(sample.dtype)

    def step(self, state: AdapterState, model_output: jax.Array, timestep, sample: jax.Array,
             return_dict: bool = True, **unused):
        """The sample after the call at ``timestep`` (a label of ``state.timesteps``; traced in a loop), given the
        model's output there: an :class:`AdapterOutput` (``(prev_sample, state)`` with ``return_dict=False``).
        Extra keywords of a Flax class's step (``eta``, ``key``) are refused: the config holds the options, the
        state the keys."""
        if unused:
            raise TypeError(f"{type(self).__name__}.step: {sorted(unused)} are not served (the options are the "
                            f"config's, the noise keys the state's: create_state(key=...))")
        if state.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        stepper = self.stepper(state.num_inference_steps)
        k = self._index(state, timestep)
        keys = state.sample_keys if stepper.solver.stochastic else None
        first = jnp.where(state.first < 0, k, state.first).astype(jnp.int32)
        if self.sigma_space:
            x = sample * self._alpha_at(stepper, k)
            x, memory = stepper.step(state.solver_state, model_output, x.astype(sample.dtype), k, keys, first)
            # after the step over interval k: alpha at point k + 1; after finish (the step to sigma = 0): 1
            after = jnp.where(k < stepper.num_steps, self._alpha_at(stepper, k + 1), 1.0)
            prev = x / after
        else:
            prev, memory = stepper.step(state.solver_state, model_output, sample, k, keys, first)
        if not stepper.solver.in_work_dtype:
            # a reverse-SDE update (DDPM's ancestral step): its memory is the update's noise-free mean, which the
            # last call returns, as sv.sample(denoise=True) and diffusers' DDPM step (no noise at label 0) do
            prev = jnp.where(k == stepper.num_steps - 1, memory.astype(prev.dtype), prev)
        prev = prev.astype(sample.dtype)
        state = state.replace(solver_state=memory, first=first)
        return AdapterOutput(prev, state) if return_dict else (prev, state)

    def add_noise(self, state: AdapterState, original_samples, noise, timesteps) -> jax.Array:
        """The training forward process at the labels ``timesteps`` (``(batch,)``): :math:`\\alpha x_0 + \\sigma
        \\epsilon`, or for a sigma-space class :math:`x_0 + (\\sigma/\\alpha)\\epsilon` (diffusers' ``add_noise``)."""
        labels = jnp.asarray(timesteps).astype(jnp.float32).reshape(-1)
        t = (labels + 1.0) / self.config["num_train_timesteps"]
        alpha, sigma = self.base_state.schedule.cast(jnp.float32).alpha_sigma(t)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        alpha, sigma = alpha.reshape(shape), sigma.reshape(shape)
        if self.sigma_space:
            return (original_samples + (sigma / alpha) * noise).astype(original_samples.dtype)
        return (alpha * original_samples + sigma * noise).astype(original_samples.dtype)


_COMMON = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
           "trained_betas": None, "prediction_type": "epsilon"}


class DDIMAdapter(SchedulerAdapter):
    """``FlaxDDIMScheduler``: sdevp_jax's ``ddim`` (eta 0), its last step to ``alphas_cumprod = 1`` with
    ``set_alpha_to_one``."""

    config_class = "DDIMScheduler"
    flax_class = "FlaxDDIMScheduler"
    defaults = {**_COMMON, "clip_sample": True, "clip_sample_range": 1.0, "set_alpha_to_one": True,
                "steps_offset": 0}


class DDPMAdapter(SchedulerAdapter):
    r"""``FlaxDDPMScheduler``: sdevp_jax's ``ancestral`` step on the config's grid (``leading`` labels, as the Flax
    class's :math:`\lfloor N_{train}/n \rfloor i`), which is the torch ``DDPMScheduler``'s step
    (Ho et al. 2020, eqs. 6-7: the posterior mean from the clipped :math:`\hat x_0` with ``clip_sample``, then
    the ``variance_type``'s noise, none at the last call). Give :meth:`create_state` a key: sample ``b``'s noise
    at call ``k`` is slot ``1 + k`` of ``fold_in(key, b)``, as :func:`sdevp_jax.sample` draws it, so a sample's
    result does not depend on its batch.

    Where it differs from the Flax class (diffusers 0.39), which it follows only on a full grid
    (``num_inference_steps = num_train_timesteps``) with ``"fixed_small"`` or ``"fixed_large"``:

    * the Flax class's step goes from label ``t`` to ``t - 1`` (``alphas_cumprod[t - 1]``, ``betas[t]``)
      whatever the grid, so on a grid of fewer steps its mean and variance are those of one training step,
      not of the step taken; this adapter steps from each grid label to the next, as the torch class;
    * ``key``: the Flax class draws its noise from ``step``'s ``key``, and with none (the Flax pipelines pass
      none) from ``jax.random.key(0)`` at every step: the same noise at each step and for every batch.
      This adapter accepts ``key`` in :meth:`step` and ignores it: the noise comes from the per-sample keys
      in the state, a fresh draw at each step;
    * ``"fixed_small_log"`` and ``"fixed_large_log"``: the Flax class takes the square root of a log variance
      (NaN); here they are the torch class's (:func:`sdevp_jax.solvers.sde.ddpm_variance`: the variances of
      ``"fixed_small"`` and ``"fixed_large"``);
    * ``"learned"`` and ``"learned_range"`` (the model returns twice the sample's channels along axis 1): the
      Flax class splits the output into ``channels`` pieces (a failure unless there are 2) and interpolates
      ``"learned_range"`` linearly in the variance; here the split is in two halves and the interpolation in
      the log variance (Nichol & Dhariwal 2021, eq. 15), as the torch class."""

    config_class = "DDPMScheduler"
    flax_class = "FlaxDDPMScheduler"
    defaults = {**_COMMON, "variance_type": "fixed_small", "clip_sample": True}

    def step(self, state: AdapterState, model_output: jax.Array, timestep, sample: jax.Array,
             key: Optional[jax.Array] = None, return_dict: bool = True, **unused):
        """As :meth:`SchedulerAdapter.step`; ``key`` (the Flax class's argument) is accepted and ignored: each
        sample's noise comes from the state's per-sample keys (see the class docstring)."""
        return super().step(state, model_output, timestep, sample, return_dict=return_dict, **unused)


class DPMSolverMultistepAdapter(SchedulerAdapter):
    """``FlaxDPMSolverMultistepScheduler``: ``dpm_solver_pp``, or ``sde_dpm_solver_pp`` with
    ``algorithm_type="sde-dpmsolver++"`` (give ``create_state`` a key)."""

    config_class = "DPMSolverMultistepScheduler"
    flax_class = "FlaxDPMSolverMultistepScheduler"
    defaults = {**_COMMON, "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                "lower_order_final": True, "timestep_spacing": "linspace"}

    def __init__(self, flax_labels: bool = False, dtype=jnp.float32, **config):
        # the SDE variant exists on the torch class only: read such a config as the torch class's
        self.flax_class = None if config.get("algorithm_type") == "sde-dpmsolver++" else type(self).flax_class
        super().__init__(flax_labels=flax_labels, dtype=dtype, **config)


class EulerDiscreteAdapter(SchedulerAdapter):
    """``FlaxEulerDiscreteScheduler``: Euler in :math:`\\sigma/\\alpha`, sdevp_jax's ``ddim`` with its last step to
    :math:`\\sigma = 0`, on :math:`x/\\alpha` samples."""

    config_class = "EulerDiscreteScheduler"
    flax_class = "FlaxEulerDiscreteScheduler"
    sigma_space = True
    defaults = {**_COMMON, "timestep_spacing": "linspace"}

    def _source(self) -> dict:
        # the Flax class's 'leading' labels are the torch class's with steps_offset = 1 (it adds 1, and has no
        # steps_offset field); its 'linspace' labels are the torch class's up to float32 rounding
        if self.config["timestep_spacing"] == "leading":
            return {"_class_name": self.config_class, **self.config, "steps_offset": 1}
        return super()._source()


class LMSDiscreteAdapter(SchedulerAdapter):
    """``FlaxLMSDiscreteScheduler``: ``lms`` of order 4 in :math:`\\sigma/\\alpha`, on :math:`x/\\alpha` samples (the
    Flax class's ``step`` integrates its coefficients with SciPy on the host, so it runs eagerly only; this one
    runs inside a jitted loop)."""

    config_class = "LMSDiscreteScheduler"
    flax_class = "FlaxLMSDiscreteScheduler"
    sigma_space = True
    defaults = {**_COMMON}


class UniPCMultistepAdapter(SchedulerAdapter):
    """``UniPCMultistepScheduler`` (torch; diffusers has no Flax UniPC): ``unipc`` with the config's options."""

    config_class = "UniPCMultistepScheduler"
    defaults = {**_COMMON, "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                "sample_max_value": 1.0, "predict_x0": True, "solver_type": "bh2", "lower_order_final": True,
                "disable_corrector": [], "timestep_spacing": "linspace", "steps_offset": 0,
                "final_sigmas_type": "zero"}


@dataclasses.dataclass(frozen=True)
class PNDMStepper:
    r"""sdevp_jax's ``pndm`` stepped one model call at a time (diffusers' ``PNDMScheduler`` API): each warm-up step
    (``warmup_steps`` of ``warmup_calls`` calls: one pseudo improved Euler step of 2, or three pseudo Runge--Kutta
    steps of 4) is answered call by call with :meth:`~sdevp_jax.solvers.PNDM.warmup_call`, each call returning
    the sample the next is made at (after the step's last, the step's result); then each call is one PLMS step
    (the solver's ``step``), and with ``final_sigmas_type="zero"`` the call after the last interval its
    ``finish``. The memory (``(history, step start, combination of the step's predictions, its first
    prediction, call count)``) counts the calls, as the Flax class counts them: labels repeat (the improved Euler
    step's second call and the first PLMS call are at the same point), so a label cannot tell calls apart.
    ``num_calls`` is ``solver.nfe``."""

    solver: Any
    state: Any
    grid: Any
    dtype: Any
    num_steps: int
    num_calls: int

    @classmethod
    def create(cls, state, dtype=jnp.float32, **options) -> "PNDMStepper":
        from . import solvers

        solver = solvers.make("pndm", **options).check()
        grid = solver_grid(solver, state, dtype)
        if grid.num_points < solver.warmup_steps + 1:
            raise ValueError(f"pndm with warmup={solver.warmup!r} needs a grid of at least {solver.warmup_steps + 1} "
                             f"points, got {grid.num_points}")
        num_steps = solver.num_steps(grid.num_points)
        return cls(solver, state, grid, jnp.dtype(dtype), num_steps, solver.nfe(grid.num_points))

    @property
    def warm_calls(self) -> int:
        """The warm-up's calls (2 or 12)."""
        return self.solver.warmup_steps * self.solver.warmup_calls

    def interval(self, c):
        """The interval call ``c`` belongs to (``num_steps`` for the call in ``finish``)."""
        return jnp.where(c < self.warm_calls, c // self.solver.warmup_calls,
                         c - self.warm_calls + self.solver.warmup_steps)

    def model_times(self) -> jax.Array:
        """The model's time input (the training label) at each call (concrete)."""
        solver, grid = self.solver, self.grid
        with jax.ensure_compile_time_eval():
            times = [solver.warmup_time(self.state, grid, k, j) for k in range(solver.warmup_steps)
                     for j in range(solver.warmup_calls)]
            times += [grid.t[min(k, grid.num_points - 1)] for k in range(solver.warmup_steps, self.num_calls
                                                                           - self.warm_calls + solver.warmup_steps)]
            return model_time(self.state, jnp.stack(times).astype(self.state.timesteps.dtype))

    def init(self, x: jax.Array) -> tuple:
        x = x.astype(self.dtype)
        zero = jnp.zeros_like(x)
        return self.solver.init(x, self.grid), x, zero, zero, jnp.zeros((), jnp.int32)

    def step(self, memory, model_output: jax.Array, x: jax.Array):
        """``(x_next, memory)``: the memory's next call, ``model_output`` the model's output at ``x`` and that call's
        label (:meth:`model_times`); during the warm-up ``x_next`` is the sample the next call is made at."""
        hist, start, acc, first, c = memory
        model = Denoiser(self.state, lambda y, t: model_output, x.dtype, self.dtype)
        work = x.astype(self.dtype)
        grid, solver = self.grid, self.solver
        k = self.interval(c)

        def warm(j):
            def call(_):
                begin = work if j == 0 else start
                y, new_acc, eps = solver.warmup_call(model, work, begin, acc, grid, k, j)
                new_first = eps if j == 0 else first
                new_hist = solver.remember(hist, new_first, begin, grid, k) if j == solver.warmup_calls - 1 else hist
                return y.astype(work.dtype), new_hist, begin, new_acc.astype(work.dtype), new_first
            return call

        def plms(_):
            noise = Noise(None, jnp.int32(1), x.shape[1:], self.dtype)
            x_next, h, _ = solver.step(model, work, hist, grid, k, noise)
            return x_next.astype(work.dtype), h, start, acc, first

        def finish(_):
            x_next, h, _ = solver.finish(model, work, hist, grid)
            return x_next.astype(work.dtype), h, start, acc, first

        branches = [warm(j) for j in range(solver.warmup_calls)] + [plms]
        which = jnp.where(c < self.warm_calls, c % solver.warmup_calls, solver.warmup_calls)
        if self.num_calls > self.num_steps + self.warm_calls - solver.warmup_steps:
            branches.append(finish)
            which = jnp.where(k >= self.num_steps, len(branches) - 1, which)
        x_next, hist, start, acc, first = jax.lax.switch(which, branches, None)
        return x_next.astype(x.dtype), (hist, start, acc, first, c + 1)


class PNDMAdapter(SchedulerAdapter):
    r"""``FlaxPNDMScheduler``: sdevp_jax's ``pndm`` (Liu et al. 2022: PLMS, eq. 12, after a warm-up) on the config's
    ``leading`` labels, stepped one model call at a time by :class:`PNDMStepper`: with ``skip_prk_steps=True``
    (Stable Diffusion's configs) ``warmup="improved_euler"``, one pseudo improved Euler step of two calls; with
    ``skip_prk_steps=False`` ``warmup="prk_diffusers"``, three pseudo Runge--Kutta steps (eq. 13) of four calls,
    the midpoint calls at diffusers' integer labels.

    As in the Flax class, ``state.timesteps`` repeats labels (a warm-up step's last call and the next step's
    first are at the same point; the Runge--Kutta midpoint's two calls) and the state counts the calls:
    ``step`` makes the next call whatever ``timestep`` it is given, and during the warm-up returns the sample the
    next call is made at. The calls are ``solver.nfe``: with ``steps_offset = 0`` and ``set_alpha_to_one = False``
    the grid ends at label 0; with ``steps_offset > 0`` (a last step from label ``steps_offset`` to label 0) or
    ``set_alpha_to_one`` (a last step to :math:`\bar\alpha = 1`) there is one more call. The Flax pipelines' loop
    makes ``num_inference_steps`` calls of these, as it does with the Flax class, whose ``timesteps`` has one
    more label with ``steps_offset = 0`` (a step from label 0 to label 0, which changes nothing); a loop over all
    of ``state.timesteps`` (the torch pipelines') computes what :func:`sdevp_jax.sample_ode` does with the config's
    solver.

    Where the Flax class (diffusers 0.39) differs: its last step (from label ``steps_offset``) goes to label 0's
    :math:`\bar\alpha` even with ``set_alpha_to_one`` (it clips the label at 0 before the test that chooses
    :math:`\bar\alpha = 1`); the torch class and this one go to :math:`\bar\alpha = 1`. The Flax pipelines' loop
    does not reach that call."""

    config_class = "PNDMScheduler"
    flax_class = "FlaxPNDMScheduler"
    defaults = {**_COMMON, "skip_prk_steps": False, "set_alpha_to_one": False, "steps_offset": 0}

    def stepper(self, num_inference_steps: int) -> PNDMStepper:
        """The :class:`PNDMStepper` of ``num_inference_steps`` steps (built once per count)."""
        if num_inference_steps not in self._steppers:
            with jax.ensure_compile_time_eval():
                state = _set_timesteps(self.base_state, num_inference_steps)
                self._steppers[num_inference_steps] = PNDMStepper.create(state, self.dtype,
                                                                                      **self.options)
        return self._steppers[num_inference_steps]

    def set_timesteps(self, state: AdapterState, num_inference_steps: int, shape: tuple = (),
                      key: Optional[jax.Array] = None) -> AdapterState:
        """The state on the grid of ``num_inference_steps`` (a Python int): ``timesteps`` the label of each call
        (the second repeated), the memory shaped by ``shape`` (the samples', batch first) and the call count 0."""
        stepper = self.stepper(num_inference_steps)
        if not shape:
            raise ValueError("shape (the samples', batch first) is needed: the solver's memory has it")
        with jax.ensure_compile_time_eval():
            labels = stepper.model_times().astype(jnp.float32)
        return state.replace(timesteps=labels, init_noise_sigma=jnp.asarray(1.0, self.dtype),
                             solver_state=stepper.init(jnp.zeros(tuple(shape), self.dtype)),
                             key=state.key if key is None else key, num_inference_steps=num_inference_steps)

    def step(self, state: AdapterState, model_output: jax.Array, timestep, sample: jax.Array,
             return_dict: bool = True, **unused):
        """The sample after the state's next call (``timestep`` is not read: the state counts the calls, as the
        Flax class's), given the model's output there; after the first call, the sample the second is made at."""
        if unused:
            raise TypeError(f"{type(self).__name__}.step: {sorted(unused)} are not served (the options are the "
                            f"config's)")
        if state.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        prev, memory = self.stepper(state.num_inference_steps).step(state.solver_state, model_output, sample)
        state = state.replace(solver_state=memory)
        return AdapterOutput(prev, state) if return_dict else (prev, state)


#: the adapters by the diffusers class each replaces
ADAPTERS = {"FlaxDDIMScheduler": DDIMAdapter, "FlaxDDPMScheduler": DDPMAdapter,
            "FlaxDPMSolverMultistepScheduler": DPMSolverMultistepAdapter,
            "FlaxEulerDiscreteScheduler": EulerDiscreteAdapter, "FlaxLMSDiscreteScheduler": LMSDiscreteAdapter,
            "FlaxPNDMScheduler": PNDMAdapter, "UniPCMultistepScheduler": UniPCMultistepAdapter}

_compatible = [c.__name__ for c in ADAPTERS.values()]
for _cls in ADAPTERS.values():
    _cls._compatibles = _compatible


def adapter_for(class_name: str) -> type:
    """The adapter of a diffusers scheduler class name, or a ValueError naming why there is none."""
    if class_name in ADAPTERS:
        return ADAPTERS[class_name]
    if class_name in REFUSED:
        raise ValueError(f"{class_name} has no adapter: {REFUSED[class_name]}")
    raise ValueError(f"{class_name} has no adapter; the adapters replace {sorted(ADAPTERS)}")


def register_with_diffusers() -> bool:
    """Add ``"sdevp_jax"`` to diffusers' table of loadable libraries (``LOADABLE_CLASSES`` of its Flax pipeline
    loader), so that a pipeline saved with an adapter reloads; ``False`` where diffusers' Flax code is absent.
    Called when this module is imported."""
    if not _diffusers_bases():
        return False
    from diffusers.pipelines import pipeline_flax_utils

    methods = ["save_pretrained", "from_pretrained"]
    pipeline_flax_utils.LOADABLE_CLASSES.setdefault("sdevp_jax", {"SchedulerAdapter": methods})
    pipeline_flax_utils.ALL_IMPORTABLE_CLASSES.setdefault("SchedulerAdapter", methods)
    return True


register_with_diffusers()
