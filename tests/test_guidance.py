"""Conditional sampling and guidance: exactness on the class-conditional mixture, guidance that
works, one batched network call, invariance, every sampler, and the errors.

The exact model. ``sv.mixtures.make_class_model(state, cm)`` is the noise prediction of p_t(x | c) in closed form
(``NULL_CLASS`` = the unconditional p_t(x)), and ``sv.mixtures.make_class_log_prob`` is log p_t(c | x) by Bayes'
rule, so conditional sampling can be checked against the known law p(x | c), and the guidance combinators
against the identities that hold in exact arithmetic:

* CFG at scale 1 is the conditional model, at scale 0 the unconditional one;
* classifier guidance with the exact classifier at scale 1 is the conditional model:
  eps_u - sigma grad log p_t(c | x) = -sigma grad (log p_t(x) + log p_t(c | x)) = -sigma grad log p_t(x | c).

Rounding tolerances are derived as tests/test_invariance.py derives them: the difference between two runs
that agree in exact arithmetic starts as rounding of the model's output, so a run whose model output is
moved coherently by a bound on that rounding (the same sign at every entry and every step, so nothing
cancels) shows how far the dynamics carry it (P), and the runs are allowed 2 P.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from test_schedule_statistics import alpha_sigma, make_state, moment_report, target_law

U32 = 2.0**-24  # float32's unit roundoff
CM = sv.mixtures.default_class_mixture()  # classes {0, 1}, {2, 3}, {4}; modes 11 of their standard deviations apart

_sample = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("predictor", "corrector"))
_sample_ode = jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method",))


def null_like(cond):
    return jnp.full_like(cond, sv.NULL_CLASS)


def class_sub_mixture(cm, c):
    """p(x | c) as a GaussianMixture of its own: class c's components, weights renormalised."""
    idx = np.flatnonzero(np.asarray(cm.classes) == c)
    m = cm.mixture
    return sv.mixtures.make_mixture(np.asarray(m.weights)[idx], np.asarray(m.means)[idx], np.asarray(m.scales)[idx])


def in_class_share(cm, x, classes):
    """The share of samples whose most responsible component (at t = 0) belongs to their own class."""
    comp = np.asarray(sv.mixtures.assign_modes(cm.mixture, x))
    return float(np.mean(np.asarray(cm.classes)[comp] == np.asarray(classes)))


def exact_conditional_prior(state, cm, classes, key):
    """Exact draws of p_{t_0}(x | c), t_0 = the grid's first time (isolates the sampler, as in
    tests/test_schedule_statistics.py: Stable Diffusion's schedule does not reach N(0, I))."""
    a, s = alpha_sigma(state, state.timesteps[0])
    k0, kz = jax.random.split(key)
    x0 = sv.mixtures.sample_class_mixture(cm, k0, classes)
    return (jnp.float32(a) * x0 + jnp.float32(s) * jax.random.normal(kz, x0.shape, jnp.float32)).astype(jnp.float32)


def rounding_perturbed(model_fn, unconditional=False, factor=2.0**-22):
    """The conditional (or unconditional) model moved by ``factor (|y_c| + |y_u|)`` at every entry: a bound on
    the rounding that separates a guided run from the conditional or unconditional one (see each test)."""

    def perturbed(x, t, cond):
        y_c, y_u = model_fn(x, t, cond), model_fn(x, t, null_like(cond))
        return (y_u if unconditional else y_c) + jnp.float32(factor) * (jnp.abs(y_c) + jnp.abs(y_u))

    return perturbed


# ------------------------------------------------------------------------------------------- 1. exactness

# (family, options, N): N as tests/test_schedule_statistics.py measured it (bias below one SE at M = 10,000).
EXACT_SAMPLERS = {"ancestral": ("sde", {"predictor": "ancestral"}, 250),
                  "dpm_solver": ("ode", {"method": "dpm_solver"}, 20)}


