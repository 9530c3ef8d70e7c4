"""Datasets: TFDS builders, input pipelines and samplers. `load_split(cfg, split)` by name.

Datasets (`data.name`): 'digits' (scikit-learn's copy, nothing to download), 'glyphs' (characters
rendered from the typefaces bundled with matplotlib, nothing to download), and 'cub200',
'cars196', 'sop', prepared on first use from the official downloads. Each file is taken from the TFDS
manual directory (`data.manual_dir`, else <data_dir>/downloads/manual/) when it is there, else
downloaded by TFDS from its official URL (see `probdml.data.manual`):

  cub200   CUB_200_2011.tgz, or the folder CUB_200_2011/ it extracts to
           (https://data.caltech.edu/records/65de6-vzc68/files/CUB_200_2011.tgz)
  cars196  cars_annos.mat, and car_ims.tgz or the folder car_ims/ it extracts to
           (http://ai.stanford.edu/~jkrause/car196/..., known to return 404: use the manual directory)
  sop      Stanford_Online_Products.zip, or the folder Stanford_Online_Products/ it extracts to
           (ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip)

A file neither in the manual directory nor downloadable raises one ConfigError naming the expected
files, the manual directory and the download error, within seconds when offline (an unreachable host is
detected before TFDS's retries); `data.download=False` forbids downloads (the manual directory only). The image
datasets are stored as ArrayRecord files (random access by index; in this TFDS version
`builder.as_data_source()` reads them and `builder.as_dataset()` does not: pass
`file_format='tfrecord'` to the builder for a tf.data-only copy).

Builder configs (`data.builder_config`, '' = the builder's default): glyphs has 'default',
'validation', 'tiny', 'ambiguous' and 'tiny_ambiguous'; the ambiguous ones record each image's
degradation severity in [0, 1], loaded as `ArrayDataset.severity`. The other datasets have none.

Splits: 'train' and 'test' are the class-disjoint DML splits. 'train_sub' and 'val' split the
training classes for model selection without the test set: the classes of 'train' in increasing
id order, the first floor(C * (1 - val_fraction)) to 'train_sub', the rest to 'val'
(`data.val_fraction`, default 0.2, as RDML's class-wise train/validation split).

An epoch is len(split) // batch_size steps for every sampler (`sampler.steps_per_epoch`; the last
incomplete batch dropped); the configs turn epochs into steps with it.
"""

from __future__ import annotations

import math
import os

import ml_collections
import numpy as np

from probdml import writers
from probdml.data import preprocess
from probdml.data.pipeline import ArrayDataset, ImageDataset, RecordSource, option
from probdml.errors import ConfigError, unknown_choice

DATASET_NAMES = ("digits", "glyphs", "cub200", "cars196", "sop")
SPLITS = ("train", "test", "train_sub", "val")
IN_MEMORY = ("digits", "glyphs")  # small grayscale datasets held in memory as uint8 arrays
DEFAULT_VAL_FRACTION = 0.2


def _builders() -> dict:
    from probdml.data.cars196 import Cars196
    from probdml.data.cub200 import Cub200
    from probdml.data.digits import Digits
    from probdml.data.glyphs import Glyphs
    from probdml.data.sop import Sop

    return {"digits": Digits, "glyphs": Glyphs, "cub200": Cub200, "cars196": Cars196, "sop": Sop}


def data_dir(data_cfg: ml_collections.ConfigDict) -> str:
    """The TFDS data directory: `data_cfg.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    path = data_cfg.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(path)


def manual_dir(data_cfg: ml_collections.ConfigDict) -> str | None:
    """`data_cfg.manual_dir` if set (user-expanded), else None: TFDS's <data_dir>/downloads/manual."""
    path = data_cfg.get("manual_dir")
    return os.path.expanduser(path) if path else None


def check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise unknown_choice("dataset", name, DATASET_NAMES)


def builder_config_names(name: str) -> tuple[str, ...]:
    """The builder configs dataset `name` offers (empty: only its default)."""
    return tuple(c.name for c in getattr(_builders()[name], "BUILDER_CONFIGS", ()) or ())


