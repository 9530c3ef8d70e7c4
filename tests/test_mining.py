"""Miners as static-shape masks: against pytorch-metric-learning's miners and hand-worked cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdml import mining
from probdml.similarity import chord_distance, cosine

torch = pytest.importorskip("torch")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

B, D, C = 24, 16, 6


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, D)).astype(np.float32), rng.integers(0, C, size=B)


def _chord(e):
    return chord_distance(cosine(e, e))


def _dense_triplets(indices, b=B):
    a, p, n = (np.asarray(i) for i in indices)
    out = np.zeros((b, b, b), np.int64)
    np.add.at(out, (a, p, n), 1)
    return out


@pytest.mark.parametrize("kind", ["semihard", "hard", "all", "easy"])
def test_triplet_margin_miner_kinds_match_pml(kind):
    emb, labels = _batch(19)
    indices = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets=kind)(torch.tensor(emb), torch.tensor(labels))
    ours = mining.triplet_margin_mask(_chord(jnp.asarray(emb)), jnp.asarray(labels), margin=0.2, kind=kind)
    assert len(indices[0]) > 0
    np.testing.assert_array_equal(np.asarray(ours), _dense_triplets(indices) > 0)


def test_batch_hard_miner_matches_pml():
    emb, labels = _batch(21)
    indices = pml_miners.BatchHardMiner()(torch.tensor(emb), torch.tensor(labels))
    ours = mining.batch_hard_mask(_chord(jnp.asarray(emb)), jnp.asarray(labels))
    np.testing.assert_array_equal(np.asarray(ours), _dense_triplets(indices) > 0)


def test_multi_similarity_pairs_match_pml():
    emb, labels = _batch(27)
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(epsilon=0.1)(torch.tensor(emb), torch.tensor(labels))
    pos, neg = mining.multi_similarity_pairs(cosine(jnp.asarray(emb), jnp.asarray(emb)), jnp.asarray(labels))
    ref_pos = np.zeros((B, B), bool)
    ref_pos[a1.numpy(), p.numpy()] = True
    ref_neg = np.zeros((B, B), bool)
    ref_neg[a2.numpy(), n.numpy()] = True
    np.testing.assert_array_equal(np.asarray(pos), ref_pos)
    np.testing.assert_array_equal(np.asarray(neg), ref_neg)


def test_semihard_hand_computed():
    # anchor 0 with positive 1 (d = 0.3) and negatives 2 (d = 0.35), 3 (d = 0.9), 4 (d = 0.1)
    dist = np.full((5, 5), 1.0, np.float32)
    np.fill_diagonal(dist, 0.0)
    dist[0, 1:] = [0.3, 0.35, 0.9, 0.1]
    labels = jnp.array([0, 0, 1, 1, 1])
    mask = np.asarray(mining.semihard_mask(jnp.asarray(dist), labels, margin=0.2))
    assert mask[0, 1, 2] and not mask[0, 1, 3] and not mask[0, 1, 4]  # 0.05 in (0, 0.2]; 0.6 > 0.2; -0.2 <= 0
    hard = np.asarray(mining.hard_mask(jnp.asarray(dist), labels, margin=0.2))
    assert hard[0, 1, 4] and not hard[0, 1, 2]


def test_pair_masks_and_sample_mask():
    labels = jnp.array([0, 0, 1, 0])
    pos, neg = mining.pair_masks(labels, jnp.array([True, True, True, False]))
    np.testing.assert_array_equal(np.asarray(pos), [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(neg), [[0, 0, 1, 0], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_distance_weighted_weights_formula():
    # rows normalise q(d) = d^(2-n) (1 - d^2/4)^(-(n-3)/2) over negatives with max(d, cutoff) < 1.4
    n = 6
    dist = jnp.array([[0.0, 0.2, 0.6, 1.0, 1.5], [0.2, 0.0, 0.7, 0.9, 1.2]] + [[1.0] * 5] * 3, jnp.float32)
    labels = jnp.array([0, 0, 1, 2, 3])
    w = np.asarray(mining.distance_weighted_weights(dist, labels, dim=n, cutoff=0.5, nonzero_loss_cutoff=1.4))

    def q(d):
        return d ** (2 - n) * (1 - d * d / 4) ** (-(n - 3) / 2)

    row0 = np.array([0, 0, q(0.6), q(1.0), 0.0])
    np.testing.assert_allclose(w[0], row0 / row0.sum(), rtol=1e-5)
    row1 = np.array([0, 0, q(0.7), q(0.9), q(1.2)])
    np.testing.assert_allclose(w[1], row1 / row1.sum(), rtol=1e-5)


def test_distance_weighted_sampler_is_consistent():
    emb, labels = _batch(25)
    dist = _chord(jnp.asarray(emb))
    weights = np.asarray(mining.distance_weighted_weights(dist, jnp.asarray(labels), dim=D))
    sample = jax.jit(lambda k: mining.distance_weighted_triplets(k, dist, jnp.asarray(labels), dim=D))
    counts = np.asarray(sample(jax.random.key(1)))
    valid = np.asarray(mining.triplet_mask(jnp.asarray(labels)))
    assert np.all(counts[~valid] == 0)
    a, p, n = np.nonzero(counts)
    assert np.all(weights[a, n] > 0)
    class_size = np.array([(labels == y).sum() for y in labels])
    usable = (class_size > 1) & (weights.sum(1) > 0)
    np.testing.assert_array_equal(counts.sum(axis=(1, 2)), np.where(usable, class_size, 0))
    # negatives follow the weights: frequencies over many draws (8 draws x all anchors' slots)
    freq = sum(np.asarray(sample(jax.random.key(s))).sum(axis=1) for s in range(8)).astype(np.float64)
    row = int(np.argmax(np.where(usable, class_size, 0)))
    draws = freq[row].sum()
    expected = weights[row] * draws
    se = np.sqrt(draws * weights[row] * (1 - weights[row]))
    assert np.all(np.abs(freq[row] - expected) <= 5 * se + 1e-9)
