"""Helpers for the builders that prepare from files the user downloaded into TFDS's `manual_dir`.

The manual directory is TFDS's: `<data_dir>/downloads/manual/` unless a `manual_dir` is given
(`tfds.download.DownloadConfig(manual_dir=...)`, or `data.manual_dir` in a probdml config).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import tensorflow_datasets as tfds
from etils import epath

from probdml.errors import ConfigError


def missing_files_error(dataset: str, where: str, expected: Sequence[str]) -> ConfigError:
    """ConfigError naming the files a builder looked for and the directory it looked in."""
    return ConfigError(
        f"{dataset}: none of {', '.join(expected)} found in the TFDS manual directory {where}; "
        f"put one of them there, or point data.manual_dir (DownloadConfig(manual_dir=...)) at the "
        f"folder that holds them"
    )


def manual_root(dl_manager: tfds.download.DownloadManager, dataset: str, expected: Sequence[str]) -> epath.Path:
    """The manual directory, or a ConfigError naming `expected` when it is missing or empty."""
    try:
        return dl_manager.manual_dir
    except AssertionError as err:
        where = str(err).split(" does not exist")[0].removeprefix("Manual directory ")
        raise missing_files_error(dataset, where, expected) from err


def locate(root: epath.Path, dataset: str, candidates: Sequence[str]) -> epath.Path:
    """The first of `candidates` (file or folder names) that exists in `root`, else a ConfigError."""
    for name in candidates:
        path = root / name
        if path.exists():
            return path
    raise missing_files_error(dataset, os.fspath(root), candidates)


def iter_files(dl_manager: tfds.download.DownloadManager, source: epath.Path) -> Iterator[tuple[str, BinaryIO]]:
    """(path, file object) of every file in the folder or archive `source`.

    Paths are '/'-separated and start with the folder's name for a folder (`CUB_200_2011/images/...`),
    and are the member names for an archive, which for the official archives start with the same
    top-level folder. Folders are walked in sorted order; archives in their stored order.
    """
    if source.is_dir():
        files = [epath.Path(root) / name for root, _, names in source.walk() for name in names]
        for path in sorted(files):
            rel = path.relative_to(source.parent).as_posix()
            with path.open("rb") as f:
                yield rel, f
    else:
        yield from dl_manager.iter_archive(source)


def is_image_name(path: str, suffixes: tuple[str, ...] = (".jpg", ".jpeg")) -> bool:
    """True for image file names with one of `suffixes` (any case), excluding hidden files ('._x.jpg')."""
    base = path.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(suffixes)


def as_jpeg(data: bytes, quality: int = 95) -> bytes:
    """`data` itself when it is a baseline RGB or grayscale JPEG; otherwise the image converted to RGB
    and re-encoded as JPEG at `quality` (PNG, CMYK JPEG, palette images...), so every stored image
    can be decoded (and crop-decoded) by `tf.io.decode_jpeg(channels=3)`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            return data
        out = io.BytesIO()
        img.convert("RGB").save(out, format="JPEG", quality=quality)
        return out.getvalue()
