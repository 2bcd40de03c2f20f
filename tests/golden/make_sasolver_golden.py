r"""Regenerate ``tests/golden/sasolver.npz``: diffusers' SASolverScheduler loops, in float64.

Run from the repository root, in an environment with torch and diffusers, naming a Python with JAX and this
package (it draws the noise as ``sv.sample_ode`` does)::

    pip install diffusers torch==2.13.0
    python tests/golden/make_sasolver_golden.py --jax-python .venv/bin/python

Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels). Predictor / corrector orders
(1, 1), (2, 2), (3, 3), (4, 4), (3, 2) at 8 steps in data prediction, each with diffusers' default ``tau_func``
(1 for labels 200 to 800, else 0) and with ``tau_func = lambda t: 0`` (the probability-flow ODE); (3, 4) at 20
steps; (2, 2) at 5 steps (labels 799 and 200: both ends of the default interval); the noise-prediction form at
orders 1-4 (both tau functions) and (2, 2) at 20 steps; ``tau_func = lambda t: 1`` (everywhere) in both forms;
a v-model; ``lower_order_final=False``; ``trailing`` and ``leading`` (with ``steps_offset=1``) labels;
thresholding; ``lambda_min_clipped=-2`` (the labels above 876 left out); its sigma grids (``use_karras_sigmas``,
``use_exponential_sigmas``, ``use_beta_sigmas``: labels rounded or truncated by the scheduler, a zero-length last
step). The scheduler runs in float64: its tables are replaced by their float64 values (``_golden.float64_tables``)
and after ``set_timesteps`` its float32 ``sigmas`` are recomputed in float64 at its labels (the last is label 0's
sigma, where SA-Solver ends; on a sigma grid by its own ``_convert_to_karras`` etc., the last repeated:
:func:`float64_sigmas`) and checked to round to its own.

The model is exact and closed form (a test re-runs it without torch): data :math:`x_0 \sim N(\mu, s^2 I)`
(:data:`MU` = 0.5, :data:`S` = 0.8, 2 for thresholding, ``D = 3``), at label ``n`` with :math:`a^2 =`
``alphas_cumprod[n]`` :math:`\hat\epsilon = \sigma(x - a\mu)/(a^2 s^2 + \sigma^2)` (or
:math:`v = a\hat\epsilon - \sigma\hat x_0`). The samples are ``(8, 3, 1)`` (diffusers' thresholding needs an axis
after the channels). ``x_T`` and the noise are what ``sv.sample_ode`` draws from ``key(SEED)``: sample ``b``'s
slot 0 and, at step ``k``, slot ``1 + k`` (the file's ``noise``), handed to diffusers' ``step`` through a patched
``randn_tensor`` (its one draw per step, which its corrector reuses at the next step).

The file holds ``x_T``, ``noise`` (``(20, 8, 3, 1)``), ``alphas_cumprod``, ``seed``, ``default_config`` (the JSON
``save_config`` writes for a default SASolverScheduler) and per case ``<algorithm>/<p><c>/<tau>/<option>/<steps>``:
``config`` (the JSON of the scheduler's fields; ``tau`` is named in the key: ``default``, ``zero`` or ``all``),
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
PATH = os.path.join(HERE, "sasolver.npz")
MU, D, B, SEED, MAX_STEPS = 0.5, 3, 8, 7, 20
BASE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
TAUS = {"default": None, "zero": lambda t: 0, "all": lambda t: 1}


def cases():
    out = []
    for p, c in ((1, 1), (2, 2), (3, 3), (4, 4), (3, 2)):
        for tau in ("default", "zero"):
            out.append(("data_prediction", p, c, tau, "plain", 8, {}))
    out.append(("data_prediction", 3, 4, "default", "plain", 20, {}))
    out.append(("data_prediction", 2, 2, "default", "plain", 5, {}))
    for p in (1, 2, 3, 4):
        for tau in ("default", "zero"):
            out.append(("noise_prediction", p, p, tau, "plain", 8, {}))
    out.append(("noise_prediction", 2, 2, "default", "plain", 20, {}))
    out += [
        ("data_prediction", 2, 2, "all", "plain", 8, {}),
        ("noise_prediction", 2, 2, "all", "plain", 8, {}),
        ("data_prediction", 3, 3, "default", "v_prediction", 8, {"prediction_type": "v_prediction"}),
        ("noise_prediction", 2, 3, "default", "v_prediction", 8, {"prediction_type": "v_prediction"}),
        ("data_prediction", 3, 3, "default", "no_lower_order_final", 8, {"lower_order_final": False}),
        ("data_prediction", 2, 2, "default", "trailing", 8, {"timestep_spacing": "trailing"}),
        ("data_prediction", 2, 2, "default", "leading", 8, {"timestep_spacing": "leading", "steps_offset": 1}),
        ("data_prediction", 2, 2, "default", "thresholding", 8, {"thresholding": True, "sample_max_value": 1.5}),
        ("data_prediction", 2, 2, "default", "lambda_min_clipped", 8, {"lambda_min_clipped": -2.0}),
        # its sigma grids: they end at label 0's sigma, then a zero-length last step
        ("data_prediction", 2, 2, "default", "karras_sigmas", 8, {"use_karras_sigmas": True}),
        ("data_prediction", 2, 2, "zero", "karras_sigmas", 8, {"use_karras_sigmas": True}),
        ("data_prediction", 3, 4, "default", "karras_sigmas", 20, {"use_karras_sigmas": True}),
        ("data_prediction", 3, 3, "default", "exponential_sigmas", 8, {"use_exponential_sigmas": True}),
        ("noise_prediction", 2, 2, "default", "beta_sigmas", 8, {"use_beta_sigmas": True}),
        ("data_prediction", 2, 2, "default", "beta_sigmas", 8, {"use_beta_sigmas": True}),
    ]
    return out


SIGMA_FIELDS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def float64_sigmas(sched, fields: dict, steps: int) -> np.ndarray:
    """The step's sigmas as ``set_timesteps`` computes them, in float64: at its labels, then label 0's; on a sigma grid
    the scheduler's own ``_convert_to_karras`` (``_exponential``, ``_beta``) of the float64 training sigmas, then its
    last again."""
    train = ((1 - acp64()) / acp64()) ** 0.5
    from _golden import converted_sigmas

    sigmas = converted_sigmas(sched, fields, np.flip(train).copy(), steps)
    if sigmas is None:
        return np.concatenate([train[sched.timesteps.numpy()], [train[0]]])
    return np.concatenate([sigmas, sigmas[-1:]])


def jax_noise(path: str) -> None:
    """(Under the JAX Python.) x_T and the noise as sv.sample_ode draws them from ``key(SEED)``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from sdevp_jax.loops import make_sample_keys, per_sample_normal

    keys = make_sample_keys(jax.random.key(SEED), B, 0)
    x_t = per_sample_normal(keys, 0, (D, 1), jnp.float64)
    noise = jnp.stack([per_sample_normal(keys, 1 + k, (D, 1), jnp.float64) for k in range(MAX_STEPS)])
    np.savez(path, x_T=np.asarray(x_t), noise=np.asarray(noise))


