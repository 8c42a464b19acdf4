"""The spec: pydantic models of a whole YAML spec (input, layers, train), and layer naming."""

import keyword
import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from .diagnostics import WARNING_CODES
from .layers import LayerSpec, Origin, block_of, parse_layers
from .layers.base import Identifier, _identifier, _strict_int

Path = tuple[int | str, ...]  # a layer's place: (3,) at top level, (3, "body", 1) in a block


def _batch(value: Any) -> int | str:
    if isinstance(value, str):
        return _identifier(value)
    return _strict_int(value, 1)


def _warning_code(value: Any) -> str:
    if value not in WARNING_CODES:
        raise PydanticCustomError("warning_code", "{value} is not a warning's code ({warnings}); "
                                  "errors cannot be ignored",
                                  {"value": repr(value), "warnings": ", ".join(WARNING_CODES)})
    return value


WarningCode = Annotated[str, BeforeValidator(_warning_code)]


def _chw(value: Any) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise PydanticCustomError(
            "input_shape", "must be [channels, height, width], got {value}", {"value": repr(value)}
        )
    return tuple(_strict_int(v, 1) for v in value)


class InputSpec(BaseModel):
    # Built on first use (as every model here): importing builds no validator.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    # channels, height, width
    shape: Annotated[tuple[int, int, int], BeforeValidator(_chw), WithJsonSchema(
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3,
         "maxItems": 3})]
    # an int, or a symbol
    batch: Annotated[int | str, BeforeValidator(_batch), WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 1},
                   {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}]})] = "N"


class LayerErrors(Exception):
    """Layer entries that do not follow the schema: pydantic-style error dicts whose ``loc``
    starts at ("layers", i, ...)."""

    def __init__(self, errors: list[dict]):
        super().__init__(f"{len(errors)} invalid layer entries")
        self.errors = errors


