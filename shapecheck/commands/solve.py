"""`shapecheck solve SPEC...`: the input sizes a network accepts, for H and for W."""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from ..core.diagnostics import Diagnostic, InputError
from ..core.inputsizes import TooCostly, Unsolvable, describe, plan_near, solve
from ..core.planner import plan
from ..core.spec import default_name
from ..outputs.report import printable
from . import EXIT_INPUT, EXIT_INVALID, EXIT_OK, add_shape_overrides, print_diagnostics

MAX_UPTO = 1_000_000  # the sizes --upto lists: a longer list is a document nobody reads


def upto(text: str) -> int:
    if text.isascii() and text.isdigit() and len(text) <= 7 and 0 < int(text) <= MAX_UPTO:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive int up to {MAX_UPTO:,}, "
                                     f"got {text[:40]!r}")


def add_parser(sub) -> None:
    p = sub.add_parser("solve", help="which input sizes the network accepts",
                       description="Work out, for H and for W (the other held at the spec's "
                       "size), every input size the network accepts: the smallest, the ranges "
                       "and the period, and which sizes leave pixels unused. Exact: it reasons "
                       "over the layers instead of trying sizes.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (YAML)")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="text (default) or json")
    p.add_argument("--upto", type=upto, default=None, metavar="N",
                   help=f"JSON: also list every accepted size up to N (at most {MAX_UPTO:,})")
    add_shape_overrides(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Text: each result, or the errors that stop it, on stdout. JSON: one document, a spec
    that cannot be solved included (``axes`` null, with its ``reason`` and ``diagnostics``)."""
    code, out = EXIT_OK, []
    as_json = args.format == "json"

    def failed(name: str, path: str, reason: str, diagnostics: list) -> None:
        if as_json:
            out.append({"name": name, "file": path, "axes": None, "reason": reason or None,
                        "diagnostics": [d.to_dict() for d in diagnostics]})
        else:
            print_diagnostics(diagnostics)
            if reason:
                print(f"{printable(path)}: not solved: {printable(reason)}")

    for path in args.specs:
        try:
            result = plan(Path(path), batch=args.batch, input_shape=args.input,
                          scale=args.scale)
        except InputError as e:
            failed(default_name(Path(path).stem), path, "", [e.diagnostic])
            code = EXIT_INPUT
            continue
        # A spec whose only errors come from its size is solved from a size near it that
        # plans: which sizes work is exactly what its author wants to know.
        near = None if result.valid else plan_near(result, partial(_replan, Path(path), args,
                                                                   result.input_dims))
        try:
            solutions = solve(near, spec_plan=result) if near else solve(result)
        except TooCostly as e:  # refused as the loader refuses what costs too much
            failed(result.name, path, "", [Diagnostic("error", "SC004", str(e), file=path)])
            code = EXIT_INPUT
            continue
        except Unsolvable as e:
            failed(result.name, path, str(e), result.errors)
            # A valid spec is not made invalid by what solve cannot do: that is exit 2.
            code = max(code, EXIT_INVALID if not result.valid else EXIT_INPUT)
            continue
        if near is not None:
            code = max(code, EXIT_INVALID)  # the spec as written is still invalid
        if as_json:
            out.append({"name": result.name, "file": result.source,
                        "axes": [_json(s, args.upto) for s in solutions],
                        **({"planned_at": list(near.input_dims[2:]),
                            "diagnostics": [d.to_dict() for d in result.diagnostics]}
                           if near is not None else {})})
        else:
            shape = "×".join(map(str, result.input_dims[1:]))
            if near is not None:
                print_diagnostics(result.diagnostics)
                shape += (f", which fails; solved from {near.input_dims[2]}×"
                          f"{near.input_dims[3]}, which plans")
            out.append("\n".join([f"{result.name}: input {shape}  ({printable(path)})",
                                  *(line for s in solutions for line in describe(s))]))
    if as_json:
        print(json.dumps(out[0] if len(args.specs) == 1 and out else out, indent=2))
    elif out:
        print("\n\n".join(out))
    return code


def _replan(path: Path, args: argparse.Namespace, dims: tuple, h: int, w: int):
    """The spec planned at H×W, the channels and the rest as asked."""
    return plan(path, batch=args.batch, input_shape=(dims[1], h, w), scale=args.scale)


def _json(s, upto: int | None) -> dict:
    p, residues = s.residues(lambda r: True)
    d = {
        "axis": s.axis,
        "other": s.other,
        "smallest": s.smallest,
        "bounded": s.bounded,
        # below periodic_from, the accepted sizes are listed; from it on, every size whose
        # remainder mod period is in residues
        "listed": s.accepted_below(s.listed_until()),
        "periodic_from": None if s.bounded else s.listed_until(),
        "period": None if s.bounded else p,
        "residues": None if s.bounded else residues,
    }
    if upto is not None:
        d["accepted"] = s.accepted_below(upto + 1)  # from the classes: no size is tried
    return d
