"""Losses against pytorch-metric-learning (values and gradients, float32) and hand-worked cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdml import losses, mining
from probdml.similarity import chord_distance, cosine, dot

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

B, D, C = 24, 16, 6
RTOL = 1e-5


def _batch(seed: int = 0, num_classes: int = C):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(B, D)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=B)
    return emb, labels


def _assert_close(ours, ref, rtol=RTOL):
    """Elementwise relative tolerance, with an absolute floor of rtol * max|ref| for entries near 0."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)


def _torch_run(loss_fn, emb, labels, params=(), indices=None):
    """pml loss value and gradients w.r.t. the embeddings and the named parameters."""
    for name, value in params:
        getattr(loss_fn, name).data = torch.tensor(np.asarray(value))
    e = torch.tensor(emb, requires_grad=True)
    y = torch.tensor(labels)
    out = loss_fn(e, y, indices) if indices is not None else loss_fn(e, y)
    out.backward()
    grads = [getattr(loss_fn, name).grad.numpy() for name, _ in params]
    return out.item(), e.grad.numpy(), grads


def _jax_run(fn, emb, labels, *params):
    value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(1 + len(params)))))(
        jnp.asarray(emb), *[jnp.asarray(p) for p in params]
    )
    return float(value), [np.asarray(g) for g in grads]


# ----------------------------------------------------------------------------------------------------
# Proxy losses


def test_proxy_anchor_matches_pml():
    emb, labels = _batch(1)
    proxies = np.random.default_rng(2).normal(size=(C, D)).astype(np.float32)
    ref, ref_ge, (ref_gp,) = _torch_run(
        pml_losses.ProxyAnchorLoss(C, D, margin=0.1, alpha=32), emb, labels, [("proxies", proxies)]
    )
    val, (ge, gp) = _jax_run(
        lambda e, p: losses.proxy_anchor(cosine(e, p), jnp.asarray(labels), margin=0.1, alpha=32.0),
        emb, labels, proxies,
    )
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)
    _assert_close(gp, ref_gp)


@pytest.mark.parametrize("softmax_scale", [1.0, 32.0])
def test_proxy_nca_matches_pml(softmax_scale):
    emb, labels = _batch(3)
    proxies = np.random.default_rng(4).normal(size=(C, D)).astype(np.float32)
    ref, ref_ge, (ref_gp,) = _torch_run(
        pml_losses.ProxyNCALoss(C, D, softmax_scale=softmax_scale), emb, labels, [("proxies", proxies)]
    )
    val, (ge, gp) = _jax_run(
        lambda e, p: losses.proxy_nca(cosine(e, p), jnp.asarray(labels), scale=2 * softmax_scale),
        emb, labels, proxies,
    )
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)
    _assert_close(gp, ref_gp)


def test_normalized_softmax_matches_pml():
    emb, labels = _batch(5)
    w = np.random.default_rng(6).normal(size=(D, C)).astype(np.float32)
    ref, ref_ge, (ref_gw,) = _torch_run(
        pml_losses.NormalizedSoftmaxLoss(C, D, temperature=0.05), emb, labels, [("W", w)]
    )
    val, (ge, gw) = _jax_run(
        lambda e, w_: losses.normalized_softmax(cosine(e, w_.T), jnp.asarray(labels), temperature=0.05),
        emb, labels, w,
    )
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)
    _assert_close(gw, ref_gw)


def test_arcface_matches_pml():
    emb, labels = _batch(7)
    w = np.random.default_rng(8).normal(size=(D, C)).astype(np.float32)
    # make one sample lie beyond 180 deg - m from its class weight (the linear branch)
    emb[0] = -w[:, labels[0]] + 0.01 * emb[0]
    ref, ref_ge, (ref_gw,) = _torch_run(
        pml_losses.ArcFaceLoss(C, D, margin=28.6, scale=64), emb, labels, [("W", w)]
    )
    val, (ge, gw) = _jax_run(
        lambda e, w_: losses.arcface(cosine(e, w_.T), jnp.asarray(labels), margin=28.6, scale=64.0),
        emb, labels, w,
    )
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)
    _assert_close(gw, ref_gw)


