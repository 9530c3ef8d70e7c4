"""The small embedding networks: architecture (parameter counts, strides), identity-initialized
residual blocks, batch independence, pooling, dtypes and the model registry."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from probdml import models
from probdml.errors import ConfigError
from probdml.models.small import SmallConvNet
from probdml.models.small_resnet import BasicBlock, SmallResNet


def _count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def test_parameter_counts_match_the_architecture():
    x = jnp.zeros((1, 16, 16, 1))
    resnet = SmallResNet(embed_dim=6, widths=(4, 8), blocks_per_stage=1, groups=2, pooling="avg")
    # stem 3*3*1*4 + GN 2*4; block 4->4: two 3*3*4*4 convs + two GN(2*4);
    # block 4->8 stride 2: 3*3*4*8 + GN 16 + 3*3*8*8 + GN 16 + proj 1*1*4*8 + GN 16; head 8*6 + 6.
    expected = (36 + 8) + (144 + 8 + 144 + 8) + (288 + 16 + 576 + 16 + 32 + 16) + (48 + 6)
    assert _count(resnet.init(jax.random.key(0), x)["params"]) == expected == 1346
    two_blocks = SmallResNet(embed_dim=6, widths=(4, 8), blocks_per_stage=2, groups=2, pooling="avg")
    extra = (144 + 8 + 144 + 8) + (576 + 16 + 576 + 16)  # a second block per stage, no projections
    assert _count(two_blocks.init(jax.random.key(0), x)["params"]) == expected + extra
    flatten = SmallResNet(embed_dim=6, widths=(4, 8), blocks_per_stage=1, groups=2, pooling="flatten")
    # the head sees the final 8x8x8 map: (8*8*8)*6 + 6 instead of 8*6 + 6.
    assert _count(flatten.init(jax.random.key(0), x)["params"]) == expected - 48 + 512 * 6
    convnet = SmallConvNet(embed_dim=6, widths=(4, 8), hidden=5)
    # conv 3*3*1*4 + 4, conv 3*3*4*8 + 8, hidden 8*5 + 5, head 5*6 + 6.
    assert _count(convnet.init(jax.random.key(0), x)["params"]) == 40 + 296 + 45 + 36


def test_output_shapes_and_stage_strides():
    model = SmallResNet(embed_dim=12, widths=(4, 8, 16), groups=4, pooling="avgmax")
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 1))
    variables = model.init(jax.random.key(0), x)
    out, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    assert out["embedding"].shape == (3, 12) and out["features"].shape == (3, 16)
    inter = state["intermediates"]
    assert inter["stage0_block0"]["__call__"][0].shape == (3, 32, 32, 4)
    assert inter["stage1_block0"]["__call__"][0].shape == (3, 16, 16, 8)
    last = inter["stage2_block0"]["__call__"][0]
    assert last.shape == (3, 8, 8, 16)
    np.testing.assert_allclose(out["features"], last.mean(axis=(1, 2)) + last.max(axis=(1, 2)), rtol=1e-6)
    avg = SmallResNet(embed_dim=12, widths=(4, 8, 16), groups=4, pooling="avg")
    out_avg = avg.apply(variables, x)
    np.testing.assert_allclose(out_avg["features"], last.mean(axis=(1, 2)), rtol=1e-6)
    flat = SmallResNet(embed_dim=12, widths=(4, 8, 16), groups=4, pooling="flatten")
    flat_vars = flat.init(jax.random.key(0), x)
    body = {k: v for k, v in flat_vars["params"].items() if k != "embedding"}
    assert jax.tree.all(jax.tree.map(np.array_equal, body, {k: v for k, v in variables["params"].items() if k != "embedding"}))
    out_flat = flat.apply(flat_vars, x)
    assert out_flat["features"].shape == (3, 8 * 8 * 16)
    np.testing.assert_allclose(out_flat["features"], last.reshape(3, -1), rtol=1e-6)  # row-major (h, w, c)
    w, b = flat_vars["params"]["embedding"]["kernel"], flat_vars["params"]["embedding"]["bias"]
    np.testing.assert_allclose(out_flat["embedding"], last.reshape(3, -1) @ w + b, rtol=1e-4, atol=1e-5)


def test_residual_block_starts_as_the_identity():
    block = BasicBlock(width=6, groups=3)
    x = jax.nn.relu(jax.random.normal(jax.random.key(2), (2, 8, 8, 6)))  # block inputs are post-ReLU
    variables = block.init(jax.random.key(0), x)
    np.testing.assert_array_equal(block.apply(variables, x), x)  # zero-initialized last GroupNorm scale


def test_embedding_does_not_depend_on_the_batch():
    model = SmallResNet(embed_dim=8, widths=(4, 8), groups=2)
    x = jax.random.normal(jax.random.key(3), (5, 16, 16, 1))
    variables = model.init(jax.random.key(0), x)
    together = model.apply(variables, x, train=True)["embedding"]
    alone = model.apply(variables, x[2:3], train=True)["embedding"]
    np.testing.assert_allclose(together[2:3], alone, rtol=1e-5, atol=1e-6)


def test_jit_grad_and_float64():
    model = SmallResNet(embed_dim=8, widths=(4, 8), groups=2)
    x = jax.random.normal(jax.random.key(4), (2, 16, 16, 1))
    params = model.init(jax.random.key(0), x)["params"]

    @jax.jit
    def loss(p, x):
        return jnp.sum(model.apply({"params": p}, x)["embedding"] ** 2)

    grads = jax.grad(loss)(params, x)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["stem"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["stage1_block0"]["norm2"]["scale"]).sum()) > 0
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x), jnp.float64)
        out = model.apply({"params": params}, x64)["embedding"]
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, model.apply({"params": params}, x)["embedding"], rtol=1e-4, atol=1e-5)


def test_registry_builds_from_config_and_rejects_bad_options():
    cfg = ml_collections.ConfigDict(
        {"name": "small_resnet", "embed_dim": 16, "widths": [8, 16], "blocks_per_stage": 1, "groups": 4,
         "pooling": "avg"}
    )
    model = models.build_model(cfg)
    assert isinstance(model, SmallResNet) and model.widths == (8, 16)
    cfg.depth = 3
    with pytest.raises(ConfigError, match="no option 'depth'"):
        models.build_model(cfg)
    with pytest.raises(ValueError, match="unknown pooling 'sum'; valid choices: flatten, avg, avgmax"):
        SmallResNet(pooling="sum").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
