"""Ranking losses: smoothed average precision over the batch against itself, `dist` [B, B], labels [B]."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from probdml import mining
from probdml.losses._common import check_pair_inputs, masked_mean, sample_valid

Array = jax.Array


def fast_ap(
    dist: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    num_bins: int = 10,
    histogram_max: float = 4.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """FastAP (Cakir et al. 2019), pytorch-metric-learning semantics: 1 - AP from soft histograms.

    Distances are binned by triangular kernels at num_bins + 1 points 0, D/num_bins, ..., D
    (D = histogram_max; pytorch-metric-learning uses the squared chord distance, in [0, 4]).
    With h+_ik, H_ik the positive / all-pair counts in bin k and cumulative sums H+ , H:
    FastAP_i = (1 / N+_i) sum_k h+_ik H+_ik / H_ik; L = mean over anchors with a positive of 1 - FastAP_i.
    Difference: when no positive pair falls inside [0, D] at all, pytorch-metric-learning returns 0;
    here every anchor with a positive then scores FastAP = 0 (loss 1, with zero gradient).
    """
    check_pair_inputs("fast_ap", "dist", dist, labels, sample_mask)
    pos, neg = mining.pair_masks(labels, sample_mask)
    delta = histogram_max / num_bins
    mids = jnp.linspace(0.0, histogram_max, num_bins + 1, dtype=dist.dtype)
    pulse = jax.nn.relu(1.0 - jnp.abs(dist[:, :, None] - mids) / delta)  # [B, B, E]
    pos_hist = jnp.sum(pulse * pos[:, :, None], axis=1)  # [B, E]
    neg_hist = jnp.sum(pulse * neg[:, :, None], axis=1)
    total_pos = jnp.cumsum(pos_hist, axis=1)
    total = jnp.cumsum(pos_hist + neg_hist, axis=1)
    product = pos_hist * total_pos
    safe = (product > 0) & (total > 0)
    ap_terms = jnp.where(safe, product / jnp.where(safe, total, 1.0), 0.0)
    n_pos = jnp.sum(pos, axis=1)
    has_pos = n_pos > 0
    ap = jnp.sum(ap_terms, axis=1) / jnp.maximum(n_pos, 1)
    return masked_mean(1.0 - ap, has_pos)


def smooth_ap(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    temperature: float = 0.01,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Smooth-AP (Brown et al., ECCV 2020), pytorch-metric-learning's SmoothAPLoss:

    with G_i = {j : y_j = y_i} (the anchor included, as in the official code) and the sigmoid rank
    R(i, j, S) = 1 + sum_{k in S, k != j} sigmoid((s_ik - s_ij) / T),
    AP_i = 1/|G_i| sum_{j in G_i} R(i, j, G_i) / R(i, j, all); L = mean_i (1 - AP_i).
    Difference: pytorch-metric-learning requires every class to have the same number of samples in
    contiguous blocks (and raises otherwise), and groups the batch in blocks of B / #classes, which are the
    classes only when #classes equals the class size; here any labels are accepted (equal values there).
    """
    check_pair_inputs("smooth_ap", "sim", sim, labels, sample_mask)
    valid = sample_valid(labels, sample_mask)
    both = valid[:, None] & valid[None, :]
    group = (labels[:, None] == labels[None, :]) & both  # [i, j]
    b = labels.shape[0]
    not_self = ~jnp.eye(b, dtype=bool)  # k != j
    sig = jax.nn.sigmoid((sim[:, None, :] - sim[:, :, None]) / temperature)  # [i, j, k]
    sig = jnp.where(not_self[None] & valid[None, None, :], sig, 0.0)
    rank_all = 1.0 + jnp.sum(sig, axis=2)
    rank_pos = 1.0 + jnp.sum(jnp.where(group[:, None, :], sig, 0.0), axis=2)
    ap = jnp.sum(jnp.where(group, rank_pos / rank_all, 0.0), axis=1) / jnp.maximum(jnp.sum(group, axis=1), 1)
    return masked_mean(1.0 - ap, valid)


PNP_VARIANTS = ("Ds", "Dq", "Iu", "Ib", "O")


