"""Tests of probdml.metrics: exact blocked kNN, retrieval / clustering / uncertainty metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from probdml import metrics as M

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def brute_force(scores: np.ndarray, k: int, exclude_diagonal: bool) -> np.ndarray:
    """Indices of the k highest scores per row, ties by lower index (float64 NumPy)."""
    scores = np.array(scores, np.float64)
    if exclude_diagonal:
        n = min(scores.shape)
        scores[np.arange(n), np.arange(n)] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def clustered(rng, sizes, dim=16, noise=0.6):
    """Gaussian clusters: label c repeated sizes[c] times, centres on the unit sphere."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.standard_normal((len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + noise * rng.standard_normal((labels.size, dim)) / np.sqrt(dim)
    perm = rng.permutation(labels.size)
    return x[perm].astype(np.float32), labels[perm]


def log_c3(kappa):
    """log normaliser of the vMF on S^2: log(kappa / (4 pi sinh kappa)), stable for large kappa."""
    return jnp.log(kappa) - jnp.log(2 * jnp.pi) - kappa - jnp.log1p(-jnp.exp(-2 * kappa))


def el_kernel_s2(q, r):
    """log expected-likelihood kernel between vMFs on S^2 given as {'mu', 'kappa'} (not an inner product)."""
    v = q["kappa"][:, None, None] * q["mu"][:, None, :] + r["kappa"][None, :, None] * r["mu"][None, :, :]
    return log_c3(q["kappa"])[:, None] + log_c3(r["kappa"])[None, :] - log_c3(jnp.linalg.norm(v, axis=-1))


# ----------------------------------------------------------------------------------------------
# kNN
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot"])
def test_knn_matches_brute_force_across_blocks(metric):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((301, 8)).astype(np.float32)
    x64 = x.astype(np.float64)
    xn = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    full = {"cosine": xn @ xn.T, "dot": x64 @ x64.T, "euclidean": -((x64[:, None] - x64[None]) ** 2).sum(-1)}[metric]
    # 301 queries in 5 blocks of 64 (padded), 301 references in 3 blocks of 101 (last one padded).
    scores, idx = M.knn(x, None, 7, metric=metric, block_size=64, ref_block_size=128)
    np.testing.assert_array_equal(idx, brute_force(full, 7, True))
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), atol=2e-5)
    assert not np.any(idx == np.arange(301)[:, None])


def test_knn_separate_references_and_references_including_queries():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((50, 5)).astype(np.float32)
    extra = rng.standard_normal((200, 5)).astype(np.float32)
    refs = np.concatenate([q, extra])
    full = q.astype(np.float64) @ refs.T.astype(np.float64)
    _, idx = M.knn(q, refs, 4, metric="dot", ref_block_size=128)
    np.testing.assert_array_equal(idx, brute_force(full, 4, False))
    _, idx_self = M.knn(q, refs, 4, metric="dot", ref_includes_query=True, ref_block_size=128)
    np.testing.assert_array_equal(idx_self, brute_force(full, 4, True))


def test_knn_ties_broken_by_lower_index_across_reference_blocks():
    # Integer vectors: every dot product is exact, with many ties spread over 3 reference blocks.
    rng = np.random.default_rng(2)
    refs = rng.integers(0, 2, size=(300, 3)).astype(np.float32)
    q = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    scores, idx = M.knn(q, refs, 60, metric="dot", ref_block_size=128)
    np.testing.assert_array_equal(idx, brute_force(q @ refs.T, 60, False))
    # all-zero query: every reference ties at 0, so the answer is 0..59 in order
    np.testing.assert_array_equal(idx[2], np.arange(60))
    # identical references: self excluded, then lowest indices
    same = np.ones((200, 4), np.float32)
    _, idx = M.knn(same, None, 3, metric="cosine", ref_block_size=128)
    np.testing.assert_array_equal(idx[0], [1, 2, 3])
    np.testing.assert_array_equal(idx[5], [0, 1, 2])
    np.testing.assert_array_equal(idx[150], [0, 1, 2])


