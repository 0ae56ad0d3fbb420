"""The ``facelt`` command line.

The CLI is the only place that knows the engine (``facelt``), the benchmark pipelines
(``pipelines``) and the MegaFace evaluation (``eval_megaface``) together.  Each sub-command lives
in its own module with a ``register(subparsers)`` function; they are listed explicitly below.
"""
from __future__ import annotations

import argparse
import sys

from facelt.cli.common import apply_help_format
from facelt.errors import FaceltError
from facelt.utils.io import forget_created_folders, remove_created_empty_folders
from facelt.utils.progress import set_quiet


def _command_modules():
    # Explicit imports: no string-based plugin loading.
    from facelt.cli import (align, check, classify, compare, config_cmd, demo, export, extract, ijb,
                            megaface, prepare, rec, report, stats, train, verify)
    return [demo, train, config_cmd, classify, compare, prepare, check, stats, rec, align, extract,
            megaface, report, verify, ijb, export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facelt",
        description="Open long-tailed recognition (OLTR) at identity scale.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (for logs)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the installed facelt version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _command_modules():
        module.register(sub)
    apply_help_format(parser)
    return parser


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's when run from a source tree)."""
    from importlib import metadata
    try:
        return metadata.version("facelt")
    except metadata.PackageNotFoundError:
        import re
        from pathlib import Path
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) \
            if pyproject.exists() else None
        return m.group(1) if m else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = "--quiet" in argv  # accepted before or after the sub-command
    argv = [a for a in argv if a != "--quiet"]
    args = parser.parse_args(argv)
    if quiet:
        set_quiet(True)
    forget_created_folders()
    try:
        rc = args.func(args)
    except FaceltError as exc:
        remove_created_empty_folders()  # a refused command leaves no empty --out folder
        print(f"facelt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as cat does
        silence_stdout()
        return 141
    except Exception as exc:  # noqa: BLE001 -- a bug: say so, keep the traceback for the report
        remove_created_empty_folders()
        report_internal_error(args.command, argv, exc)
        return 1
    return int(rc or 0)


def silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush into a closed pipe raises
    nothing."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no file (captured by a test)
        pass


def report_internal_error(command: str, argv: list[str], exc: BaseException) -> None:
    """One line on stderr for an exception that is not a :class:`FaceltError` (a bug, not the
    user's input): what it was and where its traceback was saved (a file in the temporary folder,
    with the command line and version); ``FACELT_DEBUG=1`` prints the traceback too."""
    import os
    import shlex
    import tempfile
    import traceback
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    what = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    if os.environ.get("FACELT_DEBUG", "") not in ("", "0"):
        print(trace, file=sys.stderr, end="")
    body = (f"facelt {package_version()}, python {sys.version.split()[0]}\n"
            f"command: facelt {shlex.join(argv)}\n\n{trace}")
    try:
        fd, path = tempfile.mkstemp(prefix="facelt-internal-error-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
        where = f"this traceback: {path}"
    except OSError:  # no writable temporary folder: the traceback goes to stderr instead
        print(body, file=sys.stderr)
        where = "the traceback above"
    print(f"facelt {command}: internal error: {what}; please report it with the command line "
          f"and {where}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
