"""Fitted time grids (sv.fit_grid: GITS's DP, gradient descent) against fixed grids of sv and diffusers, on held-out x_T.

``--model mixture`` (default): for each dimension (the exact default mixture in ``--dims``),
on Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels).
``--model digits``: the examples' digits network (``examples/train_digits.py``'s ``EpsMLP``),
trained here as that script trains it (``--digits-train-steps``, seed 0; about 20 s on 2
cores) on ``sv.create_state()``'s linear VP schedule. For each solver (``--solvers``) and NFE
(``--nfes``):

* the sdevp-jax grids (``--grids``): ``dp`` (GITS's dynamic programme, its coefficient rule
  1.15), ``gradient`` and ``gradient, free end`` (``free_end=True``: the last time fitted too)
  fitted by ``sv.fit_grid`` on ``--fit-batch`` x_T from key 0 (teacher: 61 Karras times, 4
  Heun steps between them); the fixed spacings ``logsnr``, ``karras``, ``time_quadratic``;
  Align Your Steps (``sv.grids.align_your_steps``, the SD1.5 table, interpolated in
  log-sigma for a count other than 10; it ends at sigma/alpha = 0.029, t = 0.025, not at
  ``sampling_eps``);
* with ``--diffusers-python``: diffusers' DPM-Solver++ (2M, 3M), UniPC (bh2, orders 2, 3) and
  DEIS (orders 2, 3) with each of their grid options (karras, exponential, beta, lu-lambdas
  sigmas where offered; ``timestep_spacing="trailing"``) and last-step variants
  (``lower_order_final``, ``final_sigmas_type``), in float64 in that Python's own process
  (``fitted_grids_diffusers.py``) on the same x_T and the same model;
* the metrics, on ``--eval-sets`` held-out sets of x_T (keys 1000 + r, never used in
  fitting; ``--eval-batch`` of them for the mixtures, as many as held-out digits for the
  digits): the RMS of the output to a finer teacher from the same x_T (61 Karras times, 8
  Heun steps between them, then the data prediction at ``sampling_eps`` as the grid solvers
  end), and the sliced W2 (``--directions`` unit directions) to as many exact samples of the
  mixture (the held-out digits); each reported as the mean over the sets and [min, max];
  floors: the teacher's sliced W2, a second reference set's and ``--em-steps``-step
  Euler-Maruyama's (``sv.sample``);
* the target check: per solver and NFE the best fitted grid's RMS over the best fixed grid's
  of either library (met at <= 0.5), and at the largest NFE each fitted grid's sliced W2
  against Euler-Maruyama's;
* the memory of the fitting gradient (XLA's compiled ``temp_size_in_bytes`` of
  ``jit(grad(loss))``, dpm_solver_pp; 64-D mixture, batch 256, or the digits network at
  ``--fit-batch``) at 10 and 40 steps, with and without ``checkpoint=True``; for the digits,
  the wall time of ``--probe-repeats`` repeated fits and the peak RSS of the process that
  ran them (each algorithm in a fresh process).

``--compare OLD.json`` adds an earlier run's sdevp-jax rows on the same held-out sets (so
that diffusers' rows can join the fitted ones without fitting again). Writes ``NAME.json``
and ``NAME.md`` under ``--out`` (refuses to overwrite without ``--force``)::

    python benchmarks/fitted_grids.py --iterations 100 --force
    python benchmarks/fitted_grids.py --grids logsnr karras time_quadratic ays \\
        --diffusers-python /tmp/gold-venv/bin/python --compare benchmarks/results/fitted_grids.json \\
        --iterations 100 --no-memory --name fitted_grids_diffusers --force
    python benchmarks/fitted_grids.py --model digits --diffusers-python /tmp/gold-venv/bin/python \\
        --iterations 100 --name fitted_grids_digits --force
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
FITTED = ("dp", "gradient", "gradient, free end")
GRIDS = FITTED + FIXED + ("ays",)
DIGITS_DEPTH = 3  # EpsMLP's default depth: the torch re-implementation on the diffusers side needs it


def sd_state():
    return sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000))


def held_out(state, model_fn, key, batch, dim, substeps):
    """x_T, the teacher's data prediction at the last time (what the grid solvers return) and its sample there."""
    keys = sv.loops.make_sample_keys(key, batch, 0)
    x_T = sv.loops.per_sample_normal(keys, 0, (dim,), jnp.float32)
    fine = sv.grids.continuous_grid(state, 61, "karras")
    xs, _ = fitting.teacher_trajectory(state, model_fn, x_T, fine, teacher_substeps=substeps)
    return x_T, fitting._x0_at(state, model_fn, xs[-1], fine[-1], jnp.float32, None)[1], xs[-1]


def unit_directions(count, dim, seed=0):
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((count, dim))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def memory_rows(dim=64, batch=256, state=None, model_fn=None):
    """XLA's compiled temporary memory of the fitting loss's gradient (and of the forward pass alone)."""
    if state is None:
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


