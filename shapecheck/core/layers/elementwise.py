"""Layers that keep the shape: activations, dropout and stochastic depth, identity, softmax.

They have no MACs (as the contract counts them) and, but for PReLU's slopes, no parameters."""

from typing import Literal

from .base import (
    Context,
    Dims,
    Flag,
    Inferred,
    Int,
    LayerSpec,
    Number,
    PosInt,
    Probability,
    ShapeError,
    Stricter,
    channels_arrive,
    model_named,
    on_first_use,
)
from .reshape import wrap_dim
from .window import SAME, Whole, channel_map, keeps_axes


@on_first_use
def _make__Elementwise():
    class _Elementwise(LayerSpec):
        family = "activation"

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            return Inferred(out=x)

        axis_map = keeps_axes  # value by value

    return _Elementwise


@on_first_use
def _make__InPlace():
    class _InPlace(_make__Elementwise()):
        inplace: Flag = False

    return _InPlace


@on_first_use
def _make_ReLU():
    class ReLU(_make__InPlace()):
        type: Literal["relu"]
        torch_class = "ReLU"
        name_prefix = "relu"

    return ReLU


@on_first_use
def _make_ReLU6():
    class ReLU6(_make__InPlace()):
        type: Literal["relu6"]
        torch_class = "ReLU6"
        name_prefix = "relu"

    return ReLU6


@on_first_use
def _make_LeakyReLU():
    class LeakyReLU(_make__Elementwise()):
        type: Literal["leakyrelu"]
        negative_slope: Number = 0.01
        inplace: Flag = False
        torch_class = "LeakyReLU"
        name_prefix = "lrelu"

    return LeakyReLU


@on_first_use
def _make_ELU():
    class ELU(_make__Elementwise()):
        type: Literal["elu"]
        alpha: Number = 1.0
        inplace: Flag = False
        torch_class = "ELU"
        name_prefix = "elu"

    return ELU


@on_first_use
def _make_GELU():
    class GELU(_make__Elementwise()):
        type: Literal["gelu"]
        approximate: Literal["none", "tanh"] = "none"
        torch_class = "GELU"
        name_prefix = "gelu"

    return GELU


@on_first_use
def _make_SiLU():
    class SiLU(_make__InPlace()):
        type: Literal["silu"]
        torch_class = "SiLU"
        name_prefix = "silu"

    return SiLU


@on_first_use
def _make_Hardswish():
    class Hardswish(_make__InPlace()):
        type: Literal["hardswish"]
        torch_class = "Hardswish"
        name_prefix = "hswish"

    return Hardswish


@on_first_use
def _make_Hardsigmoid():
    class Hardsigmoid(_make__InPlace()):
        type: Literal["hardsigmoid"]
        torch_class = "Hardsigmoid"
        name_prefix = "hsigmoid"

    return Hardsigmoid


@on_first_use
def _make_Mish():
    class Mish(_make__InPlace()):
        type: Literal["mish"]
        torch_class = "Mish"
        name_prefix = "mish"

    return Mish


@on_first_use
def _make_Softplus():
    class Softplus(_make__Elementwise()):
        type: Literal["softplus"]
        beta: Number = 1.0
        threshold: Number = 20.0
        torch_class = "Softplus"
        name_prefix = "softplus"

    return Softplus


@on_first_use
def _make_PReLU():
    class PReLU(_make__Elementwise()):
        """A leaky ReLU whose negative slope is learnt: one for all channels, or one per channel."""

        type: Literal["prelu"]
        num_parameters: PosInt = 1
        init: Number = 0.25
        torch_class = "PReLU"
        name_prefix = "prelu"

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            n = self.num_parameters
            if n != 1:
                channels = x[1] if len(x) > 1 else None
                if channels != n:
                    where = channels_arrive(channels) if channels else "a 1-d tensor has none"
                    raise ShapeError("SC205", f"num_parameters is {n} (one per channel), but "
                                     f"{where}", f"set num_parameters: {channels} (or 1, one slope "
                                     "for all)" if channels else "set num_parameters: 1")
            return Inferred(out=x, weight=(n,), params=n, explain=[f"weight [{n}] = {n} params"])

        def axis_map(self, x: Dims, dim: int):
            return channel_map(dim, "prelu") if self.num_parameters != 1 else (SAME, dim)

    return PReLU


