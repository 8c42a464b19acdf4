"""YAML text to Spec: the text read safely with a (line, column) for every key and item
(yamlread), its templates expanded, and pydantic errors mapped back to those positions as
diagnostics."""

from __future__ import annotations

import functools
import gc
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from . import yamlread
from .atomic import FileTooLargeError, NotRegularFileError, read_bounded
from .diagnostics import Diagnostic, InputError, merge_repeats, more_uses
from .layers import KINDS, Origin, block_of, kind_of, normalize_type, parse_layers
from .spec import InputSpec, LayerErrors, Spec, default_name, walk, yaml_loc

MAX_BYTES = 4 * 1024 * 1024  # a spec is a few KB; a 10,000-layer spec is about 0.5 MB
MAX_LAYERS = 20_000  # bounds the time of every command; the deepest real networks have ~1,000
MAX_MESSAGE = 300  # user text repeated in a message is cut to this many characters


class SpecError(Exception):
    """The spec does not follow the schema (exit code 1)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__("; ".join(d.message for d in diagnostics))
        self.diagnostics = diagnostics


def read_text(path: str | os.PathLike) -> str:
    """A spec file's text, or an InputError that says why it cannot be read."""
    path = Path(path)
    file = str(path)

    def fail(message: str, hint: str | None = None) -> InputError:
        return InputError(Diagnostic("error", "SC001", message, hint=hint, file=file))

    try:
        if path.is_dir():
            raise fail(f"{file} is a directory, not a spec file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise InputError(
                Diagnostic("error", "SC004", f"the file is {size:,} bytes; specs are limited "
                           f"to {MAX_BYTES:,} bytes", file=file)
            )
        data = read_bounded(path, MAX_BYTES)  # a FIFO or /dev/zero is refused, not read
    except FileTooLargeError:
        raise InputError(Diagnostic("error", "SC004", f"the file is larger than {MAX_BYTES:,} "
                                    "bytes, the limit for a spec", file=file)) from None
    except NotRegularFileError as e:
        raise fail(f"cannot read {file}: {e.strerror}") from None
    except FileNotFoundError:
        raise fail(f"no such file: {file}") from None
    except PermissionError:
        raise fail(f"permission denied: {file}") from None
    except OSError as e:
        raise fail(f"cannot read {file}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"{file} is not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None


def parse(text: str, source: str | None = None, name: str | None = None,
          scale: str | None = None) -> Spec:
    """Validate spec text, its templates expanded at ``scale`` (default: the spec's default
    scale). Raises InputError (exit 2) or SpecError (exit 1)."""
    with gc_paused():
        return _parse(text, source, name, scale)


@contextmanager
def gc_paused():
    """Loading and planning make many small objects and no cycles; the cyclic collector would
    only rescan them again and again (a 10,000-layer spec loads three times as fast without)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class SpecFile:
    """A spec file read and its YAML parsed once, to expand at any of its scales: `check` plans
    a spec at every scale it declares, and a file may declare thousands. InputError if the file
    cannot be read."""

    def __init__(self, path: str | os.PathLike):
        self.source = os.fspath(path)
        with gc_paused():
            self._loaded = _load(read_text(path), self.source)

    def at(self, scale: str | None) -> Spec:
        """The spec at ``scale``, as load_spec gives it."""
        with gc_paused():
            return _spec(self._loaded, self.source, None, scale)


def _parse(text: str, source: str | None, name: str | None, scale: str | None = None) -> Spec:
    return _spec(_load(text, source), source, name, scale)


def _spec(loaded: tuple, source: str | None, name: str | None, scale: str | None) -> Spec:
    """The Spec from the YAML's data (which is not changed: it may be expanded again at another
    scale)."""
    data, positions, problems = loaded
    problems = list(problems)
    if not isinstance(data, dict) or not ({"input", "layers"} & data.keys()):
        what = "a YAML mapping" if isinstance(data, dict) else f"a YAML {_kind(data)}"
        raise InputError(
            Diagnostic("error", "SC003", f"not a shapecheck spec: {what} with neither `input` "
                       "nor `layers`", line=1, column=1, file=source,
                       hint="a spec is a mapping with `input: {shape: [C, H, W]}` and `layers: [...]`")
        )
    # Top-level `x-...` keys are free for the user, e.g. to hold YAML anchors to merge (<<).
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    scales = data.get("scales")
    data, locator, expansion = _expand(data, scale, positions, source)
    errors: list[dict] = []
    duplicates: list = []
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        spec, errors = None, e.errors()
    if spec is not None and spec.train is not None:
        from .trainspec import TrainSpec

        try:
            spec.train = TrainSpec.model_validate(spec.train)
        except ValidationError as e:
            errors += [{**err, "loc": ("train", *err["loc"])} for err in e.errors()]
    layers = data.get("layers")
    # (An expansion has counted its layers against the same limit as it made them.)
    if expansion is None and isinstance(layers, list) and (
            count := _count_layers(layers)) > MAX_LAYERS:
        raise InputError(Diagnostic(
            "error", "SC004", f"the spec has {count:,} layers; specs are limited to "
            f"{MAX_LAYERS:,}", line=positions.get(("layers",), (None, None))[0], file=source))
    if spec is not None:
        spec._source = source
        if expansion is not None:
            spec._scale = expansion.scale
            spec._notes = partial(_layer_notes, expansion.notes)  # for `expand --explain`
            # Only `build` reads it: worked out when asked for, not at every plan.
            spec._templates = partial(_template_code, expansion, positions)
        spec._scales = tuple(map(str, scales)) if isinstance(scales, dict) else ()
        default = name or (default_name(Path(source).stem) if source else "net")
        try:
            duplicates = spec.complete(default=default, origin=locator.origin)
        except LayerErrors as e:
            errors += e.errors
        else:
            if expansion is not None:
                _name_after_uses(spec, expansion.made, data["layers"])
    elif isinstance(layers, list):  # still report the layers' own errors
        errors += parse_layers(layers, ("layers",))[1]
    if errors:
        problems += schema_diagnostics(errors, data, locator, source)
        raise SpecError(sorted(problems, key=lambda d: (d.line or 0, d.column or 0)))
    problems += duplicate_names(
        duplicates, spec, lambda path: locator.position(yaml_loc(path, layers) + ("name",)),
        source)
    if problems:
        raise SpecError(problems)
    return spec


def _name_after_uses(spec: Spec, made: list, entries: list) -> None:
    """A named use's layers that the spec left unnamed carry the use's name before the name
    they were given (``enc1_conv1`` for ``{use: down, name: enc1}``), as ``build`` writes
    ``self.enc1``. Only their names change: other layers keep theirs, and so their weights'
    keys."""
    taken = {layer.name for _, layer in walk(spec.layers)}
    for m in made:
        if m.depth or not isinstance(m.name, str) or m.instance is None:
            continue
        first = m.start[1]
        for i in range(first, first + m.count):
            entry = entries[i]
            if isinstance(entry, dict) and "name" in entry or m.count == 1 and isinstance(
                    entry, dict) and entry.get("name") == m.instance:
                continue
            layer = spec.layers[i]
            name = f"{m.instance}_{layer.name}"
            if name not in taken:
                object.__setattr__(layer, "name", name)  # layers are frozen once completed
                taken.add(name)


def _layer_notes(notes: dict[tuple, list]) -> dict[tuple, list[str]]:
    """The template arithmetic by layer path, written now."""
    return {_layer_of(loc)[1] or (loc[1],): [note() for note in made]
            for loc, made in notes.items()}


def _expand(data: dict, scale: str | None, positions: dict, source: str | None):
    """The spec with its templates expanded, and a Locator for its entries."""
    if not _uses_templates(data):
        if scale is not None:
            raise SpecError([Diagnostic("error", "SC111", f"--scale {scale}: the spec has no "
                                        "`scales`", file=source)])
        return data, Locator(positions, source), None
    from .templates import TemplateError, expand  # only specs that need it

    try:
        expansion = expand(data, scale, MAX_LAYERS)
    except TemplateError as e:
        locator = Locator(positions, source)
        origin = locator.origin_of(e.loc, e.chain)
        index, path = _layer_of(e.loc)
        found = Diagnostic("error", e.code, e.message + origin.context, index, path,
                           *origin.reported, e.hint, file=source)
        if e.code == "SC004":  # refused as the YAML's own limits are: exit 2
            raise InputError(found) from None
        raise SpecError([found]) from None
    return expansion.data, Locator(positions, source, expansion.where), expansion


def _template_code(expansion, positions: dict):
    """The expansion's instances and written entries, located by layer path."""
    from dataclasses import replace

    from .templates import TemplateCode

    def path(loc: tuple) -> tuple:
        return _layer_of(loc)[1] or (loc[1],)

    lines = {loc[1]: line for loc, (line, _) in positions.items()
             if len(loc) == 2 and loc[0] == "templates" and isinstance(loc[1], str)}
    return TemplateCode([replace(m, start=path(m.start)) for m in expansion.made],
                        {path(loc): entry for loc, entry in expansion.written.items()},
                        expansion.variables, lines, expansion.defaults, expansion.one_layer,
                        expansion.scale)


