r"""Regenerate ``tests/golden/er_sde.npz``: the authors' ER-SDE-Solver (QinpengCui/ER-SDE-Solver,
``er_sde_solver.py``: ``ER_SDE_Solver(sde_type="vp", model_prediction_type="x_start")``'s ``vp_1_order``,
``vp_2_order_taylor``, ``vp_3_order_taylor``), run from a checkout, in float64, on an exact model.

Run from the repository root, in an environment with torch, giving a checkout of that code (it is run, not
copied) and a Python that imports this checkout's ``sdevp_jax`` (with JAX) for the grid and the noise::

    pip install torch==2.13.0 numpy
    git clone https://github.com/QinpengCui/ER-SDE-Solver /tmp/er-sde-solver
    python tests/golden/make_er_sde_golden.py --er-sde /tmp/er-sde-solver --jax-python python

Grid (from the JAX Python): ``sv.set_timesteps(sv.create_state(), N, spacing="logsnr")`` (the linear VP
schedule), the times sv's ``er_sde`` steps through and the schedule's alpha, sigma there (float64); the authors'
sampler gets them as its ``alphas``, ``sigmas`` (float64 NumPy arrays, as the authors' guided-diffusion example
passes them) and the indices ``0..N-1`` as ``times``;
it ends at the last grid point (sv's ``final_sigmas_type="last"``). Its model is the data prediction
(``x_start``) of the 2-D Gaussian mixture :data:`MIXTURE`, in closed form at ``x/alpha`` and
``rho = sigma/alpha`` (:math:`r_j \propto w_j N(\bar x; \mu_j, (s_j^2 + \rho^2) I)`,
:math:`\hat x_0 = \sum_j r_j(\mu_j + s_j^2(\bar x - \mu_j)/(s_j^2 + \rho^2))`), the model sv's
``mixtures.make_mixture_eps_fn`` is for the same mixture.

Noise: step ``k`` of the authors' samplers draws once, ``torch.randn_like(x)``; while a case runs, the module's
``torch`` name is a proxy whose ``randn_like`` returns slot ``1 + k`` of ``per_sample_normal(
make_sample_keys(key(SEED), B, 0), slot, (2,), float64)`` (what ``sv.sample_ode`` draws; every other
attribute is torch's). The start ``x_init`` (``default_rng(7)``, standard normal, ``(B, 2)``) is x at the first
grid time for both.

``er_sde_solver.py``'s ``numerical_clip`` calls ``torch.abs``, which refuses a NumPy value; it is replaced by the
one of the authors' guided-diffusion example (``er_sde_diffusion_classifier.py``: ``0.0`` where ``np.abs(x) <
eps``, else ``x``), which also records the steps it clips.

The authors' code integrates 1/phi with a 100-point left Riemann sum and drops a noise variance below 1e-6: sv's
``quadrature="riemann"``, ``variance_floor=1e-6``. Per case ``<order>/<noise_scale>/<N>``: ``final`` and
``clipped`` (the steps whose variance the authors' ``numerical_clip`` set to 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PATH = os.path.join(HERE, "er_sde.npz")
SEED, B, D = 4, 8, 2
MIXTURE = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.0, 0.0]], scales=[0.4, 0.6])
#: noise scale name (sv's) -> the authors' customized_func func_type
FUNC_TYPES = {"ode": 1, "sde": 2, "sde_1": 3, "sde_2": 4, "sde_3": 5, "sde_4": 6, "sde_5": 7}
#: (order, noise scale, N grid points): each order with the default function, order 3 with every function
CASES = [(1, "sde_5", 10), (2, "sde_5", 10)] + [(3, name, 10) for name in FUNC_TYPES] + [(3, "sde_5", 20)]


def jax_inputs(path: str) -> None:
    """(Under the JAX Python.) Each N's grid (times, alpha, sigma) and the noise, as sv.sample_ode has them."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import sdevp_jax as sv
    from sdevp_jax.loops import make_sample_keys, per_sample_normal

    out = {}
    for n in sorted({case[-1] for case in CASES}):
        state = sv.set_timesteps(sv.create_state(), n, spacing="logsnr")
        t = sv.solvers.make("er_sde").times(state, jnp.float64)
        grid = sv.solvers.Grid.build(state.schedule.cast(jnp.float64), t)
        out.update({f"grid/{n}/t": np.asarray(t), f"grid/{n}/alpha": np.asarray(grid.alpha),
                    f"grid/{n}/sigma": np.asarray(grid.sigma)})
    keys = make_sample_keys(jax.random.key(SEED), B, 0)
    steps = max(case[-1] for case in CASES)
    out["noise"] = np.stack([np.asarray(per_sample_normal(keys, 1 + k, (D,), jnp.float64)) for k in range(steps)])
    np.savez(path, **out)


