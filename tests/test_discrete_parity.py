r"""Parity with diffusers' discrete VP schedulers: DDIMScheduler (eta = 0) and DDPMScheduler.

The golden (tests/golden/discrete_parity.npz, written by
tests/golden/make_discrete_parity_golden.py) holds diffusers' trajectories for an exact
Gaussian model -- data N(mu, s^2 I), so the noise, sample and v predictions are closed
forms of the scheduler's float32 ``alphas_cumprod`` -- on three beta schedules, three
prediction types and leading/trailing/linspace label grids, plus DDPM on the whole
training grid. Here sdevp_jax re-runs every case with the same labels, the same model
(:func:`model_fn`, the script's ``model_output`` operation for operation), the same
``x_T`` and the same noise:

* DDIM with eta = 0 is DPM-Solver-1 (Lu et al. 2022, sec. 4.1: DDIM of Song, Meng &
  Ermon 2021 is the first-order DPM-Solver): ``sample_ode(method="dpm_solver", order=1)``
  along the golden's labels as times, then to label 0 (DDIM's last step goes to
  ``alphas_cumprod[0]`` with ``set_alpha_to_one=False``);
* DDPM with ``variance_type="fixed_large"`` is the ancestral step with the exact rate
  :math:`\beta_i = 1 - \bar\alpha_{t'}/\bar\alpha_t` and noise :math:`\sqrt{\beta_i} z`
  (Ho et al. 2020, Algorithm 2), called by hand step by step with ``t_next``.

Both sides use the schedule of the golden's float32 ``alphas_cumprod``
(``schedules.discrete(alphas_cumprod=...)``), not ``from_diffusers``' float64 betas: the
two differ by float32 rounding in the cumulative product (tests/test_schedules.py), which
is not what this file tests. The labels of ``set_timesteps(spacing=...)`` are checked
against the golden's too.

Every case runs in float32 and in float64 (``x64``) against diffusers' float64 run of the
same steps; :func:`tolerance` derives the allowed difference from the unit roundoff, so
the float64 runs check the formulas to ~1e-12 and the float32 runs check that sdevp_jax
rounds no worse than it should.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "golden", "discrete_parity.npz"))
CASES = [json.loads(str(spec)) for spec in GOLDEN["cases"]]
N_TRAIN = 1000
DDIM = [c for c in CASES if c["scheduler"] == "DDIM"]
DDPM = [c for c in CASES if c["scheduler"] == "DDPM"]
#: the unit roundoff of each dtype
UNIT = {np.float32: 2.0**-24, np.float64: 2.0**-53}


def _id(case: dict) -> str:
    return case["name"]


def golden(case: dict, field: str) -> np.ndarray:
    return GOLDEN[f"{case['name']}/{field}"]


def model_fn(alphas_cumprod: jax.Array, prediction_type: str):
    r"""The exact prediction for N(mu, s^2 I) data at the training label, as the golden script computes it.

    With :math:`\bar\alpha` the label's ``alphas_cumprod`` (no interpolation: the labels
    are integers), :math:`a = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1 - \bar\alpha}`,
    :math:`r = (x - a\mu)/(\bar\alpha s^2 + 1 - \bar\alpha)`:
    :math:`\hat\epsilon = \sigma r`, :math:`\hat x_0 = \mu + a s^2 r`,
    :math:`\hat v = a\hat\epsilon - \sigma\hat x_0`; in the dtype of ``x``.
    """

    def fn(x: jax.Array, label: jax.Array) -> jax.Array:
        dtype = x.dtype
        index = jnp.round(jnp.broadcast_to(label, x.shape[:1])).astype(jnp.int32)
        abar = alphas_cumprod.astype(dtype)[index][:, None]
        mu = jnp.asarray(GOLDEN["mu"]).astype(dtype)[None, :]
        s = jnp.asarray(GOLDEN["s"]).astype(dtype)
        s2 = s * s
        a = jnp.sqrt(abar)
        sigma = jnp.sqrt(1.0 - abar)
        r = (x - a * mu) / (abar * s2 + (1.0 - abar))
        eps = sigma * r
        x0 = mu + a * s2 * r
        if prediction_type == "epsilon":
            return eps
        if prediction_type == "sample":
            return x0
        return a * eps - sigma * x0

    return fn


def make_state(case: dict):
    ac = GOLDEN[f"alphas_cumprod/{case['beta_schedule']}"]
    schedule = sv.schedules.discrete(alphas_cumprod=ac.astype(np.float64))
    return sv.create_state(schedule=schedule, prediction_type=case["prediction_type"]), ac


def check_times(t: np.ndarray, labels: np.ndarray) -> None:
    """Times within two ulps of :math:`(n + 1)/N_{train}` (so that no label offset can hide in :func:`tolerance`)."""
    np.testing.assert_array_less(np.abs(t - (labels + 1.0) / N_TRAIN), 2.0 * np.spacing(t))


def label_times(state, labels: np.ndarray) -> np.ndarray:
    """The continuous times of ``labels`` by ``time_from_model_time``, checked by :func:`check_times`."""
    t = np.asarray(sv.time_from_model_time(state, labels.astype(np.float64)))
    check_times(t, labels)
    return t


def _targets(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``alphas_cumprod``, and per step its values at the step's label and at its target."""
    ac = GOLDEN[f"alphas_cumprod/{case['beta_schedule']}"].astype(np.float64)
    labels = golden(case, "labels")
    final = 1.0 if case["final_label"] < 0 else ac[case["final_label"]]
    return ac, ac[labels], np.concatenate([ac[labels[1:]], [final]])


