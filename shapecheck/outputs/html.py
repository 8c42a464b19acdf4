"""The plan as one self-contained HTML page (``shapecheck render net.yaml -o net.html``): the
summary, the table, the diagram as inline SVG, and each layer's --explain arithmetic, shown
when its row or its node is clicked. An invalid spec opens on the failing layer with its hint.

The page loads nothing: no scripts, fonts or styles from elsewhere, and its Content-Security-
Policy forbids any request. Every piece of spec text is escaped: in the markup by ``esc()``, in
the embedded data by ``_json()``, and the script writes it with textContent only.
"""

from __future__ import annotations

import html
import json
import re

from ..core.analysis import field_text
from ..core.plan import Plan
from .table import HEADERS, explanation, row_cells, table_rows, total_lines

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def esc(value: object) -> str:
    """Text for HTML: control characters (which HTML forbids) become U+FFFD, then escaped."""
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def _json(data) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' can end the element."""
    text = json.dumps(data, ensure_ascii=False)
    text = _CONTROL.sub("\ufffd", text)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def layer_key(path: tuple) -> str:
    return "/".join(map(str, path))


def _details(plan: Plan, statuses: dict[tuple, str]) -> dict:
    """What the page shows for each layer, by key; and which node ids of the diagram are it."""
    by_path: dict[tuple, list] = {}
    for d in plan.diagnostics:
        if d.layer is not None:
            by_path.setdefault(d.layer_path, []).append(d)
    layers, nodes = {}, {}
    for row in plan.walk():
        key = layer_key(row.path)
        node = "_".join(map(str, row.path))
        for prefix in ("n", "b", "m"):  # the layer's node, a block's fork and merge
            nodes[prefix + node] = key
        layers[key] = {
            "name": row.name,
            "type": row.type,
            "settings": row.settings,
            "status": statuses[row.path],
            "input": _dims(row.input_shape),
            "output": _dims(row.output_shape),
            "weight": _dims(row.weight_shape),
            "params": row.params,
            "macs": row.macs,
            "rf": field_text(row.receptive_field),
            "line": row.line,
            "explain": explanation(row),
            "problems": [{"severity": d.severity, "code": d.code, "message": d.detail,
                          "hint": d.hint} for d in by_path.get(row.path, [])],
        }
    failed = [layer_key(r.path) for r in plan.walk() if statuses[r.path] == "failed"]
    return {"layers": layers, "nodes": nodes, "open": failed[-1] if failed else None}


def _dims(shape) -> str | None:
    return None if shape is None else "×".join(map(str, shape))


def _table(plan: Plan, depth: int | None, statuses: dict[tuple, str]) -> str:
    rows = table_rows(plan.layers, depth=depth)
    head = "".join(f"<th>{esc(h)}</th>" for h in [*HEADERS, "RF"])
    body = []
    for layer, indent in rows:
        cells = [*row_cells(layer, indent, depth, statuses[layer.path]), field_text(layer.receptive_field)]
        cells[1] = cells[1].strip()
        level = len(indent) // 2
        tds = "".join(
            f'<td style="padding-left:{0.4 + 1.2 * level}em">{esc(c)}</td>' if i == 1 else
            f"<td>{esc(c)}</td>" for i, c in enumerate(cells))
        body.append(f'<tr class="{esc(statuses[layer.path])}" data-key="{esc(layer_key(layer.path))}" '
                    f'tabindex="0">{tds}</tr>')
    return f"<table id=\"layers\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _svg(svg: str | None) -> str:
    if not svg:
        return '<p class="muted">The diagram needs Graphviz\'s dot program.</p>'
    start = svg.find("<svg")  # drop the XML declaration and doctype: invalid inside HTML
    return svg[start:] if start >= 0 else ""


def _problems(plan: Plan) -> str:
    items = []
    for d in plan.diagnostics:
        where = f"line {d.line}: " if d.line is not None else ""
        hint = f'<div class="hint">hint: {esc(d.hint)}</div>' if d.hint else ""
        items.append(f'<li class="{esc(d.severity)}">{esc(where)}{esc(d.severity)} '
                     f"{esc(d.code)}: {esc(d.message)}{hint}</li>")
    return f'<ul id="problems">{"".join(items)}</ul>' if items else ""


def render_html(plan: Plan, svg: str | None, depth: int | None = None,
                mark: str = "shapecheck") -> str:
    """The page for a plan; ``svg`` is the diagram as dot drew it (None without dot).
    ``mark`` goes into the generator meta tag near the top, where render looks for it before
    it replaces a file."""
    title = esc(plan.name)
    description = f'<p class="description">{esc(plan.description)}</p>' if plan.description \
        else ""
    summary = "<br>".join(esc(line) for line in total_lines(plan)) if plan.layers else \
        esc("the spec does not follow the schema: nothing could be planned")
    statuses = plan.marks()
    table = _table(plan, depth, statuses) if plan.layers else ""
    return PAGE.format(mark=esc(mark), title=title, description=description, summary=summary,
                       problems=_problems(plan), table=table, svg=_svg(svg),
                       data=_json(_details(plan, statuses)), style=STYLE, script=SCRIPT)


STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0; color: #222; }
header { padding: 12px 20px; border-bottom: 1px solid #ddd; }
h1 { font-size: 22px; margin: 0 0 4px; }
.description, .muted { color: #555; margin: 0 0 6px; }
.summary { font: 12px/1.5 ui-monospace, Menlo, Consolas, monospace; color: #444; }
/* The table takes the width its columns need and the diagram what is left, down to 420px;
   where both do not fit the diagram goes below the table. A table wider than the window
   scrolls in its own box, with both scroll bars in view and the column names on top. */
main { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 16px; padding: 12px 20px; }
main > section:first-child { flex: 0 1 auto; min-width: 0; max-width: 100%; }
#diagram { flex: 1 1 420px; min-width: 0; overflow: auto; max-height: 85vh;
           border: 1px solid #eee; }
#table { overflow: auto; max-height: 70vh; scrollbar-gutter: stable; }
#table thead th { position: sticky; top: 0; background: #fff; }
#diagram svg { max-width: 100%; height: auto; }
#diagram g.node { cursor: pointer; }
#diagram g.node.sel polygon, #diagram g.node.sel path, #diagram g.node.sel ellipse {
  stroke: #1155cc; stroke-width: 3px; }
table { border-collapse: collapse; font: 12px ui-monospace, Menlo, Consolas, monospace; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; white-space: pre; }
tbody tr { cursor: pointer; }
tbody tr:hover { background: #f3f7ff; }
tr.sel { background: #dbe7ff !important; }
tr.failed { background: #f4cccc; color: #990000; }
tr.holds { color: #990000; }
tr.skipped { color: #999; }
#detail { position: sticky; top: 0; border: 1px solid #ccd; border-radius: 6px; padding: 10px;
          background: #fbfcff; margin-bottom: 12px; min-height: 3em; }
#detail h2 { font-size: 16px; margin: 0 0 6px; }
#detail pre { font: 12px/1.5 ui-monospace, Menlo, Consolas, monospace; margin: 6px 0;
              white-space: pre-wrap; }
.error { color: #990000; } .warning { color: #b45f06; } .hint { color: #333; }
#problems { margin: 6px 0 0; padding-left: 18px; }
"""

# Plain script, no framework; user text only ever goes through textContent.
SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('plan-data').textContent);
  var detail = document.getElementById('detail');
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function nodeKey(g) {
    var t = g.querySelector('title');
    return t ? data.nodes[t.textContent] : undefined;
  }
  function select(key, scroll) {
    var layer = data.layers[key];
    if (!layer) return;
    document.querySelectorAll('tr.sel, g.node.sel').forEach(function (e) {
      e.classList.remove('sel');
    });
    var row = document.querySelector('tr[data-key="' + CSS.escape(key) + '"]');
    if (row) { row.classList.add('sel'); if (scroll) row.scrollIntoView({block: 'center'}); }
    document.querySelectorAll('#diagram g.node').forEach(function (g) {
      if (nodeKey(g) === key) g.classList.add('sel');
    });
    detail.textContent = '';
    detail.appendChild(el('h2', null, layer.name + '  (' + layer.type + ')'));
    var facts = [];
    if (layer.settings) facts.push(layer.settings);
    if (layer.input) facts.push('in ' + layer.input);
    if (layer.output) facts.push('out ' + layer.output);
    if (layer.weight) facts.push('weight ' + layer.weight);
    if (layer.status === 'ok') facts.push(layer.params.toLocaleString('en') + ' params, ' +
                                          layer.macs.toLocaleString('en') + ' MACs');
    if (layer.rf) facts.push('receptive field ' + layer.rf);
    if (layer.line) facts.push('line ' + layer.line);
    detail.appendChild(el('div', 'muted', facts.join(' · ')));
    layer.problems.forEach(function (p) {
      detail.appendChild(el('div', p.severity, p.severity + ' ' + p.code + ': ' + p.message));
      if (p.hint) detail.appendChild(el('div', 'hint', 'hint: ' + p.hint));
    });
    var pre = el('pre', 'explain', layer.explain.length ? layer.explain.join('\\n') :
                 (layer.status === 'ok' ? 'nothing to compute: the shape passes through'
                  : layer.status === 'failed' ? 'the network fails here (above: why)'
                  : layer.status === 'holds' ? 'a layer inside this block fails (marked red)'
                  : 'not planned: the network fails before it'));
    detail.appendChild(pre);
    document.body.setAttribute('data-selected', key);
  }
  document.querySelectorAll('tbody tr').forEach(function (row) {
    row.addEventListener('click', function () { select(row.getAttribute('data-key'), false); });
    row.addEventListener('keydown', function (e) {
      if (e.key === 'Enter') select(row.getAttribute('data-key'), false);
    });
  });
  document.querySelectorAll('#diagram g.node').forEach(function (g) {
    g.addEventListener('click', function () {
      var key = nodeKey(g);
      if (key !== undefined) select(key, true);
    });
  });
  if (data.open) select(data.open, true);
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{mark}">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · shapecheck</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
{description}
<div class="summary">{summary}</div>
{problems}
</header>
<main>
<section>
<div id="detail"><span class="muted">Click a layer (a row or a node) to see its arithmetic.</span></div>
<div id="table">{table}</div>
</section>
<section id="diagram">{svg}</section>
</main>
<script type="application/json" id="plan-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
