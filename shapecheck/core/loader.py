"""YAML text to Spec: the text read safely with a (line, column) for every key and item
(yamlread), its templates expanded, its size bounded, and the spec validated; pydantic's errors
become diagnostics at those positions through schema_errors."""

from __future__ import annotations

import gc
import os
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from . import graph, yamlread
from .atomic import FileTooLargeError, NotRegularFileError, read_bounded
from .diagnostics import Diagnostic, InputError
from .layers import block_of, parse_layers
from .schema_errors import Locator, duplicate_names, layer_of, schema_diagnostics
from .spec import LayerErrors, Spec, default_name, walk, yaml_loc

MAX_BYTES = 4 * 1024 * 1024  # a spec is a few KB; a 10,000-layer spec is about 0.5 MB
MAX_LAYERS = 20_000  # bounds the time of every command; the deepest real networks have ~1,000
MAX_MESSAGE = 300  # user text repeated in a message is cut to this many characters


class SpecError(Exception):
    """The spec does not follow the schema (exit code 1)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__("; ".join(d.message for d in diagnostics))
        self.diagnostics = diagnostics


def read_text(path: str | os.PathLike) -> str:
    """A spec file's text, or an InputError that says why it cannot be read. One open and one
    fstat (read_bounded) for a file that can be read; the cause of a failure is looked up
    after it."""
    try:
        data = read_bounded(path, MAX_BYTES)  # a FIFO or /dev/zero is refused, not read
    except OSError as e:
        raise _unreadable(path, e) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        file = str(Path(path))
        raise InputError(Diagnostic("error", "SC001", f"{file} is not UTF-8 text (byte "
                                    f"{e.start})", hint="save the file as UTF-8", file=file)
                         ) from None


def _unreadable(path: str | os.PathLike, error: OSError) -> InputError:
    """Why a spec file cannot be read."""
    file = str(Path(path))

    def fail(message: str, code: str = "SC001") -> InputError:
        return InputError(Diagnostic("error", code, message, file=file))

    if isinstance(error, FileTooLargeError):
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        if size > MAX_BYTES:
            return fail(f"the file is {size:,} bytes; specs are limited to {MAX_BYTES:,} bytes",
                        "SC004")
        return fail(f"the file is larger than {MAX_BYTES:,} bytes, the limit for a spec",
                    "SC004")  # it grew while it was read
    if isinstance(error, (NotRegularFileError, PermissionError)) and os.path.isdir(path):
        return fail(f"{file} is a directory, not a spec file")
    if isinstance(error, PermissionError):
        return fail(f"permission denied: {file}")
    if isinstance(error, NotRegularFileError):
        return fail(f"cannot read {file}: {error.strerror}")
    if isinstance(error, FileNotFoundError):
        return fail(f"no such file: {file}")
    return fail(f"cannot read {file}: {error.strerror or error}")


def parse(text: str, source: str | None = None, name: str | None = None,
          scale: str | None = None) -> Spec:
    """Validate spec text, its templates expanded at ``scale`` (default: the spec's default
    scale). Raises InputError (exit 2) or SpecError (exit 1)."""
    with gc_paused():
        return _parse(text, source, name, scale)


class gc_paused:  # named as the function it was: `with gc_paused():`
    """Loading and planning make many small objects and no cycles; the cyclic collector would
    only rescan them again and again (a 10,000-layer spec loads three times as fast without).
    (A class: `check` enters it three times per file, and a generator-based one cost more.)"""

    __slots__ = ("collecting",)

    def __enter__(self) -> None:
        self.collecting = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc) -> None:
        if self.collecting:
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


def _spec(loaded: tuple, source: str | None, name: str | None, scale: str | None,
          input_shape: tuple | None = None) -> Spec:
    """The Spec from the YAML's data (which is not changed: it may be expanded again at another
    scale, or for another input where its templates read the incoming shape)."""
    data, positions, problems, literal = loaded
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
    data, locator, expansion = _expand(data, scale, positions, source, input_shape, literal)
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
        spec.set_loaded(source=source,
                        scales=tuple(map(str, scales)) if isinstance(scales, dict) else ())
        if expansion is not None:
            spec.set_loaded(
                scale=expansion.scale,
                notes=partial(_layer_notes, expansion.notes),  # for `expand --explain`
                # Only `build` reads it: worked out when asked for, not at every plan.
                templates=partial(_template_code, expansion, positions))
            if expansion.sized:
                spec.set_loaded(sized=expansion.sized,
                                at_input=partial(_spec, loaded, source, name, scale))
        default = name or (default_name(Path(source).stem) if source else "net")
        try:
            duplicates = spec.complete(default=default, origin=locator.origin)
        except LayerErrors as e:
            errors += e.errors
        else:
            if expansion is not None:
                _name_after_uses(spec, expansion.made, data["layers"])
                spec.set_loaded(aliases=use_names(expansion.made))
            errors += check_names(spec)
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


def use_names(made: list) -> dict[str, int]:
    """Each named use of the spec's own list -> the index of the last layer it made: `from:`
    may name it (graph.py)."""
    return {m.name: m.start[1] + m.count - 1 for m in made
            if not m.depth and isinstance(m.name, str) and m.count}


def check_names(spec: Spec) -> list[dict]:
    """The errors of the names a spec reads by (`from:`, `like`, `outputs:`), as error dicts."""
    if not graph.uses_names(spec.layers, spec.outputs):
        return []
    return graph.check(spec.layers, spec.outputs, spec.aliases)


def _layer_notes(notes: dict[tuple, list]) -> dict[tuple, list[str]]:
    """The template arithmetic by layer path, written now."""
    return {layer_of(loc)[1] or (loc[1],): [note() for note in made]
            for loc, made in notes.items()}


def _expand(data: dict, scale: str | None, positions: dict, source: str | None,
            input_shape: tuple | None = None, literal: bool = False):
    """The spec with its templates expanded (for ``input_shape``, default the spec's), and a
    Locator for its entries. ``literal``: the text has none of what templates are written with
    (_literal)."""
    if not _uses_templates(data, literal):
        if scale is not None:
            raise SpecError([Diagnostic("error", "SC111", f"--scale {scale}: the spec has no "
                                        "`scales`", file=source)])
        return data, Locator(positions, source), None
    from .templates import TemplateError, expand  # only specs that need it

    try:
        expansion = expand(data, scale, MAX_LAYERS, input_shape)
    except TemplateError as e:
        locator = Locator(positions, source)
        origin = locator.origin_of(e.loc, e.chain)
        index, path = layer_of(e.loc)
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
        return layer_of(loc)[1] or (loc[1],)

    lines = {loc[1]: line for loc, (line, _) in positions.items()
             if len(loc) == 2 and loc[0] == "templates" and isinstance(loc[1], str)}
    return TemplateCode([replace(m, start=path(m.start)) for m in expansion.made],
                        {path(loc): entry for loc, entry in expansion.written.items()},
                        expansion.variables, lines, expansion.defaults, expansion.one_layer,
                        expansion.scale)


def _uses_templates(data: dict, literal: bool = False) -> bool:
    """Whether a spec uses templates, scales or expressions (a quick look at the raw data)."""
    if any(k in data for k in ("templates", "scales", "default_scale")):
        return True
    if literal:
        return False
    stack = [data.get("layers")]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "$" in value:
                return True
        elif isinstance(value, dict):
            if "use" in value or "when" in value:
                return True
            stack += value.values()
        elif isinstance(value, list):
            stack += value
    return False


def _count_layers(items: list) -> int:
    """Layers in a raw layer list, those inside blocks included."""
    count, stack = 0, [items]
    while stack:
        branch = stack.pop()
        count += len(branch)
        for item in branch:
            if type(item) is dict and type(item.get("type")) is str:
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


def _load(text: str, source: str | None) -> tuple[object, dict, list[Diagnostic], bool]:
    """YAML text to Python data, positions, duplicate-key problems and whether the text is
    literal (_literal); InputError if refused."""
    if len(text) > MAX_BYTES:
        raise InputError(Diagnostic("error", "SC004", f"the text is {len(text):,} characters; "
                                    f"specs are limited to {MAX_BYTES:,}", file=source))
    data, positions, duplicates = yamlread.read(text, source)
    literal = _literal(text)
    problems = []  # (here: the layer a key belongs to is the spec's business, not YAML's)
    for loc, key, line, column in duplicates:
        index, path = layer_of(loc)
        problems.append(Diagnostic(
            "error", "SC107", f"the key {key!r} is given twice in one mapping", index, path,
            line, column, "keep one: YAML would silently use the last", file=source))
    return data, positions, problems, literal


def _literal(text: str) -> bool:
    """Whether the text holds no `$`, `use` or `when` anywhere. Without a backslash every
    character of a YAML value or key stands in the text as it is (only a double-quoted escape
    writes one otherwise), so such a text has no expression and no `use:` or `when:` key, and
    the data need not be walked to know it (which costs a long spec a few percent)."""
    return not any(part in text for part in ("$", "use", "when", "\\"))


# --- pydantic errors to diagnostics -------------------------------------------------------


