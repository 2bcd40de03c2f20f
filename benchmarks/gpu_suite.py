"""The GPU suite: every accelerator number the README asks for, in one command that fits a lent device's time.

Run from the repository root with the project on ``PYTHONPATH`` (it is not pip-installed there)::

    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python benchmarks/gpu_suite.py --out OUT --budget-s 420

Rows, most important first (each its own subprocess with its own timeout; a failed
row is recorded as an error and the rest still run):

1. ``sv.sample`` vs diffusers' ``ScoreSdeVpScheduler`` (a Python loop in torch on
   CUDA, ``speed_torch.py --device cuda``, the same analytic eps-model in torch)
   vs a jitted step in a Python loop, at (256, 3072), (16, 2) and (1024, 12288),
   1000 steps, float32, the one-Gaussian model (``speed.py worker``);
2. ``sv.sample`` with scan ``unroll`` 4 and 8, and with bfloat16 samples;
3. the scheduler's share of a step of the small Flax UNet (``unet.py``):
   ``sv.sample`` with the UNet against the same scan evaluating only the UNet;
4. ``sv.sample_ode(method="dpm_solver")`` at 10 network evaluations.

Each row: median and [min, max] of ``--repeats`` (>= 5) timed runs after a
warm-up, the compile time separately where it can be separated (``sv`` rows,
ahead-of-time ``lower().compile()``) and the first call (compile + one run)
otherwise, the device name and the JAX / torch versions. Every row of
``gpu_suite.json`` has the keys of ``ROW_KEYS`` whatever its implementation or
outcome (``None`` where a key does not apply: ``jax`` on the torch row,
``compile_s`` where compilation is not separated, every measurement on an error
or skipped row); ``device_kind`` is JAX's ``device_kind`` or torch's device
name, ``platform`` ``"gpu"`` or ``"cpu"``. The results are
rewritten after every row (``gpu_suite.json``, ``gpu_suite.md``, and
``gpu_suite.log``, the progress lines), so a run killed at its time limit still
leaves what it measured. When less than ``--min-row-s`` of ``--budget-s`` is
left, the remaining rows are recorded as "skipped: budget".

``--tiny`` is the CPU dry run the test suite runs: tiny shapes, 5 steps, 2
repeats, one row of each kind but the UNet pair (its worker, ``speed.py``'s, is
smoke-tested on its own: compiling the UNet would double the dry run's time);
without torch/diffusers the diffusers row is recorded as an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from speed import fmt_shape, write_atomic  # noqa: E402  (stdlib-only at import; no JAX backend starts)

TARGET, SMALL, LARGE = "256,3072", "16,2", "1024,12288"
UNET = "16,3,32,32"
TARGETS = {"speedup_vs_diffusers": 50.0, "small_us_per_step": 6.0, "scheduler_share": 0.01}


def rows_for(tiny: bool) -> list[dict]:
    """The suite's rows in the order they run (the target rows first)."""
    def row(rid, label, impl, shape, steps, *extra):
        return {"id": rid, "label": label, "impl": impl, "shape": shape, "steps": steps, "extra": list(extra)}

    if tiny:
        t, s, n = "4,8", "2,2", 5
        return [row("sv_target", "sv.sample", "sv", t, n), row("diffusers_target", "diffusers (torch loop)",
                "diffusers", t, n), row("naive_target", "jitted step, Python loop", "naive", t, n),
                row("sv_small", "sv.sample", "sv", s, n),
                row("unroll4_small", "sv.sample unroll 4", "sv", s, n, "--unroll", "4"),
                row("bf16_target", "sv.sample bfloat16", "sv", t, n, "--dtype", "bfloat16"),
                row("dpm10_target", "sample_ode dpm_solver, 10 NFE", "dpm_solver", t, 10)]
    out = []
    for name, shape in (("target", TARGET), ("small", SMALL), ("large", LARGE)):
        out += [row(f"sv_{name}", "sv.sample (default unroll)", "sv", shape, 1000),
                row(f"diffusers_{name}", "diffusers (torch loop)", "diffusers", shape, 1000),
                row(f"naive_{name}", "jitted step, Python loop", "naive", shape, 1000)]
    for name, shape in (("target", TARGET), ("small", SMALL)):
        out += [row(f"unroll{u}_{name}", f"sv.sample unroll {u}", "sv", shape, 1000, "--unroll", str(u))
                for u in (1, 4, 8)]
    out += [row(f"bf16_{name}", "sv.sample bfloat16", "sv", shape, 1000, "--dtype", "bfloat16")
            for name, shape in (("target", TARGET), ("small", SMALL))]
    out += [row("unet_sv", "UNet + sv.sample (default unroll)", "unet_sv", UNET, 100),
            row("unet_model", "UNet alone (scan, same unroll)", "unet_model", UNET, 100),
            row("unet1_sv", "UNet + sv.sample, unroll 1", "unet_sv", UNET, 100, "--unroll", "1"),
            row("unet1_model", "UNet alone (scan), unroll 1", "unet_model", UNET, 100, "--unroll", "1"),
            row("dpm10_target", "sample_ode dpm_solver, 10 NFE", "dpm_solver", TARGET, 10),
            row("dpm10_small", "sample_ode dpm_solver, 10 NFE", "dpm_solver", SMALL, 10)]
    return out


