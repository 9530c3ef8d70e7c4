"""Samplers, preprocessing and the train/eval pipelines: semantics, determinism across restarts, host slices."""

from __future__ import annotations

import io
import math
import random

import ml_collections
import numpy as np
import pytest
from PIL import Image

import fake_archives
from probdml.data import pipeline, preprocess, sampler
from probdml.data.pipeline import ArrayDataset, ImageDataset

SAMPLER_NAMES = pipeline.SAMPLERS


def _tf():
    return preprocess.tf_cpu()


def _key(i: int):
    return preprocess.example_key(7, i, 0)


# ---------------------------------------------------------------- samplers


def _check_class_groups(labels, idx, m, distinct_classes):
    """Rows come in groups of m sharing a label; without replacement inside classes of >= m members."""
    groups = idx.reshape(-1, m)
    group_labels = labels[groups]
    assert np.all(group_labels == group_labels[:, :1])
    sizes = np.bincount(labels)
    for g, c in zip(groups, group_labels[:, 0]):
        if sizes[c] >= m:
            assert len(np.unique(g)) == m
    if distinct_classes:
        assert len(np.unique(group_labels[:, 0])) == len(groups)


def test_m_per_class_has_pml_semantics_and_inclusion_rates():
    """Closed form: a class is in a batch w.p. (B/m)/C; each of its n members then appears m/n times
    on average (with or without replacement). pytorch-metric-learning's MPerClassSampler obeys the
    same structure and rates."""
    import torch
    from pytorch_metric_learning.samplers import MPerClassSampler

    labels = np.repeat(np.arange(5), [2, 3, 5, 8, 8])
    m, bs, steps = 4, 8, 2000
    sizes = np.bincount(labels)
    expected = (bs / m) / len(sizes) * m / sizes[labels]  # mean appearances of each example per batch

    ours = np.stack([sampler.m_per_class_batch(labels, m, bs, seed=3, step=s) for s in range(steps)])
    torch.manual_seed(0)
    from pytorch_metric_learning.utils import common_functions as c_f

    c_f.NUMPY_RANDOM = np.random.RandomState(0)
    pml = np.asarray(list(MPerClassSampler(labels, m, batch_size=bs, length_before_new_iter=steps * bs))).reshape(steps, bs)
    for batches in (ours, pml):
        for idx in batches[:200]:
            _check_class_groups(labels, idx, m, distinct_classes=True)
        counts = np.bincount(batches.ravel(), minlength=len(labels)) / steps
        np.testing.assert_allclose(counts, expected, atol=0.06)


def test_m_per_class_rejects_impossible_batches():
    labels = np.repeat(np.arange(3), 5)
    with pytest.raises(ValueError, match="got 2 \\* 3 < 8"):
        sampler.m_per_class_batch(labels, m=2, batch_size=8, seed=0, step=0)  # 2 * 3 < 8
    with pytest.raises(ValueError, match="multiple of samples_per_class"):
        sampler.m_per_class_batch(labels, m=4, batch_size=6, seed=0, step=0)


def test_class_random_draws_classes_uniformly_with_replacement():
    """RDML class_random: 4 class draws from 2 classes must repeat a class (pigeonhole); classes are
    uniform (1/2 each), not proportional to their sizes (1/51); members are drawn with replacement."""
    labels = np.concatenate([[0], np.ones(50, np.int64)])
    m, bs, steps = 2, 8, 1000
    batches = np.stack([sampler.class_random_batch(labels, m, bs, seed=5, step=s) for s in range(steps)])
    for idx in batches[:100]:
        groups = labels[idx].reshape(-1, m)
        assert np.all(groups == groups[:, :1])
        assert len(np.unique(groups[:, 0])) < bs // m
    assert abs(np.mean(labels[batches] == 0) - 0.5) < 0.04
    pairs = batches.reshape(-1, m)
    big = pairs[labels[pairs[:, 0]] == 1]
    # With replacement: a pair repeats a member of the 50-image class w.p. 1/50 (~40 of ~2000 pairs).
    assert 10 < np.sum(big[:, 0] == big[:, 1]) < 90
    assert np.all(pairs[labels[pairs[:, 0]] == 0] == 0)  # the 1-image class: the same image twice


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_samplers_are_pure_functions_of_seed_and_step(name):
    labels = np.repeat(np.arange(6), 4)
    cfg = ml_collections.ConfigDict({"sampler": name, "batch_size": 8, "samples_per_class": 2})
    a = [pipeline.batch_indices(cfg, labels, 11, s) for s in range(6)]
    b = [pipeline.batch_indices(cfg, labels, 11, s) for s in reversed(range(6))][::-1]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, [pipeline.batch_indices(cfg, labels, 12, s) for s in range(6)]))
    assert all(x.dtype == np.int64 and x.shape == (8,) for x in a)


