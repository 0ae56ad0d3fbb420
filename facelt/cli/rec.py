"""``facelt rec``: look inside MXNet RecordIO files and pack images into them, without mxnet.

``facelt rec inspect PREFIX [--json] [--limit N]`` prints the first N rows (default 20; 0: all)
of ``PREFIX.rec``, one per record (key, offset, header, payload length and sha256), and a summary
line (records, bytes, property); ``facelt rec pack --list L.lst --root DIR --out PREFIX``
is im2rec for the insightface layout: image file bytes stored as they are, grouped by label.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facelt.cli.common import non_negative_int

_COLUMNS = (("key", 8), ("offset", 12), ("flag", 4), ("label", 22), ("id", 10), ("id2", 6),
            ("payload_len", 11), ("payload_sha256", 64))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rec", help="MXNet RecordIO: inspect records, pack images",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="rec_command", metavar="ACTION")
    actions.required = True
    inspect = actions.add_parser("inspect", help="one row per record: key, offset, header, payload")
    inspect.add_argument("prefix", help="PREFIX of PREFIX.rec (and PREFIX.idx when present)")
    inspect.add_argument("--json", action="store_true", help="JSON lines instead of a table (no "
                                                             "summary line)")
    inspect.add_argument("--limit", type=non_negative_int, default=20, metavar="N",
                         help="print the first N records; 0 prints every record")
    pack = actions.add_parser("pack", help="im2rec without mxnet, insightface layout")
    pack.add_argument("--list", required=True, type=Path,
                      help="im2rec .lst: index<TAB>label<TAB>relative/path a line")
    pack.add_argument("--data-root", "--root", dest="root", required=True, type=Path,
                      help="folder the .lst paths are under")
    pack.add_argument("--out", required=True, type=Path,
                      help="PREFIX: writes PREFIX.rec, PREFIX.idx and property beside them")
    pack.add_argument("--image-size", default="112,112", type=_size,
                      help="H,W written to the property file (default 112,112)")
    pack.add_argument("--force", action="store_true",
                      help="replace an existing PREFIX.rec / PREFIX.idx (refused without it)")
    parser.set_defaults(func=run)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W, got {text!r}") from None
    return h, w


def run(args: argparse.Namespace) -> int:
    if args.rec_command == "inspect":
        return _inspect(args.prefix, args.json, args.limit)
    return _pack(args.list, args.root, args.out, args.image_size, args.force)


# ----------------------------------------------------------------------------- inspect
def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _inspect(prefix: str, as_json: bool, limit: int) -> int:
    import itertools

    from facelt.data.rec_inspect import inspect_records, record_summary
    out = sys.stdout
    rows = inspect_records(prefix)
    summary = record_summary(prefix)
    if not as_json:
        out.write("  ".join(name.rjust(width) for name, width in _COLUMNS).rstrip() + "\n")
    shown = 0
    for row in itertools.islice(rows, limit or None):
        shown += 1
        if as_json:
            out.write(json.dumps(row) + "\n")
        else:
            out.write("  ".join(_cell(row[name]).rjust(width) for name, width in _COLUMNS) + "\n")
    if not as_json:
        n = summary["records"]
        prop = f"; property {summary['property']}" if summary["property"] else ""
        more = "" if shown >= n else f" (--limit N shows N, --limit 0 all {n:,})"
        out.write(f"{n:,} records, {summary['bytes']:,} bytes in {summary['rec']}{prop}; "
                  f"{shown:,} shown{more}\n")
    return 0


# ----------------------------------------------------------------------------- pack
def _pack(lst: Path, root: Path, out: Path, image_size: tuple[int, int], force: bool) -> int:
    from facelt.data.rec_pack import pack_rec
    r = pack_rec(lst, root, out, image_size, force)
    print(f"packed {r.images} images of {r.identities} identities into {r.rec}, {r.idx}, "
          f"{r.property}", file=sys.stderr)
    return 0
