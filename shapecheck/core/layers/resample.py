"""Layers that resample H and W: upsample (nearest, bilinear, bicubic), pixelshuffle and
pixelunshuffle (channels traded for resolution)."""

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from ..graph import Like, read_like
from .base import (
    Context,
    Dims,
    Flag,
    Inferred,
    LayerSpec,
    PosInt,
    ShapeError,
    Stricter,
    _number,
    _strict_int,
    int_schema,
    times,
)
from .window import SAME, Consumed, Fixed, Resized, Scale, Window, spatial


def _size(value: Any) -> Any:
    like = read_like(value)
    if like is not None or isinstance(value, Like):
        return like or value
    if isinstance(value, dict):
        raise PydanticCustomError("size_like", "must be an int, a pair, or {{like: NAME}} "
                                  "(another tensor's height and width), got {value}",
                                  {"value": repr(value)})
    if isinstance(value, (list, tuple)):
        return tuple(_strict_int(v, 1) for v in value)
    return _strict_int(value, 1)


def _positive(value: Any) -> float:
    value = _number(value)
    if not value > 0 or not math.isfinite(value):
        raise PydanticCustomError("scale", "must be a positive number, got {value}",
                                  {"value": value})
    return value


def _scale(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_positive(v) for v in value)
    return _positive(value)


class Upsample(LayerSpec):
    type: Literal["upsample"]
    # an int or one per spatial dim
    size: Annotated[Any, BeforeValidator(_size), WithJsonSchema(
        {"anyOf": [int_schema(1), {"type": "array", "items": int_schema(1)},
                   {"type": "object", "properties": {"like": {"type": "string"}},
                    "required": ["like"], "additionalProperties": False},
                   {"type": "null"}]}
    )] = None  # or {like: NAME}: another tensor's H×W (graph.py)
    # a number or one per dim
    scale_factor: Annotated[Any, BeforeValidator(_scale), WithJsonSchema(
        {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                   {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
                   {"type": "null"}]})] = None
    mode: Literal["nearest", "nearest-exact", "bilinear", "bicubic"] = "nearest"
    align_corners: Flag | None = None
    recompute_scale_factor: Flag | None = None

    torch_class = "Upsample"
    family = "resample"
    name_prefix = "up"
    # With `size: {like: NAME}` the size is known only in forward: F.interpolate takes it then.
    more_helpers: ClassVar[dict[str, str]] = {"UpsampleLike": '''
class UpsampleLike(nn.Module):
    """Resamples x to the height and width of another tensor, as F.interpolate does."""

    def __init__(self, mode: str = "nearest", align_corners: bool | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=like.shape[-2:], mode=self.mode,
                                         align_corners=self.align_corners)
'''}

    def helper_for(self, sized_like: bool) -> str:
        return "UpsampleLike" if sized_like else ""

    def torch_kwargs(self, inferred_args: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.size, Like):  # UpsampleLike's arguments
            return {k: v for k, v in self.given_args().items() if k in ("mode", "align_corners")}
        return super().torch_kwargs(inferred_args)

    @model_validator(mode="after")
    def _one_size(self) -> "Upsample":
        # torch checks these only in forward; they hold for any input, so they are schema errors.
        if (self.size is None) == (self.scale_factor is None):
            raise PydanticCustomError("size_or_scale", "give exactly one of size and "
                                      "scale_factor", {})
        if self.align_corners is not None and self.mode.startswith("nearest"):
            raise PydanticCustomError("align_corners", "align_corners applies to bilinear and "
                                      "bicubic only; leave it out for mode {mode}",
                                      {"mode": self.mode})
        if self.recompute_scale_factor and self.size is not None:
            raise PydanticCustomError("recompute_scale_factor", "recompute_scale_factor applies "
                                      "to scale_factor only; leave it out with size", {})
        return self

    def settings(self) -> str:
        how = (f"→ {self.size}" if isinstance(self.size, Like) else
               f"→ {times(self.size) if isinstance(self.size, tuple) else self.size}"
               if self.size is not None else
               f"×{times(f'{s:g}' for s in self.scale_factor) if isinstance(self.scale_factor, tuple) else f'{self.scale_factor:g}'}")
        return f"{how} {self.mode}"

    def axis_map(self, x: Dims, dim: int):
        if dim < 2:
            return SAME, dim
        if isinstance(self.size, Like):
            return Resized(self.size.name), dim
        i = dim - 2
        given = self.size if self.size is not None else self.scale_factor
        value = given[i] if isinstance(given, tuple) else given
        return (Fixed(value) if self.size is not None else Scale(value)), dim

    def resized_like(self, like: Dims) -> "Upsample":
        """This layer with the size of the tensor its ``size: {like: …}`` names."""
        if len(like) != 4:
            raise ShapeError("SC209", f"upsample takes its size {self.size}, which is a "
                             f"{len(like)}-d tensor: it needs the height and width of a 4-d one",
                             "name a tensor of shape N×C×H×W")
        return self.model_copy(update={"size": like[2:]})

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        ranks = (4,) if self.mode in ("bilinear", "bicubic") else (3, 4, 5)
        if len(x) not in ranks:
            want = " or ".join(f"{r}-d" for r in ranks)
            raise ShapeError("SC209", f"upsample with mode {self.mode} needs a {want} tensor, "
                             f"but a {len(x)}-d tensor arrives", "move it before the flatten"
                             if len(x) < 3 else None)
        spatial = x[2:]
        given = self.size if self.size is not None else self.scale_factor
        values = given if isinstance(given, tuple) else (given,) * len(spatial)
        if len(values) != len(spatial):
            what = "size" if self.size is not None else "scale_factor"
            raise ShapeError("SC209", f"{what} has {len(values)} values, but the input has "
                             f"{len(spatial)} spatial dim{'s' * (len(spatial) > 1)}",
                             f"give one {what} per spatial dim, or a single number")
        if self.size is not None:
            out = tuple(values)
            explain = [f"size: {times(spatial)} → {times(out)}"]
        else:
            out, explain = [], []
            for n, s in zip(spatial, values):
                out.append(math.floor(n * s))  # in float64, as torch does
                explain.append(f"floor({n} × {s:g}) = {out[-1]}")
            out = tuple(out)
        for n, o in zip(spatial, out):
            if o < 1:
                raise ShapeError("SC202", f"scale_factor gives an output of size {o} from {n}",
                                 None)
        return Inferred(out=(*x[:2], *out), explain=explain)