def test_knn_custom_similarity_on_pytrees():
    rng = np.random.default_rng(3)
    mu = rng.standard_normal((150, 3))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    kappa = rng.uniform(0.5, 40.0, 150)
    tree = {"mu": mu.astype(np.float32), "kappa": kappa.astype(np.float32)}
    _, idx = M.knn(tree, None, 5, metric=el_kernel_s2, block_size=32)
    # oracle: float64 closed form with log C_3 written out directly
    v = np.linalg.norm(kappa[:, None, None] * mu[:, None] + kappa[None, :, None] * mu[None], axis=-1)
    lc = lambda k: np.log(k / (4 * np.pi * np.sinh(k)))  # noqa: E731
    el = lc(kappa)[:, None] + lc(kappa)[None, :] - lc(v)
    np.testing.assert_array_equal(idx, brute_force(el, 5, True))
    # the EL ranking is not the cosine ranking: the kernel is not an inner product of directions
    _, idx_cos = M.knn(tree["mu"], None, 5, metric="cosine")
    assert np.mean(idx == idx_cos) < 0.9


def test_knn_float64():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 6))
    with jax.enable_x64(True):
        scores, idx = M.knn(x, None, 3, metric="euclidean")
    full = -((x[:, None] - x[None]) ** 2).sum(-1)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(idx, brute_force(full, 3, True))
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), rtol=1e-12, atol=1e-12)


def test_knn_sharded_over_8_devices_equals_one_device():
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from probdml import metrics as M
        assert jax.device_count() == 8, jax.devices()
        rng = np.random.default_rng(5)
        x = rng.standard_normal((203, 16)).astype(np.float32)
        tree = {"mu": x[:, :3] / np.linalg.norm(x[:, :3], axis=1, keepdims=True), "kappa": np.abs(x[:, 3]) * 10 + 0.5}
        def el(q, r):
            import jax.numpy as jnp
            lc = lambda k: jnp.log(k) - jnp.log(2 * jnp.pi) - k - jnp.log1p(-jnp.exp(-2 * k))
            v = q["kappa"][:, None, None] * q["mu"][:, None] + r["kappa"][None, :, None] * r["mu"][None]
            return lc(q["kappa"])[:, None] + lc(r["kappa"])[None] - lc(jnp.linalg.norm(v, axis=-1))
        one = M.default_mesh(jax.devices()[:1])
        for data, metric in [(x, "cosine"), (x, "euclidean"), (tree, el)]:
            s8, i8 = M.knn(data, None, 9, metric=metric, block_size=64, ref_block_size=128)
            s1, i1 = M.knn(data, None, 9, metric=metric, block_size=64, ref_block_size=128, mesh=one)
            np.testing.assert_array_equal(i8, i1)
            # scores agree to float32 rounding of the summands (|log C_3| reaches ~40 for el)
            np.testing.assert_allclose(s8, s1, rtol=1e-6, atol=1e-5)
            print(getattr(metric, "__name__", metric), float(np.max(np.abs(s8 - s1))))
        print("OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK"), out.stdout


