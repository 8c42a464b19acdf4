"""Layers that keep the shape: activations, dropout, identity, softmax.

They have no parameters and no MACs (as the contract counts them)."""

from typing import Literal

from .base import (
    Context,
    Dims,
    Flag,
    Inferred,
    Int,
    LayerSpec,
    Number,
    Probability,
    ShapeError,
)
from .reshape import wrap_dim


class _Elementwise(LayerSpec):
    family = "activation"

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        return Inferred(out=x)


class _InPlace(_Elementwise):
    inplace: Flag = False


class ReLU(_InPlace):
    type: Literal["relu"]
    torch_class = "ReLU"
    name_prefix = "relu"


class ReLU6(_InPlace):
    type: Literal["relu6"]
    torch_class = "ReLU6"
    name_prefix = "relu"


class LeakyReLU(_Elementwise):
    type: Literal["leakyrelu"]
    negative_slope: Number = 0.01
    inplace: Flag = False
    torch_class = "LeakyReLU"
    name_prefix = "lrelu"


class ELU(_Elementwise):
    type: Literal["elu"]
    alpha: Number = 1.0
    inplace: Flag = False
    torch_class = "ELU"
    name_prefix = "elu"


class GELU(_Elementwise):
    type: Literal["gelu"]
    approximate: Literal["none", "tanh"] = "none"
    torch_class = "GELU"
    name_prefix = "gelu"


class SiLU(_InPlace):
    type: Literal["silu"]
    torch_class = "SiLU"
    name_prefix = "silu"


class Sigmoid(_Elementwise):
    type: Literal["sigmoid"]
    torch_class = "Sigmoid"
    name_prefix = "sigmoid"


class Tanh(_Elementwise):
    type: Literal["tanh"]
    torch_class = "Tanh"
    name_prefix = "tanh"


class Identity(_Elementwise):
    type: Literal["identity"]
    torch_class = "Identity"
    family = "reshape"
    name_prefix = "identity"


class _Dropout(_Elementwise):
    p: Probability = 0.5
    inplace: Flag = False
    family = "dropout"
    name_prefix = "dropout"

    def settings(self) -> str:
        return f"p={self.p:g}"


class Dropout(_Dropout):
    type: Literal["dropout"]
    torch_class = "Dropout"


class Dropout2d(_Dropout):
    type: Literal["dropout2d"]
    torch_class = "Dropout2d"

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        # It zeroes whole channels (dim 1): in training torch raises on a 1-d tensor, which has
        # none (in eval mode it passes it through, but dropout only acts in training).
        if len(x) < 2:
            raise ShapeError(
                "SC209",
                "dropout2d needs a tensor of at least 2 dims (it drops whole channels), "
                "but a 1-d tensor arrives",
                "flatten with start_dim: 1 (the default) keeps the batch dimension",
            )
        return Inferred(out=x)


class _Softmax(_Elementwise):
    dim: Int | None = None

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        if self.dim is not None:
            wrap_dim(self.dim, len(x), "dim")
        return Inferred(out=x)

    def settings(self) -> str:
        return "" if self.dim is None else f"dim={self.dim}"


class Softmax(_Softmax):
    type: Literal["softmax"]
    torch_class = "Softmax"
    name_prefix = "softmax"
    outputs = "probabilities"


class LogSoftmax(_Softmax):
    type: Literal["logsoftmax"]
    torch_class = "LogSoftmax"
    name_prefix = "logsoftmax"
    outputs = "log_probabilities"
