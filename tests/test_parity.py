"""Parity with diffusers' own ScoreSdeVpScheduler (torch), from stored goldens and live.

The goldens (tests/golden/sde_vp_parity.npz, made by
tests/golden/make_parity_golden.py from diffusers 0.42.1 / torch 2.13.0) hold, for
every case of tests/parity_cases.py and for float64 and float32: diffusers'
timesteps, its step outputs from injected noise, and the exact result of the same
step from the same (dtype-rounded) inputs in 40-digit arithmetic.

What is asserted, and why:
* float64: sdevp_jax is within 1e-14 (normwise relative) of the exact result, and
  within 1e-12 of diffusers wherever diffusers' float64 is itself within 1e-13 of
  exact. Where it is not -- sampling_eps = 1e-5, where diffusers' 1 - exp(2m)
  loses ~10 digits of float64 -- we agree with the exact value instead, and the
  distance to diffusers is diffusers' own error.
* float32: our error against the exact result is no larger than diffusers' own
  float32 error, up to 2 float32 ulps of the largest output (the two are
  computed in different orders, so at rounding level either can win a case), and
  never more than 4 ulps.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity_cases as cases
import sdevp_jax as sv

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), cases.GOLDEN_PATH))
STEP_CASES = list(cases.step_cases())


def normwise(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def state_for(c, n):
    beta_min, beta_max, eps = cases.CONFIGS[c]
    return sv.set_timesteps(sv.create_state(beta_min=beta_min, beta_max=beta_max, sampling_eps=eps), n)


def ours_step(index, dtype, jit):
    name, c, n, shape, form, pos = STEP_CASES[index]
    x, eps, noise, _ = cases.step_inputs(index, n, shape, form, pos)
    t = GOLDEN[f"{name}/{dtype}/t"]  # diffusers' own t, from its timesteps
    step = jax.jit(sv.step_pred) if jit else sv.step_pred
    out = step(state_for(c, n), jnp.asarray(eps, dtype), jnp.asarray(x, dtype), jnp.asarray(t), None,
               noise=jnp.asarray(noise, dtype))
    return name, out


# The jitted variant compiles step_pred once per case signature; the compiled step is also what the
# (fast) whole-loop parity runs, so the jit variant runs in the full suite only.
@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "jit"])
def test_float64_step_parity(x64, jit):
    worst_exact = worst_diffusers = 0.0
    for index in range(len(STEP_CASES)):
        name, out = ours_step(index, "float64", jit)
        for ours, key in zip(out, ("x", "x_mean")):
            assert ours.dtype == jnp.float64
            exact = GOLDEN[f"{name}/float64/exact_{key}"]
            theirs = GOLDEN[f"{name}/float64/{key}"]
            err = normwise(ours, exact)
            assert err <= 1e-14, (name, key, err)
            worst_exact = max(worst_exact, err)
            if normwise(theirs, exact) <= 1e-13:
                d = normwise(ours, theirs)
                assert d <= 1e-12, (name, key, d)
                worst_diffusers = max(worst_diffusers, d)
            else:  # diffusers' float64 cancellation: ours is the closer one
                assert normwise(ours, exact) < normwise(theirs, exact)
    assert worst_exact > 0.0  # the comparison ran on real numbers


# The jitted variant compiles step_pred once per case signature; the compiled step is also what the
# (fast) whole-loop parity runs, so the jit variant runs in the full suite only.
@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "jit"])
def test_float32_step_error_no_larger_than_diffusers(x64, jit):
    # x64 on only so that diffusers' float32 timesteps are used exactly as stored;
    # x, eps and noise are float32, so the step is computed in float32.
    beats = 0
    for index in range(len(STEP_CASES)):
        name, out = ours_step(index, "float32", jit)
        for ours, key in zip(out, ("x", "x_mean")):
            assert ours.dtype == jnp.float32
            exact = GOLDEN[f"{name}/float32/exact_{key}"]
            theirs = GOLDEN[f"{name}/float32/{key}"]
            ulp = float(np.spacing(np.float32(np.max(np.abs(exact)))))
            err_ours = float(np.max(np.abs(np.asarray(ours, np.float64) - exact)))
            err_theirs = float(np.max(np.abs(theirs.astype(np.float64) - exact)))
            assert err_ours <= err_theirs + 2 * ulp, (name, key, err_ours / ulp, err_theirs / ulp)
            assert err_ours <= 4 * ulp, (name, key, err_ours / ulp)
            beats += err_theirs > 100 * ulp
    assert beats > 0  # the grid does reach diffusers' cancellation near sampling_eps


@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_set_timesteps_matches_diffusers(x64, dtype):
    for c in range(len(cases.CONFIGS)):
        for n in cases.NUM_STEPS:
            ours = sv.set_timesteps(sv.create_state(sampling_eps=cases.CONFIGS[c][2]), n).timesteps
            theirs = GOLDEN[f"timesteps_c{c}_n{n}/{dtype}"]
            assert ours.shape == theirs.shape
            # torch and XLA evaluate linspace in different orders: equal to a
            # couple of ulps of the grid's dtype, end points exact.
            np.testing.assert_allclose(np.asarray(ours, dtype), theirs, rtol=0, atol=2 * np.finfo(dtype).eps)
            assert theirs[0] == 1.0 and float(ours[0]) == 1.0


def run_loop(index, dtype):
    """The pipelines' loop: step_pred over the grid with the toy model and injected noise."""
    c, n, shape = cases.LOOP_CASES[index]
    x_init, noises = cases.loop_inputs(index, n, shape)
    state = state_for(c, n)

    def body(x, inputs):
        t, z = inputs
        t_vec = jnp.full((shape[0],), t, dtype)
        eps = jnp.sin(x) * (1.0 + t_vec.reshape((-1,) + (1,) * (x.ndim - 1)))
        x_next, x_mean = sv.step_pred(state, eps, x, t_vec, None, noise=z)
        return x_next, x_mean

    x_last, means = jax.lax.scan(body, jnp.asarray(x_init, dtype), (state.timesteps.astype(dtype), jnp.asarray(noises, dtype)))
    return x_last, means[-1]


@pytest.mark.parametrize("index", range(len(cases.LOOP_CASES)))
def test_whole_loop_parity(x64, index):
    """Full sampling loops agree with diffusers to float64 rounding."""
    x_last, x_mean = run_loop(index, "float64")
    np.testing.assert_allclose(x_last, GOLDEN[f"loop{index}/float64/x"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x_mean, GOLDEN[f"loop{index}/float64/x_mean"], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------- live, when diffusers and torch are installed

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None and importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="needs diffusers and torch (the test extra installs diffusers 0.39 "
                    "without torch; the goldens cover this)")
@pytest.mark.slow
def test_live_parity_with_diffusers(x64):
    import diffusers_reference as ref

    for index in range(0, len(STEP_CASES), 7):  # every 7th case: all configs, shapes and forms
        name, c, n, shape, form, pos = STEP_CASES[index]
        x, eps, noise, t_index = cases.step_inputs(index, n, shape, form, pos)
        t, theirs, theirs_mean = ref.step(c, n, x, eps, noise, t_index, "float64")
        out = sv.step_pred(state_for(c, n), jnp.asarray(eps), jnp.asarray(x), jnp.asarray(t), None, noise=jnp.asarray(noise))
        tol = 1e-12 if cases.CONFIGS[c][2] >= 1e-3 else 1e-9  # eps = 1e-5: diffusers' own cancellation
        assert normwise(out.prev_sample, theirs) <= tol
        assert normwise(out.prev_sample_mean, theirs_mean) <= tol
