"""Blocks: residual (body + shortcut, added) and concat (branches on one input, joined on channels).

A block holds lists of layers, which may hold blocks again. The planner plans each branch from
the block's input and then asks the block to merge the branch outputs."""

from typing import Any, Literal

from pydantic import Field

from .base import Dims, LayerSpec, ShapeError


def _chw(x: Dims) -> str:
    return "×".join(map(str, x[1:]))  # 128×28×28, as the table writes shapes


class Residual(LayerSpec):
    type: Literal["residual"]
    # Raw entries at first; parse_children() replaces them with validated layers.
    body: list[Any] = Field(min_length=1)
    shortcut: list[Any] = Field(default_factory=list)  # empty: the identity

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
    s = _one_by_one_stride(x[2:], body[2:])
    if s is None:
        return (f"the body changes {x[2]}×{x[3]} to {body[2]}×{body[3]}, "
                "which no 1×1 conv stride gives")
    stride = "" if s == 1 else f", stride: {s}"
    return (
        f"use shortcut: [{{type: conv2d, out_channels: {body[1]}, kernel_size: 1{stride}, "
        f"bias: false}}, batchnorm2d]"
    )


def _one_by_one_stride(sizes: Dims, outs: Dims) -> int | None:
    """The smallest stride s with (n − 1) // s + 1 == out on every axis, or None.

    Solved per axis as an interval of s rather than by trying strides: the planner also plans
    at huge trial inputs (to find the smallest input that fits), where a search would hang."""
    lo, hi = 1, None
    for n, out in zip(sizes, outs):
        m, q = n - 1, out - 1  # need q·s <= m < (q + 1)·s
        lo = max(lo, m // (q + 1) + 1)
        if q > 0:
            hi = m // q if hi is None else min(hi, m // q)
    return lo if hi is None or lo <= hi else None


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
        for i, out in enumerate(outs):
            if len(out) < 2:  # torch.cat(dim=1) raises: there is no dim 1
                raise ShapeError(
                    "SC209",
                    f"branch {i} gives a 1-d tensor, but concat joins on dim 1 (channels)",
                    "flatten with start_dim: 1 (the default) keeps the batch dimension",
                )
        first = outs[0]
        for i, out in enumerate(outs[1:], start=1):
            if len(out) != len(first) or out[:1] + out[2:] != first[:1] + first[2:]:
                raise ShapeError(
                    "SC212",
                    f"branch {i} gives {_chw(out)} but branch 0 gives {_chw(first)}: "
                    "concat needs every dim but channels to agree",
                    f"make branch {i} keep {_chw(first[1:])}: stride 1 and padding (k−1)/2 "
                    "on its convs and pools" if len(out) == len(first) == 4 else None,
                )
        channels = sum(out[1] for out in outs)
        out = (first[0], channels, *first[2:])
        return out, " + ".join(_chw(o) for o in outs) + f" → {_chw(out)} (joined on channels)"
