"""Which training results repeat bit for bit: seeds, thread counts, resume.

    python -m benchmarks.exactness

Trains specs/lecture_cnn.yaml (mnist-5k) for 2 epochs through the command line, as a user
does, with --threads (and OMP_NUM_THREADS) setting torch's thread count, and prints the
largest absolute difference between the weights (model.pt) of the runs. The README's "What is exact" quotes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "lecture_cnn.yaml"


def build(out: Path, threads: int, *flags: str) -> dict[str, torch.Tensor]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-m", "shapecheck", "build", str(SPEC), "--train",
                    "--device", "cpu", "--threads", str(threads), "--out", str(out), *flags],
                   env=env, check=True, capture_output=True)
    return torch.load(out / "model.pt", weights_only=True)


def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        one = build(d / "one", 1, "--epochs", "2")
        print(f"same seed, 1 thread, twice:                  {diff(one, build(d / 'again', 1, '--epochs', '2')):.2e}")
        print(f"1 thread vs 2 threads:                       {diff(one, build(d / 'two', 2, '--epochs', '2')):.2e}")
        build(d / "r", 1, "--epochs", "1")
        resumed = build(d / "r", 2, "--epochs", "2", "--resume")
        print(f"epoch 1 at 1 thread, resumed at 2:           {diff(one, resumed):.2e}")
        build(d / "s", 1, "--epochs", "1", "--deterministic")
        kept = build(d / "s", 2, "--epochs", "2", "--resume", "--deterministic")
        print(f"the same with --deterministic (keeps 1):     {diff(one, kept):.2e}")
        build(d / "t", 1, "--epochs", "1")
        same = build(d / "t", 1, "--epochs", "2", "--resume")
        print(f"epoch 1, resumed at the same thread count:   {diff(one, same):.2e}")


if __name__ == "__main__":
    main()