def amplification(case: dict) -> np.ndarray:
    r"""Per step, how much its rounding may be amplified: :math:`A_j = \max(1, a'/a)`, :math:`a = \sqrt{\bar\alpha}`.

    A step from label ``n`` to ``n'`` evaluated in the noise parametrization computes
    :math:`(a'/a)(x - \sigma\hat\epsilon) + \dots` (DDIM's :math:`a'\hat x_0`, DPM-Solver-1's
    :math:`(a'/a) x - \sigma'(e^h - 1)\hat\epsilon`, the ancestral :math:`(x + \beta s)/\sqrt{1 - \beta}`),
    and the difference in brackets cancels to about the data's size: the rounding of its
    operands, a few u |x|, comes out multiplied by :math:`a'/a`. That is ~1 except on the first
    steps from the top of a schedule whose last ``alphas_cumprod`` is tiny (cosine: 2.4e-9).
    """
    _, here, there = _targets(case)
    return np.maximum(1.0, np.sqrt(there / here))


def slopes(case: dict) -> np.ndarray:
    r"""Per grid point, :math:`\ell(n) = -\log(1 - \beta)`: the slope of :math:`-2\log\alpha` per label at label ``n``.

    The larger of the two training steps on either side of the knot of label ``n``
    (:math:`\beta_m = 1 - \bar\alpha_m/\bar\alpha_{m-1}`), for the labels and then the final
    target; 0 at the time 0 that DDPM's last step goes to.
    """
    ac, _, _ = _targets(case)
    ell = -np.log(np.concatenate([ac[:1], ac[1:] / ac[:-1]]))
    ell = np.maximum(ell, np.concatenate([ell[1:], ell[-1:]]))
    final = 0.0 if case["final_label"] < 0 else ell[case["final_label"]]
    return np.concatenate([ell[golden(case, "labels")], [final]])


