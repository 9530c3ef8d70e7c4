"""Executes every notebook in notebooks/ top to bottom in small mode (PROBDML_NOTEBOOK_SMALL=1) and fails
on any error, including a failed `assert` of an analytic check.

The kernel is the current interpreter (nbclient's 'python3' kernel spec runs `python`, which
jupyter_client replaces by sys.executable), started in notebooks/ with this checkout first on
PYTHONPATH, the session's prepared digits data_dir and one work directory shared by all notebooks in
file order, so 03 reuses the runs 01 trained. XLA's optimisations are off in the kernel: the small runs
are dominated by compilation.
"""

from __future__ import annotations

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_found():
    assert [p.name for p in NOTEBOOKS][:3] == ["01_quickstart.ipynb", "02_gradient_analysis.ipynb", "03_uncertainty.ipynb"]


def test_notebooks_are_saved_without_outputs():
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: saved with outputs"


@pytest.fixture(scope="module")
def notebook_env(digits_data_dir, tmp_path_factory):
    """Environment variables of the kernels (restored afterwards)."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "PROBDML_NOTEBOOK_SMALL": "1",
        "PROBDML_DATA_DIR": digits_data_dir,
        "PROBDML_NOTEBOOK_WORKDIR": str(tmp_path_factory.mktemp("notebook_runs")),
        "PYTHONPATH": pythonpath,
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, notebook_env):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
