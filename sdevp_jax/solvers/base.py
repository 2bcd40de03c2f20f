r"""The solver protocol: every sampler is a small immutable object with ``init`` and ``step``.

In the manner of diffrax's ``AbstractSolver`` and blackjax's kernels, a solver holds
its options as fields (static ones as ``pytree_node=False``, numbers a user may trace
-- DDIM's :math:`\eta`, the corrector's ``snr`` -- as leaves) and two pure functions:

* ``init(x, grid) -> state``: the solver's own memory before the first step (a
  multistep method's past predictions, an SDE predictor's noise-free mean);
* ``step(model, x, state, grid, k, noise) -> (x, state, info)``: one step over the
  grid's interval ``k``, from ``grid.t[k]`` to ``grid.t[k + 1]`` (the SDE updates: to the
  next grid time, 0 after the last), calling the model
  only through ``model`` (a :class:`~sdevp_jax.denoiser.Denoiser`), drawing only from
  ``noise`` (the sample's fixed slots of this step), and returning a :class:`StepInfo`.

and the attributes a caller plans with: ``order``, ``stochastic``, ``invertible``,
``noise_slots`` (the noise draws per step) and ``nfe(num_points)``, its exact number
of network calls on a grid of ``num_points`` times. One generic loop
(:func:`sdevp_jax.loops.integrate`) runs any of them; :func:`register` adds a solver
to the registry every edge (``sv.METHODS``, jobs, the CLI) is built from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Solver", "Grid", "Noise", "StepInfo", "StepCoeffs", "register", "REGISTRY", "option"]


class StepCoeffs(NamedTuple):
    """The schedule at the ends of one step, ``s`` (from) and ``t`` (to), in the work dtype (0-d each)."""

    lam_s: jax.Array
    lam_t: jax.Array
    alpha_s: jax.Array
    sigma_s: jax.Array
    alpha_t: jax.Array
    sigma_t: jax.Array
    log_alpha_s: jax.Array
    log_alpha_t: jax.Array


class Grid(NamedTuple):
    r"""The times a loop steps through and the schedule at each, computed once, before the loop.

    ``t`` (shape ``(n,)``) runs from the first time to the last; a solver steps over its
    ``n - 1`` intervals. ``lam`` (:math:`\lambda = \log\alpha/\sigma`), ``log_alpha``,
    ``alpha`` and ``sigma`` are the schedule at ``t`` in the work dtype, or ``None`` for
    a solver that does not use them (``Solver.coefficients = False``).
    """

    t: jax.Array
    lam: Optional[jax.Array] = None
    log_alpha: Optional[jax.Array] = None
    alpha: Optional[jax.Array] = None
    sigma: Optional[jax.Array] = None

    @classmethod
    def build(cls, schedule, t: jax.Array, coefficients: bool = True) -> "Grid":
        """The grid ``t`` with ``schedule``'s coefficients (``schedule`` already cast to the work dtype)."""
        if not coefficients:
            return cls(t)
        log_alpha = schedule.log_alpha(t)
        return cls(t, schedule.log_snr(t), log_alpha, jnp.exp(log_alpha), schedule.sigma(t))

    @property
    def num_points(self) -> int:
        return self.t.shape[0]

    def coeffs(self, s, t) -> StepCoeffs:
        """The coefficients of the step from point ``s`` to point ``t`` (indices, possibly traced)."""
        return StepCoeffs(self.lam[s], self.lam[t], self.alpha[s], self.sigma[s], self.alpha[t], self.sigma[t],
                          self.log_alpha[s], self.log_alpha[t])


class Noise(NamedTuple):
    """A step's standard normal draws: slot ``base + j`` of each sample's stream, ``j < noise_slots``.

    Sample ``b``'s draw is ``normal(fold_in(keys[b], slot), event)`` (EDM's per-sample
    streams: it depends on the sample's key alone); ``keys`` is ``None`` for a loop that
    draws nothing (inversion). Given noise replaces the keyed draws (``sample(..., noise=)``):
    ``external`` an array of shape ``(draws, batch, *event)``, draw ``slot - 1`` for slot
    ``slot`` (slot 0 is the prior's), or a function ``(draw, sample_index) -> event array``
    called for each sample's ``sample_index`` (``index_offset + b``).
    """

    keys: Optional[jax.Array]
    base: jax.Array
    event: tuple
    dtype: Any
    external: Any = None
    sample_index: Optional[jax.Array] = None

    def draw(self, j: int = 0) -> jax.Array:
        slot = self.base + j
        if self.external is None:
            def one(key):
                return jax.random.normal(jax.random.fold_in(key, slot), self.event, self.dtype)

            return jax.vmap(one)(self.keys)
        if callable(self.external):
            return jax.vmap(lambda i: jnp.asarray(self.external(slot - 1, i)))(self.sample_index).astype(self.dtype)
        return jax.lax.dynamic_index_in_dim(self.external, slot - 1, 0, keepdims=False).astype(self.dtype)

    def shift(self, offset: int) -> "Noise":
        """The same stream with slots from ``base + offset`` (a part of a combined step)."""
        return self._replace(base=self.base + offset)


class StepInfo(NamedTuple):
    """What one step reports: ``nfe``, its batched network calls (an int)."""

    nfe: Any


