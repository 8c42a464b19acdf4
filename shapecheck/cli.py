"""The `shapecheck` command: argument parsing, dispatch and exit codes. No logic lives here.

Exit codes (every command): 0 the spec is valid (warnings allowed); 1 the spec is invalid, or
has warnings under --strict; 2 usage or input error (no such file, not YAML, not a mapping).

Output (docs/cli.md): what a command finds, its diagnostics included, goes to stdout; stderr
carries what is about the run itself (usage errors, a missing extra, a failed write, notes)."""

from __future__ import annotations

import gc
import os
import sys
from types import SimpleNamespace

from . import __version__

COMMANDS = ["plan", "check", "expand", "solve", "render", "build", "import_", "eval", "export",
            "schema", "lsp"]
# Packages of the extras, by the extra that installs them.
OPTIONAL = {"torch": "torch", "numpy": "torch", "matplotlib": "torch", "PIL": "torch",
            "graphviz": "render", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
            "pygls": "lsp", "lsprotocol": "lsp"}
# Commands that hold nothing to release at exit (no threads, child processes or open files):
# the console script ends them without the interpreter's teardown.
QUICK_EXIT = {"plan", "check", "expand", "solve", "schema"}
COLOR_CHOICES = ["auto", "always", "never"]


def _global_options(parser, default) -> None:
    """--color and -q, accepted before the command and after it. After it, the default is
    SUPPRESS, so that the command's parser does not reset what was given before."""
    parser.add_argument("--color", "--colour", choices=COLOR_CHOICES, metavar="WHEN",
                        default=default("auto"),
                        help="colour diagnostics: auto (default: on a terminal, unless NO_COLOR "
                        "is set or TERM=dumb), always, never")
    strict = "--strict" in parser._option_string_actions  # plan, check, render ...
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="print only errors (and, with --strict, warnings); the exit code "
                        "says whether the spec is valid" if strict else
                        "print only errors; the exit code says whether the command succeeded")


def _command_of(argv: list[str]) -> str | None:
    """The module (of COMMANDS) of the command a command line names, the first word that is
    not an option; None for anything else (then every command's parser is built)."""
    words = iter(argv)
    for word in words:
        if word == "--color" or word == "--colour":
            next(words, None)
        elif word == "--" or not word.startswith("-"):
            word = next(words, None) if word == "--" else word
            # a command named by a Python keyword lives in a module with a trailing _
            return next((name for name in COMMANDS if name.rstrip("_") == word), None)
    return None


