"""A job's samples do not depend on the device count: each device takes whole single-device chunks.

The device count is fixed when JAX starts, so each count runs in a child process (this
file as a script: ``python tests/test_job_devices.py N OUT CASE ...``) that runs the
cases' jobs into OUT and prints one JSON line; the parent runs the same jobs on its one
device and compares the bits of ``samples.npz`` (uint32 views). The models are those of
:mod:`device_models` (the embedded mixture, a hand-written exp / log / softmax mixture, a
Flax MLP and conv net, a guided Flax MLP), given to ``run_job`` as ``model_fn``.

A job partitioned over devices (a chunk split into shards, as jobs did before) fails
these comparisons for the hand-written mixture and the guided MLP (up to 8e-6 and 9.8e-4,
``benchmarks/results/device_count_before.md``).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # a child: the device count must be set before JAX starts
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(sys.argv[1])}"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import json
from pathlib import Path

import numpy as np
import pytest

import device_models as dm
import sdevp_jax as sv
from sdevp_jax import jobs

STEPS = 24


def case_spec(case: str, count: int) -> tuple[jobs.JobSpec, str, str]:
    """``model/method`` -> a job of 2 chunks per device at ``count`` devices (so every device computes)."""
    model_name, method = case.split("/")
    probe = dm.MODELS[model_name](sv, jobs.job_state(jobs.JobSpec(num_samples=1, batch_size=1, seed=0, steps=2)))
    spec = jobs.JobSpec(num_samples=2 * count * 3 - 1, batch_size=3, seed=7, steps=STEPS, method=method,
                        event_shape=probe.event_shape, class_label=1 if probe.guided else None)
    return spec, model_name, method


#: The default model's job (``spec.model`` loaded by ``run_job``, no ``model_fn``): 3 chunks of 3, 3 and 1
#: samples, so at 2 devices a device takes a second chunk and the last chunk is short.
DEFAULT_CASE = "default"
DEFAULT_SPEC = jobs.JobSpec(num_samples=7, batch_size=3, seed=1, steps=10)


def run_case(case: str, count: int, out: Path, cache_dir: Path | None = None) -> np.ndarray:
    """``case``'s job (at ``count`` devices' size) run in ``out`` by this process; its samples as uint32.

    ``cache_dir``: JAX's persistent compilation cache, which a resumed job and its uninterrupted twin share
    in one process (as the CLI's resume does): the resumed run loads the executables the other compiled
    for the same devices (the cache key holds the device) instead of compiling them again.
    """
    if case == DEFAULT_CASE:
        return np.load(jobs.run_job(DEFAULT_SPEC, out, cache_dir=cache_dir))["samples"].view(np.uint32)
    spec, model_name, _ = case_spec(case, count)
    model = dm.MODELS[model_name](sv, jobs.job_state(spec))
    return np.load(jobs.run_job(spec, out, model_fn=model.model_fn, cache_dir=cache_dir))["samples"].view(np.uint32)


def child(count: int, out: Path, cases: list[str], resume: list[str]) -> dict:
    import jax

    result = {"devices": len(jax.devices()), "cases": {}, "used": {}, "order": {}}
    for case in cases + resume:
        directory = out / case.replace("/", "__") / f"{count}"
        if case in resume:  # the parent left a partial job there, computed on one device
            directory = out / case.replace("/", "__") / "partial"
        # the child's own cache (never the parent's): a case and its resumed job share executables
        cache = out / f"cache-{count}" if case in resume else None
        result["cases"][case] = run_case(case, count, directory, cache).tolist()
        records = [json.loads(p.read_text()) for p in sorted((directory / "chunks").glob("chunk_*.json"))]
        result["used"][case] = sorted({r["device"] for r in records})
        result["order"][case] = [r["device"] for r in records]  # the device of each chunk, in chunk order
    return result


def run_child(count: int, out: Path, cases: list[str], resume: list[str] = ()) -> dict:
    result = dm.run_child(__file__, [str(count), str(out), ",".join(cases), ",".join(resume)])
    assert result["devices"] == count, result
    return result


#: Per device count, the cases its child runs: every model at 2 devices, both kinds of method at each count.
#: A job's case at ``count`` devices compiles its chunk program once per device (about 1 s each on a 2-core
#: VM), and once more in the parent for the 1-device job.
COUNT_CASES = {
    2: ["toy_mixture/euler_maruyama", "hand_mixture/dpm_solver_pp", "flax_mlp/ancestral", "flax_conv/ddim",
        "cfg_flax_mlp/euler_maruyama"],
    4: ["hand_mixture/euler_maruyama", "flax_mlp/dpm_solver", "cfg_flax_mlp/unipc"],
    8: ["flax_mlp/sde_dpm_solver_pp", "flax_conv/euler_maruyama"],
}
#: XLA:CPU runs a convolution on a pool of threads whose size depends on the forced device count once
#: that exceeds the cores, and its convolution rounds by its split over the threads: measured on a
#: 2-core machine, the conv net's single-device program gave other bits in processes of 4 and 8 forced
#: devices than of 1 or 2 (and a 1-device process on one core, ``taskset -c 0``, other bits than on two).
#: So a conv net's job is compared bit for bit only at device counts up to the cores; above, its bits
#: are the machine's thread split's, and it is held to float rounding instead.
CORES = len(os.sched_getaffinity(0))
CONV_RTOL = 1e-3  # measured: 1.8e-4 on samples of size ~1 (benchmarks/results/device_count_before.md)


#: Per device count, the cases resumed there from a 1-device job stopped after its first two chunks.
RESUME_CASES = {4: ["hand_mixture/euler_maruyama"]}


@pytest.fixture(scope="module")
def count_child(tmp_path_factory):
    """``count -> (out, result)``: one child per device count, started once for the tests that read it.

    Before the count's child starts, the parent leaves in ``out`` the partial 1-device jobs of
    ``RESUME_CASES`` (stopped after two chunks), through its own cache in ``out / "cache-1"``. At
    2 devices the child also runs ``DEFAULT_CASE`` (for the test of whole chunks per device).
    """
    results = {}

    def get(count: int):
        if count not in results:
            out = tmp_path_factory.mktemp(f"devices{count}")
            resume = RESUME_CASES.get(count, [])
            for case in resume:
                spec, model_name, _ = case_spec(case, count)
                model = dm.MODELS[model_name](sv, jobs.job_state(spec))

                def stop_after_two_chunks(done, total):
                    if done >= 2 * spec.batch_size:
                        raise KeyboardInterrupt

                with pytest.raises(KeyboardInterrupt):
                    jobs.run_job(spec, out / case.replace("/", "__") / "partial", model_fn=model.model_fn,
                                 progress=stop_after_two_chunks, cache_dir=out / "cache-1")
            extra = [DEFAULT_CASE] if count == 2 else []
            results[count] = out, run_child(count, out, COUNT_CASES[count] + extra, resume)
        return results[count]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("count", sorted(COUNT_CASES))
def test_a_job_is_bitwise_the_one_device_job_at_any_device_count(count_child, count):
    """Each case's job on ``count`` forced CPU devices has the bits of the same job on one device.

    The conv net is compared bit for bit up to the machine's cores only (see ``CORES``). At 4
    devices, a 1-device job stopped after its first two chunks is resumed: its bits are the
    uninterrupted 1-device job's.
    """
    tmp_path, result = count_child(count)
    resume = RESUME_CASES.get(count, [])
    for case in COUNT_CASES[count] + resume:
        # a resumed case's 1-device job loads the executable its partial job compiled in this process
        cache = tmp_path / "cache-1" if case in resume else None
        single = run_case(case, count, tmp_path / case.replace("/", "__") / "1", cache)
        got = np.asarray(result["cases"][case], np.uint32)
        if case.startswith("flax_conv/") and count > CORES:
            np.testing.assert_allclose(got.view(np.float32), single.view(np.float32), rtol=CONV_RTOL,
                                       atol=CONV_RTOL, err_msg=case)
        else:
            np.testing.assert_array_equal(got, single, err_msg=case)
        if case not in resume:
            assert result["used"][case] == [f"cpu:{d}" for d in range(count)], (case, result["used"][case])


@pytest.mark.slow
def test_each_device_takes_whole_chunks_and_the_job_is_bitwise_the_one_device_job(count_child):
    """2 CPU devices, batch_size 3 (not a multiple of 2): whole chunks alternate between the devices.

    A chunk is one single-device program wherever it runs, so the job's bits equal the
    1-device job's (compared as uint32); the records show that both devices computed chunks.
    The job is ``DEFAULT_SPEC``, run by the count-2 child of the test above.
    """
    tmp_path, result = count_child(2)
    assert result["order"][DEFAULT_CASE] == ["cpu:0", "cpu:1", "cpu:0"], result["order"][DEFAULT_CASE]
    single = run_case(DEFAULT_CASE, 2, tmp_path / "one")
    np.testing.assert_array_equal(np.asarray(result["cases"][DEFAULT_CASE], np.uint32), single)


if __name__ == "__main__":
    count, out = int(sys.argv[1]), Path(sys.argv[2])
    cases = [c for c in sys.argv[3].split(",") if c]
    resume = [c for c in sys.argv[4].split(",") if c] if len(sys.argv) > 4 else []
    print(json.dumps(child(count, out, cases, resume)))