def tolerance(case: dict, dtype, upto: int, times: np.ndarray) -> float:
    r"""How far sdevp_jax's ``x`` after step ``upto`` may be from diffusers' float64 ``x64`` (max norm).

    ``times``: the times sdevp_jax stepped through, the labels' and the final target's.

    Both sides evaluate the same closed-form steps from the same inputs; only rounding
    differs, and diffusers' float64 run has next to none. With u the unit roundoff of
    ``dtype`` and X the largest |x| so far, step ``j`` may be off by

    * :math:`16 u X A_j`: its arithmetic, a few u of X, amplified by :math:`A_j`
      (:func:`amplification`), and ``exp(log alpha)`` in sdevp_jax, a relative
      :math:`|\log\alpha| u \le 10 u` (:math:`\log\alpha \ge -9.92` on these schedules), which
      the same factor :math:`a'/a` carries;
    * :math:`4 X (\delta_j\ell_j + \delta_{j+1}\ell_{j+1})`: sdevp_jax works in continuous
      time. The float time :math:`t = \mathrm{fl}((n + 1)/N)` of label ``n`` sits
      :math:`\delta = |tN - (n + 1)| + |\mathrm{fl}(tN) - tN|` labels off its knot (the
      schedule's :math:`tN` is exact under a fused multiply-add, rounded without one; computed
      below from the times sdevp_jax used, which :func:`check_times` keeps within two ulps of
      :math:`(n + 1)/N`, so that an off-by-one label cannot hide here). That moves
      :math:`\log\alpha` by :math:`\delta\ell/2` (:func:`slopes`) and the step's rate
      :math:`\beta` by up to :math:`\delta_j\ell_j + \delta_{j+1}\ell_{j+1}`; the step moves by that
      times :math:`|r| + |x|/2 \le 3.5 X`, with :math:`r = (x - a\mu)/d` and
      :math:`|r| \le (X + 1)/s^2 \le 3X` (:math:`|\mu| \le 1`, :math:`s^2 = 0.49`,
      X >= max |x_T| = 2.84). 4 X also covers :math:`\sigma`, which moves with
      :math:`\log\alpha`. This is a relative change of :math:`a, a', \sigma, \sigma'`, not a
      rounding before a cancellation: the step's derivatives in :math:`\log a` and
      :math:`\log a'` are of the size of :math:`a'\hat x_0` and :math:`a'a\hat\epsilon/\sigma`,
      at most X, so :math:`A_j` does not multiply it.

    Errors made at one step are carried on by the later ones with a factor about the ratio
    of the marginal standard deviations, between s = 0.7 and 1, so at most 1: they add up
    over the steps. On top, 4 e with :math:`e = \max_{j \le k} |x_{32} - x_{64}|`, diffusers'
    own float32 error along this trajectory measured by the golden (scaled by u/u32 for
    float64): an independent evaluation of the same steps rounds differently, but not by more
    than a few times as much.
    """
    record = golden(case, "record")
    upto_index = int(np.searchsorted(record, upto))
    assert record[upto_index] == upto
    x32, x64 = golden(case, "x")[: upto_index + 1], golden(case, "x64")[: upto_index + 1]
    e32 = np.max(np.abs(x32.astype(np.float64) - x64))
    u = UNIT[dtype]
    scale = max(np.max(np.abs(GOLDEN["x_T"])), np.max(np.abs(x64)))
    labels = np.concatenate([golden(case, "labels"), [case["final_label"]]])
    t = np.asarray(times, dtype)
    check_times(t, labels)  # DDPM's final target: label -1, time 0
    exact = t.astype(np.float64) * N_TRAIN
    delta = np.abs(exact - (labels + 1.0)) + np.abs((t * dtype(N_TRAIN)).astype(np.float64) - exact)
    shift = delta * slopes(case)
    per_step = 16.0 * u * amplification(case) + 4.0 * (shift[:-1] + shift[1:])
    return 4.0 * e32 * (u / UNIT[np.float32]) + scale * np.sum(per_step[: upto + 1])


def assert_close(case: dict, got, step: int, dtype, times) -> None:
    record = golden(case, "record")
    want = golden(case, "x64")[int(np.searchsorted(record, step))]
    tol = tolerance(case, dtype, step, times)
    err = np.abs(np.asarray(got, dtype=np.float64) - want)
    assert np.all(err <= tol), (
        f"{case['name']}, {np.dtype(dtype).name}, after step {step}: max |sdevp - diffusers64| = "
        f"{err.max():.3g}, tolerance {tol:.3g}"
    )


