"""diffusers' classical sigma-space samplers: Euler (as DDIM), Euler ancestral and LMS.

Parity with diffusers 0.42.1's EulerDiscrete, EulerAncestralDiscrete and LMSDiscrete schedulers in float64
(tests/golden/classical.npz, by tests/golden/make_classical_golden.py): each loaded from its config and sampled with
no method given (LMS' other orders with ``method="lms", order=p``), on diffusers' fractional ``linspace`` labels
and its ``leading``/``trailing`` integer ones, on its sigma grids (``use_karras_sigmas``, ``use_exponential_sigmas``,
``use_beta_sigmas`` of Euler, Heun and LMS: spaced between the noise levels of the label grid's ends, the model at
diffusers' float32 fractional labels), epsilon and v models, the ancestral ones with sv's own per-sample
noise (handed to diffusers by the golden). Each step's arithmetic is tested directly: Euler in sigma/alpha is
DDIM's update, the ancestral step's mean and variance, LMS of order p integrates a polynomial-in-sigma noise
prediction of degree p - 1 exactly, and LMS' closed-form coefficients against diffusers' quadrature. Orders of
convergence are in tests/test_solvers.py; the ancestral sampler's distribution in the slow statistical test here.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from gaussian_model import assert_draws_the_mixture

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "classical.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
MU, S = 0.5, 0.8


def golden_model(prediction_type):
    """The golden's model at any (fractional) label: training sigmas interpolated linearly in the label."""
    train = jnp.asarray(GOLDEN["train_sigmas"])
    labels = jnp.arange(train.shape[0], dtype=train.dtype)

    def fn(x, label):
        rho = jnp.interp(label, labels, train)[:, None]
        a2 = 1.0 / (1.0 + rho * rho)
        a, sigma = jnp.sqrt(a2), jnp.sqrt(1.0 - a2)
        eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
        if prediction_type == "epsilon":
            return eps
        return a * eps - sigma * (MU + a * S * S * (x - a * MU) / (a2 * S * S + sigma * sigma))

    return fn


def test_the_golden_covers_every_scheduler():
    assert "diffusers 0.42.1" in list(GOLDEN["versions"])
    assert {c.split("/")[0] for c in CASES} == {"EulerDiscrete", "EulerAncestralDiscrete", "LMSDiscrete", "PNDM",
                                                "HeunDiscrete", "KDPM2Discrete", "KDPM2AncestralDiscrete"}
    assert {c.split("/")[1] for c in CASES if c.startswith("PNDM")} >= {"plms", "prk"}
    assert {c.split("/")[2] for c in CASES if c.startswith("LMS")} == {"1", "2", "3", "4"}
    # the sigma grids of the classes that space them between their label grid's ends (trailing: a shorter range)
    for name in ("EulerDiscrete", "HeunDiscrete", "LMSDiscrete"):
        assert {c.split("/")[1] for c in CASES if c.startswith(name + "/")} >= {
            "karras_sigmas", "exponential_sigmas", "beta_sigmas", "karras_sigmas_trailing"}


#: the fast tier's cases: each scheduler's default config at 10 steps (LMS at its default order 4), PNDM's both
#: warm-ups; the other options and step counts run in the slow tier
FAST = {f"{name}/linspace/1/10" for name in ("EulerDiscrete", "EulerAncestralDiscrete", "HeunDiscrete", "KDPM2Discrete",
                                             "KDPM2AncestralDiscrete")} | {"LMSDiscrete/linspace/4/10", "PNDM/plms/4/10",
                                                                           "PNDM/prk/4/10",
                                                                           "EulerDiscrete/karras_sigmas/1/10",
                                                                           "HeunDiscrete/karras_sigmas_trailing/1/10"}


def _slow_if_long(case):
    return case if case in FAST else pytest.param(case, marks=pytest.mark.slow)


PNDM_V = "PNDM/plms_v_prediction/4/10"  # diffusers' PNDM combines raw v outputs: refused, its difference measured


