"""The package layers, read from the source with ``ast`` (nothing is imported or run):

* no function in ``facelt/cli`` is longer than 60 lines (the CLI parses arguments and calls the
  library);
* nothing outside ``train/``, ``jobs/``, ``compare/`` and ``cli/`` imports ``facelt.train``;
* ``facelt.train`` imports none of the packages above it (features, faces, openset, jobs,
  compare, cli): evaluations are handed to the trainer;
* inside ``facelt/``, only ``jobs/`` and ``cli/`` import ``pipelines`` or ``eval_megaface``.

Every import counts, also one inside a function (a lazy import is still an arrow)."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

FACELT = ROOT / "facelt"
MAX_CLI_FUNCTION_LINES = 60


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an ``import`` / ``from ... import`` of ``path`` names (relative imports
    resolved against its package, the folders from ``root`` down)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def long_functions(path: Path, limit: int) -> list[tuple[str, int, int]]:
    """``(name, first line, length)`` of every function or method of ``path`` longer than
    ``limit`` lines (decorators not counted, the docstring counted)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(n.name, n.lineno, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > limit]


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imports_package(path: Path, package: str) -> list[str]:
    return sorted(m for m in imported_modules(path) if m == package or m.startswith(package + "."))


def test_the_checkers_see_a_long_function_and_a_lazy_import(tmp_path):
    """The two readers on a hand-written module: a 62-line function, a 3-line one, an import of
    facelt.train inside a function and a relative one."""
    pkg = tmp_path / "facelt" / "faces"
    pkg.mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    src = pkg / "mod.py"
    src.write_text(f"def long():\n{body}\n    return x0\n\n\ndef short():\n"
                   "    from facelt.train.trainer import StageTrainer\n    return StageTrainer\n\n\n"
                   "from ..train import loop\n")
    assert long_functions(src, 60) == [("long", 1, 62)]
    assert long_functions(src, 62) == []
    found = imported_modules(src, root=tmp_path)
    assert {"facelt.train.trainer", "facelt.train.trainer.StageTrainer", "facelt.train",
            "facelt.train.loop"} <= found


def test_no_cli_function_is_longer_than_60_lines():
    too_long = [f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)"
                for p in _modules(FACELT / "cli")
                for name, line, n in long_functions(p, MAX_CLI_FUNCTION_LINES)]
    assert not too_long, "move the work into the library:\n" + "\n".join(too_long)


def test_only_train_jobs_compare_and_cli_import_the_training_package():
    allowed = {"train", "jobs", "compare", "cli"}
    offenders = []
    for p in _modules(ROOT / "facelt") + _modules(ROOT / "pipelines") + _modules(ROOT / "eval_megaface"):
        rel = p.relative_to(ROOT)
        if rel.parts[0] == "facelt" and len(rel.parts) > 2 and rel.parts[1] in allowed:
            continue
        hits = _imports_package(p, "facelt.train")
        if hits:
            offenders.append(f"{rel}: {', '.join(hits)}")
    assert not offenders, "\n".join(offenders)


def test_the_training_package_imports_nothing_above_it():
    above = [f"facelt.{p}" for p in ("features", "faces", "openset", "jobs", "compare", "cli")]
    above += ["pipelines", "eval_megaface"]
    offenders = [f"{p.relative_to(ROOT)}: {', '.join(hits)}"
                 for p in _modules(FACELT / "train")
                 for hits in [[m for pkg in above for m in _imports_package(p, pkg)]] if hits]
    assert not offenders, "\n".join(offenders)


def test_only_jobs_and_cli_import_pipelines_and_eval_megaface():
    offenders = []
    for p in _modules(FACELT):
        rel = p.relative_to(FACELT)
        if rel.parts[0] in ("jobs", "cli"):
            continue
        hits = _imports_package(p, "pipelines") + _imports_package(p, "eval_megaface")
        if hits:
            offenders.append(f"facelt/{rel}: {', '.join(hits)}")
    assert not offenders, "\n".join(offenders)
