"""Issue 11: one run per output folder. A second run into a folder in use is refused naming the
holder (pid, host, start time); the lock of a killed run (kill -9) is stale and taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facelt.cli import main as cli_main
from facelt.errors import OutputError
from facelt.utils.run_lock import LOCK_NAME, lock_run_folder, read_holder

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from facelt.utils.run_lock import lock_run_folder
lock = lock_run_folder(sys.argv[1], command="holder-under-test")
print("locked", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """A separate process that takes the lock of ``folder`` and sleeps."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        with pytest.raises(OutputError) as exc:
            lock_run_folder(out)
        msg = str(exc.value)
        assert f"pid {proc.pid}" in msg and socket.gethostname() in msg
        assert "started 20" in msg and "UTC" in msg and "holder-under-test" in msg
        # the command exits 2 with one clear line, before writing anything
        capsys.readouterr()
        rc = cli_main(["train", "--dataset", "demo_faces", "--out", str(out), "--set", "device=cpu"])
        err = capsys.readouterr().err
        assert rc == 2 and f"pid {proc.pid}" in err and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("command", [["demo"], ["compare", "--dataset", "demo_list"]])
def test_demo_and_compare_lock_their_folder(tmp_path, capsys, command):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        capsys.readouterr()
        rc = cli_main([*command, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and f"pid {proc.pid}" in err and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    proc = _holder(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_holder(out / LOCK_NAME)["pid"] == proc.pid  # the file stays behind
    with lock_run_folder(out) as lock:
        assert lock.held and read_holder(out / LOCK_NAME)["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()  # released: removed


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recorded_holder_decides_where_flock_is_not_enforced(tmp_path):
    """A lock file without a flock on it (a file system that ignores flock): a live pid of this
    host blocks, a dead one is stale."""
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": sleeper.pid, "host": socket.gethostname(), "started": time.time()}
        (out / LOCK_NAME).write_text(json.dumps(record))
        with pytest.raises(OutputError, match=f"pid {sleeper.pid}"):
            lock_run_folder(out)
    finally:
        sleeper.kill()
        sleeper.wait()
    record["pid"] = _dead_pid()
    (out / LOCK_NAME).write_text(json.dumps(record))
    lock = lock_run_folder(out)
    assert read_holder(out / LOCK_NAME)["pid"] == os.getpid()
    lock.release()


def test_only_the_primary_rank_locks(tmp_path):
    out = tmp_path / "run"
    other = lock_run_folder(out, primary=False)
    assert not other.held and not (out / LOCK_NAME).exists()
    with lock_run_folder(out) as lock:   # rank 0 still gets it
        assert lock.held
        with pytest.raises(OutputError):
            lock_run_folder(out)          # and a second holder in this very process is refused
