"""diffusers' inverse schedulers (DDIMInverseScheduler, DPMSolverMultistepInverseScheduler) through sv.invert_ode.

Parity with diffusers 0.42.1 in float64 (tests/golden/ddim_inverse.npz, by tests/golden/make_ddim_inverse_golden.py):
a DDIMInverseScheduler config loads and sv.invert_ode(state, model_fn, x0) with no method inverts as that scheduler
does -- the model called at the label each step goes to (evaluate_at="end"), the first step from clean data
(set_alpha_to_one) or from label 0 (a zero-length step where the grid starts there), the data prediction clipped
with clip_sample -- within 1e-12 relative (the two sides do the same dozen operations per step).
DPMSolverMultistepInverseScheduler (tests/golden/dpm_inverse.npz, by make_dpm_inverse_golden.py): DPM-Solver++ up
its own label grid to the noisiest label (trailing: a zero-length last step there), orders 1-3, heun, thresholding,
a v-model, within 1e-10 relative.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from gaussian_model import label_gaussian_model

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "ddim_inverse.npz")))
DPM = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "dpm_inverse.npz")))
DPM_CASES = sorted(k.rsplit("/", 1)[0] for k in DPM if k.endswith("/final"))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final") and not k.startswith("forward/"))
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def exact_model(prediction_type, s, mu=0.5):
    """The golden's model at an integer label (data N(mu, s^2 I)), on samples of shape (B, ...)."""
    return label_gaussian_model(GOLDEN["alphas_cumprod"], prediction_type, s, mu)


def setup(case):
    fields = json.loads(str(GOLDEN[f"{case}/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": "DDIMInverseScheduler", **SD, **fields}),
                             int(case.split("/")[1]))
    model = exact_model(fields.get("prediction_type", "epsilon"), 1.5 if fields.get("clip_sample", True) else 0.8)
    return fields, state, model, jnp.asarray(GOLDEN[f"{case}/x0"])