@pytest.mark.parametrize("case", [_slow_if_long(c) for c in CASES if c != PNDM_V])
def test_parity_with_diffusers(case, x64):
    name, _, order, steps = case.split("/")
    fields = json.loads(str(GOLDEN[f"{case}/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": f"{name}Scheduler", **SD, **fields}), int(steps))
    # the model's labels are diffusers' timesteps (PNDM's grid ends at label 0 unless set_alpha_to_one: its last
    # step goes there); the grid's noise levels its sigmas
    labels = GOLDEN[f"{case}/labels"].astype(np.float64)
    if name == "PNDM" and not fields.get("set_alpha_to_one") and labels[-1] != 0:
        labels = np.append(labels, 0.0)
    np.testing.assert_allclose(np.asarray(sv.model_time(state, state.timesteps)), labels, rtol=0, atol=1e-9)
    rho = np.exp(-np.asarray(state.schedule.log_snr(state.timesteps)))
    sigmas = GOLDEN[f"{case}/sigmas"][:-1]
    np.testing.assert_allclose(rho[:sigmas.shape[0]], sigmas, rtol=1e-12)
    model = golden_model(fields.get("prediction_type", "epsilon"))
    options = {"method": "lms", "order": int(order)} if name == "LMSDiscrete" and order != "4" else {}
    x = np.asarray(sv.sample_ode(state, model, jax.random.key(int(GOLDEN["seed"])), GOLDEN["x_T"].shape,
                                 dtype=jnp.float64, **options))
    ref = GOLDEN[f"{case}/final"]
    assert float(np.max(np.abs(x - ref)) / np.max(np.abs(ref))) <= 1e-10


def test_pndm_v_model_combines_noise_predictions_not_raw_v_outputs(x64):
    """diffusers' PNDM averages the raw v outputs of its points and converts the average at the step's start; the
    paper's method (and sv's pndm) averages each point's own noise prediction. The config is refused by name. With
    the method given, sv's run of the v-model equals its run of the same model as an epsilon model (to rounding),
    and diffusers' differs from it by 0.117 relative on the golden's 10 steps (measured)."""
    fields = json.loads(str(GOLDEN[f"{PNDM_V}/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": "PNDMScheduler", **SD, **fields}), 10)
    model = golden_model("v_prediction")
    with pytest.raises(ValueError, match="combines the model's raw v outputs"):
        sv.sample_ode(state, model, jax.random.key(0), GOLDEN["x_T"].shape, dtype=jnp.float64)
    runs = {}
    for prediction_type in ("v_prediction", "epsilon"):
        state = sv.set_timesteps(sv.load_config({"_class_name": "PNDMScheduler", **SD, **dict(
            fields, prediction_type=prediction_type)}), 10)
        runs[prediction_type] = np.asarray(sv.sample_ode(
            state, golden_model(prediction_type), jax.random.key(0), GOLDEN["x_T"].shape, x_init=GOLDEN["x_T"],
            dtype=jnp.float64, method="pndm", warmup="improved_euler", final_sigmas_type="last"))
    x, ref = runs["v_prediction"], GOLDEN[f"{PNDM_V}/final"]
    assert float(np.max(np.abs(x - runs["epsilon"])) / np.max(np.abs(x))) <= 1e-10
    assert 0.05 < float(np.max(np.abs(x - ref)) / np.max(np.abs(ref))) < 0.2


def test_the_configs_map_to_their_solvers():
    expected = {"EulerDiscreteScheduler": ("ddim", {"final_sigmas_type": "zero"}),
                "EulerAncestralDiscreteScheduler": ("euler_ancestral", {}),
                "LMSDiscreteScheduler": ("lms", {"order": 4}), "HeunDiscreteScheduler": ("heun_sigma", {}),
                "KDPM2DiscreteScheduler": ("kdpm2", {}), "KDPM2AncestralDiscreteScheduler": ("kdpm2_ancestral", {})}
    assert {name: sv.load_config({"_class_name": name, **SD}).diffusers_config.solver_options()
            for name in expected} == expected


