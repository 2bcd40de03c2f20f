"""Accuracy per network call of every registered sampler, on one grid, for the sampler guide's table.

Every method of ``sv.METHODS`` (predictors, ODE solvers, SDE grid solvers; not the corrector,
which runs inside a predictor, nor ``adaptive``, whose budget is a tolerance) at budgets of
``--budgets`` network calls per sample: the largest number of grid points ``N`` whose exact call
count (``solver.nfe(N)``) fits the budget, on ``set_timesteps(state, N, spacing="logsnr")`` of
the paper's linear VP schedule (the same kind of grid for every method: uniform in log-SNR from
t = 1 to ``sampling_eps``). The grid solvers end at the last grid time
(``final_sigmas_type="last"``), so every method ends where the exact law is known.

Against the default mixture in ``--dim`` dimensions diffused to ``sampling_eps``:

* the sliced Wasserstein-2 distance to exact samples (``--directions`` random unit directions,
  averaged over ``--reference-sets`` exact sets; :func:`accuracy_vs_nfe.sliced_w2`);
* for the deterministic methods, the RMS difference to a tight solution of the same ODE from the
  same x_T (the adaptive solver at rtol = atol = 1e-6): the solver's own error, free of sampling
  noise.

Each row is the mean of ``--replicates`` runs (replicate r's key is the same for every method) with
their standard deviation; the noise floor is the SW2 between independent exact sets. A method that
refuses the grid (e.g. a predictor that needs N > beta_max on this schedule) is listed with its
message. Writes ``method_table.{md,json}`` under ``--out`` (refusing to overwrite without
``--force``)::

    python benchmarks/method_table.py --force
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import sdevp_jax as sv  # noqa: E402
from accuracy_vs_nfe import exact_moments, sliced_w2, tight_solution  # noqa: E402
from sdevp_jax import sde  # noqa: E402
from sdevp_jax._io import atomic_write  # noqa: E402


def methods() -> list[str]:
    return [name for name, info in sv.METHODS.items() if info.kind != "corrector" and name != "adaptive"]


def make_solver(name: str):
    cls = sv.solvers.get(name)
    options = {"final_sigmas_type": "last"} if "final_sigmas_type" in sv.solvers.option_fields(cls) else {}
    return sv.solvers.make(name, **options)


def points_for(solver, budget: int) -> int:
    """The most grid points whose network calls fit ``budget`` (0 if none does)."""
    best = 0
    for n in range(2, budget + 2):
        if solver.nfe(n) <= budget:
            best = n
    return best


def run(args) -> dict:
    base = sv.create_state()
    a = float(sde.alpha(base.sampling_eps, base.beta_min, base.beta_max))
    s = float(sde.sigma(base.sampling_eps, base.beta_min, base.beta_max))
    mixture = sv.mixtures.default_mixture(args.dim)
    rng = np.random.default_rng(args.dim)
    directions = rng.standard_normal((args.directions, args.dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    mean, cov = exact_moments(mixture, a, s)

    def exact(seed):
        return np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(seed), args.num_samples, alpha=a,
                                                     sigma=s), np.float64)

    references = [exact(10_000 + k) for k in range(args.reference_sets)]

    def sw2(x):
        return float(np.mean([sliced_w2(x, ref, directions) for ref in references])) if np.all(np.isfinite(x)) \
            else float("nan")

    floor = [sw2(exact(20_000 + r)) for r in range(args.floor_repeats)]
    shape = (args.num_samples, args.dim)
    tight = {}
    rows = []
    names = args.only or methods()
    for name in names:
        solver = make_solver(name)
        for budget in args.budgets:
            n = points_for(solver, budget)
            row = {"method": name, "kind": sv.METHODS[name].kind, "budget": budget, "N": n,
                   "stochastic": bool(solver.stochastic)}
            try:
                if n < 2:
                    raise ValueError(f"no grid of >= 2 points fits {budget} calls")
                state = sv.set_timesteps(base, n, spacing="logsnr")
                model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
                draw = jax.jit(lambda key: sv.sample(state, model_fn, key, shape, solver=solver, return_info=True))
                start = time.perf_counter()
                reps = []
                for r in range(args.replicates):
                    key = jax.random.fold_in(jax.random.key(args.dim), r)
                    x, info = draw(key)
                    x = np.asarray(jax.block_until_ready(x), np.float64)
                    ode_err = float("nan")
                    if not solver.stochastic and solver.kind != "predictor":
                        if r not in tight:
                            tight[r] = tight_solution(base, mixture, key, shape)
                        ode_err = float(np.sqrt(np.mean((x - tight[r]) ** 2)))
                    reps.append((sw2(x), ode_err, int(info.nfe), float(np.linalg.norm(x.mean(0) - mean)),
                                 float(np.linalg.norm(np.cov(x.T) - cov))))
                seconds = (time.perf_counter() - start) / args.replicates
                w, e, nfe, m_err, c_err = (np.array(v) for v in zip(*reps))
                row |= {"nfe": int(nfe.max()), "sw2": float(w.mean()), "sw2_sd": float(w.std(ddof=1)),
                        "ode_err": float(e.mean()), "ode_err_sd": float(e.std(ddof=1)), "mean_err": float(m_err.mean()),
                        "cov_err": float(c_err.mean()), "seconds": seconds}
                print(f"{name:28s} budget {budget:3d} N={n:3d} NFE={row['nfe']:3d} SW2={row['sw2']:.4f}"
                      f"+-{row['sw2_sd']:.4f} ODE err={row['ode_err']:.2e} ({seconds:.1f} s)", flush=True)
            except ValueError as err:
                row["refused"] = str(err).split("\n")[0][:200]
                print(f"{name:28s} budget {budget:3d}: refused: {row['refused']}", flush=True)
            rows.append(row)
    return {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "device": str(jax.devices()[0]), "jax": jax.__version__, "sdevp_jax": sv.__version__,
            "dim": args.dim, "num_samples": args.num_samples, "directions": args.directions,
            "reference_sets": args.reference_sets, "replicates": args.replicates,
            "floor_mean": float(np.mean(floor)), "floor_sd": float(np.std(floor, ddof=1)), "rows": rows}


def markdown(results: dict, command: str) -> str:
    lines = ["# Every sampler at a fixed budget of network calls", "",
             f"Command: `{command}`  ",
             f"Machine: {results['machine']} ({results['processor']}), device {results['device']}, "
             f"JAX {results['jax']}, sdevp_jax {results['sdevp_jax']}.  ",
             f"The default mixture in {results['dim']} dimensions, {results['num_samples']} samples per run, "
             f"the paper's linear VP schedule, every method on the log-SNR grid of the most points its exact "
             f"network calls allow (grid solvers ending at the last grid time). SW2: sliced W2 to exact samples "
             f"({results['directions']} directions, {results['reference_sets']} reference sets), mean +- sd of "
             f"{results['replicates']} replicates; noise floor (exact vs exact) {results['floor_mean']:.4f} +- "
             f"{results['floor_sd']:.4f}. ODE error: RMS to the adaptive solution at rtol = atol = 1e-6 from the "
             f"same x_T (deterministic methods).", "",
             "| method | kind | budget | N | NFE | SW2 | ODE error |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        if "refused" in row:
            lines.append(f"| {row['method']} | {row['kind']} | {row['budget']} | – | – | refused: "
                         f"{row['refused'].replace('|', '/')} | – |")
            continue
        err = "–" if np.isnan(row["ode_err"]) else f"{row['ode_err']:.2e}"
        lines.append(f"| {row['method']} | {row['kind']} | {row['budget']} | {row['N']} | {row['nfe']} | "
                     f"{row['sw2']:.4f} ± {row['sw2_sd']:.4f} | {err} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=4000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--directions", type=int, default=128)
    parser.add_argument("--reference-sets", type=int, default=2)
    parser.add_argument("--floor-repeats", type=int, default=4)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=None, metavar="METHOD")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--force", action="store_true", help="overwrite existing results")
    args = parser.parse_args(argv)
    stem = args.out / "method_table"
    if not args.force and any(Path(f"{stem}.{ext}").exists() for ext in ("md", "json")):
        print(f"{stem}.md/.json exist: pass --force to overwrite", file=sys.stderr)
        return 2
    results = run(args)
    command = "python benchmarks/method_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(f"{stem}.json", lambda f: f.write(json.dumps(results, indent=1).encode()))
    atomic_write(f"{stem}.md", lambda f: f.write(markdown(results, command.strip()).encode()))
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
