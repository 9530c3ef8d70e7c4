"""Multi-process runs: 2 local CPU processes x 4 devices (jax.distributed with a localhost coordinator)
train (EL-nivMF, proxies warm-started), checkpoint, take a SIGTERM on one process, resume and evaluate to the final metrics
of a 1-process, 1-device run of the same config (same global batch and seed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 60  # long enough that the run is still going when its first checkpoint (step 5) appears


def _flags(workdir, data_dir) -> list[str]:
    return [
        "--config=configs/digits_nivmf.py", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        f"--config.num_steps={NUM_STEPS}", "--config.checkpoint_every=5", f"--config.eval_every={NUM_STEPS}",
        "--config.log_every=5", "--config.model.hidden=32", "--config.model.widths=(8,16)",
        "--config.model.embed_dim=16", "--config.eval.batch_size=256",
    ]


def _env(devices: int) -> dict[str, str]:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "PYTHONPATH": ROOT,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, data_dir, num_processes: int, devices: int) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "probdml.main", *_flags(workdir, data_dir),
             "--config.distributed.enabled=True", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
             f"--config.distributed.num_processes={num_processes}", f"--config.distributed.process_id={i}"],
            cwd=ROOT, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(num_processes)
    ]


def _finish(procs, timeout=240) -> list[tuple[int, str]]:
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        results.append((p.returncode, out))
    return results


def test_two_processes_preempted_and_resumed_match_one_process(digits_data_dir, tmp_path):
    one = tmp_path / "one"  # the 1-process, 1-device reference runs alongside the first 2-process launch
    reference_proc = subprocess.Popen([sys.executable, "-m", "probdml.main", *_flags(one, digits_data_dir)], cwd=ROOT,
                                      env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workdir = tmp_path / "run"
    procs = _launch(workdir, digits_data_dir, 2, 4)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if ckpts.is_dir() and any(d.isdigit() for d in os.listdir(ckpts)):
            break
        time.sleep(0.05)
    if not all(p.poll() is None for p in procs):
        outputs = [out for _, out in _finish(procs)]
        raise AssertionError("the run ended before it could be preempted:\n" + "\n".join(o[-2000:] for o in outputs))
    procs[1].send_signal(signal.SIGTERM)  # one process gets the notice; both must stop at one step
    first = _finish(procs)
    assert [rc for rc, _ in first] == [143, 143], first[0][1][-3000:] + first[1][1][-3000:]
    saved = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
    assert 5 <= saved[-1] < NUM_STEPS
    assert "SIGTERM: saved a checkpoint" in first[0][1] and "SIGTERM: saved" not in first[1][1]

    second = _finish(_launch(workdir, digits_data_dir, 2, 4))
    assert [rc for rc, _ in second] == [0, 0], second[0][1][-3000:] + second[1][1][-3000:]
    assert f"resumed from checkpoint at step {saved[-1]}" in second[0][1]
    assert "resumed" not in second[1][1]  # process 0 alone logs
    [(rc, out)] = _finish([reference_proc])
    assert rc == 0, out[-3000:]
    with open(one / "final_metrics.json") as f:
        reference = json.load(f)
    with open(workdir / "final_metrics.json") as f:
        final = json.load(f)
    assert final["step"] == reference["step"] == NUM_STEPS
    assert final.keys() == reference.keys()
    assert final["split"] == reference["split"] == "test"
    for name, value in reference.items():
        if isinstance(value, (int, float)):
            np.testing.assert_allclose(final[name], value, rtol=0, atol=2e-3, err_msg=name)
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    steps = [l["step"] for l in lines if "train/loss" in l]
    assert steps == sorted(set(steps))  # process 0 wrote each logged step once
