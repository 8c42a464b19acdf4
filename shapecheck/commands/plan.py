"""`shapecheck plan SPEC...`: every layer's shapes, weights, params and MACs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..core.diagnostics import InputError
from ..core.plan import Plan
from ..core.planner import plan
from ..core.spec import default_name
from ..outputs.table import render_table
from . import EXIT_INPUT, add_shape_overrides, depth, exit_code, print_diagnostics

if TYPE_CHECKING:
    import argparse

# A command line of spec files alone, as add_parser's parser reads it (cli._plain).
PLAIN = ("specs", {"format": "table", "explain": False, "rf": False, "depth": None,
                   "strict": False, "scale": None, "batch": None, "input": None})


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="print every layer's shapes, weights, params and MACs",
                       description="Plan one or more specs: output shapes, weight and bias "
                       "shapes, params and MACs, computed without torch.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (YAML)")
    p.add_argument("--format", choices=["table", "json", "markdown"], default="table",
                   help="table (default), json (the JSON plan: a list for several files) or "
                   "markdown")
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
    """Each spec's table then its diagnostics, all on stdout; with --format json, one JSON
    document whose plans carry their diagnostics (a file that cannot be read too), and nothing
    else; with -q, only the errors."""
    plans, unreadable = [], set()
    for path in args.specs:
        try:
            plans.append(plan(Path(path), batch=args.batch, input_shape=args.input,
                              scale=args.scale))
        except InputError as e:
            plans.append(Plan(default_name(Path(path).stem), None, path, args.batch or "N", None,
                              [], [e.diagnostic]))
            unreadable.add(len(plans) - 1)
    if args.format == "json" and not args.quiet:
        import json  # only here: start-up counts

        data = [p.to_dict() for p in plans]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for i, p in enumerate(plans):
            if i not in unreadable and not args.quiet:
                print(("\n" if i else "") + render_table(p, args.format == "markdown",
                                                          args.explain, args.rf, args.depth))
            print_diagnostics(p.diagnostics, strict=args.strict)
    return EXIT_INPUT if unreadable else exit_code(plans, args.strict)