def test_soft_triple_matches_pml():
    emb, labels = _batch(9)
    k = 3
    fc = np.random.default_rng(10).normal(size=(D, C * k)).astype(np.float32)
    ref, ref_ge, (ref_gfc,) = _torch_run(
        pml_losses.SoftTripleLoss(C, D, centers_per_class=k, la=20, gamma=0.1, margin=0.01),
        emb, labels, [("fc", fc)],
    )
    val, (ge, gfc) = _jax_run(
        lambda e, f: losses.soft_triple(cosine(e, f.T), jnp.asarray(labels), centers_per_class=k,
                                        la=20.0, gamma=0.1, margin=0.01),
        emb, labels, fc,
    )
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)
    _assert_close(gfc, ref_gfc)


def test_proxy_nca_pp_hand_computed_and_subsampling():
    sim = jnp.array([[0.5, -0.2, 0.1], [0.3, 0.9, -0.4]], jnp.float32)
    labels = jnp.array([0, 1])
    t = 0.25
    expected = np.mean([
        -(0.5 / t) + math.log(sum(math.exp(s / t) for s in (0.5, -0.2, 0.1))),
        -(0.9 / t) + math.log(sum(math.exp(s / t) for s in (0.3, 0.9, -0.4))),
    ])
    np.testing.assert_allclose(losses.proxy_nca_pp(sim, labels, temperature=t), expected, rtol=1e-6)
    # masking class 2 out of the softmax
    expected_masked = np.mean([
        -(0.5 / t) + math.log(math.exp(0.5 / t) + math.exp(-0.2 / t)),
        -(0.9 / t) + math.log(math.exp(0.3 / t) + math.exp(0.9 / t)),
    ])
    mask = jnp.array([True, True, False])
    np.testing.assert_allclose(
        losses.proxy_nca_pp(sim, labels, temperature=t, class_mask=mask), expected_masked, rtol=1e-6
    )
    keep = losses.proxy_subsample_mask(jax.random.key(0), jnp.array([3, 3, 7]), 20, 0.25)
    assert int(keep.sum()) == 5 and bool(keep[3]) and bool(keep[7])


def test_proxy_anchor_sample_mask_equals_dropping_samples():
    emb, labels = _batch(11)
    proxies = np.random.default_rng(12).normal(size=(C, D)).astype(np.float32)
    mask = np.arange(B) < 17
    sim = np.asarray(cosine(jnp.asarray(emb), jnp.asarray(proxies)))
    full = jax.jit(losses.proxy_anchor)(sim, jnp.asarray(labels), sample_mask=jnp.asarray(mask))
    dropped = jax.jit(losses.proxy_anchor)(sim[:17], jnp.asarray(labels[:17]))
    np.testing.assert_allclose(full, dropped, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Pair losses


def _chord(e):
    return chord_distance(cosine(e, e))


def test_contrastive_matches_pml():
    emb, labels = _batch(13)
    ref, ref_ge, _ = _torch_run(pml_losses.ContrastiveLoss(pos_margin=0.3, neg_margin=1.4), emb, labels)
    val, (ge,) = _jax_run(
        lambda e: losses.contrastive(_chord(e), jnp.asarray(labels), pos_margin=0.3, neg_margin=1.4),
        emb, labels,
    )
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)


def _dense_triplets(indices, b=B):
    a, p, n = (np.asarray(i) for i in indices)
    out = np.zeros((b, b, b), np.int64)
    np.add.at(out, (a, p, n), 1)
    return out


def test_semihard_triplet_matches_pml():
    emb, labels = _batch(15)
    miner = pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets="semihard")
    indices = miner(torch.tensor(emb), torch.tensor(labels))
    ours_mask = mining.semihard_mask(_chord(jnp.asarray(emb)), jnp.asarray(labels), margin=0.3)
    np.testing.assert_array_equal(np.asarray(ours_mask), _dense_triplets(indices) > 0)
    assert len(indices[0]) > 10
    ref, ref_ge, _ = _torch_run(pml_losses.TripletMarginLoss(margin=0.3), emb, labels, indices=indices)

    def fn(e):
        dist = _chord(e)
        return losses.triplet_margin(
            dist, jnp.asarray(labels), margin=0.3, triplets=mining.semihard_mask(dist, jnp.asarray(labels), margin=0.3)
        )

    val, (ge,) = _jax_run(fn, emb, labels)
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)


def test_all_triplets_matches_pml():
    emb, labels = _batch(17)
    ref, ref_ge, _ = _torch_run(pml_losses.TripletMarginLoss(margin=0.1), emb, labels)
    val, (ge,) = _jax_run(lambda e: losses.triplet_margin(_chord(e), jnp.asarray(labels), margin=0.1), emb, labels)
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)


