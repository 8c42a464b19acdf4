"""What every layer kind shares: the pydantic base model, field types, and the shape-rule result.

A shape is the tensor's dims with the batch factored out: ``dims[0]`` is how many batch-sized
rows the first dim holds per sample (1, unless a flatten merged the batch with other dims), so
``(1, 10, 24, 24)`` is N×10×24×24 for any batch N. All arithmetic is on Python ints: exact at
any size, and nothing is allocated.
"""

import keyword
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..record import Record

Dims = tuple[int, ...]


INT64_MAX = 2**63 - 1  # torch keeps sizes, strides, paddings and dilations as int64


def _strict_int(value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "must be an integer, got {value}", {"value": repr(value)})
    if value > INT64_MAX:
        # Said here, not by torch at build time: plan and build must agree. The value itself is
        # not repeated: it may have thousands of digits.
        raise PydanticCustomError(
            "int_range", "must be at most 2**63 - 1 = {limit} (torch's int64 limit), got a "
            "{digits}-digit number", {"limit": INT64_MAX, "digits": len(str(value))})
    if value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise PydanticCustomError(
            "int_range", "must be {kind}, got {value}", {"kind": kind, "value": value}
        )
    return value


def _int_or_pair(value: Any, minimum: int) -> int | tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise PydanticCustomError(
                "pair_length", "must be an int or a pair [h, w], got {n} items", {"n": len(value)}
            )
        return (_strict_int(value[0], minimum), _strict_int(value[1], minimum))
    return _strict_int(value, minimum)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("float_type", "must be a number, got {value}", {"value": repr(value)})
    return float(value)


def _probability(value: Any) -> float:
    value = _number(value)
    if not 0 <= value <= 1:
        raise PydanticCustomError("probability", "must be between 0 and 1, got {value}",
                                  {"value": value})
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise PydanticCustomError("bool_type", "must be true or false, got {value}", {"value": repr(value)})
    return value


def name_problem(name: str) -> str | None:
    """Why a name from a spec cannot be a name in the code `build` writes, or None. Python reads
    non-ASCII identifiers in their NFKC form (two could name one thing); a keyword cannot be a
    name; names of the form __name__ are Python's own (__class__, __init__)."""
    if not name.isidentifier() or not name.isascii():
        return "letters, digits and _, not starting with a digit"
    if keyword.iskeyword(name):
        return "a Python keyword"
    if len(name) > 4 and name.startswith("__") and name.endswith("__"):
        return "names of the form __name__ are Python's own"
    return None


def _identifier(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "must be a string, got {value}", {"value": repr(value)})
    problem = name_problem(value)
    if problem is not None:
        raise PydanticCustomError("not_identifier", "{value} is not a Python identifier ({why})",
                                  {"value": repr(value), "why": problem})
    return value


# The field types, each with its JSON Schema (`shapecheck schema`): the validators above are
# plain functions, which pydantic cannot describe by itself.
def int_schema(minimum: int | None = None) -> dict:
    return {"type": "integer"} if minimum is None else {"type": "integer", "minimum": minimum}


