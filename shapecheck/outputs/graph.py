"""The network as a diagram: a Plan drawn as a Graphviz digraph.

The drawing reads the Plan and nothing else: every shape, weight and count on it is the
planner's. An input node, one node per layer, an output node; each edge carries the tensor shape
that flows along it. The layers before the first top-level flatten form the "feature extractor"
cluster, the rest the "classifier" cluster. A residual or concat block is a cluster of its own:
a node with its name at the top, where the branches fork, the branches side by side, and a merge
node (⊕ add, ‖ concat) where they join; an identity shortcut is an edge straight from the fork to
the ⊕. On an invalid plan the failing layer (or merge) is red, with the error and hint in its
label, and the layers after it are grey (a skipped block with its branches, without shapes).

Every piece of text goes into an HTML-like label through `text()`, which escapes it, so a
description holding quotes, brackets, braces, backslashes or newlines still gives valid DOT.
graphviz is imported inside diagram(): importing this module costs nothing.
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import TYPE_CHECKING

from ..core.diagnostics import Diagnostic
from ..core.layers import BLOCKS, KINDS
from ..core.plan import LayerPlan, Plan
from .table import dims, human_count

if TYPE_CHECKING:
    import graphviz

FONT = "Helvetica,Arial,sans-serif"
MERGES = tuple(KINDS[name] for name in ("add", "mul", "cat"))

# Fill colour and legend text per layer family, in legend order.
FAMILIES: dict[str, tuple[str, str]] = {
    "conv": ("#cfe2f3", "convolution"),
    "pool": ("#d9ead3", "pooling"),
    "resample": ("#d9f2ec", "resampling"),
    "norm": ("#fff2cc", "normalisation"),
    "activation": ("#fce5cd", "activation"),
    "dropout": ("#d0e0e3", "dropout"),
    "reshape": ("#eeeeee", "reshape"),
    "linear": ("#d9d2e9", "linear"),
    "other": ("#ffffff", "other"),
}
FAILED_FILL, FAILED_LINE, FAILED_TEXT = "#f4cccc", "#cc0000", "#990000"
SKIPPED_FILL, SKIPPED_LINE, SKIPPED_TEXT = "#f7f7f7", "#bbbbbb", "#999999"
WARNING_LINE, WARNING_TEXT = "#e69138", "#b45f06"
LINE, EDGE, MUTED = "#666666", "#555555", "#666666"

WRAP = 46  # characters per line of an error or hint inside a node
TITLE_WRAP = 80
TITLE_MAX = 300  # a longer description is cut
MAX_SCHEMA_ERRORS = 8
LEGEND_ROW = 7  # legend cells per row

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def text(value: object) -> str:
    """User text as the content of an HTML-like label: escaped, one line per input line.

    Backslashes become '∖' (U+2216): dot reads backslash sequences such as \\N even inside
    HTML-like labels, and versions differ on how to write a literal one."""
    s = _CONTROL.sub("\ufffd", str(value)).replace("\r\n", "\n").replace("\r", "\n")
    s = s.replace("\t", " ").replace("\\", "\u2216")
    return "<BR/>".join(html.escape(line, quote=True) for line in s.split("\n"))


def wrapped(value: str, width: int = WRAP) -> str:
    """Long user text wrapped to lines of about `width` characters, escaped."""
    lines = []
    for paragraph in str(value).splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width, break_on_hyphens=False) or [""]
    return "<BR/>".join(text(line) for line in lines)


def _font(content: str, *, size: int | None = None, color: str | None = None) -> str:
    attrs = (f' POINT-SIZE="{size}"' if size else "") + (f' COLOR="{color}"' if color else "")
    return f"<FONT{attrs}>{content}</FONT>" if attrs else content


def _html(*lines: str) -> str:
    return "<" + "<BR/>".join(line for line in lines if line) + ">"


def _shape(shape) -> str | None:
    return None if shape is None else dims(shape)


def _node_id(path: tuple) -> str:
    return "n" + "_".join(str(p) for p in path)


def diagram(plan: Plan, rankdir: str = "TB", dpi: int | None = None,
            depth: int | None = None) -> graphviz.Digraph:
    """The plan as a graphviz.Digraph (its .source is deterministic DOT). Blocks nested deeper
    than ``depth`` are one node each, with their totals."""
    import graphviz

    graph_attr = {
        "rankdir": rankdir,
        "fontname": FONT,
        "fontsize": "12",
        "nodesep": "0.3",
        "ranksep": "0.3",
        "bgcolor": "white",
        "pad": "0.2",
    }
    if dpi:
        graph_attr["dpi"] = str(dpi)
    g = graphviz.Digraph(
        name=plan.name if plan.name.isidentifier() and plan.name.isascii() else "net",
        graph_attr=graph_attr,
        node_attr={
            "shape": "box",
            "style": "rounded,filled",
            "fontname": FONT,
            "fontsize": "11",
            "margin": "0.12,0.05",
            "color": LINE,
            "fillcolor": "white",
        },
        edge_attr={
            "fontname": FONT,
            "fontsize": "9",
            "fontcolor": "#333333",
            "color": EDGE,
            "arrowsize": "0.6",
        },
    )
    _Drawer(plan, g, reverse_branches=rankdir == "LR", depth=depth).draw()
    return g


class _Drawer:
    def __init__(self, plan: Plan, g: graphviz.Digraph, reverse_branches: bool = False,
                 depth: int | None = None):
        self.plan = plan
        self.g = g
        self.depth = depth
        # dot puts the first of parallel branches left in TB but at the bottom in LR: drawn in
        # reverse there, branch 0 comes out on top.
        self.reverse_branches = reverse_branches
        self.edges: list[tuple[str, str, str | None, dict]] = []
        # A spec that reads tensors by name: each top-level tensor's node and shape, and the
        # (anchor, merge) pairs drawn side by side (a U-Net's skip and the cat it joins).
        self.tensors: dict[str, tuple[str, object]] = {"input": ("input", plan.input_shape)}
        self.beside: list[tuple[str, str]] = []
        self.rows = {row.name: row for row in plan.layers}  # the top-level rows, by name
        self.errors: dict[tuple, Diagnostic] = {}
        self.warnings: dict[tuple, list[str]] = {}
        for d in plan.diagnostics:
            where = d.layer_path
            if where is None:
                continue
            if d.is_error:
                self.errors.setdefault(where, d)
            elif d.code not in self.warnings.setdefault(where, []):
                self.warnings[where].append(d.code)
        self.families_seen: list[str] = []

    # -- the whole graph ---------------------------------------------------------------------

    def draw(self) -> None:
        # Everything sits in one borderless cluster whose label is the title; the graph's own
        # label, below, is the legend (apart from the title, so that its cells keep their size).
        g = self.g
        with g.subgraph(name="cluster_net") as net:
            net.attr(label=self._title(), labelloc="t", peripheries="0", margin="4")
            if self.plan.layers:
                self._network(net)
            else:
                self._schema_errors(net)
        for tail_id, head_id, label, attrs in self.edges:
            if label is None:
                g.edge(tail_id, head_id, color=SKIPPED_LINE, style="dashed", **attrs)
            else:
                g.edge(tail_id, head_id, label=_html(text(label)), **attrs)
        legend = self._legend()
        if legend:
            g.attr(label=f"<{legend}>", labelloc="b")

    def _network(self, g) -> None:
        plan = self.plan
        g.node("input", _html("<B>input</B>", _font(text(_chw(plan.input_shape)), size=10)),
               fillcolor="white", style="rounded,filled,bold")
        cut = next((i for i, layer in enumerate(plan.layers) if layer.spec.starts_classifier),
                   len(plan.layers))
        tail, shape = "input", plan.input_shape
        for key, label, layers in (("features", "feature extractor", plan.layers[:cut]),
                                   ("classifier", "classifier", plan.layers[cut:])):
            if not layers:
                continue
            with g.subgraph(name=f"cluster_{key}") as c:
                c.attr(label=self._section_label(label, layers), style="rounded,dashed",
                       color="#999999", fontcolor="#444444", fontsize="12", margin="12",
                       labeljust="l", peripheries="1")
                tail, shape = self._chain(c, layers, tail, shape)
                for anchor, merge in self.beside:  # a skip's source level with its merge
                    with c.subgraph() as same:
                        same.attr(rank="same")
                        same.node(anchor)
                        same.node(merge)
        ends = [(tail, shape, None)]
        if plan.outputs:  # each tensor the network returns, by its name
            ends = [(*self.tensors[plan.layers[i].name], name) for name, i in plan.outputs]
        done = plan.valid
        g.node("output", _html("<B>output</B>" if done else "output (not reached)"),
               **({"style": "rounded,filled,bold"} if done else self._skipped_attrs()))
        for tail, shape, name in ends:
            if name is None or shape is None:
                self._edge(tail, "output", shape)
            else:
                self._edge(tail, "output", shape, label=f"{name}: {_shape(shape)}")

    def _title(self) -> str:
        """The name, the description, and the totals or where the network fails."""
        plan = self.plan
        rows = [f'<FONT POINT-SIZE="16"><B>{text(plan.name)}</B></FONT>']
        if plan.description:
            description = plan.description.strip()
            if len(description) > TITLE_MAX:
                description = description[: TITLE_MAX - 1].rstrip() + "…"
            rows.append(wrapped(description, TITLE_WRAP))
        if not plan.layers:
            rows.append(_font("invalid spec: no layer could be planned", color=FAILED_TEXT))
        elif plan.valid:
            rows.append(_font(text(f"{plan.params:,} params · {human_count(plan.macs)} MACs "
                                   "per sample"), size=10, color=MUTED))
        else:
            failed = [layer for layer in plan.walk() if layer.status == "failed"]
            if failed:  # the innermost failed layer
                rows.append(_font(text(f"invalid: the network fails at {failed[-1].name}"),
                                  color=FAILED_TEXT))
            for d in plan.errors:
                if d.layer is None:  # an error no node shows
                    rows.append(_font(wrapped(f"error {d.code}: {d.message}", TITLE_WRAP),
                                      size=10, color=FAILED_TEXT))
        rows.append('<FONT POINT-SIZE="6"> </FONT>')  # a little room above the input node
        return _html(*rows)

    def _section_label(self, label: str, layers: list[LayerPlan]) -> str:
        if all(layer.status == "ok" for layer in layers):
            params = sum(layer.params for layer in layers)
            left = '<BR ALIGN="LEFT"/>'  # ends a left-aligned line
            return (f"<<B>{text(label)}</B>{left}"
                    f"{_font(text(f'{params:,} params'), size=10)}{left}>")
        return _html(f"<B>{text(label)}</B>")

    def _schema_errors(self, g) -> None:
        errors = self.plan.errors or self.plan.diagnostics
        lines = [_font("<B>the spec does not follow the schema</B>", color=FAILED_TEXT)]
        for d in errors[:MAX_SCHEMA_ERRORS]:
            where = f"line {d.line}: " if d.line is not None else ""
            lines.append(_font(wrapped(f"{where}{d.severity} {d.code}: {d.message}", 60),
                               size=10, color=FAILED_TEXT))
            if d.hint:
                lines.append(_font(wrapped(f"hint: {d.hint}", 60), size=10))
        if len(errors) > MAX_SCHEMA_ERRORS:
            lines.append(_font(text(f"… and {len(errors) - MAX_SCHEMA_ERRORS} more"), size=10))
        g.node("errors", _html(*lines), fillcolor=FAILED_FILL, color=FAILED_LINE, penwidth="2")

    def _legend(self) -> str:
        """A small table: the colour of each layer family drawn, the merge glyphs, and the
        failure styles where the plan is invalid. Empty where nothing was drawn."""
        cells = [f'<TD BGCOLOR="{FAMILIES[f][0]}">{text(FAMILIES[f][1])}</TD>'
                 for f in FAMILIES if f in self.families_seen]
        drawn = {type(layer.spec) for layer in self.plan.walk()
                 if layer.is_block or layer.spec.is_merge}
        glyphs = [f"<TD>{text(b.glyph + ' ' + b.merge_word)}</TD>"
                  for b in (*BLOCKS, *MERGES) if b in drawn]
        cells += list(dict.fromkeys(glyphs))  # a residual's ⊕ and an add's are one
        if self.warnings:
            cells.append(f'<TD COLOR="{WARNING_LINE}"><FONT COLOR="{WARNING_TEXT}">warning'
                         "</FONT></TD>")
        if not self.plan.valid and self.plan.layers:
            cells.append(f'<TD BGCOLOR="{FAILED_FILL}" COLOR="{FAILED_LINE}">'
                         f'<FONT COLOR="{FAILED_TEXT}">fails here</FONT></TD>')
            cells.append(f'<TD BGCOLOR="{SKIPPED_FILL}" COLOR="{SKIPPED_LINE}">'
                         f'<FONT COLOR="{SKIPPED_TEXT}">not planned</FONT></TD>')
        if not cells:
            return ""
        rows = ["<TR>" + "".join(cells[i:i + LEGEND_ROW]) + "</TR>"
                for i in range(0, len(cells), LEGEND_ROW)]
        return ('<FONT POINT-SIZE="10"><TABLE BORDER="0" CELLBORDER="1" CELLSPACING="3" '
                f'CELLPADDING="3" COLOR="{LINE}">' + "".join(rows) + "</TABLE></FONT>")

    # -- layers and blocks ------------------------------------------------------------------

    def _edge(self, tail: str, head: str, shape, label: str | None = None, **attrs: str) -> None:
        """An edge carrying the tensor's shape (or ``label``); none for a skipped one."""
        self.edges.append((tail, head, _shape(shape) if shape is None or label is None
                           else label, attrs))

    def _chain(self, c, layers: list[LayerPlan], tail: str, shape, level: int = 1):
        """Draw layers one after another from `tail`; returns the last node and its shape.
        ``level`` is the nesting depth of these layers (1 at the top)."""
        for layer in layers:
            sources = [(tail, shape)]
            if layer.inputs is not None:  # it reads tensors by name (graph.py)
                sources = [self.tensors[name] for name in layer.inputs]
                tail, shape = sources[0]
            if layer.spec.is_merge:
                tail, shape = self._merge(c, layer, sources)
            elif layer.is_block and self.depth is not None and level >= self.depth:
                node = _node_id(layer.path)
                c.node(node, self._collapsed_label(layer), **self._collapsed_attrs(layer))
                self._edge(tail, node, shape)
                tail, shape = node, layer.output_shape
            elif layer.is_block:
                tail, shape = self._block(c, layer, tail, shape, level)
            else:
                node = _node_id(layer.path)
                c.node(node, self._label(layer), **self._attrs(layer))
                self._edge(tail, node, shape)
                if layer.like is not None:  # the tensor it takes its size from
                    like, like_shape = self.tensors[layer.like]
                    self._edge(like, node, like_shape, label="size", style="dotted",
                               constraint="false")
                tail, shape = node, layer.output_shape
            if level == 1:
                self.tensors[layer.name] = (tail, shape)
        return tail, shape

    def _merge(self, c, layer: LayerPlan, sources: list[tuple[str, object]]):
        """A merge layer: its glyph in a circle, an edge from each input. The earliest input
        (a U-Net's skip, an FPN's lateral) sits beside it; the others reach it from wherever
        they are, so that a decoder climbs back up beside its encoder."""
        node = _node_id(layer.path)
        error = self.errors.get(layer.path)
        if error is not None:
            c.node(node, _html(f"<B>{text(layer.spec.glyph)} {text(layer.name)}</B>",
                               *self._error_lines(error)), **self._failed_attrs())
        else:
            c.node(node, layer.spec.glyph, shape="circle", fixedsize="true", width="0.36",
                   fontsize="16", margin="0", tooltip=f"{layer.name}: {layer.type}",
                   **(self._skipped_attrs() if layer.status == "skipped" else
                      {"style": "filled", "fillcolor": "white"}))
        made = [self.rows.get(name) for name in layer.inputs]
        anchor = min(range(len(made)), key=lambda i: made[i].index if made[i] else -1)
        for i, (tail, shape) in enumerate(sources):
            self._edge(tail, node, shape, **({} if i == anchor else {"constraint": "false"}))
        if made[anchor] is not None and not made[anchor].is_block:  # a node of this cluster
            self.beside.append((sources[anchor][0], node))
        return node, layer.output_shape

    def _block(self, c, block: LayerPlan, tail: str, shape, level: int = 1):
        kind = block.type
        merge = "m" + _node_id(block.path)[1:]
        skipped = block.status == "skipped"
        with c.subgraph(name="cluster_" + _node_id(block.path)) as b:
            b.attr(label="", style="rounded,filled", margin="10", peripheries="1",
                   fillcolor=SKIPPED_FILL if skipped else "#fafafa",
                   color=SKIPPED_LINE if skipped else "#888888")
            # The block's own node at its top: its name and kind, where the branches fork.
            fork = "b" + _node_id(block.path)[1:]
            lines = [f"<B>{text(block.name)}</B>  "
                     + _font(text(kind), color=SKIPPED_TEXT if skipped else MUTED)]
            if block.settings:
                lines.append(_font(text(block.settings), size=10))
            if block.status == "ok":
                lines.append(_font(text(f"{block.params:,} params"), size=10))
            b.node(fork, _html(*lines), fontsize="11", **(
                self._skipped_attrs() if skipped else {"fillcolor": "white", "color": "#888888"}))
            self._edge(tail, fork, shape)
            ends = []
            branches = [(block.branch_input_shape(i), branch)
                        for i, branch in enumerate(block.branches)]
            for branch_shape, branch in reversed(branches) if self.reverse_branches else branches:
                if not branch:  # an identity shortcut or an empty concat branch
                    ends.append((fork, branch_shape))
                    continue
                ends.append(self._chain(b, branch, fork, branch_shape, level + 1))
            if block.spec.merges_input:  # x itself meets the branches at the merge
                ends.append((fork, shape))
            error = self.errors.get(block.path)
            if error is not None:
                b.node(merge, self._merge_error_label(block, error), shape="box",
                       **self._failed_attrs())
            elif block.status == "ok":
                b.node(merge, block.spec.glyph, shape="circle", fixedsize="true",
                       width="0.36", fontsize="16", style="filled", fillcolor="white",
                       margin="0")
            else:
                b.node(merge, block.spec.glyph, shape="circle", fixedsize="true",
                       width="0.36", fontsize="16", margin="0", **self._skipped_attrs())
            for end, end_shape in ends:
                self._edge(end, merge, end_shape)
        return merge, block.output_shape

    # -- node labels and styles -------------------------------------------------------------

    def _label(self, layer: LayerPlan) -> str:
        skipped = layer.status == "skipped"
        muted = SKIPPED_TEXT if skipped else MUTED
        lines = [f"<B>{text(layer.name)}</B>  " + _font(text(layer.type), color=muted)]
        if layer.settings:
            lines.append(_font(text(layer.settings), size=10))
        if layer.status == "ok" and (layer.weight_shape or layer.params):
            weight = f"weight {dims(layer.weight_shape)} · " if layer.weight_shape else ""
            lines.append(_font(text(f"{weight}{layer.params:,} params"), size=10))
        error = self.errors.get(layer.path)
        if error is not None:
            lines += self._error_lines(error)
        codes = self.warnings.get(layer.path)
        if codes and layer.status == "ok":
            lines.append(_font(text("warning " + ", ".join(codes)), size=9, color=WARNING_TEXT))
        return _html(*lines)

    def _inside(self, block: LayerPlan, found: dict) -> list:
        """What ``found`` (errors or warnings by path) holds for the block and its contents."""
        n = len(block.path)
        return [v for path, v in found.items() if path[:n] == block.path]

    def _collapsed_label(self, block: LayerPlan) -> str:
        """A block drawn as one node: its name and kind, how many layers it holds, its
        totals; its in and out shapes are on its edges."""
        count = sum(1 for _ in Plan(block.name, None, None, 1, None, [block], []).walk()) - 1
        skipped = block.status == "skipped"
        lines = [f"<B>{text(block.name)}</B>  "
                 + _font(text(f"{block.type} · {count} layer{'s' * (count != 1)}"),
                         color=SKIPPED_TEXT if skipped else MUTED)]
        if block.status == "ok":
            lines.append(_font(text(f"{block.params:,} params · {human_count(block.macs)} MACs"),
                               size=10))
        errors = self._inside(block, self.errors)
        if errors:
            lines += self._error_lines(errors[0])
        codes = sorted({c for cs in self._inside(block, self.warnings) for c in cs})
        if codes and block.status == "ok":
            lines.append(_font(text("warning " + ", ".join(codes)), size=9, color=WARNING_TEXT))
        return _html(*lines)

    def _collapsed_attrs(self, block: LayerPlan) -> dict[str, str]:
        if block.status == "failed":
            return {**self._failed_attrs(), "peripheries": "2"}
        if block.status == "skipped":
            return {**self._skipped_attrs(), "peripheries": "2"}
        attrs = {"fillcolor": "#f3f3f3", "peripheries": "2"}  # two lines: it holds more
        if self._inside(block, self.warnings):
            attrs.update(color=WARNING_LINE, penwidth="1.5")
        return attrs

    def _error_lines(self, error: Diagnostic) -> list[str]:
        lines = [_font(wrapped(f"error {error.code}: {error.detail}"), size=10, color=FAILED_TEXT)]
        if error.hint:
            lines.append(_font(wrapped(f"hint: {error.hint}"), size=10, color="#333333"))
        return lines

    def _merge_error_label(self, block: LayerPlan, error: Diagnostic) -> str:
        head = f"<B>{block.spec.glyph} {text(block.spec.merge_word)}</B>"
        return _html(head, *self._error_lines(error))

    def _attrs(self, layer: LayerPlan) -> dict[str, str]:
        if layer.status == "failed":
            return self._failed_attrs()
        if layer.status == "skipped":
            return self._skipped_attrs()
        family = layer.family if layer.family in FAMILIES else "other"
        if family not in self.families_seen:
            self.families_seen.append(family)
        attrs = {"fillcolor": FAMILIES[family][0]}
        if self.warnings.get(layer.path):
            attrs.update(color=WARNING_LINE, penwidth="1.5")
        return attrs

    @staticmethod
    def _failed_attrs() -> dict[str, str]:
        return {"fillcolor": FAILED_FILL, "color": FAILED_LINE, "penwidth": "2",
                "style": "rounded,filled,bold"}

    @staticmethod
    def _skipped_attrs() -> dict[str, str]:
        return {"fillcolor": SKIPPED_FILL, "color": SKIPPED_LINE, "fontcolor": SKIPPED_TEXT,
                "style": "rounded,filled,dashed"}


def _chw(shape) -> str:
    """The input node's text: C×H×W and the batch (the edge below it carries the full shape)."""
    if shape is None:
        return ""
    return f"{dims(shape[1:])}, batch {shape[0]}"
