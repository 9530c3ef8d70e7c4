"""Retrieval metrics from neighbour labels (NumPy, float64), with the reference code's definitions.

* pytorch-metric-learning's ``AccuracyCalculator`` (Musgrave et al., "A Metric Learning Reality
  Check", 2020): ``precision@1``, ``r_precision``, ``map@r``, ``map`` and ``mrr``, with
  R = (references sharing the query's label) - 1 when the references include the queries, and
  queries whose label has no other reference ("lone" labels) excluded;
* the DML hit rate ``recall@K`` (RDML ``e_recall``/``c_recall``, IDML, Proxy-Anchor): the
  fraction of *all* queries with a same-label item among their K nearest neighbours;
* RDML/PDML (used by EL-nivMF): ``map_c`` (R = class size including the query), ``map_1000``,
  ``map_lim``; IDML's truncated ``idml_recall@K``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from jax.sharding import Mesh

from probdml import checks
from probdml.metrics.neighbors import SimilarityFn, _leading_dim, check_embeddings, knn

RETRIEVAL_METRICS = (
    "recall",
    "precision@1",
    "r_precision",
    "map@r",
    "map",
    "mrr",
    "map_c",
    "map_1000",
    "map_lim",
    "idml_recall",
)
DEFAULT_RETRIEVAL_METRICS = ("recall", "precision@1", "r_precision", "map@r")


def _check_labels(labels: Any, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one label per sample), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"{name} must be integers (class ids), got dtype {labels.dtype}")
    return labels


def reference_label_counts(query_labels: np.ndarray, reference_labels: np.ndarray) -> np.ndarray:
    """Number of references sharing each query's label, [Nq] (int64)."""
    unique, counts = np.unique(reference_labels, return_counts=True)
    pos = np.clip(np.searchsorted(unique, query_labels), 0, max(len(unique) - 1, 0))
    found = unique[pos] == query_labels
    return np.where(found, counts[pos], 0).astype(np.int64)


