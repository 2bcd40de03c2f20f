"""Tests for sdevp_jax.schedules: the linear, cosine and discrete VP schedules.

References are the closed forms evaluated in NumPy extended precision
(``np.longdouble``: 64-bit mantissa on x86-64), written with other identities than
the library's where the library avoids a cancellation, so a shared mistake would
not cancel. Tolerances are in units of ``u``, the unit roundoff of the dtype
tested, with the condition number of the quantity written next to each.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import schedules, sde

LD = np.longdouble
PI = 4 * np.arctan(LD(1))  # pi to longdouble precision (np.pi is a float64)
GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "schedules.npz")
DIFFUSERS_CASES = {  # name -> (beta_schedule, beta_start, beta_end), as in make_schedule_golden.py
    "linear": ("linear", 1e-4, 0.02),
    "scaled_linear": ("scaled_linear", 0.00085, 0.012),
    "squaredcos_cap_v2": ("squaredcos_cap_v2", 1e-4, 0.02),
}
DTYPES = ["float32", "float64"]


def unit_roundoff(dtype):
    return float(np.finfo(dtype).eps) / 2


def times(schedule, dtype):
    """Times near both ends and between, in ``(0, t_max]``, rounded to ``dtype``."""
    t_max = float(schedule.t_max)
    ts = [1e-6, 3e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999, 0.9999]
    ts = [t for t in ts if t < t_max] + [t_max * (1 - 1e-4), t_max]
    return np.asarray(ts, dtype)


# ---------------------------------------------------------------- references (longdouble)


def ref_linear(t, beta_min=0.1, beta_max=20.0):
    t = t.astype(LD)
    m = -LD(0.25) * t**2 * (LD(beta_max) - LD(beta_min)) - LD(0.5) * t * LD(beta_min)
    return m, LD(beta_min) + t * (LD(beta_max) - LD(beta_min))


def ref_cosine(t, s=0.008):
    """log alpha by the sum-to-product identity cos a - cos b = -2 sin((a+b)/2) sin((a-b)/2)."""
    t, s, half_pi = t.astype(LD), LD(s), PI / 2
    theta, theta0 = (t + s) / (1 + s) * half_pi, s / (1 + s) * half_pi
    ratio_minus_1 = -2 * np.sin((theta + theta0) / 2) * np.sin((theta - theta0) / 2) / np.cos(theta0)
    return np.log1p(ratio_minus_1), half_pi * 2 / (1 + s) * np.tan(theta)


def ref_knots(schedule_name):
    beta_schedule, start, end = DIFFUSERS_CASES[schedule_name]
    n = 1000
    if beta_schedule == "linear":
        betas = np.linspace(LD(start), LD(end), n)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(np.sqrt(LD(start)), np.sqrt(LD(end)), n) ** 2
    else:
        # 1 - cos^2(b)/cos^2(a) = (cos a - cos b)(cos a + cos b)/cos^2 a, with
        # cos a - cos b = 2 sin((a + b)/2) sin((b - a)/2), in longdouble.
        theta = (np.arange(n + 1, dtype=LD) / n + LD(0.008)) / LD(1.008) * PI / 2
        a, b = theta[:-1], theta[1:]
        diff = 2 * np.sin((a + b) / 2) * np.sin((b - a) / 2)
        betas = np.minimum(diff * (np.cos(a) + np.cos(b)) / np.cos(a) ** 2, LD(0.999))
    return np.concatenate([np.zeros(1, LD), LD(0.5) * np.cumsum(np.log1p(-betas))])


def ref_discrete(t, knots):
    n = knots.shape[0] - 1
    u = t.astype(LD) * n
    k = np.clip(np.floor(u), 0, n - 1).astype(int)
    m = knots[k] + (u - k) * (knots[k + 1] - knots[k])
    return m, -2 * n * (knots[k + 1] - knots[k])


def cases():
    """(id, schedule factory, reference(t) -> (log_alpha, beta)), the factory called inside the dtype's context."""
    out = [
        ("linear", lambda: schedules.linear(), ref_linear),
        ("linear_1_30", lambda: schedules.linear(1.0, 30.0), lambda t: ref_linear(t, 1.0, 30.0)),
        ("cosine", lambda: schedules.cosine(), ref_cosine),
        ("cosine_s0", lambda: schedules.cosine(0.0), lambda t: ref_cosine(t, 0.0)),
    ]
    for name, (b, start, end) in DIFFUSERS_CASES.items():
        knots = ref_knots(name)
        out.append(
            (
                f"discrete_{name}",
                lambda b=b, start=start, end=end: schedules.from_diffusers(b, start, end, 1000),
                lambda t, knots=knots: ref_discrete(t, knots),
            )
        )
    return out