@pytest.mark.slow
@pytest.mark.parametrize("grid", ["linear", "scaled_linear"])
@pytest.mark.parametrize("sampler", list(EXACT_SAMPLERS))
def test_conditional_sampling_draws_p_x_given_c(grid, sampler):
    """M = 6,000 samples, classes 0 and 1 alternating in the batch (per-sample conditions), each class's
    3,000 against p(x | c) at the run's end (the ODE's p_{t_L}, the SDE's denoised law, as in
    tests/test_schedule_statistics.py): mode weights within the class, mean and covariance each within
    5 standard errors (moment_report: SE of a binomial weight, of a mean, plug-in SE of a covariance entry).

    No sample may land in another class's modes: under p(x | c) that mass is below 1e-8 (the modes are
    11 standard deviations apart), so the expected count among 6,000 is < 1e-4. The unconditional model
    would put 40% (class 0) and 68% (class 1) there.
    Measured (seeds below): every statistic at most 0.6 of its 5 SE bound; no sample out of class.
    """
    family, options, n = EXACT_SAMPLERS[sampler]
    state = make_state(grid, n)
    model_fn = sv.mixtures.make_class_model(state, CM)
    m = 6000
    classes = jnp.arange(m, dtype=jnp.int32) % 2
    x_init = exact_conditional_prior(state, CM, classes, jax.random.key(2))
    run = _sample if family == "sde" else _sample_ode
    x = np.asarray(run(state, model_fn, jax.random.key(1), (m, 2), x_init=x_init, cond=classes, **options),
                   np.float64)
    assert np.all(np.isfinite(x))
    assert in_class_share(CM, x, classes) == 1.0
    a, s = alpha_sigma(state, state.timesteps[-1])
    for c in (0, 1):
        sub = class_sub_mixture(CM, c)
        report = moment_report(x[np.asarray(classes) == c], sub, *target_law(sub, a, s, family == "sde"))
        bad = {k: v for k, v in report.items() if not v[0] < 1.0}
        assert not bad, f"{grid}/{sampler} class {c}: (error / 5 SE, measured, expected) {bad}"


def _run_fixed(family, state):
    """``(model_fn, cond) -> samples``, same key for every model."""

    def run(m, c):
        if family == "sde":
            return sv.sample(state, m, jax.random.key(3), (c.shape[0], 2), predictor="ancestral", cond=c)
        return sv.sample_ode(state, m, jax.random.key(3), (c.shape[0], 2), method="dpm_solver", cond=c)

    return run


