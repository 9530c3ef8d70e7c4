"""Pair and triplet losses: the batch against itself, `sim` or `dist` [B, B], labels [B] (any integers).
Which of the two each loss reads, and how a similarity becomes a distance, is set by the similarity
(`probdml.similarity.Pairwise`).

The losses of MEMORY_LOSSES also take references (a cross-batch memory, `probdml.losses.memory`):
with `ref_labels` [M] (and `ref_mask` [M], False = empty slot) `sim` / `dist` is [B, M] (batch query i,
reference j), every pair (i, j) with both valid counts (positive when y_i == r_j; the caller removes
self pairs through `pos_mask` / `triplets`), triplets are [B, M, M], and the means run over the
queries' pairs as in pytorch-metric-learning with `ref_emb`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from probdml import mining
from probdml.losses._common import (
    _shape,
    check_labels,
    check_matrix,
    check_pair_inputs,
    cross_entropy,
    masked_log1p_sum_exp,
    masked_log_softmax,
    masked_logsumexp,
    masked_mean,
    mean_nonzero,
    sample_valid,
)
from probdml.similarity import l2_normalize, safe_sqrt

Array = jax.Array

# The pair losses that take `ref_labels` / `ref_mask` (the rows are the queries, every formula is per
# query row or per pair): the losses a cross-batch memory can wrap.
MEMORY_LOSSES = ("contrastive", "triplet_margin", "margin", "multi_similarity", "circle", "sup_con", "nt_xent",
                 "generalized_lifted_structure", "tuplet_margin", "intra_pair_variance")

_LOG_ZERO = -1e30  # stands for log(0) = -inf where a finite value keeps gradients finite


def contrastive(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Contrastive loss (Hadsell et al. 2006), pytorch-metric-learning semantics (AvgNonZeroReducer):

    L = mean_{pos pairs, l > 0} relu(d_ij - pos_margin) + mean_{neg pairs, l > 0} relu(neg_margin - d_ij).
    Pairs default to all (i != j); `pos_mask` / `neg_mask` ([B, B] bool) restrict them (mined pairs).
    """
    check_pair_inputs("contrastive", "dist", dist, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)),
                      ref_labels=ref_labels, ref_mask=ref_mask)
    pos, neg = mining.pair_masks(labels, sample_mask, ref_labels, ref_mask)
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
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Triplet margin loss (Weinberger & Saul 2009; Schroff et al. 2015), pytorch-metric-learning semantics:

    L = mean over triplets with l > 0 of l_apn = relu(d_ap - d_an + margin).
    `triplets` ([B, B, B] bool or counts, e.g. from `mining.semihard_mask`) selects (anchor, pos, neg);
    default: all valid triplets.
    """
    check_pair_inputs("triplet_margin", "dist", dist, labels, sample_mask, triplets=triplets,
                      ref_labels=ref_labels, ref_mask=ref_mask)
    valid = mining.triplet_mask(labels, sample_mask, ref_labels, ref_mask)
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
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Margin loss (Wu et al. 2017), pytorch-metric-learning semantics (DivisorReducer):

    per triplet: relu(d_ap - beta + margin) + relu(beta - d_an + margin); summed over the triplets (counted
    with multiplicity) and divided by the number of non-zero positive plus non-zero negative terms.
    beta: a scalar or per-class [C] (beta of the anchor's class), learnable. nu: the beta regulariser,
    nu * beta for a scalar, sum_{triplets} nu beta_{y_a} / divisor per class.
    `triplets`: [B, B, B] bool or counts (e.g. `mining.distance_weighted_triplets`); default all valid.
    """
    check_pair_inputs("margin_loss", "dist", dist, labels, sample_mask, triplets=triplets,
                      ref_labels=ref_labels, ref_mask=ref_mask)
    valid = mining.triplet_mask(labels, sample_mask, ref_labels, ref_mask)
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
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
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
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)),
                      ref_labels=ref_labels, ref_mask=ref_mask)
    pos, neg = mining.pair_masks(labels, sample_mask, ref_labels, ref_mask)
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