def acp64() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)


def scale(fields: dict) -> float:
    return 2.0 if fields.get("thresholding") else 0.8


def model(x: np.ndarray, label: int, prediction_type: str, s: float) -> np.ndarray:
    a2 = acp64()[label]
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    eps = sigma * (x - a * MU) / (a2 * s * s + sigma * sigma)
    if prediction_type == "epsilon":
        return eps
    return a * eps - sigma * (MU + a * s * s * (x - a * MU) / (a2 * s * s + sigma * sigma))


def run(torch, diffusers, fields: dict, tau: str, steps: int, x_t, noise):
    from diffusers.schedulers import scheduling_sasolver as module
    from _golden import float64_tables

    sched = diffusers.SASolverScheduler(**BASE, **fields, tau_func=TAUS[tau])
    float64_tables(sched, torch.tensor(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dtype=torch.float64))
    sched.set_timesteps(steps)
    sigmas = torch.tensor(float64_sigmas(sched, fields, steps), dtype=torch.float64)
    assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-6, atol=0), "sigmas changed"
    sched.sigmas = sigmas
    draws = iter(noise)
    real = module.randn_tensor
    module.randn_tensor = lambda shape, **kw: torch.tensor(next(draws), dtype=torch.float64)
    try:
        x = torch.tensor(x_t, dtype=torch.float64)
        for t in sched.timesteps:
            out = model(x.numpy(), int(t), fields.get("prediction_type", "epsilon"), scale(fields))
            x = sched.step(torch.tensor(out, dtype=torch.float64), t, x).prev_sample
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
    arrays = {"x_T": x_t, "noise": noise, "alphas_cumprod": acp64(), "seed": np.array(SEED),
              "default_config": np.array(diffusers.SASolverScheduler().to_json_string())}
    for algorithm, p, c, tau, option, steps, extra in cases():
        fields = dict(algorithm_type=algorithm, predictor_order=p, corrector_order=c, **extra)
        key = f"{algorithm}/{p}{c}/{tau}/{option}/{steps}"
        labels, final = run(torch, diffusers, fields, tau, steps, x_t, noise)
        assert np.all(np.isfinite(final)), key
        arrays.update({f"{key}/config": np.array(json.dumps(fields)), f"{key}/labels": labels,
                       f"{key}/final": final})
    write_npz(PATH, arrays)


if __name__ == "__main__":
    main()
