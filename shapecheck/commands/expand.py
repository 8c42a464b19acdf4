"""`shapecheck expand SPEC`: the spec with its templates, repeats and scale written out as
plain layers, every layer named: what a template turned into, to review and to diff. Planning
the output gives the same plan as planning SPEC."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..core.graph import Like
from ..core.loader import SpecError, load_spec
from ..core.spec import Spec
from ..outputs.report import printable
from . import EXIT_INVALID, EXIT_OK, add_scale, print_diagnostics

INDENT = "  "


def add_parser(sub) -> None:
    p = sub.add_parser("expand", help="print the spec with its templates written out",
                       description="Print SPEC as a plain spec: every template use, repeat "
                       "and expression written out at the chosen scale, every layer named.")
    p.add_argument("spec", metavar="SPEC", help="spec file (YAML)")
    p.add_argument("--explain", action="store_true",
                   help="show, above each layer, the arithmetic that made its values")
    add_scale(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(Path(args.spec), scale=args.scale)
    except SpecError as e:
        print_diagnostics(e.diagnostics)
        return EXIT_INVALID
    print(to_yaml(spec, explain=args.explain), end="")
    return EXIT_OK


def _flow(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False,
                          width=float("inf"), allow_unicode=True).strip()
    return text.removesuffix("\n...")  # PyYAML ends a lone scalar as a document


def _entry(layer, real=lambda name: name) -> dict:
    """A layer as its YAML mapping: type, name, then the tensors it reads and the fields the
    spec gave. ``real`` gives the layer a name read by stands for (a use's name: its last)."""
    entry = {"type": layer.type, "name": layer.name}
    if layer.inputs is not None:
        names = [real(name) for name in layer.inputs]
        entry["from"] = names[0] if len(names) == 1 else names
    for key, value in layer.given_args().items():
        if layer.is_block and (key in layer.list_fields or key == layer.lists_field):
            continue
        if isinstance(value, Like):
            value = {"like": real(value.name)}
        entry[key] = list(value) if isinstance(value, tuple) else value
    return entry


def _real_names(spec: Spec):
    """The layer a name in `from:`, `like` or `outputs:` stands for, once the uses are
    written out: a use's name is its last layer."""
    names = {layer.name for layer in spec.layers}
    return lambda name: name if name in names or name not in spec.aliases else \
        spec.layers[spec.aliases[name]].name


def _layers(layers: list, indent: str, path: tuple, spec: Spec, explain: bool,
            real) -> list[str]:
    """The layers' lines; ``real`` gives the layer a name read by stands for (_real_names)."""
    lines = []
    for i, layer in enumerate(layers):
        here = (*path, i)
        if explain:
            # A note repeats spec text (an expression may hold a line break): one line each.
            lines += [f"{indent}# {printable(note)}" for note in spec.notes.get(here, [])]
        if not layer.is_block:
            lines.append(f"{indent}- {_flow(_entry(layer, real))}")
            continue
        head, *rest = [f"{k}: {_flow(v)}" for k, v in _entry(layer, real).items()]
        lines += [f"{indent}- {head}", *(f"{indent}  {line}" for line in rest)]
        for key, branch in layer.branch_lists():
            if isinstance(key, str):
                lines.append(f"{indent}  {key}:" + ("" if branch else " []"))
                lines += _layers(branch, indent + INDENT * 2, (*here, key), spec, explain,
                                 real)
            else:
                if key == 0:
                    lines.append(f"{indent}  {layer.lists_field}:")
                lines.append(f"{indent}    -" + ("" if branch else " []"))
                lines += _layers(branch, indent + INDENT * 3, (*here, key), spec, explain,
                                 real)
    return lines


def to_yaml(spec: Spec, explain: bool = False) -> str:
    """The completed spec as plain YAML."""
    source = printable(Path(spec.source).name) if spec.source else "spec"
    lines = [f"# {source} expanded by shapecheck"
             + (f" at scale {printable(spec.scale)}" if spec.scale else "")]
    head = {"name": spec.name}
    if spec.description:
        head["description"] = spec.description
    for key, value in head.items():
        lines.append(f"{key}: {_flow(value)}")
    lines.append(f"input: {_flow(spec.input.model_dump(mode='json'))}")
    if spec.ignore:  # the warnings the spec accepts stay accepted
        lines.append(f"ignore: {_flow(list(spec.ignore))}")
    lines.append("layers:")
    real = _real_names(spec)
    lines += _layers(spec.layers, INDENT, (), spec, explain, real)
    if spec.outputs:
        lines.append(f"outputs: {_flow(list(map(real, spec.outputs)))}")
    if spec.train is not None:
        train = spec.train.model_dump(mode="json", exclude_unset=True)
        lines.append("train: " + _flow(train))
    return "\n".join(lines) + "\n"
