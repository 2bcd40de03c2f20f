"""SA-Solver (Xue et al. 2023), the stochastic Adams predictor-corrector: parity, the steps' arithmetic, options.

Parity with diffusers 0.42.1's SASolverScheduler in float64 (tests/golden/sasolver.npz, by
tests/golden/make_sasolver_golden.py): predictor / corrector orders (1, 1) to (4, 4) and (3, 2) at 8 steps with
diffusers' default tau function and with tau = 0, (3, 4) at 20 steps, both ends of the default tau interval
(5 steps), the noise-prediction form, tau everywhere, a v-model, lower_order_final off, trailing and leading
labels, thresholding and lambda_min_clipped, each loaded from its config and sampled with no method given (sv's
own per-sample noise, which the golden handed to diffusers). The steps' arithmetic is tested directly: both
steps integrate a prediction polynomial in lambda of the order's degree exactly (against quadrature), order 1 is
DDIM with tau = 0 and SDE-DPM-Solver++(1) with tau = 1, and diffusers' order-2 terms differ from the exact
integrals by their stated amount. The orders of convergence (tau = 0) are in tests/test_solvers.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from gaussian_model import label_gaussian_model
from sdevp_jax import solvers

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "sasolver.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
# the golden's tau functions as options: diffusers' default (the config's), lambda t: 0 and lambda t: 1
TAUS = {"default": {}, "zero": {"tau": 0.0}, "all": {"tau_t_min": 0.0, "tau_t_max": 1.0}}
RTOL = 1e-10


def exact_model(prediction_type, s, mu=0.5):
    """The golden's model at an integer label, on samples of shape (B, 3, 1)."""
    return label_gaussian_model(GOLDEN["alphas_cumprod"], prediction_type, s, mu)


def _golden_state(case):
    fields = json.loads(str(GOLDEN[f"{case}/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": "SASolverScheduler", **SD, **fields}),
                             int(case.split("/")[-1]))
    return state, fields


def _run(case, **options):
    state, fields = _golden_state(case)
    model = exact_model(fields.get("prediction_type", "epsilon"), 2.0 if fields.get("thresholding") else 0.8)
    return np.asarray(sv.sample_ode(state, model, jax.random.key(int(GOLDEN["seed"])), GOLDEN["x_T"].shape,
                                    dtype=jnp.float64, **options))


def _relative(x, ref):
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


def test_the_golden_covers_every_order_and_both_forms():
    assert len(CASES) == 36 and "diffusers 0.42.1" in list(GOLDEN["versions"])
    assert {c.split("/")[3] for c in CASES} >= {"karras_sigmas", "exponential_sigmas", "beta_sigmas"}
    orders = {c.split("/")[1] for c in CASES if c.startswith("data_prediction")}
    assert {"11", "22", "33", "44", "32", "34"} <= orders
    assert {c.split("/")[0] for c in CASES} == {"data_prediction", "noise_prediction"}
    assert {c.split("/")[2] for c in CASES} == set(TAUS)


#: the default orders and tau, on its labels and on the Karras sigma grid; the rest in the slow tier
FAST = ("data_prediction/22/default/plain/8", "data_prediction/22/default/karras_sigmas/8")


