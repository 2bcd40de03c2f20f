"""Fitted time grids (sv.fit_grid: GITS's DP, gradient descent) against sv's fixed grids, on held-out x_T.

For each dimension (the exact default mixture in ``--dims``), solver (``--solvers``) and NFE
(``--nfes``), on Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels):

* the grids: ``dp``, ``gradient`` and ``gradient, free end`` (``free_end=True``: the last time
  fitted too) fitted by ``sv.fit_grid`` on ``--fit-batch`` x_T from key 0 (teacher: 61 Karras
  times, 4 Heun steps between them); the fixed spacings
  ``logsnr``, ``karras``, ``time_quadratic``; Align Your Steps (``sv.grids.align_your_steps``,
  the SD1.5 table, interpolated in log-sigma for a count other than 10; it ends at
  sigma/alpha = 0.029, t = 0.025, not at ``sampling_eps``);
* the metrics, on ``--eval-sets`` held-out sets of ``--eval-batch`` x_T (keys 1000 + r, never
  used in fitting): the RMS of the output to a finer teacher from the same x_T (61 Karras
  times, 8 Heun steps between them, then the data prediction at ``sampling_eps`` as the grid
  solvers end), and the sliced W2 (``--directions`` unit directions) to as many exact
  samples of the mixture's data distribution; each reported as the mean over the sets and
  [min, max] (the spread);
* the memory of the fitting gradient (XLA's compiled ``temp_size_in_bytes`` of
  ``jit(grad(loss))``: 64-D, batch 256, dpm_solver_pp) at 10 and 40 steps, with and without
  ``checkpoint=True``.

Writes ``fitted_grids.json`` and ``fitted_grids.md`` under ``--out`` (refuses to overwrite
without ``--force``)::

    python benchmarks/fitted_grids.py --force
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sdevp_jax as sv  # noqa: E402
from sdevp_jax import fitting  # noqa: E402
from accuracy_vs_nfe import sliced_w2  # noqa: E402
from speed import environment, write_atomic  # noqa: E402

FIXED = ("logsnr", "karras", "time_quadratic")


def sd_state():
    return sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000))


def held_out(state, model_fn, key, batch, dim, substeps):
    keys = sv.loops.make_sample_keys(key, batch, 0)
    x_T = sv.loops.per_sample_normal(keys, 0, (dim,), jnp.float32)
    fine = sv.grids.continuous_grid(state, 61, "karras")
    xs, _ = fitting.teacher_trajectory(state, model_fn, x_T, fine, teacher_substeps=substeps)
    return x_T, fitting._x0_at(state, model_fn, xs[-1], fine[-1], jnp.float32, None)[1]


def memory_rows(dim=64, batch=256):
    state = sv.create_state()
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim))
    x = jnp.zeros((batch, dim), jnp.float32)
    rows = []
    for n in (10, 40):
        grid = sv.set_timesteps(state, n, spacing="logsnr").timesteps
        for checkpoint in (False, True):
            model = jax.checkpoint(model_fn) if checkpoint else model_fn

            def loss(g, x, y, model=model):
                st = state.replace(timesteps=g, spacing="custom", spacing_given=True)
                out = sv.sample(st, model, jax.random.key(0), (batch, dim), solver="dpm_solver_pp", x_init=x)
                return jnp.mean(jnp.square(out - y))

            grad = jax.jit(jax.grad(loss)).lower(grid, x, x).compile().memory_analysis()
            fwd = jax.jit(loss).lower(grid, x, x).compile().memory_analysis()
            rows.append({"points": n, "checkpoint": checkpoint, "grad_temp_bytes": int(grad.temp_size_in_bytes),
                         "forward_temp_bytes": int(fwd.temp_size_in_bytes)})
    return rows


def run(args) -> dict:
    state = sd_state()
    results = {"environment": environment(), "args": vars(args), "rows": [], "floors": []}
    for dim in args.dims:
        mixture = sv.mixtures.default_mixture(dim)
        model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
        rng = np.random.default_rng(0)
        directions = rng.standard_normal((args.directions, dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        sets = []
        for r in range(args.eval_sets):
            x_T, target = held_out(state, model_fn, jax.random.key(1000 + r), args.eval_batch, dim, 8)
            exact = np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(2000 + r), args.eval_batch))
            sets.append((x_T, target, exact))
        # the floors: the teacher's own sliced W2, and two exact sets' to each other
        teacher_sw2 = [sliced_w2(np.asarray(t), e, directions) for _, t, e in sets]
        exact_sw2 = [sliced_w2(np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(3000 + r),
                                                                     args.eval_batch)), e, directions)
                     for r, (_, _, e) in enumerate(sets)]
        results["floors"].append({"dim": dim, "teacher_sw2": teacher_sw2, "exact_sw2": exact_sw2})
        for method in args.solvers:
            for nfe in args.nfes:
                n = fitting.num_points_for_nfe(method, nfe)
                candidates = {}
                for name, algorithm, free_end in (("dp", "dp", False), ("gradient", "gradient", False),
                                                  ("gradient, free end", "gradient", True)):
                    start = time.perf_counter()
                    grid, info = sv.fit_grid(state, model_fn, jax.random.key(0), (args.fit_batch, dim), method=method,
                                             nfe=nfe, algorithm=algorithm, iterations=args.iterations,
                                             free_end=free_end, return_info=True)
                    candidates[name] = (grid, time.perf_counter() - start, info.loss)
                for spacing in FIXED:
                    candidates[spacing] = (np.asarray(sv.set_timesteps(state, n, spacing=spacing).timesteps,
                                                      np.float64), 0.0, None)
                candidates["ays"] = (sv.grids.align_your_steps(state, n), 0.0, None)
                for name, (grid, seconds, fit_loss) in candidates.items():
                    st = sv.set_timesteps(state, timesteps=grid)
                    run_fn = jax.jit(lambda x, st=st: sv.sample_ode(st, model_fn, jax.random.key(0), x.shape,
                                                                    method=method, x_init=x))
                    rms, sw2 = [], []
                    for x_T, target, exact in sets:
                        out = run_fn(x_T)
                        rms.append(float(jnp.sqrt(jnp.mean(jnp.sum(jnp.square(out - target), axis=1)))))
                        sw2.append(sliced_w2(np.asarray(out, np.float64), exact, directions))
                    row = {"dim": dim, "method": method, "nfe": nfe, "points": n, "grid": name,
                           "timesteps": [float(t) for t in grid], "rms": rms, "sw2": sw2, "fit_seconds": seconds,
                           "fit_loss": fit_loss}
                    results["rows"].append(row)
                    print(f"dim {dim} {method} nfe {nfe} {name:15s} rms {np.mean(rms):.4f} sw2 {np.mean(sw2):.4f}",
                          flush=True)
    if args.memory:
        results["memory"] = memory_rows()
    return results


def _cell(values) -> str:
    return f"{np.mean(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def markdown(results, command) -> str:
    env = results["environment"]
    a = results["args"]
    lines = [
        "# Fitted time grids against fixed ones",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {env['machine']} ({env['processor']}, {env['cores']} cores, shared), {env['device']}, "
        f"JAX {env['jax']}, Python {env['python']}.",
        "",
        f"Stable Diffusion's schedule (scaled_linear 0.00085-0.012, 1000 labels), the exact default mixture. "
        f"Fits on {a['fit_batch']} x_T (key 0; teacher 61 Karras times x 4 Heun steps; gradient: "
        f"{a['iterations']} Adam steps from the log-SNR grid); metrics on {a['eval_sets']} held-out sets of "
        f"{a['eval_batch']} x_T (keys 1000+r): RMS (root of the mean squared Euclidean distance per sample) to a "
        f"finer teacher (61 x 8 Heun steps) from the same x_T, and sliced W2 over {a['directions']} directions to "
        f"as many exact samples. Each cell: mean over the sets [min, max]. `ays` is Align Your Steps' SD1.5 "
        f"table (interpolated in log-sigma off 10 steps), which ends at t = 0.025, not at sampling_eps = 0.001.",
        "",
    ]
    for floor in results["floors"]:
        lines.append(f"- {floor['dim']}-D floors: the teacher's sliced W2 {_cell(floor['teacher_sw2'])}; "
                     f"exact vs exact {_cell(floor['exact_sw2'])}.")
    lines.append("")
    rows = results["rows"]
    for dim in sorted({r["dim"] for r in rows}):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["dim"] == dim and r["method"] == method]
            if not sel:
                continue
            nfes = sorted({r["nfe"] for r in sel})
            names = list(dict.fromkeys(r["grid"] for r in sel))
            for metric in ("rms", "sw2"):
                lines += [f"## {dim}-D, {method}: {'RMS to the teacher' if metric == 'rms' else 'sliced W2'}", "",
                          "| grid | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                          "|---|" + "---|" * len(nfes)]
                for name in names:
                    cells = []
                    for k in nfes:
                        r = next(r for r in sel if r["grid"] == name and r["nfe"] == k)
                        cells.append(_cell(r[metric]))
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
                lines.append("")
    if "memory" in results:
        lines += ["## Memory of the fitting gradient", "",
                  "XLA's `temp_size_in_bytes` of `jax.jit(jax.grad(loss)).lower(...).compile().memory_analysis()` "
                  "(64-D mixture, batch 256, float32, dpm_solver_pp; the loss is the mean squared output of "
                  "`sv.sample` on a traced grid); the forward pass alone for comparison.", "",
                  "| grid points | checkpoint | gradient temp (MB) | forward temp (MB) |", "|---|---|---|---|"]
        for r in results["memory"]:
            lines.append(f"| {r['points']} | {r['checkpoint']} | {r['grad_temp_bytes'] / 1e6:.2f} | "
                         f"{r['forward_temp_bytes'] / 1e6:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--solvers", nargs="+", default=["dpm_solver_pp", "ipndm"])
    parser.add_argument("--nfes", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    parser.add_argument("--fit-batch", type=int, default=256)
    parser.add_argument("--eval-batch", type=int, default=2000)
    parser.add_argument("--eval-sets", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--directions", type=int, default=64)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="fitted_grids")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    paths = [out / f"{args.name}.json", out / f"{args.name}.md"]
    if not args.force and any(p.exists() for p in paths):
        print(f"{paths[0]} exists; pass --force to overwrite", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    command = "python benchmarks/fitted_grids.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["command"] = command
    write_atomic(paths[0], json.dumps(results, indent=1) + "\n")
    write_atomic(paths[1], markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
