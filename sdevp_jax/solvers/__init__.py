r"""Every sampler as a solver object over its own state, one file per family.

* :mod:`~sdevp_jax.solvers.base`: the protocol (:class:`Solver`, :class:`Grid`,
  :class:`Noise`, :class:`StepInfo`) and :func:`register`;
* :mod:`~sdevp_jax.solvers.sde`: the reverse-SDE predictors, the Langevin corrector,
  :class:`PredictorCorrector` and :class:`Projected`;
* :mod:`~sdevp_jax.solvers.ode`: Euler and Heun in time;
* :mod:`~sdevp_jax.solvers.multistep`: what the grid solvers share;
* :mod:`~sdevp_jax.solvers.dpm`: DPM-Solver, DDIM, DPM-Solver++ and SDE-DPM-Solver++;
* :mod:`~sdevp_jax.solvers.unipc`: UniPC;
* :mod:`~sdevp_jax.solvers.deis`: DEIS, multistep in log rho;
* :mod:`~sdevp_jax.solvers.ipndm`: iPNDM, Adams-Bashforth in sigma/alpha;
* :mod:`~sdevp_jax.solvers.classical`: diffusers' classical samplers (Euler ancestral, LMS, PNDM, Heun in sigma, KDPM2);
* :mod:`~sdevp_jax.solvers.er_sde`: ER-SDE-Solver, the extended reverse-time SDE with a noise scale function;
* :mod:`~sdevp_jax.solvers.restart`: Restart sampling, EDM's Heun with forward-noise restarts;
* :mod:`~sdevp_jax.solvers.dpm_singlestep`: single-step DPM-Solver(++) and SDE-DPM-Solver++ on the grid's points;
* :mod:`~sdevp_jax.solvers.sa_solver`: SA-Solver, the stochastic Adams predictor-corrector;
* :mod:`~sdevp_jax.solvers.adaptive`: diffrax's Tsit5 per sample;
* :mod:`~sdevp_jax.solvers.registry`: names, options and ``make(name, **options)``.

A solver runs through :func:`sdevp_jax.sample` (``solver=...``), or by name through
``sample``/``sample_ode``'s method arguments.
"""

from .base import REGISTRY, Grid, Noise, Solver, StepCoeffs, StepInfo, option, register
from .multistep import FINAL_SIGMAS_TYPES, GridSolver, History, dynamic_threshold, step_orders
from .sde import (STEP_RULES, Ancestral, EulerMaruyama, Langevin, PredictorCorrector, Projected, ReverseDiffusion,
                  ancestral, check_step_rule, euler_maruyama, langevin_correct, reverse_diffusion)
from .ode import Euler, Heun
from .dpm import DDIM, DPMSolver, DPMSolverPP, SDEDPMSolverPP, ddim_step, dpm_solver_step, dpmpp_step, sde_dpmpp_step
from .unipc import UniPC, unipc_correct, unipc_predict
from .adaptive import Adaptive
from .dpmpp_2s import DPMSolverPP2S
from .deis import DEIS, deis_step
from .ipndm import IPNDM, ipndm_step
from .dpm_singlestep import DPMSolverSinglestep, SDEDPMSolverSinglestep, singlestep_dpm_step, singlestep_orders
from .sa_solver import SASolver, SAState, sa_corrector_orders, sa_correct, sa_predict, sa_weights
from .classical import (KDPM2, LMS, PNDM, PNDM_WARMUPS, EulerAncestral, HeunSigma, KDPM2Ancestral,
                        euler_ancestral_step, heun_sigma_step, kdpm2_ancestral_step, kdpm2_step, lms_coefficients,
                        lms_step, pndm_transfer)
from .er_sde import ERSDE, er_sde_step
from .restart import Restart, restart_plan
from .registry import get, make, methods_with, names, option_defaults, option_fields

__all__ = [
    "Solver", "Grid", "Noise", "StepInfo", "StepCoeffs", "REGISTRY", "register", "option",
    "EulerMaruyama", "ReverseDiffusion", "Ancestral", "Langevin", "PredictorCorrector", "Projected",
    "Euler", "Heun", "DPMSolver", "DDIM", "DPMSolverPP", "SDEDPMSolverPP", "UniPC", "Adaptive", "DPMSolverPP2S",
    "DPMSolverSinglestep", "SDEDPMSolverSinglestep", "singlestep_dpm_step", "singlestep_orders", "DEIS",
    "deis_step", "IPNDM", "ipndm_step", "SASolver", "SAState", "sa_weights", "sa_predict", "sa_correct",
    "sa_corrector_orders", "EulerAncestral", "euler_ancestral_step", "LMS", "lms_step",
    "lms_coefficients", "PNDM", "pndm_transfer", "PNDM_WARMUPS", "HeunSigma", "heun_sigma_step", "KDPM2",
    "kdpm2_step", "KDPM2Ancestral", "kdpm2_ancestral_step",
    "ERSDE", "er_sde_step", "Restart", "restart_plan",
    "GridSolver", "History", "step_orders", "dynamic_threshold", "FINAL_SIGMAS_TYPES",
    "dpm_solver_step", "ddim_step", "dpmpp_step", "sde_dpmpp_step", "unipc_predict", "unipc_correct",
    "euler_maruyama", "reverse_diffusion", "ancestral", "langevin_correct", "STEP_RULES", "check_step_rule",
    "get", "make", "names", "option_fields", "option_defaults", "methods_with",
]
