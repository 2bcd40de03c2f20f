"""Accuracy per network call: every sampler against exact samples of the embedded mixture.

For each method and a range of NFE budgets (network calls per sample), draws
``--num-samples`` samples of the default mixture (in 2 and in 64 dimensions) and
measures, against exact samples of the same law -- the data diffused to
``t = sampling_eps``, which is every sampler's limit:

* the sliced Wasserstein-2 distance (``--directions`` random unit directions; the
  1-D W2 of equal-size samples is the RMS difference of their sorted projections);
* the error of the mean (Euclidean norm) and of the covariance (Frobenius norm),
  against the mixture's exact moments.

* for the ODE methods, the error to a tight solution of the same ODE from the same
  :math:`x_T` (the adaptive solver at ``rtol = atol = 1e-6``): the RMS over samples and
  coordinates of the difference. This has no sampling noise: it shows the solver's
  own error even where the sampling distances are all at the noise floor.

Each row averages ``--replicates`` independent runs (replicate ``r`` uses the same
key for every method, so the rows share their random numbers). Each run's sliced W2
is the mean over ``--reference-sets`` independent exact reference sets (which
averages out the luck of one reference set). The noise floor is the same distance
for further independent exact sets (mean and spread over ``--floor-repeats`` sets).
Two rows are "as accurate within statistical noise" when their mean distances
differ by at most twice the standard error of that difference,
``2 sqrt(sd_a^2 / r + sd_b^2 / r)`` from the rows' own replicate spreads; a row is
"at the floor" when it is within twice the standard error of its difference to the
floor's mean.

Writes ``accuracy_vs_nfe.md`` (a table), ``accuracy_vs_nfe.json`` and
``accuracy_vs_nfe.png`` (SW2 against NFE) under ``--out``; refuses to overwrite
them without ``--force``. Reproduce the committed results with::

    python benchmarks/accuracy_vs_nfe.py --force

A quick smoke run (the test suite does this): ``--quick --out /tmp/x``.
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

import sdevp_jax as sv
from sdevp_jax import sde
from sdevp_jax._io import atomic_write


# (label, kind, options, [(N, NFE)]) -- kind "sde" uses sv.sample, "ode" sv.sample_ode.
# reverse_diffusion, ancestral and the corrector need N > beta_max = 20.
FULL_PLAN = [
    ("euler_maruyama", "sde", {}, [(n, n) for n in (10, 20, 50, 100, 200, 500, 1000)]),
    ("reverse_diffusion", "sde", {"predictor": "reverse_diffusion"}, [(n, n) for n in (25, 50, 100, 200, 500, 1000)]),
    ("ancestral", "sde", {"predictor": "ancestral"}, [(n, n) for n in (25, 50, 100, 200, 500, 1000)]),
    # the corrector's three step rules (sv.langevin_correct), each with the reverse-diffusion predictor
    *[(f"pc, step_rule={rule}", "sde", {"predictor": "reverse_diffusion", "corrector": "langevin", "step_rule": rule},
       [(n, 2 * n) for n in (25, 50, 100, 250, 500)]) for rule in ("sigma", "snr_batch", "snr_sample")],
    ("euler (ODE)", "ode", {"method": "euler"}, [(k + 1, k) for k in (10, 20, 50, 100, 200, 500, 1000)]),
    ("heun (ODE)", "ode", {"method": "heun"}, [(k + 1, 2 * k) for k in (5, 10, 25, 50, 100, 250, 500)]),
    ("dpm_solver (ODE)", "ode", {"method": "dpm_solver"}, [(k + 1, k) for k in (5, 8, 10, 12, 15, 20, 50, 100)]),
    ("adaptive (ODE)", "ode", {"method": "adaptive"}, [("rtol=atol=" + str(tol), tol) for tol in (1e-2, 1e-3, 1e-4, 1e-5)]),
]


def quick_plan():
    keep = {"euler_maruyama": [(10, 10)], "dpm_solver (ODE)": [(6, 5)], "adaptive (ODE)": [("rtol=atol=0.01", 1e-2)],
            "pc, step_rule=sigma": [(25, 50)]}
    return [(label, kind, opts, keep[label]) for label, kind, opts, _ in FULL_PLAN if label in keep]


def sliced_w2(x, y, directions):
    """Sliced W2 between equal-size samples x, y (n, D) over unit ``directions`` (L, D)."""
    px = np.sort(x @ directions.T, axis=0)
    py = np.sort(y @ directions.T, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def exact_moments(mixture, a, s):
    w, mu, sc = (np.asarray(v, np.float64) for v in (mixture.weights, mixture.means, mixture.scales))
    mean = a * (w @ mu)
    second = sum(w[k] * (np.diag(a**2 * sc[k] ** 2 + s**2) + np.outer(a * mu[k], a * mu[k])) for k in range(len(w)))
    return mean, second - np.outer(mean, mean)


def draw(kind, state, model_fn, key, shape, opts, tol):
    if kind == "sde":
        f = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=tuple(opts))
        return f(state, model_fn, key, shape, **opts), None
    if opts["method"] == "adaptive":
        f = jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method", "return_info"))
        return f(state, model_fn, key, shape, rtol=tol, atol=tol, return_info=True, **opts)
    f = jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method", "return_info"))
    return f(state, model_fn, key, shape, return_info=True, **opts)


TIGHT = 1e-6  # rtol = atol of the reference ODE solution (float32: about the smallest that is meaningful)


def tight_solution(base, mixture, key, shape):
    """The probability-flow ODE solved tightly (adaptive, rtol = atol = TIGHT) from the x_T of ``key``."""
    state = sv.set_timesteps(base, 2)
    f = jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method", "max_steps"))
    x = f(state, sv.make_mixture_eps_fn(state, mixture), key, shape, method="adaptive", rtol=TIGHT, atol=TIGHT,
          max_steps=100_000)
    return np.asarray(jax.block_until_ready(x), np.float64)


def run(args) -> dict:
    results = {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
               "device": str(jax.devices()[0]), "jax": jax.__version__, "num_samples": args.num_samples,
               "directions": args.directions, "replicates": args.replicates,
               "reference_sets": args.reference_sets, "tight_tol": TIGHT, "dims": {}}
    plan = quick_plan() if args.quick else FULL_PLAN
    if args.only:  # a subset of rows: "LABEL" or "LABEL@N"
        wanted = [w.split("@") for w in args.only]
        plan = [(label, kind, opts, [b for b in budgets if any(w[0] == label and (len(w) == 1 or w[1] == str(b[0]))
                                                               for w in wanted)])
                for label, kind, opts, budgets in plan]
        plan = [entry for entry in plan if entry[3]]
    base = sv.create_state()
    a = float(sde.alpha(base.sampling_eps, base.beta_min, base.beta_max))
    s = float(sde.sigma(base.sampling_eps, base.beta_min, base.beta_max))
    for dim in args.dims:
        mixture = sv.default_mixture(dim)
        rng = np.random.default_rng(dim)
        directions = rng.standard_normal((args.directions, dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        mean, cov = exact_moments(mixture, a, s)

        def exact(seed):
            return np.asarray(sv.sample_mixture(mixture, jax.random.key(seed), args.num_samples, alpha=a, sigma=s),
                              np.float64)

        references = [exact(10_000 + k) for k in range(args.reference_sets)]

        def sw2_to_exact(x):
            return float(np.mean([sliced_w2(x, ref, directions) for ref in references]))

        floor = [sw2_to_exact(exact(20_000 + r)) for r in range(args.floor_repeats)]
        tight = {}  # replicate -> the adaptive solution at rtol = atol = TIGHT from that replicate's x_T
        rows = []
        for label, kind, opts, budgets in plan:
            for n, nfe_or_tol in budgets:
                state = sv.set_timesteps(base, 2 if isinstance(n, str) else n)
                model_fn = sv.make_mixture_eps_fn(state, mixture)
                start = time.perf_counter()
                reps = []  # replicate r uses the same key for every method (common random numbers)
                for r in range(args.replicates):
                    key = jax.random.fold_in(jax.random.key(dim), r)
                    x, info = draw(kind, state, model_fn, key, (args.num_samples, dim), opts, nfe_or_tol)
                    x = np.asarray(jax.block_until_ready(x), np.float64)
                    if info is not None:
                        nfe, nfe_mean = int(info.nfe), float(jnp.mean(info.nfe_per_sample))
                    else:
                        nfe, nfe_mean = int(nfe_or_tol), float(nfe_or_tol)
                    ode_err = float("nan")
                    if kind == "ode":
                        if r not in tight:
                            tight[r] = tight_solution(base, mixture, key, (args.num_samples, dim))
                        ode_err = float(np.sqrt(np.mean((x - tight[r]) ** 2)))
                    reps.append((sw2_to_exact(x) if np.all(np.isfinite(x)) else float("nan"),
                                 float(np.linalg.norm(x.mean(0) - mean)), float(np.linalg.norm(np.cov(x.T) - cov)),
                                 nfe, nfe_mean, ode_err))
                seconds = (time.perf_counter() - start) / args.replicates
                sw2, mean_err, cov_err, nfes, nfe_means, ode_errs = (np.array(v) for v in zip(*reps))
                row = {"method": label, "N": n, "nfe": int(nfes.max()), "nfe_mean_per_sample": float(nfe_means.mean()),
                       "sw2": float(sw2.mean()), "sw2_sd": float(sw2.std(ddof=1)) if len(sw2) > 1 else 0.0,
                       "mean_err": float(mean_err.mean()), "cov_err": float(cov_err.mean()),
                       "ode_err": float(ode_errs.mean()), "seconds": seconds}
                rows.append(row)
                print(f"D={dim:3d} {label:22s} N={n!s:16s} NFE={row['nfe']:5d} SW2={row['sw2']:.4f}+-{row['sw2_sd']:.4f} "
                      f"mean={row['mean_err']:.4f} cov={row['cov_err']:.4f} ({seconds:.1f} s)", flush=True)
        results["dims"][str(dim)] = {"floor_mean": float(np.mean(floor)), "floor_std": float(np.std(floor, ddof=1))
                                     if len(floor) > 1 else 0.0, "floor": floor, "rows": rows}
    return results


def _se_diff(a, b, replicates):
    """Standard error of the difference of two rows' mean SW2, from their replicate spreads."""
    return float(np.sqrt((a["sw2_sd"] ** 2 + b["sw2_sd"] ** 2) / replicates))


