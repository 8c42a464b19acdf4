"""Before and after: one shapecheck command run by two source trees in turn, with the floor.

    git worktree add /tmp/before <commit>
    python -m benchmarks.compare /tmp/before plan specs/lecture_cnn.yaml
    python -m benchmarks.compare --rounds 3 /tmp/before check /tmp/specs

Each round runs the floor (``python -c "import yaml; from pydantic import BaseModel"``), the
command with the other tree's ``shapecheck`` and with this one's, one after the other, each in a
fresh process as the console script runs it. On a virtual machine whose speed drifts within
minutes, only figures from the same rounds compare. Prints the median wall and CPU time
(user + system) of each, and each one's median ratio to the floor of its round."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
FLOOR = "import yaml; from pydantic import BaseModel"
COMMAND = ("import sys; from shapecheck.cli import entry; "
           "sys.argv = ['shapecheck', *sys.argv[1:]]; entry()")


def _run(argv: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the other source tree (a worktree)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="shapecheck's arguments")
    args = parser.parse_args()
    # Byte-compiled as a user's install runs; PYTHONPATH picks the tree.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    trees = {"before": args.before.resolve(), "after": HERE}
    # -P: the working directory is not searched first, so PYTHONPATH picks the tree.
    python = [sys.executable, "-P", "-c"]
    runs = {"floor": ([*python, FLOOR], env)}
    for name, tree in trees.items():
        tree_env = {**env, "PYTHONPATH": str(tree)}
        found = subprocess.run([*python, "import shapecheck; print(shapecheck.__file__)"],
                               env=tree_env, capture_output=True, text=True, check=False)
        if not found.stdout.startswith(str(tree / "shapecheck")):
            sys.exit(f"{name}: {tree} has no shapecheck package to import\n{found.stderr}")
        runs[name] = ([*python, COMMAND, *args.args], tree_env)
    for name, (argv, run_env) in runs.items():  # write the byte code; stop at a failing run
        done = subprocess.run(argv, env=run_env, capture_output=True, text=True, check=False)
        if done.returncode not in (0, 1):  # 1: the spec is invalid, which may be the point
            sys.exit(f"{name}: exit code {done.returncode}\n{done.stderr[-2000:]}")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (argv, run_env) in runs.items():
            times[name].append(_run(argv, run_env))
    floors = [wall for wall, _ in times["floor"]]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"shapecheck {' '.join(args.args)}: medians of {args.rounds} rounds, load average "
          f"{load} at the end")
    for name, measured in times.items():
        wall = statistics.median(w for w, _ in measured)
        cpu = statistics.median(c for _, c in measured)
        ratio = statistics.median(w / f for (w, _), f in zip(measured, floors))
        print(f"  {name:6s} {wall:7.3f} s (cpu {cpu:.3f} s)  {ratio:5.2f} × the floor")


if __name__ == "__main__":
    main()
