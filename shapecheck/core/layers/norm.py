"""Normalisation and per-channel scaling: batchnorm2d, frozenbatchnorm2d, groupnorm, layernorm,
localresponsenorm, and layerscale. Running statistics are buffers, not parameters."""

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from .base import (
    Context,
    Dims,
    Flag,
    Inferred,
    LayerSpec,
    Number,
    PosInt,
    ShapeError,
    Stricter,
    _strict_int,
    channels_arrive,
    fmt,
    int_schema,
    need_rank,
    times,
)
from .window import SAME, Consumed, channel_map


def _channels(x: Dims, declared: int | None, field: str, what: str) -> int:
    """The channels that arrive (dim 1), checked against a declared count (SC205)."""
    if len(x) < 2:
        raise ShapeError("SC209", f"{what} needs a tensor of at least 2 dims (N, C, …), but a "
                         "1-d tensor arrives",
                         "flatten with start_dim: 1 (the default) keeps the batch dimension")
    c = x[1]
    if declared is not None and declared != c:
        raise ShapeError("SC205", f"{field} is {declared}, but {channels_arrive(c)}",
                         f"set {field}: {c}, or leave it out to infer it")
    return c


def _affine(c: int, on: bool, explain: list[str]) -> dict:
    if on:
        explain.append(f"weight [{c}] + bias [{c}] = {2 * c} params")
    return {"weight": (c,) if on else None, "bias": (c,) if on else None,
            "params": 2 * c if on else 0}


class BatchNorm2d(LayerSpec):
    type: Literal["batchnorm2d"]
    num_features: PosInt | None = None
    eps: Number = 1e-5
    momentum: Number | None = 0.1
    affine: Flag = True
    track_running_stats: Flag = True

    torch_class = "BatchNorm2d"
    family = "norm"
    name_prefix = "bn"
    inferred_fields = ("num_features",)
    stricter_than_torch = (
        Stricter("SC205", unless=("affine", "track_running_stats"), why="torch checks "
                 "num_features only through its weight, bias and running statistics"),
    )
    cancels_channel_bias = True  # it subtracts each channel's mean

    def declared_input(self, x: Dims) -> Dims | None:
        if self.num_features is None or len(x) != 4:
            return None
        return (x[0], self.num_features, *x[2:])

    def axis_map(self, x: Dims, dim: int):
        # Its statistics are not counted in the receptive field (as Araujo et al. do)
        return channel_map(dim, "batchnorm2d")

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        need_rank(x, (4,), "batchnorm2d")
        c = _channels(x, self.num_features, "num_features", "batchnorm2d")
        explain = [f"num_features = channels of the input = {c}"]
        return Inferred(out=x, explain=explain, inferred_args={"num_features": c},
                        **_affine(c, self.affine, explain))


class FrozenBatchNorm2d(LayerSpec):
    """A batchnorm whose statistics and affine are fixed (torchvision.ops.FrozenBatchNorm2d, the
    norm of detection backbones): y = x · scale + shift per channel, its weight, bias,
    running_mean and running_var buffers, not parameters. torch.nn has no class for it: build
    writes a small module with torchvision's buffers and arithmetic."""

    type: Literal["frozenbatchnorm2d"]
    num_features: PosInt | None = None
    eps: Number = 1e-5

    family = "norm"
    name_prefix = "bn"
    inferred_fields = ("num_features",)
    # Not cancels_channel_bias: its mean is fixed, so a bias before it still shifts the output.
    helper = "FrozenBatchNorm2d"
    helper_source = '''
class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine: y = x · scale + shift per channel. Its
    weight, bias, running_mean and running_var are buffers, not parameters."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (
            self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift
'''

    def declared_input(self, x: Dims) -> Dims | None:
        if self.num_features is None or len(x) != 4:
            return None
        return (x[0], self.num_features, *x[2:])

    def axis_map(self, x: Dims, dim: int):
        return channel_map(dim, "frozenbatchnorm2d")

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        need_rank(x, (4,), "frozenbatchnorm2d")
        c = _channels(x, self.num_features, "num_features", "frozenbatchnorm2d")
        explain = [f"num_features = channels of the input = {c}",
                   f"weight, bias, running_mean, running_var [{c}] each: buffers, 0 params"]
        return Inferred(out=x, explain=explain, inferred_args={"num_features": c})