#: The keys of every row of gpu_suite.json: the row's spec, its outcome, its measurement, its environment.
SPEC_KEYS = ("id", "label", "impl", "shape", "steps", "extra")
ROW_KEYS = SPEC_KEYS + (
    "status", "wall_s", "error_tail",
    "per_step_median_us", "per_step_min_us", "per_step_max_us", "times_s", "first_call_s", "compile_s",
    "nfe", "model", "dtype", "prng", "unroll", "temp_bytes", "argument_bytes", "threads",
    "device_kind", "platform", "jax", "torch",
)


def record(row: dict, status: str, wall_s=None, result=None, error_tail=None) -> dict:
    """``row`` (its spec) as a row of the results: exactly ``ROW_KEYS``, ``None`` where a key does not apply.

    ``result`` is a worker's JSON line. The spec's own keys win over the worker's (its ``shape`` is a
    list there). torch's worker names its device ``device_name`` and its type ``device``: they become
    ``device_kind`` and ``platform``, as JAX's. A worker's key outside ``ROW_KEYS`` is an error here,
    so that a new measurement is added to the schema, not to some rows only.
    """
    result = dict(result or {})
    if "device_name" in result:
        result["device_kind"] = result.pop("device_name")
        result["platform"] = "gpu" if result.pop("device", "cpu").startswith("cuda") else "cpu"
    unknown = set(result) - set(ROW_KEYS)
    if unknown:
        raise ValueError(f"the worker's keys {sorted(unknown)} are not in ROW_KEYS")
    out = dict.fromkeys(ROW_KEYS)
    out.update({k: v for k, v in result.items() if k not in SPEC_KEYS})
    out.update({k: row[k] for k in SPEC_KEYS}, status=status, wall_s=wall_s, error_tail=error_tail)
    return out


# ---------------------------------------------------------------- worker (one row, in its own process)


def worker(argv: list[str]) -> dict:
    """Time one JAX row; ``speed.py``'s worker for everything but dpm_solver. Adds device and versions."""
    import jax

    import speed

    p = argparse.ArgumentParser()
    p.add_argument("--impl", required=True)
    p.add_argument("--shape", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--repeats", type=int, required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--unroll", type=int, default=None)
    a = p.parse_args(argv)
    if a.impl == "dpm_solver":
        result = dpm_worker(a)
    else:
        result = speed.worker(argparse.Namespace(impl=a.impl, shape=a.shape, steps=a.steps, repeats=a.repeats,
                                                 model="gaussian", dtype=a.dtype, prng="threefry", unroll=a.unroll))
    device = jax.devices()[0]
    result.update(device_kind=device.device_kind, platform=device.platform, jax=jax.__version__)
    return result


def dpm_worker(a) -> dict:
    """``sample_ode(method="dpm_solver")`` with ``steps`` network evaluations (``steps + 1`` grid points)."""
    import jax
    import jax.numpy as jnp

    import sdevp_jax as sv

    mx = getattr(sv, "mixtures", sv)  # the toy mixtures' namespace; the top level in releases before it
    import speed

    shape = tuple(int(s) for s in a.shape.split(","))
    state = sv.set_timesteps(sv.create_state(), a.steps + 1)
    model_fn = mx.make_mixture_eps_fn(state, speed.make_mixture("gaussian", math.prod(shape[1:])))
    key = jax.random.key(0)
    f = jax.jit(lambda st, k: sv.sample_ode(st, model_fn, k, shape, method="dpm_solver", dtype=jnp.dtype(a.dtype)))
    start = time.perf_counter()
    compiled = f.lower(state, key).compile()
    compile_s = time.perf_counter() - start
    first, times = speed.timed(lambda: compiled(state, key), a.repeats)
    return {"impl": "dpm_solver", "shape": list(shape), "steps": a.steps, "nfe": a.steps, "dtype": a.dtype,
            "compile_s": compile_s, "first_call_s": first, "times_s": times,
            "per_step_median_us": statistics.median(times) / a.steps * 1e6,
            "per_step_min_us": min(times) / a.steps * 1e6, "per_step_max_us": max(times) / a.steps * 1e6}


