"""`shapecheck check [FILE...]`: check many specs with one start-up and print only the problems.

Meant for pre-commit hooks and CI: one line per problem (`file:line:col: error[SC201]: ...`, with
its hint), or GitHub Actions annotations, then one summary line; with -q, the errors only. With
no files it checks every *.yaml / *.yml under specs/. A spec with scales is checked at every one
of them, unless --scale names one. Many files are shared among forked processes (-j)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.diagnostics import Diagnostic, InputError
from ..core.loader import MAX_LAYERS, SpecFile
from ..core.planner import plan
from ..outputs.report import format_github, printable, summary
from . import EXIT_INPUT, EXIT_INVALID, EXIT_OK, print_diagnostics

if TYPE_CHECKING:
    import argparse

DEFAULT_DIR = "specs"
SUFFIXES = (".yaml", ".yml")
MIN_FILES_PER_JOB = 16  # below this a process costs more than it saves
# The layers one file's scales may plan in all: EfficientNet's 8 scales plan 3,000; a file
# declaring thousands of scales would otherwise cost their number times the network.
MAX_CHECKED_LAYERS = 2 * MAX_LAYERS


# A command line of files alone, as add_parser's parser reads it (cli._plain).
PLAIN = ("files", {"strict": False, "scale": None, "jobs": None, "format": "text"})


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check", help="check many specs; print only the problems (for pre-commit and CI)",
        description="Check spec files and print only their problems, then one summary line. "
        "A folder stands for every *.yaml / *.yml file under it. With no files, check every "
        f"*.yaml / *.yml file under {DEFAULT_DIR}/. Exit 0: all valid (warnings allowed); "
        "1: a spec is invalid (or has warnings, with --strict); 2: a file cannot be read as a "
        "spec (missing, not YAML, not a spec).")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help=f"spec files or folders (default: every YAML file under {DEFAULT_DIR}/)")
    p.add_argument("--strict", action="store_true", help="warnings fail the run (exit 1)")
    p.add_argument("--scale", metavar="NAME",
                   help="check specs at this scale only (default: every scale a spec declares)")
    p.add_argument("-j", "--jobs", type=int, metavar="N",
                   help="check in N processes (default: one per processor; many files only)")
    p.add_argument("--format", choices=["text", "github"], default="text",
                   help="text: file:line:col: error[SC...]: message (default); "
                   "github: GitHub Actions annotations (::error file=...,line=...::...)")
    p.set_defaults(run=run)


def spec_files(folder: Path) -> list[Path]:
    """Every *.yaml / *.yml file under a folder, recursively, sorted by path components (the
    same order on every Python version and platform)."""
    found = (p for p in folder.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    return sorted(found, key=lambda p: p.parts)


def _targets(names: list[str]) -> list[Path] | None:
    """The files to check, in order and without repeats; None (after saying why) if none can be
    chosen."""
    if not names:
        folder = Path(DEFAULT_DIR)
        if not folder.is_dir():
            print(f"shapecheck check: no files given and no {DEFAULT_DIR}/ folder in "
                  f"{printable(Path.cwd())}; name the spec files to check", file=sys.stderr)
            return None
        files = spec_files(folder)
        if not files:
            print(f"shapecheck check: no *.yaml / *.yml files under {DEFAULT_DIR}/",
                  file=sys.stderr)
        return files
    files: list[Path] = []
    for name in names:
        path = Path(name)
        # A folder stands for its YAML files; anything else (a missing file too) is checked
        # as a spec, so that the loader says what is wrong with it.
        found = spec_files(path) if path.is_dir() else [path]
        if not found:  # a check of nothing must not pass for a check of the folder
            print(f"shapecheck check: no *.yaml / *.yml files under {printable(name)}; name "
                  "spec files, or folders that hold them", file=sys.stderr)
            return None
        files += found
    return list(dict.fromkeys(files))


def _other_scales(spec: SpecFile, first) -> list[Diagnostic]:
    """The problems a spec has only at its other scales, each saying at which."""
    seen = {(d.code, d.line, d.column, d.message) for d in first.diagnostics}
    found = []
    planned = len(first.layers)
    for scale in first.scales:
        if scale == first.scale:
            continue
        if planned > MAX_CHECKED_LAYERS:
            raise InputError(Diagnostic(
                "error", "SC004", f"checking each of the spec's {len(first.scales):,} scales "
                f"would plan more than {MAX_CHECKED_LAYERS:,} layers", file=spec.source,
                hint="check the scales you need, one at a time, with --scale NAME"))
        result = plan(spec, scale=scale)
        planned += sum(1 for _ in result.walk())
        for d in result.diagnostics:
            if (d.code, d.line, d.column, d.message) not in seen:
                seen.add((d.code, d.line, d.column, d.message))
                found.append(d.replace(message=f"{d.message} [scale {scale}]"))
    return found


def _check(path: Path, scale: str | None) -> tuple[bool, list[Diagnostic]]:
    """(readable, the problems) of one spec file; at every scale unless ``scale`` names one."""
    try:
        spec = SpecFile(path)
        result = plan(spec, scale=scale)
        if scale is None:
            return True, result.diagnostics + _other_scales(spec, result)
    except InputError as e:  # missing, not UTF-8, not YAML, not a spec, too large: exit 2
        return False, [e.diagnostic]
    return True, result.diagnostics


def _check_all(files: list[Path], scale: str | None, jobs: int):
    """The result of every file, in order. Many files are shared among ``jobs`` processes,
    this one and others forked from it (no second start-up); few are not worth a process."""
    if jobs < 2 or len(files) < MIN_FILES_PER_JOB * 2 or not hasattr(os, "fork"):
        yield from (_check(path, scale) for path in files)
        return
    yield from _shared(files, scale, min(jobs, len(files) // MIN_FILES_PER_JOB))


def _shared(files: list[Path], scale: str | None, jobs: int):
    """Process i of ``jobs`` checks files i, i + jobs, i + 2·jobs …: this one (i = 0) its
    own, in turn with reading each other's results, in order, from a pipe. (A pool of
    workers cost about a third of the floor's time to import, start and stop.)"""
    sys.stdout.flush()  # else a child would print again what this process holds unwritten
    sys.stderr.flush()
    pipes: list[int] = []
    children: list[int] = []
    try:
        for i in range(1, jobs):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                _work(files[i::jobs], scale, write_end)  # never returns
            os.close(write_end)
            children.append(pid)
            pipes.append(read_end)
        for k, path in enumerate(files):
            yield _check(path, scale) if k % jobs == 0 else _receive(pipes[k % jobs - 1])
    finally:
        for fd in pipes:
            os.close(fd)
        for pid in children:  # ended, unless this one stops early (Ctrl-C)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)


