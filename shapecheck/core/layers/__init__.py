"""Every layer kind, by its lowercase type name, and the validation of raw layer entries.

Adding a layer type: write its model (fields, shape rule, torch class) in its family's module,
add it to _WHERE (which KINDS reads), and add a test. Adding a block: its own module (a Block
subclass), _WHERE, and a test. docs/extending.md walks through both."""

import importlib
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache

from pydantic import ValidationError

from ..graph import graph_error, like_of, read_from
from .base import Context, Inferred, LayerSpec, Origin, ShapeError
from .block import Block

# Every layer kind: its lowercase type name and its model, as "module.Class" of this package.
_WHERE = {
    "conv2d": "conv.Conv2d", "convtranspose2d": "conv.ConvTranspose2d",
    "maxpool2d": "pool.MaxPool2d", "avgpool2d": "pool.AvgPool2d",
    "adaptiveavgpool2d": "pool.AdaptiveAvgPool2d", "adaptivemaxpool2d": "pool.AdaptiveMaxPool2d",
    "upsample": "resample.Upsample", "pixelshuffle": "resample.PixelShuffle",
    "pixelunshuffle": "resample.PixelUnshuffle",
    "batchnorm2d": "norm.BatchNorm2d", "frozenbatchnorm2d": "norm.FrozenBatchNorm2d",
    "groupnorm": "norm.GroupNorm",
    "layernorm": "norm.LayerNorm", "localresponsenorm": "norm.LocalResponseNorm",
    "layerscale": "norm.LayerScale",
    "dropout": "elementwise.Dropout", "dropout2d": "elementwise.Dropout2d",
    "stochasticdepth": "elementwise.StochasticDepth",
    "relu": "elementwise.ReLU", "relu6": "elementwise.ReLU6", "leakyrelu": "elementwise.LeakyReLU",
    "prelu": "elementwise.PReLU", "elu": "elementwise.ELU", "gelu": "elementwise.GELU",
    "silu": "elementwise.SiLU", "mish": "elementwise.Mish", "hardswish": "elementwise.Hardswish",
    "hardsigmoid": "elementwise.Hardsigmoid", "softplus": "elementwise.Softplus",
    "sigmoid": "elementwise.Sigmoid", "tanh": "elementwise.Tanh",
    "identity": "elementwise.Identity", "softmax": "elementwise.Softmax",
    "logsoftmax": "elementwise.LogSoftmax",
    "zeropad2d": "pad.ZeroPad2d", "constantpad2d": "pad.ConstantPad2d",
    "reflectionpad2d": "pad.ReflectionPad2d", "replicationpad2d": "pad.ReplicationPad2d",
    "flatten": "reshape.Flatten", "channelshuffle": "reshape.ChannelShuffle",
    "permute": "reshape.Permute", "linear": "linear.Linear",
    "residual": "residual.Residual", "concat": "concat.Concat", "gate": "gate.Gate",
    "split": "split.Split",
    "add": "merge.Add", "mul": "merge.Mul", "cat": "merge.Cat",
}  # fmt: skip


class _Kinds(Mapping):
    """Type name -> model class, each family's module imported when one of its types is
    first looked up: making a pydantic model costs about a millisecond, so a spec that uses
    five kinds should not pay for forty-five."""

    def __init__(self) -> None:
        self._models: dict[str, type[LayerSpec]] = {}

    def __getitem__(self, name: str) -> type[LayerSpec]:
        model = self._models.get(name)
        if model is None:
            module, _, cls = _WHERE[name].partition(".")
            model = getattr(importlib.import_module(f".{module}", __name__), cls)
            self._models[name] = model
        return model

    def get(self, name: str, default=None):  # Mapping's own goes through __getitem__ and a try
        model = self._models.get(name)
        if model is None and name in _WHERE:
            model = self[name]
        return model or default

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)

    def __contains__(self, name: object) -> bool:
        return name in _WHERE


KINDS: Mapping[str, type[LayerSpec]] = _Kinds()


def __getattr__(name: str):
    if name == "BLOCKS":  # every block kind, imported on first use
        return tuple(kind for kind in KINDS.values() if kind.is_block)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=512)  # a spec names few types, each of them thousands of times
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
    return _written_type(item["type"])[0]


def _written_type(written: str) -> tuple[type[LayerSpec] | None, str]:
    """The model of a type as written (`Conv2d`, `nn.Conv2d` …), or None, and the type's
    name: a spec writes the same few types thousands of times."""
    found = _WRITTEN.get(written)
    if found is None:
        name = normalize_type(written)
        found = (KINDS.get(name), name)
        if found[0] is not None:
            if len(_WRITTEN) > 512:  # a long-lived process (the language server)
                _WRITTEN.clear()
            _WRITTEN[written] = found
    return found


_WRITTEN: dict[str, tuple[type[LayerSpec], str]] = {}


def block_of(item: object) -> type[Block] | None:
    """The Block class of a raw entry, or None where it is not a block."""
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        return None
    kind = _written_type(item["type"])[0]
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
    top = loc == ("layers",)  # the spec's own list
    for i, item in enumerate(items):
        here = (*loc, i)
        # (dict first: pydantic's models are ABCs, and asking one for isinstance is slow)
        if type(item) is not dict and isinstance(item, LayerSpec):
            # built in Python; a block's branches may still be raw
            layer = item.model_copy()  # naming must not touch the caller's model, nor reuses
            if layer.is_block:
                layer, sub_errors = _parse_branches(layer, here, origin)
                errors += sub_errors
            layers.append(layer)
            continue
        if isinstance(item, str):
            item = {"type": item}
        written = item.get("type") if isinstance(item, dict) else None
        kind, name = _written_type(written) if isinstance(written, str) else (None, None)
        if kind is None:
            errors.append({"type": "unknown_layer_type", "loc": here, "input": item,
                           "msg": "unknown layer type"})
            continue
        inputs = None
        if "from" in item:  # named inputs (graph.py): not a field of any model
            inputs, error = read_from(item["from"], (*here, "from"), top)
            item = {k: v for k, v in item.items() if k != "from"}
            if error:
                errors.append(error)
        try:
            if written != name:  # KINDS' key is the type
                item = {**item, "type": name}
            layer = kind.model_validate(item)
        except ValidationError as e:
            errors += [{**err, "loc": (*here, *err["loc"])} for err in e.errors()]
            continue
        if not top and like_of(layer) is not None:
            errors.append(graph_error((*here, "size"), "`size: {like: …}` is allowed only in "
                                      "the spec's own `layers:` list; a branch sees only its "
                                      "block's input", "resize after the block instead"))
            continue
        if origin is not None:
            layer.with_origin(origin(here))
        if inputs is not None:
            layer.with_inputs(inputs)
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
