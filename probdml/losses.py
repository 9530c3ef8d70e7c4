"""Metric-learning losses: pure functions of a pairwise similarity (or distance) matrix and labels.

Proxy and classification losses take `sim` [B, C], the similarity of each sample to each class proxy
(or to each of C*K centres for SoftTriple). Pair losses take the batch compared with itself, `sim` or
`dist` [B, B]: which one each uses, and how a similarity becomes a distance, is set by the similarity
(`probdml.similarity.Pairwise`). Every loss accepts `sample_mask` ([B] bool, False = padding) and is
defined and finite for batches where a class has one sample or all samples share a class (terms with
no pairs contribute 0, and a loss with no active term is 0).

Semantics follow pytorch-metric-learning 2.x with its default reducers; deliberate differences are
listed in each docstring.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from probdml import mining
from probdml.similarity import safe_sqrt

Array = jax.Array


def masked_log1p_sum_exp(x: jnp.ndarray, mask: jnp.ndarray, axis: int) -> jnp.ndarray:
    """log(1 + sum_{mask} exp(x)) along `axis`, computed stably (a max shift including the 1).

    Entries where `mask` is False contribute nothing; an all-False slice gives log(1) = 0.
    """
    mask = mask.astype(bool)
    shift = jnp.maximum(jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True), 0.0)
    shift = jax.lax.stop_gradient(shift)
    # exp of -inf (not a discarded where-branch) for masked entries: an overflowing exp there would turn
    # the zero cotangent of the unselected branch into 0 * inf = NaN.
    total = jnp.exp(-shift) + jnp.sum(jnp.exp(jnp.where(mask, x - shift, -jnp.inf)), axis=axis, keepdims=True)
    return jnp.squeeze(shift + jnp.log(total), axis=axis)


def masked_log_softmax(logits: jnp.ndarray, mask: jnp.ndarray | None = None, axis: int = -1) -> jnp.ndarray:
    """log softmax over the entries where `mask` is True (others get -inf); an all-False slice gives -inf."""
    if mask is None:
        return jax.nn.log_softmax(logits, axis=axis)
    mask = mask.astype(bool)
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(mask, logits, -jnp.inf), axis=axis, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    z = logits - shift
    lse = jnp.log(jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, z, 0.0)), 0.0), axis=axis, keepdims=True))
    return jnp.where(mask, z - lse, -jnp.inf)


def _sample_valid(labels: Array, sample_mask: Array | None) -> Array:
    if sample_mask is None:
        return jnp.ones(labels.shape, dtype=bool)
    return sample_mask.astype(bool)


def _masked_mean(values: Array, mask: Array) -> Array:
    """mean of values over mask; 0 if the mask is empty."""
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _mean_nonzero(losses: Array, weights: Array) -> Array:
    """sum(w l) / sum(w [l > 0]): the mean of the positive terms, each counted w times (AvgNonZeroReducer)."""
    weights = weights.astype(losses.dtype)
    active = jnp.sum(weights * (losses > 0))
    return jnp.sum(weights * losses) / jnp.maximum(active, 1.0)


def _cross_entropy(logits: Array, labels: Array, class_mask: Array | None, valid: Array) -> Array:
    logp = masked_log_softmax(logits, None if class_mask is None else jnp.broadcast_to(class_mask, logits.shape))
    picked = jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    picked = jnp.where(valid, picked, 0.0)
    return _masked_mean(-picked, valid)


# ----------------------------------------------------------------------------------------------------
# Proxy and classification losses: sim [B, C]


def proxy_anchor(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: float = 0.1,
    alpha: float = 32.0,
    sample_mask: jnp.ndarray | None = None,
    positives_per: str = "proxies",
) -> jnp.ndarray:
    """Proxy-Anchor loss (Kim et al., CVPR 2020), pytorch-metric-learning semantics.

    sim: [B, C] similarity of each sample to each class proxy; labels: [B] ints in [0, C).
    L = 1/|P+| sum_{c in P+} log(1 + sum_{i: y_i = c} exp(-alpha (s_ic - margin)))
      + 1/C    sum_{c}       log(1 + sum_{i: y_i != c} exp( alpha (s_ic + margin)))
    where P+ is the set of proxies with at least one positive in the batch.
    `sample_mask` ([B] bool) excludes padded samples.
    `positives_per="columns"`: the positive term is averaged over the batch's samples instead,
    1/B sum_j log(1 + sum_{i: y_i = y_j} exp(-alpha (s_{i,y_j} - margin))), so a class with k samples
    counts k times (the EL-nivMF reference's guidance term, specs/nivmf.md section 3.3).
    """
    if positives_per not in ("proxies", "columns"):
        raise ValueError(f"positives_per must be 'proxies' or 'columns', got {positives_per!r}")
    num_classes = sim.shape[1]
    pos = jax.nn.one_hot(labels, num_classes, dtype=bool)
    if sample_mask is not None:
        valid = sample_mask.astype(bool)[:, None]
    else:
        valid = jnp.ones_like(pos)
    neg = jnp.logical_and(~pos, valid)
    pos = jnp.logical_and(pos, valid)
    pos_term = masked_log1p_sum_exp(-alpha * (sim - margin), pos, axis=0)
    neg_term = masked_log1p_sum_exp(alpha * (sim + margin), neg, axis=0)
    neg_mean = jnp.sum(neg_term) / num_classes
    if positives_per == "columns":
        counts = jnp.sum(pos, axis=0).astype(pos_term.dtype)
        return jnp.sum(counts * pos_term) / jnp.maximum(jnp.sum(counts), 1.0) + neg_mean
    num_pos_proxies = jnp.sum(jnp.any(pos, axis=0))
    return jnp.sum(pos_term) / jnp.maximum(num_pos_proxies, 1) + neg_mean


def proxy_nca(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    scale: float = 64.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """ProxyNCA (Movshovitz-Attias et al. 2017) as in pytorch-metric-learning: softmax over all proxies,
    the positive included. L = mean_i -log softmax_c(scale * s_ic)[y_i].

    pytorch-metric-learning's ProxyNCALoss(softmax_scale=t) uses logits -t ||x^ - p^||^2 = 2t cos - 2t,
    i.e. this loss on the cosine with scale = 2t (IDML's wrapper, t = 32, is scale = 64).
    Difference: pytorch-metric-learning drops samples whose positive probability underflows to 0 in
    float32; here they contribute their (large, finite) loss.
    """
    valid = _sample_valid(labels, sample_mask)
    return _cross_entropy(scale * sim, labels, None, valid)


def proxy_nca_pp(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    temperature: float | jnp.ndarray = 1.0 / 9.0,
    class_mask: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """ProxyNCA++ (Teh et al. 2020): L = mean_i [-S_{i,y_i} + logsumexp_{c in mask} S_ic], S = s / T.

    Softmax over all proxies (positive included), or over those with `class_mask` ([C] bool) True, which
    is how proxy subsampling stays static-shaped (`proxy_subsample_mask`); the positive proxy must be kept.
    `temperature` may be a learnable array. The paper's similarity -||x^ - p^||^2 = 2 cos - 2 means its
    T equals 2T here with the cosine.
    """
    valid = _sample_valid(labels, sample_mask)
    return _cross_entropy(sim / temperature, labels, class_mask, valid)


def proxy_subsample_mask(key: Array, labels: Array, num_classes: int, fraction: float,
                         sample_mask: Array | None = None) -> Array:
    """[C] bool mask keeping every proxy of a class in the batch plus random others, round(fraction C) in
    all (or just the batch's classes if there are more of those), as ProxyNCA++ / nivMF subsampling."""
    valid = _sample_valid(labels, sample_mask)
    in_batch = jnp.zeros((num_classes,), jnp.int32).at[labels].max(valid.astype(jnp.int32)) > 0
    keep = int(round(fraction * num_classes))
    scores = jnp.where(in_batch, -1.0, jax.random.uniform(key, (num_classes,)))
    rank = jnp.argsort(jnp.argsort(scores))
    return in_batch | (rank < keep)


def normalized_softmax(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    temperature: float = 0.05,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Normalized softmax (Zhai & Wu 2019): L = mean_i -log softmax_c(s_ic / T)[y_i], s = cos(x_i, w_c)."""
    valid = _sample_valid(labels, sample_mask)
    return _cross_entropy(sim / temperature, labels, None, valid)


def arcface(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: float = 28.6,
    scale: float = 64.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """ArcFace (Deng et al. 2019): the target logit cos(theta) becomes cos(theta + m) (m in degrees),
    or cos(theta) - m sin(m) where theta > 180 deg - m (keeps it decreasing); logits scaled by `scale`.

    sim must be a cosine-like similarity in [-1, 1] (clipped there). cos(theta + m) is evaluated as
    c cos m - sqrt(1 - c^2) sin m, whose gradient is finite at c = +-1 (pytorch-metric-learning's acos
    has an infinite one there); values agree.
    """
    m = math.radians(margin)
    c = jnp.clip(sim, -1.0, 1.0)
    target = jax.nn.one_hot(labels, sim.shape[1], dtype=bool)
    sin = safe_sqrt(1.0 - c * c)
    with_margin = jnp.where(c >= -math.cos(m), c * math.cos(m) - sin * math.sin(m), c - m * math.sin(m))
    logits = scale * jnp.where(target, with_margin, c)
    valid = _sample_valid(labels, sample_mask)
    return _cross_entropy(logits, labels, None, valid)


def soft_triple(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    centers_per_class: int = 10,
    la: float = 20.0,
    gamma: float = 0.1,
    margin: float = 0.01,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """SoftTriple (Qian et al. 2019), pytorch-metric-learning semantics (no centre regulariser).

    sim: [B, C*K], centre k of class c in column c*K + k. S_ic = sum_k softmax_k(s_ick / gamma) s_ick;
    L = mean_i -log softmax_c(la (S_ic - margin [c = y_i]))[y_i].
    """
    b, ck = sim.shape
    if ck % centers_per_class:
        raise ValueError(f"sim has {ck} columns, not a multiple of centers_per_class={centers_per_class}")
    per_center = sim.reshape(b, ck // centers_per_class, centers_per_class)
    prob = jax.nn.softmax(per_center / gamma, axis=2)
    class_sim = jnp.sum(prob * per_center, axis=2)
    target = jax.nn.one_hot(labels, class_sim.shape[1], dtype=sim.dtype)
    valid = _sample_valid(labels, sample_mask)
    return _cross_entropy(la * (class_sim - margin * target), labels, None, valid)


# ----------------------------------------------------------------------------------------------------
# Pair losses: the batch against itself, sim or dist [B, B]


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
    pos, neg = mining.pair_masks(labels, sample_mask)
    pos = pos if pos_mask is None else pos & pos_mask
    neg = neg if neg_mask is None else neg & neg_mask
    pos_loss = jax.nn.relu(dist - pos_margin)
    neg_loss = jax.nn.relu(neg_margin - dist)
    return _mean_nonzero(pos_loss, pos) + _mean_nonzero(neg_loss, neg)


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
    valid = mining.triplet_mask(labels, sample_mask)
    weights = valid if triplets is None else valid * triplets
    losses = jax.nn.relu(dist[:, :, None] - dist[:, None, :] + margin)
    return _mean_nonzero(losses, weights)


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
    valid = mining.triplet_mask(labels, sample_mask)
    w = (valid if triplets is None else valid * triplets).astype(dist.dtype)
    per_class = jnp.ndim(beta) == 1
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
    pos, neg = mining.pair_masks(labels, sample_mask)
    pos = pos if pos_mask is None else pos & pos_mask
    neg = neg if neg_mask is None else neg & neg_mask
    pos_term = masked_log1p_sum_exp(-alpha * (sim - base), pos, axis=1) / alpha
    neg_term = masked_log1p_sum_exp(beta * (sim - base), neg, axis=1) / beta
    return _masked_mean(pos_term + neg_term, _sample_valid(labels, sample_mask))


def npair(sim: jnp.ndarray, labels: jnp.ndarray, *, sample_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """N-pair loss (Sohn 2016), pytorch-metric-learning's NPairsLoss semantics.

    For each class with >= 2 samples, the anchor is its first sample and the positive its second
    (batch order). With those n pairs: L = mean_a -log softmax_b(s(anchor_a, positive_b))[a].
    pytorch-metric-learning's default similarity is the cosine; IDML's wrapper uses the dot product.
    """
    b = labels.shape[0]
    valid = _sample_valid(labels, sample_mask)
    idx = jnp.arange(b)
    same = (labels[:, None] == labels[None, :]) & valid[:, None] & valid[None, :]
    first = jnp.argmax(same, axis=1)  # first valid sample of each sample's class
    later = same & (idx[None, :] > first[:, None])
    second = jnp.argmax(later, axis=1)
    is_anchor = valid & (first == idx) & jnp.any(later, axis=1)
    logits = sim[:, second]  # logits[a, b] = s(anchor a, positive of b's class)
    logp = masked_log_softmax(logits, jnp.broadcast_to(is_anchor[None, :], logits.shape))
    diag = jnp.where(is_anchor, jnp.diagonal(logp), 0.0)
    return _masked_mean(-diag, is_anchor)


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
    return _masked_mean(1.0 - ap, has_pos)
