"""Worker: diffusers' deterministic multistep schedulers on the exact mixture model (torch, CPU).

The diffusers side of ``accuracy_vs_nfe.py --frontier``, run in its own process by a
Python with ``torch`` and ``diffusers`` (no JAX here). Reads an ``.npz`` written by the
JAX side (the schedule's config, the mixtures' weights, means and scales, the x_T of
every dimension and replicate, the NFE budgets) and writes an ``.npz`` with the final
samples of every scheduler, budget and replicate, the labels each scheduler stepped
through and the model calls it made (counted by the model wrapper, not assumed).

The model is the exact noise prediction of the Gaussian mixture diffused by the
scheduler's own ``alphas_cumprod[label]`` (alpha = sqrt(abar), sigma = sqrt(1 - abar)):

    eps(x, label) = sigma * sum_k r_k(x) (x - alpha mu_k) / v_k,   v_k = alpha^2 s_k^2 + sigma^2,

r_k the posterior responsibilities -- the model ``sv.mixtures.make_mixture_eps_fn`` is on the
JAX side (sv's discrete schedule puts label n at t = (n + 1)/N with alpha(t)^2 = abar_n).

    python benchmarks/accuracy_vs_nfe_diffusers.py IN.npz OUT.npz
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

#: (row label, scheduler class, extra config, where the last step ends: "zero" (sigma = 0) or "label0")
ROWS = [
    # DDIM: its default "leading" labels; set_alpha_to_one (default) makes the last step go to alpha = 1;
    # clip_sample off (its default clips x0 to [-1, 1], which Stable Diffusion's config turns off too)
    ("diffusers DDIM", DDIMScheduler, {"clip_sample": False}, "zero"),
    ("diffusers DPM-Solver++ 2M", DPMSolverMultistepScheduler, {"solver_order": 2}, "zero"),
    ("diffusers DPM-Solver++ 3M", DPMSolverMultistepScheduler, {"solver_order": 3}, "zero"),
    ("diffusers UniPC bh1 order 2", UniPCMultistepScheduler, {"solver_type": "bh1", "solver_order": 2}, "zero"),
    ("diffusers UniPC bh2 order 2", UniPCMultistepScheduler, {"solver_type": "bh2", "solver_order": 2}, "zero"),
    ("diffusers UniPC bh1 order 3", UniPCMultistepScheduler, {"solver_type": "bh1", "solver_order": 3}, "zero"),
    ("diffusers UniPC bh2 order 3", UniPCMultistepScheduler, {"solver_type": "bh2", "solver_order": 3}, "zero"),
    # bh1 with final_sigmas_type="zero" returns NaN (its B(h) = -h is infinite on the step to sigma = 0);
    # "sigma_min" ends at label 0's sigma instead
    *[(f"diffusers UniPC bh1 order {o} (final sigma_min)", UniPCMultistepScheduler,
       {"solver_type": "bh1", "solver_order": o, "final_sigmas_type": "sigma_min"}, "label0") for o in (2, 3)],
    # DEIS ends at label 0's sigma (its set_timesteps appends sigma_last, not 0)
    ("diffusers DEIS order 2", DEISMultistepScheduler, {"solver_order": 2}, "label0"),
    ("diffusers DEIS order 3", DEISMultistepScheduler, {"solver_order": 3}, "label0"),
]


def mixture_eps(x, alpha, sigma, weights, means, scales):
    """The exact noise prediction of the mixture diffused to (alpha, sigma), in the tensors' dtype."""
    var = alpha**2 * scales**2 + sigma**2  # (K, D)
    diff = x[:, None, :] - alpha * means  # (B, K, D)
    logits = torch.log(weights) - 0.5 * torch.sum(torch.log(2 * math.pi * var) + diff**2 / var, dim=-1)
    resp = torch.softmax(logits, dim=-1)
    return sigma * torch.sum(resp[..., None] * diff / var, dim=1)


def make_model(weights, means, scales, alphas_cumprod, counter):
    weights, means, scales = (torch.as_tensor(a, dtype=torch.float32) for a in (weights, means, scales))
    abar = alphas_cumprod.to(torch.float32)

    def eps(x, label):
        counter[0] += 1
        a2 = abar[int(label)]
        return mixture_eps(x, torch.sqrt(a2), torch.sqrt(1.0 - a2), weights, means, scales)

    return eps


def run_one(cls, config, extra, n, x_t, mixture):
    scheduler = cls(**config, **extra)
    scheduler.set_timesteps(n)
    counter = [0]
    eps = make_model(*mixture, scheduler.alphas_cumprod, counter)
    x = torch.as_tensor(x_t, dtype=torch.float32) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(eps(x, t), t, x).prev_sample
    return x.numpy(), scheduler.timesteps.numpy().astype(np.int64), counter[0]


def main(argv) -> int:
    src, dst = argv
    data = np.load(src)
    meta = json.loads(str(data["meta"]))
    config = {"num_train_timesteps": meta["num_train_timesteps"], "beta_schedule": meta["beta_schedule"],
              "beta_start": meta["beta_start"], "beta_end": meta["beta_end"]}
    torch.set_num_threads(meta.get("threads", 1))
    out, rows = {}, []
    for dim in meta["dims"]:
        mixture = tuple(data[f"d{dim}_{k}"] for k in ("weights", "means", "scales"))
        for label, cls, extra, end in ROWS:
            for n in meta["nfes"]:
                start = time.perf_counter()
                for r in range(meta["replicates"]):
                    x, labels, calls = run_one(cls, config, extra, n, data[f"d{dim}_xT_{r}"], mixture)
                    out[f"d{dim}|{label}|{n}|{r}"] = x
                seconds = (time.perf_counter() - start) / meta["replicates"]
                rows.append({"dim": dim, "method": label, "budget": n, "nfe": calls, "end": end,
                             "labels": labels.tolist(), "seconds": seconds, "config": {**config, **extra}})
                print(f"D={dim:3d} {label:30s} n={n:3d} calls={calls:3d} ({seconds:.2f} s)", flush=True)
    import diffusers

    out["meta"] = np.asarray(json.dumps({"rows": rows, "torch": torch.__version__,
                                         "diffusers": diffusers.__version__}))
    np.savez(dst, **out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
