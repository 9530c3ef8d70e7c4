"""README.md: every ```python block preceded by a `<!-- runnable -->` marker runs without error, and the
CI markers keep their fenced bash blocks."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RUNNABLE = re.findall(r"^<!-- runnable -->\n```python\n(.*?)^```$", README, flags=re.S | re.M)


def test_runnable_blocks_found():
    assert len(RUNNABLE) == README.count("<!-- runnable -->") >= 3


@pytest.mark.parametrize("marker", ["<!-- run-command -->", "<!-- test-command -->"])
def test_ci_markers_have_a_bash_block(marker):
    after = README.split(marker, 1)[1]
    match = re.match(r"\n```bash\n(.+?)\n```\n", after, flags=re.S)
    assert match and match.group(1).strip(), f"{marker} must be followed by a fenced bash block"


@pytest.mark.parametrize("index", range(len(RUNNABLE)), ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_runnable_block(index, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = compile(RUNNABLE[index], f"README.md runnable block {index}", "exec")
    exec(code, {"__name__": f"readme_block_{index}"})
    assert capsys.readouterr().out.strip(), "a README example should print its result"
