"""The CUB-200-2011, Cars196 and SOP builders end to end, on tiny fake copies of the official downloads."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

import fake_archives
from probdml import data
from probdml.data import manual, pipeline
from probdml.errors import ConfigError

CLASSES = {
    "cub200": {1: 3, 2: 2, 100: 2, 101: 3, 150: 2, 200: 2},
    "cars196": {1: 2, 2: 3, 98: 2, 99: 2, 150: 2, 196: 3},
    "sop": {1: 2, 2: 3, 11318: 2, 11319: 2, 20000: 3, 22634: 2},
}
SOP_SUPER = {1: 1, 2: 1, 11318: 12, 11319: 3, 20000: 7, 22634: 12}
# Largest class id of the DML train split (official numbering).
LAST_TRAIN_CLASS = {"cub200": 100, "cars196": 98, "sop": 11318}
NUM_CLASSES = {"cub200": 200, "cars196": 196, "sop": 22634}
ARCHIVES = {
    "cub200": ["CUB_200_2011.tgz"],
    "cars196": ["cars_annos.mat", "car_ims.tgz"],
    "sop": ["Stanford_Online_Products.zip"],
}
# The official URLs, written out here rather than read from the builders.
URLS = {
    "cub200": ["https://data.caltech.edu/records/65de6-vzc68/files/CUB_200_2011.tgz"],
    "cars196": [
        "http://ai.stanford.edu/~jkrause/car196/cars_annos.mat",
        "http://ai.stanford.edu/~jkrause/car196/car_ims.tgz",
    ],
    "sop": ["ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip"],
}


REAL_UNREACHABLE = manual.unreachable


class FakeServer:
    """Stands in for the network in `tfds.download.DownloadManager.download`: serves the files of
    `files` ({url: path}), raises TFDS's DownloadError (HTTP 404) for any other URL, and records
    every URL asked for."""

    def __init__(self, files: dict[str, str] | None = None):
        self.files = dict(files or {})
        self.requested: list[str] = []

    def download(self, url):
        self.requested.append(url)
        if url not in self.files:
            raise tfds.download.DownloadError(f"Failed to get url {url}. HTTP code: 404.")
        return self.files[url]


@pytest.fixture(autouse=True)
def server(monkeypatch) -> FakeServer:
    """No test reaches the network: every TFDS download goes to a FakeServer (empty unless filled), whose
    hosts are all reachable."""
    fake = FakeServer()
    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake.download)
    monkeypatch.setattr(manual, "unreachable", lambda url, timeout=5.0: None)
    return fake


def _write(name: str, manual_dir: str, archive: bool) -> list[fake_archives.FakeImage]:
    if name == "cub200":
        return fake_archives.write_cub200(manual_dir, CLASSES[name], archive)
    if name == "cars196":
        return fake_archives.write_cars196(manual_dir, CLASSES[name], archive)
    return fake_archives.write_sop(manual_dir, CLASSES[name], SOP_SUPER, archive)


def _cfg(name: str, root, **kw) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {
            "name": name,
            "data_dir": str(root / "tfds"),
            "manual_dir": str(root / "manual"),
            "batch_size": 4,
            "sampler": "m_per_class",
            "samples_per_class": 2,
            "image_size": 32,
            "resize_size": 36,
        }
    )
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """{name: (config, fake images)}, each dataset prepared once from its official archive layout."""
    out = {}
    for name in CLASSES:
        root = tmp_path_factory.mktemp(name)
        images = _write(name, str(root / "manual"), archive=True)
        out[name] = (_cfg(name, root), images)
    return out


@pytest.mark.parametrize("name", list(CLASSES))
def test_splits_follow_the_dml_protocol(prepared, name):
    cfg, images = prepared[name]
    train, test = data.load_split(cfg, "train"), data.load_split(cfg, "test")
    for split, ds in (("train", train), ("test", test)):
        expected = sorted((im.path, im.class_id - 1) for im in images if im.split == split)
        assert len(ds) == len(expected)
        assert list(ds.filenames) == [p for p, _ in expected]
        np.testing.assert_array_equal(ds.labels, [label for _, label in expected])
        assert ds.image_shape == (32, 32, 3)
    assert len(train) + len(test) == sum(CLASSES[name].values())
    assert not set(train.labels) & set(test.labels)
    assert train.labels.max() < LAST_TRAIN_CLASS[name] <= test.labels.min()
    assert test.labels.max() < NUM_CLASSES[name]
    np.testing.assert_array_equal(train.contiguous_labels(), np.unique(train.labels, return_inverse=True)[1])


@pytest.mark.parametrize("name", list(CLASSES))
def test_stored_images_are_rgb_decodable_jpegs_of_the_original_size(prepared, name):
    cfg, images = prepared[name]
    builder = data.prepare(cfg)
    sizes = {im.path: (im.height, im.width) for im in images}
    seen = 0
    for split in ("train", "test"):
        for ex in builder.as_data_source(split):
            path = ex["image/filename"].decode()
            assert ex["image"].shape == (*sizes[path], 3) and ex["image"].dtype == np.uint8
            seen += 1
        source = data.load_split(cfg, split).source
        for encoded in source.__getitems__(list(range(len(source)))):
            assert encoded[:2] == b"\xff\xd8"  # JPEG start-of-image: PNG and CMYK inputs re-encoded
    assert seen == len(images)


def test_converted_images_keep_their_pixels(prepared):
    """The CMYK JPEG (Cars) and the PNG (SOP) are re-encoded as RGB JPEGs close to the originals."""
    for name, path in (("cars196", "car_ims/000002.jpg"), ("sop", None)):
        cfg, images = prepared[name]
        target = path or images[1].path  # SOP: the second image written is the PNG
        split = next(im.split for im in images if im.path == target)
        ds = data.load_split(cfg, split)
        stored = ds.source[int(np.flatnonzero(ds.filenames == target)[0])]
        manual = cfg.manual_dir
        if name == "cars196":
            with tarfile.open(os.path.join(manual, "car_ims.tgz")) as tar:
                original = tar.extractfile(target).read()
        else:
            with zipfile.ZipFile(os.path.join(manual, "Stanford_Online_Products.zip")) as z:
                original = z.read(target)
        a = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"), np.float64)
        b = np.asarray(Image.open(io.BytesIO(original)).convert("RGB"), np.float64)
        assert a.shape == b.shape and np.mean(np.abs(a - b)) < 4.0


def test_cars_bboxes_and_sop_super_classes(prepared):
    cfg, images = prepared["cars196"]
    by_path = {im.path: im for im in images}
    builder = data.prepare(cfg)
    for ex in builder.as_data_source("train"):
        im = by_path[ex["image/filename"].decode()]
        x1, y1, x2, y2 = im.bbox
        expected = [(y1 - 1) / im.height, (x1 - 1) / im.width, y2 / im.height, x2 / im.width]
        np.testing.assert_allclose(ex["bbox"], expected, rtol=1e-6)

    cfg, images = prepared["sop"]
    builder = data.prepare(cfg)
    for split in ("train", "test"):
        for ex in builder.as_data_source(split):
            assert ex["super_class"] == SOP_SUPER[int(ex["label"]) + 1] - 1


@pytest.mark.parametrize("name", list(CLASSES))
def test_extracted_folders_give_the_same_dataset(tmp_path, name):
    images = _write(name, str(tmp_path / "manual"), archive=False)
    assert not any(f.endswith((".tgz", ".zip")) for f in os.listdir(tmp_path / "manual"))
    cfg = _cfg(name, tmp_path)
    for split in ("train", "test"):
        ds = data.load_split(cfg, split)
        expected = sorted((im.path, im.class_id - 1) for im in images if im.split == split)
        assert list(ds.filenames) == [p for p, _ in expected]
        np.testing.assert_array_equal(ds.labels, [label for _, label in expected])


@pytest.mark.parametrize("name", list(CLASSES))
def test_missing_files_and_failed_download_give_one_error(tmp_path, server, name):
    """Neither in the manual directory nor downloadable: one ConfigError naming the expected files,
    the manual directory, the URL and the download error (Cars: and the known-dead URLs)."""
    cfg = _cfg(name, tmp_path)
    manual_path = str(tmp_path / "manual")
    for make_manual in (False, True):  # no manual directory at all; one without the files
        if make_manual:
            os.makedirs(manual_path)
            with open(os.path.join(manual_path, "unrelated.txt"), "w") as f:
                f.write("not the dataset")
        with pytest.raises(ConfigError) as info:
            data.load_split(cfg, "train")
        message = str(info.value)
        assert message.startswith(f"{name}: {ARCHIVES[name][0]}")
        assert all(archive in message for archive in ARCHIVES[name])
        assert (
            f"not found in the TFDS manual directory {manual_path}, and the download from {URLS[name][0]} failed"
        ) in message
        assert f"(DownloadError: Failed to get url {URLS[name][0]}. HTTP code: 404.)" in message
        assert f"in {manual_path}, or point data.manual_dir" in message
        assert message.count("known to return HTTP 404") == (name == "cars196")
        assert "\n" not in message
        assert isinstance(info.value.__cause__, tfds.download.DownloadError)
    assert server.requested == [URLS[name][0]] * 2  # stops at the first failed download


def test_cars_needs_both_the_annotations_and_the_images(tmp_path, server):
    manual_path = tmp_path / "manual"
    fake_archives.write_cars196(str(manual_path), {1: 1}, archive=True)
    os.remove(manual_path / "cars_annos.mat")
    expected = f"cars196: cars_annos.mat not found .* the download from {URLS['cars196'][0]}"
    with pytest.raises(ConfigError, match=expected):
        data.load_split(_cfg("cars196", tmp_path), "train")
    fake_archives.write_cars196(str(manual_path), {1: 1}, archive=True)
    os.remove(manual_path / "car_ims.tgz")
    with pytest.raises(ConfigError, match=r"cars196: car_ims.tgz \(or the folder car_ims/ it extracts to\) not found"):
        data.load_split(_cfg("cars196", tmp_path), "train")
    assert server.requested == URLS["cars196"]  # only the missing file is asked for


@pytest.mark.parametrize("name", list(CLASSES))
def test_download_when_the_manual_directory_lacks_the_files(tmp_path, server, name):
    """TFDS's own download: the official archives served for the official URLs give the same dataset."""
    images = _write(name, str(tmp_path / "served"), archive=True)
    server.files = {url: tmp_path / "served" / archive for url, archive in zip(URLS[name], ARCHIVES[name])}
    cfg = _cfg(name, tmp_path)  # tmp_path / "manual" does not exist
    for split in ("train", "test"):
        ds = data.load_split(cfg, split)
        expected = sorted((im.path, im.class_id - 1) for im in images if im.split == split)
        assert list(ds.filenames) == [p for p, _ in expected]
        np.testing.assert_array_equal(ds.labels, [label for _, label in expected])
    assert server.requested == URLS[name]


