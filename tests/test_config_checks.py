"""Every config probe fails before any work: one line naming the field, exit 2 at the CLI, no file written."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from probdml import config_checks
from probdml.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digits(**overrides):
    from configs import digits

    config = digits.get_config()
    for path, value in overrides.items():
        *parents, leaf = path.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


# (overrides in '__' notation, the fragment the one-line message must contain)
PROBES = [
    ({"data__batch_size": 0}, "data.batch_size must be an integer >= 1, got 0"),
    ({"data__batch_size": -8}, "data.batch_size must be an integer >= 1, got -8"),
    ({"data__batch_size": 1000}, "data.batch_size 1000 exceeds the 901 training examples"),
    ({"log_every": 0}, "log_every must be an integer >= 1"),
    ({"eval_every": 0}, "eval_every must be an integer >= 1"),
    ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be an integer >= 1"),
    ({"num_steps": 0}, "num_steps must be an integer >= 1"),
    ({"model__embed_dim": 0}, "model.embed_dim must be an integer >= 1"),
    ({"model__widths": (8, 0)}, "model.widths must be a non-empty sequence of integers >= 1"),
    ({"optim__learning_rate": float("nan")}, "optim.learning_rate must be a finite number > 0, got nan"),
    ({"optim__learning_rate": float("inf")}, "optim.learning_rate must be a finite number > 0, got inf"),
    ({"optim__learning_rate": -1.0}, "optim.learning_rate must be a finite number > 0"),
    ({"optim__weight_decay": -1e-4}, "optim.weight_decay must be a finite number >= 0"),
    ({"optim__lr_mults": {"proxies": float("nan")}}, "optim.lr_mults.proxies must be a finite number >= 0"),
    ({"optim__schedule": "cosine"}, "optim.decay_steps must be an integer >= 1"),
    ({"loss__margin": float("nan")}, "loss.margin must be finite"),
    ({"loss__alpha": 0.0}, "loss.alpha must be a finite number > 0"),
    ({"data__std": 0.0}, "data.std must be a finite number > 0"),
    ({"eval__batch_size": 0}, "eval.batch_size must be an integer >= 1"),
    ({"eval__ks": (1, 2, 4, 1000)}, "eval.ks has k=1000 but the 896 test examples"),
    ({"eval__ks": ()}, "eval.ks must be a non-empty sequence"),
    ({"data__sampler": "m_per_class"}, "data.samples_per_class 4 x 5 training classes of 'digits' = 20 < 64"),
    ({"data__sampler": "class_random", "data__samples_per_class": 3}, "data.batch_size 64 must be a multiple of data.samples_per_class 3"),
    ({"data__samples_per_class": 0}, "data.samples_per_class must be an integer >= 1"),
    ({"num_devices": 3}, "data.batch_size 64 must be divisible by num_devices 3"),
    ({"distributed__enabled": True, "distributed__coordinator_address": "h:1234", "distributed__num_processes": 3},
     "data.batch_size 64 must be divisible by distributed.num_processes 3"),
    ({"distributed__enabled": True, "distributed__coordinator_address": "h:1234", "distributed__num_processes": 2,
      "distributed__process_id": 2}, "distributed.process_id must be below distributed.num_processes (2)"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
]


@pytest.mark.parametrize("overrides, fragment", PROBES, ids=[",".join(p[0]) for p in PROBES])
def test_config_probe_is_one_line_naming_the_field(overrides, fragment):
    config = _digits(**overrides)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        config_checks.check_config(config)
    assert time.perf_counter() - t0 < 10
    message = str(info.value)
    assert "\n" not in message
    assert fragment in message, message


def test_shipped_configs_pass():
    from configs import digits, digits_idml, digits_nivmf, glyphs

    for module in (digits, digits_idml, digits_nivmf, glyphs):
        config_checks.check_config(module.get_config())


def test_known_splits_match_the_loaded_digits(digits_data_dir):
    from probdml import data

    cfg = _digits(data__data_dir=digits_data_dir).data
    for split in ("train", "test"):
        ds = data.load_split(cfg, split)
        assert config_checks.KNOWN_SPLITS["digits"][split] == (len(ds), len(np.unique(ds.labels)))


def test_data_checks_on_loaded_splits():
    """The same size checks for datasets without KNOWN_SPLITS, on the loaded labels."""
    train = SimpleNamespace(labels=np.repeat(np.arange(6), 10))  # 60 examples, 6 classes
    test = SimpleNamespace(labels=np.repeat(np.arange(4), 5))  # 20 examples
    config = _digits(data__name="glyphs", data__batch_size=32, eval__ks=(1, 19))
    config_checks.check_data(config, train, test)
    config.data.sampler = "m_per_class"
    with pytest.raises(ConfigError, match=r"samples_per_class 4 x 6 training classes of 'glyphs' = 24 < 32"):
        config_checks.check_data(config, train, test)
    config.data.sampler = "random"
    config.eval.ks = (1, 20)
    with pytest.raises(ConfigError, match="eval.ks has k=20 but the 20 test examples"):
        config_checks.check_data(config, train, test)


def test_unknown_field_lists_the_valid_ones_with_a_suggestion():
    config = _digits()
    message = config_checks.unknown_field_message(config, "model.embd_dim")
    assert "valid fields: dtype, embed_dim, hidden, name, widths" in message
    assert "did you mean 'model.embed_dim'?" in message
    assert config_checks.unknown_field_message(config, "model.embed_dim") is None
    assert "the config has no field 'foo'; valid fields: checkpoint_every" in (
        config_checks.unknown_field_message(config, "foo"))


def test_train_refuses_before_creating_the_workdir(tiny_config, tmp_path):
    from probdml import train

    tiny_config.log_every = 0
    with pytest.raises(ConfigError, match="log_every"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--config=configs/digits.py", "--config.data.batch_size=0"), "data.batch_size must be an integer >= 1"),
        (("--config=configs/digits.py", "--config.foo=1"), "unknown config field 'foo'"),
        (("--config=configs/digits.py", "--config.model.embd_dim=3"), "did you mean 'model.embed_dim'?"),
        (("--config=configs/digits_idml.py:papr",), "unknown IDML variant 'papr'; valid: 'paper' (default), 'compat'"),
        (("--config=configs/no_such.py",), "config file not found: configs/no_such.py"),
    ],
)
def test_cli_probe_exit_2_one_line_no_file(tmp_path, args, fragment):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "probdml.main", *args, f"--workdir={tmp_path}/w"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("probdml: error: "), proc.stderr[-2000:]
    assert fragment in lines[0], lines[0]
    assert cpu < 10, cpu  # CPU seconds: independent of the machine's load
    assert not (tmp_path / "w").exists()
