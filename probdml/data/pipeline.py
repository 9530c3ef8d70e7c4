"""Datasets, batching and input pipelines.

Two kinds of split, one interface: `ArrayDataset` holds decoded pixels in memory (digits);
`ImageDataset` reads encoded JPEGs by index (CUB-200-2011, Cars196, SOP) and decodes and augments
them in a tf.data pipeline on the CPU. `train_batches` and `eval_batches` accept both.

Data config fields (`data_cfg`; defaults in `IMAGE_DEFAULTS` apply to image datasets when absent):
  batch_size         global batch size (all processes together)
  sampler            'random' | 'm_per_class' | 'class_random' (see `sampler`)
  samples_per_class  m of the class-balanced samplers
  mean, std          normalization, per channel (tuples) or scalars
  image_size         output side of the train and eval crops (224)
  resize_size        eval: shorter side before the center crop (256)
  crop_scale         train: area fraction range of the random resized crop ((0.08, 1.0))
  crop_ratio         train: aspect ratio range of the random resized crop ((3/4, 4/3))
  hflip              train: random horizontal flips (True)
  prefetch           batches prepared ahead of the consumer (2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from probdml.data import preprocess, sampler

SAMPLERS = ("random", "m_per_class", "class_random")
IMAGE_DEFAULTS = {
    "image_size": 224,
    "resize_size": 256,
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "hflip": True,
    "mean": preprocess.IMAGENET_MEAN,
    "std": preprocess.IMAGENET_STD,
    "prefetch": 2,
}


class _LabelledSplit:
    """What every split offers through its `labels` int32 [N] (original class ids)."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(np.unique(self.labels))

    def contiguous_labels(self) -> np.ndarray:
        """Labels remapped to 0..num_classes-1 in sorted class-id order (for proxies)."""
        return np.unique(self.labels, return_inverse=True)[1].astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ArrayDataset(_LabelledSplit):
    """A split held in memory: images uint8 [N, H, W, C], labels int32 [N] (original class ids), and
    for the ambiguous glyphs configs each image's degradation severity float32 [N] in [0, 1] (else None)."""

    images: np.ndarray
    labels: np.ndarray
    severity: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image of the batches the pipelines deliver."""
        return tuple(self.images.shape[1:])

    def take(self, indices: np.ndarray) -> ArrayDataset:
        """The examples at `indices`, in that order."""
        severity = None if self.severity is None else self.severity[indices]
        return ArrayDataset(images=self.images[indices], labels=self.labels[indices], severity=severity)


@dataclasses.dataclass(frozen=True)
class ImageDataset(_LabelledSplit):
    """A split of encoded JPEG images read by index.

    `source[i]` is the JPEG bytes of example i (any random-access sequence: a list, or the TFDS
    ArrayRecord data source wrapper `RecordSource`); labels int32 [N] are the original class ids;
    filenames [N] the image paths in the official archive; `image_size` the side of the square
    crops the pipelines deliver.
    """

    source: Sequence[bytes]
    labels: np.ndarray
    filenames: np.ndarray
    image_size: int = IMAGE_DEFAULTS["image_size"]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image of the batches the pipelines deliver: (image_size, image_size, 3)."""
        return (self.image_size, self.image_size, 3)

    def encoded(self, indices: Sequence[int]) -> list[bytes]:
        """The JPEG bytes of the examples at `indices` (one batched read when the source has one)."""
        indices = [int(i) for i in indices]
        getitems = getattr(self.source, "__getitems__", None)
        if getitems is not None:
            return list(getitems(indices))
        return [self.source[i] for i in indices]

    def take(self, indices: np.ndarray) -> ImageDataset:
        """The examples at `indices`, in that order (reads stay lazy)."""
        indices = np.asarray(indices, np.int64)
        return dataclasses.replace(
            self, source=_Subset(self.source, indices), labels=self.labels[indices], filenames=self.filenames[indices]
        )


@dataclasses.dataclass(frozen=True)
class _Subset:
    """source[indices[i]] as a random-access sequence."""

    source: Sequence[bytes]
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> bytes:
        return self.source[int(self.indices[i])]

    def __getitems__(self, keys: Sequence[int]) -> list[bytes]:
        inner = [int(self.indices[k]) for k in keys]
        getitems = getattr(self.source, "__getitems__", None)
        return list(getitems(inner)) if getitems is not None else [self.source[i] for i in inner]


@dataclasses.dataclass(frozen=True)
class RecordSource:
    """The 'image' bytes of a TFDS ArrayRecord data source (images not decoded), reindexed by `order`."""

    records: Any
    order: np.ndarray

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> bytes:
        return self.records[int(self.order[i])]["image"]

    def __getitems__(self, keys: Sequence[int]) -> list[bytes]:
        return [r["image"] for r in self.records.__getitems__([int(self.order[k]) for k in keys])]


Dataset = ArrayDataset | ImageDataset


def normalize(images: np.ndarray, mean: float | tuple, std: float | tuple) -> np.ndarray:
    """float32 (images / 255 - mean) / std, per channel when mean/std are tuples."""
    x = images.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def option(data_cfg: ml_collections.ConfigDict, name: str) -> Any:
    """data_cfg.<name>, or its `IMAGE_DEFAULTS` value when the config does not set it."""
    return data_cfg.get(name, IMAGE_DEFAULTS[name])


