r"""The reverse-SDE samplers: the predictors, the Langevin corrector, and how they combine.

Every update has the signature of :func:`~sdevp_jax.step_pred`:
``(state, model_output, x, t, key, *, noise=None, t_next=None) -> StepOutput(x, x_mean)``,
with ``model_output`` the model's output at ``(x, t)`` of ``state.prediction_type``
(converted to the noise prediction :math:`\hat\epsilon` once, on entry), ``t`` 0-d or
``(batch,)``, and the same dtype rules (computed in at least float32, returned in
``x``'s dtype): diffusers' step, callable by hand. The solver objects below run them
in the generic loop: :class:`EulerMaruyama`, :class:`ReverseDiffusion` and
:class:`Ancestral` (predictors), :class:`Langevin` (the corrector),
:class:`PredictorCorrector` (the combinator: ``corrector_steps`` corrector updates at
each grid time, then the predictor) and :class:`Projected` (a solver whose every
update is followed by a replacement of part of the sample: the inverse problems).

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
  with diffusers' ``DDPMScheduler``), or with the variance a DDPM config's
  ``variance_type`` names (:func:`ddpm_variance`).

The loop's grid for these solvers is ``state.timesteps``, with one step from each time:
the step from ``t_i`` spans ``[t_{i+1}, t_i]`` (``t_N = 0``), and each update draws its
noise from its own slot of the sample's stream (:class:`~sdevp_jax.solvers.base.Noise`).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import ArrayLike

from .. import _checks
from ..denoiser import clip_range, variance_type
from ..scheduler import PreparedStep, ScoreSdeVpSchedulerState, StepOutput, step_pred, step_pred_update
from .base import Solver, StepInfo, option, register

__all__ = ["euler_maruyama", "reverse_diffusion", "ancestral", "ddpm_variance", "langevin_correct", "STEP_RULES",
           "check_step_rule",
           "EulerMaruyama", "ReverseDiffusion", "Ancestral", "Langevin", "PredictorCorrector", "Projected"]


# The reference predictor is diffusers' step itself.
euler_maruyama = step_pred
"""The Euler-Maruyama predictor: :func:`~sdevp_jax.step_pred` itself, the same function (diffusers' ``step_pred``)."""


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

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 100)   # N > beta_max on the reference grid
      >>> out = sv.reverse_diffusion(state, jnp.zeros((4, 2)), jnp.ones((4, 2)), state.timesteps[0], jax.random.key(0))
      >>> out.prev_sample.shape
      (4, 2)
    """
    return reverse_diffusion_update(PreparedStep("reverse_diffusion", state, model_output, x, t, key, noise, t_next))


def reverse_diffusion_update(p: PreparedStep) -> StepOutput:
    """:func:`reverse_diffusion`'s arithmetic on prepared inputs."""
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

    Where the state's diffusers config clips the data prediction (``clip_sample``,
    :func:`~sdevp_jax.denoiser.clip_range`), and on a zero-terminal-SNR schedule (where at
    :math:`\alpha = 0` the form above is 0/0), the mean is DDPM's posterior mean written with the
    data prediction (Ho et al. 2020, eq. 7), :math:`\bar x = (\alpha' \beta_i \hat x_0 + \sqrt{1 - \beta_i}\,
    \sigma'^2 x)/\sigma^2` with :math:`\hat x_0` from the model's output (clipped with ``clip_sample``)
    and :math:`\alpha', \sigma'` at ``t_next`` (equal to the form above without the clip).

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 100)
      >>> out = sv.ancestral(state, jnp.zeros((4, 2)), jnp.ones((4, 2)), state.timesteps[0], jax.random.key(0))
      >>> out.prev_sample.shape
      (4, 2)
    """
    return ancestral_update(PreparedStep("ancestral", state, model_output, x, t, key, noise, t_next))


def ancestral_update(p: PreparedStep) -> StepOutput:
    """:func:`ancestral`'s arithmetic on prepared inputs."""
    beta_i = p.rate()
    bound = clip_range(p.state)
    if bound is None and not getattr(p.schedule, "zero_terminal_snr", False):
        score = -p.eps / p.sigma()
        x_mean = (p.xc + beta_i * score) / p.sqrt_keep(beta_i)
    else:  # DDPM's posterior mean in its data-prediction form, the prediction clipped (diffusers' clip_sample)
        sigma = p.sigma()
        alpha_next, sigma_next = p.schedule.alpha_sigma(p.t_next)
        x0 = p.x0() if bound is None else jnp.clip(p.x0(), -bound, bound)
        keep = p.sqrt_keep(beta_i)
        x_mean = (alpha_next * beta_i * x0 + keep * sigma_next * sigma_next * p.xc) / (sigma * sigma)
    return p.out(x_mean + jnp.sqrt(ddpm_variance(p, beta_i)) * p.z(), x_mean)


