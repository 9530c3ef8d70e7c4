"""Console hygiene (probdml.writers): log lines through tqdm's writer, long warnings summarised with the
full text in <workdir>/warnings.log, TFDS chatter silenced for the embedded datasets."""

from __future__ import annotations

import functools
import io
import logging
import re
import warnings

import pytest

from probdml import writers


def test_log_goes_through_tqdm_and_clears_an_active_bar():
    from tqdm import tqdm

    stream = io.StringIO()
    bar = tqdm(total=10, file=stream, mininterval=0, ascii=True)
    bar.update(3)
    before = len(stream.getvalue())
    writers.log("step 3/10 loss 1.0", file=stream)
    written = stream.getvalue()[before:]
    bar.close()
    # the bar's line is blanked first, the log line gets a line of its own, then the bar is redrawn
    blank, line, redraw = written.split("\r", 3)[1:]
    assert blank.strip() == "" and len(blank) >= len("30%|###")
    assert line.endswith("] step 3/10 loss 1.0\n") and line.startswith("[")
    assert redraw.startswith(" 30%")


def test_summarise():
    assert writers.summarise("short and single") is None
    assert writers.summarise("first line\nsecond") == "first line"
    long = "x" * 500
    assert writers.summarise(long) == "x" * (writers.MAX_WARNING_CHARS - 3) + "..."


def test_run_logging_summarises_long_warnings(tmp_path, capsys):
    spec = "\n".join(f'  "kvstore": {{"path": "checkpoints/7/{i}"}},' for i in range(61))
    root = logging.getLogger()
    handler_stream = io.StringIO()
    handler = logging.StreamHandler(handler_stream)
    root.addHandler(handler)
    previous = warnings.showwarning
    try:
        with writers.run_logging(str(tmp_path)):
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("checkpoint at step 7 could not be restored (ValueError: TensorStore spec:\n" + spec)
                warnings.warn("a short warning")
            logging.getLogger("orbax.test").warning("Error opening tensorstore:\n%s", spec)
            logging.getLogger("orbax.test").warning("short record")
        assert warnings.showwarning is previous
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert "checkpoint at step 7 could not be restored" in err[0] and "warnings.log" in err[0]
    assert re.search(r"\] UserWarning \(test_writers\.py:\d+\): a short warning$", err[1]), err[1]
    records = handler_stream.getvalue().splitlines()
    assert len(records) == 2 and "warnings.log" in records[0] and records[1] == "short record"
    text = (tmp_path / writers.WARNINGS_LOG).read_text()
    assert text.count('"kvstore"') == 2 * 61


@functools.cache
def _tiny_builder_class():
    """A three-example TFDS dataset (preparing the real digits takes far longer); registered once."""
    import numpy as np
    import tensorflow_datasets as tfds

    class ProbdmlWritersTiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"x": np.int32}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(3):
                yield i, {"x": i}

    return ProbdmlWritersTiny


@pytest.mark.parametrize("embedded", [True, False])
def test_dataset_preparation_is_quiet(tmp_path, capfd, embedded):
    builder = _tiny_builder_class()(data_dir=str(tmp_path))
    capfd.readouterr()
    with writers.quiet_dataset_preparation("tiny", str(tmp_path), embedded=embedded):
        builder.download_and_prepare()
    out, err = capfd.readouterr()
    # stderr is not a terminal under pytest: no progress bars, so no cursor escapes, either way
    assert "\x1b[A" not in err and "\x1b[A" not in out and "%|" not in err
    if embedded:
        assert "Downloading and preparing" not in out and "Unknown size" not in out
        assert "prepared the tiny dataset" in out
    else:
        assert "Downloading and preparing" in out  # real downloads keep TFDS's sizes and paths
