"""Shared fixtures: one prepared digits TFDS directory per test session, a tiny training config."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One XLA compilation cache for the session, shared with every subprocess the tests start (CLI runs,
# notebook kernels, the multi-process test): the same small programs are compiled once, not per process.
# Set before JAX is imported; a cache the caller configured is left alone.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="probdml-test-xla-cache-")
    atexit.register(shutil.rmtree, _CACHE, True)
    os.environ.update({
        "JAX_COMPILATION_CACHE_DIR": _CACHE,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    })


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir with the digits dataset prepared once for the whole session."""
    from probdml.data.digits import Digits

    path = str(tmp_path_factory.mktemp("tfds"))
    Digits(data_dir=path).download_and_prepare()
    return path


@pytest.fixture
def tiny_config(digits_data_dir):
    """The digits default shrunk to a few steps (seconds to run)."""
    from configs import digits

    config = digits.get_config()
    config.data.data_dir = digits_data_dir
    config.num_steps = 12
    config.log_every = 4
    config.eval_every = 6
    config.checkpoint_every = 4
    config.model.widths = (8, 16)
    config.model.hidden = 32
    config.model.embed_dim = 16
    return config
