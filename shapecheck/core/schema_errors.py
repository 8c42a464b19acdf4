"""pydantic's errors as diagnostics at the YAML line and column they came from: where each
entry of the (expanded) spec was written (Locator), the message and hint for each error, and
SC106 for names used twice. The loader and the planner both report through it."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from .diagnostics import Diagnostic, merge_repeats, more_uses
from .layers import KINDS, Origin, kind_of, normalize_type
from .spec import InputSpec, Spec, yaml_loc

MAX_BYTES = 4 * 1024 * 1024  # a spec is a few KB; a 10,000-layer spec is about 0.5 MB
MAX_LAYERS = 20_000  # bounds the time of every command; the deepest real networks have ~1,000
MAX_MESSAGE = 300  # user text repeated in a message is cut to this many characters


class Locator:
    """Where an entry of the (expanded) spec data was written: its YAML location, line and
    column, and the chain of template uses that made it."""

    def __init__(self, positions: dict, source: str | None, where: dict | None = None):
        self.positions, self.source, self.where = positions, source, where
        self._uses: dict[tuple, tuple[Origin, ...]] = {}  # the layers of a use share its chain

    def place(self, loc: tuple) -> tuple[tuple, tuple]:
        """(the YAML location it was written at, the uses that made it, innermost first)."""
        if self.where:
            for cut in range(len(loc), 0, -1):
                hit = self.where.get(loc[:cut])
                if hit is not None:
                    src, chain = hit
                    return (*src, *loc[cut:]), chain
        return loc, ()

    def _written(self, loc: tuple) -> tuple[int | None, int | None]:
        hit = self.positions.get(loc)
        if hit is not None:  # most entries
            return hit
        # Inside a subtree written as an alias (`body: *blk`), that is the alias's place.
        while loc and loc not in self.positions:
            loc = loc[:-1]
        return self.positions.get(loc, (None, None))

    def position(self, loc: tuple) -> tuple[int | None, int | None]:
        """The line and column to report: the outermost use for an expanded entry."""
        return self.origin(loc).reported

    def origin(self, loc: tuple) -> Origin:
        if not self.where:  # no template made it: it was written where it is (every layer)
            hit = self.positions.get(loc)
            return Origin(self.source, *(self._written(loc) if hit is None else hit))
        return self.origin_of(*self.place(loc))

    def origin_of(self, src: tuple, chain: tuple) -> Origin:
        used_at = self._uses.get(chain)
        if used_at is None:
            used_at = self._uses[chain] = tuple(
                Origin(self.source, *self._written(site.loc), template=site.template)
                for site in chain)
        return Origin(self.source, *self._written(src), used_at=used_at)


def duplicate_names(duplicates: list[tuple], spec: Spec,
                    position: Callable[[tuple], tuple], source) -> list[Diagnostic]:
    """SC106 for each layer whose name an earlier layer has. Names a template gives clash in
    every use alike: those are one diagnostic, at the first, with the count of the others."""
    found = []
    for path, name, first in duplicates:
        origin = spec.find(path).origin
        key = None
        if origin is not None and origin.used_at:
            key = (origin.used_at[0].line, origin.used_at[0].column)  # the inner use's entry
            line, col = origin.reported
            hint = ("give the uses of templates inside the template their own `name:`: each "
                    "instance's layer names begin with it" if len(origin.used_at) > 1 else
                    "give the use its own `name:` (its layers' names begin with it), or rename "
                    "the layer its name clashes with")
        else:
            line, col = position(path)
            hint = "give each layer a unique name"
        message = (f"layer {_where(path)}: the name {name!r} is already used by layer "
                   f"{_where(first)}" + (origin.context if origin is not None else ""))
        found.append((key, Diagnostic("error", "SC106", message, path[0], _path_or_none(path),
                                      line, col, hint, file=source)))
    return merge_repeats(found, lambda count: f"; the same for {count} more "
                         f"name{'s' * (count > 1)} the template gives")


@functools.cache
def _branch_fields() -> tuple[set[str], set[str]]:
    """The YAML keys under which blocks hold layer lists (body, shortcut) and lists of them
    (branches). Asked for only when a location must be mapped: it imports every block."""
    from .layers import BLOCKS

    return ({f for b in BLOCKS for f in b.list_fields},
            {b.lists_field for b in BLOCKS if b.lists_field})


def layer_of(loc: tuple) -> tuple[int | None, tuple | None]:
    """(top-level layer index, layer path) of a YAML location under `layers`."""
    if len(loc) < 2 or loc[0] != "layers" or not isinstance(loc[1], int):
        return None, None
    list_fields, lists_fields = _branch_fields()
    path: list = [loc[1]]
    rest = list(loc[2:])
    while len(rest) >= 2:
        if rest[0] in lists_fields and len(rest) >= 3 and isinstance(rest[1], int):
            if not isinstance(rest[2], int):
                break
            path += [rest[1], rest[2]]
            rest = rest[3:]
        elif rest[0] in list_fields and isinstance(rest[1], int):
            path += [rest[0], rest[1]]
            rest = rest[2:]
        else:
            break
    return loc[1], _path_or_none(tuple(path))


def _path_or_none(path: tuple) -> tuple | None:
    return path if len(path) > 1 else None


def _where(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def _fields_at(loc: tuple, data) -> list[str]:
    """The field names allowed in the mapping at a YAML location (for 'did you mean')."""
    if loc in ((), ("input",)):
        return list((InputSpec if loc else Spec).model_fields)
    kind = kind_of(_get(data, loc))
    if kind is not None:
        return [*(f.alias or k for k, f in kind.model_fields.items()), "from"]
    if loc[:1] == ("train",):
        from . import trainspec

        model = {("train",): trainspec.TrainSpec, ("train", "dataset"): trainspec.DatasetSpec,
                 ("train", "optimizer"): trainspec.OptimizerSpec}.get(loc)
        return list(model.model_fields) if model else []
    return []


def _get(data, loc: tuple):
    for seg in loc:
        data = data[seg]
    return data


def _data_loc(data, loc: tuple) -> tuple[tuple, str | int | None]:
    """Follow pydantic's loc through the data.
    Returns the deepest existing location and the missing last key, if any."""
    path: list = []
    cur = data
    missing = None
    for seg in loc:
        if isinstance(cur, dict) and seg in cur or isinstance(cur, list) and isinstance(seg, int) and 0 <= seg < len(cur):
            path.append(seg)
            cur = cur[seg]
        elif isinstance(seg, str) and not isinstance(cur, list):
            missing = seg
    return tuple(path), missing


def _layer_label(loc: tuple, data) -> str:
    """'layer 3 (conv2d conv2)' for a location under layers, else the dotted key path."""
    index, path = layer_of(loc)
    if index is None:
        return ".".join(str(s) for s in loc) or "spec"
    node = _get(data, yaml_loc(path or (index,), data["layers"]))
    kind = node.get("type") if isinstance(node, dict) else node if isinstance(node, str) else None
    name = node.get("name") if isinstance(node, dict) else None
    inner = " ".join(str(x) for x in (kind, name) if x)
    return f"layer {_where(path or (index,))}" + (f" ({inner})" if inner else "")


def schema_diagnostics(errors: list[dict], data, locator: Locator,
                       source) -> list[Diagnostic]:
    grouped: dict[tuple, list[dict]] = {}
    for e in errors:
        loc, missing = _data_loc(data, e["loc"])
        e["missing_key"] = missing
        grouped.setdefault((loc, missing), []).append(e)

    # A misspelt field shows up as an unknown key plus a missing one: report it once.
    misspelt: set[tuple] = set()
    for (loc, _), group in grouped.items():
        if group[0]["type"] == "extra_forbidden":
            allowed = _fields_at(loc[:-1], data)
            close = _close_matches(str(loc[-1]), allowed, n=1)
            if close and (loc[:-1], close[0]) in grouped:
                misspelt.add((loc[:-1], close[0]))

    found = []
    for (loc, missing), group in grouped.items():
        if (loc, missing) in misspelt:
            continue
        origin = locator.origin(loc)
        line, col = origin.reported
        index, path = layer_of(loc)
        code, message, hint = _describe(group, loc, missing, data)
        # A mistake written once in a template is reported once, not at every use of it.
        written = ((code, origin.line, origin.column, message.partition(": ")[2], missing)
                   if origin.used_at else None)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        message += origin.context
        found.append((written, Diagnostic("error", code, message, index, path, line, col, hint,
                                          file=source)))
    return sorted(merge_repeats(found, more_uses), key=lambda d: (d.line or 0, d.column or 0))


def _describe(errors: list[dict], loc: tuple, missing, data) -> tuple[str, str, str | None]:
    e = errors[0]
    kind = e["type"]
    where = _layer_label(loc, data)
    key = loc[-1] if loc else None
    if kind == "unknown_layer_type":
        value = e["input"]
        if isinstance(value, dict) and "type" not in value:
            if len(value) == 1 and next(iter(value.values())) is None and isinstance(
                    next(iter(value)), str) and normalize_type(next(iter(value))) in KINDS:
                name = next(iter(value))  # `- relu:`: the colon made a mapping of a type name
                return ("SC104", f"{where}: the layer has no `type`",
                        f"write `- {name}` without the colon, or `- {{type: {name}}}`")
            return "SC104", f"{where}: the layer has no `type`", "add `type: conv2d` (or another type)"
        if not isinstance(value, dict) or not isinstance(value["type"], str):
            message = f"{where}: a layer must be a type name or a mapping with `type`, got {value!r}"
            return "SC103", message, None
        name = value["type"]
        close = _close_matches(normalize_type(name[:40]), list(KINDS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "known types: " + ", ".join(KINDS)
        return "SC101", f"{where}: unknown layer type {name!r}", hint
    if kind == "missing":
        what = f"{where}: the required field {missing!r} is missing"
        if loc == () and missing == "layers":
            return "SC104", "the spec has no `layers`", "add `layers:` with at least one layer"
        return "SC104", what, None
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1], data)
        close = _close_matches(str(key), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else (
            "allowed fields: " + ", ".join(allowed) if allowed else None)
        owner = _layer_label(loc[:-1], data)
        return "SC102", f"{owner}: unknown field {key!r}", hint
    if kind == "graph":  # the names a layer reads (graph.py)
        return "SC112", f"{where}: {e['msg']}", e["hint"]
    if kind == "not_identifier":
        from .spec import default_name

        suggestion = default_name(str(e["input"]))
        return "SC105", f"{where}: {e['msg']}", f"use a name such as {suggestion!r}"
    if kind == "too_short" and key == "layers":
        return "SC104", "`layers` is empty", "add at least one layer"
    messages = "; or ".join(dict.fromkeys(x["msg"] for x in errors))
    if layer_of(loc)[0] is None:  # `where` is the key path itself: input.shape
        return "SC103", f"{where}: {messages}", None
    field = f"{key}" if isinstance(key, str) else f"item {key}"
    return "SC103", f"{where}: {field}: {messages}", _integer_hint(e)


def _integer_hint(error: dict) -> str | None:
    """How to get the integer a field wants from what a template expression most likely meant:
    a float from `/`, or an expression written without its `$`."""
    if error["type"] != "int_type":
        return None
    value = error["input"]
    if isinstance(value, float):
        return ("write an integer (16, not 16.0); in a template expression `/` gives a float: "
                "use `//` or int(...)")
    if isinstance(value, str) and "$" not in value and re.search(r"[A-Za-z_]\w*\s*[-+*/%]|"
                                                                 r"[-+*/%]\s*[A-Za-z_(]", value):
        return "an expression names its parameters with `$`, as in `$c * 2`"
    return None


def _close_matches(word: str, choices: list[str], n: int, cutoff: float = 0.6) -> list[str]:
    """difflib's close matches; difflib is imported only when a spec has a mistake."""
    import difflib

    return difflib.get_close_matches(word, choices, n=n, cutoff=cutoff)