CASES = cases()


@pytest.fixture(params=DTYPES)
def dtype(request):
    if request.param == "float64":
        with jax.enable_x64(True):
            yield np.float64
    else:
        yield np.float32


# ---------------------------------------------------------------- linear: bit for bit


def test_linear_is_sde_bit_for_bit(dtype):
    """Every method of linear(...) returns the bits of the sde.* function it stands for."""
    lin = schedules.linear(0.1, 20.0)
    t = jnp.asarray(times(lin, dtype))
    lam = jnp.asarray(np.linspace(-8.0, 12.0, 41), dtype)
    pairs = [
        (lin.log_alpha(t), sde.log_mean_coeff(t, 0.1, 20.0)),
        (lin.alpha(t), sde.alpha(t, 0.1, 20.0)),
        (lin.sigma(t), sde.sigma(t, 0.1, 20.0)),
        (lin.beta(t), sde.beta(t, 0.1, 20.0)),
        (lin.log_snr(t), sde.log_snr(t, 0.1, 20.0)),
        (lin.t_from_log_snr(lam), sde.t_of_log_snr(lam, 0.1, 20.0)),
        *zip(lin.alpha_sigma(t), sde.alpha_sigma(t, 0.1, 20.0)),
    ]
    for got, want in pairs:
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(np.asarray(got).view(np.uint8), np.asarray(want).view(np.uint8))


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("name,make,ref", CASES, ids=[c[0] for c in CASES])
def test_coefficients_match_closed_forms(name, make, ref, dtype):
    sch = make()
    u = unit_roundoff(dtype)
    t = times(sch, dtype)
    m_ref, beta_ref = ref(t)
    sigma_ref = np.sqrt(-np.expm1(2 * m_ref))
    lam_ref = m_ref - np.log(-np.expm1(2 * m_ref)) / 2

    tj = jnp.asarray(t)
    m, alpha, sigma = (np.asarray(f(tj), LD) for f in (sch.log_alpha, sch.alpha, sch.sigma))
    beta, lam = np.asarray(sch.beta(tj), LD), np.asarray(sch.log_snr(tj), LD)
    for out in (m, alpha, sigma, beta, lam):
        assert out.shape == t.shape
    # log alpha: a few roundings of numbers of size <= |m| (for a discrete schedule the knot
    # below t, |knot| <= |m|, and the increment, both rounded once from float64), plus a
    # rounding of t N (or of the angle), u t times |dm/dt| = beta/2: dm = 8 u |m| + u t beta.
    dm = 8 * u * np.abs(m_ref) + u * t * beta_ref
    np.testing.assert_array_less(np.abs(m - m_ref), dm)
    # alpha = exp(m): relative error |dm| + u.
    np.testing.assert_array_less(np.abs(alpha / np.exp(m_ref) - 1), dm + 2 * u)
    # sigma = sqrt(-expm1(2m)): relative error (|dm| |2 e^{2m}/(1 - e^{2m})| + 2u) / 2 + u
    # = |dm| alpha^2 / sigma^2 + 2u.
    np.testing.assert_array_less(np.abs(sigma / sigma_ref - 1), dm * np.exp(2 * m_ref) / sigma_ref**2 + 4 * u)
    # lambda = m - log(-expm1(2m))/2: d lambda/dm = 1/(1 - e^{2m}) = 1/sigma^2, plus roundings of |lambda|.
    np.testing.assert_array_less(np.abs(lam - lam_ref), dm / sigma_ref**2 + 4 * u * (1 + np.abs(lam_ref)))
    # beta: a few roundings (8 u), its argument's relative error amplified by
    # |d log beta / d log t| (1 for linear; for the cosine tan's condition number
    # 2 theta / sin(2 theta) <= 1/phi, phi = (1 - t) pi / 2(1 + s) >= 1/320 on (0, t_max]).
    # A discrete beta is piecewise constant: checked off the knots k/N, where t's rounding
    # cannot move it to the neighbouring piece.
    if sch.is_discrete:
        n = sch.num_train_timesteps
        t = ((np.floor(t.astype(np.float64) * n) + 0.37) / n).astype(dtype)
        t = t[t < 1]
        _, beta_ref = ref(t)
        beta = np.asarray(sch.beta(jnp.asarray(t)), LD)
    cond = 2 / np.pi / (1 - t.astype(LD)) if name.startswith("cosine") else 1.0
    np.testing.assert_array_less(np.abs(beta / beta_ref - 1), 8 * u * (1 + cond))


