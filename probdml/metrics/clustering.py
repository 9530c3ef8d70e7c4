"""Clustering metrics: k-means in JAX (blocked, pinned seed, ``n_init`` restarts, random or
k-means++ initialisation), NMI / AMI via scikit-learn, and the pairwise F1 of the DML literature."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics as sk_metrics

from probdml import checks, similarity
from probdml.metrics.neighbors import _pad_rows, _round_up
from probdml.metrics.retrieval import _check_labels

KMEANS_INITS = ("random", "k-means++")


@partial(jax.jit, static_argnames=("block",))
def _assign(x: jax.Array, centroids: jax.Array, n_valid: jax.Array, block: int):
    """Nearest centroid of each row (lowest index on ties), squared distances, and per-cluster sums.

    x is [n_blocks * block, D] (padded); rows >= n_valid are ignored in the sums.
    """
    c_sq = jnp.sum(centroids * centroids, axis=1)
    k = centroids.shape[0]

    def body(carry, xb_and_start):
        sums, cnt = carry
        xb, start = xb_and_start
        d = c_sq[None, :] - 2.0 * jnp.matmul(xb, centroids.T, precision=jax.lax.Precision.HIGHEST)
        a = jnp.argmin(d, axis=1)
        dist = jnp.maximum(jnp.min(d, axis=1) + jnp.sum(xb * xb, axis=1), 0.0)
        valid = start + jnp.arange(block) < n_valid
        w = valid.astype(x.dtype)
        sums = sums + jax.ops.segment_sum(xb * w[:, None], a, num_segments=k)
        cnt = cnt + jax.ops.segment_sum(w, a, num_segments=k)
        return (sums, cnt), (a, jnp.where(valid, dist, 0.0))

    xs = x.reshape(-1, block, x.shape[1])
    starts = jnp.arange(xs.shape[0]) * block
    init = (jnp.zeros_like(centroids), jnp.zeros((k,), x.dtype))
    (sums, cnt), (a, dist) = jax.lax.scan(body, init, (xs, starts))
    return a.reshape(-1), dist.reshape(-1), sums, cnt


@partial(jax.jit, static_argnames=("n_clusters",))
def _kmeans_pp_init(key: jax.Array, x: jax.Array, n_valid: jax.Array, n_clusters: int) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with p ~ D(x)^2."""
    valid = jnp.arange(x.shape[0]) < n_valid
    keys = jax.random.split(key, n_clusters)
    first = jax.random.choice(keys[0], x.shape[0], p=valid / jnp.sum(valid))
    centres = jnp.zeros((n_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
    d2 = jnp.where(valid, jnp.sum((x - x[first]) ** 2, axis=1), 0.0)

    def body(i, state):
        centres, d2 = state
        total = jnp.sum(d2)
        p = jnp.where(total > 0, d2 / jnp.where(total > 0, total, 1.0), valid / jnp.sum(valid))
        j = jax.random.choice(keys[i], x.shape[0], p=p)
        centres = centres.at[i].set(x[j])
        d2 = jnp.minimum(d2, jnp.where(valid, jnp.sum((x - x[j]) ** 2, axis=1), 0.0))
        return centres, d2

    centres, _ = jax.lax.fori_loop(1, n_clusters, body, (centres, d2))
    return centres


def kmeans(
    x: np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 20,
    init: str = "random",
    tol: float = 0.0,
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means in JAX; returns (assignments [N], centroids [C, D], inertia).

    Inertia = sum_i ||x_i - c_{a_i}||^2. `init`: ``'random'`` (C distinct samples drawn
    uniformly, as faiss, which PML and RDML use) or ``'k-means++'``. Each of `n_init` runs
    (keys split from `seed`) does at most `max_iter` Lloyd updates, stopping early once the total
    squared centroid shift is <= tol * mean per-feature variance (sklearn's rule; tol = 0 stops
    only at a fixed point, where further updates change nothing); the run of least inertia is
    kept. An empty cluster keeps its previous centroid. Assignments are to the final centroids;
    ties go to the lower cluster index. Memory: O(block_size * C) per step.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be [N, D], got shape {x.shape}")
    checks.check_finite("kmeans", "x", x)
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters={n_clusters} must be between 1 and the number of samples ({n})")
    if init not in KMEANS_INITS:
        raise ValueError(f"unknown k-means init {init!r}; valid: {', '.join(KMEANS_INITS)}")
    if n_init < 1 or max_iter < 0 or tol < 0:
        raise ValueError(f"need n_init >= 1, max_iter >= 0, tol >= 0; got {n_init}, {max_iter}, {tol}")
    block = min(block_size, _round_up(n, 8))
    xp = jnp.asarray(_pad_rows(x, 0, _round_up(n, block)))
    n_valid = jnp.int32(n)
    threshold = tol * float(np.mean(np.var(x, axis=0)))
    best = None
    for key in jax.random.split(jax.random.key(seed), n_init):
        if init == "random":
            centroids = xp[jax.random.choice(key, n, (n_clusters,), replace=False)]
        else:
            centroids = _kmeans_pp_init(key, xp, n_valid, n_clusters)
        for _ in range(max_iter):
            _, _, sums, cnt = _assign(xp, centroids, n_valid, block)
            new = jnp.where(cnt[:, None] > 0, sums / jnp.maximum(cnt, 1)[:, None], centroids)
            converged = float(jnp.sum((new - centroids) ** 2)) <= threshold
            centroids = new
            if converged:
                break
        a, dist, _, _ = _assign(xp, centroids, n_valid, block)
        inertia = float(jnp.sum(dist))
        if best is None or inertia < best[2]:
            best = (np.asarray(a)[:n].astype(np.int64), np.asarray(centroids), inertia)
    return best


def pairwise_f1(labels: np.ndarray, cluster_labels: np.ndarray) -> float:
    """Pairwise F1 of a clustering (Song et al. 2016; IDML, RDML/PDML ``f1``).

    Over unordered sample pairs: TP = pairs in the same class and cluster, precision =
    TP / (pairs sharing a cluster), recall = TP / (pairs sharing a class), F1 = 2PR / (P + R);
    0 when TP = 0.
    """
    labels = _check_labels(labels, "labels")
    cluster_labels = _check_labels(cluster_labels, "cluster_labels")
    if labels.shape != cluster_labels.shape:
        raise ValueError(f"labels and cluster_labels differ in length: {labels.shape} vs {cluster_labels.shape}")
    table = sk_metrics.cluster.contingency_matrix(labels, cluster_labels, sparse=True)

    def pairs(n):
        n = np.asarray(n, np.int64)
        return int(np.sum(n * (n - 1) // 2))

    tp = pairs(table.data)
    same_class = pairs(np.asarray(table.sum(axis=1)).ravel())
    same_cluster = pairs(np.asarray(table.sum(axis=0)).ravel())
    if tp == 0:
        return 0.0
    return 2.0 * tp / (same_class + same_cluster)


def clustering_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    n_clusters: int | None = None,
    metric: str = "cosine",
    cluster_labels: np.ndarray | None = None,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 20,
    init: str = "random",
    tol: float = 0.0,
) -> dict[str, float]:
    """NMI, AMI and pairwise F1 of a k-means clustering of `embeddings` against `labels`.

    ``nmi`` / ``ami``: scikit-learn's normalized / adjusted mutual information (arithmetic
    normalisation); ``f1``: `pairwise_f1`. k-means (`kmeans`) on the embeddings, L2-normalised
    first for ``metric='cosine'``, with `n_clusters` (default: the number of distinct labels,
    as PML and IDML; RDML uses the number of training classes). The defaults (random init,
    20 iterations, one run) follow faiss as used by PML and RDML. `cluster_labels` skips k-means.
    """
    labels = _check_labels(labels, "labels")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown clustering metric {metric!r}; valid: cosine, euclidean")
    if cluster_labels is None:
        x = np.asarray(embeddings)
        checks.check_finite("clustering_metrics", "embeddings", x)
        if x.shape[0] != labels.shape[0]:
            raise ValueError("embeddings and labels must have the same number of samples")
        if metric == "cosine":
            x = np.asarray(similarity.l2_normalize(jnp.asarray(x)))
        n_clusters = len(np.unique(labels)) if n_clusters is None else n_clusters
        cluster_labels, _, _ = kmeans(x, n_clusters, seed=seed, n_init=n_init, max_iter=max_iter, init=init, tol=tol)
    cluster_labels = _check_labels(cluster_labels, "cluster_labels")
    return {
        "nmi": float(sk_metrics.normalized_mutual_info_score(labels, cluster_labels)),
        "ami": float(sk_metrics.adjusted_mutual_info_score(labels, cluster_labels)),
        "f1": pairwise_f1(labels, cluster_labels),
    }
