"""sdevp_jax.fitting: the sampler differentiated through its grid and its model, GITS's dynamic programme,
fitted grids against fixed ones on held-out starting points, and the grid files."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import fitting


def _mixture(state, dim=2):
    return sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim))


# ------------------------------------------------------------------------------------------ differentiability


@pytest.mark.parametrize("method", ["ddim", pytest.param("dpm_solver_pp", marks=pytest.mark.slow),
                                    pytest.param("unipc", marks=pytest.mark.slow)])
def test_the_sampler_is_differentiable_in_its_grid(x64, method):
    """jax.grad of the output's loss through sample_ode (lax.scan) with a traced grid equals central finite
    differences in float64, at interior grid points (the end points stay fixed in a fit)."""
    state = sv.create_state()
    model_fn = _mixture(state)
    grid = sv.set_timesteps(state, 6, spacing="logsnr").timesteps
    target = jnp.array([[1.0, -1.0]], jnp.float64) * jnp.ones((8, 1), jnp.float64)

    def loss(g):
        x = sv.sample_ode(state.replace(timesteps=g, spacing="custom", spacing_given=True), model_fn,
                          jax.random.key(0), (8, 2), method=method, dtype=jnp.float64)
        return jnp.mean(jnp.square(x - target))

    grad = jax.jit(jax.grad(loss))(grid)
    loss_jit = jax.jit(loss)
    for k in (1, 3, 4):
        h = 1e-6 * float(grid[k])
        fd = (loss_jit(grid.at[k].add(h)) - loss_jit(grid.at[k].add(-h))) / (2 * h)
        # central differences err by O(h^2 f''') + rounding 1e-16/h ~ 1e-9 relative; 1e-6 leaves room for both
        np.testing.assert_allclose(float(grad[k]), float(fd), rtol=1e-6, atol=1e-9)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_the_sampler_is_differentiable_in_a_model_parameter(x64):
    """d/dc of the loss of sample_ode with the model c * eps(x, t) equals central finite differences."""
    state = sv.set_timesteps(sv.create_state(), 6, spacing="logsnr")
    eps = _mixture(state)

    def loss(c):
        x = sv.sample_ode(state, lambda x, t: c * eps(x, t), jax.random.key(1), (8, 2), method="dpm_solver_pp",
                          dtype=jnp.float64)
        return jnp.mean(jnp.square(x))

    c0 = 0.9
    grad = float(jax.jit(jax.grad(loss))(jnp.float64(c0)))
    h = 1e-6
    loss = jax.jit(loss)
    fd = float((loss(jnp.float64(c0 + h)) - loss(jnp.float64(c0 - h))) / (2 * h))
    np.testing.assert_allclose(grad, fd, rtol=1e-6)
    assert abs(grad) > 1e-3  # the loss does depend on c: the comparison is not 0 = 0


# ---------------------------------------------------------------------------------------- the dynamic programme


def test_dp_finds_the_least_cost_path_by_enumeration():
    """dp_select's path is the least of every path of K steps from 0 to M - 1 (enumerated), weighted as stated."""
    rng = np.random.default_rng(0)
    m = 9
    costs = rng.uniform(0.1, 1.0, (m, m))
    for k, coeff in itertools.product((1, 2, 3, 5), (1.0, 1.15, 0.7)):
        idx, cost = fitting.dp_select(costs, k, coeff)
        assert idx[0] == 0 and idx[-1] == m - 1 and len(idx) == k + 1 and np.all(np.diff(idx) > 0)
        best = np.inf
        for inner in itertools.combinations(range(1, m - 1), k - 1):
            path = (0,) + inner + (m - 1,)
            total = sum(coeff ** s * costs[a, b] for s, (a, b) in enumerate(zip(path[:-1], path[1:])))
            best = min(best, total)
        path_cost = sum(coeff ** s * costs[a, b] for s, (a, b) in enumerate(zip(idx[:-1], idx[1:])))
        assert cost == pytest.approx(best, rel=1e-12) and path_cost == pytest.approx(best, rel=1e-12)


def test_dp_recovers_a_constructed_optimum():
    """Costs that are 1 off a chosen path and 0 on it: the DP returns that path, with cost 0."""
    m, chosen = 12, [0, 2, 7, 9, 11]
    costs = np.ones((m, m))
    for a, b in zip(chosen[:-1], chosen[1:]):
        costs[a, b] = 0.0
    idx, cost = fitting.dp_select(costs, len(chosen) - 1)
    assert idx.tolist() == chosen and cost == 0.0


