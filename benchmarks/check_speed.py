"""How long `shapecheck check` takes on many specs, end to end (process start included).

Generates N spec files in a temporary folder by varying the specs under specs/ (name, batch,
channel and feature counts scaled by 1, 2 or 3; optionally a fraction made invalid with a
kernel larger than the input), then times `shapecheck check FILE...` as a subprocess, the
way pre-commit and CI call it, and prints the median of several runs.

    python benchmarks/check_speed.py                  # 200 specs, 5 runs
    python benchmarks/check_speed.py -n 1000 --broken 0.1
    python benchmarks/check_speed.py --profile        # where the time goes, in-process

The target is 200 specs in under 2 s."""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCALED = ("out_channels", "out_features")
TARGET_S = 2.0


def _scale(node, k: int):
    """Every out_channels / out_features times k, in layers and in blocks' branches."""
    if isinstance(node, dict):
        return {key: value * k if key in SCALED and isinstance(value, int) else _scale(value, k)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_scale(item, k) for item in node]
    return node


def make_specs(folder: Path, n: int, broken: float) -> list[Path]:
    bases = [(p.stem, yaml.safe_load(p.read_text(encoding="utf-8")))
             for p in sorted((ROOT / "specs").glob("*.yaml"))]
    every = round(1 / broken) if broken > 0 else 0
    files = []
    for i in range(n):
        stem, base = bases[i % len(bases)]
        spec = _scale(base, 1 + i // len(bases) % 3)
        spec["name"] = f"{stem}_{i}"
        spec["input"] = {**spec["input"], "batch": [1, 8, 32, "N"][i % 4]}
        spec.pop("train", None)  # its dataset path is relative to specs/
        if every and i % every == every - 1:
            c, _, _ = spec["input"]["shape"]
            spec["input"]["shape"] = [c, 4, 4]
            spec["layers"].insert(0, {"type": "conv2d", "out_channels": c, "kernel_size": 7})
        path = folder / "specs" / f"{stem}_{i:04d}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        files.append(path)
    return files


def command() -> list[str]:
    script = Path(sys.executable).with_name("shapecheck")
    if script.exists():
        return [str(script)]
    found = shutil.which("shapecheck")
    return [found] if found else [sys.executable, "-m", "shapecheck"]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_runs(cmd: list[str], cwd: Path, runs: int):
    """(wall-clock seconds, CPU seconds) of each run, and the last run's result. CPU time
    (user + system) is the steadier figure on a busy machine: the check is one thread."""
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)  # warm the file cache
    walls, cpus, done = [], [], None
    for _ in range(runs):
        cpu, start = _child_cpu(), time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - start)
        cpus.append(_child_cpu() - cpu)
    return walls, cpus, done


def profile(folder: Path, files: list[Path], top: int) -> None:
    import io
    from contextlib import redirect_stdout

    from shapecheck.cli import main

    os.chdir(folder)
    profiler = cProfile.Profile()
    with redirect_stdout(io.StringIO()):
        profiler.runcall(main, ["check", *(str(f.relative_to(folder)) for f in files)])
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="number of spec files (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--broken", type=float, default=0.0, metavar="FRACTION",
                        help="fraction of the specs made invalid (default 0)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one in-process check of the specs instead of timing")
    parser.add_argument("--top", type=int, default=25, help="rows of the profile (default 25)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="shapecheck-bench-") as tmp:
        folder = Path(tmp)
        files = make_specs(folder, args.n, args.broken)
        if args.profile:
            profile(folder, files, args.top)
            return 0
        cmd = command()
        names = [str(f.relative_to(folder)) for f in files]
        startup, startup_cpu, _ = time_runs([*cmd, "--version"], folder, args.runs)
        times, cpus, done = time_runs([*cmd, "check", *names], folder, args.runs)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no output)"
    median, cpu = statistics.median(times), statistics.median(cpus)
    start, start_cpu = statistics.median(startup), statistics.median(startup_cpu)
    print(f"command:  {' '.join(cmd)} check <{args.n} files>")
    print(f"result:   {summary} (exit {done.returncode})")
    print(f"load:     {os.getloadavg()[0]:.2f} (1-minute load average, {os.cpu_count()} CPUs)")
    print(f"runs:     {', '.join(f'{t:.3f}' for t in times)} s")
    print(f"median:   {median:.3f} s end to end; {start:.3f} s of it is start-up "
          f"(`shapecheck --version`); {(median - start) / args.n * 1000:.2f} ms per spec")
    print(f"CPU:      {cpu:.3f} s median (user + system); start-up {start_cpu:.3f} s; "
          f"{(cpu - start_cpu) / args.n * 1000:.2f} ms per spec")
    verdict = "under" if median < TARGET_S else "OVER"
    print(f"target:   {args.n} specs in < {TARGET_S:.0f} s: {verdict}")
    return 0 if done.returncode in (0, 1) else 1


if __name__ == "__main__":
    sys.exit(main())