def test_manual_files_take_precedence_and_cars_mixes_both(tmp_path, server):
    """cars_annos.mat from the manual directory, car_ims.tgz downloaded; the prepared data set
    downloads nothing more."""
    images = fake_archives.write_cars196(str(tmp_path / "served"), CLASSES["cars196"], archive=True)
    os.makedirs(tmp_path / "manual")
    os.rename(tmp_path / "served" / "cars_annos.mat", tmp_path / "manual" / "cars_annos.mat")
    server.files = {URLS["cars196"][1]: tmp_path / "served" / "car_ims.tgz"}
    ds = data.load_split(_cfg("cars196", tmp_path), "test")
    assert sorted(ds.filenames) == sorted(im.path for im in images if im.split == "test")
    assert server.requested == [URLS["cars196"][1]]


def test_a_web_page_in_place_of_the_archive_is_a_failed_download(tmp_path, server):
    page = tmp_path / "served" / "CUB_200_2011.tgz"
    os.makedirs(page.parent)
    page.write_text("<!doctype html><title>Please log in</title>")
    server.files = {URLS["cub200"][0]: page}
    with pytest.raises(ConfigError, match=f"failed \\(ValueError: the downloaded file {page} is not a gzip archive\\)"):
        data.load_split(_cfg("cub200", tmp_path), "train")


