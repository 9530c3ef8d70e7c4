"""Proxy and classification losses: `sim` [B, C], the similarity of each sample to each class proxy (or
class weight; C*K centres for SoftTriple), labels [B] in [0, C)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from probdml.losses._common import (
    _shape,
    check_labels,
    check_mask,
    check_matrix,
    check_proxy_inputs,
    cross_entropy,
    masked_log1p_sum_exp,
    masked_mean,
    sample_valid,
)
from probdml.similarity import safe_sqrt

Array = jax.Array


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
    check_proxy_inputs("proxy_anchor", sim, labels, sample_mask)
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
    check_proxy_inputs("proxy_nca", sim, labels, sample_mask)
    valid = sample_valid(labels, sample_mask)
    return cross_entropy(scale * sim, labels, None, valid)


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
    check_proxy_inputs("proxy_nca_pp", sim, labels, sample_mask)
    check_mask("proxy_nca_pp", "class_mask", class_mask, (sim.shape[1],))
    valid = sample_valid(labels, sample_mask)
    return cross_entropy(sim / temperature, labels, class_mask, valid)


def proxy_subsample_mask(key: Array, labels: Array, num_classes: int, fraction: float,
                         sample_mask: Array | None = None) -> Array:
    """[C] bool mask keeping every proxy of a class in the batch plus random others, round(fraction C) in
    all (or just the batch's classes if there are more of those), as ProxyNCA++ / nivMF subsampling."""
    check_labels("proxy_subsample_mask", labels, None, num_classes)
    check_mask("proxy_subsample_mask", "sample_mask", sample_mask, _shape(labels))
    valid = sample_valid(labels, sample_mask)
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
    check_proxy_inputs("normalized_softmax", sim, labels, sample_mask)
    valid = sample_valid(labels, sample_mask)
    return cross_entropy(sim / temperature, labels, None, valid)


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
    check_proxy_inputs("arcface", sim, labels, sample_mask)
    m = math.radians(margin)
    c = jnp.clip(sim, -1.0, 1.0)
    target = jax.nn.one_hot(labels, sim.shape[1], dtype=bool)
    sin = safe_sqrt(1.0 - c * c)
    with_margin = jnp.where(c >= -math.cos(m), c * math.cos(m) - sin * math.sin(m), c - m * math.sin(m))
    logits = scale * jnp.where(target, with_margin, c)
    valid = sample_valid(labels, sample_mask)
    return cross_entropy(logits, labels, None, valid)


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
    check_matrix("soft_triple", "sim", sim, "[B, C*K] (samples x centres)")
    b, ck = sim.shape
    if ck % centers_per_class:
        raise ValueError(f"sim has {ck} columns, not a multiple of centers_per_class={centers_per_class}")
    check_proxy_inputs("soft_triple", sim, labels, sample_mask, classes_per_column=centers_per_class)
    per_center = sim.reshape(b, ck // centers_per_class, centers_per_class)
    prob = jax.nn.softmax(per_center / gamma, axis=2)
    class_sim = jnp.sum(prob * per_center, axis=2)
    target = jax.nn.one_hot(labels, class_sim.shape[1], dtype=sim.dtype)
    valid = sample_valid(labels, sample_mask)
    return cross_entropy(la * (class_sim - margin * target), labels, None, valid)


def cos_face(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: float = 0.35,
    scale: float = 64.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """CosFace / large-margin cosine loss (Wang et al., CVPR 2018), pytorch-metric-learning's CosFaceLoss:

    L = mean_i -log softmax_c(scale (s_ic - margin [c = y_i]))[y_i], s = cos(x_i, w_c).
    """
    check_proxy_inputs("cos_face", sim, labels, sample_mask)
    target = jax.nn.one_hot(labels, sim.shape[1], dtype=sim.dtype)
    return cross_entropy(scale * (sim - margin * target), labels, None, sample_valid(labels, sample_mask))


def _chebyshev(c: Array, m: int) -> Array:
    """cos(m theta) as the polynomial T_m(c) = sum_n (-1)^n binom(m, 2n) c^(m-2n) (1 - c^2)^n, c = cos theta."""
    return sum((-1) ** n * math.comb(m, 2 * n) * c ** (m - 2 * n) * (1.0 - c * c) ** n for n in range(m // 2 + 1))


def large_margin_softmax(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: int = 4,
    scale: float = 1.0,
    magnitudes: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Large-margin softmax (Liu et al., ICML 2016), pytorch-metric-learning's LargeMarginSoftmaxLoss:

    the target cosine c = cos theta becomes psi(theta) = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi)
    (no gradient through k), and logits are scale * |w_c| |x_i| * (psi or c):
    L = mean_i -log softmax_c(logits_i)[y_i]. `magnitudes` ([B, C] or broadcastable, e.g. [B, 1]) is
    |w_c| |x_i| (1 if None: the normalised variant). sim must be a cosine in [-1, 1]; cos(m theta) is
    the Chebyshev polynomial of c (finite gradient at c = +-1).
    """
    check_proxy_inputs("large_margin_softmax", sim, labels, sample_mask)
    m = int(margin)
    theta = jnp.arccos(jnp.clip(jax.lax.stop_gradient(sim), -1.0, 1.0))
    k = jnp.floor(theta / (math.pi / m))
    psi = jnp.where(jnp.mod(k, 2) == 0, 1.0, -1.0) * _chebyshev(sim, m) - 2.0 * k
    target = jax.nn.one_hot(labels, sim.shape[1], dtype=bool)
    logits = jnp.where(target, psi, sim) * scale
    if magnitudes is not None:
        logits = logits * magnitudes
    return cross_entropy(logits, labels, None, sample_valid(labels, sample_mask))


def sphere_face(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: int = 4,
    scale: float = 1.0,
    embedding_norms: jnp.ndarray | None = None,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """SphereFace / A-Softmax (Liu et al., CVPR 2017), pytorch-metric-learning's SphereFaceLoss:
    `large_margin_softmax` with magnitudes |x_i| only (normalised class weights). `embedding_norms`: [B]
    (1 if None)."""
    check_proxy_inputs("sphere_face", sim, labels, sample_mask)
    check_mask("sphere_face", "embedding_norms", embedding_norms, (sim.shape[0],))
    magnitudes = None if embedding_norms is None else embedding_norms[:, None]
    return large_margin_softmax(sim, labels, margin=margin, scale=scale, magnitudes=magnitudes,
                                sample_mask=sample_mask)


def sub_center_arc_face(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    sub_centers: int = 3,
    margin: float = 28.6,
    scale: float = 64.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Sub-center ArcFace (Deng et al., ECCV 2020), pytorch-metric-learning's SubCenterArcFaceLoss:
    sim [B, C*K], sub-centre k of class c in column c*K + k; each class's cosine is its nearest
    sub-centre's, max_k s_ick, then `arcface`."""
    check_matrix("sub_center_arc_face", "sim", sim, "[B, C*K] (samples x sub-centres)")
    b, ck = sim.shape
    if ck % sub_centers:
        raise ValueError(f"sub_center_arc_face: sim has {ck} columns, not a multiple of sub_centers={sub_centers}")
    check_proxy_inputs("sub_center_arc_face", sim, labels, sample_mask, classes_per_column=sub_centers)
    class_sim = jnp.max(sim.reshape(b, ck // sub_centers, sub_centers), axis=2)
    return arcface(class_sim, labels, margin=margin, scale=scale, sample_mask=sample_mask)


def p2s_grad(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """P2SGrad (Zhang et al., CVPR 2019), pytorch-metric-learning's P2SGradLoss: the mean squared error
    between the clipped cosines and the one-hot labels, L = 1/(B C) sum_{i,c} (clip(s_ic, -1, 1) - [c = y_i])^2.
    Difference: pytorch-metric-learning renormalises its class weights in place and differentiates the
    unnormalised product, so its weight gradient keeps a radial part; with sim = cos(x, w) the weight
    gradient here is the tangential one (the embedding gradients agree).
    """
    check_proxy_inputs("p2s_grad", sim, labels, sample_mask)
    target = jax.nn.one_hot(labels, sim.shape[1], dtype=sim.dtype)
    per_sample = jnp.mean((jnp.clip(sim, -1.0, 1.0) - target) ** 2, axis=1)
    return masked_mean(per_sample, sample_valid(labels, sample_mask))
