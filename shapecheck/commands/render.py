"""`shapecheck render SPEC -o net.svg`: draw the network with Graphviz (svg, png, pdf or dot).

The drawing is made from the Plan (see graph.py). The image is produced by Graphviz's `dot`
program into memory and then written atomically, so a failure never leaves a torn file. Where
`dot` is missing the DOT source is written instead, with a line on how to install Graphviz."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..atomic import atomic_write
from ..planner import plan
from . import EXIT_INPUT, add_shape_overrides, exit_code, print_diagnostics

FORMATS = ["svg", "png", "pdf", "dot"]
SUFFIXES = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
PNG_DPI = 144  # sharp on high-density screens; SVG and PDF are vector anyway

INSTALL_GRAPHVIZ = ("install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew "
                    "install graphviz; conda: conda install -c conda-forge graphviz)")


def add_parser(sub) -> None:
    p = sub.add_parser("render", help="draw the network as a diagram (svg, png, pdf or dot)",
                       description="Draw the network with Graphviz: a node per layer with its "
                       "settings, weight shape and params, the tensor shape on every edge, the "
                       "feature extractor and the classifier as two clusters. An invalid spec "
                       "is drawn up to the failing layer, which is red (exit 1).")
    p.add_argument("spec", metavar="SPEC", help="spec file (YAML)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write; the format follows the suffix (.svg .png .pdf .dot). "
                   "Default: SPEC's stem with the format's suffix, in the current folder")
    p.add_argument("--format", choices=FORMATS,
                   help="output format (default: from -o's suffix, else svg)")
    p.add_argument("--rankdir", choices=["TB", "LR"], default="TB",
                   help="layout direction: top to bottom (default) or left to right")
    p.add_argument("--strict", action="store_true", help="warnings fail the run (exit 1)")
    add_shape_overrides(p)
    p.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"shapecheck render: error: {message}", file=sys.stderr)
    return EXIT_INPUT


def _output(args: argparse.Namespace) -> tuple[Path, str] | str:
    """(path, format), or the reason they cannot be worked out."""
    if args.output is None:
        fmt = args.format or "svg"
        return Path(f"{Path(args.spec).stem}.{fmt}"), fmt
    out = Path(args.output)
    if out.is_dir():
        return f"{str(out)!r} is a folder; give a file name such as {str(out / 'net.svg')!r}"
    parent = out.parent
    if not parent.is_dir():
        return (f"the folder {str(parent)!r} does not exist (create it first)"
                if not parent.exists() else f"{str(parent)!r} is not a folder")
    by_suffix = SUFFIXES.get(out.suffix.lower())
    if args.format and by_suffix and args.format != by_suffix:
        return f"-o {out} asks for {by_suffix} but --format asks for {args.format}"
    fmt = args.format or by_suffix
    if fmt is None:
        return (f"cannot tell the format from {str(out)!r}: use a .svg, .png, .pdf or .dot "
                "suffix, or --format")
    return out, fmt


def run(args: argparse.Namespace) -> int:
    resolved = _output(args)
    if isinstance(resolved, str):
        return _fail(resolved)
    out, fmt = resolved
    try:
        import graphviz
    except ImportError:
        return _fail("drawing needs the graphviz package: pip install 'shapecheck[render]'")
    from ..graph import diagram

    p = plan(Path(args.spec), batch=args.batch, input_shape=args.input, scale=args.scale)
    print_diagnostics(p.diagnostics)
    code = exit_code([p], args.strict)

    g = diagram(p, args.rankdir, dpi=PNG_DPI if fmt == "png" else None)
    if fmt == "dot":
        failed = _write(out, g.source)
        if failed:
            return failed
        print(f"wrote {out}")
        return code
    if shutil.which("dot") is None:
        return _without_dot(out, fmt, g.source)
    try:
        data = g.pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        return _without_dot(out, fmt, g.source)
    except graphviz.CalledProcessError as e:
        stderr = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        return _fail(f"Graphviz's dot failed ({stderr[-1] if stderr else f'exit {e.returncode}'})"
                     f"; {out} was not written")
    failed = _write(out, data)
    if failed:
        return failed
    print(f"wrote {out}")
    return code


def _write(path: Path, data: bytes | str) -> int:
    try:
        atomic_write(path, data)
    except OSError as e:
        return _fail(f"cannot write {path}: {e.strerror or e}")
    return 0


def _without_dot(out: Path, fmt: str, source: str) -> int:
    dot_path = out.with_suffix(".dot")
    failed = _write(dot_path, source)
    if failed:
        return failed
    print(f"wrote {dot_path}")
    print(f"shapecheck render: Graphviz's dot program was not found, so {out} was not drawn: "
          f"{INSTALL_GRAPHVIZ}, then run `dot -T{fmt} {dot_path} -o {out}`", file=sys.stderr)
    return EXIT_INPUT