# ---------------------------------------------------------------- beta = -2 d log alpha / dt


@pytest.mark.parametrize("name,make,ref", CASES, ids=[c[0] for c in CASES])
def test_beta_is_minus_twice_the_derivative_of_log_alpha(name, make, ref, dtype):
    sch = make()
    t = times(sch, dtype)
    if sch.is_discrete:  # away from the knots k/N, where the derivative jumps
        n = sch.num_train_timesteps
        t = ((np.floor(t * n) + 0.37) / n).astype(dtype)
        t = t[t < 1]
    grad = jax.vmap(jax.grad(lambda x: sch.log_alpha(x)))(jnp.asarray(t))
    beta = sch.beta(jnp.asarray(t))
    # Both come from the same intermediate quantities (tan theta or cot phi, a stored
    # increment) through different roundings: a few u, times the condition number of tan
    # near pi/2 for the cosine (<= 2/(pi (1 - t)), as in the closed-form test).
    u = unit_roundoff(dtype)
    cond = 2 / np.pi / (1 - t) if name.startswith("cosine") else 1.0
    rtol = 16 * u * (1 + cond)
    np.testing.assert_array_less(np.abs(np.asarray(-2 * grad) / np.asarray(beta) - 1), rtol)


# ---------------------------------------------------------------- t <-> lambda


def lam_tolerance(sch, t, lam, u):
    """Error allowed in t after t -> lambda -> t: lambda carries ~8 u (1 + |lambda|) (plus, for a
    discrete schedule, its knots' rounding), which moves t by that over |d lambda/dt| = beta / (2 sigma^2);
    plus a few roundings of t itself."""
    with jax.enable_x64(True):
        tt = jnp.asarray(t, jnp.float64)
        dlam_dt = np.asarray(sch.beta(tt)) / (2 * np.asarray(sch.sigma(tt)) ** 2)
    extra = 8 * u * np.abs(np.asarray(sch.knots)).max() / np.asarray(sch.sigma(jnp.asarray(t))) ** 2 if sch.is_discrete else 0.0
    return (8 * u * (1 + np.abs(lam)) + extra) / dlam_dt + 8 * u * t