def _work(files: list[Path], scale: str | None, fd: int) -> None:
    """In a forked process: each file's result to ``fd``; then exit. Ctrl-C is the first
    process's to handle: it stops this one without a word."""
    import pickle
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = 1
    try:
        for path in files:
            data = pickle.dumps(_check(path, scale), pickle.HIGHEST_PROTOCOL)
            data = len(data).to_bytes(8, "big") + data
            while data:
                data = data[os.write(fd, data):]
        code = 0
    except (KeyboardInterrupt, BrokenPipeError):  # stopped, or the first process is gone
        pass
    except BaseException:  # noqa: BLE001 - a bug: said, and the first process stops
        traceback.print_exc()
    finally:
        os._exit(code)  # not the interpreter's exit: that is the first process's


def _receive(fd: int):
    """The next result a forked process sent (_work)."""
    import pickle

    def take(n: int) -> bytes:
        chunks = []
        while n:
            chunk = os.read(fd, n)
            if not chunk:
                raise RuntimeError("a process checking the files stopped (its error is above)")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    return pickle.loads(take(int.from_bytes(take(8), "big")))


def default_jobs() -> int:
    """The processors this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run(args: argparse.Namespace) -> int:
    files = _targets(args.files)
    if files is None:
        return EXIT_INPUT
    if args.jobs is not None and args.jobs < 1:
        print(f"shapecheck check: --jobs {args.jobs}: give 1 or more", file=sys.stderr)
        return EXIT_INPUT
    form = format_github if args.format == "github" else None
    invalid = warnings = unreadable = 0
    failed = False
    jobs = default_jobs() if args.jobs is None else args.jobs
    for readable, diagnostics in _check_all(files, args.scale, jobs):
        print_diagnostics(diagnostics, strict=args.strict, form=form)
        if not readable:
            unreadable += 1
            continue
        warnings += sum(not d.is_error for d in diagnostics)
        if any(d.is_error for d in diagnostics):
            invalid += 1
            failed = True
        elif args.strict and any(not d.is_error for d in diagnostics):
            failed = True
    line = summary(len(files), invalid, warnings)
    if unreadable:
        line += f", {unreadable} unreadable"
    if not args.quiet:
        print(line)
    if unreadable:
        return EXIT_INPUT
    return EXIT_INVALID if failed else EXIT_OK