def _uses_templates(data: dict) -> bool:
    """Whether a spec uses templates, scales or expressions (a quick look at the raw data)."""
    if any(k in data for k in ("templates", "scales", "default_scale")):
        return True
    stack = [data.get("layers")]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "$" in value:
                return True
        elif isinstance(value, dict):
            if "use" in value:
                return True
            stack += value.values()
        elif isinstance(value, list):
            stack += value
    return False


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
        # Inside a subtree written as an alias (`body: *blk`), that is the alias's place.
        while loc and loc not in self.positions:
            loc = loc[:-1]
        return self.positions.get(loc, (None, None))

    def position(self, loc: tuple) -> tuple[int | None, int | None]:
        """The line and column to report: the outermost use for an expanded entry."""
        return self.origin(loc).reported

    def origin(self, loc: tuple) -> Origin:
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


def _count_layers(items: list) -> int:
    """Layers in a raw layer list, those inside blocks included."""
    count, stack = 0, [items]
    while stack:
        for item in stack.pop():
            count += 1
            if isinstance(item, dict):
                block = block_of(item)
                if block is not None:
                    stack += [branch for _, branch in block.raw_branches(item)]
    return count


def load_spec(source: str | os.PathLike, scale: str | None = None) -> Spec:
    """A validated Spec from a file path or from YAML text, at ``scale`` if it has scales."""
    if isinstance(source, os.PathLike) or looks_like_path(source):
        return parse(read_text(source), os.fspath(source), scale=scale)
    return parse(source, scale=scale)