def ddpm_variance(p: PreparedStep, beta_i: jax.Array) -> jax.Array:
    r"""The ancestral step's noise variance, by the state's diffusers ``variance_type`` (DDPM's).

    With :math:`\beta_i` the step's rate and :math:`\tilde\beta_i = \sigma'^2\beta_i/\sigma^2` the
    posterior variance (Ho et al. 2020, eq. 7), floored at 1e-20 as diffusers does:
    ``"fixed_large"`` and ``"fixed_large_log"`` :math:`\beta_i` (the default of a state without a
    DDPM config, and the paper's ancestral sampling); ``"fixed_small"`` and ``"fixed_small_log"``
    :math:`\tilde\beta_i`; ``"learned"`` the model's variance half itself; ``"learned_range"``
    :math:`\exp(f\log\beta_i + (1 - f)\log\tilde\beta_i)`, :math:`f = (v + 1)/2` with ``v`` the
    model's variance half (Nichol & Dhariwal 2021, eq. 15). diffusers 0.42.1 takes the square
    root of :math:`\log\beta_i < 0` for ``"fixed_large_log"`` and returns NaN; its limit,
    :math:`\exp(\log\beta_i)`, is served here.
    """
    kind = variance_type(p.state)
    if kind in (None, "fixed_large", "fixed_large_log"):
        return beta_i
    sigma = p.sigma()
    sigma_next = p.schedule.sigma(p.t_next)
    small = jnp.maximum(beta_i * (sigma_next * sigma_next) / (sigma * sigma), 1e-20)
    if kind in ("fixed_small", "fixed_small_log"):
        return small
    if kind == "learned":
        return p.model_variance
    fraction = (p.model_variance + 1.0) / 2.0
    return jnp.exp(fraction * jnp.log(beta_i) + (1.0 - fraction) * jnp.log(small))


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

    Examples:
      >>> state = sv.set_timesteps(sv.create_state(), 100)
      >>> out = sv.langevin_correct(state, jnp.zeros((4, 2)), jnp.ones((4, 2)), state.timesteps[0], jax.random.key(0), snr=0.16)
      >>> out.prev_sample.shape
      (4, 2)
    """
    snr = _checks.positive_real("snr", snr)
    step_rule = check_step_rule(step_rule)
    p = PreparedStep("langevin_correct", state, model_output, x, t, key, noise, t_next)
    if p.x.ndim == 0:
        raise ValueError("langevin_correct needs x of shape (batch, ...): its step rules work per sample")
    return langevin_update(p, snr, step_rule)


def langevin_update(p: PreparedStep, snr, step_rule: str) -> StepOutput:
    """:func:`langevin_correct`'s arithmetic on prepared inputs (``snr`` and ``step_rule`` checked)."""
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
    """``step_rule`` if it is one of :data:`STEP_RULES`, else a ValueError listing them.

    Examples:
      >>> sv.solvers.check_step_rule("sigma")
      'sigma'
    """
    if not isinstance(step_rule, str) or step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {list(STEP_RULES)}, got {step_rule!r}")
    return step_rule




@struct.dataclass
class _Update(Solver):
    """A reverse-SDE update as a solver: its state is the last update's noise-free mean ``x_mean``."""

    kind = "predictor"
    order = 1
    nfe_formula = "N"
    coefficients = False
    noise_slots = 1
    in_work_dtype = False
    step_name = ""  # the public step function's name, as its errors name it

    def times(self, state, dtype):
        return state.timesteps  # in the grid's dtype, as diffusers' step receives t

    def num_steps(self, num_points):
        return num_points  # one from each grid time; the last one to t = 0

    def init(self, x, grid):
        return x

    def update_options(self) -> dict:
        return {}

    def step(self, model, x, x_mean, grid, k, noise):
        batch = x.shape[0]
        n = grid.num_points
        t_vec = jnp.full((batch,), grid.t[k], grid.t.dtype)
        t_next = jnp.where(k + 1 < n, grid.t[jnp.minimum(k + 1, n - 1)], jnp.zeros((), grid.t.dtype))
        t_next_vec = jnp.full((batch,), t_next, grid.t.dtype)
        z = noise.draw()
        out = model.output(x, t_vec)
        # the grid was validated where it was built: the update trusts its inputs (no per-step check)
        p = PreparedStep(self.step_name, model.state, out, x, t_vec, None, z, t_next_vec, trusted=True)
        x, x_mean = type(self).update(p, **self.update_options())
        return x, x_mean, StepInfo(1)


@register
@struct.dataclass
class EulerMaruyama(_Update):
    """Euler-Maruyama on the reverse SDE: diffusers' ``step_pred`` (:func:`euler_maruyama`)."""

    name = "euler_maruyama"
    step_name = "step_pred"
    description = "reverse-SDE Euler-Maruyama, diffusers' step_pred (dt = -1/N)"
    update = staticmethod(step_pred_update)


@register
@struct.dataclass
class ReverseDiffusion(_Update):
    """The reverse-diffusion predictor (:func:`reverse_diffusion`)."""

    name = "reverse_diffusion"
    step_name = "reverse_diffusion"
    description = "reverse-diffusion predictor on the VP discretisation (Song et al. eq. 47)"
    update = staticmethod(reverse_diffusion_update)


