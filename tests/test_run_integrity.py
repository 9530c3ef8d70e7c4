"""Fault injection through the CLI on short digits runs: a workdir is one run, nothing lost or mixed.

One uninterrupted reference run (module fixture) is shared by every check: while it is paused, a
second process on its workdir must be refused; afterwards a rerun must report it finished and a
different config must be refused. Two interrupted runs (SIGKILL, SIGINT) then have their newest
checkpoint damaged (cut short, bits flipped) and must finish with the reference's exact final metrics,
each logged step once, and a further rerun must report them finished.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from probdml import checkpointing, workdir
from probdml.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 40


def _cli(work, data_dir, *extra):
    return [
        sys.executable, "-m", "probdml.main", "--config=configs/digits.py", f"--workdir={work}",
        f"--config.data.data_dir={data_dir}", f"--config.num_steps={NUM_STEPS}", "--config.checkpoint_every=10",
        "--config.eval_every=20", "--config.log_every=5", "--config.model.hidden=32", "--config.model.widths=(8,16)",
        "--config.model.embed_dim=16", "--config.eval.clustering=False", *extra,
    ]


def _env():
    return {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "PYTHONPATH": ROOT}


def _run(work, data_dir, *extra):
    return subprocess.run(_cli(work, data_dir, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)


def _start(work, data_dir, stderr_path):
    return subprocess.Popen(_cli(work, data_dir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=open(stderr_path, "w"), text=True)


def _read_until(proc, fragment):
    """stdout lines of `proc` up to and including the first that contains `fragment`."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if fragment in line:
            return lines
    raise AssertionError(f"{fragment!r} never printed; stdout: {''.join(lines)[-2000:]}")


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("probdml: error")]


def _metric_steps(work):
    """Counter of (step, kind) over metrics.jsonl rows: kind 'train' or 'test'."""
    rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    return Counter((r["step"], "test" if any(k.startswith("test/") for k in r) else "train") for r in rows)


def _event_steps(work):
    """Counter of (tag, step) over every TensorBoard event file of `work`, read with TensorFlow's own reader."""
    import tensorflow as tf

    seen = Counter()
    for name in os.listdir(work):
        if "tfevents" in name:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(work, name)):
                for value in event.summary.value:
                    seen[(value.tag, event.step)] += 1
    return seen


def _newest_step_dir(work):
    ckpts = os.path.join(work, "checkpoints")
    return os.path.join(ckpts, str(max(int(d) for d in os.listdir(ckpts) if d.isdigit())))


def _item_files(step_dir):
    return [os.path.join(root, f) for root, _, files in os.walk(step_dir) if root != step_dir for f in files]


def _truncate(step_dir):
    for path in _item_files(step_dir):
        if os.path.getsize(path) > 1:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def _flip_bits(step_dir):
    path = max(_item_files(step_dir), key=os.path.getsize)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2 - 32)
        chunk = f.read(64)
        f.seek(size // 2 - 32)
        f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.fixture(scope="module")
def reference(digits_data_dir, tmp_path_factory):
    """The uninterrupted run; while it is paused (SIGSTOP) after taking its workdir, a second process
    on the same workdir is started and must be refused."""
    base = tmp_path_factory.mktemp("integrity")
    work = base / "ref"
    proc = _start(work, digits_data_dir, base / "ref.err")
    head = _read_until(proc, "training proxy_anchor")
    proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        second = _run(work, digits_data_dir)
        second_seconds = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGCONT)
    out = "".join(head) + proc.stdout.read()
    assert proc.wait(timeout=300) == 0, open(base / "ref.err").read()[-3000:]
    with open(work / "final_metrics.json") as f:
        metrics = json.load(f)
    return SimpleNamespace(work=str(work), pid=proc.pid, stdout=out, metrics=metrics, second=second,
                           second_seconds=second_seconds, data_dir=digits_data_dir)


def test_second_process_is_refused_while_the_first_finishes(reference):
    second = reference.second
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    (line,) = _error_lines(second.stderr)
    assert f"is in use by pid {reference.pid}" in line
    assert reference.second_seconds < 60
    assert reference.stdout.strip().splitlines()[-1] == workdir.final_line(reference.metrics)
    assert reference.metrics["step"] == NUM_STEPS
    assert _metric_steps(reference.work) == Counter(
        {**{(s, "train"): 1 for s in range(5, NUM_STEPS + 1, 5)}, **{(s, "test"): 1 for s in (20, 40)}}
    )


