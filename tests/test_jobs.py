"""Resumable jobs (kill -9 and resume), multi-process and multi-device sampling."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import jobs

CLI = [sys.executable, "-m", "sdevp_jax.cli", "sample", "--no-progress", "--no-plot"]


def load(out: Path) -> np.ndarray:
    with np.load(out / "samples.npz") as data:
        return data["samples"]


def test_job_spec_validation():
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        jobs.JobSpec(num_samples=4, batch_size=0, seed=0, steps=10)
    with pytest.raises(ValueError, match="method must be one of"):
        jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=10, method="rk4")
    with pytest.raises(ValueError, match="a corrector needs a predictor"):
        jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=10, method="euler", corrector="langevin")
    with pytest.raises(ValueError, match="seed must be an int in"):
        jobs.JobSpec(num_samples=4, batch_size=2, seed=-1, steps=10)
    with pytest.raises(ValueError, match="beta_min must be > 0"):
        jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=10,
                     scheduler={"num_train_timesteps": 2000, "beta_min": 0.0, "beta_max": 20.0, "sampling_eps": 1e-3})
    spec = jobs.JobSpec(num_samples=5, batch_size=2, seed=0, steps=10, event_shape=(3, 2))
    assert jobs.JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.num_chunks == 3


def test_chunks_and_batch_size_do_not_change_the_samples(tmp_path):
    """Other batch sizes compile other programs: equal to 1e-5, not bitwise (tests/test_invariance.py)."""
    a = jobs.JobSpec(num_samples=10, batch_size=3, seed=5, steps=15)
    b = jobs.JobSpec(num_samples=10, batch_size=10, seed=5, steps=15)
    np.testing.assert_allclose(np.load(jobs.run_job(a, tmp_path / "a"))["samples"],
                               np.load(jobs.run_job(b, tmp_path / "b"))["samples"], rtol=0, atol=1e-5)


def test_other_versions_are_refused(tmp_path, monkeypatch):
    spec = jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=5)
    jobs.run_job(spec, tmp_path)
    monkeypatch.setattr(jobs, "versions", lambda: {"sdevp_jax": "9", "jax": "9", "jaxlib": "9"})
    with pytest.raises(jobs.JobMismatchError, match="started with"):
        jobs.run_job(spec, tmp_path)


@pytest.mark.slow
def test_kill_9_then_resume_loses_nothing_and_recomputes_nothing(tmp_path):
    """A real SIGKILL mid-job; the rerun keeps every chunk already written and ends bitwise equal."""
    args = ["--num-samples", "3000", "--batch-size", "50", "--steps", "400", "--seed", "7"]
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    proc = subprocess.Popen([*CLI, *args, "--out", str(crashed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks = crashed / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if chunks.exists() and len(list(chunks.glob("chunk_*.npy"))) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be killed: make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in chunks.glob("chunk_*.npy")}
    assert 4 <= len(survivors) < 60 and not (crashed / "samples.npz").exists()

    rerun = subprocess.run([*CLI, *args, "--out", str(crashed)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    # nothing that was written was recomputed or rewritten
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in survivors} == survivors
    assert len(list(chunks.glob("chunk_*.npy"))) == 60
    assert not list(crashed.rglob("*.tmp"))  # the killed write's temporary, if any, is cleaned up
    done = subprocess.run([*CLI, *args, "--out", str(clean)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(load(crashed), load(clean))
    assert json.loads((crashed / "manifest.json").read_text())["complete"] is True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """Two processes on 127.0.0.1 (jax.distributed, CPU) write one job; it equals the single-process run."""
    args = ["--num-samples", "90", "--batch-size", "16", "--steps", "30", "--seed", "2", "--method", "dpm_solver"]
    coordinator = f"127.0.0.1:{free_port()}"
    both = tmp_path / "both"
    procs = [subprocess.Popen([*CLI, *args, "--out", str(both), "--coordinator", coordinator,
                               "--num-processes", "2", "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    single = tmp_path / "single"
    assert subprocess.run([*CLI, *args, "--out", str(single)], capture_output=True, timeout=240).returncode == 0
    np.testing.assert_array_equal(load(both), load(single))
    assert len(list((both / "chunks").glob("chunk_*.npy"))) == 6  # chunks 0,2,4 by process 0; 1,3,5 by process 1


SHARDED = textwrap.dedent("""
    import os, re, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    import sdevp_jax as sv
    assert len(jax.devices()) == 8
    state = sv.set_timesteps(sv.create_state(), 30)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
    sharding = sv.distributed.batch_sharding()
    out = {}
    cases = {"sample": (sv.sample, {}), "sample_pc": (sv.sample, {"corrector": "langevin"}),
             "dpm_solver": (sv.sample_ode, {"method": "dpm_solver"}), "adaptive": (sv.sample_ode, {"method": "adaptive"})}
    for name, (fn, kw) in cases.items():
        f = lambda key: fn(state, model_fn, key, (64, 2), **kw)
        single = jax.jit(f)(jax.random.key(0))
        sharded_fn = jax.jit(f, out_shardings=sharding)
        sharded = sharded_fn(jax.random.key(0))
        hlo = sharded_fn.lower(jax.random.key(0)).compile().as_text()
        shards = {s.device.id: s.data.shape for s in sharded.addressable_shards}
        out[name] = {"equal": bool(np.array_equal(np.asarray(single), np.asarray(sharded))),
                     "max_diff": float(np.max(np.abs(np.asarray(single) - np.asarray(sharded)))),
                     "all_gather": len(re.findall("all-gather", hlo)), "shards": sorted(set(shards.values())),
                     "devices": len(shards)}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_sharded_sampling_equals_single_device_with_no_gather():
    """8 CPU devices (XLA_FLAGS): jit with out_shardings splits the batch; each device keeps its shard.

    Equal to 1e-5 for the predictors and the ODE solvers, not bitwise: each device
    compiles a program for its own 8-row shard, and XLA may sum and fuse a batch
    of 8 differently from one of 64, and one program partitioned over devices may
    round otherwise than the single-device program of a shard's size (tests/test_devices.py).
    Jobs do not use this pattern: each device takes whole single-device chunks. With the Langevin
    corrector, to 1e-4 (measured: 2.8e-5 at most, on samples of size ~1). The adaptive
    solver's while-loop needs an all-reduce of its stop flag, a scalar; no
    sampler gathers the batch.
    """
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, r in result.items():
        assert r["max_diff"] <= (1e-4 if name == "sample_pc" else 1e-5), (name, r)
        assert r["all_gather"] == 0, name
        assert r["devices"] == 8 and r["shards"] == [[8, 2]], name