class FakeDownloadManager:
    """The two members of tfds.download.DownloadManager that `manual.obtain` uses."""

    def __init__(self, manual_dir, served: dict):
        self._manual, self.served, self.requested = manual_dir, served, []

    @property
    def manual_dir(self):
        if not os.path.isdir(self._manual) or not os.listdir(self._manual):
            raise AssertionError(f"Manual directory {self._manual} does not exist or is empty. Create it ...")
        return epath.Path(self._manual)

    def download(self, url):
        self.requested.append(url)
        if isinstance(self.served[url], Exception):
            raise self.served[url]
        return self.served[url]


def test_obtain_with_a_fake_download_manager(tmp_path):
    """Per file: the manual directory first (the archive or its folder), else the download."""
    served = tmp_path / "served"
    os.makedirs(served)
    (served / "b.zip").write_bytes(b"PK\x03\x04rest")
    (served / "c.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    os.makedirs(tmp_path / "manual" / "a")
    artifacts = [
        manual.Artifact(("a.tgz", "a"), "http://x/a.tgz"),
        manual.Artifact(("b.zip",), "ftp://x/b.zip"),
        manual.Artifact(("c.mat",), "http://x/c.mat", "C is gone."),
    ]
    served_files = {"ftp://x/b.zip": served / "b.zip", "http://x/c.mat": served / "c.mat"}
    dm = FakeDownloadManager(str(tmp_path / "manual"), served_files)
    paths = manual.obtain(dm, "toy", artifacts)
    assert paths == [tmp_path / "manual" / "a", served / "b.zip", served / "c.mat"]
    assert dm.requested == ["ftp://x/b.zip", "http://x/c.mat"]

    dm = FakeDownloadManager(str(tmp_path / "nowhere"), {"http://x/a.tgz": OSError("connection refused")})
    with pytest.raises(ConfigError) as info:
        manual.obtain(dm, "toy", artifacts)
    assert str(info.value) == (
        f"toy: a.tgz (or the folder a/ it extracts to) and b.zip and c.mat not found in the TFDS manual "
        f"directory {tmp_path / 'nowhere'}, and the download from http://x/a.tgz failed (OSError: connection "
        f"refused). C is gone. Put them in {tmp_path / 'nowhere'}, or point data.manual_dir "
        f"(DownloadConfig(manual_dir=...)) at the folder that holds them."
    )
    assert dm.requested == ["http://x/a.tgz"]


def test_cars_image_listed_in_the_annotations_but_missing_is_an_error(tmp_path):
    fake_archives.write_cars196(str(tmp_path / "manual"), {1: 3}, archive=True)
    archive = tmp_path / "manual" / "car_ims.tgz"
    with tarfile.open(archive) as tar:
        kept = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name != "car_ims/000003.jpg"}
    with tarfile.open(archive, "w:gz") as tar:
        for member, payload in kept.items():
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ConfigError, match="1 images listed in cars_annos.mat are missing .* car_ims/000003.jpg"):
        data.load_split(_cfg("cars196", tmp_path), "train")


