"""The specs that use the newer vocabulary, checked against hand-written torch modules.

For each spec the torch oracle's module must match the reference module in tests/reference_nets.py:
the same parameter count (pinned below), the same output shape, the same parameter and buffer
shapes (compared as sorted lists: the spec registers ConvNeXt's layer scale after its block, torch
before) and the same MACs, counted on the reference with forward hooks. Everything runs on the
meta device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_nets as ref
from torch import nn
from torch_oracle import run_oracle

SPECS = Path(__file__).resolve().parent.parent / "specs"

# spec name: (reference module, params, output shape of one sample)
CASES = {
    "se_mobilenet_block": (ref.MobileNetV3Blocks, 1_363_352, (1000,)),
    "shufflenetv2_unit": (ref.ShuffleNetV2Stage2, 1_176_720, (1000,)),
    "unet_small": (ref.UNetSmall, 122_242, (2, 64, 64)),
    "convnext_block": (ref.ConvNeXtStage1, 339_976, (1000,)),
    "tiny_sr": (ref.TinySR, 51_665, (3, 64, 64)),
}


def load(name: str) -> dict:
    return yaml.safe_load((SPECS / f"{name}.yaml").read_text())


def reference_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Per-sample MACs of conv2d, convtranspose2d and linear layers, counted with hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):  # every input element meets each kernel
            per_sample = inputs[0].numel() // inputs[0].shape[0]
            kh, kw = module.kernel_size
            total += per_sample * module.out_channels // module.groups * kh * kw
            return
        per_sample = output.numel() // output.shape[0]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += per_sample * module.in_channels // module.groups * kh * kw
        else:
            total += per_sample * module.in_features

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def shapes(module: nn.Module) -> list[tuple[int, ...]]:
    return sorted(tuple(t.shape) for t in module.state_dict().values())


@pytest.mark.parametrize("name", list(CASES))
def test_spec_matches_reference_module(name):
    build, params, out = CASES[name]
    s = load(name)
    assert s["name"] == name and s.get("description")
    r = run_oracle(s, device="meta")
    assert r.valid, (r.failed_path, r.error)
    with torch.device("meta"):
        model = build().eval()
    x = torch.empty(2, *s["input"]["shape"], device="meta")
    assert sum(p.numel() for p in model.parameters()) == params
    assert r.total_params == params
    assert r.output_shape == (2, *out)
    with torch.no_grad():
        assert tuple(model(x).shape) == r.output_shape
        assert tuple(r.module(x).shape) == r.output_shape  # the oracle's own blocks, assembled
    assert shapes(r.module) == shapes(model)
    assert reference_macs(model, x) == r.total_macs


def test_small_specs_agree_on_cpu():
    """The U-Net and the super-resolution net are small enough for the CPU re-run of every
    layer: meta and CPU must agree, and the reference must compute the same numbers as the
    oracle's module once the weights are shared (the layer order is the same in both)."""
    for name in ("unet_small", "tiny_sr"):
        s = load(name)
        r = run_oracle(s, batch=1)
        assert r.valid and not r.disagreements, name
        cpu = run_oracle(s, batch=1, device="cpu").module.eval()
        model = CASES[name][0]().eval()
        cpu.load_state_dict(dict(zip(cpu.state_dict(), model.state_dict().values())))
        x = torch.randn(1, *s["input"]["shape"], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(cpu(x), model(x))


def test_shufflenet_split_unit_computes_as_the_reference():
    """A stride-1 split unit plus channel shuffle against torchvision's chunk/cat/view-transpose
    code, weights shared, on real numbers: the empty branch must pass the first half through."""
    unit = {"input": {"shape": [116, 7, 7]}, "layers": load("shufflenetv2_unit")["layers"][6:8]}
    r = run_oracle(unit, device="cpu")
    assert [layer.type for layer in r.layers] == ["split", "channelshuffle"]
    assert [len(b) for b in r.layers[0].branches] == [0, 8]
    assert r.layers[0].branches[1][0].input_shape == (2, 58, 7, 7)
    model = ref.ShuffleUnit(116, 116, 1).eval()
    oracle = r.module.eval()
    oracle.load_state_dict(dict(zip(oracle.state_dict(), model.state_dict().values())))
    x = torch.randn(2, 116, 7, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(oracle(x), model(x))