@pytest.mark.parametrize("family, n", [pytest.param("sde", 100, marks=pytest.mark.slow), ("ode", 20)])
def test_cfg_at_1_and_0_and_classifier_guidance_at_1_follow_the_exact_paths(family, n):
    """Same key, same x_T: cfg(w=1) and the exact classifier at w=1 give the conditional run, cfg(w=0) the
    unconditional one, to rounding carried by the dynamics.

    Rounding at one call (u = 2**-24): cfg at w = 1 returns y_u + (y_c - y_u), two roundings,
    |. - y_c| <= u (|y_c - y_u| + |y_c|) <= 2u (|y_c| + |y_u|); at w = 0 it returns y_u exactly. Both
    evaluate the model on a batch of 2B, which XLA may compile with other reductions than a batch of B (a few
    ulps of each output, tests/test_invariance.py). Classifier guidance computes eps_u - sigma grad, the two
    terms of sizes |y_u| and |y_c - y_u|, each to a few ulps (autodiff of a log-sum-exp), then subtracts.
    All three are within 4u (|y_c| + |y_u|) = 2**-22 (|y_c| + |y_u|) per entry and step: the run with the
    conditional (or unconditional) model moved by that much at every step gives P, and 2 P is allowed.
    Measured: SDE (ancestral, N = 100) P = 2.1e-6, differences <= 1.2e-7 (cfg 1, cfg 0 and classifier);
    ODE (dpm_solver, N = 20) P = 5.0e-5, differences 7.7e-7 (cfg 1), 0 (cfg 0), 9.8e-7 (classifier). The
    conditional and
    unconditional runs differ by ~2.8, so the check can tell them apart.
    """
    state = make_state("linear", n)
    model_fn = sv.mixtures.make_class_model(state, CM)
    log_prob = sv.mixtures.make_class_log_prob(state, CM)
    run = _run_fixed(family, state)
    b = 256
    cond = jnp.arange(b, dtype=jnp.int32) % 3
    null = null_like(cond)
    unconditional = lambda x, t: model_fn(x, t, jnp.full((x.shape[0],), sv.NULL_CLASS, jnp.int32))
    runs = {  # model, and whether it is given the null condition
        "ref_c": (model_fn, False),
        "ref_u": (model_fn, True),
        "perturbed_c": (rounding_perturbed(model_fn), False),
        "perturbed_u": (rounding_perturbed(model_fn, unconditional=True), False),
        "cfg1": (sv.cfg(model_fn, 1.0, sv.NULL_CLASS), False),
        "cfg0": (sv.cfg(model_fn, 0.0, sv.NULL_CLASS), False),
        "classifier": (sv.classifier_guidance(state, unconditional, log_prob, 1.0), False),
    }
    # the seven runs traced into one jitted program: one compilation instead of six (measured: about half the
    # compile time, XLA's fixed cost per program being most of each of these small ones); each run is its
    # own loop, as before
    every = jax.jit(lambda cond, null: {k: run(m, null if u else cond) for k, (m, u) in runs.items()})
    out = {k: np.asarray(v) for k, v in every(cond, null).items()}
    ref_c, ref_u, cfg1, cfg0, classifier = (out[k] for k in ("ref_c", "ref_u", "cfg1", "cfg0", "classifier"))
    tol_c = 2.0 * np.max(np.abs(out["perturbed_c"] - ref_c))
    tol_u = 2.0 * np.max(np.abs(out["perturbed_u"] - ref_u))
    assert 0 < tol_c < 1e-3 and 0 < tol_u < 1e-3, (tol_c, tol_u)
    assert np.max(np.abs(ref_c - ref_u)) > 1.0  # the two targets are far apart

    assert np.max(np.abs(cfg1 - ref_c)) <= tol_c
    assert np.max(np.abs(classifier - ref_c)) <= tol_c
    assert np.max(np.abs(cfg0 - ref_u)) <= tol_u


# --------------------------------------------------------------------------------------- 2. guidance works

# Two classes whose modes overlap: N((-0.5, 0), 0.5^2 I) and N((0.5, 0), 0.5^2 I), weights 1/2. A sample
# counts as class 0 when its most responsible component is class 0's, i.e. x_1 < 0, so under p(x | 0) the
# share is Phi(0.5 / 0.5) = Phi(1) = 0.841 < 1, and under p(x) it is 1/2: room to grow with the scale.
OVERLAP = sv.mixtures.make_class_mixture(sv.mixtures.make_mixture([0.5, 0.5], [[-0.5, 0.0], [0.5, 0.0]], 0.5), [0, 1])
SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)


def test_class_share_grows_with_the_scale_in_one_vmapped_compilation():
    """cfg scales 0, 0.5, 1, 2, 4 under jax.vmap in one jit: M = 4,000 samples of class 0 each (dpm_solver,
    N = 20, same x_T for every scale).

    One compilation: the model counts its traces (a Python counter); a second sweep with other scales
    traces nothing. Shares: at w = 0 the unconditional 1/2 and at w = 1 the conditional Phi(1), each within
    5 binomial SE sqrt(p (1 - p) / M) (the run ends at t_L = 1e-3, whose extra variance moves Phi(1) by
    < 1e-3); every step up the scales raises the share by more than 3 SE of the difference of two
    independent shares (the same x_T makes the real difference less noisy than that).
    Measured: 0.507, 0.687, 0.851, 0.9915, 1.0 (the bounds: 0.5 +- 0.040, 0.841 +- 0.029).
    """
    state = make_state("linear", 20)
    model_fn = sv.mixtures.make_class_model(state, OVERLAP)
    m = 4000
    cond = jnp.zeros((m,), jnp.int32)
    traces = []

    def counted(x, t, c):
        traces.append(1)
        return model_fn(x, t, c)

    @jax.jit
    def sweep(scales):
        one = lambda w: sv.sample_ode(state, sv.cfg(counted, w, sv.NULL_CLASS), jax.random.key(0), (m, 2),
                                      method="dpm_solver", cond=cond)
        return jax.vmap(one)(scales)

    x = sweep(jnp.asarray(SCALES, jnp.float32))
    n_traces = len(traces)
    assert n_traces > 0
    sweep(jnp.asarray([0.25, 0.75, 1.5, 3.0, 8.0], jnp.float32)).block_until_ready()
    assert len(traces) == n_traces, "a new sweep of scales retraced the model"

    share = np.array([float(np.mean(np.asarray(sv.mixtures.assign_modes(OVERLAP.mixture, xi)) == 0)) for xi in x])
    se = np.sqrt(share * (1 - share) / m)
    phi1 = 0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0)))
    for got, want in ((share[0], 0.5), (share[2], phi1)):
        assert abs(got - want) < 5 * math.sqrt(want * (1 - want) / m), (share, want)
    steps = np.diff(share)
    assert np.all(steps > 3 * np.sqrt(se[:-1] ** 2 + se[1:] ** 2)), (dict(zip(SCALES, share)), steps)


