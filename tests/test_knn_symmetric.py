"""The leave-one-out kNN that computes each tile of the symmetric score matrix once equals the plain
query x reference sweep (same indices, scores to float32 rounding, ties to the lower index) and a NumPy brute force."""

import numpy as np
import pytest

from probdml.metrics import neighbors


@pytest.mark.parametrize("n,k,metric,block", [(300, 7, "cosine", 64), (257, 5, "euclidean", 100), (90, 89, "dot", 32)])
def test_symmetric_self_search_equals_the_sweep_and_brute_force(n, k, metric, block):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    x[5] = x[7] = x[40]  # exact ties: the lower index must come first
    s_sym, i_sym = neighbors.knn(x, None, k, metric=metric, block_size=block)
    s_sweep, i_sweep = neighbors.knn(x, x, k, metric=metric, ref_includes_query=True, block_size=block)
    np.testing.assert_array_equal(i_sym, i_sweep)
    np.testing.assert_allclose(s_sym, s_sweep, rtol=1e-6, atol=1e-6)  # one dot product, two roundings
    x64 = x.astype(np.float64)
    if metric == "cosine":
        x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    sim = x64 @ x64.T
    if metric == "euclidean":
        sq = np.sum(x64 * x64, axis=1)
        sim = 2 * sim - sq[:, None] - sq[None, :]
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    np.testing.assert_allclose(s_sym, np.take_along_axis(sim, order, axis=1), rtol=1e-5, atol=1e-4)
    assert list(i_sym[7][:2]) == [5, 40]  # duplicates of row 7: distance 0, lower index first
    clear = np.diff(np.take_along_axis(sim, order, axis=1), axis=1) < -1e-4  # rank gaps float32 cannot blur
    assert np.mean(i_sym[:, 0] == order[:, 0]) > 0.99 and clear.any()


def test_symmetric_self_search_with_ties_at_every_running_threshold():
    """Integer vectors (exact dot products) from 8 distinct rows: every score ties with hundreds of others,
    so blocks keep offering candidates equal to a row's running k-th score; those must lose to the lower
    indices already held (the rule the block pre-filter relies on)."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, size=(8, 3)).astype(np.float32)[rng.integers(0, 8, size=230)]
    k = 40
    _, idx = neighbors.knn(x, None, k, metric="dot", block_size=32)
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-sim, axis=1, kind="stable")[:, :k])
    _, idx_sweep = neighbors.knn(x, x, k, metric="dot", ref_includes_query=True, ref_block_size=48)
    np.testing.assert_array_equal(idx_sweep, idx)


def _merge_brute_force(run_s, run_i, s, start, k):
    """The top-k of [running list, s] by score, ties to the earlier entry (the running list, then columns)."""
    cand_s = np.concatenate([run_s, s], axis=1).astype(np.float64)
    cand_i = np.concatenate([run_i, np.broadcast_to(np.arange(s.shape[1]) + start, s.shape)], axis=1)
    order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_s, order, axis=1), np.take_along_axis(cand_i, order, axis=1)


@pytest.mark.parametrize("candidates_per_row", [3, 60])
def test_block_merge_equals_brute_force(candidates_per_row):
    """`_top_k_into` on a 16 x 512 block: scores on a coarse grid (many exact ties, also with the running
    list's k-th score), running lists full with k-th scores chosen so that each row has about
    `candidates_per_row` scores above them."""
    import jax.numpy as jnp

    rng = np.random.default_rng(candidates_per_row)
    rows, cols, k, start = 16, 512, 20, 1000
    s = rng.integers(0, 200, size=(rows, cols)).astype(np.float32) / 8
    kth = np.sort(s, axis=1)[:, -candidates_per_row][:, None]
    run_s = np.sort(kth + rng.integers(0, 40, size=(rows, k)) / 8, axis=1)[:, ::-1].astype(np.float32)
    run_s[:, -1] = kth[:, 0]  # the k-th running score ties with block scores
    run_i = rng.integers(0, 1000, size=(rows, k)).astype(np.int32)
    top_s, top_i = neighbors._top_k_into(jnp.asarray(run_s), jnp.asarray(run_i), jnp.asarray(s), start, k)
    want_s, want_i = _merge_brute_force(run_s, run_i, s, start, k)
    np.testing.assert_array_equal(np.asarray(top_i), want_i)
    np.testing.assert_array_equal(np.asarray(top_s), want_s)


def test_self_search_over_wide_blocks_equals_brute_force():
    """Blocks of 512 columns on integer vectors
    (exact dot products, ties everywhere): the symmetric search and the sweep equal the brute force, ties to
    the lower index."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 4, size=(1500, 6)).astype(np.float32)
    k = 12
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(neighbors.knn(x, None, k, metric="dot", block_size=512)[1], order)
    np.testing.assert_array_equal(
        neighbors.knn(x, x, k, metric="dot", ref_includes_query=True, block_size=512, ref_block_size=512)[1], order)
