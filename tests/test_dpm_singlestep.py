"""Single-step DPM-Solver on the grid's points (dpm_solver_singlestep, sde_dpm_solver_singlestep).

Parity with diffusers 0.42.1's DPMSolverSinglestepScheduler in float64 (tests/golden/singlestep.npz, by
tests/golden/make_singlestep_golden.py): each algorithm, solver type and order at 6 and 7 steps, the
v-prediction, lower_order_final, sigma_min and Karras cases, and the sigma grids with final_sigmas_type="sigma_min"
(a zero-length last step inside the last order group, of order 1, 2 or 3), loaded from their configs and sampled
with no method given (the SDE cases with sv's own per-sample noise, which the golden handed to diffusers); the
order of each step against diffusers' order_list. The third-order steps' arithmetic is tested directly: exact for
predictions quadratic in lambda, against numerical quadrature of the exponential integrator; diffusers' SDE
third-order heun term is not. The zero-length step likewise: x itself in a group of order 1, and in a group of
order p the order-p step over the group's interval, exact for predictions of degree p - 1 (heun).
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
#: the sigma grids' sigma_min cases that run in the fast tier: diffusers' defaults (a last group of order 2) and
#: order 3 with the SDE's noise for the zero-length step (the others, and order 1, in the slow tier)
FAST_SIGMA_MIN = {"dpmsolver++/midpoint/2/exponential_sigmas_sigma_min/10",
                  "sde-dpmsolver++/midpoint/3/karras_sigmas_sigma_min/12"}
SIGMA_MIN_GRIDS = [c for c in CASES if "_sigmas_sigma_min" in c]


def exact_model(prediction_type):
    return label_gaussian_model(GOLDEN["alphas_cumprod"], prediction_type, S, MU)


def test_the_golden_covers_every_algorithm_type_and_order():
    assert len(CASES) == 49 and "diffusers 0.42.1" in list(GOLDEN["versions"])
    heads = {tuple(c.split("/")[:3]) for c in CASES}
    assert {(a, t, str(o)) for a in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++") for t in ("midpoint", "heun")
            for o in (1, 2, 3) if not (o == 1 and t == "heun")} <= heads
    # the zero-length last step of the sigma grids with sigma_min: in a last group of each order, for each algorithm
    # (order 1 in the data form: it is x itself in every form, test_zero_length_step_of_a_first_order_group)
    last = {(c.split("/")[0], int(GOLDEN[f"{c}/orders"][-1])) for c in SIGMA_MIN_GRIDS}
    assert {(a, o) for a in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++") for o in (2, 3)} | {("dpmsolver++", 1)} \
        <= last
    assert {c.split("/")[3].split("_sigma_min")[0] for c in SIGMA_MIN_GRIDS} == {
        "karras_sigmas", "exponential_sigmas", "beta_sigmas"}
    assert all(case in SIGMA_MIN_GRIDS for case in FAST_SIGMA_MIN)


def _slow(case):
    return case.endswith("/7") or (case in SIGMA_MIN_GRIDS and case not in FAST_SIGMA_MIN)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if _slow(c) else c for c in CASES])
def test_parity_with_diffusers(case, x64):
    """The config's solver: the model's labels exactly, each step's order as diffusers' order_list, the samples to
    1e-10. On a label grid, sigma_min appends label 0, where diffusers' last step goes; on a sigma grid, which ends
    there already, diffusers repeats the last sigma: a zero-length last step (final_sigmas_type="repeat"), one more
    network call, that ends the last order group."""
    fields = json.loads(str(GOLDEN[f"{case}/config"]))
    config = {"_class_name": "DPMSolverSinglestepScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "beta_end": 0.012, **fields}
    steps = int(case.split("/")[-1])
    state = sv.set_timesteps(sv.load_config(config), steps)
    labels = np.asarray(sv.model_time(state, state.timesteps))[:steps]  # (sigma_min: label 0 appended)
    np.testing.assert_array_equal(labels, GOLDEN[f"{case}/labels"])
    method, options = state.diffusers_config.solver_options()
    assert (options["final_sigmas_type"] == "repeat") == (case in SIGMA_MIN_GRIDS)
    solver = sv.solvers.make(method, **options)
    orders, theirs = np.asarray(solver.orders(state.timesteps.shape[0])), GOLDEN[f"{case}/orders"]
    assert len(orders) == solver.num_steps(state.timesteps.shape[0])
    np.testing.assert_array_equal(orders, theirs[: len(orders)])  # (to sigma = 0: the last, in finish, of order 1)
    assert solver.nfe(state.timesteps.shape[0]) == steps
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


def _polynomial_case(degree=2):
    """Four grid points of SD's schedule (a group's start s_2, then s_1, s_0, and t), and predictions of ``degree``
    in lambda (two entries); ``preds(points)``: their values at those grid points, the latest first."""
    schedule = sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012)
    grid = sv.solvers.Grid.build(schedule, jnp.array([0.8, 0.62, 0.5, 0.35]))
    lam = np.asarray(grid.lam)
    coef = np.array([[0.3, -1.2], [0.7, 0.4], [-0.25, 0.15]])[: degree + 1]  # q(l) = sum_i c_i (l - l_s)^i

    def q(l):
        u = np.asarray(l)[..., None] - lam[0]
        return sum(c * u**i for i, c in enumerate(coef))

    def preds(points):
        out = [jnp.asarray(q(lam[i]))[None] for i in reversed(points)]
        return tuple(out + [jnp.zeros_like(out[0])] * (3 - len(out)))

    return grid, lam, q, preds


def _integral(f, a, b, n=64):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    x = 0.5 * (b - a) * nodes + 0.5 * (b + a)
    return 0.5 * (b - a) * np.sum(weights[:, None] * f(x), axis=0)


def _exact(grid, lam, q, x_s, start, end):
    """The exact step of each form from grid point ``start`` to ``end`` for the prediction ``q`` (data, noise, and
    SDE-DPM-Solver++'s mean: z = 0), by quadrature (Lu et al. 2022a eq. 3.4, 2022b eq. 9 and app. B)."""
    c = grid.coeffs(start, end)
    a_t, s_t, a_s, s_s = (float(v) for v in (c.alpha_t, c.sigma_t, c.alpha_s, c.sigma_s))
    lo, hi, x = lam[start], lam[end], np.asarray(x_s[0])
    return {
        "data": s_t / s_s * x + s_t * _integral(lambda l: np.exp(l)[:, None] * q(l), lo, hi),
        "noise": a_t / a_s * x - a_t * _integral(lambda l: np.exp(-l)[:, None] * q(l), lo, hi),
        "sde": s_t / s_s * np.exp(lo - hi) * x + 2 * a_t * _integral(lambda l: np.exp(-2 * (hi - l))[:, None] * q(l),
                                                                     lo, hi),
    }


def _steps(x_s, preds, lams, c, order, **kw):
    """:func:`singlestep_dpm_step` in each form (the SDE's with z = 0)."""
    return {"data": sv.solvers.singlestep_dpm_step(x_s, preds, lams, c, order, **kw),
            "noise": sv.solvers.singlestep_dpm_step(x_s, preds, lams, c, order, algorithm="dpmsolver", **kw),
            "sde": sv.solvers.singlestep_dpm_step(x_s, preds, lams, c, order, z=jnp.zeros_like(x_s), **kw)}


X_S = np.array([[0.4, -0.9]])  # a group's start (jnp.asarray'd inside the tests, under x64)


def test_third_order_heun_is_exact_for_quadratic_predictions(x64):
    """The exponential integrators of Lu et al. (data, noise, SDE-DPM-Solver++ with z = 0): the order-3 heun step
    integrates a quadratic exactly (D_1 and D_2 from three points are exact for it). diffusers' SDE form, with
    the opposite sign of D_2's 1/2, misses by the size of that term."""
    grid, lam, q, preds = _polynomial_case()
    c, lams, x_s = grid.coeffs(0, 3), (grid.lam[2], grid.lam[1], grid.lam[0]), jnp.asarray(X_S)
    exact, got = _exact(grid, lam, q, x_s, 0, 3), _steps(x_s, preds([0, 1, 2]), lams, c, 3, solver_type="heun")
    for name in exact:
        np.testing.assert_allclose(np.asarray(got[name][0]), exact[name], rtol=1e-10, err_msg=name)
    theirs = sv.solvers.singlestep_dpm_step(x_s, preds([0, 1, 2]), lams, c, 3, solver_type="heun", z=jnp.zeros((1, 2)),
                                            third_order="diffusers")
    assert np.max(np.abs(np.asarray(theirs[0]) - exact["sde"])) > 1e-3 * np.max(np.abs(exact["sde"]))


def test_zero_length_step_of_a_first_order_group_leaves_x(x64):
    """diffusers' repeated last sigma in a group of order 1 (h = 0): e^{-h} - 1 = 0 and sigma_t / sigma_s = 1 leave x
    exactly, in each form, and the SDE's noise has the factor sqrt(1 - e^{-2h}) = 0 (bitwise: the terms are
    exact zeros)."""
    grid, _, _, preds = _polynomial_case()
    c, lams, x_s = grid.coeffs(2, 2), (grid.lam[2], grid.lam[1], grid.lam[0]), jnp.asarray(X_S)
    for name, x in _steps(x_s, preds([0, 1, 2]), lams, c, 1).items():
        np.testing.assert_array_equal(np.asarray(x), X_S, err_msg=name)
    noisy = sv.solvers.singlestep_dpm_step(x_s, preds([0, 1, 2]), lams, c, 1, z=jnp.asarray([[1.3, -0.7]]))
    np.testing.assert_array_equal(np.asarray(noisy), X_S)


@pytest.mark.parametrize("order", [2, 3])
def test_zero_length_step_ends_the_group_with_its_full_order(order, x64):
    """diffusers' repeated last sigma in a group of order p (points s_{p-1}, ..., s_0, then t = s_0): the group's
    step goes from its start s_{p-1} to s_0 again, h = lambda_{s_0} - lambda_{s_{p-1}} != 0 and r_0 = 1, now with
    the prediction at s_0 too. Nothing divides by zero, and the heun step integrates a prediction of degree p - 1
    exactly over [s_{p-1}, s_0] (its nodes include both ends), in each form."""
    grid, lam, q, preds = _polynomial_case(degree=order - 1)
    points = list(range(order))
    lams = tuple(grid.lam[i] for i in reversed(points)) + (grid.lam[0],) * (3 - order)
    c, x_s = grid.coeffs(0, order - 1), jnp.asarray(X_S)  # t = s_0: the group's last point
    exact, got = _exact(grid, lam, q, x_s, 0, order - 1), _steps(x_s, preds(points), lams, c, order, solver_type="heun")
    for name in exact:
        np.testing.assert_allclose(np.asarray(got[name][0]), exact[name], rtol=1e-10, err_msg=name)


def test_zero_length_step_of_a_second_order_midpoint_group(x64):
    """Order 2, midpoint, data form: the group took x to s_0 by the first-order step from s_1 (m_1 its prediction),
    x_{s_0} = (sigma_{s_0}/sigma_{s_1}) x_{s_1} - alpha_{s_0} phi m_1 with phi = e^{-h} - 1; the zero-length step
    redoes that interval with D_1 = (m_0 - m_1) / r_0, r_0 = 1, so it adds -alpha_{s_0} phi (m_0 - m_1) / 2."""
    grid, lam, _, preds = _polynomial_case(degree=1)
    (m0, m1, _) = preds([0, 1])
    c = grid.coeffs(0, 1)
    lams = (grid.lam[1], grid.lam[0], grid.lam[0])
    x_s = jnp.asarray(X_S)
    first = sv.solvers.singlestep_dpm_step(x_s, (m1, m0, m0), lams, c, 1)  # order 1: its prediction is m_0's slot
    again = sv.solvers.singlestep_dpm_step(x_s, (m0, m1, m1), lams, c, 2)
    phi = np.expm1(-(lam[1] - lam[0]))
    np.testing.assert_allclose(np.asarray(again - first), -0.5 * float(c.alpha_t) * phi * np.asarray(m0 - m1),
                               rtol=1e-12)


@pytest.mark.slow  # two compiled runs
def test_the_loop_ends_the_last_group_with_the_zero_length_step(x64):
    """final_sigmas_type="repeat" on three grid points, order 3, lower_order_final=False: diffusers' groups over the
    three steps (two intervals and the zero-length one) are [1, 2, 3], so the run's last step is the order-3 step
    over the whole grid with the three predictions. For a data prediction quadratic in lambda (whatever x: the
    model's eps = (x - alpha q(lambda)) / sigma), heun then gives the exact solution of the ODE, with one network
    call more than 'last', which ends with the order-2 step and misses it (by more than 1e-4 relative)."""
    state = sv.set_timesteps(sv.create_state(), 3)
    schedule = state.schedule
    lam = np.asarray(schedule.log_snr(state.timesteps.astype(jnp.float64)))
    coef = np.array([[0.3, -1.2], [0.7, 0.4], [-0.25, 0.15]])[:, None, :]  # (3, 1, 2)

    def q(l):  # (n, 1) -> (n, 2), NumPy or JAX
        u = l - lam[0]
        return coef[0] + coef[1] * u + coef[2] * u * u

    def model(x, t):
        t = jnp.broadcast_to(t, x.shape[:1])[:, None]
        return (x - schedule.alpha(t) * q(schedule.log_snr(t))) / schedule.sigma(t)

    x_init = jnp.asarray([[0.4, -0.9]])
    opts = dict(method="dpm_solver_singlestep", solver_type="heun", lower_order_final=False, x_init=x_init,
                dtype=jnp.float64, return_info=True)
    x, info = sv.sample_ode(state, model, None, (1, 2), order=3, final_sigmas_type="repeat", **opts)
    s0, s2 = (float(schedule.sigma(state.timesteps[i].astype(jnp.float64))) for i in (0, 2))
    exact = s2 / s0 * np.asarray(x_init[0]) + s2 * _integral(lambda l: np.exp(l)[:, None] * q(l[:, None]), lam[0],
                                                             lam[2])
    assert info.nfe == 3
    np.testing.assert_allclose(np.asarray(x[0]), exact, rtol=1e-10)
    last, info = sv.sample_ode(state, model, None, (1, 2), order=3, final_sigmas_type="last", **opts)
    assert info.nfe == 2 and np.max(np.abs(np.asarray(last[0]) - exact)) > 1e-4 * np.max(np.abs(exact))


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


def test_begin_index_keeps_the_whole_grids_groups_lowered_to_the_predictions_made(x64):
    """Started at grid point b, step k has the predictions of points b..k: its group's order is lowered to
    k - b + 1 where that is less (diffusers' ``while model_outputs[-order] is None: order -= 1``), the groups
    otherwise the whole grid's. The first step from b is then first order, DDIM's step (DPM-Solver++(1) is DDIM)."""
    solver = sv.solvers.make("dpm_solver_singlestep", order=3, final_sigmas_type="last")
    full = np.asarray(solver.orders(11))
    started = np.asarray(solver.replace(begin_index=4).orders(11))
    np.testing.assert_array_equal(started[4:], np.minimum(full[4:], np.arange(4, 10) - 4 + 1))
    assert started[4] == 1 and full[4] > 1  # a group entered midway
    state = sv.set_timesteps(sv.create_state(), 10, spacing="logsnr")
    x = jnp.asarray([[0.4, -1.3], [2.0, 0.1]], jnp.float64)

    def model(x, t):
        return 0.3 * x + 0.1

    one = sv.sample_ode(state, model, None, x.shape, x_init=x, dtype=jnp.float64, method="dpm_solver_singlestep",
                        order=3, final_sigmas_type="last", begin_index=8)
    ddim = sv.sample_ode(state.replace(timesteps=state.timesteps[8:]), model, None, x.shape, x_init=x,
                         dtype=jnp.float64, method="ddim", final_sigmas_type="last")
    np.testing.assert_allclose(np.asarray(one), np.asarray(ddim), rtol=1e-12)