@pytest.mark.parametrize("grid", ["linear", "scaled_linear"])
def test_outside_the_interval_the_guided_model_is_the_conditional_one(grid):
    """cfg(w = 3, interval=(0.3, 0.6)) at model times inside and outside the interval, 6 samples per time.

    Inside: bitwise cfg without an interval (the same arithmetic on the same batch). Outside: the
    conditional half y_c of the same batch-2B network call (a batch of B compiles differently and moves the
    outputs by a few ulps of the mixture's intermediate sums), to the rounding of y_u + 1 (y_c - y_u): two
    roundings, <= u (|y_c - y_u| + |y_c|) <= 2u (|y_c| + |y_u|) per entry, allowed as is. And not the
    guided value there (it differs by 2 (y_c - y_u), far above the tolerance at these x).
    Measured: at most 0.71 of the tolerance (0 at t = 0.999, where both halves are the prior's x).
    """
    state = make_state(grid, 10)
    model_fn = sv.mixtures.make_class_model(state, CM)
    guided = sv.cfg(model_fn, 3.0, sv.NULL_CLASS, interval=(0.3, 0.6), state=state)
    plain = sv.cfg(model_fn, 3.0, sv.NULL_CLASS)
    x = jax.random.normal(jax.random.key(4), (6, 2), jnp.float32)
    cond = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
    pairs = lambda a, b: jnp.stack([a, b], axis=1).reshape((12,) + a.shape[1:])  # cfg's row order

    # one compiled program for the six times (t is its input), not every operation dispatched one by one
    @jax.jit
    def outputs(t):
        return guided(x, t, cond), plain(x, t, cond), model_fn(pairs(x, x), pairs(t, t), pairs(cond, null_like(cond)))

    for t_cont, inside in ((0.05, False), (0.2, False), (0.35, True), (0.55, True), (0.8, False), (0.999, False)):
        t = jnp.full((6,), sv.model_time(state, t_cont), state.timesteps.dtype)
        got, plain_out, both = (np.asarray(v) for v in outputs(t))
        if inside:
            np.testing.assert_array_equal(got, plain_out)
            continue
        both = both.reshape(6, 2, 2)
        y_c, y_u = both[:, 0], both[:, 1]
        tol = 2 * U32 * (np.abs(y_c) + np.abs(y_u))
        assert np.all(np.abs(got - y_c) <= tol), (t_cont, np.max(np.abs(got - y_c) / tol))
        assert np.max(np.abs(plain_out - y_c)) > 1e3 * tol.max()


