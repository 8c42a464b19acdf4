"""Benchmarks: shapecheck against torchinfo, the meta device and a hand-written PyTorch loop.

    python -m benchmarks                          # everything, 5 interleaved rounds each
    python -m benchmarks --quick                  # tiny sizes, 1 round: a smoke run
    python -m benchmarks --repeat 9 --markdown results.md
    python -m benchmarks --only plan,check        # some sections only
    python -m benchmarks --profile scale          # where the time goes, instead of timing

Sections (each figure a median over --repeat rounds; the commands compared are run in turn
within each round, A B C A B C ..., so load from other processes falls on all of them alike,
and each ratio is the median of the per-round ratios):

1. plan: ``shapecheck plan SPEC`` (the venv's console script) against ``torchinfo.summary`` of
   the same network written by hand in PyTorch (benchmarks/nets.py) and against a forward pass
   of it on the meta device; each a fresh process, timed from start to exit.
peers: ``shapecheck plan`` against torchinfo, torchview, fvcore, ptflops and thop on the lecture
   net and ResNet-50: time, parameters and MACs, and why a tool's MACs differ
   (benchmarks/peers.py; a tool that is not installed is skipped).
2. scale: ``shapecheck plan`` of generated chains of 10 to 10,000 layers (conv 3×3 padding 1
   and relu, alternating): end to end, peak memory of the process, and, in another process,
   each phase in-process (import, parse, plan, render).
3. check: ``shapecheck check`` of 10, 100 and 1,000 spec files in one call, made by varying
   the specs under specs/.
4. train: samples/s of ``shapecheck.training.train`` on ``build_module(specs/lecture_cnn.yaml)``
   against a hand-written loop on the same tensors, batch size, optimizer, initial weights and
   data order, in this process; epochs alternate (train() resuming its run).
5. stream and 6. ddp: image folders held in memory against streamed from disk, and DDP with
   1 against 2 processes on the CPU (benchmarks/scaling.py).
7. ``--gpu``: instead of the sections, the GPU script (benchmarks/gpu.py): the lecture net
   and ResNet-18 on synthetic 3×224×224 data, fp32 against bf16, shapecheck against a
   hand-written loop, on one CUDA device.

Wall-clock time is the headline; CPU time (user + system, of the child process) is shown
beside it, as it is the steadier figure on a busy machine. The machine, the versions and the
load average at the start, at each section and at the end are printed with the tables.
torchinfo (``pip install -e '.[bench]'``) is needed only for its column, which is skipped with
a note when it is not installed. POSIX only (``os.wait4`` gives each child's CPU time and peak
memory).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python benchmarks/run.py`
    sys.path.insert(0, str(ROOT))

from benchmarks import byte_compiled, specgen
from benchmarks.nets import SPECS

HERE = Path(__file__).resolve().parent
SECTIONS = ("plan", "peers", "scale", "check", "train", "stream", "ddp")
NETS = ("lecture_cnn", "alexnet", "vgg16")

# The targets the results are reported against.
PLAN_RATIO_TARGET = 0.08  # shapecheck plan ÷ torchinfo summary, lecture net, wall time
# shapecheck plan of the lecture net ÷ a Python that only imports its two dependencies
# (FLOOR): start-up at the floor the validator and the YAML parser set.
FLOOR_RATIO_TARGET = 1.25
FLOOR = "import yaml; from pydantic import BaseModel"
# The others in floors too, measured in the same rounds: this machine's speed drifts, and
# every time scales with it.
SCALE_TARGET_FLOORS = 3.5  # shapecheck plan of 10,000 layers, end to end
TEMPLATED_TARGET_FLOORS = 4.5  # ... of a template expanded to 10,000 layers
LINEAR_SLACK = 1.5  # parse+plan per layer at 10,000 layers at most this × that at 1,000
CHECK_TARGET_FLOORS = 6.0  # shapecheck check of 1,000 specs (the pre-commit hook's cost)
TRAIN_RATIO_TARGET = 0.9  # train() samples/s ÷ the hand-written loop's


class BenchError(Exception):
    """A benchmarked command failed: the figures would mean nothing."""


# ---------------------------------------------------------------- running and timing


@dataclass
class Run:
    wall: float  # seconds, process start to exit
    cpu: float  # user + system seconds of the child
    rss_mib: float  # peak resident memory of the child
    rc: int
    stdout: str
    stderr: str


def _rss_mib(maxrss: int) -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def run_child(cmd: Sequence[str], cwd: Path = ROOT, ok: Sequence[int] = (0,)) -> Run:
    """Run ``cmd`` to its end: its wall time, CPU time and peak memory, measured by
    benchmarks/launch.py so that they are this command's alone. Output goes to temporary
    files, never to a pipe that could fill up. Raises BenchError when the exit status is not
    in ``ok``."""
    with tempfile.TemporaryDirectory(prefix="shapecheck-bench-run-") as tmp:
        result = Path(tmp) / "result"
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            subprocess.run([sys.executable, "-S", "-I", str(HERE / "launch.py"), str(result),
                            *map(str, cmd)], cwd=cwd, stdout=out, stderr=err,
                           stdin=subprocess.DEVNULL, check=True)
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
        wall, cpu, maxrss, rc = result.read_text(encoding="ascii").split()
    run = Run(float(wall), float(cpu), _rss_mib(int(maxrss)), int(rc), stdout, stderr)
    if run.rc not in ok:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
        raise BenchError(f"{' '.join(map(str, cmd))} exited {run.rc}:\n{tail}")
    return run


def interleave(commands: dict[str, tuple[list[str], Path, Sequence[int]]], repeat: int,
               warmup: bool) -> dict[str, list[Run]]:
    """Each command once per round, in the given order, for ``repeat`` rounds, after one
    untimed round when ``warmup`` (file cache, bytecode)."""
    if warmup:
        for cmd, cwd, ok in commands.values():
            run_child(cmd, cwd, ok)
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (cmd, cwd, ok) in commands.items():
            runs[name].append(run_child(cmd, cwd, ok))
    return runs


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """The median of the per-round ratios a/b."""
    return statistics.median(x / y for x, y in zip(a, b))


def spread(a: Sequence[float], b: Sequence[float]) -> str:
    """The range of the per-round ratios a/b: '0.12–0.16'."""
    ratios = [x / y for x, y in zip(a, b)]
    return f"{min(ratios):.3f}–{max(ratios):.3f}"


def walls(runs: Sequence[Run]) -> list[float]:
    return [r.wall for r in runs]


def cpus(runs: Sequence[Run]) -> list[float]:
    return [r.cpu for r in runs]


def seconds(s: float) -> str:
    """'12.3 s', '1.23 s', '12.3 ms', '123 µs' (a difference of noisy figures may be < 0)."""
    if abs(s) >= 10:
        return f"{s:.1f} s"
    if abs(s) >= 0.1:
        return f"{s:.2f} s"
    if abs(s) >= 0.001:
        return f"{s * 1000:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def timed(runs: Sequence[Run]) -> str:
    """'1.02 s (cpu 0.37 s)': the medians of wall and CPU time."""
    return f"{seconds(median(walls(runs)))} (cpu {seconds(median(cpus(runs)))})"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def shapecheck_command() -> list[str]:
    """The console script of the running interpreter's environment, so that the entry point's
    cost is measured as users pay it."""
    script = Path(sys.executable).with_name("shapecheck")
    if not script.exists():
        raise BenchError(f"{script} does not exist: install the package into this environment "
                         "(pip install -e '.[dev,bench]') and run the benchmarks with its python")
    return [str(script)]


def torchinfo_available() -> bool:
    return importlib.util.find_spec("torchinfo") is not None


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# ---------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    right: set[int] = field(default_factory=set)  # right-aligned columns

    def text(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.headers)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if i in self.right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        out = [self.title, "", line(self.headers), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        out += [""] + [f"  {n}" for n in self.notes] if self.notes else []
        return "\n".join(out)

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        rule = ["---:" if i in self.right else "---" for i in range(len(self.headers))]
        out = [f"### {self.title}", "", line(self.headers), line(rule)]
        out += [line(r) for r in self.rows]
        out += [""] + [f"- {n}" for n in self.notes] if self.notes else []
        return "\n".join(out)


@dataclass
class Target:
    what: str
    measured: str
    ok: bool | None


@dataclass
class Context:
    repeat: int
    quick: bool
    warmup: bool
    epochs: int
    threads: int | None
    tmp: Path
    targets: list[Target] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- 1. plan


def bench_plan(ctx: Context) -> Table:
    import shapecheck

    script = shapecheck_command()
    nets = ("lecture_cnn",) if ctx.quick else NETS
    have_torchinfo = torchinfo_available()
    headers = ["net", "shapecheck plan", "torchinfo summary", "meta forward",
               "shapecheck ÷ torchinfo", "shapecheck ÷ meta", "shapecheck ÷ floor"]
    table = Table("1. Plan latency, end to end (process start to exit; median wall, CPU)",
                  headers, right={1, 2, 3, 4, 5, 6})
    child = [sys.executable, str(HERE / "torch_plan.py")]
    spreads, floors = [], []
    for net in nets:
        spec = str(ROOT / SPECS[net])
        commands = {"shapecheck": ([*script, "plan", spec], ROOT, (0,))}
        if have_torchinfo:
            commands["torchinfo"] = ([*child, "torchinfo", net], ROOT, (0,))
        commands["meta"] = ([*child, "meta", net], ROOT, (0,))
        commands["floor"] = ([sys.executable, "-c", FLOOR], ROOT, (0,))
        runs = interleave(commands, ctx.repeat, ctx.warmup)
        _check_same_network(net, shapecheck.plan(spec), runs["meta"][-1].stdout)
        sc = runs["shapecheck"]
        row = [net, timed(sc)]
        if have_torchinfo:
            ti = runs["torchinfo"]
            r = ratio(walls(sc), walls(ti))
            row += [timed(ti), f"{r:.3f} (cpu {ratio(cpus(sc), cpus(ti)):.3f})"]
            spreads.append(f"{net} {spread(walls(sc), walls(ti))}")
            if net == "lecture_cnn":
                ctx.targets.append(Target(
                    f"plan of the lecture net ≤ {PLAN_RATIO_TARGET} × torchinfo's time",
                    f"{r:.3f}", r <= PLAN_RATIO_TARGET))
        else:
            row += ["skipped", "n/a"]
        me = runs["meta"]
        row.insert(3, timed(me))
        row.append(f"{ratio(walls(sc), walls(me)):.3f} (cpu {ratio(cpus(sc), cpus(me)):.3f})")
        fl = runs["floor"]
        r = ratio(walls(sc), walls(fl))
        row.append(f"{r:.3f} (cpu {ratio(cpus(sc), cpus(fl)):.3f})")
        floors.append(f"{net} {spread(walls(sc), walls(fl))}")
        if net == "lecture_cnn":
            ctx.targets.append(Target(
                f"plan of the lecture net ≤ {FLOOR_RATIO_TARGET} × the floor (`python -c "
                f"\"{FLOOR}\"`)", f"{r:.3f} (floor {timed(fl)})", r <= FLOOR_RATIO_TARGET))
        table.rows.append(row)
    if not have_torchinfo:
        table.notes.append("torchinfo is not installed (pip install -e '.[bench]'): its column "
                           "is skipped")
        ctx.targets.append(Target(f"plan of the lecture net ≤ {PLAN_RATIO_TARGET} × "
                                  "torchinfo's time", "torchinfo not installed", None))
    table.notes += [
        "shapecheck plan: the venv's console script, printing the table.",
        ("torchinfo summary: a script that imports torch and torchinfo, builds the hand-written "
         "module (benchmarks/nets.py) on the CPU and calls summary(model, input_size=...), which "
         "runs a real forward pass; input (64, 1, 28, 28) for the lecture net (its spec's "
         "batch), (1, 3, 224, 224) for AlexNet and VGG-16."),
        ("meta forward: the same module built on the meta device, one forward pass of a meta "
         "tensor of that size; prints the output shape and the parameter count (checked "
         "against the plan's)."),
        (f"floor: `python -c \"{FLOOR}\"` with the same interpreter: the start-up that "
         "shapecheck's two dependencies alone cost."),
    ]
    if spreads and ctx.repeat > 1:
        table.notes.append("per-round wall-time ratios shapecheck ÷ torchinfo, lowest–highest: "
                           + ", ".join(spreads) + ".")
    if ctx.repeat > 1:
        table.notes.append("per-round wall-time ratios shapecheck ÷ floor, lowest–highest: "
                           + ", ".join(floors) + ".")
    return table


def _check_same_network(net: str, plan, meta_stdout: str) -> None:
    """The hand-written module is the spec's network: same parameters, same output shape
    (but for the batch). ``meta_stdout`` is torch_plan.py's 'output (64, 10) params 8490'."""
    found = re.search(r"output \(([\d, ]*)\) params (\d+)", meta_stdout)
    shape = tuple(int(d) for d in found[1].split(",") if d.strip()) if found else None
    params = int(found[2]) if found else None
    if params != plan.params or shape is None or shape[1:] != tuple(plan.output_shape[1:]):
        raise BenchError(f"{net}: the hand-written module gives output {shape} with {params} "
                         f"parameters; the plan says {plan.output_shape}, {plan.params}")


