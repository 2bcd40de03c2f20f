r"""Predictors, the Langevin corrector and probability-flow ODE steps: pure functions beside each other.

Every stochastic step has the signature of :func:`~sdevp_jax.step_pred`:
``(state, model_output, x, t, key, *, noise=None, t_next=None) -> StepOutput(x, x_mean)``,
with ``model_output`` the model's output at ``(x, t)`` of ``state.prediction_type``
(converted to the noise prediction :math:`\hat\epsilon` once, on entry), ``t`` 0-d or
``(batch,)``, and the same dtype rules (computed in at least float32, returned in
``x``'s dtype). The loops in :mod:`sdevp_jax.loops` call them; they can equally be
called by hand.

The discrete VP chain (Song et al., ICLR 2021, appendix; Ho et al., 2020) used by
``reverse_diffusion``, ``ancestral`` and the corrector has per-step noise rates
:math:`\beta_i`:

* on the linear schedule's ``"reference"`` grid (its default), the paper's code's
  :math:`\beta_i = \beta(t_i)/N` -- the continuous rate times the reference's step
  :math:`|\Delta t| = 1/N`, evaluated at the grid time itself (the paper's code rounds
  :math:`t_i` down to a grid of ``[0, 1]`` first; the two differ by at most
  ``sampling_eps`` in :math:`t`). These steps need :math:`\beta_i < 1`, i.e.
  ``num_inference_steps > beta_max``;
* on every other grid, the exact rate of the step's interval,
  :math:`\beta_i = 1 - \alpha(t_i)^2/\alpha(t_{i+1})^2` with :math:`t_N = 0`, which lies in
  (0, 1) on any grid of any schedule, and is the training :math:`\beta_n` of a
  discrete model on its training grid -- so ``ancestral`` there is DDPM's step with
  its ``"fixed_large"`` variance :math:`\beta_i` (Ho et al. 2020, sec. 3.2; tests compare
  with diffusers' ``DDPMScheduler``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _checks
from .scheduler import (
    PreparedStep,
    ScoreSdeVpSchedulerState,
    StepOutput,
    broadcast_t,
    eps_from_prediction,
    step_pred,
)

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


# The reference predictor is diffusers' step itself.
euler_maruyama = step_pred


def reverse_diffusion(
    state: ScoreSdeVpSchedulerState,
    model_output: ArrayLike,
    x: ArrayLike,
    t: ArrayLike,
    key: Optional[jax.Array],
    *,
    noise: Optional[ArrayLike] = None,
    t_next: Optional[ArrayLike] = None,
) -> StepOutput:
    r"""The reverse-diffusion predictor on the VP discretisation (Song et al. 2021, eq. 47).

    .. math::

        \bar x = (2 - \sqrt{1 - \beta_i})\,x + \beta_i\, s, \qquad
        x' = \bar x + \sqrt{\beta_i}\, z, \qquad s = -\hat\epsilon/\sigma(t).
    """
    p = PreparedStep("reverse_diffusion", state, model_output, x, t, key, noise, t_next)
    beta_i = p.rate()
    score = -p.eps / p.sigma()
    x_mean = (2.0 - p.sqrt_keep(beta_i)) * p.xc + beta_i * score
    return p.out(x_mean + jnp.sqrt(beta_i) * p.z(), x_mean)


def ancestral(
    state: ScoreSdeVpSchedulerState,
    model_output: ArrayLike,
    x: ArrayLike,
    t: ArrayLike,
    key: Optional[jax.Array],
    *,
    noise: Optional[ArrayLike] = None,
    t_next: Optional[ArrayLike] = None,
) -> StepOutput:
    r"""The ancestral (DDPM) step for the VP SDE (Ho et al. 2020; Song et al. 2021, eq. 46).

    .. math::

        \bar x = \frac{x + \beta_i\, s}{\sqrt{1 - \beta_i}}, \qquad
        x' = \bar x + \sqrt{\beta_i}\, z, \qquad s = -\hat\epsilon/\sigma(t).
    """
    p = PreparedStep("ancestral", state, model_output, x, t, key, noise, t_next)
    beta_i = p.rate()
    score = -p.eps / p.sigma()
    x_mean = (p.xc + beta_i * score) / p.sqrt_keep(beta_i)
    return p.out(x_mean + jnp.sqrt(beta_i) * p.z(), x_mean)


STEP_RULES = ("sigma", "snr_batch", "snr_sample")


def langevin_correct(
    state: ScoreSdeVpSchedulerState,
    model_output: ArrayLike,
    x: ArrayLike,
    t: ArrayLike,
    key: Optional[jax.Array],
    *,
    snr: float = 0.16,
    step_rule: str = "sigma",
    noise: Optional[ArrayLike] = None,
    t_next: Optional[ArrayLike] = None,
) -> StepOutput:
    r"""One Langevin corrector step at time ``t`` (Song et al. 2021, Algorithm 5).

    .. math::

        \bar x = x + \epsilon_i\, s, \qquad x' = \bar x + \sqrt{2\epsilon_i}\, z,

    with :math:`s = -\hat\epsilon/\sigma(t)` the score at ``x`` and ``r = snr``. The
    step size :math:`\epsilon_i` follows ``step_rule``:

    * ``"sigma"`` (default): :math:`\epsilon_i = 2\alpha_i\,(r\,\sigma(t))^2`, a function of
      ``t`` alone. The paper's rule below sets :math:`\epsilon_i = 2\alpha_i r^2
      \lVert z\rVert^2/\lVert s\rVert^2`; with :math:`\lVert z\rVert^2 \approx D` and
      :math:`\mathbb E\lVert\nabla\log p_t\rVert^2 \le D/\sigma(t)^2` (the Fisher
      information of :math:`\alpha X_0 + \sigma Z` is at most that of :math:`\sigma Z`),
      this is the paper's step at the largest score norm the data allow: it is never
      larger than the paper's on average, it does not depend on the sample
      (each sample's update depends on that sample alone: batch invariance), and
      it does not depend on the noise draw: each sample runs an ordinary
      fixed-step Langevin chain, whose stationary law tends to :math:`p_t` as the
      step shrinks, in any dimension.
    * ``"snr_batch"``: the paper's rule with the batch means of :math:`\lVert z\rVert`
      and :math:`\lVert s\rVert`, as the reference code computes it
      (``score_sde``'s ``LangevinCorrector``). Each sample then depends on the rest
      of the batch, and where coordinates have very different scales the step,
      set by the average score norm, is too large for the narrow ones (the default
      mixture in 64-D: within-mode variance in its narrow plane about 20 % too
      large, ``benchmarks/results/corrector_rules.md``).
    * ``"snr_sample"``: the paper's rule with each sample's own norms. Batch
      invariant, but biased in low dimension: the step is a function of the
      sample's own noise :math:`z` and score, so the chain no longer leaves
      :math:`p_t` invariant; on a 3-D mixture it misses a mode weight by 0.05 to
      0.08 and inflates the within-mode variance 1.6 to 3 times
      (``benchmarks/results/corrector_rules.md``). Kept for comparison; it
      approaches the others as the dimension grows (:math:`\lVert z\rVert^2/D \to 1`).

    Which :math:`\alpha_i`: the paper's Algorithm 5 writes the cumulative
    :math:`\bar\alpha_i`, its reference code the per-step :math:`\alpha_i = 1 - \beta_i`.
    We follow the code. With it the paper's rule makes the update's signal-to-noise
    ratio :math:`\lVert\epsilon s\rVert / \lVert\sqrt{2\epsilon} z\rVert = r\sqrt{\alpha_i}`
    equal ``snr``, a ratio invariant under the rescaling
    :math:`x \mapsto x/\sqrt{\bar\alpha}` that maps VP to VE. With :math:`\bar\alpha_i`
    (down to :math:`e^{-10}` at ``t = 1``) the corrector would all but switch off at
    high noise, and the ``snr`` values tuned in the paper (0.16 for VP), which
    were run with the code, would not carry over.

    Args:
      state: a state after :func:`~sdevp_jax.set_timesteps`.
      model_output: :math:`\hat\epsilon(x, t)`, shape of ``x``.
      x: shape ``(batch, ...)``.
      t: 0-d or ``(batch,)``.
      key: PRNG key for ``z`` (or ``None`` with ``noise``).
      snr: ``r`` > 0.
      step_rule: one of ``"sigma"``, ``"snr_batch"``, ``"snr_sample"``.
      noise: optional ``z``.
    """
    snr = _checks.positive_real("snr", snr)
    step_rule = check_step_rule(step_rule)
    p = PreparedStep("langevin_correct", state, model_output, x, t, key, noise, t_next)
    if p.x.ndim == 0:
        raise ValueError("langevin_correct needs x of shape (batch, ...): its step rules work per sample")
    alpha_i = 1.0 - p.rate()
    sigma = p.sigma()
    score = -p.eps / sigma
    z = p.z()
    if step_rule == "sigma":
        step = 2.0 * alpha_i * jnp.square(snr * sigma)
    else:
        axes = tuple(range(1, p.x.ndim))
        keep = (-1,) + (1,) * (p.x.ndim - 1)
        score_norm = jnp.sqrt(jnp.sum(jnp.square(score), axis=axes)).reshape(keep)
        noise_norm = jnp.sqrt(jnp.sum(jnp.square(z), axis=axes)).reshape(keep)
        if step_rule == "snr_batch":
            score_norm, noise_norm = jnp.mean(score_norm), jnp.mean(noise_norm)
        safe = jnp.where(score_norm > 0, score_norm, 1.0)
        step = jnp.where(score_norm > 0, 2.0 * alpha_i * jnp.square(snr * noise_norm / safe), 0.0)
    x_mean = p.xc + step * score
    return p.out(x_mean + jnp.sqrt(2.0 * step) * z, x_mean)


def check_step_rule(step_rule: str) -> str:
    """``step_rule`` if it is one of :data:`STEP_RULES`, else a ValueError listing them."""
    if not isinstance(step_rule, str) or step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {list(STEP_RULES)}, got {step_rule!r}")
    return step_rule


def probability_flow_drift(
    state: ScoreSdeVpSchedulerState, model_output: jax.Array, x: jax.Array, t: jax.Array
) -> jax.Array:
    r"""The probability-flow ODE's velocity :math:`dx/dt = -\tfrac12\beta(t)\,(x - \hat\epsilon/\sigma(t))`.

    (Song et al. 2021, eq. 13, with the score :math:`-\hat\epsilon/\sigma`.) ``model_output``
    is of ``state.prediction_type`` (converted to :math:`\hat\epsilon` here); ``t`` is
    0-d or ``(batch,)``; computed in ``compute_dtype(x.dtype)``.
    """
    dtype = _checks.compute_dtype(x.dtype)
    t = broadcast_t(jnp.asarray(t).astype(dtype), x)
    schedule = state.schedule.cast(dtype)
    x = x.astype(dtype)
    eps = model_output.astype(dtype)
    if state.prediction_type != "epsilon":
        eps = eps_from_prediction(state.prediction_type, eps, x, *schedule.alpha_sigma(t))
    return drift_from_eps(schedule, eps, x, t)


def drift_from_eps(schedule, eps: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    r""":math:`-\tfrac12\beta(t)(x - \hat\epsilon/\sigma(t))` for a cast ``schedule``, ``t`` broadcastable to ``x``."""
    return -0.5 * schedule.beta(t) * (x - eps / schedule.sigma(t))


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
    m.name: m
    for m in [
        MethodInfo("euler_maruyama", "predictor", 1, "N",
                   "reverse-SDE Euler-Maruyama, diffusers' step_pred (dt = -1/N)"),
        MethodInfo("reverse_diffusion", "predictor", 1, "N",
                   "reverse-diffusion predictor on the VP discretisation (Song et al. eq. 47)"),
        MethodInfo("ancestral", "predictor", 1, "N", "DDPM ancestral sampling (Ho et al. 2020)"),
        MethodInfo("langevin", "corrector", 0, "N * corrector_steps",
                   "Langevin corrector with signal-to-noise step size (Song et al. Alg. 5)"),
        MethodInfo("euler", "ode", 1, "N - 1", "probability-flow ODE, Euler on the timestep grid"),
        MethodInfo("heun", "ode", 2, "2 (N - 1)", "probability-flow ODE, Heun (RK2) on the timestep grid"),
        MethodInfo("dpm_solver", "ode", 3, "N - 1",
                   "probability-flow ODE, multistep DPM-Solver (order 1-3, default 3) in eps form along the state's "
                   "grid, its own log-SNR grid on the reference grid (Lu et al. 2022)"),
        MethodInfo("adaptive", "ode", 5, "1 + 6 * steps",
                   "probability-flow ODE, diffrax Tsit5 with PID step-size control, per sample"),
        MethodInfo("ddim", "ode", 1, "N - 1 (+ 1 with final_sigmas_type='zero')",
                   "DDIM (Song, Meng & Ermon 2021); eta > 0 makes it stochastic, per-sample keyed noise"),
        MethodInfo("dpm_solver_pp", "ode", 2, "N - 1 (+ 1 with final_sigmas_type='zero')",
                   "multistep DPM-Solver++ in data prediction, 2M (midpoint/heun) or 3M (Lu et al. 2022b)"),
        MethodInfo("unipc", "ode", 3, "N - 1 (+ 1 with final_sigmas_type='zero')",
                   "UniPC: UniP predictor + UniC corrector, bh1/bh2, orders 1-3 (Zhao et al. 2023)"),
        MethodInfo("sde_dpm_solver_pp", "sde_solver", 2, "N - 1 (+ 1 with final_sigmas_type='zero')",
                   "SDE-DPM-Solver++(2M), stochastic, per-sample keyed noise (Lu et al. 2022b)"),
    ]
}

PREDICTORS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral}
CORRECTORS = {"langevin": langevin_correct}


def list_methods(kind: Optional[str] = None) -> list[str]:
    """The registered method names, optionally of one ``kind`` ("predictor", "corrector", "ode")."""
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