def _masks(labels: Array, sample_mask: Array | None, pos_mask: Array | None = None,
           neg_mask: Array | None = None, ref_labels: Array | None = None,
           ref_mask: Array | None = None) -> tuple[Array, Array]:
    pos, neg = mining.pair_masks(labels, sample_mask, ref_labels, ref_mask)
    pos = pos if pos_mask is None else pos & pos_mask
    neg = neg if neg_mask is None else neg & neg_mask
    return pos, neg


def circle(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    m: float = 0.4,
    gamma: float = 80.0,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Circle loss (Sun et al., CVPR 2020), pytorch-metric-learning's CircleLoss (AvgNonZeroReducer):

    per anchor i with both positives and negatives,
    L_i = softplus( logsumexp_{p in P_i} -gamma [1 + m - s_ip]_+ (s_ip - (1 - m))
                  + logsumexp_{n in N_i}  gamma [s_in + m]_+     (s_in - m) ),
    the weights [.]_+ carrying no gradient; L = mean of the positive L_i.
    Defined on a similarity with optimum 1 (the cosine; the margins are in its units).
    """
    check_pair_inputs("circle", "sim", sim, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)),
                      ref_labels=ref_labels, ref_mask=ref_mask)
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask, ref_labels, ref_mask)
    s_stop = jax.lax.stop_gradient(sim)
    pos_logit = -gamma * jax.nn.relu(1.0 + m - s_stop) * (sim - (1.0 - m))
    neg_logit = gamma * jax.nn.relu(s_stop + m) * (sim - m)
    lse = masked_logsumexp(pos_logit, pos, axis=1) + masked_logsumexp(neg_logit, neg, axis=1)
    both = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
    per_anchor = jnp.where(both, jax.nn.softplus(jnp.where(both, lse, 0.0)), 0.0)
    return mean_nonzero(per_anchor, jnp.ones_like(both))


def sup_con(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    temperature: float = 0.1,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Supervised contrastive loss (Khosla et al. 2020), pytorch-metric-learning's SupConLoss:

    L_i = -1/|P_i| sum_{p in P_i} log( e^{s_ip / T} / sum_{j in P_i u N_i} e^{s_ij / T} );
    L = mean of the positive L_i (AvgNonZeroReducer); 0 unless the batch has a positive and a negative pair.
    """
    check_pair_inputs("sup_con", "sim", sim, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)),
                      ref_labels=ref_labels, ref_mask=ref_mask)
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask, ref_labels, ref_mask)
    logits = sim / temperature
    denominator = masked_logsumexp(logits, pos | neg, axis=1)
    log_prob = jnp.where(pos, logits - denominator[:, None], 0.0)
    per_anchor = -jnp.sum(log_prob, axis=1) / jnp.maximum(jnp.sum(pos, axis=1), 1)
    per_anchor = per_anchor * (jnp.any(pos) & jnp.any(neg))
    return mean_nonzero(per_anchor, jnp.ones(per_anchor.shape, bool))


def nt_xent(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    temperature: float = 0.07,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """NT-Xent / InfoNCE (Chen et al. 2020, SimCLR), pytorch-metric-learning's NTXentLoss (MeanReducer):

    per positive pair (a, p): l_ap = -log( e^{s_ap / T} / (e^{s_ap / T} + sum_{n in N_a} e^{s_an / T}) );
    L = mean over positive pairs; 0 unless the batch has a positive and a negative pair. For SimCLR,
    label the two views of an image alike. Difference: pytorch-metric-learning adds the smallest normal
    float inside the log, which changes l_ap only when the ratio underflows.
    """
    check_pair_inputs("nt_xent", "sim", sim, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)),
                      ref_labels=ref_labels, ref_mask=ref_mask)
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask, ref_labels, ref_mask)
    logits = sim / temperature
    has_neg = jnp.any(neg, axis=1)
    neg_lse = jnp.where(has_neg, masked_logsumexp(logits, neg, axis=1), _LOG_ZERO)
    per_pair = jnp.logaddexp(logits, neg_lse[:, None]) - logits
    per_pair = jnp.where(pos, per_pair, 0.0)
    return masked_mean(per_pair, pos) * (jnp.any(pos) & jnp.any(neg))


