"""Worker: diffusers' multistep schedulers with each of their grid options, in float64, on given x_T (torch, CPU).

The diffusers side of ``fitted_grids.py --diffusers-python``, run in its own process by a
Python with ``torch``, ``diffusers`` and ``scipy`` (``use_beta_sigmas`` needs it); no JAX here.
Reads an ``.npz`` written by the JAX side -- ``meta`` (JSON: the model kind, the NFEs, the
number of held-out sets, the keys of the x_T), the training ``betas`` (float64) the
schedulers are built on, the model's parameters and the held-out x_T -- and writes an
``.npz`` with every run's final sample (float64), and in ``meta`` each run's labels,
sigmas and counted model calls.

Each scheduler runs in float64 as the golden scripts run it (``tests/golden/_golden.py``):
its tables recomputed in float64 from the float64 betas, torch's default dtype float64,
DPMSolverMultistep's module seeing a ``torch`` whose ``float32`` is float64, and the step
sigmas recomputed in float64 after ``set_timesteps`` by the scheduler's own converters
(``tests/golden/make_sigmas_golden.py: float64_sigmas``).

The model is evaluated at the noise level the scheduler assigns to the sample at that
step, ``sigmas[i]`` (sigma/alpha; alpha = 1/sqrt(1 + sigma^2)), not at its integer label:
on a sigma grid diffusers rounds or truncates the label, and a label-conditioned network
would then see a slightly different noise level than the sample has. Evaluating at the
scheduler's own sigma makes every row solve the same probability-flow ODE with the same
exact model, so the rows differ only in grid and update rule.

* ``mixture``: the exact noise prediction of the Gaussian mixture (weights, means, scales):
  ``eps(x) = s sum_k r_k(x) (x - a mu_k) / (a^2 s_k^2 + s^2)`` with a = alpha, s = sigma.
* ``digits``: the examples' MLP (``examples/train_digits.py: EpsMLP``) re-written in torch from
  its Flax parameters, at the continuous time t of the linear VP schedule where
  ``log(1 + sigma^2) = t beta_min + t^2 (beta_max - beta_min) / 2``.

    python benchmarks/fitted_grids_diffusers.py IN.npz OUT.npz
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffusers
from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_module

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
sys.path.insert(0, str(GOLDEN))
from _golden import Float32As64, float64_tables  # noqa: E402
from make_sigmas_golden import float64_sigmas  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_vs_nfe_diffusers import mixture_eps  # noqa: E402  (beside this script)

#: (row label, scheduler class name, fields); every one with diffusers' defaults otherwise
METHODS = [
    ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
    ("DPM-Solver++ 3M", "DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "dpmsolver++"}),
    ("UniPC bh2 order 2", "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
    ("UniPC bh2 order 3", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2"}),
    ("DEIS order 2", "DEISMultistepScheduler", {"solver_order": 2}),
    ("DEIS order 3", "DEISMultistepScheduler", {"solver_order": 3}),
]
#: the grid options asked for: four sigma grids and one label spacing
GRIDS = [
    ("karras", {"use_karras_sigmas": True}),
    ("exponential", {"use_exponential_sigmas": True}),
    ("beta", {"use_beta_sigmas": True}),
    ("lu-lambdas", {"use_lu_lambdas": True}),
    ("trailing", {"timestep_spacing": "trailing"}),
]


def variants(cls):
    """The last-step options a scheduler has: lower_order_final (all), final_sigmas_type (where offered)."""
    params = inspect.signature(cls.__init__).parameters
    finals = ("zero", "sigma_min") if "final_sigmas_type" in params else (None,)
    return [(lof, final) for final in finals for lof in (True, False)]


def mixture_model(weights, means, scales):
    weights, means, scales = (torch.as_tensor(a, dtype=torch.float64) for a in (weights, means, scales))

    def eps(x, sigma_over_alpha):
        alpha = 1.0 / math.sqrt(1.0 + sigma_over_alpha**2)
        return mixture_eps(x, alpha, sigma_over_alpha * alpha, weights, means, scales)

    return eps


def digits_model(params: dict, beta_min: float, beta_max: float, depth: int):
    """``EpsMLP`` in torch (flax Dense: x @ kernel + bias; LayerNorm eps 1e-6, its defaults)."""
    p = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in params.items()}

    def dense(name, h):
        return h @ p[f"{name}/kernel"] + p[f"{name}/bias"]

    def layer_norm(name, h):
        mean = h.mean(-1, keepdim=True)
        var = ((h - mean) ** 2).mean(-1, keepdim=True)
        return (h - mean) / torch.sqrt(var + 1e-6) * p[f"{name}/scale"] + p[f"{name}/bias"]

    def eps(x, sigma_over_alpha):
        log1p = math.log1p(sigma_over_alpha**2)  # -log alpha^2
        db = beta_max - beta_min
        t = (-beta_min + math.sqrt(beta_min**2 + 2.0 * db * log1p)) / db
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), 16, dtype=torch.float64))[None, :]
        emb = torch.cat([torch.sin(tt[:, None] * freqs), torch.cos(tt[:, None] * freqs)], dim=-1)
        emb = dense("Dense_0", emb)
        h = dense("Dense_1", x)
        for i in range(depth):
            h = h + dense(f"Dense_{i + 2}", torch.nn.functional.silu(layer_norm(f"LayerNorm_{i}", h) + emb))
        return dense(f"Dense_{depth + 2}", torch.nn.functional.silu(h))

    return eps


def run_one(cls, fields, betas, n, x_t, eps):
    sched = cls(num_train_timesteps=len(betas), trained_betas=betas.tolist(), **fields)
    float64_tables(sched, torch.as_tensor(betas, dtype=torch.float64))
    sched.set_timesteps(n)
    sigmas = float64_sigmas(sched, fields, n)
    assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-5, atol=0), "float64 sigmas differ from diffusers'"
    sched.sigmas = sigmas
    x = torch.as_tensor(x_t, dtype=torch.float64) * sched.init_noise_sigma
    calls = 0
    for i, t in enumerate(sched.timesteps):
        out = eps(x, float(sigmas[i]))
        calls += 1
        x = sched.step(out, t, x).prev_sample
    assert x.dtype == torch.float64
    return x.numpy(), sched.timesteps.numpy().astype(np.int64), sigmas.numpy(), calls


def main(argv) -> int:
    src, dst = argv
    data = np.load(src)
    meta = json.loads(str(data["meta"]))
    torch.set_num_threads(meta.get("threads", 1))
    torch.set_default_dtype(torch.float64)
    dpm_module.torch = Float32As64(torch)
    betas = np.asarray(data["betas"], np.float64)
    out, rows, probe_errors = {}, [], {}
    for part in meta["parts"]:
        if meta["model"] == "mixture":
            eps = mixture_model(*(data[f"{part}_{k}"] for k in ("weights", "means", "scales")))
        else:
            params = {k.split("|", 1)[1]: data[k] for k in data.files if k.startswith("param|")}
            eps = digits_model(params, meta["beta_min"], meta["beta_max"], meta["depth"])
            # the re-written network against the Flax one on the JAX side's probe (float32 there)
            probe = eps(torch.as_tensor(data["probe_x"], dtype=torch.float64), float(data["probe_sigma"])).numpy()
            ref = np.asarray(data["probe_eps"], np.float64)
            rel = float(np.max(np.abs(probe - ref)) / np.max(np.abs(ref)))
            print(f"digits network in torch against Flax: max|difference| / max|eps| = {rel:.2e}", flush=True)
            assert rel < 1e-4, f"the torch EpsMLP differs from the Flax one: {rel:.2e}"
            probe_errors[part] = rel
        for label, class_name, method_fields in METHODS:
            cls = getattr(diffusers, class_name)
            params = inspect.signature(cls.__init__).parameters
            for grid, grid_fields in GRIDS:
                if not all(k in params for k in grid_fields):
                    print(f"{part} {label} {grid}: not offered by {class_name}", flush=True)
                    continue
                for lof, final in variants(cls):
                    fields = {**method_fields, **grid_fields, "lower_order_final": lof}
                    if final is not None:
                        fields["final_sigmas_type"] = final
                    # where the run ends: the data prediction (last step to sigma 0) or the sample at label 0's
                    # sigma (final_sigmas_type="sigma_min"; DEIS, which always appends label 0's sigma)
                    end = "x0" if final == "zero" else "sample"
                    for n in meta["nfes"]:
                        row = {"part": part, "method": label, "grid": grid, "lower_order_final": lof,
                               "final_sigmas_type": final, "end": end, "nfe_budget": n, "config": fields}
                        start = time.perf_counter()
                        try:
                            for r in range(meta["sets"]):
                                x, labels, sigmas, calls = run_one(cls, fields, betas, n, data[f"{part}_xT_{r}"], eps)
                                out[f"{part}|{label}|{grid}|{lof}|{final}|{n}|{r}"] = x
                        except Exception as error:  # diffusers' own failure (e.g. a singular UniPC system): recorded
                            rows.append({**row, "error": f"{type(error).__name__}: {error}"})
                            print(f"{part} {label:18s} {grid:11s} lof={lof!s:5s} final={final!s:9s} n={n:2d} "
                                  f"FAILED {type(error).__name__}", flush=True)
                            continue
                        rows.append({**row, "nfe": calls, "labels": labels.tolist(), "sigmas": sigmas.tolist(),
                                     "finite": bool(all(np.isfinite(out[f"{part}|{label}|{grid}|{lof}|{final}|{n}|{r}"]).all()
                                                        for r in range(meta["sets"]))),
                                     "seconds_per_set": (time.perf_counter() - start) / meta["sets"]})
                        print(f"{part} {label:18s} {grid:11s} lof={lof!s:5s} final={final!s:9s} n={n:2d} "
                              f"calls={calls:2d}", flush=True)
    out["meta"] = np.asarray(json.dumps({"rows": rows, "torch": torch.__version__, "probe_errors": probe_errors,
                                         "diffusers": diffusers.__version__}))
    np.savez(dst, **out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
