"""`EmbeddingNet`: a backbone composed with embedding heads (IDML's two-head network, EL-nivMF's vMF net).

    image x -> backbone -> pooled features h [B, F] -> semantic head y = W_s h + b_s   ('semantic')
                                                    or vMF head z = (m W) h + b        ('vmf')
                                                    (+ uncertainty head u = act(W_u h + b_u), if
                                                       uncertainty_dim > 0; IDML)

Outputs a dict: 'embedding' [B, embed_dim] (y, optionally y / sqrt(||y||^2 + 1e-12); or z, whose norm
is the vMF concentration), 'uncertainty' [B, uncertainty_dim] (when the head exists; optionally
L2-normalised as in the official IDML code, specs/idml.md D1), 'features' h [B, F], and with
`normalize_embedding` 'embedding_norm' ||y|| [B] (the norm before normalisation, an uncertainty baseline).

Backbones (`backbone`): 'small_convnet' (SmallConvNet's pooled 'features', F = `hidden`; reads
`widths`, `hidden`), 'small_resnet' (SmallResNet's pooled features, GroupNorm, F = widths[-1]; reads
`widths`, `blocks_per_stage`, `groups`, `pooling` 'flatten' | 'avg' | 'avg+max'; F = H'W'widths[-1]
for 'flatten') and the torchvision ResNets
'resnet18' ... 'resnet152' (F = 512 or 2048; read `pooling`, `frozen_bn_stats`, `frozen_bn_affine`).

Parameter paths (for `optim.model_groups`): 'backbone/...', 'embedding/dense/{kernel,bias}',
'uncertainty/dense/{kernel,bias}'; `PARAM_GROUPS` holds the regular expressions the IDML configs use,
with the backbone's BatchNorm scale/bias in a group of their own.

Pretrained backbones: `config.model.pretrained=DIR` (a directory written by
`python -m probdml.models.convert`) is merged into the initialised variables under 'backbone' by
`merge_pretrained_backbone`, called from `probdml.train.create_setup`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from probdml.errors import ConfigError, unknown_choice
from probdml.models import convert
from probdml.models.heads import ACTIVATIONS, SemanticHead, UncertaintyHead, VMFHead, l2_normalize
from probdml.models.resnet import ARCHITECTURES, POOLINGS, resnet
from probdml.models.small import SmallConvNet, compute_dtype_or_none
from probdml.models.small_resnet import SmallResNet

Array = jax.Array

BACKBONES = ("small_convnet", "small_resnet", *ARCHITECTURES)
HEADS = ("semantic", "vmf")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")

# Regular expressions (full match on '/'-joined parameter paths) for optim.model_groups.
_BN_MODULE = r"(bn\d*|downsample_bn)"
PARAM_GROUPS = {
    "backbone_bn": rf"backbone/(.*/)?{_BN_MODULE}/(scale|bias)",
    "backbone": rf"backbone/(?!(.*/)?{_BN_MODULE}/).*",
    "embedding": r"embedding/.*",
    "uncertainty": r"uncertainty/.*",
}


class EmbeddingNet(nn.Module):
    """Backbone + semantic (or vMF) head + optional uncertainty head; see the module docstring.

    Fields:
      backbone: one of BACKBONES.
      embed_dim: size of the semantic / vMF embedding.
      head: 'semantic' (kaiming-normal fan-out W_s, b_s = 0) or 'vmf' (torch Linear init, weight
        scaled by `init_norm_multiplier`, never normalised).
      normalize_embedding: L2-normalise the semantic embedding (ignored by 'vmf').
      uncertainty_dim: size of the uncertainty embedding; 0 = no uncertainty head.
      uncertainty_l2_normalize, uncertainty_activation ('none' | 'relu'): the uncertainty head's options.
      widths, hidden: SmallConvNet's options; widths, blocks_per_stage, groups, pooling: SmallResNet's.
        (SmallResNet also 'flatten'), pooling ('avg' | 'max' | 'avg+max'), frozen_bn_stats, frozen_bn_affine: the ResNets' options.
      dtype: compute dtype of the backbone and the heads ('float32', 'bfloat16', 'float16'; None: that of
        the inputs); parameters, BatchNorm statistics, pooling and every output are at least float32.
    """

    backbone: str = "small_convnet"
    embed_dim: int = 512
    head: str = "semantic"
    normalize_embedding: bool = True
    uncertainty_dim: int = 0
    uncertainty_l2_normalize: bool = False
    uncertainty_activation: str = "none"
    init_norm_multiplier: float = 1.0
    widths: Sequence[int] = (32, 64, 128)
    hidden: int = 256
    blocks_per_stage: int = 1
    groups: int = 8
    pooling: str = "avg+max"
    frozen_bn_stats: bool = False
    frozen_bn_affine: bool = False
    dtype: str | None = None

    def __post_init__(self):
        check_options(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        dtype = compute_dtype_or_none(self.dtype)
        if self.backbone == "small_convnet":
            h = SmallConvNet(embed_dim=0, widths=self.widths, hidden=self.hidden, dtype=self.dtype, name="backbone")(
                x, train)["features"]
        elif self.backbone == "small_resnet":
            h = SmallResNet(
                embed_dim=0,
                widths=self.widths,
                blocks_per_stage=self.blocks_per_stage,
                groups=self.groups,
                pooling="avgmax" if self.pooling == "avg+max" else self.pooling,
                dtype=self.dtype,
                name="backbone",
            )(x, train)["features"]
        else:
            h = resnet(
                self.backbone,
                pooling=self.pooling,
                frozen_bn_stats=self.frozen_bn_stats,
                frozen_bn_affine=self.frozen_bn_affine,
                dtype=dtype,
                name="backbone",
            )(x, train)
        out = {"features": h}
        if self.head == "semantic":
            raw = SemanticHead(self.embed_dim, l2_normalize=False, dtype=dtype, name="embedding")(h)
            out["embedding"] = l2_normalize(raw) if self.normalize_embedding else raw
            if self.normalize_embedding:
                out["embedding_norm"] = jnp.linalg.norm(raw, axis=-1)
        else:
            out["embedding"] = VMFHead(self.embed_dim, init_norm_multiplier=self.init_norm_multiplier, dtype=dtype,
                                       name="embedding")(h)
        if self.uncertainty_dim > 0:
            out["uncertainty"] = UncertaintyHead(
                self.uncertainty_dim,
                l2_normalize=self.uncertainty_l2_normalize,
                activation=self.uncertainty_activation,
                dtype=dtype,
                name="uncertainty",
            )(h)
        return out


def check_options(net: EmbeddingNet) -> None:
    """ConfigError for an unknown backbone, head, activation or pooling, or a non-positive size."""
    if net.dtype is not None and net.dtype not in COMPUTE_DTYPES:
        raise unknown_choice("model dtype", net.dtype, COMPUTE_DTYPES)
    if net.backbone not in BACKBONES:
        raise unknown_choice("backbone", net.backbone, BACKBONES)
    if net.head not in HEADS:
        raise unknown_choice("embedding head", net.head, HEADS)
    if net.uncertainty_activation not in ACTIVATIONS:
        raise unknown_choice("uncertainty_activation", net.uncertainty_activation, ACTIVATIONS)
    pools = ("flatten", "avg", "avg+max") if net.backbone == "small_resnet" else tuple(p for p in POOLINGS if p != "none")
    if net.pooling not in pools:
        raise ConfigError(
            f"pooling {net.pooling!r} is not available for backbone {net.backbone!r}; valid choices: {', '.join(pools)}"
        )
    if int(net.embed_dim) <= 0:
        raise ConfigError(f"embed_dim must be positive, got {net.embed_dim}")
    if int(net.uncertainty_dim) < 0:
        raise ConfigError(f"uncertainty_dim must be >= 0 (0 = no uncertainty head), got {net.uncertainty_dim}")
    if net.head == "vmf" and not net.init_norm_multiplier > 0:
        raise ConfigError(f"init_norm_multiplier must be > 0, got {net.init_norm_multiplier}")


def merge_pretrained_backbone(net: EmbeddingNet, variables: Mapping[str, Any], directory: str) -> dict[str, Any]:
    """`variables` with the backbone replaced by the converted torchvision weights in `directory`
    (params and BatchNorm statistics; the ImageNet classifier is dropped). ConfigError when the backbone
    is not a ResNet, the directory holds no converted checkpoint, or its architecture differs."""
    if net.backbone not in ARCHITECTURES:
        raise ConfigError(
            f"model.pretrained needs a ResNet backbone ({', '.join(ARCHITECTURES)}), got {net.backbone!r}"
        )
    try:
        pretrained = convert.load_pretrained(directory, arch=net.backbone)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model.pretrained={directory!r}: {e}") from e
    return convert.merge_pretrained(variables, pretrained, at="backbone")

