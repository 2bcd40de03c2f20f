"""A small Flax UNet epsilon-network, to measure the scheduler's share of a realistic step.

Channels-first input ``(batch, C, H, W)`` like diffusers; one down/up level with
residual blocks and a sinusoidal time embedding. Untrained: only its cost matters.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, h, emb):
        skip = h if h.shape[-1] == self.features else nn.Conv(self.features, (1, 1))(h)
        h = nn.Conv(self.features, (3, 3))(nn.silu(nn.GroupNorm(num_groups=8)(h)))
        h = h + nn.Dense(self.features)(emb)[:, None, None, :]
        h = nn.Conv(self.features, (3, 3))(nn.silu(nn.GroupNorm(num_groups=8)(h)))
        return skip + h


class SmallUNet(nn.Module):
    features: int = 64

    @nn.compact
    def __call__(self, x, t):
        freqs = jnp.exp(jnp.linspace(0.0, np.log(1000.0), 32, dtype=x.dtype))[None, :]
        emb = nn.Dense(4 * self.features)(jnp.concatenate([jnp.sin(t[:, None] * freqs),
                                                           jnp.cos(t[:, None] * freqs)], axis=-1))
        h = nn.Conv(self.features, (3, 3))(jnp.transpose(x, (0, 2, 3, 1)))
        h1 = ResBlock(self.features)(h, emb)
        h2 = nn.Conv(2 * self.features, (3, 3), strides=(2, 2))(h1)
        h2 = ResBlock(2 * self.features)(h2, emb)
        h2 = ResBlock(2 * self.features)(h2, emb)
        up = nn.ConvTranspose(self.features, (2, 2), strides=(2, 2))(h2)
        h = ResBlock(self.features)(jnp.concatenate([up, h1], axis=-1), emb)
        out = nn.Conv(x.shape[1], (3, 3))(nn.silu(nn.GroupNorm(num_groups=8)(h)))
        return jnp.transpose(out, (0, 3, 1, 2))
