"""Every layer kind, by its lowercase type name, and the discriminated union that validates them.

Adding a layer type: write its model (fields, shape rule, torch class) in its family's module,
add it to KINDS, and add a test."""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args

from pydantic import BeforeValidator, Discriminator, Tag

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
    get_args(cls.model_fields["type"].annotation)[0]: cls
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
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.lower()


def _as_mapping(value: Any) -> Any:
    """A bare string is a layer with no fields; the type name is matched case-insensitively."""
    if isinstance(value, str):
        return {"type": normalize_type(value)}
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return {**value, "type": normalize_type(value["type"])}
    return value


def _tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if kind in KINDS else None
    return getattr(value, "type", None)


Layer = Annotated[
    Annotated[
        Union[tuple(Annotated[cls, Tag(name)] for name, cls in KINDS.items())],  # noqa: UP007
        Discriminator(
            _tag,
            custom_error_type="unknown_layer_type",
            custom_error_message="unknown layer type",
        ),
    ],
    BeforeValidator(_as_mapping),
]

for _block in BLOCKS:
    _block.model_rebuild(_types_namespace={"Layer": Layer})

__all__ = ["KINDS", "BLOCKS", "Layer", "LayerSpec", "Context", "Inferred", "ShapeError"]
