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
``randn_tensor``); nothing is monkeypatched for the noise. The same subprocess reports the
library's solver tables (``GRID_SOLVERS``, ``SOLVER_TYPES``, ``FINAL_SIGMAS_TYPES``, read from
the registered solvers with a ``diffusers_scheduler``), from which the option cases below are generated.

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

Option cases. Besides the grid of named solvers above (``SOLVERS`` x ``SCHEDULES`` x
``PREDICTION_TYPES`` x ``STEPS``), every combination of sample_ode options that changes a grid
solver's arithmetic gets a case (:func:`solver_variants`, generated from the library's tables, so
a new method, order, solver_type or final_sigmas_type gets its case by construction; a method with
no diffusers counterpart in :func:`diffusers_scheduler` stops this script), on
``OPTION_HEAD`` at ``VARIANT_STEPS``; and the variants of each multistep solver that its
step-count thresholds act on (:func:`threshold_variants`) at ``THRESHOLD_STEPS``, both sides of
DPMSolverMultistepScheduler's ``lower_order_final`` threshold (it lowers the order of the last two
steps only when there are fewer than 15; UniPC lowers it at every length). sv's
``final_sigmas_type="last"`` (end at the last grid time) is diffusers' ``final_sigmas_type="sigma_min"``
for the multistep schedulers (their last step goes to the sigma of label 0: sv's grid gets label
0 appended, ``/grid_labels``) and DDIM's ``set_alpha_to_one=False`` (its last step goes from label 0
to ``alphas_cumprod[0]``, the point it starts from; sv's grid is the labels). Such a case's key is
``<schedule>/<prediction_type>/<variant>/<steps>`` with ``<variant>`` the options written out
(:func:`variant_name`); it also holds ``/options`` (the sample_ode keyword arguments, JSON) and
``/grid_labels``. diffusers' UniPC also ends in NaN (or, at order 3, a singular order system) on
the step to sigma = 0 without ``lower_order_final``: that step is then of order 2 or 3, its
differences divided by ``r_k = (lambda_k - lambda_s)/h = 0``; sv's step to sigma = 0 is the data
prediction whatever the order, and the golden holds that, as for bh1.

Reproducibility: on one machine the script is deterministic, and adding cases leaves the other
arrays bit for bit. Across machines it is not: torch's CPU kernels round differently with the
instruction set (``torch.linspace`` of the float64 betas already differs between its default and
its AVX2/AVX-512 builds), which moved the arrays by up to 2.4e-14 relative between two machines
(the parity bar is 1e-10). Regenerate the whole file on one machine.