def test_job_dtype_is_validated():
    for name in jobs.DTYPES:
        jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=10, dtype=name)
    with pytest.raises(ValueError, match="dtype must be one of"):
        jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=10, dtype="float8")


def test_snr_alone_without_a_corrector_does_not_refuse_the_job(tmp_path):
    """snr and corrector_steps change nothing without a corrector, so they are not part of the job's identity."""
    spec = jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=5)
    first = load_after(jobs.run_job(spec, tmp_path))
    again = jobs.run_job(jobs.JobSpec(num_samples=4, batch_size=2, seed=0, steps=5, snr=0.3, corrector_steps=3), tmp_path)
    np.testing.assert_array_equal(np.load(again)["samples"], first)
    # a manifest written before the normalisation (with snr in its config) still resumes
    manifest = json.loads((tmp_path / jobs.MANIFEST).read_text())
    manifest["config"] |= {"snr": 0.16, "corrector_steps": 1}
    (tmp_path / jobs.MANIFEST).write_text(json.dumps(manifest))
    assert jobs.check_manifest(spec, tmp_path) is not None
    # with a corrector, snr is part of the identity
    pc = dict(num_samples=4, batch_size=2, seed=0, steps=30, corrector="langevin")
    jobs.run_job(jobs.JobSpec(**pc), tmp_path / "pc")
    with pytest.raises(jobs.JobMismatchError, match="snr"):
        jobs.run_job(jobs.JobSpec(**pc, snr=0.3), tmp_path / "pc")


# A Stable-Diffusion-style DDIM config (scaled_linear 0.00085..0.012, epsilon, leading spacing, steps_offset 1).
SD_DDIM = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"}


def test_manifest_records_schedule_prediction_type_and_spacing_and_refuses_changes(tmp_path):
    """Defaults resolve to linear / epsilon / reference; another schedule, prediction type or grid is another job."""
    spec = jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4)
    jobs.run_job(spec, tmp_path)
    recorded = json.loads((tmp_path / jobs.MANIFEST).read_text())["config"]
    assert recorded["schedule"] == {"kind": "linear", "beta_min": 0.1, "beta_max": 20.0}
    assert (recorded["prediction_type"], recorded["spacing"]) == ("epsilon", "reference")
    assert jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4, spacing="reference",
                        prediction_type="epsilon", schedule={"kind": "linear"}) == spec  # the same job, spelled out
    for change, field in [({"schedule": {"kind": "cosine"}}, "schedule"), ({"prediction_type": "v_prediction"},
                          "prediction_type"), ({"spacing": "logsnr"}, "spacing")]:
        with pytest.raises(jobs.JobMismatchError, match=f"{field}: "):
            jobs.check_manifest(jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4, **change), tmp_path)
    # A manifest written before these fields existed meant linear / epsilon / reference: it still resumes.
    manifest = json.loads((tmp_path / jobs.MANIFEST).read_text())
    for key in ("schedule", "prediction_type", "spacing"):
        del manifest["config"][key]
    (tmp_path / jobs.MANIFEST).write_text(json.dumps(manifest))
    assert jobs.check_manifest(spec, tmp_path) is not None
    with pytest.raises(jobs.JobMismatchError, match="spacing: 'reference' there, 'time_uniform' now"):
        jobs.check_manifest(jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4, spacing="time_uniform"),
                            tmp_path)


