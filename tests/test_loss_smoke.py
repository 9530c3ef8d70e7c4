"""The catalogue's losses through the config objective: one jitted gradient step with the cosine, the
introspective metric and the EL vMF kernel (where the loss's math allows; a clear ConfigError where not).
The losses probdml had before the catalogue run end to end in test_objective and test_train."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from probdml import losses, objective, similarity
from probdml.errors import ConfigError

B, D, C = 12, 8, 4
NAMES = sorted(objective.GENERIC_PROXY_LOSSES + objective.GENERIC_PAIR_LOSSES)
SIMILARITIES = ("cosine", "introspective", "el")
EXTRA = {"soft_triple": {"centers_per_class": 2}, "sub_center_arc_face": {"sub_centers": 2}}


def _cfg(name, sim_name):
    return ml_collections.ConfigDict(dict(name=name, similarity=sim_name, **EXTRA.get(name, {})))


def _allowed(name, sim_name):
    if losses.LOSS_REGISTRY[name].bounded and sim_name not in similarity.BOUNDED_SIMILARITIES:
        return False
    return not (name == "signal_to_noise_ratio_contrastive" and sim_name != "cosine")


def test_every_registry_loss_has_a_config_objective_or_a_clear_error():
    missing = sorted(set(losses.LOSS_REGISTRY) - {losses.canonical_name(n) for n in objective.LOSSES}
                     - set(objective.LABEL_FREE_LOSSES))
    assert not missing, f"registry losses without a config objective: {missing}"
    for name in objective.LABEL_FREE_LOSSES:
        with pytest.raises(ConfigError, match=f"loss '{name}' has no config objective: .*probdml.losses.{name}"):
            objective.build_objective(_cfg(name, "cosine"), C, D)


@pytest.mark.parametrize("name", NAMES)
def test_one_jitted_step_with_each_similarity(name):
    rng = np.random.default_rng(0)
    outputs = {"embedding": jnp.asarray(rng.normal(size=(B, D)), jnp.float32) * 3.0,
               "uncertainty": jnp.asarray(rng.normal(size=(B, 4)), jnp.float32)}
    labels = jnp.asarray(np.arange(B) % C)
    objs = {}
    for sim_name in SIMILARITIES:
        if _allowed(name, sim_name):
            objs[sim_name] = objective.build_objective(_cfg(name, sim_name), C, D)
        else:
            with pytest.raises(ConfigError, match=f"{name} .*similarity"):
                objective.build_objective(_cfg(name, sim_name), C, D)
    assert "cosine" in objs
    params = {k: obj.init(jax.random.key(1)) for k, obj in objs.items()}

    @jax.jit
    def step(params, outputs):
        out = {}
        for k, obj in objs.items():
            (value, _), grads = jax.value_and_grad(lambda p, o, obj=obj: obj.apply(p, o, labels, jax.random.key(2)),
                                                   argnums=(0, 1), has_aux=True)(params[k], outputs)
            out[k] = (value, grads)
        return out

    for k, (value, (g_params, g_out)) in step(params, outputs).items():
        leaves = jax.tree_util.tree_leaves((g_params, g_out))
        assert np.isfinite(float(value)), (k, value)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves), k
        if k == "cosine":
            assert float(jnp.sum(jnp.abs(g_out["embedding"]))) > 0, "no gradient reaches the embeddings"


@pytest.mark.parametrize("loss_name,miner", [
    ("contrastive", "pair_margin"), ("contrastive", "hdc"), ("circle", "batch_easy_hard"),
    ("sup_con", "uniform_histogram"), ("triplet_margin", "angular"), ("margin", "angular"),
])
def test_new_miners_through_the_objective(loss_name, miner):
    """The objective wires each new miner to its loss (traced, not compiled: shapes and keywords); the angular
    miner needs a bounded similarity."""
    obj = objective.build_objective(ml_collections.ConfigDict(dict(name=loss_name, miner=miner)), C, D)
    outputs = {"embedding": jnp.ones((B, D)) + jnp.eye(B, D)}
    labels = jnp.asarray(np.arange(B) % C)
    value, _ = jax.eval_shape(lambda o: obj.apply(obj.init(jax.random.key(0)), o, labels, jax.random.key(1)),
                              outputs)
    assert value.shape == ()
    if miner == "angular":
        with pytest.raises(ConfigError, match="miner 'angular' needs a similarity in"):
            objective.build_objective(ml_collections.ConfigDict(dict(name=loss_name, miner=miner, similarity="el")),
                                      C, D)


@pytest.mark.parametrize("name,key,value,kind", [
    ("contrastive", "neg_margin", "abc", "a number"),
    ("dynamic_soft_margin", "min_val", "abc", "a number"),
    ("proxy_nca_pp", "learn_temperature", 1, "true or false"),
    ("pnp", "variant", 3, "a string"),
])
def test_a_loss_option_of_the_wrong_kind_is_a_config_error(name, key, value, kind):
    cfg = ml_collections.ConfigDict({"name": name, "similarity": "cosine", key: value})
    with pytest.raises(ConfigError, match=re.escape(f"loss {name!r} option {key} must be {kind}, got {value!r}")):
        objective.build_objective(cfg, C, D)


@pytest.mark.parametrize("key,value,message", [
    ("num_bins", 0, "num_bins must be a positive integer, got 0"),
    ("num_bins", 2.5, "num_bins must be a positive integer, got 2.5"),
    ("min_val", 1.0, "min_val must be negative"),
    ("momentum", 2.0, "momentum must be in [0, 1], got 2.0"),
])
def test_dynamic_soft_margin_options_are_checked(key, value, message):
    cfg = ml_collections.ConfigDict({"name": "dynamic_soft_margin", "similarity": "cosine", key: value})
    with pytest.raises(ConfigError, match=re.escape(message)):
        objective.build_objective(cfg, C, D)
