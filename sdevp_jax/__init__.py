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
``sv.jobs``, ``sv.distributed``. The toy mixtures' top-level names of earlier releases
(``sv.default_mixture``, ...) are kept for this release; new code should use ``sv.mixtures``.
"""

__version__ = "0.5.0"  # before the submodules, which record it

from . import grids, schedules, sde, solvers
from .config import load_config, save_config
from .loops import SamplerInfo, invert_ode, sample, sample_ode
from .models import (
    NULL_CLASS,
    ClassMixture,
    GaussianMixture,
    cfg,
    classifier_guidance,
    default_class_mixture,
    make_class_log_prob,
    make_class_mixture,
    make_class_model,
    sample_class_mixture,
    assign_modes,
    default_mixture,
    diffused_log_prob,
    make_mixture,
    make_mixture_eps_fn,
    mixture_eps,
    sample_mixture,
)
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
from .scheduler import (
    PREDICTION_TYPES,
    SPACINGS,
    ScoreSdeVpSchedulerState,
    StepOutput,
    create_state,
    model_time,
    set_timesteps,
    step_pred,
    time_from_model_time,
)

from . import distributed, jobs, mixtures  # noqa: E402  (they build on everything above)
from .inverse import colorize, inpaint  # noqa: E402
from .likelihood import bits_per_dim, log_likelihood  # noqa: E402
from .training import add_noise, dsm_loss  # noqa: E402
from .jobs import JobSpec, run_job  # noqa: E402

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
    "GaussianMixture",
    "ClassMixture",
    "NULL_CLASS",
    "cfg",
    "classifier_guidance",
    "default_class_mixture",
    "make_class_log_prob",
    "make_class_mixture",
    "make_class_model",
    "sample_class_mixture",
    "ScoreSdeVpSchedulerState",
    "StepOutput",
    "assign_modes",
    "create_state",
    "default_mixture",
    "diffused_log_prob",
    "make_mixture",
    "make_mixture_eps_fn",
    "mixture_eps",
    "sample",
    "sample_mixture",
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