def test_finished_rerun_changes_nothing_and_drift_is_refused(reference):
    work = reference.work
    files = {name: open(os.path.join(work, name), "rb").read() for name in ("config.json", "metrics.jsonl")}
    listing = sorted(os.listdir(work)), sorted(os.listdir(os.path.join(work, "checkpoints")))

    again = _run(work, reference.data_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "finished" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == reference.stdout.strip().splitlines()[-1]

    drift = _run(work, reference.data_dir, "--config.optim.learning_rate=0.01")
    assert drift.returncode == 2, drift.stderr[-2000:]
    (line,) = _error_lines(drift.stderr)
    assert "optim.learning_rate 0.0003 -> 0.01" in line and "new --workdir" in line

    for name, content in files.items():
        assert open(os.path.join(work, name), "rb").read() == content, name
    assert (sorted(os.listdir(work)), sorted(os.listdir(os.path.join(work, "checkpoints")))) == listing

    # The same checks in-process, for fields the CLI run above did not touch.
    import ml_collections

    config = ml_collections.ConfigDict(workdir.recorded_config(work))
    config.model.embed_dim = 32
    with pytest.raises(ConfigError, match=r"model\.embed_dim 16 -> 32; use a new --workdir"):
        workdir.open_run(config, work)
    config.model.embed_dim = 16
    config.num_steps = 2 * NUM_STEPS
    with pytest.raises(ConfigError, match=r"num_steps 40 -> 80; rerun with --allow_changes=num_steps"):
        workdir.open_run(config, work)
    run = workdir.open_run(config, work, allow_changes=["num_steps"])
    assert run.finished is None  # an extension: training would continue from step 40
    run.abandon()
    with pytest.raises(ConfigError, match="--allow_changes names optim.learning_rate"):
        workdir.open_run(config, work, allow_changes=["optim.learning_rate"])
    config.num_steps = NUM_STEPS // 2
    with pytest.raises(ConfigError, match="num_steps can only grow"):
        workdir.open_run(config, work, allow_changes=["num_steps"])
    assert not os.path.exists(os.path.join(work, "lock"))


def _resume_and_check(work, reference, damaged_step):
    """Rerun after damage: one warning line, the damaged step moved aside, the reference's final metrics,
    every step logged once; then a further rerun reports the run finished."""
    again = _run(work, reference.data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    warnings = [line for line in again.stderr.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and warnings[0].startswith("probdml: warning: checkpoint at step"), again.stderr[-3000:]
    assert "TensorStore" not in again.stderr and "Traceback" not in again.stderr
    moved = os.listdir(os.path.join(work, checkpointing.DAMAGED_DIR))
    assert [name.split("-")[0] for name in moved] == [str(damaged_step)]
    with open(os.path.join(work, "final_metrics.json")) as f:
        assert json.load(f) == reference.metrics
    assert _metric_steps(work) == _metric_steps(reference.work)
    assert max(_event_steps(work).values()) == 1
    assert set(_event_steps(work)) == set(_event_steps(reference.work))
    third = _run(work, reference.data_dir)
    assert third.returncode == 0 and "finished" in third.stdout, third.stderr[-2000:]
    assert third.stdout.strip().splitlines()[-1] == reference.stdout.strip().splitlines()[-1]


def test_sigkill_then_truncated_checkpoint_resumes_to_the_reference(reference, tmp_path):
    work = tmp_path / "killed"
    proc = _start(work, reference.data_dir, tmp_path / "err")
    _read_until(proc, f"step 35/{NUM_STEPS}")
    proc.kill()
    proc.wait(timeout=60)
    newest = _newest_step_dir(work)
    assert int(os.path.basename(newest)) < NUM_STEPS
    assert max(s for s, _ in _metric_steps(work)) > int(os.path.basename(newest))  # rows to drop on resume
    _truncate(newest)
    _resume_and_check(str(work), reference, int(os.path.basename(newest)))


def test_sigint_saves_then_bit_flipped_checkpoint_resumes_to_the_reference(reference, tmp_path):
    work = tmp_path / "interrupted"
    proc = _start(work, reference.data_dir, tmp_path / "err")
    _read_until(proc, f"step 25/{NUM_STEPS}")
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 130
    stderr = open(tmp_path / "err").read()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    saved = [line for line in out.splitlines() if "SIGINT: saved a checkpoint at step" in line]
    assert len(saved) == 1, out
    step = int(saved[0].split("at step ")[1].split(";")[0])
    newest = _newest_step_dir(work)
    assert int(os.path.basename(newest)) == step
    _flip_bits(newest)
    assert "fails its SHA-256 checksum" in checkpointing.verify_step(newest)
    _resume_and_check(str(work), reference, step)
