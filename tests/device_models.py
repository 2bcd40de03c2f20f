"""Models of several kinds for the multi-device checks (tests/test_devices.py, benchmarks/device_count.py).

Bitwise claims about devices are checked on more than the embedded mixture: XLA
fuses and rounds exp / log / softmax, dense layers and convolutions each in its
own way, and a partitioned program may do so differently from a single-device one.
Every factory takes the package (``sv``, so a benchmark can pass another
checkout's) and a scheduler state, and returns a :class:`Model`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 3


class Model(NamedTuple):
    model_fn: Callable  # (x, t) or, with ``guided``, (x, t, cond)
    event_shape: tuple
    guided: bool = False  # called with cond: class indices in [0, NUM_CLASSES), shape (batch,)


def make_cond(num_samples: int, seed: int = 1) -> np.ndarray:
    """Class indices per sample, int32, shape ``(num_samples,)``."""
    return np.random.default_rng(seed).integers(0, NUM_CLASSES, num_samples).astype(np.int32)


def toy_mixture(sv, state) -> Model:
    """The embedded exact mixture in 2-D."""
    return Model(sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(2)), (2,))


def hand_mixture(sv, state) -> Model:
    """A 3-D, 4-component isotropic Gaussian mixture's exact noise prediction, written with exp / log /
    log-softmax in a components-first layout ``(K, B, D)`` (the package's mixture is batch-first), under
    the linear schedule with beta_min = 0.1, beta_max = 20 (the default state's), coded here."""
    means = jnp.asarray([[1.0, -0.5, 0.3], [-1.2, 0.4, 0.8], [0.2, 1.1, -0.9], [0.0, -1.0, -0.2]], jnp.float32)
    log_w = jnp.log(jnp.asarray([0.4, 0.3, 0.2, 0.1], jnp.float32))
    var0 = jnp.float32(0.2) ** 2

    def model_fn(x, t):
        t = sv.time_from_model_time(state, t).astype(jnp.float32)
        log_alpha = -0.25 * t * t * (20.0 - 0.1) - 0.5 * t * 0.1  # (B,)
        alpha = jnp.exp(log_alpha)[None, :, None]  # (1, B, 1)
        sigma2 = -jnp.expm1(2.0 * log_alpha)[None, :, None]
        var = alpha * alpha * var0 + sigma2
        diff = x[None] - alpha * means[:, None, :]  # (K, B, D)
        log_p = log_w[:, None] - 0.5 * jnp.sum(diff * diff / var + jnp.log(2 * jnp.pi * var), axis=-1)
        resp = jnp.exp(jax.nn.log_softmax(log_p, axis=0))[..., None]  # (K, B, 1)
        score = -jnp.sum(resp * diff / var, axis=0)
        return -jnp.sqrt(sigma2[0]) * score

    return Model(model_fn, (3,))


def _time_features(t, width):
    freqs = jnp.exp(jnp.linspace(0.0, 4.0, width // 2, dtype=jnp.float32))
    angles = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def flax_mlp(sv, state, guided: bool = False) -> Model:
    """A 3-layer Flax (linen) MLP with SiLU and a sinusoidal time embedding, random weights, on 5-D samples;
    with ``guided`` it embeds a class (``NUM_CLASSES`` is the null class) and is wrapped in ``sv.cfg``."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, t, cond=None):
            h = jnp.concatenate([x, _time_features(t, 16)], axis=-1)
            if cond is not None:
                h = jnp.concatenate([h, nn.Embed(NUM_CLASSES + 1, 8)(cond)], axis=-1)
            h = nn.silu(nn.Dense(64)(h))
            h = nn.silu(nn.Dense(64)(h))
            return nn.Dense(x.shape[-1])(h)

    dim = 5
    net = MLP()
    x0, t0 = jnp.zeros((2, dim), jnp.float32), jnp.zeros((2,), jnp.float32)
    if guided:
        params = net.init(jax.random.key(11), x0, t0, jnp.zeros((2,), jnp.int32))
        model = sv.cfg(lambda x, t, c: net.apply(params, x, t, c), 1.5, NUM_CLASSES)
        return Model(model, (dim,), guided=True)
    params = net.init(jax.random.key(10), x0, t0)
    return Model(lambda x, t: net.apply(params, x, t), (dim,))


def flax_conv(sv, state) -> Model:
    """A small Flax (linen) conv net (3x3 convs, GroupNorm, SiLU, the time as an added channel bias), random
    weights, on 6x6x2 (NHWC) samples."""
    import flax.linen as nn

    class ConvNet(nn.Module):
        @nn.compact
        def __call__(self, x, t):
            emb = nn.Dense(16)(_time_features(t, 16))[:, None, None, :]
            h = nn.Conv(16, (3, 3))(x) + emb
            h = nn.silu(nn.GroupNorm(num_groups=4)(h))
            h = nn.silu(nn.Conv(16, (3, 3))(h))
            return nn.Conv(x.shape[-1], (3, 3))(h)

    shape = (6, 6, 2)
    net = ConvNet()
    params = net.init(jax.random.key(12), jnp.zeros((2, *shape), jnp.float32), jnp.zeros((2,), jnp.float32))
    return Model(lambda x, t: net.apply(params, x, t), shape)


def class_mixture(sv, state) -> Model:
    """The embedded class-conditional mixture under classifier-free guidance (``sv.cfg``, w = 2)."""
    model = sv.mixtures.make_class_model(state, sv.mixtures.default_class_mixture(2))
    return Model(sv.cfg(model, 2.0, sv.NULL_CLASS), (2,), guided=True)


#: name -> factory(sv, state)
MODELS: dict[str, Callable[[Any, Any], Model]] = {
    "toy_mixture": toy_mixture,
    "hand_mixture": hand_mixture,
    "flax_mlp": flax_mlp,
    "flax_conv": flax_conv,
    "cfg_class_mixture": class_mixture,
    "cfg_flax_mlp": lambda sv, state: flax_mlp(sv, state, guided=True),
}


def make_draw(sv, state, model: Model, method: str, extra: Optional[dict] = None) -> Callable:
    """``draw(key, batch, index_offset, cond)`` for ``sv.distributed.sample_on_devices``: ``sv.sample``
    for a predictor, ``sv.sample_ode`` for an ODE / SDE solver method."""
    extra = dict(extra or {})
    kind = sv.METHODS[method].kind

    def draw(key, batch, index_offset, cond=None):
        shape = (batch, *model.event_shape)
        if kind == "predictor":
            return sv.sample(state, model.model_fn, key, shape, predictor=method, index_offset=index_offset,
                             cond=cond, **extra)
        return sv.sample_ode(state, model.model_fn, key, shape, method=method, index_offset=index_offset,
                             cond=cond, **extra)

    return draw


def run_child(script: str, args: list[str], timeout: float = 900) -> dict:
    """Run a test file as a child process (its own forced device count) and return its last line's JSON.

    The repository root goes on the child's ``PYTHONPATH``, so it imports this checkout's
    ``sdevp_jax``; a child that fails shows the end of its stderr.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
