"""The glyphs TFDS builder: class rule, split, determinism and augmentation (the `tiny` config)."""

import dataclasses
import functools
import os
import unicodedata

import numpy as np
import pytest
import tensorflow_datasets as tfds

from probdml import data
from probdml.data import glyphs

NUM_TYPEFACES = 16


def _build(path):
    builder = glyphs.Glyphs(config="tiny", data_dir=str(path))
    builder.download_and_prepare()
    return builder


@functools.lru_cache(maxsize=None)
def _arrays(builder, split):
    """Every example of `split` in index order (cached: read once per builder and split)."""
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    order = np.argsort(ds["index"])
    return {k: v[order] for k, v in ds.items()}


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory):
    """The tiny config built twice, in two data directories."""
    return _build(tmp_path_factory.mktemp("a")), _build(tmp_path_factory.mktemp("b"))


@pytest.fixture(scope="module")
def reference_distances():
    """RMS distances [F, N, N] between the clean reference renderings of all candidates."""
    candidates, clean = glyphs.reference_renderings()
    x = clean.reshape(clean.shape[0], clean.shape[1], -1).astype(np.float64)
    d = np.empty((x.shape[0], x.shape[1], x.shape[1]))
    for f in range(x.shape[0]):
        sq = np.einsum("nd,nd->n", x[f], x[f])
        d[f] = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * x[f] @ x[f].T, 0, None) / x.shape[-1])
    return list(candidates), d


def test_same_version_builds_byte_identical_files(tiny_builds):
    a, b = tiny_builds
    files_a = sorted(f for f in os.listdir(a.data_dir) if ".tfrecord" in f)
    files_b = sorted(f for f in os.listdir(b.data_dir) if ".tfrecord" in f)
    assert files_a == files_b and {f.split(".tfrecord")[0] for f in files_a} == {"glyphs-train", "glyphs-test"}
    for f in files_a:
        with open(os.path.join(a.data_dir, f), "rb") as fa, open(os.path.join(b.data_dir, f), "rb") as fb:
            assert fa.read() == fb.read(), f


def test_split_is_class_disjoint_half_and_half(tiny_builds):
    builder = tiny_builds[0]
    train, test = _arrays(builder, "train"), _arrays(builder, "test")
    train_classes, test_classes = set(train["label"]), set(test["label"])
    assert len(train_classes) == len(test_classes) == 6  # 12 classes, ceil(12 / 2) for training
    assert not train_classes & test_classes
    # The documented split: the first 12 of the rng(0) permutation of all class ids, first half train.
    order = np.random.default_rng(0).permutation(len(glyphs.class_codepoints()))[:12]
    assert train_classes == set(order[:6]) and test_classes == set(order[6:])


def test_every_class_appears_once_in_every_typeface(tiny_builds):
    for split in ("train", "test"):
        ex = _arrays(tiny_builds[0], split)
        assert ex["image"].shape[1:] == (32, 32, 1) and ex["image"].dtype == np.uint8
        for label in np.unique(ex["label"]):
            faces = ex["typeface"][ex["label"] == label]
            assert sorted(faces) == list(range(NUM_TYPEFACES))  # samples_per_typeface = 1
        codepoints = np.asarray(glyphs.class_codepoints())
        np.testing.assert_array_equal(ex["codepoint"], codepoints[ex["label"]])
        assert np.all(ex["image"].max(axis=(1, 2, 3)) > 30)  # visible ink in every image
        names = tiny_builds[0].info.features["label"].names
        assert names[ex["label"][0]] == f"U+{ex['codepoint'][0]:04X}"


def test_classes_are_in_every_font_cmap_read_by_freetype():
    from matplotlib import ft2font

    codepoints = glyphs.class_codepoints()
    assert 600 <= len(codepoints) <= 730  # the 16-font cmap intersection has 730 code points
    paths = glyphs.font_paths()
    assert len(paths) == NUM_TYPEFACES
    for path in paths:
        charmap = ft2font.FT2Font(path).get_charmap()
        missing = [hex(cp) for cp in codepoints if cp not in charmap]
        assert not missing, (os.path.basename(path), missing[:5])
    scripts = {unicodedata.name(chr(cp)).split()[0] for cp in codepoints}
    assert {"LATIN", "GREEK", "CYRILLIC"} <= scripts
    for ch in "AaoO0é":  # kept (Latin first in code-point order) ...
        assert ord(ch) in codepoints
    for ch in "\u0391\u0410\u039f\u043e\u2011 ":  # ... homoglyphs, non-breaking hyphen and space dropped
        assert ord(ch) not in codepoints
    for ch in "éèêëēĕėęě":  # accents are fine-grained but distinct classes
        assert ord(ch) in codepoints


