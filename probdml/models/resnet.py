"""ResNet-18/34/50/101/152 in Flax linen, numerically equivalent to torchvision.

Layout and arithmetic follow `torchvision.models.resnet` (v1.5: the stride of a bottleneck
sits on its 3x3 convolution). Inputs are NHWC. Every convolution pads explicitly and
symmetrically like torchvision (k x k kernel, padding (k - 1) / 2 on each side): Flax's
'SAME' padding is asymmetric for stride 2 and would shift every feature map by a pixel.
The stem's max pool pads with -inf, as PyTorch does.

Parameter names mirror torchvision's state-dict keys, with '.' replaced by '_' inside a
module name and '/' between modules:

    torchvision                      probdml (variables)
    conv1.weight                     params/conv1/kernel
    bn1.weight, bn1.bias             params/bn1/scale, params/bn1/bias
    bn1.running_mean, .running_var   batch_stats/bn1/mean, batch_stats/bn1/var
    layer3.4.conv2.weight            params/layer3_4/conv2/kernel
    layer2.0.downsample.0.weight     params/layer2_0/downsample_conv/kernel
    layer2.0.downsample.1.*          params|batch_stats/layer2_0/downsample_bn/*
    fc.weight, fc.bias               params/fc/kernel, params/fc/bias

BatchNorm (`TorchBatchNorm`) is PyTorch's: eps = 1e-5, running averages updated with
momentum 0.1 and the *unbiased* batch variance. Two independent freezing options:

- `frozen_bn_stats=True`: normalise with the running statistics even when `train=True`
  and never update them (PyTorch `bn.eval()`).
- `frozen_bn_affine=True`: the BN scale and bias receive zero gradient (PyTorch
  `requires_grad=False`). Optimizers with weight decay would still move them; to keep
  them exactly fixed, or to toggle their trainability during training (e.g. IDML's
  warm-up), freeze them in the optimizer instead, using `batchnorm_mask`:

      labels = jax.tree.map(lambda bn: "frozen" if bn else "train", batchnorm_mask(params))
      tx = optax.multi_transform({"train": optax.adamw(1e-4), "frozen": optax.set_to_zero()},
                                 labels)

  Every BN parameter lives under a module named `bn1`, `bn2`, `bn3` or `downsample_bn`;
  `is_batchnorm_path` is the predicate.

Pooling of the last feature map F [N, H, W, C]: "avg" (mean over H, W), "max" (max over
H, W), "avg+max" (their sum, IDML spec 1.1), or "none" (return F).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from probdml.models.heads import TorchDense, kaiming_normal_fan_out

Array = jax.Array

POOLINGS = ("avg", "max", "avg+max", "none")
BLOCKS = ("basic", "bottleneck")

# name -> (blocks per stage, block type), as torchvision.models.resnet*.
ARCHITECTURES: dict[str, tuple[tuple[int, ...], str]] = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
    "resnet152": ((3, 8, 36, 3), "bottleneck"),
}

EXPANSION = {"basic": 1, "bottleneck": 4}
STAGE_WIDTHS = (64, 128, 256, 512)

_BN_NAME = re.compile(r"(.*_)?bn\d*")


def is_batchnorm_path(path: Sequence[Any]) -> bool:
    """True when a variable path (keys or `jax.tree_util` key entries) lies in a BN module."""
    for entry in path:
        name = getattr(entry, "key", getattr(entry, "name", entry))
        if isinstance(name, str) and _BN_NAME.fullmatch(name):
            return True
    return False


def batchnorm_mask(params: Any) -> Any:
    """Pytree of bools shaped like `params`: True for BatchNorm scale/bias leaves."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_batchnorm_path(path), params)


class TorchBatchNorm(nn.Module):
    """PyTorch `BatchNorm2d` over the last (channel) axis.

    y = (x - mu) / sqrt(var + eps) * scale + bias. Training: mu, var are the batch mean
    and biased variance over all but the last axis, and the running averages become
    (1 - momentum) * running + momentum * (mu, var * n / (n - 1)), n = elements per
    channel. Evaluation (or `use_running_average`): mu, var are the running averages.
    """

    use_running_average: bool = False
    frozen_affine: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), self.param_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), self.param_dtype)
        if self.frozen_affine:
            scale = jax.lax.stop_gradient(scale)
            bias = jax.lax.stop_gradient(bias)
        stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value.astype(stats_dtype), ra_var.value.astype(stats_dtype)
        else:
            axes = tuple(range(x.ndim - 1))
            xs = x.astype(stats_dtype)
            mean = jnp.mean(xs, axis=axes)
            var = jnp.mean(jnp.square(xs - mean), axis=axes)
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(self.param_dtype)
                ra_var.value = ((1 - m) * ra_var.value + m * unbiased).astype(self.param_dtype)
        mul = jax.lax.rsqrt(var + self.epsilon) * scale.astype(stats_dtype)
        y = (x.astype(stats_dtype) - mean) * mul + bias.astype(stats_dtype)
        return y.astype(self.dtype or x.dtype)


