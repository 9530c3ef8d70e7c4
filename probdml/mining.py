"""Pair and triplet miners as masks with static shapes (pytorch-metric-learning semantics).

The batch is compared with itself: `dist` / `sim` are [B, B] matrices over one batch with labels [B].
Pairs are [B, B] boolean masks (anchor, other); triplets are dense [B, B, B] arrays indexed
(anchor, positive, negative), boolean for deterministic miners and integer counts for the sampling
miner (a triplet drawn twice counts twice, as in pytorch-metric-learning's index lists).
`sample_mask` ([B] bool) removes padded samples from every pair and triplet.
Miners select; they are not differentiated (their inputs go through `stop_gradient`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

TRIPLET_KINDS = ("all", "hard", "semihard", "easy")


def _valid(labels: Array, sample_mask: Array | None) -> Array:
    if sample_mask is None:
        return jnp.ones(labels.shape, dtype=bool)
    return sample_mask.astype(bool)


def pair_masks(labels: Array, sample_mask: Array | None = None) -> tuple[Array, Array]:
    """All positive and negative pairs of a batch: pos[i, j] = y_i == y_j and i != j; neg[i, j] = y_i != y_j."""
    valid = _valid(labels, sample_mask)
    both = valid[:, None] & valid[None, :]
    same = labels[:, None] == labels[None, :]
    eye = jnp.eye(labels.shape[0], dtype=bool)
    return same & ~eye & both, ~same & both


def triplet_mask(labels: Array, sample_mask: Array | None = None) -> Array:
    """All valid triplets: mask[a, p, n] = pos[a, p] and neg[a, n] ([B, B, B] bool)."""
    pos, neg = pair_masks(labels, sample_mask)
    return pos[:, :, None] & neg[:, None, :]


def triplet_margin_mask(
    dist: Array,
    labels: Array,
    *,
    margin: float = 0.2,
    kind: str = "semihard",
    sample_mask: Array | None = None,
) -> Array:
    """Triplets by their margin m_apn = d_an - d_ap (TripletMarginMiner):

    all: m <= margin; hard: m <= margin and m <= 0; semihard: 0 < m <= margin; easy: m > margin.
    """
    if kind not in TRIPLET_KINDS:
        raise ValueError(f"kind must be one of {TRIPLET_KINDS}, got {kind!r}")
    dist = jax.lax.stop_gradient(dist)
    tm = dist[:, None, :] - dist[:, :, None]
    if kind == "easy":
        cond = tm > margin
    else:
        cond = tm <= margin
        if kind == "hard":
            cond &= tm <= 0
        elif kind == "semihard":
            cond &= tm > 0
    return triplet_mask(labels, sample_mask) & cond


def semihard_mask(dist: Array, labels: Array, *, margin: float = 0.2, sample_mask: Array | None = None) -> Array:
    """Semi-hard triplets, 0 < d_an - d_ap <= margin."""
    return triplet_margin_mask(dist, labels, margin=margin, kind="semihard", sample_mask=sample_mask)


def hard_mask(dist: Array, labels: Array, *, margin: float = 0.2, sample_mask: Array | None = None) -> Array:
    """Hard triplets, d_an - d_ap <= min(0, margin): the negative is no farther than the positive."""
    return triplet_margin_mask(dist, labels, margin=margin, kind="hard", sample_mask=sample_mask)


def batch_hard_mask(dist: Array, labels: Array, *, sample_mask: Array | None = None) -> Array:
    """One triplet per anchor: its farthest positive and its nearest negative (BatchHardMiner).

    Anchors without a positive or without a negative get none.
    """
    dist = jax.lax.stop_gradient(dist)
    pos, neg = pair_masks(labels, sample_mask)
    p = jnp.argmax(jnp.where(pos, dist, -jnp.inf), axis=1)
    n = jnp.argmin(jnp.where(neg, dist, jnp.inf), axis=1)
    keep = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
    b = labels.shape[0]
    onehot_p = jax.nn.one_hot(p, b, dtype=bool)
    onehot_n = jax.nn.one_hot(n, b, dtype=bool)
    return keep[:, None, None] & onehot_p[:, :, None] & onehot_n[:, None, :]


def distance_weighted_weights(
    dist: Array,
    labels: Array,
    *,
    dim: int,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    sample_mask: Array | None = None,
) -> Array:
    """Negative-sampling distribution of distance-weighted sampling (Wu et al. 2017), rows sum to 1 or 0.

    With d' = max(d, cutoff): q(d') = d'^(2 - dim) (1 - d'^2 / 4)^(-(dim - 3) / 2) is the inverse density of
    pairwise distances of points uniform on S^(dim-1); w[a, n] is proportional to q for negatives with
    d' < nonzero_loss_cutoff, zero otherwise (and zero where log q is not finite, i.e. d' >= 2).
    Difference from pytorch-metric-learning: the log-weights are shifted by their row maximum instead of
    the batch maximum, so a row never underflows to all zeros when its weights are merely small.
    """
    dist = jax.lax.stop_gradient(dist)
    _, neg = pair_masks(labels, sample_mask)
    d = jnp.maximum(dist, cutoff)
    inner = 1.0 - 0.25 * d * d
    finite = inner > 0
    log_w = (2.0 - dim) * jnp.log(d) - ((dim - 3) / 2.0) * jnp.log(jnp.where(finite, inner, 1.0))
    keep = neg & finite & (d < nonzero_loss_cutoff)
    row_max = jnp.max(jnp.where(keep, log_w, -jnp.inf), axis=1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    w = jnp.where(keep, jnp.exp(jnp.where(keep, log_w - row_max, 0.0)), 0.0)
    total = jnp.sum(w, axis=1, keepdims=True)
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


def distance_weighted_triplets(
    key: Array,
    dist: Array,
    labels: Array,
    *,
    dim: int,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    triplets_per_anchor: int | None = None,
    sample_mask: Array | None = None,
) -> Array:
    """Sampled triplets as counts [B, B, B] (DistanceWeightedMiner + get_random_triplet_indices).

    Each anchor with a positive and a non-zero weight row draws k triplets, k = its class size
    (`triplets_per_anchor=None`, pytorch-metric-learning) or a fixed k: the positive uniformly among the
    other members of its class, the negative from `distance_weighted_weights`, both with replacement.
    """
    b = labels.shape[0]
    weights = distance_weighted_weights(
        dist, labels, dim=dim, cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff, sample_mask=sample_mask
    )
    pos, _ = pair_masks(labels, sample_mask)
    k = b if triplets_per_anchor is None else int(triplets_per_anchor)
    key_p, key_n = jax.random.split(key)
    p = _inverse_cdf_sample(key_p, pos.astype(weights.dtype), k)
    n = _inverse_cdf_sample(key_n, weights, k)
    usable = jnp.any(pos, axis=1) & jnp.any(weights > 0, axis=1)
    if triplets_per_anchor is None:
        class_size = jnp.sum(pos, axis=1) + 1
        slot_ok = jnp.arange(k)[None, :] < class_size[:, None]
    else:
        slot_ok = jnp.ones((b, k), dtype=bool)
    count = (usable[:, None] & slot_ok).astype(jnp.int32)
    anchors = jnp.broadcast_to(jnp.arange(b)[:, None], (b, k))
    return jnp.zeros((b, b, b), jnp.int32).at[anchors, p, n].add(count)


def _inverse_cdf_sample(key: Array, weights: Array, k: int) -> Array:
    """k draws per row from the unnormalised row distributions weights [B, M] ([B, k] column indices;
    rows of zeros give arbitrary indices, to be masked by the caller)."""
    cdf = jnp.cumsum(weights, axis=1)
    u = jax.random.uniform(key, (weights.shape[0], k), dtype=weights.dtype) * cdf[:, -1:]
    idx = jnp.sum(cdf[:, None, :] <= u[:, :, None], axis=-1)
    return jnp.minimum(idx, weights.shape[1] - 1)


def multi_similarity_pairs(
    sim: Array, labels: Array, *, epsilon: float = 0.1, sample_mask: Array | None = None
) -> tuple[Array, Array]:
    """Multi-Similarity pair mining (Wang et al. 2019, MultiSimilarityMiner) on a similarity matrix.

    Keeps a positive pair (i, j) if s_ij - epsilon < max_{negatives k} s_ik, and a negative pair (i, k)
    if s_ik + epsilon > min_{positives j} s_ij. An anchor without negatives keeps no positives and one
    without positives keeps no negatives. Returns (pos, neg) [B, B] boolean masks.
    """
    sim = jax.lax.stop_gradient(sim)
    pos, neg = pair_masks(labels, sample_mask)
    max_neg = jnp.max(jnp.where(neg, sim, -jnp.inf), axis=1, keepdims=True)
    min_pos = jnp.min(jnp.where(pos, sim, jnp.inf), axis=1, keepdims=True)
    hard_pos = pos & (sim - epsilon < max_neg)
    hard_neg = neg & (sim + epsilon > min_pos)
    any_pairs = jnp.any(pos) & jnp.any(neg)
    return hard_pos & any_pairs, hard_neg & any_pairs