def test_epoch_and_host_rows():
    assert sampler.steps_per_epoch(103, 10) == 10
    assert sampler.host_rows(12, 0, 1) == (0, 12)
    assert [sampler.host_rows(12, p, 3) for p in range(3)] == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ValueError, match="multiple of process_count"):
        sampler.host_rows(10, 0, 4)
    with pytest.raises(ValueError, match="process_index 2"):
        sampler.host_rows(12, 2, 2)
    with pytest.raises(ValueError, match="batch_size 20"):
        sampler.steps_per_epoch(10, 20)


# ---------------------------------------------------------------- preprocessing


def test_tensorflow_sees_no_gpu():
    assert _tf().config.get_visible_devices("GPU") == []


def _torchvision_get_params(rng, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, transcribed with Python's random."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height, width", [(375, 500), (200, 600)])
def test_random_resized_crop_windows_follow_torchvision(height, width):
    """Every window lies inside the image with its area and aspect ratio in range (up to rounding),
    and the window statistics match torchvision's algorithm run with another generator."""
    tf, n = _tf(), 3000
    window = lambda i: preprocess.random_resized_crop_window(_key(i), height, width, (0.08, 1.0), (3 / 4, 4 / 3))
    windows = tf.function(lambda steps: tf.map_fn(window, steps, fn_output_signature=tf.int32))
    ours = windows(tf.range(n, dtype=tf.int64)).numpy().astype(np.float64)
    rng = random.Random(0)
    ref = np.array([_torchvision_get_params(rng, height, width) for _ in range(n)], np.float64)
    top, left, h, w = ours.T
    assert np.all((top >= 0) & (top + h <= height) & (left >= 0) & (left + w <= width) & (h > 0) & (w > 0))
    fitted = (h < height) | (w < width)  # the fallback (whole image or its clamped center) is exempt
    assert np.all(h * w / (height * width) >= 0.08 * 0.98)
    assert np.all((w / h)[fitted] >= 3 / 4 * 0.98) and np.all((w / h)[fitted] <= 4 / 3 * 1.02)
    for stats in (
        lambda x: x[:, 2] * x[:, 3] / (height * width),  # area fraction
        lambda x: np.log(x[:, 3] / x[:, 2]),  # log aspect ratio
        lambda x: x[:, 0] / np.maximum(height - x[:, 2], 1),  # relative vertical offset
        lambda x: x[:, 1] / np.maximum(width - x[:, 3], 1),  # relative horizontal offset
    ):
        a, b = stats(ours), stats(ref)
        assert abs(a.mean() - b.mean()) < 4 * np.sqrt((a.var() + b.var()) / n) + 1e-3


@pytest.mark.parametrize(
    "height, width, expected",
    [
        # Every attempt too tall for a 10-pixel image: central crop, ratio clamped to 4/3:
        # h = 10, w = round(10 * 4/3) = 13, left = (1000 - 13) // 2 = 493.
        (10, 1000, (0, 493, 10, 13)),
        (1000, 10, (493, 0, 13, 10)),
        (1, 1, (0, 0, 1, 1)),  # any window of a 1x1 image, attempt or fallback, is the whole image
    ],
)
def test_random_resized_crop_fallback(height, width, expected):
    for i in range(5):
        window = preprocess.random_resized_crop_window(_key(i), height, width, (0.08, 1.0), (3 / 4, 4 / 3))
        assert tuple(_tf().get_static_value(window)) == expected


@pytest.mark.parametrize(
    "height, width, expected", [(375, 500, (256, 341)), (500, 375, (341, 256)), (300, 300, (256, 256)), (257, 1000, (256, 996))]
)
def test_resize_shorter_side_truncates_the_longer(height, width, expected):
    h, w = preprocess.resize_shorter_size(height, width, 256)
    assert (int(h), int(w)) == expected


def _photo(height=375, width=500, seed=0) -> bytes:
    return fake_archives.encode(fake_archives.smooth_image(np.random.default_rng(seed), height, width))


def _normalized(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) / 255 - np.asarray(preprocess.IMAGENET_MEAN, np.float32)) / np.asarray(
        preprocess.IMAGENET_STD, np.float32
    )


