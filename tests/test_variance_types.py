"""DDPM's reverse variances (``variance_type``) and learned-variance models (2C channels).

Parity with diffusers 0.42.1's DDPMScheduler loop for each variance type in float64
(tests/golden/variance.npz, by tests/golden/make_variance_golden.py); the statistics of a
learned-variance model whose variance half is the exact one; the ε half alone reaching the
deterministic solvers.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "variance.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))
MU, S = 0.3, 0.5  # the golden's data: N(MU, S^2) in 3-D
RTOL = 1e-10


def betas() -> np.ndarray:
    return np.linspace(1e-4, 0.02, 1000)


def exact_model(variance_type):
    """The golden's model at a training label: the exact noise prediction, then its variance half where learned."""
    beta = jnp.asarray(betas())
    acp = jnp.cumprod(1.0 - beta)

    def fn(x, label):
        n = jnp.round(label).astype(jnp.int32)
        a2 = acp[n][:, None]
        a, sigma = jnp.sqrt(a2), jnp.sqrt(1.0 - a2)
        eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
        if variance_type == "learned_range":
            return jnp.concatenate([eps, jnp.tanh(x) / 2], axis=1)
        if variance_type == "learned":
            return jnp.concatenate([eps, (1 + jnp.tanh(x) ** 2) * beta[n][:, None] / 2], axis=1)
        return eps

    return fn


def ddpm_state(variance_type, labels=None, steps=10):
    state = sv.load_config({"_class_name": "DDPMScheduler", "variance_type": variance_type, "clip_sample": False})
    if labels is None:
        return sv.set_timesteps(state, steps)
    return sv.set_timesteps(state, timesteps=sv.time_from_model_time(state, labels.astype(np.float64)))


def run_case(variance_type, steps):
    key = f"{variance_type}/{steps}"
    state = ddpm_state(variance_type, GOLDEN[f"{key}/labels"])
    fn = exact_model(variance_type)
    x, times = jnp.asarray(GOLDEN["x_T"]), np.asarray(state.timesteps)
    targets = np.concatenate([times[1:], [0.0]])
    for t, t_next, z in zip(times, targets, GOLDEN[f"{key}/noise"]):
        t_vec = jnp.full((x.shape[0],), t)
        step = sv.ancestral(state, fn(x, sv.model_time(state, t_vec)), x, t_vec, None, noise=jnp.asarray(z),
                            t_next=jnp.full((x.shape[0],), t_next))
        x = step.prev_sample if t_next > 0 else step.prev_sample_mean  # diffusers adds no noise at label 0
    return np.asarray(x)


def rel_err(x, ref):
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


def test_the_golden_covers_every_variance_type_and_they_differ():
    kinds = {c.split("/")[0] for c in CASES}
    assert kinds == {"fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"}
    assert "diffusers 0.42.1" in list(GOLDEN["versions"])
    for steps in ("10", "50"):
        finals = {k: GOLDEN[f"{k}/{steps}/final"] for k in ("fixed_small", "fixed_large", "learned", "learned_range")}
        for a in finals:
            for b in finals:
                assert a == b or rel_err(finals[a], finals[b]) > 1e-3, (a, b, steps)


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("fixed_large_log")])
def test_ddpm_variance_parity_with_diffusers(case, x64):
    variance_type, steps = case.split("/")
    with jax.disable_jit():  # op by op: cheaper here than compiling each case
        got = run_case(variance_type, int(steps))
    assert rel_err(got, GOLDEN[f"{case}/final"]) <= RTOL, rel_err(got, GOLDEN[f"{case}/final"])


@pytest.mark.parametrize("steps", [10, 50])
def test_fixed_large_log_is_fixed_large_where_diffusers_returns_nan(steps, x64):
    """diffusers takes the square root of log(beta) < 0 (NaN); the variance is exp(log beta) = beta."""
    assert np.all(np.isnan(GOLDEN[f"fixed_large_log/{steps}/final"]))
    with jax.disable_jit():
        got = run_case("fixed_large_log", steps)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, run_case("fixed_large", steps))
    assert rel_err(got, GOLDEN[f"fixed_large/{steps}/final"]) <= RTOL


def test_deterministic_solvers_use_the_prediction_half(x64):
    """A learned-variance model's samples by a deterministic solver are those of its ε half alone (bitwise)."""
    x_t = jnp.asarray(GOLDEN["x_T"])
    for method in ("ddim", "dpm_solver_pp", "unipc", "heun"):
        learned = sv.sample_ode(ddpm_state("learned_range"), exact_model("learned_range"), jax.random.key(0),
                                x_t.shape, method=method, x_init=x_t, dtype=jnp.float64)
        plain = sv.sample_ode(ddpm_state("fixed_small"), exact_model("fixed_small"), jax.random.key(0),
                              x_t.shape, method=method, x_init=x_t, dtype=jnp.float64)
        np.testing.assert_array_equal(np.asarray(learned), np.asarray(plain), err_msg=method)


