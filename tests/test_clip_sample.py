"""diffusers' ``clip_sample``: the data prediction clipped inside every step that forms one.

Parity with diffusers 0.42.1's DDIMScheduler (eta 0) and DDPMScheduler (``fixed_large``) loops
with ``clip_sample=True`` in float64 (tests/golden/clip.npz, by tests/golden/make_clip_golden.py),
on an exact Gaussian model wide enough that the clip acts at most steps; and each step's
clipping tested directly.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import config

GOLDEN = dict(np.load(os.path.join(os.path.dirname(__file__), "golden", "clip.npz")))
CASES = sorted(k.rsplit("/", 1)[0] for k in GOLDEN if k.endswith("/final"))
MU, S = 0.5, 2.0  # the golden's data: N(MU, S^2) in 3-D
RTOL = 1e-10  # float64 parity bar, as the other diffusers goldens


def acp() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))


def exact_model(prediction_type):
    """The golden's model at a training label: the posterior-mean noise (or v) of N(MU, S^2) data."""
    table = jnp.asarray(acp())

    def fn(x, label):
        a2 = table[jnp.round(label).astype(jnp.int32)][:, None]
        a, sigma = jnp.sqrt(a2), jnp.sqrt(1.0 - a2)
        eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
        if prediction_type == "epsilon":
            return eps
        return a * eps - sigma * (x - sigma * eps) / a

    return fn


def loaded_state(kind, prediction_type, bound, labels):
    cls = {"DDIM": "DDIMScheduler", "DDPM": "DDPMScheduler"}[kind]
    extra = {"set_alpha_to_one": True} if kind == "DDIM" else {"variance_type": "fixed_large"}  # the golden's
    state = sv.load_config({"_class_name": cls, "prediction_type": prediction_type, "clip_sample": True,
                            "clip_sample_range": bound, **extra})
    assert sv.denoiser.clip_range(state) == bound
    return sv.set_timesteps(state, timesteps=sv.time_from_model_time(state, labels.astype(np.float64)))


def run_case(case):
    kind, prediction_type, bound, _ = case.split("/")
    labels = GOLDEN[f"{case}/labels"]
    state = loaded_state(kind, prediction_type, float(bound), labels)
    fn = exact_model(prediction_type)
    x_t = jnp.asarray(GOLDEN["x_T"])
    if kind == "DDIM":  # the last step goes to alphas_cumprod = 1: the clipped data prediction at label 0
        return np.asarray(sv.sample_ode(state, fn, jax.random.key(0), x_t.shape, method="ddim", eta=0.0,
                                        x_init=x_t, dtype=jnp.float64))
    x, times = x_t, np.asarray(state.timesteps)
    targets = np.concatenate([times[1:], [0.0]])
    for t, t_next, z in zip(times, targets, GOLDEN[f"{case}/noise"]):
        t_vec = jnp.full((x.shape[0],), t)
        out = fn(x, sv.model_time(state, t_vec))
        step = sv.ancestral(state, out, x, t_vec, None, noise=jnp.asarray(z), t_next=jnp.full((x.shape[0],), t_next))
        # diffusers adds no noise at label 0 (its `if t > 0`): its last sample is the mean
        x = step.prev_sample if t_next > 0 else step.prev_sample_mean
    return np.asarray(x)


def rel_err(x, ref):
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


def test_the_golden_clips():
    """The clip acts in every case: the clipped and unclipped loops of diffusers differ by O(1)."""
    assert len(CASES) == 2 * 2 * 2 * 2 and "diffusers 0.42.1" in list(GOLDEN["versions"])
    for case in CASES:
        assert rel_err(GOLDEN[f"{case}/final"], GOLDEN[f"{case}/unclipped"]) > 0.1, case


@pytest.mark.parametrize("case", CASES)
def test_clip_sample_parity_with_diffusers(case, x64):
    with jax.disable_jit():  # op by op: cheaper here than compiling each case
        got = run_case(case)
    # float64 rounding through <= 25 steps; the bar is the other goldens' 1e-10
    assert rel_err(got, GOLDEN[f"{case}/final"]) <= RTOL, rel_err(got, GOLDEN[f"{case}/final"])


def _grid_and_model(prediction_type="epsilon", cls="DDIMScheduler", **fields):
    state = sv.load_config({"_class_name": cls, "prediction_type": prediction_type, **fields})
    state = sv.set_timesteps(state, 10)
    grid = sv.solvers.Grid.build(state.schedule.cast(jnp.float32), state.timesteps,
                                 sv.solvers.DPMSolverPP().coefficients)
    model = sv.denoiser.Denoiser(state, exact_model(prediction_type), jnp.float32, jnp.float32)
    return state, grid, model


