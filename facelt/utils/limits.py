"""Size bounds checked before anything a file declares is allocated.

A file can declare any size in a few bytes (an array shape, an image header, a count).  Readers
check the bytes such a declaration needs against :func:`memory_limit_bytes` -- the machine's
physical memory, or the process's ``RLIMIT_DATA`` / ``RLIMIT_AS`` when lower -- with
:func:`check_allocation` before allocating, so a hostile or corrupt file ends in a
:class:`~facelt.errors.DataError` naming it instead of exhausting memory.
"""
from __future__ import annotations

import os
from typing import Optional, Type

from facelt.errors import DataError, FaceltError

__all__ = ["memory_limit_bytes", "check_allocation", "format_bytes"]


#: the largest class index a list or a rec may hold: 16.7M identities (the largest public face
#: sets hold a few million); a larger label is a damaged file, and would size the classifier,
#: the class counts and the identity ranges by it
MAX_LABEL = 2 ** 24 - 1


def format_bytes(n: int) -> str:
    """``1288490188`` -> ``'1.2 GiB'`` (for messages)."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def memory_limit_bytes() -> int:
    """The most memory this process can hold: physical memory, or the soft ``RLIMIT_DATA`` /
    ``RLIMIT_AS`` limit when one is lower."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover -- not POSIX
        pass
    try:
        import resource
        for which in ("RLIMIT_DATA", "RLIMIT_AS"):
            soft = resource.getrlimit(getattr(resource, which))[0]
            if soft != resource.RLIM_INFINITY and soft > 0:
                limits.append(int(soft))
    except (ImportError, AttributeError, ValueError, OSError):  # pragma: no cover
        pass
    return min(limits) if limits else 1 << 40


def check_allocation(nbytes: int, what: str, error: Type[FaceltError] = DataError,
                     limit: Optional[int] = None) -> None:
    """Raise ``error`` naming ``what`` when ``nbytes`` cannot fit in memory (more than
    ``limit``, by default :func:`memory_limit_bytes`)."""
    cap = memory_limit_bytes() if limit is None else int(limit)
    if int(nbytes) > cap:
        raise error(f"{what} needs {format_bytes(int(nbytes))} ({int(nbytes):,} bytes), more than "
                    f"the {format_bytes(cap)} of memory this process can have")
