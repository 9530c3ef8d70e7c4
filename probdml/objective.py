"""The training objective: a similarity and a loss with their learnable parameters, built from config.

`build_objective(loss_cfg, num_classes, embed_dim)` returns an `Objective`:
- `init(key)` -> learnable loss parameters (a dict whose top-level keys are optimizer groups,
  e.g. 'proxies'; the optimizer's `lr_mults` refer to these names);
- `apply(params, outputs, labels, key)` -> (scalar loss, dict of scalar aux metrics), where
  `outputs` is the model's output dict ('embedding' [B, D], optionally 'uncertainty' [B, Du]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from probdml import losses, similarity
from probdml.errors import unknown_choice

Array = jax.Array


class Objective(NamedTuple):
    init: Callable[[Array], dict]
    apply: Callable[[dict, dict, Array, Array], tuple[Array, dict]]


SIMILARITIES: dict[str, Callable[..., Array]] = {"cosine": similarity.cosine}


def kaiming_normal_fan_out(key: Array, num_classes: int, dim: int) -> Array:
    """Proxies [C, D] ~ N(0, 2 / C): torch's kaiming_normal_(mode='fan_out') on a [C, D] tensor."""
    return jax.random.normal(key, (num_classes, dim)) * jnp.sqrt(2.0 / num_classes)


def _proxy_anchor(cfg: ml_collections.ConfigDict, num_classes: int, embed_dim: int) -> Objective:
    sim_fn = _similarity(cfg)

    def init(key: Array) -> dict:
        return {"proxies": kaiming_normal_fan_out(key, num_classes, embed_dim)}

    def apply(params: dict, outputs: dict, labels: Array, key: Array) -> tuple[Array, dict]:
        del key
        sim = sim_fn(outputs["embedding"], params["proxies"])
        loss = losses.proxy_anchor(sim, labels, margin=cfg.get("margin", 0.1), alpha=cfg.get("alpha", 32.0))
        return loss, {}

    return Objective(init, apply)


LOSSES: dict[str, Callable[[ml_collections.ConfigDict, int, int], Objective]] = {
    "proxy_anchor": _proxy_anchor,
}


def _similarity(cfg: ml_collections.ConfigDict) -> Callable[..., Array]:
    name = cfg.get("similarity", "cosine")
    if name not in SIMILARITIES:
        raise unknown_choice("similarity", name, SIMILARITIES)
    return SIMILARITIES[name]


def build_objective(loss_cfg: ml_collections.ConfigDict, num_classes: int, embed_dim: int) -> Objective:
    """The objective named by `loss_cfg.name` with the similarity `loss_cfg.similarity`."""
    if loss_cfg.name not in LOSSES:
        raise unknown_choice("loss", loss_cfg.name, LOSSES)
    _similarity(loss_cfg)
    return LOSSES[loss_cfg.name](loss_cfg, num_classes, embed_dim)
