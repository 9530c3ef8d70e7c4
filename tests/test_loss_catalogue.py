"""The loss catalogue against pytorch-metric-learning 2.9 (CPU torch oracle): values and gradients in
float32 to 1e-5 relative, PML's default reducers, on small batches with repeated and lone labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdml import losses
from probdml.similarity import chord_distance, cosine

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

B, D, C = 12, 8, 5
RTOL = 1e-5
# repeated labels (0, 1, 2) and lone ones (3, 4), shuffled
LABELS = np.random.default_rng(0).permutation(np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 1]))


def _emb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(B, D)).astype(np.float32)


def _close(ours, ref, rtol=RTOL):
    """Relative tolerance with an absolute floor of rtol * max|ref| for entries near 0."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * max(float(np.max(np.abs(ref))), 1e-30))


def _pml(loss_fn, emb, labels, params=()):
    for name, value in params:
        getattr(loss_fn, name).data = torch.tensor(np.asarray(value))
    e = torch.tensor(emb, requires_grad=True)
    out = loss_fn(e, torch.tensor(labels))
    out.backward()
    return out.item(), [e.grad.numpy()] + [getattr(loss_fn, name).grad.numpy() for name, _ in params]


def _ours(fn, emb, *params):
    value, grads = jax.value_and_grad(fn, argnums=tuple(range(1 + len(params))))(
        jnp.asarray(emb), *[jnp.asarray(p) for p in params])
    return float(value), [np.asarray(g) for g in grads]


def _compare(ref, ours):
    _close(ours[0], ref[0])
    for g, rg in zip(ours[1], ref[1], strict=True):
        _close(g, rg)
    assert ref[0] != 0.0  # a case that exercises the loss


def _cos(e):
    return cosine(e, e)


def _chord(e):
    return chord_distance(cosine(e, e))


Y = jnp.asarray(LABELS)
PAIR_CASES = {
    "circle": (lambda: pml_losses.CircleLoss(m=0.4, gamma=80), lambda e: losses.circle(_cos(e), Y)),
    "circle_small_gamma": (lambda: pml_losses.CircleLoss(m=0.25, gamma=4),
                           lambda e: losses.circle(_cos(e), Y, m=0.25, gamma=4.0)),
    "sup_con": (lambda: pml_losses.SupConLoss(temperature=0.1), lambda e: losses.sup_con(_cos(e), Y)),
    "nt_xent": (lambda: pml_losses.NTXentLoss(temperature=0.07), lambda e: losses.nt_xent(_cos(e), Y)),
    "nt_xent_t05": (lambda: pml_losses.NTXentLoss(temperature=0.5),
                    lambda e: losses.nt_xent(_cos(e), Y, temperature=0.5)),
    "lifted_structure": (lambda: pml_losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.1),
                         lambda e: losses.lifted_structure(_chord(e), Y, neg_margin=1.0, pos_margin=0.1)),
    "generalized_lifted_structure": (
        lambda: pml_losses.GeneralizedLiftedStructureLoss(neg_margin=1.0, pos_margin=0.1),
        lambda e: losses.generalized_lifted_structure(_chord(e), Y, neg_margin=1.0, pos_margin=0.1)),
    "tuplet_margin": (lambda: pml_losses.TupletMarginLoss(margin=5.73, scale=64),
                      lambda e: losses.tuplet_margin(_cos(e), Y)),
    "intra_pair_variance": (lambda: pml_losses.IntraPairVarianceLoss(pos_eps=0.01, neg_eps=0.01),
                            lambda e: losses.intra_pair_variance(_cos(e), Y)),
    # PML's default distance is the squared L2 distance of normalised embeddings, 2 - 2 cos
    "nca": (lambda: pml_losses.NCALoss(softmax_scale=3.0), lambda e: losses.nca(_cos(e), Y, scale=6.0)),
    "signal_to_noise_ratio_contrastive": (
        lambda: pml_losses.SignalToNoiseRatioContrastiveLoss(pos_margin=0.2, neg_margin=1.5),
        lambda e: losses.signal_to_noise_ratio_contrastive(losses.snr_distance(e), Y, pos_margin=0.2,
                                                           neg_margin=1.5)),
}


@pytest.mark.parametrize("case", sorted(PAIR_CASES))
def test_pair_loss_matches_pml(case):
    make_pml, ours = PAIR_CASES[case]
    emb = _emb(sorted(PAIR_CASES).index(case) + 1)
    _compare(_pml(make_pml(), emb, LABELS), _ours(jax.jit(ours), emb))


