"""TFDS builder for Stanford Online Products (Oh Song et al., 2016) with the DML split.

120,053 images of 22,634 products (classes) in 12 super-classes. The official split is already
class-disjoint: `train` = Ebay_train.txt (59,551 images, classes 1-11,318), `test` = Ebay_test.txt
(60,502 images, classes 11,319-22,634). `label` = class_id - 1, `super_class` = super_class_id - 1.

Validation split (model selection without the test set): `probdml.data.load_split(cfg, 'train_sub')`
and `load_split(cfg, 'val')` split the 11,318 `train` classes by class id, the first
floor(11,318 * (1 - val_fraction)) to train_sub and the rest to val (`data.val_fraction`, default 0.2:
9,054 / 2,264 classes); `test` is untouched. Training length: an epoch is len(split) // batch_size steps,
whatever the sampler (`probdml.data.sampler.steps_per_epoch`; e.g. 496 steps of a batch of 120 on
`train`).

Files: Stanford_Online_Products.zip (or its folder) from the TFDS manual directory when there, else
downloaded (`probdml.data.manual.obtain`).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Callable, Iterator

import tensorflow_datasets as tfds
from etils import epath

from probdml.data import manual
from probdml.errors import ConfigError

FOLDER = "Stanford_Online_Products"
SOURCES = (f"{FOLDER}.zip", FOLDER)
URL = f"ftp://cs.stanford.edu/cs/cvgl/{FOLDER}.zip"
ARTIFACTS = (manual.Artifact(SOURCES, URL),)
HEADER = ["image_id", "class_id", "super_class_id", "path"]
SUPER_CLASSES = (
    "bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle",
    "lamp", "mug", "sofa", "stapler", "table", "toaster",
)  # super_class_id 1..12 = the *_final folders in sorted order
NUM_CLASSES = 22634


def parse_split_file(text: str, name: str) -> list[tuple[int, int, int, str]]:
    """Rows (image_id, class_id, super_class_id, path) of an Ebay_*.txt file, header checked."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != HEADER:
        raise ConfigError(f"{name}: expected the header {' '.join(HEADER)!r}, got {' '.join(lines[0]) if lines else ''!r}")
    return [(int(i), int(c), int(s), p) for i, c, s, p in lines[1:]]


@contextlib.contextmanager
def _reader(source: epath.Path) -> Iterator[Callable[[str], bytes]]:
    """read(path relative to Stanford_Online_Products/) -> bytes, for the folder or the zip."""
    if source.is_dir():
        yield lambda rel: (source / rel).read_bytes()
    else:
        with zipfile.ZipFile(os.fspath(source)) as z:
            yield lambda rel: z.read(f"{FOLDER}/{rel}")


class Sop(tfds.core.GeneratorBasedBuilder):
    """Stanford Online Products from Stanford_Online_Products.zip (or its folder) in the manual directory,
    else downloaded from Stanford's FTP server."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train = Ebay_train.txt, test = Ebay_test.txt."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    When the automatic download fails: download Stanford_Online_Products.zip ({URL}, linked from
    https://cvgl.stanford.edu/projects/lifted_struct/) and put it, or the folder
    Stanford_Online_Products/ it extracts to (holding Ebay_train.txt, Ebay_test.txt and the
    *_final/ image folders), in the manual directory (default <data_dir>/downloads/manual/).
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
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "super_class": tfds.features.ClassLabel(names=SUPER_CLASSES),
                    "image/filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://cvgl.stanford.edu/projects/lifted_struct/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        (source,) = manual.obtain(dl_manager, self.name, ARTIFACTS)
        return {
            "train": self._generate_examples(source, "Ebay_train.txt"),
            "test": self._generate_examples(source, "Ebay_test.txt"),
        }

    def _generate_examples(self, source: epath.Path, split_file: str):
        with _reader(source) as read:
            try:
                text = read(split_file).decode("utf-8")
            except (FileNotFoundError, KeyError) as err:
                raise manual.missing_files_error(self.name, os.fspath(source), (f"{FOLDER}/{split_file}",)) from err
            for _, class_id, super_class_id, path in parse_split_file(text, split_file):
                try:
                    encoded = read(path)
                except (FileNotFoundError, KeyError) as err:
                    raise ConfigError(f"{self.name}: {path}, listed in {split_file}, is missing from {source}") from err
                yield path, {
                    "image": manual.as_jpeg(encoded),
                    "label": class_id - 1,
                    "super_class": super_class_id - 1,
                    "image/filename": f"{FOLDER}/{path}",
                }
