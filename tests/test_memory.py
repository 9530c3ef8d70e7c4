"""Cross-batch memory (XBM): parity with pytorch-metric-learning's CrossBatchMemory over successive batches
(memory not yet full, then wrapped around), config errors, and a resumed training run that equals the
uninterrupted one bit for bit (the memory is part of the checkpointed train state)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from probdml import checkpointing, losses, objective, parallel, similarity, train
from probdml.errors import ConfigError

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

B, M, D, STEPS = 8, 20, 6, 3  # 3 batches of 8 in 20 slots: 8 filled, 16 filled, full and wrapped (ptr 4)


def _batches(seed=0):
    """Three batches with repeated labels, and lone ones (labels 5..9 appear at most once in a batch)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        labels = np.concatenate([rng.integers(0, 3, B - 2), rng.choice(np.arange(5, 10), 2, replace=False)])
        out.append((rng.normal(size=(B, D)).astype(np.float32), labels.astype(np.int32)))
    return out


def _pml_run(loss, miner, batches, enqueue_masks=None):
    xbm = pml_losses.CrossBatchMemory(loss, embedding_size=D, memory_size=M, miner=miner)
    values, grads = [], []
    for t, (e, y) in enumerate(batches):
        x = torch.tensor(e, requires_grad=True)
        kwargs = {} if enqueue_masks is None else {"enqueue_mask": torch.tensor(enqueue_masks[t])}
        value = xbm(x, torch.tensor(y, dtype=torch.long), **kwargs)
        value.backward()
        values.append(value.item())
        grads.append(x.grad.numpy().copy())
    return values, grads


def _assert_close(ours, pml, name=""):
    (v_ours, g_ours), (v_pml, g_pml) = ours, pml
    for t in range(STEPS):
        assert v_pml[t] > 0, f"{name} batch {t}: PML's loss is 0, a vacuous comparison"
        np.testing.assert_allclose(v_ours[t], v_pml[t], rtol=1e-5, err_msg=f"{name} value, batch {t}")
        scale = np.max(np.abs(g_pml[t]))
        np.testing.assert_allclose(g_ours[t], g_pml[t], rtol=1e-5, atol=1e-6 * scale, err_msg=f"{name} grad, batch {t}")


