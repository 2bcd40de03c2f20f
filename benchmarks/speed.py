"""Time per sampling step: sdevp_jax against the alternatives, one process per measurement.

Worker (one implementation, one shape; prints one JSON line)::

    python benchmarks/speed.py worker --impl sv --shape 256,3072 --steps 1000 --repeats 5

Implementations (all sample the same exact Gaussian-mixture epsilon-model, float32):

* ``sv``: ``jax.jit(sv.sample)``, the whole loop as one ``lax.scan``;
* ``naive``: a ``jax.jit``-compiled step (model + ``step_pred`` + noise) called from
  a Python loop -- a direct port of the pipelines' loop;
* ``diffrax``: diffrax's Euler solve of the same reverse SDE (in forward time
  ``s = 1 - t``, with an ``UnsafeBrownianPath``), on the same grid;
* ``noise``: a scan that only draws each step's noise (sv's per-sample streams) and
  adds it: the CPU floor of a step (a step cannot cost less than drawing its noise);
* ``diffusers``: in ``speed_torch.py``, diffusers' ``ScoreSdeVpScheduler`` driven as
  its pipelines drive it (a Python loop in torch), with the same model in torch.

Models: ``gaussian`` (the one-component mixture N(0.5, 0.5^2 I): elementwise, so
the scheduler dominates) and ``mixture`` (the five-mode default mixture).

The runner (``python benchmarks/speed.py run``) launches each worker in its own
process (torch's and XLA's thread pools interfere when they share one), and
writes ``speed.json`` and ``speed.md`` under ``--out`` with the median and
min-max per step of ``--repeats`` timed runs after one warm-up, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- worker


def make_mixture(model: str, dim: int):
    import sdevp_jax as sv

    if model == "gaussian":
        return sv.mixtures.make_mixture([1.0], [[0.5] * dim], 0.5)
    return sv.mixtures.default_mixture(dim) if dim >= 2 else sv.mixtures.make_mixture([0.4, 0.6], [[-1.0], [1.0]], 0.3)


def timed(fn, repeats):
    """One warm-up call (compiles), then ``repeats`` timed calls; returns (compile+first, times)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, times


