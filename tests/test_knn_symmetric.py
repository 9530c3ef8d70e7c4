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
