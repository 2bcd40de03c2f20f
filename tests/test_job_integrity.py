"""Job integrity under real faults: foreign, truncated and altered chunks, crashes between writes,
a second process on the same directory, a full file system, non-finite samples, malformed files
and options, and processes that disagree.

Every fault is real: bytes are truncated or flipped on disk, a second process is started, a small
tmpfs fills up, a user's model returns NaN. Each test fails on a job that trusts whatever chunk
files sit in its directory.
"""

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

from sdevp_jax import cli, jobs
from sdevp_jax.distributed import ProcessesDisagreeError

SMALL = dict(num_samples=10, batch_size=4, steps=3)  # 3 chunks: 4, 4, 2 samples
ARGS = ["--num-samples", "10", "--batch-size", "4", "--steps", "3", "--no-progress", "--no-plot", "--no-cache"]
CLI = [sys.executable, "-m", "sdevp_jax.cli", "sample"]


def run_cli(out: Path, *extra: str) -> int:
    return cli.main(["sample", *ARGS, "--out", str(out), *extra])


def bits(path: Path) -> np.ndarray:
    return np.load(path)["samples"].view(np.uint32)


def one_error_line(err: str) -> str:
    """The CLI's stderr is exactly one line, ``sdevp-jax: error: ...`` (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdevp-jax: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted job of seed 0, for bitwise comparisons."""
    out = tmp_path_factory.mktemp("clean")
    return bits(jobs.run_job(jobs.JobSpec(seed=0, **SMALL), out))


# ---------------------------------------------------------------- chunks of another job are never adopted

def test_force_after_a_deleted_manifest_never_adopts_another_seeds_chunks(tmp_path, capsys):
    """A seed-0 job's manifest deleted, then a seed-1 job with --force: refused, naming a seed-0 chunk."""
    assert run_cli(tmp_path, "--seed", "0") == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "chunks").iterdir()}
    (tmp_path / "manifest.json").unlink()
    capsys.readouterr()
    assert run_cli(tmp_path, "--seed", "1", "--force") != 0
    line = one_error_line(capsys.readouterr().err)
    assert "chunk_000000.npy belongs to another job" in line and "move it" in line
    assert {p.name: p.read_bytes() for p in (tmp_path / "chunks").iterdir()} == before  # untouched
    assert not (tmp_path / "manifest.json").exists()


def test_a_stray_chunk_of_another_job_or_without_a_record_is_refused(tmp_path, capsys):
    """A partial seed-1 job gets seed 0's chunk 1 copied in (with and without its record): never adopted."""
    seed0 = tmp_path / "seed0"
    jobs.run_job(jobs.JobSpec(seed=0, **SMALL), seed0)
    spec = jobs.JobSpec(seed=1, **SMALL)
    out = tmp_path / "seed1"
    (out / "chunks").mkdir(parents=True)
    for suffix in (".npy", ".json"):
        name = f"chunk_000001{suffix}"
        (out / "chunks" / name).write_bytes((seed0 / "chunks" / name).read_bytes())
    with pytest.raises(jobs.JobIntegrityError, match="chunk_000001.npy belongs to another job"):
        jobs.run_job(spec, out)
    (out / "chunks" / "chunk_000001.json").unlink()  # a chunk file with no record (another tool's, say)
    with pytest.raises(jobs.JobIntegrityError, match="chunk_000001.npy has no record"):
        jobs.run_job(spec, out)
    assert not (out / "samples.npz").exists()


def test_a_deleted_manifest_with_this_jobs_chunks_adopts_them_without_recomputing(tmp_path, clean):
    """The manifest lost, the chunks this job's: each is verified by its record and kept (same inode)."""
    spec = jobs.JobSpec(seed=0, **SMALL)
    jobs.run_job(spec, tmp_path)
    inodes = {p.name: p.stat().st_ino for p in (tmp_path / "chunks").glob("*.npy")}
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "samples.npz").unlink()
    np.testing.assert_array_equal(bits(jobs.run_job(spec, tmp_path)), clean)
    assert {p.name: p.stat().st_ino for p in (tmp_path / "chunks").glob("*.npy")} == inodes


