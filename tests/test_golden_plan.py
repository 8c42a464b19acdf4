"""The golden specs under specs/, planned by shapecheck and checked three ways.

1. Every layer's input and output shape, weight and bias shape, params and MACs equal what
   torch reports for the same spec (the oracle in tests/torch_oracle.py; the meta device for
   the big networks, so nothing is allocated).
2. The published totals hold: parameter counts and GMACs as torchvision's model tables give them
   (MACs per sample, counted as torchvision's GFLOPS column and fvcore count them).
3. `shapecheck plan` prints the expected table and JSON (tests/expected/<spec>.table.txt and
   <spec>.json; `pytest --update-expected` rewrites them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_differential import check_rows, concrete
from torch_oracle import run_oracle

import shapecheck
from shapecheck.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
NAMES = ["lecture_cnn", "lenet5", "alexnet", "vgg16", "resnet18", "inception_block"]
BIG = {"alexnet", "vgg16", "resnet18", "inception_block"}  # run by torch on the meta device
SYMBOLIC_BATCH = 2

# name: (params, GMACs to the published precision)
PUBLISHED = {
    "lecture_cnn": (8_490, None),
    "lenet5": (61_706, None),
    "alexnet": (61_100_840, "0.714"),
    "vgg16": (138_357_544, "15.47"),
    "resnet18": (11_689_512, "1.81"),
    "inception_block": (158_442, "0.122"),
}


def spec_path(name: str) -> Path:
    return SPECS / f"{name}.yaml"


@pytest.mark.parametrize("name", NAMES)
def test_plan_equals_torch(name):
    plan = shapecheck.plan(spec_path(name))
    assert plan.valid, [d.message for d in plan.errors]
    batch = plan.batch if isinstance(plan.batch, int) else SYMBOLIC_BATCH
    raw = yaml.safe_load(spec_path(name).read_text())
    oracle = run_oracle(raw, batch=batch, device="meta" if name in BIG else "auto")
    assert oracle.valid, oracle.error
    check_rows(plan.layers, oracle.layers, batch)
    assert concrete(plan.output_shape, batch) == oracle.output_shape
    assert (plan.params, plan.macs) == (oracle.total_params, oracle.total_macs)


@pytest.mark.parametrize("name", NAMES)
def test_published_totals(name):
    plan = shapecheck.plan(spec_path(name))
    params, gmacs = PUBLISHED[name]
    assert plan.params == plan.trainable_params == params
    if gmacs is not None:
        digits = len(gmacs.split(".")[1])
        assert f"{plan.macs / 1e9:.{digits}f}" == gmacs


def test_lecture_cnn_shapes():
    """28 → 24 → 12 → 8 → 4, and 20 × 4 × 4 = 320 features into the linear layer."""
    plan = shapecheck.plan(spec_path("lecture_cnn"))
    sizes = [row.output_shape[2] for row in plan.layers if row.type in ("conv2d", "maxpool2d")]
    assert [plan.input_shape[2], *sizes] == [28, 24, 12, 8, 4]
    flatten, fc = plan.layers[-2:]
    assert flatten.output_shape == (64, 320)
    assert fc.weight_shape == (10, 320) and fc.output_shape == (64, 10)
    assert plan.macs == 144_000 + 320_000 + 3_200


@pytest.mark.parametrize("name", NAMES)
def test_plan_table(name, expect, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the output names the spec by the path it was given
    assert main(["plan", f"specs/{name}.yaml"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    # the shipped specs have no warnings (inception_block accepts its SC306 by `ignore:`)
    assert "warning[" not in out
    expect(f"{name}.table.txt", out)


@pytest.mark.parametrize("name", NAMES)
def test_plan_json(name, expect, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["plan", f"specs/{name}.yaml", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # the warnings are in the JSON, and stdout is JSON only
    data = json.loads(out)
    assert data == json.loads(json.dumps(shapecheck.plan(Path(f"specs/{name}.yaml")).to_dict()))
    assert data["valid"] is True and data["totals"]["params"] == PUBLISHED[name][0]
    expect(f"{name}.json", out)
