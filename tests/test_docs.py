"""The documentation site builds without a warning, and every repository path the project mentions exists.

`test_docs_build` builds a copy of docs/ (so that the generated API pages and notebook copies stay out of
the checkout) with `sphinx -W`: any warning, from a page, a cross-reference or a docstring, fails it.
Notebooks are rendered as saved, not executed.

`test_referenced_paths_exist` reads the docs, the README, the notebooks, the configs, the benchmarks and
every docstring and comment of the package for paths inside the repository (a first component such as
probdml/, configs/, docs/, notebooks/, tests/, benchmarks/, or the former specs/) and fails on any that
does not exist, and on any path outside the repository (/work/..., /tmp/... are allowed only as
example workdirs).
"""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

TOP = ("probdml", "configs", "docs", "notebooks", "tests", "benchmarks", "specs", ".ci")
# A repository path: a known first component, then path characters; {a,b} alternatives are expanded.
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./{},*<>-]*[\w/}])" % "|".join(re.escape(t) for t in TOP))
# Absolute paths into the developers' machines (never valid in the repository).
FOREIGN = re.compile(r"(?<![\w.])/work/[\w./-]+")


def _scanned_files() -> list[pathlib.Path]:
    patterns = ["README.md", "setup.cfg", "docs/**/*.md", "docs/*.py", "probdml/**/*.py", "notebooks/*.ipynb",
                "configs/**/*.py", "benchmarks/**/*.py", "benchmarks/*.md"]
    files = {p for pattern in patterns for p in ROOT.glob(pattern)}
    generated = (ROOT / "docs" / "_autosummary", ROOT / "docs" / "notebooks", ROOT / "docs" / "_build")
    return sorted(p for p in files if not any(g in p.parents for g in generated))


def _expand(ref: str) -> list[str]:
    """configs/{digits,glyphs}_idml.py -> [configs/digits_idml.py, configs/glyphs_idml.py]."""
    parts = re.split(r"\{([^{}]*)\}", ref)
    options = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(choice) for choice in itertools.product(*options)]


def _exists(ref: str) -> bool:
    ref = ref.rstrip(".,:;)")
    if any(c in ref for c in "*<>"):  # a pattern such as configs/<file>.py or a glob
        ref = ref.split("<")[0].split("*")[0]
        ref = ref.rsplit("/", 1)[0] if "/" in ref else ref
    return (ROOT / ref).exists()


def test_referenced_paths_exist():
    missing = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT)
        for match in PATH.finditer(text):
            for ref in _expand(match.group(1)):
                if not _exists(ref):
                    line = text.count("\n", 0, match.start()) + 1
                    missing.append(f"{rel}:{line}: {ref}")
        for match in FOREIGN.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            missing.append(f"{rel}:{line}: {match.group(0)} (outside the repository)")
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)


def test_reference_check_catches_missing_files():
    assert _expand("configs/{digits,glyphs}_idml.py") == ["configs/digits_idml.py", "configs/glyphs_idml.py"]
    assert _exists("configs/digits_idml.py") and _exists("configs/<file>.py") and _exists("probdml/analysis/")
    assert not _exists("specs/idml.md") and not _exists("benchmarks/digits_methods.py")
    found = [m.group(1) for m in PATH.finditer("see `specs/idml.md` D1, docs/methods/idml.md, and probdml/train.py.")]
    assert found == ["specs/idml.md", "docs/methods/idml.md", "probdml/train.py"]


@pytest.mark.slow
def test_docs_build(tmp_path):
    pytest.importorskip("sphinx")
    src = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", src, ignore=shutil.ignore_patterns("_autosummary", "_build", "notebooks"))
    env = {**os.environ, "PROBDML_REPO_ROOT": str(ROOT), "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(src), str(tmp_path / "html")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-8000:]
    for page in ("index", "getting_started", "methods/idml", "methods/nivmf", "numerics", "evaluation",
                 "reproducing", "api", "notebooks/01_quickstart"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