def _conv(features: int, kernel: int, stride: int, dtype: Any, param_dtype: Any, name: str) -> nn.Conv:
    """Bias-free k x k convolution with torchvision's symmetric padding (k - 1) / 2."""
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=kaiming_normal_fan_out,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class ResidualBlock(nn.Module):
    """torchvision BasicBlock ("basic": 3x3, 3x3) or Bottleneck ("bottleneck": 1x1, 3x3, 1x1)."""

    width: int
    stride: int = 1
    block: str = "bottleneck"
    use_running_average: bool = False
    frozen_bn_affine: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
            return _conv(features, kernel, stride, self.dtype, self.param_dtype, name)

        def bn(name: str) -> TorchBatchNorm:
            return TorchBatchNorm(
                use_running_average=self.use_running_average,
                frozen_affine=self.frozen_bn_affine,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        out_features = self.width * EXPANSION[self.block]
        if self.block == "basic":
            y = nn.relu(bn("bn1")(conv(self.width, 3, self.stride, "conv1")(x)))
            y = bn("bn2")(conv(self.width, 3, 1, "conv2")(y))
        else:
            y = nn.relu(bn("bn1")(conv(self.width, 1, 1, "conv1")(x)))
            y = nn.relu(bn("bn2")(conv(self.width, 3, self.stride, "conv2")(y)))
            y = bn("bn3")(conv(out_features, 1, 1, "conv3")(y))
        if self.stride != 1 or x.shape[-1] != out_features:
            x = bn("downsample_bn")(conv(out_features, 1, self.stride, "downsample_conv")(x))
        return nn.relu(y + x)


class ResNet(nn.Module):
    """torchvision ResNet: stem, four stages of residual blocks, pooling, optional fc.

    __call__(x [N, H, W, 3], train) returns the pooled features [N, C] (C = 512 for
    basic blocks, 2048 for bottlenecks), the feature map [N, H/32, W/32, C] when
    pooling == "none", or logits [N, num_classes] when `num_classes` is set.
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    num_classes: int | None = None
    pooling: str = "avg"
    frozen_bn_stats: bool = False
    frozen_bn_affine: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.num_classes is not None and self.pooling == "none":
            raise ValueError("num_classes needs pooled features: pooling must not be 'none'")
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected NHWC images [N, H, W, 3], got shape {x.shape}")
        use_running_average = (not train) or self.frozen_bn_stats
        x = _conv(64, 7, 2, self.dtype, self.param_dtype, "conv1")(x)
        x = TorchBatchNorm(
            use_running_average=use_running_average,
            frozen_affine=self.frozen_bn_affine,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn1",
        )(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (blocks, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS)):
            for j in range(blocks):
                x = ResidualBlock(
                    width=width,
                    stride=2 if (i > 0 and j == 0) else 1,
                    block=self.block,
                    use_running_average=use_running_average,
                    frozen_bn_affine=self.frozen_bn_affine,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"layer{i + 1}_{j}",
                )(x)
        if self.pooling == "none":
            return x
        features = global_pool(x, self.pooling)
        if self.num_classes is None:
            return features
        return TorchDense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(features)


def global_pool(feature_map: Array, pooling: str) -> Array:
    """Pool [N, H, W, C] -> [N, C]: mean ("avg"), max ("max") or mean + max ("avg+max"), in at least float32."""
    feature_map = feature_map.astype(jnp.promote_types(feature_map.dtype, jnp.float32))
    if pooling == "avg":
        return jnp.mean(feature_map, axis=(1, 2))
    if pooling == "max":
        return jnp.max(feature_map, axis=(1, 2))
    if pooling == "avg+max":
        return jnp.mean(feature_map, axis=(1, 2)) + jnp.max(feature_map, axis=(1, 2))
    raise ValueError(f"pooling must be one of {POOLINGS[:3]}, got {pooling!r}")


def resnet(arch: str, **kwargs: Any) -> ResNet:
    """Build a ResNet by torchvision name ("resnet18", "resnet34", "resnet50", ...)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    stage_sizes, block = ARCHITECTURES[arch]
    return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)


def resnet18(**kwargs: Any) -> ResNet:
    """torchvision resnet18: basic blocks (2, 2, 2, 2), 512 features."""
    return resnet("resnet18", **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """torchvision resnet34: basic blocks (3, 4, 6, 3), 512 features."""
    return resnet("resnet34", **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """torchvision resnet50: bottlenecks (3, 4, 6, 3), 2048 features."""
    return resnet("resnet50", **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    """torchvision resnet101: bottlenecks (3, 4, 23, 3), 2048 features."""
    return resnet("resnet101", **kwargs)


def resnet152(**kwargs: Any) -> ResNet:
    """torchvision resnet152: bottlenecks (3, 8, 36, 3), 2048 features."""
    return resnet("resnet152", **kwargs)