def test_heun_and_kdpm2_classes_default_to_their_own_betas():
    """diffusers' HeunDiscrete and KDPM2 classes default beta_start/beta_end to 0.00085/0.012 (the others to
    0.0001/0.02): a file without them means those."""
    for name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
        cfg = sv.load_config({"_class_name": name}).diffusers_config
        assert (cfg.beta_start, cfg.beta_end) == (0.00085, 0.012)
    assert sv.load_config({"_class_name": "EulerAncestralDiscreteScheduler"}).diffusers_config.beta_start == 0.0001


def _grid():
    return sv.solvers.Grid.build(sv.schedules.from_diffusers(**SD), jnp.array([0.9, 0.75, 0.6, 0.45, 0.3]))


def test_euler_in_sigma_is_ddim(x64):
    """x_t / alpha_t = x_s / alpha_s + (rho_t - rho_s) eps (diffusers' Euler step in its sample x / alpha) equals
    DDIM with eta = 0, alpha_t x0 + sigma_t eps, to rounding."""
    c = _grid().coeffs(1, 2)
    x = jnp.asarray([[0.3, -1.2, 2.0]])
    eps = jnp.asarray([[0.7, 0.1, -0.4]])
    rho_s, rho_t = c.sigma_s / c.alpha_s, c.sigma_t / c.alpha_t
    euler = c.alpha_t * (x / c.alpha_s + (rho_t - rho_s) * eps)
    x0 = (x - c.sigma_s * eps) / c.alpha_s
    ddim = np.asarray(sv.solvers.ddim_step(x, x0, eps, c, 0.0, None))
    assert np.max(np.abs(ddim - np.asarray(euler))) <= 1e-14 * np.max(np.abs(euler))  # one entry cancels to 1e-3


def test_euler_ancestral_step_moments(x64):
    """Given x_s and the prediction, x_t / alpha_t is normal with mean x_s / alpha_s + (rho_t^2/rho_s - rho_s) eps
    and variance rho_t^2 (1 - rho_t^2 / rho_s^2): its total noise rho_down^2 + rho_up^2 = rho_t^2 is the marginal's."""
    c = _grid().coeffs(1, 2)
    x, eps = jnp.asarray([[0.3, -1.2]]), jnp.asarray([[0.7, 0.1]])
    rho_s, rho_t = float(c.sigma_s / c.alpha_s), float(c.sigma_t / c.alpha_t)
    x0 = x / c.alpha_s - rho_s * eps
    mean = sv.solvers.euler_ancestral_step(x0, eps, c, jnp.zeros_like(x)) / c.alpha_t
    np.testing.assert_allclose(np.asarray(mean), np.asarray(x / c.alpha_s + (rho_t**2 / rho_s - rho_s) * eps),
                               rtol=1e-14)
    unit = sv.solvers.euler_ancestral_step(x0, eps, c, jnp.ones_like(x)) / c.alpha_t - mean
    np.testing.assert_allclose(np.asarray(unit), rho_t * np.sqrt(1.0 - rho_t**2 / rho_s**2), rtol=1e-13)
    down = rho_t**2 / rho_s
    assert down**2 + float(unit[0, 0]) ** 2 == pytest.approx(rho_t**2, rel=1e-13)


