"""Decide sv.sample's options by measurement: PRNG implementation, scan unrolling, bfloat16.

Each configuration runs in its own process through ``speed.py worker`` (sv.sample,
the Gaussian model, float32 unless stated), at each ``--shapes`` entry; the table
gives the per-step median and [min, max] over ``--repeats`` runs, the compile time,
and the ratio to the default configuration (threefry, unroll 1, float32) measured
in the same run. Writes ``options.json`` and ``options.md`` under ``--out``::

    python benchmarks/options.py --force

Buffer donation is not measured: ``sample``'s only array inputs are the key and
the timestep grid (the loop's carry is internal, and XLA updates it in place), so
there is nothing to donate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import environment, fmt_shape, launch, write_atomic  # noqa: E402

CONFIGS = [
    ("default: threefry, unroll 1, float32", []),
    ("prng rbg", ["--prng", "rbg"]),
    ("prng unsafe_rbg", ["--prng", "unsafe_rbg"]),
    ("unroll 2", ["--unroll", "2"]),
    ("unroll 4", ["--unroll", "4"]),
    ("unroll 8", ["--unroll", "8"]),
    ("bfloat16 samples", ["--dtype", "bfloat16"]),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["16,2", "256,3072"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    paths = [args.out / "options.json", args.out / "options.md"]
    if any(p.exists() for p in paths) and not args.force:
        print(f"options: {args.out}/options.* exist; pass --force to overwrite", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes:
        for label, extra in CONFIGS:
            row = launch(["worker", "--impl", "sv", "--shape", shape, "--steps", str(args.steps),
                          "--repeats", str(args.repeats), *extra], sys.executable, HERE / "speed.py")
            if row is not None:
                row["config"] = label
                rows.append(row)
                print(f"{shape:10s} {label:38s} {row['per_step_median_us']:9.2f} us/step, "
                      f"compile {row['compile_s']:.2f} s", flush=True)
    env = environment()
    command = "python benchmarks/options.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = ["# sv.sample options, measured", "", f"Command: `{command.strip()}`  ",
           f"Machine: {env['machine']} ({env['processor']}, {env['cores']} cores), backend {env['backend']}, "
           f"JAX {env['jax']}. {args.steps} steps, Gaussian model; median [min, max] of {args.repeats} runs.", "",
           "| shape | configuration | µs per step, median [min, max] | ÷ default | compile (s) |",
           "|---|---|---|---:|---:|"]
    for shape in args.shapes:
        these = [r for r in rows if ",".join(map(str, r["shape"])) == shape]
        base = next((r for r in these if r["config"].startswith("default")), None)
        for r in these:
            ratio = f"{r['per_step_median_us'] / base['per_step_median_us']:.2f}" if base else ""
            out.append(f"| {fmt_shape(r['shape'])} | {r['config']} | {r['per_step_median_us']:.2f} "
                       f"[{r['per_step_min_us']:.2f}, {r['per_step_max_us']:.2f}] | {ratio} | {r['compile_s']:.2f} |")
    out += ["", "GPU: not measured yet (no accelerator was lent to the session that ran this)."]
    write_atomic(paths[0], json.dumps({"environment": env, "command": command.strip(), "rows": rows}, indent=1) + "\n")
    write_atomic(paths[1], "\n".join(out) + "\n")
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
