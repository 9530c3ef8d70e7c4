"""Pair and triplet miners as masks with static shapes (pytorch-metric-learning semantics).

The batch is compared with itself: `dist` / `sim` are [B, B] matrices over one batch with labels [B].
Pairs are [B, B] boolean masks (anchor, other); triplets are dense [B, B, B] arrays indexed
(anchor, positive, negative), boolean for deterministic miners and integer counts for the sampling
miner (a triplet drawn twice counts twice, as in pytorch-metric-learning's index lists).
`sample_mask` ([B] bool) removes padded samples from every pair and triplet.
The miners of MEMORY_MINERS also compare the batch with references (a cross-batch memory): `ref_labels`
[M] and `ref_mask` [M] make the pairs [B, M] and the triplets [B, M, M] (see `pair_masks`).
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


def pair_masks(labels: Array, sample_mask: Array | None = None, ref_labels: Array | None = None,
               ref_mask: Array | None = None) -> tuple[Array, Array]:
    """All positive and negative pairs of a batch: pos[i, j] = y_i == y_j and i != j; neg[i, j] = y_i != y_j.

    With `ref_labels` ([M], e.g. a cross-batch memory) the pairs are (batch query i, reference j), [B, M]:
    pos[i, j] = y_i == r_j, neg[i, j] = y_i != r_j, over the references with `ref_mask` True (filled
    memory slots) and without removing any pair (pytorch-metric-learning's get_matches_and_diffs with
    ref_labels; the caller removes the self pairs).
    """
    valid = _valid(labels, sample_mask)
    if ref_labels is None:
        both = valid[:, None] & valid[None, :]
        same = labels[:, None] == labels[None, :]
        eye = jnp.eye(labels.shape[0], dtype=bool)
        return same & ~eye & both, ~same & both
    both = valid[:, None] & _valid(ref_labels, ref_mask)[None, :]
    same = labels[:, None] == ref_labels[None, :]
    return same & both, ~same & both


def triplet_mask(labels: Array, sample_mask: Array | None = None, ref_labels: Array | None = None,
                 ref_mask: Array | None = None) -> Array:
    """All valid triplets: mask[a, p, n] = pos[a, p] and neg[a, n] ([B, B, B] bool; [B, M, M] with
    references, see `pair_masks`)."""
    pos, neg = pair_masks(labels, sample_mask, ref_labels, ref_mask)
    return pos[:, :, None] & neg[:, None, :]


def triplet_margin_mask(
    dist: Array,
    labels: Array,
    *,
    margin: float = 0.2,
    kind: str = "semihard",
    sample_mask: Array | None = None,
    ref_labels: Array | None = None,
    ref_mask: Array | None = None,
) -> Array:
    """Triplets by their margin m_apn = d_an - d_ap (TripletMarginMiner):

    all: m <= margin; hard: m <= margin and m <= 0; semihard: 0 < m <= margin; easy: m > margin.
    With `ref_labels` / `ref_mask` (see `pair_masks`), `dist` is [B, M] and the triplets [B, M, M].
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
    return triplet_mask(labels, sample_mask, ref_labels, ref_mask) & cond


def semihard_mask(dist: Array, labels: Array, *, margin: float = 0.2, sample_mask: Array | None = None) -> Array:
    """Semi-hard triplets, 0 < d_an - d_ap <= margin."""
    return triplet_margin_mask(dist, labels, margin=margin, kind="semihard", sample_mask=sample_mask)


def hard_mask(dist: Array, labels: Array, *, margin: float = 0.2, sample_mask: Array | None = None) -> Array:
    """Hard triplets, d_an - d_ap <= min(0, margin): the negative is no farther than the positive."""
    return triplet_margin_mask(dist, labels, margin=margin, kind="hard", sample_mask=sample_mask)


