"""`shapecheck plan SPEC...`: every layer's shapes, weights, params and MACs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..diagnostics import InputError
from ..planner import plan
from ..table import render_table
from . import EXIT_INPUT, add_shape_overrides, depth, exit_code, print_diagnostics


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="print every layer's shapes, weights, params and MACs",
                       description="Plan one or more specs: output shapes, weight and bias "
                       "shapes, params and MACs, computed without torch.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (YAML)")
    p.add_argument("--format", choices=["table", "json", "markdown"], default="table")
    p.add_argument("--explain", action="store_true",
                   help="show the arithmetic behind each layer's shape")
    p.add_argument("--rf", action="store_true",
                   help="add a column with each layer's receptive field (input pixels)")
    p.add_argument("--depth", type=depth, metavar="N",
                   help="show blocks nested deeper than N as one row with their totals")
    p.add_argument("--strict", action="store_true", help="warnings fail the run (exit 1)")
    add_shape_overrides(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    plans, input_failed = [], False
    for path in args.specs:
        try:
            plans.append(plan(Path(path), batch=args.batch, input_shape=args.input,
                              scale=args.scale))
        except InputError as e:
            print_diagnostics([e.diagnostic])
            input_failed = True
    if args.format == "json":
        data = [p.to_dict() for p in plans]
        print(json.dumps(data[0] if len(args.specs) == 1 and data else data, indent=2))
    elif plans:
        print("\n\n".join(render_table(p, args.format == "markdown", args.explain, args.rf,
                                        args.depth) for p in plans))
    for p in plans:
        print_diagnostics(p.diagnostics)
    return EXIT_INPUT if input_failed else exit_code(plans, args.strict)