def verdicts(results) -> list[str]:
    """The targets, by this script's own criteria (see the module docstring)."""
    lines = []
    r = results["replicates"]
    for dim, d in results["dims"].items():
        rows = d["rows"]
        floor = {"sw2": d["floor_mean"], "sw2_sd": d["floor_std"]}
        floor_reps = max(len(d.get("floor", [])), 2)
        em = [row for row in rows if row["method"] == "euler_maruyama" and row["nfe"] == 1000]
        few = [row for row in rows if row["nfe"] <= 20 and np.isfinite(row["sw2"])]
        if em and few:
            best = min(few, key=lambda row: row["sw2"])
            se = _se_diff(best, em[0], r)
            ok = best["sw2"] - em[0]["sw2"] <= 2 * se
            em_floor_se = float(np.sqrt(em[0]["sw2_sd"] ** 2 / r + floor["sw2_sd"] ** 2 / floor_reps))
            lines.append(
                f"- D = {dim}: best at <= 20 NFE is {best['method']} (N={best['N']}, {best['nfe']} NFE), SW2 "
                f"{best['sw2']:.4f} +- {best['sw2_sd']:.4f}; Euler-Maruyama at 1000 NFE: {em[0]['sw2']:.4f} +- "
                f"{em[0]['sw2_sd']:.4f}. Difference {best['sw2'] - em[0]['sw2']:+.4f}, 2 SE = {2 * se:.4f}: as "
                f"accurate within statistical noise: {'yes' if ok else 'NO'}. (Euler-Maruyama at 1000 NFE vs the "
                f"noise floor {floor['sw2']:.4f}: {em[0]['sw2'] - floor['sw2']:+.4f}, 2 SE = {2 * em_floor_se:.4f}.)")
        odes = [row for row in rows if np.isfinite(row.get("ode_err", float("nan"))) and row["nfe"] <= 20
                and row["method"] != "adaptive (ODE)"]
        if odes:
            best = min(odes, key=lambda row: row["ode_err"])
            lines.append(f"- D = {dim}: smallest error to the tight ODE solution at <= 20 NFE: {best['method']} "
                         f"(N={best['N']}, {best['nfe']} NFE), RMS {best['ode_err']:.2e}.")
        adaptive = [row for row in rows if row["method"] == "adaptive (ODE)" and row["N"] == "rtol=atol=1e-05"]
        if adaptive:
            lines.append(f"- D = {dim}: adaptive ODE at rtol = atol = 1e-5 made {adaptive[0]['nfe']} batched network "
                         f"calls (mean per sample {adaptive[0]['nfe_mean_per_sample']:.0f}); target < 200: "
                         f"{'yes' if adaptive[0]['nfe'] < 200 else 'NO'}.")
        pcs = [row for row in rows if row["method"].startswith("pc, step_rule=") and row["N"] == 500]
        if pcs:
            lines.append(f"- D = {dim}: corrector step rules at N = 500 (1000 NFE), SW2: " + "; ".join(
                f"{row['method'].split('=')[1]} {row['sw2']:.4f} +- {row['sw2_sd']:.4f}" for row in pcs)
                + f" (floor {floor['sw2']:.4f}).")
    return lines


