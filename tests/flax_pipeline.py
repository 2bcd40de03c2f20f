"""A tiny diffusers 0.39 Flax Stable Diffusion pipeline, built from random weights and a made-up vocabulary
(nothing downloaded), for tests/test_compat_pipeline.py and benchmarks/compat_step.py.

UNet, VAE and CLIP text encoder of diffusers' and transformers' own Flax classes, at the smallest sizes their
group norms allow (the UNet's 32 groups need 32 channels per block); 16 x 16 images, 4 x 8 x 8 latents.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HEIGHT = WIDTH = 16
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue"]


def quiet():
    """Silence diffusers' Flax deprecation warnings (every Flax class logs one)."""
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Flax classes are deprecated.*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def tokenizer(folder: Path):
    """A CLIPTokenizer on a vocabulary of single characters, whole ``WORDS`` and the two special tokens."""
    from transformers import CLIPTokenizer

    chars = sorted(set("".join(WORDS)))
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges = []
    for word in WORDS:  # merge each word left to right into one token
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if pieces[0] not in vocab:
                vocab.append(pieces[0])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)


def random_params(init, seed: int):
    """Random weights of the shapes ``init(key)`` makes, without running it (its compilation, and JAX's per-shape
    random draws, are the slow part on a CPU): norm scales 1, biases 0, every other array normal (NumPy's
    generator of ``seed``) with variance 1/fan-in (the fan-in: all but the last axis)."""
    shapes = jax.eval_shape(init, jax.random.key(0))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = str(path[-1])
        if "scale" in name:
            value = np.ones(leaf.shape, np.float32)
        elif "bias" in name:
            value = np.zeros(leaf.shape, np.float32)
        else:
            value = rng.standard_normal(leaf.shape).astype(np.float32) / np.float32(np.sqrt(max(1, np.prod(leaf.shape[:-1]))))
        out.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def components(folder: Path, seed: int = 0):
    """``(vae, text_encoder, tokenizer, unet, params)``: the pipeline's parts with random weights."""
    quiet()
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from transformers import CLIPTextConfig, FlaxCLIPTextModel

    tok = tokenizer(folder)
    unet = FlaxUNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                    layers_per_block=1, attention_head_dim=4, cross_attention_dim=16,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet_params = random_params(unet.init_weights, seed)
    vae = FlaxAutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                            latent_channels=4, norm_num_groups=4, sample_size=HEIGHT,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae_params = random_params(vae.init_weights, seed + 1)
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=8, projection_dim=16,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = FlaxCLIPTextModel(config, seed=seed, _do_init=False)
    text_params = random_params(lambda key: text_encoder.init_weights(key, (1, 8)), seed + 2)
    params = {"unet": unet_params, "vae": vae_params, "text_encoder": text_params}
    return vae, text_encoder, tok, unet, params


def pipeline(parts, scheduler, state, img2img: bool = False):
    """``(pipe, params)``: diffusers' FlaxStableDiffusionPipeline (or its img2img one) with ``scheduler``."""
    quiet()
    from diffusers import FlaxStableDiffusionImg2ImgPipeline, FlaxStableDiffusionPipeline

    vae, text_encoder, tok, unet, params = parts
    cls = FlaxStableDiffusionImg2ImgPipeline if img2img else FlaxStableDiffusionPipeline
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
               safety_checker=None, feature_extractor=None)
    return pipe, {**params, "scheduler": state}


def images(pipe, params, steps: int, seed: int = 0, prompt=("a photo of a cat", "a red dog"), guidance=7.5):
    """The pipeline's images (``(batch, H, W, 3)`` floats in [0, 1]), unjitted (``jit=False``)."""
    ids = pipe.prepare_inputs(list(prompt))
    # a 0-d array: a Python float becomes one scale per prompt, which the unjitted path wraps to (1, batch)
    out = pipe(ids, params, jax.random.key(seed), num_inference_steps=steps, height=HEIGHT, width=WIDTH,
               guidance_scale=jnp.float32(guidance), jit=False)
    return np.asarray(out.images)


def images_pmapped(pipe, params, steps: int, seed: int = 0, prompt=("a photo of a cat", "a red dog"), guidance=7.5):
    """The pipeline's images through its ``jit=True`` path: params replicated, prompts sharded and one key per
    device, as diffusers' Flax examples call it (``pmap`` over ``jax.local_device_count()`` devices)."""
    from flax.jax_utils import replicate
    from flax.training.common_utils import shard

    n = jax.local_device_count()
    ids = shard(pipe.prepare_inputs(list(prompt) * n))
    keys = jax.random.split(jax.random.key(seed), n)
    out = pipe(ids, replicate(params), keys, num_inference_steps=steps, height=HEIGHT, width=WIDTH,
               guidance_scale=jnp.full((n, 1), guidance, jnp.float32), jit=True)
    return np.asarray(out.images).reshape(-1, HEIGHT, WIDTH, 3)


def img2img(pipe, params, steps: int, strength: float = 0.6, seed: int = 0, prompt=("a photo of a cat", "a red dog")):
    """The img2img pipeline's images from a fixed smooth start image (given as the array prepare_inputs would
    make: its PIL path rounds sizes down to multiples of 32)."""
    ids = pipe.tokenizer(list(prompt), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="np").input_ids
    grid = jnp.linspace(-1.0, 1.0, HEIGHT)
    start = jnp.stack([jnp.sin(3 * grid)[:, None] * jnp.cos(2 * grid)[None, :]] * 3)[None]
    start = jnp.broadcast_to(start, (len(prompt), 3, HEIGHT, WIDTH))
    out = pipe(ids, start, params, jax.random.key(seed), strength=strength, num_inference_steps=steps,
               height=HEIGHT, width=WIDTH, guidance_scale=jnp.float32(7.5), jit=False)
    return np.asarray(out.images)


def guided_model(parts, prompt=("a photo of a cat", "a red dog"), guidance=7.5):
    """The pipeline's guided UNet as a ``model_fn(x, t)`` for sv.sample_ode: the text and empty-prompt
    embeddings, the UNet on both halves with the ``int32`` timestep, combined as the pipeline combines them."""
    vae, text_encoder, tok, unet, params = parts
    ids = tok(list(prompt), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="np").input_ids
    empty = tok([""] * len(prompt), padding="max_length", max_length=ids.shape[-1], return_tensors="np").input_ids
    context = jnp.concatenate([text_encoder(empty, params=params["text_encoder"])[0],
                               text_encoder(ids, params=params["text_encoder"])[0]])
    scale = jnp.array([guidance], jnp.float32)

    def model_fn(x, t):
        both = jnp.concatenate([x] * 2)
        step = jnp.broadcast_to(jnp.asarray(t).astype(jnp.int32).reshape(-1)[0], both.shape[:1])
        out = unet.apply({"params": params["unet"]}, both, step, encoder_hidden_states=context).sample
        uncond, text = jnp.split(out, 2, axis=0)
        return uncond + scale * (text - uncond)

    return model_fn


def decode(parts, latents):
    """The pipeline's decoding of final latents into images in [0, 1]."""
    vae, _, _, _, params = parts
    image = vae.apply({"params": params["vae"]}, latents / vae.config.scaling_factor, method=vae.decode).sample
    return np.asarray((image / 2 + 0.5).clip(0, 1).transpose(0, 2, 3, 1))


def initial_latents(batch: int = 2, seed: int = 0):
    """The latents the text-to-image pipeline draws from ``seed`` (``jax.random.normal(key, shape)``)."""
    return jax.random.normal(jax.random.key(seed), (batch, 4, HEIGHT // 2, WIDTH // 2), jnp.float32)
