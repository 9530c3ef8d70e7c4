"""Raw-pixel baseline on glyphs: cosine kNN retrieval on the flattened test-class images.

    python benchmarks/raw_pixel_knn.py [--config=configs/glyphs.py] [--config.data.data_dir=DIR]

Prints the time to prepare the TFDS dataset (zero when it already exists), the split sizes,
and recall@1/2/4/8 of leave-one-out cosine kNN on raw uint8 pixels (as float32) over the test
classes, i.e. what a trained embedding must beat.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", "configs/glyphs.py", "Experiment config (its data section is used).")


def main(argv: list[str]) -> None:
    del argv
    import numpy as np

    from probdml import data, metrics

    data_cfg = _CONFIG.value.data
    start = time.perf_counter()
    test = data.load_split(data_cfg, "test")
    train = data.load_split(data_cfg, "train")
    print(f"dataset {data_cfg.name}: prepared and loaded in {time.perf_counter() - start:.1f} s")
    print(
        f"train: {len(train)} images, {train.num_classes} classes; "
        f"test: {len(test)} images, {test.num_classes} classes; image shape {test.images.shape[1:]}"
    )
    pixels = test.images.reshape(len(test), -1).astype(np.float32)
    start = time.perf_counter()
    result = metrics.retrieval_metrics(pixels, test.labels, ks=tuple(_CONFIG.value.eval.ks), metric="cosine")
    print(f"raw-pixel cosine kNN on the test classes ({time.perf_counter() - start:.1f} s):")
    print("  ".join(f"{k}={v:.4f}" for k, v in result.items()))


if __name__ == "__main__":
    app.run(main)
