"""What the language server answers, worked out from a checked document (document.py):
diagnostics, inlay hints, hover, completion, go to definition and quick fixes.

Pure: no protocol here, so that each is tested as a function. Positions are 0-based lines
and columns in code points; server.py turns them into the protocol's types and code units
(``units`` and ``column_of``: UTF-16 by default, UTF-8 or UTF-32 where the client asks)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache

from ..core.diagnostics import WARNING_CODES, Diagnostic
from ..core.layers import KINDS, normalize_type
from ..core.plan import LayerPlan
from ..core.templates import USE_KEYS
from ..outputs.table import dims, explanation
from .document import LINE_BREAK, Checked, Entry

Range = tuple[int, int, int, int]  # start line, start column, end line, end column
TOP_KEYS = ("name", "description", "input", "layers", "train", "templates", "scales",
            "default_scale", "ignore")
MAX_HOVER_LAYERS = 40  # a use's layers listed on hover
NOT_A_SPEC = "SC003"


@dataclass(frozen=True)
class Problem:
    range: Range
    severity: str  # error, warning
    code: str | None  # None: the checker itself failed
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Hint:
    line: int
    character: int
    label: str
    tooltip: str


@dataclass(frozen=True)
class Hover:
    range: Range
    markdown: str


@dataclass(frozen=True)
class Completion:
    label: str
    kind: str  # type, field, template, parameter, scale, key, code
    detail: str
    insert: str


@dataclass(frozen=True)
class Edit:
    range: Range
    text: str


@dataclass(frozen=True)
class Fix:
    title: str
    problem: Problem
    edits: tuple[Edit, ...]


# --- positions ------------------------------------------------------------------------------

def units(line: str, column: int, encoding: str = "utf-16") -> int:
    """A code-point column of ``line`` in the code units of the protocol's position encoding
    (utf-16, the default; utf-8; utf-32: code points)."""
    head = line[:column]
    if encoding == "utf-32" or head.isascii():
        return len(head)
    if encoding == "utf-8":
        return len(head.encode("utf-8", "surrogatepass"))
    return len(head) + sum(ord(c) > 0xFFFF for c in head)


def column_of(line: str, count: int, encoding: str = "utf-16") -> int:
    """A column of ``line`` given in code units, as a code-point column."""
    if encoding == "utf-32" or line.isascii():
        return min(count, len(line))
    seen = 0
    for i, c in enumerate(line):
        if seen >= count:
            return i
        seen += len(c.encode("utf-8", "surrogatepass")) if encoding == "utf-8" else \
            2 if ord(c) > 0xFFFF else 1
    return len(line)


def _line(lines: list[str], i: int) -> str:
    return lines[i] if 0 <= i < len(lines) else ""


def _span(checked: Checked, line: int | None, column: int | None) -> Range:
    """Where a diagnostic at a 1-based (line, column) is shown: from there to the end of the
    line's text (the whole first line where it has no place)."""
    lines = checked.lines
    if line is None:
        return (0, 0, 0, len(lines[0].rstrip()))
    i = min(max(line - 1, 0), len(lines) - 1)
    text = lines[i]
    start = min(max((column or 1) - 1, 0), len(text))
    end = len(text.rstrip())
    if end <= start:
        end = len(text)
    return (i, start, i, end)


# --- diagnostics ----------------------------------------------------------------------------

def problems(checked: Checked) -> list[Problem]:
    """Every error and warning `plan` gives, where it gives it; but none for a YAML text that
    is not a spec (SC003: a CI workflow, a compose file, an empty file): editors start the
    server for every YAML file."""
    found = [_problem(checked, d) for d in checked.diagnostics if d.code != NOT_A_SPEC]
    if checked.crash:
        found.append(Problem(_span(checked, None, None), "error", None,
                             f"shapecheck could not check this text ({checked.crash}); "
                             "please report it with the text"))
    return found


def _problem(checked: Checked, d: Diagnostic) -> Problem:
    return Problem(_span(checked, d.line, d.column), d.severity, d.code, d.message, d.hint)


# --- inlay hints ----------------------------------------------------------------------------

def shape_label(row: LayerPlan | None) -> str | None:
    if row is None or row.status == "skipped":
        return None
    return "✗ fails here" if row.status == "failed" else f"→ {dims(row.output_shape)}"