CASES = {
    # name: (objective config, pytorch-metric-learning loss, miner)
    "contrastive": (dict(name="contrastive", pos_margin=0.0, neg_margin=1.0, miner="none"),
                    lambda: pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0), lambda: None),
    "multi_similarity+miner": (
        dict(name="multi_similarity", alpha=2.0, beta=50.0, base=0.5, miner="multi_similarity", epsilon=0.1),
        lambda: pml_losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5),
        lambda: pml_miners.MultiSimilarityMiner(epsilon=0.1)),
    "triplet+semihard": (
        dict(name="triplet_margin", margin=0.2, miner="semihard", miner_margin=0.5),
        lambda: pml_losses.TripletMarginLoss(margin=0.2),
        lambda: pml_miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_objective_with_memory_equals_pml_cross_batch_memory(case):
    cfg, pml_loss, pml_miner = CASES[case]
    obj = objective.build_objective(ml_collections.ConfigDict({**cfg, "similarity": "cosine", "memory_size": M}), 10, D)
    state = obj.init_state({"embedding": jax.ShapeDtypeStruct((1, D), jnp.float32)})

    @jax.jit
    def step(state, e, y):
        state = obj.update_state(state, {"embedding": e}, y)
        value, grad = jax.value_and_grad(lambda q: obj.apply({}, {"embedding": q}, y, jax.random.key(0), state)[0])(e)
        return state, value, grad

    batches = _batches()
    values, grads = [], []
    for e, y in batches:
        state, value, grad = step(state, jnp.asarray(e), jnp.asarray(y))
        values.append(float(value))
        grads.append(np.asarray(grad))
    memory = state["memory"]
    assert (int(memory.ptr), int(memory.count)) == ((STEPS * B) % M, M)
    # slots 16..19 hold batch 2's samples 0..3, slots 0..3 its samples 4..7 (the FIFO wrapped around)
    np.testing.assert_array_equal(np.asarray(memory.labels[16:]), batches[2][1][:4])
    np.testing.assert_array_equal(np.asarray(memory.labels[:4]), batches[2][1][4:])
    np.testing.assert_array_equal(np.asarray(memory.labels[4:16]), np.concatenate([batches[0][1][4:], batches[1][1]]))
    _assert_close((values, grads), _pml_run(pml_loss(), pml_miner(), batches))


# The other losses of MEMORY_LOSSES with pytorch-metric-learning's defaults: name -> (PML loss, reads a similarity).
OTHER_LOSSES = {
    "margin": (lambda: pml_losses.MarginLoss(), False),
    "circle": (lambda: pml_losses.CircleLoss(), True),
    "sup_con": (lambda: pml_losses.SupConLoss(), True),
    "nt_xent": (lambda: pml_losses.NTXentLoss(), True),
    "generalized_lifted_structure": (lambda: pml_losses.GeneralizedLiftedStructureLoss(), False),
    "tuplet_margin": (lambda: pml_losses.TupletMarginLoss(), True),
    "intra_pair_variance": (lambda: pml_losses.IntraPairVarianceLoss(), True),
}


def test_every_memory_loss_equals_pml_cross_batch_memory():
    """The losses not covered above, from the array functions (one compile for all of them)."""
    assert set(OTHER_LOSSES) | {"contrastive", "multi_similarity", "triplet_margin"} == set(losses.MEMORY_LOSSES)
    pairwise = similarity.get_similarity("cosine")

    @jax.jit
    def step(memory, e, y):
        memory, slots = memory.enqueue({"embedding": e}, y)
        out = {}
        for name, (_, reads_sim) in OTHER_LOSSES.items():
            def loss(q, name=name, reads_sim=reads_sim):
                pair = pairwise({"embedding": q}, memory.outputs)
                kw = memory.references(slots, triplets=True if name == "margin" else None)
                return losses.LOSS_REGISTRY[name].fn(pair.similarity if reads_sim else pair.distance, y, **kw)
            out[name] = jax.value_and_grad(loss)(e)
        return memory, out

    memory = losses.CrossBatchMemory.create(M, {"embedding": jnp.zeros((1, D))})
    ours = {name: ([], []) for name in OTHER_LOSSES}
    for e, y in _batches(2):
        memory, out = step(memory, jnp.asarray(e), jnp.asarray(y))
        for name, (value, grad) in out.items():
            ours[name][0].append(float(value))
            ours[name][1].append(np.asarray(grad))
    for name, (pml_loss, _) in OTHER_LOSSES.items():
        _assert_close(ours[name], _pml_run(pml_loss(), None, _batches(2)), name)


def test_enqueue_mask_equals_pml():
    """pytorch-metric-learning's enqueue_mask: the masked samples are only enqueued, the others only queries."""
    masks = [np.arange(B) % 2 == 0, np.arange(B) < 5, np.arange(B) >= 2]  # 4, 5, then 6 enqueued: 15 of 20 slots
    pairwise = similarity.get_similarity("cosine")

    @jax.jit
    def step(memory, e, y, mask):
        memory, slots = memory.enqueue({"embedding": e}, y, enqueue_mask=mask)

        def loss(q):
            kw = memory.references(slots, enqueue_mask=mask)
            return losses.contrastive(pairwise({"embedding": q}, memory.outputs).distance, y, **kw)

        return memory, *jax.value_and_grad(loss)(e)

    memory = losses.CrossBatchMemory.create(M, {"embedding": jnp.zeros((1, D))})
    values, grads = [], []
    for (e, y), mask in zip(_batches(1), masks):
        memory, value, grad = step(memory, jnp.asarray(e), jnp.asarray(y), jnp.asarray(mask))
        values.append(float(value))
        grads.append(np.asarray(grad))
    assert (int(memory.ptr), int(memory.count)) == (15, 15)
    _assert_close((values, grads), _pml_run(pml_losses.ContrastiveLoss(), None, _batches(1), masks))


def _loss_cfg(**kw):
    return ml_collections.ConfigDict({"similarity": "cosine", **kw})


@pytest.mark.parametrize("cfg, message", [
    (dict(name="proxy_anchor", memory_size=64), "loss 'proxy_anchor' cannot take a cross-batch memory .*proxies; "
                                                "losses that can: contrastive, triplet_margin"),
    (dict(name="n_pairs", memory_size=64), "loss 'npair' cannot take a cross-batch memory .*losses that can: "),
    (dict(name="margin", memory_size=64), "miner 'distance_weighted' cannot take a cross-batch memory .*miners "
                                          "that can: none, semihard"),
    (dict(name="contrastive", memory_size=-1), "loss.memory_size must be a non-negative integer"),
    (dict(name="contrastive", memory_size=2.5), "loss.memory_size must be a non-negative integer"),
])
def test_losses_that_cannot_take_a_memory_raise_config_error(cfg, message):
    with pytest.raises(ConfigError, match=message):
        objective.build_objective(_loss_cfg(**cfg), 10, D)


def _tiny_config(memory_size=48):
    from configs import digits

    config = digits.get_config()
    config.model.widths = (8, 16)
    config.model.hidden = 32
    config.model.embed_dim = 16
    config.data.batch_size = 16
    config.loss = _loss_cfg(name="contrastive", miner="none", memory_size=memory_size)
    config.optim.lr_mults = {}
    return config


def test_memory_config_checks():
    config = _tiny_config(memory_size=8)
    with pytest.raises(ConfigError, match=r"loss.memory_size \(8\) must be at least data.batch_size \(16\)"):
        train.check_memory(config)
    config = _tiny_config()
    config.mixup = ml_collections.ConfigDict({"enabled": True, "alpha": 0.4})
    with pytest.raises(ConfigError, match="memory_size > 0 and mixup.enabled are exclusive"):
        train.check_memory(config)


def _batch(seed):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, 5, 16).astype(np.int32)}


