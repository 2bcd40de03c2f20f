"""Zero terminal SNR (Lin et al. 2024): a discrete schedule whose last label has alpha = 0, loaded and served.

* the schedule: alpha(1) = 0, sigma(1) = 1, lambda(1) = -inf exactly, alpha linear in t on the last piece, the
  inverse of lambda and beta consistent there, rescale_zero_terminal_snr as Lin et al.'s Algorithm 1;
* parity with diffusers 0.42.1 in float64 (tests/golden/zero_snr.npz, by tests/golden/make_zero_snr_golden.py) on
  Stable Diffusion's schedule rescaled, "trailing" labels (the first is 999, alpha = 0), a v- (and x0-) model:
  DDIM and DDPM, which keep alphas_cumprod[-1] = 0, with zero_snr="exact"; DPMSolverMultistep and UniPC, which
  set it to 2**-24, with zero_snr="diffusers"; and the exact start as the limit of that clamp going to 0;
* UniPC's order conditions with a point at lambda = -inf, tested on the step's arithmetic directly;
* the refusals: an epsilon model at alpha = 0, and the methods whose step needs beta(t) or lambda finite;
* statistics: the mixture's v-model sampled from alpha = 0 (x_T ~ N(0, I) is then p_1 exactly).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "zero_snr.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))
MU, S = 0.5, 0.8  # the golden's data: N(MU, S^2) in 3-D
RTOL = 1e-10  # float64 parity bar, as the other diffusers goldens
CLASSES = {"DDIM": "DDIMScheduler", "DDPM": "DDPMScheduler", "DPMSolverMultistep": "DPMSolverMultistepScheduler",
           "UniPCMultistep": "UniPCMultistepScheduler"}
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def zsnr_schedule(**kw):
    return sv.schedules.from_diffusers(**SD, num_train_timesteps=1000, rescale_betas_zero_snr=True, **kw)


def config(kind, prediction_type="v_prediction", order=2, spacing="trailing"):
    cfg = {"_class_name": CLASSES[kind], **SD, "prediction_type": prediction_type, "timestep_spacing": spacing,
           "rescale_betas_zero_snr": True}
    if kind in ("DDIM", "DDPM"):
        cfg["clip_sample"] = False
    if kind == "DDPM":
        cfg["variance_type"] = "fixed_small"
    if kind in ("DPMSolverMultistep", "UniPCMultistep"):
        cfg["solver_order"] = order
    return cfg


def exact_model(prediction_type):
    """The golden's model at a training label: the posterior mean of N(MU, S^2) data as v (or x0); at label 999
    (alpha = 0) v = -x0_hat = -MU."""
    table = jnp.asarray(GOLDEN["alphas_cumprod"])

    def fn(x, label):
        a2 = table[jnp.round(label).astype(jnp.int32)][:, None]
        a, sigma = jnp.sqrt(a2), jnp.sqrt(1.0 - a2)
        eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
        x0 = MU + a * S * S * (x - a * MU) / (a2 * S * S + sigma * sigma)
        return x0 if prediction_type == "sample" else a * eps - sigma * x0

    return fn


def run(state, prediction_type, noise=None):
    fn = exact_model(prediction_type)
    x_t = jnp.asarray(GOLDEN["x_T"])
    if noise is None:  # the config's own solver
        return np.asarray(sv.sample_ode(state, fn, jax.random.key(0), x_t.shape, x_init=x_t, dtype=jnp.float64))
    x, times = x_t, np.asarray(state.timesteps)
    targets = np.concatenate([times[1:], [0.0]])
    for t, t_next, z in zip(times, targets, noise):
        t_vec = jnp.full((x.shape[0],), t)
        label = sv.model_time(state, t_vec)
        step = sv.ancestral(state, fn(x, label), x, t_vec, None, noise=jnp.asarray(z),
                            t_next=jnp.full((x.shape[0],), t_next))
        # diffusers adds the step's noise at every label but 0 (a variance of 1e-20 at the last step here)
        x = step.prev_sample if float(label[0]) > 0.5 else step.prev_sample_mean
    return np.asarray(x)


def rel_err(x, ref):
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


# --------------------------------------------------------------------------- the schedule


def test_schedule_reaches_alpha_zero_exactly(x64):
    sched = zsnr_schedule()
    assert sched.zero_terminal_snr and not sv.schedules.from_diffusers(**SD).zero_terminal_snr
    one = jnp.array(1.0)
    assert float(sched.alpha(one)) == 0.0 and float(sched.sigma(one)) == 1.0
    assert float(sched.log_snr(one)) == -np.inf and float(sched.beta(one)) == np.inf
    assert float(sched.t_from_log_snr(jnp.array(-np.inf))) == 1.0
    # the training labels' alphas_cumprod, the last 0; alpha linear in t on the last piece, from label 998's
    acp = np.asarray(sched.alpha(jnp.asarray(np.arange(1, 1001) / 1000.0))) ** 2
    np.testing.assert_allclose(acp[:-1], GOLDEN["alphas_cumprod"][:-1], rtol=1e-12)
    f = jnp.array([0.0, 0.25, 0.5, 0.9])
    a_998 = float(sched.alpha(jnp.array(0.999)))
    np.testing.assert_allclose(np.asarray(sched.alpha(0.999 + f / 1000)), a_998 * (1 - np.asarray(f)), rtol=1e-12)


def test_last_piece_inverse_and_beta(x64):
    """On the last piece t(lambda(t)) = t, and beta = -2 dlog(alpha)/dt (central differences, relative 1e-7)."""
    sched = zsnr_schedule()
    t = jnp.array([0.99905, 0.9993, 0.9996, 0.99995, 0.5003, 0.0123])  # none on a knot
    np.testing.assert_allclose(np.asarray(sched.t_from_log_snr(sched.log_snr(t))), np.asarray(t), rtol=1e-12)
    h = 1e-9
    slope = (sched.log_alpha(t + h) - sched.log_alpha(t - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(sched.beta(t)), -2 * np.asarray(slope), rtol=1e-5)


def test_rescale_is_lin_et_al_algorithm_1(x64):
    """sqrt(alphas_cumprod) mapped affinely: its first value kept, its last sent to 0."""
    acp = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    out = sv.schedules.rescale_zero_terminal_snr(acp)
    root, new = np.sqrt(acp), np.sqrt(out)
    assert new[-1] == 0.0 and new[0] == root[0]
    slope = (root[0] - 0.0) / (root[0] - root[-1])
    np.testing.assert_allclose(new, (root - root[-1]) * slope, rtol=1e-12, atol=1e-17)
    same = sv.schedules.discrete(betas=np.concatenate([1 - out[:1], 1 - out[1:] / out[:-1]]))
    assert same.zero_terminal_snr
    np.testing.assert_allclose(np.asarray(same.knots[:-1]), np.asarray(zsnr_schedule().knots[:-1]), rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"terminal_alphas_cumprod": 2.0**-24}, "needs rescale_betas_zero_snr=True"),
    ({"rescale_betas_zero_snr": True, "terminal_alphas_cumprod": 0.5}, "terminal_alphas_cumprod must be in"),
    ({"rescale_betas_zero_snr": "yes"}, "rescale_betas_zero_snr must be a bool"),
])
def test_from_diffusers_checks_its_zero_snr_arguments(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        sv.schedules.from_diffusers(**SD, **kwargs)


def test_zero_only_at_the_last_label():
    with pytest.raises(ValueError, match=r"alphas_cumprod\[1\] = 0.0"):
        sv.schedules.discrete(alphas_cumprod=[0.9, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"betas\[0\] = 1.0"):
        sv.schedules.discrete(betas=[1.0, 0.5])


# --------------------------------------------------------------------------- parity with diffusers


def test_the_golden_starts_at_alpha_zero():
    assert len(CASES) == 11 and "diffusers 0.42.1" in list(GOLDEN["versions"])
    assert GOLDEN["alphas_cumprod"][-1] == 0.0
    assert all(GOLDEN[f"{case}/labels"][0] == 999 for case in CASES)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.endswith("/25") else c for c in CASES])
def test_parity_with_diffusers(case, x64):
    """DDIM and DDPM at alpha = 0 exactly; DPMSolverMultistep and UniPC with diffusers' 2**-24
    (zero_snr="diffusers")."""
    kind, prediction_type, order, steps = case.split("/")
    mode = "diffusers" if kind in ("DPMSolverMultistep", "UniPCMultistep") else "exact"
    state = sv.set_timesteps(sv.load_config(config(kind, prediction_type, int(order)), zero_snr=mode), int(steps))
    labels = np.round(np.asarray(sv.model_time(state, state.timesteps))).astype(np.int64)
    np.testing.assert_array_equal(labels, GOLDEN[f"{case}/labels"])
    x = run(state, prediction_type, GOLDEN.get(f"{case}/noise"))
    assert rel_err(x, GOLDEN[f"{case}/final"]) <= RTOL


@pytest.mark.slow
@pytest.mark.parametrize("kind, order", [("DPMSolverMultistep", 3), ("UniPCMultistep", 3)])
def test_exact_start_is_the_limit_of_the_clamp(kind, order, x64):
    """Starting at alpha = 0 is the limit of diffusers' clamp alphas_cumprod[-1] = c as c -> 0.

    The multistep differences that involve the first point divide by r = (lambda_1 - lambda(1))/h, so the
    distance to the exact run falls as 1/|lambda(1)| = 2/log(1/c) (measured: distance * |lambda(1)| within
    1.5x of constant from c = 2**-24 to 2**-800); at diffusers' c = 2**-24 it is what the clamp costs on
    this model at 10 steps (1.3e-4 relative for UniPC, 5.7e-4 for DPM-Solver++(3M)).
    """
    case = f"{kind}/v_prediction/{order}/10"
    cfg = config(kind, order=order)
    grid = sv.set_timesteps(sv.load_config(cfg), 10).timesteps
    exact = run(sv.set_timesteps(sv.load_config(cfg), 10), "v_prediction")
    method, options = sv.load_config(cfg).diffusers_config.solver_options()
    x_t = jnp.asarray(GOLDEN["x_T"])
    distances, scaled = [], []
    for c in (2.0**-24, 2.0**-100, 2.0**-800):
        state = sv.create_state(schedule=zsnr_schedule(terminal_alphas_cumprod=c), prediction_type="v_prediction")
        x = sv.sample_ode(sv.set_timesteps(state, timesteps=grid), exact_model("v_prediction"), jax.random.key(0),
                          x_t.shape, x_init=x_t, dtype=jnp.float64, method=method, **options)
        distances.append(rel_err(np.asarray(x), exact))
        scaled.append(distances[-1] * abs(float(state.schedule.log_snr(jnp.array(1.0)))))
    assert abs(distances[0] - rel_err(GOLDEN[f"{case}/final"], exact)) < 1e-9  # the golden is the c = 2**-24 run
    assert distances[0] > 1e-5 and distances[2] < distances[0] / 20  # the clamp matters, and vanishes as c -> 0
    assert max(scaled) < 1.5 * min(scaled), scaled  # ... as 1/|lambda(1)|


# --------------------------------------------------------------------------- the step at lambda = -inf


def test_unipc_order_conditions_drop_a_point_at_minus_infinity(x64):
    """UniC of order 2 with its older point at lambda = -inf is the limit of that point going to -inf."""
    sched = zsnr_schedule()
    grid = sv.solvers.Grid.build(sched, jnp.array([0.9, 0.8]))
    c = grid.coeffs(0, 1)
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    d0, m1, d_t = 0.3 * x + 0.1, 0.5 * x - 0.2, 0.2 * x + 0.3

    def corrected(lam_old):
        hist = sv.solvers.History.init(x)._replace(m1=m1, lam1=jnp.asarray(lam_old))
        return sv.solvers.unipc_correct(x, d0, hist, c, d_t, 2)

    at_inf = corrected(-np.inf)
    assert bool(jnp.all(jnp.isfinite(at_inf)))
    errors = [float(jnp.max(jnp.abs(corrected(lam) - at_inf))) for lam in (-1e2, -1e4, -1e6)]
    assert errors[0] > errors[1] * 50 > errors[2] * 50 * 50 and errors[2] < 1e-6  # O(1/|lambda|)


# --------------------------------------------------------------------------- refusals


def test_epsilon_model_at_alpha_zero_is_refused():
    state = sv.set_timesteps(sv.load_config(config("DDIM", "epsilon")), 10)
    with pytest.raises(ValueError, match=r"epsilon-prediction model's data prediction \(x - sigma \* eps\) / alpha"):
        sv.sample_ode(state, lambda x, t: x, jax.random.key(0), (2, 3))


def test_epsilon_model_below_alpha_zero_samples():
    """A zero-SNR epsilon model on "leading" labels (the first is 900 at 10 steps) never meets alpha = 0."""
    state = sv.set_timesteps(sv.load_config(config("DDIM", "epsilon", spacing="leading")), 10)
    x = sv.sample_ode(state, lambda x, t: 0.1 * x, jax.random.key(0), (2, 3))
    assert bool(jnp.all(jnp.isfinite(x)))


@pytest.mark.parametrize("method, options", [("euler", {}), ("heun", {}), ("dpm_solver", {}),
                                             ("unipc", {"solver_type": "bh1"}), ("unipc", {"predict_x0": False})])
def test_methods_that_need_a_finite_log_snr_are_refused(method, options):
    state = sv.set_timesteps(sv.load_config(config("UniPCMultistep")), 10)
    with pytest.raises(ValueError, match="this method's step needs beta"):
        sv.sample_ode(state, lambda x, t: x, jax.random.key(0), (2, 3), method=method, **options)


def test_sde_predictors_other_than_ancestral_are_refused():
    state = sv.set_timesteps(sv.load_config(config("DDPM")), 10)
    with pytest.raises(ValueError, match="euler_maruyama: the grid reaches t = 1"):
        sv.sample(state, lambda x, t: x, jax.random.key(0), (2, 3), predictor="euler_maruyama")


def test_continuous_grids_start_at_one_then_space_in_lambda(x64):
    """No lambda spacing starts at -inf: the log-SNR and Karras grids are t = 1, then from label 998's time."""
    state = sv.create_state(schedule=zsnr_schedule(), prediction_type="v_prediction")
    for spacing in ("logsnr", "karras"):
        t = np.asarray(sv.set_timesteps(state, 6, spacing=spacing).timesteps)
        assert t[0] == 1.0 and t[-1] == 1e-3 and np.all(np.diff(t) < 0)
        np.testing.assert_allclose(t[1], 0.999, rtol=1e-12)
        if spacing == "logsnr":
            lam = np.asarray(state.schedule.log_snr(jnp.asarray(t[1:])))
            np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-8)