def _pml_dw_weights(emb, labels, **kw):
    """The weights DistanceWeightedMiner passes to its sampler (captured, not recomputed)."""
    import pytorch_metric_learning.miners.distance_weighted_miner as dwm

    captured = {}
    original = dwm.lmu.get_random_triplet_indices

    def capture(labels_, ref_labels=None, weights=None, **kwargs):
        captured["w"] = weights.clone()
        return original(labels_, ref_labels=ref_labels, weights=weights, **kwargs)

    dwm.lmu.get_random_triplet_indices = capture
    try:
        torch.manual_seed(0)
        indices = pml_miners.DistanceWeightedMiner(**kw)(torch.tensor(emb), torch.tensor(labels))
    finally:
        dwm.lmu.get_random_triplet_indices = original
    return captured["w"].numpy(), indices


def test_distance_weighted_weights_and_margin_loss_match_pml():
    rng = np.random.default_rng(23)
    dim = 4  # small dimension: the weights stay in float32 range, so no row underflows (see docstring)
    emb = rng.normal(size=(B, dim)).astype(np.float32)
    labels = rng.integers(0, C, size=B)
    ref_w, indices = _pml_dw_weights(emb, labels, cutoff=0.5, nonzero_loss_cutoff=1.4)
    ours_w = mining.distance_weighted_weights(
        _chord(jnp.asarray(emb)), jnp.asarray(labels), dim=dim, cutoff=0.5, nonzero_loss_cutoff=1.4
    )
    _assert_close(ours_w, np.nan_to_num(ref_w), 1e-5)
    counts = _dense_triplets(indices)
    for learn_beta, num_classes, nu in [(False, None, 0.0), (True, None, 0.1), (True, C, 0.1)]:
        pml_loss = pml_losses.MarginLoss(margin=0.2, nu=nu, beta=1.2, learn_beta=learn_beta, num_classes=num_classes)
        beta0 = np.full((num_classes,) if num_classes else (1,), 1.2, np.float32)
        beta0 = beta0 + 0.05 * np.arange(beta0.size, dtype=np.float32)
        params = [("beta", beta0)] if learn_beta else []
        if not learn_beta:
            pml_loss.beta = torch.tensor(beta0)
        ref, ref_ge, ref_gb = _torch_run(pml_loss, emb, labels, params, indices=indices)

        def fn(e, b):
            beta = b if num_classes else b[0]
            return losses.margin_loss(_chord(e), jnp.asarray(labels), beta=beta, margin=0.2, nu=nu,
                                      triplets=jnp.asarray(counts))

        val, (ge, gb) = _jax_run(fn, emb, labels, beta0)
        _assert_close(val, ref)
        _assert_close(ge, ref_ge)
        if learn_beta:
            _assert_close(gb, ref_gb[0])


def test_multi_similarity_with_miner_matches_pml():
    emb, labels = _batch(27)
    miner = pml_miners.MultiSimilarityMiner(epsilon=0.1)
    a1, p, a2, n = miner(torch.tensor(emb), torch.tensor(labels))
    sim = cosine(jnp.asarray(emb), jnp.asarray(emb))
    pos, neg = mining.multi_similarity_pairs(sim, jnp.asarray(labels), epsilon=0.1)
    ref_pos = np.zeros((B, B), bool)
    ref_pos[a1.numpy(), p.numpy()] = True
    ref_neg = np.zeros((B, B), bool)
    ref_neg[a2.numpy(), n.numpy()] = True
    np.testing.assert_array_equal(np.asarray(pos), ref_pos)
    np.testing.assert_array_equal(np.asarray(neg), ref_neg)
    ref, ref_ge, _ = _torch_run(pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), emb, labels,
                                indices=(a1, p, a2, n))

    def fn(e):
        s = cosine(e, e)
        mp, mn = mining.multi_similarity_pairs(s, jnp.asarray(labels), epsilon=0.1)
        return losses.multi_similarity(s, jnp.asarray(labels), pos_mask=mp, neg_mask=mn)

    val, (ge,) = _jax_run(fn, emb, labels)
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)


def test_multi_similarity_all_pairs_matches_pml():
    emb, labels = _batch(29)
    ref, ref_ge, _ = _torch_run(pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), emb, labels)
    val, (ge,) = _jax_run(lambda e: losses.multi_similarity(cosine(e, e), jnp.asarray(labels)), emb, labels)
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)