def inlay_hints(checked: Checked, first: int = 0, last: int | None = None) -> list[Hint]:
    """Each layer's output shape at the end of the line it is written on, for lines first to
    last: a template's layers show their first use, a use the output of the layers it made.
    Where one line holds several entries, the last one that is not inside another shows."""
    last = len(checked.lines) - 1 if last is None else last
    on_line: dict[int, list[Entry]] = {}
    for entry in checked.entries:
        if first <= entry.line <= last:
            on_line.setdefault(entry.line, []).append(entry)
    hints = []
    for line, entries in on_line.items():
        entry = _last_outer(entries)
        row = entry.row or checked.use_output(entry)
        label = shape_label(row)
        if label is None:
            continue
        text = checked.lines[line]
        hints.append(Hint(line, len(text), label, _tooltip(entry, row)))
    return hints


def _last_outer(entries: list[Entry]) -> Entry:
    """The last entry of a line whose layer is not inside a block, or made by a use, written
    on the same line (a line may hold a whole flow list: no pairwise comparison)."""
    if len(entries) == 1:
        return entries[0]
    blocks = {e.row.path for e in entries if e.row is not None and e.row.is_block}
    made = {id(row) for e in entries if e.site is not None for row in e.rows}
    for entry in reversed(entries):
        if entry.row is None:
            return entry
        path = entry.row.path
        if id(entry.row) not in made and not any(path[:k] in blocks for k in range(1, len(path))):
            return entry
    return entries[-1]


def _tooltip(entry: Entry, row: LayerPlan) -> str:
    if entry.site is not None:
        return f"the output of `use: {entry.site.template}` (its last layer, {row.name})"
    text = f"{row.name} ({row.type}): {row.params:,} params, {row.macs:,} MACs"
    used = row.spec.origin.used_at if row.spec.origin else ()
    if used:
        text += f"; shapes of the template's first use (layer {'/'.join(map(str, row.path))})"
    return text


# --- hover ----------------------------------------------------------------------------------

def hover(checked: Checked, line: int, character: int) -> Hover | None:
    """A layer's arithmetic, as `plan --explain` prints it; a use's template, parameters
    and layers."""
    entry = checked.entry_at(line, character)
    if entry is None:
        return None
    start = checked.lines[entry.line]
    where = (entry.line, entry.column, entry.line, len(start))
    if entry.site is not None:
        return Hover(where, _use_markdown(checked, entry))
    return Hover(where, _layer_markdown(checked, entry.row))


def _layer_markdown(checked: Checked, row: LayerPlan) -> str:
    where = "/".join(map(str, row.path))
    head = f"**{row.name}** · `{row.type}` · layer {where}"
    used = row.spec.origin.used_at if row.spec.origin else ()
    if used:
        head += f" · in template `{used[0].template}`: shapes of its first use"
    out = [head, ""]
    if row.status == "ok":
        out.append(f"input `{dims(row.input_shape)}` → output `{dims(row.output_shape)}`")
        parts = []
        if row.weight_shape:
            parts.append(f"weight `{dims(row.weight_shape)}`")
        if row.bias_shape:
            parts.append(f"bias `{dims(row.bias_shape)}`")
        parts += [f"params {row.params:,}", f"MACs {row.macs:,}"]
        out += ["", " · ".join(parts)]
    elif row.status == "failed":
        out.append(f"input `{dims(row.input_shape)}`: **fails here**")
        for d in checked.diagnostics:
            if d.is_error and (d.path or (d.layer,)) == row.path:
                out += ["", f"{d.severity}[{d.code}]: {d.detail}"]
                if d.hint:
                    out.append(f"hint: {d.hint}")
    else:
        out.append("not planned: a layer before it fails")
    notes = checked.spec.notes.get(row.path, []) if checked.spec else []
    lines = [*notes, *explanation(row)] if row.status == "ok" else notes
    if lines:
        out += ["", "```text", *lines, "```"]
    return "\n".join(out)


