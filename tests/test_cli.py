"""Tests of the ``sdevp-jax`` console script (sdevp_jax.cli), run in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from sdevp_jax import cli

TINY = ["--steps", "20", "--num-samples", "50", "--no-progress"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_sample(out: Path, *extra: str) -> int:
    return cli.main(["sample", *TINY, "--out", str(out), *extra])


def load(out: Path) -> np.ndarray:
    with np.load(out / "samples.npz") as data:
        assert list(data.keys()) == ["samples"]
        return data["samples"]


@pytest.fixture(scope="module")
def base_out(tmp_path_factory) -> Path:
    """One run with batch size 16 (chunks 16, 16, 16 and a padded 2), seed 0."""
    out = tmp_path_factory.mktemp("base") / "nested" / "out"  # created by the CLI
    assert run_sample(out, "--batch-size", "16", "--seed", "0") == 0
    return out


def test_writes_samples_plot_and_job_files(base_out):
    samples = load(base_out)
    assert samples.shape == (50, 2)
    assert samples.dtype == np.float32
    assert np.all(np.isfinite(samples))
    assert (base_out / "samples.png").read_bytes().startswith(PNG_SIGNATURE)
    # The job's files, and no temporary files left behind.
    assert sorted(p.name for p in base_out.iterdir()) == ["chunks", "manifest.json", "samples.npz", "samples.png"]
    assert sorted(p.name for p in (base_out / "chunks").iterdir()) == sorted(
        f"chunk_00000{i}.{kind}" for i in range(4) for kind in ("json", "npy"))


def test_png_shows_the_target_and_the_mode_weights(base_out):
    """Two panels side by side (scatter over contours, mode weights), not a blank image."""
    import matplotlib.image

    image = matplotlib.image.imread(base_out / "samples.png")
    height, width = image.shape[:2]
    assert width > 1.5 * height  # two panels
    assert np.ptp(image[..., :3]) > 0.5  # something is drawn


def test_figure_has_contours_weights_and_an_uncut_title():
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    import sdevp_jax as sv
    from sdevp_jax import jobs

    spec = jobs.JobSpec(num_samples=400, batch_size=400, seed=0, steps=10, event_shape=(4,))
    samples = np.asarray(sv.mixtures.sample_mixture(sv.mixtures.default_mixture(4), jax_key(0), 400))
    fig = cli.make_figure(samples, spec)
    try:
        fig.canvas.draw()
        scatter_ax, weights_ax = fig.axes[:2]
        assert any(isinstance(c, LineCollection) or type(c).__name__ == "QuadContourSet"
                   for c in [*scatter_ax.collections, *scatter_ax.get_children()])  # the density's contours
        assert len(weights_ax.patches) == 2 * 5  # exact and sampled bar per mode
        figure_box = fig.bbox
        for text in [fig._suptitle, *(ax.title for ax in fig.axes[:2])]:
            box = text.get_window_extent()
            assert text.get_text() and figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, text.get_text()
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_mode_weights_of_exact_samples_are_within_their_standard_error():
    """Exact mixture samples: each sampled fraction within 4 binomial SE of its weight.

    SE = sqrt(w (1 - w) / n) with n = 4000 (0.0075 for w = 0.35); the five
    fractions all within 4 SE fails with probability < 5 x 6.3e-5 (two-sided
    normal tail at 4). The modes are 7 standard deviations apart, so assignment
    errors (~1e-11) do not matter.
    """
    import sdevp_jax as sv

    mixture = sv.mixtures.default_mixture(3)
    n = 4000
    p, se = cli.mode_weights(np.asarray(sv.mixtures.sample_mixture(mixture, jax_key(1), n)), mixture)
    w = np.asarray(mixture.weights)
    np.testing.assert_allclose(se, np.sqrt(p * (1 - p) / n))
    assert np.all(np.abs(p - w) <= 4 * np.sqrt(w * (1 - w) / n)), (p, w)
    assert p.sum() == 1.0 or abs(p.sum() - 1.0) < 1e-12
    # A mode that is never sampled shows as weight 0 (what the picture must reveal).
    nearest = np.asarray(sv.mixtures.assign_modes(mixture, sv.mixtures.sample_mixture(mixture, jax_key(1), n)))
    p_missing, _ = cli.mode_weights(np.asarray(sv.mixtures.sample_mixture(mixture, jax_key(1), n))[nearest != 0], mixture)
    assert p_missing[0] == 0.0


def jax_key(seed):
    import jax

    return jax.random.key(seed)


def test_summary_line(tmp_path, capsys):
    assert run_sample(tmp_path, "--batch-size", "64") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "samples.npz" in out[0] and "samples.png" in out[0] and "50 samples" in out[0]


def test_another_batch_size_gives_the_same_samples_to_rounding(base_out, tmp_path):
    """Same noise per sample; XLA rounds a batch of 16 and of 64 differently, so not bitwise.

    tests/test_invariance.py derives the bound for 200 steps (about 1e-5 on samples of
    size 1); these 20 steps amplify less, and 1e-5 still fails for any other noise.
    """
    assert run_sample(tmp_path, "--batch-size", "64", "--seed", "0") == 0
    np.testing.assert_allclose(load(tmp_path), load(base_out), rtol=0, atol=1e-5)


def test_seed_changes_samples(base_out, tmp_path):
    assert run_sample(tmp_path, "--batch-size", "16", "--seed", "1") == 0
    assert not np.array_equal(load(tmp_path), load(base_out))


@pytest.mark.parametrize("existing", ["samples.npz", "samples.png"])
def test_refuses_to_overwrite_without_force(tmp_path, capsys, existing):
    precious = tmp_path / existing
    precious.write_bytes(b"user data, not ours")
    assert run_sample(tmp_path) == 2
    err = capsys.readouterr().err
    assert "--force" in err and existing in err
    assert precious.read_bytes() == b"user data, not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # nothing computed or written


def test_rerun_of_a_finished_job_recomputes_nothing(tmp_path):
    assert run_sample(tmp_path, "--seed", "3") == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*.np*")}
    assert run_sample(tmp_path, "--seed", "3") == 0
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*.np*")} == before


def test_a_different_job_is_refused_not_mixed(tmp_path, capsys):
    assert run_sample(tmp_path, "--seed", "3") == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_sample(tmp_path, "--seed", "4", "--force") == 2
    err = capsys.readouterr().err
    assert "different job" in err and "seed: 3 there, 4 now" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_force_overwrites_files_that_are_not_a_jobs(tmp_path):
    (tmp_path / "samples.npz").write_bytes(b"old")
    assert run_sample(tmp_path, "--force") == 0
    assert load(tmp_path).shape == (50, 2)


@pytest.mark.parametrize("method", ["reverse_diffusion", "ancestral", "euler", "heun", "dpm_solver", "adaptive"])
def test_every_registered_method_runs(tmp_path, method):
    steps = "25" if method in ("reverse_diffusion", "ancestral") else "6"
    assert cli.main(["sample", "--method", method, "--steps", steps, "--num-samples", "8", "--batch-size", "8",
                     "--no-plot", "--no-progress", "--out", str(tmp_path)]) == 0
    assert np.all(np.isfinite(load(tmp_path)))
    assert not (tmp_path / "samples.png").exists()


def test_corrector_and_config_and_shape(tmp_path):
    import sdevp_jax as sv

    config = sv.save_config(sv.create_state(beta_max=10.0), tmp_path / "scheduler_config.json")
    out = tmp_path / "job"
    assert cli.main(["sample", "--corrector", "langevin", "--snr", "0.1", "--steps", "25", "--num-samples", "6",
                     "--shape", "2,2,2", "--config", str(config), "--no-progress", "--out", str(out)]) == 0
    assert load(out).shape == (6, 2, 2, 2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["scheduler"]["beta_max"] == 10.0 and manifest["config"]["corrector"] == "langevin"
    assert manifest["complete"] and manifest["finished_chunks"] == [0]
    assert set(manifest["versions"]) == {"sdevp_jax", "jax", "jaxlib"}


def test_user_model_by_module_and_function(tmp_path, monkeypatch):
    (tmp_path / "my_eps_model.py").write_text("def eps(x, t):\n    return 0.5 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "job"
    assert cli.main(["sample", "--model", "my_eps_model:eps", "--shape", "3", "--steps", "10", "--num-samples", "4",
                     "--no-progress", "--out", str(out)]) == 0
    assert load(out).shape == (4, 3)
    assert cli.main(["sample", "--model", "my_eps_model:nope", "--out", str(tmp_path / "x")]) == 2


def test_info_prints_backend_devices_and_versions(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend cpu" in out and "jax " in out and "device 0" in out


def test_info_lists_every_method_with_its_kind(capsys):
    import sdevp_jax as sv

    assert cli.main(["info"]) == 0
    lines = {line.split()[1]: line.split()[2] for line in capsys.readouterr().out.splitlines()
             if line.startswith("method ")}
    assert lines == {name: m.kind for name, m in sv.METHODS.items()}
    assert lines["sde_dpm_solver_pp"] == "sde_solver" and lines["unipc"] == "ode"


# Each new solver with options other than its defaults: (argv, the options the manifest records).
SOLVER_RUNS = [
    (["--method", "ddim", "--eta", "1", "--thresholding", "--sample-max-value", "3"],
     {"eta": 1.0, "final_sigmas_type": "zero", "thresholding": True, "dynamic_thresholding_ratio": 0.995,
      "sample_max_value": 3.0}),
    (["--method", "dpm_solver_pp", "--order", "3", "--solver-type", "heun", "--third-order", "diffusers",
      "--final-sigmas-type", "last"],
     {"order": 3, "solver_type": "heun", "lower_order_final": True, "euler_at_final": False,
      "final_sigmas_type": "last", "third_order": "diffusers", "thresholding": False}),
    (["--method", "unipc", "--order", "3", "--solver-type", "bh1", "--no-lower-order-final"],
     {"order": 3, "solver_type": "bh1", "lower_order_final": False, "final_sigmas_type": "zero",
      "thresholding": False, "predict_x0": True}),
    (["--method", "unipc", "--no-predict-x0"],
     {"order": 2, "solver_type": "bh2", "lower_order_final": True, "final_sigmas_type": "zero",
      "thresholding": False, "predict_x0": False}),
    (["--method", "adaptive", "--rtol", "1e-4"], {"rtol": 1e-4, "atol": 1e-5, "max_steps": 4096}),
    (["--method", "dpm_solver_pp_2s", "--r", "0.25"],
     {"r": 0.25, "final_sigmas_type": "zero", "thresholding": False}),
    (["--method", "sde_dpm_solver_pp", "--order", "3", "--thresholding", "--dynamic-thresholding-ratio", "0.9",
      "--eta", "0.5", "--s-noise", "0.8", "--third-order", "k-diffusion"],
     {"order": 3, "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "eta": 0.5,
      "s_noise": 0.8, "third_order": "k-diffusion", "final_sigmas_type": "zero", "thresholding": True,
      "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.0}),
    (["--method", "dpm_solver_singlestep", "--order", "3", "--algorithm-type", "dpmsolver", "--final-sigmas-type",
      "last"],
     {"order": 3, "solver_type": "midpoint", "algorithm_type": "dpmsolver", "lower_order_final": True,
      "final_sigmas_type": "last", "thresholding": False}),
    (["--method", "dpm_solver", "--lower-order-final"], {"order": 3, "lower_order_final": True}),
    (["--method", "deis", "--order", "3", "--final-sigmas-type", "last"],
     {"order": 3, "lower_order_final": True, "final_sigmas_type": "last", "thresholding": False}),
    (["--method", "restart", "--restarts", "[[3, 2, 0.06, 0.3]]", "--s-noise", "1.003", "--restart-gamma", "0.05",
      "--churn-range", "[0.01, 1]"],
     {"restarts": [[3, 2, 0.06, 0.3]], "s_noise": 1.003, "restart_gamma": 0.05, "churn_range": [0.01, 1.0],
      "final_sigmas_type": "zero"}),
    (["--method", "er_sde", "--order", "2", "--noise-scale", "sde", "--quadrature", "riemann", "--variance-floor",
      "1e-6"],
     {"order": 2, "noise_scale": "sde", "quadrature": "riemann", "first_derivative": "authors",
      "variance_floor": 1e-6, "final_sigmas_type": "zero", "thresholding": False}),
    (["--method", "sde_dpm_solver_singlestep", "--order", "3", "--solver-type", "heun", "--third-order", "diffusers"],
     {"order": 3, "solver_type": "heun", "algorithm_type": "dpmsolver++", "lower_order_final": True,
      "third_order": "diffusers", "final_sigmas_type": "zero", "thresholding": False}),
    (["--method", "sa_solver", "--predictor-order", "3", "--corrector-order", "4", "--tau", "0.5", "--tau-t-min",
      "0.1", "--second-order", "diffusers"],
     {"predictor_order": 3, "corrector_order": 4, "algorithm_type": "data_prediction", "tau": 0.5, "tau_t_min": 0.1,
      "tau_t_max": 0.8, "second_order": "diffusers", "lower_order_final": True, "final_sigmas_type": "zero",
      "thresholding": False}),
    (["--method", "lms", "--order", "3"], {"order": 3, "final_sigmas_type": "zero", "thresholding": False}),
    (["--method", "pndm", "--warmup", "improved_euler"],
     {"warmup": "improved_euler", "final_sigmas_type": "zero", "thresholding": False}),
    (["--method", "heun_sigma", "--final-sigmas-type", "last"], {"final_sigmas_type": "last", "thresholding": False}),
    (["--method", "kdpm2", "--final-sigmas-type", "last"], {"final_sigmas_type": "last", "thresholding": False}),
    (["--method", "kdpm2_ancestral", "--thresholding"],
     {"final_sigmas_type": "zero", "thresholding": True, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}),
    (["--method", "euler_ancestral", "--final-sigmas-type", "last"],
     {"final_sigmas_type": "last", "thresholding": False}),
]


@pytest.mark.parametrize("argv, recorded", SOLVER_RUNS, ids=[run[0][1] for run in SOLVER_RUNS])
def test_new_solvers_run_with_their_options_recorded(tmp_path, capsys, argv, recorded):
    base = ["sample", "--steps", "6", "--num-samples", "4", "--batch-size", "4", "--no-plot", "--no-progress",
            "--no-cache", "--out", str(tmp_path)]
    assert cli.main(base + argv) == 0
    assert np.all(np.isfinite(load(tmp_path)))
    config = json.loads((tmp_path / "manifest.json").read_text())["config"]
    from sdevp_jax.jobs import SOLVER_FIELDS

    assert {k: config[k] for k in SOLVER_FIELDS if k in config} == recorded
    summary = capsys.readouterr().out
    assert f"samples, {argv[1]}, " in summary  # with the options other than the method's defaults:
    assert "--order" not in argv or f", order {recorded['order']}" in summary
    assert ("thresholding True" in summary) == ("--thresholding" in argv)
    assert cli.main(base + argv[:2]) == 2  # the method's defaults are another job
    assert "different job" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--method", "euler_maruyama", "--order", "2"], "--order"),
    (["--method", "heun", "--eta", "0.5"], "--eta"),
    (["--method", "ddim", "--order", "1"], "--order"),
    (["--method", "ddim", "--no-lower-order-final"], "--[no-]lower-order-final"),
    (["--method", "adaptive", "--final-sigmas-type", "last"], "--final-sigmas-type"),
    (["--method", "unipc", "--third-order", "taylor"], "--third-order"),
    (["--method", "euler", "--thresholding"], "--thresholding"),
])
def test_options_that_do_not_apply_to_the_method_are_errors(argv, flag, tmp_path, capsys):
    assert cli.main(["sample", *argv, "--out", str(tmp_path / "job")]) == 2
    err = capsys.readouterr().err
    assert f"{flag} applies to --method " in err and f"not to {argv[1]}" in err
    assert not (tmp_path / "job").exists()
    assert cli.main(["sample", "--method", "ddim", "--sample-max-value", "2", "--out", str(tmp_path / "job")]) == 2
    assert "--sample-max-value needs --thresholding" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--steps", "0"],
        ["sample", "--num-samples", "-1"],
        ["sample", "--batch-size", "0"],
        ["sample", "--seed", "-1"],
        ["sample", "--seed", str(2**32)],
        ["sample", "--steps", "abc"],
        ["sample", "--method", "rk4"],
        ["sample", "--snr", "0"],
        ["sample", "--shape", "0,3"],
        ["sample", "--shape", "a"],
        ["sample", "--config", "/nonexistent/scheduler_config.json"],
        ["sample", "--model", "nocolon"],
        ["sample", "--method", "heun", "--corrector", "langevin"],
        ["sample", "--method", "sde_dpm_solver_pp", "--corrector", "langevin"],
        ["sample", "--method", "dpm_solver", "--solver-type", "heun"],
        ["sample", "--method", "unipc", "--order", "4"],
        ["sample", "--method", "dpm_solver_pp", "--solver-type", "bh1"],
        ["sample", "--method", "ddim", "--eta", "-1"],
        ["sample", "--method", "dpm_solver_pp", "--final-sigmas-type", "first"],
        ["sample", "--method", "dpm_solver_pp", "--third-order", "diffusers"],  # order 2: it would change nothing
        ["sample", "--method", "unipc", "--thresholding", "--dynamic-thresholding-ratio", "1.5"],
        ["sample", "--num-processes", "2"],
        ["sample", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
        ["sample", "--class", "-1"],
        ["sample", "--class", "3"],  # the embedded model's classes are 0..2
        ["sample", "--guidance-scale", "2"],  # without --class
        ["sample", "--class", "0", "--guidance-scale", "-1"],
        ["sample", "--class", "0", "--guidance-interval", "0.1", "0.5"],  # without --guidance-scale
        ["sample", "--class", "0", "--guidance-scale", "2", "--guidance-interval", "0.5", "0.2"],
        ["sample", "--class", "0", "--guidance-scale", "2", "--guidance-interval", "0", "1.5"],
        ["sample", "--class", "0", "--guidance-scale", "2", "--guidance-interval", "0.5"],
        ["sample", "--class", "0", "--guidance-scale", "2", "--guidance-rescale", "1.5"],
        ["sample", "--bogus"],
        ["nope"],
        [],
    ],
)
def test_bad_arguments_return_2(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out must not be created either
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip()
    assert list(tmp_path.iterdir()) == []


def test_help_returns_0(capsys):
    assert cli.main(["sample", "--help"]) == 0
    assert "--num-samples" in capsys.readouterr().out


def test_console_script_declared():
    (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "sdevp-jax"]
    assert entry.load() is cli.main


@pytest.mark.slow
def test_module_runs_as_script():
    proc = subprocess.run(
        [sys.executable, "-m", "sdevp_jax.cli", "sample", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--steps" in proc.stdout


def test_step_rule_reaches_the_job_and_its_identity(tmp_path):
    """--step-rule is recorded in the manifest with a corrector, and a changed rule refuses to resume."""
    import json

    base = ["sample", "--corrector", "langevin", "--steps", "25", "--num-samples", "4", "--batch-size", "4",
            "--no-plot", "--no-progress", "--no-cache", "--out", str(tmp_path)]
    assert cli.main(base + ["--step-rule", "snr_batch"]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["step_rule"] == "snr_batch"
    assert cli.main(base) != 0  # the default rule ("sigma") is another job


# Stable Diffusion v1.x's scheduler_config.json (PNDMScheduler: scaled_linear 0.00085..0.012, epsilon,
# leading spacing, steps_offset 1), as diffusers' documented fields write it.
SD_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}


def test_stable_diffusion_config_end_to_end(tmp_path):
    """--config with an SD file: the job samples the state sv.load_config gives, on the file's grid.

    The CLI's samples equal the library's (same state, model, key and per-sample noise) to float32
    rounding: the two programs are compiled separately, so not bitwise; 1e-5 on O(1) values is a few
    hundred ulps over 25 steps.
    """
    import jax

    import sdevp_jax as sv

    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD_CONFIG))
    out = tmp_path / "job"
    assert cli.main(["sample", "--config", str(tmp_path), "--method", "ancestral", "--steps", "25",
                     "--num-samples", "6", "--batch-size", "6", "--no-plot", "--no-progress", "--no-cache",
                     "--out", str(out)]) == 0
    recorded = json.loads((out / "manifest.json").read_text())["config"]
    assert recorded["scheduler"]["_class_name"] == "PNDMScheduler" and recorded["schedule"]["kind"] == "discrete"
    assert (recorded["prediction_type"], recorded["spacing"]) == ("epsilon", "leading")
    state = sv.set_timesteps(sv.load_config(tmp_path), 25)
    # the file's grid: PNDM's leading labels with steps_offset 1 (label n at t = (n + 1)/1000), then label 0, where
    # PNDM's last step goes with set_alpha_to_one = false
    np.testing.assert_allclose(np.asarray(sv.model_time(state, state.timesteps)),
                               np.append(state.diffusers_config.label_spacing(25), 0), rtol=0, atol=1e-3)
    model = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2))
    expected = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames="predictor")(
        state, model, jax.random.key(0), (6, 2), predictor="ancestral")
    np.testing.assert_allclose(load(out), np.asarray(expected), rtol=0, atol=1e-5)
    # a second run with the cosine schedule is another job: refused in the same directory
    assert cli.main(["sample", "--schedule", "cosine", "--method", "ancestral", "--steps", "25", "--num-samples", "6",
                     "--batch-size", "6", "--no-plot", "--no-progress", "--no-cache", "--out", str(out)]) == 2


def test_cosine_schedule_and_prediction_type_options(tmp_path, capsys):
    out = tmp_path / "job"
    assert cli.main(["sample", "--schedule", "cosine", "--cosine-s", "0.01", "--prediction-type", "v_prediction",
                     "--spacing", "karras", "--method", "heun", "--steps", "6", "--num-samples", "4",
                     "--batch-size", "4", "--no-progress", "--no-cache", "--out", str(out)]) == 0  # with the plot
    assert (out / "samples.png").exists() and np.all(np.isfinite(load(out)))
    recorded = json.loads((out / "manifest.json").read_text())["config"]
    assert recorded["schedule"] == {"kind": "cosine", "s": 0.01}
    assert (recorded["prediction_type"], recorded["spacing"]) == ("v_prediction", "karras")
    assert cli.main(["info", "--schedule", "cosine", "--prediction-type", "sample"]) == 0
    assert "schedule cosine (s=0.008; sampling_eps 0.001), prediction_type sample, spacing logsnr" in \
        capsys.readouterr().out


def test_info_prints_a_config_files_schedule(tmp_path, capsys):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD_CONFIG))
    assert cli.main(["info", "--config", str(tmp_path)]) == 0
    assert ("schedule discrete (scaled_linear 0.00085..0.012, 1000 steps; PNDMScheduler, steps_offset 1), "
            "prediction_type epsilon, spacing leading") in capsys.readouterr().out
    assert cli.main(["info"]) == 0
    assert "schedule linear (beta_min=0.1, beta_max=20; sampling_eps 0.001), prediction_type epsilon, spacing reference" \
        in capsys.readouterr().out


@pytest.mark.parametrize("extra, match", [
    (["--schedule", "cosine"], "--schedule cosine contradicts --config"),
    (["--schedule", "linear"], "--schedule linear contradicts --config"),
    (["--prediction-type", "v_prediction"], "--prediction-type v_prediction contradicts --config"),
    (["--spacing", "reference"], "linear schedule only"),
    (["--cosine-s", "0.1"], "--cosine-s needs --schedule cosine"),
])
def test_contradictory_model_options_are_errors(extra, match, tmp_path, capsys):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD_CONFIG))
    for command in (["sample", "--out", str(tmp_path / "job")], ["info"]):
        assert cli.main([*command, "--config", str(tmp_path), *extra]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "job").exists()
    with_sde_vp = tmp_path / "sde_vp.json"
    with_sde_vp.write_text(json.dumps({"_class_name": "ScoreSdeVpScheduler"}))
    assert cli.main(["sample", "--config", str(with_sde_vp), "--schedule", "cosine", "--out", str(tmp_path / "j")]) == 2
    assert "--schedule cosine contradicts --config" in capsys.readouterr().err


# --------------------------------------------------------------------------- class and guidance


@pytest.mark.parametrize("extra, message", [
    (["--class", "3"], "--class must be one of the embedded model's classes 0..2, got 3"),
    (["--guidance-scale", "2"], "--guidance-scale needs --class K"),
    (["--class", "1", "--guidance-rescale", "0.5"], "--guidance-rescale needs --guidance-scale"),
    (["--class", "1", "--guidance-interval", "0.1", "0.5"], "--guidance-interval needs --guidance-scale"),
    (["--class", "1", "--guidance-scale", "2", "--guidance-interval", "0.5", "0.2"],
     "--guidance-interval LO HI must satisfy 0 <= LO < HI <= 1 (continuous times), got 0.5 0.2"),
    (["--class", "1", "--guidance-scale", "2", "--guidance-interval", "-0.1", "0.5"], "0 <= LO < HI <= 1"),
    (["--class", "1", "--guidance-scale", "-2"], "--guidance-scale: must be a finite number >= 0"),
])
def test_condition_errors_name_the_flag(extra, message, tmp_path, capsys):
    assert cli.main(["sample", *extra, "--out", str(tmp_path / "job")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


@pytest.mark.slow
def test_class_and_guidance_run_record_and_show_the_class(tmp_path, capsys):
    """--class 2 is mode 4 alone (prior 0.08): every sample lands there, with and without guidance.

    p(x | 2) puts all its mass in mode 4, 7 standard deviations from the others (assignment errors
    ~1e-11), and guidance at w = 3 only sharpens it; were the class lost, the unconditional model would
    put each of the 40 samples elsewhere with probability 0.92 (all 40 in mode 4: 0.08^40).
    """
    import sdevp_jax as sv

    out = tmp_path / "job"
    argv = ["sample", "--class", "2", "--guidance-scale", "3", "--guidance-interval", "0.1", "0.9",
            "--method", "dpm_solver_pp", "--steps", "10", "--num-samples", "40", "--batch-size", "40",
            "--no-progress", "--no-cache", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "samples, dpm_solver_pp, class 2, guidance 3 in [0.1, 0.9], 10 steps" in capsys.readouterr().out
    samples = load(out)
    assert np.all(np.asarray(sv.mixtures.assign_modes(sv.mixtures.default_mixture(2), samples)) == 4)
    recorded = json.loads((out / "manifest.json").read_text())["config"]
    assert {k: recorded[k] for k in ("class_label", "guidance_scale", "guidance_interval", "guidance_rescale")} == {
        "class_label": 2, "guidance_scale": 3.0, "guidance_interval": [0.1, 0.9], "guidance_rescale": 0.0}
    assert (out / "samples.png").read_bytes().startswith(PNG_SIGNATURE)
    for change in (["--guidance-scale", "2"], ["--class", "1"]):  # another condition is another job
        assert cli.main(argv + change) == 2
        assert "different job" in capsys.readouterr().err
    without = [a for a in argv if a not in ("--guidance-scale", "3", "--guidance-interval", "0.1", "0.9")]
    assert cli.main(without[:-1] + [str(tmp_path / "unguided")]) == 0
    assert np.all(np.asarray(sv.mixtures.assign_modes(sv.mixtures.default_mixture(2), load(tmp_path / "unguided"))) == 4)
    assert "class 2, 10 steps" in capsys.readouterr().out


@pytest.mark.slow
def test_figure_of_a_class_shows_its_density_and_weights():
    """The bars are p(k | c) = p(k) / p(c) on the class's modes, 0 elsewhere; the titles name the class."""
    import matplotlib.pyplot as plt

    import sdevp_jax as sv
    from sdevp_jax import jobs

    spec = jobs.JobSpec(num_samples=100, batch_size=100, seed=0, steps=10, class_label=1, guidance_scale=2.0,
                        guidance_rescale=0.5)
    cm = sv.mixtures.default_class_mixture(2)
    samples = np.asarray(sv.mixtures.sample_class_mixture(cm, jax_key(0), np.ones(100, np.int32)))
    fig = cli.make_figure(samples, spec)
    try:
        weights_ax = fig.axes[1]
        w = np.asarray(cm.mixture.weights, np.float64)
        member = np.asarray(cm.classes) == 1
        expected = np.where(member, w, 0.0) / w[member].sum()
        np.testing.assert_allclose([p.get_height() for p in weights_ax.patches[:5]], expected, rtol=1e-12)
        assert "class 1, guidance 2, rescale 0.5" in fig._suptitle.get_text()
        assert "p(x | class 1)" in fig.axes[0].get_title()
    finally:
        plt.close(fig)


