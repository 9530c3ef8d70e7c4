"""Metric writers (TensorBoard event files, a JSON-lines log) and a clean console.

Console hygiene for a run:

- `log` writes timestamped lines through tqdm's writer, so they never land on a progress bar's line.
- `run_logging(workdir)` (a context manager around a run; the CLI uses it) summarises long warnings,
  from `warnings.warn` or from Python/absl logging (orbax and TensorStore can dump a 60-line
  specification), in one console line and writes their full text to `<workdir>/warnings.log`.
- `quiet_dataset_preparation(name, data_dir, embedded)` (around a TFDS `download_and_prepare`) silences TFDS's
  "Downloading and preparing dataset Unknown size ..." lines for the datasets that ship with probdml
  and its progress bars (whose cursor escapes litter a log file) when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import jax

WARNINGS_LOG = "warnings.log"
# A warning longer than this (characters, or more than one line) is summarised on the console.
MAX_WARNING_CHARS = 240


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


def log(message: str, file=None) -> None:
    """A timestamped console line on stdout (or `file`), written with `tqdm.write` so that an active
    progress bar is cleared first and redrawn below the line. Library INFO logs stay hidden at absl's
    WARNING level. In a multi-process run only process 0 prints."""
    from tqdm import tqdm

    if jax.distributed.is_initialized() and jax.process_index() != 0:
        return

    stream = sys.stdout if file is None else file
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=stream)
    stream.flush()


def summarise(text: str, limit: int = MAX_WARNING_CHARS) -> str | None:
    """The one-line summary of a long message (its first line, cut at `limit` characters), or None when
    the message is short enough to print as it is (one line of at most `limit` characters)."""
    text = text.strip()
    first = text.splitlines()[0] if text else ""
    if "\n" not in text and len(text) <= limit:
        return None
    return first if len(first) <= limit else first[: limit - 3] + "..."


class _LongMessages:
    """Writes the full text of long messages to <workdir>/warnings.log and summarises them."""

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), WARNINGS_LOG)

    def record(self, kind: str, text: str) -> str | None:
        """Appends `text` to the log file; the console line that replaces it, or None if it is short.
        If the file cannot be written (the workdir is not there), the message is not summarised."""
        short = summarise(text)
        if short is None:
            return None
        try:
            if not os.path.isdir(os.path.dirname(self.path)):
                return None
            with open(self.path, "a") as f:
                f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {kind}\n{text.rstrip()}\n\n")
        except OSError:
            return None
        return f"{kind}: {short} (full text in {self.path})"


class _LogFilter(logging.Filter):
    """A handler filter that replaces long WARNING+ records by their summary."""

    def __init__(self, sink: _LongMessages):
        super().__init__()
        self.sink = sink

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            line = self.sink.record(f"{record.levelname.lower()} from {record.name}", record.getMessage())
            if line is not None:
                record.msg, record.args = line, ()
        return True


@contextlib.contextmanager
def run_logging(workdir: str) -> Iterator[None]:
    """Within the context, long warnings (`warnings.warn`, and WARNING+ records of Python/absl logging)
    appear as one console line pointing at `<workdir>/warnings.log`, which holds their full text; short
    ones are printed as usual (through tqdm's writer). Restores the previous behaviour on exit."""
    sink = _LongMessages(workdir)
    previous = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        kind = f"{category.__name__} ({os.path.basename(filename)}:{lineno})"
        short = sink.record(kind, str(message))
        log(f"{kind}: {message}" if short is None else short, file=sys.stderr if file is None else file)

    log_filter = _LogFilter(sink)
    handlers = list(logging.getLogger().handlers)
    warnings.showwarning = showwarning
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        warnings.showwarning = previous
        for handler in handlers:
            handler.removeFilter(log_filter)


@contextlib.contextmanager
def quiet_dataset_preparation(name: str, data_dir: str, embedded: bool) -> Iterator[None]:
    """Around a TFDS `download_and_prepare` of dataset `name` into `data_dir`: for a dataset embedded in
    probdml (`embedded`), TFDS's
    download/size chatter is replaced by one line of ours (there is nothing to download, and TFDS
    cannot know the sizes); TFDS's progress bars are off for embedded datasets and whenever stderr
    is not a terminal (their cursor escapes would land in a log file as text)."""
    import tensorflow_datasets as tfds

    from tensorflow_datasets.core.utils import tqdm_utils

    bars = not embedded and sys.stderr.isatty()
    active = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(bars and active)
    captured = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(captured) if embedded else contextlib.nullcontext():
            yield
    finally:
        tfds.display_progress_bar(active)
    if embedded and captured.getvalue().strip():
        log(f"prepared the {name} dataset in {data_dir} ({time.perf_counter() - start:.0f} s, once; later runs "
            "reuse it)")


def console_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics worth a console line: retrieval, clustering, every R-AUROC and the primary rejection
    recall; the per-score rejection recalls and the severity bins go to TensorBoard and metrics.jsonl."""

    def keep(key: str) -> bool:
        split, _, rest = key.partition("/")
        name = rest if split in ("val", "test") else key
        return "/" not in name or name.startswith("r_auroc/") or (
            name.startswith("recall@1/reject") and name.count("/") == 1)

    return {k: v for k, v in metrics.items() if keep(k)}


def final_line(record: dict[str, Any]) -> str:
    """The run's closing console lines, naming the split and step of every number: 'final test@<step>'
    (the last step) and, when the run selects, 'selected test@<step> by <split/metric>=<value>'."""

    def pairs(metrics: dict[str, Any]) -> str:
        return "  ".join(f"{k}={v:.4f}" for k, v in console_metrics(metrics).items() if isinstance(v, float))

    line = f"final test@{record['step']}  {pairs(record)}"
    if "selection" in record:
        s = record["selection"]
        line += f"\nselected test@{s['step']} by {s['metric']}={s['value']:.4f}  {pairs(record['selected'])}"
    return line
