"""Fitted time grids in the ``sdevp-jax`` console script and in jobs: ``fit-grid``, ``sample --grid``,
``JobSpec(timesteps=...)`` and ``sv.jobs.with_saved_grid``. The CLI runs in-process (``cli.main``)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jax
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import cli, jobs

ROOT = Path(__file__).resolve().parent.parent

#: A grid that no spacing gives (so that a sample on it shows the grid reached the sampler).
TIMES = (1.0, 0.6, 0.25, 0.05, 0.001)
QUIET = ["--no-progress", "--no-plot", "--no-cache"]


def save(path: Path, times=TIMES, *, method="dpm_solver_pp", options=None, model="default", shape=(2,),
         **condition) -> Path:
    """A grid file as ``fit-grid`` writes it (its metadata included), for the job of these options."""
    spec = jobs.JobSpec(num_samples=1, batch_size=1, seed=0, steps=len(times), method=method, event_shape=shape,
                        **(options or {}), **condition)
    return sv.fitting.save_grid(path, np.asarray(times), state=jobs.job_state(spec), method=method,
                                options=options, model=model, metadata=jobs.grid_metadata(spec))


def load(out: Path) -> np.ndarray:
    with np.load(out / "samples.npz") as data:
        return data["samples"]


def files(directory: Path) -> dict:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_help_lists_fit_grid_and_sample_lists_grid(capsys):
    assert cli.main(["--help"]) == 0
    assert "fit-grid" in capsys.readouterr().out
    assert cli.main(["fit-grid", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--method", "--nfe", "--algorithm", "--batch-size", "--seed", "--iterations", "--fine-points",
                 "--model-id", "--out", "--force", "--order", "--config", "--class"):
        assert flag in text, flag
    assert "--spacing" not in text  # the grid is what it fits
    assert cli.main(["sample", "--help"]) == 0
    assert "--grid FILE" in capsys.readouterr().out


def test_sample_on_a_saved_grid_equals_sample_ode_on_the_loaded_grid(tmp_path, capsys):
    """``sample --grid`` runs set_timesteps(timesteps=the file's times) with the file's solver: the samples are
    sample_ode's on the loaded grid to float32 rounding (the job's chunk program and sample_ode are compiled
    apart: a few ulps per step of O(1) values over 4 steps; 1e-5 is ample), and O(0.01) away from the log-SNR
    grid of as many times (>= 1e-3 asserted: the grid reached the sampler)."""
    path = save(tmp_path / "grid.json")
    out = tmp_path / "run"
    assert cli.main(["sample", "--method", "dpm_solver_pp", "--grid", str(path), "--num-samples", "8",
                     "--batch-size", "4", "--seed", "3", "--out", str(out), *QUIET]) == 0
    assert "5 steps of --grid" in capsys.readouterr().out
    got = load(out)
    saved = sv.fitting.load_grid(path)
    state = sv.create_state()
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2))
    expected = sv.sample_ode(sv.set_timesteps(state, timesteps=saved.timesteps), model_fn, jax.random.key(3), (8, 2),
                             method=saved.method, **saved.options)
    np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-5)
    other = sv.sample_ode(sv.set_timesteps(state, 5, spacing="logsnr"), model_fn, jax.random.key(3), (8, 2),
                          method="dpm_solver_pp")
    assert np.max(np.abs(got - np.asarray(other))) >= 1e-3
    config = json.loads((out / jobs.MANIFEST).read_text())["config"]
    assert config["timesteps"] == list(TIMES) and config["spacing"] == "custom" and config["steps"] == 5


@pytest.mark.slow
def test_fit_grid_then_sample_end_to_end(tmp_path, capsys):
    """``fit-grid`` writes what ``sv.fit_grid`` returns for the same model, key and options, with what it was
    fitted for; ``sample --grid`` on it draws sample_ode's samples on the loaded grid (to float32 rounding, as
    above); ``--force`` fits again and writes the same times."""
    path = tmp_path / "grids" / "ddim-3.json"  # the parent is created
    fit = ["fit-grid", "--method", "ddim", "--nfe", "3", "--fine-points", "6", "--teacher-substeps", "1",
           "--batch-size", "8", "--seed", "1", "--out", str(path)]
    assert cli.main(fit) == 0
    assert f"wrote {path}: 3 times for ddim at NFE 3 (dp on 8 x_T" in capsys.readouterr().out
    saved = sv.fitting.load_grid(path, state=sv.create_state(), model="default")
    assert (saved.method, saved.options, saved.nfe) == ("ddim", {}, 3)
    assert saved.extra["event_shape"] == [2] and saved.extra["condition"] == {}
    assert saved.extra["fit"]["algorithm"] == "dp" and saved.extra["fit"]["batch_size"] == 8
    state = sv.create_state()
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2))
    direct = sv.fit_grid(state, model_fn, jax.random.key(1), (8, 2), method="ddim", nfe=3, fine_points=6,
                         teacher_substeps=1)
    np.testing.assert_array_equal(saved.timesteps, direct)  # the dp grid: points of the fine grid, chosen alike
    fine = np.asarray(sv.grids.continuous_grid(state, 6, "karras"), np.float64)
    assert np.isin(saved.timesteps, fine).all()

    out = tmp_path / "run"
    assert cli.main(["sample", "--method", "ddim", "--grid", str(path), "--num-samples", "6", "--batch-size", "6",
                     "--seed", "2", "--out", str(out), *QUIET]) == 0
    expected = sv.sample_ode(sv.set_timesteps(state, timesteps=saved.timesteps), model_fn, jax.random.key(2), (6, 2),
                             method="ddim", **saved.options)
    np.testing.assert_allclose(load(out), np.asarray(expected), rtol=0, atol=1e-5)

    assert cli.main(fit + ["--force"]) == 0
    np.testing.assert_array_equal(sv.fitting.load_grid(path).timesteps, saved.timesteps)


@pytest.mark.slow
def test_the_pages_commands_run(tmp_path, monkeypatch, capsys):
    """Every ``sdevp-jax`` line of the fitted-grids page's shell blocks runs as written (in-process)."""
    page = (ROOT / "docs" / "guides" / "fitted-grids.md").read_text()
    lines = [line for block in re.findall(r"^```bash\n(.*?)^```", page, re.S | re.M)
             for line in block.splitlines() if line.startswith("sdevp-jax ")]
    assert [line.split()[1] for line in lines] == ["fit-grid", "sample"]
    monkeypatch.chdir(tmp_path)
    for line in lines:
        assert cli.main(shlex.split(line)[1:] + ["--no-progress"] * (line.split()[1] == "sample")) == 0, line
    assert load(tmp_path / "run").shape == (256, 2)
    assert "wrote grid.json" in capsys.readouterr().out


