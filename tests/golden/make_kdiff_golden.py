r"""Regenerate ``tests/golden/kdiff.npz``: k-diffusion's ``sample_dpmpp_2m_sde`` and ``sample_dpmpp_3m_sde``
(crowsonkb/k-diffusion, ``k_diffusion/sampling.py``), run from a checkout, in float64, on an exact model.

Run from the repository root, in an environment with torch, torchsde and torchdiffeq (sampling.py's imports),
giving a checkout of k-diffusion (its ``sampling.py`` is run, not copied) and a Python that imports this
checkout's ``sdevp_jax`` (with JAX) for the grid and the noise::

    pip install torch==2.13.0 torchsde torchdiffeq numpy
    git clone https://github.com/crowsonkb/k-diffusion /tmp/k-diffusion
    python tests/golden/make_kdiff_golden.py --kdiff /tmp/k-diffusion --jax-python python

Only ``k_diffusion/sampling.py`` is loaded (the package's ``__init__`` imports its training code, with
torchvision, kornia, ...): it is executed as the module ``k_diffusion.sampling`` of an empty package whose
``utils`` submodule is k-diffusion's ``append_dims`` alone, the one helper of it sampling.py's ODE samplers use
(the two SDE samplers here use none).

Variables. k-diffusion works with :math:`\bar x = x/\alpha` and :math:`\bar\sigma = \sigma/\alpha`; its model
is the denoiser :math:`D(\bar x, \bar\sigma) = E[x_0 \mid x_0 + \bar\sigma n = \bar x]`. The model here is that
of the 2-D Gaussian mixture :data:`MIXTURE` (weights, means, isotropic scales), in closed form:
:math:`r_j \propto w_j N(\bar x; \mu_j, (s_j^2 + \bar\sigma^2) I)`,
:math:`D = \sum_j r_j(\mu_j + s_j^2(\bar x - \mu_j)/(s_j^2 + \bar\sigma^2))`, the model sv's
``mixtures.make_mixture_eps_fn`` is for the same mixture (its :math:`\hat x_0` at :math:`x = \alpha\bar x`).

Grid and noise (from the JAX Python): the state ``sv.set_timesteps(sv.create_state(), N, spacing="logsnr")``
(the linear VP schedule), the grid times sv's ``sde_dpm_solver_pp`` steps through and the schedule's
:math:`\alpha, \sigma` there, in float64; k-diffusion's ``sigmas`` are :math:`\sigma/\alpha` at those times and
a final 0 (its last step returns the denoiser's output, as sv's ``final_sigmas_type="zero"``). The noise of
step ``k`` is slot ``1 + k`` of ``per_sample_normal(make_sample_keys(key(SEED), B, 0), slot, (2,), float64)``,
what ``sv.sample_ode`` draws; k-diffusion gets it through its ``noise_sampler(sigma, sigma_next)`` argument,
looked up by the step's ``sigma``. The start ``x_init`` (``default_rng(5)``, standard normal, ``(B, 2)``) is
sv's :math:`x` at the first grid time; k-diffusion starts at ``x_init / alpha[0]``. The final samples compare
directly (both are the data prediction at the last grid time).

Per case ``<sampler>/<solver_type>/<eta>/<s_noise>/<N>``: ``final``. Also ``x_init``, ``noise``, and per ``N``
``grid/<N>/t``, ``grid/<N>/alpha``, ``grid/<N>/sigma`` (the test checks sv's grid against them).
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
PATH = os.path.join(HERE, "kdiff.npz")
SEED, B, D = 3, 8, 2
MIXTURE = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.0, 0.0]], scales=[0.4, 0.6])
#: (sampler, solver_type, eta, s_noise, N grid points): the samplers' defaults, both solver types, the
#: deterministic limit, and eta / s_noise away from 1.
CASES = [
    ("2m_sde", "midpoint", 1.0, 1.0, 9),
    ("2m_sde", "heun", 1.0, 1.0, 9),
    ("2m_sde", "midpoint", 0.5, 0.7, 9),
    ("2m_sde", "heun", 0.0, 1.0, 9),
    ("3m_sde", "heun", 1.0, 1.0, 9),
    ("3m_sde", "heun", 0.5, 1.3, 9),
    ("3m_sde", "heun", 0.0, 1.0, 12),
]


def case_key(sampler, solver_type, eta, s_noise, n) -> str:
    return f"{sampler}/{solver_type}/{eta}/{s_noise}/{n}"


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
        solver = sv.solvers.make("sde_dpm_solver_pp")
        t = solver.times(state, jnp.float64)
        grid = sv.solvers.Grid.build(state.schedule.cast(jnp.float64), t)
        out.update({f"grid/{n}/t": np.asarray(t), f"grid/{n}/alpha": np.asarray(grid.alpha),
                    f"grid/{n}/sigma": np.asarray(grid.sigma)})
    keys = make_sample_keys(jax.random.key(SEED), B, 0)
    steps = max(case[-1] for case in CASES)
    out["noise"] = np.stack([np.asarray(per_sample_normal(keys, 1 + k, (D,), jnp.float64)) for k in range(steps)])
    np.savez(path, **out)


def load_sampling(kdiff: str):
    """k-diffusion's ``k_diffusion/sampling.py`` from the checkout ``kdiff``, as described in the docstring."""
    import importlib.util

    import torch

    package = types.ModuleType("k_diffusion")
    package.__path__ = [os.path.join(kdiff, "k_diffusion")]
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):  # k-diffusion's utils.append_dims
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    package.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", os.path.join(kdiff, "k_diffusion",
                                                                                     "sampling.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["k_diffusion.sampling"] = module
    spec.loader.exec_module(module)
    assert torch.get_default_dtype() == torch.float64
    return module


