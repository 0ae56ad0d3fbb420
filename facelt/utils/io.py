"""Crash-safe file output.

Everything facelt writes goes to a temporary name in the destination folder and is renamed into
place only once complete (``os.replace`` is atomic on POSIX), so a killed process never leaves a
partial file under the final name and never destroys the previous good copy.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from facelt.errors import OutputError


def temporary_prefix(path: str | os.PathLike, pid: Optional[int] = None) -> str:
    """The name prefix of :func:`atomic_path`'s temporaries for ``path``: ``.<name>.pid<PID>.``
    (the writing process's id, so a later run can tell a dead writer's leftovers from a live one's)."""
    return f".{Path(path).name}.pid{os.getpid() if pid is None else int(pid)}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writers of ``path`` left beside it; returns them.

    Only files named by :func:`temporary_prefix` (``.<name>.pid<PID>.*.tmp``) whose process no longer
    runs on this machine are removed; a live writer's temporary is kept.
    """
    final = Path(path)
    if not final.parent.is_dir():
        return []
    removed = []
    pattern = re.compile(re.escape(f".{final.name}.pid") + r"([0-9]+)\..*\.tmp\Z")
    for entry in final.parent.glob(f".{glob.escape(final.name)}.pid*.tmp"):
        m = pattern.match(entry.name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched; a full disk or
    quota becomes an :class:`~facelt.errors.OutputError` naming ``path``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp_path, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"{final}: {exc.strerror}: it cannot be written (the previous "
                              "copy, if any, is kept)") from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (flushed and fsynced; a torn last line is ignored by :func:`read_jsonl`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as fh:
        fh.write(json.dumps(obj) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn final line from a killed process
    return rows


#: folders :func:`ensure_writable_dir` created in this process (the topmost new one of each)
_CREATED_FOLDERS: list[Path] = []


def forget_created_folders() -> None:
    """Start a new command: folders created before are no longer its to remove."""
    _CREATED_FOLDERS.clear()


def remove_created_empty_folders() -> list[Path]:
    """Remove the folders :func:`ensure_writable_dir` created in this process that hold no file
    (empty sub-folders are removed with them); a folder holding any file is kept whole.  What a
    failed command calls, so that it leaves no empty output folder behind.  Returns the removed."""
    removed = []
    while _CREATED_FOLDERS:
        top = _CREATED_FOLDERS.pop()
        if not top.is_dir() or top.is_symlink():
            continue
        walked = list(os.walk(top, topdown=False))
        if any(files for _, _, files in walked):
            continue
        try:
            for folder, _, _ in walked:
                os.rmdir(folder)
        except OSError:
            continue
        removed.append(top)
    return removed


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create folder ``path`` if needed and check a file can be written in it, before any work.

    Raises :class:`~facelt.errors.OutputError` naming ``what`` and the path when it is a file, a
    parent is a file, or the folder is not writable.  Returns the path.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, expected a folder")
    new = None
    probe_at = folder.absolute()
    while not probe_at.exists() and probe_at != probe_at.parent and not probe_at.is_symlink():
        new, probe_at = probe_at, probe_at.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{what} {folder}: a parent of it is a file, expected folders") from None
    except NotADirectoryError:
        raise OutputError(f"{what} {folder}: a parent of it is a file, expected folders") from None
    except PermissionError:
        raise OutputError(f"{what} {folder} cannot be created: permission denied") from None
    except OSError as exc:
        raise OutputError(f"{what} {folder} cannot be created: {exc.strerror}") from None
    if new is not None:
        _CREATED_FOLDERS.append(new)
    try:
        fd, probe = tempfile.mkstemp(prefix=".facelt-write-check.", dir=folder)
    except PermissionError:
        raise OutputError(f"{what} {folder} is not writable: permission denied") from None
    except OSError as exc:
        raise OutputError(f"{what} {folder} is not writable: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def ensure_writable_file(path: str | os.PathLike, what: str) -> Path:
    """Check that file ``path`` can be written (it is not a folder; its folder is writable, created
    if needed) before any work.  Raises :class:`~facelt.errors.OutputError`; returns the path."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{what} {target} is a folder, expected a file name")
    ensure_writable_dir(target.parent if str(target.parent) else Path("."), f"the folder of {what}")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(f"{what} {target} exists and is not writable")
    return target
