r"""Regenerate ``tests/golden/ipndm.npz``: the authors' iPNDM sampler (GITS' code, zju-pi/diff-sampler,
``gits-main/solvers.py``'s ``ipndm_sampler``), in float64.

Run from the repository root, in an environment with torch, giving a checkout of that code (it is run, not
copied)::

    pip install torch==2.13.0 numpy
    git clone https://github.com/zju-pi/diff-sampler /tmp/diff-sampler
    python tests/golden/make_ipndm_golden.py --gits /tmp/diff-sampler/gits-main

The sampler works in EDM's variables, :math:`\bar x = x/\alpha` and :math:`\sigma_{EDM} = \rho = \sigma/\alpha`:
its ``t_steps`` are the noise levels :math:`\rho` of Stable Diffusion's schedule (``scaled_linear``,
0.00085 to 0.012) at training labels, its ``latents`` are :math:`x_T/\sigma(t_0)` (it starts from
``latents * t_steps[0]`` = :math:`x_T/\alpha(t_0)`), and its result times :math:`\alpha` at the last level is
the VP sample. Its network is the exact denoiser of data :math:`x_0 \sim N(\mu, s^2 I)` (:data:`MU` = 0.5,
:data:`S` = 0.8, ``D = 3``): at level :math:`\rho`, :math:`a^2 = 1/(1 + \rho^2)` and
:math:`\hat x_0 = \mu + a s^2 (a\bar x - a\mu)/(a^2 s^2 + 1 - a^2)` with :math:`x = a\bar x`.

The file holds ``x_T`` (``(8, 3)``, ``default_rng(13)``), ``alphas_cumprod`` and per case
``<max_order>/<steps>/<denoise_to_zero>``: ``labels`` (the levels' training labels, the last 0) and ``final``
(the VP sample).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from _golden import write_npz  # noqa: E402  (beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "ipndm.npz")
MU, S, D, B = 0.5, 0.8, 3, 8
# max_order 1 is not run: the authors' buffer update indexes an empty list there (order 1 is DDIM, tested in sv)
CASES = [(order, 10, False) for order in (2, 3, 4)] + [(4, 20, False), (3, 10, True)]


def acp64() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)


class Denoiser(torch.nn.Module):
    """The exact denoiser D(x_bar, rho) of N(MU, S^2) data, in EDM's variables."""

    def forward(self, x_bar, rho, class_labels=None):
        a2 = 1.0 / (1.0 + rho**2)
        a = a2.sqrt()
        x = a * x_bar
        return MU + a * S * S * (x - a * MU) / (a2 * S * S + 1.0 - a2)


def labels_of(steps: int) -> np.ndarray:
    """``steps`` levels: diffusers' "trailing" labels of ``steps - 1`` steps, then label 0."""
    return np.append(np.round(np.arange(1000.0, 0.0, -1000.0 / (steps - 1))) - 1.0, 0.0).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gits", required=True, help="the gits-main folder of a zju-pi/diff-sampler checkout")
    args = parser.parse_args()
    sys.path.insert(0, args.gits)
    from solvers import ipndm_sampler  # the authors' code, run from their checkout

    torch.set_default_dtype(torch.float64)
    x_t = np.random.default_rng(13).normal(size=(B, D))
    acp = acp64()
    arrays = {"x_T": x_t, "alphas_cumprod": acp}
    for order, steps, to_zero in CASES:
        labels = labels_of(steps)
        rho = torch.tensor(np.sqrt((1.0 - acp[labels]) / acp[labels]), dtype=torch.float64)
        sigma0 = float(np.sqrt(1.0 - acp[labels[0]]))
        latents = torch.tensor(x_t / sigma0, dtype=torch.float64)
        out = ipndm_sampler(Denoiser(), latents, t_steps=rho, max_order=order, denoise_to_zero=to_zero)
        final = out.numpy() if to_zero else out.numpy() * np.sqrt(acp[labels[-1]])
        key = f"{order}/{steps}/{int(to_zero)}"
        arrays.update({f"{key}/labels": labels, f"{key}/final": final})
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