def worker(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import sdevp_jax as sv
    from sdevp_jax import sde

    if args.prng != "threefry":
        jax.config.update("jax_default_prng_impl", "rbg" if args.prng == "rbg" else args.prng)
    shape = tuple(int(s) for s in args.shape.split(","))
    dim = int(np.prod(shape[1:]))
    dtype = jnp.dtype(args.dtype)
    state = sv.set_timesteps(sv.create_state(), args.steps)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, make_mixture(args.model, dim))
    key = jax.random.key(0)
    from sdevp_jax.loops import resolve_unroll

    unroll = resolve_unroll(args.unroll)  # None: the backend's default, recorded as the number it means
    result = {"impl": args.impl, "shape": list(shape), "steps": args.steps, "model": args.model,
              "dtype": args.dtype, "prng": args.prng, "unroll": unroll}

    if args.impl == "sv":
        f = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("dtype", "unroll"))
        kwargs = {"dtype": dtype, "unroll": unroll}
        start = time.perf_counter()
        compiled = f.lower(state, model_fn, key, shape, **kwargs).compile()
        result["compile_s"] = time.perf_counter() - start
        mem = compiled.memory_analysis()
        if mem is not None:
            result["temp_bytes"] = int(mem.temp_size_in_bytes)
            result["argument_bytes"] = int(mem.argument_size_in_bytes)
        run = lambda: compiled(state, key)  # noqa: E731  (static args are baked in)
    elif args.impl == "naive":
        batch = shape[0]

        @jax.jit
        def step(x, t, k):
            t_vec = jnp.full((batch,), t)
            return sv.step_pred(state, model_fn(x, t_vec), x, t_vec, k)

        def run():
            x = jax.random.normal(key, shape, dtype)
            keys = jax.random.split(key, args.steps)
            for i in range(args.steps):
                x, x_mean = step(x, state.timesteps[i], keys[i])
            return x_mean
    elif args.impl == "diffrax":
        import diffrax
        import lineax

        batch, eps = shape[0], state.sampling_eps
        n = args.steps

        def drift(s, x, _):
            t = 1.0 - s
            t_vec = jnp.full((batch,), t)
            beta = sde.beta(t, 0.1, 20.0)
            score = -model_fn(x, t_vec) / sde.sigma(t, 0.1, 20.0)
            return 0.5 * beta * x + beta * score

        def diffusion(s, x, _):
            return lineax.DiagonalLinearOperator(jnp.sqrt(sde.beta(1.0 - s, 0.1, 20.0)) * jnp.ones(shape, dtype))

        @jax.jit
        def solve(k):
            k0, k1 = jax.random.split(k)
            brownian = diffrax.UnsafeBrownianPath(shape=shape, key=k1)
            terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, brownian))
            sol = diffrax.diffeqsolve(terms, diffrax.Euler(), t0=0.0, t1=1.0 - eps, dt0=(1.0 - eps) / (n - 1),
                                      y0=jax.random.normal(k0, shape, dtype), saveat=diffrax.SaveAt(t1=True),
                                      max_steps=n, adjoint=diffrax.ForwardMode())
            return sol.ys[0]

        run = lambda: solve(key)  # noqa: E731
    elif args.impl in ("unet_sv", "unet_model"):
        # The scheduler's share of a realistic step: sv.sample with a small UNet,
        # against the same scan that only evaluates the UNet (no scheduler, no noise).
        sys.path.insert(0, str(HERE))
        from unet import SmallUNet

        net = SmallUNet()
        params = net.init(key, jnp.zeros((1, *shape[1:]), dtype), jnp.zeros((1,), dtype))

        def unet_fn(x, t):
            return net.apply(params, x, t)

        if args.impl == "unet_sv":
            f = jax.jit(lambda k: sv.sample(state, unet_fn, k, shape, dtype=dtype, unroll=unroll))
        else:
            @jax.jit
            def f(k):
                def body(x, t):
                    return unet_fn(x, jnp.full((shape[0],), t, dtype)), None

                return jax.lax.scan(body, jax.random.normal(k, shape, dtype), state.timesteps, unroll=unroll)[0]

        run = lambda: f(key)  # noqa: E731
    elif args.impl == "noise":
        # The cheapest loop that still draws a step's noise -- the same per-sample
        # streams sv.sample draws -- and adds it: x <- x + z, as one scan. (A
        # standalone normal() call would also time dispatch and a fresh buffer;
        # and one batch-shaped normal() measured slower here than the per-sample
        # draws, so it would not be a floor.)
        from sdevp_jax.loops import make_sample_keys, per_sample_normal

        @jax.jit
        def noise_loop(k):
            sample_keys = make_sample_keys(k, shape[0], 0)

            def body(carry, _):  # the step index in the carry, as in sv.sample
                x, i = carry
                return (x + per_sample_normal(sample_keys, i, shape[1:], dtype), i + 1), None

            return jax.lax.scan(body, (jnp.zeros(shape, dtype), jnp.uint32(0)), None, length=args.steps)[0][0]

        run = lambda: noise_loop(key)  # noqa: E731
    else:
        raise SystemExit(f"unknown --impl {args.impl!r}")

    first, times = timed(run, args.repeats)
    per = args.steps
    result.update(first_call_s=first, times_s=times, per_step_median_us=statistics.median(times) / per * 1e6,
                  per_step_min_us=min(times) / per * 1e6, per_step_max_us=max(times) / per * 1e6)
    return result


# ---------------------------------------------------------------- runner