def pnp(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    b: float = 2.0,
    alpha: float = 1.0,
    anneal: float = 0.01,
    variant: str = "O",
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Positive-negative-prioritised ranking loss PNP (Li et al., 2022), pytorch-metric-learning's PNPLoss:

    for an anchor i with positives and each j in P_i u {i}, the soft number of negatives ranked above j,
    r_ij = sum_{k in N_i} sigmoid((s_ik - s_ij) / anneal) (sigmoid argument clipped to +-50), goes through
    the variant's function f: O: r; Ds: log(1 + r); Dq: (1 + r)^-alpha; Iu: (1 + r) log(1 + r);
    Ib: (b r - log(1 + b r)) / b^2. L = mean over anchors with positives of mean_j f(r_ij) (1 - that for Dq).
    """
    if variant not in PNP_VARIANTS:
        raise ValueError(f"pnp: variant must be one of {PNP_VARIANTS}, got {variant!r}")
    check_pair_inputs("pnp", "sim", sim, labels, sample_mask)
    pos, neg = mining.pair_masks(labels, sample_mask)
    has_pos = jnp.any(pos, axis=1)
    i_pos = pos | (jnp.eye(labels.shape[0], dtype=bool) & has_pos[:, None])
    exponent = jnp.clip(-(sim[:, None, :] - sim[:, :, None]) / anneal, -50.0, 50.0)  # [i, j, k]
    sig = 1.0 / (1.0 + jnp.exp(exponent))
    rank = jnp.sum(jnp.where(neg[:, None, :], sig, 0.0), axis=2)
    if variant == "Ds":
        rank = jnp.log1p(rank)
    elif variant == "Dq":
        rank = 1.0 / (1.0 + rank) ** alpha
    elif variant == "Iu":
        rank = (1.0 + rank) * jnp.log1p(rank)
    elif variant == "Ib":
        rank = (b * rank - jnp.log1p(b * rank)) / b**2
    per_anchor = jnp.sum(jnp.where(i_pos, rank, 0.0), axis=1) / jnp.maximum(jnp.sum(i_pos, axis=1), 1)
    loss = masked_mean(per_anchor, has_pos)
    if variant == "Dq":
        loss = jnp.where(jnp.any(has_pos), 1.0 - loss, 0.0)
    return loss


def histogram(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    n_bins: int = 100,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Histogram loss (Ustinova & Lempitsky, NeurIPS 2016), pytorch-metric-learning's HistogramLoss:

    similarities in [-1, 1] are spread over n_bins + 1 nodes t_r = -1 + r Delta (Delta = 2 / n_bins) by
    triangular kernels; p+ and p- are the normalised histograms of the distinct positive and negative
    pairs that belong to some triplet, and L = sum_r p-_r sum_{q <= r} p+_q (the probability that a
    negative pair is more similar than a positive one). Needs a similarity in [-1, 1].
    """
    check_pair_inputs("histogram", "sim", sim, labels, sample_mask)
    pos, neg = mining.pair_masks(labels, sample_mask)
    in_triplet_pos = jnp.any(neg, axis=1)  # anchors with a negative can use their positives
    in_triplet_neg = jnp.any(pos, axis=1)  # anchors with a positive can use their negatives
    upper = jnp.triu(jnp.ones_like(pos), k=1)  # each unordered pair once
    pos_pairs = pos & upper & (in_triplet_pos[:, None] | in_triplet_pos[None, :])
    neg_pairs = neg & upper & (in_triplet_neg[:, None] | in_triplet_neg[None, :])
    delta = 2.0 / n_bins
    nodes = jnp.arange(n_bins + 1, dtype=sim.dtype)
    kernel = jax.nn.relu(1.0 - jnp.abs((sim[:, :, None] + 1.0) / delta - nodes))  # [B, B, n_bins + 1]

    def density(mask):
        counts = jnp.sum(kernel * mask[:, :, None], axis=(0, 1))
        return counts / jnp.maximum(jnp.sum(mask), 1)

    loss = jnp.sum(density(neg_pairs) * jnp.cumsum(density(pos_pairs)))
    return loss * (jnp.any(pos_pairs) & jnp.any(neg_pairs))