def test_a_learned_variance_config_needs_twice_the_channels():
    state = ddpm_state("learned_range")
    with pytest.raises(ValueError, match=r"twice x's channels along axis 1.*variance_type is learned"):
        sv.sample(state, exact_model("fixed_small"), jax.random.key(0), (4, 3), predictor="ancestral")
    with pytest.raises(ValueError, match=r"model_output must have shape \(4, 6\)"):
        sv.ancestral(state, jnp.zeros((4, 3)), jnp.zeros((4, 3)), state.timesteps[0], jax.random.key(0))
    with pytest.raises(ValueError, match=r"x must have a channel axis.*got \(4,\)"):
        sv.ancestral(state, jnp.zeros((4,)), jnp.zeros((4,)), state.timesteps[0], jax.random.key(0))
    # a DPMSolverMultistep config's learned variance: its solvers take the first half
    dpm = sv.set_timesteps(sv.load_config({"_class_name": "DPMSolverMultistepScheduler",
                                           "variance_type": "learned_range"}), 10)
    x = sv.sample_ode(dpm, exact_model("learned_range"), jax.random.key(0), (4, 3), method="dpm_solver_pp")
    assert x.shape == (4, 3) and np.all(np.isfinite(np.asarray(x)))


def _exact_learned_range_model():
    """A learned_range model of N(MU, S^2) data whose variance half gives the exact reverse variance.

    The reverse transition of Gaussian data is Gaussian (Bao et al. 2022, Analytic-DPM): from x at
    (a, sigma) to (a', sigma'), with V = a^2 S^2 + sigma^2 and V' = a'^2 S^2 + sigma'^2 the marginal
    variances and x = (a/a') x' + noise, Var(x' | x) = V' - (a/a')^2 V'^2 / V. Its mean is DDPM's posterior
    mean with the exact noise prediction. learned_range interpolates log beta_i and log beta~_i with the
    weight f = (v + 1)/2: v = 2 (log Var - log beta~)/(log beta - log beta~) - 1. The model needs the next
    label, which it takes from the 50-step leading grid it is sampled on.
    """
    state = ddpm_state("learned_range", steps=50)
    labels = np.asarray(sv.model_time(state, state.timesteps), np.float64)
    acp = np.cumprod(1.0 - betas())
    next_a2 = {int(round(n)): (acp[int(round(m))] if m is not None else 1.0)
               for n, m in zip(labels, list(labels[1:]) + [None])}
    table_next = jnp.asarray([next_a2.get(n, 1.0) for n in range(1000)])
    table = jnp.asarray(acp)

    def fn(x, label):
        n = jnp.round(label).astype(jnp.int32)
        a2, a2n = table[n][:, None], table_next[n][:, None]
        sigma2, sigma2n = 1.0 - a2, 1.0 - a2n
        eps = jnp.sqrt(sigma2) * (x - jnp.sqrt(a2) * MU) / (a2 * S * S + sigma2)
        beta = 1.0 - a2 / a2n
        small = jnp.maximum(beta * sigma2n / sigma2, 1e-20)
        v_big, v_next = a2 * S * S + sigma2, a2n * S * S + sigma2n
        exact = v_next - (a2 / a2n) * v_next * v_next / v_big
        v = 2.0 * (jnp.log(exact) - jnp.log(small)) / (jnp.log(beta) - jnp.log(small)) - 1.0
        return jnp.concatenate([eps, jnp.broadcast_to(v, eps.shape)], axis=1)

    return state, fn


@pytest.mark.slow
def test_a_learned_range_model_with_the_exact_variance_samples_the_data():
    """20,000 samples of 3-D N(0.3, 0.25) by the ancestral chain with the exact learned variance: each
    coordinate's mean within 5 SE (SE = S/sqrt(n) = 3.5e-3) and variance within 5 SE (SE = S^2 sqrt(2/n) =
    2.5e-3) of the data's; the same model with its halves swapped is far off."""
    state, fn = _exact_learned_range_model()
    n = 20_000
    x = np.asarray(sv.sample(state, fn, jax.random.key(3), (n, 3), predictor="ancestral"), np.float64)
    se_mean, se_var = S / np.sqrt(n), S * S * np.sqrt(2.0 / n)
    assert np.all(np.abs(x.mean(axis=0) - MU) < 5 * se_mean), x.mean(axis=0)
    assert np.all(np.abs(x.var(axis=0) - S * S) < 5 * se_var), x.var(axis=0)

    def swapped(x, t):
        out = fn(x, t)
        return jnp.concatenate([out[:, 3:], out[:, :3]], axis=1)

    y = np.asarray(sv.sample(state, swapped, jax.random.key(3), (n, 3), predictor="ancestral"), np.float64)
    # the test tells variances apart: DDPM's default fixed_small with the same mean draws a variance of about
    # 0.196 (measured), over 20 SE below the data's
    small = ddpm_state("fixed_small", steps=50)
    z = np.asarray(sv.sample(small, exact_model("fixed_small"), jax.random.key(3), (n, 3), predictor="ancestral"))
    assert np.all(np.abs(z.var(axis=0) - S * S) > 5 * se_var), z.var(axis=0)
    # (the swapped variance half is the noise prediction, outside learned_range's (-1, 1): the chain diverges)
    far = ~np.isfinite(y.mean(axis=0)) | (np.abs(y.mean(axis=0) - MU) > 5 * se_mean) | (np.abs(y.var(axis=0) - S * S) > 5 * se_var)
    assert np.any(far), (y.mean(axis=0), y.var(axis=0))
