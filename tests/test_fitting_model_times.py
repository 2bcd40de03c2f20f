"""Per-grid-point model times (``state.model_times``, ``set_timesteps(..., model_times=)``) and their fit
(``fit_grid(..., fit_model_times=True)``): what the model receives, the zero shift in bits, the gradient, the
refusals, the grid files and the held-out error against the grid-only fit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import fitting

AT_GRID_POINTS = ["ddim", "dpm_solver_pp", "unipc", "deis", "ipndm"]


def _mixture(state, dim=2):
    return sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim))


def _sd():
    return sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000))


def _bits(x):
    x = np.asarray(x)
    return x.view({4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


@pytest.mark.parametrize("discrete", [False, True])
def test_the_model_receives_the_model_time_of_each_grid_point(discrete):
    """At grid time t_k the model's input is model_time of s_k (s_k itself for a continuous schedule, the label
    s_k N - 1 for a discrete one); off the grid the time's own input."""
    state = _sd() if discrete else sv.create_state()
    state = sv.set_timesteps(state, 5, spacing="logsnr")
    grid = np.asarray(state.timesteps, np.float64)
    shifted = grid * np.array([0.9, 0.95, 1.05, 1.1, 1.0])
    on = sv.set_timesteps(state, timesteps=grid, model_times=shifted)
    got = np.asarray(sv.model_time(on, on.timesteps))
    want = np.asarray(sv.model_time(state, jnp.asarray(shifted, state.timesteps.dtype)))
    np.testing.assert_array_equal(got, want)
    if discrete:
        np.testing.assert_allclose(got, shifted * 1000 - 1, rtol=1e-6, atol=1e-4)  # float32 labels, snapped
    middle = jnp.asarray([0.5 * (grid[1] + grid[2])], state.timesteps.dtype)
    np.testing.assert_array_equal(np.asarray(sv.model_time(on, middle)), np.asarray(sv.model_time(state, middle)))
    # a new grid drops them: they belong to the grid they were given with
    assert on.replace(timesteps=on.timesteps[:3]).model_times is None


@pytest.mark.slow
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("method", AT_GRID_POINTS)
def test_model_times_equal_to_the_grid_give_the_plain_sampler_bitwise(method, discrete):
    """model_times = timesteps: the same bits as the state without model times, for every solver that applies
    them, on a continuous and a discrete schedule."""
    state = _sd() if discrete else sv.create_state()
    model_fn = _mixture(state)
    plain = sv.set_timesteps(state, 6, spacing="logsnr")
    same = sv.set_timesteps(state, timesteps=np.asarray(plain.timesteps, np.float64),
                            model_times=np.asarray(plain.timesteps, np.float64))
    a = sv.sample_ode(plain, model_fn, jax.random.key(3), (16, 2), method=method)
    b = sv.sample_ode(same, model_fn, jax.random.key(3), (16, 2), method=method)
    np.testing.assert_array_equal(_bits(a), _bits(b))
    moved = plain.replace(model_times=plain.timesteps.at[1:-1].multiply(0.97))
    c = sv.sample_ode(moved, model_fn, jax.random.key(3), (16, 2), method=method)
    assert not np.array_equal(np.asarray(a), np.asarray(c))  # the model times do reach the model


def test_the_zero_shift_is_the_grid_bitwise():
    """The fit's parametrisation s_k = t_k + (t(lam_k + delta_k) - t(lam_k)) gives the grid's bits at delta = 0,
    end points included (where the clip to the grid's log-SNR range is active)."""
    state = _sd()
    grid = sv.set_timesteps(state, 7, spacing="karras").timesteps
    ends = grid[jnp.array([0, 6])]
    times = fitting._model_times_of(jnp.zeros(grid.shape, grid.dtype), grid, ends, state.schedule.cast(grid.dtype))
    np.testing.assert_array_equal(_bits(times), _bits(grid))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpm_solver_pp", "ipndm"])
