"""Image-to-image retrieval with the EL kernel between image vMFs (eval.metric='el_vmf') against mpmath."""

from __future__ import annotations

import mpmath
import ml_collections
import numpy as np
import pytest

from probdml import evaluate, metrics, train
from probdml.errors import ConfigError


def mp_log_c(kappa, p):
    """log C_p(kappa) = nu log k - (p/2) log 2pi - log I_nu(k), nu = p/2 - 1 (at k = 0: the limit)."""
    nu = mpmath.mpf(p) / 2 - 1
    if kappa == 0:
        return mpmath.loggamma(mpmath.mpf(p) / 2) - mpmath.log(2) - mpmath.mpf(p) / 2 * mpmath.log(mpmath.pi)
    log_2pi = mpmath.log(2 * mpmath.pi)
    return nu * mpmath.log(kappa) - mpmath.mpf(p) / 2 * log_2pi - mpmath.log(mpmath.besseli(nu, kappa))


def brute_force_el(x: np.ndarray) -> np.ndarray:
    """[N, N] log EL(vMF_i, vMF_j) = log C(|x_i|) + log C(|x_j|) - log C(|x_i + x_j|), 30 digits."""
    mpmath.mp.dps = 30
    n, p = x.shape
    rows = [[mpmath.mpf(float(v)) for v in r] for r in x]
    norm = [mpmath.sqrt(sum(v * v for v in r)) for r in rows]
    own = [mp_log_c(k, p) for k in norm]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            res = mpmath.sqrt(sum((a + b) ** 2 for a, b in zip(rows[i], rows[j])))
            out[i, j] = float(own[i] + own[j] - mp_log_c(res, p))
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    p, n = 12, 22
    directions = rng.normal(size=(n, p))
    x = directions / np.linalg.norm(directions, axis=1, keepdims=True) * rng.uniform(0.5, 40.0, (n, 1))
    labels = rng.integers(0, 4, n)
    return x.astype(np.float32), labels, brute_force_el(x.astype(np.float32).astype(np.float64))


def test_el_vmf_similarity_matches_mpmath(data):
    x, _, want = data
    got = np.asarray(metrics.el_vmf_similarity(x, x))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-4)


def test_blocked_knn_ranks_by_the_el_kernel(data):
    x, labels, full = data
    n, k = len(x), 5
    ref = full.copy()
    np.fill_diagonal(ref, -np.inf)
    want_idx = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    seen = []

    def spy(q, r):
        seen.append((q.shape[0], r.shape[0]))
        return metrics.el_vmf_similarity(q, r)

    for metric in ("el_vmf", spy):
        scores, idx = metrics.knn(x, None, k, metric=metric, block_size=8, ref_block_size=6)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(scores, np.take_along_axis(ref, want_idx, axis=1), rtol=2e-5, atol=2e-4)
    assert seen and all(bq <= 8 and br <= 6 for bq, br in seen)  # only blocks, never N x N
    _, cos_idx = metrics.knn(x, None, 1, metric="cosine")
    assert np.any(cos_idx[:, 0] != want_idx[:, 0])  # the kernel ranks differently from the cosine here

    got = metrics.retrieval_metrics(x, labels, ks=(1, 2), metric="el_vmf")
    hits = labels[want_idx] == labels[:, None]
    assert got["recall@1"] == pytest.approx(hits[:, 0].mean())
    assert got["recall@2"] == pytest.approx(hits[:, :2].any(axis=1).mean())


def test_eval_metric_config(data, tmp_path):
    from configs import digits

    x, labels, full = data
    cfg = ml_collections.ConfigDict(dict(ks=(1,), metric="el_vmf", clustering=False))
    ref = full.copy()
    np.fill_diagonal(ref, -np.inf)
    out = evaluate.evaluate_outputs({"embedding": x}, labels, cfg)
    assert out["recall@1"] == pytest.approx(np.mean(labels[np.argmax(ref, axis=1)] == labels))
    cfg.metric = "mahalanobis"
    with pytest.raises(ConfigError, match="unknown eval metric 'mahalanobis'; valid choices: cosine, dot, el_vmf, "
                                          "euclidean"):
        evaluate.evaluate_outputs({"embedding": x}, labels, cfg)
    config = digits.get_config()
    config.eval.metric = "el_vmf"
    train.validate_config(config, str(tmp_path / "w"))
    config.eval.metric = "mahalanobis"
    with pytest.raises(ConfigError, match="unknown eval metric"):  # before any data or compilation
        train.validate_config(config, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="el_vmf"):
        metrics.knn(x, None, 1, metric="elk")