# --- the models: the exact mixtures and the examples' digits network ---------------------------------------------

def sd_betas() -> np.ndarray:
    """Stable Diffusion's training betas (scaled_linear 0.00085-0.012, 1000), float64, for the diffusers side."""
    return np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2


def linear_vp_betas(beta_min: float, beta_max: float, n: int = 1000) -> np.ndarray:
    """Betas whose alphas_cumprod[k] is the continuous linear VP schedule's alpha(t)^2 at t = (k + 1)/n.

    log alpha(t)^2 = -(t beta_min + t^2 (beta_max - beta_min)/2) (Song et al. 2021, eq. 33), so label
    n - 1 is t = 1 and label 0 is t = 1/n (= ``sampling_eps`` = 0.001 for n = 1000)."""
    t = np.arange(1, n + 1, dtype=np.float64) / n
    log_acp = -(t * beta_min + 0.5 * t**2 * (beta_max - beta_min))
    return -np.expm1(np.diff(log_acp, prepend=0.0))


def train_digits_model(steps: int, seed: int = 0):
    """The examples' EpsMLP trained as ``examples/train_digits.py`` trains it (same loss, optimiser, batch, seed)."""
    sys.path.insert(0, str(HERE.parent / "examples"))
    import train_digits as td

    train, test = td.load_digits(seed)
    state = sv.create_state()
    net = td.EpsMLP(depth=DIGITS_DEPTH)
    params, losses, seconds = td.train_model(state, net, train, steps, 128, seed)
    losses = np.asarray(losses)
    info = {"train_steps": steps, "seed": seed, "train_seconds": seconds,
            "loss_first_100": float(losses[:100].mean()), "loss_last_100": float(losses[-100:].mean()),
            "train_digits": int(len(train)), "test_digits": int(len(test))}
    return state, net, params, train, test, info


def flat_params(params) -> dict:
    """Flax parameters as ``{"Dense_0/kernel": array, ...}`` (float32)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
        flat["/".join(p.key for p in path)] = np.asarray(leaf, np.float32)
    return flat


def mixture_parts(args, state):
    """One part per dimension: the exact default mixture, its held-out sets and exact references."""
    alpha0, sigma0 = (float(v) for v in state.schedule.alpha_sigma(jnp.asarray(state.sampling_eps, jnp.float32)))
    parts = []
    for dim in args.dims:
        mixture = sv.mixtures.default_mixture(dim)
        model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
        sets = []
        for r in range(args.eval_sets):
            x_T, target, target_sample = held_out(state, model_fn, jax.random.key(1000 + r), args.eval_batch, dim, 8)
            exact = np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(2000 + r), args.eval_batch))
            # the same law at the last time's noise (alpha0, sigma0): for runs that end with the sample there
            exact_sample = np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(2000 + r), args.eval_batch,
                                                                 alpha=alpha0, sigma=sigma0))
            sets.append({"x_T": x_T, "target": target, "target_sample": target_sample, "exact": exact,
                         "exact_sample": exact_sample})
        parts.append({"name": f"{dim}-D", "key": f"d{dim}", "dim": dim, "state": state, "model_fn": model_fn,
                      "sets": sets, "directions": unit_directions(args.directions, dim),
                      "reference": f"{args.eval_batch} exact samples of the mixture",
                      "exchange": {f"d{dim}_{k}": np.asarray(getattr(mixture, k), np.float64)
                                   for k in ("weights", "means", "scales")},
                      "second_reference": lambda r, mixture=mixture: np.asarray(
                          sv.mixtures.sample_mixture(mixture, jax.random.key(3000 + r), args.eval_batch))})
    return parts


def digits_part(args):
    """The examples' digits network, trained here; held-out x_T, and the held-out digits as the reference."""
    state, net, params, train, test, info = train_digits_model(args.digits_train_steps)
    print(f"digits: trained {info['train_steps']} steps in {info['train_seconds']:.1f} s "
          f"(DSM loss {info['loss_first_100']:.3f} -> {info['loss_last_100']:.3f})", flush=True)

    def model_fn(x, t):
        return net.apply(params, x, t)

    alpha0, sigma0 = (float(v) for v in state.schedule.alpha_sigma(jnp.asarray(state.sampling_eps, jnp.float32)))
    batch = len(test)  # the sliced W2 compares equal-size samples: as many x_T per set as held-out digits
    rng = np.random.default_rng(5)
    sets = []
    for r in range(args.eval_sets):
        x_T, target, target_sample = held_out(state, model_fn, jax.random.key(1000 + r), batch, 64, 8)
        noisy = alpha0 * test + sigma0 * rng.standard_normal(test.shape)
        sets.append({"x_T": x_T, "target": target, "target_sample": target_sample,
                     "exact": np.asarray(test, np.float64), "exact_sample": noisy})
    exchange = {f"param|{k}": v for k, v in flat_params(params).items()}
    # a probe for the diffusers side's torch re-write of the network: eps at t = 0.5 on 8 held-out digits
    a_half, s_half = (float(v) for v in state.schedule.alpha_sigma(jnp.asarray(0.5, jnp.float32)))
    exchange.update(probe_x=np.asarray(test[:8], np.float64), probe_sigma=np.asarray(s_half / a_half),
                    probe_eps=np.asarray(model_fn(jnp.asarray(test[:8]), jnp.full((8,), 0.5, jnp.float32)), np.float64))
    return {"name": "digits", "key": "digits", "dim": 64, "state": state, "model_fn": model_fn, "sets": sets,
            "directions": unit_directions(args.directions, 64), "exchange": exchange, "train": info,
            "reference": f"the {len(test)} held-out digits (dequantized, in [-1, 1])",
            "second_reference": lambda r: np.asarray(
                train[np.random.default_rng(4000 + r).choice(len(train), len(test), replace=False)], np.float64),
            "params": params}