@pytest.mark.parametrize("case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_parity_with_diffusers(case, x64):
    state, _ = _golden_state(case)
    labels = np.asarray(sv.model_time(state, state.timesteps))
    if "sigmas" in case:  # a sigma grid ends at label 0's sigma (then a zero-length step there)
        np.testing.assert_array_equal(labels, GOLDEN[f"{case}/labels"])
        assert state.diffusers_config.solver_options()[1]["final_sigmas_type"] == "repeat"
    else:  # a label grid gets label 0 appended: it ends at label 0's sigma
        np.testing.assert_array_equal(labels, np.append(GOLDEN[f"{case}/labels"], 0))
    x = _run(case, **TAUS[case.split("/")[2]])  # x_T and the noise: sv's draws, as the golden's
    assert _relative(x, GOLDEN[f"{case}/final"]) <= RTOL


@pytest.mark.slow
def test_tau_interval_ends_are_diffusers_labels(x64):
    """At 5 steps the labels are 999, 799, 599, 400, 200: diffusers' tau_func is 1 at 799 and at 200 (its interval
    is closed). The config's interval [201/N, 801/N] keeps both; moving either end past its label changes the run
    far above rounding."""
    case = "data_prediction/22/default/plain/5"
    np.testing.assert_array_equal(GOLDEN[f"{case}/labels"], [999, 799, 599, 400, 200])
    state, _ = _golden_state(case)
    method, options = state.diffusers_config.solver_options()
    assert method == "sa_solver" and options["tau_t_min"] == 0.201 and options["tau_t_max"] == 0.801
    ref = GOLDEN[f"{case}/final"]
    assert _relative(_run(case, tau_t_min=0.2011), ref) > 1e-6  # label 200 (t = 0.201) left out
    assert _relative(_run(case, tau_t_max=0.7999), ref) > 1e-6  # label 799 (t = 0.8) left out


@pytest.mark.slow
def test_the_paper_second_order_differs_from_diffusers(x64):
    """With a method given the defaults are the paper's exact integrals: on the golden's (2, 2) case they differ
    from diffusers' order-2 terms far above rounding (the config's solver reproduces diffusers, above)."""
    case = "data_prediction/22/zero/plain/8"
    state, _ = _golden_state(case)
    method, options = state.diffusers_config.solver_options()
    assert options["second_order"] == "diffusers"
    x = _run(case, **dict(options, tau=0.0, second_order="lagrange", method=method))
    assert _relative(x, GOLDEN[f"{case}/final"]) > 1e-4


def test_default_config_loads_and_saves_back():
    """diffusers' save_config of a default SASolverScheduler: load -> save gives it back; its solver."""
    saved = json.loads(str(GOLDEN["default_config"]))
    state = sv.load_config(saved)
    assert sv.config.discrete_config_dict(state.diffusers_config) == saved
    method, options = state.diffusers_config.solver_options()
    assert method == "sa_solver" and options == {
        "predictor_order": 2, "corrector_order": 2, "algorithm_type": "data_prediction", "lower_order_final": True,
        "final_sigmas_type": "last", "tau": 1.0, "tau_t_min": 201 / 1000, "tau_t_max": 801 / 1000,
        "second_order": "diffusers"}


# ------------------------------------------------------------------------------------------- the steps themselves

def _case():
    """Six points of SD's schedule and predictions polynomial in lambda (2 entries)."""
    grid = solvers.Grid.build(sv.schedules.from_diffusers(**SD), jnp.array([0.9, 0.8, 0.66, 0.5, 0.38, 0.3]))
    lam = np.asarray(grid.lam)
    coef = np.random.default_rng(0).normal(size=(5, 2))

    def q(l, degree):
        u = np.asarray(l)[..., None] - lam[3]
        return sum(coef[i] * u**i for i in range(degree + 1))

    return grid, lam, q


def _quad(f, a, b, n=64):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    x = 0.5 * (b - a) * nodes + 0.5 * (b + a)
    return 0.5 * (b - a) * np.sum(weights[:, None] * f(x), axis=0)


def _exact_step(grid, lam, f, s, t, x_s, tau, algorithm):
    """The variance-controlled SDE's step from point s to t with the prediction f(lambda) and no noise (the module
    docstring's two integrals, by Gauss-Legendre quadrature)."""
    c = grid.coeffs(s, t)
    a_t, s_t, a_s, s_s = (float(v) for v in (c.alpha_t, c.sigma_t, c.alpha_s, c.sigma_s))
    r, h = 1.0 + tau * tau, lam[t] - lam[s]
    if algorithm == "data_prediction":
        return (s_t / s_s * np.exp(-tau * tau * h) * x_s
                + r * a_t * _quad(lambda l: np.exp(-r * (lam[t] - l))[:, None] * f(l), lam[s], lam[t]))
    return a_t / a_s * x_s - r * a_t * _quad(lambda l: np.exp(-l)[:, None] * f(l), lam[s], lam[t])


@pytest.mark.parametrize("algorithm", ["data_prediction", "noise_prediction"])
@pytest.mark.parametrize("tau", [0.0, 0.7])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_steps_integrate_a_polynomial_of_their_degree_exactly(x64, algorithm, tau, order):
    """The predictor of order p from point 3 to 4 (nodes 3, 2, 1, 0) and the corrector of order p redoing the step
    from 2 to 3 (nodes 3, 2, 1, 0) are exact for a prediction of degree p - 1 in lambda; one degree more is not."""
    grid, lam, q = _case()
    x_s = np.array([0.4, -0.9])
    for degree, exact_expected in ((order - 1, True), (order, False)):
        hist = solvers.History.init(jnp.zeros((1, 2)))
        for i in (0, 1, 2):
            hist = hist.push(jnp.asarray(q(lam[i], degree))[None], grid.lam[i], jnp.zeros((1, 2)), 1)
        pred3 = jnp.asarray(q(lam[3], degree))[None]
        kw = dict(algorithm_type=algorithm)
        predicted = solvers.sa_predict(jnp.asarray(x_s)[None], pred3, hist, grid.coeffs(3, 4), order, tau, None, **kw)
        corrected = solvers.sa_correct(jnp.asarray(x_s)[None], pred3, hist, grid.coeffs(2, 3), order, tau, None, **kw)
        for got, (s, t) in ((predicted, (3, 4)), (corrected, (2, 3))):
            exact = _exact_step(grid, lam, lambda l: q(l, degree), s, t, x_s, tau, algorithm)
            error = np.max(np.abs(np.asarray(got[0]) - exact)) / np.max(np.abs(exact))
            assert (error < 1e-12) if exact_expected else (error > 1e-6), (degree, s, t, error)


def test_order_one_is_ddim_and_sde_dpm_solver_pp(x64):
    """tau = 0: DPM-Solver++(1), which is DDIM (eta = 0); tau = 1: SDE-DPM-Solver++(1) with the same draw."""
    grid, lam, q = _case()
    c = grid.coeffs(1, 3)
    x = jnp.asarray([[0.4, -0.9]])
    d0 = jnp.asarray(q(lam[1], 2))[None]
    hist = solvers.History.init(x)
    z = jax.random.normal(jax.random.key(1), (1, 2), jnp.float64)
    eps = (x - c.alpha_s * d0) / c.sigma_s
    np.testing.assert_allclose(solvers.sa_predict(x, d0, hist, c, 1, 0.0, None),
                               solvers.ddim_step(x, d0, eps, c, 0.0, None), rtol=1e-13)
    np.testing.assert_allclose(solvers.sa_predict(x, d0, hist, c, 1, 1.0, z),
                               solvers.sde_dpmpp_step(x, d0, hist, c, 1, z), rtol=1e-13)
    # the noise form with tau = 0 and order 1 is the same DDIM step
    np.testing.assert_allclose(solvers.sa_predict(x, eps, hist, c, 1, 0.0, None, algorithm_type="noise_prediction"),
                               solvers.ddim_step(x, d0, eps, c, 0.0, None), rtol=1e-13)


def test_noise_term_has_the_sdes_variance(x64):
    """The draw enters as sigma_t sqrt(1 - e^{-2 tau^2 h}) xi (data) and tau sigma_t sqrt(e^{2h} - 1) xi (noise):
    the step is affine in xi with those slopes."""
    grid, lam, q = _case()
    c = grid.coeffs(2, 3)
    x, d0, one = jnp.asarray([[0.4, -0.9]]), jnp.asarray(q(lam[2], 0))[None], jnp.ones((1, 2))
    hist = solvers.History.init(x)
    h, tau = lam[3] - lam[2], 0.6
    for algorithm, slope in (("data_prediction", float(c.sigma_t) * np.sqrt(1 - np.exp(-2 * tau * tau * h))),
                             ("noise_prediction", tau * float(c.sigma_t) * np.sqrt(np.expm1(2 * h)))):
        kw = dict(algorithm_type=algorithm)
        diff = solvers.sa_predict(x, d0, hist, c, 1, tau, one, **kw) - solvers.sa_predict(x, d0, hist, c, 1, tau,
                                                                                            None, **kw)
        np.testing.assert_allclose(np.asarray(diff), slope, rtol=1e-13)


def test_diffusers_second_order_terms(x64):
    """diffusers' order-2 predictor adds r alpha_t h^2 (1/2 - g(rh)) (D0 - D1) / (lambda_s - lambda_1) to the
    Lagrange step, its corrector r alpha_t h (1/2 - g(rh)) (D_t - D0), g(z) = (z - 1 + e^{-z}) / z^2 (its code's
    increments of the coefficients, written in h); at order 3 both variants are the same step."""
    grid, lam, q = _case()
    x = jnp.asarray([[0.4, -0.9]])
    hist = solvers.History.init(x)
    for i in (0, 1, 2):
        hist = hist.push(jnp.asarray(q(lam[i], 2))[None], grid.lam[i], x, 1)
    pred = jnp.asarray(q(lam[3], 2))[None]
    tau = 0.8
    r = 1 + tau * tau
    for s, t, step, d_new, d_old, denom in ((3, 4, solvers.sa_predict, pred, hist.m1, lam[3] - lam[2]),
                                            (2, 3, solvers.sa_correct, pred, hist.m1, None)):
        c = grid.coeffs(s, t)
        h = lam[t] - lam[s]
        z = r * h
        g = (z - 1 + np.exp(-z)) / z**2
        added = r * float(c.alpha_t) * h * (0.5 - g) * (h / denom if denom is not None else 1.0)
        theirs = step(x, pred, hist, c, 2, tau, None, second_order="diffusers")
        ours = step(x, pred, hist, c, 2, tau, None)
        np.testing.assert_allclose(np.asarray(theirs - ours), added * np.asarray(d_new - d_old), rtol=1e-9)
        np.testing.assert_array_equal(step(x, pred, hist, c, 3, tau, None, second_order="diffusers"),
                                      step(x, pred, hist, c, 3, tau, None))


def test_diffusers_second_order_with_tau_zero_is_unipc_bh1(x64):
    """With tau = 0 diffusers' order-2 predictor is UniPC's bh1 order-2 predictor (B(h) = -h, rho = 1/2) and its
    order-2 corrector is UniC bh1 of order 1: the same step to rounding."""
    grid = solvers.Grid.build(sv.schedules.linear(), jnp.array([0.9, 0.7, 0.5, 0.3]))
    x, d0, d1, d_t = (jnp.asarray(v) for v in ([[0.4, -0.9]], [[0.3, 0.1]], [[-0.2, 0.5]], [[0.7, -0.4]]))
    hist = solvers.History.init(x).push(d1, grid.lam[1], x, 1)
    c = grid.coeffs(2, 3)
    np.testing.assert_allclose(solvers.sa_predict(x, d0, hist, c, 2, 0.0, None, second_order="diffusers"),
                               solvers.unipc_predict(x, d0, hist, c, 2, variant="bh1"), rtol=1e-13)
    after = hist.push(d0, grid.lam[2], x, 1)
    before = solvers.History(after.m2, after.m3, after.m3, after.lam2, after.lam3, after.lam3, x, 1)
    np.testing.assert_allclose(solvers.sa_correct(x, d_t, after, c, 2, 0.0, None, second_order="diffusers"),
                               solvers.unipc_correct(x, d0, before, c, d_t, 1, variant="bh1"), rtol=1e-13)


def test_weights_are_accurate_across_the_series_switch(x64):
    """psi_k(z) by its series below |z| = 1 and by the recursion above agree with quadrature on both sides of the
    switch and for small steps (where the closed form alone loses digits), in both directions of z."""
    nodes = [jnp.array(v) for v in (0.0, 1.0, 2.3, 3.1)]
    for z in (1e-6, 0.3, 0.999999, 1.000001, 4.0, 25.0, -0.5, -1.000001, -3.0):
        got = solvers.sa_weights(nodes, jnp.array(z), 4)
        for j in range(4):
            def basis(v, j=j):
                out = np.ones_like(v)
                for m in range(4):
                    if m != j:
                        out = out * (v - float(nodes[m])) / (float(nodes[j]) - float(nodes[m]))
                return out[:, None]
            exact = _quad(lambda v: np.exp(-z * v)[:, None] * basis(v), 0.0, 1.0)[0]
            np.testing.assert_allclose(float(got[j]), exact, rtol=1e-12, atol=1e-15, err_msg=f"z={z} j={j}")


def test_order_tables():
    """Predictor: min(p, k + 1) and min(p, N - k); corrector of step k: min(c, k + 2) and min(c, N - k + 1)."""
    solver = solvers.make("sa_solver", predictor_order=3, corrector_order=4, final_sigmas_type="last")
    np.testing.assert_array_equal(solver.orders(8), [1, 2, 3, 3, 3, 2, 1])
    np.testing.assert_array_equal(solver.corrector_orders(8), [2, 3, 4, 4, 4, 3, 2])
    flat = solvers.make("sa_solver", predictor_order=3, corrector_order=4, lower_order_final=False)
    np.testing.assert_array_equal(flat.orders(6), [1, 2, 3, 3, 3])
    np.testing.assert_array_equal(flat.corrector_orders(6), [2, 3, 4, 4, 4])


def test_tau_zero_is_the_deterministic_solver():
    assert not solvers.make("sa_solver", tau=0.0).stochastic and solvers.make("sa_solver").stochastic
    assert solvers.make("sa_solver", tau=0.0).check().kind == "sde_solver" and solvers.SASolver.noise_slots == 1


@pytest.mark.slow
def test_tau_zero_is_deterministic_and_draws_nothing():
    state = sv.set_timesteps(sv.create_state(), 6)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    x_t = jax.random.normal(jax.random.key(3), (4, 2))
    runs = [sv.sample_ode(state, model_fn, jax.random.key(k), (4, 2), method="sa_solver", tau=0.0, x_init=x_t)
            for k in (0, 1)]
    np.testing.assert_array_equal(runs[0], runs[1])
    noisy = [sv.sample_ode(state, model_fn, jax.random.key(k), (4, 2), method="sa_solver", tau_t_min=0.0,
                           x_init=x_t) for k in (0, 1)]
    assert not np.allclose(noisy[0], noisy[1])


# ------------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("options, error, match", [
    ({"predictor_order": 5}, ValueError, r"predictor_order must be in \[1, 4\] for method='sa_solver', got 5"),
    ({"corrector_order": 0}, ValueError, r"corrector_order must be in \[1, 4\]"),
    ({"predictor_order": 2.0}, TypeError, "predictor_order must be an int"),
    ({"algorithm_type": "dpmsolver++"}, ValueError, "algorithm_type must be one of"),
    ({"second_order": "midpoint"}, ValueError, "second_order must be one of"),
    ({"algorithm_type": "noise_prediction", "second_order": "diffusers"}, ValueError,
     "changes the data-prediction steps only"),
])
def test_bad_options_are_refused_at_construction(options, error, match):
    with pytest.raises(error, match=match):
        solvers.make("sa_solver", **options)


