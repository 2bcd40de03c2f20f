"""The registry's queries: solver classes by name, their options, a solver from a name and options.

Everything a user can name -- ``sv.METHODS``, ``sample_ode(method=..., **options)``,
the jobs' recorded options and the CLI's flags -- is read from the registered
classes (:data:`~sdevp_jax.solvers.base.REGISTRY`) here, so a new solver is one
class with ``@register``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from .base import REGISTRY, Solver

__all__ = ["get", "make", "option_fields", "option_defaults", "methods_with", "names"]


def names(kind: Optional[Any] = None) -> list[str]:
    """The registered names, of one ``kind`` or a tuple of kinds (all for ``None``).

    Examples:
      >>> sv.solvers.names("corrector")
      ['langevin']
    """
    kinds = None if kind is None else ((kind,) if isinstance(kind, str) else tuple(kind))
    return [name for name, cls in REGISTRY.items() if kinds is None or cls.kind in kinds]


def get(name: str, kind: Optional[Any] = None, argname: str = "method") -> type:
    """The solver class registered as ``name`` (of ``kind``), or a ValueError listing the choices.

    Examples:
      >>> sv.solvers.get("unipc").__name__
      'UniPC'
    """
    choices = names(kind)
    if not isinstance(name, str) or name not in choices:
        raise ValueError(f"{argname} must be one of {choices}, got {name!r}")
    return REGISTRY[name]


def option_fields(cls: type) -> dict[str, dataclasses.Field]:
    """A solver class's options: its dataclass fields that carry option metadata, by name.

    Examples:
      >>> sorted(sv.solvers.option_fields(sv.solvers.DDIM))
      ['dynamic_thresholding_ratio', 'eta', 'final_sigmas_type', 'sample_max_value', 'thresholding']
    """
    return {f.name: f for f in dataclasses.fields(cls) if "help" in f.metadata}


def option_defaults(cls: type, thresholding: bool = False) -> dict:
    """``cls``'s options with their defaults; options that ``requires`` an off switch left out.

    Examples:
      >>> sv.solvers.option_defaults(sv.solvers.DDIM)
      {'final_sigmas_type': 'zero', 'thresholding': False, 'eta': 0.0}
    """
    out = {}
    for name, f in option_fields(cls).items():
        requires = f.metadata.get("requires")
        if requires is not None and not thresholding:
            continue
        out[name] = f.default
    return out


def methods_with(option: str) -> list[str]:
    """The registered methods that take ``option``.

    Examples:
      >>> sv.solvers.methods_with("solver_type")[:3]
      ['dpm_solver_pp', 'sde_dpm_solver_pp', 'unipc']
    """
    return [name for name, cls in REGISTRY.items() if option in option_fields(cls)]


def make(name: str, kind: Optional[Any] = None, **options) -> Solver:
    """The solver ``name`` with ``options``: a ValueError names an option it does not take.

    Examples:
      >>> sv.solvers.make("dpm_solver_pp", order=3).order
      3
    """
    cls = get(name, kind)
    fields = option_fields(cls)
    for option in options:
        if option not in fields:
            takers = methods_with(option)
            if takers:
                raise ValueError(f"{option} applies to the methods {takers} only; method={name!r} takes none")
            raise TypeError(f"{option!r} is not an option of any solver")
    for option, value in options.items():
        requires = fields[option].metadata.get("requires")
        if requires is not None and not options.get(requires, fields[requires].default):
            raise ValueError(f"{option} is an option of {requires}; set {requires}=True (got {option}={value!r} "
                             f"without it)")
    return cls(**options)
