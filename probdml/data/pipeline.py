"""In-memory datasets loaded from TFDS, preprocessing and batching."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import ml_collections
import numpy as np

from probdml.data import sampler

SAMPLERS = ("random", "m_per_class")


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A split held in memory: images uint8 [N, H, W, C], labels int32 [N] (original class ids)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(np.unique(self.labels))

    def contiguous_labels(self) -> np.ndarray:
        """Labels remapped to 0..num_classes-1 in sorted class-id order (for proxies)."""
        return np.unique(self.labels, return_inverse=True)[1].astype(np.int32)


def normalize(images: np.ndarray, mean: float | tuple, std: float | tuple) -> np.ndarray:
    """float32 (images / 255 - mean) / std, per channel when mean/std are tuples."""
    x = images.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def batch_indices(data_cfg: ml_collections.ConfigDict, labels: np.ndarray, seed: int, step: int) -> np.ndarray:
    """Indices of training batch `step` for the configured sampler (a pure function of seed and step)."""
    if data_cfg.sampler == "random":
        return sampler.random_batch(len(labels), data_cfg.batch_size, seed, step)
    return sampler.m_per_class_batch(labels, data_cfg.samples_per_class, data_cfg.batch_size, seed, step)


def train_batches(
    data_cfg: ml_collections.ConfigDict, ds: ArrayDataset, seed: int, start_step: int
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches {'image': float32 [B, H, W, C], 'label': int32 [B]} from `start_step` on."""
    labels = ds.contiguous_labels()
    step = start_step
    while True:
        idx = batch_indices(data_cfg, labels, seed, step)
        yield {"image": normalize(ds.images[idx], data_cfg.mean, data_cfg.std), "label": labels[idx]}
        step += 1


def eval_batches(data_cfg: ml_collections.ConfigDict, ds: ArrayDataset, batch_size: int) -> Iterator[dict]:
    """Fixed-size evaluation batches (the last one zero-padded) with a validity mask."""
    n = len(ds)
    for start in range(0, n, batch_size):
        images = ds.images[start : start + batch_size]
        valid = len(images)
        if valid < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - valid, *images.shape[1:]), images.dtype)])
        yield {"image": normalize(images, data_cfg.mean, data_cfg.std), "valid": valid}
