"""Sphinx configuration of the probdml documentation (MyST Markdown pages, autodoc + napoleon, furo)."""

from __future__ import annotations

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The repository root; tests/test_docs.py builds a copy of docs/ elsewhere and names the root here.
ROOT = os.environ.get("PROBDML_REPO_ROOT", os.path.abspath(os.path.join(HERE, "..")))
sys.path.insert(0, ROOT)

# Sphinx reads only files under its source folder: the notebooks are copied into its notebooks/ (which
# ignored by git) and rendered without execution, as saved.
os.makedirs(os.path.join(HERE, "notebooks"), exist_ok=True)
for _name in sorted(os.listdir(os.path.join(ROOT, "notebooks"))):
    if _name.endswith(".ipynb"):
        shutil.copyfile(os.path.join(ROOT, "notebooks", _name), os.path.join(HERE, "notebooks", _name))
sys.path.insert(0, HERE)

project = "probdml"
author = "probdml contributors"
copyright = "probdml contributors"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "_docstrings",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = "probdml"
html_static_path = ["_static"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"

autosummary_generate = True
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
