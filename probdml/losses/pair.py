"""Pair and triplet losses: the batch against itself, `sim` or `dist` [B, B], labels [B] (any integers).
Which of the two each loss reads, and how a similarity becomes a distance, is set by the similarity
(`probdml.similarity.Pairwise`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from probdml import mining
from probdml.losses._common import (
    check_labels,
    check_pair_inputs,
    masked_log1p_sum_exp,
    masked_log_softmax,
    masked_mean,
    mean_nonzero,
    sample_valid,
)

Array = jax.Array


def contrastive(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Contrastive loss (Hadsell et al. 2006), pytorch-metric-learning semantics (AvgNonZeroReducer):

    L = mean_{pos pairs, l > 0} relu(d_ij - pos_margin) + mean_{neg pairs, l > 0} relu(neg_margin - d_ij).
    Pairs default to all (i != j); `pos_mask` / `neg_mask` ([B, B] bool) restrict them (mined pairs).
    """
    check_pair_inputs("contrastive", "dist", dist, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)))
    pos, neg = mining.pair_masks(labels, sample_mask)
    pos = pos if pos_mask is None else pos & pos_mask
    neg = neg if neg_mask is None else neg & neg_mask
    pos_loss = jax.nn.relu(dist - pos_margin)
    neg_loss = jax.nn.relu(neg_margin - dist)
    return mean_nonzero(pos_loss, pos) + mean_nonzero(neg_loss, neg)


def triplet_margin(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: float = 0.05,
    triplets: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Triplet margin loss (Weinberger & Saul 2009; Schroff et al. 2015), pytorch-metric-learning semantics:

    L = mean over triplets with l > 0 of l_apn = relu(d_ap - d_an + margin).
    `triplets` ([B, B, B] bool or counts, e.g. from `mining.semihard_mask`) selects (anchor, pos, neg);
    default: all valid triplets.
    """
    check_pair_inputs("triplet_margin", "dist", dist, labels, sample_mask, triplets=triplets)
    valid = mining.triplet_mask(labels, sample_mask)
    weights = valid if triplets is None else valid * triplets
    losses = jax.nn.relu(dist[:, :, None] - dist[:, None, :] + margin)
    return mean_nonzero(losses, weights)


def margin_loss(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    beta: float | jnp.ndarray = 1.2,
    margin: float = 0.2,
    nu: float = 0.0,
    triplets: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Margin loss (Wu et al. 2017), pytorch-metric-learning semantics (DivisorReducer):

    per triplet: relu(d_ap - beta + margin) + relu(beta - d_an + margin); summed over the triplets (counted
    with multiplicity) and divided by the number of non-zero positive plus non-zero negative terms.
    beta: a scalar or per-class [C] (beta of the anchor's class), learnable. nu: the beta regulariser,
    nu * beta for a scalar, sum_{triplets} nu beta_{y_a} / divisor per class.
    `triplets`: [B, B, B] bool or counts (e.g. `mining.distance_weighted_triplets`); default all valid.
    """
    check_pair_inputs("margin_loss", "dist", dist, labels, sample_mask, triplets=triplets)
    valid = mining.triplet_mask(labels, sample_mask)
    w = (valid if triplets is None else valid * triplets).astype(dist.dtype)
    per_class = jnp.ndim(beta) == 1
    if per_class:
        check_labels("margin_loss", labels, dist.shape[0], jnp.shape(beta)[0])
    b_anchor = jnp.asarray(beta, dist.dtype)[labels] if per_class else jnp.asarray(beta, dist.dtype)
    b_anchor = b_anchor[:, None] if per_class else b_anchor
    pos_loss = jax.nn.relu(dist - b_anchor + margin)  # [a, p]
    neg_loss = jax.nn.relu(b_anchor - dist + margin)  # [a, n]
    w_ap = jnp.sum(w, axis=2)
    w_an = jnp.sum(w, axis=1)
    divisor = jnp.sum(w_ap * (pos_loss > 0)) + jnp.sum(w_an * (neg_loss > 0))
    safe = jnp.maximum(divisor, 1.0)
    loss = (jnp.sum(w_ap * pos_loss) + jnp.sum(w_an * neg_loss)) / safe
    if nu:
        if per_class:
            loss = loss + nu * jnp.sum(jnp.sum(w, axis=(1, 2)) * b_anchor[:, 0]) / safe
        else:
            loss = loss + nu * b_anchor
    return loss


def multi_similarity(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Multi-Similarity loss (Wang et al. 2019), pytorch-metric-learning semantics:

    L = mean_i [ 1/alpha log(1 + sum_{j in P_i} e^{-alpha (s_ij - base)})
               + 1/beta  log(1 + sum_{k in N_i} e^{ beta (s_ik - base)}) ]
    over all (valid) anchors i. P_i / N_i: all positives / negatives, or the mined `pos_mask` / `neg_mask`
    (`mining.multi_similarity_pairs`).
    Difference: pytorch-metric-learning returns 0 when at most one positive and one negative pair are
    given; here those pairs are used.
    """
    check_pair_inputs("multi_similarity", "sim", sim, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)))
    pos, neg = mining.pair_masks(labels, sample_mask)
    pos = pos if pos_mask is None else pos & pos_mask
    neg = neg if neg_mask is None else neg & neg_mask
    pos_term = masked_log1p_sum_exp(-alpha * (sim - base), pos, axis=1) / alpha
    neg_term = masked_log1p_sum_exp(beta * (sim - base), neg, axis=1) / beta
    return masked_mean(pos_term + neg_term, sample_valid(labels, sample_mask))


def npair(sim: jnp.ndarray, labels: jnp.ndarray, *, sample_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """N-pair loss (Sohn 2016), pytorch-metric-learning's NPairsLoss semantics.

    For each class with >= 2 samples, the anchor is its first sample and the positive its second
    (batch order). With those n pairs: L = mean_a -log softmax_b(s(anchor_a, positive_b))[a].
    pytorch-metric-learning's default similarity is the cosine; IDML's wrapper uses the dot product.
    """
    check_pair_inputs("npair", "sim", sim, labels, sample_mask)
    b = labels.shape[0]
    valid = sample_valid(labels, sample_mask)
    idx = jnp.arange(b)
    same = (labels[:, None] == labels[None, :]) & valid[:, None] & valid[None, :]
    first = jnp.argmax(same, axis=1)  # first valid sample of each sample's class
    later = same & (idx[None, :] > first[:, None])
    second = jnp.argmax(later, axis=1)
    is_anchor = valid & (first == idx) & jnp.any(later, axis=1)
    logits = sim[:, second]  # logits[a, b] = s(anchor a, positive of b's class)
    logp = masked_log_softmax(logits, jnp.broadcast_to(is_anchor[None, :], logits.shape))
    diag = jnp.where(is_anchor, jnp.diagonal(logp), 0.0)
    return masked_mean(-diag, is_anchor)
