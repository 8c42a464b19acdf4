"""Formats diagnostics for people (`file:line:col: error[SC201]: message`) and for GitHub
Actions annotations. The one place that turns a Diagnostic into text."""

from __future__ import annotations

from .diagnostics import Diagnostic


def location(d: Diagnostic) -> str:
    parts = [d.file or "<spec>"]
    if d.line is not None:
        parts.append(str(d.line))
        if d.column is not None:
            parts.append(str(d.column))
    return ":".join(parts)


def format_text(d: Diagnostic) -> str:
    text = f"{location(d)}: {d.severity}[{d.code}]: {d.message}"
    if d.hint:
        text += f"\n  hint: {d.hint}"
    return text


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(d: Diagnostic) -> str:
    """A workflow command: ::error file=F,line=L,col=C,title=SC201::message."""
    props = [f"file={_escape_property(d.file or '<spec>')}"]
    if d.line is not None:
        props.append(f"line={d.line}")
    if d.column is not None:
        props.append(f"col={d.column}")
    props.append(f"title={d.code}")
    message = d.message + (f"\nhint: {d.hint}" if d.hint else "")
    return f"::{d.severity} {','.join(props)}::{_escape_data(message)}"


def summary(specs: int, invalid: int, warnings: int) -> str:
    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    return f"{n(specs, 'spec')} checked, {invalid} invalid, {n(warnings, 'warning')}"