def _use_markdown(checked: Checked, entry: Entry) -> str:
    name = entry.site.template
    template = checked.raw(("templates", name))
    use = checked.raw(checked.located.get((entry.line + 1, entry.column + 1), ("",)))
    use = use if isinstance(use, dict) else {}
    head = f"**use `{name}`**"
    if isinstance(use.get("repeat"), int):
        head += f" × {use['repeat']}"
    at = (checked.yaml[1] if checked.yaml else {}).get(("templates", name))
    if at:
        head += f" · template at line {at[0]}"
    out = [head, ""]
    params = template.get("params") if isinstance(template, dict) else None
    params = dict.fromkeys(params) if isinstance(params, list) else params
    if isinstance(params, dict) and params:
        out.append("parameters:")
        first = use.get("first") if isinstance(use.get("first"), dict) else {}
        for key, default in params.items():
            line = f"- `{key}`: " + ("required" if default is None else
                                     f"default `{flow(default)}`")
            if key in use:
                line += f", here `{flow(use[key])}`"
            if key in first:
                line += f", first repeat `{flow(first[key])}`"
            out.append(line)
    else:
        out.append("no parameters")
    rows = entry.rows
    if rows:
        top = min(len(row.path) for row in rows)
        width = max(len(row.name) + 2 * (len(row.path) - top) for row in rows[:MAX_HOVER_LAYERS])
        out += ["", f"makes {len(rows)} layer{'s' * (len(rows) != 1)}:", "```text"]
        for row in rows[:MAX_HOVER_LAYERS]:
            indent = "  " * (len(row.path) - top)
            shape = shape_label(row) or "—"
            out.append(f"{indent + row.name:<{width}}  {row.type:<12} {shape}")
        if len(rows) > MAX_HOVER_LAYERS:
            out.append(f"… {len(rows) - MAX_HOVER_LAYERS} more")
        out.append("```")
        notes = checked.spec.notes.get(rows[0].path, []) if checked.spec else []
        if notes:
            out += ["", notes[0]]
    return "\n".join(out)


# --- completion -----------------------------------------------------------------------------

@cache
def layer_types() -> tuple[Completion, ...]:
    """Every layer type, each with its torch.nn class (every layer module imported, once)."""
    return tuple(Completion(name, "type", f"torch.nn.{kind.torch_class or kind.__name__}"
                            if kind.torch_class else f"{kind.__name__} (a shapecheck block)"
                            if kind.is_block else kind.__name__, name)
                 for name, kind in KINDS.items())


@cache
def _model_fields(model) -> tuple[Completion, ...]:
    """A pydantic model's fields, with their defaults: the models the JSON Schema is made
    from (schema.py)."""
    found = []
    for key, info in model.model_fields.items():
        if key == "type":
            continue
        key = info.alias or key
        if info.is_required():
            detail = "required"
        elif info.default is None:
            detail = "optional" if key == "name" else "default: inferred or none"
        else:
            detail = f"default: {flow(info.default)}"
        found.append(Completion(key, "field", detail, f"{key}: "))
    return tuple(found)


