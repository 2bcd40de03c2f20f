"""Statistics on every schedule: each sampler draws the embedded mixture under the linear, cosine and
Stable Diffusion (scaled_linear) schedules; v- and x0-models sample as the eps-model they come from;
dsm_loss, log_likelihood and inpaint agree with closed forms off the linear schedule.

Targets. A run ends at the grid's last time t_L = state.timesteps[-1] (sampling_eps on the continuous
grids; a label's time on diffusers' label grids). The ODE samplers stop there, so they draw p_{t_L}:
the mixture diffused by (alpha, sigma) = (alpha(t_L), sigma(t_L)), component k ~ N(alpha mu_k,
alpha^2 s_k^2 + sigma^2). The SDE samplers take one more step, from t_L to 0, and return its noise-free
mean: to first order in sigma^2 that is Tweedie's denoiser E[x_0 | x_{t_L}] (for ancestral on the
exact-rate grid it is exactly DDPM's last step), whose law is, per component (the modes are 11 of their
standard deviations apart, so the responsibilities are 0 or 1 to 1e-8), N(mu_k, alpha^2 s_k^4 /
(alpha^2 s_k^2 + sigma^2)). The two targets differ by about 2 sigma(t_L)^2 in the within-mode variances.

Prior. Stable Diffusion's schedule does not reach zero SNR (alpha(1)^2 = alphas_cumprod[-1] = 0.0047), so
N(0, I) is not p_1 and its mismatch would be mixed into the sampler's error. The statistical tests start
every sampler from exact draws of p_{t_0} (``x_init``, t_0 = the grid's first time), which isolates the
sampler: what remains is the discretisation bias and the Monte Carlo error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
U32 = float(np.finfo(np.float32).eps) / 2  # float32's unit roundoff, 2**-24


def make_schedule(name):
    if name == "linear":
        return sv.schedules.linear()
    if name == "cosine":
        return sv.schedules.cosine()
    return sv.schedules.from_diffusers(**SD)


# schedule id -> (schedule name, set_timesteps keyword arguments): the state's default grid ("reference" for
# linear, "logsnr" for cosine and discrete) and one diffusers label spacing, "leading" with steps_offset=1.
GRIDS = {
    "linear": ("linear", {}),
    "cosine": ("cosine", {}),
    "scaled_linear": ("scaled_linear", {}),
    "scaled_linear-leading": ("scaled_linear", {"spacing": "leading", "steps_offset": 1}),
}

# sampler id -> (family, options, N). N is where the discretisation bias is below one standard error at the
# test's M = 10,000 (measured at M = 100,000 with a fixed seed, see test_sampler_draws_the_mixture).
SAMPLERS = {
    "euler_maruyama": ("sde", {"predictor": "euler_maruyama"}, 250),
    "ancestral": ("sde", {"predictor": "ancestral"}, 250),
    "reverse_diffusion": ("sde", {"predictor": "reverse_diffusion"}, 250),
    "pc_langevin": ("sde", {"predictor": "euler_maruyama", "corrector": "langevin"}, 250),
    "euler": ("ode", {"method": "euler"}, 100),
    "heun": ("ode", {"method": "heun"}, 25),
    "dpm_solver": ("ode", {"method": "dpm_solver"}, 20),
    "adaptive": ("ode", {"method": "adaptive"}, 20),
}

_sample = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("predictor", "corrector"))
_sample_ode = jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method", "return_info"))


def make_state(grid, n, prediction_type="epsilon"):
    name, options = GRIDS[grid]
    state = sv.create_state(schedule=make_schedule(name), prediction_type=prediction_type)
    return sv.set_timesteps(state, n, **options)


def alpha_sigma(state, t):
    with jax.enable_x64(True):
        a, s = state.schedule.alpha_sigma(jnp.asarray(float(t), jnp.float64))
        return float(a), float(s)


def exact_prior(state, mixture, key, m):
    """Exact draws of p_{t_0}, t_0 = the grid's first time (float32)."""
    a, s = alpha_sigma(state, state.timesteps[0])
    return sv.mixtures.sample_mixture(mixture, key, m, alpha=a, sigma=s).astype(jnp.float32)


