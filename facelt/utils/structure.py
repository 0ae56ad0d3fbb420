"""Checking the structure of JSON that facelt reads back (reports, summaries) before using it.

A schema is built from a few pieces: :data:`NUMBER` / :data:`INTEGER` (finite, not bool),
:data:`TEXT`, :data:`ANY`, :func:`nullable`, :class:`ListOf`, :class:`Fields` (required and
optional keys) and :class:`MapOf` (any keys, one value schema).  :func:`check_structure` walks a
value against one and raises a :class:`~facelt.errors.DataError` naming the file, the key
(``per_class[3].train_count``) and what was expected; :func:`read_json_file` reads the file with
every failure (missing, not UTF-8, not JSON, nested too deep) named the same way.
"""
from __future__ import annotations

import json
import math
import reprlib
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from facelt.errors import DataError

__all__ = ["Spec", "NUMBER", "INTEGER", "TEXT", "ANY", "nullable", "ListOf", "Fields", "MapOf",
           "check_structure", "read_json_file"]

_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 40


class Spec:
    """A schema piece: :meth:`check` raises :class:`DataError` at the first mismatch."""

    what = "a value"

    def check(self, value: Any, path: str, where: str) -> None:  # pragma: no cover -- abstract
        raise NotImplementedError

    def fail(self, value: Any, path: str, where: str) -> None:
        raise DataError(f"{where}: key '{path or '(top level)'}': expected {self.what}, got "
                        f"{_BRIEF.repr(value)}")


class _Number(Spec):
    def __init__(self, integer: bool, allow_none: bool = False) -> None:
        self.integer, self.allow_none = integer, allow_none
        self.what = ("a whole number" if integer else "a finite number") + \
            (" or null" if allow_none else "")

    def check(self, value: Any, path: str, where: str) -> None:
        if value is None and self.allow_none:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                ok = math.isfinite(float(value)) and (not self.integer or float(value).is_integer())
            except OverflowError:
                ok = False
        if not ok:
            self.fail(value, path, where)


class _Text(Spec):
    what = "a string"

    def check(self, value: Any, path: str, where: str) -> None:
        if not isinstance(value, str):
            self.fail(value, path, where)


class _Any(Spec):
    what = "any value"

    def check(self, value: Any, path: str, where: str) -> None:
        return None


class _Nullable(Spec):
    def __init__(self, inner: Spec) -> None:
        self.inner = inner
        self.what = f"{inner.what} or null"

    def check(self, value: Any, path: str, where: str) -> None:
        if value is not None:
            self.inner.check(value, path, where)


NUMBER: Spec = _Number(integer=False)
INTEGER: Spec = _Number(integer=True)
TEXT: Spec = _Text()
ANY: Spec = _Any()


def nullable(spec: Spec) -> Spec:
    """``spec`` or JSON null."""
    if isinstance(spec, _Number):
        return _Number(spec.integer, allow_none=True)
    return _Nullable(spec)


class ListOf(Spec):
    """A list whose every item matches ``item``, at least ``min_len`` long."""

    def __init__(self, item: Spec, min_len: int = 0) -> None:
        self.item, self.min_len = item, int(min_len)
        self.what = "a list" + (f" of at least {min_len} items" if min_len else "")

    def check(self, value: Any, path: str, where: str) -> None:
        if not isinstance(value, list) or len(value) < self.min_len:
            self.fail(value, path, where)
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]", where)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


class Fields(Spec):
    """A JSON object with the ``required`` keys, the ``optional`` ones when present (each with its
    schema), and other keys only when ``extra``."""

    what = "an object"

    def __init__(self, required: Mapping[str, Spec], optional: Optional[Mapping[str, Spec]] = None,
                 extra: bool = True) -> None:
        self.required, self.optional, self.extra = dict(required), dict(optional or {}), extra

    def check(self, value: Any, path: str, where: str) -> None:
        if not isinstance(value, dict):
            self.fail(value, path, where)
        for key, spec in self.required.items():
            if key not in value:
                raise DataError(f"{where}: key '{_join(path, key)}' is missing (expected "
                                f"{spec.what})")
            spec.check(value[key], _join(path, key), where)
        for key, spec in self.optional.items():
            if key in value:
                spec.check(value[key], _join(path, key), where)
        if not self.extra:
            known = set(self.required) | set(self.optional)
            for key in value:
                if key not in known:
                    raise DataError(f"{where}: key '{_join(path, key)}' is not expected here "
                                    f"(known: {', '.join(sorted(known))})")


class MapOf(Spec):
    """A JSON object of any keys, every value matching ``value``."""

    what = "an object"

    def __init__(self, value: Spec) -> None:
        self.value = value

    def check(self, value: Any, path: str, where: str) -> None:
        if not isinstance(value, dict):
            self.fail(value, path, where)
        for key, v in value.items():
            self.value.check(v, _join(path, key), where)


def check_structure(value: Any, spec: Spec, where: Union[str, Path]) -> Any:
    """``value`` unchanged when it matches ``spec``; :class:`DataError` naming ``where`` and the
    key otherwise."""
    spec.check(value, "", str(where))
    return value


def read_json_file(path: Union[str, Path], what: str = "JSON file") -> Any:
    """The JSON in ``path``; :class:`DataError` naming it when it is missing, unreadable, not
    UTF-8, not JSON or nested deeper than Python's parser goes."""
    p = Path(path)
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: {what} not found") from None
    except OSError as exc:
        raise DataError(f"{p}: {what} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not a readable {what}: not UTF-8 text (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{p}: not a readable {what} ({type(exc).__name__}: "
                        f"{str(exc)[:120]})") from None
