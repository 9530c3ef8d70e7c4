"""Retrieval metrics with exact k-nearest-neighbour search in bounded memory."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from probdml import similarity

_METRICS = ("cosine", "euclidean", "dot")


def _pairwise(metric: str, q: jnp.ndarray, r: jnp.ndarray) -> jnp.ndarray:
    if metric == "cosine":
        return similarity.cosine(q, r)
    if metric == "dot":
        return q @ r.T
    return -(jnp.sum(q * q, -1)[:, None] + jnp.sum(r * r, -1)[None, :] - 2.0 * q @ r.T)


def knn(
    queries: np.ndarray,
    references: np.ndarray | None = None,
    k: int = 1,
    *,
    metric: str = "cosine",
    block_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query among the references, highest similarity first.

    With `references=None` the queries are searched against themselves and each query's own
    index is excluded. Similarity: cosine, dot product, or negative squared Euclidean distance.
    Memory is O(block_size * N_ref). Returns (similarities [Nq, k], indices [Nq, k]).
    """
    if metric not in _METRICS:
        raise ValueError(f"unknown kNN metric {metric!r}; valid: {', '.join(_METRICS)}")
    self_search = references is None
    refs = jnp.asarray(queries if self_search else references)
    queries = jnp.asarray(queries)
    n_ref = refs.shape[0] - (1 if self_search else 0)
    if not 1 <= k <= n_ref:
        raise ValueError(f"k={k} must be between 1 and the number of references ({n_ref})")

    @jax.jit
    def block_topk(q, start):
        s = _pairwise(metric, q, refs)
        if self_search:
            rows = start + jnp.arange(q.shape[0])
            s = jnp.where(rows[:, None] == jnp.arange(refs.shape[0])[None, :], -jnp.inf, s)
        return jax.lax.top_k(s, k)

    sims, idx = [], []
    for start in range(0, queries.shape[0], block_size):
        s, i = block_topk(queries[start : start + block_size], start)
        sims.append(np.asarray(s))
        idx.append(np.asarray(i))
    return np.concatenate(sims), np.concatenate(idx)


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    metric: str = "cosine",
) -> dict[str, float]:
    """Recall@K (the DML hit rate: 1 if any of the K nearest other samples shares the label).

    Queries are all samples, references all other samples (leave-one-out retrieval).
    """
    labels = np.asarray(labels)
    _, idx = knn(embeddings, None, max(ks), metric=metric)
    hits = labels[idx] == labels[:, None]
    return {f"recall@{k}": float(np.mean(np.any(hits[:, :k], axis=1))) for k in ks}
