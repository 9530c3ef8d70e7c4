"""Command-line entry point: python -m probdml.main --config=configs/<file>.py --workdir=<dir>.

A workdir is one run (`probdml.workdir`): rerunning the same command resumes it (or reports it finished);
a different config is refused unless every changed field is safe and listed in --allow_changes, e.g.
--config.num_steps=800 --allow_changes=num_steps to extend a run. SIGTERM and Ctrl-C save a checkpoint
and exit (143, 130). Bad flags and config values: one line on stderr, exit code 2, before any work.
"""

from __future__ import annotations

import os
import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

from probdml import config_checks
from probdml.errors import ConfigError

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and metrics.")
flags.DEFINE_list(
    "allow_changes", [],
    "Config fields that may differ from the run recorded in --workdir (safe ones only: "
    "num_steps (to extend), log_every, eval_every, checkpoint_every, keep_checkpoints, data paths).",
)
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str) -> None:
    print(f"probdml: error: {message}", file=sys.stderr)
    sys.exit(2)


def config_package_root(argv: list[str]) -> str | None:
    """The folder holding the `configs` folder that contains the --config file, or None.

    Config files import their siblings (`from configs import base`), so that folder goes on sys.path
    and the CLI works from any working directory, e.g. --config=/path/to/probdml/configs/digits.py."""
    path = config_checks.config_argument(argv)
    if path is None:
        return None
    folder = os.path.dirname(os.path.abspath(path.split(":", 1)[0]))
    while folder != os.path.dirname(folder):
        if os.path.basename(folder) == "configs":
            return os.path.dirname(folder)
        folder = os.path.dirname(folder)
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that reports bad flags, config files and overrides on one line, exit code 2."""
    root = config_package_root(argv)
    if root is not None and root not in sys.path:
        sys.path.insert(0, root)
    missing = config_checks.missing_config_file(argv)
    if missing:
        _fail(missing)
    try:
        return FLAGS(argv)
    except Exception as e:  # absl, ml_collections and the config file itself raise many types
        _fail(config_checks.flag_error_message(e, argv))


def _one_line_warnings() -> None:
    """probdml's own warnings (e.g. a damaged checkpoint moved aside) as one line on stderr."""
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if category.__module__.startswith("probdml"):
            return f"probdml: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def main(argv: list[str]) -> None:
    del argv
    try:
        config_checks.check_config(_CONFIG.value)
    except ConfigError as e:
        _fail(str(e))
    logging.set_verbosity(logging.WARNING)
    _one_line_warnings()
    try:
        from probdml import train, workdir, writers

        with writers.run_logging(FLAGS.workdir):
            record = train.train_and_evaluate(_CONFIG.value, FLAGS.workdir, allow_changes=FLAGS.allow_changes)
    except ConfigError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        print("probdml: interrupted (Ctrl-C) outside the training loop; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    print(workdir.final_line(record))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
