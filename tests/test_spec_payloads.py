"""No text in a spec runs as code: every string of real specs, keys and values, replaced by Python
payloads and newlines. Each variant is either refused with SC diagnostics or planned, emitted,
imported, instantiated and run forward, and nothing it carried ever runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import shapecheck
from shapecheck.emit.build import instantiate
from shapecheck.emit.codegen import generate

SPECS = Path(__file__).resolve().parent.parent / "specs"

# A small spec with every kind of string a spec holds: its name and description, warning codes,
# scales and their variables, template names, parameters and their defaults, expressions,
# layer types, names of layers, uses and blocks, and string settings.
EVERY_STRING = """
name: every_string
description: every kind of string
input: {shape: [3, 16, 16], batch: N}
ignore: [SC306]
default_scale: small
scales:
  small: {width: 8}
  big: {width: 16}
templates:
  unit:
    params: {c: 8, act: relu}
    layers:
      - {type: conv2d, name: conv, out_channels: $c, kernel_size: 3, padding: 1, padding_mode: zeros}
      - {type: $act}
      - type: residual
        name: skip
        body: [{type: conv2d, name: inner, out_channels: $c, kernel_size: 1}]
      - {use: block, c: $c}
  block:
    params: {c: 8}
    type: residual
    body: [{type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}]
layers:
  - {use: unit, name: stage, c: $width}
  - {use: unit, c: $width * 2, act: gelu, repeat: 2}
  - {type: concat, name: cat, branches: [[identity], [{type: conv2d, out_channels: 4, kernel_size: 1}]]}
  - {type: upsample, scale_factor: 2, mode: nearest}
  - {type: adaptiveavgpool2d, output_size: 1}
  - flatten
  - {type: linear, name: fc, out_features: 10}
"""
SPECS_USED = {"lecture_cnn": (SPECS / "lecture_cnn.yaml").read_text(encoding="utf-8"),
              "every_string": EVERY_STRING}


def _payloads(marker: Path) -> list[str]:
    touch = f"open({str(marker)!r}, 'w').close()"
    return [
        f"__import__('os').system('touch {marker}')",
        f'x"""\n{touch}\n"""',
        f"x'\n{touch}\n#",
        f"x\r\n{touch}",
        f"x\u2028{touch}",
        f"x\\\n{touch}",
        "__class__",
        "lambda",
        "Net",
        "nn",
    ]


def _strings(node, found: set[str]) -> set[str]:
    if isinstance(node, str):
        found.add(node)
    elif isinstance(node, dict):
        for key, value in node.items():
            _strings(key, found)
            _strings(value, found)
    elif isinstance(node, list):
        for item in node:
            _strings(item, found)
    return found


def _replace(node, old: str, new: str):
    """The tree with every occurrence of the string ``old``, key or value, made ``new``: a renamed
    template or scale stays referenced, so the payload reaches every use of the name."""
    if isinstance(node, str):
        return new if node == old else node
    if isinstance(node, dict):
        return {_replace(k, old, new): _replace(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(item, old, new) for item in node]
    return node


def _variants(tree, payloads):
    for text in sorted(_strings(tree, set())):
        for payload in payloads:
            yield _replace(tree, text, payload)
            yield _replace(tree, text, text + payload)


@pytest.mark.parametrize("name", SPECS_USED)
def test_no_string_in_a_spec_runs_as_code(name, tmp_path):
    import torch

    marker = tmp_path / "ran"
    payloads = _payloads(marker)
    tree = yaml.safe_load(SPECS_USED[name])
    assert shapecheck.plan(SPECS_USED[name]).valid
    planned = refused = 0
    for variant in _variants(tree, payloads):
        text = yaml.safe_dump(variant, sort_keys=False, allow_unicode=True)
        p = shapecheck.plan(text)
        if not p.valid:
            refused += 1
            assert p.errors and all(d.code.startswith("SC") for d in p.errors)
            continue
        planned += 1
        generated = generate(p, source_name=payloads[planned % len(payloads)])
        model = instantiate(p, generated, device="meta")  # checked by a forward pass on meta
        assert isinstance(model, torch.nn.Module)
        assert not marker.exists(), text
    # Both outcomes happen: names that stay identifiers and descriptions plan, code is refused.
    assert planned and refused
