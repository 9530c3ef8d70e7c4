"""The digits dataset split and the batch samplers."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from probdml import data
from probdml.data import sampler
from probdml.errors import ConfigError


def _cfg(data_dir, **kw):
    from configs import digits

    cfg = digits.get_config().data
    cfg.data_dir = data_dir
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_digits_split_is_class_disjoint_with_exact_counts(digits_data_dir):
    raw = load_digits()
    train = data.load_split(_cfg(digits_data_dir), "train")
    test = data.load_split(_cfg(digits_data_dir), "test")
    assert set(np.unique(train.labels)) == {0, 1, 2, 3, 4}
    assert set(np.unique(test.labels)) == {5, 6, 7, 8, 9}
    assert len(train) == int(np.sum(raw.target < 5)) and len(test) == int(np.sum(raw.target >= 5))
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    # Images are the sklearn pixels rescaled 0..16 -> 0..255, in the original order.
    expected = np.rint(raw.images[raw.target >= 5] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(test.images[..., 0], expected)
    np.testing.assert_array_equal(test.labels, raw.target[raw.target >= 5])


def test_unknown_dataset_and_split_name_the_choices(digits_data_dir):
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'.*digits"):
        data.load_split(_cfg(digits_data_dir, name="cifar"), "train")
    with pytest.raises(ConfigError, match="no split 'validation'"):
        data.load_split(_cfg(digits_data_dir), "validation")


def test_random_batches_cover_each_epoch_once_and_are_pure():
    n, bs = 50, 8
    epoch0 = np.concatenate([sampler.random_batch(n, bs, seed=3, step=s) for s in range(n // bs)])
    assert len(np.unique(epoch0)) == len(epoch0) == (n // bs) * bs
    np.testing.assert_array_equal(sampler.random_batch(n, bs, 3, 17), sampler.random_batch(n, bs, 3, 17))
    assert not np.array_equal(sampler.random_batch(n, bs, 3, 0), sampler.random_batch(n, bs, 4, 0))


def test_m_per_class_batches():
    labels = np.repeat(np.arange(6), [5, 5, 5, 5, 5, 2])
    for step in range(20):
        idx = sampler.m_per_class_batch(labels, m=4, batch_size=12, seed=0, step=step)
        groups = labels[idx].reshape(3, 4)
        assert np.all(groups == groups[:, :1])  # 4 of each class
        assert len(np.unique(groups[:, 0])) == 3  # 3 distinct classes
        for g, c in zip(idx.reshape(3, 4), groups[:, 0]):
            if c != 5:
                assert len(np.unique(g)) == 4  # without replacement when the class is big enough
    with pytest.raises(ValueError, match="multiple"):
        sampler.m_per_class_batch(labels, m=4, batch_size=10, seed=0, step=0)