def _history(grid, preds, ks):
    """A History holding the predictions ``preds`` made at grid points ``ks`` (most recent first)."""
    hist = sv.solvers.History.init(preds[0])
    fields = {}
    for i, (m, k) in enumerate(zip(preds, ks), start=1):
        fields[f"m{i}"], fields[f"lam{i}"] = m, grid.lam[k]
    return hist._replace(**fields)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_of_order_p_integrates_a_degree_p_minus_1_polynomial_in_sigma_exactly(order, x64):
    """With eps a polynomial of degree p - 1 in rho through the p points, x_t / alpha_t - x_s / alpha_s is its
    exact integral (the antiderivative evaluated at the ends); order p - 1 misses it."""
    grid = _grid()
    rho = np.exp(-np.asarray(grid.lam))
    coef = np.array([[0.4, -0.3], [1.1, 0.2], [-0.5, 0.35], [0.2, -0.15]])[:order]

    def poly(r):
        return sum(coef[i] * (r - 1.3) ** i for i in range(order))

    def integral(r):  # the antiderivative
        return sum(coef[i] * (r - 1.3) ** (i + 1) / (i + 1) for i in range(order))

    s = 3  # the step from point 3 to 4, predictions at points 3, 2, 1, 0
    c = grid.coeffs(s, s + 1)
    hist = _history(grid, [jnp.asarray(poly(rho[k]))[None] for k in (2, 1, 0)], (2, 1, 0))
    x_s = jnp.asarray([[0.3, -0.8]])
    exact = float(c.alpha_t) * (np.asarray(x_s[0]) / float(c.alpha_s) + integral(rho[s + 1]) - integral(rho[s]))
    eps0 = jnp.asarray(poly(rho[s]))[None]
    np.testing.assert_allclose(np.asarray(sv.solvers.lms_step(x_s, eps0, hist, c, order)[0]), exact, rtol=1e-12)
    if order > 1:
        assert not np.allclose(np.asarray(sv.solvers.lms_step(x_s, eps0, hist, c, order - 1)[0]), exact, rtol=1e-6)


def test_lms_closed_form_coefficients_equal_diffusers_quadrature(x64):
    """diffusers integrates each Lagrange basis polynomial with scipy's quad (21-point Gauss-Kronrod, exact for
    these cubics up to rounding); the closed form (lms_coefficients) agrees with it and with NumPy's polynomial
    antiderivative to rounding, at every step and order of the golden's 10-step grid."""
    quad, exact = GOLDEN["lms_quad"], GOLDEN["lms_exact"]
    scale = np.max(np.abs(exact))
    assert np.max(np.abs(quad - exact)) / scale <= 1e-14
    sigmas = GOLDEN["LMSDiscrete/linspace/4/10/sigmas"]
    ours = np.zeros_like(exact)
    for t in range(10):
        for order in range(1, min(t + 1, 4) + 1):
            nodes = [jnp.asarray(sigmas[t - m]) for m in range(order)]
            ours[t, order - 1, :order] = [float(c) for c in sv.solvers.lms_coefficients(nodes, sigmas[t + 1], order)]
    assert np.max(np.abs(ours - exact)) / scale <= 1e-13
    assert np.max(np.abs(ours - quad)) / scale <= 1e-13


@pytest.mark.slow  # a compiled run
def test_lms_last_step_goes_to_sigma_zero_at_full_order(x64):
    """diffusers' LMS takes its order-p step down to sigma = 0 (not the bare data prediction): with eps linear in
    rho, every step after the first-order start integrates it exactly, the last to rho = 0 included (the data
    prediction alone would end at x / alpha - rho eps instead)."""
    state = sv.set_timesteps(sv.load_config({"_class_name": "LMSDiscreteScheduler", **SD}), 4)

    def model(x, label):  # eps = 0.3 + 0.1 rho at every x
        rho = jnp.interp(label, jnp.arange(1000.0), jnp.asarray(GOLDEN["train_sigmas"]))[:, None]
        return jnp.broadcast_to(0.3 + 0.1 * rho, x.shape)

    x_t = jnp.asarray([[0.2, -0.4]])
    x = sv.sample_ode(state, model, jax.random.key(0), x_t.shape, x_init=x_t, dtype=jnp.float64, method="lms",
                      order=2)
    rho = np.exp(-np.asarray(state.schedule.log_snr(state.timesteps)))
    alpha0 = float(np.exp(np.asarray(state.schedule.log_alpha(state.timesteps[0]))))
    after_first = np.asarray(x_t[0]) / alpha0 + (rho[1] - rho[0]) * (0.3 + 0.1 * rho[0])  # the order-1 start
    exact = after_first - (0.3 * rho[1] + 0.05 * rho[1] ** 2)  # then exact, the last step to rho = 0 included
    np.testing.assert_allclose(np.asarray(x[0]), exact, rtol=1e-12)


