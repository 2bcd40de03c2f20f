"""Worker: diffusers' ScoreSdeVpScheduler driven as its pipelines drive it (torch, CPU or CUDA).

Prints one JSON line like ``speed.py worker``. ``--device cuda`` keeps the
samples, the model's parameters, the timesteps and the noise generator on the
GPU, and synchronizes before reading the clock. The model is the same exact
Gaussian-mixture epsilon as the JAX side, written here in torch:
eps(x, t) = sigma(t) * sum_k r_k(x) (x - alpha(t) mu_k) / v_k(t).
Needs ``torch`` and ``diffusers`` (``pip install diffusers torch==2.13.0``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler


def mixture(model: str, dim: int):
    if model == "gaussian":
        return torch.ones(1), torch.full((1, dim), 0.5), torch.full((1, dim), 0.5)
    angles = 2 * math.pi * torch.arange(5) / 5 + math.pi / 2
    means = torch.zeros(5, dim)
    means[:, 0], means[:, 1] = 1.5 * torch.cos(angles), 1.5 * torch.sin(angles)
    scales = torch.full((5, dim), 0.5)
    scales[:, :2] = 0.15
    return torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08]), means, scales


def make_model(weights, means, scales, beta_min=0.1, beta_max=20.0, device="cpu"):
    weights, means, scales = (a.to(device) for a in (weights, means, scales))

    def eps(x, t):
        flat = x.reshape(x.shape[0], -1)
        m = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
        alpha, sigma = torch.exp(m)[:, None, None], torch.sqrt(-torch.expm1(2 * m))
        var = alpha**2 * scales**2 + sigma[:, None, None] ** 2
        diff = flat[:, None, :] - alpha * means
        logits = torch.log(weights) - 0.5 * torch.sum(torch.log(2 * math.pi * var) + diff**2 / var, dim=-1)
        resp = torch.softmax(logits, dim=-1)
        out = sigma[:, None] * torch.sum(resp[..., None] * diff / var, dim=1)
        return out.reshape(x.shape)

    return eps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="gaussian")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    model = make_model(*mixture(args.model, math.prod(shape[1:])), device=device)
    scheduler = ScoreSdeVpScheduler()
    scheduler.set_timesteps(args.steps, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def run():
        x = torch.randn(shape, generator=generator, device=device)
        for t in scheduler.timesteps:
            t_vec = t * torch.ones(shape[0], device=device)
            x, x_mean = scheduler.step_pred(model(x, t_vec), x, t_vec, generator=generator)
        return x_mean

    def clocked():
        sync()
        start = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - start

    first = clocked()
    times = [clocked() for _ in range(args.repeats)]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"impl": "diffusers", "shape": list(shape), "steps": args.steps, "model": args.model,
                      "device": str(device), "device_name": device_name,
                      "torch": torch.__version__, "threads": torch.get_num_threads(), "first_call_s": first,
                      "times_s": times, "per_step_median_us": statistics.median(times) / args.steps * 1e6,
                      "per_step_min_us": min(times) / args.steps * 1e6,
                      "per_step_max_us": max(times) / args.steps * 1e6}))


if __name__ == "__main__":
    main()
