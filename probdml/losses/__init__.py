"""Metric-learning losses: pure functions of a pairwise similarity (or distance) matrix and labels.

Proxy and classification losses (`probdml.losses.proxy`) take `sim` [B, C], the similarity of each
sample to each class proxy (or to each of C*K centres for SoftTriple). Pair losses (`.pair`) and ranking
losses (`.ranking`) take the batch compared with itself, `sim` or `dist` [B, B]: which one each uses, and
how a similarity becomes a distance, is set by the similarity (`probdml.similarity.Pairwise`).
Every loss accepts `sample_mask` ([B] bool, False = padding) and is defined and finite for batches where
a class has one sample or all samples share a class (terms with no pairs contribute 0, and a loss with
no active term is 0). Inputs are checked: wrong shapes or dtypes (also under jit, at trace time) and, for
concrete labels, labels outside [0, C) of a proxy loss raise a one-line ValueError naming the argument.

Semantics follow pytorch-metric-learning 2.x with its default reducers; deliberate differences are
listed in each docstring. `probdml.losses.registry` lists every loss with its family and the
pytorch-metric-learning class it follows, and the wrappers (`CrossBatchMemory`, `probdml.losses.memory`:
a FIFO memory of past embeddings that the MEMORY_LOSSES compare the batch with).
"""

from probdml.losses._common import (
    masked_log1p_sum_exp,
    masked_log_softmax,
    masked_logsumexp,
)
from probdml.losses.pair import (
    angular,
    circle,
    contrastive,
    dynamic_soft_margin,
    generalized_lifted_structure,
    instance,
    intra_pair_variance,
    lifted_structure,
    margin_loss,
    multi_similarity,
    nca,
    npair,
    nt_xent,
    ranked_list,
    signal_to_noise_ratio_contrastive,
    snr_distance,
    sup_con,
    threshold_consistent_margin,
    triplet_margin,
    tuplet_margin,
)
from probdml.losses.proxy import (
    arcface,
    cos_face,
    large_margin_softmax,
    normalized_softmax,
    p2s_grad,
    proxy_anchor,
    proxy_nca,
    proxy_nca_pp,
    proxy_subsample_mask,
    soft_triple,
    sphere_face,
    sub_center_arc_face,
)
from probdml.losses.ranking import (
    fast_ap,
    histogram,
    pnp,
    smooth_ap,
)
from probdml.losses.memory import MEMORY_LOSSES, CrossBatchMemory
from probdml.losses.registry import (
    ALIASES,
    LOSS_REGISTRY,
    WRAPPER_REGISTRY,
    LossSpec,
    WrapperSpec,
    canonical_name,
    pml_name_to_key,
)
from probdml.losses.self_supervised import (
    manifold,
    vic_reg,
)

arc_face = arcface
n_pairs = npair

__all__ = [
    "ALIASES",
    "LOSS_REGISTRY",
    "MEMORY_LOSSES",
    "WRAPPER_REGISTRY",
    "CrossBatchMemory",
    "LossSpec",
    "WrapperSpec",
    "angular",
    "arc_face",
    "arcface",
    "canonical_name",
    "circle",
    "contrastive",
    "cos_face",
    "dynamic_soft_margin",
    "fast_ap",
    "generalized_lifted_structure",
    "histogram",
    "instance",
    "intra_pair_variance",
    "large_margin_softmax",
    "lifted_structure",
    "manifold",
    "margin_loss",
    "masked_log1p_sum_exp",
    "masked_log_softmax",
    "masked_logsumexp",
    "multi_similarity",
    "n_pairs",
    "nca",
    "normalized_softmax",
    "npair",
    "nt_xent",
    "p2s_grad",
    "pml_name_to_key",
    "pnp",
    "proxy_anchor",
    "proxy_nca",
    "proxy_nca_pp",
    "proxy_subsample_mask",
    "ranked_list",
    "signal_to_noise_ratio_contrastive",
    "smooth_ap",
    "snr_distance",
    "soft_triple",
    "sphere_face",
    "sub_center_arc_face",
    "sup_con",
    "threshold_consistent_margin",
    "triplet_margin",
    "tuplet_margin",
    "vic_reg",
]