def build_parser(commands: list[str] | None = None):
    """The argument parser, with the parsers of ``commands`` (default: all). Only the command
    modules named are imported: a run needs its own command's parser only."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(
        prog="shapecheck",
        description="Check a CNN's shapes, parameters and MACs from a YAML spec before PyTorch does.",
    )
    parser.add_argument("--version", action="version", version=f"shapecheck {__version__}")
    _global_options(parser, lambda value: value)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if commands is None else commands:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.commands.{name}":
                raise
            continue
        module.add_parser(sub)
        _global_options(sub.choices[name.rstrip("_")], lambda value: argparse.SUPPRESS)
    parser.set_defaults(commands=sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _main(argv)[0]


def entry() -> None:
    """The console script (and `python -m shapecheck`): main(), then, for the commands in
    QUICK_EXIT, an exit without the interpreter's teardown of every module (about 15 ms,
    more than planning a small spec takes), after flushing what was printed."""
    _without_pydantic_plugins()
    code, command = _main(None, quick_exit=True)
    if command not in QUICK_EXIT:
        sys.exit(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `shapecheck plan ... | head`
        pass
    except (OSError, ValueError):  # a full disk; a closed stdout
        code = code or 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):  # closed after a broken pipe (_run)
        pass
    os._exit(code)


def _without_pydantic_plugins() -> None:
    """Let pydantic find no plugins in this process. It looks them up, when it builds its
    first validator, among the entry points of every installed distribution: importing
    importlib.metadata and scanning took longer than planning a spec. A plugin observes the
    validation an application does; the command's own validation of a spec has no use for
    one. Only the command does this: importing shapecheck leaves pydantic as it is."""
    name = "pydantic.plugin._loader"
    if name not in sys.modules:
        import types

        loader = types.ModuleType(name)
        loader.get_plugins = lambda: ()
        sys.modules[name] = loader


def _main(argv: list[str] | None, quick_exit: bool = False) -> tuple[int, str | None]:
    """The exit code, and the command run. Whatever a command prints (paths, names from a
    spec or a dataset, argparse echoing an argument) reaches the terminal escaped: no control
    sequence from the input gets through."""
    from .outputs.report import OUTPUT, PrintableStream

    # Start-up, and a run of the QUICK_EXIT commands, make many long-lived objects and no
    # garbage worth a collection; training and drawing collect as usual.
    collecting = gc.isenabled()
    gc.disable()
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PrintableStream(stdout), PrintableStream(stderr)
    saved = (OUTPUT.color, OUTPUT.quiet)
    command = None
    try:
        args = _parse(list(argv) if argv is not None else sys.argv[1:])
        command = args.command
        if collecting and command not in QUICK_EXIT:
            gc.enable()
        return _run(args), command
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        OUTPUT.color, OUTPUT.quiet = saved
        # Not before the quick exit: the collector, back on, would scan every object the
        # run made (a 10,000-layer plan: 2 % of its time), only for the process to end.
        if collecting and not (quick_exit and command in QUICK_EXIT):
            gc.enable()


def _parse(argv: list[str]):
    from .outputs.report import OUTPUT

    args = _plain(argv)
    if args is not None:
        OUTPUT.color, OUTPUT.quiet = args.color, args.quiet
        return args
    command = _command_of(argv)
    if command is not None:
        parser = build_parser([command])
    else:  # --version needs no command's parser; --help and mistakes need them all
        parser = build_parser([] if argv == ["--version"] else None)
        if not argv:  # a bare `shapecheck`: what it can do, not only a usage line
            parser.print_help(sys.stderr)
            sys.exit(2)
        word = _first_word(argv)
        if word is not None:
            parser.error(f"unknown command {word!r}" + _did_you_mean(
                word, [name.rstrip("_") for name in COMMANDS]))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage, not the top level's, says what it takes
        sub = args.commands[args.command]
        flags = [o for o in sub._option_string_actions if o.startswith("--")]
        first = next((u for u in unknown if u.startswith("-")), "")
        sub.error(f"unrecognized arguments: {' '.join(unknown)}"
                  + _did_you_mean(first.partition("=")[0], flags))
    OUTPUT.color, OUTPUT.quiet = args.color, args.quiet
    args.argv = argv  # the command line as given: `build --nproc` starts its workers with it
    return args


def _plain(argv: list[str]):
    """The arguments of `plan FILE...` or `check FILE...` with no option, without argparse:
    building its parser took a tenth of planning a small spec. The command's module gives
    the values its parser gives them (PLAIN); anything else goes through argparse."""
    import importlib

    if len(argv) < 2 or argv[0] not in ("plan", "check"):
        return None
    if any(word.startswith("-") for word in argv[1:]):  # an option, `-` or `--`
        return None
    module = importlib.import_module(f".commands.{argv[0]}", __package__)
    positional, defaults = module.PLAIN
    return SimpleNamespace(command=argv[0], color="auto", quiet=False, run=module.run,
                           argv=argv, **{positional: argv[1:]}, **defaults)


def _first_word(argv: list[str]) -> str | None:
    """The first word that is not an option (nor --color's value), if any."""
    words = iter(argv)
    for word in words:
        if word in ("--color", "--colour"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1) if word else []
    return f"; did you mean {close[0]}?" if close else ""


def _run(args) -> int:
    from .commands import EXIT_INPUT, print_diagnostics
    from .core.diagnostics import InputError, install_hint

    try:
        return args.run(args)
    except InputError as e:
        print_diagnostics([e.diagnostic])
        return EXIT_INPUT
    except ModuleNotFoundError as e:  # an optional dependency the command needs
        extra = OPTIONAL.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"shapecheck {args.command}: error: needs {e.name}: {install_hint(extra)}",
              file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `shapecheck plan ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    entry()
