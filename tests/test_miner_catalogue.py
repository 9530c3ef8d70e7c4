"""The new miners (static-shape masks) against pytorch-metric-learning 2.9's, and the uniform-histogram
sampler's structure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdml import mining
from probdml.similarity import chord_distance, cosine

torch = pytest.importorskip("torch")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

B, D = 12, 8
LABELS = np.random.default_rng(0).permutation(np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 1]))


def _emb(seed):
    return np.random.default_rng(seed).normal(size=(B, D)).astype(np.float32)


def _dense_triplets(indices):
    out = np.zeros((B, B, B), bool)
    out[tuple(np.asarray(i) for i in indices)] = True
    return out


def _dense_pairs(indices):
    a1, p, a2, n = (np.asarray(i) for i in indices)
    pos, neg = np.zeros((B, B), bool), np.zeros((B, B), bool)
    pos[a1, p] = True
    neg[a2, n] = True
    return pos, neg


def _run(miner, emb):
    return miner(torch.tensor(emb), torch.tensor(LABELS))


def _chord(emb):
    e = jnp.asarray(emb)
    return chord_distance(cosine(e, e))


@pytest.mark.parametrize("angle", [20.0, 45.0])
def test_angular_miner_matches_pml(angle):
    emb = _emb(1)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # PML measures the raw embeddings (docstring)
    ref = _dense_triplets(_run(pml_miners.AngularMiner(angle=angle), emb))
    ours = np.asarray(mining.angular_mask(cosine(jnp.asarray(emb), jnp.asarray(emb)), jnp.asarray(LABELS),
                                          angle=angle))
    assert 0 < ref.sum() < mining.triplet_mask(jnp.asarray(LABELS)).sum()
    np.testing.assert_array_equal(ours, ref)


def test_pair_margin_miner_matches_pml():
    emb = _emb(2)
    ref_pos, ref_neg = _dense_pairs(_run(pml_miners.PairMarginMiner(pos_margin=1.2, neg_margin=1.3), emb))
    pos, neg = mining.pair_margin_pairs(_chord(emb), jnp.asarray(LABELS), pos_margin=1.2, neg_margin=1.3)
    assert ref_pos.any() and ref_neg.any()
    np.testing.assert_array_equal(np.asarray(pos), ref_pos)
    np.testing.assert_array_equal(np.asarray(neg), ref_neg)


def test_hdc_miner_matches_pml_up_to_ties():
    """(i, j) and (j, i) have the same distance, so the k-th largest can be a tie that torch.topk breaks
    arbitrarily: the selections have the same size and differ only at the boundary value."""
    emb = _emb(2)
    d = np.asarray(_chord(emb))
    ref = _dense_pairs(_run(pml_miners.HDCMiner(filter_percentage=0.3), emb))
    ours = mining.hdc_pairs(_chord(emb), jnp.asarray(LABELS), filter_percentage=0.3)
    for kind, mine, theirs, mask in zip(("pos", "neg"), ours, ref, mining.pair_masks(jnp.asarray(LABELS)),
                                        strict=True):
        mine, mask = np.asarray(mine), np.asarray(mask)
        assert mine.sum() == theirs.sum() == np.ceil(0.3 * mask.sum())
        differ = mine != theirs
        boundary = d[mine].min() if kind == "pos" else d[mine].max()  # farthest positives, nearest negatives
        np.testing.assert_allclose(d[differ], boundary, rtol=0, atol=1e-6)


STRATEGIES = [("easy", "semihard"), ("hard", "hard"), ("semihard", "easy"), ("all", "hard"), ("easy", "all"),
              ("hard", "easy")]


@pytest.mark.parametrize("pos_strategy,neg_strategy", STRATEGIES)
def test_batch_easy_hard_miner_matches_pml(pos_strategy, neg_strategy):
    emb = _emb(3)
    kw = dict(pos_strategy=pos_strategy, neg_strategy=neg_strategy)
    ref_pos, ref_neg = _dense_pairs(_run(pml_miners.BatchEasyHardMiner(**kw), emb))
    pos, neg = mining.batch_easy_hard_pairs(_chord(emb), jnp.asarray(LABELS), **kw)
    assert ref_pos.any() and ref_neg.any()
    np.testing.assert_array_equal(np.asarray(pos), ref_pos)
    np.testing.assert_array_equal(np.asarray(neg), ref_neg)


def test_batch_easy_hard_allowed_range_matches_pml():
    emb = _emb(4)
    kw = dict(pos_strategy="hard", neg_strategy="hard", allowed_pos_range=(0.5, 1.3), allowed_neg_range=(1.0, 1.5))
    ref_pos, ref_neg = _dense_pairs(_run(pml_miners.BatchEasyHardMiner(**kw), emb))
    pos, neg = mining.batch_easy_hard_pairs(_chord(emb), jnp.asarray(LABELS), **kw)
    np.testing.assert_array_equal(np.asarray(pos), ref_pos)
    np.testing.assert_array_equal(np.asarray(neg), ref_neg)


def test_uniform_histogram_draws_per_bin_from_valid_pairs():
    emb = _emb(5)
    dist = _chord(emb)
    num_bins, per_bin = 4, 3
    pos_counts, neg_counts = jax.jit(lambda k: mining.uniform_histogram_pairs(
        k, dist, jnp.asarray(LABELS), num_bins=num_bins, pos_per_bin=per_bin, neg_per_bin=per_bin))(jax.random.key(0))
    pos, neg = (np.asarray(m) for m in mining.pair_masks(jnp.asarray(LABELS)))
    d = np.asarray(dist)
    for counts, mask in ((np.asarray(pos_counts), pos), (np.asarray(neg_counts), neg)):
        assert np.all(counts[~mask] == 0)
        values = d[mask]
        edges = np.linspace(values.min(), values.max(), num_bins + 1)
        bins = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, num_bins - 1)
        nonempty = {int(b) for b in bins[mask]}
        # every non-empty bin draws exactly per_bin pairs (with replacement), empty bins none
        for b in range(num_bins):
            assert counts[mask & (bins == b)].sum() == (per_bin if b in nonempty else 0)
    with pytest.raises(ValueError, match="cannot both be 'semihard'"):
        mining.batch_easy_hard_pairs(dist, jnp.asarray(LABELS), pos_strategy="semihard", neg_strategy="semihard")
