"""Pairwise similarities between two sets of embeddings, each an [N, M] matrix."""

from __future__ import annotations

import jax.numpy as jnp

_EPS = 1e-12


def l2_normalize(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """x / max(||x||, 1e-12) along `axis` (zero vectors stay zero, gradients finite)."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(sq, _EPS * _EPS)))


def cosine(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Cosine similarity s_ij = <x_i, y_j> / (||x_i|| ||y_j||), in [-1, 1]; x [N, D], y [M, D] -> [N, M]."""
    return l2_normalize(x) @ l2_normalize(y).T