def lifted_structure(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Lifted structure loss (Oh Song et al., CVPR 2016), pytorch-metric-learning's LiftedStructureLoss:

    per positive pair (a, p): l_ap = 1/2 [ log( sum_{n in N_a} e^{m_n - d_an} + sum_{n in N_p} e^{m_n - d_pn} )
                                          + d_ap - m_p ]_+^2;
    L = mean over positive pairs (each unordered pair counted twice, hence the 1/2).
    """
    check_pair_inputs("lifted_structure", "dist", dist, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)))
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask)
    has_neg = jnp.any(neg, axis=1)
    # a finite stand-in for log(0) keeps logaddexp's gradient finite; rows without negatives then drop out
    row = jnp.where(has_neg, masked_logsumexp(neg_margin - dist, neg, axis=1), _LOG_ZERO)
    lse = jnp.logaddexp(row[:, None], row[None, :])
    lse = jnp.where(has_neg[:, None] | has_neg[None, :], lse, 0.0)
    per_pair = 0.5 * jax.nn.relu(lse + dist - pos_margin) ** 2
    return masked_mean(jnp.where(pos, per_pair, 0.0), pos) * (jnp.any(pos) & jnp.any(neg))


def generalized_lifted_structure(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Generalised lifted structure loss (Hermans et al. 2017, p. 4), pytorch-metric-learning semantics:

    L_i = [ log sum_{p in P_i} e^{d_ip - m_p} + log sum_{n in N_i} e^{m_n - d_in} ]_+ (an empty sum's log
    counts 0); L = mean over all (valid) anchors (MeanReducer).
    """
    check_pair_inputs("generalized_lifted_structure", "dist", dist, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)),
                      ref_labels=ref_labels, ref_mask=ref_mask)
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask, ref_labels, ref_mask)
    per_anchor = jax.nn.relu(masked_logsumexp(dist - pos_margin, pos, axis=1)
                             + masked_logsumexp(neg_margin - dist, neg, axis=1))
    return masked_mean(per_anchor, sample_valid(labels, sample_mask)) * (jnp.any(pos) | jnp.any(neg))


def tuplet_margin(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: float = 5.73,
    scale: float = 64.0,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Tuplet margin loss (Yu & Tao, ICCV 2019), pytorch-metric-learning's TupletMarginLoss (MeanReducer):

    per positive pair (a, p), with theta_ap = arccos s_ap and m in degrees,
    l_ap = log(1 + sum_{n in N_a} e^{scale (s_an - cos(theta_ap - m))}); L = mean over positive pairs.
    Needs a cosine-like similarity in [-1, 1] (clipped there). cos(theta - m) is evaluated as
    s cos m + sqrt(1 - s^2) sin m, finite-gradient at s = +-1 (pytorch-metric-learning's arccos is not).
    """
    check_pair_inputs("tuplet_margin", "sim", sim, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)),
                      ref_labels=ref_labels, ref_mask=ref_mask)
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask, ref_labels, ref_mask)
    mr = math.radians(margin)
    c = jnp.clip(sim, -1.0, 1.0)
    pos_shifted = c * math.cos(mr) + safe_sqrt(1.0 - c * c) * math.sin(mr)  # [a, p]
    inside = scale * (sim[:, None, :] - pos_shifted[:, :, None])  # [a, p, n]
    per_pair = masked_log1p_sum_exp(inside, jnp.broadcast_to(neg[:, None, :], inside.shape), axis=2)
    per_pair = jnp.where(pos, per_pair, 0.0)
    return masked_mean(per_pair, pos) * (jnp.any(pos) & jnp.any(neg))


def intra_pair_variance(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    pos_eps: float = 0.01,
    neg_eps: float = 0.01,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
    ref_labels: jnp.ndarray | None = None,
    ref_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Intra-pair variance loss (Yu et al. 2019), pytorch-metric-learning's IntraPairVarianceLoss:

    with mu+ / mu- the mean similarity of the positive / negative pairs,
    L = mean_{pos} [(1 - eps+) mu+ - s_ap]_+^2 + mean_{neg} [s_an - (1 + eps-) mu-]_+^2
    (means over all pairs, MeanReducer; the means mu carry gradient). Defined on a similarity.
    """
    check_pair_inputs("intra_pair_variance", "sim", sim, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)),
                      ref_labels=ref_labels, ref_mask=ref_mask)
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask, ref_labels, ref_mask)
    mu_pos = masked_mean(sim, pos)
    mu_neg = masked_mean(sim, neg)
    pos_loss = jax.nn.relu((1.0 - pos_eps) * mu_pos - sim) ** 2
    neg_loss = jax.nn.relu(sim - (1.0 + neg_eps) * mu_neg) ** 2
    return masked_mean(pos_loss, pos) + masked_mean(neg_loss, neg)


