"""Data parallelism: a train step on 8 (simulated) devices equals the 1-device step."""

import json
import os
import subprocess
import sys

import pytest

from tests import parallel_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",  # one step per config: compilation dominates
        "PYTHONPATH": ROOT,
    }
    names = list(parallel_configs.CONFIGS)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.parallel_check", *names], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    return {r["name"]: r for r in rows}


@pytest.mark.parametrize("name", list(parallel_configs.CONFIGS))
def test_one_step_equal_on_1_and_8_devices(results, name):
    r = results[name]
    assert r["changed"], "the step did not update the parameters"
    assert abs(r["loss1"] - r["loss8"]) <= 1e-5 * max(abs(r["loss1"]), 1e-30)
    assert r["max_rel_param_diff"] <= 1e-5