def run(state, model_fn, sampler, key, shape, x_init=None):
    family, options, _ = SAMPLERS[sampler]
    if family == "ode":
        return _sample_ode(state, model_fn, key, shape, x_init=x_init, **options)
    return _sample(state, model_fn, key, shape, x_init=x_init, **options)


def target_law(mixture, a, s, denoised):
    """Weights (K,), mean (D,) and covariance (D, D) of the target (see the module docstring), float64."""
    w = np.asarray(mixture.weights, np.float64)
    mu = np.asarray(mixture.means, np.float64)
    s2 = np.square(np.asarray(mixture.scales, np.float64))
    if denoised:
        means, var = mu, a**2 * s2**2 / (a**2 * s2 + s**2)
    else:
        means, var = a * mu, a**2 * s2 + s**2
    mean = w @ means
    cov = sum(w[k] * (np.diag(var[k]) + np.outer(means[k] - mean, means[k] - mean)) for k in range(len(w)))
    return w, mean, cov


def moment_report(x, mixture, w, mean, cov, k=5.0):
    """For each statistic, (max |error| / (k standard errors), measured, expected) at M = len(x) samples.

    Standard errors: a mode weight's count is Binomial(M, w_k), SE sqrt(w (1 - w) / M); a coordinate's
    mean has SE sqrt(cov_ii / M); a covariance entry is the mean of the products (x_i - m_i)(x_j - m_j),
    SE = their standard deviation / sqrt(M) (plug-in). With k = 5 a false alarm of one statistic has
    probability < 6e-7 under the normal approximation (the seeds are fixed, so a run is reproducible).
    """
    m = len(x)
    freq = np.bincount(np.asarray(sv.mixtures.assign_modes(mixture, x)), minlength=len(w)) / m
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]
    sample_cov = np.cov(x.T)
    report = {}
    for name, got, want, se in (
        ("mode weights", freq, w, np.sqrt(w * (1 - w) / m)),
        ("mean", x.mean(0), mean, np.sqrt(np.diag(cov) / m)),
        ("covariance", sample_cov, cov, products.std(0) / np.sqrt(m)),
    ):
        ratio = np.abs(got - want) / (k * se)
        i = np.unravel_index(np.argmax(ratio), ratio.shape)
        report[name] = (float(ratio[i]), float(got[i]), float(want[i]))
    return report


def assert_law(x, mixture, state, denoised, label):
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x)), label
    a, s = alpha_sigma(state, state.timesteps[-1])
    report = moment_report(x, mixture, *target_law(mixture, a, s, denoised))
    bad = {k: v for k, v in report.items() if not v[0] < 1.0}
    assert not bad, f"{label}: (error / 5 SE, measured, expected) {bad}"


# ------------------------------------------------------------------------------------------------ 1. statistics


# Kept within the suite's time budget: the linear schedule's statistics are test_statistics.py's,
# test_corrector.py's and test_ode.py's; on the label grid one SDE and one ODE sampler (the adaptive
# solver uses only a grid's end points anyway).
STATISTICS_CASES = [(g, s) for g in GRIDS for s in SAMPLERS
                    if g != "linear" and (g != "scaled_linear-leading" or s in ("ancestral", "dpm_solver"))]