def batch_hard_mask(dist: Array, labels: Array, *, sample_mask: Array | None = None,
                    ref_labels: Array | None = None, ref_mask: Array | None = None) -> Array:
    """One triplet per anchor: its farthest positive and its nearest negative (BatchHardMiner).

    Anchors without a positive or without a negative get none. With `ref_labels` / `ref_mask` (see
    `pair_masks`), `dist` is [B, M] and the triplets [B, M, M].
    """
    dist = jax.lax.stop_gradient(dist)
    pos, neg = pair_masks(labels, sample_mask, ref_labels, ref_mask)
    p = jnp.argmax(jnp.where(pos, dist, -jnp.inf), axis=1)
    n = jnp.argmin(jnp.where(neg, dist, jnp.inf), axis=1)
    keep = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
    b = dist.shape[1]
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
    sim: Array, labels: Array, *, epsilon: float = 0.1, sample_mask: Array | None = None,
    ref_labels: Array | None = None, ref_mask: Array | None = None,
) -> tuple[Array, Array]:
    """Multi-Similarity pair mining (Wang et al. 2019, MultiSimilarityMiner) on a similarity matrix.

    Keeps a positive pair (i, j) if s_ij - epsilon < max_{negatives k} s_ik, and a negative pair (i, k)
    if s_ik + epsilon > min_{positives j} s_ij. An anchor without negatives keeps no positives and one
    without positives keeps no negatives. Returns (pos, neg) [B, B] boolean masks ([B, M] with
    `ref_labels` / `ref_mask`, see `pair_masks`).
    """
    sim = jax.lax.stop_gradient(sim)
    pos, neg = pair_masks(labels, sample_mask, ref_labels, ref_mask)
    max_neg = jnp.max(jnp.where(neg, sim, -jnp.inf), axis=1, keepdims=True)
    min_pos = jnp.min(jnp.where(pos, sim, jnp.inf), axis=1, keepdims=True)
    hard_pos = pos & (sim - epsilon < max_neg)
    hard_neg = neg & (sim + epsilon > min_pos)
    any_pairs = jnp.any(pos) & jnp.any(neg)
    return hard_pos & any_pairs, hard_neg & any_pairs


def angular_mask(sim: Array, labels: Array, *, angle: float = 20.0, sample_mask: Array | None = None) -> Array:
    """Triplets whose angle at the negative exceeds `angle` degrees (AngularMiner, Wang et al. 2017):

    for unit embeddings with cosines s, the centre c = (x_a + x_p) / 2 and
    tan(angle_apn) = |x_a - x_p| / (2 |x_n - c|), |x_a - x_p|^2 = 2 - 2 s_ap,
    |x_n - c|^2 = 1 - s_an - s_pn + (1 + s_ap) / 2. `sim` is the cosine.
    Difference: pytorch-metric-learning measures the raw (unnormalised) embeddings; the two agree on unit ones.
    """
    sim = jax.lax.stop_gradient(sim)
    ap = jnp.sqrt(jnp.maximum(2.0 - 2.0 * sim, 0.0))  # [a, p]
    nc_sq = 1.0 - sim[:, None, :] - sim[None, :, :] + (1.0 + sim[:, :, None]) / 2.0  # [a, p, n]
    nc = jnp.sqrt(jnp.maximum(nc_sq, 0.0))
    angles = jnp.arctan2(ap[:, :, None], 2.0 * nc)
    return triplet_mask(labels, sample_mask) & (angles > jnp.radians(angle))


def pair_margin_pairs(
    dist: Array, labels: Array, *, pos_margin: float = 0.2, neg_margin: float = 0.8, sample_mask: Array | None = None,
    ref_labels: Array | None = None, ref_mask: Array | None = None,
) -> tuple[Array, Array]:
    """Positive pairs farther than pos_margin and negative pairs nearer than neg_margin (PairMarginMiner);
    [B, M] with `ref_labels` / `ref_mask` (see `pair_masks`)."""
    dist = jax.lax.stop_gradient(dist)
    pos, neg = pair_masks(labels, sample_mask, ref_labels, ref_mask)
    return pos & (dist > pos_margin), neg & (dist < neg_margin)


