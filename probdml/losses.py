"""Metric-learning losses: pure functions of a pairwise similarity matrix and labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_log1p_sum_exp(x: jnp.ndarray, mask: jnp.ndarray, axis: int) -> jnp.ndarray:
    """log(1 + sum_{mask} exp(x)) along `axis`, computed stably (a max shift including the 1).

    Entries where `mask` is False contribute nothing; an all-False slice gives log(1) = 0.
    """
    mask = mask.astype(bool)
    shift = jnp.maximum(jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True), 0.0)
    shift = jax.lax.stop_gradient(shift)
    total = jnp.exp(-shift) + jnp.sum(jnp.where(mask, jnp.exp(x - shift), 0.0), axis=axis, keepdims=True)
    return jnp.squeeze(shift + jnp.log(total), axis=axis)


def proxy_anchor(
    sim: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    margin: float = 0.1,
    alpha: float = 32.0,
    sample_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Proxy-Anchor loss (Kim et al., CVPR 2020), pytorch-metric-learning semantics.

    sim: [B, C] similarity of each sample to each class proxy; labels: [B] ints in [0, C).
    L = 1/|P+| sum_{c in P+} log(1 + sum_{i: y_i = c} exp(-alpha (s_ic - margin)))
      + 1/C    sum_{c}       log(1 + sum_{i: y_i != c} exp( alpha (s_ic + margin)))
    where P+ is the set of proxies with at least one positive in the batch.
    `sample_mask` ([B] bool) excludes padded samples.
    """
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
    num_pos_proxies = jnp.sum(jnp.any(pos, axis=0))
    return jnp.sum(pos_term) / jnp.maximum(num_pos_proxies, 1) + jnp.sum(neg_term) / num_classes