@pytest.mark.slow
@pytest.mark.parametrize("grid,sampler", STATISTICS_CASES)
def test_sampler_draws_the_mixture(grid, sampler):
    """M = 10,000 draws of the default 2-D mixture: mode weights, mean and covariance within 5 SE.

    Discretisation bias at the N of ``SAMPLERS``: measured with M = 100,000 (seed 0, exact p_{t_0} start)
    as the largest error over the 10 statistics in units of the 100,000-sample SE; a value below
    sqrt(10) ~ 3.2 there is below one SE at M = 10,000 (and includes the 100,000-sample noise itself,
    ~2 for a max over 10 statistics). Measured: SDE samplers at N = 250 -- at N = 200 already 0.4 to 3.6
    (the worst, reverse_diffusion on cosine, 3.6 at N = 200; these predictors have weak order 1, so
    N = 250 takes it to ~2.9, 0.9 SE at M = 10,000). ODE samplers (cosine and scaled_linear, M = 100,000):
    euler at N = 100 at most 4.0 (3.0 at N = 400), heun at N = 25 at most 4.2 (1.6 at N = 50, 1.2 at
    N = 100; so N = 50 would be safer on cosine, 25 keeps its bias ~1 SE), dpm_solver at N = 20 at most
    4.9 (7.3 at N = 10), adaptive 1.3. The seed's own Monte Carlo error at M = 100,000 is 2.7-3.0 in these
    units (the value the errors settle at as N grows), so all biases are below ~1 SE at M = 10,000.
    Command: the same run with M = 100,000 and several N (not committed; see the report to the lead).
    """
    family, _, n = SAMPLERS[sampler]
    state = make_state(grid, n)
    mixture = sv.mixtures.default_mixture()
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    m = 10_000
    x = run(state, model_fn, sampler, jax.random.key(11), (m, 2), exact_prior(state, mixture, jax.random.key(12), m))
    assert_law(x, mixture, state, family == "sde", f"{grid}/{sampler} N={n}")


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ancestral", "dpm_solver"])
def test_sampler_draws_the_8d_mixture_on_scaled_linear(sampler):
    """The 8-D default mixture (6 coordinates N(0, 0.5^2) in every mode) under Stable Diffusion's schedule.

    M = 10,000; 5 mode weights, 8 means and 36 covariance entries, each within 5 SE (as in the 2-D test).
    """
    family, _, n = SAMPLERS[sampler]
    state = make_state("scaled_linear", n)
    mixture = sv.mixtures.default_mixture(8)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    m = 10_000
    x = run(state, model_fn, sampler, jax.random.key(21), (m, 8), exact_prior(state, mixture, jax.random.key(22), m))
    assert_law(x, mixture, state, family == "sde", f"8-D scaled_linear/{sampler} N={n}")


# ------------------------------------------------------------------------ 2. v and x0 models sample as the eps-model

# Each sampler family on one schedule at least: (sampler, grid) pairs, every sampler on a non-linear schedule.
EQUIVALENCE = [
    # (the conversion is at the model boundary every sampler shares; two pairs run in the full suite only)
    pytest.param("euler_maruyama", "cosine", marks=pytest.mark.slow),
    ("ancestral", "scaled_linear"),
    ("reverse_diffusion", "scaled_linear-leading"),
    pytest.param("pc_langevin", "cosine", marks=pytest.mark.slow),
    ("euler", "scaled_linear"),
    ("heun", "cosine"),
    ("dpm_solver", "scaled_linear"),
]
EQUIVALENCE_STEPS = 40


def prediction_type_runs(grid, n, sampler, mixture, key, shape):
    """``x_init -> (eps-run, v-run, x0-run)``: the mixture's exact model in each parametrization, same key and
    grid. The three runs are traced into one jitted program: one compilation instead of three (measured on
    three of the cases: about half the compile time, and the samples bitwise those of three programs)."""
    family, options, _ = SAMPLERS[sampler]
    states = [make_state(grid, n, prediction_type) for prediction_type in ("epsilon", "v_prediction", "sample")]

    def one(state, x_init):
        model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
        loop = sv.sample_ode if family == "ode" else sv.sample
        return loop(state, model_fn, key, shape, x_init=x_init, **options)

    runs = jax.jit(lambda x_init: tuple(one(state, x_init) for state in states))
    return lambda x_init: tuple(np.asarray(x, np.float64) for x in runs(x_init))


def flow_condition(runs, x_init, delta=1e-3):
    """Per sample, max_j |out(x_init + delta e_j) - out(x_init)|_inf / delta: the map's amplification.

    ``out`` is the eps-run of ``runs`` (its first output). A finite difference (the adaptive solver's
    while_loop has no forward-mode derivative here); delta = 1e-3 is far above float32 rounding and small
    next to the modes' scale 0.15.
    """
    out = runs(x_init)
    cond = np.zeros(x_init.shape[0])
    for j in range(x_init.shape[1]):
        moved = runs(x_init.at[:, j].add(delta))[0]
        cond = np.maximum(cond, np.max(np.abs(moved - out[0]), axis=1) / delta)
    return out, cond


