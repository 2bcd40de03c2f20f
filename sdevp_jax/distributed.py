"""Devices and processes: a batch sharding over local devices, and JAX's multi-controller runtime.

Sampling needs no communication between samples (the noise of sample ``b``
depends only on ``(key, b)``), so spreading it out is a matter of placement:

* over the devices of one process, jit ``sample`` / ``sample_ode`` with the batch
  sharded (``out_shardings=batch_sharding()``): each device computes its own
  shard, with no gather. Each shard is bitwise the single-device call of the
  shard's size at the shard's ``index_offset`` (the same compiled shapes); the
  whole equals the single-device call of the whole batch to float rounding
  (XLA compiles a batch of B and of B/n differently; tests/test_invariance.py);
* over processes (hosts), each process computes its own slice of sample
  indices (``index_offset``) -- see :mod:`sdevp_jax.jobs` -- after
  :func:`initialize` has joined them into one JAX runtime.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_sharding", "initialize", "barrier", "agree", "agree_on", "together", "ProcessesDisagreeError"]


def batch_sharding(devices: Optional[Sequence[jax.Device]] = None, axis_name: str = "batch") -> NamedSharding:
    """A sharding that splits the leading (batch) axis over ``devices`` (default: this process's).

    Use it as ``out_shardings`` of a jitted sampler; the batch size must be a
    multiple of the number of devices.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    return NamedSharding(Mesh(np.array(devices), (axis_name,)), PartitionSpec(axis_name))


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join this process to a multi-process JAX runtime (``jax.distributed.initialize``).

    Call before any other JAX work. On CPU it selects the gloo collectives, which
    :func:`barrier` needs there.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service.
      num_processes: the number of processes, >= 1.
      process_id: this process's id, in ``[0, num_processes)``.
    """
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"need num_processes >= 1 and 0 <= process_id < num_processes, got {num_processes} and {process_id}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def barrier(name: str) -> None:
    """Wait until every process of the runtime reaches the barrier ``name`` (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


#: The longest error message :func:`agree` carries from one process to all (longer ones are cut).
MESSAGE_BYTES = 1024


class ProcessesDisagreeError(RuntimeError):
    """Raised on every process of a multi-process runtime when one of them failed or they disagree.

    Its message is the same on every process: the failing process's id and its one-line error.
    """


def agree(error: Optional[str], name: str) -> None:
    """Every process says whether it failed; if any did, all raise the same error, at once.

    A multi-process job whose processes meet at barriers would leave the processes that
    did not fail blocked in the next barrier (JAX gives up after minutes, with a fatal
    error) when one of them stops. Replacing each barrier with this call -- an all-gather
    of a fixed-size message, itself a barrier -- makes every process stop together with the
    first failing process's message.

    Args:
      error: this process's one-line error, or ``None`` if it succeeded.
      name: what the processes were doing (in the message).

    Raises:
      ProcessesDisagreeError: on every process, if any process passed an error (with one
        process, the error is raised there as it is).
    """
    if jax.process_count() == 1:
        if error is not None:
            raise ProcessesDisagreeError(error)
        return
    from jax.experimental import multihost_utils

    data = (error or "").encode("utf-8", "replace")[:MESSAGE_BYTES]
    row = np.zeros(MESSAGE_BYTES + 1, np.uint8)
    row[0] = error is not None
    row[1:1 + len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(row))
    failed = [p for p in range(rows.shape[0]) if rows[p, 0]]
    if failed:
        p = failed[0]
        message = bytes(rows[p, 1:]).rstrip(b"\0").decode("utf-8", "replace")
        others = f" (and processes {failed[1:]})" if len(failed) > 1 else ""
        raise ProcessesDisagreeError(f"{name}: process {p} of {rows.shape[0]}{others}: {message}")


def agree_on(values: Mapping[str, object], name: str) -> None:
    """Check that every process holds the same ``values`` (JSON-serialisable), by digests.

    Each process all-gathers an 8-byte digest per key (sorted), so the message can name
    the keys on which the processes differ without sending the values.

    Raises:
      ProcessesDisagreeError: on every process, naming the keys and the processes that differ.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    keys = sorted(values)
    digests = np.stack([np.frombuffer(hashlib.sha256(
        (key + "=" + json.dumps(values[key], sort_keys=True, default=repr)).encode()).digest()[:8], np.uint8)
        for key in keys])
    shape = np.asarray(multihost_utils.process_allgather(np.array([len(keys)], np.int64)))
    if len(set(shape.reshape(-1).tolist())) != 1:
        raise ProcessesDisagreeError(f"{name}: the processes disagree on the number of fields "
                                     f"({shape.reshape(-1).tolist()})")
    rows = np.asarray(multihost_utils.process_allgather(digests))  # (processes, keys, 8)
    differ = [key for k, key in enumerate(keys) if not (rows[:, k] == rows[0, k]).all()]
    if differ:
        procs = [p for p in range(rows.shape[0]) if not (rows[p] == rows[0]).all()]
        raise ProcessesDisagreeError(f"{name}: the processes disagree on {', '.join(differ)} "
                                     f"(processes {procs} differ from process 0); start every process "
                                     "with the same options")


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def together(name: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` on this process; with several processes, every one learns whether any failed.

    With one process, ``fn``'s exception propagates as it is. With several, a failure on
    any process raises :class:`ProcessesDisagreeError` with the same message on every
    process (the failing one chains its original exception), instead of leaving the
    others blocked in their next barrier.
    """
    if jax.process_count() == 1:
        return fn()
    try:
        result, error, cause = fn(), None, None
    except Exception as err:  # noqa: BLE001 -- every failure must reach the other processes
        result, error, cause = None, _one_line(err), err
    try:
        agree(error, name)
    except ProcessesDisagreeError as err:
        raise err from cause
    return result