def test_knn_bad_input():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match="unknown kNN metric"):
        M.knn(x, None, 1, metric="manhattan")
    with pytest.raises(ValueError, match="k=10"):
        M.knn(x, None, 10)
    with pytest.raises(ValueError, match="leading"):
        M.knn({"a": x, "b": x[:5]}, None, 1, metric=lambda q, r: q["a"] @ r["a"].T)
    with pytest.raises(ValueError, match="'data' axis"):
        M.knn(x, None, 1, mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",)))


# ----------------------------------------------------------------------------------------------
# retrieval metrics: hand-computed cases
# ----------------------------------------------------------------------------------------------

# Self-retrieval, labels [0, 0, 0, 1, 1, 2]: class sizes 3, 2, 1 (label 2 is lone), so
# R = count - 1 = [2, 2, 2, 1, 1, 0]. Each row lists the labels of the other five samples,
# nearest first; the "same" rows are [01010], [11000], [00011], [10000], [00010], [00000].
HAND_LABELS = np.array([0, 0, 0, 1, 1, 2])
HAND_NEIGHBORS = np.array(
    [
        [1, 0, 2, 0, 1],
        [0, 0, 1, 1, 2],
        [2, 1, 1, 0, 0],
        [1, 0, 0, 0, 2],
        [0, 2, 0, 1, 0],
        [1, 0, 0, 1, 0],
    ]
)


def test_hand_computed_self_retrieval():
    out = M.metrics_from_neighbors(HAND_NEIGHBORS, HAND_LABELS, ks=(1, 2, 4), include=M.RETRIEVAL_METRICS)
    expected = {
        "recall@1": 2 / 6,  # hits: q1, q3 (all six queries count)
        "recall@2": 3 / 6,  # + q0
        "recall@4": 5 / 6,  # + q2, q4
        "idml_recall@1": 2 / 6,
        "idml_recall@2": 3 / 6,
        "idml_recall@4": 3 / 6,  # IDML retrieves min(1023, largest class = 3) neighbours only
        "precision@1": 2 / 5,  # lone q5 excluded
        "r_precision": (1 / 2 + 1 + 0 + 1 + 0) / 5,
        "map@r": ((1 / 2) / 2 + (1 + 1) / 2 + 0 + 1 + 0) / 5,
        "map": ((1 / 2 + 2 / 4) / 2 + (1 + 1) / 2 + (1 / 4 + 2 / 5) / 2 + 1 + (1 / 4) / 1) / 5,
        "mrr": (1 / 2 + 1 + 1 / 4 + 1 + 1 / 4) / 5,
        # RDML mAP_c: depth = divisor = class size incl. the query, all six queries
        "map_c": ((1 / 2) / 3 + (1 + 1) / 3 + 0 + (1 / 1) / 2 + 0 + 0) / 6,
        # mAP_1000 / mAP_lim: all 5 neighbours, divided by the class size
        "map_1000": ((1 / 2 + 2 / 4) / 3 + 2 / 3 + (1 / 4 + 2 / 5) / 3 + 1 / 2 + (1 / 4) / 2 + 0) / 6,
        "map_lim": ((1 / 2 + 2 / 4) / 3 + 2 / 3 + (1 / 4 + 2 / 5) / 3 + 1 / 2 + (1 / 4) / 2 + 0) / 6,
    }
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key


def test_hand_computed_class_averages():
    avg = M.metrics_from_neighbors(HAND_NEIGHBORS, HAND_LABELS, ks=(1,), avg_of_avgs=True)
    assert avg["map@r"] == pytest.approx(((1 / 4 + 1 + 0) / 3 + (1 + 0) / 2) / 2)
    assert avg["recall@1"] == pytest.approx(((0 + 1 + 0) / 3 + (1 + 0) / 2 + 0) / 3)
    per = M.metrics_from_neighbors(HAND_NEIGHBORS, HAND_LABELS, ks=(1,), return_per_class=True)
    assert per["map@r"] == pytest.approx({0: 5 / 12, 1: 1 / 2})
    assert per["recall@1"] == pytest.approx({0: 1 / 3, 1: 1 / 2, 2: 0.0})


def test_hand_computed_separate_references():
    # queries [0, 1, 3] against references [0, 0, 1, 2, 2]: R = [2, 1, 0], label 3 is lone.
    refs = np.array([0, 0, 1, 2, 2])
    queries = np.array([0, 1, 3])
    neighbors = np.array([[2, 0, 1, 0, 2], [1, 0, 0, 2, 2], [0, 1, 2, 0, 2]])
    out = M.metrics_from_neighbors(neighbors, queries, refs, ks=(1,), include=M.RETRIEVAL_METRICS)
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["precision@1"] == pytest.approx(1 / 2)
    assert out["r_precision"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["map@r"] == pytest.approx(((1 / 2) / 2 + 1) / 2)
    assert out["map_c"] == pytest.approx(((1 / 2) / 2 + 1 + 0) / 3)


def test_all_lone_gives_nan_and_too_few_neighbours_raise():
    out = M.metrics_from_neighbors(np.array([[1], [0]]), np.array([0, 1]), ks=(1,))
    assert out["recall@1"] == 0.0
    assert np.isnan(out["precision@1"]) and np.isnan(out["map@r"])
    with pytest.raises(ValueError, match="need more"):
        M.metrics_from_neighbors(HAND_NEIGHBORS[:, :1], HAND_LABELS, ks=(1,))
    with pytest.raises(ValueError, match="unknown retrieval metrics"):
        M.metrics_from_neighbors(HAND_NEIGHBORS, HAND_LABELS, include=("map@k",))
    with pytest.raises(ValueError, match="mutually exclusive"):
        M.metrics_from_neighbors(HAND_NEIGHBORS, HAND_LABELS, avg_of_avgs=True, return_per_class=True)


def test_retrieval_metrics_end_to_end_on_a_line():
    # Points on a line: the neighbour order is known exactly.
    x = np.array([[0.0], [1.0], [3.0], [7.0], [7.5]], np.float32)
    y = np.array([0, 1, 0, 1, 1])
    # euclidean neighbours: 0->[1,2,3,4] 1->[0,2,3,4] 2->[1,0,3,4] 3->[4,2,1,0] 4->[3,2,1,0]
    out = M.retrieval_metrics(x, y, ks=(1, 2), metric="euclidean", include=("recall", "precision@1", "map@r", "map_c"))
    assert out["recall@1"] == pytest.approx(2 / 5)  # hits: 3, 4
    assert out["recall@2"] == pytest.approx(4 / 5)  # + 0 (via 2), 2 (via 0)
    # R = [1, 2, 1, 2, 2]; AP@R: q0 0, q1 (top2 [0,2]) 0, q2 0, q3 ([4,2]) 1/2, q4 ([3,2]) 1/2
    assert out["map@r"] == pytest.approx((0 + 0 + 0 + 1 / 2 + 1 / 2) / 5)
    # map_c: class sizes [2, 3, 2, 3, 3]: q0 top2 [1,2] -> P(2)=1/2 -> 1/4; q1 top3 [0,2,3] -> 1/3 / 3;
    # q2 top2 [1,0] -> 1/2 / 2; q3 top3 [4,2,1] -> (1 + 2/3) / 3; q4 top3 [3,2,1] -> (1 + 2/3) / 3
    expected = (1 / 4 + (1 / 3) / 3 + (1 / 2) / 2 + (5 / 3) / 3 + (5 / 3) / 3) / 5
    assert out["map_c"] == pytest.approx(expected)
    # the lead's call signature keeps working
    legacy = M.retrieval_metrics(x, y, ks=(1,), metric="euclidean")
    assert legacy["recall@1"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="at least what the metrics need"):
        M.retrieval_metrics(x, y, ks=(1,), k=1)


# ----------------------------------------------------------------------------------------------
# retrieval / clustering metrics against pytorch-metric-learning's AccuracyCalculator
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pml():
    pytest.importorskip("torch")
    pytest.importorskip("pytorch_metric_learning")
    import torch
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    def calculator(**kwargs):
        return AccuracyCalculator(knn_func=CustomKNN(CosineSimilarity()), device=torch.device("cpu"), **kwargs)

    return calculator


@pytest.fixture(scope="module")
def clustered_data():
    rng = np.random.default_rng(6)
    sizes = rng.integers(1, 13, 40)  # SOP-like 1..12 per class, several lone labels
    sizes[:4] = 1
    x, y = clustered(rng, sizes)
    return x, y


KNN_KEYS = {"precision_at_1": "precision@1", "r_precision": "r_precision", "mean_average_precision_at_r": "map@r"}


@pytest.mark.parametrize("avg_of_avgs", [False, True])
def test_agrees_with_pml_self_retrieval(pml, clustered_data, avg_of_avgs):
    x, y = clustered_data
    ref = pml(k="max_bin_count", avg_of_avgs=avg_of_avgs, include=tuple(KNN_KEYS)).get_accuracy(x, y)
    ours = M.retrieval_metrics(x, y, ks=(1,), avg_of_avgs=avg_of_avgs)
    for theirs, mine in KNN_KEYS.items():
        assert ours[mine] == pytest.approx(ref[theirs], abs=1e-6), mine
    assert 0.2 < ours["map@r"] < 0.95  # non-trivial data


def test_agrees_with_pml_per_class_and_other_metrics(pml, clustered_data):
    x, y = clustered_data
    names = ("mean_average_precision", "mean_reciprocal_rank", "r_precision")
    ref = pml(k=20, return_per_class=True, include=names).get_accuracy(x, y)
    ours = M.retrieval_metrics(x, y, ks=(1,), include=("map", "mrr", "r_precision"), k=20, return_per_class=True)
    for theirs, mine in zip(names, ("map", "mrr", "r_precision"), strict=True):
        np.testing.assert_allclose(list(ours[mine].values()), ref[theirs], atol=1e-6, err_msg=mine)


def test_agrees_with_pml_separate_and_including_references(pml, clustered_data):
    x, y = clustered_data
    q, yq, r, yr = x[:60], y[:60], x[60:], y[60:]
    ref = pml(k="max_bin_count", include=tuple(KNN_KEYS)).get_accuracy(q, yq, r, yr)
    ours = M.retrieval_metrics(q, yq, reference_embeddings=r, reference_labels=yr)
    for theirs, mine in KNN_KEYS.items():
        assert ours[mine] == pytest.approx(ref[theirs], abs=1e-6), mine
    ref = pml(k="max_bin_count", include=tuple(KNN_KEYS)).get_accuracy(q, yq, x, y, ref_includes_query=True)
    ours = M.retrieval_metrics(q, yq, reference_embeddings=x, reference_labels=y, ref_includes_query=True)
    for theirs, mine in KNN_KEYS.items():
        assert ours[mine] == pytest.approx(ref[theirs], abs=1e-6), mine


def test_nmi_agrees_with_pml_same_assignment(pml, clustered_data):
    import torch

    x, y = clustered_data
    clusters, _, _ = M.kmeans(x, len(np.unique(y)), seed=1)
    calc = pml(include=("NMI", "AMI"), kmeans_func=lambda emb, n: torch.as_tensor(clusters))
    ref = calc.get_accuracy(x, y)
    ours = M.clustering_metrics(x, y, cluster_labels=clusters)
    assert ours["nmi"] == pytest.approx(ref["NMI"], abs=1e-6)
    assert ours["ami"] == pytest.approx(ref["AMI"], abs=1e-6)
    assert ours["nmi"] > 0.5


# ----------------------------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------------------------


def test_pairwise_f1_hand_computed_and_against_pair_confusion():
    # classes {0,1,2},{3,4}; clusters {0,1},{2,3,4}: TP = 1 + 1, class pairs 3 + 1, cluster pairs 1 + 3
    assert M.pairwise_f1(np.array([0, 0, 0, 1, 1]), np.array([5, 5, 7, 7, 7])) == pytest.approx(2 * 2 / (4 + 4))
    assert M.pairwise_f1(np.array([0, 1, 2]), np.array([0, 0, 0])) == 0.0
    rng = np.random.default_rng(7)
    y, c = rng.integers(0, 9, 400), rng.integers(0, 12, 400)
    pc = sk_metrics.cluster.pair_confusion_matrix(y, c)  # ordered pairs: [same class?][same cluster?]
    precision, recall = pc[1, 1] / (pc[0, 1] + pc[1, 1]), pc[1, 1] / (pc[1, 0] + pc[1, 1])
    assert M.pairwise_f1(y, c) == pytest.approx(2 * precision * recall / (precision + recall), rel=1e-12)


def test_kmeans_lloyd_step_and_recovery():
    rng = np.random.default_rng(8)
    x, y = clustered(rng, [30] * 5, dim=8, noise=0.2)
    # one Lloyd update from the same (seeded) initial centroids, recomputed in NumPy
    _, c0, _ = M.kmeans(x, 5, seed=3, max_iter=0)
    assert all(np.any(np.all(np.isclose(x, c), axis=1)) for c in c0)  # random init = data points
    _, c1, inertia1 = M.kmeans(x, 5, seed=3, max_iter=1)
    a0 = np.argmin(((x[:, None].astype(np.float64) - c0[None]) ** 2).sum(-1), axis=1)
    expected = np.stack([x[a0 == j].mean(0) if np.any(a0 == j) else c0[j] for j in range(5)])
    np.testing.assert_allclose(c1, expected, atol=1e-5)
    a1 = np.argmin(((x[:, None].astype(np.float64) - c1[None]) ** 2).sum(-1), axis=1)
    assert inertia1 == pytest.approx(((x - c1[a1]) ** 2).sum(), rel=1e-4)
    # many iterations (stopping early at the fixed point) = plain Lloyd iterations in NumPy
    c = c0.astype(np.float64)
    for _ in range(50):
        a = np.argmin(((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1), axis=1)
        c = np.stack([x[a == j].mean(0) if np.any(a == j) else c[j] for j in range(5)])
    a50, c50, _ = M.kmeans(x, 5, seed=3, max_iter=50)
    np.testing.assert_array_equal(a50, a)
    np.testing.assert_allclose(c50, c, atol=1e-5)
    out = M.clustering_metrics(x, y, init="k-means++", n_init=2, max_iter=10)
    assert out["nmi"] == pytest.approx(1.0) and out["f1"] == pytest.approx(1.0)
    # several inits keep the best inertia: never worse than the first init alone
    _, _, best = M.kmeans(x, 5, seed=0, n_init=4)
    _, _, first = M.kmeans(x, 5, seed=0, n_init=1)
    assert best <= first + 1e-6
    with pytest.raises(ValueError, match="unknown k-means init"):
        M.kmeans(x, 5, init="forgy")
    with pytest.raises(ValueError, match="n_clusters"):
        M.kmeans(x, 1000)


# ----------------------------------------------------------------------------------------------
# uncertainty
# ----------------------------------------------------------------------------------------------


def test_uncertainty_auroc_hand_computed_and_against_sklearn():
    # errors at u = [0.9, 0.5], correct at u = [0.1, 0.5, 0.7]: pairs (err > ok) = 3 + 1, ties = 1
    u = np.array([0.9, 0.1, 0.5, 0.5, 0.7])
    correct = np.array([False, True, False, True, True])
    assert M.uncertainty_auroc(u, correct) == pytest.approx((3 + 1 + 0.5) / 6)
    rng = np.random.default_rng(9)
    u, correct = rng.integers(0, 20, 300).astype(float), rng.random(300) < 0.6
    assert M.uncertainty_auroc(u, correct) == pytest.approx(sk_metrics.roc_auc_score(~correct, u), rel=1e-12)
    assert np.isnan(M.uncertainty_auroc(u, np.ones(300, bool)))


def test_rejection_curve_hand_computed():
    u = np.array([0.3, 0.9, 0.1, 0.5, 0.5])
    correct = np.array([True, False, True, False, True])
    # rejecting 0, 1 (u=0.9), 2 (then the tie at 0.5: index 4 goes first), 3 queries
    fr, acc = M.rejection_curve(u, correct, [0.0, 0.2, 0.4, 0.6])
    np.testing.assert_allclose(acc, [3 / 5, 3 / 4, 2 / 3, 2 / 2])
    with pytest.raises(ValueError, match="fractions"):
        M.rejection_curve(u, correct, [1.0])


def test_uncertainty_metrics_and_scores():
    # 1-D embeddings (cosine = sign): the two negative points have the wrong neighbour class
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.1], [-0.2, 0.0], [-0.1, 0.05]], np.float32)
    labels = np.array([0, 0, 0, 1, 0])
    out = M.uncertainty_metrics(emb, labels, np.asarray(M.norm_uncertainty(emb)), fractions=[0.0, 0.4])
    # correct = [T, T, T, F, F]; uncertainty -||e|| is highest for the two wrong ones
    assert out["auroc"] == pytest.approx(1.0)
    np.testing.assert_allclose(out["rejection_recall@1"], [3 / 5, 1.0])
    np.testing.assert_allclose(M.squared_norm_uncertainty(jnp.array([[3.0, 4.0]])), [25.0])
    # default score: minus the nearest-neighbour cosine; the wrong ones (3 <-> 4) have cosine
    # 2 / sqrt(5) = 0.894, the correct ones 1, 1 and 0.9994, so AUROC = 1
    out = M.uncertainty_metrics(emb, labels, fractions=[0.0])
    assert out["auroc"] == pytest.approx(1.0)


def test_rejection_plot(tmp_path):
    from probdml.analysis.uncertainty_plots import plot_rejection_curves

    fr = np.array([0.0, 0.5])
    path = tmp_path / "rejection.png"
    fig = plot_rejection_curves({"norm": (fr, [0.6, 0.8]), "oracle": (fr, [0.6, 1.0])}, path=path, title="t")
    assert path.stat().st_size > 1000
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["norm", "oracle"]
    np.testing.assert_allclose(lines[1].get_ydata(), [0.6, 1.0])
    with pytest.raises(ValueError, match="empty"):
        plot_rejection_curves({})


def test_accuracy_by_quantile_bin_hand_worked():
    from probdml.metrics import accuracy_by_quantile_bin

    out = accuracy_by_quantile_bin(np.array([6.0, 1, 3, 2, 5, 4]), np.array([1, 0, 1, 0, 1, 0], bool), num_bins=3)
    np.testing.assert_allclose(out["edges"], [1.0, 8 / 3, 13 / 3, 6.0])
    assert out["count"] == [2, 2, 2]
    np.testing.assert_allclose(out["mean_score"], [1.5, 3.5, 5.5])
    np.testing.assert_allclose(out["accuracy"], [0.0, 0.5, 1.0])
    tied = accuracy_by_quantile_bin(np.ones(4), np.array([1, 0, 1, 1], bool), num_bins=2)
    assert tied["count"] == [0, 4] and np.isnan(tied["accuracy"][0]) and tied["accuracy"][1] == 0.75
