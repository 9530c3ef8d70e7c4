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
pytorch-metric-learning class it follows.
"""

from probdml.losses._common import (
    masked_log1p_sum_exp,
    masked_log_softmax,
    masked_logsumexp,
)
from probdml.losses.pair import (
    contrastive,
    margin_loss,
    multi_similarity,
    npair,
    triplet_margin,
)
from probdml.losses.proxy import (
    arcface,
    normalized_softmax,
    proxy_anchor,
    proxy_nca,
    proxy_nca_pp,
    proxy_subsample_mask,
    soft_triple,
)
from probdml.losses.ranking import fast_ap
from probdml.losses.registry import (
    ALIASES,
    LOSS_REGISTRY,
    LossSpec,
    canonical_name,
    pml_name_to_key,
)

arc_face = arcface
n_pairs = npair

__all__ = [
    "ALIASES", "LOSS_REGISTRY", "LossSpec", "arc_face", "arcface", "canonical_name", "contrastive", "fast_ap",
    "margin_loss", "masked_log1p_sum_exp", "masked_log_softmax", "masked_logsumexp", "multi_similarity",
    "n_pairs", "normalized_softmax", "npair", "pml_name_to_key", "proxy_anchor", "proxy_nca", "proxy_nca_pp",
    "proxy_subsample_mask", "soft_triple", "triplet_margin",
]