def test_dp_refuses_bad_input():
    with pytest.raises(ValueError, match="num_steps must be in"):
        fitting.dp_select(np.ones((4, 4)), 4)
    with pytest.raises(ValueError, match="square"):
        fitting.dp_select(np.ones((4, 3)), 2)


@pytest.mark.slow
def test_gits_costs_are_ddim_steps_from_the_teacher():
    """c[i, j] is the batch-mean distance of DDIM's step from the teacher's point i to t_j to the teacher's
    point j: recomputed here with sample_ode's DDIM on the two-point grid [t_i, t_j] (final_sigmas_type='last')."""
    state = sv.create_state()
    model_fn = _mixture(state)
    times = sv.set_timesteps(state, 6, spacing="karras").timesteps
    x_T = jax.random.normal(jax.random.key(2), (16, 2))
    xs, nfe = fitting.teacher_trajectory(state, model_fn, x_T, times, teacher_substeps=3)
    assert nfe == 5 * 3 * 2  # heun: two calls a step
    costs, calls = fitting.gits_costs(state, model_fn, xs, times)
    assert calls == 5 and np.all(np.isinf(costs[np.tril_indices(6)])) and np.all(np.isfinite(costs[np.triu_indices(6, 1)]))
    for i, j in [(0, 1), (1, 4), (2, 5)]:
        st = sv.set_timesteps(state, timesteps=np.asarray(times)[[i, j]])
        x = sv.sample_ode(st, model_fn, jax.random.key(0), (16, 2), method="ddim", x_init=xs[i],
                          final_sigmas_type="last")
        want = float(jnp.mean(jnp.linalg.norm(x - xs[j], axis=1)))
        assert costs[i, j] == pytest.approx(want, rel=1e-4, abs=1e-6)  # float32 sums


@pytest.mark.slow
def test_dp_grid_costs_no_more_than_the_logsnr_subset():
    """On a fine log-SNR grid of 4 (N - 1) + 1 points the uniform-in-log-SNR grid of N points is one of the
    DP's candidates (every 4th point): the DP's cost is at most its cost, and the grid fit_grid returns is
    the DP's path on the fine grid."""
    state = sv.create_state()
    model_fn = _mixture(state)
    n, m = 5, 17
    grid, info = sv.fit_grid(state, model_fn, jax.random.key(0), (32, 2), method="ddim", nfe=n, fine_points=m,
                             fine_spacing="logsnr", teacher_substeps=2, coeff=1.0, return_info=True)
    fine = np.asarray(sv.grids.continuous_grid(state, m, "logsnr"), np.float64)
    assert np.all(np.isin(grid, fine)) and grid.shape == (n,)
    keys = sv.loops.make_sample_keys(jax.random.key(0), 32, 0)
    x_T = sv.loops.per_sample_normal(keys, 0, (2,), jnp.float32)
    xs, _ = fitting.teacher_trajectory(state, model_fn, x_T, jnp.asarray(fine, jnp.float32), teacher_substeps=2)
    costs, _ = fitting.gits_costs(state, model_fn, xs, jnp.asarray(fine, jnp.float32))
    subset = np.arange(0, m, 4)
    subset_cost = sum(costs[a, b] for a, b in zip(subset[:-1], subset[1:]))
    assert info.dp_cost <= subset_cost + 1e-12
    assert info.nfe == n and info.num_points == n


# ------------------------------------------------------------------------------------------------ the fitting


def test_num_points_for_nfe():
    assert fitting.num_points_for_nfe("ddim", 4) == 4  # final_sigmas_type="zero": N calls on N points
    assert fitting.num_points_for_nfe("ddim", 4, final_sigmas_type="last") == 5
    assert fitting.num_points_for_nfe("heun", 8) == 5
    assert fitting.num_points_for_nfe("euler", 4) == 5
    with pytest.raises(ValueError, match="exactly nfe = 7"):
        fitting.num_points_for_nfe("heun", 7)
    with pytest.raises(ValueError, match="deterministic fixed-grid"):
        fitting.num_points_for_nfe("adaptive", 7)
    with pytest.raises(ValueError, match="deterministic fixed-grid"):
        fitting.num_points_for_nfe("ddim", 5, eta=1.0)