def batch_indices(data_cfg: ml_collections.ConfigDict, labels: np.ndarray, seed: int, step: int) -> np.ndarray:
    """Indices of global training batch `step` for the configured sampler (a pure function of seed and step)."""
    name = data_cfg.sampler
    if name == "random":
        return sampler.random_batch(len(labels), data_cfg.batch_size, seed, step)
    if name == "m_per_class":
        return sampler.m_per_class_batch(labels, data_cfg.samples_per_class, data_cfg.batch_size, seed, step)
    if name == "class_random":
        return sampler.class_random_batch(labels, data_cfg.samples_per_class, data_cfg.batch_size, seed, step)
    raise ValueError(f"unknown sampler {name!r}; valid choices: {', '.join(SAMPLERS)}")


def _local_indices(data_cfg, labels, seed, start_step, process_index, process_count) -> Iterator[tuple[int, np.ndarray]]:
    """(step, this process's rows of the global batch indices) from `start_step` on."""
    lo, hi = sampler.host_rows(data_cfg.batch_size, process_index, process_count)
    step = start_step
    while True:
        yield step, batch_indices(data_cfg, labels, seed, step)[lo:hi]
        step += 1


def train_batches(
    data_cfg: ml_collections.ConfigDict,
    ds: Dataset,
    seed: int,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches {'image': float32 [b, H, W, C], 'label': int32 [b]} for steps start_step, start_step+1, ...

    b = batch_size / process_count: process `process_index` gets rows [process_index * b, (process_index + 1) * b)
    of the global batch of each step. Labels are contiguous (0..num_classes-1). Every batch is a pure
    function of (data_cfg, ds, seed, step): the indices come from `batch_indices`, the augmentation of
    row r of the global batch from `preprocess.example_key(seed, step, r)`.
    """
    labels = ds.contiguous_labels()
    if isinstance(ds, ImageDataset):
        yield from _image_train_batches(data_cfg, ds, labels, seed, start_step, process_index, process_count)
        return
    for _, idx in _local_indices(data_cfg, labels, seed, start_step, process_index, process_count):
        yield {"image": normalize(ds.images[idx], data_cfg.mean, data_cfg.std), "label": labels[idx]}


def _image_train_batches(data_cfg, ds, labels, seed, start_step, process_index, process_count):
    tf = preprocess.tf_cpu()
    lo, hi = sampler.host_rows(data_cfg.batch_size, process_index, process_count)
    size, scale, ratio = ds.image_size, tuple(option(data_cfg, "crop_scale")), tuple(option(data_cfg, "crop_ratio"))
    hflip, mean, std = bool(option(data_cfg, "hflip")), option(data_cfg, "mean"), option(data_cfg, "std")

    def steps():
        for step, idx in _local_indices(data_cfg, labels, seed, start_step, process_index, process_count):
            yield ds.encoded(idx), labels[idx], np.full(len(idx), step, np.int64), np.arange(lo, hi, dtype=np.int64)

    def prepare(encoded, label, step, position):
        key = preprocess.example_key(seed, step, position)
        image = preprocess.train_image(encoded, key, size, scale, ratio, hflip, mean, std)
        return {"image": image, "label": label}

    spec = (
        tf.TensorSpec([hi - lo], tf.string),
        tf.TensorSpec([hi - lo], tf.int32),
        tf.TensorSpec([hi - lo], tf.int64),
        tf.TensorSpec([hi - lo], tf.int64),
    )
    pipeline = (
        tf.data.Dataset.from_generator(steps, output_signature=spec)
        .unbatch()
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(hi - lo, drop_remainder=True)
        .prefetch(int(option(data_cfg, "prefetch")))
    )
    yield from pipeline.as_numpy_iterator()


def eval_batches(
    data_cfg: ml_collections.ConfigDict,
    ds: Dataset,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """Every example once, in order, as fixed-size batches {'image': float32 [b, H, W, C], 'valid': int}.

    Global batch k holds examples [k * batch_size, (k + 1) * batch_size); the last one is padded with
    zero images. Process `process_index` gets its rows [process_index * b, (process_index + 1) * b),
    b = batch_size / process_count, of which the first `valid` are real examples. Every process gets
    the same number of batches, ceil(N / batch_size).
    """
    lo, hi = sampler.host_rows(batch_size, process_index, process_count)
    n = len(ds)
    starts = range(0, n, batch_size)
    counts = [max(0, min(hi, n - s) - lo) for s in starts]
    if isinstance(ds, ImageDataset):
        images = _image_eval_images(data_cfg, ds, [np.arange(s + lo, s + lo + c) for s, c in zip(starts, counts)], hi - lo)
    else:
        images = (normalize(ds.images[s + lo : s + lo + c], data_cfg.mean, data_cfg.std) for s, c in zip(starts, counts))
    for batch, valid in zip(images, counts):
        if valid < hi - lo:
            batch = np.concatenate([batch[:valid], np.zeros((hi - lo - valid, *batch.shape[1:]), np.float32)])
        yield {"image": batch, "valid": valid}


def _image_eval_images(data_cfg, ds: ImageDataset, chunks: list[np.ndarray], local: int) -> Iterator[np.ndarray]:
    """Preprocessed eval images of each chunk of indices, as arrays [local, H, W, 3] (rows past the
    chunk's length hold a repeat of example 0, to be zeroed by the caller)."""
    tf = preprocess.tf_cpu()
    size, resize, mean, std = ds.image_size, int(option(data_cfg, "resize_size")), option(data_cfg, "mean"), option(data_cfg, "std")

    def rows():
        for idx in chunks:
            yield ds.encoded(np.concatenate([idx, np.zeros(local - len(idx), np.int64)]))

    pipeline = (
        tf.data.Dataset.from_generator(rows, output_signature=tf.TensorSpec([local], tf.string))
        .unbatch()
        .map(lambda e: preprocess.eval_image(e, size, resize, mean, std), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(local, drop_remainder=True)
        .prefetch(int(option(data_cfg, "prefetch")))
    )
    yield from pipeline.as_numpy_iterator()
