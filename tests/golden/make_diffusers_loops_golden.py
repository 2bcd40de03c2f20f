r"""Regenerate ``tests/golden/diffusers_loops.npz``: the full-loop tests of diffusers' own scheduler test files, run
with diffusers 0.42.1 itself.

Run from the repository root with torch and diffusers (no JAX needed)::

    pip install diffusers==0.42.1 torch==2.13.0 scipy
    python tests/golden/make_diffusers_loops_golden.py

Nothing of a scheduler is re-implemented here. :data:`CASES` holds, as data, every full-loop test with an expected
number in diffusers' ``tests/schedulers/test_scheduler_*.py`` (read at huggingface/diffusers commit
58eb52c0803ea9af3abec60841c2a093bdf1f951; the 0.42.1 wheel ships no tests) for the VP schedulers sdevp_jax serves:
the file, the test, the scheduler class, its config (the test class' ``get_scheduler_config`` with the test's
changes), the number of steps, how the loop starts, and the numbers and tolerances the test asserts on
``sum(|x|)`` and ``mean(|x|)``. Their loop, as the tests write it (SchedulerCommonTest's ``dummy_model``
``sample * t / (t + 1)`` on the scheduler's timestep ``t``; ``dummy_sample_deter`` and ``dummy_noise_deter``,
``arange`` ramps of shape (4, 3, 8, 8), (4, 3, 8) for UniPC's 1D test class)::

    scheduler.set_timesteps(n)                                # DDPM's 1000-step tests: its training grid
    sample = dummy_sample_deter * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps[start:]                   # "with_noise": start = t_start * order, and
    sample = scheduler.add_noise(sample, noise, timesteps[:1])  # ... this; "uneven": start = 3
    generator = torch.manual_seed(0)
    for t in timesteps:
        model_output = model(scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample

The tests' variations: DDPM's loop over ``range`` hands the model an int ``t``; SA-Solver's test hands the
generator to ``scale_model_input`` (the scheduler's draws then come from torch's global generator, which
``manual_seed`` seeded); the sigma-space ``*Discrete`` schedulers' tests rebind ``sample`` to the scaled model input
before ``step``, so that each step starts from :math:`x/\sqrt{1 + \sigma^2}`: not a sampling loop. For those the
script also runs the loop as diffusers' pipelines run it (``step`` on the unscaled sample), stored under
``<case>/pipeline/``: ``final``, ``final32``, ``sum32``, ``mean32``, ``noise``.

Each loop runs twice: in float32 as their test runs it (``sum32``/``mean32``: their number, reproduced or not,
``reproduced32``), recording each normal draw of the stochastic schedulers (``randn_tensor`` in the scheduler's
module is wrapped: the draw is the generator's, kept); then in float64 with those draws fed back in order. For the
float64 run the scheduler's module sees a ``torch`` whose ``float32`` is float64 (:class:`_golden.Float32As64`), a
``numpy`` whose ``float32`` is float64 but whose ``linspace(..., dtype=float32)`` keeps its float32 values
(:class:`_Numpy64`: the sigma-space schedulers' label grids are those float32 labels, which sdevp_jax takes as
given; their sigma grids' fractional labels, which diffusers casts to float32, stay float64 here: sdevp_jax's
``label_rounding="exact"``), and float64 as the default dtype, so its tables (``betas``, ``alphas_cumprod``, sigmas) are built in float64
from the config; the script checks that every float tensor of the scheduler is float64 after ``set_timesteps``.

Per case ``<class>/<test>`` (``1D:`` before the test for UniPC's 1D class) the file holds ``config`` (JSON), ``n``,
``mode``, ``t_start``, ``labels`` and ``labels32`` (the ``timesteps`` the loop steps through, float64 and float32
runs), ``x_start`` (the sample entering the loop, float64 run), ``sigma_start`` (the sigma-space schedulers' sigma
there, else 0), ``noise`` (the name of the array ``noise/<digest>`` of the generator's draws, ``(draws, 4, ...)``,
stored in float32, which holds them exactly; absent for deterministic loops), ``final`` (the float64 run's last
sample), ``final32`` (the float32 run's), ``sum32``, ``mean32``, ``expected`` = [sum, sum tolerance, mean, mean
tolerance] from their test (NaN where the test asserts no sum), ``reproduced32`` and ``source`` (file::test).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _golden import Float32As64, write_npz  # noqa: E402

import diffusers  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusers_loops.npz")
NAN = float("nan")
LINEAR = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
LINEAR1100 = dict(LINEAR, num_train_timesteps=1100)
DPM = dict(LINEAR, solver_order=2, prediction_type="epsilon", thresholding=False, sample_max_value=1.0,
           algorithm_type="dpmsolver++", solver_type="midpoint", lambda_min_clipped=-float("inf"), variance_type=None)
# (test file, test, scheduler class, config, steps, mode, t_start, [sum, tol, mean, tol]); mode: "plain", "noise"
# (add_noise at timesteps[t_start * order]), "uneven" (timesteps[3:]), "train" (no set_timesteps: the training grid)
DDIM = dict(LINEAR, clip_sample=True)
DDPM = dict(LINEAR, variance_type="fixed_small", clip_sample=True)
CASES = [
    ("test_scheduler_ddim.py", "test_full_loop_no_noise", "DDIMScheduler", DDIM, 10, "plain", 0,
     [172.0067, 1e-2, 0.223967, 1e-3]),
    ("test_scheduler_ddim.py", "test_full_loop_with_v_prediction", "DDIMScheduler",
     dict(DDIM, prediction_type="v_prediction"), 10, "plain", 0, [52.5302, 1e-2, 0.0684, 1e-3]),
    ("test_scheduler_ddim.py", "test_full_loop_with_set_alpha_to_one", "DDIMScheduler",
     dict(DDIM, set_alpha_to_one=True, beta_start=0.01), 10, "plain", 0, [149.8295, 1e-2, 0.1951, 1e-3]),
    ("test_scheduler_ddim.py", "test_full_loop_with_no_set_alpha_to_one", "DDIMScheduler",
     dict(DDIM, set_alpha_to_one=False, beta_start=0.01), 10, "plain", 0, [149.0784, 1e-2, 0.1941, 1e-3]),
    ("test_scheduler_ddim.py", "test_full_loop_with_noise", "DDIMScheduler", DDIM, 10, "noise", 8,
     [354.5418, 1e-2, 0.4616, 1e-3]),
    ("test_scheduler_ddim_inverse.py", "test_full_loop_no_noise", "DDIMInverseScheduler", DDIM, 10, "plain", 0,
     [671.6816, 1e-2, 0.8746, 1e-3]),
    ("test_scheduler_ddim_inverse.py", "test_full_loop_with_v_prediction", "DDIMInverseScheduler",
     dict(DDIM, prediction_type="v_prediction"), 10, "plain", 0, [1394.2185, 1e-2, 1.8154, 1e-3]),
    ("test_scheduler_ddim_inverse.py", "test_full_loop_with_set_alpha_to_one", "DDIMInverseScheduler",
     dict(DDIM, set_alpha_to_one=True, beta_start=0.01), 10, "plain", 0, [539.9622, 1e-2, 0.7031, 1e-3]),
    ("test_scheduler_ddim_inverse.py", "test_full_loop_with_no_set_alpha_to_one", "DDIMInverseScheduler",
     dict(DDIM, set_alpha_to_one=False, beta_start=0.01), 10, "plain", 0, [542.6722, 1e-2, 0.7066, 1e-3]),
    ("test_scheduler_ddpm.py", "test_full_loop_no_noise", "DDPMScheduler", DDPM, 1000, "train", 0,
     [258.9606, 1e-2, 0.3372, 1e-3]),
    ("test_scheduler_ddpm.py", "test_full_loop_with_v_prediction", "DDPMScheduler",
     dict(DDPM, prediction_type="v_prediction"), 1000, "train", 0, [202.0296, 1e-2, 0.2631, 1e-3]),
    ("test_scheduler_ddpm.py", "test_full_loop_with_noise", "DDPMScheduler", DDPM, 1000, "train_noise", 998,
     [387.9466, 1e-2, 0.5051, 1e-3]),
    ("test_scheduler_deis.py", "test_full_loop_no_noise", "DEISMultistepScheduler", dict(LINEAR, solver_order=2), 10,
     "plain", 0, [NAN, NAN, 0.23916, 1e-3]),
    ("test_scheduler_deis.py", "test_full_loop_with_v_prediction", "DEISMultistepScheduler",
     dict(LINEAR, solver_order=2, prediction_type="v_prediction"), 10, "plain", 0, [NAN, NAN, 0.091, 1e-3]),
    ("test_scheduler_deis.py", "test_full_loop_with_noise", "DEISMultistepScheduler", dict(LINEAR, solver_order=2),
     10, "noise", 8, [315.3016, 1e-2, 0.41054, 1e-3]),
    ("test_scheduler_dpm_multi.py", "test_full_loop_no_noise", "DPMSolverMultistepScheduler",
     dict(DPM, lower_order_final=False, euler_at_final=False, final_sigmas_type="sigma_min"), 10, "plain", 0,
     [NAN, NAN, 0.3301, 1e-3]),
    ("test_scheduler_dpm_multi.py", "test_full_loop_with_noise", "DPMSolverMultistepScheduler",
     dict(DPM, lower_order_final=False, euler_at_final=False, final_sigmas_type="sigma_min"), 10, "noise", 5,
     [318.4111, 1e-2, 0.4146, 1e-3]),
    ("test_scheduler_dpm_multi.py", "test_full_loop_no_noise_thres", "DPMSolverMultistepScheduler",
     dict(DPM, lower_order_final=False, euler_at_final=False, final_sigmas_type="sigma_min", thresholding=True,
          dynamic_thresholding_ratio=0.87, sample_max_value=0.5), 10, "plain", 0, [NAN, NAN, 1.1364, 1e-3]),
    ("test_scheduler_dpm_multi.py", "test_full_loop_with_v_prediction", "DPMSolverMultistepScheduler",
     dict(DPM, lower_order_final=False, euler_at_final=False, final_sigmas_type="sigma_min",
          prediction_type="v_prediction"), 10, "plain", 0, [NAN, NAN, 0.2251, 1e-3]),
    ("test_scheduler_dpm_multi.py", "test_full_loop_with_karras_and_v_prediction", "DPMSolverMultistepScheduler",
     dict(DPM, lower_order_final=False, euler_at_final=False, final_sigmas_type="sigma_min",
          prediction_type="v_prediction", use_karras_sigmas=True), 10, "plain", 0, [NAN, NAN, 0.2096, 1e-3]),
    ("test_scheduler_dpm_multi.py", "test_full_loop_with_lu_and_v_prediction", "DPMSolverMultistepScheduler",
     dict(DPM, lower_order_final=False, euler_at_final=False, final_sigmas_type="sigma_min",
          prediction_type="v_prediction", use_lu_lambdas=True), 10, "plain", 0, [NAN, NAN, 0.1554, 1e-3]),
    ("test_scheduler_dpm_multi_inverse.py", "test_full_loop_no_noise", "DPMSolverMultistepInverseScheduler",
     dict(DPM, lower_order_final=False), 10, "plain", 0, [NAN, NAN, 0.7047, 1e-3]),
    ("test_scheduler_dpm_multi_inverse.py", "test_full_loop_no_noise_thres", "DPMSolverMultistepInverseScheduler",
     dict(DPM, lower_order_final=False, thresholding=True, dynamic_thresholding_ratio=0.87, sample_max_value=0.5),
     10, "plain", 0, [NAN, NAN, 19.8933, 1e-3]),
    ("test_scheduler_dpm_multi_inverse.py", "test_full_loop_with_v_prediction", "DPMSolverMultistepInverseScheduler",
     dict(DPM, lower_order_final=False, prediction_type="v_prediction"), 10, "plain", 0, [NAN, NAN, 1.5194, 1e-3]),
    ("test_scheduler_dpm_multi_inverse.py", "test_full_loop_with_karras_and_v_prediction",
     "DPMSolverMultistepInverseScheduler",
     dict(DPM, lower_order_final=False, prediction_type="v_prediction", use_karras_sigmas=True), 10, "plain", 0,
     [NAN, NAN, 1.7833, 2e-3]),
    ("test_scheduler_dpm_single.py", "test_full_uneven_loop", "DPMSolverSinglestepScheduler",
     dict(DPM, final_sigmas_type="sigma_min"), 50, "uneven", 0, [NAN, NAN, 0.2574, 1e-3]),
    ("test_scheduler_dpm_single.py", "test_full_loop_no_noise", "DPMSolverSinglestepScheduler",
     dict(DPM, final_sigmas_type="sigma_min"), 10, "plain", 0, [NAN, NAN, 0.2791, 1e-3]),
    ("test_scheduler_dpm_single.py", "test_full_loop_with_karras", "DPMSolverSinglestepScheduler",
     dict(DPM, final_sigmas_type="sigma_min", use_karras_sigmas=True), 10, "plain", 0, [NAN, NAN, 0.2248, 1e-3]),
    ("test_scheduler_dpm_single.py", "test_full_loop_with_v_prediction", "DPMSolverSinglestepScheduler",
     dict(DPM, final_sigmas_type="sigma_min", prediction_type="v_prediction"), 10, "plain", 0,
     [NAN, NAN, 0.1453, 1e-3]),
    ("test_scheduler_dpm_single.py", "test_full_loop_with_karras_and_v_prediction", "DPMSolverSinglestepScheduler",
     dict(DPM, final_sigmas_type="sigma_min", prediction_type="v_prediction", use_karras_sigmas=True), 10, "plain",
     0, [NAN, NAN, 0.0649, 1e-3]),
    ("test_scheduler_dpm_single.py", "test_full_loop_with_noise", "DPMSolverSinglestepScheduler",
     dict(DPM, final_sigmas_type="sigma_min"), 10, "noise", 5, [269.2187, 1e-2, 0.3505, 1e-3]),
    ("test_scheduler_euler.py", "test_full_loop_no_noise", "EulerDiscreteScheduler", LINEAR1100, 10, "plain", 0,
     [10.0807, 1e-2, 0.0131, 1e-3]),
    ("test_scheduler_euler.py", "test_full_loop_with_v_prediction", "EulerDiscreteScheduler",
     dict(LINEAR1100, prediction_type="v_prediction"), 10, "plain", 0, [0.0002, 1e-2, 2.2676e-06, 1e-3]),
    ("test_scheduler_euler.py", "test_full_loop_device_karras_sigmas", "EulerDiscreteScheduler",
     dict(LINEAR1100, use_karras_sigmas=True), 10, "plain", 0, [124.52299499511719, 1e-2, 0.16213932633399963, 1e-3]),
    ("test_scheduler_euler.py", "test_full_loop_with_noise", "EulerDiscreteScheduler", LINEAR1100, 10, "noise", 8,
     [57062.9297, 1e-2, 74.3007, 1e-3]),
    ("test_scheduler_euler_ancestral.py", "test_full_loop_no_noise", "EulerAncestralDiscreteScheduler", LINEAR1100,
     10, "plain", 0, [152.3192, 1e-2, 0.1983, 1e-3]),
    ("test_scheduler_euler_ancestral.py", "test_full_loop_with_v_prediction", "EulerAncestralDiscreteScheduler",
     dict(LINEAR1100, prediction_type="v_prediction"), 10, "plain", 0, [108.4439, 1e-2, 0.1412, 1e-3]),
    ("test_scheduler_euler_ancestral.py", "test_full_loop_with_noise", "EulerAncestralDiscreteScheduler", LINEAR1100,
     10, "noise", 8, [56163.0508, 1e-2, 73.1290, 1e-3]),
    ("test_scheduler_heun.py", "test_full_loop_no_noise", "HeunDiscreteScheduler", LINEAR1100, 10, "plain", 0,
     [0.1233, 1e-2, 0.0002, 1e-3]),
    ("test_scheduler_heun.py", "test_full_loop_with_v_prediction", "HeunDiscreteScheduler",
     dict(LINEAR1100, prediction_type="v_prediction"), 10, "plain", 0, [4.6934e-07, 1e-2, 6.1112e-10, 1e-3]),
    ("test_scheduler_heun.py", "test_full_loop_device_karras_sigmas", "HeunDiscreteScheduler",
     dict(LINEAR1100, use_karras_sigmas=True), 10, "plain", 0, [0.00015, 1e-2, 1.9869554535034695e-07, 1e-2]),
    ("test_scheduler_heun.py", "test_full_loop_with_noise", "HeunDiscreteScheduler", LINEAR1100, 10, "noise", 8,
     [75074.8906, 1e-2, 97.7538, 1e-3]),
    ("test_scheduler_kdpm2_discrete.py", "test_full_loop_with_v_prediction", "KDPM2DiscreteScheduler",
     dict(LINEAR1100, prediction_type="v_prediction"), 10, "plain", 0, [4.6934e-07, 1e-2, 6.1112e-10, 1e-3]),
    ("test_scheduler_kdpm2_discrete.py", "test_full_loop_no_noise", "KDPM2DiscreteScheduler", LINEAR1100, 10,
     "plain", 0, [20.4125, 1e-2, 0.0266, 1e-3]),
    ("test_scheduler_kdpm2_discrete.py", "test_full_loop_with_noise", "KDPM2DiscreteScheduler", LINEAR1100, 10,
     "noise", 8, [70408.4062, 1e-2, 91.6776, 1e-3]),
    ("test_scheduler_kdpm2_ancestral.py", "test_full_loop_no_noise", "KDPM2AncestralDiscreteScheduler", LINEAR1100,
     10, "plain", 0, [13979.9433, 1e-2, 18.2030, 5e-3]),
    ("test_scheduler_kdpm2_ancestral.py", "test_full_loop_with_v_prediction", "KDPM2AncestralDiscreteScheduler",
     dict(LINEAR1100, prediction_type="v_prediction"), 10, "plain", 0, [331.8133, 1e-2, 0.4320, 1e-3]),
    ("test_scheduler_kdpm2_ancestral.py", "test_full_loop_with_noise", "KDPM2AncestralDiscreteScheduler", LINEAR1100,
     10, "noise", 8, [93087.3437, 1e-2, 121.2074, 5e-3]),
    ("test_scheduler_lms.py", "test_full_loop_no_noise", "LMSDiscreteScheduler", LINEAR1100, 10, "plain", 0,
     [1006.388, 1e-2, 1.31, 1e-3]),
    ("test_scheduler_lms.py", "test_full_loop_with_v_prediction", "LMSDiscreteScheduler",
     dict(LINEAR1100, prediction_type="v_prediction"), 10, "plain", 0, [0.0017, 1e-2, 2.2676e-06, 1e-3]),
    ("test_scheduler_lms.py", "test_full_loop_device_karras_sigmas", "LMSDiscreteScheduler",
     dict(LINEAR1100, use_karras_sigmas=True), 10, "plain", 0, [3812.9927, 2e-2, 4.9648, 1e-3]),
    ("test_scheduler_lms.py", "test_full_loop_with_noise", "LMSDiscreteScheduler", LINEAR1100, 10, "noise", 8,
     [27663.6895, 1e-2, 36.0204, 1e-3]),
    ("test_scheduler_pndm.py", "test_full_loop_no_noise", "PNDMScheduler", LINEAR, 10, "plain", 0,
     [198.1318, 1e-2, 0.2580, 1e-3]),
    ("test_scheduler_pndm.py", "test_full_loop_with_v_prediction", "PNDMScheduler",
     dict(LINEAR, prediction_type="v_prediction"), 10, "plain", 0, [67.3986, 1e-2, 0.0878, 1e-3]),
    ("test_scheduler_pndm.py", "test_full_loop_with_set_alpha_to_one", "PNDMScheduler",
     dict(LINEAR, set_alpha_to_one=True, beta_start=0.01), 10, "plain", 0, [230.0399, 1e-2, 0.2995, 1e-3]),
    ("test_scheduler_pndm.py", "test_full_loop_with_no_set_alpha_to_one", "PNDMScheduler",
     dict(LINEAR, set_alpha_to_one=False, beta_start=0.01), 10, "plain", 0, [186.9482, 1e-2, 0.2434, 1e-3]),
    ("test_scheduler_sasolver.py", "test_full_loop_no_noise", "SASolverScheduler", LINEAR1100, 10, "plain", 0,
     [337.394287109375, 1e-2, 0.43931546807289124, 1e-3]),
    ("test_scheduler_sasolver.py", "test_full_loop_with_v_prediction", "SASolverScheduler",
     dict(LINEAR1100, prediction_type="v_prediction"), 10, "plain", 0,
     [193.1467742919922, 1e-2, 0.2514931857585907, 1e-3]),
    ("test_scheduler_sasolver.py", "test_full_loop_device_karras_sigmas", "SASolverScheduler",
     dict(LINEAR1100, use_karras_sigmas=True), 10, "plain", 0, [837.2554931640625, 1e-2, 1.0901764631271362, 1e-2]),
]
UNIPC = dict(LINEAR, solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min")
for cls_test, shape_tag, numbers in (("UniPCMultistepSchedulerTest", "", (0.2464, 0.2925, 0.1014, 0.1966,
                                                                          (315.5757, 0.4109))),
                                     ("UniPCMultistepScheduler1DTest", "1D:", (0.2441, 0.2898, 0.1014, 0.1944,
                                                                               (39.0870, 0.4072)))):
    for test, extra, mean in (("test_full_loop_no_noise", {}, numbers[0]),
                              ("test_full_loop_with_karras", {"use_karras_sigmas": True}, numbers[1]),
                              ("test_full_loop_with_v_prediction", {"prediction_type": "v_prediction"}, numbers[2]),
                              ("test_full_loop_with_karras_and_v_prediction",
                               {"prediction_type": "v_prediction", "use_karras_sigmas": True}, numbers[3])):
        CASES.append(("test_scheduler_unipc.py", f"{shape_tag}{test}", "UniPCMultistepScheduler",
                      dict(UNIPC, **extra), 10, "plain", 0, [NAN, NAN, mean, 1e-3]))
    CASES.append(("test_scheduler_unipc.py", f"{shape_tag}test_full_loop_with_noise", "UniPCMultistepScheduler", UNIPC,
                  10, "noise", 8, [numbers[4][0], 1e-2, numbers[4][1], 1e-3]))


def ramps(one_d: bool):
    """SchedulerCommonTest's ``dummy_sample_deter`` and ``dummy_noise_deter`` (UniPC's 1D class: width 8, no height)."""
    dims = (4, 3, 8) if one_d else (4, 3, 8, 8)
    num = int(np.prod(dims))
    inner = dims[1:] + dims[:1]
    perm = (len(dims) - 1,) + tuple(range(len(dims) - 1))
    sample = (torch.arange(num).reshape(inner) / num).permute(perm)
    noise = (torch.arange(num).flip(-1).reshape(inner) / num).permute(perm)
    return sample, noise


class _Numpy64(Float32As64):
    """``numpy`` for a float64 run: ``float32`` is float64, but ``linspace(..., dtype=float32)`` keeps its float32
    values (then float64): the sigma-space schedulers' label grids are those float32 labels, which sdevp_jax takes
    as given (their sigmas are then interpolated in float64 at them)."""

    def linspace(self, *args, dtype=None, **kwargs):
        if dtype is self.float32:
            return self._torch.linspace(*args, dtype=np.float32, **kwargs).astype(np.float64)
        return self._torch.linspace(*args, dtype=dtype, **kwargs)


def model(sample, t):
    """SchedulerCommonTest's ``dummy_model``: ``sample * t / (t + 1)``, ``t`` cast to the sample's dtype."""
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, *(1,) * (sample.ndim - 1)).to(sample.device, dtype=sample.dtype)
    return sample * t / (t + 1)


def run(case, dtype, noise_in=None, as_written=True):
    file, test, cls_name, config, n, mode, t_start, _ = case
    cls = getattr(diffusers, cls_name)
    module = importlib.import_module(cls.__module__)
    draws = []
    real_randn = getattr(module, "randn_tensor", None)
    feed = iter(noise_in) if noise_in is not None else None

    def randn(shape, **kw):
        if feed is not None:
            z = torch.as_tensor(next(feed), dtype=torch.float64)
            assert tuple(z.shape) == tuple(shape), (z.shape, shape)
            return z
        z = real_randn(shape, **kw)
        draws.append(z.double().numpy().copy())
        return z

    real_torch, real_np = module.torch, module.np
    if real_randn is not None:
        module.randn_tensor = randn
    previous = torch.get_default_dtype()
    if dtype == torch.float64:
        module.torch, module.np = Float32As64(torch), _Numpy64(np)
        torch.set_default_dtype(torch.float64)
    try:
        scheduler = cls(**config)
        sample, noise = ramps(test.startswith("1D:"))
        sample, noise = sample.to(dtype), noise.to(dtype)
        if mode.startswith("train"):
            timesteps = scheduler.timesteps
        else:
            scheduler.set_timesteps(n)
            timesteps = scheduler.timesteps
        if dtype == torch.float64:
            for name, value in vars(scheduler).items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    assert value.dtype == torch.float64, (cls_name, name, value.dtype)
        init = scheduler.init_noise_sigma
        sample = sample * (init.to(dtype) if isinstance(init, torch.Tensor) else init)
        start = {"plain": 0, "train": 0, "uneven": 3}.get(mode, t_start * scheduler.order)
        timesteps = timesteps[start:]
        if "noise" in mode:
            sample = scheduler.add_noise(sample, noise, timesteps[:1])
        x_start = sample.double().numpy().copy()
        sigma_start = float(scheduler.sigmas[start]) if "Discrete" in cls_name else 0.0
        generator = torch.manual_seed(0)
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        for t in timesteps:
            t_model = int(t) if mode.startswith("train") else t  # DDPM's tests loop over range(): int labels
            if cls_name == "SASolverScheduler":  # its test hands the generator to scale_model_input, not to step
                model_input = scheduler.scale_model_input(sample, t, generator=generator)
                sample = model_input
            else:
                model_input = scheduler.scale_model_input(sample, t)
                if "Discrete" in cls_name and as_written:  # their sigma-space tests rebind sample to the input
                    sample = model_input
            kwargs = {"generator": generator} if takes_generator and cls_name != "SASolverScheduler" else {}
            if cls_name == "DDPMScheduler":
                t = t_model
            sample = scheduler.step(model(model_input, t_model), t, sample, **kwargs).prev_sample
            assert sample.dtype == dtype, (cls_name, sample.dtype)
    finally:
        if real_randn is not None:
            module.randn_tensor = real_randn
        module.torch, module.np = real_torch, real_np
        torch.set_default_dtype(previous)
    labels = np.asarray(timesteps.double().numpy() if isinstance(timesteps, torch.Tensor) else timesteps, np.float64)
    return sample.double().numpy(), (x_start, sigma_start), labels, draws


def main():
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    arrays = {"cases": np.array([f"{c[2]}/{c[1]}" for c in CASES])}
    for case in CASES:
        file, test, cls_name, config, n, mode, t_start, expected = case
        key = f"{cls_name}/{test}"
        final32, _, labels32, draws = run(case, torch.float32)
        final, (x_start, sigma_start), labels, _ = run(case, torch.float64, noise_in=draws if draws else None)
        s32, m32 = float(np.abs(final32).sum()), float(np.abs(final32).mean())
        s64, m64 = float(np.abs(final).sum()), float(np.abs(final).mean())
        ok = all(np.isnan(e) or abs(v - e) < tol for v, e, tol in ((s32, expected[0], expected[1]),
                                                                   (m32, expected[2], expected[3])))
        print(f"{key:75s} sum32 {s32:.6g} mean32 {m32:.6g}  sum64 {s64:.6g} mean64 {m64:.6g} "
              f"expected {expected[0]:.6g}/{expected[2]:.6g} {'reproduced' if ok else 'NOT REPRODUCED'}")
        arrays.update({f"{key}/config": json.dumps(dict(config, _class_name=cls_name)), f"{key}/n": n,
                       f"{key}/mode": mode, f"{key}/t_start": t_start, f"{key}/labels": labels,
                       f"{key}/labels32": labels32, f"{key}/x_start": x_start, f"{key}/sigma_start": sigma_start, f"{key}/final": final,
                       f"{key}/final32": final32, f"{key}/sum32": s32, f"{key}/mean32": m32,
                       f"{key}/expected": np.array(expected, np.float64), f"{key}/reproduced32": ok,
                       f"{key}/source": f"tests/schedulers/{file}::{test.replace('1D:', 'UniPCMultistepScheduler1DTest::')}"})
        if "Discrete" in cls_name:  # the same loop as a pipeline runs it
            p32, _, _, p_draws = run(case, torch.float32, as_written=False)
            p64, _, _, _ = run(case, torch.float64, noise_in=p_draws if p_draws else None, as_written=False)
            arrays.update({f"{key}/pipeline/final": p64, f"{key}/pipeline/final32": p32,
                           f"{key}/pipeline/sum32": float(np.abs(p32).sum()),
                           f"{key}/pipeline/mean32": float(np.abs(p32).mean())})
            print(f"{'':75s} pipeline: sum32 {np.abs(p32).sum():.6g} sum64 {np.abs(p64).sum():.6g}")
            if p_draws:
                arrays[f"{key}/pipeline/noise"] = np.stack(p_draws).astype(np.float32)
        if draws:  # the generator's float32 draws, exact in float32; loops drawing the same ones share them
            noise = np.stack(draws).astype(np.float32)
            assert np.array_equal(noise.astype(np.float64), np.stack(draws))
            name = f"noise/{hashlib.sha256(noise.tobytes()).hexdigest()[:16]}"
            arrays[name] = noise
            arrays[f"{key}/noise"] = name
    write_npz(OUT, arrays)


if __name__ == "__main__":
    main()