def nca(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    scale: float = 1.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Neighbourhood components analysis (Goldberger et al. 2004), pytorch-metric-learning's NCALoss:

    p_ij = softmax_{j != i}(scale s_ij); L = mean over samples with a positive of -log sum_{j in P_i} p_ij.
    pytorch-metric-learning's default is s = -|x^_i - x^_j|^2 = 2 cos - 2 with scale t: this loss on the
    cosine with scale = 2t. Difference: pytorch-metric-learning also drops samples whose positive
    probability underflows to 0; here they contribute their (large, finite) loss.
    """
    check_pair_inputs("nca", "sim", sim, labels, sample_mask)
    pos, neg = mining.pair_masks(labels, sample_mask)
    logp = masked_log_softmax(scale * sim, pos | neg)
    has_pos = jnp.any(pos, axis=1)
    per_anchor = -masked_logsumexp(jnp.where(pos, logp, 0.0), pos, axis=1)
    return masked_mean(jnp.where(has_pos, per_anchor, 0.0), has_pos)


def snr_distance(embeddings: jnp.ndarray) -> jnp.ndarray:
    """Signal-to-noise-ratio distance (Yuan et al., CVPR 2019) of the batch with itself, [B, B]:
    d_ij = Var(x^_j - x^_i) / Var(x^_i), variances over the D features of the L2-normalised embeddings
    (pytorch-metric-learning's SNRDistance; the variances' ddof cancels)."""
    check_matrix("snr_distance", "embeddings", embeddings, "[B, D] (samples x features)")
    x = l2_normalize(embeddings)
    xc = x - jnp.mean(x, axis=1, keepdims=True)
    var = jnp.mean(xc * xc, axis=1)
    diff = xc[None, :, :] - xc[:, None, :]
    return jnp.mean(diff * diff, axis=2) / var[:, None]


def signal_to_noise_ratio_contrastive(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """SNR contrastive loss (Yuan et al., CVPR 2019): `contrastive` on the SNR distance (`snr_distance`), with
    pytorch-metric-learning's SignalToNoiseRatioContrastiveLoss defaults (pos_margin 0, neg_margin 1).
    Any other distance may be passed; the objective uses the SNR distance of the embeddings."""
    check_pair_inputs("signal_to_noise_ratio_contrastive", "dist", dist, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)))
    return contrastive(dist, labels, pos_margin=pos_margin, neg_margin=neg_margin, pos_mask=pos_mask,
                       neg_mask=neg_mask, sample_mask=sample_mask)


def angular(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    alpha: float = 40.0,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Angular loss (Wang et al., ICCV 2017), pytorch-metric-learning's AngularLoss (MeanReducer):

    per positive pair (a, p), with t = tan^2(alpha) (alpha in degrees),
    l_ap = log(1 + sum_{n in N_a} e^{4 t (s_an + s_pn) - 2 (1 + t) s_ap}); L = mean over positive pairs,
    0 without negatives. s is the cosine (dot products of unit vectors, as in the paper).
    Difference: pytorch-metric-learning dots the normalised a + p with the raw, unnormalised negative
    embeddings; the two agree for unit-norm embeddings (values, and gradients up to their radial part).
    """
    check_pair_inputs("angular", "sim", sim, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)))
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask)
    t = math.tan(math.radians(alpha)) ** 2
    inside = 4.0 * t * (sim[:, None, :] + sim[None, :, :]) - 2.0 * (1.0 + t) * sim[:, :, None]  # [a, p, n]
    per_pair = masked_log1p_sum_exp(inside, jnp.broadcast_to(neg[:, None, :], inside.shape), axis=2)
    per_pair = jnp.where(pos, per_pair, 0.0)
    return masked_mean(per_pair, pos) * (jnp.any(pos) & jnp.any(neg))