def looks_like_path(text: str) -> bool:
    """A one-line string naming a YAML file, or an existing file, is a path; else YAML text."""
    return "\n" not in text and (text.endswith((".yaml", ".yml")) or os.path.isfile(text))


def _kind(data: object) -> str:
    return {list: "list", str: "string", type(None): "empty document"}.get(type(data), "scalar")


def _load(text: str, source: str | None) -> tuple[object, dict, list[Diagnostic]]:
    """YAML text to Python data, positions and duplicate-key problems; InputError if refused."""
    if len(text) > MAX_BYTES:
        raise InputError(Diagnostic("error", "SC004", f"the text is {len(text):,} characters; "
                                    f"specs are limited to {MAX_BYTES:,}", file=source))
    data, positions, duplicates = yamlread.read(text, source)
    problems = []  # (here: the layer a key belongs to is the spec's business, not YAML's)
    for loc, key, line, column in duplicates:
        index, path = _layer_of(loc)
        problems.append(Diagnostic(
            "error", "SC107", f"the key {key!r} is given twice in one mapping", index, path,
            line, column, "keep one: YAML would silently use the last", file=source))
    return data, positions, problems


@functools.cache
def _branch_fields() -> tuple[set[str], set[str]]:
    """The YAML keys under which blocks hold layer lists (body, shortcut) and lists of them
    (branches). Asked for only when a location must be mapped: it imports every block."""
    from .layers import BLOCKS

    return ({f for b in BLOCKS for f in b.list_fields},
            {b.lists_field for b in BLOCKS if b.lists_field})


def _layer_of(loc: tuple) -> tuple[int | None, tuple | None]:
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


# --- pydantic errors to diagnostics -------------------------------------------------------

def _fields_at(loc: tuple, data) -> list[str]:
    """The field names allowed in the mapping at a YAML location (for 'did you mean')."""
    if loc in ((), ("input",)):
        return list((InputSpec if loc else Spec).model_fields)
    kind = kind_of(_get(data, loc))
    if kind is not None:
        return [f.alias or k for k, f in kind.model_fields.items()]
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
    index, path = _layer_of(loc)
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
        index, path = _layer_of(loc)
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
    if kind == "not_identifier":
        from .spec import default_name

        suggestion = default_name(str(e["input"]))
        return "SC105", f"{where}: {e['msg']}", f"use a name such as {suggestion!r}"
    if kind == "too_short" and key == "layers":
        return "SC104", "`layers` is empty", "add at least one layer"
    messages = "; or ".join(dict.fromkeys(x["msg"] for x in errors))
    if _layer_of(loc)[0] is None:  # `where` is the key path itself: input.shape
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
