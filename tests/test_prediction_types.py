r"""Prediction types: eps_from_prediction / prediction_from_eps, and every step given a v- or x0-model.

With x = alpha x0 + sigma eps and v = alpha eps - sigma x0 (Salimans & Ho 2022), random
data and the schedule's alpha, sigma in float64 give the exact eps, v and x0 of each
sample; the conversions and the steps are checked against them in float32 and float64.
Tolerances: each conversion is at most 4 roundings (relative u each) of its terms, and
the inputs' own rounding to the dtype is one more; 8 u per term covers both.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import denoiser, schedules

DTYPES = [np.float32, np.float64]


def x64_if(dtype):
    return jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()


def unit_roundoff(dtype):
    return float(np.finfo(dtype).eps) / 2


def exact_data(state, batch=16, dim=3, seed=0):
    """Grid times (one per sample, cycling), x0, eps, x, v and alpha, sigma, all float64 NumPy."""
    rng = np.random.default_rng(seed)
    grid = np.asarray(state.timesteps, np.float64)
    t = grid[np.arange(batch) % grid.shape[0]]
    with jax.enable_x64(True):
        alpha, sigma = (np.asarray(a)[:, None] for a in state.schedule.alpha_sigma(jnp.asarray(t)))
    x0 = rng.standard_normal((batch, dim))
    eps = rng.standard_normal((batch, dim))
    return dict(t=t, x0=x0, eps=eps, x=alpha * x0 + sigma * eps, v=alpha * eps - sigma * x0, alpha=alpha, sigma=sigma)


def cosine_state(prediction_type="epsilon", n=16):
    return sv.set_timesteps(sv.create_state(schedule=schedules.cosine(), prediction_type=prediction_type), n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conversions_match_the_definitions_and_round_trip(dtype):
    u = unit_roundoff(dtype)
    d = exact_data(cosine_state(), batch=32)  # t from t_max (alpha ~ 3e-3) down to 1e-3 (sigma ~ 0.02)
    a, s = d["alpha"], d["sigma"]
    with x64_if(dtype):
        x, eps, v, x0, a_, s_ = (jnp.asarray(d[k], dtype) for k in ("x", "eps", "v", "x0", "alpha", "sigma"))
        assert denoiser.eps_from_prediction("epsilon", eps, x, a_, s_) is eps  # no arithmetic
        assert denoiser.prediction_from_eps("epsilon", eps, x, a_, s_) is eps
        eps_from_v = denoiser.eps_from_prediction("v_prediction", v, x, a_, s_)
        eps_from_x0 = denoiser.eps_from_prediction("sample", x0, x, a_, s_)
        v_from_eps = denoiser.prediction_from_eps("v_prediction", eps, x, a_, s_)
        x0_from_eps = denoiser.prediction_from_eps("sample", eps, x, a_, s_)
        v_back = denoiser.prediction_from_eps("v_prediction", eps_from_v, x, a_, s_)
        x0_back = denoiser.prediction_from_eps("sample", eps_from_x0, x, a_, s_)
    for got in (eps_from_v, eps_from_x0, v_from_eps, x0_from_eps, v_back, x0_back):
        assert got.dtype == dtype
    ax, sx, ae, se = np.abs(d["x"]), s * np.abs(d["x"]), np.abs(d["eps"]), s * np.abs(d["eps"])
    tol_eps_v = 8 * u * (a * np.abs(d["v"]) + sx + ae)                 # alpha v + sigma x
    tol_eps_x0 = 8 * u * ((ax + a * np.abs(d["x0"])) / s + ae)         # (x - alpha x0) / sigma
    tol_v = 8 * u * (ae + sx + a * np.abs(d["v"])) / a                 # (eps - sigma x) / alpha
    tol_x0 = 8 * u * (ax + se + a * np.abs(d["x0"])) / a               # (x - sigma eps) / alpha
    np.testing.assert_array_less(np.abs(np.asarray(eps_from_v, np.float64) - d["eps"]), tol_eps_v)
    np.testing.assert_array_less(np.abs(np.asarray(eps_from_x0, np.float64) - d["eps"]), tol_eps_x0)
    np.testing.assert_array_less(np.abs(np.asarray(v_from_eps, np.float64) - d["v"]), tol_v)
    np.testing.assert_array_less(np.abs(np.asarray(x0_from_eps, np.float64) - d["x0"]), tol_x0)
    # Round trips: the first conversion's error, divided by alpha by the second, plus the second's own.
    np.testing.assert_array_less(np.abs(np.asarray(v_back, np.float64) - d["v"]), tol_eps_v / a + tol_v)
    np.testing.assert_array_less(np.abs(np.asarray(x0_back, np.float64) - d["x0"]), s * tol_eps_x0 / a + tol_x0)


def _steps():
    def langevin(*args, **kwargs):
        return sv.langevin_correct(*args, snr=0.16, step_rule="sigma", **kwargs)

    return {"step_pred": sv.step_pred, "ancestral": sv.ancestral, "reverse_diffusion": sv.reverse_diffusion,
            "langevin_sigma": langevin}


STATES = {
    "linear_reference": lambda pt: sv.set_timesteps(sv.create_state(prediction_type=pt), 40),
    "cosine_logsnr": lambda pt: cosine_state(pt, 16),
    "sd_leading": lambda pt: sv.set_timesteps(
        sv.create_state(schedule=schedules.from_diffusers("scaled_linear", 0.00085, 0.012), prediction_type=pt),
        16, spacing="leading", steps_offset=1),
}


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize("state_name", list(STATES))
def test_every_step_given_v_or_x0_equals_the_step_given_eps(state_name, prediction_type):
    r"""step(v- or x0-state, v or x0) = step(eps-state, eps) to rounding, in float32.

    Every step is affine in the noise prediction elementwise, out = A + C eps (the Langevin
    corrector with the "sigma" rule too), so the converted eps's error delta (bounded as in
    the conversion test) moves the output by |C| delta, with |C| = |out(1) - out(0)| from
    the step itself; the step's own roundings add 8 u (|out| + |x| + |C eps|).
    """
    u = unit_roundoff(np.float32)
    eps_state, other = STATES[state_name]("epsilon"), STATES[state_name](prediction_type)
    d = exact_data(eps_state)
    a, s = d["alpha"], d["sigma"]
    out_exact = d["v"] if prediction_type == "v_prediction" else d["x0"]
    if prediction_type == "v_prediction":
        delta = 8 * u * (a * np.abs(d["v"]) + s * np.abs(d["x"]) + np.abs(d["eps"]))
    else:
        delta = 8 * u * ((np.abs(d["x"]) + a * np.abs(d["x0"])) / s + np.abs(d["eps"]))
    x = jnp.asarray(d["x"], jnp.float32)
    t = jnp.asarray(d["t"], jnp.float32)
    z = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    for name, step in _steps().items():
        ref = step(eps_state, f32(d["eps"]), x, t, None, noise=z)
        got = step(other, f32(out_exact), x, t, None, noise=z)
        coeff = np.abs(np.asarray(step(eps_state, jnp.ones_like(x), x, t, None, noise=z).prev_sample, np.float64)
                       - np.asarray(step(eps_state, jnp.zeros_like(x), x, t, None, noise=z).prev_sample, np.float64))
        for field in ("prev_sample", "prev_sample_mean"):
            r, g = np.asarray(getattr(ref, field), np.float64), np.asarray(getattr(got, field), np.float64)
            tol = coeff * delta + 8 * u * (np.abs(r) + np.abs(d["x"]) + coeff * np.abs(d["eps"]))
            np.testing.assert_array_less(np.abs(g - r), tol, err_msg=f"{name} {field}")
    # the probability-flow velocity, likewise (affine in eps: C = |drift(1) - drift(0)|)
    ref = np.asarray(sv.probability_flow_drift(eps_state, f32(d["eps"]), x, t), np.float64)
    got = np.asarray(sv.probability_flow_drift(other, f32(out_exact), x, t), np.float64)
    coeff = np.abs(np.asarray(sv.probability_flow_drift(eps_state, jnp.ones_like(x), x, t), np.float64)
                   - np.asarray(sv.probability_flow_drift(eps_state, jnp.zeros_like(x), x, t), np.float64))
    tol = coeff * delta + 8 * u * (np.abs(ref) + coeff * (np.abs(d["x"]) + np.abs(d["eps"])))
    np.testing.assert_array_less(np.abs(got - ref), tol, err_msg="probability_flow_drift")


def test_the_conversion_is_not_a_no_op():
    """The comparison above can fail: a v-output given to an eps-state moves the step by far more."""
    state = cosine_state()
    d = exact_data(state)
    x, t = jnp.asarray(d["x"], jnp.float32), jnp.asarray(d["t"], jnp.float32)
    z = jnp.zeros_like(x)
    right = np.asarray(sv.step_pred(state, jnp.asarray(d["eps"], jnp.float32), x, t, None, noise=z).prev_sample)
    wrong = np.asarray(sv.step_pred(state, jnp.asarray(d["v"], jnp.float32), x, t, None, noise=z).prev_sample)
    assert np.max(np.abs(right - wrong)) > 1e-2
