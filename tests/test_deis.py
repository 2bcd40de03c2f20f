"""DEIS (Zhang & Chen 2023), multistep in log rho: the step's arithmetic and parity with diffusers.

Parity with diffusers 0.42.1's DEISMultistepScheduler in float64 (tests/golden/deis.npz, by
tests/golden/make_deis_golden.py): orders 1-3 at 6 and 16 steps (around diffusers' 15-step rule for the last
orders), lower_order_final off, "trailing" labels, a v-model and thresholding, each loaded from its config and
sampled with no method given. The step integrates a noise prediction polynomial in log rho exactly (tested
against quadrature). Its order of convergence is in tests/test_solvers.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from gaussian_model import label_gaussian_model

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "deis.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def exact_model(prediction_type, s, mu=0.5):
    """The golden's model at an integer label, on samples of shape (B, 3, 1)."""
    return label_gaussian_model(GOLDEN["alphas_cumprod"], prediction_type, s, mu)


def test_the_golden_covers_every_order():
    assert len(CASES) == 10 and "diffusers 0.42.1" in list(GOLDEN["versions"])
    assert {c.split("/")[1] for c in CASES} == {"1", "2", "3"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.endswith("/16") else c for c in CASES])
def test_parity_with_diffusers(case, x64):
    fields = json.loads(str(GOLDEN[f"{case}/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": "DEISMultistepScheduler", **SD, **fields}),
                             int(case.split("/")[-1]))
    labels = np.asarray(sv.model_time(state, state.timesteps))
    np.testing.assert_array_equal(labels, np.append(GOLDEN[f"{case}/labels"], 0))  # DEIS ends at label 0's sigma
    x_t = jnp.asarray(GOLDEN["x_T"])[..., None]
    model = exact_model(fields.get("prediction_type", "epsilon"), 2.0 if fields.get("thresholding") else 0.8)
    x = np.asarray(sv.sample_ode(state, model, jax.random.key(0), x_t.shape, x_init=x_t, dtype=jnp.float64))[..., 0]
    ref = GOLDEN[f"{case}/final"]
    assert float(np.max(np.abs(x - ref)) / np.max(np.abs(ref))) <= 1e-10


def test_step_integrates_a_quadratic_in_log_rho_exactly(x64):
    """x_t / alpha_t = x_s / alpha_s + int eps d(rho): with eps quadratic in log rho through the three points, the
    third-order step is that integral (Gauss-Legendre quadrature in rho); the second-order one is not."""
    grid = sv.solvers.Grid.build(sv.schedules.from_diffusers(**SD), jnp.array([0.9, 0.75, 0.6, 0.4]))
    lam = np.asarray(grid.lam)
    coef = np.array([[0.2, -0.7], [0.9, 0.3], [-0.4, 0.25]])

    def q(u):  # a noise prediction quadratic in u = log rho = -lambda
        v = np.asarray(u)[..., None] + lam[2]
        return coef[0] + coef[1] * v + coef[2] * v * v

    hist = sv.solvers.History.init(jnp.zeros((1, 2)))._replace(
        m1=jnp.asarray(q(-lam[1]))[None], m2=jnp.asarray(q(-lam[0]))[None], lam1=grid.lam[1], lam2=grid.lam[0])
    c = grid.coeffs(2, 3)
    x_s = jnp.asarray([[0.3, -0.8]])
    eps0 = jnp.asarray(q(-lam[2]))[None]
    nodes, weights = np.polynomial.legendre.leggauss(48)
    rho_s, rho_t = np.exp(-lam[2]), np.exp(-lam[3])
    rho = 0.5 * (rho_t - rho_s) * nodes + 0.5 * (rho_t + rho_s)
    integral = 0.5 * (rho_t - rho_s) * np.sum(weights[:, None] * q(np.log(rho)), axis=0)
    exact = float(c.alpha_t) * (np.asarray(x_s[0]) / float(c.alpha_s) + integral)
    np.testing.assert_allclose(np.asarray(sv.solvers.deis_step(x_s, eps0, hist, c, 3)[0]), exact, rtol=1e-11)
    assert not np.allclose(np.asarray(sv.solvers.deis_step(x_s, eps0, hist, c, 2)[0]), exact, rtol=1e-6)


def test_deis_refuses_what_it_cannot_serve():
    """Flow-matching sigmas are not a VP model's; a zero-terminal-SNR start needs a data-prediction solver (DEIS'
    first-order step is alpha_t / alpha_s x). (Its Karras, exponential and beta sigma grids are served:
    tests/test_sigma_grids.py.)"""
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        sv.load_config({"_class_name": "DEISMultistepScheduler", "use_flow_sigmas": True})
    zsnr = sv.create_state(schedule=sv.schedules.from_diffusers(**SD, rescale_betas_zero_snr=True),
                           prediction_type="v_prediction")
    with pytest.raises(ValueError, match="deis: the grid reaches t = 1"):
        sv.sample_ode(sv.set_timesteps(zsnr, 5, spacing="trailing"), lambda x, t: x, jax.random.key(0), (2, 2),
                      method="deis")


@pytest.mark.parametrize("lower_order_final", [False, True])
def test_dpm_solver_is_deis_in_exact_arithmetic_with_the_same_last_steps(lower_order_final, x64):
    """DEIS' Lagrange polynomial in log rho = -lambda through the last three noise predictions is DPM-Solver's
    Taylor polynomial in lambda with the full second-derivative term (its Newton form at lambda_0: d1 = f01 + h1
    f012, d2 = 2 f012), and both integrate it exactly against d rho = -e^-lambda d lambda: the two methods are one,
    step by step, given the same orders. With lower_order_final both lower the last two steps (diffusers' rule
    below 15 steps), so they agree with it on as without it (float64 rounding of 9 steps: 1e-12)."""
    state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers(**SD)), 10, spacing="logsnr")
    model = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2))
    x_t = jax.random.normal(jax.random.key(0), (6, 2), jnp.float64)
    kw = dict(x_init=x_t, dtype=jnp.float64, order=3, lower_order_final=lower_order_final)
    dpm = sv.sample_ode(state, model, None, x_t.shape, method="dpm_solver", **kw)
    deis = sv.sample_ode(state, model, None, x_t.shape, method="deis", final_sigmas_type="last", **kw)
    np.testing.assert_allclose(np.asarray(dpm), np.asarray(deis), rtol=1e-12, atol=1e-12)
    other = sv.sample_ode(state, model, None, x_t.shape, method="dpm_solver",
                          **dict(kw, lower_order_final=not lower_order_final))
    assert float(jnp.max(jnp.abs(other - dpm))) > 1e-6  # the option changes the last steps