class GroupNorm(LayerSpec):
    """Normalises each sample over groups of channels (and all positions)."""

    type: Literal["groupnorm"]
    num_groups: PosInt
    num_channels: PosInt | None = None
    eps: Number = 1e-5
    affine: Flag = True

    torch_class = "GroupNorm"
    family = "norm"
    name_prefix = "gn"
    inferred_fields = ("num_channels",)
    stricter_than_torch = (
        Stricter("SC205", unless=("affine",), why="torch checks num_channels only through "
                 "its weight and bias (with affine false, only that num_groups divides the "
                 "channels)"),
    )

    def settings(self) -> str:
        return f"{self.num_groups} groups"

    def axis_map(self, x: Dims, dim: int):
        # Its statistics are not counted in the receptive field (as Araujo et al. do)
        return channel_map(dim, "groupnorm")

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        from .base import divisor_list, divisors

        c = _channels(x, self.num_channels, "num_channels", "groupnorm")
        if c % self.num_groups:
            raise ShapeError("SC206", f"num_groups={self.num_groups} must divide the "
                             f"{c} channels", "num_groups that divide them: "
                             + divisor_list(divisors(c)))
        explain = [f"num_channels = channels of the input = {c}; {self.num_groups} groups of "
                   + str(c // self.num_groups)]
        return Inferred(out=x, explain=explain, inferred_args={"num_channels": c},
                        **_affine(c, self.affine, explain))


def _shape(value: Any) -> Any:
    """An int or a list of positive ints, as LayerNorm's normalized_shape."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise PydanticCustomError("shape", "must not be empty", {})
        return tuple(_strict_int(v, 1) for v in value)
    return _strict_int(value, 1)


class LayerNorm(LayerSpec):
    """Normalises over the trailing dims (normalized_shape), as torch does: on N×C×H×W with
    [C, H, W] it is per sample; ConvNeXt permutes to N×H×W×C and normalises over C."""

    type: Literal["layernorm"]
    # Left out: the last dim of the input (the channels-last use).
    normalized_shape: Annotated[Any, BeforeValidator(_shape), WithJsonSchema(
        {"anyOf": [int_schema(1), {"type": "array", "items": int_schema(1), "minItems": 1}]}
    )] = None
    eps: Number = 1e-5
    elementwise_affine: Flag = True
    bias: Flag = True

    torch_class = "LayerNorm"
    family = "norm"
    name_prefix = "ln"
    inferred_fields = ("normalized_shape",)
    stricter_than_torch = (
        Stricter("SC213", why="a normalized_shape over every dim normalises the batch with "
                 "each sample"),
    )

    def settings(self) -> str:
        if self.normalized_shape is None:
            return ""
        shape = self.normalized_shape
        return "over " + (times(shape) if isinstance(shape, tuple) else str(shape))

    def axis_map(self, x: Dims, dim: int):
        given = self.normalized_shape
        k = 1 if given is None or isinstance(given, int) else len(given)
        if dim >= len(x) - k:
            return Consumed("layernorm's normalized_shape fixes this dim"), dim
        return SAME, dim

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        given = self.normalized_shape
        shape = (x[-1],) if given is None else given if isinstance(given, tuple) else (given,)
        if len(shape) >= len(x):
            raise ShapeError("SC213", f"normalized_shape {list(shape)} covers all {len(x)} "
                             "dims, the batch included: it would normalise across samples",
                             f"use normalized_shape: {list(x[1:])} (everything but the batch)"
                             if len(x) > 1 else None)
        if x[-len(shape):] != shape:
            trailing = list(x[-len(shape):])
            raise ShapeError("SC215", f"normalized_shape is {list(shape)}, but the last "
                             f"{len(shape)} dim{'s' * (len(shape) > 1)} of the input are "
                             f"{trailing}", f"set normalized_shape: {trailing}, or "
                             f"{x[-1]} for the last dim (leave it out to infer that)")
        n = math.prod(shape)
        affine, with_bias = self.elementwise_affine, self.elementwise_affine and self.bias
        dims = f"{len(shape)} dim{'s' * (len(shape) > 1)}"
        explain = [f"normalized over the last {dims}: {times(shape)} = {fmt(n)} values per "
                   "position" if len(shape) > 1 else f"normalized over the last dim: {n} values"]
        params = n * affine + n * with_bias
        if affine:
            explain.append(f"weight [{times(shape)}]" + (f" + bias [{times(shape)}]"
                                                          if with_bias else "")
                           + f" = {fmt(params)} params")
        return Inferred(out=x, weight=shape if affine else None,
                        bias=shape if with_bias else None, params=params, explain=explain,
                        inferred_args={"normalized_shape": shape if given is None else given})


class LocalResponseNorm(LayerSpec):
    """AlexNet's normalisation across neighbouring channels."""

    type: Literal["localresponsenorm"]
    size: PosInt
    alpha: Number = 1e-4
    beta: Number = 0.75
    k: Number = 1.0

    torch_class = "LocalResponseNorm"
    family = "norm"
    name_prefix = "lrn"

    def settings(self) -> str:
        return f"size {self.size}"

    def axis_map(self, x: Dims, dim: int):
        return SAME, dim  # it mixes neighbouring channels, not positions

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        if len(x) < 3:
            raise ShapeError("SC209", f"localresponsenorm needs a tensor of at least 3 dims "
                             f"(N, C, …), but a {len(x)}-d tensor arrives",
                             "move it before the flatten")
        return Inferred(out=x)


class LayerScale(LayerSpec):
    """A learnable scale per channel (dim 1), as ConvNeXt's layer_scale: y = weight[c] · x.
    torch.nn has no class for it: build writes a small module."""

    type: Literal["layerscale"]
    num_channels: PosInt | None = None
    init_value: Number = 1e-6

    family = "norm"
    name_prefix = "scale"
    inferred_fields = ("num_channels",)
    helper = "LayerScale"
    helper_source = '''
class LayerScale(nn.Module):
    """A learnable scale per channel (dim 1): y = weight[c] · x."""

    def __init__(self, num_channels: int, init_value: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_channels,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(-1, *[1] * (x.dim() - 2))
'''

    def settings(self) -> str:
        return f"init {self.init_value:g}"

    def axis_map(self, x: Dims, dim: int):
        # Its statistics are not counted in the receptive field (as Araujo et al. do)
        return channel_map(dim, "layerscale")

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        c = _channels(x, self.num_channels, "num_channels", "layerscale")
        return Inferred(out=x, weight=(c,), params=c, explain=[f"weight [{c}] = {c} params"],
                        inferred_args={"num_channels": c})
