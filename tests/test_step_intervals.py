r"""Off the "reference" grid each step spans its own interval [t_next, t].

Euler--Maruyama uses dt = t_next - t; the discrete chain (ancestral, reverse diffusion)
the exact rate 1 - alpha(t)^2/alpha(t_next)^2, DDPM's beta_n on a discrete model's
training grid; t_next defaults to the grid time after t, and 0 after the last. All in
float64 (``x64`` fixture), u = 2^-53.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import schedules

U64 = 2.0**-53


def grid_successors(grid):
    return np.concatenate([grid[1:], [0.0]])


def one_per_grid_time(state, dim=2, seed=0):
    """x, eps, z of shape (N, dim) and t = the grid (sample i at grid time i), float64."""
    rng = np.random.default_rng(seed)
    t = np.asarray(state.timesteps, np.float64)
    x, eps, z = (rng.standard_normal((t.shape[0], dim)) for _ in range(3))
    return t, x, eps, z


@pytest.mark.parametrize("schedule, spacing", [
    (schedules.linear(), "time_uniform"),
    (schedules.cosine(), "logsnr"),
    (schedules.from_diffusers("scaled_linear", 0.00085, 0.012), "trailing"),
])
def test_step_pred_off_the_reference_grid_is_euler_maruyama_over_the_interval(x64, schedule, spacing):
    """x_mean = x + (-beta x / 2 + beta eps / sigma) dt, x' = x_mean + sqrt(beta) sqrt(-dt) z, dt = t_next - t.

    Written out here in NumPy from the schedule's beta and sigma: within 16 u of the sum of
    the terms' magnitudes (at most 8 roundings on each).
    """
    state = sv.set_timesteps(sv.create_state(schedule=schedule), 7, spacing=spacing)
    assert not state.uses_reference_step
    t, x, eps, z = one_per_grid_time(state)
    beta = np.asarray(schedule.beta(jnp.asarray(t)))[:, None]
    sigma = np.asarray(schedule.sigma(jnp.asarray(t)))[:, None]
    for t_next in (None, t / 3.0):  # the default (the grid's next time, 0 after the last), and any
        dt = (grid_successors(t) if t_next is None else t_next)[:, None] - t[:, None]
        drift = (-0.5 * beta * x + beta * eps / sigma) * dt
        noise = np.sqrt(beta) * np.sqrt(-dt) * z
        out = sv.step_pred(state, jnp.asarray(eps), jnp.asarray(x), jnp.asarray(t), None,
                           noise=jnp.asarray(z), t_next=None if t_next is None else jnp.asarray(t_next))
        tol = 16 * U64 * (np.abs(x) + np.abs(0.5 * beta * x * dt) + np.abs(beta * eps / sigma * dt) + np.abs(noise))
        np.testing.assert_array_less(np.abs(np.asarray(out.prev_sample_mean) - (x + drift)), tol)
        np.testing.assert_array_less(np.abs(np.asarray(out.prev_sample) - (x + drift + noise)), tol)


def rates(step, state, t):
    """The chain's rate beta_i at each t, read off the step: x = 0, eps = 0, z = 1 give x' = sqrt(beta_i)."""
    ones = jnp.ones((t.shape[0], 1), jnp.float64)
    out = step(state, 0.0 * ones, 0.0 * ones, jnp.asarray(t), None, noise=ones)
    return np.square(np.asarray(out.prev_sample[:, 0], np.float64))


@pytest.mark.parametrize("beta_schedule, betas", [
    ("linear", np.linspace(0.0001, 0.02, 1000)),                                # DDPM, Ho et al. 2020
    ("scaled_linear", np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2),        # Stable Diffusion
])
def test_the_chain_rate_on_the_training_grid_is_ddpms_beta(x64, beta_schedule, betas):
    r"""On the full 1000-label grid, 1 - alpha(t_n)^2/alpha(t_{n-1})^2 = beta_n, for every n (t_{-1} = 0).

    The rate is -expm1(2 (log alpha(t) - log alpha(t_next))): the difference of two
    interpolated knots, each within 4 u |log alpha| (cumsum and interpolation), then expm1
    and the step's sqrt read back by squaring (3 u relative): |error| <= 16 u (|m(t)| +
    |m(t_next)|) + 4 u beta, m = log alpha.
    """
    schedule = schedules.from_diffusers(beta_schedule, betas[0] if beta_schedule == "linear" else 0.00085,
                                        0.02 if beta_schedule == "linear" else 0.012, 1000)
    state = sv.set_timesteps(sv.create_state(schedule=schedule), 1000, spacing="linspace")
    t = np.asarray(state.timesteps, np.float64)
    labels = np.rint(np.asarray(sv.model_time(state, state.timesteps))).astype(int)
    np.testing.assert_array_equal(labels, np.arange(999, -1, -1))
    m = np.abs(np.asarray(schedule.log_alpha(jnp.asarray(t))))
    m_next = np.abs(np.asarray(schedule.log_alpha(jnp.asarray(grid_successors(t)))))
    for step in (sv.ancestral, sv.reverse_diffusion):
        got = rates(step, state, t)
        np.testing.assert_array_less(np.abs(got - betas[labels]), 16 * U64 * (m + m_next) + 4 * U64 * betas[labels])


def test_the_chain_rate_on_a_continuous_grid_is_the_alpha_ratio(x64):
    """Cosine schedule, logsnr grid: beta_i = 1 - alpha(t_i)^2/alpha(t_{i+1})^2, the last one to t = 0
    (alpha = 1): sigma(t_last)^2. Reference from the ratio of alphas (float64, 1 - r^2 loses up to
    4 u absolute); the rate is within 16 u (|m(t)| + |m(t_next)|) of exact: tol the sum, plus 8 u."""
    schedule = schedules.cosine()
    state = sv.set_timesteps(sv.create_state(schedule=schedule), 12)
    t = np.asarray(state.timesteps, np.float64)
    t_next = grid_successors(t)
    alpha = np.asarray(schedule.alpha(jnp.asarray(t)))
    alpha_next = np.where(t_next > 0, np.asarray(schedule.alpha(jnp.asarray(np.maximum(t_next, 1e-300)))), 1.0)
    expected = 1.0 - np.square(alpha / alpha_next)
    m = np.abs(np.log(alpha)) + np.abs(np.log(alpha_next))
    got = rates(sv.ancestral, state, t)
    np.testing.assert_array_less(np.abs(got - expected), 16 * U64 * m + 8 * U64)
    np.testing.assert_allclose(got[-1], np.asarray(schedule.sigma(jnp.asarray(t[-1]))) ** 2, rtol=16 * U64)


@pytest.mark.parametrize("step", [sv.step_pred, sv.ancestral, sv.reverse_diffusion])
def test_t_next_defaults_to_the_next_grid_time_and_zero_after_the_last(x64, step):
    state = sv.set_timesteps(sv.create_state(schedule=schedules.cosine()), 6)
    t, x, eps, z = one_per_grid_time(state)
    args = (jnp.asarray(eps), jnp.asarray(x))
    default = step(state, *args, jnp.asarray(t), None, noise=jnp.asarray(z))
    explicit = step(state, *args, jnp.asarray(t), None, noise=jnp.asarray(z), t_next=jnp.asarray(grid_successors(t)))
    np.testing.assert_array_equal(default.prev_sample, explicit.prev_sample)  # the same arithmetic: bitwise
    # a scalar t: the last grid time steps to 0; a time between grid points to the grid time below it
    last = step(state, *args, t[-1], None, noise=jnp.asarray(z))
    np.testing.assert_array_equal(last.prev_sample, step(state, *args, t[-1], None, noise=jnp.asarray(z),
                                                         t_next=0.0).prev_sample)
    between = 0.5 * (t[2] + t[3])
    np.testing.assert_array_equal(step(state, *args, between, None, noise=jnp.asarray(z)).prev_sample,
                                  step(state, *args, between, None, noise=jnp.asarray(z), t_next=t[3]).prev_sample)
    # and the default is not the reference's dt = -1/N: a different step
    other = step(state, *args, t[2], None, noise=jnp.asarray(z), t_next=t[2] - 1.0 / 6)
    assert not np.allclose(other.prev_sample, step(state, *args, t[2], None, noise=jnp.asarray(z)).prev_sample)
