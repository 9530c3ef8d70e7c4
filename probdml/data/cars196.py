"""TFDS builder for Cars196 (Stanford Cars, Krause et al., 2013) with the class-disjoint DML split.

16,185 images of 196 car models. DML protocol: `train` = classes 1-98 (8,054 images), `test` =
classes 99-196 (8,131 images), classes as numbered in cars_annos.mat (`annotations.class`);
Stanford's image-level train/test flag (`annotations.test`) is not used. `label` = class - 1
(0..195); `bbox` is the annotated box as tfds.features.BBox (ymin, xmin, ymax, xmax in [0, 1],
from the 1-based inclusive pixel corners bbox_x1..bbox_y2).

Validation split (model selection without the test set): `probdml.data.load_split(cfg, 'train_sub')`
and `load_split(cfg, 'val')` split the 98 `train` classes by class id, the first
floor(98 * (1 - val_fraction)) to train_sub and the rest to val (`data.val_fraction`, default 0.2:
78 / 20 classes); `test` is untouched. Training length: an epoch is len(split) // batch_size steps,
whatever the sampler (`probdml.data.sampler.steps_per_epoch`; e.g. 67 steps of a batch of 120 on
`train`).

Files: cars_annos.mat and car_ims.tgz (or its folder car_ims/) from the TFDS manual directory when
there, else downloaded (`probdml.data.manual.obtain`).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds

from probdml.data import manual
from probdml.errors import ConfigError

TRAIN_CLASSES = range(1, 99)
TEST_CLASSES = range(99, 197)
ANNOTATIONS = "cars_annos.mat"
IMAGES = ("car_ims.tgz", "car_ims")
URL = "http://ai.stanford.edu/~jkrause/car196/"
DEAD_URLS = (
    "The original Stanford URLs of Cars196 are known to return HTTP 404 (tensorflow/datasets#4932, "
    "#5053); get car_ims.tgz and cars_annos.mat from a mirror."
)
ARTIFACTS = (
    manual.Artifact((ANNOTATIONS,), URL + ANNOTATIONS, DEAD_URLS),
    manual.Artifact(IMAGES, URL + IMAGES[0], DEAD_URLS),
)


def read_annotations(data: bytes) -> dict[str, dict]:
    """{relative_im_path: {'class': int, 'bbox': (x1, y1, x2, y2)}} from the bytes of cars_annos.mat."""
    from scipy.io import loadmat

    annos = loadmat(io.BytesIO(data), squeeze_me=True)["annotations"]
    annos = np.atleast_1d(annos)
    out = {}
    for a in annos:
        box = tuple(int(a[f"bbox_{c}"]) for c in ("x1", "y1", "x2", "y2"))
        out[str(a["relative_im_path"])] = {"class": int(a["class"]), "bbox": box}
    return out


def _bbox(box: tuple[int, int, int, int], height: int, width: int) -> tfds.features.BBox:
    """1-based inclusive pixel corners -> normalized [ymin, xmin, ymax, xmax], clipped to [0, 1]."""
    x1, y1, x2, y2 = box
    ymin, xmin, ymax, xmax = np.clip([(y1 - 1) / height, (x1 - 1) / width, y2 / height, x2 / width], 0.0, 1.0)
    return tfds.features.BBox(ymin=float(ymin), xmin=float(xmin), ymax=float(ymax), xmax=float(xmax))


# TFDS ships an image-level `cars196` builder; this one must not shadow it in tfds.builder().
class Cars196(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Cars196 from car_ims.tgz (or the extracted car_ims/) and cars_annos.mat in the manual directory,
    each downloaded from the original Stanford URL when not there (those URLs are dead: see DEAD_URLS)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train = classes 1-98, test = classes 99-196."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put cars_annos.mat and car_ims.tgz (or the folder car_ims/ it extracts to, holding
    000001.jpg ... 016185.jpg) from the Stanford Cars dataset
    (https://ai.stanford.edu/~jkrause/cars/car_dataset.html; the original links return 404,
    copies exist on mirrors) in the manual directory (default <data_dir>/downloads/manual/).
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
                    "label": tfds.features.ClassLabel(num_classes=196),
                    "bbox": tfds.features.BBoxFeature(),
                    "image/filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        annotations, images = manual.obtain(dl_manager, self.name, ARTIFACTS)
        return {
            "train": self._generate_examples(dl_manager, annotations, images, TRAIN_CLASSES),
            "test": self._generate_examples(dl_manager, annotations, images, TEST_CLASSES),
        }

    def _generate_examples(self, dl_manager, annotations, images, classes: range):
        from PIL import Image

        annos = read_annotations(annotations.read_bytes())
        wanted = {path for path, anno in annos.items() if anno["class"] in classes}
        for path, fobj in manual.iter_files(dl_manager, images):
            if path not in wanted:
                continue
            wanted.discard(path)
            anno = annos[path]
            data = manual.as_jpeg(fobj.read())
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
            yield path, {
                "image": data,
                "label": anno["class"] - 1,
                "bbox": _bbox(anno["bbox"], height, width),
                "image/filename": path,
            }
        if wanted:
            raise ConfigError(
                f"{self.name}: {len(wanted)} images listed in {ANNOTATIONS} are missing from {images}, "
                f"e.g. {min(wanted)}"
            )