# ---------------------------------------------------------------- 2. scale


def bench_scale(ctx: Context) -> Table:
    script = shapecheck_command()
    sizes = (10, 100) if ctx.quick else (10, 100, 1_000, 10_000)
    specs = {n: specgen.write_chain(ctx.tmp / "scale" / f"chain_{n}.yaml", n) for n in sizes}
    floor = ([sys.executable, "-c", FLOOR], ROOT, (0,))
    runs = interleave({**{n: ([*script, "plan", str(p)], ROOT, (0,)) for n, p in specs.items()},
                       "floor": floor}, ctx.repeat, ctx.warmup)
    inner = {}
    for n, p in specs.items():
        done = run_child([sys.executable, str(HERE / "inproc_plan.py"), str(p),
                          str(max(ctx.repeat, 3))])
        inner[n] = json.loads(done.stdout)
        if inner[n]["layers"] != n:
            raise BenchError(f"{p}: planned {inner[n]['layers']} layers, not {n}")
    table = Table(
        "2. Scale: shapecheck plan of a chain of N layers (conv 3×3 padding 1, relu, ...)",
        ["layers", "end to end", "per layer above 10", "peak memory", "import (cpu)",
         "parse (cpu)", "plan (cpu)", "render (cpu)", "parse+plan per layer", "growth"],
        right=set(range(10)))
    base = sizes[0]
    prev, prev_n = None, None
    for n in sizes:
        w = median(walls(runs[n]))
        marginal = (w - median(walls(runs[base]))) / (n - base) if n > base else None
        i = inner[n]
        work = i["cpu_parse"] + i["cpu_plan"]
        growth = "" if prev is None else f"{work / prev:.1f}× for {n // prev_n}× layers"
        prev, prev_n = work, n
        table.rows.append([
            f"{n:,}", timed(runs[n]), "" if marginal is None else seconds(marginal),
            f"{median([r.rss_mib for r in runs[n]]):.1f} MiB", seconds(i["cpu_import"]),
            seconds(i["cpu_parse"]), seconds(i["cpu_plan"]), seconds(i["cpu_render"]),
            seconds(work / n), growth])
    if 10_000 in sizes:
        r = ratio(walls(runs[10_000]), walls(runs["floor"]))
        ctx.targets.append(Target(
            f"plan of 10,000 layers ≤ {SCALE_TARGET_FLOORS:g} floors end to end",
            f"{r:.2f} floors ({seconds(median(walls(runs[10_000])))}, floor "
            f"{seconds(median(walls(runs['floor'])))})", r <= SCALE_TARGET_FLOORS))
        templated = specgen.write_templated(ctx.tmp / "scale" / "templated_2000.yaml", 2000)
        t_all = interleave({"t": ([*script, "plan", str(templated)], ROOT, (0,)),
                            "floor": floor}, ctx.repeat, ctx.warmup)
        t_runs = t_all["t"]
        table.rows.append(["10,000 (templated)", timed(t_runs), "",
                           f"{median([r.rss_mib for r in t_runs]):.1f} MiB", *[""] * 6])
        r = ratio(walls(t_runs), walls(t_all["floor"]))
        ctx.targets.append(Target(
            f"plan of a template expanded to 10,000 layers ≤ {TEMPLATED_TARGET_FLOORS:g} floors "
            "end to end", f"{r:.2f} floors ({seconds(median(walls(t_runs)))}, floor "
            f"{seconds(median(walls(t_all['floor'])))})", r <= TEMPLATED_TARGET_FLOORS))
        per = {n: (inner[n]["cpu_parse"] + inner[n]["cpu_plan"]) / n for n in (1_000, 10_000)}
        grow = per[10_000] / per[1_000]
        ctx.targets.append(Target(
            "linear growth: parse+plan CPU time per layer at 10,000 layers ≤ "
            f"{LINEAR_SLACK} × at 1,000", f"{grow:.2f} ×", grow <= LINEAR_SLACK))
    else:
        ctx.targets.append(Target(
            f"plan of 10,000 layers ≤ {SCALE_TARGET_FLOORS:g} floors end to end",
            "not run (--quick)", None))
    table.notes += [
        ("10,000 (templated): one `use:` of a residual template with `repeat: 2000`, expanded "
         "to 10,000 layers (benchmarks/specgen.py write_templated). "
         "end to end: `shapecheck plan FILE` (table to a file), process start to exit; "
         "per layer above 10: (time − time of 10 layers) ÷ (layers − 10); peak memory: the "
         "process's maximum resident set size."),
        ("import, parse (load_spec: read, YAML, pydantic), plan (shapecheck.plan of the Spec) "
         "and render (render_table): CPU time of each phase inside one other process "
         f"(single-threaded, so steadier than wall time under load), medians of "
         f"{max(ctx.repeat, 3)} runs; growth: parse+plan time against the previous row's."),
    ]
    return table


