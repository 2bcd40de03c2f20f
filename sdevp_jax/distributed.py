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

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_sharding", "initialize", "barrier"]


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