@pytest.mark.parametrize("sampler,grid", EQUIVALENCE)
def test_v_and_x0_models_sample_as_the_eps_model(sampler, grid):
    """Same key, same grid, same x_T: the converted models' samples equal the eps-model's to float32 rounding.

    In exact arithmetic the runs are identical: make_mixture_eps_fn returns prediction_from_eps(eps) and the
    sampler applies eps_from_prediction on entry. In float32 the round trip changes the eps a step sees
    by a few units of rounding: ~u (|eps| + sigma |x|) for v, and, for x0, eps = (x - alpha x0_hat) / sigma,
    ~u |x| / sigma, which the step multiplies by its eps coefficient (of order sigma: h beta / sigma,
    beta_i / sigma, sigma_next (e^h - 1)), so each step moves x by a few u max(1, |x|). The remaining steps
    carry that difference to the end; we take their amplification to be at most the whole map's,
    cond = max(1, |d out / d x_T|) (a finite difference per sample: up to ~50 on these grids for samples
    that start near a boundary between modes; below 1 for the SDE samplers, whose noise dominates).
    Over N steps:

        |x_pt - x_eps|_inf <= 8 N u max(1, |x|_inf) cond   per sample.

    Measured (cosine, N = 50, 256 samples, every fixed-step sampler): the difference is 0 to 8 ulps for most
    samples, and its largest ratio to N u max(1, |x|) cond is 1.3 (euler_maruyama, x0); 8 leaves a factor 6.

    The adaptive solver is not a rounding question: its accept/reject decisions flip with the rounding, so
    two runs differ by up to twice the solver's own error E (each is within E of the exact flow). E is
    estimated, for the batch, as the largest change of the eps-run when rtol = atol tighten from 1e-5 to
    1e-6 (per sample that change is too noisy to use); tolerance 3 E (2 E, times 1.5 for the estimate).
    Measured (N = 20, 64 samples): the differences are 0.5 to 1.45 E (cosine and scaled_linear, v and x0), E = 2.8e-4 on
    cosine and 1.9e-3 on scaled_linear (whose piecewise-constant beta makes the ODE's right-hand side
    jump at every training label).
    """
    mixture = sv.mixtures.default_mixture()
    m, n = (16 if sampler == "adaptive" else 64), EQUIVALENCE_STEPS
    key = jax.random.key(31)
    eps_state = make_state(grid, n)
    eps_fn = sv.mixtures.make_mixture_eps_fn(eps_state, mixture)
    x_init = jax.random.normal(jax.random.key(32), (m, 2), jnp.float32)
    family = SAMPLERS[sampler][0]
    runs = prediction_type_runs(grid, n, sampler, mixture, key, (m, 2))
    if sampler == "adaptive":
        ref, *converted = runs(x_init)
        tight = _sample_ode(eps_state, eps_fn, key, (m, 2), method="adaptive", x_init=x_init, rtol=1e-6, atol=1e-6)
        solver_error = np.max(np.abs(np.asarray(tight, np.float64) - ref))
        tol = np.full(m, 3.0 * solver_error)
    else:
        if family == "ode":
            (ref, *converted), cond = flow_condition(runs, x_init)
        else:  # the SDE's noise dominates: cond < 1 (measured 0.1), taken as 1
            (ref, *converted), cond = runs(x_init), 0.0
        size = np.maximum(1.0, np.max(np.abs(ref), axis=1))
        tol = 8 * n * U32 * size * np.maximum(1.0, cond)
    t = jnp.full((m,), 0.5 * float(eps_state.timesteps[0]), eps_state.timesteps.dtype)
    for prediction_type, got in zip(("v_prediction", "sample"), converted):
        state = make_state(grid, n, prediction_type)
        model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
        assert state.prediction_type == prediction_type
        diff = np.max(np.abs(got - ref), axis=1)
        worst = int(np.argmax(diff / tol))
        assert np.all(diff <= tol), (prediction_type, diff[worst], tol[worst])
        # and the conversion did something: the model's outputs are not the eps-model's
        assert not np.allclose(model_fn(x_init, sv.model_time(state, t)), eps_fn(x_init, sv.model_time(state, t)))


# ----------------------------------------------------------------------------------------------- 3. dsm_loss

