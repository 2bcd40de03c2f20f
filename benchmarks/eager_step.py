"""Time an eager (un-jitted) Python loop of ``sv.step_pred``: the diffusers-style migration path.

Each step of such a loop dispatches a handful of small XLA computations; before
issue 14 it also read ``t`` back to the host to validate it (``bool(jnp.all(...))``),
which waits for the device to finish every step. This script measures the loop's
cost per step, in microseconds, for one or more copies of the package
(``--variant NAME=SRC_DIR``, each worker run with ``PYTHONPATH=SRC_DIR`` in its own
process; ``current`` is this checkout), interleaved over ``--rounds`` so that the
machine's drift hits every variant alike. Writes ``eager_step.json`` and
``eager_step.md`` under ``--out``::

    mkdir /tmp/i14b_before; git archive eae2744 | tar -x -C /tmp/i14b_before     # the code before the change
    python benchmarks/eager_step.py --variant before=/tmp/i14b_before --force

The loop is ``for t in state.timesteps: x, _ = sv.step_pred(state, eps, x, t, None, noise=z)``
with a fixed ``eps`` and ``z`` of shape ``--shape`` (no model: only the step's
own overhead is timed), ``--steps`` steps, ``x`` blocked on once at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def worker(shape: tuple[int, ...], steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    import sdevp_jax as sv

    state = sv.set_timesteps(sv.create_state(), steps)
    eps = jnp.full(shape, 0.1, jnp.float32)
    z = jnp.full(shape, -0.2, jnp.float32)

    def run() -> float:
        x = jnp.ones(shape, jnp.float32)
        start = time.perf_counter()
        for t in state.timesteps:
            x, _ = sv.step_pred(state, eps, x, t, None, noise=z)
        x.block_until_ready()
        return time.perf_counter() - start

    run()  # warm-up: compiles every op once
    per_step = [run() / steps * 1e6 for _ in range(repeats)]
    return {"per_step_us": per_step, "device": str(jax.devices()[0]), "sdevp_jax": sv.__file__}


def launch(src: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--shape", args.shape,
           "--steps", str(args.steps), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "worker"])
    parser.add_argument("--shape", default="16,2")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="timed loops per worker")
    parser.add_argument("--rounds", type=int, default=3, help="workers per variant, interleaved")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC_DIR")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    if args.mode == "worker":
        print(json.dumps(worker(shape, args.steps, args.repeats)))
        return 0

    variants = {"current": ROOT} | {name: Path(src) for name, src in (v.split("=", 1) for v in args.variant)}
    paths = [args.out / "eager_step.json", args.out / "eager_step.md"]
    if any(p.exists() for p in paths) and not args.force:
        print(f"eager_step: {args.out}/eager_step.* exist; pass --force to overwrite", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {name: [] for name in variants}
    device = None
    for _ in range(args.rounds):
        for name, src in variants.items():
            result = launch(src, args)
            times[name] += result["per_step_us"]
            device = result["device"]
    sys.path.insert(0, str(HERE))
    from speed import environment, write_atomic  # noqa: E402

    rows = [{"variant": name, "src": str(variants[name]), "median_us": statistics.median(ts),
             "min_us": min(ts), "max_us": max(ts), "runs": len(ts)} for name, ts in times.items()]
    command = "python benchmarks/eager_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"command": command, "environment": environment() | {"device": device}, "shape": list(shape),
              "steps": args.steps, "rows": rows, "per_step_us": times}
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(paths[0], json.dumps(report, indent=1) + "\n")
    lines = [f"# Eager step_pred loop: µs per step ({args.steps} steps, shape {shape}, {device})", "",
             f"Command: `{command}`", "",
             f"Median and [min, max] over {args.rounds} interleaved processes x {args.repeats} loops each.", "",
             "On a CPU backend the device is the host: reading t back costs little next to the",
             "dispatch of the step's ops, so the two variants are expected to agree within noise; the",
             "read-back matters on an accelerator, where it waits for every queued step.", "",
             "| variant | median µs/step | [min, max] |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_us']:.1f} | [{r['min_us']:.1f}, {r['max_us']:.1f}] |" for r in rows]
    write_atomic(paths[1], "\n".join(lines) + "\n")
    for r in rows:
        print(f"{r['variant']:10s} {r['median_us']:8.1f} us/step  [{r['min_us']:.1f}, {r['max_us']:.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
