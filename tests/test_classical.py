"""diffusers' classical sigma-space samplers: Euler (as DDIM), Euler ancestral and LMS.

Parity with diffusers 0.42.1's EulerDiscrete, EulerAncestralDiscrete and LMSDiscrete schedulers in float64
(tests/golden/classical.npz, by tests/golden/make_classical_golden.py): each loaded from its config and sampled with
no method given (LMS' other orders with ``method="lms", order=p``), on diffusers' fractional ``linspace`` labels
and its ``leading``/``trailing`` integer ones, epsilon and v models, the ancestral ones with sv's own per-sample
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
    assert {c.split("/")[0] for c in CASES} == {"EulerDiscrete", "EulerAncestralDiscrete", "LMSDiscrete"}
    assert {c.split("/")[2] for c in CASES if c.startswith("LMS")} == {"1", "2", "3", "4"}


def _slow_if_long(case):
    return pytest.param(case, marks=pytest.mark.slow) if case.endswith("/25") else case


@pytest.mark.parametrize("case", [_slow_if_long(c) for c in CASES])
def test_parity_with_diffusers(case, x64):
    name, _, order, steps = case.split("/")
    fields = json.loads(str(GOLDEN[f"{case}/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": f"{name}Scheduler", **SD, **fields}), int(steps))
    # the model's labels are diffusers' timesteps; the grid's noise levels its sigmas
    np.testing.assert_array_equal(np.asarray(sv.model_time(state, state.timesteps)),
                                  GOLDEN[f"{case}/labels"].astype(np.float64))
    rho = np.exp(-np.asarray(state.schedule.log_snr(state.timesteps)))
    np.testing.assert_allclose(rho, GOLDEN[f"{case}/sigmas"][:-1], rtol=1e-12)
    model = golden_model(fields.get("prediction_type", "epsilon"))
    options = {"method": "lms", "order": int(order)} if name == "LMSDiscrete" and order != "4" else {}
    x = np.asarray(sv.sample_ode(state, model, jax.random.key(int(GOLDEN["seed"])), GOLDEN["x_T"].shape,
                                 dtype=jnp.float64, **options))
    ref = GOLDEN[f"{case}/final"]
    assert float(np.max(np.abs(x - ref)) / np.max(np.abs(ref))) <= 1e-10


def test_the_configs_map_to_their_solvers():
    solver = {name: sv.load_config({"_class_name": name, **SD}).diffusers_config.solver_options()
              for name in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler")}
    assert solver == {"EulerDiscreteScheduler": ("ddim", {"final_sigmas_type": "zero"}),
                      "EulerAncestralDiscreteScheduler": ("euler_ancestral", {}),
                      "LMSDiscreteScheduler": ("lms", {"order": 4})}


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


def test_classical_solvers_refuse_bad_options():
    with pytest.raises(ValueError, match="order must be in \\[1, 4\\]"):
        sv.solvers.make("lms", order=5)
    with pytest.raises(ValueError, match="final_sigmas_type must be one of"):
        sv.solvers.make("euler_ancestral", final_sigmas_type="none")


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
    weights = np.bincount(np.asarray(sv.mixtures.assign_modes(mixture, x)), minlength=5) / batch
    w = np.asarray(mixture.weights)
    assert np.all(np.abs(weights - w) <= 5 * np.sqrt(w * (1 - w) / batch) + 0.01), (weights, w)
    assert np.all(np.abs(x.mean(0) - exact.mean(0)) <= 5 * exact.std(0) / np.sqrt(batch) + 0.01)
    assert np.all(np.abs(x.std(0) - exact.std(0)) <= 10 * exact.std(0) / np.sqrt(2 * batch) + 0.01)


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
