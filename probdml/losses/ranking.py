"""Ranking losses: smoothed average precision over the batch against itself, `dist` [B, B], labels [B]."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from probdml import mining
from probdml.losses._common import check_pair_inputs, masked_mean

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
