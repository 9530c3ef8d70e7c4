"""A small ResNet-style embedding network for tiny grayscale images (glyphs, digits).

Stateless normalization (GroupNorm) so the network needs no batch statistics: an image's
embedding does not depend on the rest of its batch, in training or evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from probdml.models.small import compute_dtype_or_none

POOLINGS = ("flatten", "avg", "avgmax")


class BasicBlock(nn.Module):
    """y = relu(x' + GN(conv3x3(relu(GN(conv3x3_stride(x)))))), x' = x, or GN(conv1x1_stride(x))
    when the stride or the width changes (He et al. 2016, with GroupNorm instead of BatchNorm).
    The second GroupNorm's scale starts at zero, so every block starts as the identity map."""

    width: int
    stride: int = 1
    groups: int = 8
    dtype: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = min(self.groups, self.width)
        strides = (self.stride, self.stride)
        dt = compute_dtype_or_none(self.dtype)
        y = nn.Conv(self.width, (3, 3), strides, use_bias=False, dtype=dt, name="conv1")(x)
        y = nn.relu(nn.GroupNorm(num_groups=groups, dtype=dt, name="norm1")(y))
        y = nn.Conv(self.width, (3, 3), use_bias=False, dtype=dt, name="conv2")(y)
        y = nn.GroupNorm(num_groups=groups, scale_init=nn.initializers.zeros, dtype=dt, name="norm2")(y)
        if self.stride != 1 or x.shape[-1] != self.width:
            x = nn.Conv(self.width, (1, 1), strides, use_bias=False, dtype=dt, name="proj")(x)
            x = nn.GroupNorm(num_groups=groups, dtype=dt, name="proj_norm")(x)
        return nn.relu(x + y)


class SmallResNet(nn.Module):
    """Stem conv3x3 (widths[0]) + GroupNorm + ReLU; stage i = `blocks_per_stage` BasicBlocks of
    width widths[i] (stride 2 in the first block of every stage after the first); a head
    ('flatten': the final [H', W', C'] map flattened, position-sensitive; 'avg': mean over
    positions; 'avgmax': mean + max over positions); a linear embedding layer.

    Input [B, H, W, C] float; output {'embedding': [B, embed_dim], 'features': [B, F]} with
    F = H' * W' * widths[-1] for 'flatten' (H' = H / 2^(stages - 1)), else widths[-1].
    Global pooling needs depth to encode shape; on 32x32 glyphs with three blocks it barely
    trains, while the flattened map trains fast (the position of strokes is the signal).
    `embed_dim=0` builds no embedding head (a backbone for EmbeddingNet): output {'features'} only.
    `dtype`: the compute dtype of the layers (models.COMPUTE_DTYPES; None: that of the inputs); GroupNorm
    statistics (flax computes them in float32), pooling and the outputs are at least float32.
    """

    embed_dim: int = 64
    widths: Sequence[int] = (32, 64, 128)
    blocks_per_stage: int = 1
    groups: int = 8
    pooling: str = "flatten"
    dtype: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        del train
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; valid choices: {', '.join(POOLINGS)}")
        if self.blocks_per_stage < 1 or not self.widths:
            raise ValueError(
                f"need blocks_per_stage >= 1 and at least one stage, got {self.blocks_per_stage}, {self.widths}"
            )
        dt = compute_dtype_or_none(self.dtype)
        x = nn.Conv(self.widths[0], (3, 3), use_bias=False, dtype=dt, name="stem")(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(self.groups, self.widths[0]), dtype=dt, name="stem_norm")(x))
        for i, width in enumerate(self.widths):
            for j in range(self.blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(width, stride, self.groups, self.dtype, name=f"stage{i}_block{j}")(x)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.pooling == "flatten":
            features = x.reshape(x.shape[0], -1)
        else:
            features = jnp.mean(x, axis=(1, 2))
            if self.pooling == "avgmax":
                features = features + jnp.max(x, axis=(1, 2))
        if self.embed_dim == 0:
            return {"features": features}
        embedding = nn.Dense(
            self.embed_dim,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            dtype=dt,
            name="embedding",
        )(features)
        return {"embedding": embedding.astype(features.dtype), "features": features}

