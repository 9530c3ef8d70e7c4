"""Command-line errors: one line naming the problem and the choices, exit code 2, no traceback."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    cmd = [sys.executable, "-m", "probdml.main", "--config=configs/digits.py", *args]
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_config_field(tmp_path):
    _assert_one_line_error(_run(f"--workdir={tmp_path}/w", "--config.model.nonsense=3"), "nonsense")


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("--config.loss.name=arcfacez", ("unknown loss 'arcfacez'", "proxy_anchor")),
        ("--config.data.name=mnist", ("unknown dataset 'mnist'", "digits")),
        ("--config.optim.name=lamb", ("unknown optimizer 'lamb'", "adamw")),
    ],
)
def test_unknown_names(tmp_path, override, fragments):
    _assert_one_line_error(_run(f"--workdir={tmp_path}/w", override), *fragments)


def test_missing_workdir_parent(tmp_path):
    _assert_one_line_error(_run(f"--workdir={tmp_path}/no/such/dir"), "workdir parent directory does not exist")


def test_config_given_by_absolute_path_from_another_directory(tmp_path):
    """configs/digits.py imports `configs.base`: the CLI finds it from any working directory, with only the
    probdml package importable (as after `pip install .`; the repository root is not on the path)."""
    site = tmp_path / "site"
    site.mkdir()
    os.symlink(os.path.join(ROOT, "probdml"), site / "probdml")
    cmd = [sys.executable, "-m", "probdml.main", f"--config={ROOT}/configs/digits.py", f"--workdir={tmp_path}/w",
           "--config.data.name=mnist"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    _assert_one_line_error(proc, "unknown dataset 'mnist'")