def test_the_sampler_is_differentiable_in_the_shifts(x64, method):
    """jax.grad of the output's loss through sample_ode wrt the log-SNR shifts of the model times equals central
    finite differences in float64 (interior points and the last one, whose call gives the output)."""
    state = sv.create_state()
    model_fn = _mixture(state)
    grid = sv.set_timesteps(state, 6, spacing="logsnr").timesteps
    schedule = state.schedule.cast(jnp.float64)
    ends = grid[jnp.array([0, 5])]
    x_T = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64)
    target = jnp.array([[1.0, -1.0]], jnp.float64) * jnp.ones((8, 1), jnp.float64)

    def loss(shift):
        st = state.replace(timesteps=grid, spacing="custom", spacing_given=True,
                           model_times=fitting._model_times_of(shift, grid, ends, schedule))
        x = sv.sample_ode(st, model_fn, None, (8, 2), method=method, x_init=x_T, dtype=jnp.float64)
        return jnp.mean(jnp.square(x - target))

    shift = jnp.array([0.0, 0.1, -0.2, 0.05, 0.3, -0.1], jnp.float64)
    grad = jax.jit(jax.grad(loss))(shift)
    loss_jit = jax.jit(loss)
    for k in (1, 2, 3, 4, 5):
        h = 1e-6
        fd = (loss_jit(shift.at[k].add(h)) - loss_jit(shift.at[k].add(-h))) / (2 * h)
        # central differences err by O(h^2 f''') + rounding 1e-16/h ~ 1e-10 relative: 1e-6 leaves room for both
        np.testing.assert_allclose(float(grad[k]), float(fd), rtol=1e-6, atol=1e-10)
        assert float(grad[k]) != 0.0
    # the last time is sampling_eps, the clip's upper end: a shift past it (delta > 0 there) is clipped away
    assert float(jax.grad(loss)(shift.at[5].set(0.5))[5]) == 0.0


@pytest.mark.parametrize("method", ["heun", "euler", "dpm_solver", "dpm_solver_singlestep", "dpm_solver_pp_2s",
                                    "adaptive", "pndm"])
def test_solvers_that_call_the_model_between_grid_points_refuse_model_times(method):
    state = sv.create_state()
    grid = np.asarray(sv.set_timesteps(state, 6, spacing="logsnr").timesteps, np.float64)
    on = sv.set_timesteps(state, timesteps=grid, model_times=grid)
    with pytest.raises(ValueError, match=f"model_times .* method '{method}' calls it between grid points"):
        sv.sample_ode(on, _mixture(state), jax.random.key(0), (4, 2), method=method)


def test_model_times_refused_where_they_have_no_meaning():
    state = sv.create_state()
    model_fn = _mixture(state)
    grid = np.asarray(sv.set_timesteps(state, 6, spacing="logsnr").timesteps, np.float64)
    on = sv.set_timesteps(state, timesteps=grid, model_times=grid)
    with pytest.raises(ValueError, match="invert_ode does not apply them"):
        sv.invert_ode(on, model_fn, jnp.ones((4, 2)), method="ddim")
    with pytest.raises(ValueError, match="model_times must have the shape of timesteps"):
        sv.set_timesteps(state, timesteps=grid, model_times=grid[:4])
    with pytest.raises(ValueError, match="model_times must lie in"):
        sv.set_timesteps(state, timesteps=grid, model_times=grid * 1.5)
    with pytest.raises(ValueError, match="model_times must be a 1-D array of finite times"):
        sv.set_timesteps(state, timesteps=grid, model_times=np.full(6, np.nan))
    sd = sv.set_timesteps(_sd(), 6, spacing="karras_sigmas")  # a sigma grid: diffusers' labels at its times
    with pytest.raises(ValueError, match="model_times and model_labels"):
        sv.set_timesteps(_sd(), 6, spacing="karras_sigmas", model_times=np.asarray(sd.timesteps, np.float64))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="fit_model_times=True fits one model time per grid point.*'heun'"):
        sv.fit_grid(state, model_fn, key, (4, 2), method="heun", nfe=4, algorithm="gradient", fit_model_times=True)
    with pytest.raises(ValueError, match="fit_model_times=True fits the model times by gradient descent"):
        sv.fit_grid(state, model_fn, key, (4, 2), method="ddim", nfe=4, fit_model_times=True)


