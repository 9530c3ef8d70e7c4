"""Evaluation of embeddings: exact blocked kNN, retrieval, clustering and uncertainty metrics.

Retrieval runs an exact k-nearest-neighbour search in bounded memory: query blocks x reference
blocks, each a jit-compiled computation of static shape, with a running top-k merged across the
reference blocks; query blocks are sharded over the devices of a 1-D ``('data',)`` mesh. The
metrics are then functions of the neighbour labels, with the definitions of the reference code:

* pytorch-metric-learning's ``AccuracyCalculator`` (Musgrave et al., "A Metric Learning Reality
  Check", 2020): ``precision@1``, ``r_precision``, ``map@r``, ``map`` and ``mrr``, with
  R = (references sharing the query's label) - 1 when the references include the queries, and
  queries whose label has no other reference ("lone" labels) excluded;
* the DML hit rate ``recall@K`` (RDML ``e_recall``/``c_recall``, IDML, Proxy-Anchor): the
  fraction of *all* queries with a same-label item among their K nearest neighbours;
* RDML/PDML (used by EL-nivMF): ``map_c`` (R = class size including the query), ``map_1000``,
  ``map_lim``; IDML's truncated ``idml_recall@K``.

Clustering: k-means in JAX (blocked, pinned seed, ``n_init``), NMI/AMI via scikit-learn, and the
pairwise F1 of the DML literature. Uncertainty: AUROC of a per-sample score for predicting a
wrong nearest neighbour, and recall@1 as a function of the fraction of rejected queries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import stats
from sklearn import metrics as sk_metrics

from probdml import similarity, special

SimilarityFn = Callable[[Any, Any], jax.Array]
"""A pairwise similarity ``sim(q_block, r_block) -> [bq, br]`` (higher = nearer); blocks are
arrays or pytrees of arrays with a leading sample axis."""

METRICS = ("cosine", "euclidean", "dot")
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
KMEANS_INITS = ("random", "k-means++")


# ----------------------------------------------------------------------------------------------
# Exact blocked k-nearest-neighbour search
# ----------------------------------------------------------------------------------------------


def el_vmf_similarity(q: jax.Array, r: jax.Array) -> jax.Array:
    """log expected-likelihood kernel between image vMFs (mu = e/|e|, kappa = |e|), [bq, br] nats:

    log int vMF(x; q) vMF(x; r) dx = log C_p(|q|) + log C_p(|r|) - log C_p(|q + r|),
    |q + r| = sqrt(|q|^2 + |r|^2 + 2 q.r)  (specs/nivmf.md D2 between two images). Not an inner product
    of fixed features: `knn` evaluates it block by block.
    """
    p = q.shape[-1]
    qn = jnp.sum(q * q, axis=-1)
    rn = jnp.sum(r * r, axis=-1)
    dot = jnp.matmul(q, r.T, precision=jax.lax.Precision.HIGHEST)
    resultant = similarity.safe_sqrt(qn[:, None] + rn[None, :] + 2.0 * dot)
    own = special.log_vmf_normalizer(similarity.safe_sqrt(qn), p)[:, None] + special.log_vmf_normalizer(
        similarity.safe_sqrt(rn), p)[None, :]
    return own - special.log_vmf_normalizer(resultant, p)


# Named pairwise similarities `knn` accepts besides METRICS (functions of two blocks of embeddings).
PAIRWISE: dict[str, SimilarityFn] = {"el_vmf": el_vmf_similarity}


def _prepare(metric: str | SimilarityFn, x: Any) -> Any:
    """Per-row representation used by `_scores` (normalised rows, or rows with squared norms)."""
    if metric == "cosine":
        return similarity.l2_normalize(x)
    if metric == "euclidean":
        return x, jnp.sum(x * x, axis=-1)
    return x


def _scores(metric: str | SimilarityFn, q: Any, r: Any, precision: Any) -> jax.Array:
    """Pairwise scores [bq, br], higher = nearer; euclidean gives -||q - r||^2."""
    if callable(metric):
        return metric(q, r)
    if metric == "euclidean":
        (qx, qn), (rx, rn) = q, r
        dot = jnp.matmul(qx, rx.T, precision=precision)
        return 2.0 * dot - qn[:, None] - rn[None, :]
    return jnp.matmul(q, r.T, precision=precision)


def _merge_block(metric, k, precision, exclude_self, mask_padding, q, q_ref_index, r, r_start, n_ref, run_s, run_i):
    """One (query block, reference block) step of the running top-k.

    Padding references (only in the last block, `mask_padding`) score -inf before the block's
    top-k. The self-match is removed after it: the block's top-(k+1) holds the top-k of the
    block without the query, and the query's own entry, if there, is set to -inf. The running
    list holds lower reference indices than the new block and comes first in the concatenation,
    and `lax.top_k` puts the lower position first among equal values, so ties are always
    broken by the lower index.
    """
    q = _prepare(metric, q)
    s = _scores(metric, q, r, precision)
    br = s.shape[1]
    if mask_padding:
        s = jnp.where(r_start + jnp.arange(br, dtype=jnp.int32)[None, :] >= n_ref, jnp.array(-jnp.inf, s.dtype), s)
    block_s, block_pos = jax.lax.top_k(s, min(k + int(exclude_self), br))
    block_i = block_pos.astype(jnp.int32) + r_start
    if exclude_self:
        block_s = jnp.where(block_i == q_ref_index[:, None], jnp.array(-jnp.inf, s.dtype), block_s)
    cand_s = jnp.concatenate([run_s.astype(s.dtype), block_s], axis=1)
    cand_i = jnp.concatenate([run_i, block_i], axis=1)
    top_s, top_pos = jax.lax.top_k(cand_s, k)
    return top_s, jnp.take_along_axis(cand_i, top_pos, axis=1)


@functools.lru_cache(maxsize=32)
def _prepare_fn(metric, mesh):
    return jax.jit(partial(_prepare, metric), out_shardings=NamedSharding(mesh, P()))


@functools.lru_cache(maxsize=64)
def _step_fn(metric, k, precision, exclude_self, mask_padding, mesh):
    """The jitted, query-sharded `_merge_block` (cached, so repeated evaluations compile once)."""
    local = partial(_merge_block, metric, k, precision, exclude_self, mask_padding)
    specs = (P("data"), P("data"), P(), P(), P(), P("data"), P("data"))
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P("data"), P("data"))))


def _leading_dim(tree: Any, name: str) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{name} is empty")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"all arrays in {name} need the same leading (sample) dimension, got {sizes}")
    return sizes.pop()


def _pad_rows(tree: Any, start: int, size: int) -> Any:
    """Rows start..start+size of every leaf, padded by repeating the last row (finite padding)."""

    def take(leaf):
        leaf = np.asarray(leaf)
        rows = np.minimum(np.arange(start, start + size), leaf.shape[0] - 1)
        return leaf[rows]

    return jax.tree.map(take, tree)


def _to_host(x: Any) -> np.ndarray:
    """A result block as NumPy on every process (gathered when it spans other processes' devices)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def default_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D ``('data',)`` mesh over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), ("data",))


def knn(
    queries: Any,
    references: Any | None = None,
    k: int = 1,
    *,
    metric: str | SimilarityFn = "cosine",
    ref_includes_query: bool | None = None,
    block_size: int = 1024,
    ref_block_size: int = 65536,
    mesh: Mesh | None = None,
    precision: jax.lax.Precision | str | None = jax.lax.Precision.HIGHEST,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query among the references, nearest first.

    Scores (higher = nearer): ``cosine`` <q, r> / (||q|| ||r||); ``dot`` <q, r>; ``euclidean``
    -||q - r||^2 (the negative squared distance); a name in PAIRWISE (``el_vmf``: the log EL kernel
    between image vMFs, `el_vmf_similarity`); or a callable ``sim(q_block, r_block) ->
    [bq, br]`` on arrays or pytrees of arrays with a leading sample axis (e.g. a vMF kernel between
    images). Scores of -inf mark excluded pairs and must not come from the similarity itself.

    With ``references=None`` the queries are searched against themselves. ``ref_includes_query``
    (default: True exactly when ``references`` is None) says that query i is reference i; that
    pair is then excluded by index (PyTorch Metric Learning's semantics). Ties are broken by the
    lower reference index. Memory: O(block_size * min(ref_block_size, N_ref)) per step; query
    blocks are sharded over the ``'data'`` axis of `mesh` (default: all devices), references are
    replicated. Returns (scores [Nq, k], indices [Nq, k]) as NumPy arrays.
    """
    if isinstance(metric, str) and metric in PAIRWISE:
        metric = PAIRWISE[metric]
    if not callable(metric) and metric not in METRICS:
        raise ValueError(f"unknown kNN metric {metric!r}; valid: {', '.join(METRICS + tuple(PAIRWISE))} or a callable")
    if ref_includes_query is None:
        ref_includes_query = references is None
    queries = jax.tree.map(np.asarray, queries)
    references = queries if references is None else jax.tree.map(np.asarray, references)
    n_q = _leading_dim(queries, "queries")
    n_ref = _leading_dim(references, "references")
    if ref_includes_query and n_ref < n_q:
        raise ValueError(
            f"ref_includes_query needs the first {n_q} references to be the queries, got {n_ref} references"
        )
    n_avail = n_ref - int(ref_includes_query)
    if not 1 <= k <= n_avail:
        raise ValueError(f"k={k} must be between 1 and the number of references ({n_avail})")
    if block_size < 1 or ref_block_size < 1:
        raise ValueError(f"block sizes must be positive, got {block_size} and {ref_block_size}")

    mesh = default_mesh() if mesh is None else mesh
    if "data" not in mesh.axis_names:
        raise ValueError(f"the mesh needs a 'data' axis, got axes {mesh.axis_names}")
    n_dev = mesh.shape["data"]
    rows, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

    n_qb = -(-n_q // block_size)
    bq = _round_up(-(-n_q // n_qb), 8 * n_dev)
    n_rb = -(-n_ref // ref_block_size)
    br = -(-n_ref // n_rb)
    n_rb = -(-n_ref // br)
    padded = n_rb * br > n_ref

    prepare = _prepare_fn(metric, mesh)
    ref_blocks = [prepare(jax.device_put(_pad_rows(references, b * br, br), repl)) for b in range(n_rb)]
    steps = [_step_fn(metric, k, precision, ref_includes_query, mask, mesh) for mask in (False, True)]
    n_ref_arr = jax.device_put(np.int32(n_ref), repl)
    starts = [jax.device_put(np.int32(b * br), repl) for b in range(n_rb)]
    dtype = jax.eval_shape(
        lambda x: _scores(metric, _prepare(metric, x), ref_blocks[0], precision), _pad_rows(queries, 0, bq)
    ).dtype
    out_s, out_i = [], []
    for qb in range(n_qb):
        start = qb * bq
        q = jax.device_put(_pad_rows(queries, start, bq), rows)
        ids = np.arange(start, start + bq, dtype=np.int32)
        q_ref_index = jax.device_put(ids if ref_includes_query else np.full(bq, -1, np.int32), rows)
        run_s = jax.device_put(np.full((bq, k), -np.inf, dtype), rows)
        run_i = jax.device_put(np.full((bq, k), -1, np.int32), rows)
        for rb in range(n_rb):
            step = steps[padded and rb == n_rb - 1]
            run_s, run_i = step(q, q_ref_index, ref_blocks[rb], starts[rb], n_ref_arr, run_s, run_i)
        out_s.append(run_s)
        out_i.append(run_i)
        if qb >= 1:  # at most two query blocks in flight: bounded memory, host and device overlap
            out_s[qb - 1], out_i[qb - 1] = _to_host(out_s[qb - 1]), _to_host(out_i[qb - 1])
    scores = np.concatenate([_to_host(s) for s in out_s])[:n_q]
    indices = np.concatenate([_to_host(i) for i in out_i])[:n_q]
    return scores, indices.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Retrieval metrics from neighbour labels (NumPy, float64)
# ----------------------------------------------------------------------------------------------


def _check_labels(labels: Any, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one label per sample), got shape {labels.shape}")
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
        need["recall"] = min(max(ks), n_avail)
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
) -> dict[str, Any]:
    """Retrieval metrics of `embeddings` (queries) against the references, by exact kNN.

    Default: leave-one-out retrieval within `embeddings` (every sample queries all others),
    keys ``recall@K`` for K in `ks`, ``precision@1``, ``r_precision``, ``map@r``; `include` adds
    ``map``, ``mrr``, ``map_c``, ``map_1000``, ``map_lim``, ``idml_recall`` (definitions:
    `metrics_from_neighbors`). RDML's ``e_recall@K`` / ``c_recall@K`` are ``recall@K`` with
    ``metric='euclidean'`` / ``'cosine'``. `k`: neighbours to retrieve; None retrieves what the
    requested metrics need (the largest R for the R-metrics) and, for ``map``/``mrr``, which are
    defined over all K retrieved, every reference. See `knn` for `metric` and the block sizes.
    """
    include = _parse_include(include)
    ks = _check_ks(ks)
    labels = _check_labels(labels, "labels")
    if _leading_dim(embeddings, "embeddings") != labels.shape[0]:
        raise ValueError("embeddings and labels must have the same number of samples")
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
    _, idx = knn(
        embeddings,
        reference_embeddings,
        k,
        metric=metric,
        ref_includes_query=ref_includes_query,
        block_size=block_size,
        ref_block_size=ref_block_size,
        mesh=mesh,
    )
    return metrics_from_neighbors(
        ref_labels[idx],
        labels,
        ref_labels,
        ks,
        include=include,
        ref_includes_query=ref_includes_query,
        avg_of_avgs=avg_of_avgs,
        return_per_class=return_per_class,
    )


# ----------------------------------------------------------------------------------------------
# Clustering
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Uncertainty
# ----------------------------------------------------------------------------------------------


def norm_uncertainty(embeddings: jax.Array) -> jax.Array:
    """-||e||: vMF uncertainty score (concentration kappa = ||e||, so higher score = less certain)."""
    return -jnp.linalg.norm(embeddings, axis=-1)


def squared_norm_uncertainty(u: jax.Array) -> jax.Array:
    """||u||^2: IDML's uncertainty score of the uncertainty embedding u."""
    return jnp.sum(u * u, axis=-1)


def uncertainty_auroc(uncertainty: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of `uncertainty` (higher = less certain) for predicting errors (correct == False).

    = P(u_error > u_correct) + P(tie) / 2 over (error, correct) pairs (Mann-Whitney U / n1 n0,
    ties by mid-ranks); equals PDML's ``roc_auc_score(correct, confidence)`` with confidence =
    -uncertainty. NaN when all queries are correct or all wrong.
    """
    u = np.asarray(uncertainty, np.float64)
    wrong = ~np.asarray(correct, bool)
    if u.ndim != 1 or u.shape != wrong.shape:
        raise ValueError(f"uncertainty and correct must be 1-D of equal length, got {u.shape} and {wrong.shape}")
    if np.any(np.isnan(u)):
        raise ValueError("uncertainty contains NaN")
    n1 = int(wrong.sum())
    n0 = u.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = stats.rankdata(u)
    return float((ranks[wrong].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def accuracy_by_quantile_bin(score: np.ndarray, correct: np.ndarray, num_bins: int = 5) -> dict[str, list]:
    """Accuracy of the boolean `correct` within `num_bins` bins of `score` cut at its quantiles (equal
    counts up to ties): {'edges': num_bins + 1 quantiles, 'mean_score', 'accuracy', 'count': per bin};
    an empty bin gives NaN. E.g. recall@1 by uncertainty level, or by embedding norm."""
    score = np.asarray(score, np.float64)
    correct = np.asarray(correct, bool)
    edges = np.quantile(score, np.linspace(0.0, 1.0, num_bins + 1))
    which = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, num_bins - 1)
    out: dict[str, list] = {"edges": edges.tolist(), "mean_score": [], "accuracy": [], "count": []}
    for b in range(num_bins):
        sel = which == b
        out["count"].append(int(sel.sum()))
        out["mean_score"].append(float(score[sel].mean()) if sel.any() else float("nan"))
        out["accuracy"].append(float(correct[sel].mean()) if sel.any() else float("nan"))
    return out


def rejection_curve(
    uncertainty: np.ndarray, correct: np.ndarray, fractions: Sequence[float] = tuple(np.linspace(0.0, 0.9, 10))
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of the retained queries after rejecting the most uncertain fraction f of them.

    For each f: drop floor(f N) queries of highest uncertainty (ties: the higher index is
    dropped first), return mean(correct) over the rest; with `correct` = 1-NN label hit this is
    recall@1 vs rejection fraction. Returns (fractions, accuracies).
    """
    u = np.asarray(uncertainty, np.float64)
    ok = np.asarray(correct, np.float64)
    if u.ndim != 1 or u.shape != ok.shape:
        raise ValueError(f"uncertainty and correct must be 1-D of equal length, got {u.shape} and {ok.shape}")
    fractions = np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or np.any(fractions < 0) or np.any(fractions >= 1):
        raise ValueError(f"fractions must be a 1-D sequence in [0, 1), got {fractions}")
    order = np.argsort(u, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(ok[order])])
    keep = u.size - np.floor(fractions * u.size + 1e-9).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return fractions, cum[keep] / keep


def uncertainty_metrics(
    embeddings: Any,
    labels: np.ndarray,
    uncertainty: np.ndarray | None = None,
    *,
    metric: str | SimilarityFn = "cosine",
    fractions: Sequence[float] = tuple(np.linspace(0.0, 0.9, 10)),
    block_size: int = 1024,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Uncertainty evaluation of leave-one-out 1-NN retrieval.

    correct_i = 1[the nearest other sample has label_i]. `uncertainty`: one score per sample,
    higher = less certain (e.g. `norm_uncertainty` for vMF embeddings, `squared_norm_uncertainty`
    of IDML's u); None uses minus the score of the nearest neighbour (PDML's ``unc_cos``
    baseline for ``metric='cosine'``). Returns ``auroc`` (`uncertainty_auroc`),
    ``rejection_fractions`` and ``rejection_recall@1`` (`rejection_curve`).
    """
    labels = _check_labels(labels, "labels")
    scores, idx = knn(embeddings, None, 1, metric=metric, block_size=block_size, mesh=mesh)
    uncertainty = -scores[:, 0].astype(np.float64) if uncertainty is None else np.asarray(uncertainty)
    if uncertainty.shape != labels.shape:
        raise ValueError(f"uncertainty must have one score per sample, got {uncertainty.shape} for {labels.shape}")
    correct = labels[idx[:, 0]] == labels
    fr, acc = rejection_curve(uncertainty, correct, fractions)
    return {"auroc": uncertainty_auroc(uncertainty, correct), "rejection_fractions": fr, "rejection_recall@1": acc}