def floors(args, part):
    """The sliced W2 of the teacher, of a second reference set and of 1000-step Euler-Maruyama (the SDE)."""
    sets, directions, state, model_fn = part["sets"], part["directions"], part["state"], part["model_fn"]
    out = {"teacher_sw2": [sliced_w2(np.asarray(s["target"], np.float64), s["exact"], directions) for s in sets],
           "exact_sw2": [sliced_w2(part["second_reference"](r), s["exact"], directions) for r, s in enumerate(sets)]}
    if args.em_steps:
        st = sv.set_timesteps(state, args.em_steps)
        em = jax.jit(lambda key, n: sv.sample(st, model_fn, key, (n, part["dim"])), static_argnums=1)
        out["em_steps"] = args.em_steps
        out["em_sw2"] = [sliced_w2(np.asarray(em(jax.random.key(5000 + r), len(s["exact"])), np.float64), s["exact"],
                                   directions) for r, s in enumerate(sets)]
    return out


def metrics(out, s, directions, end="x0"):
    """RMS (per-sample Euclidean distance) to the teacher's point at the same end, and sliced W2 there."""
    target, exact = (s["target"], s["exact"]) if end == "x0" else (s["target_sample"], s["exact_sample"])
    out = np.asarray(out, np.float64)
    rms = float(np.sqrt(np.mean(np.sum(np.square(out - np.asarray(target, np.float64)), axis=1))))
    return rms, sliced_w2(out, exact, directions)


def diffusers_rows(args, parts, meta_extra) -> tuple[list, dict]:
    """diffusers' schedulers on every part's held-out x_T, in ``args.diffusers_python``'s process."""
    import os
    import subprocess
    import tempfile

    exchange = {"betas": meta_extra.pop("betas")}
    for part in parts:
        exchange.update(part["exchange"])
        for r, s in enumerate(part["sets"]):
            exchange[f"{part['key']}_xT_{r}"] = np.asarray(s["x_T"], np.float64)
    meta = {"parts": [p["key"] for p in parts], "nfes": list(args.nfes), "sets": args.eval_sets, "threads": 1,
            **meta_extra}
    exchange["meta"] = np.asarray(json.dumps(meta))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, **exchange)
        start = time.perf_counter()
        proc = subprocess.run([args.diffusers_python, str(HERE / "fitted_grids_diffusers.py"), src, dst],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"fitted_grids: the diffusers worker failed (exit {proc.returncode})")
        print(f"diffusers worker: {time.perf_counter() - start:.0f} s", flush=True)
        with np.load(dst) as data:
            outs = {k: data[k] for k in data.files if k != "meta"}
            dmeta = json.loads(str(data["meta"]))
    by_key = {p["key"]: p for p in parts}
    rows, failures = [], []
    for info in dmeta["rows"]:
        part = by_key[info["part"]]
        if "error" in info or not info["finite"]:
            failures.append({"part": part["name"], **{k: info[k] for k in ("method", "grid", "lower_order_final",
                                                                          "final_sigmas_type", "nfe_budget")},
                             "error": info.get("error", "non-finite output")})
            continue
        rms, sw2 = [], []
        for r, s in enumerate(part["sets"]):
            out = outs[f"{info['part']}|{info['method']}|{info['grid']}|{info['lower_order_final']}|"
                       f"{info['final_sigmas_type']}|{info['nfe_budget']}|{r}"]
            a, b = metrics(out, s, part["directions"], info["end"])
            rms.append(a)
            sw2.append(b)
        rows.append({"library": "diffusers", "part": part["name"], "dim": part["dim"], "method": info["method"],
                     "nfe": info["nfe"], "grid": info["grid"], "lower_order_final": info["lower_order_final"],
                     "final_sigmas_type": info["final_sigmas_type"], "end": info["end"], "labels": info["labels"],
                     "sigmas": info["sigmas"], "config": info["config"], "rms": rms, "sw2": sw2})
    return rows, {"torch": dmeta["torch"], "diffusers": dmeta["diffusers"], "diffusers_failures": failures,
                  "torch_network_probe_error": dmeta.get("probe_errors")}


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB: ``VmHWM`` of /proc/self/status (Linux), else ``ru_maxrss``.

    ``VmHWM`` belongs to the process's own address space; ``getrusage``'s ``ru_maxrss`` keeps, across the
    ``exec`` that started a child, the peak of the parent that forked it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def fit_probe(args) -> int:
    """In a fresh process: one digits fit repeated, its wall time each time and the process's peak RSS."""
    with np.load(args.fit_probe) as data:
        flat = {k: jnp.asarray(data[k]) for k in data.files}
    sys.path.insert(0, str(HERE.parent / "examples"))
    import train_digits as td

    net = td.EpsMLP(depth=DIGITS_DEPTH)
    template = net.init(jax.random.key(0), jnp.zeros((1, 64)), jnp.zeros((1,)))
    leaves = [flat["/".join(p.key for p in path)] for path, _ in
              jax.tree_util.tree_flatten_with_path(template["params"])[0]]
    params = {"params": jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template["params"]), leaves)}
    state = sv.create_state()

    def model_fn(x, t):
        return net.apply(params, x, t)

    rss_before = peak_rss_kib()
    runs = []
    for _ in range(args.probe_repeats):
        start = time.perf_counter()
        grid = sv.fit_grid(state, model_fn, jax.random.key(0), (args.fit_batch, 64), method=args.probe_method,
                           nfe=args.probe_nfe, algorithm=args.probe_algorithm, iterations=args.iterations)
        runs.append(time.perf_counter() - start)
    rss_after = peak_rss_kib()
    print(json.dumps({"seconds": runs, "maxrss_kib_before_fit": rss_before, "maxrss_kib_after_fits": rss_after,
                      "grid": [float(t) for t in grid]}))
    return 0


