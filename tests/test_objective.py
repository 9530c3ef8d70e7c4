"""The loss/similarity registry: config errors, agreement with the loss functions, finite gradients
on adversarial batches (hypothesis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probdml import losses, mining, objective, similarity
from probdml.errors import ConfigError

B, D, DU, C = 8, 4, 2, 8


def _cfg(name, **kw):
    cfg = ml_collections.ConfigDict({"name": name})
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_unknown_names_and_keys_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown loss 'proxy_anchr'.*valid choices: .*multi_similarity"):
        objective.build_objective(_cfg("proxy_anchr"), C, D)
    with pytest.raises(ConfigError, match="unknown similarity 'cos'"):
        objective.build_objective(_cfg("proxy_anchor", similarity="cos"), C, D)
    with pytest.raises(ConfigError, match="no option.*marginn.*valid options: .*margin"):
        objective.build_objective(_cfg("proxy_anchor", marginn=0.2), C, D)
    with pytest.raises(ConfigError, match="miner for loss 'npair'"):
        objective.build_objective(_cfg("npair", miner="semihard"), C, D)
    with pytest.raises(ConfigError, match="arcface needs a similarity in"):
        objective.build_objective(_cfg("arcface", similarity="l2"), C, D)
    with pytest.raises(ConfigError, match="takes no miner"):
        objective.build_objective(_cfg("proxy_nca", miner="semihard"), C, D)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    outputs = {
        "embedding": jnp.asarray(rng.normal(size=(B, D)), jnp.float32),
        "uncertainty": jnp.asarray(rng.normal(size=(B, DU)), jnp.float32),
    }
    return outputs, jnp.asarray(rng.integers(0, 3, size=B))


def test_objectives_apply_the_loss_functions():
    outputs, labels = _inputs(1)
    key = jax.random.key(0)
    ism = {"tau": 3.0, "beta_form": "sum"}
    obj = objective.build_objective(_cfg("proxy_anchor", similarity="introspective", similarity_options=ism,
                                         margin=0.2), C, D)
    params = obj.init(jax.random.key(1))
    assert set(params) == {"proxies"} and params["proxies"].shape == (C, D)
    loss, _ = jax.jit(obj.apply)(params, outputs, labels, key)
    sim = similarity.introspective(outputs["embedding"], params["proxies"], outputs["uncertainty"], None, tau=3.0,
                                   beta_form="sum").similarity
    np.testing.assert_allclose(loss, jax.jit(losses.proxy_anchor)(sim, labels, margin=0.2), rtol=1e-6)

    obj = objective.build_objective(_cfg("triplet", margin=0.2), C, D)
    loss, _ = jax.jit(obj.apply)(obj.init(key), outputs, labels, key)

    @jax.jit
    def expected(e):
        dist = similarity.chord_distance(similarity.cosine(e, e))
        return losses.triplet_margin(dist, labels, margin=0.2, triplets=mining.semihard_mask(dist, labels, margin=0.2))

    np.testing.assert_allclose(loss, expected(outputs["embedding"]), rtol=1e-6)

    obj = objective.build_objective(_cfg("margin", beta_per_class=True), C, D)
    params = obj.init(key)
    assert params["loss_params"]["beta"].shape == (C,)

    obj = objective.build_objective(_cfg("proxy_nca_pp", learn_temperature=True, temperature=0.05, subsample=0.5), C, D)
    params = obj.init(key)
    np.testing.assert_allclose(jnp.exp(params["temperature"]), 0.05, rtol=1e-6)
    loss, aux = jax.jit(obj.apply)(params, outputs, labels, key)
    np.testing.assert_allclose(aux["temperature"], 0.05, rtol=1e-6)
    assert np.isfinite(loss)


# ----------------------------------------------------------------------------------------------------
# Finite gradients on adversarial batches, for every loss with each similarity


# End to end (one compile of every loss per entry: the default introspective metric); the others are covered by
# test_similarity (finite similarity gradients) and test_losses (finite loss gradients on any matrix).
SIMILARITY_CONFIGS = {
    "ism": ("introspective", {}),
}


def _loss_configs(sim_name, options):
    for name in objective.LOSSES:
        if name == "arcface" and sim_name not in similarity.BOUNDED_SIMILARITIES:
            continue
        extra = {"centers_per_class": 2} if name == "soft_triple" else {}
        if name in ("proxy_nca_pp",):
            extra = {"learn_temperature": True, "subsample": 0.5}
        yield name, _cfg(name, similarity=sim_name, similarity_options=options, **extra)


_GRAD_FNS = {}


def _grad_fn(config_id):
    """One jitted function per similarity: every loss's value and gradient norms w.r.t. the outputs and
    the loss parameters."""
    if config_id not in _GRAD_FNS:
        sim_name, options = SIMILARITY_CONFIGS[config_id]
        objs = {name: objective.build_objective(cfg, C, D) for name, cfg in _loss_configs(sim_name, options)}
        params = {name: obj.init(jax.random.key(0)) for name, obj in objs.items()}

        def run(outputs, labels, proxy_row, key):
            values, norms = {}, {}
            for name, obj in objs.items():
                p = params[name]
                if "proxies" in p:  # make proxy 0 coincide with an embedding row (cos = 1 exactly)
                    p = dict(p, proxies=p["proxies"].at[0].set(proxy_row[: p["proxies"].shape[1]]))
                value, grads = jax.value_and_grad(lambda o, q, obj=obj: obj.apply(q, o, labels, key)[0],
                                                  argnums=(0, 1))(outputs, p)
                values[name] = value
                norms[name] = jnp.stack([jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads)])
            return values, norms

        _GRAD_FNS[config_id] = jax.jit(run)
    return _GRAD_FNS[config_id]


ROW_KINDS = ("normal", "zero", "same_as_0", "huge", "tiny")


def _adversarial_batch(seed, emb_kinds, unc_kinds, label_kind):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(B, D)).astype(np.float32)
    unc = rng.normal(size=(B, DU)).astype(np.float32)
    for rows, kinds in ((base, emb_kinds), (unc, unc_kinds)):
        for i, kind in enumerate(kinds):
            if kind == "zero":
                rows[i] = 0.0
            elif kind == "same_as_0":
                rows[i] = rows[0]
            elif kind == "huge":
                rows[i] *= 1e4 / np.linalg.norm(rows[i])
            elif kind == "tiny":
                rows[i] *= 1e-6
    labels = {"one_class": np.zeros(B), "singletons": np.arange(B), "few": rng.integers(0, 3, size=B)}[label_kind]
    return {"embedding": jnp.asarray(base), "uncertainty": jnp.asarray(unc)}, jnp.asarray(labels.astype(np.int32))


@pytest.mark.parametrize("config_id", list(SIMILARITY_CONFIGS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    emb_kinds=st.lists(st.sampled_from(ROW_KINDS), min_size=B, max_size=B),
    unc_kinds=st.lists(st.sampled_from(ROW_KINDS), min_size=B, max_size=B),
    label_kind=st.sampled_from(["one_class", "singletons", "few"]),
)
def test_every_loss_has_finite_value_and_gradient_on_adversarial_batches(config_id, seed, emb_kinds, unc_kinds,
                                                                         label_kind):
    outputs, labels = _adversarial_batch(seed, emb_kinds, unc_kinds, label_kind)
    values, norms = _grad_fn(config_id)(outputs, labels, outputs["embedding"][0], jax.random.key(seed))
    for name in values:
        assert np.isfinite(float(values[name])), (config_id, name, "value")
        assert np.all(np.isfinite(np.asarray(norms[name]))), (config_id, name, "gradient")
