r"""The method registry's public view and the probability-flow velocity.

``sv.METHODS`` and :func:`list_methods` are read from the solver classes
(:mod:`sdevp_jax.solvers`): a registered solver appears here with its kind, order,
network calls and description. The SDE updates (``euler_maruyama``,
``reverse_diffusion``, ``ancestral``, ``langevin_correct``) live in
:mod:`sdevp_jax.solvers.sde` and are re-exported here under their public names.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from . import _checks
from .denoiser import eps_from_prediction
from .scheduler import ScoreSdeVpSchedulerState, broadcast_t
from .solvers import REGISTRY
from .solvers.ode import drift_from_eps
from .solvers.sde import (STEP_RULES, ancestral, check_step_rule, euler_maruyama, langevin_correct,  # noqa: F401
                          reverse_diffusion)

__all__ = [
    "MethodInfo",
    "METHODS",
    "list_methods",
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral",
    "langevin_correct",
    "probability_flow_drift",
    "STEP_RULES",
]


def probability_flow_drift(
    state: ScoreSdeVpSchedulerState, model_output: jax.Array, x: jax.Array, t: jax.Array
) -> jax.Array:
    r"""The probability-flow ODE's velocity :math:`dx/dt = -\tfrac12\beta(t)\,(x - \hat\epsilon/\sigma(t))`.

    (Song et al. 2021, eq. 13, with the score :math:`-\hat\epsilon/\sigma`.) ``model_output``
    is of ``state.prediction_type`` (converted to :math:`\hat\epsilon` here); ``t`` is
    0-d or ``(batch,)``; computed in ``compute_dtype(x.dtype)``.

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> x = jnp.ones((2, 2))
      >>> v = sv.probability_flow_drift(state, jnp.zeros((2, 2)), x, state.timesteps[0])   # dx/dt
      >>> v.shape
      (2, 2)
    """
    dtype = _checks.compute_dtype(x.dtype)
    t = broadcast_t(jnp.asarray(t).astype(dtype), x)
    schedule = state.schedule.cast(dtype)
    x = x.astype(dtype)
    eps = model_output.astype(dtype)
    if state.prediction_type != "epsilon":
        eps = eps_from_prediction(state.prediction_type, eps, x, *schedule.alpha_sigma(t))
    return drift_from_eps(schedule, eps, x, t)


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """What the registry knows of a sampling method.

    Attributes:
      name: the name to pass to ``sample`` / ``sample_ode`` (and the CLI).
      kind: ``"predictor"``, ``"corrector"`` or ``"ode"``.
      order: weak order (SDE predictors) or order of accuracy (ODE methods); 0 for a corrector.
      nfe: network calls per sample, as a formula of ``N`` (the number of timesteps).
      description: one line.
    """

    name: str
    kind: str
    order: int
    nfe: str
    description: str


METHODS: dict[str, MethodInfo] = {
    name: MethodInfo(name, cls.kind, cls.default_order(), cls.nfe_formula, cls.description) for name, cls in REGISTRY.items()
}


def list_methods(kind: Optional[str] = None) -> list[str]:
    """The registered method names, optionally of one ``kind`` ("predictor", "corrector", "ode").

    Examples:
      >>> sv.list_methods("predictor")
      ['euler_maruyama', 'reverse_diffusion', 'ancestral']
      >>> "dpm_solver" in sv.list_methods("ode")
      True
    """
    kinds = {m.kind for m in METHODS.values()}
    if kind is not None and kind not in kinds:
        raise ValueError(f"kind must be one of {sorted(kinds)} or None, got {kind!r}")
    return [name for name, m in METHODS.items() if kind is None or m.kind == kind]


def lookup(kind, name: str, argname: str):
    """The registered method ``name`` of ``kind`` (a kind or a tuple of kinds), or a ValueError listing the choices."""
    kinds = (kind,) if isinstance(kind, str) else kind
    names = [m for k in kinds for m in list_methods(k)]
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"{argname} must be one of {names}, got {name!r}")
    return name
