"""Shared pieces of the losses: masked reductions (pytorch-metric-learning's reducers) and input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def masked_log1p_sum_exp(x: jnp.ndarray, mask: jnp.ndarray, axis: int) -> jnp.ndarray:
    """log(1 + sum_{mask} exp(x)) along `axis`, computed stably (a max shift including the 1).

    Entries where `mask` is False contribute nothing; an all-False slice gives log(1) = 0.
    """
    mask = mask.astype(bool)
    shift = jnp.maximum(jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True), 0.0)
    shift = jax.lax.stop_gradient(shift)
    # exp of -inf (not a discarded where-branch) for masked entries: an overflowing exp there would turn
    # the zero cotangent of the unselected branch into 0 * inf = NaN.
    total = jnp.exp(-shift) + jnp.sum(jnp.exp(jnp.where(mask, x - shift, -jnp.inf)), axis=axis, keepdims=True)
    return jnp.squeeze(shift + jnp.log(total), axis=axis)


def masked_logsumexp(x: jnp.ndarray, mask: jnp.ndarray, axis: int) -> jnp.ndarray:
    """log sum_{mask} exp(x) along `axis`, stably; an all-False slice gives 0 (not -inf), so that terms
    without entries drop out of a sum with a zero gradient."""
    mask = mask.astype(bool)
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    total = jnp.sum(jnp.exp(jnp.where(mask, x - shift, -jnp.inf)), axis=axis, keepdims=True)
    any_ = jnp.any(mask, axis=axis, keepdims=True)
    out = jnp.where(any_, shift + jnp.log(jnp.where(any_, total, 1.0)), 0.0)
    return jnp.squeeze(out, axis=axis)


def masked_log_softmax(logits: jnp.ndarray, mask: jnp.ndarray | None = None, axis: int = -1) -> jnp.ndarray:
    """log softmax over the entries where `mask` is True (others get -inf); an all-False slice gives -inf."""
    if mask is None:
        return jax.nn.log_softmax(logits, axis=axis)
    mask = mask.astype(bool)
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(mask, logits, -jnp.inf), axis=axis, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    z = logits - shift
    lse = jnp.log(jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, z, 0.0)), 0.0), axis=axis, keepdims=True))
    return jnp.where(mask, z - lse, -jnp.inf)


def sample_valid(labels: Array, sample_mask: Array | None) -> Array:
    """[B] bool: True for real samples (all of them without a `sample_mask`)."""
    if sample_mask is None:
        return jnp.ones(labels.shape, dtype=bool)
    return sample_mask.astype(bool)


def masked_mean(values: Array, mask: Array) -> Array:
    """mean of values over mask; 0 if the mask is empty (MeanReducer over the kept terms)."""
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mean_nonzero(losses: Array, weights: Array) -> Array:
    """sum(w l) / sum(w [l > 0]): the mean of the positive terms, each counted w times (AvgNonZeroReducer)."""
    weights = weights.astype(losses.dtype)
    active = jnp.sum(weights * (losses > 0))
    return jnp.sum(weights * losses) / jnp.maximum(active, 1.0)


def cross_entropy(logits: Array, labels: Array, class_mask: Array | None, valid: Array) -> Array:
    """mean over valid samples of -log softmax(logits)[y] (over the classes with `class_mask` True)."""
    logp = masked_log_softmax(logits, None if class_mask is None else jnp.broadcast_to(class_mask, logits.shape))
    picked = jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    picked = jnp.where(valid, picked, 0.0)
    return masked_mean(-picked, valid)


# ----------------------------------------------------------------------------------------------------
# Input checks. Shapes and dtypes are static, so they are checked also under jit (at trace time); label
# values only for concrete (non-traced) inputs.


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _shape(x) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else np.shape(x)


def _dtype(x) -> np.dtype:
    dtype = getattr(x, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(x).dtype


def check_matrix(loss: str, arg: str, x, expected: str, *, rows: int | None = None,
                 cols: int | None = None) -> None:
    """`x` is a non-empty floating [rows, cols] matrix; else a one-line ValueError naming `arg`."""
    shape = _shape(x)
    if len(shape) != 2:
        raise ValueError(f"{loss}: {arg} must be a {expected} matrix, got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{loss}: {arg} must be a non-empty {expected} matrix, got shape {shape}")
    if rows is not None and shape[0] != rows:
        raise ValueError(f"{loss}: {arg} must be {expected} with {rows} rows, got shape {shape}")
    if cols is not None and shape[1] != cols:
        raise ValueError(f"{loss}: {arg} must be {expected} with {cols} columns, got shape {shape}")
    if not jnp.issubdtype(_dtype(x), jnp.floating):
        raise ValueError(f"{loss}: {arg} must be floating point, got dtype {_dtype(x)}")


def check_labels(loss: str, labels, batch: int | None, num_classes: int | None = None) -> None:
    """`labels` is [batch] (any length if None) integers, within [0, num_classes) when that is given and
    the labels are concrete."""
    shape = _shape(labels)
    if len(shape) != 1 or (batch is not None and shape[0] != batch):
        expected = "B" if batch is None else str(batch)
        raise ValueError(f"{loss}: labels must be [{expected}] integers (one per sample), got shape {shape}")
    if not jnp.issubdtype(_dtype(labels), jnp.integer):
        raise ValueError(f"{loss}: labels must be integers, got dtype {_dtype(labels)}")
    if num_classes is not None and _is_concrete(labels):
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{loss}: labels must lie in [0, {num_classes}) (one per proxy), got range "
                f"[{values.min()}, {values.max()}]"
            )


def check_mask(loss: str, arg: str, mask, shape: tuple[int, ...]) -> None:
    """An optional mask (or count array) has exactly `shape`."""
    if mask is None:
        return
    got = _shape(mask)
    if got != tuple(shape):
        expected = "[" + ", ".join(str(s) for s in shape) + "]"
        raise ValueError(f"{loss}: {arg} must have shape {expected}, got {got}")


def check_proxy_inputs(loss: str, sim, labels, sample_mask, *, classes_per_column: int = 1) -> None:
    """sim [B, C] (C = classes * classes_per_column), labels [B] in [0, classes), sample_mask [B]."""
    check_matrix(loss, "sim", sim, "[B, C] (samples x proxies)")
    b, c = _shape(sim)
    check_labels(loss, labels, b, c // classes_per_column)
    check_mask(loss, "sample_mask", sample_mask, (b,))


def check_pair_inputs(loss: str, arg: str, x, labels, sample_mask, *, pair_masks=(), triplets=None,
                      ref_labels=None, ref_mask=None) -> None:
    """x [B, B] (the batch against itself), labels [B], sample_mask [B], mined pair masks [B, B] and
    triplets [B, B, B]; with `ref_labels` [M] (references such as a cross-batch memory, `ref_mask` [M])
    x, the pair masks and the triplets are [B, M] and [B, M, M]."""
    if ref_labels is None:
        if ref_mask is not None:
            raise ValueError(f"{loss}: ref_mask needs ref_labels (the labels of the references)")
        check_matrix(loss, arg, x, "[B, B] (batch x batch)")
        b, m = _shape(x)
        if m != b:
            raise ValueError(f"{loss}: {arg} must be a square [B, B] matrix (batch x batch), got shape {(b, m)}")
    else:
        check_matrix(loss, arg, x, "[B, M] (batch x references)")
        b, m = _shape(x)
        if _shape(ref_labels) != (m,) or not jnp.issubdtype(_dtype(ref_labels), jnp.integer):
            raise ValueError(f"{loss}: ref_labels must be [{m}] integers (one per column of {arg}), got shape "
                             f"{_shape(ref_labels)} and dtype {_dtype(ref_labels)}")
        check_mask(loss, "ref_mask", ref_mask, (m,))
    check_labels(loss, labels, b)
    check_mask(loss, "sample_mask", sample_mask, (b,))
    for name, mask in pair_masks:
        check_mask(loss, name, mask, (b, m))
    check_mask(loss, "triplets", triplets, (b, m, m))
