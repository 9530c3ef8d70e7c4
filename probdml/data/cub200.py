"""TFDS builder for CUB-200-2011 (Wah et al., 2011) with the class-disjoint DML split.

11,788 photographs of 200 bird species. DML protocol (zero-shot retrieval): `train` = classes
1-100 (5,864 images), `test` = classes 101-200 (5,924 images); CUB's own image-level
train_test_split.txt is not used. `label` = class id - 1 (0..199), the class id being the number
that prefixes the class folder (`001.Black_footed_Albatross` -> 1), as in classes.txt.

Validation split (model selection without the test set): `probdml.data.load_split(cfg, 'train_sub')`
and `load_split(cfg, 'val')` split the 100 `train` classes by class id, the first
floor(100 * (1 - val_fraction)) to train_sub and the rest to val (`data.val_fraction`, default 0.2:
80 / 20 classes); `test` is untouched. Training length: an epoch is len(split) // batch_size steps,
whatever the sampler (`probdml.data.sampler.steps_per_epoch`; e.g. 48 steps of a batch of 120 on
`train`).

Files: CUB_200_2011.tgz (or its folder CUB_200_2011/) from the TFDS manual directory when there,
else downloaded (`probdml.data.manual.obtain`).
"""

from __future__ import annotations

import re

import tensorflow_datasets as tfds

from probdml.data import manual

TRAIN_CLASSES = range(1, 101)
TEST_CLASSES = range(101, 201)
SOURCES = ("CUB_200_2011.tgz", "CUB_200_2011")
URL = "https://data.caltech.edu/records/65de6-vzc68/files/CUB_200_2011.tgz"
ARTIFACTS = (manual.Artifact(SOURCES, URL),)
_IMAGE = re.compile(r"CUB_200_2011/images/(\d{3})\.[^/]+/[^/]+")


class Cub200(tfds.core.GeneratorBasedBuilder):
    """CUB-200-2011 from the official archive (or its extracted folder) in the manual directory, else
    downloaded from data.caltech.edu."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train = classes 1-100, test = classes 101-200."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    When the automatic download fails: download CUB_200_2011.tgz ({URL}) and put it, or the folder
    CUB_200_2011/ it extracts to (holding images/NNN.class_name/*.jpg), in the manual directory
    (default <data_dir>/downloads/manual/).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=200),
                    "image/filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        (source,) = manual.obtain(dl_manager, self.name, ARTIFACTS)
        return {
            "train": self._generate_examples(dl_manager, source, TRAIN_CLASSES),
            "test": self._generate_examples(dl_manager, source, TEST_CLASSES),
        }

    def _generate_examples(self, dl_manager, source, classes: range):
        for path, fobj in manual.iter_files(dl_manager, source):
            match = _IMAGE.fullmatch(path)
            if match is None or not manual.is_image_name(path):
                continue
            class_id = int(match[1])
            if class_id in classes:
                yield path, {"image": manual.as_jpeg(fobj.read()), "label": class_id - 1, "image/filename": path}
