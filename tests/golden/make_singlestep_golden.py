r"""Regenerate ``tests/golden/singlestep.npz``: diffusers' DPMSolverSinglestepScheduler loops, in float64.

Run from the repository root, in an environment with torch and diffusers, naming a Python with JAX and this
package (it draws the noise as ``sv.sample_ode`` does)::

    pip install diffusers torch==2.13.0
    python tests/golden/make_singlestep_golden.py --jax-python .venv/bin/python

(``--finite-scan``: instead, count diffusers' sigma_min runs on the sigma grids that end finite, :func:`finite_scan`.)

Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels). Each algorithm
(``dpmsolver++``, ``dpmsolver``, ``sde-dpmsolver++``), solver type and order 1-3, at 6 and 7 steps (whole and
cut-short groups); ``dpmsolver`` with ``final_sigmas_type="sigma_min"`` (diffusers refuses it with "zero"),
the others with "zero"; a few option cases (v-prediction, ``lower_order_final``, Karras sigmas,
``sigma_min``); and :data:`SIGMA_MIN_CASES`: the Karras, exponential and beta sigma grids with
``final_sigmas_type="sigma_min"``, which end at sigma_min already and then take a zero-length last step
(sigma_min to sigma_min) inside the last order group, chosen so that this group has order 1, 2 and 3, with
``lower_order_final`` both ways and 10 to 25 steps. The scheduler runs in float64: after construction ``betas``,
``alphas``, ``alphas_cumprod``, ``alpha_t``, ``sigma_t``, ``lambda_t`` and ``sigmas`` are replaced by their float64
values, and after ``set_timesteps`` its float32 ``sigmas`` are recomputed in float64 (at the labels, or
by its own ``_convert_to_karras``, ``_convert_to_exponential``, ``_convert_to_beta``) and checked to round to its
own; on a sigma grid with ``sigma_min`` the appended last sigma is the grid's last again (diffusers' float32
sigmas repeat it exactly; in float64 label 0's sigma differs from the Karras grid's end by 1e-17).

The model is exact and closed form (a test re-runs it without torch): data :math:`x_0 \sim N(\mu, s^2 I)`
(:data:`MU` = 0.5, :data:`S` = 0.8, ``D = 3``), at label ``n`` with :math:`a^2 =` ``alphas_cumprod[n]``
:math:`\hat\epsilon = \sigma(x - a\mu)/(a^2 s^2 + \sigma^2)` (or :math:`v = a\hat\epsilon - \sigma\hat x_0`).
The SDE cases' noise is what ``sv.sample_ode`` draws from ``key(SEED)``: sample ``b``'s slot ``1 + k`` at
step ``k`` (the file's ``noise``), handed to each step through a patched ``randn_tensor``; ``x_T`` is slot 0.

The file holds ``x_T`` (``(8, 3)``), ``noise`` (``(8, 8, 3)``), ``alphas_cumprod`` and per case
``<algorithm>/<solver_type>/<order>/<option>/<steps>``: ``config`` (the JSON of the scheduler's fields),
``labels``, ``orders`` (its ``order_list`` after ``set_timesteps``) and ``final`` (the last ``prev_sample``; finite
in every case, the zero-length steps included); and ``config/DPMSolverSinglestepScheduler/default``, the class's
``save_config`` file with its defaults (tests/test_config.py loads and saves it; tests/test_discrete_config.py
changes one option of it at a time).
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
MU, S, D, B, SEED, MAX_STEPS = 0.5, 0.8, 3, 8, 5, 25
BASE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
#: the sigma grids by config field, and the scheduler method that computes each
SIGMA_GRIDS = {"use_karras_sigmas": "_convert_to_karras", "use_exponential_sigmas": "_convert_to_exponential",
               "use_beta_sigmas": "_convert_to_beta"}
#: (algorithm, solver_type, order, grid field, steps, lower_order_final) with final_sigmas_type="sigma_min"; the
#: comment: diffusers' last order group (its order_list's end), the zero-length step being its last step
SIGMA_MIN_CASES = [
    ("dpmsolver++", "midpoint", 1, "use_karras_sigmas", 10, False),     # 1
    ("dpmsolver++", "midpoint", 2, "use_exponential_sigmas", 10, False),  # 1, 2 (diffusers' defaults otherwise)
    ("dpmsolver++", "heun", 2, "use_karras_sigmas", 10, True),          # 1, 1
    ("dpmsolver++", "midpoint", 3, "use_karras_sigmas", 12, False),     # 1, 2, 3
    ("dpmsolver++", "midpoint", 3, "use_karras_sigmas", 12, True),      # 1, 2, 1
    ("dpmsolver++", "heun", 3, "use_exponential_sigmas", 15, False),    # 1, 2, 3
    ("dpmsolver++", "midpoint", 3, "use_exponential_sigmas", 11, False),  # 1, 2 (lower_order_final forced)
    ("dpmsolver++", "heun", 3, "use_beta_sigmas", 13, False),           # 1 (forced)
    ("dpmsolver", "midpoint", 3, "use_karras_sigmas", 12, False),       # 1, 2, 3
    ("dpmsolver", "heun", 2, "use_exponential_sigmas", 10, False),      # 1, 2
    ("dpmsolver", "heun", 3, "use_beta_sigmas", 20, False),             # 1, 2 (forced)
    ("sde-dpmsolver++", "midpoint", 3, "use_karras_sigmas", 12, False),  # 1, 2, 3
    ("sde-dpmsolver++", "heun", 2, "use_exponential_sigmas", 10, False),  # 1, 2
    ("sde-dpmsolver++", "heun", 3, "use_beta_sigmas", 24, False),       # 1, 2, 3
    ("sde-dpmsolver++", "midpoint", 3, "use_karras_sigmas", 25, False),  # 1 (forced)
]


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
    for algorithm, solver_type, order, grid, steps, lower in SIGMA_MIN_CASES:
        option = f"{grid.removeprefix('use_')}_sigma_min" + ("_lower_order_final" if lower else "")
        out.append((algorithm, solver_type, order, option, steps,
                    dict(algorithm_type=algorithm, solver_type=solver_type, solver_order=order, lower_order_final=lower,
                         final_sigmas_type="sigma_min", **{grid: True})))
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


def run(torch, diffusers, fields: dict, steps: int, x_t, noise, repeat: bool = True):
    from diffusers.schedulers import scheduling_dpmsolver_singlestep as module
    from _golden import float64_tables

    sched = diffusers.DPMSolverSinglestepScheduler(**BASE, **fields)
    float64_tables(sched, torch.tensor(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dtype=torch.float64))
    sched.set_timesteps(steps)
    train = ((1 - acp64()) / acp64()) ** 0.5
    grid = next((g for g in SIGMA_GRIDS if fields.get(g)), None)
    if grid:
        sigmas = getattr(sched, SIGMA_GRIDS[grid])(in_sigmas=np.flip(train).copy(), num_inference_steps=steps)
    else:
        sigmas = train[sched.timesteps.numpy()]
    last = 0.0
    if fields.get("final_sigmas_type") == "sigma_min":  # a label grid's last step goes to label 0's sigma, a sigma
        last = sigmas[-1] if grid and repeat else train[0]  # grid's (ending there already) repeats its last one
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
    return sched.timesteps.numpy().astype(np.int64), np.asarray(sched.order_list, np.int64), x.numpy()


def finite_scan(torch, diffusers) -> None:
    """Print how many of diffusers' runs with ``final_sigmas_type="sigma_min"`` on a sigma grid end finite: orders
    1-3, each algorithm and solver type, the three grids, 10 to 25 steps, ``lower_order_final`` both ways; each with
    the repeated last sigma (as the golden) and with label 0's own float64 sigma (in float64 the Karras grid's end
    differs from it by about 1e-17). Noise and x_T: ``default_rng(0)``."""
    import itertools

    rng = np.random.default_rng(0)
    x_t, noise = rng.normal(size=(B, D)), rng.normal(size=(MAX_STEPS, B, D))
    runs = bad = 0
    for algorithm, solver_type, order, grid, steps, lower in itertools.product(
            ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"), ("midpoint", "heun"), (1, 2, 3), SIGMA_GRIDS,
            range(10, 26), (False, True)):
        fields = dict(algorithm_type=algorithm, solver_type=solver_type, solver_order=order, lower_order_final=lower,
                      final_sigmas_type="sigma_min", **{grid: True})
        for repeat in (True, False):
            _, _, final = run(torch, diffusers, fields, steps, x_t, noise, repeat=repeat)
            runs += 1
            if not np.all(np.isfinite(final)):
                bad += 1
                print("not finite:", fields, steps, "repeated" if repeat else "label 0's sigma")
    print(f"{runs} runs of {runs // 2} configurations, {bad} not finite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jax-python", default=sys.executable)
    parser.add_argument("--finite-scan", action="store_true", help=finite_scan.__doc__.split(":")[0])
    parser.add_argument("--noise", help=argparse.SUPPRESS)  # (internal) write the JAX draws here and stop
    args = parser.parse_args()
    if args.noise:
        jax_noise(args.noise)
        return
    import torch

    import diffusers
    from diffusers.utils import logging

    if args.finite_scan:
        torch.set_default_dtype(torch.float64)
        logging.set_verbosity_error()  # its note on each forced lower_order_final
        finite_scan(torch, diffusers)
        return
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
        labels, orders, final = run(torch, diffusers, fields, steps, x_t, noise)
        assert np.all(np.isfinite(final)), key
        arrays.update({f"{key}/config": np.array(json.dumps(fields)), f"{key}/labels": labels,
                       f"{key}/orders": orders, f"{key}/final": final})
    with tempfile.TemporaryDirectory() as tmp:
        diffusers.DPMSolverSinglestepScheduler().save_config(tmp)
        with open(os.path.join(tmp, "scheduler_config.json")) as f:
            arrays["config/DPMSolverSinglestepScheduler/default"] = np.array(f.read())
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