def probe_rows(args, part) -> list:
    """Fitting time (repeated) and peak memory of digits fits, each configuration in its own process."""
    import os
    import subprocess
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "params.npz")
        np.savez(path, **flat_params(part["params"]))
        for algorithm in args.probe_algorithms:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--fit-probe", path, "--probe-algorithm", algorithm,
                   "--probe-method", args.probe_method, "--probe-nfe", str(args.probe_nfe), "--probe-repeats",
                   str(args.probe_repeats), "--fit-batch", str(args.fit_batch), "--iterations", str(args.iterations)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit("fitted_grids: the fit probe failed")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"algorithm": algorithm, "method": args.probe_method, "nfe": args.probe_nfe,
                         "fit_batch": args.fit_batch, "iterations": args.iterations if algorithm == "gradient" else None,
                         **row})
            print(f"digits fit probe {algorithm}: {row['seconds']} s, maxrss {row['maxrss_kib_after_fits'] / 1024:.0f} "
                  f"MiB (before the fit {row['maxrss_kib_before_fit'] / 1024:.0f} MiB)", flush=True)
    return rows


def run(args) -> dict:
    results = {"environment": environment(), "args": vars(args), "model": args.model, "rows": [], "floors": []}
    if args.model == "mixture":
        parts = mixture_parts(args, sd_state())
        meta_extra = {"model": "mixture", "betas": sd_betas()}
    else:
        part = digits_part(args)
        parts = [part]
        results["train"] = part["train"]
        sched = part["state"].schedule
        meta_extra = {"model": "digits", "betas": linear_vp_betas(float(sched.beta_min), float(sched.beta_max)),
                      "beta_min": float(sched.beta_min), "beta_max": float(sched.beta_max), "depth": DIGITS_DEPTH}
    for part in parts:
        results["floors"].append({"part": part["name"], "dim": part["dim"], "reference": part["reference"],
                                  **floors(args, part)})
        print(f"{part['name']} floors: " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in results["floors"][-1].items()
                                                    if isinstance(v, list)), flush=True)
    if args.diffusers_python:
        rows, versions = diffusers_rows(args, parts, meta_extra)
        results["rows"] += rows
        results.update(versions)
    for part in parts:
        state, model_fn, dim = part["state"], part["model_fn"], part["dim"]
        for method in args.solvers:
            for nfe in args.nfes:
                n = fitting.num_points_for_nfe(method, nfe)
                candidates = {}
                for name, algorithm, free_end in (("dp", "dp", False), ("gradient", "gradient", False),
                                                  ("gradient, free end", "gradient", True)):
                    if name not in args.grids:
                        continue
                    start = time.perf_counter()
                    grid, info = sv.fit_grid(state, model_fn, jax.random.key(0), (args.fit_batch, dim), method=method,
                                             nfe=nfe, algorithm=algorithm, iterations=args.iterations,
                                             free_end=free_end, return_info=True)
                    candidates[name] = (grid, time.perf_counter() - start, info.loss)
                for spacing in FIXED:
                    if spacing in args.grids:
                        candidates[spacing] = (np.asarray(sv.set_timesteps(state, n, spacing=spacing).timesteps,
                                                          np.float64), 0.0, None)
                if "ays" in args.grids:
                    candidates["ays"] = (sv.grids.align_your_steps(state, n), 0.0, None)
                for name, (grid, seconds, fit_loss) in candidates.items():
                    st = sv.set_timesteps(state, timesteps=grid)
                    run_fn = jax.jit(lambda x, st=st: sv.sample_ode(st, model_fn, jax.random.key(0), x.shape,
                                                                    method=method, x_init=x))
                    rms, sw2 = [], []
                    for s in part["sets"]:
                        a, b = metrics(run_fn(s["x_T"]), s, part["directions"])
                        rms.append(a)
                        sw2.append(b)
                    row = {"library": "sdevp-jax", "part": part["name"], "dim": dim, "method": method, "nfe": nfe,
                           "points": n, "grid": name, "timesteps": [float(t) for t in grid], "rms": rms, "sw2": sw2,
                           "fit_seconds": seconds, "fit_loss": fit_loss}
                    results["rows"].append(row)
                    print(f"{part['name']} {method} nfe {nfe} {name:15s} rms {np.mean(rms):.4f} sw2 {np.mean(sw2):.4f}",
                          flush=True)
    if args.model == "digits" and args.probe_repeats:
        results["fit_probe"] = probe_rows(args, parts[0])
    if args.memory:
        if args.model == "digits":
            results["memory"] = memory_rows(64, args.fit_batch, parts[0]["state"], parts[0]["model_fn"])
        else:
            results["memory"] = memory_rows()
    return results


