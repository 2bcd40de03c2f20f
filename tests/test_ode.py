"""The probability-flow ODE samplers (sv.sample_ode): determinism, orders, NFE, statistics, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import sde

# A smooth two-mode mixture: its ODE is not stiff, so the methods reach their
# asymptotic orders at moderate step counts.
SMOOTH = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.0, 0.0]], scales=0.5)


def smooth_setup(n):
    state = sv.set_timesteps(sv.create_state(), n)
    return state, sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture(**SMOOTH))


@pytest.fixture(scope="module")
def ode_runs():
    """Every ODE method's batch of 5 and batch of 2 of key 1 (8 grid points), from one jitted program
    (compiled once for the 16 solves) called twice: {method: ((five, two), (five_again, two_again))}."""
    state, model_fn = smooth_setup(8)

    @jax.jit
    def solve_all(key):
        return {method: (sv.sample_ode(state, model_fn, key, (5, 2), method=method),
                         sv.sample_ode(state, model_fn, key, (2, 2), method=method))
                for method in sv.list_methods("ode")}

    first, second = solve_all(jax.random.key(1)), solve_all(jax.random.key(1))
    return {method: (first[method], second[method]) for method in first}


@pytest.mark.parametrize("method", sv.list_methods("ode"))
def test_ode_samplers_are_deterministic_functions_of_x_T(ode_runs, method):
    (a, two), (b, _) = ode_runs[method]
    np.testing.assert_array_equal(a, b)
    # Batch invariance: the first 2 samples alone are the same (each adaptive solve
    # is per sample). To float rounding: XLA's CPU code for a batch of 2 and of 5
    # may round an element's arithmetic differently (vector body vs scalar tail),
    # which moves heun and dpm_solver by up to an ulp.
    np.testing.assert_allclose(two, a[:2], rtol=4e-7, atol=4e-7)


def test_euler_is_the_loop_through_the_grid_from_the_prior_draw():
    state, model_fn = smooth_setup(6)

    # the hand-written loop and the sampler in one compiled program (not the loop's ops one by one)
    @jax.jit
    def both(key):
        x = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, b), 0), (2,)) for b in range(3)])
        ts = state.timesteps
        for i in range(ts.shape[0] - 1):
            t, t_next = ts[i], ts[i + 1]
            t_vec = jnp.full((3,), t)
            x = x + (t_next - t) * sv.probability_flow_drift(state, model_fn(x, t_vec), x, t_vec)
        return sv.sample_ode(state, model_fn, key, (3, 2), method="euler"), x

    sampled, x = both(jax.random.key(4))
    np.testing.assert_allclose(sampled, x, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def adaptive_solves():
    """Float64 adaptive solves of the same 32 samples, in one jitted program: a tight one (rtol = atol =
    1e-11), the reference of the order tests, and one at the default tolerances with its SamplerInfo."""
    with jax.enable_x64(True):
        state, model_fn = smooth_setup(2)

        @jax.jit
        def solve(key):
            tight = sv.sample_ode(state, model_fn, key, (32, 2), method="adaptive", rtol=1e-11, atol=1e-11,
                                  dtype=jnp.float64, max_steps=100_000)
            return tight, sv.sample_ode(state, model_fn, key, (32, 2), method="adaptive", return_info=True,
                                        dtype=jnp.float64)

        return jax.device_get(solve(jax.random.key(0)))


@pytest.fixture(scope="module")
def reference_solution(adaptive_solves):
    """A tight adaptive solve (rtol = atol = 1e-11, float64) of 32 samples."""
    return np.asarray(adaptive_solves[0])


ORDER_CASES = [("euler", 1), ("heun", 2), ("dpm_solver", 1), ("dpm_solver", 2), ("dpm_solver", 3)]
STEPS = (32, 64, 128, 256)


@pytest.fixture(scope="module")
def order_errors(reference_solution):
    """Max error against the reference of each ORDER_CASES method at each of STEPS: the 20 solves in one
    jitted program (XLA's compile time dominates these solves; one program of many loops compiles in
    about half the CPU time of as many programs, measured on tests/test_solvers.py's order table)."""
    with jax.enable_x64(True):
        setups = {n: smooth_setup(n + 1) for n in STEPS}

        @jax.jit
        def solve_all(key):
            return {(method, order): [sv.sample_ode(*setups[n], key, (32, 2), method=method, dtype=jnp.float64,
                                                    order=order) for n in STEPS] for method, order in ORDER_CASES}

        solved = jax.device_get(solve_all(jax.random.key(0)))
    return {case: [float(np.max(np.abs(np.asarray(x) - reference_solution))) for x in xs]
            for case, xs in solved.items()}


@pytest.mark.slow
@pytest.mark.parametrize("method, order", ORDER_CASES)
def test_fixed_step_methods_reach_their_order(order_errors, method, order):
    """Fit log(max error) against log(step count): the slope is the order within +-0.3 (diffrax's test).

    Step counts 32..256: past the pre-asymptotic range, and with errors (>= 1e-6)
    far above the reference's own (~1e-10).
    """
    steps = np.array(STEPS)
    errors = order_errors[method, order]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (slope, errors)


@pytest.mark.slow
def test_adaptive_solver_meets_its_tolerance_in_under_200_nfe(adaptive_solves, reference_solution):
    x, info = adaptive_solves[1]
    assert int(info.nfe) < 200
    # global error of a 1e-5 local tolerance over ~15 steps of an expanding flow: allow 100x
    assert float(np.max(np.abs(np.asarray(x) - reference_solution))) < 1e-3


NFE_METHODS = sv.list_methods("ode") + sv.list_methods("sde_solver")


@pytest.fixture(scope="module")
def counted_runs():
    """Every method at batches 1 and 3 (7 grid points), each with its own counting model: a host callback
    records how many samples each of its calls saw (test-only; the library has none). The 18 solves run
    in one jitted program; {(method, batch): (info, calls)}."""
    state, model_fn = smooth_setup(7)
    calls = {(method, batch): [] for method in NFE_METHODS for batch in (1, 3)}

    def counted(seen):
        def f(x, t):
            jax.debug.callback(lambda x: seen.append(np.asarray(x).size // 2), x)
            return model_fn(x, t)
        return f

    @jax.jit
    def solve_all(key):
        return {(method, batch): sv.sample_ode(state, counted(calls[method, batch]), key, (batch, 2), method=method,
                                               return_info=True)[1] for method, batch in calls}

    infos = jax.block_until_ready(solve_all(jax.random.key(2)))
    jax.effects_barrier()
    return {case: (infos[case], calls[case]) for case in calls}


@pytest.mark.parametrize("method", NFE_METHODS)
def test_nfe_counts_the_model_calls_exactly(counted_runs, method):
    """Count real calls with a host callback in the model (test-only; the library has none)."""
    for batch in (1, 3):
        info, calls = counted_runs[method, batch]
        assert info.nfe_per_sample.shape == (batch,)
        assert int(info.nfe) == int(jnp.max(info.nfe_per_sample))
        # Each batched call evaluates all `batch` samples (under the adaptive
        # solver's per-sample vmap, finished samples are evaluated and masked), so
        # the samples seen add up to batch * nfe, however JAX splits the callbacks.
        assert sum(calls) == batch * int(info.nfe)
        if method != "adaptive":
            # N - 1 steps between the 7 grid points; the grid solvers' default last step to sigma = 0 adds one call.
            expected = {"euler": 6, "heun": 12, "dpm_solver": 6, "ddim": 7, "dpm_solver_pp": 7, "unipc": 7,
                        "sde_dpm_solver_pp": 7, "dpm_solver_pp_2s": 13, "dpm_solver_singlestep": 7,
                        "sde_dpm_solver_singlestep": 7, "deis": 7, "ipndm": 7, "sa_solver": 7,
                        "euler_ancestral": 7, "lms": 7, "pndm": 16,  # pndm: + 9 in its Runge-Kutta warm-up
                        "heun_sigma": 13, "kdpm2": 13, "kdpm2_ancestral": 13, "er_sde": 7, "restart": 13}
            assert int(info.nfe) == expected[method]


REACH = [("dpm_solver", 21), ("adaptive", 2), ("heun", 101)]


@pytest.fixture(scope="module")
def mixture_samples():
    """5,000 samples of the default 2-D mixture by each REACH method and grid, one jitted program of the three."""
    mixture = sv.mixtures.default_mixture()
    setups = {}
    for method, n in REACH:
        state = sv.set_timesteps(sv.create_state(), n)
        setups[method] = state, sv.mixtures.make_mixture_eps_fn(state, mixture)

    @jax.jit
    def solve_all(key):
        return {method: sv.sample_ode(*setups[method], key, (5000, 2), method=method) for method, _ in REACH}

    return mixture, jax.device_get(solve_all(jax.random.key(5)))


@pytest.mark.slow
@pytest.mark.parametrize("method, n", REACH)
def test_ode_samplers_reach_the_mixture(mixture_samples, method, n):
    """The default 2-D mixture, M = 5,000 samples; mode weights and mean within 5 standard errors."""
    from test_samplers import target_check

    m_samples = 5000
    mixture, samples = mixture_samples
    x = np.asarray(samples[method], np.float64)
    assert x.shape == (m_samples, 2)
    assert np.all(np.isfinite(x))
    target_check(x, mixture, float(sde.alpha(1e-3, 0.1, 20.0)), float(sde.sigma(1e-3, 0.1, 20.0)), m_samples)


def test_dpm_solver_grid_is_uniform_in_log_snr(x64):
    from sdevp_jax.sde import log_snr as _log_snr

    state = sv.set_timesteps(sv.create_state(), 11)
    grid = sv.solvers.DPMSolver().times(state, jnp.float64)
    assert float(grid[0]) == 1.0 and float(grid[-1]) == 1e-3
    lam = _log_snr(grid, 0.1, 20.0)
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)
    # and lambda is log(alpha / sigma)
    np.testing.assert_allclose(lam, np.log(sde.alpha(grid, 0.1, 20.0) / sde.sigma(grid, 0.1, 20.0)), rtol=1e-12)


@pytest.mark.parametrize("kwargs, n, err, match", [
    ({"method": "rk4"}, 5, ValueError, "method must be one of"),
    ({"method": "euler"}, 1, ValueError, "num_inference_steps must be >= 2"),
    ({"method": "adaptive", "rtol": 0.0}, 5, ValueError, "rtol must be > 0"),
    ({"method": "adaptive", "atol": float("nan")}, 5, ValueError, "atol must be finite"),
    ({"method": "adaptive", "max_steps": 0}, 5, ValueError, "max_steps must be an int >= 1"),
])
def test_sample_ode_rejects_bad_options(kwargs, n, err, match):
    state, model_fn = smooth_setup(n)
    with pytest.raises(err, match=match):
        sv.sample_ode(state, model_fn, jax.random.key(0), (2, 2), **kwargs)


def test_sample_ode_shares_the_loops_input_checks():
    state, model_fn = smooth_setup(5)
    with pytest.raises(ValueError, match="set_timesteps"):
        sv.sample_ode(sv.create_state(), model_fn, jax.random.key(0), (2, 2))
    with pytest.raises(ValueError, match="model_fn must return"):
        sv.sample_ode(state, lambda x, t: x[:, :1], jax.random.key(0), (2, 2))
    with pytest.raises(ValueError, match="shape must be non-empty"):
        sv.sample_ode(state, model_fn, jax.random.key(0), ())


@pytest.mark.slow
def test_adaptive_tolerances_may_be_traced():
    """rtol/atol are numbers a user may pass through jit: checked only when concrete."""
    state, model_fn = smooth_setup(2)

    # the traced and the concrete tolerances' solves in one compiled program (one compile, not two)
    @jax.jit
    def both(tol):
        return (sv.sample_ode(state, model_fn, jax.random.key(0), (2, 2), method="adaptive", rtol=tol, atol=tol),
                sv.sample_ode(state, model_fn, jax.random.key(0), (2, 2), method="adaptive", rtol=1e-4, atol=1e-4))

    traced, concrete = both(1e-4)
    np.testing.assert_allclose(traced, concrete, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- adaptive tolerances against the closed form
#
# For Gaussian data N(mu, s^2 I) the diffused law is N(alpha mu, v I), v = alpha^2 s^2 + sigma^2,
# with score -(x - alpha mu) / v, so the probability-flow ODE (Song et al. 2021, eq. 13) reads
#     dx/dt = -beta x / 2 + beta (x - alpha mu) / (2 v).
# Claim: x_t = alpha(t) mu + sqrt(v(t)) xi, xi constant, solves it. Check: alpha' = -beta alpha / 2,
# and since sigma^2 = 1 - alpha^2, v = 1 - alpha^2 (1 - s^2) and v' = beta alpha^2 (1 - s^2) = beta (1 - v).
# The left side is alpha' mu + v' xi / (2 sqrt v) = -beta alpha mu / 2 + beta (1 - v) xi / (2 sqrt v);
# the right side is -beta (alpha mu + sqrt(v) xi) / 2 + beta xi / (2 sqrt v), the same. So the flow
# keeps the standardised coordinate xi = (x_t - alpha(t) mu) / sqrt(v(t)) fixed:
#     x_eps = alpha(eps) mu + sqrt(v(eps) / v(1)) (x_1 - alpha(1) mu).

GAUSS_MU, GAUSS_SCALE = np.array([0.7, -0.4]), 0.3


def gaussian_flow_map(x_1, t_end=1e-3):
    """The exact probability-flow solution at t_end from x_1 at t = 1 (float64 numpy)."""
    def alpha_var(t):
        log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
        alpha = np.exp(log_alpha)
        return alpha, alpha**2 * GAUSS_SCALE**2 - np.expm1(2.0 * log_alpha)

    a1, v1 = alpha_var(1.0)
    a0, v0 = alpha_var(t_end)
    return a0 * GAUSS_MU + np.sqrt(v0 / v1) * (x_1 - a1 * GAUSS_MU)


def test_adaptive_error_is_below_c_tau_and_falls_with_tau(x64):
    """Max error over 32 samples against the closed form is below c tau, c = 12, for tau = 1e-3 ... 1e-6.

    Measured err / tau: 2.7, 2.6, 7.9, 1.5 (float64, CPU); global error of a
    per-step tolerance over the ~10-25 steps, with |x| ~ 1 so that rtol and atol
    each contribute ~tau. With tolerances 10x looser than asked for, err / tau
    would be 27 to 97 at these tau: c = 12 separates the two.
    """
    state = sv.set_timesteps(sv.create_state(), 2)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.make_mixture([1.0], [GAUSS_MU], GAUSS_SCALE))
    key, batch = jax.random.key(0), 32
    # x_1 as sample_ode draws it: sample b's slot 0
    x_1 = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, b), 0), (2,),
                                                 jnp.float64)) for b in range(batch)])
    exact = gaussian_flow_map(x_1)
    solve = jax.jit(lambda tol: sv.sample_ode(state, model_fn, key, (batch, 2), method="adaptive", rtol=tol,
                                              atol=tol, dtype=jnp.float64))  # traced tol: one compilation
    taus = [1e-3, 1e-4, 1e-5, 1e-6]
    errors = [float(np.max(np.abs(np.asarray(solve(jnp.float64(tau))) - exact))) for tau in taus]
    for tau, err in zip(taus, errors):
        assert err < 12 * tau, (tau, err, errors)
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors  # falls as tau falls
    assert errors[-1] < 1e-2 * errors[0], errors  # and by at least 100x over 3 decades