def test_pndm_transfer_is_ddim(x64):
    """PNDM's transfer part (eq. 9, in alphas_cumprod) is DDIM's update with eta = 0, to rounding."""
    c = _grid().coeffs(1, 2)
    x, eps = jnp.asarray([[0.3, -1.2, 2.0]]), jnp.asarray([[0.7, 0.1, -0.4]])
    ddim = np.asarray(sv.solvers.ddim_step(x, (x - c.sigma_s * eps) / c.alpha_s, eps, c, 0.0, None))
    assert np.max(np.abs(np.asarray(sv.solvers.pndm_transfer(x, eps, c)) - ddim)) <= 1e-14 * np.max(np.abs(ddim))


def _x_independent_run(warmup, times, f):
    """pndm on the linear schedule's grid ``times`` (final_sigmas_type="last") with a noise prediction f(t) that
    does not depend on x, from x_T = (0.4, -0.2): returns (x, rho(t) as a NumPy function, alpha at the ends)."""
    state = sv.set_timesteps(sv.create_state(), timesteps=np.asarray(times))

    def model(x, t):
        return jnp.broadcast_to(f(t)[:, None], x.shape)

    x_t = jnp.asarray([[0.4, -0.2]])
    x = sv.sample_ode(state, model, jax.random.key(0), x_t.shape, x_init=x_t, dtype=jnp.float64, method="pndm",
                      warmup=warmup, final_sigmas_type="last")

    def rho(t):
        return float(jnp.exp(-state.schedule.log_snr(jnp.asarray(t, jnp.float64))))

    def alpha(t):
        return float(jnp.exp(state.schedule.log_alpha(jnp.asarray(t, jnp.float64))))

    return np.asarray(x[0]), rho, alpha, np.asarray(x_t[0])


def test_pndm_warmups_on_a_noise_prediction_independent_of_x(x64):
    """With eps = f(t) independent of x, d(x/alpha) = f d rho and the warm-ups reduce to quadrature rules in rho:
    pseudo Runge-Kutta (eq. 13) gives x/alpha += (rho_t - rho_s)(f_s + 4 f_m + f_t)/6 (f_m at the time midpoint,
    e2 = e3 = f_m), the pseudo improved Euler step (rho_t - rho_s)(f_s + f_t)/2."""
    def f(t):
        return 0.3 + jnp.sin(3.0 * t)

    times = [1.0, 0.7, 0.45, 0.2]
    x, rho, alpha, x_t = _x_independent_run("prk", times, f)
    bar = x_t / alpha(times[0])
    for s, t in zip(times[:-1], times[1:]):
        m = 0.5 * (s + t)
        bar = bar + (rho(t) - rho(s)) * (float(f(s)) + 4.0 * float(f(m)) + float(f(t))) / 6.0
    np.testing.assert_allclose(x, alpha(times[-1]) * bar, rtol=1e-12)
    x, rho, alpha, x_t = _x_independent_run("improved_euler", times[:2], f)
    bar = x_t / alpha(1.0) + (rho(0.7) - rho(1.0)) * 0.5 * (float(f(1.0)) + float(f(0.7)))
    np.testing.assert_allclose(x, alpha(0.7) * bar, rtol=1e-12)


