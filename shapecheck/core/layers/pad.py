"""Padding layers: zeropad2d, constantpad2d, reflectionpad2d, replicationpad2d. They pad (or,
with negative values, crop) the last two dims, as F.pad does."""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from .base import Context, Dims, Inferred, LayerSpec, Number, ShapeError, Stricter, _strict_int
from .window import SAME, Window, spatial

INT64 = 2**63


def _padding(value: Any) -> Any:
    """An int, [left, right, top, bottom], or [left, right] (the width only), as nn.ZeroPad2d
    takes it; negative values crop."""
    if isinstance(value, (list, tuple)):
        if len(value) not in (2, 4):
            raise PydanticCustomError(
                "pad_length", "must be an int, [left, right, top, bottom] or [left, right], "
                "got {n} items", {"n": len(value)})
        return tuple(_strict_int(v, -INT64) for v in value)
    return _strict_int(value, -INT64)


class _Pad2d(LayerSpec):
    padding: Annotated[Any, BeforeValidator(_padding), WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"},
                                         "minItems": 4, "maxItems": 4}]})]

    family = "reshape"
    name_prefix = "pad"
    stricter_than_torch = (
        Stricter("SC202", why="negative padding that crops a dim to 0 gives torch an empty "
                 "tensor, which fails later or never"),
    )
    ranks: ClassVar[tuple[int, ...]] = ()  # the ranks torch accepts; () for any
    mode_rule: ClassVar[str] = ""  # why the mode limits the padding

    def sides(self) -> tuple[int, int, int, int]:
        p = self.padding
        if isinstance(p, int):
            return (p, p, p, p)
        return p if len(p) == 4 else (*p, 0, 0)

    def settings(self) -> str:
        left, right, top, bottom = self.sides()
        if left == right == top == bottom:
            return f"p{left}"
        return f"l{left} r{right} t{top} b{bottom}"

    def limit(self, size: int) -> int | None:
        """The largest padding per side the mode allows on an input of this size."""
        return None

    def axis_map(self, x: Dims, dim: int):
        i = spatial(x, dim)
        if i is None:
            return SAME, dim
        left, right, top, bottom = self.sides()
        before, after = ((top, bottom), (left, right))[i]
        # the smallest size the mode's limit allows: limit(size) >= the larger side
        smallest = 1
        if self.limit(1 << 62) is not None:
            smallest = max(1, max(before, after) + 1)
        return Window(1, 1, before, after, min_size=smallest), dim

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        if len(x) < 3:
            raise ShapeError("SC213", f"{self.type} pads the last two dims, and on a "
                             f"{len(x)}-d tensor one of them is the batch",
                             "move it before the flatten")
        if self.ranks and len(x) not in self.ranks:
            raise ShapeError("SC209", f"{self.type} needs a 3-d or 4-d tensor, but a "
                             f"{len(x)}-d tensor arrives", None)
        left, right, top, bottom = self.sides()
        h, w = x[-2:]
        explain = []
        for axis, size, a, b in (("H", h, top, bottom), ("W", w, left, right)):
            limit = self.limit(size)
            if limit is not None and max(a, b) > limit:
                raise ShapeError("SC201", f"{self.type} padding {max(a, b)} is too large for an "
                                 f"input of {axis}={size}", f"{self.mode_rule} here: use at "
                                 f"most {limit}, or replicationpad2d")
            out = size + a + b
            if out < 1:
                raise ShapeError("SC202", f"padding {a} and {b} on {axis}={size} gives an "
                                 f"output of {axis}={out}", None)
            explain.append(f"{axis}_out = {size} + {a} + {b} = {out}")
        return Inferred(out=(*x[:-2], h + top + bottom, w + left + right), explain=explain)


# torch's F.pad pads whatever dims are last, the batch among them on N×F.
_PADS_THE_BATCH = Stricter("SC213", (1, 2), why="torch pads the last dims of any tensor, the "
                           "batch among them on N×F")


class ZeroPad2d(_Pad2d):
    type: Literal["zeropad2d"]
    torch_class = "ZeroPad2d"
    stricter_than_torch = (*_Pad2d.stricter_than_torch, _PADS_THE_BATCH)


class ConstantPad2d(_Pad2d):
    type: Literal["constantpad2d"]
    value: Number
    torch_class = "ConstantPad2d"
    stricter_than_torch = (*_Pad2d.stricter_than_torch, _PADS_THE_BATCH)


class ReflectionPad2d(_Pad2d):
    type: Literal["reflectionpad2d"]
    torch_class = "ReflectionPad2d"
    ranks = (3, 4)
    mode_rule = "reflection mirrors without repeating the edge, so it needs less than the size"

    def limit(self, size: int) -> int | None:
        return size - 1


class ReplicationPad2d(_Pad2d):
    type: Literal["replicationpad2d"]
    torch_class = "ReplicationPad2d"
    ranks = (3, 4)
