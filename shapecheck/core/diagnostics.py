"""Diagnostics: plain values describing a problem, and the table of codes.

Formatting lives with the outputs (report.py); this module only says what went wrong and where.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import FrozenInstanceError
from typing import Literal

from .record import Record

Severity = Literal["error", "warning"]

# One code per kind of problem. The README's table is generated from this dict, so the
# description here is the user's documentation. Codes never change meaning.
CODES: dict[str, str] = {
    # SC0xx: the file cannot be read as a spec at all (exit code 2).
    "SC001": "The file cannot be read: missing, a directory, a FIFO or a device, or not UTF-8 "
    "text.",
    "SC002": "The file is not valid YAML.",
    "SC003": "The YAML is not a spec: not a mapping, or it has neither `input` nor `layers`.",
    "SC004": "The YAML is refused for safety: an unsafe or unknown tag, too many nodes or "
    "aliases (an alias bomb), too deep, or too large; or its templates expand past the layer "
    "limit, nest too deep or copy too many values; or it declares more than 1,000 scales; or "
    "`check` of every scale, or `solve`, would take more work than it allows.",
    # SC1xx: the spec does not follow the schema (exit code 1).
    "SC101": "Unknown layer type.",
    "SC102": "Unknown field.",
    "SC103": "A field has the wrong type or an impossible value (e.g. a non-positive size).",
    "SC104": "A required field is missing (e.g. `input`, `layers`, a conv's `out_channels`).",
    "SC105": "A name is not a Python identifier: a layer, spec, template, `use:`, parameter, "
    "scale or variable name that is a keyword, a dunder (`__class__`), not ASCII, or a template "
    "parameter named like a class `build` writes.",
    "SC106": "A name is used twice, or two template names differ only in case or underscores "
    "(both would be one class).",
    "SC107": "A YAML key is given twice in one mapping.",
    "SC108": "A template or a `use:` is wrong: an unknown template, an unknown or missing "
    "parameter, or a template with neither `type:` nor `layers:`.",
    "SC109": "An expression (`$…`) cannot be evaluated: an unknown name, a value that is not a "
    "number, a division by zero (also inside `make_divisible`), a result too large, or nesting "
    "more than 50 levels deep; or a value in `{…}` cut short at a comma.",
    "SC110": "Templates use each other in a cycle.",
    "SC111": "An unknown scale (`--scale`, `default_scale`), a `default_scale` that is not a "
    "name, or `scales` that are not named sets of values.",
    "SC112": "A name a layer reads by is wrong: a `from:`, `size: {like: …}` or `outputs:` "
    "name that no earlier layer of the spec's own list has (a later layer, the layer itself, or "
    "none), `from:` inside a block, a merge (add, mul, cat) with fewer than two inputs, "
    "several inputs for a layer that takes one, or a layer named `input` or `prev` in a spec "
    "that reads by name.",
    "SC113": "A `when:` that is not true or false, a `when:` group with more than `layers:`, or "
    "`$in_channels`, `$in_h` or `$in_w` read where the incoming shape is not known (an entry "
    "before it breaks the schema) or has no such dimension (`$in_h` after a flatten).",
    # SC2xx: PyTorch would reject the network at this layer (exit code 1).
    "SC201": "The (dilated) kernel is larger than the padded input, or reflect/circular "
    "padding is larger than the input allows.",
    "SC202": "The layer's output would have size 0 or less.",
    "SC203": "The declared in_channels does not match the channels that arrive.",
    "SC204": "The declared in_features does not match the features that arrive.",
    "SC205": "The declared num_features (num_channels, num_parameters) does not match the "
    "channels that arrive.",
    "SC206": "`groups` does not divide in_channels or out_channels (or the channels, for "
    "groupnorm's num_groups and channelshuffle's groups).",
    "SC207": "padding='same' is not supported with a stride other than 1.",
    "SC208": "Pool padding is larger than half the (effective) kernel size.",
    "SC209": "The tensor that arrives has the wrong number of dimensions for this layer.",
    "SC210": "A dimension argument (flatten start_dim/end_dim, softmax dim, permute dims) is "
    "out of range or repeated.",
    "SC211": "A residual block's body and shortcut, or an add or mul layer's inputs, give "
    "shapes that cannot be added or multiplied (torch's broadcasting).",
    "SC212": "A concat block's branches, or a cat layer's inputs, disagree on a dimension other "
    "than channels.",
    "SC213": "The layer would mix samples of the batch (it acts on the batch dimension).",
    "SC214": "A convtranspose2d's output_padding is not smaller than its stride or dilation.",
    "SC215": "A layernorm's normalized_shape does not match the trailing dims of the input.",
    "SC216": "A split block's x.chunk(n) gives fewer slices than it has branches.",
    "SC217": "A gate block's gate cannot multiply its input (torch's broadcasting).",
    "SC218": "pixelshuffle needs channels divisible by upscale_factor²; pixelunshuffle needs "
    "H and W divisible by downscale_factor.",
    "SC219": "A dimension of the layer's output would exceed 1.8e308, beyond what can be "
    "computed (sizes grown by upsample, convtranspose2d or flatten).",
    # SC3xx: warnings; the network runs but probably not as intended (exit 0, 1 with --strict).
    "SC301": "The stride leaves the last rows or columns of the input unused.",
    "SC302": "A softmax/logsoftmax last layer trained with cross_entropy (named, or the default "
    "loss), which already applies log-softmax.",
    "SC303": "A conv bias directly followed by batchnorm2d, which cancels it.",
    "SC304": "An even kernel with padding='same' pads asymmetrically (one more on the "
    "bottom/right).",
    "SC305": "linear on a tensor of more than 2 dims acts on the last dim only.",
    "SC306": "The last conv's receptive field is under a quarter of the input, or over 16 "
    "times it.",
    "SC307": "Nothing reads a layer's output: the next layer reads another tensor (`from:`), "
    "and no `from:`, `like` or `outputs:` names it.",
}

WARNING_CODES = tuple(code for code in CODES if code.startswith("SC3"))


def code_table() -> str:
    """The table of codes in docs/diagnostics.md, made from CODES; a test keeps the page equal
    to it. A new code goes into CODES, then this table into the page."""
    return "".join(["| code | meaning |\n|---|---|\n",
                    *(f"| {code} | {meaning} |\n" for code, meaning in CODES.items())])


class Diagnostic(Record):
    """One finding about a spec. Frozen; equal when all but ``file`` and ``subject`` are."""

    _fields = ("severity", "code", "message", "layer", "path", "line", "column", "hint", "file",
               "subject")
    _compared = _fields[:-2]

    severity: Severity
    code: str
    message: str
    layer: int | None  # top-level index of the layer
    path: tuple[int | str, ...] | None  # inside a block: (block index, branch, layer, ...)
    line: int | None  # 1-based
    column: int | None  # 1-based
    hint: str | None
    file: str | None
    # What the message is about, where it leads the message: "layer 6 (linear fc)".
    subject: str | None

    def __init__(self, severity: Severity, code: str, message: str, layer: int | None = None,
                 path: tuple[int | str, ...] | None = None, line: int | None = None,
                 column: int | None = None, hint: str | None = None, file: str | None = None,
                 subject: str | None = None) -> None:
        self.__dict__.update(severity=severity, code=code, message=message, layer=layer,
                             path=path, line=line, column=column, hint=hint, file=file,
                             subject=subject)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def layer_path(self) -> tuple | None:
        """The path of the layer it is about, as LayerPlan.path has it; None for none."""
        if self.layer is None:
            return None
        return tuple(self.path) if self.path is not None else (self.layer,)

    @property
    def detail(self) -> str:
        """The message without its subject, for outputs that show the subject another way
        (a diagram draws it next to the layer)."""
        if self.subject and self.message.startswith(f"{self.subject}: "):
            return self.message[len(self.subject) + 2:]
        return self.message

    def to_dict(self) -> dict:
        d = {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "layer": self.layer,
            "line": self.line,
            "column": self.column,
            "hint": self.hint,
        }
        if self.path is not None:
            d["path"] = list(self.path)
        return d


class InputError(Exception):
    """The input cannot be read as a spec (exit code 2). Carries one diagnostic."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def merge_repeats(found: Iterable[tuple[Hashable | None, Diagnostic]],
                  more: Callable[[int], str]) -> list[Diagnostic]:
    """The diagnostics, in order, with those of a key after its first left out and counted at
    the first (``more(count)`` ends its message); a key of None is never merged. A mistake a
    template writes is made in every use of it, and its fix is one line."""
    out: list[Diagnostic] = []
    first: dict[Hashable, int] = {}
    repeats: dict[Hashable, int] = {}
    for key, d in found:
        if key is not None and key in first:
            repeats[key] += 1
            continue
        if key is not None:
            first[key], repeats[key] = len(out), 0
        out.append(d)
    for key, count in repeats.items():
        if count:
            d = out[first[key]]
            out[first[key]] = d.replace(message=d.message + more(count))
    return out


def more_uses(count: int) -> str:
    """How many more uses of a template made the same problem (merge_repeats)."""
    return f"; the same in {count} more use{'s' * (count > 1)} of the template"


def install_hint(extra: str) -> str:
    """How to install one of the package's extras: from the package index, or in a clone."""
    return (f"pip install 'shapecheck-cnn[{extra}]' (in a clone of the repository: "
            f"pip install '.[{extra}]')")