def test_no_two_classes_have_confusable_clean_renderings(reference_distances):
    candidates, d = reference_distances
    near = np.sum(d < 0.02, axis=0)  # typefaces in which a pair is (nearly) pixel-identical
    kept = [candidates.index(cp) for cp in glyphs.class_codepoints()]
    sub = near[np.ix_(kept, kept)]
    np.fill_diagonal(sub, 0)
    assert sub.max() < 8
    # Every dropped candidate is confusable with an earlier kept class (or renders empty).
    _, clean = glyphs.reference_renderings()
    for c, cp in enumerate(candidates):
        if cp in glyphs.class_codepoints():
            continue
        earlier = [k for k in kept if candidates[k] < cp]
        empty = np.any(clean[:, c].max(axis=(-2, -1)) == 0)
        assert empty or np.max(near[c, earlier]) >= 8, hex(cp)


def test_clean_layout_baseline_and_centring():
    canvas = 128
    path = glyphs.font_paths()[0]  # DejaVu Sans
    a, g, comma, quote = glyphs.render([ord("A"), ord("g"), ord(","), ord("'")], path, canvas)
    baseline = round(0.74 * canvas)
    rows = lambda im: np.flatnonzero(im.max(axis=1) > 0)
    assert abs(rows(a)[-1] - (baseline - 1)) <= 1  # capital A sits on the baseline
    assert rows(g)[-1] > baseline + 10  # g descends below it
    assert rows(comma)[0] > rows(quote)[-1]  # same-ish shapes, told apart by height
    cols = np.flatnonzero(a.max(axis=0) > 0)
    assert abs((cols[0] + cols[-1]) / 2 - canvas / 2) <= 1.5  # ink box centred
    np.testing.assert_allclose(
        glyphs.downsample(a[None], 4)[0], a.reshape(32, 4, 32, 4).mean(axis=(1, 3)) / 255, atol=1e-6
    )


def test_augmentation_is_seeded_and_identity_when_ranges_are_zero():
    masters = glyphs.render([ord("R"), ord("g")], glyphs.font_paths()[8], 128)
    rngs = lambda seed: [np.random.default_rng([seed, 82, 8]), np.random.default_rng([seed, 103, 8])]
    x1 = glyphs.augment(masters, 3, 32, rngs(0))
    x2 = glyphs.augment(masters, 3, 32, rngs(0))
    x3 = glyphs.augment(masters, 3, 32, rngs(1))
    assert x1.shape == (2, 3, 32, 32) and x1.dtype == np.uint8
    np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(x1, x3) and not np.array_equal(x1[0, 0], x1[0, 1])
    # Image i depends only on rngs[i]: augmenting 'g' alone gives the same images.
    np.testing.assert_array_equal(glyphs.augment(masters[1:], 3, 32, rngs(0)[1:])[0], x1[1])
    none = glyphs.Augmentation(
        max_scale=1.0, max_aspect=1.0, max_rotation_deg=0.0, max_shear=0.0, max_translation=0.0,
        stroke_probs=(0.0, 1.0, 0.0, 0.0), max_blur_sigma=0.0, min_contrast=1.0, max_noise_std=0.0,
    )
    y = glyphs.augment(masters, 1, 32, rngs(0), none)[:, 0] / 255.0
    clean = masters.reshape(2, 32, 4, 32, 4).mean(axis=(2, 4)) / 255.0
    rows, cols = np.arange(32)[:, None], np.arange(32)[None, :]
    for a, b in zip(y, clean):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97  # aligned: no shift, flip or rescale
        centroid = lambda im: np.array([np.sum(im * rows), np.sum(im * cols)]) / im.sum()
        np.testing.assert_allclose(centroid(a), centroid(b), atol=0.1)  # in output pixels
        np.testing.assert_allclose(a.sum(), b.sum(), rtol=0.05)  # ink preserved
    thick = dataclasses.replace(none, stroke_probs=(0.0, 0.0, 0.0, 1.0))
    thin = dataclasses.replace(none, stroke_probs=(1.0, 0.0, 0.0, 0.0))
    ink = lambda aug: glyphs.augment(masters, 1, 32, rngs(0), aug).sum(axis=(1, 2, 3))
    assert np.all(ink(thin) < ink(none) * 0.95) and np.all(ink(thick) > ink(none) * 1.2)


