"""End-to-end training on digits: it learns, it is reproducible, and it resumes exactly."""

import json
import os
import signal
import time

import jax
import numpy as np
import pytest

from probdml import train
from probdml.errors import ConfigError


def _params(workdir):
    from probdml import checkpointing

    mngr = checkpointing.manager(workdir, 3)
    step = mngr.latest_step()
    restored = mngr.restore(step)
    mngr.close()
    return step, restored


def test_train_and_evaluate_writes_everything_and_is_reproducible(tiny_config, tmp_path):
    a = train.train_and_evaluate(tiny_config, str(tmp_path / "a"))
    scores = ("nn_similarity", "norm")  # the digits default has no uncertainty of its own
    uncertainty = {f"r_auroc/{s}" for s in scores} | {f"recall@1/reject{p}{t}" for p in (10, 20, 50)
                                                       for t in ("", "/nn_similarity", "/norm")}
    assert set(a) == {"step", "split", "recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision",
                      "map@r", "nmi", "ami", "f1"} | uncertainty
    assert (a["step"], a["split"]) == (12, "test")
    assert a["precision@1"] == a["recall@1"]
    assert all(0.0 <= v <= 1.0 for k, v in a.items() if k not in ("step", "split"))
    assert a["recall@1"] <= a["recall@2"] <= a["recall@4"] <= a["recall@8"]
    files = os.listdir(tmp_path / "a")
    assert any(f.startswith("events.out.tfevents") for f in files)
    # every 4 steps; no selection on digits (final step only), so no keep-best: the newest 3 remain
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints"), key=int) == ["4", "8", "12"]
    lines = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
    assert {l["step"] for l in lines if "test/recall@1" in l} == {6, 12}
    with open(tmp_path / "a" / "final_metrics.json") as f:
        assert json.load(f) == a
    b = train.train_and_evaluate(tiny_config, str(tmp_path / "b"))
    assert a == b  # bitwise: same config and seed
    sa, pa = _params(str(tmp_path / "a"))
    sb, pb = _params(str(tmp_path / "b"))
    assert sa == sb == 12
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(x, y)


def test_resume_continues_exactly(tiny_config, tmp_path):
    full = train.train_and_evaluate(tiny_config, str(tmp_path / "full"))
    tiny_config.num_steps = 8  # "interrupted" after the checkpoint at step 8
    train.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
    tiny_config.num_steps = 12  # extending a run is a config change the workdir accepts only when asked
    resumed = train.train_and_evaluate(tiny_config, str(tmp_path / "resumed"), allow_changes=("num_steps",))
    assert resumed == full
    _, pf = _params(str(tmp_path / "full"))
    _, pr = _params(str(tmp_path / "resumed"))
    for x, y in zip(jax.tree.leaves(pf), jax.tree.leaves(pr)):
        np.testing.assert_array_equal(x, y)


def test_bad_config_raises_config_error(tiny_config, tmp_path):
    tiny_config.loss.name = "nonsense"
    with pytest.raises(ConfigError, match="unknown loss 'nonsense'; valid choices: .*proxy_anchor"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="workdir parent directory does not exist"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "missing" / "w"))


def test_sigterm_and_sigint_request_a_checkpoint_then_a_second_sigint_interrupts():
    """The single-process preemption handler (the CLI kill/resume runs are in tests/test_run_integrity.py)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        before = signal.getsignal(sig)
        with train._Preemption() as pre:
            assert not pre.reached(1)
            os.kill(os.getpid(), sig)
            assert pre.reached(2) and pre.signum == sig and pre.name == sig.name
            if sig == signal.SIGINT:
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.1)
        assert signal.getsignal(sig) is before  # the previous handler is back