# ---------------------------------------------------------------- 3. check


def bench_check(ctx: Context) -> Table:
    script = shapecheck_command()
    counts = (10,) if ctx.quick else (10, 100, 1_000)
    folder = ctx.tmp / "check"
    files = specgen.write_variants(folder, max(counts))
    names = [str(f.relative_to(folder)) for f in files]
    commands = {0: ([*script, "--version"], folder, (0,))}
    for n in counts:
        commands[n] = ([*script, "check", *names[:n]], folder, (0, 1))
    commands["floor"] = ([sys.executable, "-c", FLOOR], folder, (0,))
    runs = interleave(commands, ctx.repeat, ctx.warmup)
    table = Table("3. shapecheck check of N spec files in one call (end to end)",
                  ["specs", "end to end", "peak memory", "per spec above start-up", "result"],
                  right={0, 1, 2, 3})
    start = median(walls(runs[0]))
    floors = runs.pop("floor")
    for n, rs in runs.items():
        lines = rs[-1].stdout.strip().splitlines()
        summary = lines[-1] if n and lines else "(shapecheck --version: start-up)"
        per = "" if not n else seconds((median(walls(rs)) - start) / n)
        table.rows.append([f"{n:,}", timed(rs), f"{median([r.rss_mib for r in rs]):.1f} MiB",
                           per, summary])
    what = f"check of 1,000 specs (default -j) ≤ {CHECK_TARGET_FLOORS:g} floors"
    if 1_000 in runs:
        r = ratio(walls(runs[1_000]), walls(floors))
        ctx.targets.append(Target(what, f"{r:.2f} floors ({seconds(median(walls(runs[1_000])))},"
                                  f" floor {seconds(median(walls(floors)))})",
                                  r <= CHECK_TARGET_FLOORS))
    else:
        ctx.targets.append(Target(what, "not run (--quick)", None))
    table.notes.append("The files cycle through specs/*.yaml, renamed, with channels and "
                       "features scaled by 1, 2 or 3 and batch 1, 8, 32 or N; given as relative "
                       "paths, as pre-commit passes them. check shares 32 files or more among "
                       "processes, one per processor (-j), so its CPU time can exceed its wall "
                       "time.")
    return table


