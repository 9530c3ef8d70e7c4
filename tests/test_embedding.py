"""EmbeddingNet: backbone + heads composition, options, parameter groups, pretrained backbones, errors."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from probdml import models, optim, parallel, train
from probdml.errors import ConfigError
from probdml.models import convert
from probdml.models.embedding import PARAM_GROUPS, EmbeddingNet
from probdml.models.small import SmallConvNet
from probdml.models.small_resnet import SmallResNet

IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 1)), jnp.float32)


def _small(**kw):
    return EmbeddingNet(backbone="small_convnet", embed_dim=6, widths=(4, 8), hidden=10, **kw)


def _linear(h, dense):
    return np.asarray(h, np.float64) @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"], np.float64)


def test_small_backbone_with_semantic_and_uncertainty_heads():
    net = _small(uncertainty_dim=5)
    variables = net.init(jax.random.key(0), IMAGES)
    params = variables["params"]
    assert set(params) == {"backbone", "embedding", "uncertainty"}
    assert "embedding" not in params["backbone"]  # no unused linear head inside the backbone
    out = net.apply(variables, IMAGES)
    assert set(out) == {"embedding", "embedding_norm", "uncertainty", "features"}
    # the backbone is SmallConvNet's feature extractor with the same parameters
    features = SmallConvNet(embed_dim=0, widths=(4, 8), hidden=10).apply({"params": params["backbone"]}, IMAGES)
    np.testing.assert_array_equal(out["features"], features["features"])
    y = _linear(out["features"], params["embedding"]["dense"])
    np.testing.assert_allclose(out["embedding"], y / np.sqrt(np.sum(y * y, 1, keepdims=True) + 1e-12), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out["embedding_norm"], np.linalg.norm(y, axis=1), rtol=1e-5)  # before normalising
    np.testing.assert_allclose(out["uncertainty"], _linear(out["features"], params["uncertainty"]["dense"]),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling,reference,width", [("avg+max", "avgmax", 16), ("avg", "avg", 16),
                                                     ("flatten", "flatten", 16 * 4 * 4)])
def test_small_resnet_backbone(pooling, reference, width):
    net = EmbeddingNet(backbone="small_resnet", embed_dim=6, uncertainty_dim=3, widths=(8, 16), groups=4,
                       pooling=pooling)
    variables = net.init(jax.random.key(0), IMAGES)
    assert "embedding" not in variables["params"]["backbone"]
    out = net.apply(variables, IMAGES)
    ref = SmallResNet(embed_dim=0, widths=(8, 16), groups=4, pooling=reference).apply(
        {"params": variables["params"]["backbone"]}, IMAGES)
    np.testing.assert_array_equal(out["features"], ref["features"])
    assert out["features"].shape == (3, width) and out["uncertainty"].shape == (3, 3)


def test_uncertainty_head_options_and_absence():
    plain = _small(uncertainty_dim=5)
    variables = plain.init(jax.random.key(1), IMAGES)
    raw = np.asarray(plain.apply(variables, IMAGES)["uncertainty"])
    assert np.any(raw < 0)
    relu = _small(uncertainty_dim=5, uncertainty_activation="relu").apply(variables, IMAGES)["uncertainty"]
    np.testing.assert_allclose(relu, np.maximum(raw, 0.0), rtol=1e-6)
    unit = _small(uncertainty_dim=5, uncertainty_l2_normalize=True).apply(variables, IMAGES)["uncertainty"]
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)
    none = _small(uncertainty_dim=0)
    v0 = none.init(jax.random.key(1), IMAGES)
    assert "uncertainty" not in v0["params"] and "uncertainty" not in none.apply(v0, IMAGES)
    unnormalized = _small(normalize_embedding=False).apply(v0, IMAGES)
    np.testing.assert_allclose(unnormalized["embedding"],
                               _linear(unnormalized["features"], v0["params"]["embedding"]["dense"]), rtol=1e-5,
                               atol=1e-6)


def test_vmf_head_scales_the_initial_weight_and_is_not_normalized():
    v1 = _small(head="vmf").init(jax.random.key(2), IMAGES)
    v3 = _small(head="vmf", init_norm_multiplier=3.0).init(jax.random.key(2), IMAGES)
    d1, d3 = v1["params"]["embedding"]["dense"], v3["params"]["embedding"]["dense"]
    np.testing.assert_allclose(d3["kernel"], 3.0 * np.asarray(d1["kernel"]), rtol=1e-6)
    np.testing.assert_array_equal(d3["bias"], d1["bias"])
    bound = 1.0 / np.sqrt(10)  # torch nn.Linear default: U(-1/sqrt(in), 1/sqrt(in))
    assert np.all(np.abs(d1["kernel"]) <= bound) and np.all(np.abs(d1["bias"]) <= bound)
    out = _small(head="vmf", init_norm_multiplier=3.0).apply(v3, IMAGES)
    np.testing.assert_allclose(out["embedding"], _linear(out["features"], d3), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.linalg.norm(out["embedding"], axis=1), 1.0)


def _resnet_shapes(arch, **kw):
    net = EmbeddingNet(backbone=arch, embed_dim=16, uncertainty_dim=8, **kw)
    return net, jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


@pytest.mark.parametrize("arch,width", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_backbones_and_param_groups(arch, width):
    net, variables = _resnet_shapes(arch)
    out = jax.eval_shape(lambda v: net.apply(v, jnp.zeros((2, 32, 32, 3)), train=True, mutable=["batch_stats"])[0],
                         variables)
    assert out["features"].shape == (2, width)
    assert out["embedding"].shape == (2, 16) and out["uncertainty"].shape == (2, 8)
    labels = optim.param_groups({"model": variables["params"], "loss": {}}, PARAM_GROUPS)
    flat = {optim._path_str(p): g for p, g in jax.tree_util.tree_flatten_with_path(labels["model"])[0]}
    torch_keys = convert.torch_state_shapes(arch, None)
    n_bn = sum(k.endswith(".running_mean") for k in torch_keys)
    n_conv = sum(k.endswith(".weight") for k in torch_keys) - n_bn
    counts = {g: sum(v == g for v in flat.values()) for g in PARAM_GROUPS}
    assert counts == {"backbone_bn": 2 * n_bn, "backbone": n_conv, "embedding": 2, "uncertainty": 2}
    assert flat["backbone/layer1_0/downsample_bn/scale" if arch == "resnet50" else "backbone/bn1/scale"] == "backbone_bn"


def test_bad_options_are_config_errors():
    cfg = ml_collections.ConfigDict(dict(name="embedding_net", backbone="resnet5"))
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5'; valid choices: .*resnet18.*small_convnet"):
        models.build_model(cfg)
    with pytest.raises(ConfigError, match="unknown embedding head 'gauss'; valid choices: semantic, vmf"):
        models.build_model(ml_collections.ConfigDict(dict(name="embedding_net", head="gauss")))
    with pytest.raises(ConfigError, match="uncertainty_activation 'tanh'"):
        models.build_model(ml_collections.ConfigDict(dict(name="embedding_net", uncertainty_activation="tanh")))
    with pytest.raises(ConfigError, match="pooling 'none' is not available for backbone 'small_convnet'"):
        models.build_model(ml_collections.ConfigDict(dict(name="embedding_net", pooling="none")))
    with pytest.raises(ConfigError, match="pooling 'max' is not available for backbone 'small_resnet'; valid "
                                          "choices: flatten, avg, avg\\+max"):
        models.build_model(ml_collections.ConfigDict(dict(name="embedding_net", backbone="small_resnet", pooling="max")))
    with pytest.raises(ConfigError, match="has no option 'uncertainty_norm'; valid options: .*uncertainty_l2_normalize"):
        models.build_model(ml_collections.ConfigDict(dict(name="embedding_net", uncertainty_norm=True)))
    with pytest.raises(ConfigError, match="embed_dim must be positive"):
        models.build_model(ml_collections.ConfigDict(dict(name="embedding_net", embed_dim=0)))
    with pytest.raises(ConfigError, match="model.pretrained is required"):
        models.check_pretrained(ml_collections.ConfigDict(dict(name="embedding_net", pretrained=None)))
    with pytest.raises(ConfigError, match="supported by model 'embedding_net' only"):
        models.check_pretrained(ml_collections.ConfigDict(dict(name="small_convnet", pretrained="/x")))
    net = models.build_model(ml_collections.ConfigDict(dict(name="embedding_net", pretrained="", embed_dim=4)))
    assert isinstance(net, EmbeddingNet) and net.embed_dim == 4


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A converted resnet18 checkpoint with random weights, and the torch state dict it came from."""
    rng = np.random.default_rng(3)
    state = {k: rng.normal(size=s).astype(np.float32) for k, s in convert.torch_state_shapes("resnet18", 10).items()}
    variables, arch, num_classes = convert.convert_state_dict(state)
    path = str(tmp_path_factory.mktemp("pretrained"))
    convert.save_pretrained(path, variables, arch, num_classes)
    return path, state