def anycase(word: str) -> str:
    """A regular expression for ``word`` in any case, without flags (JSON Schema patterns are
    ECMA-262, which has no inline (?i))."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else
                   ("\\" + c if c in ".+*?()[]{}|^$\\" else c) for c in word)


def pair_schema(minimum: int) -> dict:
    item = int_schema(minimum)
    return {"anyOf": [item, {"type": "array", "items": item, "minItems": 2, "maxItems": 2}]}


PosInt = Annotated[int, BeforeValidator(lambda v: _strict_int(v, 1)), WithJsonSchema(int_schema(1))]
NonNegInt = Annotated[int, BeforeValidator(lambda v: _strict_int(v, 0)),
                      WithJsonSchema(int_schema(0))]
Int = Annotated[int, BeforeValidator(lambda v: _strict_int(v, -(2**63))),
                WithJsonSchema(int_schema())]
PosPair = Annotated[Any, BeforeValidator(lambda v: _int_or_pair(v, 1)),
                    WithJsonSchema(pair_schema(1))]
NonNegPair = Annotated[Any, BeforeValidator(lambda v: _int_or_pair(v, 0)),
                       WithJsonSchema(pair_schema(0))]
Number = Annotated[float, BeforeValidator(_number), WithJsonSchema({"type": "number"})]
Probability = Annotated[float, BeforeValidator(_probability),
                        WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1})]
Flag = Annotated[bool, BeforeValidator(_flag), WithJsonSchema({"type": "boolean"})]
Identifier = Annotated[str, BeforeValidator(_identifier),
                       WithJsonSchema({"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"})]


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """Normalise an int-or-pair field once, before any arithmetic."""
    return (value, value) if isinstance(value, int) else value


class ShapeError(Exception):
    """The layer cannot work on the tensor that arrives; PyTorch would raise here."""

    def __init__(self, code: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


class Origin(Record):
    """Where a layer was written: the file and the 1-based line and column of its entry.

    A layer that a template made keeps the place it was written in the template, and lists in
    ``used_at`` the uses that made it, innermost first; each names its template. (A plain
    class: every layer gets one, and it is made in half the time of a frozen dataclass and
    defined quicker than a named tuple.)"""

    __slots__ = _fields = ("file", "line", "column", "used_at", "template")

    def __init__(self, file: str | None = None, line: int | None = None,
                 column: int | None = None, used_at: tuple["Origin", ...] = (),
                 template: str | None = None):
        self.file, self.line, self.column = file, line, column
        self.used_at = used_at
        self.template = template  # for a use: the template it used

    @property
    def reported(self) -> tuple[int | None, int | None]:
        """The line and column diagnostics show: the outermost use for a template's layer,
        the place the user wrote in the spec's own layer list."""
        where = self.used_at[-1] if self.used_at else self
        return where.line, where.column

    @property
    def context(self) -> str:
        """' (in template bottleneck at net.yaml:12:9)' for a template's layer, else ''."""
        if not self.used_at:
            return ""
        file = self.file or "<text>"
        parts = [f"in template {self.used_at[0].template} at {file}:{self.line}:{self.column}"]
        for use, outer in zip(self.used_at, self.used_at[1:]):  # a use inside another template
            parts.append(f"used in template {outer.template} at {file}:{use.line}:{use.column}")
        if len(parts) > 4:  # templates nested deep: the innermost two and the outermost one
            parts[2:-1] = [f"… {len(parts) - 3} more uses"]
        return f" ({', '.join(parts)})"


class Lines(Sequence):
    """Explanation lines, written on first use: most runs never show them, and formatting
    them for every layer took a good part of planning a long network."""

    __slots__ = ("_lines", "_make")

    def __init__(self, make: Callable[[], list[str]]):
        self._make, self._lines = make, None

    def _get(self) -> list[str]:
        if self._lines is None:
            self._lines, self._make = self._make(), None
        return self._lines

    def __getitem__(self, i):
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self):
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        return self._get() == (list(other) if isinstance(other, Sequence) else other)

    def __repr__(self) -> str:
        return repr(self._get())


class Inferred(Record):
    """What a shape rule computes for one layer."""

    __slots__ = _fields = ("out", "weight", "bias", "params", "macs", "explain", "inferred_args",
                           "warnings", "features_from", "layout")

    def __init__(self, out: Dims, weight: Dims | None = None, bias: Dims | None = None,
                 params: int = 0, macs: int = 0, explain: Sequence[str] | None = None,
                 inferred_args: dict[str, Any] | None = None,
                 warnings: list[tuple[str, str, str | None]] | None = None,
                 features_from: str | None = None, layout: str | None = None) -> None:
        self.out = out
        self.weight = weight
        self.bias = bias
        self.params = params
        self.macs = macs  # per sample
        self.explain = [] if explain is None else explain  # a list, or Lines
        # Constructor arguments the spec left out and the planner worked out (in_channels, ...).
        self.inferred_args = {} if inferred_args is None else inferred_args
        # (code, message, hint) for things that work but are probably not intended.
        self.warnings = [] if warnings is None else warnings
        # How this layer made the last dim, when it says more than the shape (a flatten's
        # product).
        self.features_from = features_from
        # A layer that reorders dims says where the channels are: its name when they are now
        # last, "" when they are back in dim 1, None when it says nothing.
        self.layout = layout