@register
@struct.dataclass
class Ancestral(_Update):
    """Ancestral (DDPM) sampling (:func:`ancestral`)."""

    zero_snr_start = True
    name = "ancestral"
    step_name = "ancestral"
    description = "DDPM ancestral sampling (Ho et al. 2020)"
    update = staticmethod(ancestral_update)


@register
@struct.dataclass
class Langevin(_Update):
    """The Langevin corrector (:func:`langevin_correct`) at the step's grid time; ``snr`` is a leaf."""

    snr: float = option(0.16, static=False, help="the corrector's signal-to-noise ratio r > 0 (the paper's 0.16)")
    step_rule: str = option("sigma", choices=STEP_RULES, help="the corrector's step size rule (see langevin_correct)")

    name = "langevin"
    step_name = "langevin_correct"
    kind = "corrector"
    description = "Langevin corrector with signal-to-noise step size (Song et al. Alg. 5)"
    order = 0
    nfe_formula = "N * corrector_steps"
    update = staticmethod(langevin_update)

    def __post_init__(self):
        check_step_rule(self.step_rule)

    def check(self) -> "Langevin":
        return self.replace(snr=_checks.positive_real("snr", self.snr))

    def update_options(self) -> dict:
        return {"snr": self.snr, "step_rule": self.step_rule}


@struct.dataclass
class PredictorCorrector(Solver):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3): at each grid time, ``corrector_steps``
    corrector updates, then the predictor.

    The paper's code's order (``score_sde``'s ``pc_sampler``), corrector first: at the
    top of step ``i`` the sample is at ``t_i``, where the corrector's target
    :math:`p_{t_i}` is; the predictor then moves it on. Update ``u`` of a step (``u <
    M`` the correctors, ``u = M`` the predictor) draws from the step's slots
    ``u * s`` onwards, ``s`` the corrector's slots per update.
    """

    predictor: Solver
    corrector: Solver
    corrector_steps: int = struct.field(pytree_node=False, default=1)

    kind = "predictor"
    coefficients = False
    in_work_dtype = False

    def __post_init__(self):
        _checks.positive_int("corrector_steps", self.corrector_steps)

    @property
    def name(self):
        return f"{self.predictor.name}+{self.corrector.name}"

    @property
    def order(self):
        return self.predictor.order

    @property
    def noise_slots(self):
        return self.corrector_steps * self.corrector.noise_slots + self.predictor.noise_slots

    def check(self):
        return self.replace(predictor=self.predictor.check(), corrector=self.corrector.check())

    def times(self, state, dtype):
        return self.predictor.times(state, dtype)

    def num_steps(self, num_points):
        return self.predictor.num_steps(num_points)

    def nfe(self, num_points):
        return (self.corrector_steps + 1) * self.num_steps(num_points)

    def init(self, x, grid):
        return self.predictor.init(x, grid)

    def step(self, model, x, x_mean, grid, k, noise):
        for j in range(self.corrector_steps):  # static: unrolled at trace time
            x, x_mean, _ = self.corrector.step(model, x, x_mean, grid, k, noise.shift(j * self.corrector.noise_slots))
        offset = self.corrector_steps * self.corrector.noise_slots
        x, x_mean, _ = self.predictor.step(model, x, x_mean, grid, k, noise.shift(offset))
        return x, x_mean, StepInfo(self.corrector_steps + 1)


@struct.dataclass
class Projected(Solver):
    """``inner`` with ``project(x, x_mean, t_vec, z) -> (x, x_mean)`` after each of its updates.

    The replacement method of inverse problems (Song et al. 2021, app. I):
    ``project`` draws its own standard normal ``z`` from the slot after the inner
    update's. Wrap each update of a :class:`PredictorCorrector` (:meth:`around`), so
    that the projection follows the correctors too.
    """

    inner: Solver
    project: Callable = struct.field(pytree_node=False, default=None)

    kind = "predictor"
    coefficients = False
    in_work_dtype = False

    @classmethod
    def around(cls, solver: Solver, project: Callable) -> Solver:
        """``solver`` with ``project`` after every update (inside a predictor-corrector, after each part)."""
        if isinstance(solver, PredictorCorrector):
            return solver.replace(predictor=cls(solver.predictor, project), corrector=cls(solver.corrector, project))
        return cls(solver, project)

    @property
    def name(self):
        return self.inner.name

    @property
    def order(self):
        return self.inner.order

    @property
    def noise_slots(self):
        return self.inner.noise_slots + 1

    def check(self):
        return self.replace(inner=self.inner.check())

    def times(self, state, dtype):
        return self.inner.times(state, dtype)

    def num_steps(self, num_points):
        return self.inner.num_steps(num_points)

    def nfe(self, num_points):
        return self.inner.nfe(num_points)

    def init(self, x, grid):
        return self.inner.init(x, grid)

    def step(self, model, x, x_mean, grid, k, noise):
        x, x_mean, info = self.inner.step(model, x, x_mean, grid, k, noise)
        t_vec = jnp.full((x.shape[0],), grid.t[k], grid.t.dtype)
        x, x_mean = self.project(x, x_mean, t_vec, noise.draw(self.inner.noise_slots))
        return x, x_mean, info
