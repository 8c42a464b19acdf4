"""Spec files generated for the benchmarks: long chains for the scale benchmark, and many
variations of the real specs under specs/ for ``shapecheck check``."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCALED = ("out_channels", "out_features")


def write_chain(path: Path, layers: int, channels: int = 8, size: int = 16) -> Path:
    """A spec of ``layers`` layers: conv2d 3×3 (padding 1, so the shape never changes) and relu,
    alternating, on a 3×size×size input with batch 1."""
    lines = [f"name: chain_{layers}", "input:", f"  shape: [3, {size}, {size}]", "  batch: 1",
             "layers:"]
    conv = f"  - {{type: conv2d, out_channels: {channels}, kernel_size: 3, padding: 1}}"
    for i in range(layers):
        lines.append(conv if i % 2 == 0 else "  - relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_templated(path: Path, blocks: int, channels: int = 8, size: int = 16) -> Path:
    """A spec whose template expands to ``blocks`` residual blocks of 5 layers each (conv, norm,
    relu, conv in the body, and the block itself), a ResNet written short."""
    text = f"""name: templated_{blocks}
input: {{shape: [{channels}, {size}, {size}], batch: 1}}
templates:
  unit:
    params: {{c: {channels}}}
    type: residual
    activation: relu
    body:
      - {{type: conv2d, out_channels: $c, kernel_size: 3, padding: 1, bias: false}}
      - batchnorm2d
      - relu
      - {{type: conv2d, out_channels: $c, kernel_size: 3, padding: 1, bias: false}}
layers:
  - {{use: unit, name: stage, repeat: {blocks}}}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _scale(node, k: int):
    """Every out_channels / out_features times k, in layers and in blocks' branches, and a
    PReLU's per-channel num_parameters with them (1, one shared slope, stays 1)."""
    if isinstance(node, dict):
        per_channel = node.get("type") == "prelu"
        return {key: value * k if isinstance(value, int) and (
                    key in SCALED or per_channel and key == "num_parameters" and value > 1)
                else _scale(value, k) for key, value in node.items()}
    if isinstance(node, list):
        return [_scale(item, k) for item in node]
    return node


def write_variants(folder: Path, n: int, broken: float = 0.0) -> list[Path]:
    """``n`` spec files under ``folder``/specs, cycling through the specs under specs/: each
    renamed, its channel and feature counts scaled by 1, 2 or 3 and its batch set to 1, 8, 32
    or N. ``broken`` is the fraction made invalid (a 7×7 kernel on a 4×4 input)."""
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
