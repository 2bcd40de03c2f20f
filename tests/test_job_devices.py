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


def run_case(case: str, count: int, out: Path, resume_from: Path | None = None) -> np.ndarray:
    spec, model_name, _ = case_spec(case, count)
    model = dm.MODELS[model_name](sv, jobs.job_state(spec))
    return np.load(jobs.run_job(spec, out, model_fn=model.model_fn))["samples"].view(np.uint32)


def child(count: int, out: Path, cases: list[str], resume: list[str]) -> dict:
    import jax

    result = {"devices": len(jax.devices()), "cases": {}}
    for case in cases + resume:
        directory = out / case.replace("/", "__") / f"{count}"
        if case in resume:  # the parent left a partial job there, computed on one device
            directory = out / case.replace("/", "__") / "partial"
        result["cases"][case] = run_case(case, count, directory).tolist()
        records = [json.loads(p.read_text()) for p in sorted((directory / "chunks").glob("chunk_*.json"))]
        result.setdefault("used", {})[case] = sorted({r["device"] for r in records})
    return result


def run_child(count: int, out: Path, cases: list[str], resume: list[str] = ()) -> dict:
    result = dm.run_child(__file__, [str(count), str(out), ",".join(cases), ",".join(resume)])
    assert result["devices"] == count, result
    return result


#: Per device count, the cases its child runs: together every model and both kinds of method.
COUNT_CASES = {
    2: ["toy_mixture/euler_maruyama", "hand_mixture/dpm_solver_pp", "flax_mlp/ancestral", "flax_conv/ddim",
        "cfg_flax_mlp/euler_maruyama"],
    4: ["hand_mixture/euler_maruyama", "flax_mlp/dpm_solver", "flax_conv/dpm_solver", "cfg_flax_mlp/unipc"],
    8: ["hand_mixture/heun", "flax_mlp/sde_dpm_solver_pp", "flax_conv/euler_maruyama"],
}
#: XLA:CPU runs a convolution on a pool of threads whose size depends on the forced device count once
#: that exceeds the cores, and its convolution rounds by its split over the threads: measured on a
#: 2-core machine, the conv net's single-device program gave other bits in processes of 4 and 8 forced
#: devices than of 1 or 2 (and a 1-device process on one core, ``taskset -c 0``, other bits than on two).
#: So a conv net's job is compared bit for bit only at device counts up to the cores; above, its bits
#: are the machine's thread split's, and it is held to float rounding instead.
CORES = len(os.sched_getaffinity(0))
CONV_RTOL = 1e-3  # measured: 1.8e-4 on samples of size ~1 (benchmarks/results/device_count_before.md)


@pytest.mark.slow
@pytest.mark.parametrize("count", sorted(COUNT_CASES))
def test_a_job_is_bitwise_the_one_device_job_at_any_device_count(tmp_path, count):
    """Each case's job on ``count`` forced CPU devices has the bits of the same job on one device.

    The conv net is compared bit for bit up to the machine's cores only (see ``CORES``). At 4
    devices, a 1-device job stopped after its first two chunks is resumed: its bits are the
    uninterrupted 1-device job's.
    """
    resume = ["hand_mixture/euler_maruyama"] if count == 4 else []
    for case in resume:
        spec, model_name, _ = case_spec(case, count)
        model = dm.MODELS[model_name](sv, jobs.job_state(spec))

        def stop_after_two_chunks(done, total):
            if done >= 2 * spec.batch_size:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            jobs.run_job(spec, tmp_path / case.replace("/", "__") / "partial", model_fn=model.model_fn,
                         progress=stop_after_two_chunks)
    result = run_child(count, tmp_path, COUNT_CASES[count], resume)
    for case in COUNT_CASES[count] + resume:
        single = run_case(case, count, tmp_path / case.replace("/", "__") / "1")
        got = np.asarray(result["cases"][case], np.uint32)
        if case.startswith("flax_conv/") and count > CORES:
            np.testing.assert_allclose(got.view(np.float32), single.view(np.float32), rtol=CONV_RTOL,
                                       atol=CONV_RTOL, err_msg=case)
        else:
            np.testing.assert_array_equal(got, single, err_msg=case)
        if case not in resume:
            assert result["used"][case] == [f"cpu:{d}" for d in range(count)], (case, result["used"][case])


if __name__ == "__main__":
    count, out = int(sys.argv[1]), Path(sys.argv[2])
    cases = [c for c in sys.argv[3].split(",") if c]
    resume = [c for c in sys.argv[4].split(",") if c] if len(sys.argv) > 4 else []
    print(json.dumps(child(count, out, cases, resume)))