def _fmt(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2e}"


def markdown(results, command) -> str:
    out = ["# Accuracy against network calls (NFE)", "",
           f"Command: `{command}`  ",
           f"Machine: {results['machine']} ({results['processor']}), device {results['device']}, JAX {results['jax']}.  ",
           f"{results['num_samples']} samples per row against {results['num_samples']} exact samples of the default "
           f"mixture diffused to t = sampling_eps (SW2 averaged over {results['reference_sets']} independent reference "
           f"sets); sliced W2 over {results['directions']} directions; each row the mean of {results['replicates']} "
           f"replicates (+- their standard deviation). ODE error: RMS difference to the adaptive solution at "
           f"rtol = atol = {results['tight_tol']:g} from the same x_T.", "",
           "## Targets", ""] + verdicts(results)
    for dim, d in results["dims"].items():
        out += ["", f"## D = {dim}", "",
                f"Noise floor (exact vs exact): SW2 {d['floor_mean']:.4f} +- {d['floor_std']:.4f}.", "",
                "| method | N / tolerance | NFE (batched) | NFE per sample (mean) | sliced W2 | mean error | cov error | ODE error | seconds per run (incl. compile) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in d["rows"]:
            out.append(f"| {r['method']} | {r['N']} | {r['nfe']} | {r['nfe_mean_per_sample']:.1f} | {r['sw2']:.4f} +- {r['sw2_sd']:.4f} | "
                       f"{r['mean_err']:.4f} | {r['cov_err']:.4f} | {_fmt(r.get('ode_err'))} | {r['seconds']:.1f} |")
    return "\n".join(out) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(results["dims"])
    fig, axes = plt.subplots(1, len(dims), figsize=(6 * len(dims), 4.5), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        d = results["dims"][dim]
        for method in dict.fromkeys(r["method"] for r in d["rows"]):
            pts = [(r["nfe"], r["sw2"]) for r in d["rows"] if r["method"] == method and np.isfinite(r["sw2"])]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", ms=3, label=method)
        ax.axhspan(d["floor_mean"] - 2 * d["floor_std"], d["floor_mean"] + 2 * d["floor_std"], color="grey",
                   alpha=0.3, label="noise floor (+-2 sd)")
        ax.set(xscale="log", yscale="log", xlabel="network calls (NFE)", ylabel="sliced W2 to exact samples",
               title=f"D = {dim}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=20_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--directions", type=int, default=256)
    parser.add_argument("--floor-repeats", type=int, default=8)
    parser.add_argument("--reference-sets", type=int, default=4)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true", help="a few rows at the given size (smoke test)")
    parser.add_argument("--force", action="store_true", help="overwrite existing results")
    parser.add_argument("--only", nargs="+", default=None, metavar="LABEL[@N]",
                        help="only these rows, e.g. 'euler_maruyama@1000' 'dpm_solver (ODE)@21'")
    parser.add_argument("--name", default="accuracy_vs_nfe", help="the results' file stem under --out")
    args = parser.parse_args(argv)
    if (args.num_samples < 2 or args.directions < 1 or args.floor_repeats < 2 or args.replicates < 1
            or args.reference_sets < 1 or min(args.dims) < 2):
        parser.error("need --num-samples >= 2, --directions >= 1, --floor-repeats >= 2, --replicates >= 1, "
                     "--reference-sets >= 1 and every --dims >= 2")
    paths = [args.out / f"{args.name}{suffix}" for suffix in (".md", ".json", ".png")]
    existing = [p for p in paths if p.exists()]
    if existing and not args.force:
        print(f"accuracy_vs_nfe: {existing[0]} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/accuracy_vs_nfe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run(args)
    results["command"] = command.strip()
    atomic_write(paths[1], lambda f: f.write((json.dumps(results, indent=1) + "\n").encode()))
    atomic_write(paths[0], lambda f: f.write(markdown(results, command.strip()).encode()))
    atomic_write(paths[2], lambda f: plot(results, f))
    print("\n".join(verdicts(results)))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