def _cell(values) -> str:
    return f"{np.mean(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def merge_compare(results, path) -> None:
    """Rows of an earlier run (``--compare``) on the same held-out sets, for the rows this run did not make.

    The sets are the same when the keys, sizes and teacher are (``held_out``); the rows both runs
    made are compared and the largest difference of their mean RMS recorded (``compare``)."""
    other = json.loads(Path(path).read_text())
    keys = ("eval_batch", "eval_sets", "directions")
    if any(other["args"][k] != results["args"][k] for k in keys):
        raise SystemExit(f"--compare {path}: its {keys} differ from this run's")
    have = {(r["part"], r["method"], r["nfe"], r["grid"]) for r in results["rows"] if r["library"] == "sdevp-jax"}
    diffs, added = [], 0
    for r in other["rows"]:
        r = {"library": "sdevp-jax", "part": f"{r['dim']}-D", **r}
        key = (r["part"], r["method"], r["nfe"], r["grid"])
        if key in have:
            mine = next(m for m in results["rows"] if m["library"] == "sdevp-jax" and
                        (m["part"], m["method"], m["nfe"], m["grid"]) == key)
            diffs.append(abs(np.mean(mine["rms"]) - np.mean(r["rms"])))
        else:
            results["rows"].append({**r, "from": str(path)})
            added += 1
    results["compare"] = {"path": str(path), "command": other.get("command"), "rows_added": added,
                          "rows_in_both": len(diffs), "max_rms_difference": float(max(diffs)) if diffs else None}


def best_variant(rows):
    """Of one diffusers (method, grid, NFE)'s last-step variants, the one of least mean RMS."""
    return min(rows, key=lambda r: np.mean(r["rms"]))


def target_table(results) -> list:
    """Per part, sdevp-jax solver and NFE: the best fitted grid against the best fixed grid of either library."""
    rows = results["rows"]
    out = []
    for part in dict.fromkeys(r["part"] for r in rows):
        d_rows = [r for r in rows if r["part"] == part and r["library"] == "diffusers"]
        sv_rows = [r for r in rows if r["part"] == part and r["library"] == "sdevp-jax"]
        for method in dict.fromkeys(r["method"] for r in sv_rows):
            for nfe in sorted({r["nfe"] for r in sv_rows if r["method"] == method}):
                sel = [r for r in sv_rows if r["method"] == method and r["nfe"] == nfe]
                fitted = [r for r in sel if r["grid"] in FITTED]
                fixed = [r for r in sel if r["grid"] not in FITTED]
                if not fitted or not fixed:
                    continue
                best_fit = min(fitted, key=lambda r: np.mean(r["rms"]))
                best_sv = min(fixed, key=lambda r: np.mean(r["rms"]))
                d_sel = [r for r in d_rows if r["nfe"] == nfe]
                best_d = min(d_sel, key=lambda r: np.mean(r["rms"])) if d_sel else None
                best_fixed = min([best_sv] + ([best_d] if best_d else []), key=lambda r: np.mean(r["rms"]))
                ratio = float(np.mean(best_fit["rms"]) / np.mean(best_fixed["rms"]))
                out.append({"part": part, "method": method, "nfe": nfe, "fitted": best_fit["grid"],
                            "fitted_rms": float(np.mean(best_fit["rms"])), "sv_fixed": best_sv["grid"],
                            "sv_fixed_rms": float(np.mean(best_sv["rms"])),
                            "diffusers": _dlabel(best_d) if best_d else None,
                            "diffusers_rms": float(np.mean(best_d["rms"])) if best_d else None,
                            "ratio": ratio, "half": ratio <= 0.5, "diffusers_measured": best_d is not None})
    return out


