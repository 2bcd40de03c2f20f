"""The guidance methods beyond CFG: APG, CFG-Zero*, autoguidance, CFG++ and scale schedules.

* Parity with diffusers 0.42.1's guiders (tests/golden/guiders.npz, by tests/golden/make_guiders_golden.py):
  the same predictions through five steps, float64, 1e-12 relative (both sides do the same few operations).
* The loop threads a stateful guide's memory (APG's momentum, CFG-Zero*'s call count) per sample, in the
  solver's call order: a compiled run equals a Python loop of the same steps, and a sample's result does
  not depend on the rest of the batch.
* The limits the papers name: APG with eta = 1 and no threshold or momentum is CFG; CFG-Zero* with s* = 1
  is CFG; CFG++ at lambda = 0 is the unconditional model, and on DDIM CFG++ at lambda is CFG at the step's
  scale lambda / (1 - e^-h) (derived in sv.cfg_pp's docstring); DPM-Solver++ of order 1 with CFG++ is DDIM's.
* Each method's effect against plain CFG at equal scale on the exact class-conditional mixture (slow).
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "guiders.npz")))
STEPS = GOLDEN["pred_cond"].shape[0]
CM = sv.mixtures.default_class_mixture()


def cases(guider):
    return sorted(k.split("/")[1] for k in GOLDEN if k.startswith(guider + "/") and k.endswith("/config"))


def table_model():
    """A model_fn that returns the golden's conditional predictions for class rows and the unconditional ones for
    null rows, at step ``t`` (the time input is the step index): the guiders' inputs, through the combinators."""
    cond_t, uncond_t = jnp.asarray(GOLDEN["pred_cond"]), jnp.asarray(GOLDEN["pred_uncond"])

    def fn(x, t, c):
        k = t.astype(jnp.int32)
        sample = jnp.arange(x.shape[0]) // 2  # rows come as (sample i, its null row) pairs
        null = (c == sv.NULL_CLASS).reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(null, uncond_t[k, sample], cond_t[k, sample])

    return fn


def run_steps(guided, memory=()):
    """The combinator's predictions for the golden's steps, threading its memory as a loop does."""
    x = jnp.zeros(GOLDEN["pred_cond"].shape[1:], jnp.float64)
    cond = jnp.zeros((x.shape[0],), jnp.int32)
    memory = guided.init(x) if guided.stateful else ()
    out = []
    for k in range(STEPS):
        y, _, memory = guided.apply(memory, x, jnp.full((x.shape[0],), float(k)), cond)
        out.append(np.asarray(y))
    return np.stack(out)


@pytest.mark.parametrize("case", cases("AdaptiveProjectedGuidance"))
def test_apg_matches_diffusers_adaptive_projected_guidance(case, x64):
    """diffusers' default formulation is ours with formulation='diffusers'; its original formulation at scale
    w - 1 is the paper's formula at w. Taken on the model's output (space='output'), as the guider sees it."""
    config = json.loads(str(GOLDEN[f"AdaptiveProjectedGuidance/{case}/config"]))
    original = config.get("use_original_formulation", False)
    scale = config["guidance_scale"] + (1.0 if original else 0.0)
    state = sv.create_state()
    guided = sv.apg(table_model(), scale, sv.NULL_CLASS, state=state, eta=config["eta"],
                    norm_threshold=config["adaptive_projected_guidance_rescale"],
                    momentum=config.get("adaptive_projected_guidance_momentum") or 0.0,
                    formulation="paper" if original else "diffusers", space="output")
    ref = GOLDEN[f"AdaptiveProjectedGuidance/{case}/pred"]
    np.testing.assert_allclose(run_steps(guided), ref, rtol=1e-12, atol=1e-12 * np.max(np.abs(ref)))


def test_apg_at_eta_1_without_threshold_or_momentum_is_cfg(x64):
    """Both formulations: y_u + w (y_c - y_u) when the update is the whole difference."""
    c, u = jnp.asarray(GOLDEN["pred_cond"][0]), jnp.asarray(GOLDEN["pred_uncond"][0])
    for formulation in sv.guidance.APG_FORMULATIONS:
        y, _ = sv.apg_combine(c, u, 3.5, eta=1.0, formulation=formulation)
        np.testing.assert_allclose(np.asarray(y), np.asarray(u + 3.5 * (c - u)), rtol=1e-13, atol=1e-13)
    # eta = 0: the update is orthogonal to y_c, per sample
    y, _ = sv.apg_combine(c, u, 3.5, eta=0.0)
    inner = np.sum(np.asarray((y - c) * c).reshape(c.shape[0], -1), axis=1)
    assert np.max(np.abs(inner)) < 1e-12 * float(jnp.sum(c * c))