# ---------------------------------------------------------------- runner


def command_for(row: dict, args) -> list[str]:
    common = ["--shape", row["shape"], "--steps", str(row["steps"]), "--repeats", str(args.repeats)]
    if row["impl"] == "diffusers":
        return [sys.executable, str(HERE / "speed_torch.py"), *common, "--device", args.torch_device]
    return [sys.executable, str(Path(__file__).resolve()), "worker", "--impl", row["impl"], *common, *row["extra"]]


def run_row(row: dict, args, timeout: float) -> dict:
    """Run one row's subprocess; returns the row with its measurement or its error."""
    cmd = command_for(row, args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return record(row, f"error: timeout after {timeout:.0f} s", time.perf_counter() - start)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1][:300]
        return record(row, f"error: exit {proc.returncode}: {tail}", wall, error_tail=proc.stderr[-3000:])
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return record(row, "error: no JSON line", wall, error_tail=proc.stdout[-2000:])
    try:
        return record(row, "ok", wall, result)
    except ValueError as err:  # a worker's key outside the schema: the row says so, the suite goes on
        return record(row, f"error: {err}", wall, error_tail=lines[-1][-2000:])


def ratio(rows: dict, num: str, den: str):
    a, b = rows.get(num), rows.get(den)
    if a and b and a["status"] == b["status"] == "ok":
        return a["per_step_median_us"] / b["per_step_median_us"]
    return None


def verdicts(results: dict) -> list[dict]:
    """The README's three accelerator targets, each measured or 'not measured yet'."""
    rows = {r["id"]: r for r in results["rows"]}
    speedup = ratio(rows, "diffusers_target", "sv_target")
    small = rows.get("sv_small")
    small_us = small["per_step_median_us"] if small and small["status"] == "ok" else None
    model_over_step = ratio(rows, "unet_model", "unet_sv")
    share = None if model_over_step is None else 1.0 - model_over_step
    return [
        {"target": f"sv.sample >= {TARGETS['speedup_vs_diffusers']:.0f}x faster than diffusers at "
                   f"{fmt_shape(TARGET.split(','))}",
         "value": speedup, "text": None if speedup is None else f"{speedup:.1f}x",
         "met": None if speedup is None else speedup >= TARGETS["speedup_vs_diffusers"]},
        {"target": f"sv.sample <= {TARGETS['small_us_per_step']:.0f} µs per step at {fmt_shape(SMALL.split(','))}",
         "value": small_us, "text": None if small_us is None else f"{small_us:.2f} µs",
         "met": None if small_us is None else small_us <= TARGETS["small_us_per_step"]},
        {"target": f"scheduler <= {100 * TARGETS['scheduler_share']:.0f}% of a small-UNet step "
                   f"{fmt_shape(UNET.split(','))} (a negative share is timing noise)",
         "value": share, "text": None if share is None else f"{100 * share:.2f}%",
         "met": None if share is None else share <= TARGETS["scheduler_share"]},
    ]