GAUSS_MU, GAUSS_SCALE = np.array([0.5, -0.3]), 0.4  # data N(mu, s^2 I), D = 2
# cosine in the full suite only: scaled_linear (the default tier) also checks the discrete labels
LOSS_SCHEDULES = [pytest.param("cosine", marks=pytest.mark.slow), "scaled_linear"]


def expected_losses(state, t_min=1e-5):
    r"""E over t and the data of the exact model's per-sample losses, by prediction type (float64).

    For data N(mu, S^2 I) the exact eps-model is E[z | x_t] = sigma (x_t - alpha mu) / V, V = alpha^2 S^2 +
    sigma^2. With x_t - alpha mu = alpha S g + sigma z (g, z independent N(0, I)) its error is
    eps_hat - z = (sigma alpha S g - alpha^2 S^2 z) / V, of variance alpha^2 S^2 / V per coordinate, so
    E|eps_hat - z|^2 = D alpha^2 S^2 / V. The v- and x0-errors are that error times 1/alpha and
    -sigma/alpha: D S^2 / V and D S^2 sigma^2 / V. Then the mean over dsm_loss's t: uniform on
    (t_min, t_max) (Gauss-Legendre, 400 nodes: the integrands are smooth) or on the training labels.
    """
    schedule = state.schedule
    d, s2 = len(GAUSS_MU), GAUSS_SCALE**2
    with jax.enable_x64(True):
        if schedule.is_discrete:
            n = state.num_train_timesteps
            t, w = (np.arange(n) + 1.0) / n, np.full(n, 1.0 / n)
        else:
            nodes, weights = np.polynomial.legendre.leggauss(400)
            lo, hi = t_min, float(schedule.t_max)
            t, w = lo + (hi - lo) * (nodes + 1) / 2, weights / 2
        # jitted: one compilation, not one per operation dispatched on its own
        a, s = (np.asarray(v, np.float64) for v in jax.jit(schedule.alpha_sigma)(jnp.asarray(t, jnp.float64)))
    v = a**2 * s2 + s**2
    return {
        "epsilon": float(w @ (d * a**2 * s2 / v)),
        "v_prediction": float(w @ (d * s2 / v)),
        "sample": float(w @ (d * s2 * s**2 / v)),
    }


def per_sample_losses(states, key, m):
    """(plain, likelihood-weighted) dsm_loss of the exact model on m data points, one call per point (own key),
    for each state of ``states`` (the same points and keys for every state). The states differ in their static
    prediction_type, so each is its own computation, but they are traced into one jitted program: one
    compilation for the three prediction types (measured: 1.2 s of XLA compilation instead of 2.6 s)."""
    mixture = sv.mixtures.make_mixture([1.0], [GAUSS_MU], [[GAUSS_SCALE] * len(GAUSS_MU)])
    x0 = sv.mixtures.sample_mixture(mixture, jax.random.key(41), m)
    keys = jax.random.split(key, m)

    def losses(state, k, x):
        model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
        return (sv.dsm_loss(state, model_fn, x[None], k),
                sv.dsm_loss(state, model_fn, x[None], k, likelihood_weighting=True))

    every = jax.jit(lambda keys, x0: [jax.vmap(lambda k, x: losses(state, k, x))(keys, x0) for state in states])
    out = [(np.asarray(plain, np.float64), np.asarray(weighted, np.float64)) for plain, weighted in every(keys, x0)]
    return out, np.asarray(x0, np.float64)