@on_first_use
def _make_Sigmoid():
    class Sigmoid(_make__Elementwise()):
        type: Literal["sigmoid"]
        torch_class = "Sigmoid"
        name_prefix = "sigmoid"

    return Sigmoid


@on_first_use
def _make_Tanh():
    class Tanh(_make__Elementwise()):
        type: Literal["tanh"]
        torch_class = "Tanh"
        name_prefix = "tanh"

    return Tanh


@on_first_use
def _make_Identity():
    class Identity(_make__Elementwise()):
        type: Literal["identity"]
        torch_class = "Identity"
        family = "reshape"
        name_prefix = "identity"

    return Identity


@on_first_use
def _make_StochasticDepth():
    class StochasticDepth(_make__Elementwise()):
        """Drops a whole residual branch per sample ('row') or per batch ('batch') in training
    (torchvision's StochasticDepth); the identity at plan time and in eval mode. torch.nn has no
    class for it: build writes a small module."""

        type: Literal["stochasticdepth"]
        p: Probability
        mode: Literal["row", "batch"] = "row"

        family = "dropout"
        name_prefix = "droppath"
        helper = "StochasticDepth"
        helper_source = '''
class StochasticDepth(nn.Module):
    """In training, zeroes the input of a whole sample ('row') or batch ('batch') with
    probability p and scales the rest by 1/(1−p); the identity in eval mode."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.dim() - 1) if self.mode == "row" else [1] * x.dim()
        noise = torch.empty(shape, dtype=x.dtype, device=x.device)
        noise.bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise
'''

        def settings(self) -> str:
            return f"p={self.p:g} {self.mode}"

    return StochasticDepth


@on_first_use
def _make__Dropout():
    class _Dropout(_make__Elementwise()):
        p: Probability = 0.5
        inplace: Flag = False
        family = "dropout"
        name_prefix = "dropout"

        def settings(self) -> str:
            return f"p={self.p:g}"

    return _Dropout


@on_first_use
def _make_Dropout():
    class Dropout(_make__Dropout()):
        type: Literal["dropout"]
        torch_class = "Dropout"

    return Dropout


@on_first_use
def _make_Dropout2d():
    class Dropout2d(_make__Dropout()):
        type: Literal["dropout2d"]
        torch_class = "Dropout2d"
        stricter_than_torch = (
            Stricter("SC209", (1,), why="torch raises in training, the only mode where "
                     "dropout acts; in eval mode it passes the tensor through"),
        )

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

    return Dropout2d


@on_first_use
def _make__Softmax():
    class _Softmax(_make__Elementwise()):
        dim: Int | None = None

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            if self.dim is not None:
                wrap_dim(self.dim, len(x), "dim")
                return Inferred(out=x)
            # build writes the dim torch would pick, which torch warns about choosing implicitly
            return Inferred(out=x, inferred_args={"dim": self.implicit_dim(x)})

        @staticmethod
        def implicit_dim(x: Dims) -> int:
            """torch's choice without a dim: 1 for a 2- or 4-d tensor, 0 for a 0-, 1- or 3-d one."""
            return 0 if len(x) in (0, 1, 3) else 1

        def settings(self) -> str:
            return "" if self.dim is None else f"dim={self.dim}"

        def axis_map(self, x: Dims, dim: int):
            # torch's implicit dim (no dim given) is 1 for a 4-d tensor, 0 for 0-, 1- and 3-d
            over = self.dim if self.dim is not None else self.implicit_dim(x)
            if over % len(x) == dim:
                return Whole(f"{self.type} normalises over this dim"), dim
            return SAME, dim

    return _Softmax


@on_first_use
def _make_Softmax():
    class Softmax(_make__Softmax()):
        type: Literal["softmax"]
        torch_class = "Softmax"
        name_prefix = "softmax"
        outputs = "probabilities"

    return Softmax


@on_first_use
def _make_LogSoftmax():
    class LogSoftmax(_make__Softmax()):
        type: Literal["logsoftmax"]
        torch_class = "LogSoftmax"
        name_prefix = "logsoftmax"
        outputs = "log_probabilities"

    return LogSoftmax


def __getattr__(name: str):  # a model by its class name, defined on first use
    return model_named(globals(), name)
