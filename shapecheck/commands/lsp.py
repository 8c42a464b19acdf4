"""`shapecheck lsp`: a Language Server Protocol server on stdio, for editors (docs/editors.md).

It needs pygls, the `lsp` extra: a missing one is the CLI's usual message and exit code 2."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lsp", help="a language server on stdio: diagnostics, shapes, hover and completion "
        "in an editor",
        description="Serve the Language Server Protocol on stdin and stdout, for editors: "
        "every diagnostic of `plan` as you type, each layer's output shape beside its line, "
        "the arithmetic on hover, completion, go to definition of templates and quick fixes. "
        "Started by the editor, not by hand; set-up in docs/editors.md. Needs the lsp extra.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import pygls  # noqa: F401 - first: a missing extra is named by its package, pygls

    from ..lsp.server import serve

    return serve()