# pixelshuffle and pixelunshuffle: a 3-d tensor is one unbatched sample to torch.
_UNBATCHED_3D = Stricter("SC213", (3,), why="torch takes a 3-d tensor as one unbatched sample "
                         "(C, H, W): in a network the batch would be the channels")


class PixelShuffle(LayerSpec):
    """Trades channels for resolution: C·r² × H × W → C × H·r × W·r (sub-pixel convolution)."""

    type: Literal["pixelshuffle"]
    upscale_factor: PosInt

    torch_class = "PixelShuffle"
    family = "resample"
    stricter_than_torch = (_UNBATCHED_3D,)
    name_prefix = "shuffle"

    def settings(self) -> str:
        return f"×{self.upscale_factor}"

    def axis_map(self, x: Dims, dim: int):
        if spatial(x, dim) is not None:
            return Scale(self.upscale_factor), dim
        return (Consumed("pixelshuffle divides the channels") if dim == len(x) - 3 else SAME), dim

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        r = self.upscale_factor
        _check_rank(x, self.type)
        c, h, w = x[-3:]
        if c % (r * r):
            raise ShapeError("SC218", f"pixelshuffle needs channels divisible by "
                             f"upscale_factor² = {r * r}, but {c} channels arrive",
                             f"give the layer before it {c // (r * r) * r * r or r * r} or "
                             f"{(c // (r * r) + 1) * r * r} output channels")
        out = (*x[:-3], c // (r * r), h * r, w * r)
        result = "×".join(map(str, out[-3:]))
        return Inferred(out=out, explain=[f"{c}×{h}×{w} → {c}/{r * r}×{h}·{r}×{w}·{r} = {result}"])


class PixelUnshuffle(LayerSpec):
    """Trades resolution for channels: C × H·r × W·r → C·r² × H × W."""

    type: Literal["pixelunshuffle"]
    downscale_factor: PosInt

    torch_class = "PixelUnshuffle"
    family = "resample"
    stricter_than_torch = (_UNBATCHED_3D,)
    name_prefix = "unshuffle"

    def settings(self) -> str:
        return f"÷{self.downscale_factor}"

    def axis_map(self, x: Dims, dim: int):
        r = self.downscale_factor
        if spatial(x, dim) is not None:
            return Window(r, r, exact=True), dim
        return (Consumed("pixelunshuffle multiplies the channels") if dim == len(x) - 3
                else SAME), dim

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        r = self.downscale_factor
        _check_rank(x, self.type)
        c, h, w = x[-3:]
        if h % r or w % r:
            raise ShapeError("SC218", f"pixelunshuffle needs H and W divisible by "
                             f"downscale_factor {r}, but the input is {h}×{w}",
                             f"use an input of {-(-h // r) * r}×{-(-w // r) * r} (pad it), or a "
                             "downscale_factor that divides both")
        out = (*x[:-3], c * r * r, h // r, w // r)
        result = "×".join(map(str, out[-3:]))
        return Inferred(out=out, explain=[f"{c}×{h}×{w} → {c}·{r * r}×{h}/{r}×{w}/{r} = {result}"])


def _check_rank(x: Dims, what: str) -> None:
    # It works on the last three dims (C, H, W); on a 3-d tensor the first of them is the batch.
    if len(x) < 4:
        raise ShapeError("SC213" if len(x) == 3 else "SC209",
                         f"{what} works on the last three dims (C, H, W), and a {len(x)}-d "
                         "tensor " + ("has the batch among them" if len(x) == 3 else
                                      "has fewer"), "move it before the flatten")