def test_eval_image_matches_a_pil_reference():
    """PIL: Resize(256) -> 341 x 256 (bilinear), CenterCrop(224) at left = round(58.5) = 58, top = 16."""
    data = _photo()
    ref = Image.open(io.BytesIO(data)).convert("RGB").resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    out = np.asarray(preprocess.eval_image(data, 224, 256))
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    diff = np.abs(out - _normalized(np.asarray(ref))) * np.asarray(preprocess.IMAGENET_STD) * 255
    assert np.mean(diff) < 1.5 and np.percentile(diff, 99) < 8


def test_train_image_full_window_is_the_resized_image_or_its_mirror():
    """scale (1, 1) and ratio (4/3, 4/3) on a 375 x 500 image: w = sqrt(187500 * 4/3) = 500,
    h = 375, so the window is the whole image; the output is its resize, flipped about half the time."""
    data = _photo()
    ref = _normalized(np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.BILINEAR)))
    flips = []
    for i in range(16):
        out = np.asarray(preprocess.train_image(data, _key(i), 64, (1.0, 1.0), (4 / 3, 4 / 3)))
        straight, mirrored = np.mean(np.abs(out - ref)), np.mean(np.abs(out - ref[:, ::-1]))
        assert min(straight, mirrored) < 0.05
        flips.append(mirrored < straight)
        fixed = np.asarray(preprocess.train_image(data, _key(i), 64, (1.0, 1.0), (4 / 3, 4 / 3), hflip=False))
        assert np.mean(np.abs(fixed - ref)) < 0.05
    assert 0 < sum(flips) < 16