def test_cfg_rescale_1_gives_the_conditional_std():
    """CFG-rescale phi = 1 on the 8-D class mixture: each guided output's std over its 8 entries equals the
    conditional output's, relative 32u (the std sums 8 squares, ~(2D + 5)u = 21u of relative rounding, the
    rescaling adds ~3u); phi = 0.5 is the mean of phi = 0 and phi = 1 (to 8u relative to their size).
    Without rescale the std differs by far more (asserted, so the check can fail)."""
    cm8 = sv.mixtures.default_class_mixture(8)
    state = make_state("linear", 10)
    model_fn = sv.mixtures.make_class_model(state, cm8)
    x = 1.5 * jax.random.normal(jax.random.key(5), (12, 8), jnp.float32)
    t = jnp.linspace(0.05, 0.9, 12, dtype=jnp.float32)
    cond = jnp.arange(12, dtype=jnp.int32) % 3
    std = lambda y: np.asarray(y, np.float64).std(axis=1)

    # one compiled program (the rescales stay Python floats inside it, so cfg takes its concrete-value
    # path, which skips the rescaling at 0), not every operation dispatched one by one
    @jax.jit
    def concrete():
        y0, y1, y_half = (sv.cfg(model_fn, 4.0, sv.NULL_CLASS, rescale=r)(x, t, cond) for r in (0.0, 1.0, 0.5))
        return y0, y1, y_half, model_fn(x, t, cond)

    y0, y1, y_half, y_c = (np.asarray(v) for v in concrete())
    target = std(y_c)
    np.testing.assert_allclose(std(y1), target, rtol=32 * U32)
    assert np.max(np.abs(std(y0) / target - 1)) > 1e-2
    mid = 0.5 * (y0 + y1)
    assert np.all(np.abs(y_half - mid) <= 8 * U32 * (np.abs(y0) + np.abs(y1)))
    # rescale may be traced (a jit or vmap over it): the same arithmetic as the concrete value, to 2 ulps
    traced = jax.jit(lambda r: sv.cfg(model_fn, 4.0, sv.NULL_CLASS, rescale=r)(x, t, cond))(jnp.float32(0.5))
    np.testing.assert_allclose(np.asarray(traced), y_half, rtol=4 * U32, atol=4 * U32 * np.abs(y_half).max())


# ------------------------------------------------------------------------------------ 3. one batched call


@pytest.mark.parametrize("sampler, n, calls_per_step", [("euler_maruyama", 8, 1), ("heun", 7, 2),
                                                        ("dpm_solver_pp", 7, 1)])
def test_cfg_calls_the_network_once_per_step_and_stage_with_batch_2b(sampler, n, calls_per_step):
    """A host callback in the network (test-only) records every call inside the compiled loop: with cfg
    there are exactly NFE calls (one per step and stage, as without guidance), each on 2B rows."""
    state = sv.set_timesteps(sv.create_state(), n)
    model_fn = sv.mixtures.make_class_model(state, CM)
    rows = []

    def network(x, t, c):
        jax.debug.callback(lambda x: rows.append(np.asarray(x).shape[0]), x)
        return model_fn(x, t, c)

    b = 3
    cond = jnp.asarray([0, 1, 2], jnp.int32)
    guided = sv.cfg(network, 2.0, sv.NULL_CLASS)
    if sampler == "euler_maruyama":
        x = jax.jit(lambda k: sv.sample(state, guided, k, (b, 2), cond=cond))(jax.random.key(0))
        nfe = n
    else:
        x, info = jax.jit(lambda k: sv.sample_ode(state, guided, k, (b, 2), method=sampler, cond=cond,
                                                  return_info=True))(jax.random.key(0))
        nfe = int(info.nfe)
        assert nfe == {"heun": 2 * (n - 1), "dpm_solver_pp": n}[sampler]
    jax.block_until_ready(x)
    assert rows == [2 * b] * nfe, rows


# ------------------------------------------------------------------------------------------- 4. invariance

INV_STEPS = 100
INV_SCALE = 2.5  # a guided run (w != 0, 1), per-sample classes
PERTURBATION = 2.0**-22  # relative, as tests/test_invariance.py: 2 ulps of float32 at 1.0


def invariance_run(batch, guided_scale=INV_SCALE, perturb=False):
    """``(key, offset, cond) -> samples`` of a cfg-guided, conditioned SDE run, jitted for one batch size."""
    state = sv.set_timesteps(sv.create_state(), INV_STEPS)
    guided = sv.cfg(sv.mixtures.make_class_model(state, CM), guided_scale, sv.NULL_CLASS)
    model_fn = (lambda x, t, c: guided(x, t, c) * jnp.float32(1 + PERTURBATION)) if perturb else guided
    return jax.jit(lambda k, o, c: sv.sample(state, model_fn, k, (batch, 2), index_offset=o, cond=c))