def instance(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    gamma: float = 64.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Instance loss (Zheng et al., ACM TOMM 2020), pytorch-metric-learning's InstanceLoss:

    L = mean_i -log softmax_j(gamma s_ij)[t_i] over the batch's columns, the target column t_i being the
    rank of y_i among the batch's distinct labels (pytorch-metric-learning's torch.unique inverse). With
    one label per instance (labels 0..B-1 in batch order) the target is the sample itself.
    """
    check_pair_inputs("instance", "sim", sim, labels, sample_mask)
    valid = sample_valid(labels, sample_mask)
    # rank of y_i among the distinct valid labels: the number of distinct valid labels below it
    earlier = (labels[None, :] < labels[:, None]) & valid[None, :]
    first = jnp.argmax((labels[None, :] == labels[:, None]) & valid[None, :], axis=1)
    is_first = (first == jnp.arange(labels.shape[0])) & valid
    rank = jnp.sum(earlier & is_first[None, :], axis=1)
    return cross_entropy(gamma * sim, rank, jnp.broadcast_to(valid[None, :], sim.shape), valid)


def threshold_consistent_margin(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    lambda_plus: float = 1.0,
    lambda_minus: float = 1.0,
    margin_plus: float = 0.9,
    margin_minus: float = 0.5,
    pos_mask: jnp.ndarray | None = None,
    neg_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Threshold-consistent margin loss TCM (Zhang et al., ICCV 2023), pytorch-metric-learning semantics:

    L = lambda+ mean_{pos pairs with s <= m+} (m+ - s) + lambda- mean_{neg pairs with s >= m-} (s - m-)
    (an empty mean is 0). A regulariser, usually added to another loss; defined on the cosine.
    """
    check_pair_inputs("threshold_consistent_margin", "sim", sim, labels, sample_mask,
                      pair_masks=(("pos_mask", pos_mask), ("neg_mask", neg_mask)))
    pos, neg = _masks(labels, sample_mask, pos_mask, neg_mask)
    pos_active = pos & (sim <= margin_plus)
    neg_active = neg & (sim >= margin_minus)
    return (lambda_plus * masked_mean(jnp.where(pos_active, margin_plus - sim, 0.0), pos_active)
            + lambda_minus * masked_mean(jnp.where(neg_active, sim - margin_minus, 0.0), neg_active))