def test_discrete_config_job_runs_records_and_refuses_changes(tmp_path):
    spec = jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4, method="ancestral", scheduler=SD_DDIM)
    assert np.all(np.isfinite(load_after(jobs.run_job(spec, tmp_path))))
    recorded = json.loads((tmp_path / jobs.MANIFEST).read_text())["config"]
    assert recorded["schedule"]["kind"] == "discrete" and recorded["schedule"]["beta_schedule"] == "scaled_linear"
    assert (recorded["spacing"], recorded["scheduler"]["steps_offset"]) == ("leading", 1)
    assert jobs.JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    # the grid of the file: DDIM's leading labels + steps_offset 1, then label 0, where DDIM with
    # set_alpha_to_one = false takes its last step (its final_alpha_cumprod)
    state = jobs.job_state(spec)
    np.testing.assert_array_equal(np.asarray(sv.model_time(state, state.timesteps)), [751, 501, 251, 1, 0])
    other = dict(SD_DDIM, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    with pytest.raises(jobs.JobMismatchError, match="schedule: "):
        jobs.check_manifest(jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4,
                                         scheduler=other), tmp_path)
    with pytest.raises(jobs.JobMismatchError, match="spacing: 'leading' there, 'trailing' now"):
        jobs.check_manifest(jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4,
                                         scheduler=SD_DDIM, spacing="trailing"), tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"scheduler": SD_DDIM, "schedule": {"kind": "cosine"}}, "contradicts the scheduler config"),
    ({"scheduler": SD_DDIM, "prediction_type": "sample"}, "prediction_type 'sample' contradicts"),
    ({"schedule": {"kind": "cosine"}, "spacing": "reference"}, "linear schedule only"),
    ({"scheduler": {"beta_max": 10.0}, "schedule": {"kind": "cosine"}}, "beta_max = 10.0 is the linear schedule's"),
    ({"schedule": {"kind": "linear", "beta_max": 10.0}}, "contradicts the scheduler config"),
    ({"schedule": {"kind": "discrete"}}, "discrete scheduler's config"),
    ({"schedule": "cosine"}, "schedule must be None or a dict"),
    ({"spacing": "leading"}, "needs a discrete schedule"),
    ({"prediction_type": "x0"}, "prediction_type must be one of"),
    ({"spacing": "uniform"}, "spacing must be one of"),
    ({"scheduler": SD_DDIM, "steps": 1001}, r"num_inference_steps must be in \[1, num_train_timesteps\]"),
])
def test_contradictory_model_fields_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jobs.JobSpec(**(dict(num_samples=2, batch_size=2, seed=0, steps=4) | kwargs))


