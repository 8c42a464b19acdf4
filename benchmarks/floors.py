"""What the start-up and scale targets leave to shapecheck's own code, measured: the least
that shapecheck's two dependencies, YAML and pydantic, take for the same work.

    python -m benchmarks.floors                    # 11 rounds, a chain of 10,000 layers
    python -m benchmarks.floors --rounds 3 --layers 1000 --specs 100

1. Start-up, in fresh processes run in turn in each round:
   - floor: ``python -c "import yaml; from pydantic import BaseModel"``, the targets' unit;
   - one model: the floor, then one pydantic model of one int field, defined and used once,
     the process ending as shapecheck's console script ends (pydantic's plugin lookup skipped,
     no teardown). No command that validates with a pydantic model can take less.
   - ``shapecheck plan specs/lecture_cnn.yaml``.
   Then, in one more process, where ``plan``'s time goes: importing pydantic.fields (the first
   model definition does), defining shapecheck's pydantic models and building the validators
   of those the spec uses, and the rest. The split hooks pydantic's internal model
   construction, so it is reported as "n/a" where a pydantic version lacks those hooks.
2. Long networks, in this process: a generated chain (benchmarks.specgen.write_chain) read as
   libyaml's events and nothing more, then each layer's mapping validated by a one-field
   pydantic model, against ``shapecheck.plan`` of the same file and its table.
3. Many specs, in this process: the libyaml events of the spec files ``check`` is timed on
   (benchmarks.specgen.write_variants), against reading and planning them with shapecheck.

Section 1 reports medians of wall time and of the per-round ratios to the floor; sections 2
and 3 the best of --rounds, in milliseconds."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python benchmarks/floors.py`
    sys.path.insert(0, str(ROOT))

from benchmarks import byte_compiled, specgen

FLOOR = "import yaml; from pydantic import BaseModel"
# The floor and one model, ended as shapecheck's console script ends (cli.entry).
ONE_MODEL = """import os, sys, types
import yaml
from pydantic import BaseModel
loader = types.ModuleType("pydantic.plugin._loader")
loader.get_plugins = lambda: ()
sys.modules[loader.__name__] = loader
class One(BaseModel):
    x: int
One(x=1)
sys.stdout.flush()
os._exit(0)
"""
LECTURE = ROOT / "specs" / "lecture_cnn.yaml"


def _wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def startup(rounds: int) -> list[str]:
    python = [sys.executable]
    commands = {
        "floor": [*python, "-c", FLOOR],
        "one model": [*python, "-c", ONE_MODEL],
        "shapecheck plan": [*python, "-m", "shapecheck", "plan", str(LECTURE)],
    }
    for argv in commands.values():  # write the byte code first
        _wall(argv)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            times[name].append(_wall(argv))
    lines = [f"1. Start-up: medians of {rounds} rounds"]
    for name, walls in times.items():
        ratio = statistics.median(w / f for w, f in zip(walls, times["floor"]))
        lines.append(f"  {name:16s} {statistics.median(walls):6.3f} s  {ratio:5.3f} × the floor")
    split = subprocess.run([*python, "-m", "benchmarks.floors", "--split", str(LECTURE)],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    lines.append(split.stdout.rstrip())
    return lines


def split(spec: str) -> None:
    """Where `shapecheck plan` spends its time past the floor, in this (fresh) process."""
    import gc
    import types

    gc.disable()  # as the command runs
    import yaml  # noqa: F401  (the floor)
    from pydantic import BaseModel  # noqa: F401

    loader = types.ModuleType("pydantic.plugin._loader")
    loader.get_plugins = lambda: ()
    sys.modules[loader.__name__] = loader
    start = time.perf_counter()
    import pydantic.fields  # noqa: F401  (what the first model definition imports)

    fields = time.perf_counter() - start
    calls: list[tuple[str, str, float]] = []  # (define or build, the model's module, seconds)
    hooked = _hook_models(calls)
    sys.argv = ["shapecheck", "plan", spec]
    start = time.perf_counter()
    from shapecheck.cli import _main

    with contextlib.redirect_stdout(io.StringIO()):
        _main(None)
    run = time.perf_counter() - start
    print(f"  in one process: importing pydantic.fields {1000 * fields:.1f} ms, then the "
          f"command {1000 * run:.1f} ms, of which")
    if not hooked:
        print("    the pydantic models' share: n/a (this pydantic version lacks the hooks)")
    else:
        spent = {what: sum(t for w, _, t in calls if w == what) for what in ("define", "build")}
        count = {what: sum(w == what for w, _, _ in calls) for what in ("define", "build")}
        models = spent["define"] + spent["build"]
        print(f"    {count['define']} pydantic models defined in {1000 * spent['define']:.1f} ms "
              f"(the ones not deferred built with them), {count['build']} deferred validators "
              f"built in {1000 * spent['build']:.1f} ms: {1000 * models:.1f} ms in all")
        by_module: dict[str, float] = {}
        for _, module, t in calls:
            by_module[module] = by_module.get(module, 0.0) + t
        print("    by module: " + ", ".join(
            f"{module} {1000 * t:.1f} ms"
            for module, t in sorted(by_module.items(), key=lambda item: -item[1])))
        print(f"    the rest (shapecheck's modules, argparse, reading, planning, printing) "
              f"{1000 * (run - models):.1f} ms")
    sys.stdout.flush()
    os._exit(0)


def _hook_models(calls: list) -> bool:
    """Time pydantic's model definitions and deferred validator builds, with the module of each
    model (outermost calls only: a model built while another is defined counts once)."""
    try:
        from pydantic._internal import _model_construction as mc

        define, build = mc.ModelMetaclass.__new__, mc.complete_model_class
    except (ImportError, AttributeError):
        return False
    depth = [0]

    def timed(what, f, module_of):
        def wrapper(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    calls.append((what, module_of(args), time.perf_counter() - start))
        return wrapper

    # ModelMetaclass.__new__(mcs, name, bases, namespace); complete_model_class(cls, ...)
    mc.ModelMetaclass.__new__ = timed("define", define, lambda a: a[3].get("__module__", "?"))
    mc.complete_model_class = timed("build", build, lambda a: a[0].__module__)
    return True


def _events(texts: list[str]) -> int:
    """Read each text as libyaml's events, building nothing; the number of events."""
    import yaml

    n = 0
    for text in texts:
        parser = yaml.CSafeLoader(text)
        try:
            while parser.check_event():
                parser.get_event()
                n += 1
        finally:
            parser.dispose()
    return n