def rel(x, ref):
    return float(np.max(np.abs(np.asarray(x) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("case", CASES)
def test_parity_with_diffusers_ddim_inverse_scheduler(case, x64):
    fields, state, model, x0 = setup(case)
    np.testing.assert_array_equal(np.asarray(sv.model_time(state, state.timesteps))[::-1], GOLDEN[f"{case}/labels"])
    x, info = sv.invert_ode(state, model, x0, return_info=True)
    assert rel(x, GOLDEN[f"{case}/final"]) <= 1e-12
    assert int(info.nfe) == len(GOLDEN[f"{case}/labels"])  # one call per label, the first step's included


@pytest.mark.parametrize("case", ["clip/10", "no_alpha_to_one_clip/10", "sd/10"])
def test_each_part_of_the_convention_changes_the_result(case, x64):
    """The golden would catch a wrong convention: the model at the step's start, or no clipping, or starting at the
    grid's last time, each moves the result by far more than rounding."""
    fields, state, model, x0 = setup(case)
    ref = GOLDEN[f"{case}/final"]
    assert rel(sv.invert_ode(state, model, x0, evaluate_at="start"), ref) > 1e-4
    if fields.get("clip_sample", True):
        unclipped = sv.set_timesteps(sv.load_config({"_class_name": "DDIMInverseScheduler", **SD, **fields,
                                                     "clip_sample": False}), 10)
        assert rel(sv.invert_ode(unclipped, model, x0), ref) > 1e-4
    else:
        ddim = sv.set_timesteps(sv.load_config({"_class_name": "DDIMScheduler", **SD, **fields}), 10)
        assert rel(sv.invert_ode(ddim, model, x0, evaluate_at="end"), ref) > 1e-4  # from label 1, not from data
        # the same run spelled with the options on a DDIMScheduler config
        np.testing.assert_allclose(sv.invert_ode(ddim, model, x0, evaluate_at="end", start=0.0), ref, rtol=1e-12,
                                   atol=1e-12)


def test_what_the_convention_cannot_serve_is_refused():
    with pytest.raises(ValueError, match="must be 'leading' or 'trailing' for DDIMInverseScheduler"):
        sv.load_config({"_class_name": "DDIMInverseScheduler", "timestep_spacing": "linspace"})
    state = sv.set_timesteps(sv.load_config({"_class_name": "DDIMInverseScheduler", "timestep_spacing": "trailing",
                                             "clip_sample": False}), 30)
    model = lambda x, t: jnp.zeros_like(x)
    with pytest.raises(ValueError, match="which is not the previous label of its grid when 30 does not divide"):
        sv.invert_ode(state, model, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="DDIMInverseScheduler inverts"):
        sv.sample_ode(sv.set_timesteps(sv.load_config({"_class_name": "DDIMInverseScheduler"}), 10), model,
                      jax.random.key(0), (2, 3))
    ddim = sv.set_timesteps(sv.load_config({"_class_name": "DDIMScheduler", "clip_sample": False}), 10)
    with pytest.raises(ValueError, match="evaluate_at='end'.*applies to method='ddim', not 'dpm_solver_pp'"):
        sv.invert_ode(ddim, model, jnp.ones((2, 3)), method="dpm_solver_pp", evaluate_at="end")
    with pytest.raises(ValueError, match=r"start must be in \[0, "):
        sv.invert_ode(ddim, model, jnp.ones((2, 3)), start=0.5)
    x0_model = sv.set_timesteps(sv.load_config({"_class_name": "DDIMScheduler", "prediction_type": "sample",
                                                "clip_sample": False}), 10)
    with pytest.raises(ValueError, match="start=0 with an x0-prediction model"):
        sv.invert_ode(x0_model, model, jnp.ones((2, 3)), start=0.0)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.endswith("/16") else c
                                  for c in DPM_CASES])
def test_parity_with_diffusers_dpm_solver_multistep_inverse_scheduler(case, x64):
    fields = json.loads(str(DPM[f"{case}/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": "DPMSolverMultistepInverseScheduler", **SD, **fields}),
                             int(case.split("/")[2]))
    labels = np.asarray(sv.model_time(state, state.timesteps))[::-1]
    np.testing.assert_array_equal(labels[: len(DPM[f"{case}/labels"])], DPM[f"{case}/labels"])
    assert labels[-1] == 999  # every inverse grid ends at the noisiest label
    model = exact_model(fields.get("prediction_type", "epsilon"), 2.0 if fields.get("thresholding") else 0.8)
    x, info = sv.invert_ode(state, model, jnp.asarray(DPM["x0"])[..., None], return_info=True)
    assert rel(x[..., 0], DPM[f"{case}/final"]) <= 1e-10
    assert int(info.nfe) == len(DPM[f"{case}/labels"])  # one call per label (trailing: the zero-length step's)


def test_the_dpm_inverse_schedulers_refusals():
    with pytest.raises(ValueError, match="lambda_min_clipped = -3.0 changes the inverse grid's top"):
        sv.load_config({"_class_name": "DPMSolverMultistepInverseScheduler", "lambda_min_clipped": -3.0})
    with pytest.raises(ValueError, match="use_flow_sigmas = True changes sampling"):
        sv.load_config({"_class_name": "DPMSolverMultistepInverseScheduler", "use_flow_sigmas": True})
    # diffusers drops a sigma grid's repeated labels but not their sigmas (its tables then disagree): refused
    with pytest.raises(ValueError, match="gives DPMSolverMultistepInverseScheduler's model a label twice"):
        sv.set_timesteps(sv.load_config({"_class_name": "DPMSolverMultistepInverseScheduler", **SD,
                                         "use_karras_sigmas": True}), 200)
    sde = sv.set_timesteps(sv.load_config({"_class_name": "DPMSolverMultistepInverseScheduler",
                                           "algorithm_type": "sde-dpmsolver++"}), 5)
    with pytest.raises(ValueError, match="algorithm_type='sde-dpmsolver\\+\\+' has no equivalent here"):
        sv.invert_ode(sde, lambda x, t: jnp.zeros_like(x), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="DPMSolverMultistepInverseScheduler inverts"):
        sv.sample_ode(sde, lambda x, t: jnp.zeros_like(x), jax.random.key(0), (2, 3))


def test_ddim_with_set_alpha_to_one_false_ends_at_label_0_as_diffusers(x64):
    """The forward DDIMScheduler with steps_offset = 1 and set_alpha_to_one = false (the golden's forward case):
    its last step goes from label 1 to label 0's alphas_cumprod, so the config's grid ends at label 0 and ddim
    stops there, within 1e-12 relative of diffusers (ending at label 1 instead was 3.1e-4 off)."""
    fields = json.loads(str(GOLDEN["forward/offset1/10/config"]))
    state = sv.set_timesteps(sv.load_config({"_class_name": "DDIMScheduler", **SD, **fields}), 10)
    labels = np.asarray(sv.model_time(state, state.timesteps))
    np.testing.assert_array_equal(labels, np.append(GOLDEN["forward/offset1/10/labels"], 0))
    x_t = jnp.asarray(GOLDEN["forward/offset1/10/x_T"])
    x, info = sv.sample_ode(state, exact_model("epsilon", 0.8), None, x_t.shape, x_init=x_t, dtype=jnp.float64,
                            return_info=True)
    assert rel(x, GOLDEN["forward/offset1/10/final"]) <= 1e-12 and int(info.nfe) == 10