def test_building_a_spec_does_not_start_jax():
    """A multi-process job builds its spec before jax.distributed.initialize: JobSpec stays on the host."""
    code = ("from jax._src import xla_bridge\n"
            "from sdevp_jax import jobs\n"
            f"jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4, scheduler={SD_DDIM!r}, spacing='trailing')\n"
            "jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4, schedule={'kind': 'cosine'}, spacing='karras')\n"
            "jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4, method='dpm_solver_pp', order=3, "
            "thresholding=True, sample_max_value=2.0)\n"  # the solver options are checked on the host too
            "jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=4, class_label=2, guidance_scale=2.0, "
            "guidance_interval=(0.1, 0.9))\n"  # and the condition (the default model's classes: DEFAULT_CLASSES)
            "jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=3, timesteps=(1.0, 0.5, 0.001))\n"  # a grid
            "assert not xla_bridge.backends_are_initialized()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_v_prediction_job_draws_the_epsilon_jobs_samples(tmp_path):
    """The embedded model of a v-prediction cosine job is converted back to eps at each step: same samples
    to float32 rounding (a few ulps per step over 6 steps of O(1) values: 1e-4 is ample)."""
    common = dict(num_samples=4, batch_size=4, seed=3, steps=6, method="heun", schedule={"kind": "cosine"})
    eps = load_after(jobs.run_job(jobs.JobSpec(**common), tmp_path / "eps"))
    v = load_after(jobs.run_job(jobs.JobSpec(**common, prediction_type="v_prediction"), tmp_path / "v"))
    np.testing.assert_allclose(v, eps, rtol=0, atol=1e-4)


def load_after(path):
    with np.load(path) as data:
        return data["samples"]


def test_manifest_updates_are_linear_in_the_chunk_count(tmp_path, monkeypatch):
    """Each chunk adds itself to the manifest; no rescan of every chunk file after each one.

    With C chunks a rescan per chunk stats C files each time (C^2 = 900 here);
    tracking finished chunks needs one scan (C stats) at the start.
    """
    calls = {"n": 0}
    real = jobs.chunk_path

    def counting(out, c):
        calls["n"] += 1
        return real(out, c)

    monkeypatch.setattr(jobs, "chunk_path", counting)
    spec = jobs.JobSpec(num_samples=30, batch_size=1, seed=0, steps=2)
    jobs.run_job(spec, tmp_path)
    # a verifying scan (C), a look for records a crash left without their chunk (C), a write per chunk
    # (C), a read per chunk to assemble (C) and one for the dtype: 4C + 1 = 121. A rescan per chunk
    # adds C(C+1)/2 = 465 more.
    assert calls["n"] <= 4 * spec.num_chunks + 1, calls["n"]
    manifest = json.loads((tmp_path / jobs.MANIFEST).read_text())
    assert manifest["finished_chunks"] == list(range(30)) and manifest["complete"]


def test_job_manifest_lists_chunks_as_they_finish(tmp_path, monkeypatch):
    seen = []
    real = jobs._write_manifest

    def spy(spec, out, finished, **kw):
        seen.append(sorted(finished))
        return real(spec, out, finished, **kw)

    monkeypatch.setattr(jobs, "_write_manifest", spy)
    jobs.run_job(jobs.JobSpec(num_samples=3, batch_size=1, seed=0, steps=2), tmp_path)
    assert seen == [[], [0], [0, 1], [0, 1, 2], [0, 1, 2]]


# ---------------------------------------------------------------- faults injected into the chunk writer

FAULT_SPEC = dict(num_samples=10, batch_size=2, seed=3, steps=15)  # 5 chunks of 2 samples


def chunk_files(out: Path) -> dict:
    """Each chunk file's identity (inode, mtime) and bytes."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted((out / "chunks").glob("chunk_*.npy"))}


def test_a_write_that_dies_half_way_loses_nothing_and_leaves_nothing(tmp_path, monkeypatch):
    """Chunk 2's writer writes half of its bytes and dies (as a full disk or a kill would stop it).

    The temporary it leaves (atomic_write removes its own on an exception; a
    killed process cannot, so we put its half-written bytes back under the same
    name) and a stale temporary of every kind a job writes are planted. The rerun
    keeps chunks 0 and 1 untouched (same inode, mtime and bytes), removes every
    temporary of ours (but not a user's file), writes the rest, and ends bitwise
    equal to an uninterrupted run. Writing chunks in place (not through a
    temporary and a rename) fails this: the half chunk would sit under its final
    name, be taken as finished and break the assembly.
    """
    spec = jobs.JobSpec(**FAULT_SPEC)
    clean = np.load(jobs.run_job(spec, tmp_path / "clean"))["samples"]
    out = tmp_path / "crashed"
    real_write = jobs.atomic_write
    left_behind = {}

    def dying_write(path, write, **kwargs):
        if Path(path).name != "chunk_000002.npy":
            return real_write(path, write, **kwargs)
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()

        def half(file):
            file.write(data[: len(data) // 2])
            file.flush()
            for tmp in (out / "chunks").glob(".chunk_*.tmp"):  # the writer's temporary, as a kill leaves it
                left_behind[tmp] = tmp.read_bytes()
            raise OSError("injected: the disk died half-way through chunk 2")

        return real_write(path, half, **kwargs)

    monkeypatch.setattr(jobs, "atomic_write", dying_write)
    with pytest.raises(OSError, match="injected"):
        jobs.run_job(spec, out)
    monkeypatch.setattr(jobs, "atomic_write", real_write)

    survivors = chunk_files(out)
    assert sorted(survivors) == ["chunk_000000.npy", "chunk_000001.npy"]  # no half chunk under a final name
    assert len(left_behind) == 1  # the injection did hit a temporary mid-write
    for name, (_, _, data) in survivors.items():
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), clean[2 * int(name[6:12]):][:2])
    assert not (out / "samples.npz").exists()
    for tmp, data in left_behind.items():  # a killed writer's temporary, still there
        tmp.write_bytes(data)
    planted = [out / "chunks" / ".chunk_000003.npy.stale123.tmp", out / ".manifest.json.stale456.tmp",
               out / ".samples.npz.stale789.tmp"]
    for path in planted:
        path.write_bytes(b"half a file")
    users = out / "chunks" / "notes.tmp"  # not a name atomic_write gives: not ours to delete
    users.write_text("keep me")

    resumed = np.load(jobs.run_job(spec, out))["samples"]
    assert {k: v for k, v in chunk_files(out).items() if k in survivors} == survivors
    assert len(chunk_files(out)) == 5
    assert not [p for p in out.rglob("*.tmp") if p != users] and users.read_text() == "keep me"
    np.testing.assert_array_equal(resumed, clean)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


# ---------------------------------------------------------------- every ODE and SDE grid solver, with its options

def test_every_ode_and_sde_solver_method_builds_a_job_with_its_options():
    """Each method gets exactly the options that apply to it, resolved to sample_ode's defaults, and round-trips."""
    methods = sv.list_methods("ode") + sv.list_methods("sde_solver")
    assert "sde_dpm_solver_pp" in methods and "unipc" in methods
    for method in methods:
        spec = jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=5, method=method)
        assert spec.solver_options() == jobs.solver_defaults(method)
        assert jobs.JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
        assert jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=5, method=method,
                            **jobs.solver_defaults(method)) == spec  # the same job, spelled out
    assert jobs.solver_defaults("dpm_solver_pp") == {
        "order": 2, "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False,
        "final_sigmas_type": "zero", "third_order": "taylor", "thresholding": False}
    assert jobs.solver_defaults("euler_maruyama") == {}
    assert jobs.solver_defaults("adaptive") == {"rtol": 1e-5, "atol": 1e-5, "max_steps": 4096}
    assert jobs.solver_defaults("unipc")["predict_x0"] is True


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "euler_maruyama", "order": 2}, "order applies to the methods"),
    ({"method": "heun", "eta": 1.0}, "eta applies to the methods \\['ddim', 'sde_dpm_solver_pp'\\] only; "
                                     "method='heun'"),
    ({"method": "ddim", "order": 2}, "order applies to the methods"),
    ({"method": "dpm_solver", "solver_type": "heun"}, "solver_type applies to the methods"),
    ({"method": "dpm_solver_pp", "eta": 0.5}, "eta applies to the methods"),
    ({"method": "unipc", "third_order": "diffusers"}, "third_order applies to the methods"),
    ({"method": "adaptive", "final_sigmas_type": "last"}, "final_sigmas_type applies to the methods"),
    ({"method": "ddim", "sample_max_value": 2.0}, "set thresholding=True"),
    ({"method": "unipc", "order": 4}, r"order must be in \[1, 3\] for method='unipc', got 4"),
    ({"method": "sde_dpm_solver_pp", "order": 4}, r"order must be in \[1, 3\]"),
    ({"method": "dpm_solver", "order": 0}, "order must be 1, 2 or 3"),
    ({"method": "dpm_solver_pp", "solver_type": "bh1"}, "solver_type must be one of \\['midpoint', 'heun'\\]"),
    ({"method": "ddim", "eta": -0.5}, "eta must be >= 0"),
    ({"method": "ddim", "final_sigmas_type": "first"}, "final_sigmas_type must be one of"),
    ({"method": "dpm_solver_pp", "third_order": "diffusers"}, "changes only order 3's steps"),
    ({"method": "unipc", "thresholding": True, "dynamic_thresholding_ratio": 1.5},
     r"dynamic_thresholding_ratio must be in \(0, 1\]"),
    ({"method": "sde_dpm_solver_pp", "corrector": "langevin"}, "a corrector needs a predictor method"),
])
def test_solver_options_that_do_not_apply_or_are_out_of_range_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jobs.JobSpec(**(dict(num_samples=2, batch_size=2, seed=0, steps=5) | kwargs))


