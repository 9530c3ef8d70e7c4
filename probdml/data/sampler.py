"""Batch samplers as pure functions of (seed, step), so a resumed run draws exactly the same batches."""

from __future__ import annotations

import numpy as np


def random_batch(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of batch `step` when every epoch visits a fresh permutation of the examples.

    Epoch e = step // (num_examples // batch_size) uses permutation rng([seed, e]); the last
    incomplete batch of an epoch is dropped. Returns int64 [batch_size].
    """
    if batch_size > num_examples:
        raise ValueError(f"batch_size {batch_size} exceeds the number of examples {num_examples}")
    per_epoch = num_examples // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[offset * batch_size : (offset + 1) * batch_size]


def m_per_class_batch(labels: np.ndarray, m: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of a class-balanced batch: batch_size // m classes, m examples of each.

    Classes are drawn without replacement (with replacement when there are fewer classes than
    batch_size // m); examples without replacement within a class (with replacement when the class
    has fewer than m). Deterministic in rng([seed, step]). Returns int64 [batch_size].
    """
    if batch_size % m:
        raise ValueError(f"batch_size {batch_size} must be a multiple of samples_per_class {m}")
    rng = np.random.default_rng([seed, step])
    classes, inverse = np.unique(labels, return_inverse=True)
    n_cls = batch_size // m
    chosen = rng.choice(len(classes), size=n_cls, replace=n_cls > len(classes))
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(classes) + 1))
    out = []
    for c in chosen:
        members = order[starts[c] : starts[c + 1]]
        out.append(rng.choice(members, size=m, replace=len(members) < m))
    return np.concatenate(out)
