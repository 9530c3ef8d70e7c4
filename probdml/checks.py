"""Input checks shared by `probdml.similarity` and `probdml.metrics`, and a checked mode for jitted code.

Eager (concrete) inputs, NumPy arrays or JAX arrays outside a trace, are checked in full: shape, dtype,
and values (a NaN or inf row is a ValueError naming the argument and the first bad row; labels must be
integers). Inside `jax.jit` / `grad` / `vmap` the inputs are tracers: only their static shapes and dtypes
are checked, and the similarities turn a non-finite input row into NaN similarities rather than a
finite number. To stop at the first NaN or out-of-range index inside a jitted computation, wrap it:

    step = probdml.checks.checked(jax.jit(train_step))   # or checked(fn) around any function
    state, metrics = step(state, batch)                  # raises checkify.JaxRuntimeError on NaN / bad index

`checked` is `jax.experimental.checkify.checkify` with the float checks (an operation producing NaN,
division by zero), the index checks (out-of-bounds gather/scatter, e.g. a label >= the number of
proxies) and user checks enabled; it slows the computation, so it is a debugging mode. JAX's global
`jax.config.update('jax_debug_nans', True)` is the coarser alternative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import checkify

CHECKED_ERRORS = checkify.float_checks | checkify.index_checks | checkify.user_checks


def is_concrete(x: Any) -> bool:
    """False for a JAX tracer (an abstract value inside jit/grad/vmap), True otherwise."""
    return not isinstance(x, jax.core.Tracer)


def shape_of(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else np.shape(x)


def dtype_of(x: Any) -> np.dtype:
    dtype = getattr(x, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(x).dtype


def check_matrix(where: str, arg: str, x: Any, expected: str = "[N, D]", *, rows: int | None = None,
                 cols: int | None = None, floating: bool = True) -> None:
    """`x` is a non-empty 2-D array (with `rows` rows / `cols` columns when given), floating point unless
    `floating` is False; else a one-line ValueError '<where>: <arg> must be <expected> ...'."""
    shape = shape_of(x)
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"{where}: {arg} must be a non-empty {expected} matrix, got shape {shape}")
    if rows is not None and shape[0] != rows:
        raise ValueError(f"{where}: {arg} must be {expected} with {rows} rows, got shape {shape}")
    if cols is not None and shape[1] != cols:
        raise ValueError(f"{where}: {arg} must be {expected} with {cols} columns, got shape {shape}")
    if floating and not np.issubdtype(dtype_of(x), np.floating):
        raise ValueError(f"{where}: {arg} must be floating point, got dtype {dtype_of(x)}")


def check_vector(where: str, arg: str, x: Any, n: int, expected: str = "[N]") -> None:
    """`x` has shape [n]; else a one-line ValueError."""
    if shape_of(x) != (n,):
        raise ValueError(f"{where}: {arg} must be {expected} with N = {n}, got shape {shape_of(x)}")


def check_finite(where: str, arg: str, x: Any) -> None:
    """For concrete `x`: ValueError naming the first row (index along the leading axis) holding a NaN or
    inf. Tracers pass (their values are unknown)."""
    if not is_concrete(x) or not np.issubdtype(dtype_of(x), np.inexact):
        return
    values = np.asarray(x)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = bad.reshape(bad.shape[0], -1).any(axis=1) if values.ndim else bad.reshape(1)
        first = int(np.flatnonzero(rows)[0])
        raise ValueError(
            f"{where}: {arg} has {int(rows.sum())} row(s) with NaN or inf (first: row {first}); "
            f"a non-finite embedding has no defined similarity"
        )


def check_labels(where: str, arg: str, labels: Any, n: int | None = None) -> np.ndarray:
    """`labels` is a 1-D integer array (of length `n` when given); returns it as a NumPy array."""
    shape = shape_of(labels)
    if len(shape) != 1 or (n is not None and shape[0] != n):
        expected = "N" if n is None else str(n)
        raise ValueError(f"{where}: {arg} must be [{expected}] integers (one label per sample), got shape {shape}")
    if not (np.issubdtype(dtype_of(labels), np.integer) or np.issubdtype(dtype_of(labels), np.bool_)):
        raise ValueError(f"{where}: {arg} must be integers (class ids), got dtype {dtype_of(labels)}")
    return np.asarray(labels)


def nonfinite_rows(x: jax.Array) -> jax.Array:
    """[N] bool: rows of the array `x` ([N, ...]) holding a NaN or inf (traceable)."""
    import jax.numpy as jnp

    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros(x.shape[:1], bool)
    return ~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)


def checked(fn: Callable[..., Any], errors: frozenset = CHECKED_ERRORS) -> Callable[..., Any]:
    """`fn` under checkify with `errors` (default: float, index and user checks): calling the result runs
    `fn` and raises `checkify.JaxRuntimeError` at the first failed check (see the module docstring)."""
    checkified = checkify.checkify(fn, errors=errors)

    def run(*args, **kwargs):
        err, out = checkified(*args, **kwargs)
        err.throw()
        return out

    return run