class Spec(BaseModel):
    """A whole spec. Build one from YAML with ``load_spec``, or in Python:

        Spec(input={"shape": [1, 28, 28]},
             layers=[Conv2d(out_channels=10, kernel_size=5), "relu", "flatten",
                     {"type": "linear", "out_features": 10}])

    Layers may be layer models, dicts as in YAML, or type names. ``complete()`` validates and
    names them; ``plan()`` calls it for a spec that has not been completed."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: Identifier | None = None
    description: str | None = None
    input: InputSpec
    # Raw entries or layer models at first; complete() validates each one with its type's model,
    # so only the types a spec uses are built.
    layers: list[Any] = Field(min_length=1)
    # A TrainSpec (trainspec.py) once loaded; the loader validates it only where a spec has a
    # `train:` section, so that planning a spec without one never builds those models.
    train: Any = None
    # Warnings the spec accepts, e.g. [SC303] for a network kept as its paper has it: not
    # reported, and no failure under --strict.
    ignore: list[WarningCode] = []  # pydantic copies it (default_factory=list cost 5 ms to build)
    # The layers whose tensors the network returns (graph.py); None: the last layer's.
    outputs: list[Identifier] | None = Field(default=None, min_length=1)

    # What loading learnt beyond the fields (set_loaded): kept in pydantic's private dict without
    # declaring private attributes, which cost a small spec a tenth of its check.
    #   source: the file path, if read from a file; completed: complete() has run;
    #   scale: the scale its templates were expanded at; scales: every scale the YAML declares;
    #   notes: layer path -> the template arithmetic that made its values, for `expand
    #     --explain` (or a function that makes them); templates: a function giving
    #     templates.TemplateCode, for `build`, None without templates; aliases: a template
    #     use's name -> the index of its last layer, for `from:` (graph.py); sized: the names
    #     its templates read of the incoming shape ($in_channels, $in_h); at_input: a function
    #     giving the spec expanded for another input (C, H, W).

    def _loaded(self, key: str):
        private = self.__pydantic_private__
        return private.get(key, _LOADED[key]) if private else _LOADED[key]

    def set_loaded(self, **values) -> None:
        """Note what loading learnt (the keys above)."""
        private = self.__pydantic_private__
        if private is None:
            private = {}
            object.__setattr__(self, "__pydantic_private__", private)
        private.update(values)

    @property
    def source(self) -> str | None:
        return self._loaded("source")

    @property
    def scale(self) -> str | None:
        return self._loaded("scale")

    @property
    def scales(self) -> tuple[str, ...]:
        return self._loaded("scales")

    @property
    def notes(self) -> dict[tuple, list[str]]:
        notes = self._loaded("notes")
        if callable(notes):  # written on first use
            notes = notes()
            self.set_loaded(notes=notes)
        return notes if notes is not None else {}

    @property
    def template_code(self):
        """A function giving the spec's templates.TemplateCode, for `build`; None without
        templates."""
        return self._loaded("templates")

    @property
    def aliases(self) -> dict[str, int]:
        aliases = self._loaded("aliases")
        return aliases if aliases is not None else {}

    @property
    def sized(self) -> frozenset:
        return self._loaded("sized")

    @property
    def at_input(self):
        return self._loaded("at_input")

    @property
    def completed(self) -> bool:
        return self._loaded("completed")

    def complete(self, *, default: str = "net",
                 origin: Callable[[tuple], Origin | None] | None = None,
                 ) -> list[tuple[Path, str, Path]]:
        """Make the spec ready to plan: validate every layer entry (raises LayerErrors), give
        each layer its origin (``origin(yaml_loc)``), give the spec the name ``default`` if it
        has none and every unnamed layer a stable one. Returns the names used twice (see
        assign_names). Idempotent."""
        if self.completed:
            return []
        layers, errors = parse_layers(self.layers, ("layers",), origin)
        if errors:
            raise LayerErrors(errors)
        self.layers = layers
        if self.name is None:
            self.name = default
        self.set_loaded(completed=True)
        return assign_names(self)

    def find(self, path: Path) -> LayerSpec:
        """The layer at a path: (3,) or (3, "body", 1)."""
        layers, layer = self.layers, None
        rest = list(path)
        while rest:
            layer = layers[rest.pop(0)]
            if rest:
                layers = dict(layer.branch_lists())[rest.pop(0)]
        return layer


_LOADED = {"source": None, "completed": False, "scale": None, "scales": (), "notes": None,
           "templates": None, "aliases": None, "sized": frozenset(), "at_input": None}


def yaml_loc(path: Path, layers: list) -> tuple:
    """The YAML location of a layer path, following the blocks on the way (layer models or raw
    entries): (3, "body", 1) -> ("layers", 3, "body", 1); (5, 2, 0) -> ("layers", 5,
    "branches", 2, 0)."""
    loc: list = ["layers"]
    rest = list(path)
    while rest:
        index = rest.pop(0)
        loc.append(index)
        if not rest:
            break
        key = rest.pop(0)
        item = layers[index]
        block = type(item) if isinstance(item, LayerSpec) else block_of(item)
        branch_loc = block.branch_loc(key) if block and block.is_block else (key,)
        loc += branch_loc
        layers = item
        for seg in branch_loc:
            layers = getattr(layers, seg) if isinstance(layers, LayerSpec) else layers[seg]
    return tuple(loc)


def walk(layers: list[LayerSpec], prefix: Path = ()) -> Iterator[tuple[Path, LayerSpec]]:
    """Every layer of a tree in order, blocks before their contents."""
    for i, layer in enumerate(layers):
        path = (*prefix, i)
        yield path, layer
        if layer.is_block:
            for branch, sub in layer.branch_lists():
                yield from walk(sub, (*path, branch))


def default_name(stem: str) -> str:
    """A file stem as a spec name: `my-net.v2` -> `my_net_v2`."""
    name = re.sub(r"\W", "_", stem, flags=re.ASCII).strip("_") or "net"
    if keyword.iskeyword(name):
        return f"{name}_"
    return f"net_{name}" if name[0].isdigit() else name


def assign_names(spec: Spec) -> list[tuple[Path, str, Path]]:
    """Give every unnamed layer a stable name (conv1, pool2, fc1 ...): per prefix, counted in
    order, skipping names the spec already uses. Returns each duplicate's (path, name, path of
    the layer that has the name first)."""
    taken: dict[str, Path] = {}
    duplicates = []
    unnamed = []
    for path, layer in walk(spec.layers):
        name = layer.name
        if name is None:
            unnamed.append(layer)
        elif name in taken:
            duplicates.append((path, name, taken[name]))
        else:
            taken[name] = path
    counters: dict[str, int] = {}
    for layer in unnamed:
        prefix = layer.name_prefix
        n = counters.get(prefix, 0) + 1
        name = f"{prefix}{n}"
        while name in taken:
            n += 1
            name = f"{prefix}{n}"
        counters[prefix] = n
        object.__setattr__(layer, "name", name)  # layers are frozen after this
        taken[name] = ()
    return duplicates