def invariance_run_traced(batch):
    """``(key, offset, cond, perturbation) -> samples``: ``invariance_run`` with the model's output times
    ``1 + perturbation``, traced, so the run (0: a product with 1.0, exact) and its perturbed copy
    (PERTURBATION: 1 + 2**-22 is exact in float32) are one compiled program."""
    state = sv.set_timesteps(sv.create_state(), INV_STEPS)
    guided = sv.cfg(sv.mixtures.make_class_model(state, CM), INV_SCALE, sv.NULL_CLASS)

    def run(k, o, c, p):
        model_fn = lambda x, t, cond: guided(x, t, cond) * (jnp.float32(1) + p)
        return sv.sample(state, model_fn, k, (batch, 2), index_offset=o, cond=c)

    return jax.jit(run)


def test_a_chunked_guided_run_equals_the_uninterrupted_one():
    """A guided, conditioned run of 256 samples against chunks with index_offset and the cond rows sliced.

    Equal compiled shapes (a chunk of 256 at offset 128): bits compared. Chunks of 128 (another compiled
    shape): to 2 P, P how far the run carries a coherent relative change of 2**-22 of every model output
    (the derivation of tests/test_invariance.py). And the cond rows matter: a chunk given the wrong rows is
    O(1) away. Measured: 2 P = 7.2e-7, the chunks of 128 bitwise equal to the whole (0 difference).
    """
    key = jax.random.key(7)
    cond = jnp.asarray(np.random.default_rng(0).integers(0, 3, 384), jnp.int32)
    zero, perturbation = jnp.float32(0), jnp.float32(PERTURBATION)
    whole_fn = invariance_run_traced(256)  # the unperturbed and the perturbed run: one compiled program
    whole = np.asarray(whole_fn(key, np.uint32(0), cond[:256], zero))
    shifted = np.asarray(whole_fn(key, np.uint32(128), cond[128:384], zero))
    np.testing.assert_array_equal(shifted[:128].view(np.uint32), whole[128:].view(np.uint32))

    tolerance = 2.0 * float(np.max(np.abs(np.asarray(whole_fn(key, np.uint32(0), cond[:256], perturbation))
                                          - whole)))
    assert 0 < tolerance < 1e-3, tolerance
    chunk_fn = invariance_run_traced(128)
    chunks = np.concatenate([np.asarray(chunk_fn(key, np.uint32(o), cond[o:o + 128], zero)) for o in (0, 128)])
    assert np.max(np.abs(chunks - whole)) <= tolerance, (np.max(np.abs(chunks - whole)), tolerance)
    wrong = np.asarray(chunk_fn(key, np.uint32(128), cond[:128], zero))
    assert np.max(np.abs(wrong - whole[128:])) > 1.0


SHARDED = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    sys.path.insert(0, {test_dir!r})
    import jax, jax.numpy as jnp, numpy as np
    import sdevp_jax as sv
    from test_guidance import invariance_run
    assert len(jax.devices()) == 4
    key = jax.random.key(0)
    cond = jnp.asarray(np.random.default_rng(1).integers(0, 3, 512), jnp.int32)
    sharding = sv.distributed.batch_sharding()
    single = np.asarray(invariance_run(512)(key, np.uint32(0), cond))
    pert = np.asarray(invariance_run(512, perturb=True)(key, np.uint32(0), cond))
    sharded_fn = jax.jit(invariance_run(512), out_shardings=sharding)
    sharded_out = sharded_fn(key, np.uint32(0), jax.device_put(cond, sharding))
    sharded = np.asarray(sharded_out)
    per_shard_fn = invariance_run(128)
    per_shard = np.concatenate([np.asarray(per_shard_fn(key, np.uint32(128 * d), cond[128 * d:128 * (d + 1)]))
                                for d in range(4)])
    print(json.dumps({{"max_diff": float(np.abs(sharded - single).max()),
                      "tolerance": 2.0 * float(np.abs(pert - single).max()),
                      "num_shards": len(sharded_out.addressable_shards),
                      "shards_bitwise": bool(np.array_equal(sharded.view(np.uint32), per_shard.view(np.uint32)))}}))