def test_model_time_between_grid_points_is_diffusers_sigma_to_t(x64):
    """Denoiser.model_time_at (the label KDPM2 gives the model between grid points) is diffusers' _sigma_to_t, here
    sv.grids.sigma_to_label on the host: linear in log(sigma/alpha) between training labels, clamped at the ends."""
    state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers(**SD)), 5)
    model = sv.denoiser.Denoiser(state, lambda x, t: x, jnp.float64, jnp.float64)
    rho = np.array([0.02, 0.0292, 0.5, 1.0, 3.7, 14.0, 20.0])  # inside and beyond both ends
    ours = np.array([float(model.model_time_at(jnp.asarray(-np.log(r)))) for r in rho])
    np.testing.assert_allclose(ours, sv.grids.sigma_to_label(rho, state.schedule), rtol=0, atol=1e-9)
    assert ours[0] == 0.0 and ours[-1] == 999.0
    continuous = sv.denoiser.Denoiser(sv.set_timesteps(sv.create_state(), 5), lambda x, t: x, jnp.float64,
                                      jnp.float64)
    lam = sv.create_state().schedule.log_snr(jnp.asarray(0.3, jnp.float64))
    assert float(continuous.model_time_at(lam)) == pytest.approx(0.3, rel=1e-12)


def _two_call_run(method, times, f, **options):
    """``method`` on the linear schedule's grid ``times`` with a noise prediction f(model time) independent of x."""
    state = sv.set_timesteps(sv.create_state(), timesteps=np.asarray(times))

    def model(x, t):
        return jnp.broadcast_to(f(t)[:, None], x.shape)

    x_t = jnp.asarray([[0.4, -0.2]])
    x = sv.sample_ode(state, model, jax.random.key(0), x_t.shape, x_init=x_t, dtype=jnp.float64, method=method,
                      final_sigmas_type="last", **options)
    schedule = state.schedule
    lam = [float(schedule.log_snr(jnp.asarray(t, jnp.float64))) for t in times]
    return np.asarray(x[0]), np.asarray(x_t[0]), lam, schedule


def test_heun_sigma_and_kdpm2_steps_on_a_noise_prediction_independent_of_x(x64):
    """With eps = f(t) independent of x, d(x/alpha) = f d rho: Heun in rho is the trapezoid rule, (rho_t - rho_s)
    (f_s + f_t)/2; KDPM2 the midpoint rule at the log-SNR midpoint, (rho_t - rho_s) f(t_m), lambda(t_m) the mean
    of the ends' (the model there at the time of that log-SNR, on this continuous schedule)."""
    def f(t):
        return 0.3 + jnp.sin(3.0 * t)

    times = [0.9, 0.6]
    x, x_t, (lam_s, lam_t), schedule = _two_call_run("heun_sigma", times, f)
    alpha_s, alpha_t = (float(jnp.exp(schedule.log_alpha(jnp.asarray(t, jnp.float64)))) for t in times)
    drho = np.exp(-lam_t) - np.exp(-lam_s)
    np.testing.assert_allclose(x, alpha_t * (x_t / alpha_s + drho * 0.5 * (float(f(0.9)) + float(f(0.6)))),
                               rtol=1e-12)
    x, *_ = _two_call_run("kdpm2", times, f)
    t_mid = float(schedule.t_from_log_snr(jnp.asarray(0.5 * (lam_s + lam_t), jnp.float64)))
    np.testing.assert_allclose(x, alpha_t * (x_t / alpha_s + drho * float(f(t_mid))), rtol=1e-12)
    # heun (in time t) is another method: it integrates the ODE's drift in t, not eps in rho
    state = sv.set_timesteps(sv.create_state(), timesteps=np.asarray(times))
    other = sv.sample_ode(state, lambda x, t: jnp.broadcast_to(f(t)[:, None], x.shape), jax.random.key(0),
                          (1, 2), x_init=jnp.asarray([x_t]), dtype=jnp.float64, method="heun")
    assert not np.allclose(np.asarray(other[0]), alpha_t * (x_t / alpha_s + drho * 0.5 * (float(f(0.9)) +
                                                                                           float(f(0.6)))), rtol=1e-6)