def _dlabel(r) -> str:
    extra = [] if r["lower_order_final"] else ["lower_order_final=False"]
    if r["final_sigmas_type"] not in (None, "zero"):
        extra.append(f"final {r['final_sigmas_type']}")
    return f"{r['method']}, {r['grid']}" + (f" ({', '.join(extra)})" if extra else "")


def sw2_check(results) -> list:
    """At the largest NFE: each fitted grid's sliced W2 against Euler-Maruyama's, within noise when the mean
    difference is negative or at most 2 standard errors of the paired differences (set r against set r: both are
    measured against set r's reference, so the reference's own luck cancels)."""
    out = []
    for floor in results["floors"]:
        if "em_sw2" not in floor:
            continue
        em = np.asarray(floor["em_sw2"])
        sel = [r for r in results["rows"] if r["part"] == floor["part"] and r["library"] == "sdevp-jax"
               and r["grid"] in FITTED]
        if not sel:
            continue
        nfe = max(r["nfe"] for r in sel)
        for r in sel:
            if r["nfe"] != nfe:
                continue
            d = np.asarray(r["sw2"]) - em  # paired: set r's grid and EM runs are measured against the same reference
            diff = float(d.mean())
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            x = np.asarray(r["sw2"])
            out.append({"part": floor["part"], "method": r["method"], "grid": r["grid"], "nfe": nfe,
                        "sw2": float(x.mean()), "em_sw2": float(em.mean()), "difference": diff, "two_se": 2 * se,
                        "within_noise": bool(abs(diff) <= 2 * se) or diff <= 0})
    return out


