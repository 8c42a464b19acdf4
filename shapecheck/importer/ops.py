"""What each torch call of a traced forward becomes in a spec.

A module becomes the layer kind whose ``torch_class`` (or, for the small modules `build`
writes, whose ``helper``) is its class, its fields read back from the module's attributes:
the same table codegen uses, read in reverse. A function call (``F.relu``, ``torch.flatten``,
``x.view``) has no class to read, so each supported one has a stub below with torch's own
signature that gives its spec entry; calling the stub with the call's arguments binds them
exactly as torch would.

Every entry leaves out what a person leaves out: defaults, ``inplace``, and the in_channels /
in_features / num_features / num_channels that the planner infers and checks.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from ..core.layers import KINDS, LayerSpec

# Fields the planner infers from the tensor that arrives (docs/spec.md).
INFERRED = frozenset({"in_channels", "in_features", "num_features", "num_channels"})
# In-place is how a forward saves memory, not part of the network.
DROPPED = frozenset({"inplace"}) | INFERRED

TORCH_KINDS: dict[str, type[LayerSpec]] = {k.torch_class: k for k in KINDS.values()
                                           if k.torch_class and not k.is_block}
# build's merge modules (Add, Cat …) take several tensors: fx traces through them, to the
# +, * or torch.cat inside, as through any module.
HELPER_KINDS: dict[str, type[LayerSpec]] = {k.helper: k for k in KINDS.values()
                                            if k.helper and not k.is_block and not k.is_merge}


class Unsupported(Exception):
    """A call or module with no layer kind, or with arguments its kind cannot hold."""


# ---------------------------------------------------------------- modules


def module_kind(module) -> type[LayerSpec] | None:
    """The layer kind of a module: a torch.nn class with a kind (or a subclass that keeps its
    forward), or one of build's own small modules, recognised by its class name and the
    attributes its source sets. None for any other module (fx traces into it)."""
    cls = type(module)
    for base in cls.__mro__:
        kind = TORCH_KINDS.get(base.__name__)
        if kind is not None and base.__module__.startswith("torch.nn"):
            return kind if cls.forward is base.forward else None
    kind = HELPER_KINDS.get(cls.__name__)
    if kind is not None and all(hasattr(module, a) for a in _helper_attributes(kind)) \
            and all(b in getattr(module, "_buffers", {}) for b in _helper_buffers(kind)):
        return kind
    return None


def _helper_attributes(kind: type[LayerSpec]) -> list[str]:
    return re.findall(r"self\.(\w+) = ", kind.helper_source)


def _helper_buffers(kind: type[LayerSpec]) -> list[str]:
    # torchvision's FrozenBatchNorm2d keeps its weight as a buffer: one with a parameter is
    # another layer
    return re.findall(r'self\.register_buffer\("(\w+)"', kind.helper_source)


def module_entry(module, kind: type[LayerSpec]) -> dict:
    """A module's spec entry, its fields read from the module's attributes."""
    if getattr(module, "return_indices", False):
        raise Unsupported("return_indices=True gives a tuple, which no layer passes on")
    values = {}
    for field, info in kind.model_fields.items():
        if field in ("type", "name") or field in DROPPED or not hasattr(module, field):
            continue
        value = getattr(module, field)
        if isinstance(info.default, bool) and (value is None or _is_tensor(value)):
            value = value is not None  # bias=False leaves the parameter None
        values[field] = value
    return entry(kind, values)


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "shape")


# ---------------------------------------------------------------- entries


def entry(kind: type[LayerSpec], values: dict) -> dict:
    """The spec entry of ``kind`` with ``values``: plain YAML values, defaults left out, checked
    by the kind's own model (Unsupported, with its message, where it refuses them)."""
    out: dict[str, Any] = {"type": kind.type_name()}
    for field, value in values.items():
        if field in DROPPED:
            continue
        value = _plain(field, value)
        info = kind.model_fields[field]
        if not info.is_required() and value == _plain(field, info.default):
            continue
        if field == "stride" and value == out.get("kernel_size") and info.default is None:
            continue  # a pool's stride defaults to its kernel size
        out[field] = value
    try:
        kind.model_validate(out)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or kind.type_name()}: "
                             f"{err['msg']}" for err in e.errors())
        raise Unsupported(f"its settings do not fit a {kind.type_name()} layer ({problems})"
                          ) from None
    return out


def _plain(field: str, value: Any) -> Any:
    """Tuples as lists, and the short forms a person writes: 5 for (5, 5), 1 for (1, 1, 1, 1),
    96 for (96,). A normalized_shape keeps its length: (4, 4) normalises two dims, 4 one."""
    if isinstance(value, (tuple, list)):
        items = [_plain(field, v) for v in value]
        if len(items) == 1 or (field != "normalized_shape" and len(items) in (2, 4)
                               and all(v == items[0] for v in items)):
            return items[0]
        return items
    return value


