"""sdevp_jax: the variance-preserving SDE scheduler of Song et al. (ICLR 2021) in JAX.

diffusers' ``ScoreSdeVpScheduler`` as pure functions over an immutable state, a
compiled ``lax.scan`` sampling loop with per-sample PRNG streams, and an exact
closed-form Gaussian-mixture model to run and check it with.

Typical use::

    import jax, sdevp_jax as sv
    state = sv.set_timesteps(sv.create_state(), 1000)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    x = jax.jit(sv.sample, static_argnums=(1, 3))(state, model_fn, jax.random.key(0), (512, 2))
    x = sv.sample(state, model_fn, jax.random.key(0), (512, 2), solver=sv.solvers.UniPC(order=3))

Namespaces (each importable on its own, without side effects): ``sv.solvers`` (every
sampler, the registry), ``sv.schedules``, ``sv.grids``, ``sv.mixtures`` (the toy models),
``sv.jobs``, ``sv.distributed``, ``sv.fitting`` (grids fitted to a model). The toy mixtures'
deprecated top-level spellings
(``sv.default_mixture``, ...) resolve until their removal in 0.6, with a DeprecationWarning that
names their ``sv.mixtures`` spelling.
"""

__version__ = "0.6.0"  # before the submodules, which record it

from . import grids, mixtures, schedules, sde, solvers
from .config import load_config, save_config
from .loops import SamplerInfo, invert_ode, sample, sample_ode
from .guidance import (apg, apg_combine, autoguidance, cfg, cfg_pp, cfg_zero_star, cfg_zero_star_scale,
                       classifier_guidance, guidance_schedule)
from .mixtures import NULL_CLASS
from .samplers import (
    METHODS,
    STEP_RULES,
    MethodInfo,
    ancestral,
    euler_maruyama,
    langevin_correct,
    list_methods,
    probability_flow_drift,
    reverse_diffusion,
)
from .denoiser import PREDICTION_TYPES, model_time, time_from_model_time
from .grids import SPACINGS
from .scheduler import ScoreSdeVpSchedulerState, StepOutput, create_state, set_timesteps, step_pred

from . import distributed, jobs  # noqa: E402  (they build on everything above)
from .inverse import colorize, inpaint  # noqa: E402
from .likelihood import bits_per_dim, log_likelihood  # noqa: E402
from .training import add_noise, dsm_loss  # noqa: E402
from .jobs import JobSpec, run_job  # noqa: E402
from . import fitting  # noqa: E402
from .stepper import Stepper  # noqa: E402
from .fitting import fit_grid  # noqa: E402

__all__ = [
    "add_noise",
    "bits_per_dim",
    "colorize",
    "dsm_loss",
    "inpaint",
    "log_likelihood",
    "JobSpec",
    "distributed",
    "jobs",
    "run_job",
    "fitting",
    "Stepper",
    "fit_grid",
    "load_config",
    "save_config",
    "METHODS",
    "STEP_RULES",
    "MethodInfo",
    "SamplerInfo",
    "ancestral",
    "euler_maruyama",
    "langevin_correct",
    "list_methods",
    "probability_flow_drift",
    "reverse_diffusion",
    "sample_ode",
    "invert_ode",
    "NULL_CLASS",
    "cfg",
    "classifier_guidance",
    "apg",
    "apg_combine",
    "cfg_zero_star",
    "cfg_zero_star_scale",
    "autoguidance",
    "cfg_pp",
    "guidance_schedule",
    "ScoreSdeVpSchedulerState",
    "StepOutput",
    "create_state",
    "sample",
    "schedules",
    "grids",
    "solvers",
    "mixtures",
    "sde",
    "model_time",
    "time_from_model_time",
    "PREDICTION_TYPES",
    "SPACINGS",
    "set_timesteps",
    "step_pred",
]


#: The toy mixtures' deprecated top-level spellings: they live in :mod:`sdevp_jax.mixtures`
#: and resolve here, with a DeprecationWarning, until their removal in 0.6.
_MOVED_TO_MIXTURES = frozenset(mixtures.__all__) - {"NULL_CLASS"}


#: the adapters of :mod:`sdevp_jax.compat`, resolved here on first use (diffusers' pipeline loader looks a saved
#: component's class up on its library's top-level module)
_COMPAT = frozenset({"SchedulerAdapter", "DDIMAdapter", "DDPMAdapter", "DPMSolverMultistepAdapter",
                     "EulerDiscreteAdapter", "UniPCMultistepAdapter", "LMSDiscreteAdapter", "PNDMAdapter"})


def __getattr__(name: str):
    if name in _COMPAT:
        from . import compat

        return getattr(compat, name)
    if name in _MOVED_TO_MIXTURES:
        import warnings

        warnings.warn(
            f"sdevp_jax.{name} is deprecated and will be removed in 0.6: use sdevp_jax.mixtures.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(mixtures, name)
    raise AttributeError(f"module 'sdevp_jax' has no attribute {name!r}")