""")


@pytest.mark.slow
def test_a_guided_run_sharded_over_4_devices_equals_one_device():
    """4 forced CPU devices, batch and cond sharded together: each shard is bitwise the single-device call of
    its size, offset and cond rows; the whole equals the single-device batch of 512 to 2 P (as above).
    Measured: shards bitwise; the whole 6.1e-7 from one device, 2 P = 8.6e-6. (cfg interleaves each
    sample's two rows, so the sharded loop has no collectives: with the halves concatenated it had 7
    all-gathers and 12 collective-permutes per compiled loop, and the shards were not bitwise.)"""
    script = SHARDED.format(test_dir=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["num_shards"] == 4 and result["shards_bitwise"], result
    assert 0 < result["tolerance"] < 1e-3 and result["max_diff"] <= result["tolerance"], result


# ------------------------------------------------------------------------------------------ 5. every sampler

# (kind, options, N): every predictor, PC, every ODE and grid solver, on the linear schedule.
EVERY = {**{p: ("sde", {"predictor": p}, 50) for p in sv.list_methods("predictor")},
         "pc_langevin": ("sde", {"predictor": "euler_maruyama", "corrector": "langevin"}, 50),
         **{m: ("ode", {"method": m}, 20) for m in sv.list_methods("ode") + sv.list_methods("sde_solver")}}


EVERY_BATCH = 192


@functools.lru_cache(maxsize=None)
def every_sampler_samples():
    """``{sampler: samples}`` for every entry of EVERY: B = 192, classes 0, 1, 2 in turn, cfg at w = 1, key 9.

    The thirteen runs are traced into one jitted program, computed once for the tests below (one compilation
    instead of thirteen; measured: 12 s instead of 29 s, XLA's fixed cost per program being most of each of
    these small ones).
    """
    cond = jnp.arange(EVERY_BATCH, dtype=jnp.int32) % 3
    runs = {}
    for sampler, (family, options, n) in EVERY.items():
        state = sv.set_timesteps(sv.create_state(), n)
        guided = sv.cfg(sv.mixtures.make_class_model(state, CM), 1.0, sv.NULL_CLASS)
        loop = sv.sample if family == "sde" else sv.sample_ode
        runs[sampler] = functools.partial(loop, state, guided, shape=(EVERY_BATCH, 2), **options)
    every = jax.jit(lambda key, c: {sampler: run(key=key, cond=c) for sampler, run in runs.items()})
    out = every(jax.random.key(9), cond)
    return {sampler: np.asarray(x, np.float64) for sampler, x in out.items()}, np.asarray(cond)


@pytest.mark.parametrize("sampler", list(EVERY))
def test_every_sampler_takes_cond_and_a_cfg_model(sampler):
    """B = 192 samples, classes 0, 1, 2 in turn, cfg at w = 1 (the conditional model through the batched
    code path): finite, and in their own class's modes.

    Under p(x | c) the mass in other classes' modes is < 1e-8; the bound is loose because the steps are
    few: at least 95% in class (the unconditional model gives 1/3 on average: 0.6, 0.32, 0.08), and
    class 0's share in its first mode within 5 binomial SE of 0.35 / 0.6 at its 64 samples (+- 0.31).
    Measured: every sampler 100% in class; class 0's first-mode share 0.52 to 0.59.
    """
    samples, cond = every_sampler_samples()
    x = samples[sampler]
    assert np.all(np.isfinite(x))
    share = in_class_share(CM, x, cond)
    assert share >= 0.95, share
    first = np.mean(np.asarray(sv.mixtures.assign_modes(CM.mixture, x[cond == 0])) == 0)
    p = 0.35 / 0.6
    assert abs(first - p) < 5 * math.sqrt(p * (1 - p) / 64), first


# ------------------------------------------------------------------------------------------ 6. bad input


@pytest.fixture(scope="module")
def small():
    state = sv.set_timesteps(sv.create_state(), 5)
    return state, sv.mixtures.make_class_model(state, CM)


@pytest.mark.parametrize("call", ["sample", "sample_ode", "invert_ode"])
def test_cond_without_the_batch_leading_is_refused(small, call):
    state, model_fn = small
    bad = {"labels": jnp.zeros((4,), jnp.int32), "extra": jnp.zeros((3, 2))}
    with pytest.raises(ValueError, match=r"cond.*batch \(4\).*\['extra'\]"):
        if call == "invert_ode":
            sv.invert_ode(state, lambda x, t, c: x, jnp.zeros((4, 2)), cond=bad)
        else:
            getattr(sv, call)(state, lambda x, t, c: x, jax.random.key(0), (4, 2), cond=bad)
    with pytest.raises(ValueError, match=r"cond.*batch \(4\)"):
        sv.sample(state, model_fn, jax.random.key(0), (4, 2), cond=jnp.int32(0))


@pytest.mark.parametrize("cond", [jnp.zeros((4,), jnp.float32), jnp.zeros((4, 1), jnp.int32)])
def test_class_cond_of_the_wrong_shape_or_dtype_is_refused(small, cond):
    state, model_fn = small
    with pytest.raises(ValueError, match=r"cond must be class indices of shape \(batch,\) = \(4,\), ints"):
        sv.sample(state, model_fn, jax.random.key(0), (4, 2), cond=cond)
    with pytest.raises(ValueError, match=r"cond must be class indices"):
        sv.mixtures.make_class_log_prob(state, CM)(jnp.zeros((4, 2)), jnp.full((4,), 0.5), cond)


@pytest.mark.parametrize("interval", [(0.5, 1.5), (-0.1, 0.5), (0.6, 0.2), (0.3, 0.3), (0.2,), "ab"])
def test_a_guidance_interval_outside_0_1_or_reversed_is_refused(small, interval):
    state, model_fn = small
    with pytest.raises(ValueError, match="interval"):
        sv.cfg(model_fn, 2.0, sv.NULL_CLASS, interval=interval, state=state)


def test_an_interval_without_state_is_refused(small):
    _, model_fn = small
    with pytest.raises(ValueError, match="interval needs state="):
        sv.cfg(model_fn, 2.0, sv.NULL_CLASS, interval=(0.2, 0.8))


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), np.array([1.0, np.nan])])
@pytest.mark.parametrize("combinator", ["cfg", "classifier_guidance"])
def test_a_non_finite_scale_is_refused(small, scale, combinator):
    state, model_fn = small
    with pytest.raises(ValueError, match="scale must be finite"):
        if combinator == "cfg":
            sv.cfg(model_fn, scale, sv.NULL_CLASS)
        else:
            sv.classifier_guidance(state, model_fn, sv.mixtures.make_class_log_prob(state, CM), scale)


def test_a_scale_of_the_wrong_shape_or_type_is_refused(small):
    state, model_fn = small
    with pytest.raises(TypeError, match="scale must be a real number"):
        sv.cfg(model_fn, "2", sv.NULL_CLASS)
    with pytest.raises(ValueError, match=r"scale of shape \(3,\) must be 0-d, \(1,\) or \(batch,\) = \(4,\)"):
        sv.sample(state, sv.cfg(model_fn, jnp.ones(3), sv.NULL_CLASS), jax.random.key(0), (4, 2),
                  cond=jnp.zeros((4,), jnp.int32))


def test_a_scale_of_shape_1_as_diffusers_flax_pipelines_pass_it_is_the_0_d_scale(small):
    """FlaxStableDiffusionPipeline holds its guidance scale as jnp.array([w]): the same guide as w."""
    _, model_fn = small
    x, t, cond = jnp.ones((4, 2)), jnp.full((4,), 0.5), jnp.zeros((4,), jnp.int32)
    np.testing.assert_array_equal(sv.cfg(model_fn, jnp.array([7.5]), sv.NULL_CLASS)(x, t, cond),
                                  sv.cfg(model_fn, 7.5, sv.NULL_CLASS)(x, t, cond))


@pytest.mark.parametrize("rescale", [-0.1, 1.5, float("nan")])
def test_rescale_outside_0_1_is_refused(small, rescale):
    _, model_fn = small
    with pytest.raises(ValueError, match="rescale"):
        sv.cfg(model_fn, 2.0, sv.NULL_CLASS, rescale=rescale)