def markdown(results, command) -> str:
    env = results["environment"]
    a = results["args"]
    rows = results["rows"]
    digits = results["model"] == "digits"
    lines = ["# Fitted time grids against fixed ones" + (": the digits network" if digits else ""), "",
             f"Command: `{command}`", "",
             f"Machine: {env['machine']} ({env['processor']}, {env['cores']} cores, shared with other jobs), "
             f"{env['device']}, JAX {env['jax']}, Python {env['python']}"
             + (f"; diffusers side: torch {results['torch']}, diffusers {results['diffusers']}, float64, "
                f"its own process" if "diffusers" in results else "") + ".", ""]
    if digits:
        t = results["train"]
        lines += [f"The examples' digits network (`examples/train_digits.py`'s `EpsMLP`, width 256, depth "
                  f"{DIGITS_DEPTH}) trained here as that script trains it: {t['train_steps']} steps, seed {t['seed']}, "
                  f"batch 128 of the {t['train_digits']} training digits, in {t['train_seconds']:.1f} s (DSM loss "
                  f"{t['loss_first_100']:.3f} over the first 100 steps, {t['loss_last_100']:.3f} over the last 100), on "
                  f"`sv.create_state()` (linear VP, beta 0.1-20, sampling_eps 0.001). Held-out sets: "
                  f"{a['eval_sets']} x {t['test_digits']} x_T (keys 1000+r); the sliced W2 is to the "
                  f"{t['test_digits']} held-out digits.", ""]
        probe = (results.get("torch_network_probe_error") or {}).get("digits")
        if probe is not None:
            lines += [f"diffusers side: the network re-written in torch (float64) from the Flax parameters, on "
                      f"betas whose alphas_cumprod[k] is the linear VP schedule's alpha^2 at t = (k + 1)/1000 "
                      f"(label 999 is t = 1, label 0 is sampling_eps); against the Flax network (float32) on 8 "
                      f"held-out digits at t = 0.5: max|difference| / max|eps| = {probe:.1e}.", ""]
    else:
        lines += [f"Stable Diffusion's schedule (scaled_linear 0.00085-0.012, 1000 labels), the exact default "
                  f"mixture. Held-out sets: {a['eval_sets']} x {a['eval_batch']} x_T (keys 1000+r); the sliced W2 is "
                  f"to as many exact samples of the mixture.", ""]
    lines += [f"Fits on {a['fit_batch']} x_T (key 0; teacher 61 Karras times x 4 Heun steps; gradient: "
              f"{a['iterations']} Adam steps from the log-SNR grid). Metrics: RMS (root of the mean squared "
              f"Euclidean distance per sample) to a finer teacher (61 x 8 Heun steps, then the data prediction at "
              f"sampling_eps) from the same x_T, and sliced W2 over {a['directions']} directions. Each cell: mean "
              f"over the sets [min, max]. `ays` is Align Your Steps' SD1.5 table (interpolated in log-sigma off 10 "
              f"steps), which ends at t = 0.025, not at sampling_eps = 0.001; `dp` is GITS's dynamic programme with "
              f"its coefficient rule (cost c1 + 1.15 c2 + 1.15^2 c3 + ...).", ""]
    if "compare" in results:
        c = results["compare"]
        lines += [f"The sdevp-jax rows not made by this run ({c['rows_added']}) are from `{c['path']}` "
                  f"(`{c['command']}`), on the same held-out sets; the {c['rows_in_both']} rows both runs made "
                  f"differ in mean RMS by at most {c['max_rms_difference']:.2e}.", ""]
    for floor in results["floors"]:
        text = (f"- {floor['part']} floors: the teacher's sliced W2 {_cell(floor['teacher_sw2'])}; a second "
                f"reference set's {_cell(floor['exact_sw2'])}")
        if "em_sw2" in floor:
            text += f"; Euler-Maruyama, {floor['em_steps']} steps (`sv.sample`): {_cell(floor['em_sw2'])}"
        lines.append(text + ".")
    lines.append("")

    targets = target_table(results)
    if targets:
        lines += ["## The target: the fitted grid's RMS at most half the best fixed grid's", "",
                  "Per sdevp-jax solver and NFE: the fitted grid of least mean RMS (of `dp`, `gradient`, `gradient, "
                  "free end`), the best of sdevp-jax's fixed grids for the same solver (`logsnr`, `karras`, "
                  "`time_quadratic`, `ays`), the best of every diffusers solver, grid and last-step variant at the "
                  "same NFE, and the ratio of the fitted RMS to the better of the two fixed ones (met: <= 0.5).", "",
                  "| part | solver | NFE | best fitted | best sdevp-jax fixed | best diffusers | ratio | met |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in targets:
            dcell = f"{t['diffusers_rms']:.4f} ({t['diffusers']})" if t["diffusers_measured"] else "not measured"
            lines.append(f"| {t['part']} | {t['method']} | {t['nfe']} | {t['fitted_rms']:.4f} ({t['fitted']}) | "
                         f"{t['sv_fixed_rms']:.4f} ({t['sv_fixed']}) | {dcell} | {t['ratio']:.2f} | "
                         f"{'yes' if t['half'] else 'no'} |")
        lines.append("")
    checks = sw2_check(results)
    if checks:
        lines += ["## Sliced W2 at the largest NFE against Euler-Maruyama", "",
                  "Within noise: the mean over the held-out sets of the difference (set r's sliced W2 minus EM's on "
                  "set r, both to set r's reference) is negative or at most 2 standard errors of those differences "
                  f"({a['eval_sets']} sets: a coarse test).", "", "| part | solver | grid | NFE | sliced W2 | EM | difference | 2 SE | within |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['part']} | {c['method']} | {c['grid']} | {c['nfe']} | {c['sw2']:.4f} | "
                         f"{c['em_sw2']:.4f} | {c['difference']:+.4f} | {c['two_se']:.4f} | "
                         f"{'yes' if c['within_noise'] else 'no'} |")
        lines.append("")

    for part in dict.fromkeys(r["part"] for r in rows):
        sel_part = [r for r in rows if r["part"] == part]
        for method in dict.fromkeys(r["method"] for r in sel_part if r["library"] == "sdevp-jax"):
            sel = [r for r in sel_part if r["library"] == "sdevp-jax" and r["method"] == method]
            nfes = sorted({r["nfe"] for r in sel})
            names = list(dict.fromkeys(r["grid"] for r in sel))
            for metric in ("rms", "sw2"):
                lines += [f"## {part}, sdevp-jax {method}: {'RMS to the teacher' if metric == 'rms' else 'sliced W2'}",
                          "", "| grid | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|" + "---|" * len(nfes)]
                for name in names:
                    cells = []
                    for k in nfes:
                        r = next((r for r in sel if r["grid"] == name and r["nfe"] == k), None)
                        cells.append(_cell(r[metric]) if r else "")
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
                lines.append("")
        d_sel = [r for r in sel_part if r["library"] == "diffusers"]
        fails = [f for f in results.get("diffusers_failures", []) if f["part"] == part]
        if fails:
            kinds = {}
            for f in fails:
                kinds.setdefault((f["method"], f["lower_order_final"], f["final_sigmas_type"], f["error"][:60]),
                                 []).append(f"{f['grid']} {f['nfe_budget']}")
            lines += [f"diffusers runs on {part} that failed in diffusers itself (left out of the tables):", ""]
            for (method, lof, final, error), where in kinds.items():
                lines.append(f"- {method}, lower_order_final={lof}, final_sigmas_type={final}: `{error}` "
                             f"({len(where)} runs: {', '.join(where[:6])}{', ...' if len(where) > 6 else ''})")
            lines.append("")
        if d_sel:
            nfes = sorted({r["nfe"] for r in d_sel})
            combos = list(dict.fromkeys((r["method"], r["grid"]) for r in d_sel))
            for metric in ("rms", "sw2"):
                lines += [f"## {part}, diffusers: {'RMS to the teacher' if metric == 'rms' else 'sliced W2'}", "",
                          "Each cell the last-step variant of least mean RMS (lower_order_final True/False; "
                          "final_sigmas_type zero/sigma_min where the scheduler has it): `*` marks "
                          "lower_order_final=False, `s` final_sigmas_type=\"sigma_min\" (the sample at label 0's "
                          "noise, compared with the teacher's sample and the reference diffused there, as DEIS "
                          "always ends).", "",
                          "| solver, grid | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                          "|---|" + "---|" * len(nfes)]
                for method, grid in combos:
                    cells = []
                    for k in nfes:
                        var = [r for r in d_sel if r["method"] == method and r["grid"] == grid and r["nfe"] == k]
                        if not var:
                            cells.append("")
                            continue
                        b = best_variant(var)
                        mark = ("" if b["lower_order_final"] else "*") + ("s" if b["final_sigmas_type"] == "sigma_min"
                                                                          else "")
                        cells.append(_cell(b[metric]) + (f" {mark}" if mark else ""))
                    lines.append(f"| {method}, {grid} | " + " | ".join(cells) + " |")
                lines.append("")
    if "fit_probe" in results:
        lines += ["## Fitting time and memory on CPU (digits network)", "",
                  "Each configuration in a fresh process (`--fit-probe`), the fit repeated; wall seconds of each "
                  "`sv.fit_grid` call (each compiles its own functions: the first also pays the process's first "
                  "compilations), and the process's peak resident memory (`VmHWM` of /proc/self/status) after "
                  "loading the network and after the fits.", "",
                  "| algorithm | solver | NFE | fit batch | iterations | seconds (each) | min | max | peak RSS before "
                  "(MiB) | peak RSS after (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["fit_probe"]:
            lines.append(f"| {r['algorithm']} | {r['method']} | {r['nfe']} | {r['fit_batch']} | "
                         f"{r['iterations'] or '-'} | {', '.join(f'{x:.1f}' for x in r['seconds'])} | "
                         f"{min(r['seconds']):.1f} | {max(r['seconds']):.1f} | "
                         f"{r['maxrss_kib_before_fit'] / 1024:.0f} | {r['maxrss_kib_after_fits'] / 1024:.0f} |")
        lines.append("")
    if "memory" in results:
        what = (f"the digits network, batch {a['fit_batch']}" if digits else "64-D mixture, batch 256")
        lines += ["## Memory of the fitting gradient", "",
                  "XLA's `temp_size_in_bytes` of `jax.jit(jax.grad(loss)).lower(...).compile().memory_analysis()` "
                  f"({what}, float32, dpm_solver_pp; the loss is the mean squared output of "
                  "`sv.sample` on a traced grid); the forward pass alone for comparison.", "",
                  "| grid points | checkpoint | gradient temp (MB) | forward temp (MB) |", "|---|---|---|---|"]
        for r in results["memory"]:
            lines.append(f"| {r['points']} | {r['checkpoint']} | {r['grad_temp_bytes'] / 1e6:.2f} | "
                         f"{r['forward_temp_bytes'] / 1e6:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("mixture", "digits"), default="mixture",
                        help="the exact mixtures (--dims) or the examples' digits network (trained here)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--solvers", nargs="+", default=["dpm_solver_pp", "ipndm"])
    parser.add_argument("--nfes", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    parser.add_argument("--grids", nargs="+", default=list(GRIDS), choices=GRIDS,
                        help="the sdevp-jax grids to run (fitted and fixed)")
    parser.add_argument("--fit-batch", type=int, default=256)
    parser.add_argument("--eval-batch", type=int, default=2000, help="x_T per held-out set (mixture)")
    parser.add_argument("--eval-sets", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--directions", type=int, default=64)
    parser.add_argument("--em-steps", type=int, default=1000, help="Euler-Maruyama's steps for its floor (0: none)")
    parser.add_argument("--digits-train-steps", type=int, default=6000)
    parser.add_argument("--diffusers-python", default=None,
                        help="a Python with torch, diffusers and scipy for diffusers' rows (else not measured)")
    parser.add_argument("--compare", default=None, help="an earlier run's .json on the same held-out sets: its "
                        "sdevp-jax rows this run did not make join the tables")
    parser.add_argument("--probe-repeats", type=int, default=3, help="digits: repeats of the timed fits (0: none)")
    parser.add_argument("--probe-method", default="dpm_solver_pp")
    parser.add_argument("--probe-nfe", type=int, default=6)
    parser.add_argument("--probe-algorithms", nargs="+", default=["dp", "gradient"], choices=("dp", "gradient"))
    parser.add_argument("--probe-algorithm", default="gradient", help=argparse.SUPPRESS)
    parser.add_argument("--fit-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="fitted_grids")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if args.fit_probe:
        return fit_probe(args)
    out = Path(args.out)
    paths = [out / f"{args.name}.json", out / f"{args.name}.md"]
    if not args.force and any(p.exists() for p in paths):
        print(f"{paths[0]} exists; pass --force to overwrite", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    if args.compare:
        merge_compare(results, args.compare)
    results["targets"] = target_table(results)
    results["sw2_checks"] = sw2_check(results)
    command = "python benchmarks/fitted_grids.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["command"] = command
    write_atomic(paths[0], json.dumps(results, indent=1) + "\n")
    write_atomic(paths[1], markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
