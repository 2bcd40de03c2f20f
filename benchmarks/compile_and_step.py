"""Compile time and per-step time of ``sv.sample`` / ``sv.sample_ode``, two versions of the package side by side.

Each measurement runs in its own process with one version on ``PYTHONPATH`` (a checkout
of each), the versions interleaved round by round, so that machine noise hits both
alike; the result is the ratio new/old of the medians. A worker prints one JSON line::

    python benchmarks/compile_and_step.py worker --config "sample_ode unipc"

The runner::

    python benchmarks/compile_and_step.py run --old /path/to/old/checkout --new . --rounds 3 \\
        --out benchmarks/results

writes ``compile_and_step.json`` and ``.md``. Compile time is ``jax.jit(f).lower(...).compile()``
wall time (a fresh process: no cache); the step time is the median of 5 timed calls after one
warm-up, divided by the steps. Model: the embedded default mixture in 64 dimensions, batch 256,
float32.
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

CONFIGS = {
    "sample euler_maruyama": ("sample", 200, {}),
    "sample pc langevin": ("sample", 200, {"corrector": "langevin"}),
    "sample_ode dpm_solver": ("sample_ode", 50, {"method": "dpm_solver"}),
    "sample_ode heun": ("sample_ode", 50, {"method": "heun"}),
    "sample_ode ddim": ("sample_ode", 50, {"method": "ddim"}),
    "sample_ode dpm_solver_pp": ("sample_ode", 50, {"method": "dpm_solver_pp", "order": 3}),
    "sample_ode unipc": ("sample_ode", 50, {"method": "unipc"}),
}
SHAPE = (256, 64)


def worker(config: str) -> dict:
    import jax

    import sdevp_jax as sv

    mx = getattr(sv, "mixtures", sv)  # the toy mixtures' namespace; the top level in releases before it

    name, steps, options = CONFIGS[config]
    state = sv.set_timesteps(sv.create_state(), steps)
    model_fn = mx.make_mixture_eps_fn(state, mx.default_mixture(SHAPE[1]))
    fn = getattr(sv, name)
    jitted = jax.jit(lambda st, key: fn(st, model_fn, key, SHAPE, **options))
    start = time.perf_counter()
    compiled = jitted.lower(state, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - start
    compiled(state, jax.random.key(0)).block_until_ready()
    times = []
    for i in range(5):
        start = time.perf_counter()
        compiled(state, jax.random.key(i + 1)).block_until_ready()
        times.append(time.perf_counter() - start)
    return {"config": config, "compile_s": compile_s, "step_us": statistics.median(times) / steps * 1e6,
            "version": sv.__version__}


def run(args) -> None:
    rows = {(c, v): [] for c in CONFIGS for v in ("old", "new")}
    for _ in range(args.rounds):
        for config in CONFIGS:
            for version, path in (("old", args.old), ("new", args.new)):
                env = os.environ | {"PYTHONPATH": str(Path(path).resolve())}
                out = subprocess.run([sys.executable, __file__, "worker", "--config", config], env=env,
                                     capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                rows[(config, version)].append(json.loads(out))
    result, lines = [], ["| configuration | compile old (s) | compile new (s) | ratio | step old (µs) | "
                         "step new (µs) | ratio |", "|---|---|---|---|---|---|---|"]
    for config in CONFIGS:
        med = {v: {k: statistics.median(r[k] for r in rows[(config, v)]) for k in ("compile_s", "step_us")}
               for v in ("old", "new")}
        spread = {v: {k: (min(r[k] for r in rows[(config, v)]), max(r[k] for r in rows[(config, v)]))
                      for k in ("compile_s", "step_us")} for v in ("old", "new")}
        result.append({"config": config, "median": med, "min_max": spread})
        lines.append(f"| {config} | {med['old']['compile_s']:.2f} | {med['new']['compile_s']:.2f} | "
                     f"{med['new']['compile_s'] / med['old']['compile_s']:.2f} | {med['old']['step_us']:.1f} | "
                     f"{med['new']['step_us']:.1f} | {med['new']['step_us'] / med['old']['step_us']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_and_step.json").write_text(json.dumps(result, indent=1))
    (out / "compile_and_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--config", required=True, choices=list(CONFIGS))
    r = sub.add_parser("run")
    r.add_argument("--old", required=True)
    r.add_argument("--new", default=".")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.command == "worker":
        print(json.dumps(worker(args.config)))
    else:
        run(args)