def test_solver_options_are_recorded_and_another_option_is_another_job(tmp_path):
    """The manifest run_job writes first (its sampling is tested in test_cli.py's runs of these options)."""
    spec = jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=5, method="dpm_solver_pp", order=3,
                        solver_type="heun", thresholding=True, sample_max_value=3)
    jobs._write_manifest(spec, tmp_path, [], create=True)
    recorded = json.loads((tmp_path / jobs.MANIFEST).read_text())["config"]
    assert {k: recorded[k] for k in spec.solver_options()} == {
        "order": 3, "solver_type": "heun", "lower_order_final": True, "euler_at_final": False,
        "final_sigmas_type": "zero", "third_order": "taylor", "thresholding": True, "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 3.0}
    assert "eta" not in recorded  # ddim's alone
    base = dict(num_samples=2, batch_size=2, seed=0, steps=5, method="dpm_solver_pp", order=3, solver_type="heun",
                thresholding=True, sample_max_value=3.0)
    for change, field in [({"order": 2}, "order"), ({"solver_type": "midpoint"}, "solver_type"),
                          ({"lower_order_final": False}, "lower_order_final"),
                          ({"euler_at_final": True}, "euler_at_final"),
                          ({"final_sigmas_type": "last"}, "final_sigmas_type"),
                          ({"third_order": "diffusers"}, "third_order"),
                          ({"sample_max_value": 2.0}, "sample_max_value"),
                          ({"dynamic_thresholding_ratio": 0.9}, "dynamic_thresholding_ratio")]:
        with pytest.raises(jobs.JobMismatchError, match=f"{field}: "):
            jobs.check_manifest(jobs.JobSpec(**(base | change)), tmp_path)
    assert jobs.check_manifest(jobs.JobSpec(**base), tmp_path) is not None


def test_a_manifest_without_solver_options_meant_the_defaults(tmp_path):
    """Manifests written before the solver options existed (dpm_solver: always order 3) still resume."""
    spec = jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=5, method="dpm_solver")
    jobs._write_manifest(spec, tmp_path, [], create=True)  # as run_job writes it first
    manifest = json.loads((tmp_path / jobs.MANIFEST).read_text())
    assert manifest["config"]["order"] == 3
    del manifest["config"]["order"]
    (tmp_path / jobs.MANIFEST).write_text(json.dumps(manifest))
    assert jobs.check_manifest(spec, tmp_path) is not None
    with pytest.raises(jobs.JobMismatchError, match="order: 3 there, 2 now"):
        jobs.check_manifest(jobs.JobSpec(num_samples=2, batch_size=2, seed=0, steps=5, method="dpm_solver", order=2),
                            tmp_path)