def _best(f, rounds: int) -> float:
    import gc

    f()  # first uses (the models of the layer kinds met) are start-up, section 1's
    best = float("inf")
    for _ in range(rounds):
        gc.disable()  # as shapecheck loads and plans
        try:
            start = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return best


def long_network(layers: int, rounds: int, folder: Path) -> list[str]:
    import yaml
    from pydantic import BaseModel

    import shapecheck
    from shapecheck.outputs.table import render_table

    path = specgen.write_chain(folder / "chain.yaml", layers)
    text = path.read_text(encoding="utf-8")

    class Layer(BaseModel):
        type: str
        out_channels: int = 0
        kernel_size: int = 0
        padding: int = 0

    def validated():
        data = yaml.load(text, Loader=yaml.CSafeLoader)
        return [Layer.model_validate(x if isinstance(x, dict) else {"type": x})
                for x in data["layers"]]

    events = _best(lambda: _events([text]), rounds)
    pydantic_only = _best(lambda: [Layer.model_validate({"type": "conv2d", "out_channels": 8})
                                   for _ in range(layers)], rounds)
    whole = _best(validated, rounds)
    planned = _best(lambda: render_table(shapecheck.plan(path)), rounds)
    per = 1e6 / layers
    return [f"2. A chain of {layers:,} layers, best of {rounds}, in this process"] + [
        f"  {label:30s} {1000 * t:7.1f} ms  ({per * t:5.1f} µs a layer)" for label, t in (
            ("libyaml's events only", events),
            ("one pydantic validation each", pydantic_only),
            ("yaml.CSafeLoader + validation", whole),
            ("shapecheck.plan + table", planned))]


def many_specs(n: int, rounds: int, folder: Path) -> list[str]:
    import shapecheck

    paths = specgen.write_variants(folder / "specs", n)
    texts = [p.read_text(encoding="utf-8") for p in paths]

    def check():
        for p in paths:
            try:
                shapecheck.plan(p)
            except shapecheck.SpecError:
                pass

    events = _best(lambda: _events(texts), rounds)
    planned = _best(check, rounds)
    return [f"3. {n:,} spec files, best of {rounds}, in this process (one core)"] + [
        f"  {label:30s} {1000 * t:7.1f} ms" for label, t in (
            ("libyaml's events only", events), ("shapecheck: read and plan", planned))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--layers", type=int, default=10_000)
    parser.add_argument("--specs", type=int, default=1_000)
    parser.add_argument("--split", metavar="SPEC", help=argparse.SUPPRESS)  # section 1's child
    args = parser.parse_args(argv)
    if args.split:
        split(args.split)
    cleared = byte_compiled()
    if cleared:
        print(cleared)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load} at the start")
    for line in startup(args.rounds):
        print(line, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for line in long_network(args.layers, args.rounds, Path(tmp)):
            print(line, flush=True)
        for line in many_specs(args.specs, args.rounds, Path(tmp)):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
