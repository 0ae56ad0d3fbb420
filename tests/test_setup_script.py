"""scripts/setup.sh: installs on a fresh venv, skips when up to date, one line a step, pip's output
in a log shown only on failure.  Run with a stand-in ``.venv/bin/python`` that records its calls."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PY = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.txt"
if [ "$1" = "-c" ]; then echo "3.x fake"; exit 0; fi
for i in $(seq 1 45); do echo "WARNING: pip noise $i"; done
if [ -n "${FAKE_PIP_FAIL:-}" ] && [[ "$*" == *"-e .[dev]"* ]]; then echo "ERROR: no wheel for X"; exit 1; fi
exit 0
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if shutil.which("bash") is None or shutil.which("sha256sum") is None:
        pytest.skip("needs bash and sha256sum")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    py = tmp_path / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(FAKE_PY)
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def _run(repo: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def _installs(repo: Path) -> int:
    calls = (repo / ".venv" / "calls.txt").read_text().splitlines()
    return sum("pip install" in c and "-e .[dev]" in c for c in calls)


def test_installs_once_then_skips_until_pyproject_changes(repo: Path):
    first = _run(repo)
    assert first.returncode == 0, first.stderr
    assert _installs(repo) == 1
    assert "WARNING" not in first.stdout + first.stderr          # pip's noise goes to the log
    assert all(line.startswith("setup: ") for line in first.stdout.splitlines())
    assert "pip noise 45" in (repo / ".venv" / "setup.log").read_text()

    second = _run(repo)
    assert second.returncode == 0 and _installs(repo) == 1     # nothing reinstalled
    assert "up to date" in second.stdout and len(second.stdout.splitlines()) <= 3

    with open(repo / "pyproject.toml", "a") as fh:
        fh.write("\n# changed\n")
    assert _run(repo).returncode == 0 and _installs(repo) == 2


def test_failed_install_shows_the_log_and_keeps_no_stamp(repo: Path):
    res = _run(repo, FAKE_PIP_FAIL="1")
    assert res.returncode != 0
    assert "ERROR: no wheel for X" in res.stderr and "FAILED" in res.stdout
    assert not (repo / ".venv" / ".facelt-setup-stamp").exists()
    assert _run(repo).returncode == 0 and _installs(repo) == 2  # the next run retries


def test_insightface_is_installed_without_its_dependencies(repo: Path):
    """Issue 19: the interop tests run in CI, against insightface's pure-Python wheel installed
    with --no-deps (its opencv-python requirement would replace opencv-python-headless)."""
    assert _run(repo).returncode == 0
    calls = (repo / ".venv" / "calls.txt").read_text().splitlines()
    dev = [i for i, c in enumerate(calls) if "-e .[dev]" in c]
    ins = [i for i, c in enumerate(calls) if "pip install" in c and "insightface==" in c]
    assert len(dev) == 1 and len(ins) == 1 and ins[0] > dev[0]
    assert "--no-deps" in calls[ins[0]].split()
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert "FACELT_INTEROP=required" in test_sh and "scripts/setup.sh" in test_sh