def option(default, *, static: bool = True, help: str = "", choices: Optional[tuple] = None, flag: Optional[str] = None,
           requires: Optional[str] = None):
    """A solver option: a dataclass field with what the edges need to expose it.

    ``static`` options are Python values (``pytree_node=False``: they change the
    program), the others leaves (numbers that may be traced). ``help`` and
    ``choices`` become the CLI flag's; ``requires`` names a boolean option this one
    only applies with (thresholding's ratio and bound).

    Examples:
      >>> import dataclasses
      >>> @dataclasses.dataclass(frozen=True)
      ... class Options:
      ...     order: int = sv.solvers.option(2, help="the solver's order", choices=(1, 2, 3))
      ...
      >>> dataclasses.fields(Options)[0].metadata["choices"]
      (1, 2, 3)
    """
    metadata = {"pytree_node": not static, "help": help, "choices": choices, "flag": flag, "requires": requires}
    return dataclasses.field(default=default, metadata=metadata)


class Solver:
    """The base of every solver (see the module docstring).

    Class attributes a subclass sets: ``name`` (the registered name), ``kind``
    (``"predictor"``, ``"corrector"``, ``"ode"`` or ``"sde_solver"``), ``description``
    (one line), ``nfe_formula`` (the network calls as a formula of ``N``, for
    ``sv.METHODS``), ``coefficients`` (whether the loop computes the grid's
    :math:`\\lambda, \\alpha, \\sigma`), ``noise_slots`` (noise draws per step) and
    ``invertible`` (whether :func:`~sdevp_jax.invert_ode` may run it).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "ode"
    description: ClassVar[str] = ""
    nfe_formula: ClassVar[str] = "N - 1"
    coefficients: ClassVar[bool] = True
    noise_slots: ClassVar[int] = 0
    invertible: ClassVar[bool] = False
    #: the diffusers scheduler this solver reproduces (held to it by a golden: tests/test_solver_parity.py's common
    #: grid of cases for ddim, dpm_solver_pp, sde_dpm_solver_pp and unipc, a file of its own for the others)
    diffusers_scheduler: ClassVar[Optional[str]] = None
    #: whether the loop carries x in the work dtype (the SDE updates take and return the samples' dtype)
    in_work_dtype: ClassVar[bool] = True
    #: whether a run may start (or an inversion end) at alpha = 0, a zero-terminal-SNR schedule's t = 1: true for
    #: the steps written with the data prediction and sigma_t/sigma_s alone (no beta(t), no 1/alpha), whose limit
    #: there is finite (see :func:`sdevp_jax.loops.check_zero_snr_start`)
    zero_snr_start: ClassVar[bool] = False
    #: whether the step takes its data prediction and its noise from the model separately, so that a renoising
    #: guided model (CFG++: guided data, unconditional noise) changes only the renoising direction
    renoise_ready: ClassVar[bool] = False
    #: whether every network call of a run is at a grid point of ``state.timesteps`` with the point's own sample,
    #: once per point (the multistep grid solvers): then a per-point model time (``set_timesteps(...,
    #: model_times=...)``) has one meaning, the time the model is evaluated at for that point's call. The
    #: solvers that call the model between grid points (Heun's and the single-step methods' intermediate
    #: points, the adaptive solver, the SDE steps) or twice at a point refuse a state with model times
    model_at_grid_points: ClassVar[bool] = False

    #: the order of accuracy (ODE solvers) or weak order (SDE predictors): a field or a property of each solver
    order: ClassVar[int] = 0

    @classmethod
    def default_order(cls) -> int:
        """The order of accuracy of the solver with its default options (``sv.METHODS``)."""
        return cls.order

    @property
    def stochastic(self) -> bool:
        return self.noise_slots > 0

    def times(self, state, dtype) -> jax.Array:
        """The times this solver steps through on ``state``'s grid, from the first to the last."""
        return state.timesteps.astype(dtype)

    def num_steps(self, num_points: int) -> int:
        """The steps of a run over ``num_points`` grid times: one per interval."""
        return num_points - 1

    def nfe(self, num_points: int) -> int:
        """The batched network calls of a run over ``num_points`` grid times."""
        return self.num_steps(num_points)

    def init(self, x: jax.Array, grid: Grid) -> Any:
        return ()

    def step(self, model, x, state, grid: Grid, k, noise: Noise):  # pragma: no cover - every solver overrides it
        raise NotImplementedError

    def finish(self, model, x, state, grid: Grid):
        """After the last step: ``(x, state, info)``; by default nothing more."""
        return x, state, StepInfo(0)

    def check(self) -> "Solver":
        """The solver with its leaf options checked where they are concrete (the static ones are checked
        on construction); the sampling functions call it."""
        return self

    def options(self) -> dict:
        """The solver's options by name (its dataclass fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


#: The registered solvers by name, in registration order.
REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Add a solver class to :data:`REGISTRY` under ``cls.name`` (a class decorator).

    Examples:
      >>> @sv.solvers.register   # doctest: +SKIP
      ... class MySolver(sv.solvers.Solver):
      ...     name = "my_solver"
      ...     ...
      ...
    """
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"solver name {cls.name!r} is empty or already registered")
    REGISTRY[cls.name] = cls
    return cls


def positive_int_option(name: str, value, largest: int, method: str) -> int:
    """``value`` an int in ``[1, largest]``, or an error naming ``name``, the range and the method."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not 1 <= value <= largest:
        raise ValueError(f"{name} must be in [1, {largest}] for method={method!r}, got {value}")
    return int(value)


def choice_option(name: str, value, allowed) -> Any:
    """``value`` one of ``allowed``, or a ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def bool_option(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value