@pytest.mark.parametrize("case", cases("ClassifierFreeZeroStarGuidance"))
def test_cfg_zero_star_matches_diffusers(case, x64):
    config = json.loads(str(GOLDEN[f"ClassifierFreeZeroStarGuidance/{case}/config"]))
    guided = sv.cfg_zero_star(table_model(), config["guidance_scale"], sv.NULL_CLASS,
                              zero_init_steps=config["zero_init_steps"])
    assert guided.stateful == (config["zero_init_steps"] > 0)
    ref = GOLDEN[f"ClassifierFreeZeroStarGuidance/{case}/pred"]
    # diffusers takes s* in float32 (cfg_zero_star_scale casts to .float()), here in float64: s* differs by its
    # float32 rounding, a few units of 2^-24 relative (two sums of 32 products, then a quotient: within 8 u32),
    # which moves the output by (w - 1) |delta s*| |u| per entry
    u = GOLDEN["pred_uncond"]
    s_star = np.sum(GOLDEN["pred_cond"] * u, axis=(2, 3, 4), keepdims=True) / np.sum(u * u, axis=(2, 3, 4),
                                                                                      keepdims=True)
    bound = 8 * 2.0**-24 * abs(config["guidance_scale"] - 1.0) * np.abs(s_star) * np.abs(u) + 1e-12
    got = run_steps(guided)
    assert np.all(np.abs(got - ref) <= bound), np.max(np.abs(got - ref) / bound)
    assert np.all(ref[: config["zero_init_steps"]] == 0) and np.all(got[: config["zero_init_steps"]] == 0)


def test_cfg_zero_star_with_its_scale_at_1_is_cfg(x64):
    """s* = <c, u> / (|u|^2 + 1e-8) is 1 where c = u + something orthogonal to u: then CFG-Zero* is CFG."""
    u = jnp.asarray(GOLDEN["pred_uncond"][0])
    d = jnp.asarray(GOLDEN["pred_cond"][0])
    d = d - sv.guidance._per_sample_sum(d * u) / sv.guidance._per_sample_sum(u * u) * u  # orthogonal to u
    c = u + d
    s = sv.cfg_zero_star_scale(c, u)
    np.testing.assert_allclose(np.asarray(s).reshape(-1), 1.0, rtol=1e-7)  # 1e-8 / |u|^2 off 1, |u|^2 ~ 50
    model = lambda x, t, cond: jnp.where((cond == sv.NULL_CLASS).reshape(-1, 1, 1, 1), jnp.repeat(u, 2, 0),
                                         jnp.repeat(c, 2, 0))
    x, t, cond = jnp.zeros(u.shape), jnp.full((u.shape[0],), 0.5), jnp.zeros((u.shape[0],), jnp.int32)
    np.testing.assert_allclose(np.asarray(sv.cfg_zero_star(model, 3.0, sv.NULL_CLASS)(x, t, cond)),
                               np.asarray(sv.cfg(model, 3.0, sv.NULL_CLASS)(x, t, cond)), rtol=1e-7, atol=1e-7)


def test_autoguidance_matches_diffusers(x64):
    config = json.loads(str(GOLDEN["AutoGuidance/scale_2/config"]))
    c, u = jnp.asarray(GOLDEN["pred_cond"]), jnp.asarray(GOLDEN["pred_uncond"])
    guided = sv.autoguidance(lambda x, t: c[t.astype(jnp.int32)[0]], lambda x, t: u[t.astype(jnp.int32)[0]],
                             config["guidance_scale"])
    x = jnp.zeros(c.shape[1:])
    out = np.stack([np.asarray(guided(x, jnp.full((x.shape[0],), float(k)))) for k in range(STEPS)])
    ref = GOLDEN["AutoGuidance/scale_2/pred"]
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12 * np.max(np.abs(ref)))


# ------------------------------------------------------------------------ the loop threads the memory

def _ddim_by_hand(state, guided, x):
    """DDIM (eta = 0, to sigma = 0 at the end) as a Python loop over the grid, the guided model's memory
    threaded call by call: what sample_ode must compute."""
    schedule = state.schedule.cast(jnp.float64)
    t = state.timesteps.astype(jnp.float64)
    memory = guided.init(x)
    cond = jnp.full((x.shape[0],), 1, jnp.int32)
    for k in range(t.shape[0]):
        a, s = schedule.alpha_sigma(t[k])
        eps, _, memory = guided.apply(memory, x, jnp.full((x.shape[0],), t[k]), cond)
        x0 = (x - s * eps) / a
        if k + 1 == t.shape[0]:
            return x0
        a1, s1 = schedule.alpha_sigma(t[k + 1])
        x = a1 * x0 + s1 * eps


