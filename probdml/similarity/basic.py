"""Basic similarities and distances between two sets of embeddings x [N, D] and y [M, D] -> [N, M].

    cosine         s_ij = <x_i, y_j> / (|x_i| |y_j|), in [-1, 1]
    dot            s_ij = <x_i, y_j>
    sq_euclidean   d_ij = |x_i - y_j|^2 = |x_i|^2 + |y_j|^2 - 2 <x_i, y_j>, clamped at 0
    chord          d(cos) = sqrt(2 - 2 cos) = |x^_i - y^_j|, the Euclidean distance of unit vectors

`Pairwise(similarity, distance)` is the pair every registered similarity returns (higher similarity
means lower distance); it lives here, at the bottom of the package, because the array-level
`introspective` metric returns one too. Guarded helpers: `l2_normalize` (x / max(|x|, 1e-12)) and
`safe_sqrt` (zero gradient where the argument is <= 0).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

EPS = 1e-12


class Pairwise(NamedTuple):
    """A pairwise comparison of N queries with M references: both matrices are [N, M]."""

    similarity: Array  # higher = more similar
    distance: Array  # lower = more similar; what distance-based losses and miners use


def l2_normalize(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """x / max(||x||, 1e-12) along `axis` (zero vectors stay zero, gradients finite)."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(sq, EPS * EPS)))


def safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    """sqrt(max(x, 0)) with a zero (not infinite or NaN) gradient where x <= 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def cosine(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Cosine similarity s_ij = <x_i, y_j> / (||x_i|| ||y_j||), in [-1, 1]; x [N, D], y [M, D] -> [N, M]."""
    return l2_normalize(x) @ l2_normalize(y).T


def dot(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Inner product s_ij = <x_i, y_j>; x [N, D], y [M, D] -> [N, M]."""
    return x @ y.T


def sq_euclidean(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Squared Euclidean distance ||x_i - y_j||^2 = |x_i|^2 + |y_j|^2 - 2 <x_i, y_j>, clamped at 0."""
    sq = jnp.sum(x * x, axis=-1)[:, None] + jnp.sum(y * y, axis=-1)[None, :] - 2.0 * (x @ y.T)
    return jnp.maximum(sq, 0.0)


def neg_sq_euclidean(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Negative squared Euclidean distance -||x_i - y_j||^2 (a similarity); [N, D], [M, D] -> [N, M]."""
    return -sq_euclidean(x, y)


def chord_distance(cos: jnp.ndarray) -> jnp.ndarray:
    """Euclidean distance between unit vectors with cosine `cos`: sqrt(2 - 2 cos), in [0, 2].

    Equals pytorch-metric-learning's LpDistance(p=2, power=1, normalize_embeddings=True).
    The gradient is zero (not infinite) at cos = 1.
    """
    return safe_sqrt(2.0 - 2.0 * cos)
