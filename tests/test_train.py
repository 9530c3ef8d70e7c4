"""End-to-end training on digits: it learns, it is reproducible, and it resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from probdml import train
from probdml.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _cli(workdir, data_dir, *extra):
    return [
        sys.executable, "-m", "probdml.main", "--config=configs/digits.py", f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}", "--config.num_steps=60", "--config.checkpoint_every=10",
        "--config.eval_every=30", "--config.log_every=10", "--config.model.hidden=32",
        "--config.model.widths=(8,16)", "--config.model.embed_dim=16", *extra,
    ]


def _env():
    return {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def uninterrupted_cli_metrics(digits_data_dir, tmp_path_factory):
    """(workdir, final metrics) of the small CLI run without interruption (shared by the kill tests)."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    ref = subprocess.run(_cli(workdir, digits_data_dir), cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    with open(workdir / "final_metrics.json") as f:
        return workdir, json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_cli_run_resumes_to_the_same_final_metrics(digits_data_dir, uninterrupted_cli_metrics, tmp_path, sig):
    work = tmp_path / "killed"
    proc = subprocess.Popen(_cli(work, digits_data_dir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts = work / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.isdigit() and int(p) >= 20 for p in os.listdir(ckpts)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    if sig == signal.SIGTERM:
        assert "SIGTERM: saved a checkpoint" in out
    again = subprocess.run(_cli(work, digits_data_dir), cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from checkpoint at step" in again.stdout
    ref_dir, ref_metrics = uninterrupted_cli_metrics
    with open(work / "final_metrics.json") as g:
        assert json.load(g) == ref_metrics
    (step_a, params_a), (step_b, params_b) = _params(str(ref_dir)), _params(str(work))
    assert step_a == step_b == 60
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(x, y)
