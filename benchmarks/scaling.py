"""Sections 5 and 6 of ``python -m benchmarks``: training past one process's memory and cores.

5. stream: ``build --train`` of the lecture net on a generated image folder of 2,000 and 20,000
   PNGs (200 and 2,000 with --quick), held in memory against streamed from disk by 2 DataLoader
   workers: training samples/s and the peak memory of the process. Streaming memory must not
   grow with the dataset.
6. ddp: ``build --train`` on mnist-5k in 1 process against ``--nproc 2`` (gloo, CPU), one
   thread per process: training samples/s (the global batch over the training phase, as
   metrics.csv reports it), the wall time of the whole command and the test accuracy.

Both run the real command line in a child process (benchmarks/launch.py measures it).
"""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks.run import ROOT, Context, Table, median, run_child, shapecheck_command

SPEC = ROOT / "specs" / "lecture_cnn.yaml"
MNIST_5K = ROOT / "examples" / "data" / "mnist-5k"


def _last_row(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))[-1]


def make_folder(root: Path, n: int) -> Path:
    """n 28×28 grey PNGs under train/ (9 in 10) and test/, 10 class folders each: a
    class-dependent pattern with noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(10, 28, 28))
    for part in ("train", "test"):
        for c in range(10):
            (root / part / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % 10
        part = "test" if i % 100 >= 90 else "train"
        img = (0.6 * patterns[c] + 0.4 * rng.integers(0, 256, size=(28, 28))).astype(np.uint8)
        Image.fromarray(img).save(root / part / f"c{c}" / f"{i}.png")
    return root


def bench_stream(ctx: Context) -> Table:
    sizes = (200, 2_000) if ctx.quick else (2_000, 20_000)
    table = Table(f"5. Image folders: in memory against streamed (lecture net, {ctx.epochs} "
                  "epoch(s), batch 64, 1 thread)",
                  ["images", "in memory samples/s", "in memory peak RSS",
                   "streamed samples/s", "streamed peak RSS"], right={0, 1, 2, 3, 4})
    rss: dict[str, list[float]] = {"memory": [], "streamed": []}
    for n in sizes:
        folder = make_folder(ctx.tmp / f"folder{n}", n)
        cells = [f"{n:,}"]
        for kind, extra in (("memory", []), ("streamed", ["--workers", "2"])):
            rates, peaks = [], []
            for r in range(ctx.repeat):
                out = ctx.tmp / f"stream-{n}-{kind}-{r}"
                run = run_child([*shapecheck_command(), "build", str(SPEC), "--train", "--data",
                                 str(folder), "--epochs", str(ctx.epochs), "--threads", "1",
                                 "--out", str(out), *extra])
                rates.append(float(_last_row(out)["samples_per_s"]))
                peaks.append(run.rss_mib)
            cells += [f"{median(rates):,.0f}", f"{median(peaks):.0f} MiB"]
            rss[kind].append(median(peaks))
        table.rows.append(cells)
    table.notes += [
        ("each folder: generated 28×28 grey PNGs, train/ and test/ (1 in 10) with 10 class "
        "folders each; streamed: --workers 2, the same batches in the same order"),
        ("peak RSS: the training process's maximum resident set size (the DataLoader workers "
        "are processes of their own and are not counted in it)"),
        (f"growth from the smaller to the larger folder: in memory "
        f"{rss['memory'][1] - rss['memory'][0]:+.0f} MiB, streamed "
        f"{rss['streamed'][1] - rss['streamed'][0]:+.0f} MiB"),
    ]
    return table


def bench_ddp(ctx: Context) -> Table:
    table = Table(f"6. DDP on the CPU: 1 process against --nproc 2 (gloo), lecture net, "
                  f"mnist-5k, {ctx.epochs} epoch(s), global batch 64, 1 thread each",
                  ["processes", "training samples/s", "whole command", "test accuracy"],
                  right={0, 1, 2, 3})
    data = ["--data", str(MNIST_5K)] if (MNIST_5K / "train-images-idx3-ubyte.gz").exists() \
        else ["--data", "synthetic"]
    for nproc in (1, 2):
        rates, walls, accs = [], [], []
        for r in range(ctx.repeat):
            out = ctx.tmp / f"ddp-{nproc}-{r}"
            extra = ["--nproc", "2"] if nproc == 2 else []
            run = run_child([*shapecheck_command(), "build", str(SPEC), "--train", *data,
                             "--epochs", str(ctx.epochs), "--threads", "1", "--out", str(out),
                             *extra])
            row = _last_row(out)
            rates.append(float(row["samples_per_s"]))
            accs.append(float(row["test_acc"]))
            walls.append(run.wall)
        table.rows.append([str(nproc), f"{median(rates):,.0f}", f"{median(walls):.1f} s",
                           f"{median(accs):.2%}"])
    table.notes += [
        ("training samples/s: the last epoch's, from metrics.csv (the global batch over the "
        "training phase); whole command: process start to exit, start-up of the workers "
        "included"),
        ("on a machine with 2 cores shared with other work, 2 processes are not expected to be "
        "faster: they share the same cores and add an all-reduce per step"),
    ]
    return table
