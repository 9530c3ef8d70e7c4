"""Exact blocked k-nearest-neighbour search, sharded over a 1-D ``('data',)`` device mesh.

The search runs query blocks x reference blocks, each a jit-compiled computation of static shape,
with a running top-k merged across the reference blocks; query blocks are sharded over the
devices of the mesh. Scores are "higher = nearer": cosine similarity, -||q - r||^2 for
'euclidean', the inner product for 'dot', or any pairwise function of two blocks (`PAIRWISE`,
e.g. the expected-likelihood kernel between image vMFs).
"""

from __future__ import annotations

import concurrent.futures
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

from probdml import checks, similarity, special

SimilarityFn = Callable[[Any, Any], jax.Array]
"""A pairwise similarity ``sim(q_block, r_block) -> [bq, br]`` (higher = nearer); blocks are
arrays or pytrees of arrays with a leading sample axis."""

METRICS = ("cosine", "euclidean", "dot")


def el_vmf_similarity(q: jax.Array, r: jax.Array) -> jax.Array:
    """log expected-likelihood kernel between image vMFs (mu = e/|e|, kappa = |e|), [bq, br] nats:

    log int vMF(x; q) vMF(x; r) dx = log C_p(|q|) + log C_p(|r|) - log C_p(|q + r|),
    |q + r| = sqrt(|q|^2 + |r|^2 + 2 q.r)  (docs/methods/nivmf.md#vmf-kernels: EL between two images). Not an inner product
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


def _drop_below_running(s: jax.Array, run_s: jax.Array) -> jax.Array:
    """Scores that cannot enter the running top-k set to -inf: those <= its k-th score (the running list
    holds lower reference indices, which win ties). Exact, and it makes the block's `lax.top_k` several
    times cheaper on CPU, whose TopK pays per inserted candidate: after the first blocks few scores of a
    block beat a row's running k-th best."""
    return jnp.where(s > run_s[:, -1:], s, jnp.array(-jnp.inf, s.dtype))


def _merge_block(metric, k, precision, exclude_self, mask_padding, q, q_ref_index, r, r_start, n_ref, run_s, run_i):
    """One (query block, reference block) step of the running top-k.

    Padding references (only in the last block, `mask_padding`) and the self-match (`exclude_self`, by
    index) score -inf; the running list and the block's scores are then merged by one top-k. The running
    list holds lower reference indices than the new block and comes first in the concatenation, and
    `lax.top_k` puts the lower position first among equal values, so ties are always broken by the lower
    index.
    """
    q = _prepare(metric, q)
    s = _scores(metric, q, r, precision)
    cols = r_start + jnp.arange(s.shape[1], dtype=jnp.int32)
    if mask_padding:
        s = jnp.where(cols[None, :] >= n_ref, jnp.array(-jnp.inf, s.dtype), s)
    if exclude_self:
        s = jnp.where(cols[None, :] == q_ref_index[:, None], jnp.array(-jnp.inf, s.dtype), s)
    return _top_k_into(run_s.astype(s.dtype), run_i, s, r_start, k)


def _top_k_into(run_s, run_i, s, start, k):
    """Merge the score rows `s` (reference indices start + column) into the running top-k lists by one
    top-k over [running list, s]: the running list holds lower indices and comes first, so ties go to the
    lower index."""
    cand_s = jnp.concatenate([run_s, _drop_below_running(s, run_s)], axis=1)
    top_s, top_pos = jax.lax.top_k(cand_s, k)
    n_run = run_s.shape[1]
    top_i = jnp.where(top_pos < n_run, jnp.take_along_axis(run_i, jnp.minimum(top_pos, n_run - 1), axis=1),
                      top_pos.astype(jnp.int32) - n_run + start)
    return top_s, top_i


@functools.lru_cache(maxsize=32)
def _tile_scores_fn(metric, precision, diagonal, mask_padding):
    """The jitted tile S_ij = sim(X_i, X_j) of the symmetric score matrix and its transpose (off the
    diagonal), rows/columns >= n (padding) and, on the diagonal tile, the self-matches (by position) at -inf."""

    def tile(xi, xj, start_i, start_j, n):
        s = _scores(metric, xi, xj, precision)
        rows = start_i + jnp.arange(s.shape[0], dtype=jnp.int32)
        cols = start_j + jnp.arange(s.shape[1], dtype=jnp.int32)
        if mask_padding:
            s = jnp.where((rows[:, None] >= n) | (cols[None, :] >= n), jnp.array(-jnp.inf, s.dtype), s)
        if diagonal:
            return jnp.where(rows[:, None] == cols[None, :], jnp.array(-jnp.inf, s.dtype), s)
        # S_ji = S_ij^T as its own row-major array: a top-k over the columns of S_ij in place reads it with
        # a stride and costs twice as much
        return s, s.T

    return jax.jit(tile)


@functools.lru_cache(maxsize=32)
def _merge_executable(k: int, block: int, dtype: str, x64: bool):
    """The compiled merge of a [block, block] tile's rows into a block's running top-k ([block, k] scores of
    `dtype`, int32 indices). Compiled here, on the calling thread, because the worker threads that run it
    do not see this thread's configuration contexts (e.g. `jax.enable_x64`). `x64` only keys the cache."""
    del x64
    run_s = jax.ShapeDtypeStruct((block, k), dtype)
    run_i = jax.ShapeDtypeStruct((block, k), jnp.int32)
    tile = jax.ShapeDtypeStruct((block, block), dtype)
    start = jax.ShapeDtypeStruct((), jnp.int32)
    return jax.jit(partial(_top_k_into, k=k)).lower(run_s, run_i, tile, start).compile()