def test_kdpm2_ancestral_step_moments(x64):
    """Given x_s and the midpoint's prediction, x_t / alpha_t is normal with mean x_s / alpha_s + (rho_t^2/rho_s -
    rho_s) d and variance rho_t^2 (1 - rho_t^2/rho_s^2), as Euler ancestral's with the midpoint's slope."""
    c = _grid().coeffs(1, 2)
    x, d = jnp.asarray([[0.3, -1.2]]), jnp.asarray([[0.7, 0.1]])
    rho_s, rho_t = float(c.sigma_s / c.alpha_s), float(c.sigma_t / c.alpha_t)
    mean = sv.solvers.kdpm2_ancestral_step(x, d, c, jnp.zeros_like(x)) / c.alpha_t
    np.testing.assert_allclose(np.asarray(mean), np.asarray(x / c.alpha_s + (rho_t**2 / rho_s - rho_s) * d),
                               rtol=1e-14)
    unit = sv.solvers.kdpm2_ancestral_step(x, d, c, jnp.ones_like(x)) / c.alpha_t - mean
    np.testing.assert_allclose(np.asarray(unit), rho_t * np.sqrt(1.0 - rho_t**2 / rho_s**2), rtol=1e-13)


@pytest.mark.slow  # 200 two-call steps of 8000 samples
def test_kdpm2_ancestral_draws_the_mixture():
    """KDPM2 ancestral on the default 2-D mixture: mode weights, means and standard deviations within derived
    tolerances of 200,000 exact draws: 5 standard errors of B = 8000 samples (see
    test_euler_ancestral_draws_the_mixture), plus 0.01 for the discretisation bias (measured at 200 steps with
    200,000 samples: weights 0.0015, means 0.0007, stds 0.0014, within those samples' own error)."""
    mixture = sv.mixtures.default_mixture(2)
    state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers(**SD)), 200)
    model = sv.mixtures.make_mixture_eps_fn(state, mixture)
    batch = 8000
    x = np.asarray(jax.jit(lambda key: sv.sample_ode(state, model, key, (batch, 2), method="kdpm2_ancestral"))(
        jax.random.key(11)))
    exact = np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(12), 200_000))
    assert_draws_the_mixture(mixture, x, exact)


@pytest.mark.slow  # three traced runs
def test_classical_solvers_refuse_bad_options():
    with pytest.raises(ValueError, match="order must be in \\[1, 4\\]"):
        sv.solvers.make("lms", order=5)
    with pytest.raises(ValueError, match="final_sigmas_type must be one of"):
        sv.solvers.make("euler_ancestral", final_sigmas_type="none")
    with pytest.raises(ValueError, match="warmup must be one of"):
        sv.solvers.make("pndm", warmup="rk4")
    state = sv.set_timesteps(sv.create_state(), 3)
    with pytest.raises(ValueError, match="needs at least 4 points"):
        sv.sample_ode(state, lambda x, t: x, jax.random.key(0), (2, 2), method="pndm")
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        sv.sample_ode(sv.set_timesteps(sv.create_state(), 5), lambda x, t: x, jax.random.key(0), (2, 2),
                      method="pndm", warmup="prk_diffusers")
    with pytest.raises(ValueError, match="warmup is an option of pndm"):
        sv.sample_ode(state, lambda x, t: x, jax.random.key(0), (2, 2), method="ddim", warmup="prk")


