"""Train a small Flax epsilon-network on scikit-learn's 8x8 digits, sample it, and report bits/dim.

Everything is local: the digits ship with scikit-learn (no download). The
network is an MLP on the 64 pixels with a sinusoidal embedding of t, trained
with ``sv.dsm_loss`` and optax's Adam; samples come from ``sv.sample`` (the
reference Euler-Maruyama loop) and the held-out likelihood from
``sv.bits_per_dim`` (probability-flow ODE, Hutchinson trace).

Pixels take 17 levels (0..16); they are dequantized with uniform noise of one
level and scaled to [-1, 1], so bits/dim counts 17 bins (``num_bins=17``).

    pip install -e '.[examples]'
    python examples/train_digits.py --out digits_run

Writes ``OUT/digits_samples.png`` (an 8x8 grid of samples) and
``OUT/digits_metrics.json``; refuses to overwrite them without ``--force``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sdevp_jax as sv
from sdevp_jax._io import atomic_write

LEVELS = 17  # the digits' pixel values are 0..16


class EpsMLP(nn.Module):
    """eps(x, t): a residual MLP on flattened pixels, conditioned on t through a sinusoidal embedding."""

    width: int = 256
    depth: int = 3

    @nn.compact
    def __call__(self, x, t):
        freqs = jnp.exp(jnp.linspace(0.0, np.log(1000.0), 16, dtype=x.dtype))[None, :]
        emb = jnp.concatenate([jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], axis=-1)
        emb = nn.Dense(self.width)(emb)
        h = nn.Dense(self.width)(x)
        for _ in range(self.depth):
            h = h + nn.Dense(self.width)(nn.silu(nn.LayerNorm()(h) + emb))
        return nn.Dense(x.shape[-1])(nn.silu(h))


def load_digits(seed: int):
    """Dequantized digits in [-1, 1], shape (n, 64), split into train and held-out test."""
    from sklearn.datasets import load_digits as sklearn_digits

    pixels = sklearn_digits().data.astype(np.float64)  # (1797, 64), values 0..16
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pixels))
    dequantized = (pixels[order] + rng.uniform(size=pixels.shape)) / LEVELS  # in [0, 1)
    x = (2.0 * dequantized - 1.0).astype(np.float32)
    return x[:1500], x[1500:]


def train_model(state, net, train, steps: int, batch_size: int, seed: int, log: bool = False):
    """``net``'s parameters after ``steps`` AdamW steps (cosine-decayed from 2e-3) on ``sv.dsm_loss`` over batches of
    ``train``; returns ``(params, losses, seconds)``. The key ``jax.random.key(seed)`` initialises the network, and
    step ``k`` draws its batch and noise from ``fold_in(key, k)``."""
    key = jax.random.key(seed)
    params = net.init(key, jnp.zeros((1, train.shape[1])), jnp.zeros((1,)))
    optimizer = optax.adamw(optax.cosine_decay_schedule(2e-3, steps), weight_decay=1e-4)
    opt_state = optimizer.init(params)
    data = jnp.asarray(train)

    @jax.jit
    def train_step(params, opt_state, key):
        k_batch, k_loss = jax.random.split(key)
        x0 = data[jax.random.randint(k_batch, (batch_size,), 0, data.shape[0])]
        loss, grads = jax.value_and_grad(
            lambda p: sv.dsm_loss(state, lambda x, t: net.apply(p, x, t), x0, k_loss))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    losses = []
    for step in range(steps):
        params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(key, step))
        losses.append(float(loss))
        if log and (step + 1) % max(1, steps // 10) == 0:
            print(f"step {step + 1:6d}  dsm loss (last 100 mean) {np.mean(losses[-100:]):.3f}", flush=True)
    return params, losses, time.perf_counter() - start


def save_grid(samples: np.ndarray, file) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.clip((samples[:64].reshape(-1, 8, 8) + 1.0) / 2.0, 0.0, 1.0)
    fig, axes = plt.subplots(8, 8, figsize=(6, 6))
    for ax, image in zip(axes.ravel(), images):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle("sdevp-jax: samples of an MLP trained on 8x8 digits")
    fig.tight_layout()
    fig.savefig(file, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sample-steps", type=int, default=1000)
    parser.add_argument("--num-test", type=int, default=297, help="held-out digits for bits/dim (at most 297)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("digits_run"))
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    args = parser.parse_args(argv)
    paths = [args.out / "digits_samples.png", args.out / "digits_metrics.json"]
    if any(p.exists() for p in paths) and not args.force:
        print(f"train_digits: {args.out} already has outputs; pass --force to overwrite", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    train, test = load_digits(args.seed)
    state = sv.create_state()
    net = EpsMLP()
    params, losses, train_seconds = train_model(state, net, train, args.train_steps, args.batch_size, args.seed,
                                                log=True)

    def model_fn(x, t):
        return net.apply(params, x, t)

    sample_state = sv.set_timesteps(state, args.sample_steps)
    samples = np.asarray(jax.jit(lambda k: sv.sample(sample_state, model_fn, k, (64, 64)))(jax.random.key(1)))
    atomic_write(paths[0], lambda f: save_grid(samples, f))

    bpd = np.asarray(jax.jit(lambda x, k: sv.bits_per_dim(state, model_fn, x, k, data_range="[-1, 1]",
                                                          num_bins=LEVELS))(jnp.asarray(test[: args.num_test]),
                                                                            jax.random.key(2)))
    metrics = {"train_steps": args.train_steps, "train_seconds": train_seconds,
               "final_loss_mean_last_100": float(np.mean(losses[-100:])), "first_loss_mean_first_100":
               float(np.mean(losses[:100])), "test_digits": int(len(bpd)), "bits_per_dim_mean": float(bpd.mean()),
               "bits_per_dim_stderr": float(bpd.std(ddof=1) / np.sqrt(len(bpd))) if len(bpd) > 1 else None,
               "uniform_baseline_bits_per_dim": float(np.log2(LEVELS)), "device": str(jax.devices()[0]),
               "jax": jax.__version__}
    atomic_write(paths[1], lambda f: f.write((json.dumps(metrics, indent=1) + "\n").encode()))
    print(f"held-out bits/dim: {metrics['bits_per_dim_mean']:.3f} +- {metrics['bits_per_dim_stderr'] or 0:.3f} "
          f"(uniform over {LEVELS} levels: {np.log2(LEVELS):.3f}); trained {args.train_steps} steps in "
          f"{train_seconds:.0f} s; wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