@pytest.mark.parametrize("normalize", [True, False])
def test_npair_matches_pml(normalize):
    emb, labels = _batch(31)
    emb = emb * 0.3
    distance = pml_distances.DotProductSimilarity(normalize_embeddings=normalize)
    ref, ref_ge, _ = _torch_run(pml_losses.NPairsLoss(distance=distance), emb, labels)
    sim_fn = cosine if normalize else dot
    val, (ge,) = _jax_run(lambda e: losses.npair(sim_fn(e, e), jnp.asarray(labels)), emb, labels)
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)


def test_fast_ap_matches_pml():
    emb, labels = _batch(33, num_classes=4)
    ref, ref_ge, _ = _torch_run(pml_losses.FastAPLoss(num_bins=10), emb, labels)
    val, (ge,) = _jax_run(
        lambda e: losses.fast_ap(_chord(e) ** 2, jnp.asarray(labels), num_bins=10, histogram_max=4.0), emb, labels
    )
    _assert_close(val, ref)
    _assert_close(ge, ref_ge)


# ----------------------------------------------------------------------------------------------------
# Hand-worked cases and edge cases


def test_contrastive_hand_computed():
    dist = jnp.array([[0.0, 0.4, 1.5], [0.4, 0.0, 0.2], [1.5, 0.2, 0.0]])
    labels = jnp.array([0, 0, 1])
    # pos pairs (0,1),(1,0): relu(0.4 - 0.1) = 0.3 each; neg pairs: relu(1 - 1.5) = 0 (x2), relu(1 - 0.2) = 0.8 (x2)
    np.testing.assert_allclose(losses.contrastive(dist, labels, pos_margin=0.1, neg_margin=1.0), 0.3 + 0.8, rtol=1e-6)


def test_multi_similarity_hand_computed():
    sim = jnp.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.1], [0.6, 0.1, 1.0]])
    labels = jnp.array([0, 0, 1])
    a, b, lam = 2.0, 10.0, 0.5
    row0 = math.log1p(math.exp(-a * (0.8 - lam))) / a + math.log1p(math.exp(b * (0.6 - lam))) / b
    row1 = math.log1p(math.exp(-a * (0.8 - lam))) / a + math.log1p(math.exp(b * (0.1 - lam))) / b
    row2 = 0.0 + math.log(1 + math.exp(b * (0.6 - lam)) + math.exp(b * (0.1 - lam))) / b
    np.testing.assert_allclose(
        losses.multi_similarity(sim, labels, alpha=a, beta=b, base=lam), (row0 + row1 + row2) / 3, rtol=1e-6
    )


# ----------------------------------------------------------------------------------------------------
# Finite values and gradients for any similarity: every loss on adversarial matrices (hypothesis)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

NB, NC, K = 8, 8, 2
_ENTRY = st.sampled_from([0.0, 1.0, -1.0, 0.5, -0.3, 1e-7, 1e4, -1e4, 1e8, -1e8])


def _all_losses(sim_p, sim_pp, labels, key):
    """Every loss with a proxy similarity sim_p [B, C*K] and a batch similarity sim_pp [B, B]."""
    sp = sim_p[:, :NC]
    d = jnp.abs(sim_pp)
    mp, mn = mining.multi_similarity_pairs(sim_pp, labels)
    class_mask = losses.proxy_subsample_mask(key, labels, NC, 0.5)
    return jnp.stack([
        losses.proxy_anchor(sp, labels),
        losses.proxy_nca(sp, labels),
        losses.proxy_nca_pp(sp, labels, temperature=0.1, class_mask=class_mask),
        losses.normalized_softmax(sp, labels),
        losses.arcface(sp, labels),
        losses.soft_triple(sim_p, labels, centers_per_class=K),
        losses.contrastive(d, labels),
        losses.triplet_margin(d, labels, triplets=mining.semihard_mask(d, labels)),
        losses.triplet_margin(d, labels, triplets=mining.batch_hard_mask(d, labels)),
        losses.margin_loss(d, labels, triplets=mining.distance_weighted_triplets(key, d, labels, dim=NB)),
        losses.margin_loss(d, labels, beta=jnp.full((NC,), 1.2), nu=0.1),
        losses.multi_similarity(sim_pp, labels, pos_mask=mp, neg_mask=mn),
        losses.npair(sim_pp, labels),
        losses.fast_ap(d, labels),
    ])


@jax.jit
def _losses_and_grads(sim_p, sim_pp, labels, key):
    values = _all_losses(sim_p, sim_pp, labels, key)
    jac = jax.jacrev(_all_losses, argnums=(0, 1))(sim_p, sim_pp, labels, key)
    return values, jac


