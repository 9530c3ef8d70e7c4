"""The ProxyAnchor baseline configs (configs/cub200.py, cars196.py, sop.py): they build, their names
are valid, and their numbers are the official code's (tjddus9597/Proxy-Anchor-CVPR2020 README and
train.py defaults). No data, no training: the model and the loss are initialised abstractly."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdml import models, objective, optim, train
from probdml.errors import ConfigError

# (config, recipe, training images, training classes, batch, lr, warm-up epochs, lr step epochs,
#  gamma, frozen BN statistics), from the official README commands and the split sizes.
CASES = [
    ("cub200", "resnet50", 5864, 100, 120, 1e-4, 5, 5, 0.5, True),
    ("cub200", "bs180", 5864, 100, 180, 1e-4, 1, 10, 0.5, True),
    ("cars196", "resnet50", 8054, 98, 120, 1e-4, 5, 10, 0.5, True),
    ("cars196", "bs180", 8054, 98, 180, 1e-4, 1, 20, 0.5, True),
    ("sop", None, 59551, 11318, 180, 6e-4, 1, 20, 0.25, False),
]


def _config(name: str, recipe: str | None):
    module = importlib.import_module(f"configs.{name}")
    return module.get_config() if recipe is None else module.get_config(recipe)


@pytest.mark.parametrize("name,recipe,images,classes,batch,lr,warm,step_epochs,gamma,frozen_bn", CASES)
def test_proxy_anchor_config_follows_the_official_recipe(
    name, recipe, images, classes, batch, lr, warm, step_epochs, gamma, frozen_bn
):
    config = _config(name, recipe)
    spe = images // batch  # drop_last=True batches per epoch
    assert config.data.name == name and config.data.sampler == "random" and config.data.batch_size == batch
    assert (config.data.image_size, config.data.resize_size) == (224, 256)
    assert config.num_steps == 60 * spe
    assert config.model.backbone == "resnet50" and config.model.pooling == "avg+max"
    assert config.model.embed_dim == 512 and config.model.normalize_embedding and config.model.uncertainty_dim == 0
    assert config.model.frozen_bn_stats == frozen_bn
    assert (config.loss.name, config.loss.similarity, config.loss.margin, config.loss.alpha) == (
        "proxy_anchor", "cosine", 0.1, 32.0)
    assert not config.mixup.enabled
    assert config.optim.name == "adamw" and config.optim.weight_decay == 1e-4 and config.optim.grad_clip_value == 10.0
    assert config.optim.lr_mults["proxies"] == 100.0
    assert dict(config.optim.frozen_until) == {"backbone": warm * spe, "backbone_bn": warm * spe}
    schedule = optim.learning_rate_schedule(config.optim, config.optim.learning_rate)
    for epoch in (0, step_epochs - 1, step_epochs, 2 * step_epochs + 1, 59):
        for step in (epoch * spe, (epoch + 1) * spe - 1):  # torch StepLR stepped once per epoch
            np.testing.assert_allclose(schedule(step), lr * gamma ** (epoch // step_epochs), rtol=1e-6)
    assert (config.selection.split, config.selection.metric) == ("val", "recall@1")
    assert config.eval.ks == ((1, 10, 100, 1000) if name == "sop" else (1, 2, 4, 8))


@pytest.mark.parametrize("name,recipe,classes", [(c[0], c[1], c[3]) for c in CASES if c[1] != "bs180"])
def test_proxy_anchor_config_builds_model_loss_and_optimizer(tmp_path, name, recipe, classes):
    config = _config(name, recipe)
    with pytest.raises(ConfigError, match="model.pretrained is required"):
        train.validate_config(config, str(tmp_path / "w"))
    config.model.pretrained = ""
    train.validate_config(config, str(tmp_path / "w"))  # dataset, sampler, model, loss, optimizer names
    model = models.build_model(config.model)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    obj = objective.build_objective(config.loss, classes, config.model.embed_dim)
    params = {"model": variables["params"], "loss": jax.eval_shape(obj.init, jax.random.key(0))}
    assert params["loss"]["proxies"].shape == (classes, 512)
    optim.make_optimizer(config.optim, params)  # every group named in lr_mults / frozen_until exists
    groups = set(jax.tree.leaves(optim.param_groups(params, dict(config.optim.model_groups))))
    assert groups == {"backbone", "backbone_bn", "embedding", "proxies"}


def test_unknown_recipe_is_named():
    from configs import cub200

    with pytest.raises(ValueError, match="unknown ProxyAnchor recipe 'bs150'; valid: resnet50, bs180"):
        cub200.get_config("bs150")


EMBEDDED = [("digits", ""), ("digits", "_idml"), ("digits", "_nivmf"),
            ("glyphs", ""), ("glyphs", "_idml"), ("glyphs", "_nivmf"),
            ("glyphs_ambiguous", ""), ("glyphs_ambiguous", "_idml"), ("glyphs_ambiguous", "_nivmf")]


@pytest.mark.parametrize("dataset,method", EMBEDDED)
def test_embedded_configs_build_model_loss_and_optimizer(tmp_path, dataset, method):
    config = importlib.import_module(f"configs.{dataset}{method}").get_config()
    train.validate_config(config, str(tmp_path / "w"))
    model = models.build_model(config.model)
    size = 8 if dataset == "digits" else 32
    assert config.data.get("builder_config", "") == ("ambiguous" if dataset == "glyphs_ambiguous" else "")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1))))
    obj = objective.build_objective(config.loss, 5, config.model.embed_dim)
    params = {"model": variables["params"], "loss": jax.eval_shape(obj.init, jax.random.key(0))}
    optim.make_optimizer(config.optim, params)
    out = jax.eval_shape(model.apply, variables, jnp.zeros((2, size, size, 1)))
    assert out["embedding"].shape == (2, config.model.embed_dim)
    assert ("uncertainty" in out) == (method == "_idml")


@pytest.mark.parametrize("dataset", ["digits", "glyphs", "glyphs_ambiguous"])
def test_embedded_methods_share_data_network_and_budget(dataset):
    """benchmarks/methods.py compares the three methods under one budget: same data, batch, steps,
    schedule and backbone; only the heads, the loss and Mixup differ."""
    base, idml, nivmf = (importlib.import_module(f"configs.{dataset}{m}").get_config() for m in ("", "_idml", "_nivmf"))
    for other in (idml, nivmf):
        assert other.data.to_dict() == base.data.to_dict()
        assert (other.num_steps, other.seed, other.optim.learning_rate, other.optim.schedule) == (
            base.num_steps, base.seed, base.optim.learning_rate, base.optim.schedule)
        assert other.model.embed_dim == base.model.embed_dim or dataset == "digits"
        for key in ("widths", "blocks_per_stage", "groups", "pooling", "hidden"):
            if key in base.model:
                assert other.model[key] == base.model[key], key
    assert idml.mixup.enabled and not base.get("mixup", {}).get("enabled", False)


@pytest.mark.parametrize("method", ["", "_idml", "_nivmf"])
def test_ambiguous_glyphs_configs_differ_from_glyphs_only_in_the_builder_config(method):
    base = importlib.import_module(f"configs.glyphs{method}").get_config()
    config = importlib.import_module(f"configs.glyphs_ambiguous{method}").get_config()
    assert base.data.builder_config == "" and config.data.builder_config == "ambiguous"
    config.data.builder_config = ""
    assert config.to_dict() == base.to_dict()


def test_glyphs_schedule_follows_the_number_of_steps():
    from configs import glyphs_nivmf

    config = glyphs_nivmf.get_config()
    config.num_steps = 321
    assert config.optim.decay_steps == 321
