"""Embed a split with a trained model and compute retrieval metrics."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from probdml import metrics, parallel, similarity
from probdml.data.pipeline import Dataset, eval_batches
from probdml.errors import unknown_choice

# eval.metric: cosine (the default of the DML literature), euclidean, dot, or el_vmf: images ranked by
# the log expected-likelihood kernel between their vMFs (mu = e/|e|, kappa = |e|; metrics.el_vmf_similarity).
EVAL_METRICS = metrics.METRICS + tuple(metrics.PAIRWISE)


def knn_metric(name: str) -> str:
    """The config value `eval.metric`, checked: one of EVAL_METRICS (all accepted by `metrics.knn`); an
    unknown name raises a ConfigError listing the valid choices."""
    if name not in EVAL_METRICS:
        raise unknown_choice("eval metric", name, EVAL_METRICS)
    return name


def embed(
    apply_fn: Callable[[jax.Array], dict],
    data_cfg: ml_collections.ConfigDict,
    ds: Dataset,
    batch_size: int,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """All model outputs for every example of `ds`, in order, as numpy arrays [N, ...].

    `apply_fn(images) -> dict of arrays` should be jitted; batches have a fixed size (the last one
    padded) so it compiles once. With a `mesh`, each batch is sharded across its devices (each
    process contributing its rows) and the outputs are gathered on every process.
    """
    chunks: dict[str, list[np.ndarray]] = {}
    n, p = jax.process_count(), jax.process_index()
    for k, batch in enumerate(eval_batches(data_cfg, ds, batch_size, p, n)):
        valid = min(batch_size, len(ds) - k * batch_size)
        images = batch["image"]
        if mesh is not None:
            images = parallel.global_batch(mesh, {"image": images})["image"]
        out = multihost_utils.process_allgather(apply_fn(images), tiled=True)
        for name, value in out.items():
            chunks.setdefault(name, []).append(np.asarray(value)[:valid])
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def vmf_embedding(config: ml_collections.ConfigDict) -> bool:
    """Whether the run's embedding e is a vMF image (mean direction e/|e|, concentration |e|): a vMF head, or a
    loss similarity that compares vMF images with concentrated proxies (EL-nivMF and its ablations). Its
    own uncertainty is then -||e||."""
    return config.model.get("head", "") == "vmf" or config.loss.get("similarity", "") in similarity.PROXY_CONCENTRATION


def uncertainty_scores(outputs: dict[str, np.ndarray], nn_scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample uncertainty scores (higher = less certain), float64 [N]:

    * 'model': the model's own uncertainty where it has one: IDML's ||u||^2 of the 'uncertainty'
      output; absent otherwise (`evaluate_outputs(vmf=True)` adds -||e|| for a vMF embedding, whose
      concentration is its norm);
    * 'nn_similarity': minus the score of the leave-one-out nearest neighbour (`nn_scores`, the eval
      metric's "higher = nearer" score), a baseline every model has;
    * 'norm': minus the embedding norm before any normalisation ('embedding_norm' when the network
      normalises its output, else ||embedding||), a baseline every model has.
    """
    emb = np.asarray(outputs["embedding"], np.float64)
    norm = np.asarray(outputs["embedding_norm"], np.float64) if "embedding_norm" in outputs else np.linalg.norm(emb, axis=-1)
    scores = {"nn_similarity": -np.asarray(nn_scores, np.float64), "norm": -norm}
    if "uncertainty" in outputs:
        u = np.asarray(outputs["uncertainty"], np.float64)
        scores["model"] = np.sum(u * u, axis=-1)
    return scores


def evaluate_outputs(
    outputs: dict[str, np.ndarray],
    labels: np.ndarray,
    eval_cfg: ml_collections.ConfigDict,
    mesh: Mesh | None = None,
    *,
    vmf: bool = False,
    severity: np.ndarray | None = None,
) -> dict[str, float]:
    """Leave-one-out retrieval metrics of the 'embedding' output (recall@K for `eval_cfg.ks`,
    precision@1, r_precision, map@r; exact blocked kNN with `eval_cfg.metric`, one of EVAL_METRICS), plus
    NMI, AMI and pairwise F1 of k-means with as many clusters as classes when `eval_cfg.clustering` is set
    (on the directions for 'cosine' and 'el_vmf', whose modes are the directions; else on the raw vectors),
    and the uncertainty metrics of the same retrieval (`metrics.uncertainty_report`): R-AUROC and rejection
    recall of every score of `uncertainty_scores` (the model's own is -||e|| when `vmf`), with Spearman
    correlations and recall@1 by severity quintile when a ground-truth `severity` per sample is given."""
    result, nn_scores, nn_idx = metrics.retrieval_metrics(
        outputs["embedding"], labels, ks=tuple(eval_cfg.ks), metric=knn_metric(eval_cfg.metric), mesh=mesh,
        return_neighbors=True,
    )
    scores = uncertainty_scores(outputs, nn_scores[:, 0])
    if vmf:
        scores["model"] = scores["norm"]
    correct = np.asarray(labels)[nn_idx[:, 0]] == np.asarray(labels)
    result.update(metrics.uncertainty_report(
        correct, scores, primary="model" if "model" in scores else "nn_similarity", severity=severity))
    if eval_cfg.get("clustering", False):
        directions = eval_cfg.metric in ("cosine", "el_vmf")
        result.update(
            metrics.clustering_metrics(outputs["embedding"], labels, metric="cosine" if directions else "euclidean",
                                       n_init=3)
        )
    return result


UNCERTAINTY_PREFIXES = ("r_auroc/", "recall@1/reject", "spearman_severity/", "recall@1/severity_q")


def uncertainty_evaluation(outputs: dict[str, np.ndarray], ds, eval_cfg: ml_collections.ConfigDict,
                           mesh: Mesh | None = None, *, vmf: bool = False) -> dict[str, float]:
    """The uncertainty keys of `evaluate_outputs` (R-AUROC, rejection recall, and with the split's recorded
    severity, Spearman and recall@1 by severity quintile) for the outputs of split `ds`; for the analysis CLIs."""
    cfg = ml_collections.ConfigDict({**eval_cfg.to_dict(), "clustering": False})
    report = evaluate_outputs(outputs, ds.labels, cfg, mesh, vmf=vmf, severity=getattr(ds, "severity", None))
    return {k: v for k, v in report.items() if k.startswith(UNCERTAINTY_PREFIXES)}
