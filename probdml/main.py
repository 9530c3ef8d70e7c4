"""Command-line entry point: python -m probdml.main --config=configs/<file>.py --workdir=<dir>."""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from probdml.errors import ConfigError

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str) -> None:
    print(f"probdml: error: {message}", file=sys.stderr)
    sys.exit(2)


def config_package_root(argv: list[str]) -> str | None:
    """The folder holding the `configs` folder that contains the --config file, or None.

    Config files import their siblings (`from configs import base`), so that folder goes on sys.path
    and the CLI works from any working directory, e.g. --config=/path/to/probdml/configs/digits.py."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        else:
            continue
        folder = os.path.dirname(os.path.abspath(path.split(":", 1)[0]))
        while folder != os.path.dirname(folder):
            if os.path.basename(folder) == "configs":
                return os.path.dirname(folder)
            folder = os.path.dirname(folder)
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that reports bad flags and config overrides on one line, exit code 2."""
    root = config_package_root(argv)
    if root is not None and root not in sys.path:
        sys.path.insert(0, root)
    try:
        return FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        _fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def main(argv: list[str]) -> None:
    del argv
    from probdml import train, writers

    logging.set_verbosity(logging.WARNING)
    try:
        with writers.run_logging(FLAGS.workdir):
            record = train.train_and_evaluate(_CONFIG.value, FLAGS.workdir)
    except ConfigError as e:
        _fail(str(e))
    print(train.final_line(record))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
