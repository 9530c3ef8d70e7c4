"""Models: backbones, embedding heads, small networks. `build_model(cfg)` picks one by name."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import ml_collections

from probdml.errors import ConfigError, unknown_choice
from probdml.models.small import SmallConvNet
from probdml.models.small_resnet import SmallResNet

MODELS: dict[str, type[nn.Module]] = {"small_convnet": SmallConvNet, "small_resnet": SmallResNet}


def build_model(model_cfg: ml_collections.ConfigDict) -> nn.Module:
    """Instantiate the model `model_cfg.name` with the remaining fields as constructor arguments."""
    if model_cfg.name not in MODELS:
        raise unknown_choice("model", model_cfg.name, MODELS)
    cls = MODELS[model_cfg.name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ConfigError(
            f"model {model_cfg.name!r} has no option {unknown[0]!r}; valid options: {', '.join(sorted(fields))}"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(**kwargs)