# ---------------------------------------------------------------- 4. train


class HandLoop:
    """The loop a PyTorch user writes for in-memory data, one epoch per call: the same
    tensors, batch size, optimizer, initial weights (seeded constructor) and data order
    (seed, epoch) as train()."""

    def __init__(self, x, y, *, batch_size: int, lr: float, momentum: float, seed: int):
        import torch

        from benchmarks.nets import lecture_cnn

        torch.manual_seed(seed)
        self.model = lecture_cnn()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    def epoch(self, epoch: int) -> float:
        """Train one epoch; its samples/s."""
        import torch
        import torch.nn.functional as F

        from shapecheck.training.data import epoch_seed

        model, opt, x, y, bs = self.model, self.opt, self.x, self.y, self.batch_size
        n = x.shape[0]
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(
            epoch_seed(self.seed, epoch)))
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        loss.item()  # what a loop printing the epoch's last loss pays
        return n / (time.perf_counter() - t0)

    def accuracy(self, x, y) -> float:
        import torch

        self.model.eval()
        with torch.no_grad():
            return (self.model(x).argmax(1) == y).float().mean().item()


def bench_train(ctx: Context) -> Table:
    import torch

    import shapecheck
    from shapecheck.core.trainspec import TrainSpec
    from shapecheck.emit.codegen import generate_source
    from shapecheck.training import train
    from shapecheck.training.datasets import load_dataset

    if ctx.threads is not None:
        torch.set_num_threads(ctx.threads)
    spec_path = ROOT / SPECS["lecture_cnn"]
    spec = shapecheck.load_spec(spec_path)
    plan = shapecheck.plan(spec)
    source = generate_source(plan)
    settings = spec.train.model_dump(mode="json", exclude_none=True)
    settings.update(epochs=ctx.epochs, device="cpu")
    if ctx.quick:  # a few steps: 256 images in batches of 64
        settings["dataset"].update(train_size=256, test_size=64)
    ts = TrainSpec.model_validate(settings)
    base_dir = spec_path.parent
    input_shape = tuple(spec.input.shape)
    num_classes = plan.output_shape[-1]
    data = load_dataset(ts.dataset, input_shape=input_shape, num_classes=num_classes,
                        base_dir=base_dir)
    n, bs = data.num_train, ts.batch_size
    lr, momentum = ts.optimizer.effective_lr, ts.optimizer.effective_momentum

    rates_o, rates_h, builds, overheads = [], [], [], []
    same = True
    acc_o = acc_h = None
    # Epochs alternate: one epoch of train() (the run resumed from its checkpoint, as
    # `build --train --resume` does), then one of the hand loop, and so on, so that each pair
    # of figures is close in time. The warm-up is one such pair, not counted.
    for r in range(-1 if ctx.warmup else 0, ctx.repeat):
        out = ctx.tmp / f"train-{r}"
        loop = HandLoop(data.x_train, data.y_train, batch_size=bs, lr=lr, momentum=momentum,
                        seed=ts.seed)
        for epoch in range(1 if r < 0 else ts.epochs):
            t0 = time.perf_counter()
            module = shapecheck.build_module(spec)
            built = time.perf_counter() - t0
            result = train(module, ts.model_copy(update={"epochs": epoch + 1}), name=plan.name,
                           input_shape=input_shape, num_classes=num_classes, base_dir=base_dir,
                           out_dir=out, model_source=source, resume=epoch > 0,
                           log=lambda _: None, progress=False,
                           # the hand loop's count: the load must not choose another
                           threads=torch.get_num_threads())
            rate_o = result.history[-1].samples_per_s
            rate_h = loop.epoch(epoch)
            if r < 0:
                continue
            rates_o.append(rate_o)
            rates_h.append(rate_h)
            builds.append(built)
            overheads.append(result.seconds - n / rate_o)
        if r >= 0:
            acc_o, acc_h = result.test_acc, loop.accuracy(data.x_test, data.y_test)
            same &= all(torch.equal(a, b) for a, b in zip(
                module.state_dict().values(), loop.model.state_dict().values(), strict=True))
    ratio_ = ratio(rates_o, rates_h)
    ctx.targets.append(Target(f"train() samples/s ≥ {TRAIN_RATIO_TARGET} × the hand loop's",
                              f"{ratio_:.3f}", ratio_ >= TRAIN_RATIO_TARGET))
    table = Table(
        f"4. Training the lecture net: {n:,} images, batch {bs}, SGD lr {lr:g} momentum "
        f"{momentum:g}, CPU, {torch.get_num_threads()} thread(s); {ctx.repeat} × {ts.epochs} "
        "epoch(s)",
        ["", "shapecheck train()", "hand-written loop", "ratio"], right={1, 2, 3})
    table.rows.append(["training samples/s", f"{median(rates_o):,.0f}", f"{median(rates_h):,.0f}",
                       f"{ratio_:.3f}"])
    table.rows.append(["final test accuracy", f"{acc_o:.2%}", f"{acc_h:.2%}", ""])
    if len(rates_o) > 1:
        table.notes.append(f"per-epoch samples/s ratios, lowest–highest: "
                           f"{spread(rates_o, rates_h)}.")
    table.notes += [
        ("training samples/s: the training phase of an epoch only (forward, backward, optimizer "
         "step), as train() reports it; epochs alternate, train() resuming its run from the "
         "checkpoint; the ratio is the median of the per-epoch ratios."),
        (f"outside the training phase each train() call took {seconds(median(overheads))} "
         "(data loading, resuming, test evaluation, checkpoints, metrics.csv, curves.png) and "
         f"build_module {seconds(median(builds))}."),
        f"identical final weights: {'yes' if same else 'NO'} (same arithmetic in the same order).",
    ]
    return table