class _Interrupt(Exception):
    pass


def _clean_and_resumed_after_first_chunk(spec, tmp_path):
    """``(clean, resumed)``: ``spec`` run straight through, and run again stopped after its first chunk of
    ``spec.batch_size`` samples (only that chunk on disk) then resumed; both loaded as samples. The resumed
    runs load the clean run's executable from a shared cache (as the CLI's resume does)."""
    cache = tmp_path / "cache"
    clean = load_after(jobs.run_job(spec, tmp_path / "clean", cache_dir=cache))

    def stop_after_first_chunk(done, total):
        if done == spec.batch_size:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        jobs.run_job(spec, tmp_path / "resumed", progress=stop_after_first_chunk, cache_dir=cache)
    assert [p.name for p in (tmp_path / "resumed" / "chunks").glob("chunk_*.npy")] == ["chunk_000000.npy"]
    return clean, load_after(jobs.run_job(spec, tmp_path / "resumed", cache_dir=cache))


@pytest.mark.parametrize("options", [{"method": "sde_dpm_solver_pp"}, {"method": "ddim", "eta": 1.0}])
def test_stochastic_solver_job_resumed_equals_the_uninterrupted_run(tmp_path, options):
    """A stochastic grid solver's noise is per sample (fold_in(key, index)): resume and batch size change nothing.

    The job stops after its first chunk (the progress callback raises), and the rerun computes the other
    two with the same compiled call: bitwise equal to the uninterrupted run of the same batch size. A
    single chunk of all six samples (another compiled shape) draws the same samples to float32 rounding:
    1e-5 on O(1) values over 5 steps, while a batch-dependent noise stream differs by O(1) (DDIM's eta=0
    run below shows the noise's size: >= 0.05 somewhere; measured 1.9; the two batch sizes
    differed by 0 on this machine's CPU, not promised).
    """
    spec = jobs.JobSpec(num_samples=6, batch_size=2, seed=4, steps=5, **options)
    clean, resumed = _clean_and_resumed_after_first_chunk(spec, tmp_path)
    np.testing.assert_array_equal(resumed, clean)
    one_chunk = load_after(jobs.run_job(jobs.JobSpec(num_samples=6, batch_size=6, seed=4, steps=5, **options),
                                        tmp_path / "one"))
    np.testing.assert_allclose(one_chunk, clean, rtol=0, atol=1e-5)
    if options["method"] == "ddim":  # eta reached the sampler: DDIM with eta = 0 on the same x_T differs
        ode = load_after(jobs.run_job(jobs.JobSpec(num_samples=6, batch_size=6, seed=4, steps=5, method="ddim"),
                                      tmp_path / "ode"))
        assert np.max(np.abs(ode - clean)) >= 0.05


# --------------------------------------------------------------------------- class and guidance

GUIDED = dict(class_label=1, guidance_scale=3.0, guidance_interval=(0.2, 0.9), guidance_rescale=0.5)