def check_builder_config(data_cfg: ml_collections.ConfigDict) -> str:
    """`data_cfg.builder_config` ('' when absent), after checking the dataset offers it (ConfigError)."""
    check_name(data_cfg.name)
    config = data_cfg.get("builder_config", "") or ""
    if config:
        valid = builder_config_names(data_cfg.name)
        if not valid:
            raise ConfigError(
                f"dataset {data_cfg.name!r} has no builder configs, got data.builder_config={config!r}; leave it ''"
            )
        if config not in valid:
            raise unknown_choice(f"builder config of {data_cfg.name}", config, valid)
    return config


def class_split(labels: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train_sub indices, val indices) of a class-wise split: of the C classes in increasing id order,
    the first floor(C * (1 - val_fraction)) go to train_sub, the others to val. Both non-empty."""
    classes = np.unique(labels)
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_train = math.floor(len(classes) * (1.0 - val_fraction) + 1e-9)
    if not 0 < n_train < len(classes):
        raise ConfigError(
            f"val_fraction {val_fraction} of {len(classes)} classes leaves an empty train_sub or val split"
        )
    in_train = np.isin(labels, classes[:n_train])
    return np.flatnonzero(in_train), np.flatnonzero(~in_train)


def prepare(data_cfg: ml_collections.ConfigDict):
    """The TFDS builder of `data_cfg.name`, prepared on first use (from the manual directory for the
    image datasets)."""
    import tensorflow_datasets as tfds

    from probdml.data import manual

    config = check_builder_config(data_cfg)
    preprocess.tf_cpu()
    builder = _builders()[data_cfg.name](config=config or None, data_dir=data_dir(data_cfg))
    try:
        with writers.quiet_dataset_preparation(data_cfg.name, data_dir(data_cfg), data_cfg.name in IN_MEMORY), \
                manual.downloads_enabled(data_cfg.get("download", True)):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=manual_dir(data_cfg), compute_stats=tfds.download.ComputeStatsMode.SKIP
                )
            )
    except FileExistsError:  # another process sharing the data_dir finished preparing it first
        builder = _builders()[data_cfg.name](config=config or None, data_dir=data_dir(data_cfg))
    return builder


def load_split(data_cfg: ml_collections.ConfigDict, split: str) -> ArrayDataset | ImageDataset:
    """Prepare the TFDS dataset `data_cfg.name` on first use and load `split` (one of SPLITS).

    digits, glyphs: an `ArrayDataset` in memory, in the builder's index order (with `severity` for the
    ambiguous glyphs configs). Image datasets: an `ImageDataset`
    reading JPEG bytes from the TFDS ArrayRecord files by index, ordered by file name.
    """
    import tensorflow_datasets as tfds

    check_builder_config(data_cfg)
    if split not in SPLITS:
        raise ConfigError(f"dataset {data_cfg.name!r} has no split {split!r}; valid: {', '.join(SPLITS)}")
    builder = prepare(data_cfg)
    base = "test" if split == "test" else "train"
    if data_cfg.name in IN_MEMORY:
        arrays = tfds.as_numpy(builder.as_dataset(split=base, batch_size=-1, shuffle_files=False))
        order = np.argsort(arrays["index"], kind="stable")
        severity = arrays["severity"][order].astype(np.float32) if "severity" in arrays else None
        ds = ArrayDataset(images=arrays["image"][order], labels=arrays["label"][order].astype(np.int32), severity=severity)
    else:
        ds = _image_split(builder, base, int(option(data_cfg, "image_size")))
    if split in ("train_sub", "val"):
        train_idx, val_idx = class_split(ds.labels, float(data_cfg.get("val_fraction", DEFAULT_VAL_FRACTION)))
        ds = ds.take(train_idx if split == "train_sub" else val_idx)
    return ds


def _image_split(builder, split: str, image_size: int, chunk: int = 512) -> ImageDataset:
    """The split as an ImageDataset over the builder's ArrayRecord data source, ordered by file name.

    Reads every record once for the labels and file names (the images are not decoded)."""
    import tensorflow_datasets as tfds

    records = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    labels, names = [], []
    for start in range(0, len(records), chunk):
        for r in records.__getitems__(list(range(start, min(start + chunk, len(records))))):
            labels.append(int(r["label"]))
            names.append(r["image/filename"].decode("utf-8"))
    names = np.asarray(names, dtype=object)
    order = np.argsort(names, kind="stable")
    return ImageDataset(
        source=RecordSource(records, order),
        labels=np.asarray(labels, np.int32)[order],
        filenames=names[order],
        image_size=image_size,
    )
