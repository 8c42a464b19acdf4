"""The model zoo's table for the README, measured: `python -m benchmarks.zoo_table`.

Plans every spec under specs/zoo/ at each of its scales and prints one Markdown row per
network: input, parameters, MACs per sample (GMACs) and the spec's length in lines. Needs only
the core package (no torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import shapecheck

ZOO = Path(__file__).resolve().parent.parent / "specs" / "zoo"
HEADER = ("| spec | scale | input | params | GMACs | lines |\n"
          "|---|---|---|---:|---:|---:|")


def rows(zoo: Path = ZOO) -> list[str]:
    out = []
    for path in sorted(zoo.glob("*.yaml")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        scales = shapecheck.load_spec(path).scales or {None: {}}
        for scale in scales:
            plan = shapecheck.plan(path, scale=scale)
            if not plan.valid:
                raise SystemExit(f"{path}: invalid at scale {scale}")
            c, h, w = plan.input_dims[1:]
            out.append(f"| `{path.stem}` | {scale or ''} | {c}×{h}×{w} | {plan.params:,} | "
                       f"{plan.macs / 1e9:.3f} | {lines} |")
    return out


def table(zoo: Path = ZOO) -> str:
    return "\n".join([HEADER, *rows(zoo)]) + "\n"


def main() -> int:
    sys.stdout.write(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