# ---------------------------------------------------------------- machine, output


def machine(note: str | None = None) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0

    def version(dist: str) -> str:
        if dist == "shapecheck":  # the distribution is shapecheck-cnn; the package knows its own
            import shapecheck

            return shapecheck.__version__
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    info = {
        "CPU": f"{cpu}, {os.cpu_count()} logical cores ({usable} usable)",
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": ", ".join(f"{d} {version(d)}" for d in
                              ("shapecheck", "torch", "torchinfo", "torchview", "fvcore",
                               "ptflops", "thop", "pydantic", "PyYAML")),
    }
    if note:
        info["note"] = note
    return info


def report(ctx: Context, tables: list[Table], load_start: str, load_end: str,
           markdown: bool) -> str:
    info = {**ctx.machine, "load average (1, 5, 15 min)": f"{load_start} at the start, "
            f"{load_end} at the end", "rounds": f"{ctx.repeat} per figure (median)"
            + (", --quick" if ctx.quick else "")}
    targets = Table("Targets", ["target", "measured", "verdict"],
                    [[t.what, t.measured, verdict(t.ok)] for t in ctx.targets])
    if markdown:
        head = ["## Benchmark results", ""] + [f"- {k}: {v}" for k, v in info.items()]
        body = [t.markdown() for t in [*tables, targets]]
    else:
        head = [f"{k}: {v}" for k, v in info.items()]
        body = [t.text() for t in [*tables, targets]]
    return "\n\n".join(["\n".join(head), *body]) + "\n"


