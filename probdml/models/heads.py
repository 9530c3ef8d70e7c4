"""Embedding heads placed on pooled backbone features.

Three heads, shared by the IDML and EL-nivMF methods:

- `SemanticHead`: y = W h + b, W ~ kaiming-normal (fan-out), b = 0, optionally
  y <- y / sqrt(||y||^2 + eps) (IDML spec 1.1).
- `UncertaintyHead`: u = act(W h + b) with PyTorch's default `nn.Linear` init,
  activation none | relu, optionally L2-normalised (IDML spec 1.1).
- `VMFHead`: z = (m W) h + b with PyTorch's default `nn.Linear` init and the weight
  scaled by an initial norm multiplier m; no normalisation, since the norm ||z|| is the
  vMF concentration (EL-nivMF spec 6).

Heads compute in their `dtype` (None: the inputs' and parameters' dtype) and return at least float32,
so the normalisation, the vMF concentration and everything downstream never run in 16 bits.

Each head keeps its parameters in a submodule `dense` as `kernel` [in, out] and `bias`
[out] (the `flax.linen.Dense` layout; a torch `nn.Linear` weight is the transposed kernel).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS = ("none", "relu")

# kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """x / sqrt(||x||^2 + eps) along the last axis (the IDML reference's `l2_norm`)."""
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def torch_linear_kernel_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """PyTorch `nn.Linear` default weight init, kernel layout [in, out].

    kaiming_uniform(a=sqrt(5)) on fan_in = in: W ~ U(-1/sqrt(in), 1/sqrt(in)).
    """
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_linear_bias_init(fan_in: int):
    """PyTorch `nn.Linear` default bias init: b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchDense(nn.Module):
    """Affine map x W + b initialised like PyTorch's `nn.Linear`.

    W ~ U(-1/sqrt(in), 1/sqrt(in)) scaled by `kernel_scale`, b ~ U(-1/sqrt(in), 1/sqrt(in)).
    """

    features: int
    kernel_scale: float = 1.0
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        scale = self.kernel_scale

        def kernel_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
            return scale * torch_linear_kernel_init(key, shape, dtype)

        kernel = self.param("kernel", kernel_init, (fan_in, self.features), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, kernel)
        y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias = self.param("bias", torch_linear_bias_init(fan_in), (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


class SemanticHead(nn.Module):
    """Semantic embedding y = W h + b, optionally y / sqrt(||y||^2 + eps).

    W ~ N(0, 2 / out) (kaiming normal, fan-out, ReLU gain), b = 0 (IDML spec 1.1).
    """

    features: int = 512
    l2_normalize: bool = True
    eps: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        y = nn.Dense(
            self.features,
            kernel_init=kaiming_normal_fan_out,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="dense",
        )(h)
        y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
        return l2_normalize(y, self.eps) if self.l2_normalize else y


class UncertaintyHead(nn.Module):
    """Uncertainty embedding u = act(W h + b), optionally u / sqrt(||u||^2 + eps).

    PyTorch `nn.Linear` default init, the kernel scaled by `init_scale` (1 = PyTorch's; at
    init E||u||^2 ~ init_scale^2 E||h||^2 features / (3 fan_in)); `activation` is "none" (IDML
    retrieval code) or "relu" (IDML classification code).
    """

    features: int = 512
    l2_normalize: bool = True
    activation: str = "none"
    init_scale: float = 1.0
    eps: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        u = TorchDense(self.features, kernel_scale=self.init_scale, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="dense")(h)
        u = u.astype(jnp.promote_types(u.dtype, jnp.float32))
        if self.activation == "relu":
            u = nn.relu(u)
        return l2_normalize(u, self.eps) if self.l2_normalize else u


class VMFHead(nn.Module):
    """vMF embedding z = W h + b with W initialised as m * W0, no normalisation.

    W0, b follow PyTorch's `nn.Linear` default init; m = `init_norm_multiplier` scales the
    initial weight only (EL-nivMF spec 6), so the initial norm ||z|| (the vMF
    concentration) grows by about m.
    """

    features: int = 512
    init_norm_multiplier: float = 1.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        z = TorchDense(
            self.features,
            kernel_scale=self.init_norm_multiplier,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="dense",
        )(h)
        return z.astype(jnp.promote_types(z.dtype, jnp.float32))
