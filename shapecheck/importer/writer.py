"""The imported layer tree as spec YAML a person would write: one flow mapping per layer (a bare
type name for a layer with nothing to set), blocks in block style, and above each run of
layers from one line of source, that line as a comment."""

from __future__ import annotations

import yaml

from .. import __version__
from ..outputs.report import printable
from .steps import Source
from .structure import Leaf, Nest, Use

MARKER = "# Imported by shapecheck"  # the first line of every file import writes
INDENT = "  "


def _flow(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False,
                          width=float("inf"), allow_unicode=True).strip()
    return text.removesuffix("\n...")  # PyYAML ends a lone scalar as a document


def _comment(text: str) -> str:
    """Source text as one comment line: nothing in it can end the comment."""
    return printable(text).replace("\n", " ")


class _Writer:
    def __init__(self, comments: bool = True) -> None:
        self.lines: list[str] = []
        self.last: Source | None = None
        self.comments = comments

    def source(self, where: Source | None, indent: str) -> None:
        if not self.comments or where is None or where == self.last:
            return
        self.last = where
        text = f": {where.text}" if where.text else ""
        self.lines.append(f"{indent}# {_comment(str(where) + text)}")

    def items(self, items: list, indent: str) -> None:
        for item in items:
            if isinstance(item, Use):
                use = {"use": item.template, "name": item.name}
                if item.repeat > 1:
                    use["repeat"] = item.repeat
                self.lines.append(f"{indent}- {_flow(use)}")
            elif isinstance(item, Leaf):
                self.source(item.step.where, indent)
                entry = item.entry
                text = entry["type"] if list(entry) == ["type"] else _flow(entry)
                self.lines.append(f"{indent}- {text}")
            else:
                self.source(item.where, indent)
                self.block(item, indent, "- ")

    def block(self, item, indent: str, bullet: str) -> None:
        """A block's fields, the first after ``bullet`` ("- " in a list, "" for a template)."""
        head = {"type": item.type, **({"name": item.name} if item.name else {})}
        if item.inputs:
            head["from"] = item.inputs
        if item.activation:
            head["activation"] = item.activation
        inner = indent + " " * len(bullet)
        first, *rest = [f"{k}: {_flow(v)}" for k, v in head.items()]
        self.lines += [f"{indent}{bullet}{first}", *(f"{inner}{line}" for line in rest)]
        if item.type in ("residual", "gate"):
            for key, branch in item.branches:
                if key == "shortcut" and not branch:
                    continue  # an absent shortcut is the identity
                self.lines.append(f"{inner}{key}:" + ("" if branch else " []"))
                self.items(branch, inner + INDENT)
        else:
            self.lines.append(f"{inner}branches:")
            for _, branch in item.branches:
                self.lines.append(f"{inner}  -" + ("" if branch else " []"))
                self.items(branch, inner + INDENT * 2)


def render(block: Nest) -> str:
    """A block's text without comments: what tells two templates apart."""
    writer = _Writer(comments=False)
    writer.block(block, "", "")
    return "\n".join(writer.lines)


def to_yaml(items: list, *, name: str, input_shape: tuple[int, ...], origin: str,
            templates: dict[str, Nest] | None = None, returned_key=None,
            outputs: list[str] | None = None, returned_keys: list | None = None) -> str:
    """The spec text. ``origin`` says what was imported (``model.py:Net``); ``returned_key``
    the key of the one tensor in the dict the forward returns, if it returns a dict of one;
    ``outputs`` the layers of the tensors it returns, where it returns several, and
    ``returned_keys`` their keys where it returns them in a dict."""
    shape = "×".join(map(str, input_shape))
    writer = _Writer()
    lines = [
        f"{MARKER} {__version__} from {_comment(origin)}, traced with torch.fx on a {shape} input.",
        "# Each comment gives the line of source the layers below it come from.",
    ]
    if returned_key is not None:
        lines.append(f"# The forward returns {{{_comment(repr(returned_key))}: tensor}}; the "
                     "spec's output is that tensor.")
    if outputs and returned_keys:
        pairs = ", ".join(f"{_comment(repr(k))}: {n}" for k, n in zip(returned_keys, outputs))
        lines.append(f"# The forward returns {{{pairs}}}: `outputs:` lists them in that order.")
    lines += [
        f"name: {name}",
        f"input: {_flow({'shape': list(input_shape), 'batch': 'N'})}",
    ]
    if templates:
        writer.lines.append("templates:")
        for template, block in templates.items():
            writer.lines.append(f"{INDENT}{template}:")
            writer.last = None
            writer.source(block.where, INDENT * 2)
            writer.block(block, INDENT * 2, "")
    writer.lines.append("layers:")
    writer.last = None
    writer.items(items, INDENT)
    if outputs:
        writer.lines.append(f"outputs: {_flow(outputs)}")
    return "\n".join(lines + writer.lines) + "\n"
