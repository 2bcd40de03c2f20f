"""Regenerate ``tests/golden/solvers.npz``: diffusers' DDIM, DPM-Solver++ and UniPC schedulers on exact models.

Run from the repository root, in an environment with torch and diffusers, naming a
Python that imports this checkout's ``sdevp_jax`` (with JAX) for the noise::

    pip install diffusers torch==2.13.0
    python tests/golden/make_solver_golden.py --jax-python .venv/bin/python

Inputs. ``x_T`` and the noise of the stochastic solvers are drawn by sdevp_jax itself
(the script re-runs itself under ``--jax-python`` with ``--inputs``): ``x_T`` is slot 0
and step ``k``'s noise slot ``1 + k`` of ``per_sample_normal(make_sample_keys(key, B, 0),
slot, (3,), float64)`` (B = 8 samples) with ``key = jax.random.key(SEED)``, exactly what ``sv.sample_ode``
draws with that key. diffusers receives that noise through its own arguments: DDIM's
``step(..., variance_noise=noise[k])`` and DPMSolverMultistep's
``step(..., variance_noise=noise[k])`` (the ``sde-dpmsolver++`` path uses it instead of
``randn_tensor``); nothing is monkeypatched for the noise.

Model (written here in torch, in sdevp_jax in tests/test_solver_parity.py), row-wise: on
the first half of the batch the exact noise prediction of data ``N(MU, S^2 I)`` in 3-D,
``eps = sigma_n (x - a_n MU)/(a_n^2 S^2 + sigma_n^2)`` with ``a_n^2 = alphas_cumprod[n]``,
``sigma_n^2 = 1 - a_n^2`` at label ``n`` (linear in x), on the second half that of a
two-mode mixture ``sum_j W_j N(MU_j, S_j^2 I)`` (nonlinear in x:
``eps = sigma_n sum_j r_j(x) (x - a_n MU_j)/(a_n^2 S_j^2 + sigma_n^2)``, ``r`` the
posterior mode weights); ``v = a_n eps - sigma_n x0_hat``, ``x0_hat = (x - sigma_n eps)/a_n``.
Every solver here acts on each sample alone, so the halves are two independent runs
sharing one call (which halves the suite's op-by-op runs).

float64. diffusers builds its schedules in float32; here every case runs in float64:

* ``alphas_cumprod`` (and ``betas``, ``alphas``) are replaced after construction by the
  float64 formulas of make_schedule_golden.betas_float64 (``torch.cumprod`` in float64);
  DDIM's ``final_alpha_cumprod`` by ``1.0`` in float64 (``set_alpha_to_one=True``);
* DPMSolverMultistep and UniPC cast their ``sigmas`` to float32 in ``set_timesteps``: they
  are recomputed after it from the float64 ``alphas_cumprod`` at the same labels (the
  labels are integers, so diffusers' ``np.interp`` is a lookup), plus the final 0
  (``final_sigmas_type="zero"``), and checked to round to diffusers' own float32 sigmas;
* DPMSolverMultistepScheduler.step casts the sample and the noise to ``torch.float32``;
  the module's ``torch`` name is pointed, while this script runs, at a proxy whose
  ``float32`` is ``torch.float64`` (every other attribute is torch's), so that step runs
  its own code in float64;
* ``torch.set_default_dtype(torch.float64)`` (UniPC builds ``torch.ones(())`` for its
  order system).

Settings. Each scheduler's default ``timestep_spacing`` (DDIM ``leading``, the two
multistep schedulers ``linspace``), ``final_sigmas_type="zero"`` (DDIM:
``set_alpha_to_one=True``), ``lower_order_final=True``, DDIM with ``clip_sample=False``
(its default clips x0_hat to [-1, 1], which the solvers here do not do).

diffusers' UniPC with ``solver_type="bh1"`` returns NaN at its last step to sigma = 0
(0.42.1, float32 and float64 alike): there ``h = inf``, ``B(h) = -h = -inf``, and its order-1
predictor computes ``alpha_t * B_h * pred_res`` with ``pred_res = 0``, i.e. ``inf * 0``. The
step is otherwise ``sigma_t/sigma_s * x - alpha_t * expm1(-h) * m0 = m0``, the data
prediction, which is what bh2 returns (checked bitwise below). For bh1 the golden's last
sample is that value, diffusers' own ``convert_model_output`` at the last step, and the case
carries ``/nan_final``. So does UniPC's noise-prediction form (``predict_x0=False``), whose last
step computes ``sigma_t * expm1(h) = 0 * inf``; its golden last sample is the step's limit, the
data prediction ``(x - sigma_s eps)/alpha_s``.

The file holds, per case ``<schedule>/<prediction_type>/<solver>/<steps>``:
``/labels`` (int64, the scheduler's timesteps), ``/final`` (B, 3), ``/steps``
(steps, B, 3, the sample after each ``step``) and, for those UniPC cases, ``/nan_final``; and ``x_T`` (B, 3), ``noise``
(MAX_STEPS, B, 3), ``seed``, ``mu``, ``s``, the mixture's ``mix_mu``, ``mix_s``,
``mix_w``, and ``versions``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PATH = os.path.join(HERE, "solvers.npz")

SEED = 11
BATCH = 8  # rows [:4] Gaussian data, [4:] the mixture
DIM = 3
MAX_STEPS = 25
STEPS = (5, 10, 25)
MU = np.array([0.5, -1.0, 2.0])
S = 0.5
MIX_MU = np.array([[1.5, -0.5, 0.25], [-1.0, 1.0, -0.75]])
MIX_S = np.array([0.3, 0.6])
MIX_W = np.array([0.35, 0.65])

#: name -> (beta_schedule, beta_start, beta_end): DDPM's and Stable Diffusion's.
SCHEDULES = {"linear": ("linear", 1e-4, 0.02), "scaled_linear": ("scaled_linear", 0.00085, 0.012)}
PREDICTION_TYPES = ("epsilon", "v_prediction")

#: solver name -> (scheduler class name, its config, step kwargs' noise?).
SOLVERS = {
    "ddim_eta0": ("DDIMScheduler", {}, False),
    "ddim_eta1": ("DDIMScheduler", {}, True),
    "dpmpp_2m_midpoint": ("DPMSolverMultistepScheduler",
                          dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint"), False),
    "dpmpp_2m_heun": ("DPMSolverMultistepScheduler",
                      dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="heun"), False),
    "dpmpp_3m": ("DPMSolverMultistepScheduler",
                 dict(algorithm_type="dpmsolver++", solver_order=3, solver_type="midpoint"), False),
    "sde_dpmpp_2m": ("DPMSolverMultistepScheduler",
                     dict(algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint"), True),
    "unipc_bh1_2": ("UniPCMultistepScheduler", dict(solver_type="bh1", solver_order=2), False),
    "unipc_bh1_3": ("UniPCMultistepScheduler", dict(solver_type="bh1", solver_order=3), False),
    "unipc_bh2_2": ("UniPCMultistepScheduler", dict(solver_type="bh2", solver_order=2), False),
    "unipc_bh2_3": ("UniPCMultistepScheduler", dict(solver_type="bh2", solver_order=3), False),
    "unipc_bh2_2_noise": ("UniPCMultistepScheduler", dict(solver_type="bh2", solver_order=2, predict_x0=False),
                          False),
}


def cases():
    """Every case key."""
    for schedule in SCHEDULES:
        for prediction_type in PREDICTION_TYPES:
            for solver in SOLVERS:
                for steps in STEPS:
                    yield f"{schedule}/{prediction_type}/{solver}/{steps}"


def jax_inputs(path: str) -> None:
    """(Under the JAX Python.) x_T and the noise, as sv.sample_ode draws them from ``key(SEED)``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from sdevp_jax.loops import make_sample_keys, per_sample_normal

    keys = make_sample_keys(jax.random.key(SEED), BATCH, 0)
    x_t = per_sample_normal(keys, 0, (DIM,), jnp.float64)
    noise = jnp.stack([per_sample_normal(keys, 1 + k, (DIM,), jnp.float64) for k in range(MAX_STEPS)])
    np.savez(path, x_T=np.asarray(x_t), noise=np.asarray(noise))