def test_fit_grid_refuses_bad_options():
    state = sv.create_state()
    model_fn = _mixture(state)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        sv.fit_grid(state, model_fn, key, (4, 2), method="ddim", nfe=4, algorithm="newton")
    with pytest.raises(ValueError, match="fine_points must be >="):
        sv.fit_grid(state, model_fn, key, (4, 2), method="ddim", nfe=6, fine_points=5)
    with pytest.raises(ValueError, match="fine_spacing must be one of"):
        sv.fit_grid(state, model_fn, key, (4, 2), method="ddim", nfe=4, fine_spacing="linspace")
    with pytest.raises(ValueError, match="free_end=True fits the last time of algorithm='gradient'"):
        sv.fit_grid(state, model_fn, key, (4, 2), method="ddim", nfe=4, free_end=True)
    with pytest.raises(ValueError, match="free_end=True"):
        sv.fit_grid(state, model_fn, key, (4, 2), method="heun", nfe=4, algorithm="gradient", free_end=True)
    with pytest.raises(ValueError, match="init must have shape"):
        sv.fit_grid(state, model_fn, key, (4, 2), method="ddim", nfe=4, algorithm="gradient", init=[1.0, 0.5])


@pytest.mark.slow
def test_gradient_fit_lowers_the_loss_and_keeps_the_end_points():
    """A few Adam steps from the log-SNR grid: the returned grid's fitting loss is at most the start's (the
    fit returns the iterate of least loss), the end points are the schedule's, and the grid decreases."""
    state = sv.create_state()
    model_fn = _mixture(state)
    grid, info = sv.fit_grid(state, model_fn, jax.random.key(0), (32, 2), method="ddim", nfe=4, algorithm="gradient",
                             fine_points=9, teacher_substeps=2, iterations=5, learning_rate=0.1, return_info=True)
    start = np.asarray(sv.set_timesteps(state, 4, spacing="logsnr").timesteps, np.float64)
    assert grid[0] == start[0] and grid[-1] == pytest.approx(start[-1], rel=1e-6)
    assert np.all(np.diff(grid) < 0)
    assert info.loss <= info.initial_loss * (1 + 1e-5)  # float32 loss of the same grid, recomputed
    assert info.history.shape == (6,) and info.history[0] == pytest.approx(info.initial_loss, rel=1e-5)
    assert info.loss < info.history[0]  # DDIM's log-SNR grid is not a stationary point of the loss


@pytest.mark.slow
def test_checkpointed_fit_gives_the_same_gradient_steps():
    """checkpoint=True recomputes the model in the backward pass: the same loss history to float rounding."""
    state = sv.create_state()
    model_fn = _mixture(state)
    kwargs = dict(method="dpm_solver_pp", nfe=4, algorithm="gradient", fine_points=9, teacher_substeps=2,
                  iterations=3, return_info=True)
    _, plain = sv.fit_grid(state, model_fn, jax.random.key(0), (16, 2), **kwargs)
    _, ckpt = sv.fit_grid(state, model_fn, jax.random.key(0), (16, 2), checkpoint=True, **kwargs)
    np.testing.assert_allclose(ckpt.history, plain.history, rtol=1e-5)


def _held_out(state, model_fn, key, batch):
    """Held-out starting points x_T and the teacher's output from them (a 61-time Karras grid, 8 Heun steps
    between consecutive times, then the data prediction at the last time, as the grid solvers end)."""
    keys = sv.loops.make_sample_keys(key, batch, 0)
    x_T = sv.loops.per_sample_normal(keys, 0, (2,), jnp.float32)
    fine = sv.grids.continuous_grid(state, 61, "karras")
    xs, _ = fitting.teacher_trajectory(state, model_fn, x_T, fine, teacher_substeps=8)
    return x_T, fitting._x0_at(state, model_fn, xs[-1], fine[-1], jnp.float32, None)[1]


def _squared_errors(state, model_fn, grid, method, x_T, target):
    x = sv.sample_ode(sv.set_timesteps(state, timesteps=grid), model_fn, jax.random.key(0), x_T.shape, method=method,
                      x_init=x_T)
    return np.asarray(jnp.sum(jnp.square(x - target), axis=1), np.float64)  # per sample


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,method,free_end", [("dp", "ddim", False), ("gradient", "dpm_solver_pp", False),
                                                       ("gradient", "dpm_solver_pp", True)])