# ---------------------------------------------------------------- profile


def profile(what: str, tmp: Path, top: int) -> None:
    """cProfile of one ``shapecheck`` run as the benchmark makes it, and for ``plan`` the
    slowest imports (``python -X importtime``)."""
    script = shapecheck_command()[0]
    if what == "plan":
        args, cwd = ["plan", str(ROOT / SPECS["lecture_cnn"])], ROOT
    elif what == "scale":
        args, cwd = ["plan", str(specgen.write_chain(tmp / "chain_10000.yaml", 10_000))], ROOT
    else:
        files = specgen.write_variants(tmp, 1_000)
        args, cwd = ["check", *(str(f.relative_to(tmp)) for f in files)], tmp
    if what == "plan":
        done = run_child([sys.executable, "-X", "importtime", script, *args], cwd)
        rows = []
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                rows.append((int(parts[1]), int(parts[0].split(":")[1]), parts[2].rstrip()))
        print(f"slowest imports of `shapecheck {' '.join(args)}` (cumulative µs, self µs):")
        for cumulative, own, name in sorted(rows, reverse=True)[:top]:
            print(f"  {cumulative:>9,} {own:>9,}  {name}")
        print()
    stats_file = tmp / "profile.out"
    # main(), not the console script: its quick exit would end the process before cProfile
    # writes its file.
    runner = tmp / "profiled.py"
    runner.write_text("import sys\nfrom shapecheck.cli import main\nsys.exit(main(sys.argv[1:]))\n",
                      encoding="utf-8")
    run_child([sys.executable, "-m", "cProfile", "-o", str(stats_file), str(runner), *args], cwd,
              ok=(0, 1))
    stats = pstats.Stats(str(stats_file))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one round unless --repeat: a smoke run")
    parser.add_argument("--repeat", type=int, metavar="N",
                        help="interleaved rounds per figure (default 5; 1 with --quick)")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="also write the results as Markdown to PATH")
    parser.add_argument("--only", metavar="SECTIONS", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: {','.join(SECTIONS)})")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="training epochs per round (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads for the training section (default: torch's own "
                        "choice; 1 gives steadier figures on a busy machine)")
    parser.add_argument("--profile", choices=("plan", "scale", "check"),
                        help="profile one run (lecture net plan, 10,000-layer plan, check of "
                        "1,000 specs) instead of timing")
    parser.add_argument("--top", type=int, default=25, help="rows of a profile (default 25)")
    parser.add_argument("--gpu", action="store_true",
                        help="run the GPU script (benchmarks/gpu.py) instead: needs CUDA")
    args = parser.parse_args(argv)
    note = byte_compiled()
    if args.gpu:
        from benchmarks import gpu

        return gpu.main(markdown=args.markdown, quick=args.quick)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 2)
    if repeat < 1 or epochs < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeat, --epochs and --threads must be at least 1")

    from benchmarks.peers import bench_peers
    from benchmarks.scaling import bench_ddp, bench_stream

    benches: dict[str, Callable[[Context], Table]] = {
        "plan": bench_plan, "peers": bench_peers, "scale": bench_scale, "check": bench_check, "train": bench_train,
        "stream": bench_stream, "ddp": bench_ddp}
    with tempfile.TemporaryDirectory(prefix="shapecheck-bench-") as tmp:
        try:
            if args.profile:
                profile(args.profile, Path(tmp), args.top)
                return 0
            ctx = Context(repeat=repeat, quick=args.quick, warmup=not args.quick,
                          epochs=epochs, threads=args.threads, tmp=Path(tmp),
                          machine=machine(note))
            load_start = load_average()
            print("\n".join(f"{k}: {v}" for k, v in ctx.machine.items()), flush=True)
            print(f"load average at the start: {load_start}", flush=True)
            if "plan" in only and not torchinfo_available():
                print("note: torchinfo is not installed (pip install -e '.[bench]'): the "
                      "torchinfo column is skipped", file=sys.stderr, flush=True)
            tables = []
            for name in SECTIONS:
                if name in only:
                    load = load_average()
                    print(f"running {name} (load average {load}) ...", flush=True)
                    t0 = time.perf_counter()
                    with redirect_stdout(io.StringIO()):  # train() and friends stay quiet
                        table = benches[name](ctx)
                    table.notes.append(f"load average when the section started: {load}; "
                                       f"the section took {time.perf_counter() - t0:.0f} s")
                    tables.append(table)
        except BenchError as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
    load_end = load_average()
    print()
    print(report(ctx, tables, load_start, load_end, markdown=False))
    if args.markdown:
        args.markdown.write_text(report(ctx, tables, load_start, load_end, markdown=True),
                                 encoding="utf-8")
        print(f"written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