def _top_fraction(values: Array, mask: Array, fraction: float, largest: bool) -> Array:
    """The ceil(fraction * n) entries of `values` under `mask` (n of them) with the largest (smallest) values."""
    flat = jnp.where(mask, values if largest else -values, -jnp.inf).ravel()
    order = jnp.argsort(-flat, stable=True)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    k = jnp.ceil(fraction * jnp.sum(mask)).astype(jnp.int32)
    return (rank < k).reshape(mask.shape) & mask


def hdc_pairs(
    dist: Array, labels: Array, *, filter_percentage: float = 0.5, sample_mask: Array | None = None
) -> tuple[Array, Array]:
    """Hard-aware deeply cascaded pair selection (HDCMiner, Yuan et al. 2017): the ceil(f n+) farthest of the
    n+ positive pairs and the ceil(f n-) nearest of the n- negative pairs, f = filter_percentage."""
    dist = jax.lax.stop_gradient(dist)
    pos, neg = pair_masks(labels, sample_mask)
    return (_top_fraction(dist, pos, filter_percentage, largest=True),
            _top_fraction(dist, neg, filter_percentage, largest=False))


BATCH_STRATEGIES = ("hard", "semihard", "easy", "all")


def batch_easy_hard_pairs(
    dist: Array,
    labels: Array,
    *,
    pos_strategy: str = "easy",
    neg_strategy: str = "semihard",
    allowed_pos_range: tuple[float, float] | None = None,
    allowed_neg_range: tuple[float, float] | None = None,
    sample_mask: Array | None = None,
) -> tuple[Array, Array]:
    """One positive and one negative per anchor by strategy (BatchEasyHardMiner, Xuan et al. 2020):

    positives: easy = nearest, hard = farthest, semihard = the farthest one nearer than the anchor's chosen
    negative; negatives: easy = farthest, hard = nearest, semihard = the nearest one farther than the
    chosen positive; all = every pair (no selection). Only distances inside the allowed range count.
    Without 'all', an anchor keeps its pair only if it has both a positive and a negative.
    Returns (pos, neg) [B, B] masks.
    """
    for kind, value in (("pos_strategy", pos_strategy), ("neg_strategy", neg_strategy)):
        if value not in BATCH_STRATEGIES:
            raise ValueError(f"{kind} must be one of {BATCH_STRATEGIES}, got {value!r}")
    if pos_strategy == neg_strategy == "semihard":
        raise ValueError("pos_strategy and neg_strategy cannot both be 'semihard'")
    if "semihard" in (pos_strategy, neg_strategy) and "all" in (pos_strategy, neg_strategy):
        raise ValueError("'semihard' cannot be combined with 'all' (pos_strategy, neg_strategy)")
    dist = jax.lax.stop_gradient(dist)
    pos, neg = pair_masks(labels, sample_mask)
    if allowed_pos_range is not None:
        pos_ok = pos & (dist >= allowed_pos_range[0]) & (dist <= allowed_pos_range[1])
    else:
        pos_ok = pos
    if allowed_neg_range is not None:
        neg_ok = neg & (dist >= allowed_neg_range[0]) & (dist <= allowed_neg_range[1])
    else:
        neg_ok = neg

    def pick(mask, farthest, threshold=None):
        if threshold is not None:
            mask = mask & ((dist < threshold[:, None]) if farthest else (dist > threshold[:, None]))
        fill = -jnp.inf if farthest else jnp.inf
        values = jnp.where(mask, dist, fill)
        idx = jnp.argmax(values, axis=1) if farthest else jnp.argmin(values, axis=1)
        chosen = jnp.take_along_axis(dist, idx[:, None], axis=1)[:, 0]
        return jax.nn.one_hot(idx, dist.shape[1], dtype=bool), chosen, jnp.any(mask, axis=1)

    pos_far = pos_strategy in ("hard", "semihard")
    neg_far = neg_strategy == "easy"
    if pos_strategy == "semihard":
        n_sel, n_d, n_keep = pick(neg_ok, neg_far)
        p_sel, _, p_keep = pick(pos_ok, pos_far, threshold=n_d)
    elif neg_strategy == "semihard":
        p_sel, p_d, p_keep = pick(pos_ok, pos_far)
        n_sel, _, n_keep = pick(neg_ok, neg_far, threshold=p_d)
    else:
        p_sel, _, p_keep = pick(pos_ok, pos_far)
        n_sel, _, n_keep = pick(neg_ok, neg_far)
    if pos_strategy == "all" and neg_strategy == "all":
        return pos, neg
    if pos_strategy == "all":
        return pos, n_sel & n_keep[:, None]
    if neg_strategy == "all":
        return p_sel & p_keep[:, None], neg
    keep = (p_keep & n_keep)[:, None]
    return p_sel & keep, n_sel & keep