# --------------------------------------------------------------------------- grids


@pytest.mark.parametrize("case", [c for c in CASES if c["num_inference_steps"] < N_TRAIN] + DDPM[-1:], ids=_id)
def test_label_grids(case):
    """``set_timesteps`` by diffusers' spacing, or with the golden labels' times, gives the golden labels."""
    state, _ = make_state(case)
    labels = golden(case, "labels")
    by_spacing = sv.set_timesteps(
        state, case["num_inference_steps"], spacing=case["timestep_spacing"], steps_offset=case["steps_offset"]
    )
    check_times(np.asarray(by_spacing.timesteps), labels)
    got = np.asarray(sv.model_time(by_spacing, by_spacing.timesteps))
    np.testing.assert_array_equal(np.round(got).astype(np.int64), labels)
    # t within two ulps of (n + 1)/N, then t * N - 1 rounded: |got - n| <= 5 u N <= 3e-4 labels in float32
    np.testing.assert_allclose(got, labels, atol=5 * 2.0**-24 * N_TRAIN)
    custom = sv.set_timesteps(state, timesteps=label_times(state, labels))
    np.testing.assert_array_equal(np.round(np.asarray(sv.model_time(custom, custom.timesteps))), labels)


# --------------------------------------------------------------------------- DDIM


@functools.partial(jax.jit, static_argnames=("steps",))
def _ddim(state, alphas_cumprod, x_t, steps):
    """DPM-Solver-1 along ``state.timesteps`` (``steps`` = its length, static), from ``x_t``."""
    fn = model_fn(alphas_cumprod, state.prediction_type)
    assert len(state.timesteps) == steps
    return sv.sample_ode(state, fn, jax.random.key(0), x_t.shape, method="dpm_solver", order=1, x_init=x_t,
                         dtype=x_t.dtype)


def run_ddim(state, ac, times, dtype):
    state = sv.set_timesteps(state, timesteps=times)
    x_t = jnp.asarray(GOLDEN["x_T"]).astype(dtype)
    return _ddim(state, jnp.asarray(ac), x_t, steps=len(times))


@pytest.mark.parametrize("case", DDIM, ids=_id)
def test_ddim_is_dpm_solver_1_float32(case):
    """All n DDIM steps (to label 0, DDIM's final alphas_cumprod with set_alpha_to_one=False), and a prefix."""
    state, ac = make_state(case)
    labels = golden(case, "labels")
    n = len(labels)
    times = label_times(state, np.concatenate([labels, [case["final_label"]]]))
    assert_close(case, run_ddim(state, ac, times, jnp.float32), n - 1, np.float32, times)
    k = 9  # after k steps: the first k + 1 grid times (10 points, as the leading10 grids: no new compilation)
    assert_close(case, run_ddim(state, ac, times[: k + 1], jnp.float32), k - 1, np.float32, times)


@pytest.mark.parametrize("case", DDIM, ids=_id)
def test_ddim_by_spacing_float32(case):
    """``set_timesteps(n, spacing=...)``'s grid steps n - 1 times: diffusers' first n - 1 steps."""
    state, ac = make_state(case)
    n = case["num_inference_steps"]
    state = sv.set_timesteps(state, n, spacing=case["timestep_spacing"], steps_offset=case["steps_offset"])
    x_t = jnp.asarray(GOLDEN["x_T"])
    times = np.concatenate([np.asarray(state.timesteps), label_times(state, np.array([case["final_label"]]))])
    assert_close(case, _ddim(state, jnp.asarray(ac), x_t, steps=n), n - 2, np.float32, times)


@pytest.mark.parametrize("case", DDIM, ids=_id)
def test_ddim_is_dpm_solver_1_float64(case, x64):
    state, ac = make_state(case)
    labels = golden(case, "labels")
    times = label_times(state, np.concatenate([labels, [case["final_label"]]]))
    assert_close(case, run_ddim(state, ac, times, jnp.float64), len(labels) - 1, np.float64, times)