@pytest.mark.parametrize("grid", LOSS_SCHEDULES)
def test_dsm_loss_of_the_exact_model_on_every_prediction_type(grid):
    """The exact model's loss matches its closed form; the three parametrizations agree per sample.

    M = 10,000 per-sample losses (same keys for the three types: the same t and z). Their mean is within
    5 SE of ``expected_losses`` (SE = the per-sample losses' standard deviation / sqrt(M)).

    Per sample, the losses are |e|^2, |e|^2 / alpha^2 and |e|^2 sigma^2 / alpha^2 for one error e, so
    L_v = L_eps + L_x0 (alpha^2 + sigma^2 = 1) whatever t was drawn. In float32 each loss is a sum of
    squares of differences of numbers of size <= |x| + |x0| + |z| (<= ~8 here): absolute error about
    4 u (that size) per coordinate in each difference, hence about 8 u (size) sqrt(L) in L; tolerance
    64 u size (1 + sqrt(L_v)) (L_eps, L_x0 <= L_v).
    The likelihood-weighted losses multiply the squared output error by c^2 beta / sigma^2 with
    c = 1, alpha, -alpha/sigma, so the three are the same number, beta |e|^2 / sigma^2: their batch means
    agree to a relative 1e-3 (the x0-model's error is a difference of O(1) numbers of size sigma |e| /
    alpha: relative rounding ~8 u / sigma, ~1e-3 at the smallest sigma ~ 6e-4 of t = 1e-5 on cosine; the
    batch means are dominated by larger t).

    On the discrete schedule each sample's t is a training label's: L_eps / L_v = alpha(t)^2 must be one of
    alphas_cumprod, to a relative 1e-4 (about 100 times the float32 rounding of the ratio of two losses;
    a time between labels would miss by up to the relative gap between neighbours, beta_n >= 8.5e-4).
    """
    m = 10_000
    key = jax.random.key(40)
    expected = expected_losses(make_state(grid, 2))
    losses, weighted = {}, {}
    states = [sv.create_state(schedule=make_schedule(GRIDS[grid][0]), prediction_type=prediction_type)
              for prediction_type in sv.PREDICTION_TYPES]
    every, x0 = per_sample_losses(states, key, m)
    for prediction_type, (losses[prediction_type], weighted[prediction_type]) in zip(sv.PREDICTION_TYPES, every):
        got, se = losses[prediction_type].mean(), losses[prediction_type].std() / np.sqrt(m)
        assert abs(got - expected[prediction_type]) < 5 * se, (prediction_type, got, expected[prediction_type], se)
    l_eps, l_v, l_x0 = losses["epsilon"], losses["v_prediction"], losses["sample"]
    size = 8.0  # |x_t|, |x0|, |z| < 8 here: |mu| + 5 s and 5-sigma normal draws (checked next)
    assert np.max(np.abs(x0)) < size
    np.testing.assert_array_less(np.abs(l_v - (l_eps + l_x0)), 64 * U32 * size * (1 + np.sqrt(l_v)))
    # the three are not the same numbers unweighted (the factors do something)
    assert np.mean(l_v) > 1.1 * np.mean(l_eps) and np.mean(l_x0) < 0.9 * np.mean(l_eps)
    for prediction_type in ("v_prediction", "sample"):
        np.testing.assert_allclose(weighted[prediction_type].mean(), weighted["epsilon"].mean(), rtol=1e-3)
    if grid == "scaled_linear":
        betas = np.linspace(SD["beta_start"] ** 0.5, SD["beta_end"] ** 0.5, 1000) ** 2
        alphas_cumprod = np.cumprod(1 - betas)
        ratio = l_eps / l_v
        nearest = alphas_cumprod[np.argmin(np.abs(ratio[:, None] - alphas_cumprod[None]), axis=1)]
        np.testing.assert_array_less(np.abs(ratio / nearest - 1), 1e-4)
        assert len(np.unique(nearest)) > 900  # and (nearly) every label was drawn


# ------------------------------------------------------------------------------------------ 4. log_likelihood


# cosine in the full suite only; scaled_linear (the default tier) is the one with schedule_jumps
@pytest.mark.parametrize("grid", [pytest.param("cosine", marks=pytest.mark.slow), "scaled_linear"])
def test_log_likelihood_of_a_gaussian_matches_the_closed_form(grid):
    """One Gaussian N(0, S^2 I), D = 3: at t = sampling_eps the density is N(0, (alpha^2 S^2 + sigma^2) I).

    On the discrete schedule the solver steps to each jump of beta (loops.schedule_jumps); without that it
    missed by up to 0.011 nats here (beta is piecewise constant with 1000 jumps).

    With the data's own p_{t_max} as the prior (the same closed form at t_max) what remains is the ODE
    and trace error; within 1e-3 nats, as tests/test_likelihood.py holds the linear schedule.
    """
    scale, d = 0.5, 3
    state = sv.create_state(schedule=make_schedule(grid))
    mixture = sv.mixtures.make_mixture([1.0], [[0.0] * d], [[scale] * d])
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)

    def gauss_logp(x, t):
        a, s = alpha_sigma(state, t)
        var = a**2 * scale**2 + s**2
        return -0.5 * d * np.log(2 * np.pi * var) - 0.5 * jnp.sum(jnp.square(x), axis=-1) / var

    def prior(x1):
        return gauss_logp(x1, state.schedule.t_max)

    a, s = alpha_sigma(state, state.sampling_eps)
    x = sv.mixtures.sample_mixture(mixture, jax.random.key(50), 6, alpha=a, sigma=s)
    ll = np.asarray(sv.log_likelihood(state, model_fn, x, None, trace="exact", prior_logp=prior), np.float64)
    closed = np.asarray(gauss_logp(x, state.sampling_eps), np.float64)
    np.testing.assert_array_less(np.abs(ll - closed), 1e-3)