@pytest.mark.parametrize("method", ["ddim", "dpm_solver_pp", "sde_dpm_solver_pp", "unipc", "dpm_solver_pp_2s"])
def test_data_prediction_solvers_clip_their_prediction(method):
    """A grid solver's data prediction is the model's, clipped to the config's bound; its noise prediction is not."""
    x = jnp.asarray(GOLDEN["x_T"], jnp.float32) * 3.0
    _, grid, model = _grid_and_model(clip_sample=True, clip_sample_range=0.7)
    _, _, free = _grid_and_model(clip_sample=False)
    solver = sv.solvers.make(method)
    eps, x0 = solver.predict(model, x, grid, 0)
    eps_free, x0_free = solver.predict(free, x, grid, 0)
    assert float(jnp.max(jnp.abs(x0_free))) > 0.7  # the clip acts
    np.testing.assert_array_equal(np.asarray(x0), np.clip(np.asarray(x0_free), -0.7, 0.7))
    np.testing.assert_array_equal(np.asarray(eps), np.asarray(eps_free))


def test_thresholding_takes_precedence_over_clip_sample():
    """diffusers: ``if thresholding: ... elif clip_sample: ...``."""
    x = jnp.asarray(GOLDEN["x_T"], jnp.float32) * 3.0
    _, grid, model = _grid_and_model(clip_sample=True, clip_sample_range=0.7)
    _, _, free = _grid_and_model(clip_sample=False)
    solver = sv.solvers.make("ddim", thresholding=True, sample_max_value=2.0)
    _, x0 = solver.predict(model, x, grid, 0)
    _, x0_free = solver.predict(free, x, grid, 0)
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(x0_free))
    assert float(jnp.max(jnp.abs(x0))) > 0.7


def test_noise_prediction_steps_do_not_clip():
    """Euler-Maruyama and the epsilon-form ODE solvers form no data prediction: the same samples either way."""
    def samples(clip):
        state = sv.set_timesteps(sv.load_config({"_class_name": "DDIMScheduler", "clip_sample": clip}), 10)
        fn = exact_model("epsilon")
        key = jax.random.key(1)
        return [np.asarray(sv.sample(state, fn, key, (8, 3), predictor="euler_maruyama")),
                np.asarray(sv.sample_ode(state, fn, key, (8, 3), method="dpm_solver"))]

    for a, b in zip(samples(True), samples(False)):
        np.testing.assert_array_equal(a, b)


def test_ancestral_mean_with_a_clip_that_does_not_act_is_the_noise_form():
    """The posterior-mean form the clip uses equals the noise form when nothing is clipped (to float64 rounding)."""
    jax.config.update("jax_enable_x64", True)
    try:
        x = jnp.asarray(GOLDEN["x_T"]) * 0.1
        for bound in (1e6, None):
            fields = {"clip_sample": True, "clip_sample_range": bound} if bound else {"clip_sample": False}
            state = sv.set_timesteps(sv.load_config({"_class_name": "DDPMScheduler", **fields}), 10)
            t = jnp.full((8,), state.timesteps[3])
            out = sv.ancestral(state, exact_model("epsilon")(x, sv.model_time(state, t)), x, t, None,
                               noise=jnp.zeros_like(x)).prev_sample_mean
            if bound:
                clipped = np.asarray(out)
        np.testing.assert_allclose(clipped, np.asarray(out), rtol=1e-13, atol=1e-15)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("fields, match", [
    ({"clip_sample_range": 0.0}, "clip_sample_range must be a number > 0"),
    ({"clip_sample_range": "1"}, "clip_sample_range must be a number > 0"),
    ({"clip_sample": "yes"}, "clip_sample = 'yes' changes sampling"),
])
def test_bad_clip_fields_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        sv.load_config({"_class_name": "DDIMScheduler", "clip_sample": True, **fields})


def test_only_ddpm_and_ddim_clip_and_the_field_round_trips(tmp_path):
    # Stable Diffusion's PNDM file carries DDIM's clip_sample: diffusers ignores it for PNDM, and so does sv
    pndm = sv.load_config({"_class_name": "PNDMScheduler", "clip_sample": True})
    assert sv.denoiser.clip_range(pndm) is None
    assert sv.denoiser.clip_range(sv.create_state()) is None
    ddpm = sv.load_config({"_class_name": "DDPMScheduler"})  # diffusers' default clip_sample = True
    assert sv.denoiser.clip_range(ddpm) == 1.0
    saved = json.loads(sv.save_config(ddpm, tmp_path).read_text())
    assert saved["clip_sample"] is True and saved["clip_sample_range"] == 1.0
    assert config.discrete_config(saved).clip_sample_range == 1.0