def test_normalization_of_a_uniform_image():
    data = fake_archives.encode(np.full((40, 60, 3), (200, 100, 50), np.uint8))
    out = np.asarray(preprocess.train_image(data, _key(0), 16))
    expected = ((np.array([200, 100, 50]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), expected, atol=3 / 255 / 0.224)


def test_grayscale_jpegs_become_three_equal_channels():
    gray = np.random.default_rng(1).integers(0, 256, (30, 40), dtype=np.uint8)
    data = fake_archives.encode(gray, mode="L")
    for out in (preprocess.train_image(data, _key(0), 16, mean=0.0, std=1.0), preprocess.eval_image(data, 16, 20, 0.0, 1.0)):
        out = np.asarray(out)
        assert out.shape == (16, 16, 3)
        np.testing.assert_array_equal(out[..., 0], out[..., 1])
        np.testing.assert_array_equal(out[..., 0], out[..., 2])


# ---------------------------------------------------------------- pipelines


def _gray_jpeg(level: int, height: int, width: int) -> bytes:
    return fake_archives.encode(np.full((height, width, 3), level, np.uint8))


@pytest.fixture(scope="module")
def image_ds() -> ImageDataset:
    """10 JPEGs in 4 classes; image i is uniformly gray at level 20 * i (its index is visible)."""
    labels = np.array([3, 3, 3, 5, 5, 8, 8, 8, 9, 9], np.int32)
    source = [_gray_jpeg(20 * i, 30 + i, 40 - i) for i in range(len(labels))]
    return ImageDataset(source=source, labels=labels, filenames=np.array([f"{i}.jpg" for i in range(10)]), image_size=24)


def _cfg(name="m_per_class", batch_size=4) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"sampler": name, "batch_size": batch_size, "samples_per_class": 2, "resize_size": 28, "mean": 0.0, "std": 1.0}
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_image_train_batches_resume_exactly_and_split_across_processes(image_ds, name):
    cfg = _cfg(name)
    full = _take(pipeline.train_batches(cfg, image_ds, seed=4, start_step=0), 4)
    resumed = _take(pipeline.train_batches(cfg, image_ds, seed=4, start_step=2), 2)
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    halves = [_take(pipeline.train_batches(cfg, image_ds, 4, 1, process_index=p, process_count=2), 1)[0] for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), full[1]["image"])
    np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), full[1]["label"])
    for b in full:
        assert b["image"].shape == (4, 24, 24, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32
        # Labels are contiguous and each image is the gray level of an example of that class.
        contiguous = image_ds.contiguous_labels()
        levels = np.round(b["image"].reshape(4, -1).mean(1) * 255 / 20).astype(int)
        np.testing.assert_array_equal(contiguous[levels], b["label"])


def test_augmentation_depends_on_the_seed_and_the_step(image_ds):
    """With the 'random' sampler and batch_size = N, steps 0 and 1 hold the same 10 images (two
    permutations): put back in index order they must differ by their crops, as must another seed."""
    cfg = _cfg("random", batch_size=10)
    photos = ImageDataset(
        source=[_photo(60, 80, seed=i) for i in range(10)], labels=image_ds.labels, filenames=image_ds.filenames, image_size=24
    )
    labels = photos.contiguous_labels()
    a, b = _take(pipeline.train_batches(cfg, photos, seed=0, start_step=0), 2)
    (c,) = _take(pipeline.train_batches(cfg, photos, seed=1, start_step=0), 1)
    in_order = lambda batch, seed, step: batch["image"][np.argsort(pipeline.batch_indices(cfg, labels, seed, step))]
    a, b, c = in_order(a, 0, 0), in_order(b, 0, 1), in_order(c, 1, 0)
    for x, y in ((a, b), (a, c)):
        assert all(np.mean(np.abs(x[i] - y[i])) > 1e-3 for i in range(10))


def test_image_eval_batches_cover_every_example_in_order(image_ds):
    cfg = _cfg()
    batches = list(pipeline.eval_batches(cfg, image_ds, batch_size=4))
    assert [b["valid"] for b in batches] == [4, 4, 2]
    images = np.concatenate([b["image"][: b["valid"]] for b in batches])
    assert images.shape == (10, 24, 24, 3)
    np.testing.assert_allclose(images.reshape(10, -1).mean(1), 20 * np.arange(10) / 255, atol=1.5 / 255)
    assert np.all(batches[-1]["image"][2:] == 0)
    parts = [list(pipeline.eval_batches(cfg, image_ds, 4, process_index=p, process_count=2)) for p in range(2)]
    assert [[b["valid"] for b in part] for part in parts] == [[2, 2, 2], [2, 2, 0]]
    for k, global_batch in enumerate(batches):
        np.testing.assert_array_equal(np.concatenate([parts[0][k]["image"], parts[1][k]["image"]]), global_batch["image"])


def test_array_dataset_batches_and_host_slices():
    rng = np.random.default_rng(0)
    ds = ArrayDataset(images=rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8), labels=np.repeat([4, 6, 9], 4).astype(np.int32))
    cfg = ml_collections.ConfigDict({"sampler": "m_per_class", "batch_size": 6, "samples_per_class": 2, "mean": 0.5, "std": 0.5})
    full = _take(pipeline.train_batches(cfg, ds, 2, 0), 3)
    idx = sampler.m_per_class_batch(ds.contiguous_labels(), 2, 6, 2, 2)
    np.testing.assert_allclose(full[2]["image"], (ds.images[idx] / 255.0 - 0.5) / 0.5, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(full[2]["label"], np.array([0, 1, 2])[np.searchsorted([4, 6, 9], ds.labels[idx])])
    parts = [next(pipeline.train_batches(cfg, ds, 2, 2, process_index=p, process_count=3)) for p in range(3)]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), full[2]["image"])
    evals = list(pipeline.eval_batches(cfg, ds, 5, process_index=0, process_count=1))
    assert [e["valid"] for e in evals] == [5, 5, 2] and np.all(evals[-1]["image"][2:] == 0)
    assert ds.image_shape == (8, 8, 1)
