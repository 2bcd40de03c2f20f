"""Restart sampling (sdevp_jax/solvers/restart.py): the plan, the exact network calls, K = 0 against an
independent EDM Heun sampler, a restart pass against its arithmetic written out, the jump's distribution, the
mixture, and parity with the authors' sampler (tests/golden/restart.npz, tests/golden/make_restart_golden.py).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from gaussian_model import assert_draws_the_mixture
from sdevp_jax import solvers

SMOOTH = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.0, 0.0]], scales=0.5)


def _setup(n, spacing="karras"):
    state = sv.set_timesteps(sv.create_state(), n, spacing=spacing)
    return state, sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture(**SMOOTH))


def _levels(state):
    """The main grid's times and levels rho = sigma/alpha (float64)."""
    t = solvers.make("restart").times(state, jnp.float64)
    grid = solvers.Grid.build(state.schedule.cast(jnp.float64), t)
    return np.asarray(t), np.asarray(grid.sigma / grid.alpha)


def _edm_heun(state, model_fn, x, ts, rhos, final_zero=True):
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1 without churn) in x/alpha and rho, written out:
    the reference for restart with no restart pass."""
    schedule = state.schedule.cast(jnp.float64)

    def eps(xbar, t, rho):
        alpha = 1.0 / np.sqrt(1.0 + rho * rho)
        return np.asarray(model_fn(jnp.asarray(alpha * xbar), jnp.full((xbar.shape[0],), t)))

    xbar = x * np.sqrt(1.0 + rhos[0] ** 2)
    for k in range(len(ts) - 1):
        d = eps(xbar, ts[k], rhos[k])
        x_e = xbar + (rhos[k + 1] - rhos[k]) * d
        xbar = xbar + (rhos[k + 1] - rhos[k]) * 0.5 * (d + eps(x_e, ts[k + 1], rhos[k + 1]))
    x = xbar / np.sqrt(1.0 + rhos[-1] ** 2)
    if final_zero:
        alpha, sigma = (np.asarray(v) for v in schedule.alpha_sigma(jnp.float64(ts[-1])))
        x = (x - sigma * eps(xbar, ts[-1], rhos[-1])) / alpha
    return x


def test_plan_orders_the_restart_passes_after_their_point(x64):
    rho = jnp.array([80.0, 10.0, 1.0, 0.3, 0.05])
    plan = solvers.restart_plan(rho, ((3, 2, 0.28, 0.9), (2, 1, 8.0, 20.0)))
    # main step 0 (reaches 10, nearest 8), the (2, 1) pass, main steps 1 and 2 (reaches 0.3, nearest 0.28), the
    # (3, 2) passes, main step 3
    np.testing.assert_array_equal(plan.point, [1, -1, 2, 3, -1, -1, -1, -1, 4])
    np.testing.assert_allclose([plan.rho_from[1], plan.rho_to[1]], [20.0, 10.0], rtol=1e-15)
    karras = (0.9 ** (1 / 7) + 0.5 * (0.3 ** (1 / 7) - 0.9 ** (1 / 7))) ** 7
    np.testing.assert_allclose(plan.rho_from[4:8], [0.9, karras, 0.9, karras], rtol=1e-14)
    np.testing.assert_allclose(plan.rho_to[4:8], [karras, 0.3, karras, 0.3], rtol=1e-14)
    np.testing.assert_allclose(plan.jump, [0, np.sqrt(400 - 100), 0, 0, np.sqrt(0.81 - 0.09), 0,
                                           np.sqrt(0.81 - 0.09), 0, 0], rtol=1e-14)
    np.testing.assert_array_equal(plan.churn, [False] * 9)  # restart_gamma = 0: no churn
    # churn on restart steps only, and with churn_range only on those starting within it (20 is above 1)
    gamma = solvers.restart_plan(rho, ((3, 2, 0.28, 0.9), (2, 1, 8.0, 20.0)), 0.05).churn
    np.testing.assert_array_equal(gamma, [p == -1 for p in plan.point])
    window = solvers.restart_plan(rho, ((3, 2, 0.28, 0.9), (2, 1, 8.0, 20.0)), 0.05, (0.01, 1.0)).churn
    np.testing.assert_array_equal(window, [False, False, False, False, True, True, True, True, False])


@pytest.mark.parametrize("restarts", [(), ((3, 0, 0.3, 1.0),)])
@pytest.mark.parametrize("final", ["zero", "last"])
def test_without_restart_passes_it_is_edm_heun(x64, restarts, final):
    """K = 0 (or no interval): EDM's Heun sampler written out in the test, to float64 rounding."""
    state, model_fn = _setup(9)
    x_init = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)))
    got = sv.sample_ode(state, model_fn, jax.random.key(0), (4, 2), method="restart", restarts=restarts,
                        final_sigmas_type=final, dtype=jnp.float64, x_init=x_init)
    ts, rhos = _levels(state)
    ref = _edm_heun(state, model_fn, np.asarray(x_init), ts, rhos, final == "zero")
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # ~4 s: the pass written out op by op
def test_a_restart_pass_is_a_jump_then_heun_down(x64):
    """One interval (n = 3, K = 1) with churn: the sampler's result against the pass written out with the same
    noise slots (slot 0 of each step: the jump; slot 1: the churn), levels from the plan."""
    state, model_fn = _setup(6)
    schedule = state.schedule.cast(jnp.float64)
    ts, rhos = _levels(state)
    t_min, t_max, gamma, s_noise = float(rhos[2]) * 1.01, float(rhos[1]) * 0.8, 0.05, 1.003
    options = dict(restarts=((3, 1, t_min, t_max),), restart_gamma=gamma, s_noise=s_noise)
    key = jax.random.key(3)
    x_init = jnp.asarray(np.random.default_rng(1).standard_normal((4, 2)))
    got = sv.sample_ode(state, model_fn, key, (4, 2), method="restart", dtype=jnp.float64, x_init=x_init,
                        final_sigmas_type="last", **options)
    keys = sv.loops.make_sample_keys(key, 4, 0)

    def z(step, slot):
        return np.asarray(sv.loops.per_sample_normal(keys, 1 + 2 * step + slot, (2,), jnp.float64))

    def eps(xbar, rho, t=None):
        t = float(schedule.t_from_log_snr(-jnp.log(jnp.float64(rho)))) if t is None else t
        alpha = 1.0 / np.sqrt(1.0 + rho * rho)
        return np.asarray(model_fn(jnp.asarray(alpha * xbar), jnp.full((4,), t)))

    def heun(xbar, r0, r1, t0=None, t1=None):
        d = eps(xbar, r0, t0)
        x_e = xbar + (r1 - r0) * d
        return xbar + (r1 - r0) * 0.5 * (d + eps(x_e, r1, t1))

    xbar = np.asarray(x_init) * np.sqrt(1.0 + rhos[0] ** 2)
    xbar = heun(xbar, rhos[0], rhos[1], ts[0], ts[1])
    xbar = heun(xbar, rhos[1], rhos[2], ts[1], ts[2])
    mid = (t_max ** (1 / 7) + 0.5 * (rhos[2] ** (1 / 7) - t_max ** (1 / 7))) ** 7
    step = 2
    xbar = xbar + np.sqrt(t_max**2 - rhos[2] ** 2) * s_noise * z(step, 0)  # the jump
    for r0, r1 in ((t_max, mid), (mid, rhos[2])):
        hat = (1 + gamma) * r0
        xbar = xbar + np.sqrt(hat**2 - r0**2) * s_noise * z(step, 1)  # the churn
        xbar = heun(xbar, hat, r1, None, ts[2] if r1 == rhos[2] else None)
        step += 1
    for k in (2, 3, 4):
        xbar = heun(xbar, rhos[k], rhos[k + 1], ts[k], ts[k + 1])
    np.testing.assert_allclose(got, xbar / np.sqrt(1.0 + rhos[-1] ** 2), rtol=1e-11, atol=1e-12)


