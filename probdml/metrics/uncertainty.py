"""Uncertainty metrics of leave-one-out nearest-neighbour retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from scipy import stats

from probdml.metrics.neighbors import SimilarityFn, knn
from probdml.metrics.retrieval import _check_labels


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


REJECT_FRACTIONS = (0.1, 0.2, 0.5)
NUM_SEVERITY_BINS = 5


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: the Pearson correlation of the mid-ranks of `a` and `b` (ties get
    the mean of the ranks they span). NaN when either is constant."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"spearman needs two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    ra = stats.rankdata(a) - (a.size + 1) / 2.0
    rb = stats.rankdata(b) - (b.size + 1) / 2.0
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def uncertainty_report(
    correct: np.ndarray,
    scores: dict[str, np.ndarray],
    *,
    primary: str | None = None,
    severity: np.ndarray | None = None,
    fractions: Sequence[float] = REJECT_FRACTIONS,
) -> dict[str, float]:
    """Uncertainty quality of per-query scores (higher = less certain) for leave-one-out 1-NN retrieval.

    `correct[i]` = 1[the nearest other sample has sample i's label]. For every score s in `scores`:

    * ``r_auroc/<s>``: R-AUROC (URL benchmark, Kirchhof et al. 2023), the AUROC of s for predicting
      a wrong nearest neighbour (`uncertainty_auroc`); 0.5 = uninformative, 1 = perfect;
    * ``recall@1/reject<P>/<s>``: recall@1 of the queries kept after rejecting the fraction P% with
      the highest s (`rejection_curve`), for P in `fractions`;
    * with `severity` (a ground-truth degradation per query): ``spearman_severity/<s>``, Spearman's
      correlation of s with the severity (positive = degraded images are ranked uncertain).

    ``recall@1/reject<P>`` (no suffix) repeats the `primary` score's rejection recall (the model's
    own uncertainty, or a baseline for models without one). With `severity`, ``recall@1/severity_q<j>``
    is recall@1 within the j-th of NUM_SEVERITY_BINS equal-count bins of severity (j = 1 least degraded).
    """
    correct = np.asarray(correct, bool)
    if correct.ndim != 1:
        raise ValueError(f"correct must be one-dimensional, got shape {correct.shape}")
    if primary is not None and primary not in scores:
        raise ValueError(f"primary score {primary!r} is not one of {sorted(scores)}")
    arrays = {name: np.asarray(score, np.float64) for name, score in scores.items()}
    for name, score in arrays.items():
        if score.shape != correct.shape:
            raise ValueError(f"score {name!r} must have one value per query, got {score.shape} for {correct.shape}")
    out: dict[str, float] = {f"r_auroc/{name}": uncertainty_auroc(score, correct) for name, score in arrays.items()}
    kept = {name: rejection_curve(score, correct, fractions)[1] for name, score in arrays.items()}
    percents = [round(100 * f) for f in fractions]
    if primary is not None:
        out.update({f"recall@1/reject{p}": float(acc) for p, acc in zip(percents, kept[primary])})
    for name in arrays:
        out.update({f"recall@1/reject{p}/{name}": float(acc) for p, acc in zip(percents, kept[name])})
    if severity is not None:
        severity = np.asarray(severity, np.float64)
        if severity.shape != correct.shape:
            raise ValueError(f"severity must have one value per query, got {severity.shape} for {correct.shape}")
        out.update({f"spearman_severity/{name}": spearman(score, severity) for name, score in arrays.items()})
        bins = accuracy_by_quantile_bin(severity, correct, NUM_SEVERITY_BINS)
        for j, acc in enumerate(bins["accuracy"], start=1):
            out[f"recall@1/severity_q{j}"] = acc
    return out
