"""One run per output folder: ``OUT/.facelt.lock``.

A training run holds an exclusive ``fcntl.flock`` on ``OUT/.facelt.lock`` for its whole life and
writes its holder (pid, host, start time, command) into the file. A second run into the same
folder finds the lock held and is refused with an :class:`~facelt.errors.OutputError` naming the
holder. The kernel drops a flock when its process dies (also after ``kill -9``), so the lock file
of a killed run is stale by construction: the next run takes it over and rewrites the holder.
Where flock is not enforced (some network file systems), the recorded holder is checked as well:
a holder on this host whose pid is alive blocks; a dead pid on this host is stale (O_CREAT without
O_EXCL: the file of a killed run is reused, never a reason to refuse). A symbolic link at the
lock's path is refused (naming it), never followed: its target is never truncated.

Under torchrun only rank 0 takes the lock (:func:`lock_run_folder` with ``primary=False`` is a
no-op); the trainer shares rank 0's verdict with the other ranks.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from facelt.errors import OutputError
from facelt.utils.io import pid_alive
from facelt.utils.outputs import open_no_follow

LOCK_NAME = ".facelt.lock"


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of output folder ``folder``."""
    return Path(folder) / LOCK_NAME


def read_holder(path: str | os.PathLike) -> Optional[dict]:
    """The holder recorded in lock file ``path`` (None when absent, empty or unreadable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: Optional[dict]) -> str:
    """``pid 123 on host h, started 2026-01-01 10:00:00 UTC (facelt train ...)``."""
    if not holder:
        return "a process that is just starting (no holder recorded yet)"
    started = holder.get("started")
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
            if isinstance(started, (int, float)) else "at an unknown time")
    text = f"pid {holder.get('pid')} on host {holder.get('host')}, started {when}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text


def holder_alive_here(holder: Optional[dict]) -> bool:
    """Whether a recorded holder is another process of this host that still runs (a holder on
    another host cannot be checked here: there the flock decides)."""
    if not holder or not isinstance(holder.get("pid"), int):
        return False
    if holder.get("host") != socket.gethostname():
        return False
    return holder["pid"] != os.getpid() and pid_alive(holder["pid"])


class RunLock:
    """An acquired lock on an output folder; :meth:`release` (or ``with``) gives it back."""

    def __init__(self, folder: Path, fd: Optional[int]) -> None:
        self.folder = folder
        self.path = lock_path(folder)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            # unlink while still holding the flock: a waiter that opened the old file notices the
            # inode is gone and retries on a fresh file
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def lock_run_folder(folder: str | os.PathLike, primary: bool = True,
                    command: Optional[str] = None) -> RunLock:
    """Take the run lock of ``folder`` (created if needed) or raise
    :class:`~facelt.errors.OutputError` naming the live holder. ``primary=False`` (torchrun ranks
    other than 0) returns a lock that holds nothing."""
    folder = Path(folder)
    if not primary:
        return RunLock(folder, None)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    for _ in range(50):
        fd = open_no_follow(path, os.O_RDWR | os.O_CREAT, "the run lock")  # never via a link
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{folder} is in use by another run: {describe_holder(read_holder(path))}; "
                              f"wait for it, or choose another --out (lock file {path})") from None
        if not _same_file(fd, path):  # the holder released (and unlinked) it meanwhile: retry
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            continue
        previous = read_holder(path)
        if holder_alive_here(previous):
            # flock not enforced here (network file system?) and the recorded holder still runs
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OutputError(f"{folder} is in use by another run: {describe_holder(previous)}; "
                              f"wait for it, or choose another --out (lock file {path}; if that "
                              f"pid is no facelt run, delete the lock file)")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": command or " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        return RunLock(folder, fd)
    raise OutputError(f"{path}: could not take the run lock (it kept being replaced)")