@pytest.mark.slow  # ~7 s: a host callback per network call
def test_nfe_is_exact_and_counted():
    """nfe = 2 (N - 1) + 2 sum K (n - 1) + 1: the model's calls counted through a host callback."""
    state, model_fn = _setup(7)
    calls = []

    def counted(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return model_fn(x, t)

    restarts = ((3, 2, 0.3, 1.0), (4, 1, 3.0, 9.0))
    x, info = sv.sample_ode(state, counted, jax.random.key(0), (2, 2), method="restart", restarts=restarts,
                            return_info=True)
    jax.block_until_ready(x)
    expected = 2 * 6 + 2 * (2 * 2 + 1 * 3) + 1
    assert int(info.nfe) == expected == solvers.make("restart", restarts=restarts).nfe(7) == len(calls)


def test_the_jump_carries_the_exact_marginal_at_t_min_to_t_max(x64):
    """For data N(mu, s^2 I) the marginal of x/alpha at level rho is N(mu, (s^2 + rho^2) I): samples of it at
    rho_min, jumped by the first step of a restart pass (its noise and scale, the step's Heun with a zero model
    contributing nothing), have mean mu and variance s^2 + t_max^2. B = 20000 per coordinate: the mean's standard
    error sqrt(v/B) and the variance's v sqrt(2/B) (normal data); 5 of them each."""
    rho = jnp.array([5.0, 0.5, 0.1])
    t_max, s2, mu, batch = 2.0, 0.25, 0.7, 20000
    plan = solvers.restart_plan(rho, ((2, 1, 0.5, t_max),))
    k = 1  # the pass's step (after main step 0, which reaches 0.5): its jump is sqrt(t_max^2 - 0.5^2)
    assert int(plan.point[k]) == -1 and float(plan.jump[k]) > 0
    keys = sv.loops.make_sample_keys(jax.random.key(5), batch, 0)
    noise = solvers.Noise(keys, jnp.int32(1 + 2 * k), (2,), jnp.float64)
    rng = np.random.default_rng(2)
    xbar = mu + np.sqrt(s2 + 0.25) * rng.standard_normal((batch, 2))
    jumped = xbar + float(plan.jump[k]) * np.asarray(noise.draw(0))
    v = s2 + t_max**2
    assert np.all(np.abs(jumped.mean(0) - mu) < 5 * np.sqrt(v / batch))
    assert np.all(np.abs(jumped.var(0) - v) < 5 * v * np.sqrt(2 / batch))


@pytest.mark.parametrize("options, err, match", [
    ({"restarts": ((1, 2, 0.1, 0.5),)}, ValueError, r"n_steps .* must be an int >= 2"),
    ({"restarts": ((3, -1, 0.1, 0.5),)}, ValueError, r"K \(its passes\) must be an int >= 0"),
    ({"restarts": ((3, 2, 0.5, 0.1),)}, ValueError, "t_max must be > t_min"),
    ({"restarts": ((3, 2, 0.0, 0.1),)}, ValueError, "t_min must be a finite number > 0"),
    ({"restarts": ((3, 2, 0.1),)}, ValueError, r"each restart must be a tuple \(n_steps, K, t_min, t_max\)"),
    ({"restarts": 3}, TypeError, "restarts must be a tuple"),
    ({"s_noise": -1.0}, ValueError, r"s_noise must be a finite number >= 0 \(method='restart'\)"),
    ({"restart_gamma": float("inf")}, ValueError, "restart_gamma must be a finite number >= 0"),
    ({"final_sigmas_type": "repeat"}, ValueError, r"final_sigmas_type must be one of \['zero', 'last'\]"),
    ({"churn_range": (0.5,)}, ValueError, r"churn_range must be \(\) \(every restart step\) or a pair"),
    ({"churn_range": (1.0, 0.5)}, ValueError, r"churn_range's S_max must be >= its S_min"),
    ({"churn_range": (-1.0, 0.5)}, ValueError, r"churn_range's S_min must be a finite number >= 0"),
])
def test_bad_options_are_refused(options, err, match):
    state, model_fn = _setup(4)
    with pytest.raises(err, match=match):
        sv.sample_ode(state, model_fn, jax.random.key(0), (2, 2), method="restart", **options)


def test_its_options_are_refused_by_the_other_methods():
    state, model_fn = _setup(4)
    with pytest.raises(ValueError, match=r"restarts applies to the methods \['restart'\] only"):
        sv.sample_ode(state, model_fn, jax.random.key(0), (2, 2), method="unipc", restarts=((3, 1, 0.1, 0.5),))


#: The published CIFAR-10 VP configuration's shape (18 Karras main steps, one interval (3, 2, 0.06, 0.30), the
#: authors' s_noise and restart_gamma) on the default state, and the same without restarts.
MIXTURE_RUNS = [dict(restarts=((3, 2, 0.06, 0.30),), s_noise=1.003, restart_gamma=0.05), dict()]


@pytest.fixture(scope="module")
def mixture_samples():
    mixture = sv.mixtures.default_mixture(2)
    state = sv.set_timesteps(sv.create_state(), 18, spacing="karras")
    model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)

    @jax.jit
    def solve_all(key):
        return [sv.sample_ode(state, model_fn, key, (8000, 2), method="restart", **options)
                for options in MIXTURE_RUNS]

    samples = jax.device_get(solve_all(jax.random.key(11)))
    return mixture, samples, np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(12), 200_000))


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(MIXTURE_RUNS)))
def test_draws_the_mixture(mixture_samples, index):
    """Mode weights, means and standard deviations of the default 2-D mixture within derived tolerances.

    B = 8000 samples: a mode weight w has standard error sqrt(w(1 - w)/B) <= 0.0056, a mean coordinate
    s/sqrt(B) <= 0.0126 (s <= 1.13), a standard deviation ~ s/sqrt(2B) (twice that for the bimodal marginals:
    10 SE); 5 SE each plus 0.01 for the discretisation bias. Measured with 160,000 samples against 10^6 exact
    draws: every statistic within 0.0093 with the restart interval; without it (18 Heun steps) the standard
    deviations are 0.024 off, inside their tolerance (10 SE = 0.089 and more) but not the 0.01 allowance alone, the
    weights and means within 0.008."""
    mixture, samples, exact = mixture_samples
    x = np.asarray(samples[index])
    assert_draws_the_mixture(mixture, x, exact)


GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "restart.npz")
#: The cases of tests/golden/make_restart_golden.py: the published CIFAR-10 VP configuration (18 steps, (3, 2, 0.06,
#: 0.30), 43 calls), K = 0, two intervals, n = 5 without churn, the published ImageNet-64 configuration's first
#: line (three intervals, levels up to 40.79, above the authors' S_max = 1).
AUTHOR_CASES = ["cifar10_vp", "k0", "two_intervals", "n5_k1_no_churn", "imagenet_line1"]
#: The published configuration's levels in the fast tier, the other cases' slow (~2 s each).
AUTHOR_PARAMS = [pytest.param(n, marks=[] if n == "cifar10_vp" else pytest.mark.slow) for n in AUTHOR_CASES]
#: float32's unit roundoff: the authors' restart levels as published are float32 (see the parity test).
U32 = 2.0**-24


def _authors_case(name):
    """A golden case as ``sample_ode`` arguments: the state on the authors' main levels (custom times whose
    sigma/alpha are those levels), the model of the same mixture, x_T, the golden arrays and the options (their
    S_min, S_max as ``churn_range``)."""
    with np.load(GOLDEN) as f:
        g = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(name + "/")}
    rho = g["t_steps"]
    state = sv.create_state()
    t = state.schedule.cast(jnp.float64).t_from_log_snr(-jnp.log(jnp.asarray(rho)))
    state = sv.set_timesteps(state, timesteps=t)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture(**SMOOTH))
    restarts = tuple((int(n), int(k), float(a), float(b)) for n, k, a, b in g["restarts"])
    options = dict(restarts=restarts, s_noise=float(g["s_noise"]), restart_gamma=float(g["gamma"]),
                   churn_range=(float(g["s_min"]), float(g["s_max"])))
    # x_T in VP variables: the authors start from x/alpha = latents * rho_0
    x_init = jnp.asarray(g["latents"] * rho[0] / np.sqrt(1.0 + rho[0] ** 2))
    return state, model_fn, x_init, g, options