def test_fit_grid_refuses_to_overwrite_without_force(tmp_path, capsys):
    precious = tmp_path / "grid.json"
    precious.write_bytes(b"user data, not a grid")
    assert cli.main(["fit-grid", "--method", "ddim", "--nfe", "3", "--out", str(precious)]) == 2
    err = capsys.readouterr().err
    assert f"--out {precious} exists; pass --force to overwrite it" in err
    assert precious.read_bytes() == b"user data, not a grid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json"]


@pytest.mark.parametrize("extra, message", [
    (["--iterations", "5"], "--iterations applies to --algorithm gradient, not dp"),
    (["--free-end"], "--free-end applies to --algorithm gradient, not dp"),
    (["--algorithm", "dp", "--learning-rate", "0.1"], "--learning-rate applies to --algorithm gradient"),
    (["--method", "heun", "--nfe", "3"], "--nfe 3: no grid of >= 2 points gives method 'heun'"),
    (["--fine-points", "4"], "--fine-points must be >= the grid's 5 times (--nfe 5), got 4"),
    (["--order", "2"], "--order applies to --method"),
    (["--class", "7"], "--class must be one of the embedded model's classes"),
    (["--shape", "1"], "--shape 1: the default model needs at least 2 entries"),
    (["--method", "euler_maruyama"], "invalid choice: 'euler_maruyama'"),
    (["--method", "adaptive"], "invalid choice: 'adaptive'"),
    (["--spacing", "logsnr"], "unrecognized arguments: --spacing"),
])
def test_fit_grid_bad_arguments_name_the_flag_and_write_nothing(extra, message, tmp_path, capsys):
    argv = ["fit-grid", "--method", "ddim", "--nfe", "5", "--out", str(tmp_path / "g" / "grid.json")]
    assert cli.main(argv + extra) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["--method", "ipndm"], "method 'dpm_solver_pp' in the file, 'ipndm' here"),
    (["--order", "3"], "order 'default' in the file, 3 here"),
    (["--final-sigmas-type", "last"], "final_sigmas_type 'default' in the file, 'last' here"),
    (["--schedule", "cosine"], "schedule class 'LinearSchedule' in the file, 'CosineSchedule' here"),
    (["--prediction-type", "v_prediction"], "schedule prediction_type 'epsilon' in the file, 'v_prediction' here"),
    (["--model-id", "my-net"], "model 'default' in the file, 'my-net' here"),
    (["--shape", "3"], "event_shape [2] in the file, [3] here"),
    (["--class", "1"], "condition {} in the file, {'class_label': 1} here"),
    (["--spacing", "logsnr"], "--spacing logsnr and --grid exclude each other"),
    (["--steps", "7"], "--steps 7 contradicts --grid"),
])
def test_a_grid_fitted_for_another_job_is_refused_by_name(extra, message, tmp_path, capsys):
    path = save(tmp_path / "grid.json")
    out = tmp_path / "run"
    argv = ["sample", "--method", "dpm_solver_pp", "--grid", str(path), "--num-samples", "4", "--out", str(out),
            *QUIET]
    if "--method" in extra:
        argv[1:3] = []
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdevp-jax: error: --") and message in err, err
    assert not out.exists()