def ranked_list(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: float = 0.4,
    tn: float = 10.0,
    imbalance: float = 0.5,
    alpha: float | None = None,
    tp: float = 0.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Ranked list loss (Wang et al., CVPR 2019), pytorch-metric-learning's RankedListLoss(margin, Tn, ...):

    with alpha = 1 + margin / 2 by default, the violating positives P*_i = {p : d_ip > alpha - margin} and
    negatives N*_i = {n : d_in < alpha}, weights w_p = e^{Tp (d_ip - (alpha - margin))}, w_n = e^{Tn (alpha - d_in)},
    L_P,i = sum_{P*_i} w_p (d_ip - alpha + margin) / (sum_{P*_i} w_p + B 1e-5),
    L_N,i = sum_{N*_i} w_n (alpha - d_in) / (sum_{N*_i} w_n + B 1e-5) (the 1e-5 per column as in
    pytorch-metric-learning), L = mean_i (1 - imbalance) L_P,i + imbalance L_N,i. PML has no defaults for
    margin and Tn; 0.4 and 10 are the paper's. Distances of exactly 0 are not selected (as in PML).
    """
    if not 0.0 <= imbalance <= 1.0:
        raise ValueError(f"ranked_list: imbalance must lie in [0, 1], got {imbalance}")
    check_pair_inputs("ranked_list", "dist", dist, labels, sample_mask)
    pos, neg = mining.pair_masks(labels, sample_mask)
    a = 1.0 + margin / 2.0 if alpha is None else alpha
    p_star = pos & (dist > a - margin) & (dist > 0)
    n_star = neg & (dist < a) & (dist > 0)
    w_p = jnp.where(p_star, jnp.exp(jnp.where(p_star, tp * (dist - (a - margin)), 0.0)), 0.0)
    w_n = jnp.where(n_star, jnp.exp(jnp.where(n_star, tn * (a - dist), 0.0)), 0.0)
    eps = dist.shape[1] * 1e-5
    loss_p = jnp.sum(w_p * (dist - (a - margin)), axis=1) / (jnp.sum(w_p, axis=1) + eps)
    loss_n = jnp.sum(w_n * (a - dist), axis=1) / (jnp.sum(w_n, axis=1) + eps)
    return masked_mean((1.0 - imbalance) * loss_p + imbalance * loss_n, sample_valid(labels, sample_mask))


def dynamic_soft_margin(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    histogram: jnp.ndarray,
    *,
    min_val: float = -2.0,
    momentum: float = 0.01,
    triplets: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Dynamic soft margin loss (Zhang & Rusinkiewicz, ICCV 2019), pytorch-metric-learning's
    DynamicSoftMarginLoss; a stateful loss: returns (loss, updated histogram).

    Over the triplets x = d_ap - d_an (all valid ones, or `triplets`), binned on [min_val, -min_val] into
    num_bins = len(histogram) bins of width Delta = 2 |min_val| / num_bins with linear splitting between
    bin r = floor((x - min_val) / Delta) and r + 1, the histogram h is updated as
    h <- normalise((1 - m) h + m hist(x)) (m = momentum, or 1 while h is all zero), and
    L = mean over triplets of CDF_h(r) x; triplets with x outside [min_val, -min_val) count with weight 0
    (pytorch-metric-learning fails on them). Difference: the CDF weights carry no gradient here (a margin
    computed from statistics); pytorch-metric-learning also differentiates them through the bin fractions.
    """
    check_pair_inputs("dynamic_soft_margin", "dist", dist, labels, sample_mask, triplets=triplets)
    if len(_shape(histogram)) != 1 or _shape(histogram)[0] < 1:
        raise ValueError(f"dynamic_soft_margin: histogram must be [num_bins], got shape {_shape(histogram)}")
    num_bins = histogram.shape[0]
    delta = 2.0 * abs(min_val) / num_bins
    valid = mining.triplet_mask(labels, sample_mask)
    w = (valid if triplets is None else valid * triplets).astype(dist.dtype)
    x = dist[:, :, None] - dist[:, None, :]  # [a, p, n]
    position = jax.lax.stop_gradient((x - min_val) / delta)
    inside = (position >= 0) & (position < num_bins)  # triplets outside the binned range update no bin
    position = jnp.where(inside, position, 0.0)
    r = jnp.floor(position)
    frac = position - r
    r = r.astype(jnp.int32)
    m = jnp.where(jnp.sum(histogram) != 0, momentum, 1.0)
    new = (1.0 - m) * histogram
    # bins outside [0, num_bins) are dropped (index num_bins: out of range, never wrapped like a negative one)
    low = jnp.where((r >= 0) & (r < num_bins), r, num_bins).ravel()
    high = jnp.where((r + 1 >= 0) & (r + 1 < num_bins), r + 1, num_bins).ravel()
    new = new.at[low].add((m * (1.0 - frac) * w * inside).ravel(), mode="drop")
    new = new.at[high].add((m * frac * w * inside).ravel(), mode="drop")
    new = new / jnp.where(jnp.sum(new) > 0, jnp.sum(new), 1.0)
    cdf = jnp.cumsum(jax.lax.stop_gradient(new))
    weight = jnp.where(inside, cdf[jnp.clip(r, 0, num_bins - 1)], 0.0)
    loss = jnp.sum(w * weight * x) / jnp.maximum(jnp.sum(w), 1.0)
    return loss, jnp.where(jnp.sum(w) > 0, new, histogram)