def _rel(x, ref):
    return float(np.max(np.abs(np.asarray(x) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("name", AUTHOR_PARAMS)
def test_the_network_calls_are_at_the_authors_levels(x64, name):
    """Each network call's level, in order, as the authors' sampler (run in float64) made them: the main Heun
    steps, each restart step's churned start and end (the restart point nearest t_min, the Karras sub-grid, the
    churn within [S_min, S_max]) and the last call at the last level (the step to 0). Their count is the nfe.
    As published, the restart levels are float32: within 32 u of these (u = 2^-24; get_steps' base carries ~4
    roundings, its 7th power multiplies them by 7, the churned level adds 2)."""
    state, _, _, g, options = _authors_case(name)
    _, rhos = _levels(state)
    solver = solvers.make("restart", **options)
    plan = jax.jit(solvers.restart_plan, static_argnums=(1, 2, 3))(jnp.asarray(rhos), solver.restarts,
                                                                   solver.restart_gamma, solver.churn_range)
    start = np.where(plan.churn, (1.0 + solver.restart_gamma) * plan.rho_from, plan.rho_from)
    ours = np.append(np.stack([start, plan.rho_to], 1).ravel(), rhos[-1])
    assert len(ours) == len(g["levels64"]) == solver.nfe(len(rhos))
    np.testing.assert_allclose(ours, g["levels64"], rtol=1e-13)
    np.testing.assert_allclose(g["levels32"], g["levels64"], rtol=32 * U32)


@pytest.mark.slow  # 1.5-7 s a case: each compiles its run
@pytest.mark.parametrize("name", AUTHOR_CASES)
def test_matches_the_authors_sampler(x64, name):
    """The authors' ``restart_sampler`` with the same noise, run in float64 (its float32 restart grid made float64):
    the samples to 1e-10 relative (max|x - ref| / max|ref|; measured <= 1.8e-15). As published (float32 restart
    levels, within 32 u of the exact ones, see above) the samples differ from it by at most 1.5e-7 = 2.5 u
    (measured); held below 32 u, the levels' bound, an allowance for how far a float32 level moves the sample."""
    state, model_fn, x_init, g, options = _authors_case(name)
    x = sv.sample_ode(state, model_fn, None, x_init.shape, method="restart", dtype=jnp.float64, x_init=x_init,
                      noise=g["noise"], **options)
    assert _rel(x, g["final64"]) <= 1e-10
    assert _rel(x, g["final32"]) <= 32 * U32
