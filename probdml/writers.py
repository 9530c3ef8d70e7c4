"""Metric writers: TensorBoard event files, a JSON-lines log and a concise console line."""

from __future__ import annotations

import json
import os
import time

import jax


class MetricWriter:
    """Writes scalars to `<workdir>/events.out.tfevents.*` (TensorBoard) and `<workdir>/metrics.jsonl`."""

    def __init__(self, workdir: str):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        self._tf = tf
        self._writer = tf.summary.create_file_writer(workdir)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        with self._writer.as_default():
            for name, value in scalars.items():
                self._tf.summary.scalar(name, float(value), step=step)
        self._writer.flush()
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        self._writer.close()
        self._jsonl.close()


def format_scalars(scalars: dict[str, float]) -> str:
    """'name value' pairs with 4 significant digits, for the console."""
    return "  ".join(f"{k} {v:.4g}" for k, v in scalars.items())


def log(message: str) -> None:
    """A timestamped console line on stdout (library INFO logs stay hidden at absl's WARNING level);
    in a multi-process run only process 0 prints."""
    if jax.distributed.is_initialized() and jax.process_index() != 0:
        return
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
