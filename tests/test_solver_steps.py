"""Each solver's step tested directly: its arithmetic against known answers, without a compiled loop.

The steps are called by hand (``init``, ``step`` for each interval, ``finish``) in
float64, on models whose probability-flow ODE has a closed form:

data at one point ``mu``: ``x_t = alpha_t mu + sigma_t (x_s - alpha_s mu) / sigma_s``. Its
  data prediction is ``mu`` everywhere, and its noise prediction is constant along each
  trajectory, so every exponential integrator -- of any order, in data or noise
  prediction -- is exact on it at any step size: a wrong zeroth-order coefficient shows.

The higher-order terms, which vanish on point data, are held by the order tests
(tests/test_solvers.py) and the parity goldens against diffusers
(tests/test_solver_parity.py).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import solvers
from sdevp_jax.denoiser import Denoiser
from sdevp_jax.solvers import Grid, Noise

MU = np.array([[0.7, -1.3]])  # (1, 2): broadcasts over the batch


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def gaussian_eps(state, s):
    """The exact noise prediction of data ``N(MU, s^2 I)`` under ``state``'s schedule (s = 0: a point)."""
    def model_fn(x, t_model):
        t = sv.time_from_model_time(state, t_model).astype(x.dtype)[:, None]  # (batch, 1)
        alpha, sigma = state.schedule.cast(x.dtype).alpha_sigma(t)
        return sigma * (x - alpha * MU) / (alpha ** 2 * s ** 2 + sigma ** 2)
    return model_fn


def gaussian_flow(state, s, x, t_from, t_to):
    """The exact probability-flow map of data ``N(MU, s^2 I)`` from ``t_from`` to ``t_to``."""
    schedule = state.schedule.cast(jnp.float64)
    a0, s0 = schedule.alpha_sigma(jnp.asarray(t_from, jnp.float64))
    a1, s1 = schedule.alpha_sigma(jnp.asarray(t_to, jnp.float64))
    v0, v1 = a0 ** 2 * s ** 2 + s0 ** 2, a1 ** 2 * s ** 2 + s1 ** 2
    return a1 * MU + jnp.sqrt(v1 / v0) * (x - a0 * MU)


def run_by_hand(solver, state, model_fn, x, keys=None):
    """``solver`` over ``state``'s grid, one ``step`` call per interval (no scan); returns (x, nfe)."""
    dtype = x.dtype
    model = Denoiser(state, model_fn, dtype, dtype)
    grid = Grid.build(state.schedule.cast(dtype), solver.times(state, dtype), solver.coefficients)
    noise = Noise(keys, jnp.int32(1), x.shape[1:], dtype)
    memory = solver.init(x, grid)
    nfe = []

    @jax.jit  # one step compiled once, called for each k (no loop is compiled)
    def step(x, memory, k):
        x, memory, info = solver.step(model, x, memory, grid, k, noise)
        nfe.append(info.nfe)
        return x, memory

    num_steps = solver.num_steps(grid.num_points)
    for k in range(num_steps):
        x, memory = step(x, memory, jnp.int32(k))
    nfe = nfe[0] * num_steps
    x, memory, info = solver.finish(model, x, memory, grid)
    return x, nfe + info.nfe


STATES = {
    "linear": lambda: sv.create_state(),
    "cosine": lambda: sv.create_state(schedule=sv.schedules.CosineSchedule(0.008)),
    "discrete": lambda: sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000)),
}

# every deterministic exponential integrator of the registry, at each of its orders
EXACT = [("dpm_solver", {"order": p}) for p in (1, 2, 3)] + [("ddim", {})] + [
    ("dpm_solver_pp", {"order": p}) for p in (1, 2, 3)] + [("dpm_solver_pp", {"order": 2, "solver_type": "heun"}),
                                                             ("dpm_solver_pp", {"order": 3, "third_order": "diffusers"})
                                                             ] + [
    ("unipc", {"order": p, "solver_type": v, "predict_x0": x0}) for p in (1, 2, 3) for v in ("bh1", "bh2")
    for x0 in (True, False)] + [("dpm_solver_pp_2s", {}), ("dpm_solver_pp_2s", {"r": 1.0})]


