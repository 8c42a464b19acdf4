"""`shapecheck schema`: the JSON Schema of a spec file, for editors and check-jsonschema."""

from __future__ import annotations

import argparse
import sys

from . import EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of a spec file",
                       description="Print the JSON Schema of a spec file, generated from the "
                       "models shapecheck validates with. Point your editor at it for "
                       "completion and inline errors.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..outputs.schema import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK
