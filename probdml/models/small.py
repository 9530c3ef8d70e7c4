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
    `dtype`: the compute dtype of the layers (models.COMPUTE_DTYPES; None: that of the inputs); global
    pooling and the outputs are at least float32.
    """

    embed_dim: int = 64
    widths: Sequence[int] = (32, 64, 128)
    hidden: int = 256
    init_norm_multiplier: float = 1.0
    dtype: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        del train
        dtype = compute_dtype_or_none(self.dtype)
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Conv(width, (3, 3), dtype=dtype, name=f"conv{i}")(x))
            if i < len(self.widths) - 1:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
        features = nn.relu(nn.Dense(self.hidden, dtype=dtype, name="hidden")(x))
        if self.embed_dim == 0:
            return {"features": features.astype(jnp.promote_types(features.dtype, jnp.float32))}
        embedding = nn.Dense(
            self.embed_dim,
            kernel_init=nn.initializers.variance_scaling(2.0 * self.init_norm_multiplier**2, "fan_out", "normal"),
            dtype=dtype,
            name="embedding",
        )(features)
        return {"embedding": embedding.astype(jnp.promote_types(embedding.dtype, jnp.float32)),
                "features": features.astype(jnp.promote_types(features.dtype, jnp.float32))}


def compute_dtype_or_none(name: str | None):
    """None (the dtype of the inputs and parameters, as flax infers it) or the named dtype."""
    return None if name is None else jnp.dtype(name)
