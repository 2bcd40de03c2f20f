"""SDE-DPM-Solver++ 2M/3M with k-diffusion's eta and s_noise (sdevp_jax/solvers/dpm.py, sde_dpmpp_step).

Parity with k-diffusion's ``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde`` (tests/golden/make_kdiff_golden.py
runs them from a checkout in float64 with sv's noise), the step's arithmetic against the exact integral of a
polynomial data prediction, the deterministic limit eta = 0 against DPM-Solver++, and the distribution on a
mixture.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import sdevp_jax as sv
from gaussian_model import assert_draws_the_mixture
from sdevp_jax import solvers

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "kdiff.npz")
RTOL = 1e-10


def _load():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


G = _load()
CASES = sorted(k.rsplit("/", 1)[0] for k in G if k.endswith("/final"))


def _kdiff_options(case):
    """sample_ode's options reproducing a golden case ``<sampler>/<solver_type>/<eta>/<s_noise>/<N>``."""
    sampler, solver_type, eta, s_noise, _ = case.split("/")
    options = dict(method="sde_dpm_solver_pp", solver_type=solver_type, eta=float(eta), s_noise=float(s_noise),
                   lower_order_final=False, final_sigmas_type="zero")
    if sampler == "3m_sde":
        options.update(order=3, third_order="k-diffusion")
    return options


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c == CASES[0] else pytest.mark.slow) for c in CASES])
def test_matches_k_diffusion(x64, case):
    """max|x - ref| / max|ref| <= 1e-10 against k-diffusion's sampler on the same grid, model and noise.

    k-diffusion steps first order, then its 2M / 3M order (3M's second step: the heun term), to the end; its
    last step to sigma = 0 returns the denoiser: sv's lower_order_final=False with final_sigmas_type="zero".
    """
    n = int(case.rsplit("/", 1)[1])
    state = sv.set_timesteps(sv.create_state(), n, spacing="logsnr")
    mixture = sv.mixtures.make_mixture(**json.loads(str(G["mixture"])))
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
    options = _kdiff_options(case)
    solver = solvers.make("sde_dpm_solver_pp")  # the grid: the same for every option
    t = solver.times(state, jnp.float64)
    grid = solvers.Grid.build(state.schedule.cast(jnp.float64), t)
    np.testing.assert_array_equal(np.asarray(t), G[f"grid/{n}/t"])  # the golden's grid is this one
    np.testing.assert_array_equal(np.asarray(grid.sigma), G[f"grid/{n}/sigma"])
    np.testing.assert_array_equal(np.asarray(grid.alpha), G[f"grid/{n}/alpha"])
    x = sv.sample_ode(state, model_fn, jax.random.key(int(G["seed"])), G["x_init"].shape, dtype=jnp.float64,
                      x_init=jnp.asarray(G["x_init"]), **options)
    ref = G[f"{case}/final"]
    assert np.max(np.abs(np.asarray(x) - ref)) / np.max(np.abs(ref)) <= RTOL


def test_golden_cases_cover_both_samplers_and_the_options():
    assert {c.split("/")[0] for c in CASES} == {"2m_sde", "3m_sde"}
    assert {c.split("/")[1] for c in CASES if c.startswith("2m")} == {"midpoint", "heun"}
    assert {c.split("/")[2] for c in CASES} >= {"0.0", "0.5", "1.0"} and len({c.split("/")[3] for c in CASES}) >= 3


def _polynomial_setup(coeffs, lams):
    """A data prediction polynomial in lambda, ``D(lam) = sum_i c_i lam^i`` (NumPy, per entry), and a History with
    its values at ``lams[1]``, ``lams[2]`` (the two previous points)."""
    def d_at(lam):
        return sum(c * lam**i for i, c in enumerate(coeffs))

    x = jnp.ones((2, 2), jnp.float64)
    hist = solvers.History.init(x)._replace(m1=jnp.asarray(d_at(lams[1])), m2=jnp.asarray(d_at(lams[2])),
                                            lam1=jnp.float64(lams[1]), lam2=jnp.float64(lams[2]))
    return d_at, hist


def _coeffs(alpha_s, alpha_t):
    """The StepCoeffs of a step between two VP points given by their alphas (sigma^2 = 1 - alpha^2)."""
    a = np.array([alpha_s, alpha_t])
    sigma = np.sqrt(1.0 - a * a)
    lam, f = np.log(a / sigma), jnp.float64
    return solvers.StepCoeffs(f(lam[0]), f(lam[1]), f(a[0]), f(sigma[0]), f(a[1]), f(sigma[1]), f(np.log(a[0])),
                              f(np.log(a[1])))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("order, solver_type, third_order, degree", [
    (1, "heun", "taylor", 0), (2, "heun", "taylor", 1), (3, "heun", "taylor", 2), (3, "midpoint", "taylor", 2),
    (3, "heun", "k-diffusion", 1), (3, "heun", "diffusers", 1)])