def test_sop_missing_split_file_or_image_is_named(tmp_path):
    fake_archives.write_sop(str(tmp_path / "manual"), {1: 2, 11319: 2}, {1: 1, 11319: 2}, archive=True)
    archive = tmp_path / "manual" / "Stanford_Online_Products.zip"
    with zipfile.ZipFile(archive) as z:
        kept = {n: z.read(n) for n in z.namelist() if not n.endswith("Ebay_test.txt")}
    with zipfile.ZipFile(archive, "w") as z:
        for member, payload in kept.items():
            z.writestr(member, payload)
    with pytest.raises(ConfigError, match="Stanford_Online_Products/Ebay_test.txt"):
        data.load_split(_cfg("sop", tmp_path), "test")
    os.remove(archive)
    images = fake_archives.write_sop(str(tmp_path / "manual"), {1: 2, 11319: 2}, {1: 1, 11319: 2}, archive=False)
    os.remove(tmp_path / "manual" / images[0].path)
    with pytest.raises(ConfigError, match=f"{images[0].path[len('Stanford_Online_Products/'):]}, listed in Ebay_train.txt, is missing"):
        data.load_split(_cfg("sop", tmp_path), "train")


def test_validation_split_is_class_wise_inside_the_training_classes(prepared):
    cfg, images = prepared["cub200"]
    train = data.load_split(cfg, "train")
    # 3 training classes (ids 1, 2, 100): floor(3 * 0.6) = 1 class in train_sub, 2 in val.
    cfg = ml_collections.ConfigDict(cfg.to_dict() | {"val_fraction": 0.4})
    sub, val = data.load_split(cfg, "train_sub"), data.load_split(cfg, "val")
    assert set(sub.labels) == {0} and set(val.labels) == {1, 99}
    assert len(sub) + len(val) == len(train)
    assert sorted(list(sub.filenames) + list(val.filenames)) == sorted(train.filenames)
    # The reads stay aligned with the labels after subsetting.
    for ds in (sub, val):
        full = {f: train.source[i] for i, f in enumerate(train.filenames)}
        assert [ds.source[i] for i in range(len(ds))] == [full[f] for f in ds.filenames]
    with pytest.raises(ConfigError, match="val_fraction"):
        data.load_split(ml_collections.ConfigDict(cfg.to_dict() | {"val_fraction": 1.0}), "val")
    with pytest.raises(ConfigError, match="no split 'validation'; valid: train, test, train_sub, val"):
        data.load_split(cfg, "validation")


