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

``--frontier`` runs the other experiment, issue 11's accuracy-per-NFE frontier: sv's
deterministic solvers against diffusers' DDIM, DPM-Solver++ (2M, 3M), UniPC (bh1, bh2)
and DEIS schedulers at 5-25 counted network calls, on Stable Diffusion's scaled_linear
schedule, from the same x_T, the diffusers side in its own process
(``accuracy_vs_nfe_diffusers.py``, run by ``--torch-python``), both compared with exact
samples at their end time and with a float64 tight ODE solution; writes
``accuracy_vs_nfe_frontier.{md,json,png}``. What each row does is written in the .md.
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
    x = f(state, sv.mixtures.make_mixture_eps_fn(state, mixture), key, shape, method="adaptive", rtol=TIGHT, atol=TIGHT,
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
        mixture = sv.mixtures.default_mixture(dim)
        rng = np.random.default_rng(dim)
        directions = rng.standard_normal((args.directions, dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        mean, cov = exact_moments(mixture, a, s)

        def exact(seed):
            return np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(seed), args.num_samples, alpha=a, sigma=s),
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
                model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
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


# ---------------------------------------------------------------------------------------------
# --frontier: sv's deterministic solvers against diffusers' schedulers, at equal network calls
# ---------------------------------------------------------------------------------------------

#: Stable Diffusion's discrete schedule, the one diffusers' multistep schedulers are built for.
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
FRONTIER_NFES = (5, 8, 10, 15, 20, 25)
FRONTIER_TIGHT = 1e-6  # rtol = atol of the float64 reference solution (1e-8: 405 s a replicate at 20000 x 64)


def labels_linspace(n, num_train=1000):
    """DPMSolverMultistep's / UniPC's / DEIS's default labels for ``n`` steps (``timestep_spacing="linspace"``)."""
    return np.linspace(0, num_train - 1, n + 1).round()[::-1][:-1].astype(np.int64)


def labels_leading(n, num_train=1000):
    """DDIMScheduler's default labels for ``n`` steps (``"leading"``, ``steps_offset = 0``)."""
    return (np.arange(n) * (num_train // n))[::-1].astype(np.int64)


def labels_to_zero(n, num_train=1000):
    """``n + 1`` labels: the linspace labels of ``n`` steps, then label 0 (for the solvers that end on the grid)."""
    return np.linspace(0, num_train - 1, n + 1).round()[::-1].astype(np.int64)


def times_logsnr(n):
    """``n`` times uniform in log-SNR from label 999 (t = 1) to label 0 (t = 1/N): sv's own grid (floats: times)."""
    from sdevp_jax import schedules

    sd = schedules.from_diffusers(SD_SCHEDULE["beta_schedule"], SD_SCHEDULE["beta_start"], SD_SCHEDULE["beta_end"],
                                  SD_SCHEDULE["num_train_timesteps"])
    return np.asarray(sv.set_timesteps(sv.create_state(schedule=sd), n, spacing="logsnr").timesteps, np.float64)


# (label, grid for a budget of n calls (int: labels; float: times), sample_ode options, where it ends, calls for that budget)
# Grid solvers with final_sigmas_type="zero" make N - 1 + 1 = N calls on N labels and end at sigma = 0;
# dpm_solver (eps form), euler and heun end on the grid's last label, here label 0 (t = 1/N):
# N - 1 calls (2 (N - 1) for heun) on N labels.
SV_ROWS = [
    ("sv ddim (leading labels)", labels_leading, {"method": "ddim"}, "zero", lambda n: n),
    ("sv ddim", labels_linspace, {"method": "ddim"}, "zero", lambda n: n),
    ("sv dpm_solver_pp 2M", labels_linspace, {"method": "dpm_solver_pp", "order": 2}, "zero", lambda n: n),
    ("sv dpm_solver_pp 3M", labels_linspace, {"method": "dpm_solver_pp", "order": 3}, "zero", lambda n: n),
    ("sv dpm_solver_pp 3M (diffusers' 3rd order)", labels_linspace,
     {"method": "dpm_solver_pp", "order": 3, "third_order": "diffusers"}, "zero", lambda n: n),
    *[(f"sv unipc {v} order {o}", labels_linspace, {"method": "unipc", "solver_type": v, "order": o}, "zero",
       lambda n: n) for o in (2, 3) for v in ("bh1", "bh2")],
    # the grid solvers ending on label 0 like DEIS (final_sigmas_type="last": N - 1 calls on N labels)
    *[(f"{name} (to label 0)", labels_to_zero, {**opts, "final_sigmas_type": "last"}, "label0", lambda n: n)
      for name, opts in (("sv dpm_solver_pp 2M", {"method": "dpm_solver_pp", "order": 2}),
                         ("sv dpm_solver_pp 3M", {"method": "dpm_solver_pp", "order": 3}),
                         ("sv unipc bh1 order 3", {"method": "unipc", "solver_type": "bh1", "order": 3}),
                         ("sv unipc bh2 order 3", {"method": "unipc", "solver_type": "bh2", "order": 3}))],
    # sv's own grid: uniform in log-SNR between the same end labels (the linspace labels' last step, from label
    # round(999/n) to sigma = 0, is the coarsest in log-SNR)
    *[(f"{name} (log-SNR grid)", times_logsnr, opts, "zero", lambda n: n)
      for name, opts in (("sv dpm_solver_pp 2M", {"method": "dpm_solver_pp", "order": 2}),
                         ("sv dpm_solver_pp 3M", {"method": "dpm_solver_pp", "order": 3}),
                         ("sv unipc bh2 order 3", {"method": "unipc", "solver_type": "bh2", "order": 3}))],
    ("sv dpm_solver order 3 (log-SNR grid)", lambda n: times_logsnr(n + 1), {"method": "dpm_solver", "order": 3},
     "label0", lambda n: n),
    ("sv dpm_solver order 2", labels_to_zero, {"method": "dpm_solver", "order": 2}, "label0", lambda n: n),
    ("sv dpm_solver order 3", labels_to_zero, {"method": "dpm_solver", "order": 3}, "label0", lambda n: n),
    ("sv euler", labels_to_zero, {"method": "euler"}, "label0", lambda n: n),
    ("sv heun", lambda n: labels_to_zero(n // 2), {"method": "heun"}, "label0", lambda n: 2 * (n // 2)),
]
#: sv rows that should reproduce a diffusers row to float32 rounding (same labels, same update)
PARITY = {
    "diffusers DDIM": "sv ddim (leading labels)",
    "diffusers DPM-Solver++ 2M": "sv dpm_solver_pp 2M",
    "diffusers DPM-Solver++ 3M": "sv dpm_solver_pp 3M (diffusers' 3rd order)",
    **{f"diffusers UniPC {v} order {o}": f"sv unipc {v} order {o}" for o in (2, 3) for v in ("bh1", "bh2")},
}
QUICK_SV_ROWS = ("sv ddim (leading labels)", "sv dpm_solver_pp 2M", "sv dpm_solver order 3")


def _mixture_eps_at(mixture, x, alpha, sigma):
    r"""The exact :math:`\hat\epsilon` of the mixture diffused to ``(alpha, sigma)`` (scalars), in x's dtype."""
    w, mu, sc = (jnp.asarray(v, x.dtype) for v in (mixture.weights, mixture.means, mixture.scales))
    var = alpha**2 * sc**2 + sigma**2
    diff = x[..., None, :] - alpha * mu
    logits = jnp.log(w) - 0.5 * jnp.sum(jnp.log(2 * jnp.pi * var) + diff**2 / var, axis=-1)
    resp = jax.nn.softmax(logits, axis=-1)
    return sigma * jnp.sum(resp[..., None] * diff / var, axis=-2)


def tight_to_zero(state64, mixture, x_t, tol):
    """The probability-flow ODE from ``x_t`` at t = 1, tightly, in float64: ``(x at label 0, x at sigma = 0)``.

    t = 1 to label 0 (t = 1/N): sv's adaptive solver (diffrax Tsit5, rtol = atol = ``tol``).
    Label 0 to sigma = 0, where log-SNR is unbounded: the same ODE in DDIM's variables
    ``y = x / alpha``, ``s = sigma / alpha``, ``dy/ds = eps(alpha y)`` (Song, Meng & Ermon
    2021, eq. 14), smooth down to s = 0, by the same Tsit5 per sample.
    """
    from sdevp_jax.loops import tsit5_solve

    model = sv.mixtures.make_mixture_eps_fn(state64, mixture)
    run = jax.jit(sv.sample_ode, static_argnums=(1, 3), static_argnames=("method", "max_steps", "dtype"))
    x_label0 = run(state64, model, jax.random.key(0), x_t.shape, method="adaptive", rtol=tol, atol=tol,
                   max_steps=100_000, dtype=jnp.float64, x_init=jnp.asarray(x_t, jnp.float64))
    alpha0, sigma0 = (float(v) for v in state64.schedule.alpha_sigma(jnp.asarray(state64.timesteps[-1])))

    def field(s, y, args):
        alpha = 1.0 / jnp.sqrt(1.0 + s * s)
        return _mixture_eps_at(mixture, alpha * y, alpha, s * alpha)

    @jax.jit
    def tail(x):
        return jax.vmap(lambda y0: tsit5_solve(field, y0, jnp.asarray(sigma0 / alpha0), jnp.asarray(0.0), tol, tol,
                                               100_000)[0])(x / alpha0)

    return np.asarray(x_label0), np.asarray(tail(x_label0))


def _sw2_mean(x, references, directions):
    return float(np.mean([sliced_w2(x, ref, directions) for ref in references])) if np.all(np.isfinite(x)) else float("nan")


def frontier_run(args) -> dict:
    """Both sides at every budget: sv here, diffusers in ``--torch-python``'s process; the metrics here."""
    import os
    import subprocess
    import tempfile

    from sdevp_jax import schedules

    n_train = SD_SCHEDULE["num_train_timesteps"]
    schedule = schedules.from_diffusers(SD_SCHEDULE["beta_schedule"], SD_SCHEDULE["beta_start"],
                                        SD_SCHEDULE["beta_end"], n_train)
    base = sv.create_state(schedule=schedule)
    nfes = [int(n) for n in args.nfes]
    sv_rows = [row for row in SV_ROWS if not args.quick or row[0] in QUICK_SV_ROWS]
    t_end = {"zero": 0.0, "label0": 1.0 / n_train}
    log_alpha0 = float(schedule.knots[1])  # log alpha at label 0 (t = 1/N), float64 on the host
    alpha_sigma = {"zero": (1.0, 0.0), "label0": (float(np.exp(log_alpha0)), float(np.sqrt(-np.expm1(2 * log_alpha0))))}
    alpha_top, sigma_top = (float(v) for v in schedule.alpha_sigma(jnp.asarray(1.0, jnp.float32)))
    results = {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
               "device": str(jax.devices()[0]), "jax": jax.__version__, "num_samples": args.num_samples,
               "directions": args.directions, "replicates": args.replicates, "reference_sets": args.reference_sets,
               "tight_tol": args.tight_tol, "schedule": SD_SCHEDULE, "nfes": nfes, "t_end": t_end, "dims": {}}
    exchange = {"meta": None}
    x_ts = {}
    for dim in args.dims:
        mixture = sv.mixtures.default_mixture(dim)
        for name in ("weights", "means", "scales"):
            exchange[f"d{dim}_{name}"] = np.asarray(getattr(mixture, name), np.float32)
        for r in range(args.replicates):
            # x_T: the mixture diffused to t = 1 exactly (label 999), so that every solver's limit is the exact
            # law at its end time (a N(0, I) start would add the prior's mismatch, alpha(1) = 0.068 here)
            key = jax.random.fold_in(jax.random.key(dim), r)
            x_ts[dim, r] = np.asarray(sv.mixtures.sample_mixture(mixture, key, args.num_samples, alpha=alpha_top,
                                                        sigma=sigma_top), np.float32)
            exchange[f"d{dim}_xT_{r}"] = x_ts[dim, r]
    meta = {**SD_SCHEDULE, "dims": list(args.dims), "nfes": nfes, "replicates": args.replicates}
    exchange["meta"] = np.asarray(json.dumps(meta))

    # the diffusers side first, in its own process
    diffusers_out, diffusers_meta = None, None
    if args.torch_python:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
            np.savez(src, **exchange)
            worker = Path(__file__).with_name("accuracy_vs_nfe_diffusers.py")
            proc = subprocess.run([args.torch_python, str(worker), src, dst], capture_output=True, text=True)
            print(proc.stdout, end="", flush=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"accuracy_vs_nfe: the diffusers worker failed (exit {proc.returncode})")
            with np.load(dst) as data:
                diffusers_out = {k: data[k] for k in data.files if k != "meta"}
                diffusers_meta = json.loads(str(data["meta"]))
        results["torch"], results["diffusers"] = diffusers_meta["torch"], diffusers_meta["diffusers"]

    for dim in args.dims:
        mixture = sv.mixtures.default_mixture(dim)
        rng = np.random.default_rng(dim)
        directions = rng.standard_normal((args.directions, dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)

        def exact(end, seed):
            a, s = alpha_sigma[end]
            return np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(seed), args.num_samples, alpha=a, sigma=s),
                              np.float64)

        references = {end: [exact(end, 10_000 + k) for k in range(args.reference_sets)] for end in t_end}
        floor = [_sw2_mean(exact("zero", 20_000 + r), references["zero"], directions)
                 for r in range(args.floor_repeats)]
        moments = {end: exact_moments(mixture, *alpha_sigma[end]) for end in t_end}
        tight = {}
        start = time.perf_counter()
        with jax.enable_x64(True):
            # a schedule object of its own: one shared with the float32 runs made jit reuse a float32 executable
            schedule64 = schedules.from_diffusers(SD_SCHEDULE["beta_schedule"], SD_SCHEDULE["beta_start"],
                                                  SD_SCHEDULE["beta_end"], n_train)
            state64 = sv.set_timesteps(sv.create_state(schedule=schedule64), timesteps=np.array([1.0, 1.0 / n_train]))
            mixture64 = sv.mixtures.make_mixture(*(np.asarray(v, np.float64) for v in (mixture.weights, mixture.means,
                                                                              mixture.scales)))
            for r in range(args.replicates):
                x_label0, x_zero = tight_to_zero(state64, mixture64, x_ts[dim, r], args.tight_tol)
                tight[r] = {"label0": x_label0, "zero": x_zero}
        tight_seconds = (time.perf_counter() - start) / args.replicates
        print(f"D={dim:3d} tight solution ({args.tight_tol:g}, float64): {tight_seconds:.1f} s per replicate", flush=True)

        def metrics(xs, end):
            mean, cov = moments[end]
            reps = [(_sw2_mean(x, references[end], directions), float(np.linalg.norm(x.mean(0) - mean)),
                     float(np.linalg.norm(np.cov(x.T) - cov)), float(np.sqrt(np.mean((x - tight[r][end]) ** 2))))
                    for r, x in enumerate(xs)]
            sw2, mean_err, cov_err, ode_err = (np.array(v) for v in zip(*reps))
            return {"sw2": float(sw2.mean()), "sw2_sd": float(sw2.std(ddof=1)) if len(sw2) > 1 else 0.0,
                    "mean_err": float(mean_err.mean()), "cov_err": float(cov_err.mean()),
                    "ode_err": float(ode_err.mean()), "ode_err_sd": float(ode_err.std(ddof=1)) if len(ode_err) > 1
                    else 0.0}

        model_fn = sv.mixtures.make_mixture_eps_fn(base, mixture)
        run_ode = jax.jit(sv.sample_ode, static_argnums=(1, 3),
                          static_argnames=("method", "order", "solver_type", "third_order", "final_sigmas_type",
                                           "return_info"))
        rows, first = [], {}  # first: (label, budget) -> replicate 0's samples, for the parity check
        for label, grid_of, opts, end, calls in sv_rows:
            for n in nfes:
                labels = grid_of(n)
                times = labels if labels.dtype.kind == "f" else sv.time_from_model_time(base, labels.astype(np.float64))
                state = sv.set_timesteps(base, timesteps=times)
                start = time.perf_counter()
                xs, nfe = [], None
                for r in range(args.replicates):
                    x, info = run_ode(state, model_fn, jax.random.key(r), (args.num_samples, dim), return_info=True,
                                      x_init=jnp.asarray(x_ts[dim, r]), **opts)
                    xs.append(np.asarray(jax.block_until_ready(x), np.float64))
                    nfe = int(info.nfe)
                if nfe != calls(n):
                    raise AssertionError(f"{label} at budget {n}: {nfe} calls, expected {calls(n)}")
                row = {"side": "sv", "method": label, "budget": n, "nfe": nfe, "end": end,
                       "labels": labels.tolist(), "options": opts, **metrics(xs, end),
                       "seconds": (time.perf_counter() - start) / args.replicates}
                rows.append(row)
                first[label, n] = xs[0]
                _print_frontier_row(dim, row)
        if diffusers_out is not None:
            for info in diffusers_meta["rows"]:
                if info["dim"] != dim:
                    continue
                xs = [diffusers_out[f"d{dim}|{info['method']}|{info['budget']}|{r}"].astype(np.float64)
                      for r in range(args.replicates)]
                row = {"side": "diffusers", **{k: info[k] for k in ("method", "budget", "nfe", "end", "labels",
                                                                      "config", "seconds")}, **metrics(xs, info["end"])}
                twin = first.get((PARITY.get(info["method"]), info["budget"]))
                if twin is not None:  # RMS difference to sv's row of the same update, relative to the samples' RMS
                    row["parity"] = {"sv_row": PARITY[info["method"]],
                                     "rel_rms_diff": float(np.sqrt(np.mean((xs[0] - twin) ** 2) / np.mean(twin**2)))}
                rows.append(row)
                _print_frontier_row(dim, row)
        em = None
        if args.em_steps:
            state = sv.set_timesteps(base, args.em_steps)
            run_sde = jax.jit(sv.sample, static_argnums=(1, 3))
            start = time.perf_counter()
            xs = [np.asarray(jax.block_until_ready(run_sde(state, model_fn, jax.random.key(1000 + r),
                                                           (args.num_samples, dim), x_init=jnp.asarray(x_ts[dim, r]))),
                             np.float64) for r in range(args.replicates)]
            # sv.sample's last step spans [0, t_{N-1}] and returns its mean: it ends at sigma = 0
            em = {"side": "sv", "method": f"sv euler_maruyama ({args.em_steps} steps, {state.spacing} grid)",
                  "budget": args.em_steps, "nfe": args.em_steps, "end": "zero", **metrics(xs, "zero"),
                  "seconds": (time.perf_counter() - start) / args.replicates}
            em["ode_err"] = em["ode_err_sd"] = float("nan")  # a stochastic sampler has no ODE solution to meet
            _print_frontier_row(dim, em)
        results["dims"][str(dim)] = {"floor_mean": float(np.mean(floor)), "floor_std": float(np.std(floor, ddof=1)),
                                     "floor": floor, "rows": rows, "euler_maruyama": em,
                                     "tight_seconds_per_replicate": tight_seconds}
    return results


def _print_frontier_row(dim, row):
    print(f"D={dim:3d} {row['method']:45s} budget={row['budget']!s:5s} NFE={row['nfe']:5d} end={row['end']:6s} "
          f"SW2={row['sw2']:.4f}+-{row['sw2_sd']:.4f} ODE err={row['ode_err']:.2e} ({row['seconds']:.1f} s)"
          + (f" vs {row['parity']['sv_row']}: rel. RMS diff {row['parity']['rel_rms_diff']:.1e}" if "parity" in row
             else ""), flush=True)


def frontier_table(results) -> dict:
    """Per dimension and budget: sv's best and diffusers' best row by SW2 and by ODE error."""
    table = {}
    for dim, d in results["dims"].items():
        table[dim] = []
        for n in results["nfes"]:
            entry = {"budget": n}
            for side in ("sv", "diffusers"):
                rows = [r for r in d["rows"] if r["side"] == side and r["budget"] == n and np.isfinite(r["sw2"])]
                if rows:
                    entry[side + "_sw2"] = min(rows, key=lambda r: r["sw2"])
                    entry[side + "_ode"] = min(rows, key=lambda r: r["ode_err"])
            table[dim].append(entry)
    return table


def frontier_verdicts(results) -> list[str]:
    """The two targets of issue 11, by this script's criteria (the module docstring's 2-SE rule)."""
    lines = []
    reps = results["replicates"]
    for dim, entries in frontier_table(results).items():
        d = results["dims"][dim]
        for e in entries:
            if "sv_sw2" not in e:
                continue
            s, so = e["sv_sw2"], e["sv_ode"]
            if "diffusers_sw2" not in e:
                lines.append(f"- D = {dim}, {e['budget']} NFE: sv's best SW2 {s['sw2']:.4f} ({s['method']}); "
                             f"diffusers: not measured (no --torch-python).")
                continue
            ds, do = e["diffusers_sw2"], e["diffusers_ode"]
            se = _se_diff(s, ds, reps)
            ok = s["sw2"] - ds["sw2"] <= 2 * se
            lines.append(
                f"- D = {dim}, {e['budget']} NFE: SW2 sv's best {s['sw2']:.4f} +- {s['sw2_sd']:.4f} ({s['method']}) vs "
                f"diffusers' best {ds['sw2']:.4f} +- {ds['sw2_sd']:.4f} ({ds['method']}): difference "
                f"{s['sw2'] - ds['sw2']:+.4f}, 2 SE = {2 * se:.4f}, at least as accurate: {'yes' if ok else 'NO'}. "
                f"ODE error sv's best {so['ode_err']:.2e} ({so['method']}) vs diffusers' best {do['ode_err']:.2e} "
                f"({do['method']}): ratio {so['ode_err'] / do['ode_err']:.2f}, "
                f"{'yes' if so['ode_err'] <= do['ode_err'] else 'NO'}.")
        em = d.get("euler_maruyama")
        at10 = [e for e in entries if e["budget"] == 10 and "sv_sw2" in e]
        if em and at10:
            s = at10[0]["sv_sw2"]
            se = _se_diff(s, em, reps)
            floor_se = float(np.sqrt(em["sw2_sd"] ** 2 / reps + d["floor_std"] ** 2 / max(len(d["floor"]), 2)))
            lines.append(
                f"- D = {dim}: sv's best at 10 NFE ({s['method']}) SW2 {s['sw2']:.4f} +- {s['sw2_sd']:.4f} vs "
                f"{em['method']} {em['sw2']:.4f} +- {em['sw2_sd']:.4f}: difference {s['sw2'] - em['sw2']:+.4f}, "
                f"2 SE = {2 * se:.4f}, within statistical noise: {'yes' if abs(s['sw2'] - em['sw2']) <= 2 * se else 'NO'}"
                f"{' (better)' if s['sw2'] < em['sw2'] - 2 * se else ''}. (Euler-Maruyama vs the noise floor "
                f"{d['floor_mean']:.4f}: {em['sw2'] - d['floor_mean']:+.4f}, 2 SE = {2 * floor_se:.4f}.)")
    return lines


def frontier_markdown(results, command) -> str:
    versions = f"JAX {results['jax']}"
    if "diffusers" in results:
        versions += f", torch {results['torch']}, diffusers {results['diffusers']}"
    sched = results["schedule"]
    out = ["# The accuracy-per-NFE frontier: sv's deterministic solvers against diffusers' schedulers", "",
           f"Command: `{command}`  ",
           f"Machine: {results['machine']} ({results['processor']}), device {results['device']}, {versions}.  ",
           f"Schedule: {sched['beta_schedule']} {sched['beta_start']}..{sched['beta_end']}, "
           f"{sched['num_train_timesteps']} labels (Stable Diffusion's), both sides; the model the exact mixture "
           f"noise prediction at the label's alphas_cumprod, written in JAX (sv) and in torch (diffusers), float32 "
           f"on both sides. x_T: {results['num_samples']} samples of the mixture diffused to label 999 (t = 1), drawn "
           f"by sv and loaded by the diffusers process, the same for every row of a replicate. "
           f"{results['replicates']} replicates per row (+- their standard deviation).  ",
           "NFE: model calls per sample, counted (sv's `info.nfe`; a counter in the torch model). diffusers' "
           "DPM-Solver++, UniPC and DEIS step through their default `linspace` labels; DDIM through its default "
           "`leading` labels; sv's grid solvers through the same `linspace` labels (`sv.set_timesteps(state, "
           "timesteps=sv.time_from_model_time(state, labels))`, n labels for n calls, then the step to sigma = 0), "
           "and sv's ddim also through DDIM's `leading` labels; sv's dpm_solver (eps form), euler and heun through "
           "the same labels then label 0 (n + 1 labels for n calls; heun n/2 + 1 labels, 2 calls a step); rows "
           "'(to label 0)' are sv's grid solvers on those n + 1 labels with `final_sigmas_type=\"last\"`; rows "
           "'(log-SNR grid)' are sv's solvers on sv's own grid, uniform in log-SNR from label 999 to label 0 "
           "(n times, then sigma = 0; n + 1 times for dpm_solver).  ",
           "End: `zero` rows (DDIM, DPM-Solver++, UniPC, the grid solvers, Euler-Maruyama) end at sigma = 0 and are "
           "compared with exact data samples and with the tight ODE solution continued to sigma = 0; `label0` rows "
           "(DEIS, whose last sigma is label 0's, and sv's dpm_solver, euler, heun) end at t = 1/1000 (sigma = "
           f"{np.sqrt(1 - (1 - sched['beta_start'])):.3f}) and are compared with the mixture diffused to that time "
           "and the tight solution there.  ",
           f"SW2: sliced W2 over {results['directions']} directions to {results['reference_sets']} independent exact "
           f"reference sets of the same size (mean). ODE error: RMS over samples and coordinates of the difference "
           f"to the tight solution from the same x_T (float64: sv's adaptive Tsit5 at rtol = atol = "
           f"{results['tight_tol']:g} to label 0, then to sigma = 0 in DDIM's variables y = x/alpha, "
           f"s = sigma/alpha at the same tolerance). 'At least as accurate': sv's best SW2 minus diffusers' best at "
           f"most 2 SE of the difference (SE from the two rows' replicate spreads).", "",
           "## Targets", ""] + frontier_verdicts(results)
    for dim, entries in frontier_table(results).items():
        d = results["dims"][dim]
        out += ["", f"## D = {dim}", "",
                f"Noise floor (exact vs exact at sigma = 0): SW2 {d['floor_mean']:.4f} +- {d['floor_std']:.4f}. "
                f"Tight solution: {d['tight_seconds_per_replicate']:.1f} s per replicate.", "",
                "Frontier (best row of each side at each budget):", "",
                "| NFE | sv best SW2 | diffusers best SW2 | sv best ODE error | diffusers best ODE error |",
                "|---:|---|---|---|---|"]
        for e in entries:
            cells = []
            for key, metric, fmt in (("sv_sw2", "sw2", "{:.4f}"), ("diffusers_sw2", "sw2", "{:.4f}"),
                                     ("sv_ode", "ode_err", "{:.2e}"), ("diffusers_ode", "ode_err", "{:.2e}")):
                r = e.get(key)
                cells.append("not measured" if r is None else fmt.format(r[metric]) + f" ({r['method']})")
            out.append(f"| {e['budget']} | " + " | ".join(cells) + " |")
        out += ["", "| method | budget | NFE | ends | sliced W2 | mean error | cov error | ODE error | seconds per run (incl. compile) |",
                "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        rows = sorted(d["rows"], key=lambda r: (r["method"], r["budget"]))
        if d.get("euler_maruyama"):
            rows.append(d["euler_maruyama"])
        for r in rows:
            out.append(f"| {r['method']} | {r['budget']} | {r['nfe']} | {r['end']} | {r['sw2']:.4f} +- {r['sw2_sd']:.4f} | "
                       f"{r['mean_err']:.4f} | {r['cov_err']:.4f} | {_fmt(r['ode_err'])} | {r['seconds']:.1f} |")
    return "\n".join(out) + "\n"


def frontier_plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(results["dims"])
    fig, axes = plt.subplots(2, len(dims), figsize=(7 * len(dims), 9), squeeze=False)
    for col, dim in enumerate(dims):
        d = results["dims"][dim]
        methods = list(dict.fromkeys(r["method"] for r in d["rows"]))
        cmap = plt.get_cmap("tab20")
        for row_i, (metric, ylabel) in enumerate((("sw2", "sliced W2 to exact samples"),
                                                  ("ode_err", "RMS error to the tight ODE solution"))):
            ax = axes[row_i][col]
            for i, method in enumerate(methods):
                pts = sorted((r["nfe"], r[metric]) for r in d["rows"] if r["method"] == method
                             and np.isfinite(r[metric]))
                side = next(r["side"] for r in d["rows"] if r["method"] == method)
                if pts:
                    ax.plot(*zip(*pts), marker="o" if side == "sv" else "s", ms=3, lw=1, color=cmap(i % 20),
                            ls="-" if side == "sv" else "--", label=method)
            for side, color in (("sv", "black"), ("diffusers", "red")):
                best = [(n, min(r[metric] for r in d["rows"] if r["side"] == side and r["budget"] == n
                                and np.isfinite(r[metric]))) for n in results["nfes"]
                        if any(r["side"] == side and r["budget"] == n for r in d["rows"])]
                if best:
                    ax.plot(*zip(*best), color=color, lw=3, alpha=0.35, label=f"{side}'s best")
            if metric == "sw2":
                ax.axhspan(d["floor_mean"] - 2 * d["floor_std"], d["floor_mean"] + 2 * d["floor_std"], color="grey",
                           alpha=0.3, label="noise floor (+-2 sd)")
                em = d.get("euler_maruyama")
                if em:
                    ax.axhline(em["sw2"], color="green", ls=":", label=em["method"])
            ax.set(xscale="log", yscale="log", xlabel="network calls (NFE)", ylabel=ylabel, title=f"D = {dim}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
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
    parser.add_argument("--name", default=None, help="the results' file stem under --out (default: accuracy_vs_nfe, "
                        "or accuracy_vs_nfe_frontier with --frontier)")
    parser.add_argument("--frontier", action="store_true",
                        help="sv's deterministic solvers against diffusers' schedulers on Stable Diffusion's schedule")
    parser.add_argument("--torch-python", default=None, metavar="PY",
                        help="--frontier: a Python with torch and diffusers for the diffusers side (else not measured)")
    parser.add_argument("--nfes", type=int, nargs="+", default=list(FRONTIER_NFES), help="--frontier: the budgets")
    parser.add_argument("--tight-tol", type=float, default=FRONTIER_TIGHT,
                        help="--frontier: rtol = atol of the float64 reference ODE solution")
    parser.add_argument("--em-steps", type=int, default=1000,
                        help="--frontier: Euler-Maruyama's steps for the reference row (0: none)")
    args = parser.parse_args(argv)
    if args.name is None:
        args.name = "accuracy_vs_nfe_frontier" if args.frontier else "accuracy_vs_nfe"
    if args.frontier and (min(args.nfes) < 2 or args.em_steps < 0 or not args.tight_tol > 0):
        parser.error("need every --nfes >= 2, --em-steps >= 0 and --tight-tol > 0")
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
    results = (frontier_run if args.frontier else run)(args)
    results["command"] = command.strip()
    table, figure, targets = (frontier_markdown, frontier_plot, frontier_verdicts) if args.frontier else (
        markdown, plot, verdicts)
    atomic_write(paths[1], lambda f: f.write((json.dumps(results, indent=1) + "\n").encode()))
    atomic_write(paths[0], lambda f: f.write(table(results, command.strip()).encode()))
    atomic_write(paths[2], lambda f: figure(results, f))
    print("\n".join(targets(results)))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