def test_save_config_writes_the_field_back(tmp_path):
    state = sv.load_config(config("DPMSolverMultistep"), zero_snr="diffusers")
    path = sv.save_config(state, tmp_path)
    again = sv.load_config(path)
    assert again.diffusers_config.rescale_betas_zero_snr and again.schedule.zero_terminal_snr
    with pytest.raises(ValueError, match="zero_snr must be one of 'exact', 'diffusers'"):
        sv.load_config(config("DDIM"), zero_snr="clamp")


# --------------------------------------------------------------------------- statistics


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpm_solver_pp", "ancestral"])
def test_zero_snr_v_model_draws_the_mixture(method):
    """From x_T ~ N(0, I), which is p_1 exactly on a zero-SNR schedule, the mixture's exact v-model sampled on 50
    "trailing" labels draws the mixture: each mode's share within 5 binomial standard errors of its weight.

    M = 4000 samples, weight w: SE = sqrt(w (1 - w)/M) (<= 0.0079). The modes are 11 standard deviations
    apart, so assign_modes classifies without error; the discretisation's effect on the shares at 50 steps
    is below one SE at this M (measured at M = 40,000, seed 12: within 0.002 of the weights for DPM-Solver++,
    0.006 = 2.7 of that M's SE for the ancestral chain).
    """
    cls = "DPMSolverMultistep" if method == "dpm_solver_pp" else "DDPM"
    state = sv.set_timesteps(sv.load_config(config(cls)), 50)
    mix = sv.mixtures.default_mixture()
    model = sv.mixtures.make_mixture_eps_fn(state, mix)
    m = 4000
    if method == "ancestral":
        x = sv.sample(state, model, jax.random.key(11), (m, 2))
    else:
        x = sv.sample_ode(state, model, jax.random.key(11), (m, 2))
    shares = np.bincount(np.asarray(sv.mixtures.assign_modes(mix, x)), minlength=mix.num_components) / m
    w = np.asarray(mix.weights)
    assert np.all(np.abs(shares - w) <= 5 * np.sqrt(w * (1 - w) / m)), (shares, w)


def test_mixture_models_are_finite_at_alpha_zero(x64):
    """The embedded models' v at alpha = 0 is -E[x_0] (of the class, for the class model): finite, from the
    posterior mean (v = alpha eps - sigma x0_hat), where converting from eps would be 0/0."""
    state = sv.load_config(config("DDIM"))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2)))
    top = jnp.full((4,), 999.0)
    mix = sv.mixtures.default_mixture()
    w, mu = np.asarray(mix.weights), np.asarray(mix.means)
    np.testing.assert_allclose(np.asarray(sv.mixtures.make_mixture_eps_fn(state, mix)(x, top)),
                               np.broadcast_to(-(w @ mu), (4, 2)), rtol=1e-12)
    cm = sv.mixtures.default_class_mixture()
    classes = np.array([0, 1, 2, 0])
    v = np.asarray(sv.mixtures.make_class_model(state, cm)(x, top, jnp.asarray(classes, jnp.int32)))
    w, mu, member = np.asarray(cm.mixture.weights), np.asarray(cm.mixture.means), np.asarray(cm.classes)
    for b, c in enumerate(classes):
        wc = w * (member == c)
        np.testing.assert_allclose(v[b], -(wc @ mu) / wc.sum(), rtol=1e-12)