# ---------------------------------------------------------------- functions and methods
#
# Each stub takes the call's arguments with torch's names and defaults (the tensor first) and
# gives (kind, fields). `CALLS` lists the names that call it: "F." torch.nn.functional,
# "torch.", and "Tensor." for a method.


def _act(type_name: str):
    def stub(input, inplace=False):
        return type_name, {}
    return stub


def _leaky_relu(input, negative_slope=0.01, inplace=False):
    return "leakyrelu", {"negative_slope": negative_slope}


def _elu(input, alpha=1.0, inplace=False):
    return "elu", {"alpha": alpha}


def _gelu(input, approximate="none"):
    return "gelu", {"approximate": approximate}


def _softplus(input, beta=1.0, threshold=20.0):
    return "softplus", {"beta": beta, "threshold": threshold}


def _plain_function(type_name: str):
    def stub(input):
        return type_name, {}
    return stub


def _softmax(type_name: str):
    def stub(input, dim=None, _stacklevel=3, dtype=None):
        if dtype is not None:
            raise Unsupported("dtype= changes the tensor's type, which a spec does not hold")
        return type_name, {"dim": dim}
    return stub


def _dropout(type_name: str):
    def stub(input, p=0.5, training=True, inplace=False):
        return type_name, {"p": p}
    return stub


def _max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                return_indices=False):
    if return_indices:
        raise Unsupported("return_indices=True gives a tuple, which no layer passes on")
    return "maxpool2d", {"kernel_size": kernel_size, "stride": stride or None,
                         "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}


def _avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                count_include_pad=True, divisor_override=None):
    return "avgpool2d", {"kernel_size": kernel_size, "stride": stride or None,
                         "padding": padding, "ceil_mode": ceil_mode,
                         "count_include_pad": count_include_pad,
                         "divisor_override": divisor_override}


def _adaptive(type_name: str):
    def stub(input, output_size, return_indices=False):
        if return_indices:
            raise Unsupported("return_indices=True gives a tuple, which no layer passes on")
        return type_name, {"output_size": output_size}
    return stub


def _interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None, antialias=False):
    if antialias:
        raise Unsupported("antialias=True has no upsample field")
    return "upsample", {"size": size, "scale_factor": scale_factor, "mode": mode,
                        "align_corners": align_corners,
                        "recompute_scale_factor": recompute_scale_factor}


def _pad(input, pad, mode="constant", value=None):
    pad = list(pad)
    if len(pad) == 2:
        pad += [0, 0]
    if len(pad) != 4:
        raise Unsupported(f"a padding of {len(pad)} values pads more than H and W")
    if mode == "constant":
        return ("zeropad2d", {"padding": pad}) if not value else \
            ("constantpad2d", {"padding": pad, "value": value})
    kinds = {"reflect": "reflectionpad2d", "replicate": "replicationpad2d"}
    if mode not in kinds:
        raise Unsupported(f"mode={mode!r} has no pad layer (constant, reflect, replicate)")
    return kinds[mode], {"padding": pad}


def _pixel_shuffle(input, upscale_factor):
    return "pixelshuffle", {"upscale_factor": upscale_factor}


def _pixel_unshuffle(input, downscale_factor):
    return "pixelunshuffle", {"downscale_factor": downscale_factor}


def _channel_shuffle(input, groups):
    return "channelshuffle", {"groups": groups}


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    # weight and bias arrive as True where the call passes the layer's own parameters
    if weight is None and bias is not None:
        raise Unsupported("it has a bias but no weight, which nn.LayerNorm cannot hold")
    return "layernorm", {"normalized_shape": normalized_shape, "eps": eps,
                         "elementwise_affine": weight is not None, "bias": bias is not None}


def _flatten(input, start_dim=0, end_dim=-1):
    return "flatten", {"start_dim": start_dim, "end_dim": end_dim}