def test_angular_matches_pml_on_unit_embeddings():
    """PML dots (a^ + p^) with the raw negative embeddings (docstring): equal on unit-norm embeddings, values
    and the gradients' tangential parts."""
    emb = _emb(19)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    ref_value, (ref_g,) = _pml(pml_losses.AngularLoss(alpha=40), emb, LABELS)
    value, (g,) = _ours(jax.jit(lambda e: losses.angular(_cos(e), Y)), emb)

    def tangential(x):
        return x - emb * np.sum(emb * x, axis=1, keepdims=True)

    _close(value, ref_value)
    _close(g, tangential(ref_g))
    assert ref_value > 0


PAIR_CASES_2 = {
    "instance": (lambda: pml_losses.InstanceLoss(gamma=16), lambda e: losses.instance(_cos(e), Y, gamma=16.0)),
}


@pytest.mark.parametrize("case", sorted(PAIR_CASES_2))
def test_pair_loss_2_matches_pml(case):
    make_pml, ours = PAIR_CASES_2[case]
    emb = _emb(20 + sorted(PAIR_CASES_2).index(case))
    _compare(_pml(make_pml(), emb, LABELS), _ours(jax.jit(ours), emb))


def _weights(seed, cols):
    return np.random.default_rng(seed).normal(size=(D, cols)).astype(np.float32)


def _by_w(fn):
    """A proxy loss of the cosine between the embeddings and the columns of W [D, C]."""
    return lambda e, w: fn(cosine(e, w.T))


PROXY_CASES = {
    "cos_face": (lambda: pml_losses.CosFaceLoss(num_classes=C, embedding_size=D, margin=0.35, scale=64), C,
                 _by_w(lambda s: losses.cos_face(s, Y))),
    "large_margin_softmax": (
        lambda: pml_losses.LargeMarginSoftmaxLoss(num_classes=C, embedding_size=D, margin=4, scale=1), C,
        lambda e, w: losses.large_margin_softmax(
            cosine(e, w.T), Y, magnitudes=jnp.linalg.norm(e, axis=1)[:, None] * jnp.linalg.norm(w, axis=0)[None])),
    "large_margin_softmax_m3": (
        lambda: pml_losses.LargeMarginSoftmaxLoss(num_classes=C, embedding_size=D, margin=3, scale=0.5), C,
        lambda e, w: losses.large_margin_softmax(
            cosine(e, w.T), Y, margin=3, scale=0.5,
            magnitudes=jnp.linalg.norm(e, axis=1)[:, None] * jnp.linalg.norm(w, axis=0)[None])),
    "sphere_face": (lambda: pml_losses.SphereFaceLoss(num_classes=C, embedding_size=D, margin=4, scale=1), C,
                    lambda e, w: losses.sphere_face(cosine(e, w.T), Y, embedding_norms=jnp.linalg.norm(e, axis=1))),
    "sub_center_arc_face": (
        lambda: pml_losses.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, sub_centers=3), 3 * C,
        _by_w(lambda s: losses.sub_center_arc_face(s, Y, sub_centers=3))),
}


@pytest.mark.parametrize("case", sorted(PROXY_CASES))
def test_proxy_loss_matches_pml(case):
    make_pml, cols, ours = PROXY_CASES[case]
    seed = 40 + sorted(PROXY_CASES).index(case)
    emb, w = _emb(seed), _weights(seed + 100, cols)
    _compare(_pml(make_pml(), emb, LABELS, [("W", w)]), _ours(jax.jit(ours), emb, w))


def test_p2s_grad_matches_pml_value_and_embedding_gradient():
    """PML renormalises its weights in place and differentiates the raw product: the embedding gradient
    and the value agree; the weight gradient here is PML's projected onto the tangent space (docstring)."""
    emb = _emb(50)
    w = _weights(51, C)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    loss = pml_losses.P2SGradLoss(descriptors_dim=D, num_classes=C)
    ref_value, (ref_ge, ref_gw) = _pml(loss, emb, LABELS, [("weight", w)])
    value, (ge, gw) = _ours(jax.jit(_by_w(lambda s: losses.p2s_grad(s, Y))), emb, w)
    _close(value, ref_value)
    _close(ge, ref_ge)
    _close(gw, ref_gw - w * np.sum(w * ref_gw, axis=0, keepdims=True))


# what PML's SmoothAP requires: equal-size contiguous classes; and as many classes as samples per class, since
# it reshapes the batch into B / #classes groups of #classes (the group size only when the two are equal)
BLOCK_LABELS = np.repeat(np.arange(4), 4)


def test_smooth_ap_matches_pml_and_accepts_any_label_order():
    emb = np.random.default_rng(60).normal(size=(16, D)).astype(np.float32)
    ref = _pml(pml_losses.SmoothAPLoss(temperature=0.01), emb, BLOCK_LABELS)
    _compare(ref, _ours(jax.jit(lambda e: losses.smooth_ap(_cos(e), jnp.asarray(BLOCK_LABELS))), emb))
    # the same batch in another order (PML raises or misreads it): the same loss, gradients permuted alike
    perm = np.random.default_rng(61).permutation(16)
    value, (grad,) = _ours(jax.jit(lambda e: losses.smooth_ap(_cos(e), jnp.asarray(BLOCK_LABELS[perm]))), emb[perm])
    _close(value, ref[0])
    _close(grad, ref[1][0][perm])


