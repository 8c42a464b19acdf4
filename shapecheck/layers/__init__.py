"""Every layer kind, by its lowercase type name, and the validation of raw layer entries.

Adding a layer type: write its model (fields, shape rule, torch class) in its family's module,
add it to KINDS, and add a test. Adding a block: its own module (a Block subclass), KINDS, and
a test. docs/extending.md walks through both."""

from collections.abc import Callable

from pydantic import ValidationError

from .base import Context, Inferred, LayerSpec, Origin, ShapeError
from .block import Block
from .concat import Concat
from .conv import Conv2d, ConvTranspose2d
from .elementwise import (
    ELU,
    GELU,
    Dropout,
    Dropout2d,
    Hardsigmoid,
    Hardswish,
    Identity,
    LeakyReLU,
    LogSoftmax,
    Mish,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    StochasticDepth,
    Tanh,
)
from .gate import Gate
from .linear import Linear
from .norm import BatchNorm2d, GroupNorm, LayerNorm, LayerScale, LocalResponseNorm
from .pad import ConstantPad2d, ReflectionPad2d, ReplicationPad2d, ZeroPad2d
from .pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from .resample import PixelShuffle, PixelUnshuffle, Upsample
from .reshape import ChannelShuffle, Flatten, Permute
from .residual import Residual
from .split import Split

KINDS: dict[str, type[LayerSpec]] = {
    cls.type_name(): cls
    for cls in (
        Conv2d, ConvTranspose2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d,
        Upsample, PixelShuffle, PixelUnshuffle,
        BatchNorm2d, GroupNorm, LayerNorm, LocalResponseNorm, LayerScale,
        Dropout, Dropout2d, StochasticDepth,
        ReLU, ReLU6, LeakyReLU, PReLU, ELU, GELU, SiLU, Mish, Hardswish, Hardsigmoid, Softplus,
        Sigmoid, Tanh, Identity, Softmax, LogSoftmax,
        ZeroPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d,
        Flatten, ChannelShuffle, Permute, Linear,
        Residual, Concat, Gate, Split,
    )
}  # fmt: skip

BLOCKS: tuple[type[Block], ...] = tuple(k for k in KINDS.values() if issubclass(k, Block))


def normalize_type(name: str) -> str:
    """`Conv2d`, `conv2d`, `nn.Conv2d` and `torch.nn.Conv2d` are one type."""
    name = name.strip()
    for prefix in ("torch.nn.", "nn."):
        name = name.removeprefix(prefix)
    return name.lower()


def kind_of(item: object) -> type[LayerSpec] | None:
    """The model of a raw entry (a mapping with `type`), or None where it names no known type."""
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        return None
    return KINDS.get(normalize_type(item["type"]))


def block_of(item: object) -> type[Block] | None:
    """The Block class of a raw entry, or None where it is not a block."""
    kind = kind_of(item)
    return kind if kind is not None and kind.is_block else None


def parse_layers(items: list, loc: tuple, origin: Callable[[tuple], Origin | None] | None = None,
                 ) -> tuple[list[LayerSpec], list[dict]]:
    """Validate raw layer entries (dicts, type names, or layer models) with the model of each
    one's type, and give each layer its origin: ``origin(loc)`` for the entry at YAML location
    ``loc``.

    Only the models of the types a spec uses are built (pydantic builds a schema on first use),
    which keeps start-up fast. Returns the layers and pydantic-style error dicts whose `loc`
    starts at `loc` (e.g. ("layers", 3, "kernel_size"))."""
    layers, errors = [], []
    for i, item in enumerate(items):
        here = (*loc, i)
        if isinstance(item, LayerSpec):  # built in Python; a block's branches may still be raw
            layer = item.model_copy()  # naming must not touch the caller's model, nor reuses
            if layer.is_block:
                layer, sub_errors = _parse_branches(layer, here, origin)
                errors += sub_errors
            layers.append(layer)
            continue
        if isinstance(item, str):
            item = {"type": item}
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            errors.append({"type": "unknown_layer_type", "loc": here, "input": item,
                           "msg": "unknown layer type"})
            continue
        kind = KINDS.get(normalize_type(item["type"]))
        if kind is None:
            errors.append({"type": "unknown_layer_type", "loc": here, "input": item,
                           "msg": "unknown layer type"})
            continue
        try:
            layer = kind.model_validate({**item, "type": kind.type_name()})
        except ValidationError as e:
            errors += [{**err, "loc": (*here, *err["loc"])} for err in e.errors()]
            continue
        if origin is not None:
            layer._origin = origin(here)
        if layer.is_block:
            layer, sub_errors = _parse_branches(layer, here, origin)
            errors += sub_errors
        layers.append(layer)
    return layers, errors


def _parse_branches(block: Block, loc: tuple, origin) -> tuple[Block, list[dict]]:
    lists, errors = [], []
    for key, raw in block.branch_lists():
        parsed, more = parse_layers(raw, (*loc, *block.branch_loc(key)), origin)
        lists.append(parsed)
        errors += more
    return block.with_branches(lists), errors


__all__ = ["BLOCKS", "KINDS", "Block", "Context", "Inferred", "LayerSpec", "Origin", "ShapeError",
           "block_of", "kind_of", "parse_layers"]