def uniform_histogram_pairs(
    key: Array,
    dist: Array,
    labels: Array,
    *,
    num_bins: int = 100,
    pos_per_bin: int = 10,
    neg_per_bin: int = 10,
    sample_mask: Array | None = None,
) -> tuple[Array, Array]:
    """Pairs drawn uniformly over the distance range (UniformHistogramMiner): the range [min, max] of the
    positive (negative) pair distances is cut into num_bins equal bins, and every non-empty bin draws
    pos_per_bin (neg_per_bin) of its pairs uniformly with replacement. Returns [B, B] int32 counts (the
    number of times each pair was drawn); the pair losses use the drawn set."""
    dist = jax.lax.stop_gradient(dist)
    pos, neg = pair_masks(labels, sample_mask)
    key_p, key_n = jax.random.split(key)

    def draw(k, mask, per_bin):
        lo = jnp.min(jnp.where(mask, dist, jnp.inf))
        hi = jnp.max(jnp.where(mask, dist, -jnp.inf))
        width = jnp.where(hi > lo, (hi - lo) / num_bins, 1.0)
        bins = jnp.clip(jnp.floor((dist - lo) / width), 0, num_bins - 1).astype(jnp.int32).ravel()
        flat_mask = mask.ravel()
        one_hot = (bins[None, :] == jnp.arange(num_bins)[:, None]) & flat_mask[None, :]  # [bins, B*B]
        idx = _inverse_cdf_sample(k, one_hot.astype(dist.dtype), per_bin)  # [bins, per_bin]
        ok = jnp.broadcast_to(jnp.any(one_hot, axis=1)[:, None], idx.shape).astype(jnp.int32)
        return jnp.zeros(flat_mask.shape, jnp.int32).at[idx.ravel()].add(ok.ravel()).reshape(mask.shape)

    return draw(key_p, pos, pos_per_bin), draw(key_n, neg, neg_per_bin)


# The miners by pytorch-metric-learning class (registry name = its snake_case without 'Miner'):
# name -> (function, what it returns: 'triplets' [B, B, B] or 'pairs' (pos, neg) [B, B], the matrix it reads,
# the pytorch-metric-learning class).
# Miners that take references (`ref_labels`, `ref_mask`): usable with a cross-batch memory.
MEMORY_MINERS = ("batch_hard", "multi_similarity", "pair_margin", "triplet_margin")

MINER_REGISTRY: dict[str, tuple] = {
    "angular": (angular_mask, "triplets", "similarity", "AngularMiner"),
    "batch_easy_hard": (batch_easy_hard_pairs, "pairs", "distance", "BatchEasyHardMiner"),
    "batch_hard": (batch_hard_mask, "triplets", "distance", "BatchHardMiner"),
    "distance_weighted": (distance_weighted_triplets, "triplets", "distance", "DistanceWeightedMiner"),
    "hdc": (hdc_pairs, "pairs", "distance", "HDCMiner"),
    "multi_similarity": (multi_similarity_pairs, "pairs", "similarity", "MultiSimilarityMiner"),
    "pair_margin": (pair_margin_pairs, "pairs", "distance", "PairMarginMiner"),
    "triplet_margin": (triplet_margin_mask, "triplets", "distance", "TripletMarginMiner"),
    "uniform_histogram": (uniform_histogram_pairs, "pairs", "distance", "UniformHistogramMiner"),
}