def test_resumed_run_with_memory_equals_uninterrupted_run(tmp_path):
    """5 steps of batch 16 through 48 slots (the FIFO wraps at step 4) straight, and 3 + checkpoint + restore
    into a fresh state + 2: the same parameters, optimizer state and memory, bit for bit."""
    mesh = parallel.make_mesh(1)
    setup = train.create_setup(_tiny_config(), mesh, 5, (8, 8, 1))
    fresh = jax.tree.map(jnp.copy, setup.state)  # the steps donate their input state
    batches = [parallel.global_batch(mesh, _batch(s)) for s in range(5)]

    def run(state, steps):
        for t in steps:
            state, _ = setup.train_step(state, batches[t])
        return state

    straight = run(jax.tree.map(jnp.copy, fresh), range(5))
    assert (int(straight.loss_state["memory"].ptr), int(straight.loss_state["memory"].count)) == (32, 48)

    mngr = checkpointing.manager(str(tmp_path), 2)
    checkpointing.save(mngr, 3, run(jax.tree.map(jnp.copy, fresh), range(3)))
    mngr.wait_until_finished()
    restored = checkpointing.restore_latest(mngr, jax.tree.map(jnp.copy, fresh))
    mngr.close()
    assert int(restored.step) == 3 and int(restored.loss_state["memory"].count) == 48
    resumed = run(restored, range(3, 5))
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_without_loss_state_restores_into_empty_loss_state(tmp_path):
    """A checkpoint written before the train state had a loss state (the four other fields) still resumes."""
    params = {"w": jnp.arange(3.0)}
    old = {"step": jnp.asarray(7, jnp.int32), "params": params, "opt_state": {"mu": jnp.ones(3)},
           "batch_stats": {}}
    mngr = checkpointing.manager(str(tmp_path), 2)
    checkpointing.save(mngr, 7, old)
    mngr.wait_until_finished()
    like = train.TrainState(step=jnp.asarray(0, jnp.int32), params={"w": jnp.zeros(3)},
                            opt_state={"mu": jnp.zeros(3)}, batch_stats={})
    restored = checkpointing.restore_latest(mngr, like)
    mngr.close()
    assert int(restored.step) == 7 and restored.loss_state == {}
    np.testing.assert_array_equal(restored.params["w"], np.arange(3.0))


def test_dynamic_soft_margin_trains_with_its_histogram_in_the_train_state():
    """The train step carries the loss's histogram between steps: after each of 3 steps it equals that of
    PML's DynamicSoftMarginLoss called on the same embeddings in turn, and the logged loss equals PML's value
    (cosine: PML's default distance on normalised embeddings). Mixup with it is a ConfigError."""
    mesh = parallel.make_mesh(1)
    config = _tiny_config()
    config.loss = ml_collections.ConfigDict({"name": "dynamic_soft_margin", "momentum": 0.1})
    setup = train.create_setup(config, mesh, 5, (8, 8, 1))
    np.testing.assert_array_equal(np.asarray(setup.state.loss_state["histogram"]), np.zeros(10))
    pml = pml_losses.DynamicSoftMarginLoss(min_val=-2.0, num_bins=10, momentum=0.1)
    state = setup.state
    for t in range(3):
        batch = _batch(t)
        params = jax.device_get(state.params["model"])
        embedding = setup.model.apply({"params": params}, jnp.asarray(batch["image"]), train=True)["embedding"]
        ref = pml(torch.tensor(np.asarray(embedding)), torch.tensor(batch["label"].astype(np.int64))).item()
        state, metrics = setup.train_step(state, parallel.global_batch(mesh, batch))
        np.testing.assert_allclose(np.asarray(state.loss_state["histogram"]), pml.hist_.detach().numpy(),
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(metrics["loss"]), ref, rtol=1e-4, atol=1e-6)
    config.mixup = ml_collections.ConfigDict({"enabled": True, "alpha": 0.4})
    with pytest.raises(ConfigError, match="dynamic_soft_margin and mixup.enabled are exclusive"):
        train.check_memory(config)
