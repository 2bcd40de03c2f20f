"""Does the device count change the samples? Three ways of sampling on 1, 2, 4 and 8 forced CPU devices.

For each model of tests/device_models.py (the embedded mixture, a hand-written
exp / log / softmax mixture, a Flax MLP, a Flax conv net, two guided models), each
method and each device count (its own process: ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
is read when JAX starts), the table says whether the samples are bitwise those of
one device, else the largest absolute difference:

* ``out_shardings``: ``jax.jit(draw, out_shardings=batch_sharding())`` of the whole
  batch, one program partitioned over the devices, against single-device calls of
  each shard's size at its ``index_offset`` (in the same process);
* ``sample_on_devices``: ``sv.distributed.sample_on_devices`` with pieces of
  ``--piece`` rows, against single-device calls of the pieces in the process of one
  device ("n/a" for a checkout without it);
* ``job``: ``sv.run_job`` of a small JobSpec (the model passed as ``model_fn``; a guided
  model with ``class_label=1``) into a temporary directory, its ``samples.npz`` against
  the job run in the process of one device. The script only calls ``run_job`` and reads
  ``samples.npz``, so it runs against any version of the jobs module.

``--repo PATH`` (or ``LABEL=PATH``, repeatable) imports ``sdevp_jax`` from another
checkout; the models always come from this checkout's tests/device_models.py.
``--throughput`` times ``run_job`` (by default 16384 samples, batch 2048, 1000 Euler-Maruyama steps of
the embedded 64-D mixture; ``--tp-*`` change them) on 1 and 4 forced devices, for every ``--repo``,
interleaved in ``--rounds`` rounds: the first job of a process (compilation included), a second
one in a fresh directory (a new sampler, compiled again), and one whose programs the persistent
compilation cache holds, median and min-max over rounds.

    python benchmarks/device_count.py --name device_count_before --force
    python benchmarks/device_count.py --repo before=/path/to/old --repo after=. --throughput --rounds 5 --force
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results"
COUNTS = (1, 2, 4, 8)
METHODS = ("euler_maruyama", "dpm_solver", "adaptive")
PATHS = ("out_shardings", "sample_on_devices", "job")


def bits(x: np.ndarray) -> np.ndarray:
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def compare(x: np.ndarray, ref: np.ndarray) -> dict:
    """``{"bitwise": bool, "max_abs_diff": float}`` (shapes must agree)."""
    if x.shape != ref.shape:
        raise ValueError(f"shapes differ: {x.shape} and {ref.shape}")
    return {"bitwise": bool(np.array_equal(bits(x), bits(ref))), "max_abs_diff": float(np.max(np.abs(x - ref)))}


# ------------------------------------------------------------------------------------------------ children


def child_table(args) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import jax
    import jax.numpy as jnp

    import device_models as dm
    import sdevp_jax as sv

    n = len(jax.devices())
    num = args.piece * max(COUNTS)  # every count holds whole pieces
    key = jax.random.key(args.seed)
    state = sv.set_timesteps(sv.create_state(), args.steps)
    has_helper = hasattr(sv.distributed, "sample_on_devices")
    out_dir = Path(args.out_dir)
    result = {"devices": n, "sdevp_jax": str(Path(sv.__file__).parent), "cases": {}}
    for name in args.models:
        model = dm.MODELS[name](sv, state)
        cond = jnp.asarray(dm.make_cond(num)) if model.guided else None
        for method in args.methods:
            case = f"{name}/{method}"
            draw = dm.make_draw(sv, state, model, method)
            single = jax.jit(draw, static_argnums=1)

            def calls(size):
                return np.concatenate([np.asarray(single(key, size, np.uint32(o),
                                                         None if cond is None else cond[o:o + size]))
                                       for o in range(0, num, size)])

            r = {}
            whole = jax.jit(lambda k, c: draw(k, num, np.uint32(0), c), out_shardings=sv.distributed.batch_sharding())
            r["out_shardings"] = compare(np.asarray(whole(key, cond)), calls(num // n))
            pieces = calls(args.piece)
            np.save(out_dir / f"{case.replace('/', '--')}.pieces.npy", pieces)
            if has_helper:
                x = np.asarray(sv.distributed.sample_on_devices(draw, key, num, piece_size=args.piece, cond=cond))
                np.save(out_dir / f"{case.replace('/', '--')}.helper.npy", x)
                r["sample_on_devices_in_process"] = compare(x, pieces)
            spec = sv.JobSpec(num_samples=args.job_samples, batch_size=args.job_batch, seed=args.seed,
                              steps=args.steps, method=method, event_shape=tuple(model.event_shape),
                              class_label=1 if model.guided else None)
            job_dir = out_dir / f"job--{case.replace('/', '--')}"
            path = sv.run_job(spec, job_dir, model_fn=model.model_fn)
            np.save(out_dir / f"{case.replace('/', '--')}.job.npy", np.load(path)["samples"])
            result["cases"][case] = r
            print(f"{n} devices {case}: {r}", file=sys.stderr, flush=True)
    return result


def child_throughput(args) -> dict:
    import jax

    import sdevp_jax as sv

    spec = sv.JobSpec(num_samples=args.tp_samples, batch_size=args.tp_batch, seed=0, steps=args.tp_steps,
                      method="euler_maruyama", event_shape=(args.tp_dim,))
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            start = time.perf_counter()
            sv.run_job(spec, Path(tmp) / f"job{i}")
            times.append(time.perf_counter() - start)
        # The persistent compilation cache filled by one job, then read by the timed one: sampling and
        # writing with the compiled programs loaded, not compiled (one per device on CPU).
        sv.run_job(spec, Path(tmp) / "fill", cache_dir=Path(tmp) / "cache")
        start = time.perf_counter()
        sv.run_job(spec, Path(tmp) / "cached", cache_dir=Path(tmp) / "cache")
        times.append(time.perf_counter() - start)
    return {"devices": len(jax.devices()), "first_s": times[0], "second_s": times[1], "cached_s": times[2]}


# ------------------------------------------------------------------------------------------------- parent


def run_child(repo: Path, count: int, argv: list[str], timeout: float) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child ({count} devices, {repo}) failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["devices"] != count:
        raise RuntimeError(f"asked for {count} devices, the child saw {result['devices']}")
    return result


def git_rev(repo: Path) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def machine() -> dict:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}


def cell(r: dict | None) -> str:
    if r is None:
        return "n/a"
    return "yes" if r["bitwise"] else f"no: {r['max_abs_diff']:.2g}"


def table(args, label: str, repo: Path) -> dict:
    rev = git_rev(repo)  # before the run: the code the children import
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for count in COUNTS:
            dirs[count] = Path(tmp) / f"d{count}"
            dirs[count].mkdir()
            argv = ["--child", "table", "--out-dir", str(dirs[count]), "--steps", str(args.steps), "--piece",
                    str(args.piece), "--job-samples", str(args.job_samples), "--job-batch", str(args.job_batch),
                    "--seed", str(args.seed), "--models", *args.models, "--methods", *args.methods]
            start = time.perf_counter()
            res = run_child(repo, count, argv, args.child_timeout)
            print(f"[{label}] {count} devices: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            for case, r in res["cases"].items():
                stem = case.replace("/", "--")
                helper = dirs[count] / f"{stem}.helper.npy"
                row = {"out_shardings": r["out_shardings"],
                       "sample_on_devices": (compare(np.load(helper), np.load(dirs[1] / f"{stem}.pieces.npy"))
                                             if helper.exists() else None),
                       "job": compare(np.load(dirs[count] / f"{stem}.job.npy"), np.load(dirs[1] / f"{stem}.job.npy")),
                       "sample_on_devices_in_process": r.get("sample_on_devices_in_process")}
                rows.setdefault(case, {})[count] = row
    return {"label": label, "repo": str(repo), "rev": rev, "rows": rows}


def throughput(args, repos: dict[str, Path]) -> dict:
    runs = {label: {c: [] for c in (1, 4)} for label in repos}
    for _ in range(args.rounds):
        for label, repo in repos.items():
            for count in (1, 4):
                runs[label][count].append(run_child(repo, count, ["--child", "throughput", *throughput_argv(args)],
                                                    args.child_timeout))
    return {label: {str(c): r for c, r in counts.items()} for label, counts in runs.items()}


def throughput_argv(args) -> list[str]:
    return ["--tp-samples", str(args.tp_samples), "--tp-batch", str(args.tp_batch), "--tp-steps", str(args.tp_steps),
            "--tp-dim", str(args.tp_dim)]


def stats(values: list[float]) -> str:
    return f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def markdown(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = ["# Device count and samples", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['machine']}), CPU backend with forced host devices; "
             f"jax {result['jax']}; {result['date']}.", ""]
    for t in result.get("tables", []):
        s = result["settings"]
        lines += [f"## {t['label']}: `{t['repo']}` ({t['rev']})", "",
                  f"{s['steps']} steps; out_shardings and sample_on_devices draw {s['piece'] * max(COUNTS)} samples "
                  f"(pieces of {s['piece']}), against single-device calls of each shard's size (out_shardings, same "
                  f"process) or of each piece in the 1-device process (sample_on_devices); job: "
                  f"{s['job_samples']} samples in chunks of {s['job_batch']}, against the 1-device job. "
                  "\"yes\": bitwise; else the max |difference|. Where sample_on_devices differs from the "
                  "1-device process, \"same process\" compares it with single-device calls of the pieces in "
                  "its own process.", "",
                  "| model | method | devices | out_shardings | sample_on_devices | job |", "|---|---|---|---|---|---|"]
        for case, counts in t["rows"].items():
            model, method = case.split("/")
            for count, row in counts.items():
                helper = cell(row["sample_on_devices"])
                same = row.get("sample_on_devices_in_process")
                if same is not None and not row["sample_on_devices"]["bitwise"]:
                    helper += f" (same process: {cell(same)})"
                lines.append(f"| {model} | {method} | {count} | {cell(row['out_shardings'])} | "
                             f"{helper} | {cell(row['job'])} |")
        lines.append("")
    if "throughput" in result:
        lines += ["## run_job throughput", "",
                  f"{s['tp_samples']} samples, batch {s['tp_batch']}, {s['tp_steps']} Euler-Maruyama steps, "
                  f"{s['tp_dim']}-D embedded mixture; seconds per run_job, "
                  f"median (min-max) over {result['settings']['rounds']} interleaved rounds; first: a fresh process "
                  "(compilation included), second: the same spec into a fresh directory in that process (compiled "
                  "again: a new sampler), cached: with the persistent compilation cache filled by an earlier job "
                  "(loaded, not compiled).", "",
                  "| checkout | devices | first (s) | second (s) | cached (s) |", "|---|---|---|---|---|"]
        for label, counts in result["throughput"].items():
            for count, runs in counts.items():
                lines.append(f"| {label} | {count} | {stats([r['first_s'] for r in runs])} | "
                             f"{stats([r['second_s'] for r in runs])} | {stats([r['cached_s'] for r in runs])} |")
        lines.append("")
    return "\n".join(lines)


def parse_repos(values: list[str] | None) -> dict[str, Path]:
    if not values:
        return {"this": ROOT}
    repos = {}
    for v in values:
        label, sep, path = v.partition("=")
        if not sep:
            label, path = Path(v).resolve().name, v
        if not (Path(path) / "sdevp_jax" / "__init__.py").is_file():
            raise SystemExit(f"--repo {v}: {path} has no sdevp_jax/__init__.py")
        repos[label] = Path(path).resolve()
    return repos


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", help="[LABEL=]PATH of a checkout to import sdevp_jax from")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--piece", type=int, default=8)
    parser.add_argument("--job-samples", type=int, default=128)
    parser.add_argument("--job-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--throughput", action="store_true", help="also time run_job on 1 and 4 devices")
    parser.add_argument("--no-table", action="store_true", help="skip the bitwise table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tp-samples", type=int, default=16384, help="--throughput: the job's samples")
    parser.add_argument("--tp-batch", type=int, default=2048, help="--throughput: its batch size")
    parser.add_argument("--tp-steps", type=int, default=1000, help="--throughput: its steps")
    parser.add_argument("--tp-dim", type=int, default=64, help="--throughput: the mixture's dimension")
    parser.add_argument("--child-timeout", type=float, default=3600)
    parser.add_argument("--name", default="device_count")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--child", choices=("table", "throughput"), help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.models is None:
        sys.path.insert(0, str(ROOT / "tests"))
        import device_models

        args.models = list(device_models.MODELS)
    if args.child:
        print(json.dumps(child_table(args) if args.child == "table" else child_throughput(args)))
        return 0

    sys.path.insert(0, str(ROOT))
    from sdevp_jax._io import atomic_write

    targets = [args.out / f"{args.name}.json", args.out / f"{args.name}.md"]
    if not args.force and any(p.exists() for p in targets):
        print(f"{targets[0]} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    repos = parse_repos(args.repo)
    import jax

    result = {"command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT),
                                                                           *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "jax": jax.__version__,
              "settings": {"steps": args.steps, "piece": args.piece, "job_samples": args.job_samples,
                           "job_batch": args.job_batch, "seed": args.seed, "rounds": args.rounds,
                           "tp_samples": args.tp_samples, "tp_batch": args.tp_batch, "tp_steps": args.tp_steps,
                           "tp_dim": args.tp_dim}}
    if not args.no_table:
        result["tables"] = [table(args, label, repo) for label, repo in repos.items()]
    if args.throughput:
        result["throughput_revs"] = {label: git_rev(repo) for label, repo in repos.items()}
        result["throughput"] = throughput(args, repos)
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(targets[0], lambda f: f.write(json.dumps(result, indent=1).encode()), overwrite=args.force)
    atomic_write(targets[1], lambda f: f.write(text.encode()), overwrite=args.force)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
