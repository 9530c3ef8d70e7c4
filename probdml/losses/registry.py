"""The one list of losses: name -> function, family, the matrix it reads and its pytorch-metric-learning class;
and the wrappers around losses (the cross-batch memory).

Names are the snake_case of the pytorch-metric-learning class without the `Loss` suffix
(`pml_name_to_key`); ALIASES keeps the names probdml used before (configs, recipes, README).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from probdml.losses import memory, pair, proxy, ranking, self_supervised

FAMILIES = ("proxy", "pair", "ranking", "self_supervised")
READS = ("similarity", "distance", "embeddings")


class LossSpec(NamedTuple):
    fn: Callable  # the array-level loss
    family: str  # one of FAMILIES: which matrix shape it takes (proxy: [B, C]; others: [B, B])
    reads: str  # 'similarity' / 'distance': which field of similarity.Pairwise it is defined on; 'embeddings'
    #            for losses of raw embeddings (VICReg)
    pml: str | None  # the pytorch-metric-learning class it follows (None: no counterpart)
    bounded: bool = False  # defined only on a cosine-like similarity in [-1, 1] (angular margins, clipping)


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
    "arc_face": LossSpec(proxy.arcface, "proxy", "similarity", "ArcFaceLoss", bounded=True),
    "soft_triple": LossSpec(proxy.soft_triple, "proxy", "similarity", "SoftTripleLoss"),
    "contrastive": LossSpec(pair.contrastive, "pair", "distance", "ContrastiveLoss"),
    "triplet_margin": LossSpec(pair.triplet_margin, "pair", "distance", "TripletMarginLoss"),
    "margin": LossSpec(pair.margin_loss, "pair", "distance", "MarginLoss"),
    "multi_similarity": LossSpec(pair.multi_similarity, "pair", "similarity", "MultiSimilarityLoss"),
    "n_pairs": LossSpec(pair.npair, "pair", "similarity", "NPairsLoss"),
    "fast_ap": LossSpec(ranking.fast_ap, "ranking", "distance", "FastAPLoss"),
    "circle": LossSpec(pair.circle, "pair", "similarity", "CircleLoss", bounded=True),
    "sup_con": LossSpec(pair.sup_con, "pair", "similarity", "SupConLoss"),
    "nt_xent": LossSpec(pair.nt_xent, "pair", "similarity", "NTXentLoss"),
    "lifted_structure": LossSpec(pair.lifted_structure, "pair", "distance", "LiftedStructureLoss"),
    "generalized_lifted_structure": LossSpec(pair.generalized_lifted_structure, "pair", "distance",
                                             "GeneralizedLiftedStructureLoss"),
    "tuplet_margin": LossSpec(pair.tuplet_margin, "pair", "similarity", "TupletMarginLoss", bounded=True),
    "intra_pair_variance": LossSpec(pair.intra_pair_variance, "pair", "similarity", "IntraPairVarianceLoss"),
    "nca": LossSpec(pair.nca, "pair", "similarity", "NCALoss"),
    "cos_face": LossSpec(proxy.cos_face, "proxy", "similarity", "CosFaceLoss", bounded=True),
    "large_margin_softmax": LossSpec(proxy.large_margin_softmax, "proxy", "similarity", "LargeMarginSoftmaxLoss", bounded=True),
    "sphere_face": LossSpec(proxy.sphere_face, "proxy", "similarity", "SphereFaceLoss", bounded=True),
    "sub_center_arc_face": LossSpec(proxy.sub_center_arc_face, "proxy", "similarity", "SubCenterArcFaceLoss", bounded=True),
    "p2s_grad": LossSpec(proxy.p2s_grad, "proxy", "similarity", "P2SGradLoss", bounded=True),
    "angular": LossSpec(pair.angular, "pair", "similarity", "AngularLoss", bounded=True),
    "instance": LossSpec(pair.instance, "pair", "similarity", "InstanceLoss"),
    "smooth_ap": LossSpec(ranking.smooth_ap, "ranking", "similarity", "SmoothAPLoss"),
    "pnp": LossSpec(ranking.pnp, "ranking", "similarity", "PNPLoss"),
    "histogram": LossSpec(ranking.histogram, "ranking", "similarity", "HistogramLoss", bounded=True),
    "threshold_consistent_margin": LossSpec(pair.threshold_consistent_margin, "pair", "similarity",
                                            "ThresholdConsistentMarginLoss", bounded=True),
    "ranked_list": LossSpec(pair.ranked_list, "pair", "distance", "RankedListLoss"),
    "vic_reg": LossSpec(self_supervised.vic_reg, "self_supervised", "embeddings", "VICRegLoss"),
    "manifold": LossSpec(self_supervised.manifold, "self_supervised", "similarity", "ManifoldLoss", bounded=True),
    "dynamic_soft_margin": LossSpec(pair.dynamic_soft_margin, "pair", "distance", "DynamicSoftMarginLoss"),
    "signal_to_noise_ratio_contrastive": LossSpec(pair.signal_to_noise_ratio_contrastive, "pair", "distance",
                                                  "SignalToNoiseRatioContrastiveLoss"),
}



class WrapperSpec(NamedTuple):
    obj: type  # what wraps a loss (e.g. a state carried between steps)
    wraps: tuple[str, ...]  # the registry losses it can wrap
    pml: str  # the pytorch-metric-learning wrapper class it follows


# Wrappers around a loss (pytorch-metric-learning's BaseLossWrapper subclasses), under the same naming rule.
WRAPPER_REGISTRY: dict[str, WrapperSpec] = {
    "cross_batch_memory": WrapperSpec(memory.CrossBatchMemory, memory.MEMORY_LOSSES, "CrossBatchMemory"),
}

# Earlier probdml names -> registry names.
ALIASES: dict[str, str] = {"arcface": "arc_face", "triplet": "triplet_margin", "npair": "n_pairs"}


def canonical_name(name: str) -> str:
    """The registry name of `name` (itself, or what its alias stands for)."""
    return ALIASES.get(name, name)
