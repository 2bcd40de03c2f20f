"""Devices and processes: fixed-size pieces on the local devices, a batch sharding, JAX's multi-controller runtime.

Sampling needs no communication between samples (the noise of sample ``b``
depends only on ``(key, b)``), so spreading it out is a matter of placement:

* over the devices of one process, bitwise: :func:`sample_on_devices` cuts the
  batch into pieces of a fixed size and runs each piece as one single-device
  program on its own device. Each piece is bitwise the single-device call of its
  size at its ``index_offset`` in the same process (tests/test_devices.py compares
  the bits on 1, 2, 4 and 8 forced CPU devices, every method, six models). The same
  single-device program in a process with another device count gave the same bits
  for five of the six models; for a Flax conv net a process of 8 forced CPU devices
  gave other bits than a process of 1 (at 24 steps up to 1.8e-4 with the fixed-step
  samplers, 1.1e-2 with the adaptive solver; benchmarks/results/device_count_before.md).
  The optimized HLO is the same: XLA:CPU's convolution splits its work over the
  threads it has, and forced host devices share the machine's cores (on this 2-core
  machine a process of 1 device restricted to one core, ``taskset -c 0``, gives the
  8-device bits). On a GPU or TPU each device is its own chip;
* over the devices of one process, to float rounding: jit ``sample`` /
  ``sample_ode`` with the batch sharded (``out_shardings=batch_sharding()``). Each
  device computes its own shard with no gather, but the devices run ONE program
  partitioned over them, which XLA may fuse and round differently from the
  single-device program of a shard's size. On 2, 4 and 8 forced CPU devices at 24
  steps (samples of size ~1.5), a Gaussian-mixture score written with exp / log /
  softmax gave shards up to 2.9e-5 from the single-device calls with the fixed-step
  samplers and 4.7e-4 with the adaptive ODE solver (its accepted steps move with
  rounding); the embedded mixture up to 6e-7 (``unipc``, 4 devices), otherwise the
  same bits, as a Flax MLP, a Flax conv net and two guided models did in the cases
  measured, which nothing guarantees for other models, shapes or backends.
  tests/test_devices.py holds each shard within 2 P of the single-device calls
  (8 P for the adaptive solver), P the change that a 2-ulp perturbation of the
  model's output makes; benchmarks/results/device_count_before.md has the table per
  model, method and device count. Either way the whole batch equals the
  single-device call of the whole batch to float rounding only (XLA compiles a
  batch of B and of B/n differently; tests/test_invariance.py);
* over processes (hosts), each process computes its own slice of sample
  indices (``index_offset``) -- see :mod:`sdevp_jax.jobs`, whose chunks are
  single-device programs on each local device as :func:`sample_on_devices`' pieces
  are -- after :func:`initialize` has joined them into one JAX runtime;
  :func:`agree`, :func:`agree_on` and :func:`together` make every process stop with
  the same message when one fails or their options differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _checks

__all__ = ["batch_sharding", "sample_on_devices", "initialize", "barrier", "agree", "agree_on", "together",
           "ProcessesDisagreeError"]


def batch_sharding(devices: Optional[Sequence[jax.Device]] = None, axis_name: str = "batch") -> NamedSharding:
    """A sharding that splits the leading (batch) axis over ``devices`` (default: this process's).

    Use it as ``out_shardings`` of a jitted sampler (equal to single-device calls to
    float rounding, see the module docstring); the batch size must be a multiple of the
    number of devices. :func:`sample_on_devices` returns arrays with this sharding.

    Examples:
      >>> sharding = sv.distributed.batch_sharding()   # this process's devices, batch axis split
      >>> state = sv.set_timesteps(sv.create_state(), 10)
      >>> model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture())
      >>> draw = jax.jit(lambda k: sv.sample(state, model_fn, k, (8, 2)), out_shardings=sharding)
      >>> draw(jax.random.key(0)).sharding == sharding
      True
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    return NamedSharding(Mesh(np.array(devices), (axis_name,)), PartitionSpec(axis_name))



