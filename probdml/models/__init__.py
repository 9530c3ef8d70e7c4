"""Models: backbones, embedding heads, small networks. `build_model(cfg)` picks one by name.

'small_convnet': SmallConvNet alone (embedding = its linear head). 'embedding_net': EmbeddingNet, a
backbone (small_convnet or a ResNet) with a semantic or vMF head and an optional uncertainty head
(probdml.models.embedding). Every model has a `dtype` (COMPUTE_DTYPES): the dtype its convolutions and
dense layers compute in, 'float32' by default; parameters stay float32 and every output is float32, so
similarities, special functions and losses never run in 16 bits. The config key `pretrained` is not a constructor argument: it names a
directory of converted torchvision weights that `load_pretrained_variables` merges into the
initialised variables ('' = none; None = required but not given, a ConfigError).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from probdml.errors import ConfigError, unknown_choice
from probdml.models.embedding import COMPUTE_DTYPES, EmbeddingNet, merge_pretrained_backbone
from probdml.models.small import SmallConvNet
from probdml.models.small_resnet import SmallResNet

MODELS: dict[str, type[nn.Module]] = {
    "small_convnet": SmallConvNet,
    "small_resnet": SmallResNet,
    "embedding_net": EmbeddingNet,
}

# model.dtype: the compute dtype of backbones and heads (mixed precision: bfloat16 on TPU/GPU; float16
# only where the hardware lacks bfloat16, its range ends at 65504).

# Config keys read by the trainer, not passed to the module.
NON_MODULE_KEYS = ("name", "pretrained")


def build_model(model_cfg: ml_collections.ConfigDict) -> nn.Module:
    """Instantiate the model `model_cfg.name` with the remaining fields as constructor arguments."""
    if model_cfg.name not in MODELS:
        raise unknown_choice("model", model_cfg.name, MODELS)
    cls = MODELS[model_cfg.name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    kwargs = {k: v for k, v in model_cfg.items() if k not in NON_MODULE_KEYS}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ConfigError(
            f"model {model_cfg.name!r} has no option {unknown[0]!r}; valid options: "
            f"{', '.join(sorted(fields | {'pretrained'}))}"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if "dtype" in kwargs:
        compute_dtype(kwargs["dtype"])
    return cls(**kwargs)


def compute_dtype(name: str) -> jnp.dtype:
    """The dtype named by `model.dtype` (one of COMPUTE_DTYPES); a ConfigError naming the choices otherwise."""
    if name not in COMPUTE_DTYPES:
        raise unknown_choice("model dtype", name, COMPUTE_DTYPES)
    return jnp.dtype(name)


def float32_outputs(outputs: dict) -> dict:
    """Every output at least float32 (float64 stays float64): what a 16-bit network hands to the loss."""
    return {k: v.astype(jnp.promote_types(v.dtype, jnp.float32)) for k, v in outputs.items()}


def check_pretrained(model_cfg: ml_collections.ConfigDict) -> str:
    """The `pretrained` directory of a model config ('' when unset); ConfigError when it is required
    (None) or names a missing directory."""
    if "pretrained" not in model_cfg:
        return ""
    path = model_cfg.pretrained
    if path is None:
        raise ConfigError(
            "model.pretrained is required: a directory of converted torchvision weights "
            "(python -m probdml.models.convert --torch=resnet50.pth --out=DIR), or '' to train from scratch"
        )
    if path and model_cfg.name != "embedding_net":
        raise ConfigError(f"model.pretrained is supported by model 'embedding_net' only, not {model_cfg.name!r}")
    return path


def load_pretrained_variables(model: nn.Module, variables: Mapping[str, Any], directory: str) -> dict[str, Any]:
    """`variables` with the model's backbone replaced by the converted weights in `directory`."""
    if not isinstance(model, EmbeddingNet):
        raise ConfigError(f"model.pretrained is supported by EmbeddingNet only, not {type(model).__name__}")
    return merge_pretrained_backbone(model, variables, directory)
