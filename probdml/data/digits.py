"""TFDS builder for the UCI handwritten digits bundled with scikit-learn (nothing to download).

1,797 grayscale 8x8 images of the digits 0-9 (Alpaydin & Kaynak, UCI ML repository, the test set
of "Optical Recognition of Handwritten Digits"), pixel values 0..16 rescaled to 0..255 (x * 255 / 16,
rounded). Metric-learning split (zero-shot retrieval on unseen classes): `train` = classes 0-4,
`test` = classes 5-9 (`train+test` = every image).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TRAIN_CLASSES = tuple(range(5))
TEST_CLASSES = tuple(range(5, 10))


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [1797, 8, 8, 1] in 0..255, labels int64 [1797]) from scikit-learn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
    """UCI handwritten digits (scikit-learn copy) with the class-disjoint DML split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train = classes 0-4, test = classes 5-9."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": np.int64,
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager
        return {
            "train": self._generate_examples(TRAIN_CLASSES),
            "test": self._generate_examples(TEST_CLASSES),
        }

    def _generate_examples(self, classes: tuple[int, ...]):
        images, labels = load_raw()
        for index in np.flatnonzero(np.isin(labels, classes)):
            yield int(index), {"image": images[index], "label": int(labels[index]), "index": int(index)}