def test_step_functions_refuse_an_order_outside_1_to_4():
    grid = solvers.Grid.build(sv.schedules.linear(), jnp.array([0.8, 0.5]))
    x = jnp.ones((2, 2))
    with pytest.raises(ValueError, match=r"order must be in \[1, 4\]"):
        solvers.sa_predict(x, x, solvers.History.init(x), grid.coeffs(0, 1), 5, 0.0, None)


@pytest.mark.parametrize("options, error, match", [
    ({"tau": -0.5}, ValueError, "tau must be >= 0"),
    ({"tau": float("nan")}, ValueError, "tau must be finite"),
    ({"tau": True}, TypeError, "tau must be a real number"),
    ({"tau_t_min": 0.9}, ValueError, "tau_t_min must be <= tau_t_max"),
    ({"order": 3}, ValueError, "give predictor_order and corrector_order"),
])
def test_bad_leaf_options_are_refused_at_sampling(options, error, match):
    state = sv.set_timesteps(sv.create_state(), 5)
    with pytest.raises(error, match=match):
        sv.sample_ode(state, lambda x, t: x, jax.random.key(0), (2, 2), method="sa_solver", **options)


def test_sa_options_on_other_methods_are_refused():
    state = sv.set_timesteps(sv.create_state(), 5)
    with pytest.raises(ValueError, match="tau is an option of sa_solver"):
        sv.sample_ode(state, lambda x, t: x, jax.random.key(0), (2, 2), method="unipc", tau=0.5)


