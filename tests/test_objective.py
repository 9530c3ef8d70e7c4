"""The loss/similarity registry: config errors, agreement with the loss functions, finite gradients
on adversarial batches (hypothesis)."""

from __future__ import annotations

import math

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


def test_el_nivmf_proxy_nca_pp_objective():
    """ProxyNCA++ over EL-nivMF: parameter groups, the loss it computes, finite gradients for every group,
    the temperature inside the expectation, and the Monte Carlo estimator."""
    outputs, labels = _inputs(2)
    outputs = {"embedding": outputs["embedding"] * 5.0}
    key = jax.random.key(3)
    base = dict(similarity="el_nivmf", learn_temperature=True, temperature=0.1, proxy_concentration=4.0)
    obj = objective.build_objective(_cfg("proxy_nca_pp", **base), C, D)
    params = obj.init(jax.random.key(1))
    assert set(params) == {"proxies", "proxy_kappa", "temperature"} and params["proxy_kappa"].shape == (C, D)
    kappas = 0.1 + jax.nn.softplus(params["proxy_kappa"])
    np.testing.assert_allclose(kappas, 4.0, rtol=1e-5)

    @jax.jit
    def run(params_, outputs_, key_):
        return jax.value_and_grad(lambda p, o: obj.apply(p, o, labels, key_)[0], argnums=(0, 1))(params_, outputs_)

    loss, (g_params, g_out) = run(params, outputs, key)
    e = outputs["embedding"]
    mu, kappa = similarity.vmf_parameters({"embedding": e})
    s = similarity.el_nivmf(mu, kappa, similarity.l2_normalize(params["proxies"]), kappas)
    np.testing.assert_allclose(loss, losses.proxy_nca_pp(s, labels, temperature=0.1), rtol=1e-5)
    for g in jax.tree.leaves((g_params, g_out)):
        assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)

    inside = objective.build_objective(_cfg("proxy_nca_pp", similarity_options={"temperature_placement": "inside"},
                                            **base), C, D)
    loss_in, _ = jax.jit(inside.apply)(params, outputs, labels, key)
    s_in = similarity.el_nivmf(mu, kappa, similarity.l2_normalize(params["proxies"]), kappas, temperature=0.1,
                               temperature_placement="inside")
    np.testing.assert_allclose(loss_in, losses.proxy_nca_pp(s_in, labels, temperature=1.0), rtol=1e-5)

    # Monte Carlo (the sampler's reparameterised gradients) on an adversarial batch: a zero embedding
    # (kappa = 0, no direction), a huge one and two identical ones
    mc = objective.build_objective(_cfg("proxy_nca_pp", similarity_options={"estimator": "monte_carlo",
                                                                            "form": "stretched", "num_samples": 4},
                                        **base), C, D)
    e_adv = e.at[0].set(0.0).at[1].multiply(1e3).at[3].set(e[2])
    value, grads = jax.jit(jax.value_and_grad(lambda p, o: mc.apply(p, o, labels, key)[0], argnums=(0, 1)))(
        params, {"embedding": e_adv})
    assert np.isfinite(value)
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))


@jax.jit
def _el_proxy_anchor(e, proxies, labels):
    mu, kappa = similarity.vmf_parameters({"embedding": e})
    sim = similarity.ppk(mu, kappa, similarity.l2_normalize(proxies), jnp.full((proxies.shape[0],), 10.0))
    return losses.proxy_anchor(sim, labels)


def test_isotropic_kernel_proxies_and_kappa_parameterisations():
    outputs, labels = _inputs(4)
    key = jax.random.key(0)
    obj = objective.build_objective(_cfg("proxy_anchor", similarity="el", proxy_concentration=10.0), C, D)
    params = obj.init(key)
    assert params["proxy_kappa"].shape == (C,)
    loss, _ = jax.jit(obj.apply)(params, outputs, labels, key)
    np.testing.assert_allclose(loss, _el_proxy_anchor(outputs["embedding"], params["proxies"], labels), rtol=1e-5)
    # kappa = 0.1 + softplus(raw) (default) or the reference's max(raw, 0.1), both starting at the concentration
    for kappa_param in objective.KAPPA_PARAMS:
        raw = objective._kappa_init(10.0, kappa_param, 0.1)
        np.testing.assert_allclose(objective._kappa(jnp.asarray(raw), kappa_param, 0.1), 10.0, rtol=1e-6)
    np.testing.assert_allclose(objective._kappa(jnp.asarray(-3.0), "clamp", 0.1), 0.1)
    np.testing.assert_allclose(objective._kappa(jnp.asarray(-3.0), "softplus", 0.1), 0.1 + math.log1p(math.exp(-3)),
                               rtol=1e-6)
    with pytest.raises(ConfigError, match="proxy_concentration"):
        objective.build_objective(_cfg("proxy_anchor", proxy_concentration=10.0), C, D)  # cosine has no kappa
    with pytest.raises(ConfigError, match="closed form exists only"):
        objective.build_objective(_cfg("proxy_nca_pp", similarity="el_nivmf", similarity_options={"form": "exact"}),
                                  C, D)


# ----------------------------------------------------------------------------------------------------
# Finite gradients on adversarial batches, for every loss with each similarity


# End to end (one compile of every loss per entry: the default introspective metric); the others are covered by
# test_similarity (finite similarity gradients) and test_losses (finite loss gradients on any matrix).
SIMILARITY_CONFIGS = {
    "ism": ("introspective", {}),
}


def _loss_configs(sim_name, options):
    for name in objective.LOSSES:
        if name in objective.LOSS_ALIASES or name in objective.GENERIC_PROXY_LOSSES + objective.GENERIC_PAIR_LOSSES:
            continue  # aliases; the catalogue's losses run in test_loss_smoke
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
                # a loss carrying its own state (the dynamic soft margin's histogram) starts from its initial one
                state = obj.init_state(outputs) if obj.init_state is not None else None
                value, grads = jax.value_and_grad(lambda o, q, obj=obj, st=state: obj.apply(q, o, labels, key, st)[0],
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