def _device_list(devices) -> list:
    """``devices`` (default: this process's) as a checked list of distinct addressable devices."""
    if devices is None:
        return list(jax.local_devices())
    if isinstance(devices, jax.Device):
        raise TypeError(f"devices must be a sequence of jax.Device, got the single device {devices!r}; "
                        "pass [device]")
    try:
        devices = list(devices)
    except TypeError:
        raise TypeError(f"devices must be a sequence of jax.Device or None, got {type(devices).__name__}") from None
    if not devices:
        raise ValueError("devices must not be empty")
    for d in devices:
        if not isinstance(d, jax.Device):
            raise TypeError(f"devices must hold jax.Device objects, got {d!r} of type {type(d).__name__}")
        if d.process_index != jax.process_index():
            raise ValueError(f"devices must be this process's (jax.local_devices()), got {d!r} of process "
                             f"{d.process_index}; each process samples its own slice (index_offset)")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices must be distinct, got {devices}")
    return devices


def sample_on_devices(
    draw: Callable[..., Any],
    key: jax.Array,
    num_samples: int,
    *,
    piece_size: int,
    devices: Optional[Sequence[jax.Device]] = None,
    cond: Any = None,
    index_offset: int = 0,
) -> Any:
    """Draw a global batch as single-device pieces of one size, spread over ``devices``, into one sharded array.

    The batch is cut into ``num_samples / piece_size`` pieces. Piece ``p`` is one
    single-device program of ``piece_size`` rows, ``jax.jit(draw, static_argnums=1)``
    called as ``draw(key, piece_size, o, cond_p)`` with ``o = np.uint32(index_offset + p * piece_size)``
    and ``cond_p`` the piece's rows of ``cond``, its inputs committed to the piece's device
    (``jax.device_put``), so it runs there; device ``d`` of ``devices`` computes the
    contiguous pieces ``[d k, (d + 1) k)``, ``k = num_samples / (piece_size * len(devices))``.
    JAX dispatches asynchronously, so the devices run their pieces concurrently. The
    pieces are assembled, with no gather, into one ``jax.Array`` sharded by
    ``batch_sharding(devices)``: each device's shard is its own pieces, concatenated there.

    Each piece is therefore bitwise the single-device call of ``piece_size`` rows at its
    offset in the same process (the program compiled for another device of the host gives
    the same bits; tests/test_devices.py compares bits on 1, 2, 4 and 8 forced CPU
    devices), so within a process the samples do not depend on how many devices share
    the work. Across processes with other device counts the single-device program itself
    may differ on CPU (see the module docstring). A jit with
    ``out_shardings=batch_sharding()`` instead compiles one program partitioned over the
    devices, which XLA may fuse and round differently (see the module docstring).

    JAX compiles a program per device: a first call compiles ``draw``'s program once for
    each of ``devices`` (serially, as the first piece of each is dispatched); later calls
    with the same ``draw`` object, ``piece_size`` and argument shapes reuse them.

    Example::

        def draw(key, batch, index_offset, cond):
            return sv.sample(state, model_fn, key, (batch, 2), index_offset=index_offset, cond=cond)

        x = sv.distributed.sample_on_devices(draw, jax.random.key(0), 4096, piece_size=512)

    Args:
      draw: ``draw(key, batch, index_offset, cond) -> samples``: ``batch`` is a Python int
        (static), ``index_offset`` a 0-d uint32 array (traced, so every piece shares one
        compilation), ``cond`` the piece's rows of ``cond`` (``None`` without one). It
        returns an array, or a pytree of arrays, each with ``batch`` leading rows
        (e.g. ``sv.sample`` or ``sv.sample_ode``; ``return_info``'s scalar does not qualify).
      key: the PRNG key, passed to every piece unchanged.
      num_samples: the global batch, a positive multiple of ``piece_size * len(devices)``
        (every device holds the same number of whole pieces).
      piece_size: rows per piece, an int >= 1: the unit whose bits do not depend on the
        device count (as a job's ``batch_size`` is).
      devices: distinct devices of this process, default ``jax.local_devices()``.
      cond: ``None`` or the samples' conditions: a pytree whose every leaf has ``num_samples``
        leading rows (row ``b`` is sample ``index_offset + b``'s); piece ``p`` gets rows
        ``[p * piece_size, (p + 1) * piece_size)``.
      index_offset: the global index of the first sample, an int >= 0 with
        ``index_offset + num_samples <= 2**32`` (e.g. a process's slice of a larger job).

    Returns:
      ``draw``'s output for the whole batch: arrays of ``num_samples`` rows, sharded over
      ``devices`` by :func:`batch_sharding`.
    """
    if not callable(draw):
        raise TypeError(f"draw must be callable as draw(key, batch, index_offset, cond), got {type(draw).__name__}")
    devices = _device_list(devices)
    num_samples = _checks.int_at_least("num_samples", num_samples, 1)
    piece_size = _checks.int_at_least("piece_size", piece_size, 1)
    index_offset = _checks.int_at_least("index_offset", index_offset, 0)
    unit = piece_size * len(devices)
    if num_samples % unit:
        raise ValueError(
            f"num_samples must be a multiple of piece_size * len(devices) = {piece_size} * {len(devices)} = {unit} "
            f"(each device holds the same number of whole pieces), got {num_samples}; "
            f"the next multiple is {-(-num_samples // unit) * unit}"
        )
    if index_offset + num_samples > 2**32:
        raise ValueError(f"index_offset + num_samples must be <= 2**32 (sample indices are uint32), got "
                         f"{index_offset} + {num_samples}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) == 0 or shape[0] != num_samples:
            where = jax.tree_util.keystr(path) or "cond"
            raise ValueError(f"every leaf of cond must have num_samples = {num_samples} leading rows; "
                             f"{where} has shape {shape}")

    def piece_cond(p):
        return jax.tree.map(lambda c: c[p * piece_size:(p + 1) * piece_size], cond)

    program = jax.jit(draw, static_argnums=1)
    out = program.eval_shape(key, piece_size, np.uint32(index_offset), piece_cond(0))
    for path, leaf in jax.tree_util.tree_leaves_with_path(out):
        if len(leaf.shape) == 0 or leaf.shape[0] != piece_size:
            where = jax.tree_util.keystr(path) or "its output"
            raise ValueError(f"draw(key, {piece_size}, index_offset, cond) must return arrays of piece_size = "
                             f"{piece_size} leading rows; {where} has shape {leaf.shape}")

    per_device = num_samples // unit
    keys = [jax.device_put(key, d) for d in devices]

    def run(i, j):
        """Dispatch piece ``j`` of device ``i`` (returns once it is enqueued, or compiled on a first call)."""
        p = i * per_device + j
        offset = jax.device_put(np.uint32(index_offset + p * piece_size), devices[i])
        return program(keys[i], piece_size, offset, jax.device_put(piece_cond(p), devices[i]))

    # Round-robin over the devices, so that each gets its first piece at once. A device's first call
    # compiles the program for it (on the calling thread); after that a call only enqueues the piece.
    pieces = [[None] * per_device for _ in devices]
    for j in range(per_device):
        for i in range(len(devices)):
            pieces[i][j] = run(i, j)
    sharding = batch_sharding(devices)
    flat_pieces = [[jax.tree.leaves(piece) for piece in row] for row in pieces]

    def assemble(n, leaf_shape):
        """Leaf ``n`` of every piece: each device's pieces concatenated on that device, then one array."""
        blocks = []
        for row in flat_pieces:
            parts = [leaves[n] for leaves in row]
            blocks.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts))
        return jax.make_array_from_single_device_arrays((num_samples, *leaf_shape[1:]), sharding, blocks)

    flat, treedef = jax.tree.flatten(out)
    return jax.tree.unflatten(treedef, [assemble(n, leaf.shape) for n, leaf in enumerate(flat)])


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join this process to a multi-process JAX runtime (``jax.distributed.initialize``).

    Call before any other JAX work. On CPU it selects the gloo collectives, which
    :func:`barrier` needs there.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service.
      num_processes: the number of processes, >= 1.
      process_id: this process's id, in ``[0, num_processes)``.

    Examples:
      >>> sv.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP
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
    """Wait until every process of the runtime reaches the barrier ``name`` (no-op for one process).

    Examples:
      >>> sv.distributed.barrier("chunks-written")   # one process: returns at once
    """
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

    Examples:
      >>> sv.distributed.agree(None, "step-1")   # nobody failed: returns
      >>> try:
      ...     sv.distributed.agree("chunk 3: disk full", "step-2")
      ... except Exception as e:
      ...     print(type(e).__name__, e)
      ...
      ProcessesDisagreeError chunk 3: disk full
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

    Examples:
      >>> sv.distributed.agree_on({"seed": 0, "steps": 10}, "options")   # one process: agrees with itself
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

    Examples:
      >>> sv.distributed.together("compile", lambda: 1 + 1)
      2
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
