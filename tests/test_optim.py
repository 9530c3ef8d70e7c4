"""Optimizer groups, warm-up freezing, skipping non-finite steps; Mixup in the train step."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from probdml import objective, optim, train
from probdml.errors import ConfigError


def _cfg(**kw):
    cfg = ml_collections.ConfigDict(
        dict(name="sgd", learning_rate=0.1, weight_decay=0.0, schedule="constant", lr_mults={}, grad_clip_value=0.0)
    )
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def _params():
    return {
        "model": {"backbone": {"conv": {"kernel": jnp.ones(2)}}, "head": {"kernel": jnp.ones(2)}},
        "loss": {"proxies": jnp.ones(3), "temperature": jnp.ones(())},
    }


def test_param_groups_by_regex_and_errors():
    labels = optim.param_groups(_params(), {"backbone": "backbone/.*", "head": "head/.*"})
    assert labels["model"]["backbone"]["conv"]["kernel"] == "backbone"
    assert labels["model"]["head"]["kernel"] == "head"
    assert labels["loss"] == {"proxies": "proxies", "temperature": "temperature"}
    assert optim.param_groups(_params())["model"]["head"]["kernel"] == "model"
    with pytest.raises(ConfigError, match="matches several"):
        optim.param_groups(_params(), {"a": ".*kernel", "b": "head/.*"})
    with pytest.raises(ConfigError, match="unknown parameter group 'proxy'.*proxies"):
        optim.make_optimizer(_cfg(lr_mults={"proxy": 10.0}), _params())
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'"):
        optim.make_optimizer(_cfg(name="lamb"), _params())


def test_lr_multipliers_and_zero_freezes():
    params = _params()
    tx = optim.make_optimizer(_cfg(lr_mults={"proxies": 100.0, "temperature": 0.0}), params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # SGD with momentum 0.9: the first update is -lr * g.
    np.testing.assert_allclose(updates["model"]["head"]["kernel"], -0.1 * np.ones(2), rtol=1e-6)
    np.testing.assert_allclose(updates["loss"]["proxies"], -10.0 * np.ones(3), rtol=1e-6)
    assert float(updates["loss"]["temperature"]) == 0.0


def test_warmup_freeze_then_fresh_adam_state():
    params = {"model": {"w": jnp.array([1.0, -2.0])}, "loss": {}}
    cfg = _cfg(name="adam", learning_rate=0.01, frozen_until={"model": 3})
    tx = optim.make_optimizer(cfg, params)
    state = tx.init(params)
    grads = [jnp.array([0.5 * (t + 1), -1.0 + t]) for t in range(6)]
    p = params
    history = []
    for g in grads:
        upd, state = tx.update({"model": {"w": g}, "loss": {}}, state, p)
        p = optax.apply_updates(p, upd)
        history.append(np.asarray(p["model"]["w"]))
    for t in range(3):
        np.testing.assert_array_equal(history[t], [1.0, -2.0])
    ref = optax.adam(0.01)
    w, s = params["model"]["w"], ref.init(params["model"]["w"])
    for g, got in zip(grads[3:], history[3:]):
        u, s = ref.update(g, s, w)
        w = optax.apply_updates(w, u)
        np.testing.assert_allclose(got, w, rtol=1e-6)


def test_skip_nonfinite_updates():
    params = {"model": {"w": jnp.array([1.0, 2.0])}, "loss": {}}
    tx = optim.make_optimizer(_cfg(skip_nonfinite_updates=True), params)
    state = tx.init(params)
    upd, state = tx.update({"model": {"w": jnp.array([jnp.nan, 1.0])}, "loss": {}}, state, params)
    np.testing.assert_array_equal(optax.apply_updates(params, upd)["model"]["w"], [1.0, 2.0])
    assert int(state.total_notfinite) == 1


def test_mixup_formula():
    x = jnp.arange(24.0).reshape(4, 3, 2, 1)
    mixed, lam, perm = train.mixup(jax.random.key(0), x, 1.0)
    assert 0.0 < float(lam) < 1.0
    assert sorted(np.asarray(perm).tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], rtol=1e-6)


class _Linear:
    """A model stand-in: embedding = images flattened @ W."""

    def apply(self, variables, images, train=False):
        return {"embedding": images.reshape(images.shape[0], -1) @ variables["params"]["w"]}


def test_train_step_mixup_loss_is_the_weighted_sum():
    def apply(params, outputs, labels, key):
        # A label-dependent loss with a closed form: mean squared distance to (label + 1) * ones.
        e = outputs["embedding"]
        return jnp.mean((e - (labels[:, None] + 1.0)) ** 2), {}

    obj = objective.Objective(init=lambda key: {}, apply=apply)
    params = {"model": {"w": jnp.full((6, 2), 0.1)}, "loss": {}}
    tx = optax.sgd(0.0)
    mix_cfg = ml_collections.ConfigDict(dict(enabled=True, alpha=1.0, clean_weight=0.5))
    step = train.make_train_step(_Linear(), obj, tx, seed=3, mixup_cfg=mix_cfg)
    state = train.TrainState(step=jnp.asarray(7), params=params, opt_state=tx.init(params), batch_stats={})
    images = jax.random.normal(jax.random.key(1), (4, 3, 2, 1))
    labels = jnp.array([0, 1, 2, 3])
    _, m = step(state, {"image": images, "label": labels})
    x = images.reshape(4, -1)
    clean = np.mean((np.asarray(x @ params["model"]["w"]) - (np.asarray(labels)[:, None] + 1.0)) ** 2)
    np.testing.assert_allclose(m["loss_clean"], clean, rtol=1e-5)
    lam = float(m["mixup_lambda"])
    # Recover the permutation from the mixed loss: only one permutation of 4 matches.
    found = []
    for perm in itertools.permutations(range(4)):
        perm = np.array(perm)
        xm = lam * x + (1 - lam) * x[perm]
        e = np.asarray(xm @ params["model"]["w"])
        la = np.mean((e - (np.asarray(labels)[:, None] + 1.0)) ** 2)
        lb = np.mean((e - (np.asarray(labels)[perm][:, None] + 1.0)) ** 2)
        if abs(lam * la + (1 - lam) * lb - float(m["loss_mixed"])) < 1e-5:
            found.append(perm)
    assert found, "no permutation reproduces the mixed loss"
    np.testing.assert_allclose(m["loss"], 0.5 * m["loss_clean"] + m["loss_mixed"], rtol=1e-6)


def test_schedule_runs_on_the_global_step_through_a_warmup():
    """torch semantics: a group unfrozen at step 3 uses the learning rate the step schedule gives step 3
    (lr * gamma after the boundary at 2), not the schedule restarted at 0."""
    params = {"model": {"w": jnp.array([1.0])}, "loss": {}}
    cfg = _cfg(name="adamw", learning_rate=0.1, schedule="step", boundaries=[2], gamma=0.5, frozen_until={"model": 3})
    tx = optim.make_optimizer(cfg, params)
    state = tx.init(params)
    ups = []
    for _ in range(4):
        upd, state = tx.update({"model": {"w": jnp.array([2.0])}, "loss": {}}, state, params)
        ups.append(float(upd["model"]["w"][0]))
    assert ups[:3] == [0.0, 0.0, 0.0]
    # the first Adam step, bias-corrected: -lr * g / (|g| + 1e-8) (float32 corrections: rtol 1e-5)
    np.testing.assert_allclose(ups[3], -0.05, rtol=1e-5)
