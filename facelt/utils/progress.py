"""tqdm progress bars that respect quiet mode (``FACELT_QUIET=1`` or ``--quiet``)."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Optional, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def quiet() -> bool:
    return os.environ.get("FACELT_QUIET", "") not in ("", "0", "false")


def set_quiet(value: bool) -> None:
    os.environ["FACELT_QUIET"] = "1" if value else "0"


def progress(iterable: Optional[Iterable[T]] = None, *, desc: str = "", total: Optional[int] = None,
             unit: str = "it", disable: bool = False, **kw) -> "tqdm[T]":
    """A tqdm bar on stderr, disabled in quiet mode or on non-primary ranks (``disable=True``)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable or quiet(),
                file=sys.stderr, dynamic_ncols=True, leave=False, **kw)


def image_batches(loader, desc: str, disable: bool = False):
    """Iterate a DataLoader of ``(x, ...)`` batches with a bar counting images (images/s)."""
    try:
        total = len(loader.sampler) if loader.sampler is not None else len(loader.dataset)
    except TypeError:
        total = None
    with progress(total=total, desc=desc, unit="img", disable=disable) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch[0]))