def test_augmentation_moves_ink_by_the_drawn_translation():
    masters = glyphs.render([ord("o")], glyphs.font_paths()[0], 128)
    shift_only = glyphs.Augmentation(
        max_scale=1.0, max_aspect=1.0, max_rotation_deg=0.0, max_shear=0.0, max_translation=3.0,
        stroke_probs=(0.0, 1.0, 0.0, 0.0), max_blur_sigma=0.0, min_contrast=1.0, max_noise_std=0.0,
    )
    moved = glyphs.augment(masters, 4, 32, [np.random.default_rng(5)], shift_only)[0] / 255.0
    # The documented draw order: stroke choice, scale, aspect, rotation, shear, then (dx, dy).
    rng = np.random.default_rng(5)
    rng.choice(4, size=4, p=[0.0, 1.0, 0.0, 0.0])
    for _ in range(4):
        rng.uniform(size=4)
    shifts = rng.uniform(-3.0, 3.0, (4, 2))
    clean = masters.reshape(32, 4, 32, 4).mean(axis=(1, 3)) / 255.0
    rows, cols = np.arange(32)[:, None], np.arange(32)[None, :]
    centroid = lambda im: np.array([np.sum(im * cols), np.sum(im * rows)]) / im.sum()  # (x, y)
    for im, (dx, dy) in zip(moved, shifts):
        np.testing.assert_allclose(centroid(im) - centroid(clean), [dx, dy], atol=0.15)


def test_split_options_and_errors():
    s = glyphs.split_classes(100, validation_fraction=0.2)
    assert len(s["train"]) == 40 and len(s["validation"]) == 10 and len(s["test"]) == 50
    assert len(set(np.concatenate(list(s.values())))) == 100
    assert "validation" not in glyphs.split_classes(100)
    with pytest.raises(ValueError, match="validation_fraction"):
        glyphs.split_classes(100, validation_fraction=1.0)
    with pytest.raises(ValueError, match="max_classes"):
        glyphs.split_classes(100, max_classes=101)


def test_registered_as_a_dataset():
    assert "glyphs" in data.DATASET_NAMES
    assert data._builders()["glyphs"] is glyphs.Glyphs


# --- The ambiguous configs: a recorded degradation severity per image --------------------------


@pytest.fixture(scope="module")
def ambiguous_builds(tmp_path_factory):
    """tiny_ambiguous built twice, in two data directories."""
    def build(path):
        builder = glyphs.Glyphs(config="tiny_ambiguous", data_dir=str(path))
        builder.download_and_prepare()
        return builder

    return build(tmp_path_factory.mktemp("amb_a")), build(tmp_path_factory.mktemp("amb_b"))


def test_ambiguous_builds_are_deterministic_and_only_they_record_severity(ambiguous_builds, tiny_builds):
    a, b = ambiguous_builds
    for split in ("train", "test"):
        x, y = _arrays(a, split), _arrays(b, split)
        assert set(x) == {"image", "label", "codepoint", "typeface", "index", "severity"}
        assert x["severity"].dtype == np.float32
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    files = sorted(f for f in os.listdir(a.data_dir) if ".tfrecord" in f)
    assert files == sorted(f for f in os.listdir(b.data_dir) if ".tfrecord" in f) and len(files) == 2
    for f in files:
        with open(os.path.join(a.data_dir, f), "rb") as fa, open(os.path.join(b.data_dir, f), "rb") as fb:
            assert fa.read() == fb.read(), f
    assert "severity" not in tiny_builds[0].info.features  # the default configs' features are unchanged


