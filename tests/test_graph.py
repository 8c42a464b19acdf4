"""Graph specs: layers that read earlier tensors by name (`from:`), the merges add, mul and cat,
upsample to another tensor's size (`size: {like: …}`) and `outputs:`. Each is checked against
torch: the module build writes computes what a hand-written one computes, value for value."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shapecheck
from shapecheck.core.inputsizes import solve
from shapecheck.emit.codegen import generate_source
from shapecheck.outputs.graph import diagram

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = Path(__file__).resolve().parent / "graphs"
UNET_FLAT = GRAPHS / "unet_small_flat.yaml"
LRASPP = GRAPHS / "lraspp_head.yaml"


def test_a_flat_unet_plans_as_the_nested_one():
    flat = shapecheck.plan(UNET_FLAT)
    nested = shapecheck.plan(ROOT / "specs" / "unet_small.yaml")
    assert flat.valid and not flat.warnings, flat.diagnostics
    assert (flat.output_shape, flat.params, flat.macs, flat.activation_bytes) == (
        nested.output_shape, nested.params, nested.macs, nested.activation_bytes)
    cats = [row for row in flat.layers if row.type == "cat"]
    # a use's name reads as its last layer
    assert [row.inputs for row in cats] == [("down1_mish4", "up1_up"), ("inc_mish2", "up2_up")]
    assert cats[0].explain == [("down1_mish4 32×32×32 + up1_up 32×32×32 → 64×32×32 "
                                "(joined on channels)")]


def test_the_flat_unet_computes_what_the_nested_one_does():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nested = shapecheck.build_module(ROOT / "specs" / "unet_small.yaml")
    flat = shapecheck.build_module(UNET_FLAT)
    # both register their parameters in the network's order: copy them over one by one
    pairs = list(zip(flat.parameters(), nested.parameters(), strict=True))
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.copy_(theirs)
    x = torch.randn(2, 3, 64, 64)
    nested.eval(), flat.eval()
    assert torch.equal(flat(x), nested(x))


class LRASPPHead:
    """The hand-written torch module tests/graphs/lraspp_head.yaml describes."""

    @staticmethod
    def make():
        from torch import nn
        from torch.nn import functional as F

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.low = nn.Conv2d(3, 8, 3, stride=2, padding=1)
                self.high = nn.Conv2d(8, 16, 3, stride=2, padding=1)
                self.cbr = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8),
                                         nn.ReLU())
                self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                           nn.Conv2d(16, 8, 1, bias=False), nn.Sigmoid())
                self.high_classifier = nn.Conv2d(8, 4, 1)
                self.low_classifier = nn.Conv2d(8, 4, 1)

            def forward(self, x):
                low = self.low(x)
                high = self.high(low)
                y = self.cbr(high) * self.scale(high)
                y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
                y = self.low_classifier(low) + self.high_classifier(y)
                out = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
                return {"out": out, "high": high}

        return Head()


def test_a_head_that_resizes_to_other_tensors_equals_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    plan = shapecheck.plan(LRASPP)
    assert plan.valid and not plan.warnings, plan.diagnostics
    built = shapecheck.build_module(plan)
    reference = LRASPPHead.make()
    # the same parameters by shape, in the order each registers them
    order = ["low", "high", "cbr.0", "cbr.1", "scale.1", "high_classifier", "low_classifier"]
    theirs = [p for name in order for p in reference.get_submodule(name).parameters()]
    with torch.no_grad():
        for mine, p in zip(built.parameters(), theirs, strict=True):
            mine.copy_(p)
    built.eval(), reference.eval()
    x = torch.randn(2, 3, 65, 67)
    got, want = built(x), reference(x)
    assert list(got) == ["out", "high"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    # and at another size: the resizes follow the tensors, not the planned size
    x = torch.randn(1, 3, 97, 40)
    assert built(x)["out"].shape == (1, 4, 97, 40)


def test_sizes_from_other_tensors_are_exact_at_any_input_and_solve_follows_them():
    for h, w in [(65, 67), (513, 513), (520, 520), (7, 9)]:
        plan = shapecheck.plan(LRASPP, input_shape=(3, h, w))
        assert plan.valid, plan.diagnostics
        assert plan.output_shape == ("N", 4, h, w)
        assert plan.to_dict()["outputs"] == {"out": ["N", 4, h, w],
                                             "high": ["N", 16, (h + 3) // 4, (w + 3) // 4]}
    h, w = solve(shapecheck.plan(LRASPP))
    assert (h.smallest, w.smallest) == (1, 1)
    assert all(s.accepts(n) for s in (h, w) for n in (2, 3, 513, 520))


def test_merges_broadcast_and_say_which_inputs_disagree(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("input: {shape: [16, 8, 8]}\nlayers:\n"
                    "  - {type: conv2d, name: a, out_channels: 16, kernel_size: 1}\n"
                    "  - {type: adaptiveavgpool2d, name: g, output_size: 1}\n"
                    "  - {type: mul, from: [a, g]}\n"
                    "  - {type: maxpool2d, name: half, kernel_size: 2}\n"
                    "  - {type: add, from: [a, half]}\n", encoding="utf-8")
    plan = shapecheck.plan(spec)
    assert plan.layers[2].output_shape == ("N", 16, 8, 8)
    assert plan.layers[2].explain == ["a 16×8×8 · g 16×1×1 = 16×8×8 (broadcast)"]
    (error,) = plan.errors
    assert error.code == "SC211" and error.layer == 4
    assert "a gives 16×8×8 but half gives 16×4×4: they cannot be added" in error.message
    assert "like" in error.hint


def test_the_receptive_field_follows_each_path(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("input: {shape: [1, 64, 64]}\nlayers:\n"
                    "  - {type: conv2d, name: stem, out_channels: 4, kernel_size: 3}\n"
                    "  - {type: conv2d, name: deep, out_channels: 4, kernel_size: 9}\n"
                    "  - {type: conv2d, name: side, out_channels: 4, kernel_size: 3, "
                    "from: stem}\n"
                    "  - {type: maxpool2d, name: side2, kernel_size: 3, stride: 1, "
                    "padding: 1}\n"
                    "  - {type: upsample, size: {like: deep}}\n"
                    "  - {type: add, from: [deep, prev]}\n", encoding="utf-8")
    plan = shapecheck.plan(spec)
    assert plan.valid, plan.diagnostics
    fields = {row.name: row.receptive_field[0].size for row in plan.layers
              if hasattr(row.receptive_field[0], "size")}
    assert fields["deep"] == 11 and fields["side"] == 5 and fields["side2"] == 7
    assert plan.layers[4].receptive_field[0].kind == "n/a"


def test_build_keeps_the_tensors_read_later_and_the_audit_accepts_it():
    source = generate_source(shapecheck.plan(LRASPP))
    forward = source[source.index("def forward(self, x: torch.Tensor)"):]
    assert "input_ = x" in forward
    assert "low = self.low(x)" in forward and "high = self.high(low)" in forward
    assert "x = self.up1(x, low)" in forward
    assert "x = self.add1(low_classifier, high_classifier)" in forward
    assert "-> dict[str, torch.Tensor]:" in forward
    assert "return {'out': out, 'high': high}" in forward


def test_json_plan_and_expand_carry_the_inputs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "shapecheck", "plan", str(UNET_FLAT),
                          "--format", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)["layers"]
    assert [r.get("inputs") for r in rows if r["type"] == "cat"] == [
        ["down1_mish4", "up1_up"], ["inc_mish2", "up2_up"]]
    assert all("inputs" not in r for r in rows if r["type"] != "cat")
    expanded = subprocess.run([sys.executable, "-m", "shapecheck", "expand", str(LRASPP)],
                              capture_output=True, text=True, check=True).stdout
    assert "from: [cbr_out, scale]" in expanded and "size: {like: low}" in expanded
    assert "outputs: [out, high]" in expanded
    again = tmp_path / "expanded.yaml"
    again.write_text(expanded, encoding="utf-8")
    a, b = shapecheck.plan(again).to_dict(), shapecheck.plan(LRASPP).to_dict()
    for d in (a, b):
        d.pop("file")
        for row in d["layers"]:
            row.pop("line")
    assert a == b


def test_a_unet_is_drawn_as_a_u():
    pytest.importorskip("graphviz")
    plan = shapecheck.plan(UNET_FLAT)
    g = diagram(plan)
    node = {row.name: f"n{row.index}" for row in plan.layers}
    # each skip's source sits beside the cat it joins ...
    same = [sorted(line.split()) for line in re.findall(r"rank=same\s+([^}]*)}", g.source)]
    assert same == [sorted([node["down1_mish4"], node["cat1"]]),
                    sorted([node["inc_mish2"], node["cat2"]])]
    # ... and the decoder climbs back up to it
    assert re.findall(r"(n\d+) -> (n\d+) \[[^]]*constraint=false", g.source) == [
        (node["up1_up"], node["cat1"]), (node["up2_up"], node["cat2"])]
    svg = g.pipe(format="svg").decode()  # the real dot lays it out
    assert svg.count("‖") >= 2


def test_onnx_follows_sizes_taken_from_other_tensors(tmp_path):
    pytest.importorskip("onnxruntime")
    one = tmp_path / "head.yaml"
    one.write_text(LRASPP.read_text(encoding="utf-8").replace("outputs: [out, high]\n", ""),
                   encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(one), "-o",
                          str(tmp_path / "head.py"), "--onnx", str(tmp_path / "head.onnx")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "output (N, 4, 65, 67), checked with onnxruntime" in run.stdout
    # several outputs: refused, and nothing written
    two = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(LRASPP), "-o",
                          str(tmp_path / "two.py"), "--onnx", str(tmp_path / "two.onnx")],
                         capture_output=True, text=True, check=False)
    assert two.returncode != 0 and "returns several tensors (out, high)" in two.stderr
    assert not (tmp_path / "two.onnx").exists()


def test_a_graph_spec_trains_for_segmentation(tmp_path):
    pytest.importorskip("torch")
    spec = tmp_path / "unet.yaml"
    text = UNET_FLAT.read_text(encoding="utf-8")
    text = text.replace("input: {shape: [3, 64, 64]}", "input: {shape: [1, 28, 28]}")
    text = text.replace("out_channels: 2, kernel_size: 1}", "out_channels: 11, kernel_size: 1}")
    text += ("train:\n  dataset: {format: mnist-seg, path: %s, train_size: 128, test_size: 32}\n"
             "  optimizer: {type: adam, lr: 0.003}\n  epochs: 1\n  batch_size: 32\n"
             % (ROOT / "examples" / "data" / "mnist-5k"))
    spec.write_text(text, encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(spec), "-o",
                          str(tmp_path / "unet.py"), "--train", "--threads", "1"],
                         capture_output=True, text=True, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr
    assert "test pixel acc" in run.stdout and (tmp_path / "runs" / "unet_small_flat" /
                                               "model.pt").exists()


def test_a_network_with_several_outputs_is_not_trained(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(LRASPP.read_text(encoding="utf-8") + "train: {dataset: synthetic}\n",
                    encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(spec), "-o",
                          str(tmp_path / "two.py"), "--train"], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert run.returncode == 1
    assert "returns several tensors (out, high); training takes a network with one output" \
        in run.stderr
    assert not (tmp_path / "runs").exists()


def test_the_diagram_shows_sizes_taken_and_every_output():
    pytest.importorskip("graphviz")
    plan = shapecheck.plan(LRASPP)
    dot = diagram(plan).source
    node = {row.name: f"n{row.index}" for row in plan.layers}
    # a dotted edge marked size from the tensor an upsample takes its size from
    assert re.search(rf"{node['low']} -> {node['up1']} \[label=<size> constraint=false "
                     r"style=dotted\]", dot), dot
    # each output, by name, into the output node
    assert f"{node['out']} -> output [label=<out: N×4×65×67>]" in dot
    assert f"{node['high']} -> output [label=<high: N×16×17×17>]" in dot
    assert dot.count("⊕ add") == 1  # the legend names a glyph once


def test_a_template_use_reads_by_name_and_is_read_by_its_name(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("input: {shape: [8, 16, 16]}\ntemplates:\n  cbr:\n    params: {c: 8}\n"
                    "    layers: [{type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}, "
                    "relu]\nlayers:\n"
                    "  - {type: conv2d, name: stem, out_channels: 8, kernel_size: 1}\n"
                    "  - {use: cbr, name: a, c: 4}\n"
                    "  - {use: cbr, name: b, c: 4, from: stem}\n"
                    "  - {type: cat, from: [a, b]}\n", encoding="utf-8")
    plan = shapecheck.plan(spec)
    assert plan.valid and plan.output_shape == ("N", 8, 16, 16), plan.diagnostics
    assert [row.inputs for row in plan.layers if row.inputs] == [("stem",),
                                                                ("a_relu1", "b_relu2")]
    forward = generate_source(plan).split("def forward(self, x: torch.Tensor)")[1]
    assert "a = self.a(stem)" in forward and "b = self.b(stem)" in forward
    assert "x = self.cat1(a, b)" in forward
