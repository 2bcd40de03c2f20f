"""Smoke tests of the benchmark scripts (tiny sizes; the real runs are not tests)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def accuracy():
    return load("accuracy_vs_nfe")


def test_sliced_w2_of_a_shift_is_the_projected_shift(accuracy):
    """Shifting a sample by v moves every projection by d.v, so SW2 = sqrt(mean_d (d.v)^2) exactly."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 3))
    directions = rng.standard_normal((50, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    v = np.array([0.3, -0.2, 0.5])
    assert accuracy.sliced_w2(x, x[::-1].copy(), directions) == 0.0
    np.testing.assert_allclose(accuracy.sliced_w2(x + v, x, directions), np.sqrt(np.mean((directions @ v) ** 2)),
                               rtol=1e-12)


@pytest.mark.slow
def test_accuracy_benchmark_smoke(accuracy, tmp_path, capsys):
    args = ["--quick", "--num-samples", "200", "--dims", "2", "--directions", "16", "--floor-repeats", "2", "--replicates", "2",
            "--out", str(tmp_path)]
    assert accuracy.main(args) == 0
    results = json.loads((tmp_path / "accuracy_vs_nfe.json").read_text())
    rows = results["dims"]["2"]["rows"]
    assert {r["method"] for r in rows} == {"euler_maruyama", "pc, step_rule=sigma", "dpm_solver (ODE)", "adaptive (ODE)"}
    assert all(np.isfinite(r["sw2"]) and r["nfe"] >= 1 for r in rows)
    # the ODE rows carry their error to the tight ODE solution from the same x_T; the SDE rows do not
    assert all(np.isfinite(r["ode_err"]) == (r["method"].endswith("(ODE)")) for r in rows)
    assert 0 < min(r["ode_err"] for r in rows if r["method"] == "dpm_solver (ODE)") < 1
    assert (tmp_path / "accuracy_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method |" in (tmp_path / "accuracy_vs_nfe.md").read_text()
    # never overwrite silently
    before = (tmp_path / "accuracy_vs_nfe.json").read_bytes()
    assert accuracy.main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "accuracy_vs_nfe.json").read_bytes() == before


@pytest.mark.slow
def test_speed_worker_and_runner_smoke(tmp_path, monkeypatch):
    """The speed runner at a tiny size: every JAX implementation times, the table has ratios.

    The runner's UNet pair (the unet_sv and unet_model workers, each in its own process) is held here to
    what test_speed_workers_time_every_implementation holds the other workers to: the row names its
    implementation, a positive per-step median, one time per repeat. Timing them again in-process there
    compiled the UNet inside sv.sample a second time (13 s of the file's 120 s, measured).
    """
    speed = load("speed")
    launched = []
    real_launch = speed.launch

    def recording_launch(argv, python, script):
        row = real_launch(argv, python, script)
        launched.append((argv, row))
        return row

    monkeypatch.setattr(speed, "launch", recording_launch)
    args = ["run", "--shapes", "4,2@5", "--impls", "noise", "sv", "diffusers", "--repeats", "2", "--rounds", "1",
            "--scaling-steps", "5", "--scaling-shape", "4,2", "--unet-shape", "2,3,8,8@2", "--out", str(tmp_path)]
    assert speed.main(args) == 0
    unet_rows = {argv[argv.index("--impl") + 1]: row for argv, row in launched
                 if "--impl" in argv and argv[argv.index("--impl") + 1].startswith("unet")}
    assert sorted(unet_rows) == ["unet_model", "unet_sv"], [argv for argv, _ in launched]
    for impl, row in unet_rows.items():
        assert row is not None, impl  # the worker's process exited 0 and printed its JSON line
        assert row["impl"] == impl and row["shape"] == [2, 3, 8, 8] and row["steps"] == 2, row
        assert row["per_step_median_us"] > 0 and len(row["times_s"]) == 2, row
    results = json.loads((tmp_path / "speed.json").read_text())
    impls = {r["impl"] for r in results["rows"]}
    assert {"noise", "sv", "diffusers"} <= impls
    for r in results["rows"]:
        if "missing" not in r:
            assert r["per_step_min_us"] <= r["per_step_median_us"] <= r["per_step_max_us"]
    assert [r["steps"] for r in results["scaling"]] == [5]
    table = (tmp_path / "speed.md").read_text()
    assert "÷ sv.sample" in table and "not measured yet" in table
    sv_row = next(r for r in results["rows"] if r["impl"] == "sv")
    assert sv_row["rounds"] == 1 and len(sv_row["times_s"]) == 2 and sv_row["ratio_to_sv"] == 1.0
    assert len(results["unet"]) == 1 and all(u["model_us"] > 0 for u in results["unet"])
    assert "scheduler's share" in table
    assert speed.main(args) == 2  # never overwrite without --force


# The workers the runner smoke above does not launch (its --impls are noise, sv and diffusers); the UNet
# workers, unet_sv and unet_model, are launched and checked there (on CPU at unroll 1, the backend's default).
@pytest.mark.parametrize("impl", ["naive", "diffrax"])
def test_speed_workers_time_every_implementation(impl):
    speed = load("speed")
    args = speed.main.__globals__["argparse"].Namespace(
        impl=impl, shape="4,2", steps=3, repeats=1, model="gaussian", dtype="float32", prng="threefry", unroll=1)
    row = speed.worker(args)
    assert row["impl"] == impl and row["per_step_median_us"] > 0 and len(row["times_s"]) == 1


@pytest.mark.slow
def test_gpu_suite_tiny_dry_run(tmp_path):
    """The GPU suite's CPU dry run: every row runs (or fails) in its own process; the files hold the results.

    Every row has the same keys (the suite's ROW_KEYS), whatever its implementation and outcome.
    With torch/diffusers the diffusers row is timed like the others (its device_kind is torch's
    device name); without them it must be an error row, not an abort.
    """
    suite = load("gpu_suite")
    assert suite.main(["--tiny", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_suite.json", "gpu_suite.log", "gpu_suite.md"]
    results = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert results["finished"] and results["tiny"]
    rows = {r["id"]: r for r in results["rows"]}
    assert list(rows) == [r["id"] for r in suite.rows_for(tiny=True)]
    for rid, r in rows.items():
        assert list(r) == list(suite.ROW_KEYS), rid
        if r["impl"] == "diffusers" and r["status"] != "ok":
            assert r["status"].startswith("error") and r["error_tail"]  # torch/diffusers absent here
            assert r["per_step_median_us"] is None and r["device_kind"] is None
            continue
        assert r["status"] == "ok", (rid, r["status"])
        assert r["error_tail"] is None
        assert len(r["times_s"]) == 2 and r["per_step_min_us"] <= r["per_step_median_us"] <= r["per_step_max_us"]
        assert r["device_kind"] and r["platform"] == "cpu" and r["first_call_s"] >= 0
        if r["impl"] == "diffusers":  # torch's worker: its version, no JAX, no separate compile
            assert r["torch"] and r["jax"] is None and r["compile_s"] is None and r["threads"] >= 1
        else:
            assert r["jax"] and r["torch"] is None
        if r["impl"] in ("sv", "dpm_solver"):
            assert r["compile_s"] > 0
    assert rows["unroll4_small"]["unroll"] == 4 and rows["bf16_target"]["dtype"] == "bfloat16"
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "## Targets" in table and table.count("| ok |") == sum(r["status"] == "ok" for r in rows.values())
    assert "not measured yet" in table  # the UNet share (and, without diffusers, its ratio) is not measured here
    log = (tmp_path / "gpu_suite.log").read_text()
    assert log.count("\n[") == len(rows) and "wrote" in log


def test_gpu_suite_rows_have_one_schema():
    """A torch worker's line, a JAX worker's line, an error and a skip all become rows with ROW_KEYS;
    a worker key outside the schema is refused (run_row records that as the row's error)."""
    suite = load("gpu_suite")
    spec = suite.rows_for(tiny=True)[1]
    torch_line = {"impl": "diffusers", "shape": [4, 8], "steps": 5, "model": "gaussian", "device": "cuda",
                  "device_name": "Some GPU", "torch": "2.13.0", "threads": 2, "first_call_s": 0.5,
                  "times_s": [0.1, 0.2], "per_step_median_us": 30.0, "per_step_min_us": 20.0,
                  "per_step_max_us": 40.0}
    row = suite.record(spec, "ok", 1.0, torch_line)
    assert list(row) == list(suite.ROW_KEYS)
    assert (row["device_kind"], row["platform"], row["jax"], row["shape"]) == ("Some GPU", "gpu", None, spec["shape"])
    for other in (suite.record(spec, "error: exit 1: x", 1.0, error_tail="x"), suite.record(spec, "skipped: budget")):
        assert list(other) == list(suite.ROW_KEYS) and other["device_kind"] is None
    with pytest.raises(ValueError, match="not in ROW_KEYS"):
        suite.record(spec, "ok", 1.0, dict(torch_line, new_measurement=1))


def test_gpu_suite_budget_skips_rows_and_targets_read_the_rows(tmp_path):
    suite = load("gpu_suite")
    assert suite.main(["--tiny", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    results = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert {r["status"] for r in results["rows"]} == {"skipped: budget"}
    assert all(v["met"] is None for v in suite.verdicts(results))

    def timed(rid, impl, us):
        return {"id": rid, "impl": impl, "status": "ok", "per_step_median_us": us}

    rows = [timed("sv_target", "sv", 2.0), timed("diffusers_target", "diffusers", 150.0),
            timed("sv_small", "sv", 6.5), timed("unet_sv", "unet_sv", 1000.0), timed("unet_model", "unet_model", 995.0)]
    speedup, small, share = suite.verdicts({"rows": rows})
    assert (speedup["value"], speedup["met"]) == (75.0, True)
    assert (small["value"], small["met"]) == (6.5, False)
    assert share["value"] == pytest.approx(0.005) and share["met"]


@pytest.mark.slow
def test_accuracy_frontier_smoke_without_diffusers(accuracy, tmp_path):
    """--frontier at a tiny size, sv's side only: counted NFE, both end points, the verdicts say 'not measured'."""
    args = ["--frontier", "--quick", "--num-samples", "64", "--dims", "2", "--directions", "8", "--floor-repeats", "2",
            "--reference-sets", "1", "--replicates", "2", "--nfes", "5", "--em-steps", "20", "--out", str(tmp_path)]
    assert accuracy.main(args) == 0
    results = json.loads((tmp_path / "accuracy_vs_nfe_frontier.json").read_text())
    d = results["dims"]["2"]
    assert {r["method"] for r in d["rows"]} == set(accuracy.QUICK_SV_ROWS)
    assert all(r["nfe"] == 5 and r["side"] == "sv" for r in d["rows"])
    assert {r["end"] for r in d["rows"]} == {"zero", "label0"}
    # every row has its error to the float64 tight solution; a 5-step solver is off it, but not wildly
    assert all(0 < r["ode_err"] < 2 and np.isfinite(r["sw2"]) for r in d["rows"])
    assert d["euler_maruyama"]["nfe"] == 20 and d["euler_maruyama"]["end"] == "zero"
    assert "diffusers: not measured" in (tmp_path / "accuracy_vs_nfe_frontier.md").read_text()
    assert (tmp_path / "accuracy_vs_nfe_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_labels_match_diffusers_spacings(accuracy):
    """The label grids: DPM-Solver's linspace (n labels from 999, no 0), DDIM's leading, and linspace then 0."""
    for n in (5, 8, 10, 15, 20, 25):
        lin, lead, zero = accuracy.labels_linspace(n), accuracy.labels_leading(n), accuracy.labels_to_zero(n)
        assert len(lin) == len(lead) == n and len(zero) == n + 1
        assert lin[0] == 999 and lin[-1] > 0 and np.all(np.diff(lin) < 0)
        assert lead[-1] == 0 and np.all(np.diff(lead) == -(1000 // n))
        np.testing.assert_array_equal(zero[:-1], lin)
        assert zero[-1] == 0


@pytest.mark.slow
def test_method_table_smoke(tmp_path, capsys):
    """Every registered sampler's row at a tiny size: the budget's exact call count, finite distances, the ODE error
    only for the deterministic methods; never overwriting without --force."""
    table = load("method_table")
    args = ["--num-samples", "64", "--dim", "2", "--budgets", "6", "--directions", "8", "--reference-sets", "1",
            "--floor-repeats", "2", "--replicates", "2", "--out", str(tmp_path),
            "--only", "euler_maruyama", "ddim", "heun", "sde_dpm_solver_pp"]
    assert table.main(args) == 0
    rows = json.loads((tmp_path / "method_table.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["euler_maruyama", "ddim", "heun", "sde_dpm_solver_pp"]
    assert all(r["nfe"] <= 6 and np.isfinite(r["sw2"]) for r in rows)
    assert [r["N"] for r in rows] == [6, 7, 4, 7]  # euler_maruyama N calls, grid solvers N - 1, heun 2 (N - 1)
    assert [np.isfinite(r["ode_err"]) for r in rows] == [False, True, True, False]
    assert set(table.methods()) >= {"dpm_solver", "unipc", "deis", "ipndm"} and "langevin" not in table.methods()
    before = (tmp_path / "method_table.json").read_bytes()
    assert table.main(args) == 2 and "--force" in capsys.readouterr().err
    assert (tmp_path / "method_table.json").read_bytes() == before


@pytest.mark.slow
def test_fitted_grids_benchmark_smoke(tmp_path):
    """benchmarks/fitted_grids.py at a tiny size: every grid row for each NFE, finite metrics, the tables."""
    fitted = load("fitted_grids")
    args = ["--dims", "2", "--solvers", "ddim", "--nfes", "4", "--fit-batch", "16", "--eval-batch", "50",
            "--eval-sets", "1", "--iterations", "2", "--directions", "8", "--no-memory", "--out", str(tmp_path)]
    assert fitted.main(args) == 0
    results = json.loads((tmp_path / "fitted_grids.json").read_text())
    names = [r["grid"] for r in results["rows"]]
    assert names == ["dp", "gradient", "gradient, free end", "logsnr", "karras", "time_quadratic", "ays"]
    assert all(np.isfinite(r["rms"]).all() and np.isfinite(r["sw2"]).all() for r in results["rows"])
    assert "| gradient, free end |" in (tmp_path / "fitted_grids.md").read_text()
    assert fitted.main(args) == 1  # refuses to overwrite without --force


def test_fitted_grids_linear_vp_betas_reproduce_the_schedule():
    """The diffusers side's betas for the digits network: alphas_cumprod[k] = alpha(t)^2 of sv's linear VP
    schedule at t = (k + 1)/1000 (float32 schedule against a float64 table: relative 1e-5)."""
    fitted = load("fitted_grids")
    import jax.numpy as jnp

    import sdevp_jax as sv

    acp = np.cumprod(1.0 - fitted.linear_vp_betas(0.1, 20.0))
    labels = np.array([0, 1, 250, 500, 998, 999])
    alpha, _ = sv.create_state().schedule.alpha_sigma(jnp.asarray((labels + 1) / 1000.0, jnp.float32))
    np.testing.assert_allclose(acp[labels], np.asarray(alpha, np.float64) ** 2, rtol=1e-5)


def test_fitted_grids_target_takes_the_best_fixed_grid_of_either_library():
    """The target's ratio divides the best fitted RMS by the least of both libraries' fixed grids."""
    fitted = load("fitted_grids")

    def row(library, grid, rms, method="dpm_solver_pp"):
        extra = {"lower_order_final": True, "final_sigmas_type": "zero"} if library == "diffusers" else {}
        return {"library": library, "part": "2-D", "method": method, "nfe": 5, "grid": grid, "rms": rms, **extra}

    rows = [row("sdevp-jax", "gradient", [0.10, 0.12]), row("sdevp-jax", "dp", [0.3, 0.3]),
            row("sdevp-jax", "logsnr", [0.30, 0.32]), row("diffusers", "karras", [0.24, 0.26], "UniPC bh2 order 2")]
    (t,) = fitted.target_table({"rows": rows})
    assert (t["fitted"], t["sv_fixed"], t["diffusers"]) == ("gradient", "logsnr", "UniPC bh2 order 2, karras")
    assert t["ratio"] == pytest.approx(0.11 / 0.25) and t["half"]
    (t,) = fitted.target_table({"rows": rows[:3]})  # without diffusers' rows: sdevp-jax's best fixed grid only
    assert not t["diffusers_measured"] and t["ratio"] == pytest.approx(0.11 / 0.31) and t["half"]
    rows[3]["rms"] = [0.2, 0.2]
    (t,) = fitted.target_table({"rows": rows})
    assert t["ratio"] == pytest.approx(0.55) and not t["half"]


@pytest.mark.slow
def test_fitted_grids_benchmark_digits_smoke(tmp_path):
    """--model digits at a tiny size: the network trained here, a fitted and a fixed grid's rows (the mixture's smoke
    test runs every grid), the timed fits in their process."""
    fitted = load("fitted_grids")
    args = ["--model", "digits", "--digits-train-steps", "20", "--solvers", "ddim", "--nfes", "4", "--fit-batch", "16",
            "--grids", "dp", "logsnr",
            "--eval-sets", "2", "--iterations", "2", "--directions", "8", "--em-steps", "0", "--probe-repeats", "1",
            "--probe-algorithms", "dp", "--no-memory", "--out", str(tmp_path)]
    import jax

    with jax.numpy_dtype_promotion("standard"):  # optax mixes its int step count with floats
        assert fitted.main(args) == 0
    results = json.loads((tmp_path / "fitted_grids.json").read_text())
    assert [r["grid"] for r in results["rows"]] == ["dp", "logsnr"]  # a fitted and a fixed grid: each kind of row
    assert all(np.isfinite(r["rms"]).all() and np.isfinite(r["sw2"]).all() for r in results["rows"])
    assert [p["algorithm"] for p in results["fit_probe"]] == ["dp"]
    assert all(len(p["seconds"]) == 1 and p["maxrss_kib_after_fits"] >= p["maxrss_kib_before_fit"] > 0
               for p in results["fit_probe"])
    text = (tmp_path / "fitted_grids.md").read_text()
    assert "| digits | ddim | 4 |" in text and "not measured" in text and "Fitting time and memory" in text