@pytest.mark.parametrize("variant", ["O", "Ds", "Dq", "Iu", "Ib"])
def test_pnp_matches_pml(variant):
    emb = _emb(70 + "O Ds Dq Iu Ib".split().index(variant))
    # anneal 0.1: sigmoid arguments stay inside PML's +-50 clamp for most pairs, so gradients are non-trivial
    ref = _pml(pml_losses.PNPLoss(b=2, alpha=1, anneal=0.1, variant=variant), emb, LABELS)
    _compare(ref, _ours(jax.jit(lambda e: losses.pnp(_cos(e), Y, anneal=0.1, variant=variant)), emb))


@pytest.mark.parametrize("n_bins", [10, 100])
def test_histogram_matches_pml(n_bins):
    emb = _emb(80 + n_bins)
    ref = _pml(pml_losses.HistogramLoss(n_bins=n_bins), emb, LABELS)
    _compare(ref, _ours(jax.jit(lambda e: losses.histogram(_cos(e), Y, n_bins=n_bins)), emb))


PAIR_CASES_3 = {
    "threshold_consistent_margin": (lambda: pml_losses.ThresholdConsistentMarginLoss(margin_plus=0.3, margin_minus=0.1),
                                    lambda e: losses.threshold_consistent_margin(_cos(e), Y, margin_plus=0.3,
                                                                                 margin_minus=0.1)),
    "ranked_list": (lambda: pml_losses.RankedListLoss(margin=0.4, Tn=10.0),
                    lambda e: losses.ranked_list(_chord(e), Y, margin=0.4, tn=10.0)),
    "ranked_list_tp": (lambda: pml_losses.RankedListLoss(margin=0.6, Tn=5.0, Tp=2.0, imbalance=0.3, alpha=1.2),
                       lambda e: losses.ranked_list(_chord(e), Y, margin=0.6, tn=5.0, tp=2.0, imbalance=0.3,
                                                    alpha=1.2)),
}


@pytest.mark.parametrize("case", sorted(PAIR_CASES_3))
def test_pair_loss_3_matches_pml(case):
    make_pml, ours = PAIR_CASES_3[case]
    emb = _emb(90 + sorted(PAIR_CASES_3).index(case))
    _compare(_pml(make_pml(), emb, LABELS), _ours(jax.jit(ours), emb))


def test_vic_reg_matches_pml():
    emb, ref = _emb(95), _emb(96) * 0.5 + _emb(95)
    e, r = torch.tensor(emb, requires_grad=True), torch.tensor(ref, requires_grad=True)
    out = pml_losses.VICRegLoss()(e, ref_emb=r)
    out.backward()
    ours = _ours(jax.jit(lambda a, b: losses.vic_reg(a, b)), emb, ref)
    _compare((out.item(), [e.grad.numpy(), r.grad.numpy()]), ours)


def _pml_manifold(emb, proxies, meta, lambda_c):
    loss = pml_losses.ManifoldLoss(l=D, K=len(proxies), lambdaC=lambda_c, margin=0.01)
    loss.proxies.data = torch.tensor(proxies)
    e = torch.tensor(emb, requires_grad=True)
    out = loss(e, indices_tuple=torch.tensor(meta))
    out.backward()
    return out.item(), [e.grad.numpy(), loss.proxies.grad.numpy()]


@pytest.mark.parametrize("lambda_c", [0.5, float("inf")])
def test_manifold_matches_pml(lambda_c):
    """lambda_c = inf (context term alone, as PML documents) gives inf in PML (inf * loss_ctx + 0-tensor):
    compared with PML's lambda_c = 1 minus lambda_c = 0 there."""
    k = 4
    emb, proxies = _emb(97), np.random.default_rng(98).normal(size=(k, D)).astype(np.float32)
    meta = np.random.default_rng(99).integers(0, k, size=B)
    if lambda_c == float("inf"):
        (v1, g1), (v0, g0) = (_pml_manifold(emb, proxies, meta, lam) for lam in (1.0, 0.0))
        ref = (v1 - v0, [a - b for a, b in zip(g1, g0, strict=True)])
    else:
        ref = _pml_manifold(emb, proxies, meta, lambda_c)

    def ours(x, p):
        both = jnp.concatenate([x, p])
        return losses.manifold(cosine(both, both), jnp.asarray(meta), num_proxies=k, lambda_c=lambda_c, margin=0.01)

    _compare(ref, _ours(jax.jit(ours), emb, proxies))
