"""A small convolutional embedding network for tiny images (digits, glyphs)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class SmallConvNet(nn.Module):
    """Conv(3x3)-ReLU stages (2x2 average pooling between stages), global average pooling,
    a hidden dense layer and a linear embedding head (kaiming-normal fan-out kernel times
    `init_norm_multiplier`: with vMF losses the embedding norm is the concentration, so this sets its
    initial scale).

    Input [B, H, W, C] float; output {'embedding': [B, embed_dim], 'features': [B, hidden]}.
    `embed_dim=0` builds no embedding head (a backbone for EmbeddingNet): output {'features'} only.
    """

    embed_dim: int = 64
    widths: Sequence[int] = (32, 64, 128)
    hidden: int = 256
    init_norm_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        del train
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}")(x))
            if i < len(self.widths) - 1:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = jnp.mean(x, axis=(1, 2))
        features = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
        if self.embed_dim == 0:
            return {"features": features}
        embedding = nn.Dense(
            self.embed_dim,
            kernel_init=nn.initializers.variance_scaling(2.0 * self.init_norm_multiplier**2, "fan_out", "normal"),
            name="embedding",
        )(features)
        return {"embedding": embedding, "features": features}
