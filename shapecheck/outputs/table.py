"""The plan as a table (plain text or Markdown), with totals and, on request, the arithmetic."""

from __future__ import annotations

from ..core.analysis import field_text
from ..core.memory import human_bytes, ratio
from ..core.plan import LayerPlan, Plan
from .report import printable

HEADERS = ["#", "name", "type", "output shape", "weight", "bias", "params", "MACs"]


def dims(shape) -> str:
    if shape is None:
        return "—"
    if type(shape) is tuple:  # a long network repeats a few shapes: each written once
        text = _SHAPES.get(shape)
        if text is None:
            if len(_SHAPES) > 1024:  # a long-lived process (the language server)
                _SHAPES.clear()
            text = _SHAPES[shape] = "×".join(map(str, shape))
        return text
    return "×".join(map(str, shape))


_SHAPES: dict[tuple, str] = {}


def human_count(n: int) -> str:
    for unit, size in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{ratio(n, size, 2)} {unit}"
    return str(n)


def table_rows(layers: list[LayerPlan], indent: str = "", depth: int | None = None):
    """Every row with its indent, as a list; blocks nested deeper than ``depth`` are not
    opened (their own row carries their totals)."""
    rows: list = []

    def add(layers: list[LayerPlan], indent: str) -> None:
        opens = depth is None or len(indent) // 2 + 1 < depth
        for layer in layers:
            rows.append((layer, indent))
            if opens and layer.branches:
                for branch in layer.branches:
                    add(branch, indent + "  ")

    add(layers, indent)
    return rows


def collapsed(layer: LayerPlan, indent: str, depth: int | None) -> int:
    """How many layers a row at this indent hides under ``depth`` (0 when it is open)."""
    if depth is None or not layer.branches or len(indent) // 2 + 1 < depth:
        return 0
    return sum(1 + collapsed(sub, "", 1) for branch in layer.branches for sub in branch)


def row_cells(layer: LayerPlan, indent: str, depth: int | None = None,
           mark: str | None = None) -> list:
    """A row's cells; ``mark`` is the layer's mark in Plan.marks (default: its status)."""
    path, status = layer.path, layer.status
    where = str(path[0]) if len(path) == 1 else "/".join(map(str, path))
    mark = mark or status
    if mark == "failed":
        out = "✗ fails here"
    elif mark == "holds":
        out = "✗ fails inside"
    elif status == "skipped":
        out = "—"
    else:
        out = dims(layer.output_shape)
    planned = status == "ok"
    kind = layer.type
    if layer.branches:
        hidden = collapsed(layer, indent, depth)
        if hidden:
            kind += f" ({hidden} layer{'s' * (hidden != 1)})"
    if layer.inputs:
        kind += f" ← {', '.join(layer.inputs)}"
    weight, bias = layer.weight_shape, layer.bias_shape
    return [
        where,
        indent + layer.name,
        kind,
        out,
        dims(weight) if weight else "",
        dims(bias) if bias else "",
        f"{layer.params:,}" if planned else "",
        f"{layer.macs:,}" if planned else "",
    ]


def grid(headers: list[str], rows: list[list[str]], right: set[int], markdown: bool) -> list[str]:
    """Aligned columns: plain text with a dashed rule, or a GitHub Markdown table."""
    widths = [max(map(len, column)) for column in zip(headers, *rows)]
    # One format for every row: a long network has thousands.
    cells = [f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths)]
    form = ("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells)

    def line(row) -> str:
        return form.format(*row) if markdown else form.format(*row).rstrip()

    if markdown:
        rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                              for i, w in enumerate(widths)) + "|"
    else:
        rule = "  ".join("-" * w for w in widths)
    return [line(headers), rule, *(line(r) for r in rows)]


def render_table(plan: Plan, markdown: bool = False, explain: bool = False,
                 fields: bool = False, depth: int | None = None) -> str:
    """The table; ``fields`` adds the receptive-field column, ``depth`` keeps blocks nested
    deeper than it closed."""
    if not plan.layers:
        return (f"{printable(plan.name)}: not planned, the spec does not follow the schema "
                "(errors below)")
    rows = table_rows(plan.layers, depth=depth)
    marks = plan.marks()
    cells = [row_cells(layer, ind, depth, marks[layer.path]) for layer, ind in rows]
    headers = HEADERS
    if fields:
        headers = [*HEADERS, "RF"]
        cells = [[*c, field_text(layer.receptive_field)] for c, (layer, _) in zip(cells, rows)]
    lines = grid(headers, cells, {6, 7}, markdown)
    if explain and not markdown:
        head, body = lines[:2], lines[2:]
        lines = head
        for line, (layer, indent) in zip(body, rows):
            lines.append(line)
            lines += [f"{'':6}{indent}{text}" for text in explanation(layer)]
    totals = total_lines(plan)
    if markdown:  # a list, or a renderer joins the lines into one paragraph
        totals = ["- " + " ".join(line.split()) for line in totals]
    out = [_header(plan), ""] + lines + [""] + totals
    if explain and markdown:
        out += ["", *_explain_markdown(rows)]
    return "\n".join(out)


def _header(plan: Plan) -> str:
    shape = dims(plan.input_shape[1:]) if plan.input_shape else "?"
    batch = plan.input_shape[0] if plan.input_shape else plan.batch
    title = f"{printable(plan.name)}: input {shape}, batch {printable(batch)}"
    if plan.scale:
        title += f", scale {printable(plan.scale)}"
    return title + (f"  ({printable(plan.source)})" if plan.source else "")


def total_lines(plan: Plan) -> list[str]:
    if not plan.valid:
        return [f"invalid: {len(plan.errors)} error(s); totals are shown for valid specs only"]
    batch = plan.batch if isinstance(plan.batch, int) else None
    at = f"at batch {batch}" if batch else "per sample"
    outputs = [f"output shape:       {dims(plan.output_shape)}"]
    if plan.outputs:  # the tensors the spec lists under `outputs:`
        width = max(len(name) for name, _ in plan.outputs) + 1
        outputs = [f"output {name + ':':{max(width, 13)}}{dims(plan.layers[i].output_shape)}"
                   for name, i in plan.outputs]
    return [
        *outputs,
        f"params:             {plan.params:,} (trainable {plan.trainable_params:,})",
        f"MACs per sample:    {plan.macs:,} ({human_count(plan.macs)})",
        f"parameter memory:   {human_bytes(plan.param_bytes)} (float32)",
        f"activation memory:  {human_bytes(plan.activation_bytes)} {at} (float32, forward)",
    ]


def explanation(layer: LayerPlan) -> list[str]:
    """A row's --explain lines: its shape arithmetic, then its receptive field's."""
    return [*layer.explain, *layer.field_explain]


def _explain_markdown(rows) -> list[str]:
    out = []
    for layer, _ in rows:
        if explanation(layer):
            out.append(f"- **{layer.name}** ({layer.type})")
            out += [f"  - `{text}`" for text in explanation(layer)]
    return out
