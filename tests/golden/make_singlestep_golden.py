r"""Regenerate ``tests/golden/singlestep.npz``: diffusers' DPMSolverSinglestepScheduler loops, in float64.

Run from the repository root, in an environment with torch and diffusers, naming a Python with JAX and this
package (it draws the noise as ``sv.sample_ode`` does)::

    pip install diffusers torch==2.13.0
    python tests/golden/make_singlestep_golden.py --jax-python .venv/bin/python

Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels). Each algorithm
(``dpmsolver++``, ``dpmsolver``, ``sde-dpmsolver++``), solver type and order 1-3, at 6 and 7 steps (whole and
cut-short groups); ``dpmsolver`` with ``final_sigmas_type="sigma_min"`` (diffusers refuses it with "zero"),
the others with "zero"; and a few option cases (v-prediction, ``lower_order_final``, Karras sigmas,
``sigma_min``). The scheduler runs in float64: after construction ``betas``, ``alphas``,
``alphas_cumprod``, ``alpha_t``, ``sigma_t``, ``lambda_t`` and ``sigmas`` are replaced by their float64
values, and after ``set_timesteps`` its float32 ``sigmas`` are recomputed in float64 (at the labels, or
by its own ``_convert_to_karras``) and checked to round to its own.

The model is exact and closed form (a test re-runs it without torch): data :math:`x_0 \sim N(\mu, s^2 I)`
(:data:`MU` = 0.5, :data:`S` = 0.8, ``D = 3``), at label ``n`` with :math:`a^2 =` ``alphas_cumprod[n]``
:math:`\hat\epsilon = \sigma(x - a\mu)/(a^2 s^2 + \sigma^2)` (or :math:`v = a\hat\epsilon - \sigma\hat x_0`).
The SDE cases' noise is what ``sv.sample_ode`` draws from ``key(SEED)``: sample ``b``'s slot ``1 + k`` at
step ``k`` (the file's ``noise``), handed to each step through a patched ``randn_tensor``; ``x_T`` is slot 0.

The file holds ``x_T`` (``(8, 3)``), ``noise`` (``(8, 8, 3)``), ``alphas_cumprod`` and per case
``<algorithm>/<solver_type>/<order>/<option>/<steps>``: ``config`` (the JSON of the scheduler's fields),
``labels`` and ``final`` (the last ``prev_sample``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PATH = os.path.join(HERE, "singlestep.npz")
MU, S, D, B, SEED, MAX_STEPS = 0.5, 0.8, 3, 8, 5, 8
BASE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def cases():
    out = []
    for algorithm in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"):
        final = "sigma_min" if algorithm == "dpmsolver" else "zero"
        for solver_type in ("midpoint", "heun"):
            for order in (1, 2, 3):
                if order == 1 and solver_type == "heun":
                    continue
                for steps in (6, 7):
                    out.append((algorithm, solver_type, order, "plain", steps,
                                dict(algorithm_type=algorithm, solver_type=solver_type, solver_order=order,
                                     final_sigmas_type=final)))
    out += [
        ("dpmsolver++", "midpoint", 3, "v_prediction", 7, dict(solver_order=3, prediction_type="v_prediction")),
        ("dpmsolver++", "midpoint", 2, "lower_order_final", 6, dict(solver_order=2, lower_order_final=True,
                                                                    final_sigmas_type="sigma_min")),
        ("dpmsolver++", "heun", 3, "sigma_min", 6, dict(solver_order=3, solver_type="heun",
                                                        final_sigmas_type="sigma_min")),
        ("dpmsolver++", "midpoint", 3, "karras_sigmas", 7, dict(solver_order=3, use_karras_sigmas=True)),
    ]
    return out


def jax_noise(path: str) -> None:
    """(Under the JAX Python.) x_T and the noise as sv.sample_ode draws them from ``key(SEED)``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from sdevp_jax.loops import make_sample_keys, per_sample_normal

    keys = make_sample_keys(jax.random.key(SEED), B, 0)
    x_t = per_sample_normal(keys, 0, (D,), jnp.float64)
    noise = jnp.stack([per_sample_normal(keys, 1 + k, (D,), jnp.float64) for k in range(MAX_STEPS)])
    np.savez(path, x_T=np.asarray(x_t), noise=np.asarray(noise))


def acp64() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)


def model(x: np.ndarray, label: int, prediction_type: str) -> np.ndarray:
    a2 = acp64()[label]
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
    if prediction_type == "epsilon":
        return eps
    x0 = MU + a * S * S * (x - a * MU) / (a2 * S * S + sigma * sigma)
    return a * eps - sigma * x0


def run(torch, diffusers, fields: dict, steps: int, x_t, noise):
    from diffusers.schedulers import scheduling_dpmsolver_singlestep as module
    from _golden import float64_tables

    sched = diffusers.DPMSolverSinglestepScheduler(**BASE, **fields)
    float64_tables(sched, torch.tensor(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dtype=torch.float64))
    sched.set_timesteps(steps)
    train = ((1 - acp64()) / acp64()) ** 0.5
    if fields.get("use_karras_sigmas"):
        sigmas = sched._convert_to_karras(in_sigmas=np.flip(train).copy(), num_inference_steps=steps)
    else:
        sigmas = train[sched.timesteps.numpy()]
    last = train[0] if fields.get("final_sigmas_type") == "sigma_min" else 0.0
    sigmas = torch.tensor(np.concatenate([sigmas, [last]]), dtype=torch.float64)
    assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-6, atol=0), "sigmas changed"
    sched.sigmas = sigmas
    draws = iter(noise)
    real = module.randn_tensor
    module.randn_tensor = lambda shape, **kw: torch.tensor(next(draws), dtype=torch.float64)
    try:
        x = torch.tensor(x_t, dtype=torch.float64)
        for t in sched.timesteps:
            out = torch.tensor(model(x.numpy(), int(t), fields.get("prediction_type", "epsilon")), dtype=torch.float64)
            x = sched.step(out, t, x).prev_sample
    finally:
        module.randn_tensor = real
    return sched.timesteps.numpy().astype(np.int64), x.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jax-python", default=sys.executable)
    parser.add_argument("--noise", help=argparse.SUPPRESS)  # (internal) write the JAX draws here and stop
    args = parser.parse_args()
    if args.noise:
        jax_noise(args.noise)
        return
    import torch

    import diffusers
    from _golden import write_npz

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "noise.npz")
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run([args.jax_python, os.path.abspath(__file__), "--noise", path], check=True, env=env)
        with np.load(path) as data:
            x_t, noise = data["x_T"], data["noise"]
    torch.set_default_dtype(torch.float64)
    arrays = {"x_T": x_t, "noise": noise, "alphas_cumprod": acp64(), "seed": np.array(SEED)}
    for algorithm, solver_type, order, option, steps, fields in cases():
        key = f"{algorithm}/{solver_type}/{order}/{option}/{steps}"
        labels, final = run(torch, diffusers, fields, steps, x_t, noise)
        assert np.all(np.isfinite(final)), key
        arrays.update({f"{key}/config": np.array(json.dumps(fields)), f"{key}/labels": labels,
                       f"{key}/final": final})
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
