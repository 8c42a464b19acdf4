"""Today's CNN vocabulary end to end: squeeze-and-excitation (MobileNetV3), a ShuffleNetV2 unit,
a U-Net, a ConvNeXt block and a sub-pixel super-resolution net each plan without torch, build
into a module that torch checks on the meta device, and take real training steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import shapecheck
from shapecheck.cli import main

SPECS = Path(__file__).resolve().parent.parent / "specs"
CLASSIFIERS = ["se_mobilenet_block", "shufflenetv2_unit", "convnext_block"]
DENSE = ["unet_small", "tiny_sr"]  # image-to-image: trained here with a per-pixel loss


@pytest.mark.parametrize("name", CLASSIFIERS + DENSE)
def test_plans_valid_without_warnings(name):
    p = shapecheck.plan(SPECS / f"{name}.yaml")
    assert p.valid and not p.warnings, [d.message for d in p.diagnostics]


def test_planning_them_never_imports_torch():
    paths = [str(SPECS / f"{n}.yaml") for n in CLASSIFIERS + DENSE]
    code = (
        "import sys, json, shapecheck\n"
        f"plans = [shapecheck.plan(p) for p in {paths!r}]\n"
        "heavy = [m for m in ('torch', 'numpy', 'graphviz') if m in sys.modules]\n"
        "print(json.dumps([[p.valid for p in plans], heavy]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    valid, heavy = json.loads(out)
    assert all(valid) and heavy == []


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_train_on_synthetic_data(name, tmp_path, capsys):
    pytest.importorskip("torch")
    spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text(encoding="utf-8"))
    spec["train"] = {"dataset": {"format": "synthetic", "train_size": 8, "test_size": 4},
                     "epochs": 1, "batch_size": 4, "optimizer": {"type": "adamw"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["build", str(path), "--train", "--out", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    rows = (run / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2  # the header and one epoch
    assert (run / "model.pt").is_file() and (run / "model.py").is_file()


@pytest.mark.parametrize("name", DENSE)
def test_image_to_image_nets_take_an_optimizer_step(name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    p = shapecheck.plan(SPECS / f"{name}.yaml")
    model = shapecheck.build_module(p, device="cpu")  # checked against the plan on meta first
    x = torch.randn(2, *p.input_shape[1:])
    target = torch.randn(2, *p.output_shape[1:])
    before = [t.detach().clone() for t in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = torch.nn.functional.mse_loss(model(x), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed == len(before)  # every parameter took part in the step
