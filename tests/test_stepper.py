"""sv.Stepper: a solver stepped one model call at a time, the model's output given, against sv.sample_ode /
sv.sample running the same solver with the model inside the loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax.stepper import Stepper, make_sample_keys, model_calls

BATCH = 3


@pytest.fixture(scope="module")
def setup():
    state = sv.set_timesteps(sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012)), 8)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    x = jax.random.normal(jax.random.key(0), (BATCH, 2))
    return state, model_fn, x


def stepped(stepper, model_fn, x, keys=None):
    """The stepper's run, a lax.fori_loop over its calls (a traced index, as diffusers' Flax pipelines loop)."""
    def body(k, carry):
        y, memory = carry
        t = jnp.full((y.shape[0],), stepper.model_time(k))
        return stepper.step(memory, model_fn(y, t), y, k, keys)

    return jax.jit(lambda x: jax.lax.fori_loop(0, stepper.num_calls, body, (x, stepper.init(x)))[0])(x)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("method,options", [
    ("ddim", {}), ("dpm_solver_pp", {"final_sigmas_type": "last"}),
    pytest.param("dpm_solver_pp", {"order": 3}, marks=SLOW), pytest.param("unipc", {}, marks=SLOW),
    pytest.param("deis", {}, marks=SLOW), pytest.param("ipndm", {}, marks=SLOW), pytest.param("lms", {}, marks=SLOW),
    pytest.param("euler", {}, marks=SLOW),
])
def test_a_stepped_run_is_sample_odes_run(setup, method, options):
    """The same solver, grid and model: the stepped run and sample_ode's scan agree to float32 rounding (1e-6 of
    samples of size ~1: the two programs are compiled separately)."""
    state, model_fn, x = setup
    stepper = Stepper.create(state, method, **options)
    assert stepper.num_calls == stepper.solver.nfe(stepper.grid.num_points)
    ref = sv.sample_ode(state, model_fn, None, x.shape, x_init=x, method=method, **options)
    np.testing.assert_allclose(stepped(stepper, model_fn, x), ref, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sde_dpm_solver_pp", "euler_ancestral"])
def test_a_stochastic_solver_draws_each_samples_own_stream(setup, method):
    """Per-sample keys make_sample_keys(key, batch, 0) give the stepped run sv.sample's noise: the same samples; and
    sample b's result depends on its key alone (the first two of a batch of 3 equal a batch of 2)."""
    state, model_fn, x = setup
    key = jax.random.key(7)
    stepper = Stepper.create(state, method)
    out = stepped(stepper, model_fn, x, make_sample_keys(key, BATCH, 0))
    ref = sv.sample(state, model_fn, key, x.shape, x_init=x, solver=method)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    two = stepped(stepper, model_fn, x[:2], make_sample_keys(key, 2, 0))
    np.testing.assert_allclose(two, out[:2], rtol=0, atol=1e-6)


def test_one_step_is_ddims_update(setup):
    """The first DDIM step, given an output eps: x_1 = alpha_1 (x - sigma_0 eps)/alpha_0 + sigma_1 eps (DDIM,
    Song et al. 2021, eq. 12 with eta = 0), from the grid's own alpha and sigma."""
    state, _, x = setup
    stepper = Stepper.create(state, "ddim")
    eps = jnp.full_like(x, 0.25)
    y, _ = stepper.step(stepper.init(x), eps, x, 0)
    g = stepper.grid
    want = g.alpha[1] * (x - g.sigma[0] * eps) / g.alpha[0] + g.sigma[1] * eps
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["heun", "pndm", "kdpm2"])
def test_solvers_with_more_calls_per_step_are_refused_by_name(setup, method):
    state, _, _ = setup
    assert model_calls(sv.solvers.make(method), state)[0] > 1
    with pytest.raises(ValueError, match=f"solver '{method}' calls the model"):
        Stepper.create(state, method)


def test_bad_input_is_refused(setup):
    state, model_fn, x = setup
    with pytest.raises(ValueError, match="draws noise: pass sample_keys"):
        Stepper.create(state, "sde_dpm_solver_pp").step((), x, x, 0)
    with pytest.raises(ValueError, match="cannot be stepped"):
        Stepper.create(state, "adaptive")
    with pytest.raises(TypeError, match="dtype must be a float dtype"):
        Stepper.create(state, "ddim", jnp.int32)
    with pytest.raises(ValueError, match="options"):
        Stepper.create(state, sv.solvers.make("ddim"), order=2)
