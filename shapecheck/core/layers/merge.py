"""Merge layers: add, mul and cat join the tensors their ``from:`` names (graph.py).

They have no weights. ``add`` and ``mul`` broadcast as torch does (a 64×1×1 gate multiplies a
64×32×32 map); ``cat`` joins on channels (dim 1), every other dim agreeing."""

from typing import ClassVar, Literal

from .base import Context, Dims, Inferred, LayerSpec, ShapeError
from .block import broadcast, check_same_rank, chw
from .concat import join_channels
from .window import SAME


class Merge(LayerSpec):
    family = "merge"
    is_merge = True
    name_prefix = "merge"
    word: ClassVar[str] = ""  # how the explain line joins the inputs: "+", "·"
    spatial_merge: ClassVar[str] = "equal"  # as a block's (block.py): "equal" or "broadcast"
    glyph: ClassVar[str] = "+"  # the diagram's node, as a block's merge
    merge_word: ClassVar[str] = ""

    def infer(self, x: Dims, ctx: Context) -> Inferred:  # pragma: no cover - see merge()
        raise TypeError(f"{self.type} merges several tensors: the planner calls infer_many")

    def infer_many(self, named: list[tuple[str, Dims]]) -> Inferred:
        """The output of merging the named tensors, in order."""
        raise NotImplementedError  # pragma: no cover

    def axis_map(self, x: Dims, dim: int):
        return SAME, dim

    def _broadcast(self, named: list[tuple[str, Dims]], verb: str, done: str) -> Inferred:
        (first, out), *rest = named
        for name, dims in rest:
            check_same_rank(verb, out, dims, (first, name))
            joined = broadcast(out, dims)
            if joined is None:
                raise ShapeError(
                    "SC211", f"{first} gives {chw(out)} but {name} gives {chw(dims)}: they "
                    f"cannot be {done} (torch's broadcasting needs each dim equal, or 1)",
                    "make both branches keep the same H×W (stride 1 and padding (k−1)/2 on "
                    "their convs), or resize one with upsample `size: {like: …}`")
            out, first = joined, f"{first} {self.word} {name}"
        shapes = f" {self.word} ".join(f"{name} {chw(dims)}" for name, dims in named)
        note = "" if all(dims == out for _, dims in named) else " (broadcast)"
        return Inferred(out=out, explain=[f"{shapes} = {chw(out)}{note}"])


class Add(Merge):
    type: Literal["add"]
    name_prefix = "add"
    word = "+"
    glyph, merge_word = "⊕", "add"
    spatial_merge = "broadcast"
    helper = "Add"
    helper_source = '''
class Add(nn.Module):
    """The sum of its inputs, broadcast as torch does."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out
'''

    def infer_many(self, named: list[tuple[str, Dims]]) -> Inferred:
        return self._broadcast(named, "add", "added")


class Mul(Merge):
    type: Literal["mul"]
    name_prefix = "mul"
    word = "·"
    glyph, merge_word = "⊗", "multiply"
    spatial_merge = "broadcast"
    helper = "Mul"
    helper_source = '''
class Mul(nn.Module):
    """The product of its inputs, broadcast as torch does."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out
'''

    def infer_many(self, named: list[tuple[str, Dims]]) -> Inferred:
        return self._broadcast(named, "multiply", "multiplied")


class Cat(Merge):
    type: Literal["cat"]
    name_prefix = "cat"
    word = "‖"
    glyph, merge_word = "‖", "cat"
    helper = "Cat"
    helper_source = '''
class Cat(nn.Module):
    """Its inputs joined on channels (dim 1)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)
'''

    def infer_many(self, named: list[tuple[str, Dims]]) -> Inferred:
        out, explain = join_channels([dims for _, dims in named],
                                     [name for name, _ in named])
        return Inferred(out=out, explain=[explain])
