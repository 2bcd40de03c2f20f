"""The adapters inside the unmodified diffusers 0.39 FlaxStableDiffusionPipeline and its img2img pipeline, with a
tiny random UNet, VAE and CLIP text encoder (tests/flax_pipeline.py; nothing downloaded): each adapter against the
pipeline's own Flax scheduler, sv.sample_ode on the same grid against the adapter, and a saved pipeline's reload.

Needs the flax-pipeline extra (diffusers 0.39, transformers 4.57). Each pipeline call compiles its denoising
loop (about 10 s on a shared 2-core CPU): every test here is slow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers", reason="the flax-pipeline extra (diffusers==0.39, with its Flax "
                                "pipelines) is not installed: pip install -e '.[flax-pipeline]'")
pytest.importorskip("transformers", reason="the flax-pipeline extra (transformers==4.57, the CLIP text encoder) is "
                    "not installed: pip install -e '.[flax-pipeline]'")
if not hasattr(diffusers, "FlaxStableDiffusionPipeline"):
    pytest.skip("diffusers has no Flax pipelines (removed in 0.40): install the flax-pipeline extra, diffusers==0.39",
                allow_module_level=True)

import sdevp_jax as sv  # noqa: E402
from sdevp_jax import compat  # noqa: E402

import flax_pipeline as fp  # noqa: E402

pytestmark = pytest.mark.slow
SD_DDIM = dict(fp.SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
EULER = dict(fp.SD_SCHEDULE, timestep_spacing="leading")

CASES = {  # id: (Flax class, adapter, config, adapter options, steps)
    "ddim-10": ("FlaxDDIMScheduler", compat.DDIMAdapter, SD_DDIM, {}, 10),
    "dpm2m-10": ("FlaxDPMSolverMultistepScheduler", compat.DPMSolverMultistepAdapter, fp.SD_SCHEDULE,
                 {"flax_labels": True}, 10),
    "dpm2m-30": ("FlaxDPMSolverMultistepScheduler", compat.DPMSolverMultistepAdapter, fp.SD_SCHEDULE,
                 {"flax_labels": True}, 30),
    "euler-leading-10": ("FlaxEulerDiscreteScheduler", compat.EulerDiscreteAdapter, EULER, {}, 10),
}


@pytest.fixture(autouse=True)
def lenient():
    """diffusers' and transformers' Flax code promotes ranks and dtypes implicitly (the suite's conftest refuses
    both): allowed around the pipeline (the adapters run under strict promotion in tests/test_compat.py)."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        return fp.components(tmp_path_factory.mktemp("tokenizer"))


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def flax_and_adapter(parts, case, img2img=False):
    name, adapter, config, options, steps = CASES[case]
    flax = getattr(diffusers, name)(**config)
    ours = adapter(**config, **options)
    run = fp.img2img if img2img else fp.images
    want = run(*fp.pipeline(parts, flax, flax.create_state(), img2img), steps)
    got = run(*fp.pipeline(parts, ours, ours.create_state(), img2img), steps)
    return got, want, ours


@pytest.mark.parametrize("case", list(CASES))
def test_the_adapter_in_the_pipeline_gives_the_flax_schedulers_images(parts, case):
    """scheduler= and params["scheduler"] swapped, nothing else: the images agree within 1e-5 relative (float32
    both; the grid's coefficients computed in different orders)."""
    got, want, _ = flax_and_adapter(parts, case)
    assert got.shape == want.shape == (2, fp.HEIGHT, fp.WIDTH, 3)
    assert np.std(want) > 0.01  # not a constant image: the comparison can fail
    assert rel(got, want) <= 1e-5


def test_the_adapter_in_the_pmapped_pipeline_gives_the_flax_schedulers_images(parts):
    """The pipeline's jit=True path (pmap: the scheduler state replicated with the params, one key per device):
    the adapter's images equal the Flax scheduler's within 1e-5 relative."""
    name, adapter, config, options, steps = CASES["dpm2m-10"]
    flax = getattr(diffusers, name)(**config)
    ours = adapter(**config, **options)
    want = fp.images_pmapped(*fp.pipeline(parts, flax, flax.create_state()), steps)
    got = fp.images_pmapped(*fp.pipeline(parts, ours, ours.create_state()), steps)
    assert got.shape == want.shape and np.std(want) > 0.01
    assert rel(got, want) <= 1e-5


@pytest.mark.parametrize("case", ["ddim-10", "dpm2m-10"])
def test_the_adapter_in_the_img2img_pipeline_gives_the_flax_schedulers_images(parts, case):
    """img2img starts mid-grid (strength 0.6) from add_noise of the encoded image: the same images within 1e-5
    (the DPM-Solver warms up from its first step, as the Flax class's lower_order_nums does). The Flax Euler class
    cannot run img2img: its add_noise indexes its sigmas with the pipeline's float labels, a TypeError."""
    got, want, _ = flax_and_adapter(parts, case, img2img=True)
    assert np.std(want) > 0.01
    assert rel(got, want) <= 1e-5


@pytest.mark.parametrize("adapter,config,options", [
    (compat.DPMSolverMultistepAdapter, fp.SD_SCHEDULE, {"flax_labels": True}),
    (compat.UniPCMultistepAdapter, fp.SD_SCHEDULE, {}),
])
def test_sample_ode_on_the_same_grid_gives_the_adapters_images(parts, adapter, config, options):
    """sv.sample_ode with the adapter's state and solver, from the pipeline's initial latents, the pipeline's
    guided UNet as model_fn (fed the int32 label, as the pipeline feeds it), decoded as the pipeline decodes:
    the adapter's images within 1e-5 relative. UniPC has no Flax class in diffusers: this is its check in the
    pipeline (its parity with diffusers' torch UniPC is tests/test_solver_parity.py's)."""
    ours = adapter(**config, **options)
    got = fp.images(*fp.pipeline(parts, ours, ours.create_state()), 10)
    state = ours.stepper(10).state
    method, method_options = state.diffusers_config.solver_options()
    latents = sv.sample_ode(state, fp.guided_model(parts), None, (2, 4, 8, 8), x_init=fp.initial_latents(),
                            method=method, **method_options)
    want = fp.decode(parts, latents)
    assert rel(got, want) <= 1e-5


def test_a_pipeline_saved_with_an_adapter_reloads(parts, tmp_path):
    """save_pretrained records the scheduler as ["sdevp_jax", "DPMSolverMultistepAdapter"] in model_index.json;
    FlaxStableDiffusionPipeline.from_pretrained finds it (sdevp_jax.compat registers the library with diffusers'
    loader) and puts its state in params["scheduler"]; the reloaded pipeline's images equal the original's (to 1e-6
    relative: the same program and weights)."""
    import json

    ours = compat.DPMSolverMultistepAdapter(**fp.SD_SCHEDULE, flax_labels=True, solver_order=3)
    pipe, params = fp.pipeline(parts, ours, ours.create_state())
    pipe.save_pretrained(tmp_path, params={k: v for k, v in params.items() if k != "scheduler"})
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["sdevp_jax", "DPMSolverMultistepAdapter"]
    loaded, loaded_params = diffusers.FlaxStableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None,
                                                                               feature_extractor=None)
    assert isinstance(loaded.scheduler, compat.DPMSolverMultistepAdapter)
    assert isinstance(loaded_params["scheduler"], compat.AdapterState)
    assert loaded.scheduler.config.solver_order == 3 and loaded.scheduler.flax_labels
    np.testing.assert_allclose(fp.images(loaded, loaded_params, 10), fp.images(pipe, params, 10), rtol=0, atol=1e-6)