@pytest.mark.parametrize("name,make,ref", CASES, ids=[c[0] for c in CASES])
def test_t_lambda_round_trips(name, make, ref, dtype):
    sch = make()
    u = unit_roundoff(dtype)
    t = times(sch, dtype)
    lam = np.asarray(sch.log_snr(jnp.asarray(t)))
    back = np.asarray(sch.t_from_log_snr(jnp.asarray(lam)))
    assert back.dtype == dtype
    np.testing.assert_array_less(np.abs(back - t), lam_tolerance(sch, t, lam, u))
    # lambda -> t -> lambda over the whole lambda range of the schedule.
    lam_lo, lam_hi = float(sch.log_snr(jnp.asarray(sch.t_max, dtype))), float(sch.log_snr(jnp.asarray(1e-6, dtype)))
    lam = np.linspace(lam_lo, lam_hi, 101).astype(dtype)[1:-1]
    t2 = np.asarray(sch.t_from_log_snr(jnp.asarray(lam)))
    assert np.all((t2 > 0) & (t2 <= sch.t_max))
    lam2 = np.asarray(sch.log_snr(jnp.asarray(t2)))
    # lambda(t(lam)) - lam: t's rounding u t times |d lambda/dt|, plus lambda's own ~8 u (1 + |lambda|).
    with jax.enable_x64(True):
        tt = jnp.asarray(t2, jnp.float64)
        dlam_dt = np.asarray(sch.beta(tt)) / (2 * np.asarray(sch.sigma(tt)) ** 2)
    extra = 8 * u * np.abs(np.asarray(sch.knots)).max() / np.asarray(sch.sigma(jnp.asarray(t2))) ** 2 if sch.is_discrete else 0.0
    np.testing.assert_array_less(np.abs(lam2 - lam), 8 * u * t2 * dlam_dt + 8 * u * (1 + np.abs(lam)) + extra)


def test_t_from_log_snr_matches_the_reference_lambda(x64):
    """t(lambda_ref(t)) == t for each schedule, in float64, with lambda from the longdouble references."""
    u = unit_roundoff(np.float64)
    for name, make, ref in CASES:
        sch = make()
        t = times(sch, np.float64)
        m_ref, _ = ref(t)
        lam_ref = np.asarray(m_ref - np.log(-np.expm1(2 * m_ref)) / 2, np.float64)
        back = np.asarray(sch.t_from_log_snr(jnp.asarray(lam_ref)))
        np.testing.assert_array_less(np.abs(back - t), lam_tolerance(sch, t, lam_ref, u), err_msg=name)


# ---------------------------------------------------------------- discrete vs diffusers' goldens


@pytest.mark.parametrize("name", list(DIFFUSERS_CASES))
def test_discrete_matches_diffusers_alphas_cumprod(name, dtype):
    """alpha(t_n)^2 at t_n = (n + 1)/N against diffusers' alphas_cumprod (tests/golden/make_schedule_golden.py)."""
    golden = np.load(GOLDEN)
    want64, diffusers32 = golden[f"{name}/float64"], golden[f"{name}/float32"].astype(np.float64)
    sch = schedules.from_diffusers(*DIFFUSERS_CASES[name], 1000)
    n = np.arange(1000)
    t = jnp.asarray((n + 1.0) / 1000, dtype)
    got = np.asarray(sch.alpha(t), np.float64) ** 2
    u = unit_roundoff(dtype)
    if dtype == np.float64:
        # float64: cumsum of log1p vs torch's cumprod, each ~(n + 1) u64 at worst: 1e-12 covers n < 1000.
        np.testing.assert_array_less(np.abs(got / want64 - 1), 1e-12)
    else:
        # float32: t_n's rounding moves log alpha by u t beta/2 (as in the closed-form test),
        # exp and the knots' rounding add 8 u |log alpha_n| + 2u; squaring doubles it.
        m = 0.5 * np.log(want64)
        beta = np.asarray(schedules.from_diffusers(*DIFFUSERS_CASES[name], 1000).beta(
            jnp.asarray((n + 0.5) / 1000, dtype)), np.float64)
        tol = 2 * (8 * u * np.abs(m) + u * np.asarray(t, np.float64) * beta + 2 * u)
        np.testing.assert_array_less(np.abs(got / want64 - 1), tol)
        # diffusers' own float32 cumprod is within (n + 1) u of float64 (one rounding a product,
        # 0.37 (n + 1) u measured), so ours agrees with it within the sum of the two bounds.
        np.testing.assert_array_less(np.abs(diffusers32 / want64 - 1), (n + 1) * u)
        np.testing.assert_array_less(np.abs(got / diffusers32 - 1), tol + (n + 1) * u * 1.01)
    # and from alphas_cumprod itself: the same knots to rounding.
    if dtype == np.float64:
        other = schedules.discrete(alphas_cumprod=want64)
        np.testing.assert_allclose(np.asarray(other.alpha(t)) ** 2, want64, rtol=1e-14)