def _permute(input, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return "permute", {"dims": list(dims)}


def _torch_permute(input, dims):
    return "permute", {"dims": list(dims)}


CALLS: dict[str, Any] = {}
for _type in ("relu", "relu6", "silu", "mish", "hardswish", "hardsigmoid"):
    for _name in (f"F.{_type}", f"F.{_type}_", f"torch.{_type}", f"torch.{_type}_",
                  f"Tensor.{_type}", f"Tensor.{_type}_"):
        CALLS[_name] = _act(_type)
for _type in ("sigmoid", "tanh"):
    for _name in (f"F.{_type}", f"torch.{_type}", f"torch.{_type}_", f"Tensor.{_type}",
                  f"Tensor.{_type}_"):
        CALLS[_name] = _plain_function(_type)
CALLS.update({
    "F.leaky_relu": _leaky_relu, "F.leaky_relu_": _leaky_relu,
    "F.elu": _elu, "F.elu_": _elu, "F.gelu": _gelu, "F.softplus": _softplus,
    "F.softmax": _softmax("softmax"), "torch.softmax": _softmax("softmax"),
    "Tensor.softmax": _softmax("softmax"),
    "F.log_softmax": _softmax("logsoftmax"), "torch.log_softmax": _softmax("logsoftmax"),
    "Tensor.log_softmax": _softmax("logsoftmax"),
    "F.dropout": _dropout("dropout"), "F.dropout2d": _dropout("dropout2d"),
    "F.max_pool2d": _max_pool2d, "torch.max_pool2d": _max_pool2d,
    "F.avg_pool2d": _avg_pool2d, "torch.avg_pool2d": _avg_pool2d,
    "F.adaptive_avg_pool2d": _adaptive("adaptiveavgpool2d"),
    "torch.adaptive_avg_pool2d": _adaptive("adaptiveavgpool2d"),
    "F.adaptive_max_pool2d": _adaptive("adaptivemaxpool2d"),
    "F.interpolate": _interpolate, "F.upsample": _interpolate,
    "F.pad": _pad,
    "F.pixel_shuffle": _pixel_shuffle, "torch.pixel_shuffle": _pixel_shuffle,
    "F.pixel_unshuffle": _pixel_unshuffle, "torch.pixel_unshuffle": _pixel_unshuffle,
    "F.channel_shuffle": _channel_shuffle, "torch.channel_shuffle": _channel_shuffle,
    "torch.native_channel_shuffle": _channel_shuffle,
    "F.layer_norm": _layer_norm,
    "torch.flatten": _flatten, "Tensor.flatten": _flatten,
    "Tensor.permute": _permute, "torch.permute": _torch_permute,
})

# Arguments of a call that hold the layer's own parameters (ConvNeXt's LayerNorm2d passes
# self.weight and self.bias to F.layer_norm): the stub gets True for each one passed.
PARAMETER_ARGS: dict[str, tuple[str, ...]] = {"F.layer_norm": ("weight", "bias")}

# Calls whose size may be another tensor's H×W (size=other.shape[-2:]): `size: {like: NAME}`.
SIZED = frozenset({"F.interpolate", "F.upsample"})

# Calls that give their input unchanged (for the shapes and the maths of a forward pass).
PASS_THROUGH = frozenset({"Tensor.contiguous", "Tensor.clone", "torch.clone"})
ADDS = frozenset({"operator.add", "operator.iadd", "torch.add", "Tensor.add", "Tensor.add_",
                  "Tensor.__add__", "Tensor.__iadd__"})
MULTIPLIES = frozenset({"operator.mul", "operator.imul", "torch.mul", "Tensor.mul",
                        "Tensor.mul_", "Tensor.__mul__", "Tensor.__imul__"})
CATS = frozenset({"torch.cat", "torch.concat", "torch.concatenate"})
CHUNKS = frozenset({"torch.chunk", "Tensor.chunk"})
RESHAPES = frozenset({"Tensor.view", "Tensor.reshape", "torch.reshape"})
FLATTENS = frozenset({"torch.flatten", "Tensor.flatten"})
MEANS = frozenset({"Tensor.mean", "torch.mean"})
SIZES = frozenset({"Tensor.size", "Tensor.dim", "builtins.getattr", "operator.getitem"})


def call_entry(name: str, args: tuple, kwargs: dict) -> dict:
    """The spec entry of a supported function call; Unsupported otherwise. ``args[0]`` is the
    input tensor (any placeholder), the rest plain values."""
    stub = CALLS.get(name)
    if stub is None:
        raise Unsupported("it has no layer type in shapecheck")
    try:
        type_name, values = stub(*args, **kwargs)
    except TypeError as e:
        raise Unsupported(f"its arguments are not those of {name}: {e}") from None
    return entry(KINDS[type_name], values)


# How a call reads in messages: "+" for operator.add, ".view()" for Tensor.view.
_OPERATORS = {"add": "+", "iadd": "+=", "mul": "*", "imul": "*=", "sub": "-", "isub": "-=",
              "truediv": "/", "floordiv": "//", "matmul": "@", "getitem": "[...]",
              "neg": "unary -", "pow": "**"}


def shown(name: str) -> str:
    group, _, short = name.partition(".")
    if group == "operator" and short in _OPERATORS:
        return f"`{_OPERATORS[short]}`"
    if group == "Tensor":
        return f".{short}()"
    return name
