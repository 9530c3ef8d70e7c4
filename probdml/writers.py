"""Metric writers: TensorBoard event files, a JSON-lines log and a concise console line."""

from __future__ import annotations

import json
import os
import time


class MetricWriter:
    """Writes scalars to `<workdir>/events.out.tfevents.*` (TensorBoard) and `<workdir>/metrics.jsonl`.

    With `resume_step`, what an earlier start logged after that step (the restored checkpoint) is dropped
    first (`probdml.workdir.truncate_logs`), so the resumed run logs every step once."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        import tensorflow as tf

        from probdml.workdir import truncate_logs

        if resume_step is not None:
            truncate_logs(workdir, resume_step)

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
    """A timestamped console line on stdout (library INFO logs stay hidden at absl's WARNING level)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