def test_fitted_grid_beats_the_logsnr_grid_on_held_out_starts(algorithm, method, free_end):
    """At 5 NFE on the 2-D exact mixture (Stable Diffusion's schedule), the grid fitted on 256 starting points
    has a smaller error to the teacher than the log-SNR grid on 2048 other starting points.

    The margin: the two grids' squared errors are paired per sample (the same x_T); the mean of the
    differences d_b = e_logsnr - e_fit is compared with 4 standard errors std(d) / sqrt(2048), so a
    fitted grid no better than the log-SNR one would pass with probability below 1e-4 (normal
    approximation of the mean of 2048 paired differences)."""
    sd = sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000))
    model_fn = _mixture(sd)
    grid = sv.fit_grid(sd, model_fn, jax.random.key(0), (256, 2), method=method, nfe=5, algorithm=algorithm,
                       free_end=free_end)
    assert (grid[-1] > np.float32(sd.sampling_eps)) == free_end  # the fixed end: sampling_eps in float32
    logsnr = np.asarray(sv.set_timesteps(sd, 5, spacing="logsnr").timesteps, np.float64)
    x_T, target = _held_out(sd, model_fn, jax.random.key(123), 2048)
    e_fit = _squared_errors(sd, model_fn, grid, method, x_T, target)
    e_log = _squared_errors(sd, model_fn, logsnr, method, x_T, target)
    d = e_log - e_fit
    assert d.mean() > 4 * d.std() / np.sqrt(d.size), (np.sqrt(e_fit.mean()), np.sqrt(e_log.mean()))


# ------------------------------------------------------------------------------------------------- grid files


def test_schedule_description_writes_numbers_as_numbers_and_tables_by_digest():
    """A 0-d parameter (the linear schedule's beta_min, beta_max) as its float, readable in the file and in a
    mismatch message; a table (a discrete schedule's knots) by the SHA-256 of its float64 bytes."""
    assert fitting.schedule_description(sv.create_state()) == {
        "class": "LinearSchedule", "beta_min": 0.1, "beta_max": 20.0, "sampling_eps": 0.001,
        "prediction_type": "epsilon"}
    state = sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000))
    described = fitting.schedule_description(state)
    import hashlib

    knots = np.ascontiguousarray(np.asarray(state.schedule.knots, np.float64))
    assert described["knots_sha256"] == hashlib.sha256(knots.tobytes()).hexdigest()
    assert described["num_train_timesteps"] == 1000


def test_a_file_with_digests_of_number_parameters_loads_on_its_schedule_only(tmp_path):
    """sdevp-jax 0.6.0 wrote a number parameter as the SHA-256 of its float64 bytes (``beta_min_sha256``): such a
    file still matches the schedule it was fitted on, in load_grid and in the jobs' check, and no other."""
    import hashlib

    spec = sv.jobs.JobSpec(num_samples=1, batch_size=1, seed=0, steps=4, method="ddim")
    other = sv.jobs.JobSpec(num_samples=1, batch_size=1, seed=0, steps=4, method="ddim",
                            scheduler=spec.scheduler | {"beta_max": 10.0})
    state = sv.jobs.job_state(spec)
    grid = np.asarray(sv.set_timesteps(state, 4, spacing="logsnr").timesteps, np.float64)
    path = fitting.save_grid(tmp_path / "g.json", grid, state=state, method="ddim", model="default")
    record = json.loads(path.read_text())
    for name in ("beta_min", "beta_max"):  # the earlier form, written out: a 1-element float64 array's digest
        value = record["schedule"].pop(name)
        record["schedule"][name + "_sha256"] = hashlib.sha256(np.asarray([value], np.float64).tobytes()).hexdigest()
    path.write_text(json.dumps(record))
    assert np.array_equal(fitting.load_grid(path, state=state).timesteps, grid)
    with pytest.raises(ValueError, match="another schedule: beta_max, beta_max_sha256 differ"):
        fitting.load_grid(path, state=sv.jobs.job_state(other))
    assert np.array_equal(sv.jobs.with_saved_grid(spec, path).timesteps, grid)
    with pytest.raises(ValueError, match="schedule beta_max_sha256"):
        sv.jobs.with_saved_grid(other, path)