def test_pretrained_backbone_is_merged(resnet18_weights):
    path, state = resnet18_weights
    net, shapes = _resnet_shapes("resnet18")
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    merged = models.load_pretrained_variables(net, variables, path)
    backbone = merged["params"]["backbone"]
    np.testing.assert_array_equal(backbone["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(backbone["layer2_0"]["downsample_bn"]["scale"], state["layer2.0.downsample.1.weight"])
    np.testing.assert_array_equal(merged["batch_stats"]["backbone"]["layer4_1"]["bn2"]["var"],
                                  state["layer4.1.bn2.running_var"])
    assert "fc" not in backbone
    for head in ("embedding", "uncertainty"):  # heads keep their initialisation
        np.testing.assert_array_equal(merged["params"][head]["dense"]["kernel"], 0.0)
    net34, shapes34 = _resnet_shapes("resnet34")
    with pytest.raises(ConfigError, match="holds resnet18 weights, but the model is resnet34"):
        models.load_pretrained_variables(net34, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes34), path)
    with pytest.raises(ConfigError, match="not a converted checkpoint"):
        models.load_pretrained_variables(net, variables, os.path.dirname(path))


def test_create_setup_reads_model_pretrained(resnet18_weights, tmp_path):
    config = _digits_embedding_config()
    config.model.pretrained = resnet18_weights[0]
    with pytest.raises(ConfigError, match="model.pretrained needs a ResNet backbone"):
        train.create_setup(config, parallel.make_mesh(1), 5, (8, 8, 1))
    config.model.pretrained = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="model.pretrained directory does not exist"):
        train.validate_config(config, str(tmp_path / "w"))


def _digits_embedding_config():
    from configs import digits_idml

    config = digits_idml.get_config()
    config.model.widths = (4,)
    config.model.hidden = 8
    return config
