"""iPNDM (Zhang & Chen 2023; the sampler of GITS, Chen et al. 2024): the step's arithmetic and parity with the
authors' code.

Parity with ``ipndm_sampler`` of zju-pi/diff-sampler (``gits-main/solvers.py``), run in float64 by
tests/golden/make_ipndm_golden.py from a checkout of that code (tests/golden/ipndm.npz): orders 2-4 at 10 points
and order 4 at 20 on Stable Diffusion's schedule at training labels, ending at label 0 (``final_sigmas_type=
"last"``) or denoising to 0 (``"zero"``). The Adams-Bashforth step is exact for a noise prediction polynomial of
degree ``order - 1`` in rho on equally spaced levels. Its order of convergence is in tests/test_solvers.py.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "ipndm.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))


def exact_model(x, label):
    """The golden's model, N(0.5, 0.8^2) data, at an integer label."""
    a2 = jnp.asarray(GOLDEN["alphas_cumprod"])[jnp.round(label).astype(jnp.int32)][:, None]
    a, sigma = jnp.sqrt(a2), jnp.sqrt(1.0 - a2)
    return sigma * (x - a * 0.5) / (a2 * 0.64 + sigma * sigma)


def test_the_golden_covers_orders_2_to_4():
    assert len(CASES) == 5 and {c.split("/")[0] for c in CASES} == {"2", "3", "4"}


@pytest.mark.parametrize("case", CASES)
def test_parity_with_the_authors_code(case, x64):
    order, _, to_zero = case.split("/")
    state = sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012))
    state = sv.set_timesteps(state, timesteps=(GOLDEN[f"{case}/labels"] + 1) / 1000.0)
    x = sv.sample_ode(state, exact_model, jax.random.key(0), GOLDEN["x_T"].shape, x_init=jnp.asarray(GOLDEN["x_T"]),
                      dtype=jnp.float64, method="ipndm", order=int(order),
                      final_sigmas_type="zero" if to_zero == "1" else "last")
    ref = GOLDEN[f"{case}/final"]
    assert float(np.max(np.abs(np.asarray(x) - ref)) / np.max(np.abs(ref))) <= 1e-10


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_adams_bashforth_is_exact_for_polynomials_on_equal_steps(order, x64):
    """x_t / alpha_t = x_s / alpha_s + int eps d(rho): for eps a polynomial of degree order - 1 in rho through
    equally spaced levels, the step is that integral; one degree more and it is not."""
    schedule = sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012)
    levels = 2.0 - 0.25 * np.arange(5)  # rho at s_3, s_2, s_1, s (= s_0) and t, equally spaced
    grid = sv.solvers.Grid.build(schedule, schedule.t_from_log_snr(jnp.asarray(-np.log(levels))))
    c = grid.coeffs(3, 4)
    x_s = jnp.asarray([[0.6, -0.4]])
    for degree, exact_expected in ((order - 1, True), (order, False)):
        coef = np.array([0.3, -0.7, 0.45, 0.2, -0.15])[: degree + 1]

        def eps(r):
            return np.polyval(coef[::-1], r) * np.array([1.0, -2.0])

        hist = sv.solvers.History.init(x_s)._replace(m1=jnp.asarray(eps(levels[2]))[None],
                                                     m2=jnp.asarray(eps(levels[1]))[None],
                                                     m3=jnp.asarray(eps(levels[0]))[None])
        got = np.asarray(sv.solvers.ipndm_step(x_s, jnp.asarray(eps(levels[3]))[None], hist, c, order)[0])
        antiderivative = np.polyint(coef[::-1])
        rho_s, rho_t = float(c.sigma_s / c.alpha_s), float(c.sigma_t / c.alpha_t)
        integral = (np.polyval(antiderivative, rho_t) - np.polyval(antiderivative, rho_s)) * np.array([1.0, -2.0])
        exact = float(c.alpha_t) * (np.asarray(x_s[0]) / float(c.alpha_s) + integral)
        assert np.allclose(got, exact, rtol=1e-9, atol=1e-12) == exact_expected, (degree, got, exact)
