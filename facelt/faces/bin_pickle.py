"""Unpickling an insightface verification ``.bin`` (a pickle from the internet) without running,
allocating or changing anything the file asks for.

What a ``.bin`` holds: a tuple or list ``(bins, issame)``; ``bins`` a list of byte strings
(Python 2 ``str`` read as bytes, Python 3 ``bytes``, or ``cv2.imencode`` output pickled as uint8
numpy arrays), ``issame`` a list of booleans or a bool / uint8 numpy array.  Three layers keep
everything else out:

1. **Opcodes** (:func:`scan_opcodes`, before unpickling): only the opcodes those objects need
   (lists, tuples, bytes, strings, ints, bools, the memo, ``GLOBAL`` / ``STACK_GLOBAL``,
   ``REDUCE`` and ``BUILD``).  Instantiating opcodes (``INST``, ``OBJ``, ``NEWOBJ``), the
   extension registry, persistent ids, dicts and sets, and out-of-band buffers are refused.
   Every length-prefixed argument is read from the file, so none can declare more bytes than the
   file has; memo indices are bounded by the number of opcodes (the C unpickler sizes its memo
   table by the largest index).
2. **Globals** (:data:`ALLOWED_GLOBALS`): numpy's array, dtype and scalar reconstruction and
   ``_codecs.encode``, each replaced by a facelt callable that builds only facelt's own inert
   placeholders (:class:`PickledArray`, :class:`PickledDtype`) or plain bytes / bools / ints.  No
   numpy object exists while the pickle runs, so ``BUILD`` can never reach a numpy dtype's or
   array's ``__setstate__``; ``numpy.ndarray`` itself cannot be called.  The callables refuse
   ``BUILD`` (no attribute of the allow-list can be set).
3. **States**: ``BUILD`` on a placeholder accepts exactly the state numpy writes for a uint8 /
   bool dtype, and for an array one whose data holds exactly ``prod(shape) x itemsize`` bytes;
   each placeholder is built at most once.

:func:`load_bin_pickle` returns the object with every placeholder turned into a read-only numpy
array over the pickle's own bytes (an array referenced many times is one array).
"""
from __future__ import annotations

import codecs
import io
import pickle
import pickletools
from typing import Any, Callable, Optional

import numpy as np

from facelt.errors import DataError

__all__ = ["UnsafePickleError", "ALLOWED_OPCODES", "ALLOWED_GLOBALS", "PickledArray",
           "PickledDtype", "scan_opcodes", "load_bin_pickle"]


class UnsafePickleError(DataError):
    """A ``.bin`` pickle asked for something a verification set never holds."""


#: the opcodes a verification set's objects need (protocols 0 to 5)
ALLOWED_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
    "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "BYTEARRAY8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2",
    "TUPLE3",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
})
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}

#: numpy's pickled state of the uint8 and bool dtypes (version 3, no byte order, no fields)
_DTYPE_STATE = (3, "|", None, None, None, -1, -1, 0)
_DTYPES = {"u1": np.dtype(np.uint8), "uint8": np.dtype(np.uint8), "|u1": np.dtype(np.uint8),
           "b1": np.dtype(np.bool_), "bool": np.dtype(np.bool_), "|b1": np.dtype(np.bool_),
           "?": np.dtype(np.bool_)}