def average_precision(same: np.ndarray, depth: np.ndarray, divisor: np.ndarray) -> np.ndarray:
    """Truncated average precision per query: sum_{i <= depth} P(i) rel(i) / divisor.

    ``same`` [N, K] marks neighbours with the query's label (nearest first), P(i) is the
    precision among the first i neighbours. MAP@R: depth = divisor = R; RDML's mAP_c: depth =
    divisor = class size; PML's mean_average_precision: depth = K, divisor = R.
    """
    same = np.asarray(same, bool)
    depth = np.asarray(depth)
    rank = np.arange(1, same.shape[1] + 1)
    rel = same & (rank[None, :] <= depth[:, None])
    prec = np.cumsum(rel, axis=1) / rank[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(prec * rel, axis=1) / divisor


def r_precision(same: np.ndarray, r: np.ndarray) -> np.ndarray:
    """R-precision per query: (same-label neighbours among the first R) / R."""
    same = np.asarray(same, bool)
    r = np.asarray(r)
    rank = np.arange(1, same.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(same & (rank[None, :] <= r[:, None]), axis=1) / r


def reciprocal_rank(same: np.ndarray) -> np.ndarray:
    """1 / (rank of the first same-label neighbour), 0 if none among the K retrieved."""
    same = np.asarray(same, bool)
    first = np.argmax(same, axis=1)
    return np.where(np.any(same, axis=1), 1.0 / (first + 1), 0.0)


def hit_at_k(same: np.ndarray, k: int) -> np.ndarray:
    """1 if a same-label item is among the first k neighbours (the DML recall@k), per query."""
    return np.any(np.asarray(same, bool)[:, :k], axis=1).astype(np.float64)


def _aggregate(values, mask, labels, avg_of_avgs, return_per_class):
    """Mean over the included queries, or over classes of the per-class means."""
    values, labels = values[mask], labels[mask]
    if values.size == 0:
        return {} if return_per_class else float("nan")
    if not (avg_of_avgs or return_per_class):
        return float(np.mean(values))
    classes, inverse = np.unique(labels, return_inverse=True)
    per_class = np.bincount(inverse, weights=values) / np.bincount(inverse)
    if return_per_class:
        return {c.item(): float(v) for c, v in zip(classes, per_class, strict=True)}
    return float(np.mean(per_class))


def _parse_include(include: Sequence[str]) -> tuple[str, ...]:
    include = tuple(include)
    if not include:
        raise ValueError(f"include names no metric; valid: {', '.join(RETRIEVAL_METRICS)}")
    unknown = [name for name in include if name not in RETRIEVAL_METRICS]
    if unknown:
        raise ValueError(f"unknown retrieval metrics {unknown}; valid: {', '.join(RETRIEVAL_METRICS)}")
    return include


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}")
    return ks


def _required_depths(include, ks, counts, ref_includes_query, n_avail) -> dict[str, int]:
    """Neighbours each requested metric needs (map and mrr use whatever K is retrieved)."""
    r = counts - int(ref_includes_query)
    r_max = int(r.max(initial=0))
    need = {}
    if "recall" in include:
        if max(ks) > n_avail:
            raise ValueError(
                f"recall@{max(ks)} needs k <= n = {n_avail}, the references each query is ranked against; "
                f"got ks={tuple(ks)}"
            )
        need["recall"] = max(ks)
    if "idml_recall" in include:
        need["idml_recall"] = min(max(ks), _idml_depth(counts, n_avail))
    if "precision@1" in include:
        need["precision@1"] = 1
    for name in ("r_precision", "map@r"):
        if name in include:
            need[name] = max(r_max, 1)
    if "map_c" in include:
        need["map_c"] = min(int(counts.max(initial=1)), n_avail)
    if "map_1000" in include:
        need["map_1000"] = min(1000, n_avail)
    if "map_lim" in include:
        need["map_lim"] = min(1023, n_avail)
    return need


def _idml_depth(counts: np.ndarray, n_avail: int) -> int:
    """IDML's num_k = min(1023, largest class count) neighbours (utils.py::get_label_counts)."""
    return min(1023, int(counts.max(initial=1)), n_avail)


def metrics_from_neighbors(
    neighbor_labels: np.ndarray,
    query_labels: np.ndarray,
    reference_labels: np.ndarray | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    include: Sequence[str] = DEFAULT_RETRIEVAL_METRICS,
    ref_includes_query: bool | None = None,
    avg_of_avgs: bool = False,
    return_per_class: bool = False,
) -> dict[str, Any]:
    """Retrieval metrics from the labels of each query's neighbours [Nq, K], nearest first.

    ``reference_labels=None``: the queries were searched against themselves (self excluded).
    R = references with the query's label, minus 1 when the references include the query.
    Keys (``include`` names in brackets):

    * ``recall@K`` [recall]: mean over all queries of 1[a same-label item in the top K].
    * ``precision@1``: the same at K = 1 over non-lone queries (PML ``precision_at_1``).
    * ``r_precision``: (same-label among the top R) / R, non-lone queries.
    * ``map@r``: (1/R) sum_{i<=R} P(i) rel(i), non-lone queries (PML MAP@R).
    * ``map``: (1/R) sum_{i<=K} P(i) rel(i) over all K retrieved, non-lone (PML ``mean_average_precision``).
    * ``mrr``: 1 / rank of the first same-label neighbour among the K retrieved, non-lone.
    * ``map_c``: (1/n) sum_{i<=n} P(i) rel(i), n = references with the query's label (the class
      size including the query under self-retrieval), all queries, 0 when n = 0 (RDML/PDML
      ``mAP_c``).
    * ``map_1000``, ``map_lim``: the same sum over the top 1000 / 1023 neighbours, divided by n
      (RDML ``mAP_1000``, ``mAP_lim``).
    * ``idml_recall@K``: IDML's recall@K, which retrieves only min(1023, largest n) neighbours,
      so K above that counts as that depth (its SOP "R@100" is R@12).

    Lone queries (no other reference with their label) are excluded where stated; a metric with
    no remaining query is NaN. ``avg_of_avgs``: mean of the per-class means; ``return_per_class``:
    {label: per-class mean} instead of a float.
    """
    include = _parse_include(include)
    ks = _check_ks(ks)
    if avg_of_avgs and return_per_class:
        raise ValueError("avg_of_avgs and return_per_class are mutually exclusive")
    query_labels = _check_labels(query_labels, "query_labels")
    if ref_includes_query is None:
        ref_includes_query = reference_labels is None
    if reference_labels is None:
        reference_labels = query_labels
    reference_labels = _check_labels(reference_labels, "reference_labels")
    neighbor_labels = np.asarray(neighbor_labels)
    if neighbor_labels.ndim != 2 or neighbor_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(
            f"neighbor_labels must be [Nq, K] with Nq = {query_labels.shape[0]}, got {neighbor_labels.shape}"
        )
    n_avail = reference_labels.shape[0] - int(ref_includes_query)
    counts = reference_label_counts(query_labels, reference_labels)
    need = _required_depths(include, ks, counts, ref_includes_query, n_avail)
    short = {name: d for name, d in need.items() if d > neighbor_labels.shape[1]}
    if short:
        raise ValueError(f"{neighbor_labels.shape[1]} neighbours given, but these metrics need more: {short}")

    r = counts - int(ref_includes_query)
    not_lone = r > 0
    everyone = np.ones_like(not_lone)
    same = neighbor_labels == query_labels[:, None]
    agg = partial(_aggregate, labels=query_labels, avg_of_avgs=avg_of_avgs, return_per_class=return_per_class)
    out: dict[str, Any] = {}
    if "recall" in include:
        for k in ks:
            out[f"recall@{k}"] = agg(hit_at_k(same, k), everyone)
    if "idml_recall" in include:
        depth = _idml_depth(counts, n_avail)
        for k in ks:
            out[f"idml_recall@{k}"] = agg(hit_at_k(same, min(k, depth)), everyone)
    if "precision@1" in include:
        out["precision@1"] = agg(hit_at_k(same, 1), not_lone)
    if "r_precision" in include:
        out["r_precision"] = agg(r_precision(same, r), not_lone)
    if "map@r" in include:
        out["map@r"] = agg(average_precision(same, r, r), not_lone)
    if "map" in include:
        out["map"] = agg(average_precision(same, np.full_like(r, same.shape[1]), r), not_lone)
    if "mrr" in include:
        out["mrr"] = agg(reciprocal_rank(same), not_lone)
    n = np.maximum(counts, 1)
    if "map_c" in include:
        out["map_c"] = agg(average_precision(same, counts, n), everyone)
    for name, depth in (("map_1000", 1000), ("map_lim", 1023)):
        if name in include:
            out[name] = agg(average_precision(same, np.full_like(counts, depth), n), everyone)
    return out


def retrieval_metrics(
    embeddings: Any,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    metric: str | SimilarityFn = "cosine",
    include: Sequence[str] = DEFAULT_RETRIEVAL_METRICS,
    reference_embeddings: Any | None = None,
    reference_labels: np.ndarray | None = None,
    ref_includes_query: bool | None = None,
    k: int | None = None,
    avg_of_avgs: bool = False,
    return_per_class: bool = False,
    block_size: int = 1024,
    ref_block_size: int = 65536,
    mesh: Mesh | None = None,
    return_neighbors: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Retrieval metrics of `embeddings` (queries) against the references, by exact kNN.

    Default: leave-one-out retrieval within `embeddings` (every sample queries all others),
    keys ``recall@K`` for K in `ks`, ``precision@1``, ``r_precision``, ``map@r``; `include` adds
    ``map``, ``mrr``, ``map_c``, ``map_1000``, ``map_lim``, ``idml_recall`` (definitions:
    `metrics_from_neighbors`). RDML's ``e_recall@K`` / ``c_recall@K`` are ``recall@K`` with
    ``metric='euclidean'`` / ``'cosine'``. `k`: neighbours to retrieve; None retrieves what the
    requested metrics need (the largest R for the R-metrics) and, for ``map``/``mrr``, which are
    defined over all K retrieved, every reference. See `knn` for `metric` and the block sizes.
    With `return_neighbors`, returns (metrics, scores [Nq, k], indices [Nq, k]) of the search (nearest
    first), e.g. for the uncertainty metrics of the same leave-one-out retrieval.
    """
    include = _parse_include(include)
    ks = _check_ks(ks)
    labels = _check_labels(labels, "labels")
    builtin = isinstance(metric, str)
    check_embeddings("retrieval_metrics", "embeddings", embeddings, builtin)
    if reference_embeddings is not None:
        check_embeddings("retrieval_metrics", "reference_embeddings", reference_embeddings, builtin,
                         dim=checks.shape_of(embeddings)[1] if builtin else None)
    if _leading_dim(embeddings, "embeddings") != labels.shape[0]:
        raise ValueError(
            f"retrieval_metrics: embeddings and labels must have the same number of samples, got "
            f"{_leading_dim(embeddings, 'embeddings')} and {labels.shape[0]}"
        )
    if (reference_embeddings is None) != (reference_labels is None):
        raise ValueError("give both reference_embeddings and reference_labels, or neither")
    if ref_includes_query is None:
        ref_includes_query = reference_embeddings is None
    ref_labels = labels if reference_labels is None else _check_labels(reference_labels, "reference_labels")
    if (
        reference_embeddings is not None
        and _leading_dim(reference_embeddings, "reference_embeddings") != ref_labels.shape[0]
    ):
        raise ValueError("reference_embeddings and reference_labels must have the same number of samples")
    if ref_includes_query and not np.array_equal(ref_labels[: labels.shape[0]], labels):
        raise ValueError("ref_includes_query needs the first len(labels) reference labels to equal labels")
    n_avail = ref_labels.shape[0] - int(ref_includes_query)
    counts = reference_label_counts(labels, ref_labels)
    need = _required_depths(include, ks, counts, ref_includes_query, n_avail)
    if k is None:
        k = n_avail if ({"map", "mrr"} & set(include)) else max(need.values())
    elif k < max(need.values(), default=1) or k > n_avail:
        raise ValueError(f"k={k} must be at most {n_avail} and at least what the metrics need: {need}")
    scores, idx = knn(
        embeddings,
        reference_embeddings,
        k,
        metric=metric,
        ref_includes_query=ref_includes_query,
        block_size=block_size,
        ref_block_size=ref_block_size,
        mesh=mesh,
    )
    out = metrics_from_neighbors(
        ref_labels[idx],
        labels,
        ref_labels,
        ks,
        include=include,
        ref_includes_query=ref_includes_query,
        avg_of_avgs=avg_of_avgs,
        return_per_class=return_per_class,
    )
    return (out, scores, idx) if return_neighbors else out