def _symmetric_knn(x: Any, k: int, metric: str, block: int, device: jax.Device, precision: Any):
    """Leave-one-out kNN of x against itself on one device, computing each tile S_ij (i <= j) of the
    symmetric score matrix once: half the matmul work of the query x reference sweep. Block j receives
    tiles from blocks 0..j-1 (transposed), then j, then j+1.. in that order, so every merge sees lower
    reference indices first and ties go to the lower index, as in `knn`. The two merges of an off-diagonal
    tile (its rows into block i, its columns into block j) are independent of each other and of the next
    tile's scores, so they run on two host threads while the main thread computes the next tile: XLA:CPU
    runs a top-k on one core, and computations issued from different threads run concurrently."""
    n = _leading_dim(x, "queries")
    t = -(-n // block)
    padded = t * block > n
    prepare = jax.jit(partial(_prepare, metric))
    blocks = [prepare(jax.device_put(_pad_rows(x, b * block, block), device)) for b in range(t)]
    dtype = jax.eval_shape(lambda a: _scores(metric, a, a, precision), blocks[0]).dtype
    run = [
        (jax.device_put(np.full((block, k), -np.inf, dtype), device), jax.device_put(np.full((block, k), -1, np.int32), device))
        for _ in range(t)
    ]
    starts = [jax.device_put(np.int32(b * block), device) for b in range(t)]
    n_arr = jax.device_put(np.int32(n), device)
    merge = _merge_executable(k, block, np.dtype(dtype).name, bool(jax.config.jax_enable_x64))

    def merge_into(b, s, start):
        run[b] = jax.block_until_ready(merge(*run[b], s, start))

    # One worker merges tile rows into block i (in order j = i, i+1, ...), one merges tile columns into the
    # blocks j > i (each once per row of tiles); the main thread computes the next tiles meanwhile, at most
    # two ahead of the merges (bounded memory).
    with (concurrent.futures.ThreadPoolExecutor(max_workers=1) as row_worker,
          concurrent.futures.ThreadPoolExecutor(max_workers=1) as col_worker):
        for i in range(t):
            pending: list[list[concurrent.futures.Future]] = []
            for j in range(i, t):
                if len(pending) >= 2:
                    for future in pending.pop(0):
                        future.result()
                tile = _tile_scores_fn(metric, precision, i == j, padded and j == t - 1)(
                    blocks[i], blocks[j], starts[i], starts[j], n_arr)
                if i == j:
                    futures = [row_worker.submit(merge_into, i, tile, starts[j])]
                else:
                    futures = [row_worker.submit(merge_into, i, tile[0], starts[j]),
                               col_worker.submit(merge_into, j, tile[1], starts[i])]
                pending.append(futures)
            for futures in pending:
                for future in futures:
                    future.result()
            run[i] = tuple(np.asarray(a) for a in run[i])  # block i is final: to the host, freeing device memory
    scores = np.concatenate([s for s, _ in run])[:n]
    indices = np.concatenate([i for _, i in run])[:n]
    return scores, indices.astype(np.int64)


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


def check_embeddings(where: str, arg: str, tree: Any, matrix: bool, dim: int | None = None) -> None:
    """Every array of `tree` is free of NaN and inf (a non-finite embedding has no neighbours); with
    `matrix` (the built-in metrics), `tree` is one floating [N, D] array (D = `dim` when given)."""
    if matrix:
        checks.check_matrix(where, arg, tree, "[N, D]", cols=dim)
    for leaf in jax.tree.leaves(tree):
        checks.check_finite(where, arg, leaf)


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
    replicated. A leave-one-out search (``references=None``) with a named metric on a one-device mesh
    computes each block_size x block_size tile of the symmetric score matrix once and uses it for
    both blocks (half the matmul work; memory O(block_size^2 + N k)). On a multi-process mesh
    every process receives the whole result. Returns (scores [Nq, k], indices [Nq, k]) as NumPy arrays.
    """
    builtin = isinstance(metric, str)
    if isinstance(metric, str) and metric in PAIRWISE:
        metric = PAIRWISE[metric]
    if not callable(metric) and metric not in METRICS:
        raise ValueError(f"unknown kNN metric {metric!r}; valid: {', '.join(METRICS + tuple(PAIRWISE))} or a callable")
    self_search = references is None
    if ref_includes_query is None:
        ref_includes_query = self_search
    queries = jax.tree.map(np.asarray, queries)
    check_embeddings("knn", "queries", queries, builtin)
    if references is not None:
        references = jax.tree.map(np.asarray, references)
        check_embeddings("knn", "references", references, builtin,
                         dim=checks.shape_of(queries)[1] if builtin else None)
    references = queries if references is None else references
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
    if self_search and ref_includes_query and metric in METRICS and mesh.devices.size == 1:
        return _symmetric_knn(queries, k, metric, min(block_size, _round_up(n_q, 8)), mesh.devices.flat[0], precision)
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
