r"""Regenerate ``tests/golden/restart.npz``: the authors' Restart sampler (Newbeeer/diffusion_restart_sampling,
``benchmarks/generate_restart.py``'s ``restart_sampler``, the EDM/VP path), run in float64 on an exact denoiser
with given noise.

Run from the repository root with torch, giving the ``benchmarks`` folder of a checkout of that code (it is run,
not copied; only ``torchvision``, which the module imports for saving images, is stubbed when absent)::

    git clone https://github.com/Newbeeer/diffusion_restart_sampling /tmp/restart
    /tmp/gold-venv/bin/python tests/golden/make_restart_golden.py --restart /tmp/restart/benchmarks \
        --commit "$(git -C /tmp/restart rev-parse HEAD)"

The sampler works in EDM's variables, :math:`\bar x = x/\alpha` and :math:`\sigma_{EDM} = \rho = \sigma/\alpha`.
Its network is the exact denoiser of the test mixture (:data:`WEIGHTS`, :data:`MEANS`, :data:`SCALES`, the
``SMOOTH`` mixture of ``tests/test_restart.py``): at level :math:`\rho` component :math:`k` has
:math:`\bar x \sim N(\mu_k, s_k^2 + \rho^2)` per coordinate and posterior mean
:math:`\mu_k + s_k^2 (\bar x - \mu_k)/(s_k^2 + \rho^2)`; :math:`\hat x_0` is their responsibility-weighted sum.
Its ``sigma_min``/``sigma_max`` are EDM's ``VPPrecond``'s (:math:`\beta_d = 19.9`, :math:`\beta_{min} = 0.1`,
:math:`\epsilon_t = 10^{-5}`), ``round_sigma`` the identity, as there.

Noise: ``noise`` is laid out as ``sv.sample_ode(..., noise=)`` takes it for ``method="restart"``, two draws per
Heun step (slot 0: a restart pass's jump, slot 1: the churn), ``(2 * steps, B, D)``; the authors' ``randn_like``
is fed from it in their order (each main step's churn draw, which their ``S_churn = 0`` scales by 0, gets that
step's slot 1, which sdevp_jax also scales by 0, and the last one's, to sigma = 0, zeros; a pass's jump its first
step's slot 0; each restart step's churn its slot 1). The script checks that every draw was used.

Two runs per case: ``final32``, the function as published (its restart grid, ``get_steps``, starts from a float32
``arange``, so torch keeps each pass's levels, the jump's scale, the churned level and the step sizes in float32),
and ``final64``, the same function with that one ``arange`` made float64 (``torch`` in its module replaced by
:class:`_golden.Float32As64`, which also maps ``torch.float``). Per run, ``levels32``/``levels64`` are the levels
of its network calls, in order. Per case the file holds ``latents`` (``x_T / rho_0``, ``(B, D)``), ``t_steps``
(the main levels, float64, without the final 0), ``noise``, ``restart_idx`` (the main index each interval restarts
at, as the authors' code chooses it), and the case's options (``restarts``, an ``(m, 4)`` array, ``steps``,
``s_noise``, ``gamma``, ``s_min``, ``s_max``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import types

import numpy as np
import torch

from _golden import Float32As64, write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "restart.npz")
WEIGHTS, MEANS, SCALES = [0.3, 0.7], [[-1.0, 0.5], [1.0, 0.0]], 0.5
B, D = 4, 2

#: name: (main steps, {i: [n, K, t_min, t_max]}, S_noise, restart_gamma, S_min, S_max)
CASES = {
    # the published CIFAR-10 VP configuration (params_cifar10_vp.txt's first line, the README's S_* flags): 43 calls
    "cifar10_vp": (18, {"0": [3, 2, 0.06, 0.30]}, 1.003, 0.05, 0.01, 1.0),
    "k0": (8, {"0": [3, 0, 0.06, 0.30]}, 1.003, 0.05, 0.01, 1.0),
    "two_intervals": (10, {"0": [4, 1, 1.0, 3.0], "1": [3, 3, 0.1, 0.5]}, 1.003, 0.05, 0.01, 10.0),
    "n5_k1_no_churn": (12, {"0": [5, 1, 0.3, 1.0]}, 1.0, 0.0, 0.01, 1.0),
    # the published ImageNet-64 configuration's first line (params_imagenet_edm.txt): levels above S_max = 1 get
    # no churn in the authors' code
    "imagenet_line1": (14, {"0": [3, 1, 19.35, 40.79], "1": [3, 1, 1.09, 1.92], "2": [3, 1, 0.06, 0.30]},
                       1.003, 0.05, 0.01, 1.0),
}


def vp_sigma(t: float, beta_d: float = 19.9, beta_min: float = 0.1) -> float:
    return float(np.sqrt(np.expm1(0.5 * beta_d * t * t + beta_min * t)))


class Denoiser(torch.nn.Module):
    """The exact denoiser D(x_bar, rho) of the mixture, in EDM's variables; records the level of each call."""

    img_channels, img_resolution = 1, D
    sigma_min, sigma_max = vp_sigma(1e-5), vp_sigma(1.0)

    def __init__(self):
        super().__init__()
        self.levels = []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma)
        self.levels.append(float(sigma))
        rho = sigma.to(torch.float64)
        w = torch.tensor(WEIGHTS, dtype=torch.float64)
        mu = torch.tensor(MEANS, dtype=torch.float64)  # (K, D)
        s2 = torch.full_like(mu, SCALES**2)
        var = s2 + rho * rho  # (K, D)
        diff = x[:, None, :] - mu  # (B, K, D)
        logp = torch.log(w) - 0.5 * (diff * diff / var + torch.log(2 * torch.pi * var)).sum(-1)
        resp = torch.softmax(logp, dim=-1)  # (B, K)
        post = mu + s2 / var * diff  # (B, K, D)
        return (resp[..., None] * post).sum(1)


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """The main levels, the authors' expression in torch float64 (to lay the noise out before the run; the test
    checks them against the levels of the run's calls)."""
    i = torch.arange(steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return t.numpy()


def draw_queue(noise: np.ndarray, steps: int, restart_at: dict) -> list:
    """The authors' draws, in their order, taken from sdevp_jax's layout (see the module docstring)."""
    queue, s = [], 0
    for i in range(steps):
        if i == steps - 1:  # the step to sigma = 0, sdevp_jax's finish, which draws nothing
            queue.append(np.zeros_like(noise[0]))
            continue
        queue.append(noise[2 * s + 1])  # the main step's churn draw (scaled by 0 on both sides)
        s += 1
        if i + 1 in restart_at:
            n, k = restart_at[i + 1][:2]
            for _ in range(k):
                queue.append(noise[2 * s])  # the jump
                for _ in range(n - 1):
                    queue.append(noise[2 * s + 1])  # the churn of each restart step
                    s += 1
    assert 2 * s == noise.shape[0], (s, noise.shape)
    return queue


def run(sampler, queue, latents, **kwargs):
    """One run of the authors' function with its draws from ``queue``; its result, its calls' levels and the
    restart indices it printed."""
    draws = list(queue)
    net = Denoiser()

    def randn_like(x):
        z = torch.tensor(draws.pop(0), dtype=x.dtype)
        assert z.shape == x.shape
        return z

    printed = []
    module = sys.modules[sampler.__module__]
    module.dist.print0 = lambda *a, **k: printed.append(" ".join(map(str, a)))
    out = sampler(net, torch.tensor(latents, dtype=torch.float64), randn_like=randn_like, **kwargs)
    assert not draws, f"{len(draws)} draws unused"
    idx = sorted({int(re.match(r"restart at (\d+) with", p).group(1)) for p in printed})
    return out.numpy(), np.array(net.levels), idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--restart", required=True, help="the benchmarks folder of a diffusion_restart_sampling "
                        "checkout")
    parser.add_argument("--commit", default="", help="that checkout's commit, stored in the file as 'authors'")
    args = parser.parse_args()
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:  # only its image-saving helpers are imported there
            stub = types.ModuleType("torchvision")
            stub.utils = types.ModuleType("torchvision.utils")
            stub.utils.make_grid = stub.utils.save_image = None
            sys.modules.update({"torchvision": stub, "torchvision.utils": stub.utils})
    sys.path.insert(0, args.restart)
    import generate_restart  # the authors' code, run from their checkout

    for name in ("torchvision", "torchvision.utils"):  # the stubs would break diffusers' import (write_npz)
        if getattr(sys.modules.get(name), "__spec__", True) is None:
            del sys.modules[name]

    sampler = generate_restart.restart_sampler
    arrays = {}
    rng = np.random.default_rng(29)
    for name, (steps, info, s_noise, gamma, s_min, s_max) in CASES.items():
        t_steps = karras(steps, max(0.002, Denoiser.sigma_min), min(80.0, Denoiser.sigma_max))
        grid = np.append(t_steps, 0.0)
        restart_at = {int(np.argmin(np.abs(grid - v[2]))): v for v in info.values()}
        num = steps - 1 + sum(k * (n - 1) for n, k, _, _ in info.values())
        noise = rng.standard_normal((2 * num, B, D))
        latents = rng.standard_normal((B, D))
        queue = draw_queue(noise, steps, restart_at)
        kwargs = dict(num_steps=steps, S_churn=0, S_min=s_min, S_max=s_max, S_noise=s_noise,
                      restart_info=json.dumps(info), restart_gamma=gamma)
        final32, levels32, idx = run(sampler, queue, latents, **kwargs)
        real = generate_restart.torch
        as64 = Float32As64(real)
        as64.float = real.float64
        generate_restart.torch = as64
        try:
            final64, levels64, idx64 = run(sampler, queue, latents, **kwargs)
        finally:
            generate_restart.torch = real
        assert idx == idx64 == sorted(i for i, v in restart_at.items() if v[1] > 0), (idx, restart_at)
        print(f"{name}: restart at {idx}, {len(levels64)} calls, max|final32 - final64| / max|final64| = "
              f"{np.max(np.abs(final32 - final64)) / np.max(np.abs(final64)):.3g}")
        arrays.update({f"{name}/latents": latents, f"{name}/t_steps": t_steps, f"{name}/noise": noise,
                       f"{name}/restart_idx": np.array([i for i in restart_at]),
                       f"{name}/restarts": np.array(list(info.values()), dtype=np.float64),
                       f"{name}/steps": steps, f"{name}/s_noise": s_noise, f"{name}/gamma": gamma,
                       f"{name}/s_min": s_min, f"{name}/s_max": s_max,
                       f"{name}/final32": final32, f"{name}/final64": final64,
                       f"{name}/levels32": levels32, f"{name}/levels64": levels64})
    arrays["authors"] = np.array(f"Newbeeer/diffusion_restart_sampling {args.commit}".strip())
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
