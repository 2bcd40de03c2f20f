"""Single-step DPM-Solver on the grid's points (dpm_solver_singlestep, sde_dpm_solver_singlestep).

Parity with diffusers 0.42.1's DPMSolverSinglestepScheduler in float64 (tests/golden/singlestep.npz, by
tests/golden/make_singlestep_golden.py): each algorithm, solver type and order at 6 and 7 steps, and the
v-prediction, lower_order_final, sigma_min and Karras cases, loaded from their configs and sampled with no
method given (the SDE cases with sv's own per-sample noise, which the golden handed to diffusers). The
third-order steps' arithmetic is tested directly: exact for predictions quadratic in lambda, against
numerical quadrature of the exponential integrator; diffusers' SDE third-order heun term is not.
The orders of convergence are in tests/test_solvers.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from gaussian_model import label_gaussian_model

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "singlestep.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))
MU, S = 0.5, 0.8  # the golden's data: N(MU, S^2) in 3-D
RTOL = 1e-10


def exact_model(prediction_type):
    return label_gaussian_model(GOLDEN["alphas_cumprod"], prediction_type, S, MU)


def test_the_golden_covers_every_algorithm_type_and_order():
    assert len(CASES) == 34 and "diffusers 0.42.1" in list(GOLDEN["versions"])
    heads = {tuple(c.split("/")[:3]) for c in CASES}
    assert {(a, t, str(o)) for a in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++") for t in ("midpoint", "heun")
            for o in (1, 2, 3) if not (o == 1 and t == "heun")} <= heads


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.endswith("/7") else c for c in CASES])
def test_parity_with_diffusers(case, x64):
    fields = json.loads(str(GOLDEN[f"{case}/config"]))
    config = {"_class_name": "DPMSolverSinglestepScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "beta_end": 0.012, **fields}
    steps = int(case.split("/")[-1])
    state = sv.set_timesteps(sv.load_config(config), steps)
    labels = np.asarray(sv.model_time(state, state.timesteps))[:steps]  # (sigma_min: label 0 appended)
    np.testing.assert_array_equal(labels, GOLDEN[f"{case}/labels"])
    x = sv.sample_ode(state, exact_model(fields.get("prediction_type", "epsilon")), jax.random.key(int(GOLDEN["seed"])),
                      GOLDEN["x_T"].shape, dtype=jnp.float64)  # x_T and the SDE noise: sv's draws, as the golden's
    ref = GOLDEN[f"{case}/final"]
    assert float(np.max(np.abs(np.asarray(x) - ref)) / np.max(np.abs(ref))) <= RTOL


@pytest.mark.parametrize("steps, order, lower, final_zero, expected", [
    (6, 3, False, False, [1, 2, 3, 1, 2, 3]),
    (6, 3, True, False, [1, 2, 3, 1, 2, 1]),   # divisible: the last group cut to 1, 2, 1
    (7, 3, False, False, [1, 2, 3, 1, 2, 3, 1]),  # not divisible: lower_order_final forced on
    (8, 3, False, False, [1, 2, 3, 1, 2, 3, 1, 2]),
    (6, 2, True, False, [1, 2, 1, 2, 1, 1]),
    (5, 2, False, False, [1, 2, 1, 2, 1]),
    (6, 3, False, True, [1, 2, 3, 1, 2, 1]),   # to sigma = 0: forced on, and the last step first order
    (3, 2, False, True, [1, 2, 1]),
    (4, 1, False, True, [1, 1, 1, 1]),
])
def test_orders_are_diffusers_groups(steps, order, lower, final_zero, expected):
    """diffusers' get_order_list, its rules read off its source (see singlestep_orders)."""
    np.testing.assert_array_equal(sv.solvers.singlestep_orders(steps, order, lower, final_zero), expected)


def _quadratic_case():
    """Four grid points of SD's schedule (the group's start s_2, then s_1, s_0, and t), and predictions quadratic
    in lambda at the group's three points."""
    schedule = sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012)
    grid = sv.solvers.Grid.build(schedule, jnp.array([0.8, 0.62, 0.5, 0.35]))
    lam = np.asarray(grid.lam)
    coef = np.array([[0.3, -1.2], [0.7, 0.4], [-0.25, 0.15]])  # q(l) = a + b (l - l_s) + c (l - l_s)^2, 2 entries

    def q(l):
        u = np.asarray(l)[..., None] - lam[0]
        return coef[0] + coef[1] * u + coef[2] * u * u

    preds = tuple(jnp.asarray(q(lam[i]))[None] for i in (2, 1, 0))  # latest first
    return grid, lam, q, preds