@pytest.mark.slow
def test_a_fit_returns_model_times_that_start_as_the_grid_only_fit():
    """fit_model_times=True returns (grid, model_times, info); its first loss is the grid-only fit's first loss
    (the shifts start at 0: the same student), its model times apply through set_timesteps, and the returned
    iterate's loss is at most the start's."""
    state = sv.create_state()
    model_fn = _mixture(state)
    kwargs = dict(method="dpm_solver_pp", nfe=4, algorithm="gradient", fine_points=9, teacher_substeps=2,
                  iterations=4, return_info=True)
    _, plain = sv.fit_grid(state, model_fn, jax.random.key(0), (16, 2), **kwargs)
    grid, times, info = sv.fit_grid(state, model_fn, jax.random.key(0), (16, 2), fit_model_times=True, **kwargs)
    assert info.history[0] == plain.history[0]
    assert times.shape == grid.shape and times.dtype == np.float64 and np.array_equal(info.model_times, times)
    assert not np.array_equal(times, grid)
    assert info.loss <= info.initial_loss * (1 + 1e-5)
    sv.sample_ode(sv.set_timesteps(state, timesteps=grid, model_times=times), model_fn, jax.random.key(1), (4, 2),
                  method="dpm_solver_pp")


def test_grid_files_keep_model_times_and_jobs_refuse_them(tmp_path):
    """save_grid with model_times writes a version-2 file whose times load bit for bit; a file without them stays
    version 1 and loads with model_times None; a job refuses a file with them by name."""
    state = _sd()
    grid = np.asarray(sv.set_timesteps(state, 5, spacing="logsnr").timesteps, np.float64)
    times = grid * np.array([1.0, 0.97, 0.93, 1.02, 1.0])
    times[2] = np.nextafter(times[2], 0.0)  # all 53 bits in use survive JSON
    path = tmp_path / "shifted.json"
    fitting.save_grid(path, grid, state=state, method="dpm_solver_pp", model="m", model_times=times)
    assert json.loads(path.read_text())["version"] == 2
    saved = fitting.load_grid(path, state=state, model="m")
    assert np.array_equal(saved.model_times, times) and saved.model_times.dtype == np.float64
    assert np.array_equal(saved.timesteps, grid)
    plain = tmp_path / "plain.json"
    fitting.save_grid(plain, grid, state=state, method="dpm_solver_pp", model="m")
    assert json.loads(plain.read_text())["version"] == 1 and fitting.load_grid(plain).model_times is None
    spec = sv.JobSpec(num_samples=8, batch_size=4, seed=0, steps=5, method="dpm_solver_pp", model="m")
    with pytest.raises(ValueError, match="records model times .* which a job does not apply"):
        sv.jobs.with_saved_grid(spec, path)
    with pytest.raises(ValueError, match="method 'heun' does not"):
        fitting.save_grid(tmp_path / "h.json", grid, state=state, method="heun", model="m", model_times=times)
    with pytest.raises(ValueError, match="model_times must be 5 finite times"):
        fitting.save_grid(tmp_path / "b.json", grid, state=state, method="ddim", model="m", model_times=times[:3])
    record = json.loads(path.read_text())
    del record["model_times"]  # a version-2 file without its model times is not read as a plain grid
    (tmp_path / "broken.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="must record model_times"):
        fitting.load_grid(tmp_path / "broken.json")


def _held_out(state, model_fn, key, batch):
    """Held-out x_T and the teacher's output (61 Karras times, 8 Heun steps between them, then the data
    prediction at the last time, as the grid solvers end)."""
    keys = sv.loops.make_sample_keys(key, batch, 0)
    x_T = sv.loops.per_sample_normal(keys, 0, (2,), jnp.float32)
    fine = sv.grids.continuous_grid(state, 61, "karras")
    xs, _ = fitting.teacher_trajectory(state, model_fn, x_T, fine, teacher_substeps=8)
    return x_T, fitting._x0_at(state, model_fn, xs[-1], fine[-1], jnp.float32, None)[1]


@pytest.mark.slow
def test_fitted_model_times_beat_the_grid_only_fit_on_held_out_starts():
    """At 5 NFE on the 2-D exact mixture (Stable Diffusion's schedule), dpm_solver_pp: the grid and model times
    fitted on 256 starting points (100 Adam steps) have a smaller error to the teacher than the grid-only fit of
    the same budget, on 2048 other starting points.

    The margin: the squared errors are paired per sample (the same x_T); the mean of the differences
    d_b = e_grid - e_shift is compared with 4 standard errors std(d) / sqrt(2048), so a fit no better than
    the grid-only one would pass with probability below 1e-4 (normal approximation of the mean of 2048 paired
    differences)."""
    sd = _sd()
    model_fn = _mixture(sd)
    kwargs = dict(method="dpm_solver_pp", nfe=5, algorithm="gradient", iterations=100)
    grid_only = sv.fit_grid(sd, model_fn, jax.random.key(0), (256, 2), **kwargs)
    grid, times = sv.fit_grid(sd, model_fn, jax.random.key(0), (256, 2), fit_model_times=True, **kwargs)
    x_T, target = _held_out(sd, model_fn, jax.random.key(123), 2048)

    def errors(st):
        x = sv.sample_ode(st, model_fn, None, x_T.shape, method="dpm_solver_pp", x_init=x_T)
        return np.asarray(jnp.sum(jnp.square(x - target), axis=1), np.float64)

    e_grid = errors(sv.set_timesteps(sd, timesteps=grid_only))
    e_shift = errors(sv.set_timesteps(sd, timesteps=grid, model_times=times))
    d = e_grid - e_shift
    assert d.mean() > 4 * d.std() / np.sqrt(d.size), (np.sqrt(e_shift.mean()), np.sqrt(e_grid.mean()))


def test_the_command_line_refuses_a_grid_file_with_model_times(tmp_path, capsys):
    """sdevp-jax sample --grid on a file with model times: one error line naming them, exit 2, no samples."""
    from sdevp_jax import cli

    state = sv.create_state()
    grid = np.asarray(sv.set_timesteps(state, 5, spacing="logsnr").timesteps, np.float64)
    path = tmp_path / "shifted.json"
    fitting.save_grid(path, grid, state=state, method="dpm_solver_pp", model="default", model_times=grid)
    code = cli.main(["sample", "--method", "dpm_solver_pp", "--grid", str(path), "--num-samples", "8",
                     "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "records model times" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_model_times_benchmark_runs(capsys):
    """benchmarks/fitted_model_times.py at a tiny size: a row per grid, the ratio row, finite numbers."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fitted_model_times.py"
    spec = importlib.util.spec_from_file_location("fitted_model_times", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--dims", "2", "--solvers", "ddim", "--nfes", "4", "--fit-batch", "16", "--eval-batch",
                        "50", "--iterations", "2", "--directions", "8"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "NFE" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == ["logsnr", "karras", "time_quadratic", "ays", "gradient (grid only)",
                                                     "gradient + model times", "grid + model times / best fixed"]
    numbers = [float(v) for r in rows for v in r.replace("(", " ").replace(")", " ").split("|")[2].split()]
    assert numbers and np.all(np.isfinite(numbers))