@pytest.mark.parametrize("make", [
    lambda m, st: sv.apg(m, 3.0, sv.NULL_CLASS, state=st, eta=0.0, norm_threshold=2.0, momentum=-0.5),
    lambda m, st: sv.cfg_zero_star(m, 3.0, sv.NULL_CLASS, zero_init_steps=2),
], ids=["apg_momentum", "cfg_zero_star_zero_init"])
def test_the_loop_threads_a_stateful_guide_call_by_call(make, x64):
    state = sv.set_timesteps(sv.create_state(), 6)
    guided = make(sv.mixtures.make_class_model(state, CM), state)
    assert guided.stateful
    x_t = jax.random.normal(jax.random.key(3), (5, 2), jnp.float64)
    got = sv.sample_ode(state, guided, jax.random.key(0), x_t.shape, method="ddim", x_init=x_t,
                        cond=jnp.full((5,), 1, jnp.int32), dtype=jnp.float64)
    want = _ddim_by_hand(state, guided, x_t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
    # one sample's memory is its own: the first two samples alone give the same rows
    part = sv.sample_ode(state, guided, jax.random.key(0), (2, 2), method="ddim", x_init=x_t[:2],
                         cond=jnp.full((2,), 1, jnp.int32), dtype=jnp.float64)
    np.testing.assert_allclose(np.asarray(part), np.asarray(got[:2]), rtol=1e-13, atol=1e-13)
    # the memory matters: without it (momentum 0 / no zero-init) the run differs
    plain = sv.sample_ode(state, sv.cfg(sv.mixtures.make_class_model(state, CM), 3.0, sv.NULL_CLASS),
                          jax.random.key(0), x_t.shape, method="ddim", x_init=x_t, cond=jnp.full((5,), 1, jnp.int32),
                          dtype=jnp.float64)
    assert not np.allclose(np.asarray(plain), np.asarray(got), atol=1e-3)


# ------------------------------------------------------------------------------------------------ CFG++

def test_cfg_pp_on_ddim_is_cfg_at_the_steps_scale(x64):
    """DDIM's CFG++ step at lambda equals its CFG step at w_k = lambda / (1 - e^{-h_k}) (h_k the step in
    log-SNR); the last data prediction (the step to sigma = 0, h = inf) at lambda itself."""
    state = sv.set_timesteps(sv.create_state(), 8)
    model = sv.mixtures.make_class_model(state, CM)
    lam = np.asarray(state.schedule.log_snr(state.timesteps.astype(jnp.float64)))
    t_grid = np.asarray(state.timesteps, np.float64)
    w_grid = np.append(0.6 / -np.expm1(-(lam[1:] - lam[:-1])), 0.6)

    def step_scale(t):  # the scale at grid time t
        k = jnp.argmin(jnp.abs(jnp.asarray(t_grid)[None, :] - t[:, None]), axis=1)
        return jnp.asarray(w_grid)[k]

    x_t = jax.random.normal(jax.random.key(1), (6, 2), jnp.float64)
    kw = dict(method="ddim", x_init=x_t, cond=jnp.full((6,), 2, jnp.int32), dtype=jnp.float64)
    pp = sv.sample_ode(state, sv.cfg_pp(model, 0.6, sv.NULL_CLASS), jax.random.key(0), x_t.shape, **kw)
    cfg = sv.sample_ode(state, sv.cfg(model, step_scale, sv.NULL_CLASS, state=state), jax.random.key(0), x_t.shape,
                        **kw)
    np.testing.assert_allclose(np.asarray(pp), np.asarray(cfg), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method, options", [("ddim", {}), ("dpm_solver_pp", {"order": 2})])
def test_cfg_pp_at_0_is_the_unconditional_model(method, options, x64):
    state = sv.set_timesteps(sv.create_state(), 7)
    model = sv.mixtures.make_class_model(state, CM)
    x_t = jax.random.normal(jax.random.key(2), (4, 2), jnp.float64)
    kw = dict(method=method, x_init=x_t, cond=jnp.full((4,), 0, jnp.int32), dtype=jnp.float64, **options)
    pp = sv.sample_ode(state, sv.cfg_pp(model, 0.0, sv.NULL_CLASS), jax.random.key(0), x_t.shape, **kw)
    uncond = sv.sample_ode(state, lambda x, t, c: model(x, t, jnp.full_like(c, sv.NULL_CLASS)), jax.random.key(0),
                           x_t.shape, **kw)
    np.testing.assert_allclose(np.asarray(pp), np.asarray(uncond), rtol=1e-12, atol=1e-12)


def test_cfg_pp_on_first_order_dpm_solver_pp_is_ddims(x64):
    """DPM-Solver++ of order 1 is DDIM; with CFG++ its first-order part becomes DDIM's CFG++ step."""
    state = sv.set_timesteps(sv.create_state(), 7)
    guided = sv.cfg_pp(sv.mixtures.make_class_model(state, CM), 0.7, sv.NULL_CLASS)
    x_t = jax.random.normal(jax.random.key(4), (4, 2), jnp.float64)
    kw = dict(x_init=x_t, cond=jnp.full((4,), 1, jnp.int32), dtype=jnp.float64)
    a = sv.sample_ode(state, guided, jax.random.key(0), x_t.shape, method="dpm_solver_pp", order=1, **kw)
    b = sv.sample_ode(state, guided, jax.random.key(0), x_t.shape, method="ddim", **kw)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-11)


# ------------------------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("kind", sv.guidance.SCHEDULE_KINDS)
def test_every_schedule_has_mean_scale_w_and_starts_at_1(kind, x64):
    """Mean over t in [0, 1] by Gauss-Legendre quadrature (exact for these smooth ramps to rounding); w(1) = 1
    for the ramps (the conditional model at the noise end)."""
    nodes, weights = np.polynomial.legendre.leggauss(32)
    schedule = sv.guidance_schedule(kind, 4.0)
    mean = 0.5 * float(np.sum(weights * np.asarray(schedule(jnp.asarray(0.5 * (nodes + 1.0))))))
    assert abs(mean - 4.0) < 1e-12
    start = float(schedule(jnp.asarray(1.0)))
    assert start == (4.0 if kind == "constant" else 1.0)


def test_a_schedule_is_read_at_the_continuous_time_of_a_discrete_models_label():
    state = sv.set_timesteps(sv.load_config({"_class_name": "DDIMScheduler"}), 10)
    model = sv.mixtures.make_class_model(state, CM)
    ramp = sv.guidance_schedule("linear", 3.0)
    x, cond = jnp.ones((3, 2)), jnp.full((3,), 1, jnp.int32)
    label = jnp.array([999.0, 499.0, 99.0])
    t = np.array([1.0, 0.5, 0.1])
    got = sv.cfg(model, ramp, sv.NULL_CLASS, state=state)(x, label, cond)
    w = 1.0 + 2.0 * 2.0 * (1.0 - t)
    want = sv.cfg(model, jnp.asarray(w, jnp.float32), sv.NULL_CLASS)(x, label, cond)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- errors

def test_bad_arguments_are_refused_by_name():
    state = sv.set_timesteps(sv.create_state(), 5)
    model = sv.mixtures.make_class_model(state, CM)
    with pytest.raises(ValueError, match="norm_threshold must be >= 0"):
        sv.apg(model, 3.0, sv.NULL_CLASS, state=state, norm_threshold=-1.0)
    with pytest.raises(ValueError, match=r"momentum must be in \(-1, 1\)"):
        sv.apg(model, 3.0, sv.NULL_CLASS, state=state, momentum=1.0)
    with pytest.raises(ValueError, match="formulation must be one of"):
        sv.apg(model, 3.0, sv.NULL_CLASS, state=state, formulation="original")
    with pytest.raises(ValueError, match="apg needs state="):
        sv.apg(model, 3.0, sv.NULL_CLASS, state=None)
    with pytest.raises(ValueError, match=r"lambda\) must be in \[0, 1\]"):
        sv.cfg_pp(model, 1.5, sv.NULL_CLASS)
    with pytest.raises(ValueError, match="zero_init_steps must be an int >= 0"):
        sv.cfg_zero_star(model, 3.0, sv.NULL_CLASS, zero_init_steps=-1)
    with pytest.raises(ValueError, match="kind must be one of"):
        sv.guidance_schedule("exponential", 3.0)
    with pytest.raises(ValueError, match="needs state="):
        sv.cfg(model, sv.guidance_schedule("linear", 3.0), sv.NULL_CLASS)


def test_what_a_loop_cannot_thread_is_refused():
    state = sv.set_timesteps(sv.create_state(), 5)
    model = sv.mixtures.make_class_model(state, CM)
    cond = jnp.full((2,), 1, jnp.int32)
    with pytest.raises(ValueError, match="renoises with the unconditional prediction.*'unipc' does not"):
        sv.sample_ode(state, sv.cfg_pp(model, 0.5, sv.NULL_CLASS), jax.random.key(0), (2, 2), method="unipc",
                      cond=cond)
    momentum = sv.apg(model, 3.0, sv.NULL_CLASS, state=state, momentum=-0.5)
    with pytest.raises(ValueError, match="adaptive solver"):
        sv.sample_ode(state, momentum, jax.random.key(0), (2, 2), method="adaptive", cond=cond)
    with pytest.raises(TypeError, match="APG needs memory across the run's calls"):
        momentum(jnp.ones((2, 2)), jnp.full((2,), 0.5), cond)
    # without memory, a direct call is the combination itself
    stateless = sv.apg(model, 3.0, sv.NULL_CLASS, state=state, eta=1.0)
    np.testing.assert_allclose(np.asarray(stateless(jnp.ones((2, 2)), jnp.full((2,), 0.5), cond)),
                               np.asarray(sv.cfg(model, 3.0, sv.NULL_CLASS)(jnp.ones((2, 2)), jnp.full((2,), 0.5),
                                                                             cond)), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the effect on the class mixture

@pytest.mark.slow
def test_each_method_against_cfg_at_equal_scale_on_the_class_mixture():
    """M = 2,000 samples of class 1 (modes 2 and 3), DPM-Solver++(2M), N = 25, same x_T; scale w = 3 for every
    method (CFG++: lambda = 0.6, as the paper pairs it with CFG 7.5-12 at 50 steps; autoguidance: the guide is
    the unconditional model blurred: its components' scales doubled).

    Class share (samples whose most responsible component is in class 1): every method guides, > 0.99 (plain
    CFG at 3 reached 1.0). Within-class spread: the distance to the assigned mode's centre over the component's
    scale, whose mean under the exact p(x | c) (isotropic 2-D components, 11 scales apart) is the Rayleigh
    mean sqrt(pi / 2) = 1.2533. CFG at w = 3 pushes samples past their modes (the over-saturation APG
    removes); APG at eta = 0 must land closer to 1.2533 than CFG, by more than 3 standard errors of the
    per-sample difference (std / sqrt(M); the runs share x_T). Measured (M = 2,000): CFG 1.829, APG 1.215,
    CFG-Zero* 1.236, autoguidance 1.096, CFG++ 1.946.
    """
    state = sv.set_timesteps(sv.create_state(), 25)
    model = sv.mixtures.make_class_model(state, CM)
    blurred_cm = sv.mixtures.make_class_mixture(sv.mixtures.make_mixture(
        np.asarray(CM.mixture.weights), np.asarray(CM.mixture.means), 2.0 * np.asarray(CM.mixture.scales)),
        np.asarray(CM.classes))
    weak = sv.mixtures.make_class_model(state, blurred_cm)
    m = 2000
    cond = jnp.full((m,), 1, jnp.int32)
    methods = {"cfg": sv.cfg(model, 3.0, sv.NULL_CLASS),
               "apg": sv.apg(model, 3.0, sv.NULL_CLASS, state=state),
               "cfg_zero_star": sv.cfg_zero_star(model, 3.0, sv.NULL_CLASS),
               "autoguidance": sv.autoguidance(model, weak, 3.0),
               "cfg_pp": sv.cfg_pp(model, 0.6, sv.NULL_CLASS)}
    means = jnp.asarray(CM.mixture.means)
    scales = np.asarray(CM.mixture.scales).reshape(-1)
    report, dist = {}, {}
    for name, guided in methods.items():
        x = sv.sample_ode(state, guided, jax.random.key(0), (m, 2), method="dpm_solver_pp", cond=cond)
        comp = np.asarray(sv.mixtures.assign_modes(CM.mixture, x))
        share = float(np.mean(np.asarray(CM.classes)[comp] == 1))
        d = np.linalg.norm(np.asarray(x) - np.asarray(means)[comp], axis=1) / scales[comp]
        dist[name] = d
        report[name] = (share, float(np.mean(d)))
        assert share > 0.99, (name, report)
    print(report)
    rayleigh = math.sqrt(math.pi / 2.0)
    se = np.std(dist["cfg"] - dist["apg"]) / math.sqrt(m)
    assert abs(report["apg"][1] - rayleigh) < abs(report["cfg"][1] - rayleigh) - 3.0 * se, (report, se)