def test_step_integrates_a_polynomial_prediction_exactly(x64, eta, order, solver_type, third_order, degree):
    """Without noise the step is exact for a data prediction polynomial in lambda of degree order - 1.

    Reference: the linear part's solution x_t = sigma_t/sigma_s e^{-eta h} x_s + alpha_t int_0^h (1 + eta)
    e^{-(1+eta)(h - v)} D(lam_s + v) dv (sde_dpmpp_step's docstring), integrated by scipy's adaptive quadrature
    (error ~1e-14). The steps before are unequal (r0, r1 != 1) so the divided differences are tested in general.
    k-diffusion's and diffusers' third-order terms are exact only through degree 1 (their D2 coefficient is not
    the Taylor integral); test_third_order_variants_differ_on_a_quadratic checks they do differ there.
    """
    c = _coeffs(0.35, 0.6)
    lam_s, lam_t = float(c.lam_s), float(c.lam_t)
    h = lam_t - lam_s
    lams = (lam_s, lam_s - 0.7 * h, lam_s - 1.9 * h)
    rng = np.random.default_rng(degree)
    coeffs = [rng.standard_normal((2, 2)) for _ in range(degree + 1)]
    d_at, hist = _polynomial_setup(coeffs, lams)
    x = jnp.asarray(rng.standard_normal((2, 2)))
    got = solvers.sde_dpmpp_step(x, jnp.asarray(d_at(lam_s)), hist, c, order, None, solver_type=solver_type,
                                 eta=eta, third_order=third_order)
    kernel = np.zeros((2, 2))
    for idx in np.ndindex(2, 2):
        kernel[idx] = integrate.quad(lambda v: (1 + eta) * np.exp(-(1 + eta) * (h - v)) * d_at(lam_s + v)[idx],
                                     0.0, h, epsabs=1e-15, epsrel=1e-13)[0]
    exact = float(c.sigma_t / c.sigma_s) * np.exp(-eta * h) * np.asarray(x) + float(c.alpha_t) * kernel
    np.testing.assert_allclose(np.asarray(got), exact, rtol=1e-11, atol=1e-12)


def test_third_order_variants_differ_on_a_quadratic(x64):
    """On D = lam^2 (D2 = h^2 exactly): the D2 coefficients are -2 alpha_t phi3 ('taylor', exact above),
    -alpha_t phi3 ('k-diffusion') and -alpha_t (phi3 + 1) ('diffusers'), so the other two differ from 'taylor'
    by alpha_t phi3 D2 and alpha_t (phi3 - 1) D2, phi3 = phi2/H - 1/2 from the step's H = (1 + eta) h."""
    c = _coeffs(0.35, 0.6)
    lam_s, lam_t = float(c.lam_s), float(c.lam_t)
    h = lam_t - lam_s
    lams = (lam_s, lam_s - 0.7 * h, lam_s - 1.9 * h)
    coeffs = [np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 2))]  # D = lam^2
    d_at, hist = _polynomial_setup(coeffs, lams)
    x = jnp.zeros((2, 2), jnp.float64)
    run = {v: solvers.sde_dpmpp_step(x, jnp.asarray(d_at(lam_s)), hist, c, 3, None, solver_type="heun", eta=0.5,
                                     third_order=v)
           for v in solvers.dpm.SDE_THIRD_ORDER}
    big_h = 1.5 * h
    phi2 = 1.0 - (-np.expm1(-big_h)) / big_h
    phi3 = phi2 / big_h - 0.5
    d2 = h * h  # D2 = h^2 D''/2 for a quadratic, D'' = 2
    np.testing.assert_allclose(run["k-diffusion"] - run["taylor"], float(c.alpha_t) * phi3 * d2, rtol=1e-9)
    np.testing.assert_allclose(run["diffusers"] - run["taylor"], float(c.alpha_t) * (phi3 - 1.0) * d2, rtol=1e-9)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order, third_sde, third_ode", [(1, "taylor", "taylor"), (2, "taylor", "taylor"),
                                                         (3, "taylor", "taylor"), (3, "k-diffusion", "diffusers")])
def test_eta_zero_is_dpm_solver_pp(x64, order, solver_type, third_sde, third_ode):
    """eta = 0: no noise and the ODE's kernel, DPM-Solver++'s step (dpmpp_step) to rounding; k-diffusion's
    3M term is DPM-Solver++'s 'diffusers' half term."""
    c = _coeffs(0.2, 0.5)
    rng = np.random.default_rng(order)
    x, d0 = (jnp.asarray(rng.standard_normal((3, 2))) for _ in range(2))
    hist = solvers.History.init(x)._replace(m1=jnp.asarray(rng.standard_normal((3, 2))),
                                            m2=jnp.asarray(rng.standard_normal((3, 2))),
                                            lam1=c.lam_s - 0.4, lam2=c.lam_s - 1.1)
    z = jnp.asarray(rng.standard_normal((3, 2)))
    sde = solvers.sde_dpmpp_step(x, d0, hist, c, order, z, solver_type=solver_type, eta=0.0, third_order=third_sde)
    ode = solvers.dpmpp_step(x, d0, hist, c, order, solver_type=solver_type, third_order=third_ode)
    np.testing.assert_allclose(sde, ode, rtol=1e-12, atol=1e-13)


