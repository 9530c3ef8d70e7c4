"""Embed a split with a trained model and compute retrieval metrics."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from probdml import metrics, parallel
from probdml.data.pipeline import ArrayDataset, eval_batches


def embed(
    apply_fn: Callable[[jax.Array], dict],
    data_cfg: ml_collections.ConfigDict,
    ds: ArrayDataset,
    batch_size: int,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """All model outputs for every example of `ds`, in order, as numpy arrays [N, ...].

    `apply_fn(images) -> dict of arrays` should be jitted; batches have a fixed size (the last one
    padded) so it compiles once. With a `mesh`, each batch is sharded across its devices (each
    process contributing its rows) and the outputs are gathered on every process.
    """
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in eval_batches(data_cfg, ds, batch_size):
        images = batch["image"]
        if mesh is not None:
            n, p = jax.process_count(), jax.process_index()
            rows = len(images) // n
            images = parallel.global_batch(mesh, {"image": images[p * rows : (p + 1) * rows]})["image"]
        out = multihost_utils.process_allgather(apply_fn(images), tiled=True)
        for name, value in out.items():
            chunks.setdefault(name, []).append(np.asarray(value)[: batch["valid"]])
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def retrieval(
    outputs: dict[str, np.ndarray], labels: np.ndarray, eval_cfg: ml_collections.ConfigDict
) -> dict[str, float]:
    """Leave-one-out retrieval metrics of the 'embedding' output (recall@K for eval_cfg.ks)."""
    return metrics.retrieval_metrics(outputs["embedding"], labels, ks=tuple(eval_cfg.ks), metric=eval_cfg.metric)