class _Float32As64:
    """Stands in for ``torch`` in a scheduler module: ``float32`` is ``torch.float64``, all else torch's."""

    def __init__(self, torch):
        self._torch = torch
        self.float32 = torch.float64

    def __getattr__(self, name):
        return getattr(self._torch, name)


def make_model(torch, acp, prediction_type: str):
    """The exact model at a label: ``model(x, label) -> epsilon or v`` (float64 torch), Gaussian | mixture rows."""

    def gaussian(x, a2):
        a, sigma = a2.sqrt(), (1.0 - a2).sqrt()
        return sigma * (x - a * torch.as_tensor(MU)) / (a2 * S**2 + sigma**2)

    def mixture(x, a2):
        a, sigma = a2.sqrt(), (1.0 - a2).sqrt()
        mu = torch.as_tensor(MIX_MU)  # (J, D)
        var = a2 * torch.as_tensor(MIX_S) ** 2 + sigma**2  # (J,)
        diff = x[:, None, :] - a * mu[None]  # (B, J, D)
        logp = torch.log(torch.as_tensor(MIX_W)) - 0.5 * (diff**2).sum(-1) / var - 0.5 * DIM * torch.log(var)
        r = torch.softmax(logp, dim=1)  # (B, J)
        return sigma * (r[:, :, None] * diff / var[None, :, None]).sum(1)

    def fn(x, n):
        half = x.shape[0] // 2
        eps = torch.cat([gaussian(x[:half], acp[n]), mixture(x[half:], acp[n])])
        if prediction_type == "epsilon":
            return eps
        a2 = acp[n]
        a, sigma = a2.sqrt(), (1.0 - a2).sqrt()
        x0 = (x - sigma * eps) / a
        return a * eps - sigma * x0

    return fn