def flow(value) -> str:
    """A value as YAML's flow style writes it: `[{use: downsample, out: 256}]`, `false`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(map(flow, value))}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def completions(text: str, line: int, character: int, known: Checked | None) -> list[Completion]:
    """What may be written at a position of a text (half-typed too): layer types after
    `type:` or `- `, a layer's fields, template names after `use:` and their parameters,
    scale names, warning codes, top-level keys. ``known``: the last check whose YAML could be
    read, for the templates and scales."""
    lines = LINE_BREAK.split(text)
    current = _line(lines, line)
    prefix = current[:character]
    section = _section(lines, line, prefix)
    values = None  # a key's values: after `use:`, `type:`, `default_scale:`
    if re.search(r"\buse:\s*[\w-]*$", prefix):
        values = _templates(known)
    elif re.search(r"(?:^|[{,\s])type:\s*[\w.]*$", prefix) and section in ("layers",
                                                                              "templates"):
        values = list(layer_types())
    elif re.match(r"default_scale:\s*[\w-]*$", prefix):
        values = [Completion(str(s), "scale", "a scale", str(s)) for s in _mapping(known, "scales")]
    if values is not None:  # right after the colon, the value needs its space
        return [replace(c, insert=f" {c.insert}") for c in values] if prefix.endswith(":") \
            else values
    if section == "ignore":
        from ..core.diagnostics import CODES

        return [Completion(code, "code", CODES[code], code) for code in WARNING_CODES]
    if re.fullmatch(r"\w*", prefix):
        return [Completion(key, "key", "a spec's key", f"{key}: ") for key in TOP_KEYS]
    if re.fullmatch(r"\s*-\s+[\w.]*", prefix) and section in ("layers", "templates"):
        return [*layer_types(), Completion("use", "key", "a template's use", "use: ")]
    if not re.search(r"(?:^\s*(?:-\s+)?|[{,]\s*)\w*$", prefix):
        return []
    keys, kind, template = _entry_keys(lines, line, prefix)
    if section == "input" and kind is None and template is None:
        from ..core.spec import InputSpec

        return [c for c in _model_fields(InputSpec) if c.label not in keys]
    if section == "train" and kind is None and _indent(prefix) == 2:
        from ..core.trainspec import TrainSpec

        return [c for c in _model_fields(TrainSpec) if c.label not in keys]
    if section not in ("layers", "templates"):
        return []
    if template is not None:
        params = _template_params(known, template)
        return [*(Completion(p, "parameter", "required" if v is None else f"default: {flow(v)}",
                             f"{p}: ") for p, v in params.items() if p not in keys),
                *(Completion(k, "key", "of every use", f"{k}: ")
                  for k in USE_KEYS[1:] if k not in keys)]
    model = KINDS.get(normalize_type(kind)) if kind else None
    if model is None:
        return [Completion("type", "key", "the layer's torch.nn type", "type: "),
                Completion("use", "key", "a template's use", "use: ")]
    reads = Completion("from", "key", "the tensors it reads: an earlier layer's name, input "
                       "or prev (a list for add, mul, cat)", "from: ")
    return [c for c in (*_model_fields(model), reads) if c.label not in keys]


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" "))


def _section(lines: list[str], line: int, prefix: str) -> str | None:
    """The top-level key the position is under."""
    if prefix and _indent(prefix) == 0 and ":" in prefix:
        return prefix.partition(":")[0].strip()
    for i in range(min(line, len(lines)) - 1, -1, -1):
        text = lines[i]
        if text and not text[0].isspace() and not text.startswith(("#", "-")):
            return text.partition(":")[0].strip()
    return None


def _entry_keys(lines: list[str], line: int, prefix: str) -> tuple[set[str], str | None,
                                                                    str | None]:
    """The keys, the type and the template of the layer entry a key is being typed in:
    a flow mapping `{type: conv2d, |}`, or a block mapping's lines."""
    current = lines[line]
    depth, opened = 0, None
    for i in range(len(prefix) - 1, -1, -1):
        c = prefix[i]
        if c == "}":
            depth += 1
        elif c == "{":
            if depth == 0:
                opened = i
                break
            depth -= 1
    if opened is not None:
        texts = [current[opened:]]
    else:  # a block mapping: the lines whose keys stand at this key's column
        column = len(prefix) - len(re.sub(r"^\s*(?:-\s+)?", "", prefix))
        texts = [current]
        if not re.match(r"\s*-\s", prefix):
            for i in range(line - 1, -1, -1):
                text = lines[i]
                indent = _indent(text)
                if not text.strip() or text.lstrip().startswith("#") or indent > column:
                    continue
                if indent == column:
                    texts.append(text)
                    continue
                if re.match(r"\s*-\s", text) and len(text) - len(re.sub(
                        r"^\s*-\s+", "", text)) == column:
                    texts.append(text)
                break
        for text in lines[line + 1:]:
            indent = _indent(text)
            if not text.strip() or indent > column:
                continue
            if indent != column or text.lstrip().startswith("-"):
                break
            texts.append(text)
    keys, kind, template = set(), None, None
    for text in texts:
        for key, value in re.findall(r"(?:^\s*(?:-\s+)?|[{,]\s*)(\w+)\s*:\s*([^,}\s#]*)", text):
            keys.add(key)
            if key == "type" and value:
                kind = kind or value
            if key == "use" and value:
                template = template or value
    return keys, kind, template


def _mapping(known: Checked | None, key: str) -> dict:
    value = known.raw((key,)) if known is not None else None
    return value if isinstance(value, dict) else {}


def _template_params(known: Checked | None, name: str) -> dict:
    template = _mapping(known, "templates").get(name)
    params = template.get("params") if isinstance(template, dict) else None
    if isinstance(params, list):
        params = dict.fromkeys(params)
    return params if isinstance(params, dict) else {}


def _templates(known: Checked | None) -> list[Completion]:
    return [Completion(str(name), "template",
                       "params: " + (", ".join(map(str, _template_params(known, name))) or "none"),
                       str(name)) for name in _mapping(known, "templates")]


# --- go to definition -----------------------------------------------------------------------

def definition(text: str, line: int, character: int, known: Checked | None) -> Range | None:
    """From a `use: NAME` to the template's key under `templates:`."""
    current = _line(LINE_BREAK.split(text), line)
    matches = list(re.finditer(r"\buse:\s*([A-Za-z_]\w*)", current))
    for match in matches:
        if match.start() <= character <= match.end() or len(matches) == 1:
            at = (known.yaml[1] if known is not None and known.yaml else {}).get(
                ("templates", match.group(1)))
            if at is None:
                return None
            start = at[1] - 1
            return (at[0] - 1, start, at[0] - 1, start + len(match.group(1)))
    return None