def test_discrete_shape_and_knots():
    sch = schedules.discrete(betas=np.full(10, 0.1))
    assert sch.is_discrete and sch.num_train_timesteps == 10 and sch.t_max == 1.0 and sch.t_min == 0.0
    assert float(sch.log_alpha(0.0)) == 0.0
    # log alpha is linear between knots: the midpoint is the knots' mean (to float32 rounding, 4 u |m|).
    m = np.asarray(sch.log_alpha(jnp.asarray([0.25, 0.35], jnp.float32)))
    want = [0.5 * (2 + 3) * 0.5 * np.log(0.9), 3.5 * 0.5 * np.log(0.9)]
    np.testing.assert_allclose(m, want, rtol=4 * unit_roundoff(np.float32) * 4)
    assert [leaf.shape for leaf in jax.tree.leaves(sch)] == [(11,), (10,)]  # N is static


# ---------------------------------------------------------------- cosine: finite beta


def test_cosine_beta_is_finite_and_capped_on_its_range(dtype):
    sch = schedules.cosine()
    t_max = sch.t_max
    # beta(t_max) = 999 by construction (rel. error ~ u / phi, phi ~ 3e-3: 1e3 u).
    np.testing.assert_allclose(float(sch.beta(jnp.asarray(t_max, dtype))), schedules.COSINE_BETA_CAP,
                               rtol=1e3 * unit_roundoff(dtype))
    t = jnp.asarray(np.linspace(0.0, t_max, 2001), dtype)
    beta = np.asarray(sch.beta(t))
    assert np.all(np.isfinite(beta)) and np.all(beta > 0) and np.all(np.diff(beta) >= 0)
    assert beta.max() <= schedules.COSINE_BETA_CAP * (1 + 1e3 * unit_roundoff(dtype))
    lam = np.asarray(sch.log_snr(t[1:]))
    assert np.all(np.isfinite(lam)) and np.all(np.diff(lam) < 0)
    # t_max follows s: beta(t_max(s)) = 999 for another s.
    other = schedules.cosine(0.02)
    np.testing.assert_allclose(float(other.beta(jnp.asarray(other.t_max, dtype))), 999.0,
                               rtol=1e3 * unit_roundoff(dtype))


# ---------------------------------------------------------------- pytrees under jit and vmap


