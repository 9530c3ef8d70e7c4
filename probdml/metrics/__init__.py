"""Evaluation of embeddings, one module per family:

* `probdml.metrics.neighbors`: exact blocked k-nearest-neighbour search (sharded, any pairwise similarity);
* `probdml.metrics.retrieval`: recall@K, precision@1, R-precision, MAP@R and the papers' variants;
* `probdml.metrics.clustering`: k-means, NMI / AMI, pairwise F1;
* `probdml.metrics.uncertainty`: R-AUROC, rejection curves, correlation with ground-truth degradation.

Every public name is re-exported here (`probdml.metrics.neighbors(...)`, `probdml.metrics.retrieval_metrics(...)`).
"""

from probdml.metrics.clustering import KMEANS_INITS, clustering_metrics, kmeans, pairwise_f1
from probdml.metrics.neighbors import METRICS, PAIRWISE, SimilarityFn, default_mesh, el_vmf_similarity, knn
from probdml.metrics.retrieval import (
    DEFAULT_RETRIEVAL_METRICS,
    RETRIEVAL_METRICS,
    average_precision,
    hit_at_k,
    metrics_from_neighbors,
    r_precision,
    reciprocal_rank,
    reference_label_counts,
    retrieval_metrics,
)
from probdml.metrics.uncertainty import (
    accuracy_by_quantile_bin,
    REJECT_FRACTIONS,
    norm_uncertainty,
    rejection_curve,
    squared_norm_uncertainty,
    uncertainty_auroc,
    spearman,
    uncertainty_metrics,
    uncertainty_report,
)

__all__ = [
    "DEFAULT_RETRIEVAL_METRICS",
    "KMEANS_INITS",
    "METRICS",
    "PAIRWISE",
    "REJECT_FRACTIONS",
    "RETRIEVAL_METRICS",
    "SimilarityFn",
    "accuracy_by_quantile_bin",
    "average_precision",
    "clustering_metrics",
    "default_mesh",
    "el_vmf_similarity",
    "hit_at_k",
    "kmeans",
    "knn",
    "metrics_from_neighbors",
    "norm_uncertainty",
    "pairwise_f1",
    "r_precision",
    "reciprocal_rank",
    "reference_label_counts",
    "rejection_curve",
    "retrieval_metrics",
    "spearman",
    "squared_norm_uncertainty",
    "uncertainty_auroc",
    "uncertainty_metrics",
    "uncertainty_report",
]