@pytest.mark.parametrize("change, match", [
    ({"use_flow_sigmas": True}, "use_flow_sigmas = True changes sampling"),
    ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "grids are exclusive"),
    ({"prediction_type": "flow_prediction"}, "prediction_type must be one of"),
    ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type must be 'data_prediction' or 'noise_prediction'"),
    ({"predictor_order": 5}, r"predictor_order must be an int in \[1, 4\]"),
    ({"corrector_order": 0}, r"corrector_order must be an int in \[1, 4\]"),
    ({"thresholding": True, "algorithm_type": "noise_prediction"}, "indexes its tables with timestep=None"),
    ({"tau_func": "lambda t: 0"}, "tau_func = 'lambda t: 0' changes sampling"),
    ({"rescale_betas_zero_snr": True}, "unknown fields"),
])
def test_config_fields_not_served_are_refused_by_name(change, match):
    saved = json.loads(str(GOLDEN["default_config"]))
    with pytest.raises(ValueError, match=match):
        sv.load_config(dict(saved, **change))


# --------------------------------------------------------------------------------------------------- statistics

@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"tau_t_min": 0.0, "tau_t_max": 1.0, "predictor_order": 3,
                                          "corrector_order": 4}])
def test_sa_solver_draws_the_mixture(options):
    """40 steps on the default 2-D mixture, M = 10,000 samples, ending at the grid's last time (sampling_eps):
    the target is a(eps) X0 + s(eps) Z. Default options (tau = 1 on t in [0.2, 0.8]) and the reverse SDE throughout
    at orders (3, 4). Tolerances are 5 standard errors of each estimator at this M (mode counts Binomial(M, w_k):
    sqrt(w(1 - w)/M); means sqrt(cov_ii/M); covariance entries: the standard deviation of the products of centred
    samples over sqrt(M)); a false alarm of any one check has probability < 6e-7. The discretisation error is
    below them: the same key's runs at 40 and 80 steps (whose noise differs, so Monte Carlo spread included)
    differ by at most 0.016 in the means and 0.020 in the covariances (measured), against mean tolerances of
    0.046 and 0.056."""
    from test_statistics import target_moments

    m_samples = 10_000
    mixture = sv.mixtures.default_mixture()
    state = sv.set_timesteps(sv.create_state(), 40)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    x = sv.sample_ode(state, model_fn, jax.random.key(2025), (m_samples, 2), method="sa_solver",
                      final_sigmas_type="last", **options)
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    eps = state.sampling_eps
    a, s = float(sv.sde.alpha(eps, 0.1, 20.0)), float(sv.sde.sigma(eps, 0.1, 20.0))
    mean, cov = target_moments(mixture, a, s)
    w = np.asarray(mixture.weights, np.float64)
    freq = np.bincount(np.asarray(sv.mixtures.assign_modes(mixture, x)), minlength=len(w)) / m_samples
    np.testing.assert_array_less(np.abs(freq - w), 5 * np.sqrt(w * (1 - w) / m_samples))
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(np.diag(cov) / m_samples))
    c = x - x.mean(0)
    stderr = (c[:, :, None] * c[:, None, :]).std(0) / np.sqrt(m_samples)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 5 * stderr)


@pytest.mark.slow
def test_float32_agrees_with_float64(x64):
    """The weights are formed without cancellation (series below |z| = 1): 10 steps of order (4, 4) with tau = 0
    in float32 agree with float64 to 3.1e-6 relative (measured; UniPC's order 2 on the same run: 2.4e-6)."""
    state = sv.set_timesteps(sv.create_state(), 11)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    x_t = np.random.default_rng(0).normal(size=(64, 2))
    runs = [np.asarray(sv.sample_ode(state, model_fn, jax.random.key(0), (64, 2), method="sa_solver", dtype=dtype,
                                     x_init=jnp.asarray(x_t, dtype), predictor_order=4, corrector_order=4, tau=0.0))
            for dtype in (jnp.float64, jnp.float32)]
    assert _relative(runs[1].astype(np.float64), runs[0]) < 2e-5