def _last(options, name):
    return options | ({"final_sigmas_type": "last"} if "final_sigmas_type" in solvers.option_fields(
        solvers.get(name)) else {})


@pytest.mark.parametrize("schedule", ["linear"] + [pytest.param(s, marks=pytest.mark.slow) for s in ("cosine", "discrete")])
@pytest.mark.parametrize("name,options", EXACT, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_exponential_integrators_are_exact_on_point_data(x64, schedule, name, options):
    # 7 grid points uniform in log-SNR: coarse steps (h about 1.5 on the linear schedule), where any
    # error in a step's zeroth-order coefficients would be of order 1; exact arithmetic leaves rounding.
    state = sv.set_timesteps(STATES[schedule](), 7, spacing="logsnr")
    solver = solvers.make(name, **_last(options, name))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)))
    out, nfe = run_by_hand(solver, state, gaussian_eps(state, 0.0), x)
    times = solver.times(state, jnp.float64)
    expected = gaussian_flow(state, 0.0, x, times[0], times[-1])
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)
    assert nfe == solver.nfe(7)


def test_registry_is_what_every_edge_exposes():
    # sv.METHODS, the jobs' recorded options and the CLI's flags are read from the solver classes:
    # every registered solver and every option of each must appear in all of them.
    from sdevp_jax import cli, jobs

    assert list(sv.METHODS) == list(solvers.REGISTRY)
    job_fields = {f.name for f in dataclasses.fields(jobs.JobSpec)}
    for name, cls in solvers.REGISTRY.items():
        assert sv.METHODS[name].kind == cls.kind and sv.METHODS[name].description == cls.description
        for option, field in solvers.option_fields(cls).items():
            assert field.metadata["help"], (name, option)
            if cls.kind in jobs.SAMPLE_ODE_KINDS:
                assert option in jobs.SOLVER_FIELDS and option in job_fields and option in cli.SOLVER_FLAGS
                assert jobs.solver_defaults(name, thresholding=True)[option] == field.default


def test_make_names_the_option_a_method_does_not_take():
    with pytest.raises(ValueError, match=r"eta applies to the methods \['ddim', 'sde_dpm_solver_pp'\] only"):
        solvers.make("unipc", eta=0.5)
    with pytest.raises(ValueError, match="sample_max_value is an option of thresholding"):
        solvers.make("ddim", sample_max_value=2.0)
    with pytest.raises(ValueError, match=r"order must be in \[1, 3\] for method='sde_dpm_solver_pp', got 4"):
        solvers.make("sde_dpm_solver_pp", order=4)
    with pytest.raises(ValueError, match="method must be one of"):
        solvers.make("dpm_solver_2m")
    with pytest.raises(ValueError, match=r"r must be a number in \(0, 1\]"):
        solvers.DPMSolverPP2S(r=0.0)


def test_solver_objects_are_pytrees_with_static_options():
    # the options that change the program are static (aux data); DDIM's eta is a leaf, so a jitted
    # function may take the solver as an argument and trace eta
    leaves, treedef = jax.tree.flatten(solvers.DDIM(eta=0.5))
    assert leaves == [0.5]
    assert jax.tree.flatten(solvers.UniPC(order=3))[0] == []
    assert jax.tree.unflatten(treedef, [1.0]).eta == 1.0


@pytest.mark.parametrize("solver", [
    solvers.EulerMaruyama(), solvers.PredictorCorrector(solvers.Ancestral(), solvers.Langevin(), 2),
    solvers.SDEDPMSolverPP(), solvers.DDIM(eta=1.0), solvers.Heun(), solvers.DPMSolverPP2S()], ids=lambda s: s.name)