class Context(Record):
    """What a rule may know beyond its input shape, for explanations and warnings. Rules only
    read it; the planner makes the next one after every layer (``after``). A plain class:
    quicker to define at start-up than a named tuple, and as quick to make."""

    __slots__ = _fields = ("features_from", "channels_last")

    def __init__(self, features_from: str | None = None, channels_last: str | None = None):
        self.features_from = features_from  # how the last dim was made: "flatten1: 20 × 4 × 4 = 320"
        self.channels_last = channels_last  # the permute that moved the channels to the last dim

    def after(self, x: Dims, out: Dims, inferred: "Inferred | None" = None) -> "Context":
        """The context for the layer after one that turned ``x`` into ``out``. A note on the
        last dim lasts while the last dim is unchanged, the layout while the rank is, unless
        the layer says otherwise."""
        features = self.features_from if out[-1:] == x[-1:] else None
        layout = self.channels_last if len(out) == len(x) else None
        if inferred is not None:
            features = inferred.features_from or features
            if inferred.layout is not None:
                layout = inferred.layout or None  # "" says: channels first again
        if features is self.features_from and layout is self.channels_last:
            return self  # read only: most layers keep it as it is
        return Context(features, layout)


class Stricter(Record):
    """A place where a kind refuses, on purpose, what torch runs: the code it gives there, the
    ranks of the arriving tensor where it does (() for any), the flag fields through which
    torch makes the check itself (where one of them is true, torch refuses too), and why.
    The differential test against torch (tests/test_differential.py) reads these. A plain
    class: quicker to define at start-up than a named tuple."""

    __slots__ = _fields = ("code", "ranks", "unless", "why")

    def __init__(self, code: str, ranks: tuple[int, ...] = (), unless: tuple[str, ...] = (),
                 why: str = ""):
        self.code, self.ranks, self.unless, self.why = code, ranks, unless, why


class LayerSpec(BaseModel):
    """Base of every layer kind: a pydantic model of the spec entry plus its shape rule."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: Identifier | None = None

    torch_class: ClassVar[str] = ""  # torch.nn class name
    # The diagram's colour group (conv, pool, norm, activation, dropout, reshape, linear, block);
    # only the drawing reads it. Behaviour keys on the capabilities below.
    family: ClassVar[str] = "other"
    name_prefix: ClassVar[str] = "layer"  # auto names: conv1, pool1, fc1 ...

    # Capabilities that rules over several layers read (lint, diagrams, training).
    is_block: ClassVar[bool] = False  # holds layer lists (layers/block.py)
    is_merge: ClassVar[bool] = False  # joins the tensors its `from:` names (layers/merge.py)
    cancels_channel_bias: ClassVar[bool] = False  # subtracts a per-channel mean (batchnorm)
    starts_classifier: ClassVar[bool] = False  # the diagram's classifier begins here (flatten)
    # What a last layer of this kind hands to the loss: "probabilities", "log_probabilities".
    outputs: ClassVar[str | None] = None
    # Constructor arguments torch needs that a spec may leave out: ``infer`` reads them off the
    # arriving tensor and names them in ``Inferred.inferred_args``. Channels come from dim 1,
    # features (in_features, normalized_shape) from the last dim, as a PyTorch user reads them.
    inferred_fields: ClassVar[tuple[str, ...]] = ()
    # Where the kind is deliberately stricter than torch (Stricter above).
    stricter_than_torch: ClassVar[tuple[Stricter, ...]] = ()

    # A kind with no torch.nn class (a block, a layer scale …) names the small nn.Module that
    # `build` writes for it instead, and its source.
    helper: ClassVar[str] = ""
    helper_source: ClassVar[str] = ""
    # Further helpers a kind needs in some settings: class name -> source (helper_for).
    more_helpers: ClassVar[dict[str, str]] = {}

    def helper_for(self, sized_like: bool) -> str:
        """The helper `build` writes this layer with ("" for a torch.nn class); ``sized_like``:
        the layer takes its size from another tensor (graph.py)."""
        return self.helper

    @property
    def origin(self) -> Origin | None:
        """Where the layer was written; set by the loader (``with_origin``), kept by
        model_copy."""
        private = self.__pydantic_private__
        return private["origin"] if private else None

    def with_origin(self, origin: Origin | None) -> None:
        # Kept where pydantic keeps private attributes, without declaring one: a declared
        # PrivateAttr makes pydantic run an initialiser for every layer it validates, a third
        # of the validation time.
        # Set first: a layer's inputs (with_inputs) are set after its origin.
        object.__setattr__(self, "__pydantic_private__", {"origin": origin})

    @property
    def inputs(self) -> tuple[str, ...] | None:
        """The names of the tensors the layer reads (its ``from:``), None for the previous
        layer's output (graph.py)."""
        private = self.__pydantic_private__
        return private.get("inputs") if private else None

    def with_inputs(self, inputs: tuple[str, ...] | None) -> None:
        object.__setattr__(self, "__pydantic_private__", {"origin": self.origin, "inputs": inputs})

    def bias_before_norm(self) -> bool:
        """Whether this layer adds a per-channel bias that a following norm would cancel."""
        return False

    def declared_input(self, x: Dims) -> Dims | None:
        """The input this layer declares it expects (a given in_channels, in_features …), in
        place of ``x``; None where it declares nothing. The planner plans on from it after an
        error, to report the errors that follow."""
        return None

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        # A layer built in Python (Conv2d(out_channels=8, kernel_size=3)) needs no `type`.
        if isinstance(data, dict) and "type" not in data and "type" in cls.model_fields:
            return {**data, "type": cls.type_name()}
        return data

    @classmethod
    def type_name(cls) -> str:
        """The lowercase type this model validates, from its `type: Literal[...]` field."""
        return get_args(cls.model_fields["type"].annotation)[0]

    def infer(self, x: Dims, ctx: Context) -> Inferred:  # pragma: no cover - abstract
        raise NotImplementedError

    def axis_map(self, x: Dims, dim: int) -> tuple[Any, int]:  # pragma: no cover - abstract
        """How the layer maps the spatial axis that sits at ``dim`` of its input ``x``, and the
        dim where that axis leaves: an AxisMap of layers/window.py. The receptive field and
        ``solve`` read it; every kind states its own."""
        raise NotImplementedError

    def given_args(self) -> dict[str, Any]:
        """The constructor arguments the spec wrote, in the constructor's order."""
        return {
            k: getattr(self, k)
            for k in type(self).model_fields
            if k not in ("name", "type") and k in self.model_fields_set
        }

    def torch_kwargs(self, inferred_args: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the torch.nn constructor, inferred ones included."""
        args = {**inferred_args, **self.given_args()}
        order = list(type(self).model_fields)
        return dict(sorted(args.items(), key=lambda kv: order.index(kv[0])))

    def settings(self) -> str:
        """A short summary of the settings, for tables and diagrams (e.g. '5×5 /1 p0')."""
        return ""


def on_first_use(make: Callable[[], type]) -> Callable[[], type]:
    """A layer model defined when first asked for: ``make()`` runs once, its model is kept
    in its module under its class name. Defining a pydantic model costs about a millisecond
    and a spec uses few of a family's kinds, so a family module defines each model (and each
    private base) in a function ``_make_<ClassName>``, and its ``__getattr__`` (``model_named``)
    gives a model by its class name."""
    model = None

    def get() -> type:
        nonlocal model
        if model is None:
            model = make()
            model.__qualname__ = model.__name__  # where pickle and repr look: module.Name
            make.__globals__[model.__name__] = model
        return model

    return get


def model_named(namespace: dict, name: str) -> type:
    """A family module's model by its class name, defined on first use (on_first_use)."""
    make = namespace.get(f"_make_{name}")
    if make is None:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    return make()


