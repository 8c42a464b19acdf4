"""Blocks: residual (body + shortcut, added) and concat (branches on one input, joined on channels).

A block holds lists of layers, which may hold blocks again. The planner plans each branch from
the block's input and then asks the block to merge the branch outputs."""

from typing import Any, Literal

from pydantic import Field

from .base import Dims, LayerSpec, ShapeError, times
from .conv import conv_out


def _chw(x: Dims) -> str:
    return times(x[1:])


class Residual(LayerSpec):
    type: Literal["residual"]
    # Raw entries at first; parse_children() replaces them with validated layers.
    body: list[Any] = Field(min_length=1)
    shortcut: list[Any] = []  # empty: the identity

    family = "block"
    name_prefix = "res"
    torch_class = ""

    def branch_lists(self) -> list[tuple[str, list[LayerSpec]]]:
        return [("body", self.body), ("shortcut", self.shortcut)]

    def parse_children(self, parse, loc: tuple) -> "tuple[Residual, list[dict]]":
        body, errors = parse(self.body, (*loc, "body"))
        shortcut, more = parse(self.shortcut, (*loc, "shortcut"))
        return self.model_copy(update={"body": body, "shortcut": shortcut}), errors + more

    def merge(self, x: Dims, outs: list[Dims]) -> tuple[Dims, str]:
        body, shortcut = outs
        label = "shortcut" if self.shortcut else "identity shortcut"
        if body == shortcut:
            return body, f"body {_chw(body)} + {label} {_chw(shortcut)} = {_chw(body)}"
        raise ShapeError(
            "SC211",
            f"body gives {_chw(body)} but the {label} gives {_chw(shortcut)}: they cannot be added",
            _shortcut_hint(x, body),
        )


def _shortcut_hint(x: Dims, body: Dims) -> str | None:
    """The 1×1 conv shortcut (with its stride) that maps the input to the body's shape."""
    if len(x) != 4 or len(body) != 4:
        return None
    for s in range(1, max(x[2], x[3]) + 1):
        if (conv_out(x[2], 1, s, 0, 1), conv_out(x[3], 1, s, 0, 1)) == body[2:]:
            stride = "" if s == 1 else f", stride: {s}"
            return (
                f"use shortcut: [{{type: conv2d, out_channels: {body[1]}, kernel_size: 1{stride}, "
                f"bias: false}}, batchnorm2d]"
            )
    return f"the body changes {x[2]}×{x[3]} to {body[2]}×{body[3]}, which no 1×1 conv stride gives"


class Concat(LayerSpec):
    type: Literal["concat"]
    # Raw entries at first; parse_children() replaces them with validated layers.
    branches: list[list[Any]] = Field(min_length=1)  # an empty branch is the identity

    family = "block"
    name_prefix = "concat"
    torch_class = ""

    def branch_lists(self) -> list[tuple[int, list[LayerSpec]]]:
        return list(enumerate(self.branches))

    def parse_children(self, parse, loc: tuple) -> "tuple[Concat, list[dict]]":
        branches, errors = [], []
        for j, branch in enumerate(self.branches):
            parsed, more = parse(branch, (*loc, "branches", j))
            branches.append(parsed)
            errors += more
        return self.model_copy(update={"branches": branches}), errors

    def merge(self, x: Dims, outs: list[Dims]) -> tuple[Dims, str]:
        first = outs[0]
        for i, out in enumerate(outs[1:], start=1):
            if len(out) != len(first) or out[:1] + out[2:] != first[:1] + first[2:]:
                raise ShapeError(
                    "SC212",
                    f"branch {i} gives {_chw(out)} but branch 0 gives {_chw(first)}: "
                    "concat needs every dim but channels to agree",
                    f"make branch {i} keep {times(first[2:])}: stride 1 and padding (k−1)/2 "
                    "on its convs and pools" if len(out) == len(first) == 4 else None,
                )
        channels = sum(out[1] for out in outs)
        out = (first[0], channels, *first[2:])
        return out, " + ".join(_chw(o) for o in outs) + f" → {_chw(out)} (joined on channels)"
