"""The spec: pydantic models of a whole YAML spec (input, layers, train), and layer naming."""

import keyword
import re
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr
from pydantic_core import PydanticCustomError

from .layers import BLOCKS, LayerSpec
from .layers.base import Identifier, _identifier, _strict_int

Path = tuple[int | str, ...]  # a layer's place: (3,) at top level, (3, "body", 1) in a block


def _batch(value: Any) -> int | str:
    if isinstance(value, str):
        return _identifier(value)
    return _strict_int(value, 1)


def _chw(value: Any) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise PydanticCustomError(
            "input_shape", "must be [channels, height, width], got {value}", {"value": repr(value)}
        )
    return tuple(_strict_int(v, 1) for v in value)


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: Annotated[tuple[int, int, int], BeforeValidator(_chw)]  # channels, height, width
    batch: Annotated[int | str, BeforeValidator(_batch)] = "N"  # an int, or a symbol


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Identifier | None = None
    description: str | None = None
    input: InputSpec
    # Raw entries when pydantic validates the spec; the loader then validates each one with
    # its type's model (layers.parse_layers), so only the types a spec uses are built.
    layers: list[Any] = Field(min_length=1)
    # A TrainSpec (trainspec.py) once loaded; the loader validates it only where a spec has a
    # `train:` section, so that planning a spec without one never builds those models.
    train: Any = None

    # Where each key and item stood in the YAML file: path -> (line, column), 1-based.
    _positions: dict[tuple, tuple[int, int]] = PrivateAttr(default_factory=dict)
    _source: str | None = PrivateAttr(default=None)  # the file path, if read from a file

    @property
    def source(self) -> str | None:
        return self._source

    def layer_position(self, path: Path) -> tuple[int, int] | None:
        loc = ("layers", path[0]) if len(path) == 1 else yaml_loc(path)
        return self._positions.get(loc)


def yaml_loc(path: Path) -> tuple:
    """The YAML location of a layer path: (3, "body", 1) -> ("layers", 3, "body", 1);
    concat branches sit under "branches": (5, 2, 0) -> ("layers", 5, "branches", 2, 0)."""
    loc: list = ["layers", path[0]]
    rest = list(path[1:])
    while rest:
        branch, index = rest[0], rest[1] if len(rest) > 1 else None
        loc += [branch] if isinstance(branch, str) else ["branches", branch]
        if index is not None:
            loc.append(index)
        rest = rest[2:]
    return tuple(loc)


def walk(layers: list[LayerSpec], prefix: Path = ()) -> Iterator[tuple[Path, LayerSpec]]:
    """Every layer of a tree in order, blocks before their contents."""
    for i, layer in enumerate(layers):
        path = (*prefix, i)
        yield path, layer
        if isinstance(layer, BLOCKS):
            for branch, sub in layer.branch_lists():
                yield from walk(sub, (*path, branch))


def default_name(stem: str) -> str:
    """A file stem as a spec name: `my-net.v2` -> `my_net_v2`."""
    name = re.sub(r"\W", "_", stem, flags=re.ASCII).strip("_") or "net"
    if keyword.iskeyword(name):
        return f"{name}_"
    return f"net_{name}" if name[0].isdigit() else name


def assign_names(spec: Spec) -> list[tuple[Path, str]]:
    """Give every unnamed layer a stable name (conv1, pool2, fc1 ...): per prefix, counted in
    order, skipping names the spec already uses. Returns the (path, name) of duplicates."""
    taken: dict[str, Path] = {}
    duplicates = []
    for path, layer in walk(spec.layers):
        if layer.name is not None:
            if layer.name in taken:
                duplicates.append((path, layer.name))
            taken.setdefault(layer.name, path)
    counters: dict[str, int] = {}
    for _, layer in walk(spec.layers):
        if layer.name is None:
            prefix = layer.name_prefix
            n = counters.get(prefix, 0)
            while True:
                n += 1
                if f"{prefix}{n}" not in taken:
                    break
            counters[prefix] = n
            object.__setattr__(layer, "name", f"{prefix}{n}")  # layers are frozen after this
            taken[layer.name] = ()
    return duplicates
