"""YAML recipes read with every size bounded and every ambiguity refused.

:func:`load_yaml_text` is ``yaml.safe_load`` plus the checks a recipe needs:

* the text is UTF-8 (a UTF-16 / UTF-32 byte-order mark is honoured): anything else is named by
  line and column instead of a ``UnicodeDecodeError``;
* at most :data:`MAX_YAML_BYTES` bytes and :data:`MAX_YAML_DEPTH` levels of nesting (checked on
  the event stream, before anything recursive runs);
* aliases expand to at most :data:`MAX_YAML_NODES` nodes (a 1 KB "billion laughs" file declares
  9**9), and an alias inside its own anchor is refused;
* a key that appears twice in one mapping is refused with both lines (YAML's loaders keep the
  last one silently); a merge key (``<<: *base``) is not a duplicate;
* scalars the constructor cannot make (an integer of 5000 digits ...) are named.

Every failure is a :class:`~facelt.errors.ConfigError` naming ``where``.
"""
from __future__ import annotations

import codecs
from typing import Any, Union

import yaml

from facelt.errors import ConfigError
from facelt.utils.text import decode_utf8

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "decode_yaml_bytes",
           "load_yaml_text"]

#: a recipe is a few KB; anything past this is not one
MAX_YAML_BYTES = 1 << 20
#: mappings and sequences inside each other
MAX_YAML_DEPTH = 64
#: nodes after every alias is expanded
MAX_YAML_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
         (codecs.BOM_UTF8, "utf-8-sig"))


def decode_yaml_bytes(raw: bytes, where: str) -> str:
    """The text of a YAML file's bytes: UTF-8, or UTF-16 / UTF-32 with a byte-order mark."""
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(raw):,} bytes; a recipe has at most {MAX_YAML_BYTES:,}")
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8")
    return decode_utf8(raw, where, ConfigError, encoding)


def _check_depth(text: str, where: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{where}: line {event.start_mark.line + 1}: nested more than "
                                  f"{MAX_YAML_DEPTH} levels deep; a recipe is a few levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _walk(node: yaml.Node, where: str, path: str, sizes: dict[int, int], open_: set[int],
          depth: int = 0) -> int:
    """The expanded size of ``node`` (memoised per node, so shared aliases cost one walk);
    refuses recursion, too many nodes or levels, duplicate keys and giant integers on the way."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    line = node.start_mark.line + 1
    if key in open_:
        raise ConfigError(f"{where}: line {line}: a recursive alias (an anchor used inside itself)")
    if depth > MAX_YAML_DEPTH:
        raise ConfigError(f"{where}: line {line}: nested more than {MAX_YAML_DEPTH} levels deep "
                          "through its aliases; a recipe is a few levels")
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith((":int", ":float")) \
            and len(node.value) > 100:
        raise ConfigError(f"{where}: '{path}' (line {line}): a number of {len(node.value):,} "
                          "characters")
    open_.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else None
            if name is not None and k.tag != _MERGE_TAG:
                if name in seen:
                    dotted = f"{path}.{name}" if path else name
                    raise ConfigError(f"{where}: key '{dotted}' appears twice (lines {seen[name]} "
                                      f"and {k.start_mark.line + 1}); YAML would keep the last "
                                      "one silently: keep one")
                seen[name] = k.start_mark.line + 1
            child = f"{path}.{name}" if path and name is not None else (name or path)
            size += (_walk(k, where, path, sizes, open_, depth + 1)
                     + _walk(v, where, child, sizes, open_, depth + 1))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            size += _walk(v, where, f"{path}[{i}]", sizes, open_, depth + 1)
    open_.discard(key)
    if size > MAX_YAML_NODES:
        raise ConfigError(f"{where}: line {line}: its aliases expand to more "
                          f"than {MAX_YAML_NODES:,} nodes (a recipe has a few hundred)")
    sizes[key] = size
    return size


def load_yaml_text(text: Union[str, bytes], where: str) -> Any:
    """``yaml.safe_load(text)`` with the checks of the module doc; ``None`` for an empty document."""
    if isinstance(text, bytes):
        text = decode_yaml_bytes(text, where)
    elif len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text):,} characters; a recipe has at most "
                          f"{MAX_YAML_BYTES:,} bytes")
    loader = None
    try:
        _check_depth(text, where)
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _walk(node, where, "", {}, set())
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except (ValueError, OverflowError, TypeError, RecursionError) as exc:
        raise ConfigError(f"{where}: a value YAML cannot read ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None
    finally:
        if loader is not None:
            loader.dispose()