def test_default_classes_are_the_embedded_class_mixtures():
    """The host-side copy that specs are checked against is default_class_mixture's grouping."""
    for dim in (2, 5):
        assert tuple(np.asarray(sv.mixtures.default_class_mixture(dim).classes).tolist()) == jobs.DEFAULT_CLASSES


@pytest.mark.parametrize("kwargs, match", [
    ({"class_label": 3}, "class_label must be one of the default model's classes 0..2, got 3"),
    ({"class_label": -1}, "class_label must be None or an int >= 0"),
    ({"class_label": True}, "class_label must be None or an int >= 0"),
    ({"class_label": 1.0}, "class_label must be None or an int >= 0"),
    ({"guidance_scale": 2.0}, "guidance_scale needs class_label"),
    ({"class_label": 0, "guidance_interval": (0.1, 0.5)}, "guidance_interval is an option of classifier-free"),
    ({"class_label": 0, "guidance_rescale": 0.5}, "guidance_rescale is an option of classifier-free"),
    ({"class_label": 0, "guidance_scale": -1.0}, "guidance_scale must be >= 0"),
    ({"class_label": 0, "guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
    ({"class_label": 0, "guidance_scale": "2"}, "guidance_scale must be a finite number"),
    ({"class_label": 0, "guidance_scale": 2.0, "guidance_interval": (0.5, 0.2)}, "0 <= t_lo < t_hi <= 1"),
    ({"class_label": 0, "guidance_scale": 2.0, "guidance_interval": (0.3, 0.3)}, "0 <= t_lo < t_hi <= 1"),
    ({"class_label": 0, "guidance_scale": 2.0, "guidance_interval": (-0.1, 0.5)}, "0 <= t_lo < t_hi <= 1"),
    ({"class_label": 0, "guidance_scale": 2.0, "guidance_interval": (0.5, 1.5)}, "0 <= t_lo < t_hi <= 1"),
    ({"class_label": 0, "guidance_scale": 2.0, "guidance_interval": (0.5,)}, "guidance_interval must be None or"),
    ({"class_label": 0, "guidance_scale": 2.0, "guidance_rescale": 1.5}, "guidance_rescale must be in"),
])
def test_bad_condition_fields_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jobs.JobSpec(**(dict(num_samples=2, batch_size=2, seed=0, steps=4) | kwargs))


def test_condition_and_guidance_are_recorded_and_another_is_another_job(tmp_path):
    """Recorded where they apply; an old manifest (no such fields) is the unconditional job."""
    base = dict(num_samples=2, batch_size=2, seed=0, steps=5)
    spec = jobs.JobSpec(**base, class_label=1, guidance_scale=3, guidance_interval=[0.2, 0.9], guidance_rescale=0.5)
    assert spec == jobs.JobSpec(**base, **GUIDED)  # normalised: floats, a tuple
    assert jobs.JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    jobs._write_manifest(spec, tmp_path, [], create=True)  # as run_job writes it first
    recorded = json.loads((tmp_path / jobs.MANIFEST).read_text())["config"]
    assert {k: recorded[k] for k in jobs.CONDITION_FIELDS} == GUIDED | {"guidance_interval": [0.2, 0.9]}
    for change in [{"class_label": 0}, {"guidance_scale": 2.0}, {"guidance_interval": (0.1, 0.9)},
                   {"guidance_interval": None}, {"guidance_rescale": 0.0}, {"guidance_scale": None,
                   "guidance_interval": None, "guidance_rescale": 0.0}, dict.fromkeys(GUIDED, None) | {
                   "guidance_rescale": 0.0}]:
        field = next(k for k in GUIDED if k in change)
        with pytest.raises(jobs.JobMismatchError, match=f"{field}: "):
            jobs.check_manifest(jobs.JobSpec(**(base | GUIDED | change)), tmp_path)
    assert jobs.check_manifest(spec, tmp_path) is not None
    # Unguided: the class alone is recorded; unconditional: none of the four fields.
    conditional = jobs.JobSpec(**base, class_label=2).to_json()
    assert conditional["class_label"] == 2 and not set(jobs.GUIDANCE_FIELDS) & set(conditional)
    assert not set(jobs.CONDITION_FIELDS) & set(jobs.JobSpec(**base).to_json())
    # A manifest written before these fields existed lacks them, as an unconditional job's does now: it resumes
    # as the unconditional job, and a class is another job.
    plain = jobs.JobSpec(**base)
    (tmp_path / "old").mkdir()
    jobs._write_manifest(plain, tmp_path / "old", [], create=True)
    assert not set(jobs.CONDITION_FIELDS) & set(json.loads((tmp_path / "old" / jobs.MANIFEST).read_text())["config"])
    assert jobs.check_manifest(plain, tmp_path / "old") is not None
    with pytest.raises(jobs.JobMismatchError, match="class_label: None there, 2 now"):
        jobs.check_manifest(jobs.JobSpec(**base, class_label=2), tmp_path / "old")


@pytest.mark.parametrize("method", ["euler_maruyama", pytest.param("dpm_solver_pp", marks=pytest.mark.slow)])
def test_guided_job_resumed_equals_the_uninterrupted_run_and_the_librarys_call(tmp_path, method):
    """A class-conditional job with CFG (interval and rescale on), stopped after its first chunk and resumed.

    In 8 dimensions: CFG-rescale divides by a per-sample std over the entries, which over 2 entries can
    be near 0 (measured: a 2-D dpm_solver_pp sample at |x| = 63, where float32 rounding grew to 1e-3).
    Bitwise equal to the uninterrupted run: the resumed chunks are the same compiled call, and each
    chunk's condition is full((batch,), class) built in that call. A single chunk of all six samples,
    and the library's own call (sv.cfg over sv.mixtures.make_class_model with the same cond, compiled apart), draw
    the same samples to float32 rounding: 1e-5 on O(1) values over 6 steps. The unguided conditional
    job differs by O(1) (>= 0.05 asserted): the guidance reached the sampler.
    """
    import jax
    import jax.numpy as jnp

    common = dict(seed=4, steps=6, method=method, event_shape=(8,))
    spec = jobs.JobSpec(num_samples=6, batch_size=2, **common, **GUIDED)
    clean, resumed = _clean_and_resumed_after_first_chunk(spec, tmp_path)
    np.testing.assert_array_equal(resumed, clean)
    one = load_after(jobs.run_job(jobs.JobSpec(num_samples=6, batch_size=6, **common, **GUIDED), tmp_path / "one"))
    np.testing.assert_allclose(one, clean, rtol=0, atol=1e-5)

    state = jobs.job_state(spec)
    model = sv.cfg(sv.mixtures.make_class_model(state, sv.mixtures.default_class_mixture(8)), 3.0, sv.NULL_CLASS, interval=(0.2, 0.9),
                   rescale=0.5, state=state)
    cond = jnp.full((6,), 1, jnp.int32)
    if method == "euler_maruyama":
        direct = sv.sample(state, model, jax.random.key(4), (6, 8), predictor=method, cond=cond)
    else:
        direct = sv.sample_ode(state, model, jax.random.key(4), (6, 8), method=method, cond=cond)
    np.testing.assert_allclose(clean, np.asarray(direct), rtol=0, atol=1e-5)
    unguided = load_after(jobs.run_job(jobs.JobSpec(num_samples=6, batch_size=6, **common, class_label=1),
                                       tmp_path / "unguided"))
    assert np.max(np.abs(unguided - clean)) >= 0.05


def test_a_users_model_gets_the_class_per_sample(tmp_path, monkeypatch):
    """model_fn(x, t, cond): cond is the class per row (int32); guidance calls it with NULL_CLASS too."""
    import jax
    import jax.numpy as jnp

    (tmp_path / "my_cond_model.py").write_text(textwrap.dedent("""\
        import jax.numpy as jnp
        def eps(x, t, cond):
            return 0.5 * x + 0.1 * cond[:, None].astype(x.dtype)
        def plain(x, t):
            return 0.5 * x
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    base = dict(num_samples=4, batch_size=4, seed=1, steps=5, method="heun", event_shape=(3,))
    spec = jobs.JobSpec(**base, model="my_cond_model:eps", class_label=7, guidance_scale=2.0)
    got = load_after(jobs.run_job(spec, tmp_path / "job"))
    import my_cond_model

    state = jobs.job_state(spec)
    expected = sv.sample_ode(state, sv.cfg(my_cond_model.eps, 2.0, sv.NULL_CLASS), jax.random.key(1), (4, 3),
                             method="heun", cond=jnp.full((4,), 7, jnp.int32))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-5)  # float32 rounding, compiled apart
    # the class reached the model: class 0 shifts the prediction by 0.1 (w (c - u) = 2 x 0.1) where 7 shifts it by 1.5
    other = load_after(jobs.run_job(jobs.JobSpec(**base, model="my_cond_model:eps", class_label=0,
                                                 guidance_scale=2.0), tmp_path / "other"))
    assert np.max(np.abs(other - got)) >= 0.05
    with pytest.raises(ValueError, match=r"takes no condition: .*model_fn\(x, t, cond\)"):
        jobs.load_model(jobs.JobSpec(**base, model="my_cond_model:plain", class_label=0), None)
