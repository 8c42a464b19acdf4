"""Formats diagnostics for people (`file:line:col: error[SC201]: message`) and for GitHub
Actions annotations. The one place that turns a Diagnostic into text, and that decides whether
it is coloured."""

from __future__ import annotations

import os
import re

from ..core.diagnostics import Diagnostic

# Characters that act on a terminal or reorder what it shows, instead of being shown: the C0
# and C1 controls (ESC starts screen-clearing, colour and OSC-8 hyperlink sequences; a newline
# or carriage return could forge a line), DEL, the line and paragraph separators, and the
# bidirectional overrides and isolates (U+202E can make a file name read backwards).
_CLASS = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNPRINTABLE = f"[\x00-\x1f{_CLASS}]"
# The same, but for the line breaks and tabs that multi-line output keeps: the streams write
# long outputs (a 10,000-layer JSON plan has 500,000 lines), so no call per kept character.
_UNPRINTABLE_BUT_LINES = f"[\x00-\x08\x0b\x0c\x0e-\x1f{_CLASS}]"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: object, keep: str = "") -> str:
    """``text`` safe to show on a terminal or in a CI log: every character that is not shown
    but acts (see _UNPRINTABLE) becomes an escape such as \\x1b or \\u202e, except those in
    ``keep`` (the streams keep the newlines of multi-line output). The one escaping function:
    every text that comes from a spec, a path or a dataset passes here on its way out."""
    text = str(text)
    if text.isprintable():  # no character to escape (they are all non-printable ones)
        return text
    if keep == "\n\t\r":
        if text.replace("\n", "").isprintable():  # most output: lines with nothing to escape
            return text
        return re.sub(_UNPRINTABLE_BUT_LINES, _escape, text)  # re compiles on first use
    if keep:
        return re.sub(_UNPRINTABLE, lambda m: m.group() if m.group() in keep else _escape(m),
                      text)
    return re.sub(_UNPRINTABLE, _escape, text)


class PrintableStream:
    """A text stream that escapes what it writes with printable(), keeping newlines, tabs and
    carriage returns (the progress bar redraws its line with one). The CLI wraps stdout and
    stderr in it, so no output of any command can reach the terminal raw."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable(text, keep="\n\t\r"))
        return len(text)

    def write_raw(self, text: str) -> int:
        """Write text whose every user-given part has already passed printable(): a coloured
        diagnostic, whose own escape sequences must reach the terminal."""
        return self._stream.write(text)

    def __getattr__(self, name: str):  # flush, isatty, fileno, encoding ...
        return getattr(self._stream, name)


class Output:
    """How the command line prints, for this run: set by the CLI from --color and -q."""

    def __init__(self) -> None:
        self.color = "auto"  # always, never, or auto: on a terminal unless NO_COLOR or TERM=dumb
        self.quiet = False  # only what makes the run fail


OUTPUT = Output()

# Select Graphic Rendition codes, as compilers colour their diagnostics.
_SGR = {"error": "1;31", "warning": "1;35", "location": "1", "hint": "1;36"}


def colored(stream) -> bool:
    """Whether to colour what goes to ``stream``: --color always or never decide; otherwise
    NO_COLOR (any non-empty value) turns it off, FORCE_COLOR (non-empty, not 0) on, and else
    only a terminal whose TERM is not dumb gets colour."""
    if OUTPUT.color != "auto":
        return OUTPUT.color == "always"
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR", "0") not in ("", "0"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _paint(text: str, what: str, color: bool) -> str:
    return f"\x1b[{_SGR[what]}m{text}\x1b[0m" if color else text


def location(d: Diagnostic) -> str:
    parts = [printable(d.file or "<spec>")]
    if d.line is not None:
        parts.append(str(d.line))
        if d.column is not None:
            parts.append(str(d.column))
    return ":".join(parts)


def format_text(d: Diagnostic, color: bool = False) -> str:
    """`file:line:col: error[SC201]: message` and `  hint: ...`; with ``color``, the location
    bold, the severity red or magenta and `hint:` cyan. Only escape sequences of its own are
    added: the file, the message and the hint pass printable() as always."""
    severity = _paint(f"{d.severity}[{d.code}]", d.severity, color)
    text = f"{_paint(location(d), 'location', color)}: {severity}: {printable(d.message)}"
    if d.hint:
        text += f"\n  {_paint('hint:', 'hint', color)} {printable(d.hint)}"
    return text


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(d: Diagnostic) -> str:
    """A workflow command: ::error file=F,line=L,col=C,title=SC201::message."""
    props = [f"file={_escape_property(printable(d.file or '<spec>'))}"]
    if d.line is not None:
        props.append(f"line={d.line}")
    if d.column is not None:
        props.append(f"col={d.column}")
    props.append(f"title={d.code}")
    message = printable(d.message) + (f"\nhint: {printable(d.hint)}" if d.hint else "")
    return f"::{d.severity} {','.join(props)}::{_escape_data(message)}"


def summary(specs: int, invalid: int, warnings: int) -> str:
    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    return f"{n(specs, 'spec')} checked, {invalid} invalid, {n(warnings, 'warning')}"
