"""The Langevin corrector's step rules against exact statistics, from 3 to 3072 dimensions.

For each target and each ``step_rule`` of ``sv.langevin_correct`` (and the predictor
alone, for comparison), draws samples with the reverse-diffusion predictor plus one
Langevin corrector step per time, and reports against the exact law of the data
diffused to ``t = sampling_eps``:

* the largest error of the mean, of the covariance (3-D only) and of a mode weight;
* the within-mode variance over the true one (samples assigned to their most
  responsible mode; pooled over coordinates), in the ring's plane and elsewhere for
  the default mixture.

Targets: a 3-component 3-D mixture (the one of ``tests/test_corrector.py``) and the
default mixture in 2, 64 and 3072 dimensions. Writes ``corrector_rules.md`` and
``.json`` under ``--out`` (refuses to overwrite without ``--force``)::

    python benchmarks/corrector_rules.py --force
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

import sdevp_jax as sv
from sdevp_jax import sde
from sdevp_jax._io import atomic_write

MIX3 = ([0.5, 0.3, 0.2], [[1.0, 0.0, -0.5], [-1.0, 1.0, 0.5], [0.0, -1.5, 1.0]],
        [[0.3, 0.4, 0.5], [0.5, 0.3, 0.4], [0.4, 0.5, 0.3]])
RULES = ("sigma", "snr_batch", "snr_sample", None)


def measure(mixture, x, alpha, sigma, plane):
    """Error statistics of samples ``x`` (M, D) against the mixture diffused to (alpha, sigma)."""
    w, mu, s2 = (np.asarray(v, np.float64) for v in (mixture.weights, mixture.means, np.square(mixture.scales)))
    mu, v = alpha * mu, alpha**2 * s2 + sigma**2
    mean = w @ mu
    modes = np.asarray(sv.mixtures.assign_modes(mixture, x))
    freq = np.bincount(modes, minlength=len(w)) / len(x)
    ratio = np.square(x - mu[modes]) / v[modes]
    out = {"mean_err": float(np.max(np.abs(x.mean(0) - mean))), "weight_err": float(np.max(np.abs(freq - w))),
           "weight_se": float(np.max(np.sqrt(w * (1 - w) / len(x))))}
    if x.shape[1] <= 8:
        cov = sum(w[k] * (np.diag(v[k]) + np.outer(mu[k] - mean, mu[k] - mean)) for k in range(len(w)))
        out["cov_err"] = float(np.max(np.abs(np.cov(x.T) - cov)))
    if plane:
        out["var_ratio_plane"] = float(ratio[:, :2].mean())
        if x.shape[1] > 2:
            out["var_ratio_rest"] = float(ratio[:, 2:].mean())
    else:
        out["var_ratio"] = float(ratio.mean())
    return out


def run(args) -> dict:
    state = sv.set_timesteps(sv.create_state(), args.steps)
    alpha = float(sde.alpha(state.sampling_eps, state.beta_min, state.beta_max))
    sigma = float(sde.sigma(state.sampling_eps, state.beta_min, state.beta_max))
    f = jax.jit(sv.sample, static_argnums=(1, 3), static_argnames=("predictor", "corrector", "step_rule"))
    targets = [("3-component 3-D mixture", sv.mixtures.make_mixture(*MIX3), args.samples[0], False)]
    targets += [(f"default mixture, D = {d}", sv.mixtures.default_mixture(d), m, True)
                for d, m in zip(args.dims, args.samples[1:])]
    results = {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
               "jax": jax.__version__, "steps": args.steps, "snr": args.snr, "rows": []}
    for name, mixture, m, plane in targets:
        model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
        for rule in RULES:
            opts = {"corrector": "langevin", "snr": args.snr, "step_rule": rule} if rule else {}
            start = time.perf_counter()
            x = f(state, model_fn, jax.random.key(args.seed), (m, mixture.dim), predictor="reverse_diffusion", **opts)
            x = np.asarray(jax.block_until_ready(x), np.float64)
            row = {"target": name, "samples": m, "rule": rule or "predictor alone",
                   **measure(mixture, x, alpha, sigma, plane), "seconds": time.perf_counter() - start}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    return results


def markdown(results, command) -> str:
    keys = ["mean_err", "cov_err", "weight_err", "weight_se", "var_ratio", "var_ratio_plane", "var_ratio_rest"]
    out = ["# Corrector step rules against exact statistics", "",
           f"Command: `{command}`  ",
           f"Machine: {results['machine']} ({results['processor']}), CPU, JAX {results['jax']}.  ",
           f"Reverse-diffusion predictor + one Langevin step per time, N = {results['steps']}, snr = {results['snr']}; "
           "one run per row (seed fixed). `weight_se` is the binomial standard error of the largest mode weight; "
           "`var_ratio*`: within-mode variance over the true one (1 is right).", "",
           "| target | M | rule | " + " | ".join(keys) + " | seconds |",
           "|---|---:|---|" + "---:|" * (len(keys) + 1)]
    for r in results["rows"]:
        cells = [f"{r[k]:.4f}" if k in r else "-" for k in keys]
        out.append(f"| {r['target']} | {r['samples']} | {r['rule']} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--snr", type=float, default=0.16)
    parser.add_argument("--dims", type=int, nargs="*", default=[2, 64, 3072])
    parser.add_argument("--samples", type=int, nargs="+", default=[20_000, 20_000, 10_000, 1000],
                        help="samples for the 3-D target, then for each of --dims")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if len(args.samples) != 1 + len(args.dims) or min(args.samples) < 2 or args.steps <= 20:
        parser.error("need one --samples value (>= 2) per target (the 3-D one, then each --dims) and --steps > 20")
    paths = [args.out / "corrector_rules.md", args.out / "corrector_rules.json"]
    if any(p.exists() for p in paths) and not args.force:
        print(f"corrector_rules: {paths[0]} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    command = ("python benchmarks/corrector_rules.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    results = run(args) | {"command": command}
    atomic_write(paths[1], lambda f: f.write((json.dumps(results, indent=1) + "\n").encode()))
    atomic_write(paths[0], lambda f: f.write(markdown(results, command).encode()))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