def load_module(checkout: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("er_sde_solver", os.path.join(checkout, "er_sde_solver.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TorchWithNoise:
    """Stands in for ``torch`` in the authors' module: ``randn_like`` returns the next of ``draws``."""

    def __init__(self, torch, draws):
        self._torch, self._draws = torch, iter(draws)

    def randn_like(self, x):
        return self._torch.tensor(next(self._draws), dtype=x.dtype)

    def __getattr__(self, name):
        return getattr(self._torch, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--er-sde", help="a checkout of QinpengCui/ER-SDE-Solver")
    parser.add_argument("--jax-python", default=sys.executable, help="a Python with JAX and this sdevp_jax")
    parser.add_argument("--inputs", help=argparse.SUPPRESS)  # (internal) write the JAX grid and noise, and stop
    args = parser.parse_args()
    if args.inputs:
        jax_inputs(args.inputs)
        return
    import torch

    torch.set_default_dtype(torch.float64)
    module = load_module(args.er_sde)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.npz")
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run([args.jax_python, os.path.abspath(__file__), "--inputs", path], check=True, env=env)
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    x_init = np.random.default_rng(7).standard_normal((B, D))
    arrays.update(x_init=x_init, seed=np.array(SEED), mixture=np.array(json.dumps(MIXTURE)))
    w = torch.tensor(MIXTURE["weights"])
    mu = torch.tensor(MIXTURE["means"])
    s2 = torch.tensor(MIXTURE["scales"]) ** 2
    for order, name, n in CASES:
        alphas, sigmas = arrays[f"grid/{n}/alpha"], arrays[f"grid/{n}/sigma"]

        def model(x, i):  # the mixture's data prediction at grid point i
            xbar, rho2 = x / float(alphas[i]), float(sigmas[i] / alphas[i]) ** 2
            var = s2 + rho2  # (J,)
            diff = xbar[:, None, :] - mu[None]
            logp = torch.log(w) - 0.5 * (diff**2).sum(-1) / var - 0.5 * D * torch.log(var)
            r = torch.softmax(logp, dim=1)
            return (r[:, :, None] * (mu[None] + (s2 / var)[None, :, None] * diff)).sum(1)

        def fn(x, func_type=FUNC_TYPES[name]):
            return module.customized_func(x, func_type=func_type)

        sampler = module.ER_SDE_Solver(sde_type="vp", model_prediction_type="x_start")
        clipped = []

        def clip(value, eps=1e-6):  # the authors' numerical_clip for NumPy values (see the docstring)
            clipped.append(bool(np.abs(value) < eps))
            return 0.0 if clipped[-1] else value

        sampler.numerical_clip = clip
        run = {1: sampler.vp_1_order, 2: sampler.vp_2_order_taylor, 3: sampler.vp_3_order_taylor}[order]
        real_torch = module.torch
        module.torch = TorchWithNoise(torch, arrays["noise"][: n - 1])
        try:
            final = run(model, torch.tensor(x_init), alphas, sigmas, list(range(n)), fn_lambda=fn)
        finally:
            module.torch = real_torch
        assert final.dtype == torch.float64 and torch.all(torch.isfinite(final)), (order, name)
        key = f"{order}/{name}/{n}"
        arrays[f"{key}/final"] = final.numpy()
        arrays[f"{key}/clipped"] = np.array(clipped)
        print(key, "clipped steps:", int(np.sum(clipped)))
    commit = subprocess.run(["git", "-C", args.er_sde, "rev-parse", "HEAD"], capture_output=True, text=True)
    arrays["versions"] = np.array([f"torch {torch.__version__}",
                                   f"ER-SDE-Solver {commit.stdout.strip() or 'checkout (no git)'}"])
    tmp = PATH + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, PATH)
    print(f"wrote {len(arrays)} arrays to {PATH}: {arrays['versions']}")


if __name__ == "__main__":
    main()
