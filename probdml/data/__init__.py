"""Datasets: TFDS builders, in-memory pipelines and samplers. `load_split(cfg, split)` by name."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from probdml.data.pipeline import ArrayDataset
from probdml.errors import ConfigError, unknown_choice


def _builders() -> dict:
    from probdml.data.digits import Digits
    from probdml.data.glyphs import Glyphs

    return {"digits": Digits, "glyphs": Glyphs}


DATASET_NAMES = ("digits", "glyphs")


def data_dir(data_cfg: ml_collections.ConfigDict) -> str:
    """The TFDS data directory: `data_cfg.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    path = data_cfg.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(path)


def check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise unknown_choice("dataset", name, DATASET_NAMES)


def load_split(data_cfg: ml_collections.ConfigDict, split: str) -> ArrayDataset:
    """Prepare the TFDS dataset `data_cfg.name` on first use and load `split` into memory."""
    import tensorflow_datasets as tfds

    check_name(data_cfg.name)
    builder = _builders()[data_cfg.name](data_dir=data_dir(data_cfg))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=True))
    if split not in builder.info.splits:
        raise ConfigError(f"dataset {data_cfg.name!r} has no split {split!r}; valid: {', '.join(builder.info.splits)}")
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    order = np.argsort(arrays["index"], kind="stable") if "index" in arrays else slice(None)
    return ArrayDataset(images=arrays["image"][order], labels=arrays["label"][order].astype(np.int32))