def test_noise_term_and_s_noise(x64):
    """The step is affine in z with coefficient sigma_t sqrt(1 - e^{-2 eta h}) s_noise: the variance the exact
    solution of the eta-SDE's linear part adds over the step (its Ito integral of eta^2 g^2 against the
    kernel e^{-2 eta (lam_t - lam)} in x/sigma)."""
    c = _coeffs(0.3, 0.55)
    h = float(c.lam_t - c.lam_s)
    x = d0 = jnp.ones((2, 2), jnp.float64)
    hist = solvers.History.init(x)
    z = jnp.ones((2, 2), jnp.float64)
    for eta, s_noise in ((1.0, 1.0), (0.5, 0.7), (2.0, 1.3)):
        with_z = solvers.sde_dpmpp_step(x, d0, hist, c, 1, z, eta=eta, s_noise=s_noise)
        without = solvers.sde_dpmpp_step(x, d0, hist, c, 1, None, eta=eta, s_noise=s_noise)
        np.testing.assert_allclose(with_z - without, float(c.sigma_t) * np.sqrt(-np.expm1(-2 * eta * h)) * s_noise,
                                   rtol=1e-13)


def test_eta_zero_runs_without_noise_and_equals_dpm_solver_pp(x64):
    state = sv.set_timesteps(sv.create_state(), 8, spacing="logsnr")
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    assert not solvers.make("sde_dpm_solver_pp", eta=0.0).stochastic
    assert solvers.make("sde_dpm_solver_pp").stochastic
    assert not solvers.make("sde_dpm_solver_pp", s_noise=0.0).stochastic
    a = sv.sample_ode(state, model_fn, jax.random.key(0), (4, 2), method="sde_dpm_solver_pp", eta=0.0, order=3,
                      dtype=jnp.float64)
    b = sv.sample_ode(state, model_fn, jax.random.key(0), (4, 2), method="dpm_solver_pp", order=3, dtype=jnp.float64)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options, err, match", [
    ({"eta": -0.5}, ValueError, r"eta must be >= 0 \(method='sde_dpm_solver_pp'\)"),
    ({"s_noise": -1.0}, ValueError, r"s_noise must be >= 0"),
    ({"eta": True}, TypeError, "eta must be a real number"),
    ({"third_order": "half"}, ValueError, r"third_order must be one of \['taylor', 'k-diffusion', 'diffusers'\]"),
    ({"order": 4}, ValueError, r"order must be in \[1, 3\]"),
])
def test_bad_options_are_refused(options, err, match):
    state = sv.set_timesteps(sv.create_state(), 4)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    with pytest.raises(err, match=match):
        sv.sample_ode(state, model_fn, jax.random.key(0), (2, 2), method="sde_dpm_solver_pp", **options)


def test_eta_and_s_noise_are_refused_by_the_other_methods():
    state = sv.set_timesteps(sv.create_state(), 4)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    with pytest.raises(ValueError, match=r"s_noise is an option of sde_dpm_solver_pp, restart; method='unipc' takes none"):
        sv.sample_ode(state, model_fn, jax.random.key(0), (2, 2), method="unipc", s_noise=0.5)


#: The mixture runs: (options, steps), on Stable Diffusion's schedule as tests/test_solvers.py's mixture test.
MIXTURE_RUNS = [({"order": 3}, 100), ({"order": 2, "eta": 0.5, "solver_type": "heun"}, 100),
                ({"order": 3, "third_order": "k-diffusion", "solver_type": "heun", "lower_order_final": False}, 100)]


@pytest.fixture(scope="module")
def mixture_samples():
    mixture = sv.mixtures.default_mixture(2)
    schedule = sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000)
    state = sv.set_timesteps(sv.create_state(schedule=schedule), 100)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)

    @jax.jit
    def solve_all(key):
        return [sv.sample_ode(state, model_fn, key, (8000, 2), method="sde_dpm_solver_pp", **options)
                for options, _ in MIXTURE_RUNS]

    samples = jax.device_get(solve_all(jax.random.key(11)))
    return mixture, samples, np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(12), 200_000))


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(MIXTURE_RUNS)))
def test_draws_the_mixture(mixture_samples, index):
    """Mode weights, means and standard deviations of the default 2-D mixture within derived tolerances.

    B = 8000 samples: a mode weight w has standard error sqrt(w(1 - w)/B) <= 0.0056, a mean coordinate
    s/sqrt(B) <= 0.0126 (s <= 1.13), a standard deviation ~ s/sqrt(2B) (twice that for the bimodal marginals:
    10 SE); 5 SE each plus 0.01 for the discretisation bias at 100 steps (measured: each statistic of 160,000
    samples of each run within 0.006 of 10^6 exact draws', about two of that measurement's standard errors).
    """
    mixture, samples, exact = mixture_samples
    x = np.asarray(samples[index])
    assert_draws_the_mixture(mixture, x, exact)