# ---------------------------------------------------------------- truncated and altered files

def test_an_altered_chunk_is_detected_and_recomputed(tmp_path, clean):
    """One bit of chunk 1's data flipped on disk: the rerun warns, naming it, and ends bitwise clean."""
    spec = jobs.JobSpec(seed=0, **SMALL)
    jobs.run_job(spec, tmp_path)
    path = jobs.chunk_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # a bit of the last sample's mantissa: still a valid .npy, another number
    path.write_bytes(bytes(data))
    (tmp_path / "samples.npz").unlink()
    with pytest.warns(jobs.JobWarning, match="chunk_000001.npy is not the file its record describes"):
        result = jobs.run_job(spec, tmp_path)
    np.testing.assert_array_equal(bits(result), clean)


def test_a_truncated_chunk_is_recomputed_instead_of_breaking_every_resume(tmp_path, clean):
    """Chunk 0 cut to half its bytes (the header survives, the data does not): recomputed, bitwise clean."""
    spec = jobs.JobSpec(seed=0, **SMALL)
    jobs.run_job(spec, tmp_path)
    path = jobs.chunk_path(tmp_path, 0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(jobs.JobWarning, match="chunk_000000.npy"):
        result = jobs.run_job(spec, tmp_path)
    np.testing.assert_array_equal(bits(result), clean)


@pytest.mark.parametrize("plot", ["--no-plot", "--plot"])
def test_a_truncated_samples_npz_is_rebuilt(tmp_path, capsys, clean, plot):
    """samples.npz cut short after the job finished: the rerun rebuilds it (and the picture reads it)."""
    assert run_cli(tmp_path, plot) == 0
    path = tmp_path / "samples.npz"
    path.write_bytes(path.read_bytes()[:100])
    assert run_cli(tmp_path, plot) == 0
    assert "samples.npz is not the file the manifest records" in capsys.readouterr().err
    np.testing.assert_array_equal(bits(path), clean)


# ---------------------------------------------------------------- crashes between two writes

def test_a_crash_between_samples_npz_and_the_final_manifest_is_finished_by_a_rerun(tmp_path, monkeypatch, clean):
    """The process dies right after samples.npz is renamed into place: the rerun marks the job complete."""
    spec = jobs.JobSpec(seed=0, **SMALL)
    real = jobs._write_manifest

    def crash_at_the_final_manifest(*args, complete=False, **kwargs):
        if complete:
            raise SystemExit("killed")  # not an Exception: nothing of the job's code handles it
        return real(*args, complete=complete, **kwargs)

    monkeypatch.setattr(jobs, "_write_manifest", crash_at_the_final_manifest)
    with pytest.raises(SystemExit):
        jobs.run_job(spec, tmp_path)
    monkeypatch.setattr(jobs, "_write_manifest", real)
    assert (tmp_path / "samples.npz").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"] is False
    np.testing.assert_array_equal(bits(jobs.run_job(spec, tmp_path)), clean)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["samples_sha256"] == jobs._file_sha256(tmp_path / "samples.npz")


def test_a_crash_between_a_record_and_its_chunk_leaves_a_resumable_job(tmp_path, monkeypatch, clean):
    """The record of chunk 2 written, the process dies before its chunk: the rerun computes it."""
    spec = jobs.JobSpec(seed=0, **SMALL)
    real = jobs._write_bytes

    def crash_before_chunk_2(path, data, **kwargs):
        if Path(path).name == "chunk_000002.npy":
            raise SystemExit("killed")
        return real(path, data, **kwargs)

    monkeypatch.setattr(jobs, "_write_bytes", crash_before_chunk_2)
    with pytest.raises(SystemExit):
        jobs.run_job(spec, tmp_path)
    monkeypatch.setattr(jobs, "_write_bytes", real)
    assert jobs.record_path(tmp_path, 2).exists() and not jobs.chunk_path(tmp_path, 2).exists()
    np.testing.assert_array_equal(bits(jobs.run_job(spec, tmp_path)), clean)


def test_stale_temporaries_of_every_file_are_removed_by_a_successful_rerun(tmp_path, capsys):
    """Temporaries a killed run leaves (manifest, picture, samples, chunk, record) go; a user's file stays."""
    assert run_cli(tmp_path, "--plot") == 0
    planted = [tmp_path / ".manifest.json.k1ll3d.tmp", tmp_path / ".samples.png.k1ll3d.tmp",
               tmp_path / ".samples.npz.k1ll3d.tmp", tmp_path / "chunks" / ".chunk_000001.npy.k1ll3d.tmp",
               tmp_path / "chunks" / ".chunk_000001.json.k1ll3d.tmp"]
    for path in planted:
        path.write_bytes(b"half a file")
    users = tmp_path / "notes.tmp"
    users.write_text("keep me")
    assert run_cli(tmp_path, "--plot") == 0
    assert not any(p.exists() for p in planted) and users.read_text() == "keep me"


# ---------------------------------------------------------------- a second process on the same directory

GATED = textwrap.dedent("""
    import os, time
    import jax

    def _wait_for_release(x):
        deadline = time.monotonic() + 120
        while not os.path.exists(os.environ["SDEVP_TEST_RELEASE"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        return x

    def gated(x, t):
        # Blocks the running job (on the host, at run time) until the test creates the release file.
        return 0.5 * jax.pure_callback(_wait_for_release, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
""")


@pytest.mark.slow
def test_a_second_process_on_the_same_out_is_refused_and_the_first_finishes(tmp_path):
    """A real second CLI process started while the first runs: it stops with one line; the first is intact.

    The first job's model blocks until a release file exists, so the second process starts
    while the first holds the directory (its manifest written, its first chunk running); the
    second must stop at once without touching anything, and the first then finishes with the
    samples of an undisturbed run.
    """
    (tmp_path / "gated_model.py").write_text(GATED)
    release = tmp_path / "release"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               SDEVP_TEST_RELEASE=str(release))
    out = tmp_path / "job"
    args = [*CLI, *ARGS, "--model", "gated_model:gated", "--out", str(out)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        listing = sorted(p.name for p in out.rglob("*"))
        second = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        assert first.poll() is None  # still blocked in its first chunk
        assert sorted(p.name for p in out.rglob("*")) == listing  # the second touched nothing
    finally:
        release.touch()
    _, err_first = first.communicate(timeout=300)
    assert second.returncode != 0
    assert "another process is running a job in" in one_error_line(second.stderr)
    assert first.returncode == 0, err_first
    single = tmp_path / "single"
    done = subprocess.run([*args[:-1], str(single)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(bits(out / "samples.npz"), bits(single / "samples.npz"))


# ---------------------------------------------------------------- a full file system

@pytest.fixture
def small_fs(tmp_path):
    """A real tmpfs of 64 KiB (pages of 4 KiB: 16 files at most); skipped where mounting is not allowed."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_during_a_chunk_write_ends_in_one_line_and_resumes(tmp_path, small_fs, capsys):
    """12 chunks (of 12 files of 4 KiB pages each holding a chunk and a record) overflow 64 KiB mid-job.

    The size estimate before the job passes (the chunks' bytes are small), the kernel then
    refuses a write with ENOSPC: one line naming the file, exit 1, nothing partial; after the
    file system grows, the same command finishes, bitwise equal to a run elsewhere.
    """
    args = ["--num-samples", "12", "--batch-size", "1", "--steps", "2", "--no-progress", "--no-plot", "--no-cache"]
    out = small_fs / "job"
    assert cli.main(["sample", *args, "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write" in line and "No space left on device" in line
    assert not list(out.rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_fs)], check=True)
    assert cli.main(["sample", *args, "--out", str(out)]) == 0
    assert cli.main(["sample", *args, "--out", str(tmp_path / "elsewhere")]) == 0
    np.testing.assert_array_equal(bits(out / "samples.npz"), bits(tmp_path / "elsewhere" / "samples.npz"))


def test_a_directory_that_cannot_be_written_ends_in_one_line(small_fs, capsys):
    """The file system remounted read-only (a permission no root can override): one line, exit 1."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    assert run_cli(small_fs / "job") == 1
    line = one_error_line(capsys.readouterr().err)
    assert "cannot create the output directory" in line and "Read-only file system" in line


def test_a_job_larger_than_the_free_space_is_refused_before_it_starts(small_fs, capsys):
    """2000 samples of 16 floats (128 KB of chunks and as much of samples.npz) on 64 KiB: refused upfront."""
    out = small_fs / "job"
    rc = cli.main(["sample", "--num-samples", "2000", "--batch-size", "500", "--steps", "2", "--shape", "16",
                   "--no-progress", "--no-plot", "--no-cache", "--out", str(out)])
    assert rc == 1
    assert "MiB free; the job needs about" in one_error_line(capsys.readouterr().err)
    assert not list((out / "chunks").glob("*.npy"))


# ---------------------------------------------------------------- no NaN written as a result

MODELS = textwrap.dedent("""
    import jax.numpy as jnp

    def nan_model(x, t):
        return jnp.full_like(x, jnp.nan)

    def wrong_shape(x, t):
        return x[:, :1]

    def raises(x, t):
        raise ZeroDivisionError("the model's own bug")

    def fine(x, t):
        return x * 0.5
""")


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_models", None)
    yield "user_models"
    sys.modules.pop("user_models", None)


def test_a_model_returning_nan_stops_the_job_naming_the_chunk(tmp_path, capsys, user_models):
    """A NaN model: exit non-zero with one line naming chunk 0; no chunk written, the job not complete."""
    out = tmp_path / "job"
    assert run_cli(out, "--model", f"{user_models}:nan_model") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "chunk 0 (samples 0..3) has 4 non-finite samples" in line and "--allow-nonfinite" in line
    assert not list((out / "chunks").glob("*.npy")) and not (out / "samples.npz").exists()
    assert run_cli(out, "--model", f"{user_models}:nan_model", "--allow-nonfinite") == 0
    assert np.isnan(np.load(out / "samples.npz")["samples"]).all()
    assert json.loads(jobs.record_path(out, 0).read_text())["nonfinite"] == 4
    capsys.readouterr()
    assert run_cli(out, "--model", f"{user_models}:nan_model") == 2  # kept chunks need the option again
    assert "holds non-finite samples, kept by allow_nonfinite" in one_error_line(capsys.readouterr().err)


def test_non_finite_rows_are_found_in_every_dtype_without_a_lossy_cast():
    """bfloat16 inf/NaN are found; a float64 sample beyond float32's range is finite, not flagged."""
    import ml_dtypes

    bf16 = np.array([[1.0, 2.0], [np.inf, 0.0], [0.0, np.nan], [3e38, -3e38]], ml_dtypes.bfloat16)
    np.testing.assert_array_equal(jobs._nonfinite_rows(bf16), [1, 2])
    np.testing.assert_array_equal(jobs._nonfinite_rows(np.array([[1e39, 0.0], [np.inf, 0.0]])), [1])
    np.testing.assert_array_equal(jobs._nonfinite_rows(np.array([[65504.0], [np.inf]], np.float16)), [1])


# ---------------------------------------------------------------- faults end in one line

def write(path: Path, data) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


@pytest.mark.parametrize("config, match", [
    ({"beta_min": "0.1"}, "beta_min"),
    ({"_class_name": ["DDIMScheduler"]}, "_class_name must be a string"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_malformed_configs_end_in_one_line(tmp_path, capsys, config, match):
    path = write(tmp_path / "scheduler_config.json", config)
    out = tmp_path / "job"
    assert run_cli(out, "--config", str(path)) == 2
    assert match in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("manifest", ["directory", b"\xff\xfe not utf-8", b"[" * 100000])
def test_malformed_manifests_end_in_one_line(tmp_path, capsys, manifest):
    out = tmp_path / "job"
    out.mkdir()
    if manifest == "directory":
        (out / "manifest.json").mkdir()
    else:
        write(out / "manifest.json", manifest)
    assert run_cli(out) == 2
    assert "manifest.json" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("model, match", [
    (".relative:fn", "absolute import path"),
    ("user_models:wrong_shape", "shape"),
    ("user_models:raises", "model 'user_models:raises' raised ZeroDivisionError: the model's own bug"),
])
def test_a_bad_user_model_ends_in_one_line_before_the_directory_is_claimed(tmp_path, capsys, user_models, model,
                                                                             match):
    """The error names the cause; no manifest is written, so the corrected command then runs there."""
    out = tmp_path / "job"
    assert run_cli(out, "--model", model) == 2
    assert match in one_error_line(capsys.readouterr().err)
    assert not (out / "manifest.json").exists()
    assert run_cli(out, "--model", f"{user_models}:fine") == 0


def test_shape_1_with_the_default_model_is_refused_before_the_directory_exists(tmp_path, capsys):
    out = tmp_path / "job"
    assert run_cli(out, "--shape", "1") == 2
    assert "--shape 1: the default model needs at least 2 entries" in one_error_line(capsys.readouterr().err)
    assert not out.exists()
    assert run_cli(out) == 0


def test_sizes_beyond_the_machine_are_refused_naming_the_argument(tmp_path, capsys):
    """1e15 entries per sample: refused naming --shape's event_shape; a chunk too large: naming batch_size."""
    out = tmp_path / "job"
    assert run_cli(out, "--shape", "1000000,1000000,1000") == 2
    assert "event_shape (1000000, 1000000, 1000) needs" in one_error_line(capsys.readouterr().err)
    assert not out.exists()
    spec = jobs.JobSpec(num_samples=10**6, batch_size=10**6, seed=0, steps=1, event_shape=(1000,))
    # 1000 float32 entries, 4x for the working set: 16000 B per sample; 2**30 B hold 67108 of them.
    with pytest.raises(ValueError, match=r"batch_size 1000000 needs .* use batch_size <= 67108$"):
        jobs.check_resources(spec, memory=2**30)
    spec = jobs.JobSpec(num_samples=3, batch_size=10**9, seed=0, steps=2)
    assert spec.batch_size == 3  # clipped: a chunk never holds more than the job's samples


def test_bad_job_fields_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="snr must be a finite number > 0"):
        jobs.JobSpec(num_samples=4, batch_size=4, seed=0, steps=2, corrector="langevin", snr=-1.0)
    spec = jobs.JobSpec(num_samples=4, batch_size=4, seed=0, steps=2, dtype="float64")
    with pytest.raises(ValueError, match="dtype 'float64' needs JAX's 64-bit mode"):
        jobs.run_job(spec, tmp_path / "job")
    assert not (tmp_path / "job" / "manifest.json").exists()


# ---------------------------------------------------------------- processes that disagree

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("second", [["--seed", "1"], ["--model", "no_such_module:fn"]])
def test_processes_that_disagree_all_stop_within_seconds_with_the_same_line(tmp_path, second):
    """Two processes of one job, the second with another seed (or a model it cannot load).

    Both must exit non-zero with the same one-line message well inside JAX's own timeouts
    (minutes): 60 s here covers the start of two JAX processes on a loaded 2-core machine.
    """
    coordinator = f"127.0.0.1:{free_port()}"
    base = [*CLI, "--num-samples", "8", "--batch-size", "4", "--steps", "3", "--no-progress", "--no-plot",
            "--no-cache", "--out", str(tmp_path / "job"), "--coordinator", coordinator, "--num-processes", "2"]
    start = time.monotonic()
    procs = [subprocess.Popen([*base, "--process-id", str(i), *(second if i else [])], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for i in range(2)]
    try:
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert time.monotonic() - start < 60
    lines = [one_error_line(err) for _, err in results]
    assert all(p.returncode != 0 for p in procs)
    assert lines[0] == lines[1], lines
    assert ("seed" if second[0] == "--seed" else "no_such_module") in lines[0]


def test_agreement_with_one_process_raises_the_error_as_it_is():
    from sdevp_jax.distributed import agree, together

    agree(None, "nothing failed")
    with pytest.raises(ProcessesDisagreeError, match="it broke"):
        agree("it broke", "a step")
    with pytest.raises(ZeroDivisionError):
        together("a step", lambda: 1 / 0)
