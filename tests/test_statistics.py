"""Statistics of the sampler: the embedded mixture is reached, and Euler-Maruyama has weak order 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import sde


def target_moments(mixture, a, s):
    """Exact mean (D,) and covariance (D, D) of a * X0 + s * Z, X0 ~ mixture."""
    w, mu, sc = (np.asarray(v, np.float64) for v in (mixture.weights, mixture.means, mixture.scales))
    means = a * mu  # (K, D)
    mean = w @ means
    cov = sum(w[k] * (np.diag(a**2 * sc[k] ** 2 + s**2) + np.outer(means[k], means[k])) for k in range(len(w)))
    return mean, cov - np.outer(mean, mean)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_euler_maruyama_reaches_the_mixture(dtype):
    """1000 steps (the paper's N) on the default 2-D mixture, M = 10,000 samples.

    In bfloat16 too: the samples are carried in bfloat16 (coefficients and the
    update in float32, rounded once a step), and the statistics must still hold.

    The sampler's limit is the data diffused to t = sampling_eps (its last step is
    taken at sampling_eps with a step that vanishes as N grows), so the target is
    a(eps) X0 + s(eps) Z. Tolerances are 5 standard errors of each estimator at
    this M (a false alarm for any one of the checks has probability < 6e-7).
    The discretisation bias at N = 1000 is small next to them:
    benchmarks/results/accuracy_vs_nfe.md (python benchmarks/accuracy_vs_nfe.py)
    measures, with 20,000 samples and so sampling noise included, a mean error of
    0.0054 (Euclidean) and a covariance error of 0.0086 (Frobenius) there.
    """
    m_samples, steps = 10_000, 1000
    mixture = sv.mixtures.default_mixture()
    state = sv.set_timesteps(sv.create_state(), steps)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    x = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("dtype",))(
        state, model_fn, jax.random.key(2024), (m_samples, 2), dtype=dtype)
    assert x.dtype == dtype
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    eps = state.sampling_eps
    a, s = float(sde.alpha(eps, 0.1, 20.0)), float(sde.sigma(eps, 0.1, 20.0))
    mean, cov = target_moments(mixture, a, s)

    # Mode weights: the count of mode k is Binomial(M, w_k); standard error sqrt(w(1-w)/M).
    w = np.asarray(mixture.weights, np.float64)
    freq = np.bincount(np.asarray(sv.mixtures.assign_modes(mixture, x)), minlength=5) / m_samples
    np.testing.assert_array_less(np.abs(freq - w), 5 * np.sqrt(w * (1 - w) / m_samples))

    # Mean: standard error sqrt(cov_ii / M).
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(np.diag(cov) / m_samples))

    # Covariance entries: each is the mean of the products c_i c_j of centred
    # samples, whose standard error is their standard deviation over sqrt(M).
    c = x - x.mean(0)
    products = c[:, :, None] * c[:, None, :]
    stderr = products.std(0) / np.sqrt(m_samples)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 5 * stderr)


def gaussian_em_moments(state, mu, scale):
    """Exact mean and variance of the sampler's output for 1-D N(mu, scale^2) data.

    For Gaussian data the exact eps is affine in x, so each step_pred is
    x' = A_i x + B_i + C_i z, and x_N is exactly Gaussian: its mean and variance
    follow m' = A m + B, v' = A^2 v + C^2 from x_T ~ N(0, 1), the last step
    without noise (sample returns x_mean). A, B, C are read off step_pred itself.
    The weak error of the whole law is then the error in (m, v): no Monte Carlo.
    """
    mixture = sv.mixtures.make_mixture([1.0], [[mu]], [[scale]])
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    one, zero = jnp.ones((1, 1)), jnp.zeros((1, 1))

    def step(carry, t):
        m, v, _, _ = carry
        t_vec = jnp.full((1,), t)

        def apply(x, z):
            return sv.step_pred(state, model_fn(x, t_vec), x, t_vec, None, noise=z)

        b = apply(zero, zero).prev_sample_mean
        a = apply(one, zero).prev_sample_mean - b
        c = apply(zero, one).prev_sample - b
        m_mean, v_mean = a * m + b, a**2 * v  # x_mean's law
        return (m_mean, v_mean + c**2, m_mean, v_mean), None

    init = (zero, one, zero, one)
    (_, _, m, v), _ = jax.lax.scan(step, init, state.timesteps)
    return float(m[0, 0]), float(v[0, 0])


@pytest.mark.slow
def test_euler_maruyama_has_weak_order_one(x64):
    """Fit log(error) against log(1/N): the slope is 1 within +-0.3 (as in diffrax's tests).

    The reference is the same recursion at N = 2**16 steps (its own error is
    ~2**-16 / 2**-4 = 1/4096 of the smallest-N error in the fit, so it does not
    bend the slope). The prior is N(0, 1) in both, so its mismatch with p_1 cancels.
    """
    mu, scale = 0.7, 0.2
    base = sv.create_state()
    m_ref, v_ref = gaussian_em_moments(sv.set_timesteps(base, 2**16), mu, scale)
    steps = np.array([16, 32, 64, 128, 256, 512])
    errors = []
    for n in steps:
        m, v = gaussian_em_moments(sv.set_timesteps(base, int(n)), mu, scale)
        errors.append(abs(m - m_ref) + abs(v - v_ref))
    slope = np.polyfit(np.log(1.0 / steps), np.log(errors), 1)[0]
    assert abs(slope - 1.0) < 0.3, (slope, errors)
    # and the limit is the data diffused to sampling_eps
    a, s = float(sde.alpha(1e-3, 0.1, 20.0)), float(sde.sigma(1e-3, 0.1, 20.0))
    assert abs(m_ref - a * mu) < 1e-3 and abs(v_ref - (a**2 * scale**2 + s**2)) < 1e-3