The file holds, per case ``<schedule>/<prediction_type>/<solver>/<steps>``:
``/labels`` (int64, the scheduler's timesteps), ``/final`` (B, 3), ``/steps``
(steps, B, 3, the sample after each ``step``) and, for those UniPC cases, ``/nan_final``; and ``x_T`` (B, 3), ``noise``
(MAX_STEPS, B, 3), ``seed``, ``mu``, ``s``, the mixture's ``mix_mu``, ``mix_s``,
``mix_w``, and ``versions``.
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


#: Where the option cases run: one schedule and model of the grid above (Stable Diffusion's, a v-model).
OPTION_HEAD = ("scaled_linear", "v_prediction")
#: Every variant at 6 steps: each solver reaches its highest order (UniPC's order 3 needs 5 steps, its
#: warm-up being min(order, k + 1) and its lowering min(order, N - k)), below DPM-Solver++'s threshold.
VARIANT_STEPS = (6,)
#: DPMSolverMultistepScheduler lowers the order of its last two steps when ``len(timesteps) < 15``.
THRESHOLD_STEPS = (14, 15, 16)


def cases():
    """Every case key of the named-solver grid."""
    for schedule in SCHEDULES:
        for prediction_type in PREDICTION_TYPES:
            for solver in SOLVERS:
                for steps in STEPS:
                    yield f"{schedule}/{prediction_type}/{solver}/{steps}"


def _extras(method: str, order: int) -> list[dict]:
    """The options besides order, solver_type, final_sigmas_type and lower_order_final that change
    ``method``'s arithmetic, each value diffusers has (DPM-Solver++ 3M and SDE-DPM-Solver++ 3M: only ``third_order="diffusers"``;
    sv's default exact Taylor term has no diffusers counterpart, see test_dpmpp_3m_taylor_differs_from_diffusers)."""
    if method == "ddim":
        return [{"eta": 0.0}, {"eta": 1.0}]
    if method == "unipc":
        return [{"predict_x0": True}, {"predict_x0": False}]
    if method in ("dpm_solver_pp", "sde_dpm_solver_pp") and order == 3:
        return [{"third_order": "diffusers"}]
    return [{}]


def solver_variants(tables: dict) -> list[dict]:
    """Every combination of a grid solver's arithmetic-changing options, as sample_ode keyword arguments.

    From the library's tables: each method of ``GRID_SOLVERS``, each order up to its largest, each of
    its ``SOLVER_TYPES``, each of ``FINAL_SIGMAS_TYPES``, ``lower_order_final`` both ways where the
    order can be lowered (order >= 2), and :func:`_extras`.
    """
    out = []
    for method, (_, max_order, _) in tables["GRID_SOLVERS"].items():
        for order in range(1, max_order + 1):
            for solver_type in tables["SOLVER_TYPES"].get(method, [None]):
                for final in tables["FINAL_SIGMAS_TYPES"]:
                    for lower in (True, False) if order >= 2 else (True,):
                        for extra in _extras(method, order):
                            options = {"method": method, "order": order}
                            if solver_type is not None:
                                options["solver_type"] = solver_type
                            options.update(final_sigmas_type=final, lower_order_final=lower, **extra)
                            out.append(options)
    return out


def threshold_variants(tables: dict) -> list[dict]:
    """The variants the step-count thresholds act on: order >= 2 with ``lower_order_final``, each final
    type, the default solver_type and extras (the thresholds set the orders, whatever their formulas)."""
    out = []
    for options in solver_variants(tables):
        method, order = options["method"], options["order"]
        defaults = dict(_extras(method, order)[0], lower_order_final=True)
        default_type = tables["SOLVER_TYPES"].get(method, [None])[0]
        if order >= 2 and options.get("solver_type") == default_type and all(
                options[k] == v for k, v in defaults.items()):
            out.append(options)
    return out


def variant_name(options: dict) -> str:
    """A case's solver name from its options: ``method=unipc,order=3,solver_type=bh1,...`` (keys in order)."""
    return ",".join(f"{k}={v}" for k, v in options.items())


def option_cases(tables: dict) -> list[tuple[str, dict]]:
    """``(key, options)`` of every option case: all variants at VARIANT_STEPS, then the threshold variants
    at THRESHOLD_STEPS, on OPTION_HEAD."""
    head = "/".join(OPTION_HEAD)
    out = [(f"{head}/{variant_name(o)}/{n}", o) for n in VARIANT_STEPS for o in solver_variants(tables)]
    out += [(f"{head}/{variant_name(o)}/{n}", o) for n in THRESHOLD_STEPS for o in threshold_variants(tables)]
    return out


#: The grid solvers this golden's common grid of cases covers (the solvers added since, each reproducing a diffusers
#: scheduler, have goldens of their own: deis.npz, singlestep.npz, sasolver.npz, classical.npz, ...).
COMMON_GRID = ("ddim", "dpm_solver_pp", "sde_dpm_solver_pp", "unipc")


def library_tables() -> dict:
    """(Under the JAX Python.) The registered grid solvers that reproduce a diffusers scheduler, as JSON-able
    tables: ``GRID_SOLVERS`` (name -> default order, largest order, order rule), ``SOLVER_TYPES`` (name ->
    its ``solver_type`` choices) and ``FINAL_SIGMAS_TYPES``."""
    from sdevp_jax import solvers

    grid = {name: cls for name, cls in solvers.REGISTRY.items() if name in COMMON_GRID}
    return {"GRID_SOLVERS": {name: [cls.order if "order" not in solvers.option_fields(cls)
                                    else solvers.option_fields(cls)["order"].default, cls.max_order, cls.order_rule]
                             for name, cls in grid.items()},
            "SOLVER_TYPES": {name: list(solvers.option_fields(cls)["solver_type"].metadata["choices"])
                             for name, cls in grid.items() if "solver_type" in solvers.option_fields(cls)},
            # "repeat" is diffusers' sigma_min on its sigma grids only: tests/golden/make_sigmas_golden.py covers it
            "FINAL_SIGMAS_TYPES": [t for t in solvers.FINAL_SIGMAS_TYPES if t != "repeat"]}


def jax_inputs(path: str) -> None:
    """(Under the JAX Python.) x_T and the noise, as sv.sample_ode draws them from ``key(SEED)``, and the tables."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from sdevp_jax.loops import make_sample_keys, per_sample_normal

    keys = make_sample_keys(jax.random.key(SEED), BATCH, 0)
    x_t = per_sample_normal(keys, 0, (DIM,), jnp.float64)
    noise = jnp.stack([per_sample_normal(keys, 1 + k, (DIM,), jnp.float64) for k in range(MAX_STEPS)])
    np.savez(path, x_T=np.asarray(x_t), noise=np.asarray(noise), tables=np.array(json.dumps(library_tables())))


def diffusers_scheduler(options: dict) -> tuple[str, dict, bool]:
    """``(class name, config, stochastic)`` of the diffusers scheduler sample_ode's ``options`` reproduce.

    The config has the solver's own fields; :func:`run_scheduler` adds the schedule, the prediction
    type and the final step. ``stochastic``: the step takes ``variance_noise``.
    """
    method, order = options["method"], options["order"]
    if method == "ddim":
        return "DDIMScheduler", {}, options["eta"] != 0.0
    if method in ("dpm_solver_pp", "sde_dpm_solver_pp"):
        if order == 3 and options.get("third_order") != "diffusers":
            raise ValueError(f"diffusers has only third_order='diffusers': {options}")
        algorithm = "dpmsolver++" if method == "dpm_solver_pp" else "sde-dpmsolver++"
        config = dict(algorithm_type=algorithm, solver_order=order, solver_type=options["solver_type"])
        return "DPMSolverMultistepScheduler", config, method == "sde_dpm_solver_pp"
    if method == "unipc":
        config = dict(solver_type=options["solver_type"], solver_order=order, predict_x0=options["predict_x0"])
        return "UniPCMultistepScheduler", config, False
    raise ValueError(f"no diffusers counterpart known for method={method!r}: add it to diffusers_scheduler")


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
    """A case of the named-solver grid: ``(labels, steps)``."""
    schedule, prediction_type, solver, steps = key.split("/")
    cls_name, config, stochastic = SOLVERS[solver]
    eta = (1.0 if solver == "ddim_eta1" else 0.0) if cls_name == "DDIMScheduler" else None
    return run_scheduler(torch, diffusers, schedule, prediction_type, cls_name, config, stochastic, eta,
                         final_zero=True, lower_order_final=True, steps=int(steps), x_t=x_t, noise=noise,
                         limit_final=nan_final(solver))


def run_option_case(torch, diffusers, key: str, options: dict, x_t: np.ndarray, noise: np.ndarray):
    """An option case: ``(labels, grid_labels, steps, limit_final)``, ``grid_labels`` the labels sv steps through."""
    schedule, prediction_type, _, steps = key.split("/")
    cls_name, config, stochastic = diffusers_scheduler(options)
    final_zero = options["final_sigmas_type"] == "zero"
    limit = option_nan_final(options)
    labels, out = run_scheduler(torch, diffusers, schedule, prediction_type, cls_name, config, stochastic,
                                options.get("eta"), final_zero=final_zero,
                                lower_order_final=options["lower_order_final"], steps=int(steps), x_t=x_t,
                                noise=noise, limit_final=limit)
    # the multistep schedulers' sigma_min is the sigma of label 0, the point sv's grid must end at
    grid = labels if final_zero or cls_name == "DDIMScheduler" else np.concatenate([labels, [0]])
    return labels, grid.astype(np.int64), out, limit


def run_scheduler(torch, diffusers, schedule, prediction_type, cls_name, config, stochastic, eta, *, final_zero,
                  lower_order_final, steps, x_t, noise, limit_final):
    """diffusers' scheduler ``cls_name`` through ``steps`` steps in float64: ``(labels, samples after each step)``.

    ``final_zero``: the last step goes to sigma = 0 (DDIM: to alpha = 1); otherwise to the sigma of
    label 0 (multistep: ``final_sigmas_type="sigma_min"``; DDIM: ``set_alpha_to_one=False``).
    ``limit_final``: diffusers' UniPC step to sigma = 0 is not finite there; the data prediction stands in.
    """
    from make_schedule_golden import betas_float64

    beta_schedule, start, end = SCHEDULES[schedule]
    cls = getattr(diffusers, cls_name)
    if cls_name == "DDIMScheduler":
        extra = dict(clip_sample=False, set_alpha_to_one=final_zero)
    else:
        extra = dict(final_sigmas_type="zero" if final_zero else "sigma_min", lower_order_final=lower_order_final)
    sched = cls(num_train_timesteps=1000, beta_schedule=beta_schedule, beta_start=start, beta_end=end,
                prediction_type=prediction_type, **config, **extra)
    betas = betas_float64(beta_schedule, start, end, 1000)
    assert np.allclose(betas.numpy().astype(np.float32), sched.betas.numpy(), rtol=1e-6, atol=0), "betas changed"
    sched.betas = betas
    sched.alphas = 1.0 - betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    acp = sched.alphas_cumprod
    if cls_name == "DDIMScheduler":
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if final_zero else acp[0]
    sched.set_timesteps(steps)
    labels = sched.timesteps.numpy().astype(np.int64)
    assert labels.shape == (steps,)
    if cls_name != "DDIMScheduler":
        a = acp[torch.as_tensor(labels)]
        last = torch.zeros(1, dtype=torch.float64) if final_zero else ((1.0 - acp[:1]) / acp[:1]).sqrt()
        sigmas = torch.cat([((1.0 - a) / a).sqrt(), last])
        assert sched.sigmas.dtype == torch.float32
        assert np.allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-5, atol=0), "sigmas changed"
        sched.sigmas = sigmas
    fn = make_model(torch, acp, prediction_type)
    x = torch.as_tensor(x_t)
    out = []
    for k, n in enumerate(labels):
        kwargs = {"variance_noise": torch.as_tensor(noise[k])} if stochastic else {}
        if cls_name == "DDIMScheduler":
            kwargs["eta"] = eta
        output = fn(x, int(n))
        last_unipc = cls_name == "UniPCMultistepScheduler" and k == steps - 1 and final_zero
        if last_unipc:  # its order-1 step to sigma = 0 is the data prediction here (see nan_final)
            if config.get("predict_x0", True):
                limit = sched.convert_model_output(output, sample=x)
            else:  # the noise form's step to sigma = 0 is (x - sigma eps)/alpha in the limit h -> inf
                eps = sched.convert_model_output(output, sample=x)
                index = sched.step_index if sched.step_index is not None else k
                alpha_s, sigma_s = sched._sigma_to_alpha_sigma_t(sched.sigmas[index])
                limit = (x - sigma_s * eps) / alpha_s
        try:
            x = sched.step(output, int(n), x, **kwargs).prev_sample
        except torch.linalg.LinAlgError:  # UniPC's order-3 system to sigma = 0 is singular (r_k = 0)
            assert last_unipc and limit_final, (cls_name, config, k)
            x = torch.full_like(x, float("nan"))
        assert x.dtype == torch.float64
        if last_unipc and limit_final:
            assert not torch.any(torch.isfinite(x)), f"diffusers' UniPC {config} now ends finite: drop nan_final"
            x = limit
        elif last_unipc:
            assert torch.equal(x, limit)
        out.append(x.numpy().copy())
    return labels, np.stack(out)


def nan_final(solver: str) -> bool:
    """diffusers' UniPC ends in NaN with bh1 (B(h) = -h = -inf times 0) and in its noise form
    (sigma_t (e^h - 1) = 0 * inf on the step to sigma = 0)."""
    return solver.startswith("unipc_bh1") or solver.endswith("_noise")


def option_nan_final(options: dict) -> bool:
    """An option case ending where diffusers' UniPC step to sigma = 0 is not finite: bh1, the noise form,
    or without lower_order_final an order-2 or -3 last step, whose differences divide by r_k = 0."""
    return options["method"] == "unipc" and options["final_sigmas_type"] == "zero" and (
        options["solver_type"] == "bh1" or not options["predict_x0"]
        or (not options["lower_order_final"] and options["order"] >= 2))


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

    from _golden import Float32As64, write_npz

    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run([args.jax_python, os.path.abspath(__file__), "--inputs", inputs], check=True, env=env)
        with np.load(inputs) as data:
            x_t, noise, tables = data["x_T"], data["noise"], json.loads(str(data["tables"]))
    assert x_t.dtype == noise.dtype == np.float64 and noise.shape == (MAX_STEPS, BATCH, DIM)

    torch.set_default_dtype(torch.float64)
    dpm_module.torch = Float32As64(torch)
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
        for key, options in option_cases(tables):
            labels, grid, steps, limit = run_option_case(torch, diffusers, key, options, x_t, noise)
            assert np.all(np.isfinite(steps)), key
            if limit:
                out[f"{key}/nan_final"] = np.array(True)
            out[f"{key}/labels"] = labels
            out[f"{key}/grid_labels"] = grid
            out[f"{key}/options"] = np.array(json.dumps(options))
            out[f"{key}/steps"] = steps
            out[f"{key}/final"] = steps[-1]
    finally:
        dpm_module.torch = torch
    out.update(x_T=x_t, noise=noise, seed=np.array(SEED), mu=MU, s=np.array(S), mix_mu=MIX_MU, mix_s=MIX_S,
               mix_w=MIX_W)
    write_npz(PATH, out)


if __name__ == "__main__":
    main()