def test_schedules_under_jit_and_vmap():
    t = jnp.asarray([1e-3, 0.5, 0.9], jnp.float32)
    lin = jax.vmap(lambda b: schedules.linear(0.1, b).alpha(t))(jnp.asarray([10.0, 20.0], jnp.float32))
    for row, b in zip(lin, [10.0, 20.0]):  # vmap compiles the same formula; fusion may move an ulp (4 u)
        np.testing.assert_allclose(row, sde.alpha(t, 0.1, jnp.float32(b)), rtol=4 * unit_roundoff(np.float32))
    cos = jax.vmap(lambda s: schedules.cosine(s).sigma(t))(jnp.asarray([0.008, 0.02], jnp.float32))
    # traced s vs Python s: theta0 is computed in float32 vs float64, ~ 4 u relative in sigma.
    np.testing.assert_allclose(cos[1], schedules.cosine(0.02).sigma(t), rtol=8 * unit_roundoff(np.float32))
    for sch in (schedules.linear(), schedules.cosine(), schedules.from_diffusers("scaled_linear", 0.00085, 0.012)):
        jitted = jax.jit(lambda s, t: (s.log_snr(t), s.t_from_log_snr(s.log_snr(t)), s.beta(t)))(sch, t)
        eager = (sch.log_snr(t), sch.t_from_log_snr(sch.log_snr(t)), sch.beta(t))
        for a, b in zip(jitted, eager):  # XLA may fuse differently: a few ulps (8 u relative, 1e-6 absolute)
            np.testing.assert_allclose(a, b, rtol=8 * unit_roundoff(np.float32), atol=1e-6)
    # a batch of discrete schedules of the same N (stacked leaves) maps too.
    stacked = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v, jnp.float32) for v in x]),
                           schedules.discrete(betas=np.full(4, 0.1)), schedules.discrete(betas=np.full(4, 0.2)))
    got = jax.vmap(lambda s: s.alpha(jnp.float32(1.0)))(stacked)
    np.testing.assert_allclose(got, [0.9**2, 0.8**2], rtol=8 * unit_roundoff(np.float32))
    assert sv.schedules is schedules


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: schedules.linear(0.1, 0.05), ValueError, "beta_max"),
        (lambda: schedules.linear(-1.0, 20.0), ValueError, "beta_min"),
        (lambda: schedules.cosine(-0.1), ValueError, r"s must be in \[0, 248.75\]"),
        (lambda: schedules.discrete(), ValueError, "exactly one.*neither"),
        (lambda: schedules.discrete(betas=[0.1], alphas_cumprod=[0.9]), ValueError, "exactly one.*both"),
        (lambda: schedules.discrete(betas=[0.1, 0.0]), ValueError, r"betas must lie in \(0, 1\).*betas\[1\]"),
        (lambda: schedules.discrete(betas=[1.0, 0.1]), ValueError, r"the last may be 1.*betas\[0\] = 1.0"),
        (lambda: schedules.discrete(betas=[0.1, 1.5]), ValueError, r"betas\[1\]"),
        (lambda: schedules.discrete(betas=[-0.1]), ValueError, r"betas\[0\]"),
        (lambda: schedules.discrete(betas=[[0.1, 0.2]]), ValueError, "betas must be a non-empty 1-D"),
        (lambda: schedules.discrete(betas=[]), ValueError, "non-empty 1-D"),
        (lambda: schedules.discrete(betas=["a"]), TypeError, "betas"),
        (lambda: schedules.discrete(betas=[0.1, np.nan]), ValueError, "finite"),
        (lambda: schedules.discrete(alphas_cumprod=[0.9, 0.95]), ValueError, "strictly decreasing"),
        (lambda: schedules.discrete(alphas_cumprod=[0.9, 0.9]), ValueError, "strictly decreasing"),
        (lambda: schedules.discrete(alphas_cumprod=[1.2, 0.9]), ValueError, r"\(0, 1\]"),
        (lambda: schedules.discrete(alphas_cumprod=[0.0, 0.0]), ValueError, r"the last may be 0.*alphas_cumprod\[0\]"),
        (lambda: schedules.from_diffusers("sigmoid"), ValueError, "'linear', 'scaled_linear', 'squaredcos_cap_v2'"),
        (lambda: schedules.from_diffusers("linear", num_train_timesteps=0), ValueError, "num_train_timesteps"),
        (lambda: schedules.from_diffusers(trained_betas=[0.1, 0.2], num_train_timesteps=3), ValueError, "len"),
    ],
)
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_from_diffusers_trained_betas_and_defaults():
    betas = np.linspace(1e-4, 0.02, 1000)
    a = schedules.from_diffusers(trained_betas=betas)
    b = schedules.from_diffusers("linear", 1e-4, 0.02, 1000)
    np.testing.assert_array_equal(a.knots, b.knots)
    assert schedules.from_diffusers("squaredcos_cap_v2", num_train_timesteps=50).num_train_timesteps == 50
