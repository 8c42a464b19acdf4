"""residual: y = body(x) + shortcut(x); an absent or empty shortcut is the identity. The add
broadcasts as torch's does (a body giving C×1×1 adds to a shortcut giving C×H×W)."""

from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from .base import Context, Dims, ShapeError
from .block import MIXED_RANKS, Block, broadcast, check_same_rank, chw


def _activation(value: Any) -> str:
    """A shape-keeping activation with no required fields, by type name: relu, silu …"""
    from . import KINDS, normalize_type

    kind = KINDS.get(normalize_type(value)) if isinstance(value, str) else None
    if kind is None or not _usable(kind):
        names = [name for name, k in KINDS.items() if _usable(k)]
        raise PydanticCustomError("activation", "must be an activation type such as relu, got "
                                  "{value} (one of: {names})",
                                  {"value": repr(value), "names": ", ".join(names)})
    return kind.type_name()


@cache  # asked for every block of a long network
def _usable(kind) -> bool:
    """An activation torch.nn builds with no arguments and that has no weights (the block's
    params are its branches'): relu, silu …, not prelu."""
    if kind.family != "activation" or not kind.torch_class or any(
            f.is_required() for name, f in kind.model_fields.items() if name != "type"):
        return False
    return kind.model_validate({}).infer((1, 1, 1, 1), Context()).params == 0


class Residual(Block):
    type: Literal["residual"]
    # Raw entries at first; the loader replaces them with validated layers.
    body: list[Any] = Field(min_length=1)
    # Empty: the identity. pydantic copies the default; default_factory=list cost 5 ms to build.
    shortcut: list[Any] = []  # noqa: RUF012
    activation: Annotated[str, BeforeValidator(_activation)] | None = None  # after the add

    name_prefix = "res"
    list_fields = ("body", "shortcut")
    glyph, merge_word = "⊕", "add"
    spatial_merge = "broadcast"
    stricter_than_torch = (MIXED_RANKS,)
    helper = "Residual"
    helper_source = '''
class Residual(nn.Module):
    """y = body(x) + shortcut(x); an identity shortcut passes x through."""

    def __init__(self, body: nn.Module, shortcut: nn.Module,
                 activation: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))
'''

    def settings(self) -> str:
        return f"then {self.activation}" if self.activation else ""

    def helper_extra(self) -> list[tuple[str, str]]:
        if not self.activation:
            return []
        from . import KINDS

        return [("activation", KINDS[self.activation].torch_class)]

    def merge(self, x: Dims, outs: list[Dims]) -> tuple[Dims, str]:
        body, shortcut = outs
        label = "shortcut" if self.shortcut else "identity shortcut"
        check_same_rank("add", body, shortcut, ("body", label))
        out = broadcast(body, shortcut)
        if out is not None:
            note = "" if body == shortcut else " (broadcast)"
            then = f", then {self.activation}" if self.activation else ""
            return out, f"body {chw(body)} + {label} {chw(shortcut)} = {chw(out)}{note}{then}"
        raise ShapeError(
            "SC211",
            f"body gives {chw(body)} but the {label} gives {chw(shortcut)}: they cannot be added",
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
