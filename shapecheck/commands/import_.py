"""`shapecheck import FILE:NAME --input CxHxW`: a PyTorch module written as a spec.

NAME is an nn.Module class that needs no arguments, or a function that returns a module. The
file is executed (import runs your code) and the module traced with torch.fx; the spec is
written to `-o FILE` (default: `<name>.yaml` in the current folder; `-o -` prints it), planned,
and summed up in one line. A file that shapecheck did not write is never overwritten without
--force.

Exit codes: 0 written; 1 shapecheck's plan disagrees with the shapes torch gives (a bug,
please report); 2 usage or input error (no such file or name, a class that needs arguments, a
forward that cannot be traced or has no spec, a bad --input, a file in the way), and then
nothing is written. torch is imported only when the command runs."""

from __future__ import annotations

import argparse
import contextlib
import sys
from functools import partial
from pathlib import Path

from ..core.atomic import atomic_write, folder_problem, replace_problem
from . import EXIT_INVALID, EXIT_OK, fail, input_shape


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import", help="write a spec from a PyTorch module (runs the module's file)",
        description="Trace a PyTorch module with torch.fx and write it as a spec: layers named "
        "after the module's attributes, blocks for its residual adds, concatenations, gates "
        "and splits, and the source line of each layer as a comment. FILE is executed: import "
        "runs its code.")
    p.add_argument("target", metavar="FILE:NAME",
                   help="a Python file and an nn.Module class (or a function returning a "
                   "module) in it that needs no arguments, such as model.py:Net")
    p.add_argument("--input", type=input_shape, required=True, metavar="CxHxW",
                   help="the input shape to trace with, such as 1x28x28")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write the spec; '-' prints it. Default: <name>.yaml in the "
                   "current folder")
    p.add_argument("--force", action="store_true",
                   help="overwrite FILE even if shapecheck did not write it")
    p.set_defaults(run=run)


_fail = partial(fail, "import", keep="\n")


def _is_imported(path: Path) -> bool:
    from ..importer.writer import MARKER

    try:
        with open(path, "rb") as f:
            return f.readline(256).startswith(MARKER.encode())
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    from ..core.spec import default_name
    from ..importer import ImportFailure, ImportMismatch, import_file
    from ..importer.loading import parse_target

    try:
        path, name = parse_target(args.target)
    except ImportFailure as e:
        return _fail(str(e))
    if args.output == "-":
        out = None
    else:
        out = Path(args.output) if args.output else Path(f"{default_name(name.lower())}.yaml")
        problem = (replace_problem(out, force=args.force, ours=_is_imported, inputs=[path],
                                   kind=" as an imported spec") or folder_problem(out))
        if problem:
            return _fail(problem)
    try:
        # The module's own prints go to stderr: stdout may be the spec (-o -).
        with contextlib.redirect_stdout(sys.stderr):
            imported = import_file(args.target, args.input)
    except ImportMismatch as e:
        return _fail(f"{e} (a bug in shapecheck: please report it)", EXIT_INVALID)
    except ImportFailure as e:
        return _fail(str(e))
    plan = imported.plan
    shapes = ["×".join(map(str, row.output_shape)) for row in plan.output_rows()]
    outputs = f"output {shapes[0]}" if len(shapes) == 1 else f"outputs {', '.join(shapes)}"
    layers = sum(1 for layer in plan.walk() if not layer.is_block)
    summary = (f"{plan.params:,} parameters, {plan.macs:,} MACs per sample, {outputs}, "
               f"{layers} layers")
    if plan.params != imported.module_params:
        summary += (f" (the module itself has {imported.module_params:,} parameters: a module "
                    "the forward calls twice is two layers, one it never calls is none)")
    if out is None:
        sys.stdout.write(imported.text)
        if not args.quiet:
            print(f"shapecheck import: {summary}", file=sys.stderr)
        return EXIT_OK
    try:
        atomic_write(out, imported.text)
    except OSError as e:
        return _fail(f"cannot write {out}: {e.strerror or e}")
    if not args.quiet:
        print(f"wrote {out}: {summary}")
    return EXIT_OK