# --------------------------------------------------------------------------- DDPM


@jax.jit
def _ddpm(state, alphas_cumprod, x_t, times, times_next, noise):
    """The ancestral step along ``times`` -> ``times_next`` with the given noise: (xs, x_means) after each step."""
    fn = model_fn(alphas_cumprod, state.prediction_type)
    batch = x_t.shape[:1]

    def body(x, step):
        t, t_next, z = step
        t_vec = jnp.broadcast_to(t, batch)
        out = fn(x, sv.model_time(state, t_vec))
        x, x_mean = sv.ancestral(state, out, x, t_vec, None, noise=z, t_next=jnp.broadcast_to(t_next, batch))
        return x, (x, x_mean)

    _, (xs, means) = jax.lax.scan(body, x_t, (times, times_next, noise))
    return xs, means


def run_ddpm(case: dict, dtype):
    state, ac = make_state(case)
    labels = golden(case, "labels")
    n = len(labels)
    times = label_times(state, labels)
    times_next = np.concatenate([times[1:], [0.0]])  # diffusers' last step goes to alphas_cumprod = 1
    state = sv.set_timesteps(state, timesteps=times)
    noise = GOLDEN[f"noise/{n}"]
    xs, means = _ddpm(state, jnp.asarray(ac), jnp.asarray(GOLDEN["x_T"]).astype(dtype),
                      jnp.asarray(times), jnp.asarray(times_next), jnp.asarray(noise).astype(dtype))
    xs = np.array(xs)
    if labels[-1] == 0:  # diffusers adds no noise at label 0 (its `if t > 0`): compare the mean there
        xs[-1] = np.asarray(means)[-1]
    for k in golden(case, "record"):
        assert_close(case, xs[k], int(k), dtype, np.concatenate([times, times_next[-1:]]))


# On the cosine schedule's first linspace step (label 999 -> 888, a'/a ~ 3500) 1 - beta_i ~ 1e-7:
# ancestral divides by alpha(t)/alpha(t') computed as exp(log a(t) - log a(t')) (PreparedStep.sqrt_keep),
# not sqrt(1 - beta_i), which kept no float32 digits there (0.03 off, 3x this file's bound).
@pytest.mark.parametrize("case", DDPM, ids=_id)
def test_ddpm_is_ancestral_float32(case):
    run_ddpm(case, np.float32)


@pytest.mark.parametrize("case", DDPM, ids=_id)
def test_ddpm_is_ancestral_float64(case, x64):
    run_ddpm(case, np.float64)


@pytest.mark.parametrize("case", DDPM[:4], ids=_id)
def test_ddpm_loop_with_diffusers_noise_given_is_sample(case, x64):
    """sv.sample(predictor="ancestral", noise=the golden's noise) is the step-by-step loop above (which the golden
    holds to diffusers' DDPMScheduler fed the same noise), whole: the loop takes the given draw k at step k.
    Where diffusers ends at label 0 it adds no noise there: the last mean (denoise=True) is compared then."""
    state, ac = make_state(case)
    labels = golden(case, "labels")
    times = label_times(state, labels)
    state = sv.set_timesteps(state, timesteps=times)
    noise = jnp.asarray(GOLDEN[f"noise/{len(labels)}"], jnp.float64)
    x_t = jnp.asarray(GOLDEN["x_T"], jnp.float64)
    xs, means = _ddpm(state, jnp.asarray(ac), x_t, jnp.asarray(times), jnp.asarray(np.append(times[1:], 0.0)), noise)
    last_is_zero = labels[-1] == 0
    x = sv.sample(state, model_fn(jnp.asarray(ac), state.prediction_type), None, x_t.shape, predictor="ancestral",
                  x_init=x_t, noise=noise, dtype=jnp.float64, denoise=bool(last_is_zero))
    want = means[-1] if last_is_zero else xs[-1]
    np.testing.assert_allclose(np.asarray(x), np.asarray(want), rtol=1e-12, atol=1e-12)