def _text(value: Any) -> Any:
    """A Python 2 ``str`` read as bytes, as text (other values unchanged)."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class PickledDtype:
    """numpy's ``dtype(spec, align, copy)`` of a uint8 or bool dtype, before and after its
    ``BUILD``; :attr:`dtype` is the real numpy dtype it stands for (never given to the pickle)."""

    __slots__ = ("dtype", "built")

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        name = _text(spec)
        if not isinstance(name, str) or name not in _DTYPES:
            raise UnsafePickleError(f"numpy dtype {_short(spec)} (only uint8 and bool are allowed)")
        if align not in (False, True, 0, 1) or copy not in (False, True, 0, 1):
            raise UnsafePickleError(f"numpy dtype arguments {_short((spec, align, copy))}")
        self.dtype = _DTYPES[name]
        self.built = False

    def __setstate__(self, state: Any) -> None:
        if self.built:
            raise UnsafePickleError(f"a second BUILD on numpy dtype {self.dtype}")
        norm = tuple(_text(v) for v in state) if isinstance(state, tuple) else state
        if norm != _DTYPE_STATE:
            raise UnsafePickleError(f"numpy dtype {self.dtype} with state {_short(state)} "
                                    f"(only {_DTYPE_STATE} is allowed)")
        self.built = True


class PickledArray:
    """A numpy uint8 / bool array as pickled (``_reconstruct`` + ``BUILD``, or ``_frombuffer``),
    held as its raw bytes; :meth:`array` gives the read-only numpy array."""

    __slots__ = ("data", "shape", "dtype", "fortran", "built")

    def __init__(self) -> None:
        self.data = b""
        self.shape: tuple[int, ...] = (0,)
        self.dtype: np.dtype = np.dtype(np.uint8)
        self.fortran = False
        self.built = False

    def fill(self, shape: Any, dtype: Any, fortran: Any, data: Any) -> "PickledArray":
        if self.built:
            raise UnsafePickleError("a second BUILD on a numpy array")
        if not isinstance(dtype, PickledDtype) or not dtype.built:
            raise UnsafePickleError(f"array dtype {_short(dtype)} (a uint8 or bool numpy dtype "
                                    "is expected)")
        if not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape) \
                or len(shape) > 8:
            raise UnsafePickleError(f"array shape {_short(shape)}")
        if fortran not in (False, True, 0, 1):
            raise UnsafePickleError(f"array order flag {_short(fortran)}")
        if isinstance(data, str):  # numpy pickles a Python 2 str data buffer as latin-1 text
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError(f"array data of type {type(data).__name__} (bytes expected)")
        count = 1
        for s in shape:
            count *= s
        need = count * dtype.dtype.itemsize
        if need != len(data):
            raise UnsafePickleError(f"array of shape {shape} needs {need} bytes of data, the "
                                    f"pickle holds {len(data)}")
        self.data, self.shape, self.dtype = bytes(data), shape, dtype.dtype
        self.fortran, self.built = bool(fortran), True
        return self

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise UnsafePickleError(f"numpy array state {_short(state)} (expected (1, shape, "
                                    "dtype, is_fortran, data))")
        self.fill(*state[1:])

    def array(self) -> np.ndarray:
        a = np.frombuffer(self.data, dtype=np.uint8)
        if self.dtype == np.bool_:
            a = a != 0  # any byte other than 0 is True (numpy never sees a bool byte of 2)
        return a.reshape(self.shape, order="F" if self.fortran else "C")


class _Global:
    """An allowed global: callable as numpy's pickles call it, and otherwise inert (no
    attributes to set; ``BUILD`` on it is refused)."""

    __slots__ = ("_name", "_fn")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self._name, self._fn = name, fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"BUILD on {self._name}")

    def __repr__(self) -> str:
        return self._name


def _no_call(*args: Any) -> Any:
    raise UnsafePickleError(f"numpy.ndarray{_short(args)} called directly (only numpy's "
                            "array reconstruction may name it)")


_NDARRAY = _Global("numpy.ndarray", _no_call)


def _reconstruct(subtype: Any, shape: Any = None, typecode: Any = None) -> PickledArray:
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"array reconstruction of {_short(subtype)} (only numpy.ndarray)")
    if shape not in ((0,), 0) or _text(typecode) != "b":
        raise UnsafePickleError(f"array reconstruction arguments {_short((shape, typecode))}")
    return PickledArray()


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, PickledDtype) or not dtype.built:
        raise UnsafePickleError(f"numpy scalar of dtype {_short(dtype)}")
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != 1:
        raise UnsafePickleError(f"numpy scalar data {_short(data)} for {dtype.dtype}")
    value = data[0]
    return bool(value) if dtype.dtype == np.bool_ else int(value)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> PickledArray:
    order = _text(order)
    if order not in ("C", "F"):
        raise UnsafePickleError(f"array order {_short(order)}")
    return PickledArray().fill(shape, dtype, order == "F", buf)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or _text(encoding) not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode{_short((text, encoding))}")
    return codecs.encode(text, "latin1")


#: ``(module, name)`` -> the facelt callable that stands for it
ALLOWED_GLOBALS: dict[tuple[str, str], _Global] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("numpy.dtype", PickledDtype),
    ("_codecs", "encode"): _Global("_codecs.encode", _encode),
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED_GLOBALS[(_mod, "_reconstruct")] = _Global(f"{_mod}._reconstruct", _reconstruct)
    ALLOWED_GLOBALS[(_mod, "scalar")] = _Global(f"{_mod}.scalar", _scalar)
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    ALLOWED_GLOBALS[(_mod, "_frombuffer")] = _Global(f"{_mod}._frombuffer", _frombuffer)
del _mod


def scan_opcodes(data: bytes) -> None:
    """Check every opcode of the pickle ``data`` before it is unpickled (see the module doc);
    :class:`UnsafePickleError` for a refused one, :class:`DataError` when the stream is damaged
    (a length beyond the end of the file, an unknown opcode, no STOP)."""
    count = 0
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            count += 1
            if op.name not in ALLOWED_OPCODES:
                raise UnsafePickleError(f"opcode {op.name} at byte {pos} (a verification set "
                                        "never needs it)")
            if op.name in _MEMO_PUTS and (not isinstance(arg, int) or not 0 <= arg <= count):
                raise UnsafePickleError(f"memo index {arg} at byte {pos} (a pickle of {count} "
                                        "opcodes so far numbers its memo from 0)")
    except ValueError as exc:
        raise DataError(f"not a complete pickle ({exc})") from None
    if count == 0:
        raise DataError("empty file")


class _BinUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"global {module}.{name} is not allowed in a verification "
                                    "set") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not allowed in a verification set")


def _arrays(obj: Any, seen: Optional[dict[int, Any]] = None, depth: int = 0) -> Any:
    """``obj`` with every :class:`PickledArray` replaced by its numpy array (two levels of lists
    and tuples, all a verification set has; one array per placeholder)."""
    seen = {} if seen is None else seen
    if isinstance(obj, PickledArray):
        if not obj.built:
            raise UnsafePickleError("a numpy array without its state")
        if id(obj) not in seen:
            seen[id(obj)] = obj.array()
        return seen[id(obj)]
    if isinstance(obj, (list, tuple)) and depth < 2:
        return type(obj)(_arrays(x, seen, depth + 1) for x in obj)
    return obj


def load_bin_pickle(data: bytes) -> Any:
    """The object a verification ``.bin``'s bytes ``data`` hold (see the module doc).

    Raises :class:`UnsafePickleError` for anything outside the allow-list and :class:`DataError`
    when the pickle is damaged; nothing the file names is executed."""
    scan_opcodes(data)
    try:
        obj = _BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any unpickling failure is the file's fault
        raise DataError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    return _arrays(obj)