# ----------------------------------------------------------------------------------------------- 5. inpaint


@pytest.mark.slow
def test_inpaint_with_a_v_model_on_the_cosine_schedule():
    """Replacement-method inpainting, cosine schedule, a v-prediction model, N = 200 (ancestral's bias at
    that N on cosine is below one SE of these M, see test_sampler_draws_the_mixture).

    (a) Independent Gaussian in 4-D, dims 0-1 known (set to unlikely values on purpose): the unknown dims
    keep their law, the denoised law of the module docstring, N(mu, alpha^2 s^4 / (alpha^2 s^2 + sigma^2))
    at t_L = sampling_eps: mean within 5 SE (sqrt(var / M)), variance within 5 SE (var sqrt(2 / (M - 1)),
    a Gaussian's), M = 4,000.
    (b) Two modes (+3, ..., +3) and (-3, ..., -3), scale 0.3, dim 3 unknown: its conditional mean given the
    known dims is +-3 (the known values tell the mode with probability 1 - 1e-30). The filled values'
    mean per observed sign is within 5 SE of it. Known entries are returned exactly (bitwise).
    """
    state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.cosine(), prediction_type="v_prediction"), 200)
    a, s = alpha_sigma(state, state.timesteps[-1])
    mu, scale = np.array([0.5, -1.0, 0.8, -0.3]), np.array([0.3, 0.5, 0.4, 0.7])
    gauss_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture([1.0], [mu], [scale]))
    m = 4_000
    y_gauss = jnp.tile(jnp.asarray([[3.0, -3.0, 0.0, 0.0]], jnp.float32), (m, 1))
    mixture = sv.mixtures.make_mixture([0.5, 0.5], [[3.0] * 4, [-3.0] * 4], 0.3)
    modes_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    y_modes = sv.mixtures.sample_mixture(mixture, jax.random.key(61), 1_000)

    # (a) and (b) traced into one jitted program (one compilation instead of two)
    @jax.jit
    def fill_both(gauss, modes):  # each (key, y, mask)
        return (sv.inpaint(state, gauss_fn, *gauss, predictor="ancestral"),
                sv.inpaint(state, modes_fn, *modes, predictor="ancestral"))

    x, x_modes = fill_both((jax.random.key(60), y_gauss, jnp.array([1, 1, 0, 0])),
                           (jax.random.key(62), y_modes, jnp.array([1, 1, 1, 0])))
    y = y_gauss
    np.testing.assert_array_equal(x[:, :2], y[:, :2])
    x = np.asarray(x, np.float64)
    var = a**2 * scale[2:] ** 4 / (a**2 * scale[2:] ** 2 + s**2)
    np.testing.assert_array_less(np.abs(x[:, 2:].mean(0) - mu[2:]), 5 * np.sqrt(var / m))
    np.testing.assert_array_less(np.abs(x[:, 2:].var(0, ddof=1) - var), 5 * var * np.sqrt(2 / (m - 1)))

    y, x = y_modes, x_modes
    np.testing.assert_array_equal(x[:, :3], y[:, :3])
    sign = np.sign(np.asarray(y[:, 0]))
    filled = np.asarray(x[:, 3], np.float64)
    for mode in (1.0, -1.0):
        part = filled[sign == mode]
        assert len(part) > 400
        assert abs(part.mean() - 3.0 * mode) < 5 * part.std(ddof=1) / np.sqrt(len(part)), (mode, part.mean())
