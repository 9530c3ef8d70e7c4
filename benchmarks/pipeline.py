"""Throughput of the input pipelines on a prepared fake CUB-200-2011 of photo-like 500x375 JPEGs.

Prints images/s of: the training pipeline (ArrayRecord reads, random resized crop 224, flip,
normalization), the same with the JPEG bytes held in memory, the evaluation pipeline (resize 256,
center crop 224), and, as the reference, a bare tf.data pipeline that only decodes the full JPEGs
with the same parallelism; ratios are against that reference.

    python benchmarks/pipeline.py [--images 200] [--batch 64] [--batches 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import fake_archives  # noqa: E402
from probdml import data  # noqa: E402
from probdml.data import pipeline, preprocess  # noqa: E402


def rate(batches, batch_size: int, count: int, warmup: int = 3) -> float:
    """Images per second over `count` batches after `warmup` batches."""
    for _ in range(warmup):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batch_size / (time.perf_counter() - t0)


def decode_only(ds, batch_size: int):
    """Reference: every image decoded in full (no crop, no resize), same tf.data parallelism."""
    tf = preprocess.tf_cpu()
    encoded = ds.encoded(range(len(ds)))
    d = (
        tf.data.Dataset.from_tensor_slices(encoded)
        .repeat()
        .map(lambda e: tf.io.decode_jpeg(e, channels=3), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(2)
    )
    return iter(d.as_numpy_iterator())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        per_class = {c: args.images // 20 for c in range(1, 21)} | {101: 1}  # one test image: TFDS needs every split
        fake_archives.write_cub200(os.path.join(tmp, "manual"), per_class, size=(375, 500))
        cfg = ml_collections.ConfigDict(
            {
                "name": "cub200",
                "data_dir": os.path.join(tmp, "tfds"),
                "manual_dir": os.path.join(tmp, "manual"),
                "batch_size": args.batch,
                "sampler": "m_per_class",
                "samples_per_class": 4,
            }
        )
        t0 = time.perf_counter()
        ds = data.load_split(cfg, "train")
        prepare_s = time.perf_counter() - t0
        sizes = [len(b) for b in ds.encoded(range(len(ds)))]
        in_memory = pipeline.ImageDataset(
            source=ds.encoded(range(len(ds))), labels=ds.labels, filenames=ds.filenames, image_size=ds.image_size
        )

        reference = rate(decode_only(ds, args.batch), args.batch, args.batches)
        figures = {
            "train, ArrayRecord reads": rate(pipeline.train_batches(cfg, ds, 0, 0), args.batch, args.batches),
            "train, bytes in memory": rate(pipeline.train_batches(cfg, in_memory, 0, 0), args.batch, args.batches),
        }
        repeated = ds.take(np.tile(np.arange(len(ds)), args.batch * (args.batches + 3) // len(ds) + 1))
        figures["eval (resize 256, crop 224)"] = rate(pipeline.eval_batches(cfg, repeated, args.batch), args.batch, args.batches)

    if args.json:
        print(json.dumps({"reference": reference, **figures}))
        return
    print(f"{len(ds)} JPEGs 500x375, mean {np.mean(sizes) / 1024:.0f} KiB; {os.cpu_count()} CPU cores; "
          f"batch {args.batch}; prepare + load {prepare_s:.1f} s")
    print(f"{'reference: full JPEG decode only':34s} {reference:8.0f} images/s  1.00")
    for name, value in figures.items():
        print(f"{name:34s} {value:8.0f} images/s  {value / reference:.2f}")


if __name__ == "__main__":
    main()