def test_save_load_round_trip_and_refusal_to_overwrite(tmp_path):
    state = sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000))
    grid = np.asarray(sv.set_timesteps(state, 6, spacing="karras").timesteps, np.float64)
    grid[2] = np.nextafter(grid[2], 0.0)  # a time with all 53 bits in use survives JSON exactly
    path = tmp_path / "grid.json"
    fitting.save_grid(path, grid, state=state, method="dpm_solver_pp", options={"order": 3}, model="unet@abc123",
                      metadata={"note": "test"})
    saved = fitting.load_grid(path, state=state, model="unet@abc123")
    assert np.array_equal(saved.timesteps, grid) and saved.timesteps.dtype == np.float64
    assert saved.method == "dpm_solver_pp" and saved.options["order"] == 3 and saved.nfe == 6
    assert saved.model == "unet@abc123" and saved.extra == {"note": "test"}
    assert saved.schedule["class"] == "DiscreteSchedule" and saved.schedule["prediction_type"] == "epsilon"
    assert sv.solvers.make(saved.method, **saved.options) == sv.solvers.make("dpm_solver_pp", order=3)
    record = json.loads(path.read_text())
    assert record["format"] == fitting.FORMAT and record["version"] == 1

    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        fitting.save_grid(path, grid[::-1][::-1], state=state, method="ddim", model="other")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json"]  # no temporary file left behind
    fitting.save_grid(path, grid, state=state, method="ddim", model="other", overwrite=True)
    assert fitting.load_grid(path).method == "ddim"


def test_load_grid_checks_what_it_was_fitted_for(tmp_path):
    state = sv.create_state()
    grid = np.asarray(sv.set_timesteps(state, 4, spacing="logsnr").timesteps, np.float64)
    path = fitting.save_grid(tmp_path / "g.json", grid, state=state, method="ddim", model="m1")
    with pytest.raises(ValueError, match="fitted for model 'm1', not 'm2'"):
        fitting.load_grid(path, model="m2")
    with pytest.raises(ValueError, match="another schedule: beta_max"):
        fitting.load_grid(path, state=sv.create_state(beta_max=10.0))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a fitted grid file"):
        fitting.load_grid(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="strictly decreasing"):
        fitting.save_grid(tmp_path / "h.json", grid[::-1], state=state, method="ddim", model="m1")
    with pytest.raises(ValueError, match="model must be a non-empty string"):
        fitting.save_grid(tmp_path / "h.json", grid, state=state, method="ddim", model="")


@pytest.mark.slow
def test_conditions_reach_the_teacher_and_the_student():
    """With a class-conditional model the teacher runs with each sample's class (its end equals sample_ode's Heun
    through the same refined grid with cond, and differs from the unconditional one), and fit_grid passes cond on."""
    state = sv.create_state()
    model_fn = sv.mixtures.make_class_model(state, sv.mixtures.default_class_mixture())
    cond = jnp.array([0, 1, 0, 1])
    times = sv.set_timesteps(state, 3, spacing="logsnr").timesteps
    x_T = jax.random.normal(jax.random.key(4), (4, 2))
    xs, _ = fitting.teacher_trajectory(state, model_fn, x_T, times, teacher_substeps=2, cond=cond)
    refined = sv.set_timesteps(state, 5, spacing="logsnr")  # the same times: 2 log-SNR-uniform steps per interval
    x = sv.sample_ode(refined, model_fn, jax.random.key(0), (4, 2), method="heun", x_init=x_T, cond=cond)
    np.testing.assert_allclose(xs[-1], x, rtol=1e-5, atol=1e-5)
    unconditional = jnp.full((4,), sv.NULL_CLASS)
    xs_null, _ = fitting.teacher_trajectory(state, model_fn, x_T, times, teacher_substeps=2, cond=unconditional)
    assert float(jnp.max(jnp.abs(xs_null[-1] - xs[-1]))) > 1e-2
    grid = sv.fit_grid(state, model_fn, jax.random.key(0), (4, 2), method="ddim", nfe=3, fine_points=5,
                       teacher_substeps=1, cond=cond)
    assert grid.shape == (3,)