def test_a_grid_file_that_cannot_be_read_is_an_error_naming_grid(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["sample", "--method", "ddim", "--num-samples", "4", "--out", str(out), *QUIET]
    assert cli.main(base + ["--grid", str(tmp_path / "missing.json")]) == 2
    assert "--grid " in (err := capsys.readouterr().err) and "cannot read it" in err
    for text in ("{not json", json.dumps({"format": "something else"}), json.dumps({"format": sv.fitting.FORMAT,
                                                                                    "version": 1})):
        (tmp_path / "bad.json").write_text(text)
        assert cli.main(base + ["--grid", str(tmp_path / "bad.json")]) == 2
        assert "--grid " in (err := capsys.readouterr().err) and "not a grid file" in err, err
    assert cli.main(base + ["--model-id", "x"]) == 2
    assert "--model-id names the model that a --grid was fitted for; it needs --grid" in capsys.readouterr().err
    assert not out.exists()


def test_a_grid_fitted_for_a_class_and_guidance_runs_only_with_them(tmp_path, capsys):
    guided = {"class_label": 1, "guidance_scale": 2.0}
    path = save(tmp_path / "grid.json", method="ddim", **guided)
    base = ["sample", "--method", "ddim", "--grid", str(path), "--num-samples", "2", *QUIET]
    assert cli.main(base + ["--class", "1", "--out", str(tmp_path / "unguided")]) == 2
    assert ("condition {'class_label': 1, 'guidance_scale': 2.0, 'guidance_interval': None, 'guidance_rescale': 0.0} "
            "in the file, {'class_label': 1} here") in capsys.readouterr().err
    assert cli.main(base + ["--class", "1", "--guidance-scale", "2", "--out", str(tmp_path / "guided")]) == 0
    assert load(tmp_path / "guided").shape == (2, 2)


def test_resuming_a_job_with_another_grid_is_refused(tmp_path, capsys):
    """The manifest records the times: the same command with another grid file (or none) is another job and is
    refused with nothing in the directory changed; with the same file it recomputes nothing."""
    first, second = save(tmp_path / "a.json"), save(tmp_path / "b.json", times=(1.0, 0.5, 0.25, 0.05, 0.001))
    out = tmp_path / "run"
    base = ["sample", "--method", "dpm_solver_pp", "--num-samples", "6", "--batch-size", "2", "--out", str(out),
            *QUIET]
    assert cli.main(base + ["--grid", str(first)]) == 0
    # as a killed run leaves it: the last chunk and samples.npz missing, the manifest not complete
    manifest = json.loads((out / jobs.MANIFEST).read_text())
    (out / "chunks" / "chunk_000002.npy").unlink()
    (out / "samples.npz").unlink()
    (out / jobs.MANIFEST).write_text(json.dumps(manifest | {"complete": False, "finished_chunks": [0, 1]}))
    before = files(out)
    capsys.readouterr()
    assert cli.main(base + ["--grid", str(second)]) == 2
    err = capsys.readouterr().err
    assert "holds a different job (timesteps: [1.0, 0.6, 0.25, 0.05, 0.001] there, [1.0, 0.5, 0.25, 0.05, 0.001] now)" \
        in err, err
    assert cli.main(base + ["--spacing", "logsnr", "--steps", "5"]) == 2
    assert "spacing: 'custom' there, 'logsnr' now" in capsys.readouterr().err
    assert files(out) == before
    assert cli.main(base + ["--grid", str(first)]) == 0  # the same grid resumes: chunk 2 and samples.npz
    assert load(out).shape == (6, 2)
    assert all(files(out)[p] == data for p, data in before.items() if p.suffix == ".npy")


def test_job_spec_with_timesteps_is_checked_recorded_and_round_trips(tmp_path):
    common = dict(num_samples=4, batch_size=2, seed=0, method="dpm_solver_pp")
    spec = jobs.JobSpec(**common, steps=5, timesteps=np.asarray(TIMES))
    assert spec.timesteps == TIMES and all(type(t) is float for t in spec.timesteps) and spec.spacing == "custom"
    assert spec.to_json()["timesteps"] == list(TIMES)
    assert jobs.JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    np.testing.assert_array_equal(np.asarray(jobs.job_state(spec).timesteps), np.asarray(TIMES, np.float32))
    # a job on a spacing's grid records no timesteps: its identity (and its manifest) are what they were
    assert "timesteps" not in jobs.JobSpec(**common, steps=5).to_json()
    for kwargs, message in [
        ({"steps": 4, "timesteps": TIMES}, "steps must equal len(timesteps) = 5, got 4"),
        ({"steps": 5, "timesteps": TIMES, "spacing": "logsnr"}, "spacing='logsnr' contradicts them"),
        ({"steps": 5, "timesteps": (1.0, 0.6, 0.6, 0.05, 0.001)}, "timesteps must be strictly decreasing"),
        ({"steps": 2, "timesteps": (1.5, 0.5)}, "timesteps must lie in"),
        ({"steps": 2, "timesteps": ("a", "b")}, "timesteps must be an array of real numbers"),
    ]:
        with pytest.raises((ValueError, TypeError), match=re.escape(message)):
            jobs.JobSpec(**common, **kwargs)
    with pytest.raises(ValueError, match="spacing must be one of"):
        jobs.JobSpec(**common, steps=5, spacing="custom")  # "custom" is a job with timesteps


def test_with_saved_grid_checks_the_file_against_the_job(tmp_path):
    path = save(tmp_path / "grid.json", options={"order": 3})
    spec = jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=10, method="dpm_solver_pp", order=3)
    on_grid = jobs.with_saved_grid(spec, path)
    assert (on_grid.steps, on_grid.spacing, on_grid.timesteps, on_grid.order) == (5, "custom", TIMES, 3)
    assert jobs.with_saved_grid(spec, sv.fitting.load_grid(path)) == on_grid  # a SavedGrid read once
    with pytest.raises(ValueError, match=r"order 3 in the file, 'default' here$"):
        jobs.with_saved_grid(jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=10, method="dpm_solver_pp"),
                             path)
    # a file of the Python API without the CLI's metadata: the shape and class are the user's to name
    bare = sv.fitting.save_grid(tmp_path / "bare.json", np.asarray(TIMES), state=sv.create_state(),
                                method="dpm_solver_pp", options={"order": 3}, model="my-net@1234")
    assert jobs.with_saved_grid(jobs.JobSpec(**{**dict(num_samples=4, batch_size=2, seed=0, steps=10,
                                                       method="dpm_solver_pp", order=3, event_shape=(7,))}),
                                bare, model="my-net@1234").timesteps == TIMES