# --- quick fixes ----------------------------------------------------------------------------

_SET = re.compile(r"(?:^|; then |\bthen )set (\w+): (\[[^\]]*\]|[\w.-]+)")
_FLATTEN = re.compile(r"^add flatten before \w+: it gives (\d+) features")
_SHORTCUT = re.compile(r"^use shortcut: (\[.*\])$")


def fixes(checked: Checked, first: int = 0, last: int | None = None) -> list[Fix]:
    """The fixes the hints of the diagnostics on lines first to last state: `set FIELD: VALUE`
    on the layer, `add flatten before it`, the residual's `shortcut:`. Only for layers written
    in the spec's own lists: a template's layer is every use's, and its fix is a choice."""
    last = len(checked.lines) - 1 if last is None else last
    found = []
    for d, problem in zip(checked.diagnostics, problems(checked)):
        if not d.hint or not first <= problem.range[0] <= last:
            continue
        row = checked.rows.get(d.path or (d.layer,))
        origin = row.spec.origin if row is not None else None
        if origin is None or origin.used_at or origin.line is None:
            continue
        loc = checked.located.get((origin.line, origin.column))
        if loc is None or not isinstance(checked.raw(loc), dict):
            continue
        edits, titles = [], []
        flatten = _FLATTEN.match(d.hint)
        if flatten and (edit := _insert_before(checked, origin, "flatten")):
            edits.append(edit)
            titles.append(f"add flatten before {row.name}")
            if "in_features" in checked.raw(loc) and not _SET.search(d.hint):
                edits.append(_set_field(checked, loc, "in_features", flatten.group(1)))
                titles.append(f"set in_features: {flatten.group(1)}")
        setting = _SET.search(d.hint)
        shortcut = _SHORTCUT.match(d.hint)
        if setting:
            edits.append(_set_field(checked, loc, *setting.groups()))
            titles.append(f"set {setting.group(1)}: {setting.group(2)}")
        elif shortcut and "shortcut" not in checked.raw(loc):
            edits.append(_set_field(checked, loc, "shortcut", shortcut.group(1)))
            titles.append(f"set shortcut: {shortcut.group(1)}")
        if edits and None not in edits:
            found.append(Fix(", ".join(titles), problem, tuple(edits)))
    return found


def _insert_before(checked: Checked, origin, item: str) -> Edit | None:
    """A `- item` line before a block sequence's entry (None in a flow sequence)."""
    i = origin.line - 1
    before = checked.lines[i][:origin.column - 1]
    if not re.fullmatch(r"\s*-\s+", before):
        return None
    return Edit((i, 0, i, 0), f"{before[:before.index('-')]}- {item}\n")


def _set_field(checked: Checked, loc: tuple, key: str, value: str) -> Edit | None:
    """Give an entry's key this value: replace a value written on the key's line, or add the
    key after the entry's `type:` (in a flow mapping on its line, else on a line of its own)."""
    positions = checked.yaml[1]
    at = positions.get((*loc, key))
    if at is not None:
        i, text = at[0] - 1, checked.lines[at[0] - 1]
        match = re.compile(rf"{key}\s*:[ \t]*([^,{{}}\[\]#\s][^,{{}}\[\]#]*?)\s*(?=[,}}\]#]|$)"
                           ).match(text, at[1] - 1)
        if match is None:
            return None
        return Edit((i, match.start(1), i, match.end(1)), value)
    at = positions.get((*loc, "type"))
    start = positions.get(loc)
    if at is None or start is None:
        return None
    i, text = at[0] - 1, checked.lines[at[0] - 1]
    if checked.lines[start[0] - 1][start[1] - 1:].startswith("{"):
        match = re.compile(r"type\s*:\s*[^,}]*?(?=\s*[,}])").match(text, at[1] - 1)
        if match is None:
            return None
        end = match.end()
        return Edit((i, end, i, end), f", {key}: {value}")
    indent = " " * (at[1] - 1)
    if i + 1 < len(checked.lines):
        return Edit((i + 1, 0, i + 1, 0), f"{indent}{key}: {value}\n")
    return Edit((i, len(text), i, len(text)),
                f"\n{indent}{key}: {value}")