def test_the_steps_report_the_solvers_network_calls(solver):
    # info.nfe, summed over the steps, is the count the solver declares (SamplerInfo reports the former)
    state = sv.set_timesteps(sv.create_state(), 25)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(0), jnp.arange(3))
    out, nfe = run_by_hand(solver, state, gaussian_eps(state, 0.5), jnp.zeros((3, 2)), keys)
    assert nfe == solver.nfe(solver.times(state, jnp.float32).shape[0]) > 0
    assert np.all(np.isfinite(out))


NAMESPACES = ["solvers", "schedules", "grids", "mixtures", "jobs", "distributed", "denoiser"]

# One interpreter imports jax, then forks a child per namespace that imports the namespace alone and checks
# that no JAX backend started (a multi-process job must import before jax.distributed.initialize) and no JAX
# config changed; the child's exit status says which. Forking shares the cost of starting Python and
# importing jax (seconds on a 2-core VM) among the namespaces.
IMPORT_ALONE = """
import importlib, os, sys, traceback
import jax
x64 = jax.config.jax_enable_x64
for namespace in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module("sdevp_jax." + namespace)
            from jax._src import xla_bridge
            assert not xla_bridge._backends, "a backend was started"
            assert jax.config.jax_enable_x64 == x64, "jax_enable_x64 changed"
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    print(namespace, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


@pytest.fixture(scope="module")
def namespace_imports():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", IMPORT_ALONE, *NAMESPACES], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(line.split() for line in proc.stdout.splitlines()), proc.stderr


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_namespace_imports_on_its_own_without_side_effects(namespace, namespace_imports):
    status, stderr = namespace_imports
    assert status[namespace] == "0", stderr[-4000:]


@pytest.mark.parametrize("r", [0.5, 0.3, 1.0])
def test_dpmpp_2s_step_has_local_order_three(x64, r):
    # A model whose data prediction is D(lambda) = a + b lambda (whatever x) has the exact step
    # x_t = sigma_t/sigma_s x_s + sigma_t [A(lambda_t) - A(lambda_s)], A = e^lambda (a + b (lambda - 1)).
    # A second-order step misses it by O(h^3): one step of h and of h/2 differ in error by 2^3 (log2 ratio
    # 3; at these h the next term moves it by < 0.1). Weights of the two evaluations other than
    # 1 - 1/(2r), 1/(2r) leave an O(h^2) error (ratio 2), a wrong first-order term O(h) (ratio 1).
    a, b = 0.4, -0.15
    base = sv.create_state(prediction_type="sample")
    schedule = base.schedule.cast(jnp.float64)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2)))
    errors = []
    for h in (0.4, 0.2):
        lam = jnp.asarray([-1.0, -1.0 + h], jnp.float64)
        state = sv.set_timesteps(base, timesteps=np.asarray(schedule.t_from_log_snr(lam)))

        def model_fn(x, t_model, state=state):
            t = sv.time_from_model_time(state, t_model).astype(x.dtype)
            return jnp.broadcast_to(a + b * schedule.log_snr(t)[:, None], x.shape)

        out, nfe = run_by_hand(solvers.DPMSolverPP2S(r=r, final_sigmas_type="last"), state, model_fn, x)
        assert nfe == 2
        t0, t1 = state.timesteps.astype(jnp.float64)
        l0, l1 = schedule.log_snr(t0), schedule.log_snr(t1)
        antiderivative = lambda lam: jnp.exp(lam) * (a + b * (lam - 1.0))  # noqa: E731
        exact = schedule.sigma(t1) / schedule.sigma(t0) * x + schedule.sigma(t1) * (antiderivative(l1) - antiderivative(l0))
        errors.append(float(jnp.max(jnp.abs(out - exact))))
    assert abs(np.log2(errors[0] / errors[1]) - 3.0) < 0.2, errors
