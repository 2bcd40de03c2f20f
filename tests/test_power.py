"""Statistical power: every predictor's sample moments against its exact law, for Gaussian data.

For data N(mu, s^2 I) the diffused law at time t is N(alpha mu, v I) with
v = alpha^2 s^2 + sigma^2, and the exact score is (Song et al. 2021, eq. 11 and
its Gaussian perturbation kernel)

    score(x, t) = -(x - alpha(t) mu) / v(t),      eps_hat = -sigma(t) score.

Every predictor then takes a step of the form  x' = kx x + ks score + kz z,  i.e.
an affine recursion x' = A x + B + C z with

    A = kx - ks / v,   B = ks alpha mu / v,   C = kz,

so that, from x_T ~ N(0, I), the law after N steps is exactly Gaussian with mean
and variance given by  m' = A m + B,  v' = A^2 v + C^2  (the last step without its
noise: ``sample`` returns the last x_mean). The coefficients (kx, ks, kz) below
are written out from the papers' formulas, not read off the library:

* Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6 with f = -beta x / 2,
  g = sqrt(beta)), diffusers' step with |dt| = h = 1/N:
  x' = x + h (beta x / 2 + beta score) + sqrt(h beta) z.
* reverse diffusion (Song et al. 2021, eq. 47), beta_i = beta(t_i) / N:
  x' = (2 - sqrt(1 - beta_i)) x + beta_i score + sqrt(beta_i) z.
* ancestral (Ho et al. 2020; Song et al. 2021, eq. 46):
  x' = (x + beta_i score) / sqrt(1 - beta_i) + sqrt(beta_i) z.

The Monte Carlo check then compares sample moments with (m, v), and each test
first proves its own power: the exact moments of the same recursion with any one
coefficient 5% off land outside twice the tolerance band. The Langevin corrector
with its default step rule ("sigma": a step that depends on t alone) is affine
too: see test_langevin_corrector_moments_match_the_exact_recursion.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

BMIN, BMAX, EPS = 0.1, 20.0, 1e-3
MU, SCALE = 3.0, 0.5
# N = 50 > beta_max (the discrete chain needs beta_i < 1). B * D = 131,072 draws
# (the coordinates are independent and identically distributed: the data's
# covariance is s^2 I and every step acts per coordinate).
N, B, D = 50, 4096, 32
UNIT_ROUNDOFF = {jnp.float32: 2.0**-24, jnp.bfloat16: 2.0**-8}


def kernel(t):
    """beta(t), alpha(t), sigma(t) of the VP SDE, float64 numpy (Song et al. 2021, eq. 11 and app. B)."""
    beta = BMIN + t * (BMAX - BMIN)
    log_alpha = -0.25 * t**2 * (BMAX - BMIN) - 0.5 * t * BMIN
    return beta, np.exp(log_alpha), np.sqrt(-np.expm1(2.0 * log_alpha))


def step_coefficients(method, t, n):
    """(kx, ks, kz) of x' = kx x + ks score + kz z, from the papers' formulas (see the module docstring)."""
    beta, _, _ = kernel(t)
    if method == "euler_maruyama":
        h = 1.0 / n
        return 1.0 + 0.5 * h * beta, h * beta, np.sqrt(h * beta)
    beta_i = beta / n
    if method == "reverse_diffusion":
        return 2.0 - np.sqrt(1.0 - beta_i), beta_i, np.sqrt(beta_i)
    if method == "ancestral":
        return 1.0 / np.sqrt(1.0 - beta_i), beta_i / np.sqrt(1.0 - beta_i), np.sqrt(beta_i)
    raise AssertionError(method)


def exact_moments(method, n=N, *, drift_x=1.0, score=1.0, noise=1.0, rounding=0.0):
    """Mean and variance (per coordinate) of ``sv.sample``'s output, by the affine recursion.

    ``drift_x``, ``score`` and ``noise`` scale the x-increment (kx - 1), ks and kz: a
    perturbed sampler's exact moments.

    ``rounding = u`` adds, at every step, the variance of rounding the carried
    sample and the model output to a float format of unit roundoff u. By Widrow's
    quantization theorem, rounding to nearest on a grid of spacing q much finer
    than the spread of the values (here q <= 2u|x| <= 2^-5 for bfloat16 at |x| < 8,
    against a spread >= 0.5) leaves an error that is zero-mean and uncorrelated with
    the value, of variance q^2 / 12 <= u^2 x^2 / 3 per rounding. We add (2u)^2 E[x^2]
    per step: twelve times that for the two roundings, a generous margin.
    """
    m, v = 0.0, 1.0  # x_T ~ N(0, 1)
    for i, t in enumerate(np.linspace(1.0, EPS, n)):
        kx, ks, kz = step_coefficients(method, t, n)
        kx, ks, kz = 1.0 + drift_x * (kx - 1.0), score * ks, noise * kz
        _, alpha, sigma = kernel(t)
        var_t = alpha**2 * SCALE**2 + sigma**2
        a, b = kx - ks / var_t, ks * alpha * MU / var_t
        last = i == n - 1
        m, v = a * m + b, a * a * v + (0.0 if last else kz * kz) + (2.0 * rounding) ** 2 * ((a * m + b) ** 2 + v)
    return m, v


def tolerances(m, v, rounding_var):
    """Bands for the pooled mean and variance of B x D i.i.d. draws, 6 standard errors each.

    Mean: SE = sqrt(v / (B D)). Variance (per-coordinate sample variances, ddof=1,
    averaged over D): for Gaussian draws each has SE v sqrt(2 / (B - 1)), so the
    average has SE v sqrt(2 / (D (B - 1))). Six SE: a false alarm in any one check
    has probability 2e-9. In bfloat16, the rounding's variance (the recursion with
    ``rounding = u`` minus without, see :func:`exact_moments`) is added to the
    variance band, and to the variance in the mean's standard error (rounding
    errors are zero-mean).
    """
    tol_m = 6.0 * np.sqrt((v + rounding_var) / (B * D))
    tol_v = 6.0 * v * np.sqrt(2.0 / (D * (B - 1))) + rounding_var
    return tol_m, tol_v


PERTURBATIONS = [{"drift_x": f} for f in (0.95, 1.05)] + [{"score": f} for f in (0.95, 1.05)] + [
    {"noise": f} for f in (0.95, 1.05)]


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["euler_maruyama", "reverse_diffusion", "ancestral"])
def test_predictor_moments_match_the_exact_recursion(method, dtype):
    m, v = exact_moments(method)
    rounding_var = exact_moments(method, rounding=UNIT_ROUNDOFF[dtype])[1] - v
    tol_m, tol_v = tolerances(m, v, rounding_var)

    # Power: a sampler with any one coefficient 5% off has exact moments (m', v')
    # more than two bands away, so its sample moments (within one band of (m', v')
    # but for a 6-SE event) fall outside our band.
    for perturbation in PERTURBATIONS:
        m1, v1 = exact_moments(method, **perturbation)
        assert abs(m1 - m) > 2 * tol_m or abs(v1 - v) > 2 * tol_v, (perturbation, m1 - m, v1 - v, tol_m, tol_v)

    state = sv.set_timesteps(sv.create_state(beta_min=BMIN, beta_max=BMAX, sampling_eps=EPS), N)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture([1.0], [[MU] * D], SCALE))
    x = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("predictor", "dtype"))(
        state, model_fn, jax.random.key(14), (B, D), predictor=method, dtype=dtype)
    assert x.dtype == dtype
    x = np.asarray(x, np.float64)
    sample_mean = x.mean()
    sample_var = x.var(axis=0, ddof=1).mean()
    assert abs(sample_mean - m) < tol_m, (sample_mean, m, tol_m)
    assert abs(sample_var - v) < tol_v, (sample_var, v, tol_v)


def test_langevin_corrector_moments_match_the_exact_recursion():
    """K Langevin steps at a fixed t (default "sigma" rule), from x = 0, against their exact law.

    The step (Song et al. 2021, Algorithm 5, with the sigma rule of
    sv.langevin_correct) is x' = x + e score + sqrt(2 e) z with
    e = 2 (1 - beta(t)/N) (snr sigma(t))^2, written out here from the formula. For
    data N(mu, s^2 I) the score is -(x - alpha mu)/v, so x' = A x + B + C z with
    A = 1 - e/v, B = e alpha mu / v, C = sqrt(2 e): mean and variance follow the
    recursion exactly. Starting from x = 0 with mu = 10, K = 30 steps leave the
    chain half-way to p_t, so the mean shows a wrong step size (e x 1.05, in the
    drift and the noise alike) and the variance a wrong score or noise coefficient;
    each 5% perturbation is asserted to land more than two bands away. Bands as
    in :func:`tolerances` (6 SE of B x D i.i.d. draws).
    """
    n, t, snr, mu, steps, d = 50, 0.5, 0.16, 10.0, 30, 64
    beta, alpha, sigma = kernel(t)
    v = alpha**2 * SCALE**2 + sigma**2
    e = 2.0 * (1.0 - beta / n) * (snr * sigma) ** 2

    def moments(score=1.0, noise=1.0, step=1.0):
        m, var = 0.0, 0.0
        for _ in range(steps):
            a = 1.0 - score * step * e / v
            m, var = a * m + score * step * e * alpha * mu / v, a * a * var + noise**2 * 2.0 * step * e
        return m, var

    m, var = moments()
    tol_m, tol_v = 6.0 * np.sqrt(var / (B * d)), 6.0 * var * np.sqrt(2.0 / (d * (B - 1)))
    for perturbation in [{"score": 1.05}, {"score": 0.95}, {"noise": 1.05}, {"noise": 0.95},
                         {"step": 1.05}, {"step": 0.95}]:
        m1, v1 = moments(**perturbation)
        assert abs(m1 - m) > 2 * tol_m or abs(v1 - var) > 2 * tol_v, (perturbation, m1 - m, v1 - var)

    state = sv.set_timesteps(sv.create_state(beta_min=BMIN, beta_max=BMAX, sampling_eps=EPS), n)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture([1.0], [[mu] * d], SCALE))
    t_vec = jnp.full((B,), t, jnp.float32)

    @jax.jit
    def chain(key):
        def body(x, k):
            z = jax.random.normal(k, x.shape, jnp.float32)
            return sv.langevin_correct(state, model_fn(x, t_vec), x, t_vec, None, snr=snr, noise=z).prev_sample, None

        return jax.lax.scan(body, jnp.zeros((B, d), jnp.float32), jax.random.split(key, steps))[0]

    x = np.asarray(chain(jax.random.key(15)), np.float64)
    assert abs(x.mean() - m) < tol_m, (x.mean(), m, tol_m)
    assert abs(x.var(axis=0, ddof=1).mean() - var) < tol_v, (x.var(axis=0, ddof=1).mean(), var, tol_v)
