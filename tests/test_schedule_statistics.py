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
    "euler": ("ode", {"method": "euler"}, 400),
    "heun": ("ode", {"method": "heun"}, 50),
    "dpm_solver": ("ode", {"method": "dpm_solver"}, 20),
    "adaptive": ("ode", {"method": "adaptive"}, 20),
}

_sample = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("predictor", "corrector"))
_sample_ode = jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method",))


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
    return sv.sample_mixture(mixture, key, m, alpha=a, sigma=s).astype(jnp.float32)


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
    freq = np.bincount(np.asarray(sv.assign_modes(mixture, x)), minlength=len(w)) / m
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


@pytest.mark.slow
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("grid", list(GRIDS))
def test_sampler_draws_the_mixture(grid, sampler):
    """M = 10,000 draws of the default 2-D mixture: mode weights, mean and covariance within 5 SE.

    Discretisation bias at the N of ``SAMPLERS``: measured with M = 100,000 (seed 0, exact p_{t_0} start)
    as the largest error over the 10 statistics in units of the 100,000-sample SE; a value below
    sqrt(10) ~ 3.2 there is below one SE at M = 10,000 (and includes the 100,000-sample noise itself,
    ~2 for a max over 10 statistics). Measured: SDE samplers at N = 250 -- at N = 200 already 0.4 to 3.6
    (the worst, reverse_diffusion on cosine, 3.6 at N = 200); ODE samplers: see ``SAMPLERS``.
    """
    family, _, n = SAMPLERS[sampler]
    state = make_state(grid, n)
    mixture = sv.default_mixture()
    model_fn = sv.make_mixture_eps_fn(state, mixture)
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
    mixture = sv.default_mixture(8)
    model_fn = sv.make_mixture_eps_fn(state, mixture)
    m = 10_000
    x = run(state, model_fn, sampler, jax.random.key(21), (m, 8), exact_prior(state, mixture, jax.random.key(22), m))
    assert_law(x, mixture, state, family == "sde", f"8-D scaled_linear/{sampler} N={n}")