def test_info_lists_the_embedded_models_classes(capsys):
    import sdevp_jax as sv

    assert cli.main(["info"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("classes of the embedded model")]
    cm = sv.mixtures.default_class_mixture(2)
    for c in range(cm.num_classes):
        modes = np.flatnonzero(np.asarray(cm.classes) == c)
        prior = float(np.asarray(cm.mixture.weights, np.float64)[modes].sum())
        assert f"{c} = mode{'s' if len(modes) > 1 else ''} {', '.join(map(str, modes))} (prior {prior:.2g})" in line


def test_a_users_model_with_a_class_takes_the_condition(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_class_model.py").write_text(
        "def eps(x, t, cond):\n    return 0.5 * x + 0.1 * cond[:, None].astype(x.dtype)\n"
        "def plain(x, t):\n    return 0.5 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["sample", "--shape", "3", "--steps", "5", "--num-samples", "4", "--method", "heun", "--no-progress",
            "--no-cache", "--class", "7", "--guidance-scale", "2"]  # any class >= 0 for a user's model
    assert cli.main([*base, "--model", "my_class_model:eps", "--out", str(tmp_path / "job")]) == 0
    assert load(tmp_path / "job").shape == (4, 3)
    assert cli.main([*base, "--model", "my_class_model:plain", "--out", str(tmp_path / "plain")]) == 2
    assert "takes no condition" in capsys.readouterr().err
    assert not (tmp_path / "plain").exists()
