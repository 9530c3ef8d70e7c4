"""Turns probdml's plain-text docstrings into valid reStructuredText for autodoc.

The docstrings are written to be read in a terminal: formulas with |x| norms and * products, lists
that follow a sentence without a blank line, formulas continued on indented lines. reStructuredText
reads those as substitutions, emphasis, block quotes and definition lists, and a strict build (-W)
fails. `rst_lines` (connected to autodoc-process-docstring before napoleon) escapes the inline markup
characters outside backquotes, separates lists from the surrounding paragraphs and joins indented
continuation lines to their paragraph, leaving Google-style sections (Args:, Returns:, ...), literal
blocks (after '::') and simple tables alone. A docstring that still does not parse cleanly is shown
verbatim as a literal block, so the build never depends on the markup of a docstring.
"""

from __future__ import annotations

import io
import re

_ITEM = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+")
_SECTION = re.compile(
    r"^\s*(Args|Arguments|Parameters|Returns?|Raises|Yields?|Attributes|Examples?|Notes?|Keyword Args|"
    r"Other Parameters|References|See Also|Warnings?|Methods)\s*:\s*$"
)
_TABLE_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")
_BACKQUOTED = re.compile(r"(``.+?``|`[^`]+`)")
_ROLE = re.compile(r":[a-z]+:`([^`]+)`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _escape(text: str) -> str:
    """Escapes |, * (unless paired as *emphasis* or **strong**) and a trailing _ outside backquotes."""
    parts = _BACKQUOTED.split(text)
    for k in range(0, len(parts), 2):
        s = parts[k].replace("\\", "\\\\").replace("|", "\\|")
        s = re.sub(r"(\w)_(?=\W|$)", r"\1\\_", s)
        s = re.sub(r"(?<![\w*\\])\*\*(?=\S)([^*]+?)(?<=\S)\*\*(?![\w*])", "\x00\x00\\1\x00\x00", s)
        s = re.sub(r"(?<![\w*\\])\*(?=[^\s*])([^*]+?)(?<=[^\s*])\*(?![\w*])", "\x00\\1\x00", s)
        s = s.replace("*", "\\*").replace("\x00", "*")
        parts[k] = s
    return "".join(parts)


def _normalise(lines: list[str]) -> list[str]:
    out: list[str] = []
    prev: str | None = None  # previous line if non-blank
    item_col: int | None = None  # content column of the list item being continued
    protected_indent: int | None = None  # inside a Google section or a literal block
    literal = False
    in_table = False
    for line in lines:
        if not line.strip():
            out.append(line)
            if prev is not None and prev.rstrip().endswith("::"):
                protected_indent, literal = _indent(prev), True
            prev = None
            continue
        ind = _indent(line)
        if protected_indent is not None:
            if ind > protected_indent:
                out.append(line if literal else _escape(line))
                prev = line
                continue
            protected_indent = None
            if prev is not None:
                out.append("")
                prev = None
        if _TABLE_RULE.match(line):
            in_table = not in_table if out and not _TABLE_RULE.match(prev or "") else in_table
            out.append(line)
            prev = line
            continue
        if in_table:
            out.append(_escape(line))
            prev = line
            continue
        if _SECTION.match(line):
            if prev is not None:
                out.append("")
            out.append(line)
            protected_indent, literal = ind, False
            item_col = None
            prev = line
            continue
        item = _ITEM.match(line)
        if item:
            if prev is not None and item_col is None:
                out.append("")
            item_col = item.end()
            out.append(_escape(line))
        elif prev is not None and item_col is not None:
            if ind >= item_col or ind > _indent(prev):
                out.append(" " * item_col + _escape(line.strip()))
            else:
                out.append("")
                item_col = None
                out.append(_escape(line))
        elif prev is not None and ind != _indent(prev):
            out.append(" " * _indent(prev) + _escape(line.strip()))
            line = " " * _indent(prev) + line.strip()
        else:
            if prev is None:
                item_col = None if ind == 0 or item_col is None or ind < item_col else item_col
            out.append(_escape(line))
        prev = line
    return out


_SETTINGS = None
_CACHE: dict[tuple[str, ...], list[str]] = {}


def _parses_cleanly(lines: list[str]) -> bool:
    """True if docutils parses `lines` (Sphinx roles read as literals) without a warning or error."""
    global _SETTINGS
    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import SystemMessage, new_document

    if _SETTINGS is None:
        _SETTINGS = get_default_settings(Parser)
        _SETTINGS.report_level = 5
        _SETTINGS.halt_level = 2
        _SETTINGS.warning_stream = io.StringIO()
    document = new_document("<docstring>", _SETTINGS)
    try:
        Parser().parse(_ROLE.sub(r"``\1``", "\n".join(lines)), document)
    except SystemMessage:
        return False
    # Docstrings define no substitutions or link targets: any reference to one is an error.
    return not any(
        isinstance(node, nodes.substitution_reference) or "refname" in node.attributes
        for node in document.findall(nodes.Element)
    )


def rst_lines(app, what, name, obj, options, lines: list[str]) -> None:
    """autodoc-process-docstring handler: rewrites `lines` in place (see the module docstring)."""
    if not lines:
        return
    key = tuple(lines)
    if key not in _CACHE:
        new = _normalise(list(lines))
        if not _parses_cleanly(new):
            new = ["::", ""] + ["    " + line for line in lines]
        _CACHE[key] = new
    lines[:] = _CACHE[key]


def setup(app):
    app.connect("autodoc-process-docstring", rst_lines, priority=100)
    return {"parallel_read_safe": True}
