"""Every layer kind, by its lowercase type name, and the discriminated union that validates them.

Adding a layer type: write its model (fields, shape rule, torch class) in its family's module,
add it to KINDS, and add a test."""

from pydantic import ValidationError

from .base import Context, Inferred, LayerSpec, ShapeError
from .blocks import Concat, Residual
from .conv import Conv2d
from .elementwise import (
    ELU,
    GELU,
    Dropout,
    Dropout2d,
    Identity,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from .linear import Linear
from .norm import BatchNorm2d
from .pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from .reshape import Flatten

KINDS: dict[str, type[LayerSpec]] = {
    cls.type_name(): cls
    for cls in (
        Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, BatchNorm2d,
        Dropout, Dropout2d, ReLU, ReLU6, LeakyReLU, ELU, GELU, SiLU, Sigmoid, Tanh, Identity,
        Softmax, LogSoftmax, Flatten, Linear, Residual, Concat,
    )
}  # fmt: skip

BLOCKS = (Residual, Concat)


def normalize_type(name: str) -> str:
    """`Conv2d`, `conv2d`, `nn.Conv2d` and `torch.nn.Conv2d` are one type."""
    name = name.strip()
    for prefix in ("torch.nn.", "nn."):
        name = name.removeprefix(prefix)
    return name.lower()


def parse_layers(items: list, loc: tuple) -> tuple[list[LayerSpec], list[dict]]:
    """Validate raw layer entries with the model of each one's type.

    Only the models of the types a spec uses are built (pydantic builds a schema on first use),
    which keeps start-up fast. Returns the layers and pydantic-style error dicts whose `loc`
    starts at `loc` (e.g. ("layers", 3, "kernel_size"))."""
    layers, errors = [], []
    for i, item in enumerate(items):
        here = (*loc, i)
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
        if isinstance(layer, BLOCKS):
            layer, sub_errors = layer.parse_children(parse_layers, here)
            errors += sub_errors
        layers.append(layer)
    return layers, errors


__all__ = ["BLOCKS", "KINDS", "Context", "Inferred", "LayerSpec", "ShapeError", "parse_layers"]