def test_ambiguous_severity_is_the_documented_uniform_draw(ambiguous_builds):
    ex = {k: np.concatenate([_arrays(ambiguous_builds[0], s)[k] for s in ("train", "test")]) for k in ("severity", "codepoint", "typeface")}
    s = ex["severity"]
    assert len(s) == 12 * NUM_TYPEFACES and np.all((s >= 0) & (s <= 1))
    # rng([seed 0, code point, typeface, stream 1]): s ~ U[0, 1) first, rounded to float32.
    expected = [np.float32(np.random.default_rng([0, int(cp), int(f), 1]).uniform()) for cp, f in zip(ex["codepoint"], ex["typeface"])]
    np.testing.assert_array_equal(s, expected)
    counts = np.histogram(s, bins=5, range=(0, 1))[0]
    assert np.all(counts >= 0.6 * len(s) / 5), counts  # every quintile of [0, 1] is populated
    from scipy import stats

    assert stats.kstest(s, "uniform").pvalue > 0.01


def test_ambiguous_split_is_the_class_disjoint_split_of_tiny(ambiguous_builds, tiny_builds):
    for split in ("train", "test"):
        amb, clean = _arrays(ambiguous_builds[0], split), _arrays(tiny_builds[0], split)
        for key in ("label", "codepoint", "typeface", "index"):
            np.testing.assert_array_equal(amb[key], clean[key])
    assert not set(_arrays(ambiguous_builds[0], "train")["label"]) & set(_arrays(ambiguous_builds[0], "test")["label"])


def test_degradation_removes_the_character_as_severity_grows(ambiguous_builds, tiny_builds):
    """Against the default config's image of the same index (same augmentation, same noise): the
    character's contrast, mean over its ink (clean > 1/2 max) minus mean over its background
    (clean < 1/10 max), relative to the clean image's, falls with s to nothing near s = 1."""
    amb = {k: np.concatenate([_arrays(ambiguous_builds[0], s)[k] for s in ("train", "test")]) for k in ("image", "severity")}
    clean = np.concatenate([_arrays(tiny_builds[0], s)["image"] for s in ("train", "test")])
    x, c, s = amb["image"][..., 0] / 255.0, clean[..., 0] / 255.0, amb["severity"].astype(np.float64)

    def contrast(images):
        top = c.max(axis=(1, 2), keepdims=True)
        ink, background = c > 0.5 * top, c < 0.1 * top
        return np.array([im[i].mean() - im[b].mean() for im, i, b in zip(images, ink, background)])

    kept = contrast(x) / contrast(c)
    from scipy import stats

    assert stats.spearmanr(s, kept).statistic < -0.9
    quintile = np.minimum((s * 5).astype(int), 4)
    means = [kept[quintile == q].mean() for q in range(5)]
    assert np.all(np.diff(means) < 0) and means[0] > 0.6 and means[4] < 0.1, means
    assert np.sum(s < 0.05) >= 3 and np.all(kept[s < 0.05] > 0.5)
    assert np.sum(s > 0.95) >= 3 and np.all(np.abs(kept[s > 0.95]) < 0.1)


def test_zero_severity_leaves_the_augmented_image_byte_for_byte():
    masters = glyphs.render([ord("R"), ord("g")], glyphs.font_paths()[8], 128)
    rngs = lambda: [np.random.default_rng([0, 82, 8]), np.random.default_rng([0, 103, 8])]
    plain = glyphs.augment(masters, 3, 32, rngs())
    zero = {"severity": np.zeros((2, 3)), "angle": np.random.default_rng(1).uniform(0, 6.3, (2, 3))}
    np.testing.assert_array_equal(glyphs.augment(masters, 3, 32, rngs(), degradation=zero), plain)
    full = dict(zero, severity=np.ones((2, 3)))
    gone = glyphs.augment(masters, 3, 32, rngs(), degradation=full, model=glyphs.Degradation(max_contrast_loss=0.0))
    noise_only = glyphs.augment(np.zeros_like(masters), 3, 32, rngs())  # same draws, no ink
    np.testing.assert_array_equal(gone, noise_only)
    with pytest.raises(ValueError, match="severities in"):
        glyphs.augment(masters, 3, 32, rngs(), degradation=dict(zero, severity=np.full((2, 3), 1.5)))


