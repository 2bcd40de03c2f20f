"""sdevp_jax.compat's adapters against diffusers 0.39's Flax schedulers, stepped the way the Flax pipelines step
them (a lax.fori_loop, the int32 timestep, scale_model_input, step(...).to_tuple()) with a small smooth stand-in
model; and against sv.sample_ode / sv.sample where diffusers has no Flax class (UniPC, LMS, the SDE variant).

Needs the flax-pipeline extra (diffusers 0.39, transformers 4.57); the whole pipeline is in
tests/test_compat_pipeline.py. The tests that compile loops take 3 to 10 s each on the shared 2-core VM: slow."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers", reason="the flax-pipeline extra (diffusers==0.39, with its Flax "
                                "schedulers) is not installed: pip install -e '.[flax-pipeline]'")
if not hasattr(diffusers, "FlaxDDIMScheduler"):
    pytest.skip("diffusers has no Flax schedulers (removed in 0.40): install the flax-pipeline extra, diffusers==0.39",
                allow_module_level=True)

import sdevp_jax as sv  # noqa: E402
from sdevp_jax import compat  # noqa: E402
from sdevp_jax.loops import per_sample_normal  # noqa: E402

from flax_pipeline import SD_SCHEDULE, quiet  # noqa: E402

quiet()
SHAPE = (2, 4, 4, 4)
SD_DDIM = dict(SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
SD_PNDM = dict(SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)  # Stable Diffusion's


def model(x, t):
    """A smooth stand-in for the UNet: the noise prediction as a function of x and the label."""
    return jnp.tanh(0.5 * x + 0.001 * t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1)))


def loop(scheduler, state, steps, x, int_timestep=True, start=0, model=model, calls=None):
    """The Flax pipeline's denoising loop, jitted, the timestep cast to int32 as the pipeline casts it (or kept);
    from step ``start`` as the img2img pipeline runs it; ``calls`` model calls (default ``steps``, the Flax
    pipelines' count)."""
    state = scheduler.set_timesteps(state, steps, x.shape)
    x = x * state.init_noise_sigma

    def body(i, carry):
        x, state = carry
        t = state.timesteps[i].astype(jnp.int32) if int_timestep else state.timesteps[i]
        out = model(scheduler.scale_model_input(state, x, t), jnp.broadcast_to(t, x.shape[:1]))
        return scheduler.step(state, out, t, x).to_tuple()

    return jax.jit(lambda x: jax.lax.fori_loop(start, steps if calls is None else calls, body, (x, state))[0])(x)


@pytest.fixture(autouse=True)
def lenient():
    """diffusers' Flax code promotes ranks and dtypes implicitly (the suite's conftest refuses both): allowed here;
    test_the_adapters_run_under_strict_promotion runs the adapters without it."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(0), SHAPE)


CASES = {  # id: (Flax class, adapter, config, adapter options, steps, int timestep)
    "ddim": ("FlaxDDIMScheduler", compat.DDIMAdapter, SD_DDIM, {}, 10, True),
    "dpm2m-10": ("FlaxDPMSolverMultistepScheduler", compat.DPMSolverMultistepAdapter, SD_SCHEDULE,
                 {"flax_labels": True}, 10, True),
    "dpm3m-30": ("FlaxDPMSolverMultistepScheduler", compat.DPMSolverMultistepAdapter,
                 dict(SD_SCHEDULE, solver_order=3), {"flax_labels": True}, 30, True),
    "euler-leading": ("FlaxEulerDiscreteScheduler", compat.EulerDiscreteAdapter,
                      dict(SD_SCHEDULE, timestep_spacing="leading"), {}, 10, True),
    "euler-linspace-float-t": ("FlaxEulerDiscreteScheduler", compat.EulerDiscreteAdapter, SD_SCHEDULE, {}, 10, False),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_an_adapter_steps_as_its_flax_scheduler(x, case):
    """The adapter in the Flax scheduler's place: the same final sample within 1e-5 relative (float32 both, the
    grid's alphas computed in different orders)."""
    name, adapter, config, options, steps, int_t = CASES[case]
    flax = getattr(diffusers, name)(**config)
    ours = adapter(**config, **options)
    want = loop(flax, flax.create_state(), steps, x, int_t)
    got = loop(ours, ours.create_state(), steps, x, int_t)
    assert rel(got, want) <= 1e-5


def test_flax_labels_are_the_flax_classs_labels_inside_a_trace_too():
    """The Flax DPM-Solver's labels are a float32 linspace rounded as XLA computes it (label 167 at 30 steps, where
    JAX's constant folding gives 166.5, rounded to 166): the adapter builds its grid under
    jax.ensure_compile_time_eval, and still gets the Flax class's labels at every count."""
    flax = diffusers.FlaxDPMSolverMultistepScheduler(**SD_SCHEDULE)
    ours = compat.DPMSolverMultistepAdapter(**SD_SCHEDULE, flax_labels=True)
    for steps in (10, 25, 30, 50):
        want = np.asarray(flax.set_timesteps(flax.create_state(), steps, SHAPE).timesteps)
        np.testing.assert_array_equal(np.asarray(ours.set_timesteps(ours.create_state(), steps, SHAPE).timesteps),
                                      want)


@pytest.mark.slow
@pytest.mark.parametrize("order", [2, 3])
def test_a_multistep_adapter_started_mid_grid_warms_up_as_the_flax_scheduler(x, order):
    """img2img's loop starts at step 4 of 10: the Flax DPM-Solver counts its steps (lower_order_nums) and takes
    orders 1, 2, 3 from there; the adapter records the call it started at and does the same (within 1e-5)."""
    config = dict(SD_SCHEDULE, solver_order=order)
    flax = diffusers.FlaxDPMSolverMultistepScheduler(**config)
    ours = compat.DPMSolverMultistepAdapter(**config, flax_labels=True)
    want = loop(flax, flax.create_state(), 10, x, start=4)
    assert rel(loop(ours, ours.create_state(), 10, x, start=4), want) <= 1e-5


@pytest.mark.slow
def test_the_flax_euler_scheduler_loses_its_step_on_fractional_labels_and_the_adapter_does_not(x):
    """FlaxEulerDiscreteScheduler finds its step by timesteps == timestep; on 'linspace' labels (fractional) the
    pipeline's int32 timestep matches none, and every step takes index 0 (jnp.where's fill): its result is far from
    its own run with the float labels. The adapter finds the nearest label and gives the same run either way."""
    flax = diffusers.FlaxEulerDiscreteScheduler(**SD_SCHEDULE)
    ours = compat.EulerDiscreteAdapter(**SD_SCHEDULE)
    assert rel(loop(flax, flax.create_state(), 10, x, True), loop(flax, flax.create_state(), 10, x, False)) > 0.1
    assert rel(loop(ours, ours.create_state(), 10, x, True), loop(ours, ours.create_state(), 10, x, False)) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("adapter,config", [
    (compat.UniPCMultistepAdapter, dict(SD_SCHEDULE, solver_order=3)),
    (compat.LMSDiscreteAdapter, SD_SCHEDULE),
])
def test_an_adapter_without_a_runnable_flax_class_steps_as_sample_ode(x, adapter, config):
    """UniPC (diffusers has no Flax UniPC; sdevp_jax's unipc matches the torch class, tests/test_solver_parity.py)
    and LMS (the Flax class integrates its coefficients with SciPy inside step, which a jitted loop cannot run):
    the adapter's loop equals sv.sample_ode of the same config and grid (the model fed the same int32 label)."""
    ours = adapter(**config)
    got = loop(ours, ours.create_state(), 10, x)
    state = ours.stepper(10).state
    method, options = state.diffusers_config.solver_options()
    # the loop starts from x * init_noise_sigma; a sigma-space adapter's sample is x_VP / alpha
    start = x * ours.set_timesteps(ours.create_state(), 10, SHAPE).init_noise_sigma
    x_vp = start * ours.stepper(10).grid.alpha[0] if ours.sigma_space else start
    ref = sv.sample_ode(state, lambda y, t: model(y, t.astype(jnp.int32)), None, SHAPE, x_init=x_vp,
                        method=method, **options)
    assert rel(got, ref) <= 1e-5


@pytest.mark.slow
def test_the_sde_variant_draws_per_sample_noise_from_the_states_key(x):
    """algorithm_type='sde-dpmsolver++' (the torch class's; no Flax class has it): the key given to create_state
    gives each sample its stream fold_in(key, b), so the loop equals sv.sample with that key, and the first sample
    of a batch of 2 equals a batch of 1."""
    ours = compat.DPMSolverMultistepAdapter(**SD_SCHEDULE, algorithm_type="sde-dpmsolver++")
    key = jax.random.key(5)
    got = loop(ours, ours.create_state(key=key), 10, x)
    state = ours.stepper(10).state
    method, options = state.diffusers_config.solver_options()
    ref = sv.sample(state, lambda y, t: model(y, t.astype(jnp.int32)), key, SHAPE, x_init=x,
                    solver=sv.solvers.make(method, **options))
    assert rel(got, ref) <= 1e-5
    one = loop(ours, ours.create_state(key=key), 10, x[:1])
    assert rel(one, got[:1]) <= 1e-5
    with pytest.raises(ValueError, match="draws noise: pass key="):
        ours.set_timesteps(ours.create_state(), 10, SHAPE)


@pytest.mark.parametrize("name,adapter,config", [
    ("FlaxDDIMScheduler", compat.DDIMAdapter, SD_DDIM),
    ("FlaxDDPMScheduler", compat.DDPMAdapter, SD_SCHEDULE),
    ("FlaxEulerDiscreteScheduler", compat.EulerDiscreteAdapter, dict(SD_SCHEDULE, timestep_spacing="leading")),
    ("FlaxPNDMScheduler", compat.PNDMAdapter, SD_PNDM),
])
def test_add_noise_is_the_flax_schedulers(x, name, adapter, config):
    flax = getattr(diffusers, name)(**config)
    ours = adapter(**config)
    fs = flax.set_timesteps(flax.create_state(), 10, SHAPE)
    noise = jax.random.normal(jax.random.key(1), SHAPE)
    labels = jnp.array([fs.timesteps[3]] * 2).astype(jnp.int32)
    want = flax.add_noise(flax.create_state(), x, noise, labels)
    if name.startswith("FlaxEuler"):  # the Flax Euler class indexes its sigmas by the argument: pass the step index
        want = x + noise * fs.sigmas[3]
    assert rel(ours.add_noise(ours.create_state(), x, noise, labels), want) <= 1e-5


def test_from_pretrained_reads_a_flax_schedulers_saved_config(tmp_path):
    """A config saved by FlaxDPMSolverMultistepScheduler loads into the adapter with from_pretrained(path,
    subfolder=...) -> (scheduler, state), unknown fields returned with return_unused_kwargs; the adapter saves its
    own class name and reloads to the same config."""
    flax = diffusers.FlaxDPMSolverMultistepScheduler(**SD_SCHEDULE, solver_order=3)
    flax.save_pretrained(tmp_path / "scheduler")
    scheduler, state = compat.DPMSolverMultistepAdapter.from_pretrained(tmp_path, subfolder="scheduler")
    assert scheduler.config.solver_order == 3 and scheduler.config.beta_schedule == "scaled_linear"
    assert isinstance(state, compat.AdapterState) and float(state.init_noise_sigma) == 1.0
    _, _, unused = compat.DPMSolverMultistepAdapter.from_pretrained(tmp_path / "scheduler", return_unused_kwargs=True,
                                                                    foo=1)
    assert unused == {"foo": 1}
    scheduler.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DPMSolverMultistepAdapter"
    again, _ = compat.DPMSolverMultistepAdapter.from_pretrained(tmp_path / "again")
    assert dict(again.config) == dict(scheduler.config)


def test_what_has_no_adapter_is_refused_by_name():
    for name in ("FlaxScoreSdeVeScheduler", "FlaxKarrasVeScheduler"):
        with pytest.raises(ValueError, match=f"{name} has no adapter: "):
            compat.adapter_for(name)
    assert compat.adapter_for("FlaxPNDMScheduler") is compat.PNDMAdapter is sv.PNDMAdapter
    with pytest.raises(ValueError, match="v_prediction"):
        compat.PNDMAdapter(**SD_PNDM, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="at least 2 points"):
        compat.PNDMAdapter(**dict(SD_PNDM, steps_offset=0)).set_timesteps(compat.PNDMAdapter(**SD_PNDM).create_state(),
                                                                          1, SHAPE)
    with pytest.raises(ValueError, match="at least 4 points"):
        compat.PNDMAdapter(**dict(SD_PNDM, skip_prk_steps=False)).stepper(2)
    with pytest.raises(ValueError, match=r"unknown config fields \['steps_offset'\]"):
        compat.DPMSolverMultistepAdapter(steps_offset=1)
    ours = compat.DDIMAdapter(**SD_DDIM)
    state = ours.set_timesteps(ours.create_state(), 10, SHAPE)
    with pytest.raises(TypeError, match=r"\['eta'\] are not served"):
        ours.step(state, jnp.zeros(SHAPE), 981, jnp.zeros(SHAPE), eta=0.5)
    with pytest.raises(ValueError, match="call set_timesteps before step"):
        ours.step(ours.create_state(), jnp.zeros(SHAPE), 981, jnp.zeros(SHAPE))


@pytest.mark.slow
@pytest.mark.parametrize("adapter,config", [(compat.DPMSolverMultistepAdapter, SD_SCHEDULE),
                                            (compat.EulerDiscreteAdapter, SD_SCHEDULE),
                                            (compat.PNDMAdapter, dict(SD_PNDM, skip_prk_steps=False))])
def test_the_adapters_run_under_strict_promotion(x, adapter, config):
    """The adapters' own arithmetic is dtype- and rank-clean (the suite's strict promotion), a loop and add_noise."""
    ours = adapter(**config, flax_labels=adapter is compat.DPMSolverMultistepAdapter)
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        out = loop(ours, ours.create_state(), 10, x)
        noisy = ours.add_noise(ours.create_state(), x, x, jnp.array([500, 20]))
    assert np.all(np.isfinite(out)) and noisy.shape == x.shape


def learned_model(x, t):
    """A stand-in for a learned-variance model (iDDPM, DiT): the noise prediction, then the variance half in
    [-1, 1], along the channel axis."""
    eps = model(x, t)
    return jnp.concatenate([eps, jnp.sin(x + eps)], axis=1)


#: a loop of 10 float32 steps whose arithmetic the two runs order differently (the adapter's step is traced in a
#: fori_loop, sample's in a scan): each step may round each element differently by a few ulp of the sample's
#: magnitude, so the results agree to about steps * 8 * eps32 of max|x| (measured: at most 3.0e-7 for 10 steps).
LOOP_TOL = 10 * 8 * float(jnp.finfo(jnp.float32).eps)


@pytest.mark.slow
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_the_ddpm_adapter_is_sample_with_the_ancestral_predictor(x, variance_type):
    """DDPMAdapter in the pipeline's loop (10 of 1000 steps) equals sv.sample(..., predictor='ancestral') of the
    same config and grid with the key given to create_state (each sample's noise at step k its slot 1 + k), to
    float32 rounding; sample 0 of a batch of 1 equals sample 0 of the batch of 2 (its noise is its own)."""
    fn = learned_model if variance_type == "learned_range" else model
    ours = compat.DDPMAdapter(**SD_SCHEDULE, variance_type=variance_type)
    key = jax.random.key(5)
    got = loop(ours, ours.create_state(key=key), 10, x, model=fn)
    ref = sv.sample(ours.stepper(10).state, lambda y, t: fn(y, t.astype(jnp.int32)), key, SHAPE, x_init=x,
                    predictor="ancestral")
    assert rel(got, ref) <= LOOP_TOL
    if variance_type == "fixed_small":
        assert rel(loop(ours, ours.create_state(key=key), 10, x[:1], model=fn), got[:1]) <= LOOP_TOL


@pytest.mark.slow
@pytest.mark.parametrize("variance_type,clip_sample", [("fixed_small", True), ("fixed_large", False)])
def test_a_ddpm_adapter_step_is_the_flax_ddpm_step_on_the_training_grid(x64, variance_type, clip_sample, monkeypatch):
    """One step at a time against FlaxDDPMScheduler.step, both in float64, on a full grid (10 training labels, 10
    steps: the one grid where the Flax class's step from t to t - 1 is the step taken), each call fed the same
    sample and model output. The Flax class's noise is sqrt(var) * normal(split(key, 1)[0]) for t > 0 (its step's
    code), so its mean is its prev_sample less that term: the adapter's mean (its state's memory) equals it, its
    noise term (prev_sample - mean) equals sqrt(var) times each sample's own draw (slot 1 + k of fold_in(key, b)),
    and the last call (label 0) returns the mean, as the Flax class adds no noise there. A ``key`` given to step
    is ignored. Tolerance: float64 (eps 2.2e-16) coefficients computed by other formulas (the Flax class's cumprod,
    sdevp_jax's schedule), the mean's coefficients amplifying their error by at most
    max 1/(1 - alphas_cumprod) = 1/beta_0 = 100: 1e-12 relative."""
    # the Flax class's "fixed_small" calls jnp.clip(v, a_min=...), a keyword this jax's clip no longer has: run its
    # code as written against the older signature
    clip = jnp.clip
    monkeypatch.setattr(jnp, "clip", lambda a, a_min=None, a_max=None, **kw: clip(a, a_min, a_max, **kw))
    config = dict(num_train_timesteps=10, beta_start=0.01, beta_end=0.2, variance_type=variance_type,
                  clip_sample=clip_sample)
    flax = diffusers.FlaxDDPMScheduler(**config, dtype=jnp.float64)
    fstate = flax.set_timesteps(flax.create_state(), 10)
    ours = compat.DDPMAdapter(**config, dtype=jnp.float64)
    key = jax.random.key(3)
    shape = (2, 2, 3, 3)
    state = ours.set_timesteps(ours.create_state(key=key), 10, shape)
    np.testing.assert_array_equal(np.asarray(state.timesteps), np.asarray(fstate.timesteps))
    inputs = jax.random.normal(jax.random.key(4), (10, 2) + shape, jnp.float64)
    for k in range(10):
        sample, output = inputs[k, 0], 1.5 * inputs[k, 1]
        t = int(fstate.timesteps[k])
        flax_key = jax.random.key(100 + k)
        want = flax.step(fstate, output, t, sample, key=flax_key).prev_sample
        flax_noise = jax.random.normal(jax.random.split(flax_key, num=1)[0], shape, jnp.float64)
        flax_std = jnp.sqrt(flax._get_variance(fstate, t)) if t > 0 else 0.0
        want_mean = want - flax_std * flax_noise
        prev, after = ours.step(state, output, jnp.int32(t), sample, key=jax.random.key(9)).to_tuple()
        again, _ = ours.step(state, output, jnp.int32(t), sample).to_tuple()
        np.testing.assert_array_equal(np.asarray(prev), np.asarray(again))
        assert rel(after.solver_state, want_mean) <= 1e-12
        if t > 0:
            z = per_sample_normal(state.sample_keys, 1 + k, shape[1:], jnp.float64)
            assert rel(prev - after.solver_state, flax_std * z) <= 1e-12
        else:
            np.testing.assert_array_equal(np.asarray(prev), np.asarray(after.solver_state))
        state = after


def test_the_ddpm_adapter_is_served_by_name():
    assert compat.adapter_for("FlaxDDPMScheduler") is compat.DDPMAdapter
    assert sv.DDPMAdapter is compat.DDPMAdapter
    with pytest.raises(ValueError, match="draws noise: pass key="):
        compat.DDPMAdapter().set_timesteps(compat.DDPMAdapter().create_state(), 10, SHAPE)


PNDM_CONFIGS = {"sd": (SD_PNDM, 10), "offset0": (dict(SD_PNDM, steps_offset=0), 10),
                "alpha-to-one": (dict(SD_PNDM, set_alpha_to_one=True), 10),
                "prk": (dict(SD_PNDM, skip_prk_steps=False), 10),
                # 7 steps: 142 labels a step, an odd count, diffusers' midpoint calls one label off the time midpoint
                "prk-offset0-odd": (dict(SD_PNDM, skip_prk_steps=False, steps_offset=0), 7)}


@pytest.mark.parametrize("config", list(PNDM_CONFIGS))
def test_the_pndm_adapters_calls_are_the_flax_classs(config):
    """The labels of the calls (repeated: a warm-up step's last call and the next step's first at the same
    point, the pseudo Runge-Kutta midpoint's two calls) are FlaxPNDMScheduler's timesteps; with steps_offset = 0
    the Flax class has one more call, from label 0 to label 0, which leaves the sample as it is."""
    cfg, steps = PNDM_CONFIGS[config]
    flax = diffusers.FlaxPNDMScheduler(**cfg)
    ours = compat.PNDMAdapter(**cfg)
    want = np.asarray(flax.set_timesteps(flax.create_state(), steps, SHAPE).timesteps)
    got = np.asarray(ours.set_timesteps(ours.create_state(), steps, SHAPE).timesteps)
    assert ours.stepper(steps).num_calls == len(got)
    np.testing.assert_array_equal(got, want[:len(got)])
    assert len(want) - len(got) == (1 if cfg["steps_offset"] == 0 and not cfg["set_alpha_to_one"] else 0)


@pytest.mark.slow
@pytest.mark.parametrize("config", list(PNDM_CONFIGS))
def test_the_pndm_adapter_steps_as_the_flax_scheduler_and_sample_ode(x, config):
    """In the Flax pipeline's jitted loop (num_inference_steps calls, int32 labels) the adapter equals
    FlaxPNDMScheduler; over all its timesteps (the torch pipelines' loop) it equals sv.sample_ode with pndm and
    the config's warm-up on the same grid (the model fed the same int32 labels), and, but with set_alpha_to_one
    (the Flax class's last step goes to label 0's alphas_cumprod, not 1), FlaxPNDMScheduler looped as long."""
    cfg, steps = PNDM_CONFIGS[config]
    flax = diffusers.FlaxPNDMScheduler(**cfg)
    ours = compat.PNDMAdapter(**cfg)
    assert rel(loop(ours, ours.create_state(), steps, x), loop(flax, flax.create_state(), steps, x)) <= 1e-5
    stepper = ours.stepper(steps)
    method, options = stepper.state.diffusers_config.solver_options()
    assert method == "pndm" and options["warmup"] == ("improved_euler" if cfg["skip_prk_steps"] else "prk_diffusers")
    got = loop(ours, ours.create_state(), steps, x, calls=stepper.num_calls)
    want = loop(flax, flax.create_state(), steps, x, calls=stepper.num_calls)
    assert (rel(got, want) <= 1e-5) != cfg["set_alpha_to_one"]
    ref = sv.sample_ode(stepper.state, lambda y, t: model(y, t.astype(jnp.int32)), None, SHAPE, x_init=x,
                        method=method, **options)
    assert rel(got, ref) <= 1e-5


def test_the_pndm_adapters_first_two_calls_are_the_improved_euler_step(x):
    """Call 0 returns the transfer part (Liu et al. 2022, eq. 9) from the first label to the second with the
    first prediction; call 1, given the prediction there, the transfer of the starting sample with the mean of
    the two (pseudo improved Euler); a linear prediction in the sample makes both derivable by hand. Strict
    promotion (the suite's): the adapter's arithmetic is dtype- and rank-clean."""
    ours = compat.PNDMAdapter(**SD_PNDM)
    state = ours.set_timesteps(ours.create_state(), 10, SHAPE)
    acp = np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2)
    a0, a1 = acp[901], acp[801]

    def phi(x, eps):  # eq. 9, in the form diffusers writes it
        return (a1 / a0) ** 0.5 * x - (a1 - a0) * eps / (a0 * (1 - a1) ** 0.5 + (a0 * (1 - a0) * a1) ** 0.5)

    x64 = np.asarray(x, np.float64)
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        pred, state = ours.step(state, 0.5 * x, 901, x).to_tuple()
        assert rel(pred, phi(x64, 0.5 * x64)) <= 1e-5
        out, state = ours.step(state, 0.25 * pred, 801, pred).to_tuple()
    assert rel(out, phi(x64, 0.5 * (0.5 * x64 + 0.25 * np.asarray(pred, np.float64)))) <= 1e-5
    assert int(state.solver_state[-1]) == 2
