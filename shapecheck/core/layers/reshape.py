"""Layers that rearrange a tensor: flatten (merges dims start_dim..end_dim, as nn.Flatten;
start_dim=1 keeps the batch), channelshuffle and permute."""

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from .base import (
    Context,
    Dims,
    Inferred,
    Int,
    LayerSpec,
    PosInt,
    ShapeError,
    Stricter,
    _strict_int,
    fmt,
    model_named,
    on_first_use,
    times,
)
from .window import SAME, Fold, channel_map


def wrap_dim(dim: int, ndim: int, what: str) -> int:
    if not -ndim <= dim < ndim:
        raise ShapeError(
            "SC210",
            f"{what}={dim} is out of range for a {ndim}-d tensor (valid: {-ndim} to {ndim - 1})",
            f"use a {what} between {-ndim} and {ndim - 1}",
        )
    return dim % ndim


@on_first_use
def _make_Flatten():
    class Flatten(LayerSpec):
        type: Literal["flatten"]
        start_dim: Int = 1
        end_dim: Int = -1

        torch_class = "Flatten"
        family = "reshape"
        name_prefix = "flatten"
        starts_classifier = True

        def settings(self) -> str:
            return "" if (self.start_dim, self.end_dim) == (1, -1) else f"{self.start_dim}..{self.end_dim}"

        def axis_map(self, x: Dims, dim: int):
            start, end = self.start_dim % len(x), self.end_dim % len(x)
            if dim < start:
                return SAME, dim
            if dim > end:
                return SAME, dim - (end - start)
            return (Fold() if end > start else SAME), start

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            start = wrap_dim(self.start_dim, len(x), "start_dim")
            end = wrap_dim(self.end_dim, len(x), "end_dim")
            if start > end:
                raise ShapeError(
                    "SC210",
                    f"start_dim={self.start_dim} comes after end_dim={self.end_dim} "
                    f"on a {len(x)}-d tensor",
                    "use start_dim: 1, end_dim: -1 to flatten everything but the batch",
                )
            merged = math.prod(x[start : end + 1])
            out = (*x[:start], merged, *x[end + 1 :])
            shown = ["N" if i == 0 else str(x[i]) for i in range(start, end + 1)]
            line = f"dims {start}..{end}: {' × '.join(shown)} = {fmt(merged)}" if start > 0 else \
                f"dims {start}..{end}: {' × '.join(shown)}"
            return Inferred(out=out, explain=[line],
                            features_from=f"{self.name}: {times(x[start:end + 1])} = {fmt(merged)}")

    return Flatten


@on_first_use
def _make_ChannelShuffle():
    class ChannelShuffle(LayerSpec):
        """Interleaves the channels of `groups` groups (ShuffleNet): the shape is kept."""

        type: Literal["channelshuffle"]
        groups: PosInt

        torch_class = "ChannelShuffle"
        family = "reshape"
        name_prefix = "chshuffle"

        def settings(self) -> str:
            return f"g{self.groups}"

        def axis_map(self, x: Dims, dim: int):
            return channel_map(dim, "channelshuffle")

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            from .base import divisor_list, divisors

            if len(x) < 3:
                raise ShapeError("SC209", f"channelshuffle needs a tensor of more than 2 dims, but a "
                                 f"{len(x)}-d tensor arrives", "move it before the flatten")
            c = x[1]
            if c % self.groups:
                raise ShapeError("SC206", f"groups={self.groups} must divide the {c} channels",
                                 "groups that divide them: " + divisor_list(divisors(c)))
            explain = f"{self.groups} groups of {c // self.groups} channels, interleaved"
            return Inferred(out=x, explain=[explain])

    return ChannelShuffle


def _dims(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise PydanticCustomError("dims", "must be a list of dims, such as [0, 2, 3, 1], got "
                                  "{value}", {"value": repr(value)})
    return tuple(_strict_int(v, -(2**63)) for v in value)


@on_first_use
def _make_Permute():
    class Permute(LayerSpec):
        """x.permute(*dims), for channels-last sections (ConvNeXt: [0, 2, 3, 1] and back with
    [0, 3, 1, 2]). torch.nn has no class for it: build writes a small module."""

        type: Literal["permute"]
        dims: Annotated[tuple[int, ...], BeforeValidator(_dims), WithJsonSchema(
            {"type": "array", "items": {"type": "integer"}, "minItems": 1})]

        family = "reshape"
        name_prefix = "permute"
        stricter_than_torch = (
            Stricter("SC213", why="dims that move the batch (dim 0) run in torch, and the "
                     "samples then mix with the next layer"),
        )
        helper = "Permute"
        helper_source = '''
class Permute(nn.Module):
    """x.permute(*dims): the same values with the dims reordered."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)
'''

        def settings(self) -> str:
            return str(list(self.dims))

        def axis_map(self, x: Dims, dim: int):
            return SAME, [d % len(x) for d in self.dims].index(dim)

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            n = len(x)
            if len(self.dims) != n:
                raise ShapeError("SC210", f"dims has {len(self.dims)} entries, but a {n}-d tensor "
                                 "arrives", f"give all {n} dims, e.g. {list(range(n))}")
            order = [wrap_dim(d, n, "dims entry") for d in self.dims]
            if len(set(order)) != n:
                raise ShapeError("SC210", f"dims {list(self.dims)} repeats a dim", "give each dim "
                                 f"once: a reordering of {list(range(n))}")
            if order[0] != 0:
                raise ShapeError("SC213", f"dims {list(self.dims)} moves the batch (dim 0)",
                                 "keep 0 first, e.g. [0, 2, 3, 1] for channels-last")
            out = tuple(x[d] for d in order)
            shown = ["N" if d == 0 else str(x[d]) for d in order]
            last = order[-1] == 1 and n > 2  # channels-last, as ConvNeXt's [0, 2, 3, 1]
            return Inferred(out=out, explain=[f"dims {order}: {' × '.join(shown)}"],
                            features_from=f"channels, moved last by {self.name}" if last else None,
                            layout=self.name if last else "")

    return Permute


def __getattr__(name: str):  # a model by its class name, defined on first use
    return model_named(globals(), name)