def run_case(torch, diffusers, key: str, x_t: np.ndarray, noise: np.ndarray):
    from make_schedule_golden import betas_float64

    schedule, prediction_type, solver, steps = key.split("/")
    steps = int(steps)
    beta_schedule, start, end = SCHEDULES[schedule]
    cls_name, config, stochastic = SOLVERS[solver]
    cls = getattr(diffusers, cls_name)
    extra = dict(clip_sample=False, set_alpha_to_one=True) if cls_name == "DDIMScheduler" else dict(
        final_sigmas_type="zero", lower_order_final=True)
    sched = cls(num_train_timesteps=1000, beta_schedule=beta_schedule, beta_start=start, beta_end=end,
                prediction_type=prediction_type, **config, **extra)
    betas = betas_float64(beta_schedule, start, end, 1000)
    assert np.allclose(betas.numpy().astype(np.float32), sched.betas.numpy(), rtol=1e-6, atol=0), "betas changed"
    sched.betas = betas
    sched.alphas = 1.0 - betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    acp = sched.alphas_cumprod
    if cls_name == "DDIMScheduler":
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sched.set_timesteps(steps)
    labels = sched.timesteps.numpy().astype(np.int64)
    assert labels.shape == (steps,)
    if cls_name != "DDIMScheduler":
        a = acp[torch.as_tensor(labels)]
        sigmas = torch.cat([((1.0 - a) / a).sqrt(), torch.zeros(1, dtype=torch.float64)])
        assert sched.sigmas.dtype == torch.float32
        assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-5, atol=0), "sigmas changed"
        sched.sigmas = sigmas
    fn = make_model(torch, acp, prediction_type)
    x = torch.as_tensor(x_t)
    out = []
    for k, n in enumerate(labels):
        kwargs = {"variance_noise": torch.as_tensor(noise[k])} if stochastic else {}
        if cls_name == "DDIMScheduler":
            kwargs["eta"] = 1.0 if solver == "ddim_eta1" else 0.0
        output = fn(x, int(n))
        last_unipc = cls_name == "UniPCMultistepScheduler" and k == steps - 1
        if last_unipc:  # its order-1 step to sigma = 0 is the data prediction here (see nan_final)
            if config.get("predict_x0", True):
                limit = sched.convert_model_output(output, sample=x)
            else:  # the noise form's step to sigma = 0 is (x - sigma eps)/alpha in the limit h -> inf
                eps = sched.convert_model_output(output, sample=x)
                index = sched.step_index if sched.step_index is not None else k
                alpha_s, sigma_s = sched._sigma_to_alpha_sigma_t(sched.sigmas[index])
                limit = (x - sigma_s * eps) / alpha_s
        x = sched.step(output, int(n), x, **kwargs).prev_sample
        assert x.dtype == torch.float64
        if last_unipc and nan_final(solver):
            assert torch.all(torch.isnan(x)), f"diffusers' {solver} now ends finite: drop nan_final"
            x = limit
        elif last_unipc:
            assert torch.equal(x, limit)
        out.append(x.numpy().copy())
    return labels, np.stack(out)


def nan_final(solver: str) -> bool:
    """diffusers' UniPC ends in NaN with bh1 (B(h) = -h = -inf times 0) and in its noise form
    (sigma_t (e^h - 1) = 0 * inf on the step to sigma = 0)."""
    return solver.startswith("unipc_bh1") or solver.endswith("_noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax-python", default=sys.executable, help="a Python with JAX and this sdevp_jax")
    parser.add_argument("--inputs", help="(internal) write x_T and the noise to this .npz and exit")
    args = parser.parse_args()
    if args.inputs:
        jax_inputs(args.inputs)
        return

    sys.path.insert(0, HERE)
    import torch
    import diffusers
    from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_module

    from _golden import write_npz

    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run([args.jax_python, os.path.abspath(__file__), "--inputs", inputs], check=True, env=env)
        with np.load(inputs) as data:
            x_t, noise = data["x_T"], data["noise"]
    assert x_t.dtype == noise.dtype == np.float64 and noise.shape == (MAX_STEPS, BATCH, DIM)

    torch.set_default_dtype(torch.float64)
    dpm_module.torch = _Float32As64(torch)
    try:
        out: dict[str, np.ndarray] = {}
        for key in cases():
            labels, steps = run_case(torch, diffusers, key, x_t, noise)
            assert np.all(np.isfinite(steps)), key
            if nan_final(key.split("/")[2]):
                out[f"{key}/nan_final"] = np.array(True)
            out[f"{key}/labels"] = labels
            out[f"{key}/steps"] = steps
            out[f"{key}/final"] = steps[-1]
    finally:
        dpm_module.torch = torch
    out.update(x_T=x_t, noise=noise, seed=np.array(SEED), mu=MU, s=np.array(S), mix_mu=MIX_MU, mix_s=MIX_S,
               mix_w=MIX_W)
    write_npz(PATH, out)


if __name__ == "__main__":
    main()