@settings(max_examples=60, deadline=None)
@given(
    sim_p=hnp.arrays(np.float32, (NB, NC * K), elements=_ENTRY),
    sim_pp=hnp.arrays(np.float32, (NB, NB), elements=_ENTRY),
    labels=st.one_of(st.just(np.zeros(NB, np.int32)), st.just(np.arange(NB, dtype=np.int32)),
                     hnp.arrays(np.int32, (NB,), elements=st.integers(0, 2))),
    seed=st.integers(0, 2**16),
)
def test_every_loss_is_finite_with_finite_gradient_on_adversarial_matrices(sim_p, sim_pp, labels, seed):
    values, (j_p, j_pp) = _losses_and_grads(jnp.asarray(sim_p), jnp.asarray(sim_pp), jnp.asarray(labels),
                                            jax.random.key(seed))
    assert np.all(np.isfinite(np.asarray(values)))
    assert np.all(np.isfinite(np.asarray(j_p))) and np.all(np.isfinite(np.asarray(j_pp)))


@pytest.mark.parametrize("kind", ["one_class", "singletons"])
def test_degenerate_batches_give_zero_for_terms_without_pairs(kind):
    rng = np.random.default_rng(0)
    labels = np.zeros(NB, np.int32) if kind == "one_class" else np.arange(NB, dtype=np.int32)
    sim_p = rng.uniform(-1, 1, size=(NB, NC * K)).astype(np.float32)
    sim_pp = rng.uniform(-1, 1, size=(NB, NB)).astype(np.float32)
    values, _ = _losses_and_grads(jnp.asarray(sim_p), jnp.asarray(sim_pp), jnp.asarray(labels), jax.random.key(0))
    values = np.asarray(values)
    assert np.all(np.isfinite(values))
    # no triplets in either batch: triplet (semi-hard, batch-hard) and margin losses are 0
    np.testing.assert_array_equal(values[[7, 8, 9, 10]], 0.0)
    if kind == "singletons":  # no positive pairs: N-pair and FastAP are 0; contrastive has only negatives
        np.testing.assert_array_equal(values[[12, 13]], 0.0)
        neg = np.maximum(1.0 - np.abs(sim_pp)[~np.eye(NB, dtype=bool)], 0.0)  # relu(neg_margin - d)
        np.testing.assert_allclose(values[6], neg[neg > 0].mean(), rtol=1e-5)
    else:  # one class: no negatives; multi-similarity keeps no pairs (its miner needs negatives)
        np.testing.assert_array_equal(values[11], 0.0)


def test_float64_matches_pml_in_double_precision():
    """A few losses in float64 against pytorch-metric-learning in torch.float64: formula differences that
    float32 rounding could hide show up here (agreement to 1e-10)."""
    emb, labels = _batch(41)
    emb = emb.astype(np.float64)
    proxies = np.random.default_rng(42).normal(size=(C, D))
    y = jnp.asarray(labels)

    def run_torch(loss_fn, miner=None, params=()):
        loss_fn = loss_fn.double()
        for name, value in params:
            getattr(loss_fn, name).data = torch.tensor(value, dtype=torch.float64)
        e = torch.tensor(emb, requires_grad=True)
        t = torch.tensor(labels)
        out = loss_fn(e, t, miner(e, t)) if miner is not None else loss_fn(e, t)
        out.backward()
        return out.item(), e.grad.numpy()

    def semihard(e):
        d = _chord(e)
        return losses.triplet_margin(d, y, margin=0.3, triplets=mining.semihard_mask(d, y, margin=0.3))

    def ms(e):
        s = cosine(e, e)
        mp, mn = mining.multi_similarity_pairs(s, y)
        return losses.multi_similarity(s, y, pos_mask=mp, neg_mask=mn)

    cases = [
        (lambda e: losses.proxy_anchor(cosine(e, jnp.asarray(proxies)), y),
         run_torch(pml_losses.ProxyAnchorLoss(C, D), params=[("proxies", proxies)])),
        (semihard, run_torch(pml_losses.TripletMarginLoss(margin=0.3),
                             pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets="semihard"))),
        (ms, run_torch(pml_losses.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner())),
        (lambda e: losses.fast_ap(_chord(e) ** 2, y), run_torch(pml_losses.FastAPLoss())),
    ]
    with jax.enable_x64(True):
        for fn, (ref, ref_grad) in cases:
            value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(emb))
            assert value.dtype == jnp.float64
            _assert_close(value, ref, 1e-10)
            _assert_close(grad, ref_grad, 1e-9)