@pytest.mark.slow  # 400 steps of 8000 samples
def test_euler_ancestral_draws_the_mixture():
    """Euler ancestral ends at sigma = 0 on the default 2-D mixture: mode weights, means and standard deviations
    within derived tolerances of 200,000 exact draws.

    B = 8000 samples: a mode weight w has standard error sqrt(w(1-w)/B) <= 0.0056, a mean coordinate s/sqrt(B) <=
    0.0126 (s <= 1.13), a standard deviation about s/sqrt(2B) (twice that for a bimodal marginal, hence 10 SE);
    5 SE each (a false alarm for any one check below 6e-7), plus 0.01 for the discretisation bias of this
    first-order sampler, measured at 400 steps with 200,000 samples: weights 0.0008, means 0.0032, stds 0.0025
    (0.0036, 0.013, 0.0064 at 100 steps: the bias falls as 1/N).
    """
    mixture = sv.mixtures.default_mixture(2)
    state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers(**SD)), 400)
    model = sv.mixtures.make_mixture_eps_fn(state, mixture)
    batch = 8000
    x = np.asarray(jax.jit(lambda key: sv.sample_ode(state, model, key, (batch, 2), method="euler_ancestral"))(
        jax.random.key(11)))
    exact = np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(12), 200_000))
    assert_draws_the_mixture(mixture, x, exact)


@pytest.mark.slow  # three compiled runs
def test_euler_ancestral_is_keyed_per_sample():
    """Sample b's noise comes from fold_in(key, b): the first two of a batch of 4 equal a batch of 2 (to the
    rounding XLA's batch-size-dependent code allows), and another key changes every sample."""
    state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers(**SD)), 6)
    model = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())

    @jax.jit
    def runs(key, other):
        return [sv.sample_ode(state, model, k, (n, 2), method="euler_ancestral") for k, n in
                ((key, 4), (key, 2), (other, 4))]

    four, two, another = (np.asarray(x) for x in runs(jax.random.key(2), jax.random.key(3)))
    np.testing.assert_allclose(two, four[:2], rtol=2e-5, atol=2e-5)
    assert np.all(np.abs(another - four) > 1e-3)


def test_lms_begin_index_weights_the_grid_points_before_the_start_as_diffusers(x64):
    """Started at grid point b (diffusers' set_begin_index), LMS takes order min(4, b + 1) at once: the Lagrange
    weights of the nodes rho_b, rho_{b-1}, ... (points it never visited) with only its own prediction summed (diffusers
    zips the weights with the derivatives it has). With a constant noise prediction c the step from b is
    x/alpha + w_0 c, w_0 the integral of the first basis polynomial of the four nodes over [rho_b, rho_{b+1}],
    computed here with numpy's polynomials; a grid that starts at b takes the first-order step (rho_{b+1} - rho_b) c."""
    state = sv.set_timesteps(sv.load_config({"_class_name": "LMSDiscreteScheduler", **SD}), 6)
    rho = np.exp(-np.asarray(state.schedule.log_snr(state.timesteps)))
    alpha = 1.0 / np.sqrt(1.0 + rho**2)
    c = np.array([0.3, -0.2, 0.5])
    x4 = np.array([[0.7, -1.1, 0.4]])

    def model(x, t):
        return jnp.broadcast_to(jnp.asarray(c), x.shape)

    nodes = rho[[4, 3, 2, 1]]
    basis = np.poly1d([1.0])
    for m in (1, 2, 3):
        basis = basis * np.poly1d([1.0, -nodes[m]]) / (nodes[0] - nodes[m])
    w0 = basis.integ()(rho[5]) - basis.integ()(rho[4])
    want = alpha[5] * (x4 / alpha[4] + w0 * c)
    got = sv.sample_ode(state, model, None, x4.shape, x_init=jnp.asarray(x4), dtype=jnp.float64,
                        final_sigmas_type="last", begin_index=4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
    sliced = state.replace(timesteps=state.timesteps[4:], model_labels=state.model_labels[4:])
    first = sv.sample_ode(sliced, model, None, x4.shape, x_init=jnp.asarray(x4), dtype=jnp.float64,
                          final_sigmas_type="last")
    np.testing.assert_allclose(np.asarray(first), alpha[5] * (x4 / alpha[4] + (rho[5] - rho[4]) * c), rtol=1e-12)
    assert abs(w0 - (rho[5] - rho[4])) > 1e-3 * abs(rho[5] - rho[4])  # the two differ
