"""Per-step and compile time of ``sv.sample`` in two checkouts, side by side: each tree's own ``speed.py`` worker.

    python benchmarks/speed_before_after.py OLD_TREE NEW_TREE [--shapes 256,3072@1000 16,2@1000] [--rounds 3]
        [--repeats 3] [--out FILE.jsonl]

Every measurement is a fresh process (``python TREE/benchmarks/speed.py worker --impl sv``
with ``TREE`` on ``PYTHONPATH``), old and new interleaved within each round, so the
machine's drift falls on both alike. Prints a Markdown table: per-step median [min, max]
over the rounds (each round's value is the worker's median of ``--repeats`` runs), the
ratio new/old per round (median [min, max]), compile time and compiled temporary memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def measure(tree: Path, shape: str, steps: int, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(tree / "benchmarks" / "speed.py"), "worker", "--impl", "sv", "--shape", shape,
           "--steps", str(steps), "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def span(values, fmt="{:.1f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--shapes", nargs="+", default=["256,3072@1000", "16,2@1000", "64,3,64,64@200"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="also write every measurement as JSON lines")
    args = p.parse_args(argv)
    args.old, args.new = args.old.resolve(), args.new.resolve()
    rows = []
    for r in range(args.rounds):
        for spec in args.shapes:
            shape, steps = spec.split("@")
            for tree in ("old", "new"):
                row = measure(getattr(args, tree), shape, int(steps), args.repeats)
                rows.append({"round": r, "tree": tree, "spec": spec, **row})
    if args.out:
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print("| shape @ steps | per step, old (µs) | per step, new (µs) | new/old | compile old / new (s) | temp bytes old / new |")
    print("|---|---|---|---|---|---|")
    for spec in args.shapes:
        old = [x for x in rows if x["spec"] == spec and x["tree"] == "old"]
        new = [x for x in rows if x["spec"] == spec and x["tree"] == "new"]
        ratio = [n["per_step_median_us"] / o["per_step_median_us"] for o, n in zip(old, new)]
        print(f"| {spec} | {span([x['per_step_median_us'] for x in old])} | {span([x['per_step_median_us'] for x in new])} "
              f"| {span(ratio, '{:.2f}')} | {statistics.median(x['compile_s'] for x in old):.2f} / "
              f"{statistics.median(x['compile_s'] for x in new):.2f} | {old[0].get('temp_bytes')} / {new[0].get('temp_bytes')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
