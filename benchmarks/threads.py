"""The default thread count against --threads 1 on a machine other processes keep busy.

    python -m benchmarks.threads [--busy 2] [--epochs 1]

Starts ``--busy`` processes that spin on a core each, waits until the 1-minute load average
shows them, then trains specs/lecture_cnn.yaml (mnist-5k) through the command line three ways:
one thread per core (torch's own default, what shapecheck used before it looked at the load),
shapecheck's default (fewer threads when the load average says the cores are shared), and
``--threads 1``. Prints each run's training samples/s and wall time; docs/performance.md quotes
it. The spinning processes are stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "lecture_cnn.yaml"


def train(out: Path, epochs: int, *flags: str) -> tuple[float, float, str]:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(SPEC), "--train",
                           "--device", "cpu", "--epochs", str(epochs), "--out", str(out),
                           "-o", str(out.parent / f"{out.name}.py"), *flags],
                          check=True, capture_output=True, text=True, cwd=ROOT)
    rates = [float(m.replace(",", "")) for m in re.findall(r"([\d,.]+) samples/s",
                                                            done.stdout)]
    note = next((line for line in done.stdout.splitlines() if "load average" in line), "")
    return sum(rates) / len(rates), time.perf_counter() - t, note


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)]
    try:
        deadline = time.monotonic() + 120
        while os.getloadavg()[0] < args.busy * 0.8 and time.monotonic() < deadline:
            time.sleep(2)
        print(f"{cores} cores, {args.busy} spinning processes, load average "
              f"{os.getloadavg()[0]:.2f}")
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            runs = ((f"--threads {cores} (one per core)", ["--threads", str(cores)]),
                    ("default (reads the load)", []),
                    ("--threads 1", ["--threads", "1"]))
            for i, (label, flags) in enumerate(runs):
                rate, wall, note = train(d / f"run{i}", args.epochs, *flags)
                print(f"{label:32} {rate:8,.0f} samples/s  {wall:6.1f} s")
                if note:
                    print(f"  {note}")
    finally:
        for p in spinners:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
