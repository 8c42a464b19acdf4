"""The `shapecheck` command: argument parsing, dispatch and exit codes. No logic lives here.

Exit codes (every command): 0 the spec is valid (warnings allowed); 1 the spec is invalid, or
has warnings under --strict; 2 usage or input error (no such file, not YAML, not a mapping)."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .commands import EXIT_INPUT, print_diagnostics
from .diagnostics import InputError
from .report import PrintableStream

COMMANDS = ["plan", "check", "expand", "solve", "render", "build", "import_", "eval", "export",
            "schema"]
# Packages of the extras, by the extra that installs them.
OPTIONAL = {"torch": "torch", "numpy": "torch", "matplotlib": "torch", "PIL": "torch",
            "graphviz": "render", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx"}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="shapecheck",
        description="Check a CNN's shapes, parameters and MACs from a YAML spec before PyTorch does.",
    )
    parser.add_argument("--version", action="version", version=f"shapecheck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    parser.set_defaults(commands=sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Whatever a command prints (paths, names from a spec or a dataset, argparse echoing an
    # argument) reaches the terminal escaped: no control sequence from the input gets through.
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PrintableStream(stdout), PrintableStream(stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage, not the top level's, says what it takes
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    # The command line as given: `build --nproc` starts its workers with it.
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return args.run(args)
    except InputError as e:
        print_diagnostics([e.diagnostic])
        return EXIT_INPUT
    except ModuleNotFoundError as e:  # an optional dependency the command needs
        extra = OPTIONAL.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"shapecheck {args.command}: needs {e.name}: pip install 'shapecheck-cnn[{extra}]'",
              file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `shapecheck plan ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
