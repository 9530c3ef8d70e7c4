"""R-AUROC, rejection recall, Spearman and the uncertainty report, against sklearn, scipy, brute force
and hand-worked cases."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

from probdml import metrics as M


def test_r_auroc_hand_worked_with_ties():
    # wrong queries have uncertainty 3 and 1; correct ones 1, 0, 2.
    # pairs (wrong, correct): (3,1) (3,0) (3,2) -> 3 wins; (1,1) tie -> 1/2; (1,0) win; (1,2) loss
    # AUROC = (3 + 0.5 + 1) / 6
    u = np.array([3.0, 1.0, 1.0, 0.0, 2.0])
    correct = np.array([False, False, True, True, True])
    out = M.uncertainty_report(correct, {"s": u})
    assert out["r_auroc/s"] == pytest.approx(4.5 / 6, abs=1e-15)


def test_r_auroc_equals_sklearn_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 7, 500).astype(float)  # many ties
    correct = rng.random(500) < 0.6
    out = M.uncertainty_report(correct, {"u": u, "neg": -u})
    assert out["r_auroc/u"] == pytest.approx(sk_metrics.roc_auc_score(~correct, u), rel=1e-12)
    assert out["r_auroc/neg"] == pytest.approx(1.0 - sk_metrics.roc_auc_score(~correct, u), rel=1e-12)


def _brute_force_rejection(u, correct, fraction):
    # drop floor(fraction * n) queries, most uncertain first; among equal scores the later index first
    keep = list(range(len(u)))
    for _ in range(int(np.floor(fraction * len(u) + 1e-9))):
        worst = max(keep, key=lambda i: (u[i], i))
        keep.remove(worst)
    return float(np.mean([correct[i] for i in keep]))


def test_rejection_recall_against_a_brute_force_loop():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 5, 97).astype(float)
    correct = rng.random(97) < 0.7
    out = M.uncertainty_report(correct, {"model": u, "other": rng.random(97)}, primary="model")
    for p in (10, 20, 50):
        expected = _brute_force_rejection(u, correct, p / 100)
        assert out[f"recall@1/reject{p}/model"] == pytest.approx(expected, abs=1e-15)
        assert out[f"recall@1/reject{p}"] == out[f"recall@1/reject{p}/model"]
    assert "recall@1/reject20/other" in out


def test_spearman_against_scipy_with_ties_and_constant():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 10, 300).astype(float)
    b = a + rng.normal(0, 3, 300)
    assert M.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)
    assert M.spearman(a, -b) == pytest.approx(stats.spearmanr(a, -b).statistic, rel=1e-12)
    assert np.isnan(M.spearman(np.ones(5), np.arange(5.0)))


def test_severity_statistics_of_the_report():
    # 10 queries, severity 0..9: quintile bins {0,1} {2,3} ... {8,9}
    severity = np.arange(10.0)
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 1, 0, 0], bool)
    out = M.uncertainty_report(correct, {"s": severity[::-1].copy()}, severity=severity)
    assert [out[f"recall@1/severity_q{j}"] for j in range(1, 6)] == [1.0, 0.5, 0.5, 0.5, 0.0]
    assert out["spearman_severity/s"] == pytest.approx(-1.0)


def test_report_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one value per query"):
        M.uncertainty_report(np.ones(4, bool), {"s": np.ones(3)})
    with pytest.raises(ValueError, match="primary score 'x'"):
        M.uncertainty_report(np.ones(4, bool), {"s": np.ones(4)}, primary="x")