def _integral(f, a, b, n=64):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    x = 0.5 * (b - a) * nodes + 0.5 * (b + a)
    return 0.5 * (b - a) * np.sum(weights[:, None] * f(x), axis=0)


def test_third_order_heun_is_exact_for_quadratic_predictions(x64):
    """The exponential integrators of Lu et al. (data, noise, SDE-DPM-Solver++ with z = 0): the order-3 heun step
    integrates a quadratic exactly (D_1 and D_2 from three points are exact for it). diffusers' SDE form, with
    the opposite sign of D_2's 1/2, misses by the size of that term."""
    grid, lam, q, preds = _quadratic_case()
    c = grid.coeffs(0, 3)
    x_s = jnp.asarray([[0.4, -0.9]])
    lams = (grid.lam[2], grid.lam[1], grid.lam[0])
    a_t, s_t, a_s, s_s = (float(v) for v in (c.alpha_t, c.sigma_t, c.alpha_s, c.sigma_s))
    h = lam[3] - lam[0]
    exact = {
        "data": s_t / s_s * np.asarray(x_s[0]) + s_t * _integral(lambda l: np.exp(l)[:, None] * q(l), lam[0], lam[3]),
        "noise": a_t / a_s * np.asarray(x_s[0]) - a_t * _integral(lambda l: np.exp(-l)[:, None] * q(l), lam[0],
                                                                  lam[3]),
        "sde": s_t / s_s * np.exp(-h) * np.asarray(x_s[0])
        + 2 * a_t * _integral(lambda l: np.exp(-2 * (lam[3] - l))[:, None] * q(l), lam[0], lam[3]),
    }
    got = {
        "data": sv.solvers.singlestep_dpm_step(x_s, preds, lams, c, 3, solver_type="heun"),
        "noise": sv.solvers.singlestep_dpm_step(x_s, preds, lams, c, 3, solver_type="heun", algorithm="dpmsolver"),
        "sde": sv.solvers.singlestep_dpm_step(x_s, preds, lams, c, 3, solver_type="heun", z=jnp.zeros((1, 2))),
    }
    for name in exact:
        np.testing.assert_allclose(np.asarray(got[name][0]), exact[name], rtol=1e-10, err_msg=name)
    theirs = sv.solvers.singlestep_dpm_step(x_s, preds, lams, c, 3, solver_type="heun", z=jnp.zeros((1, 2)),
                                            third_order="diffusers")
    assert np.max(np.abs(np.asarray(theirs[0]) - exact["sde"])) > 1e-3 * np.max(np.abs(exact["sde"]))


def test_sde_third_order_term_against_diffusers_sign(x64):
    """On the golden's case, the exact term and diffusers' differ far above float rounding (the golden holds
    diffusers'; the default is the exact one)."""
    case = "sde-dpmsolver++/heun/3/plain/6"
    fields = json.loads(str(GOLDEN[f"{case}/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": "DPMSolverSinglestepScheduler", "beta_schedule":
                                             "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, **fields}), 6)
    method, options = state.diffusers_config.solver_options()
    assert method == "sde_dpm_solver_singlestep" and options["third_order"] == "diffusers"
    x = sv.sample_ode(state, exact_model("epsilon"), jax.random.key(int(GOLDEN["seed"])), GOLDEN["x_T"].shape,
                      dtype=jnp.float64, method=method, **dict(options, third_order="taylor"))
    ref = GOLDEN[f"{case}/final"]
    assert float(np.max(np.abs(np.asarray(x) - ref)) / np.max(np.abs(ref))) > 1e-6


def test_options_are_checked():
    with pytest.raises(ValueError, match="thresholding acts on the data prediction"):
        sv.solvers.make("dpm_solver_singlestep", algorithm_type="dpmsolver", thresholding=True)
    with pytest.raises(ValueError, match="algorithm_type must be 'dpmsolver\\+\\+'"):
        sv.solvers.make("sde_dpm_solver_singlestep", algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="algorithm_type is an option of dpm_solver_singlestep"):
        sv.sample_ode(sv.set_timesteps(sv.create_state(), 5), lambda x, t: x, jax.random.key(0), (2, 2),
                      method="dpm_solver_pp", algorithm_type="dpmsolver")
    assert not sv.solvers.make("dpm_solver_singlestep", algorithm_type="dpmsolver").zero_snr_start
