"""Every `probdml.similarity` name that the README, the notebooks, the configs, the benchmarks and the tests
use resolves on the package (the public API survived its split into modules)."""

from __future__ import annotations

import ast
import json
import pathlib
import re

import probdml.similarity

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROSE = re.compile(r"probdml\.similarity\.([A-Za-z_]\w*)")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", flags=re.S | re.M)


def _sources() -> list[tuple[str, str, list[str]]]:
    """(where, raw text, python code pieces) of every file that may name the similarity module."""
    out = []
    readme = (ROOT / "README.md").read_text()
    out.append(("README.md", readme, PYTHON_BLOCK.findall(readme)))
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
        out.append((nb.name, text, ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]))
    for folder in ("configs", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            out.append((str(path.relative_to(ROOT)), text, [text]))
    return out


def _code_names(code: str) -> set[str]:
    """Names taken from probdml.similarity in `code`: `from probdml.similarity import a` and `similarity.a`
    where `similarity` is the module (imported from probdml)."""
    tree = ast.parse(code)
    names, module_aliases = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "probdml.similarity":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "probdml":
            module_aliases |= {alias.asname or alias.name for alias in node.names if alias.name == "similarity"}
        elif isinstance(node, ast.Import):
            module_aliases |= {alias.asname for alias in node.names if alias.name == "probdml.similarity"
                               and alias.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
            names.add(node.attr)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
              and node.value.attr == "similarity" and isinstance(node.value.value, ast.Name)
              and node.value.value.id == "probdml"):
            names.add(node.attr)
    return names


def test_every_used_similarity_name_resolves():
    used: dict[str, set[str]] = {}
    for where, text, code_pieces in _sources():
        found = set(PROSE.findall(text))
        for code in code_pieces:
            found |= _code_names(code)
        for name in found:
            used.setdefault(name, set()).add(where)
    # the parser finds the names the callers are known to use (a guard against a parser that finds nothing)
    assert {"get_similarity", "cosine", "l2_normalize", "introspective", "el_nivmf", "ISM_COMPAT_PRESET",
            "TEMPERATURE_INSIDE", "Pairwise", "vmf_samples", "nivmf_ppk_monte_carlo"} <= set(used)
    missing = {name: sorted(where) for name, where in used.items() if not hasattr(probdml.similarity, name)}
    assert not missing, f"probdml.similarity lost public names: {missing}"
    private = {name: sorted(where) for name, where in used.items() if name.startswith("_")}
    assert not private, f"callers use private similarity names: {private}"