def markdown(results: dict) -> str:
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    jax_dev = next((r["device_kind"] for r in ok if r["jax"]), "not measured")
    torch_dev = next((f"{r['device_kind']} (torch {r['torch']})" for r in ok if r["torch"]), "not measured")
    jax_version = next((r["jax"] for r in ok if r["jax"]), results["jax"])
    out = ["# GPU suite: sv.sample against diffusers on one accelerator", "",
           f"Command: `{results['command']}`  ",
           f"JAX device: {jax_dev} (JAX {jax_version}); torch device: {torch_dev}.  ",
           f"Each row its own process: warm-up, then {results['repeats']} timed runs, median [min, max] per step "
           "(per network evaluation for dpm_solver). Model: the one-Gaussian exact eps-model N(0.5, 0.5² I), "
           "float32 unless stated. Compile: ahead-of-time `lower().compile()`; first call: compile + one run.  ",
           f"Elapsed {results['elapsed_s']:.0f} s of a {results['budget_s']:.0f} s budget"
           f"{'' if results['finished'] else ' (in progress or killed: rows below are what finished)'}.", "",
           "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for v in verdicts(results):
        met = "not measured yet" if v["met"] is None else ("yes" if v["met"] else "no")
        out.append(f"| {v['target']} | {v['text'] or 'not measured yet'} | {met} |")
    out += ["", "## Rows", "",
            "| # | row | shape | steps | µs per step, median [min, max] | ms per call | ÷ sv.sample (same shape) | "
            "compile (s) | first call (s) | device | status |",
            "|---:|---|---|---:|---|---:|---:|---:|---:|---|---|"]
    by_id = {r["id"]: r for r in results["rows"]}
    for i, r in enumerate(results["rows"], 1):
        shape = fmt_shape(r["shape"].split(",")) if isinstance(r["shape"], str) else fmt_shape(r["shape"])
        if r["status"] != "ok":
            out.append(f"| {i} | {r['label']} | {shape} | {r['steps']} | | | | | | | {r['status'][:160]} |")
            continue
        base = by_id.get("sv_" + r["id"].rsplit("_", 1)[-1])
        comparable = r["impl"] in ("sv", "naive", "diffusers") and base is not None and base["status"] == "ok"
        rel = f"{r['per_step_median_us'] / base['per_step_median_us']:.2f}" if comparable else ""
        compile_s = f"{r['compile_s']:.2f}" if r["compile_s"] is not None else ""
        device = r["device_kind"] or ""
        out.append(f"| {i} | {r['label']} | {shape} | {r['steps']} | {r['per_step_median_us']:.2f} "
                   f"[{r['per_step_min_us']:.2f}, {r['per_step_max_us']:.2f}] | "
                   f"{statistics.median(r['times_s']) * 1e3:.2f} | {rel} | {compile_s} | {r['first_call_s']:.2f} | "
                   f"{device} | ok |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        print(json.dumps(worker(argv[1:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_suite.{json,md,log}")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the remaining rows past this")
    parser.add_argument("--min-row-s", type=float, default=None,
                        help="start a row only with this much budget left (default 20 s; 0 with --tiny)")
    parser.add_argument("--row-timeout-s", type=float, default=150.0, help="one row's limit (also <= budget left)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 7; 2 with --tiny)")
    parser.add_argument("--torch-device", default=None, help="diffusers' device (default cuda; cpu with --tiny)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these row ids")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny shapes, few steps")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.tiny else 7)
    args.torch_device = args.torch_device or ("cpu" if args.tiny else "cuda")
    min_row_s = args.min_row_s if args.min_row_s is not None else (0.0 if args.tiny else 20.0)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {ext: args.out / f"gpu_suite.{ext}" for ext in ("json", "md", "log")}
    log = paths["log"].open("w")

    def say(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    import jax  # the version only: no backend starts in this process (the rows own the device)

    rows = [r for r in rows_for(args.tiny) if args.only is None or r["id"] in args.only]
    command = "python benchmarks/gpu_suite.py " + " ".join(argv)
    results = {"command": command, "jax": jax.__version__, "python": sys.version.split()[0],
               "budget_s": args.budget_s, "repeats": args.repeats, "tiny": args.tiny, "finished": False,
               "elapsed_s": 0.0, "rows": [record(r, "pending") for r in rows]}

    def save() -> None:
        write_atomic(paths["json"], json.dumps(results, indent=1) + "\n")
        write_atomic(paths["md"], markdown(results))

    start = time.perf_counter()
    say(f"gpu_suite: {len(rows)} rows, budget {args.budget_s:.0f} s, repeats {args.repeats}")
    for i, row in enumerate(rows):
        left = args.budget_s - (time.perf_counter() - start)
        if left < max(min_row_s, 1e-9):
            results["rows"][i] = record(row, "skipped: budget")
            say(f"[{i + 1}/{len(rows)}] {row['id']}: skipped: budget ({left:.0f} s left)")
        else:
            results["rows"][i] = done = run_row(row, args, min(args.row_timeout_s, left))
            if done["status"] == "ok":
                say(f"[{i + 1}/{len(rows)}] {row['id']} {row['shape']} x{row['steps']}: "
                    f"{done['per_step_median_us']:.2f} us/step [{done['per_step_min_us']:.2f}, "
                    f"{done['per_step_max_us']:.2f}], {done['wall_s']:.1f} s")
            else:
                say(f"[{i + 1}/{len(rows)}] {row['id']}: {done['status'][:300]}")
        results["elapsed_s"] = time.perf_counter() - start
        save()
    results["finished"] = True
    save()
    for v in verdicts(results):
        say(f"target: {v['target']}: {v['text'] or 'not measured yet'}")
    say(f"wrote {paths['json']} {paths['md']} {paths['log']} in {results['elapsed_s']:.0f} s")
    log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
