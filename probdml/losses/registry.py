"""The one list of losses: name -> function, family, the matrix it reads and its pytorch-metric-learning class.

Names are the snake_case of the pytorch-metric-learning class without the `Loss` suffix
(`pml_name_to_key`); ALIASES keeps the names probdml used before (configs, recipes, README).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from probdml.losses import pair, proxy, ranking

FAMILIES = ("proxy", "pair", "ranking", "self_supervised")
READS = ("similarity", "distance")


class LossSpec(NamedTuple):
    fn: Callable  # the array-level loss
    family: str  # one of FAMILIES: which matrix shape it takes (proxy: [B, C]; others: [B, B])
    reads: str  # 'similarity' or 'distance': which field of similarity.Pairwise it is defined on
    pml: str | None  # the pytorch-metric-learning class it follows (None: no counterpart)


def pml_name_to_key(class_name: str) -> str:
    """'SubCenterArcFaceLoss' -> 'sub_center_arc_face', 'NTXentLoss' -> 'nt_xent', 'P2SGradLoss' -> 'p2s_grad':
    snake_case of a pytorch-metric-learning class name without its 'Loss' / 'Miner' suffix."""
    base = re.sub(r"(Loss|Miner)$", "", class_name)
    return re.sub(r"(?<!^)(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])", "_", base).lower()


LOSS_REGISTRY: dict[str, LossSpec] = {
    "proxy_anchor": LossSpec(proxy.proxy_anchor, "proxy", "similarity", "ProxyAnchorLoss"),
    "proxy_nca": LossSpec(proxy.proxy_nca, "proxy", "similarity", "ProxyNCALoss"),
    "proxy_nca_pp": LossSpec(proxy.proxy_nca_pp, "proxy", "similarity", None),
    "normalized_softmax": LossSpec(proxy.normalized_softmax, "proxy", "similarity", "NormalizedSoftmaxLoss"),
    "arc_face": LossSpec(proxy.arcface, "proxy", "similarity", "ArcFaceLoss"),
    "soft_triple": LossSpec(proxy.soft_triple, "proxy", "similarity", "SoftTripleLoss"),
    "contrastive": LossSpec(pair.contrastive, "pair", "distance", "ContrastiveLoss"),
    "triplet_margin": LossSpec(pair.triplet_margin, "pair", "distance", "TripletMarginLoss"),
    "margin": LossSpec(pair.margin_loss, "pair", "distance", "MarginLoss"),
    "multi_similarity": LossSpec(pair.multi_similarity, "pair", "similarity", "MultiSimilarityLoss"),
    "n_pairs": LossSpec(pair.npair, "pair", "similarity", "NPairsLoss"),
    "fast_ap": LossSpec(ranking.fast_ap, "ranking", "distance", "FastAPLoss"),
}

# Earlier probdml names -> registry names.
ALIASES: dict[str, str] = {"arcface": "arc_face", "triplet": "triplet_margin", "npair": "n_pairs"}


def canonical_name(name: str) -> str:
    """The registry name of `name` (itself, or what its alias stands for)."""
    return ALIASES.get(name, name)
