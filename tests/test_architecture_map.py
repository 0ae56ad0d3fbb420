"""docs/ARCHITECTURE.md's module map (its first code block) names every module of the engine and
of eval_megaface, one line each, under its own package (the CLI and pipelines are summarised).

Read from the files alone: a module added without a line in the map, or a line for a module that
no longer exists, fails here."""
from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

MAPPED = ("facelt", "eval_megaface")
SUMMARISED = ("facelt/cli",)


def map_block(text: str) -> list[str]:
    """The lines of the first fenced code block of ``text``."""
    lines = text.split("\n")
    start = lines.index("```")
    end = lines.index("```", start + 1)
    return lines[start + 1:end]


def mapped_modules(lines: list[str]) -> set[str]:
    """``package/sub/module.py`` for every ``name.py`` line of the map, its package read from the
    indentation of the ``name/`` lines above it."""
    stack: list[tuple[int, str]] = []
    found: set[str] = set()
    for line in lines:
        m = re.match(r"^(\s*)(\S+)", line)
        if not m:
            continue
        indent, token = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if token.endswith("/") and re.fullmatch(r"[a-z_]+/", token):
            stack.append((indent, token.rstrip("/")))
        elif token.endswith(".py") and stack:
            found.add("/".join(p for _, p in stack) + "/" + token)
    return found


def source_modules() -> set[str]:
    out = set()
    for top in MAPPED:
        for p in (ROOT / top).rglob("*.py"):
            rel = p.relative_to(ROOT).as_posix()
            if "__pycache__" in rel or p.name in ("__init__.py", "__main__.py"):
                continue
            if any(rel.startswith(s + "/") for s in SUMMARISED):
                continue
            out.add(rel)
    return out


def test_the_reader_sees_nesting():
    lines = ["a/", "  b.py   x", "  sub/", "    c.py  y", "  d.py  z", "e/", "  f.py"]
    assert mapped_modules(lines) == {"a/b.py", "a/sub/c.py", "a/d.py", "e/f.py"}


def test_every_module_has_one_line_in_the_map():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    mapped = mapped_modules(map_block(text))
    have = source_modules()
    missing = sorted(have - mapped)
    stale = sorted(m for m in mapped - have if not m.endswith("__init__.py"))
    assert not missing, "modules without a line in docs/ARCHITECTURE.md's map:\n" + "\n".join(missing)
    assert not stale, "lines in docs/ARCHITECTURE.md's map for modules that do not exist:\n" + "\n".join(stale)