def test_occlusion_hides_the_ink_first_swept_hand_worked():
    bar = np.zeros((1, 32, 32))
    bar[0, 10:14, 4:24] = 1.0  # 4 rows x 20 columns of ink, 80 in total
    left = glyphs._occlude(bar, np.array([0.25]), np.array([0.0]))[0]  # sweep along +column
    expected = bar[0].copy()
    expected[:, 4:9] = 0.0  # the first 20 of ink: columns 4..8
    np.testing.assert_array_equal(left, expected)
    right = glyphs._occlude(bar, np.array([0.5]), np.array([np.pi]))[0]  # along -column: 14..23 go
    expected = bar[0].copy()
    expected[:, 14:24] = 0.0
    np.testing.assert_array_equal(right, expected)
    np.testing.assert_array_equal(glyphs._occlude(bar, np.array([1.0]), np.array([2.0])), 0.0)


def test_resolution_loss_hand_worked():
    r = glyphs._resolution_matrices(np.array([1.0, 2.0]), 4)
    np.testing.assert_array_equal(r[0], np.eye(4))
    # m = 2 cells of 2 pixels; pixel centres at cell coordinates -1/4, 1/4, 3/4, 5/4 (edges clamped).
    down = np.array([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    up = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(r[1], up @ down, atol=1e-15)


def test_load_split_carries_the_severity_and_checks_the_builder_config(ambiguous_builds, tiny_builds):
    import ml_collections

    from probdml.errors import ConfigError

    cfg = lambda builder, name: ml_collections.ConfigDict(
        {"name": "glyphs", "builder_config": name, "data_dir": os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir)))}
    )
    amb = cfg(ambiguous_builds[0], "tiny_ambiguous")
    train = data.load_split(amb, "train")
    expected = _arrays(ambiguous_builds[0], "train")
    np.testing.assert_array_equal(train.severity, expected["severity"])
    np.testing.assert_array_equal(train.images, expected["image"])
    sub, val = data.load_split(amb, "train_sub"), data.load_split(amb, "val")
    assert len(sub) + len(val) == len(train) and sub.severity.shape == (len(sub),)
    np.testing.assert_array_equal(np.sort(np.concatenate([sub.severity, val.severity])), np.sort(train.severity))
    assert data.load_split(cfg(tiny_builds[0], "tiny"), "test").severity is None
    with pytest.raises(ConfigError, match="unknown builder config of glyphs 'ambigous'; valid choices: ambiguous, default"):
        data.load_split(cfg(tiny_builds[0], "ambigous"), "train")
    with pytest.raises(ConfigError, match="dataset 'digits' has no builder configs"):
        data.check_builder_config(ml_collections.ConfigDict({"name": "digits", "builder_config": "tiny"}))


def test_glyphs_run_selects_on_val_and_records_both_test_results(tiny_builds, tmp_path):
    """configs/glyphs.py as shipped selects on val: a (tiny) glyphs run records the val-selected step and the
    test metrics at the final and at the selected step, and never evaluates test before the end."""
    import json

    from configs import glyphs as glyphs_config
    from probdml import train

    config = glyphs_config.get_config()
    config.data.data_dir, config.data.builder_config = tiny_builds[0].data_dir, "tiny"
    config.data.val_fraction = 0.3  # tiny's 6 training classes: floor(6 * 0.7) = 4 train_sub, 2 val
    config.data.batch_size = 16
    config.num_steps, config.eval_every, config.log_every, config.checkpoint_every = 6, 3, 3, 3
    config.model.widths, config.model.embed_dim, config.model.groups = (8, 16), 16, 4
    config.eval.clustering = False
    record = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert record["selection"]["split"] == "val" and record["selection"]["metric"] == "val/recall@1"
    assert record["selection"]["step"] in (3, 6) and (record["step"], record["split"]) == (6, "test")
    assert "recall@1" in record and "recall@1" in record["selected"]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    val = {r["step"]: r["val/recall@1"] for r in rows if "val/recall@1" in r}
    assert sorted(val) == [3, 6] and record["selection"]["value"] == max(val.values())
    assert not any(k.startswith("test/") for r in rows if r["step"] < 6 for k in r)
