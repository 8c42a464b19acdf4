"""Section 'peers': ``shapecheck plan`` against the tools PyTorch users summarise a network
with (torchinfo, torchview, fvcore, ptflops, thop), on the lecture net and ResNet-50.

Each tool runs in its own process (benchmarks/peer_plan.py), in turn with ``shapecheck plan``
in every round, on the hand-written module of benchmarks/nets.py and one sample of its input.
A tool that is not installed is skipped, and the table says so (``pip install -e
'.[bench]'`` installs them all)."""

from __future__ import annotations

import importlib.util
import sys

from benchmarks.nets import SPECS
from benchmarks.run import (
    HERE,
    ROOT,
    BenchError,
    Context,
    Table,
    interleave,
    ratio,
    shapecheck_command,
    spread,
    timed,
    walls,
)

PEERS = ("torchinfo", "torchview", "fvcore", "ptflops", "thop")
NETS = ("lecture_cnn", "resnet50")

# Why a tool's MAC count differs from shapecheck's (one multiply-add of a conv or linear
# weight, per sample; nothing for bias adds, norms, activations, pooling or residual adds).
# Each is checked against the figures: the difference is exactly what it names.
WHY = {
    "torchinfo": "adds each conv's and linear's bias once per output value, and counts a "
                 "batchnorm's parameters (weight and bias) as its mult-adds",
    "torchview": "draws the graph with each tensor's shape; it counts neither parameters "
                 "nor MACs",
    "fvcore": "counts 2 per batchnorm value and 1 per adaptive-average-pool input value; it "
              "skips max pooling, ReLU and the residual add, with a warning for each",
    "ptflops": "adds the biases, counts 2 per batchnorm value, and counts each ReLU output "
               "and each pooling input twice (its hook on the module and its hook on the "
               "torch.nn.functional call the module makes)",
    "thop": "counts 4 per batchnorm value and (kernel + 1) per adaptive-average-pool output; "
            "ReLU and max pooling count 0",
}


def available(tool: str) -> bool:
    return importlib.util.find_spec("torch") is not None and \
        importlib.util.find_spec(tool) is not None


def _totals(stdout: str) -> tuple[int | None, int | None]:
    """The last 'params P macs M' line of peer_plan.py; None for '-'."""
    line = next(x for x in reversed(stdout.splitlines()) if x.startswith("params "))
    _, params, _, macs = line.split()
    return (None if params == "-" else int(float(params)),
            None if macs == "-" else int(float(macs)))


def bench_peers(ctx: Context) -> Table:
    import shapecheck

    script = shapecheck_command()
    peers = [tool for tool in PEERS if available(tool)]
    missing = [tool for tool in PEERS if tool not in peers]
    table = Table("Peers: shapecheck plan against torchinfo, torchview, fvcore, ptflops and "
                  "thop (end to end; median wall, CPU)",
                  ["net", "tool", "time", "shapecheck ÷ tool", "params", "MACs per sample",
                   "MACs vs shapecheck"], right={2, 3, 4, 5, 6})
    child = [sys.executable, str(HERE / "peer_plan.py")]
    spreads = []
    for net in ("lecture_cnn",) if ctx.quick else NETS:
        spec = str(ROOT / SPECS[net])
        plan = shapecheck.plan(spec)
        commands = {"shapecheck": ([*script, "plan", spec], ROOT, (0,))}
        commands.update({tool: ([*child, tool, net], ROOT, (0,)) for tool in peers})
        runs = interleave(commands, ctx.repeat, ctx.warmup)
        sc = runs["shapecheck"]
        table.rows.append([net, "shapecheck plan", timed(sc), "", f"{plan.params:,}",
                           f"{plan.macs:,}", ""])
        for tool in peers:
            params, macs = _totals(runs[tool][-1].stdout)
            if params is not None and params != plan.params:
                raise BenchError(f"{tool} counts {params:,} parameters in {net}; the plan "
                                 f"{plan.params:,}: not the same network")
            vs = "" if macs is None else (
                "equal" if macs == plan.macs else
                f"{macs - plan.macs:+,} ({(macs - plan.macs) / plan.macs:+.3%})")
            table.rows.append([net, tool, timed(runs[tool]),
                               f"{ratio(walls(sc), walls(runs[tool])):.3f}",
                               "—" if params is None else f"{params:,}",
                               "—" if macs is None else f"{macs:,}", vs])
            spreads.append(f"{net} {tool} {spread(walls(sc), walls(runs[tool]))}")
    if missing:
        table.notes.append(f"not installed, skipped: {', '.join(missing)} (pip install -e "
                           "'.[bench]')")
    table.notes += [
        ("shapecheck plan: the venv's console script, printing the table; its MACs are per "
        "sample, one multiply-add of a conv or linear weight."),
        ("each tool: benchmarks/peer_plan.py, a process that imports torch and the tool, builds "
        "the hand-written module (benchmarks/nets.py) on the CPU and summarises it for one "
        "sample (1, C, H, W), as the tool's documentation shows; its own parameter and MAC "
        "totals (fvcore's 'flops' are MACs)."),
        *(f"{tool}: {WHY[tool]}." for tool in peers),
    ]
    if spreads and ctx.repeat > 1:
        table.notes.append("per-round wall-time ratios shapecheck ÷ tool, lowest–highest: "
                           + ", ".join(spreads) + ".")
    return table
