"""Batch samplers as pure functions of (seed, step), so a resumed run draws exactly the same batches.

Every sampler returns the indices of the *global* batch of a step; a process of a multi-process run
keeps its rows `host_rows(batch_size, process_index, process_count)` of it. An epoch is
`steps_per_epoch(num_examples, batch_size)` = num_examples // batch_size steps for every sampler
(the number of full batches in one pass, as RDML's samplers define it); only `random` visits every
example exactly once per epoch.
"""

from __future__ import annotations

import numpy as np


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """num_examples // batch_size: the steps of one epoch (the last incomplete batch dropped)."""
    if not 0 < batch_size <= num_examples:
        raise ValueError(f"batch_size {batch_size} must be in [1, number of examples {num_examples}]")
    return num_examples // batch_size


def host_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Rows [lo, hi) of the global batch that process `process_index` of `process_count` loads:
    lo = process_index * batch_size / process_count, hi = lo + batch_size / process_count."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count {process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must be a multiple of process_count {process_count}")
    local = batch_size // process_count
    return process_index * local, (process_index + 1) * local


def random_batch(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of batch `step` when every epoch visits a fresh permutation of the examples.

    Epoch e = step // (num_examples // batch_size) uses permutation rng([seed, e]); the last
    incomplete batch of an epoch is dropped. Returns int64 [batch_size].
    """
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, offset = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[offset * batch_size : (offset + 1) * batch_size]


def _class_members(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the examples of the c-th smallest class are order[starts[c]:starts[c+1]]."""
    _, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(inverse.max() + 2))
    return order, starts


def _check_m(m: int, batch_size: int) -> None:
    if m < 1 or batch_size % m:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of samples_per_class {m}")


def m_per_class_batch(labels: np.ndarray, m: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of a class-balanced batch, pytorch-metric-learning's MPerClassSampler semantics.

    batch_size // m distinct classes drawn uniformly (a shuffle of the classes, first batch_size // m
    kept), then m examples of each, without replacement, or with replacement when the class has
    fewer than m. Rows are grouped by class: rows [k*m, (k+1)*m) share a label. Deterministic in
    rng([seed, step]). Returns int64 [batch_size]. Needs m * number of classes >= batch_size.
    """
    _check_m(m, batch_size)
    order, starts = _class_members(labels)
    num_classes = len(starts) - 1
    if m * num_classes < batch_size:
        raise ValueError(
            f"m_per_class needs samples_per_class * number of classes >= batch_size, got {m} * {num_classes} < "
            f"{batch_size}; use a smaller batch, a larger samples_per_class, or the 'class_random' sampler"
        )
    rng = np.random.default_rng([seed, step])
    chosen = rng.permutation(num_classes)[: batch_size // m]
    out = []
    for c in chosen:
        members = order[starts[c] : starts[c + 1]]
        out.append(rng.choice(members, size=m, replace=len(members) < m))
    return np.concatenate(out).astype(np.int64)


def class_random_batch(labels: np.ndarray, m: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of a batch of RDML's `class_random` sampler: batch_size // m class draws, uniform
    over classes and with replacement, then m examples of each drawn class uniformly with
    replacement. Rows [k*m, (k+1)*m) share a label. Deterministic in rng([seed, step]).
    Returns int64 [batch_size]."""
    _check_m(m, batch_size)
    order, starts = _class_members(labels)
    rng = np.random.default_rng([seed, step])
    chosen = rng.integers(0, len(starts) - 1, size=batch_size // m)
    sizes = starts[chosen + 1] - starts[chosen]
    offsets = rng.integers(0, sizes[:, None], size=(len(chosen), m))
    return order[starts[chosen][:, None] + offsets].reshape(-1).astype(np.int64)