def test_pipeline_on_a_prepared_dataset(prepared):
    cfg, _ = prepared["cars196"]
    train, test = data.load_split(cfg, "train"), data.load_split(cfg, "test")
    batches = pipeline.train_batches(cfg, train, seed=1, start_step=0)
    first = [next(batches) for _ in range(3)]
    for b in first:
        assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and set(b["label"]) <= set(range(train.num_classes))
        assert b["label"][0] == b["label"][1] and b["label"][2] == b["label"][3]  # m = 2 per class
    resumed = next(pipeline.train_batches(cfg, train, seed=1, start_step=2))
    np.testing.assert_array_equal(resumed["image"], first[2]["image"])
    np.testing.assert_array_equal(resumed["label"], first[2]["label"])
    evals = list(pipeline.eval_batches(cfg, test, batch_size=4))
    assert [e["valid"] for e in evals] == [4, 3]  # 7 test images
    assert all(e["image"].shape == (4, 32, 32, 3) for e in evals)
    assert np.all(evals[-1]["image"][3] == 0)


@pytest.mark.parametrize("download", [True, False])
def test_offline_fails_within_seconds_with_the_same_message(tmp_path, server, monkeypatch, download):
    """An unreachable host (a closed local port) or data.download=False: the one-line error at once, no
    download attempted (TFDS alone retries for minutes)."""
    import time

    monkeypatch.setattr(manual, "unreachable", REAL_UNREACHABLE)
    from probdml.data import cub200

    url = "http://127.0.0.1:9/CUB_200_2011.tgz"
    monkeypatch.setattr(cub200, "ARTIFACTS", (manual.Artifact(cub200.ARTIFACTS[0].names, url),))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        data.load_split(_cfg("cub200", tmp_path, download=download), "train")
    assert time.perf_counter() - t0 < 30
    message = str(info.value)
    assert f"not found in the TFDS manual directory {tmp_path / 'manual'}, and the download from {url} failed" in message
    if download:
        assert "(ConnectionError: unreachable: cannot connect to 127.0.0.1:9" in message
    else:
        assert "(DownloadDisabledError: downloads are disabled by data.download=False)" in message
    assert server.requested == []
    assert REAL_UNREACHABLE("file:///tmp/x.tgz") is None