def launch(argv: list[str], python: str, script: Path) -> dict | None:
    proc = subprocess.run([python, str(script), *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  failed: {' '.join(argv)}\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def environment() -> dict:
    import jax

    return {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "device": str(jax.devices()[0]), "backend": jax.default_backend(),
            "jax": jax.__version__, "python": platform.python_version()}


def summarize(times: list[float], steps: int) -> dict:
    per = [t / steps * 1e6 for t in times]
    return {"per_step_median_us": statistics.median(per), "per_step_min_us": min(per), "per_step_max_us": max(per)}


def run_all(args) -> dict:
    """``--rounds`` rounds; each launches every implementation once, in turn, per shape.

    Interleaving the processes keeps the comparison side by side in time: this
    machine's speed drifts (by 2x over minutes, measured), so one
    implementation timed after another would compare different machines. Each
    launch compiles, warms up, then times ``--repeats`` runs; the summary is the
    median and range of all timed runs over the rounds, and every ratio is the
    median over rounds of the ratio within a round.
    """
    env = environment()
    torch_python = args.torch_python
    rows = []
    for spec in args.shapes:
        shape, steps = spec.split("@") if "@" in spec else (spec, str(args.steps))
        common = ["--shape", shape, "--steps", steps, "--repeats", str(args.repeats), "--model", args.model]
        per_impl: dict[str, list[dict]] = {impl: [] for impl in args.impls}
        for _ in range(args.rounds):
            for impl in args.impls:
                if impl == "diffusers":
                    if torch_python is None:
                        continue
                    row = launch(common, torch_python, HERE / "speed_torch.py")
                else:
                    row = launch(["worker", "--impl", impl, *common], sys.executable, Path(__file__))
                if row is not None:
                    per_impl[impl].append(row)
        sv_rounds = [r["times_s"] for r in per_impl.get("sv", [])]
        for impl, runs in per_impl.items():
            if not runs:
                rows.append({"impl": impl, "shape": [int(s) for s in shape.split(",")], "steps": int(steps),
                             "missing": "torch/diffusers not installed for --torch-python" if impl == "diffusers"
                             else "failed"})
                continue
            row = dict(runs[0])
            row["times_s"] = [t for r in runs for t in r["times_s"]]
            row["rounds"] = len(runs)
            row.update(summarize(row["times_s"], int(steps)))
            if len(sv_rounds) == len(runs):  # this / sv, median over rounds of the within-round ratio
                row["ratio_to_sv"] = statistics.median(
                    statistics.median(r["times_s"]) / statistics.median(s) for r, s in zip(runs, sv_rounds))
            rows.append(row)
            print(f"{impl:10s} {shape:14s} x{steps:>5s}: {row['per_step_median_us']:10.1f} us/step "
                  f"[{row['per_step_min_us']:.1f}, {row['per_step_max_us']:.1f}]", flush=True)
        floor = next((r for r in rows[-len(per_impl):] if r["impl"] == "noise" and "missing" not in r), None)
        for r in rows[-len(per_impl):]:
            if floor is not None and "missing" not in r and r["impl"] != "noise" and "ratio_to_sv" in floor:
                r["ratio_to_floor"] = r["ratio_to_sv"] / floor["ratio_to_sv"]
    unet = []
    if args.unet_shape:
        shape, steps = args.unet_shape.split("@")
        for _ in range(args.rounds):
            pair = [launch(["worker", "--impl", impl, "--shape", shape, "--steps", steps, "--repeats",
                            str(args.repeats)], sys.executable, Path(__file__)) for impl in ("unet_sv", "unet_model")]
            if None not in pair:
                unet.append({"shape": pair[0]["shape"], "steps": int(steps),
                             "step_us": statistics.median(pair[0]["times_s"]) / int(steps) * 1e6,
                             "model_us": statistics.median(pair[1]["times_s"]) / int(steps) * 1e6})
        for u in unet:
            u["scheduler_share"] = 1.0 - u["model_us"] / u["step_us"]
            print(f"unet {shape}: step {u['step_us']:.0f} us, model alone {u['model_us']:.0f} us, "
                  f"scheduler share {100 * u['scheduler_share']:.2f}%", flush=True)
    scaling = []
    if args.scaling_shape:
        for steps in args.scaling_steps:
            row = launch(["worker", "--impl", "sv", "--shape", args.scaling_shape, "--steps", str(steps),
                          "--repeats", "1", "--model", args.model], sys.executable, Path(__file__))
            if row is not None:
                scaling.append(row)
                print(f"scaling {steps:6d} steps: compile {row['compile_s']:.2f} s, temp {row.get('temp_bytes')} B",
                      flush=True)
    return {"environment": env, "repeats": args.repeats, "rounds": args.rounds, "model": args.model, "rows": rows,
            "scaling": scaling, "unet": unet}


def fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def markdown(results: dict, command: str) -> str:
    env = results["environment"]
    out = ["# Time per sampling step", "",
           f"Command: `{command}`  ",
           f"Machine: {env['machine']} ({env['processor']}, {env['cores']} cores), backend {env['backend']} "
           f"({env['device']}), JAX {env['jax']}, Python {env['python']}.  ",
           f"Model: the exact `{results['model']}` epsilon-model; float32. {results['rounds']} rounds, each launching "
           f"every implementation in turn (its own process; compile and warm-up, then {results['repeats']} timed "
           "runs): median and [min, max] of all timed runs, divided by the step count. Ratios: the median over "
           "rounds of the ratio within a round.", "",
           "| shape | steps | implementation | µs per step, median [min, max] | ÷ sv.sample | sv.sample speed-up | "
           "÷ noise floor |",
           "|---|---:|---|---|---:|---:|---:|"]
    for r in results["rows"]:
        if "missing" in r:
            out.append(f"| {fmt_shape(r['shape'])} | {r['steps']} | {r['impl']} | not measured ({r['missing']}) | | | |")
            continue
        ratio = r.get("ratio_to_sv")
        to_floor = f"{r['ratio_to_floor']:.2f}" if "ratio_to_floor" in r else ""
        out.append(f"| {fmt_shape(r['shape'])} | {r['steps']} | {r['impl']} | {r['per_step_median_us']:.1f} "
                   f"[{r['per_step_min_us']:.1f}, {r['per_step_max_us']:.1f}] | "
                   f"{'' if ratio is None else f'{ratio:.2f}'} | {'' if ratio is None else f'{ratio:.1f}x'} | "
                   f"{to_floor} |")
    if results.get("unet"):
        shares = [u["scheduler_share"] for u in results["unet"]]
        u0 = results["unet"][0]
        out += ["", "## The scheduler's share of a step with a small Flax UNet", "",
                f"Shape {fmt_shape(u0['shape'])}, {u0['steps']} steps (benchmarks/unet.py, untrained): per round, "
                "sv.sample with the UNet against the same scan evaluating only the UNet.", "",
                "| round | µs per step (sv.sample + UNet) | µs per step (UNet alone) | scheduler share |",
                "|---:|---:|---:|---:|"]
        for i, u in enumerate(results["unet"]):
            out.append(f"| {i + 1} | {u['step_us']:.0f} | {u['model_us']:.0f} | {100 * u['scheduler_share']:.2f}% |")
        out.append(f"\nMedian share: {100 * statistics.median(shares):.2f}% (a negative share is timing noise).")
    if results["scaling"]:
        out += ["", "## Compile time and memory against the step count (sv.sample)", "",
                "| shape | steps | compile (s) | compiled temp memory (bytes) | argument memory (bytes) |",
                "|---|---:|---:|---:|---:|"]
        for r in results["scaling"]:
            out.append(f"| {fmt_shape(r['shape'])} | {r['steps']} | {r['compile_s']:.2f} | {r.get('temp_bytes', '')} | "
                       f"{r.get('argument_bytes', '')} |")
    out += ["", "GPU rows: not measured yet (no accelerator was lent to the session that ran this)."]
    return "\n".join(out) + "\n"


def write_atomic(path: Path, text: str) -> None:
    from sdevp_jax._io import atomic_write

    atomic_write(path, lambda f: f.write(text.encode()))


def find_torch_python(given: str | None) -> str | None:
    candidates = [given] if given else [sys.executable]
    for python in candidates:
        ok = subprocess.run([python, "-c", "import torch, diffusers"], capture_output=True).returncode == 0
        if ok:
            return python
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="time one implementation at one shape; print a JSON line")
    w.add_argument("--impl", required=True, choices=["sv", "naive", "diffrax", "noise", "unet_sv", "unet_model"])
    r = sub.add_parser("run", help="run every worker in its own process and write the results")
    r.add_argument("--shapes", nargs="*", default=["16,2", "256,3072", "64,3,64,64@200", "1024,12288@100"],
                   help="shapes as comma lists, optionally @steps")
    r.add_argument("--impls", nargs="*", default=["noise", "sv", "naive", "diffrax", "diffusers"])
    r.add_argument("--unet-shape", default="16,3,32,32@50", help="shape@steps of the UNet share measurement; '' to skip")
    r.add_argument("--torch-python", default=None, help="a python with torch and diffusers (default: this one)")
    r.add_argument("--rounds", type=int, default=5, help="interleaved rounds of launches")
    r.add_argument("--scaling-shape", default="256,3072")
    r.add_argument("--scaling-steps", type=int, nargs="+", default=[10, 100, 1000, 10000])
    r.add_argument("--out", type=Path, default=HERE / "results")
    r.add_argument("--force", action="store_true", help="overwrite existing results")
    r.add_argument("--name", default="speed", help="the results' file stem under --out")
    for p in (w, r):
        p.add_argument("--steps", type=int, default=1000)
        p.add_argument("--repeats", type=int, default=2)
        p.add_argument("--model", choices=["gaussian", "mixture"], default="gaussian")
    w.add_argument("--shape", required=True)
    w.add_argument("--dtype", default="float32")
    w.add_argument("--prng", default="threefry", choices=["threefry", "rbg", "unsafe_rbg"])
    w.add_argument("--unroll", type=int, default=None, help="scan unroll (default: sv's default for the backend)")
    args = parser.parse_args(argv)
    if args.command == "worker":
        print(json.dumps(worker(args)))
        return 0
    paths = [args.out / f"{args.name}.json", args.out / f"{args.name}.md"]
    if any(p.exists() for p in paths) and not args.force:
        print(f"speed: {paths[0]} or {paths[1]} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.torch_python = find_torch_python(args.torch_python)
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run_all(args)
    results["command"] = command
    write_atomic(paths[0], json.dumps(results, indent=1) + "\n")
    write_atomic(paths[1], markdown(results, command))
    print("wrote", paths[0], paths[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