def need_rank(x: Dims, ranks: tuple[int, ...], what: str) -> None:
    if len(x) not in ranks:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise ShapeError(
            "SC209",
            f"{what} needs a {want} tensor, but a {len(x)}-d tensor arrives",
            "a conv/pool/batchnorm2d needs (N, C, H, W): remove the flatten before it, "
            "or move this layer before the flatten" if len(x) < 4 else None,
        )


def channels_arrive(c: int) -> str:
    """'1 channel arrives', '3 channels arrive': how many channels reach a layer."""
    return "1 channel arrives" if c == 1 else f"{c} channels arrive"


def fmt(n: int) -> str:
    """An int with thousands separators."""
    return f"{n:,}"


def times(values) -> str:
    return " × ".join(str(v) for v in values)


def divisors(n: int) -> list[int]:
    """The divisors of n, largest first. Trial division stops after 10⁵ tries (then it lists
    those found and their partners, the largest among them): channel counts may be huge, and
    trying every number up to √n would take minutes for 10²⁰ channels."""
    found = {1, n}
    d = 2
    while d * d <= n and d <= 100_000:
        if n % d == 0:
            found |= {d, n // d}
        d += 1
    return sorted(found, reverse=True)


def divisor_list(values: list[int], depthwise: int | None = None, shown: int = 6) -> str:
    """'144 (depthwise), 72, 48, 36, 24, 18, …, 1': the largest few, then 1; the depthwise
    value is marked."""
    words = [f"{v} (depthwise)" if v == depthwise else str(v) for v in values]
    if len(words) > shown + 2:
        words = [*words[:shown], "…", words[-1]]
    return ", ".join(words)
