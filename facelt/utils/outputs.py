"""Outputs that must not destroy inputs, and writes that never follow a symbolic link.

Every writer command names the files it reads and the files it will write to
:func:`refuse_output_over_inputs` before any work: an output that resolves (symbolic links
followed, hard links by inode) to one of its inputs is refused with an
:class:`~facelt.errors.OutputError` naming the flag, so ``--out`` equal to the checkpoint, the
``.rec`` or the list never overwrites it.  Lock files and temporaries (a ``.partial`` feature
file) are opened with :func:`open_no_follow`: a symbolic link planted at such a path is refused
(naming the path), never truncated through.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterable, Optional, Union

from facelt.errors import OutputError

PathLike = Union[str, os.PathLike]


def _identity(path: Path) -> tuple:
    """What a path names on disk: ``(dev, inode)`` when it exists, else its resolved path."""
    real = os.path.realpath(path)  # links and ``..`` resolved (also below folders not there yet)
    try:
        st = os.stat(real)
    except OSError:
        return ("path", real)
    return ("inode", st.st_dev, st.st_ino)


def refuse_output_over_inputs(out: PathLike, inputs: Iterable[Optional[PathLike]], flag: str,
                              written: Iterable[PathLike] = ()) -> None:
    """Raise :class:`OutputError` when output ``out`` (or one of ``written``: the other files the
    command writes, e.g. a manifest beside it) is one of ``inputs`` (None entries are skipped).

    Paths are compared by what they name on disk: symbolic links resolved, hard links by inode.
    Nothing is created or changed."""
    named = {}
    for p in inputs:
        if p is None or str(p) == "":
            continue
        named.setdefault(_identity(Path(p)), Path(p))
    for target in [Path(out), *map(Path, written)]:
        same = named.get(_identity(target))
        if same is not None:
            where = "" if target == Path(out) else f" (it writes {target})"
            raise OutputError(f"{flag} {out}{where} is the input {same}: writing it would destroy "
                              f"that input; choose another {flag}")


def refuse_symlink(path: PathLike, what: str) -> None:
    """Raise :class:`OutputError` when ``path`` is a symbolic link (facelt never writes a lock or
    a temporary through one: the link's target would be truncated)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"{what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{what} {path} is a symbolic link (to {os.readlink(path)}); facelt does "
                          "not write through it: remove the link")


def open_no_follow(path: PathLike, flags: int, what: str, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_NOFOLLOW, mode)``; a symbolic link at ``path`` is an
    :class:`OutputError` naming it (see :func:`refuse_symlink`)."""
    refuse_symlink(path, what)
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # made a link between the check and the open
            refuse_symlink(path, what)
            raise OutputError(f"{what} {path} is a symbolic link; remove it") from None
        raise
