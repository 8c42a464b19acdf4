"""One module per command, each with add_parser(subparsers) and run(args) -> exit code.

Command modules import only the light core at import time: torch and graphviz are imported
inside run() of the commands that need them."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from ..core.diagnostics import Diagnostic
from ..core.layers.base import INT64_MAX
from ..outputs.report import OUTPUT, colored, format_text, printable

if TYPE_CHECKING:  # argparse is imported where a parser is built: `plan FILE` builds none
    import argparse

EXIT_OK, EXIT_INVALID, EXIT_INPUT = 0, 1, 2


def fail(command: str, message: str, code: int = EXIT_INPUT, *, keep: str = "") -> int:
    """Say why ``command`` cannot go on, on stderr and escaped; the exit code to return.
    Each command binds its name: ``_fail = partial(fail, "build")``."""
    print(f"shapecheck {command}: error: {printable(message, keep=keep)}", file=sys.stderr)
    return code


def input_shape(text: str) -> tuple[int, int, int]:
    """`3x32x32`, `3×32×32` or `3,32,32`."""
    parts = re.split(r"\s*[x×,]\s*", text.strip().lower())
    if len(parts) != 3 or not all(_size(p) for p in parts):
        raise _type_error(f"expected C×H×W such as 3x32x32, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _type_error(message: str) -> Exception:
    import argparse

    return argparse.ArgumentTypeError(message)


def _size(text: str) -> bool:
    """A positive int that torch can hold (int64), written in ASCII digits."""
    return text.isascii() and text.isdigit() and len(text) <= 19 and 0 < int(text) <= INT64_MAX


def batch_size(text: str) -> int | str:
    if _size(text):
        return int(text)
    if text.isidentifier():
        return text
    raise _type_error(
        f"expected a positive int (at most 2**63 - 1) or a symbol such as N, got {text[:40]!r}")


def add_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", metavar="NAME",
                        help="one of the spec's `scales` (default: its default_scale)")


def depth(text: str) -> int:
    """--depth: a positive int (1 shows the top-level layers only)."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise _type_error(f"expected a positive int, got {text!r}")


def add_shape_overrides(parser: argparse.ArgumentParser) -> None:
    add_scale(parser)
    parser.add_argument("--batch", type=batch_size, metavar="B",
                        help="batch size (an int or a symbol such as N); overrides the spec")
    parser.add_argument("--input", type=input_shape, metavar="CxHxW",
                        help="input shape such as 3x32x32; overrides the spec")


def print_diagnostics(diagnostics: list[Diagnostic], stream=None, *, strict: bool = False,
                      form=None) -> None:
    """Print diagnostics, by default to stdout: they are what the command found, its output
    (docs/cli.md). With -q, warnings are left out unless ``strict`` makes them fail the run.
    ``form``: a formatter such as format_github, instead of the (coloured) text form."""
    if not diagnostics:  # most specs `check` reads: nothing to print, no terminal to ask
        return
    stream = stream or sys.stdout
    color = form is None and colored(stream)
    # A coloured line bypasses the stream's escaping: format_text escaped the user's text
    # itself, so its own colour codes are the only escape sequences in it.
    write = getattr(stream, "write_raw", stream.write) if color else stream.write
    for d in diagnostics:
        if OUTPUT.quiet and not strict and not d.is_error:
            continue
        write((format_text(d, color) if form is None else form(d)) + "\n")


def exit_code(plans, strict: bool) -> int:
    if any(not p.valid for p in plans):
        return EXIT_INVALID
    if strict and any(p.warnings for p in plans):
        return EXIT_INVALID
    return EXIT_OK