def denoiser(torch):
    """The mixture's exact denoiser in k-diffusion's variables (see the docstring): ``model(x_bar, sigma_bar)``."""
    w = torch.tensor(MIXTURE["weights"])
    mu = torch.tensor(MIXTURE["means"])  # (J, D)
    s2 = torch.tensor(MIXTURE["scales"]) ** 2  # (J,)

    def model(x, sigma):
        var = s2 + sigma[:, None] ** 2  # (B, J)
        diff = x[:, None, :] - mu[None]  # (B, J, D)
        logp = torch.log(w) - 0.5 * (diff**2).sum(-1) / var - 0.5 * D * torch.log(var)
        r = torch.softmax(logp, dim=1)
        means = mu[None] + (s2[None, :, None] / var[:, :, None]) * diff
        return (r[:, :, None] * means).sum(1)

    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kdiff", help="a checkout of crowsonkb/k-diffusion")
    parser.add_argument("--jax-python", default=sys.executable, help="a Python with JAX and this sdevp_jax")
    parser.add_argument("--inputs", help=argparse.SUPPRESS)  # (internal) write the JAX grid and noise, and stop
    args = parser.parse_args()
    if args.inputs:
        jax_inputs(args.inputs)
        return
    import torch

    torch.set_default_dtype(torch.float64)
    sampling = load_sampling(args.kdiff)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.npz")
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run([args.jax_python, os.path.abspath(__file__), "--inputs", path], check=True, env=env)
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    x_init = np.random.default_rng(5).standard_normal((B, D))
    arrays.update(x_init=x_init, seed=np.array(SEED), mixture=np.array(json.dumps(MIXTURE)))
    model = denoiser(torch)
    for sampler, solver_type, eta, s_noise, n in CASES:
        alpha, sigma = arrays[f"grid/{n}/alpha"], arrays[f"grid/{n}/sigma"]
        sigmas = torch.tensor(np.concatenate([sigma / alpha, [0.0]]))
        step_of = {float(s): k for k, s in enumerate(sigmas[:-1])}

        def noise_sampler(s, s_next):
            return torch.tensor(arrays["noise"][step_of[float(s)]])

        x = torch.tensor(x_init / alpha[0])
        kwargs = dict(eta=eta, s_noise=s_noise, noise_sampler=noise_sampler, disable=True)
        if sampler == "2m_sde":
            final = sampling.sample_dpmpp_2m_sde(model, x, sigmas, solver_type=solver_type, **kwargs)
        else:
            final = sampling.sample_dpmpp_3m_sde(model, x, sigmas, **kwargs)
        assert final.dtype == torch.float64 and torch.all(torch.isfinite(final))
        arrays[f"{case_key(sampler, solver_type, eta, s_noise, n)}/final"] = final.numpy()
    commit = subprocess.run(["git", "-C", args.kdiff, "rev-parse", "HEAD"], capture_output=True, text=True)
    arrays["versions"] = np.array([f"torch {torch.__version__}",
                                   f"k-diffusion {commit.stdout.strip() or 'checkout (no git)'}"])
    tmp = PATH + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, PATH)
    print(f"wrote {len(arrays)} arrays to {PATH}: {arrays['versions']}")


if __name__ == "__main__":
    main()
