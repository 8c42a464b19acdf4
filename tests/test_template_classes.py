"""`build` of a templated spec: one class per template, parameters as constructor arguments,
repeats in loops, and a module that is the planned network (checked on the meta device)."""

import inspect
from pathlib import Path

import pytest
import torch

import shapecheck
from shapecheck.emit.build import module_from_source
from shapecheck.emit.codegen import generate

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml")) + sorted((ROOT / "specs" / "zoo").glob("*.yaml"))


def _source(path, **kwargs):
    return generate(shapecheck.plan(str(path), **kwargs)).source


def test_resnet50_reads_like_torchvision():
    source = _source(ROOT / "specs/zoo/resnet50.yaml")
    namespace = module_from_source(source)
    bottleneck = inspect.signature(namespace.Bottleneck.__init__).parameters
    assert list(bottleneck) == ["self", "in_channels", "width", "stride", "shortcut"]
    assert bottleneck["width"].default == 64 and bottleneck["shortcut"].default is None
    assert "out_channels=width * 4" in source  # the template's own expression
    assert "*(Bottleneck(256, width=64) for _ in range(2))," in source  # layer1's repeats after the first
    assert "Bottleneck(256, width=128, stride=2, shortcut=Downsample(256, out=512, stride=2))" \
        in source
    # Sixteen bottlenecks and four projections, each written once (the stem is the fifth conv).
    expanded = generate(shapecheck.plan(_expanded(ROOT / "specs/zoo/resnet50.yaml"))).source
    assert source.count("nn.Conv2d(") == 5 and expanded.count("nn.Conv2d(") == 53
    assert len(source.splitlines()) * 3 < len(expanded.splitlines())


def test_the_build_and_expand_examples_in_the_docs_are_what_the_commands_write(capsys):
    """docs/templates.md shows part of `build`'s ResNet-50 and of `expand --explain`'s
    MobileNetV2: each line shown (but `...`) is in what the command writes."""
    from shapecheck.cli import main

    docs = (ROOT / "docs" / "templates.md").read_text(encoding="utf-8")
    built = docs.split("## What `build` writes")[1].split("```python\n")[1].split("```")[0]
    source = _source(ROOT / "specs/zoo/resnet50.yaml")
    for line in built.splitlines():
        if line.strip() and line.strip() != "...":
            assert line.strip() in source, line
    shown = docs.split("## `shapecheck expand`")[1].split("```yaml\n")[1].split("```")[0]
    assert main(["expand", str(ROOT / "specs/zoo/mobilenet_v2.yaml"), "--scale", "x0_5",
                 "--explain"]) == 0
    assert shown in capsys.readouterr().out


def test_a_repeat_count_parameter_loops_over_the_rest_of_its_repeats(tmp_path):
    """`repeat: $n` used with n = 2, 2 and 1: the class loops n − 1 times after the first, so
    it builds n layers for any n, not only for the values the spec uses."""
    path = tmp_path / "vgg.yaml"
    path.write_text("""\
input: {shape: [3, 32, 32]}
templates:
  convbn:
    params: {c: null}
    layers: [{type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}, relu]
  block:
    params: {c: null, n: 2}
    layers: [{use: convbn, repeat: $n, c: $c}, {type: maxpool2d, kernel_size: 2}]
layers:
  - {use: block, name: b1, c: 8}
  - {use: block, name: b2, c: 16}
  - {use: block, name: b3, c: 16, n: 1}
""", encoding="utf-8")
    source = _source(path)
    assert "for _ in range(n - 1)" in source
    block = module_from_source(source).Block
    for n in (1, 3, 4):
        convs = [m for m in block(3, c=8, n=n).modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == n


def test_a_layer_given_in_a_use_keeps_its_template_expressions(tmp_path):
    """A shortcut written in `first:` of a use inside the template `stage` (stride: $stride),
    stage used only with stride 2: the class writes stride=stride there, not 2, so a Stage
    built with stride 1 is the block with stride 1 throughout."""
    path = tmp_path / "r.yaml"
    path.write_text("""\
input: {shape: [16, 32, 32]}
templates:
  basic:
    params: {width: 16, stride: 1, shortcut: []}
    type: residual
    body:
      - {type: conv2d, out_channels: $width, kernel_size: 3, stride: $stride, padding: 1}
    shortcut: $shortcut
  stage:
    params: {width: 16, stride: 2}
    layers:
      - use: basic
        repeat: 2
        width: $width
        first:
          stride: $stride
          shortcut: [{type: conv2d, out_channels: $width, kernel_size: 1, stride: $stride}]
layers:
  - {use: stage, name: layer2, width: 32}
  - {use: stage, name: layer3, width: 64}
""", encoding="utf-8")
    namespace = module_from_source(_source(path))
    stage = namespace.Stage(16, width=16, stride=1)
    assert stage(torch.zeros(1, 16, 32, 32)).shape == (1, 16, 32, 32)
    assert namespace.Stage(16, width=32)(torch.zeros(1, 16, 32, 32)).shape == (1, 32, 16, 16)


def _expanded(path) -> str:
    from shapecheck.commands.expand import to_yaml

    return to_yaml(shapecheck.load_spec(str(path)))


def test_state_dict_keys_follow_the_expanded_names():
    model = shapecheck.build_module(ROOT / "specs/zoo/resnet50.yaml", device="meta")
    keys = set(model.state_dict())
    assert {"conv1.weight", "layer1.0.body.0.weight", "layer1.0.shortcut.0.weight",
            "layer4.2.body.7.running_var", "fc.weight"} <= keys
    # The expanded spec's module has the same tensors under layer1_0 ... instead of layer1.0.
    flat = shapecheck.build_module(_expanded(ROOT / "specs/zoo/resnet50.yaml"), device="meta")
    renamed = {k.replace("_", ".", 1) if k.startswith("layer") else k: v.shape
               for k, v in flat.state_dict().items()}
    assert renamed == {k: v.shape for k, v in model.state_dict().items()}


def test_a_template_class_works_on_its_own():
    """A colleague can reuse the emitted class with other arguments."""
    namespace = module_from_source(_source(ROOT / "specs/zoo/mobilenet_v2.yaml"))
    stage = namespace.Stage(24, inp=24, c=40, t=4, n=3, s=2)
    out = stage(torch.zeros(1, 24, 32, 32))
    assert out.shape == (1, 40, 16, 16)
    assert len(stage) == 3  # a block, then n - 1 residual blocks from the loop


def test_scales_are_constants_and_make_divisible_is_written():
    source = _source(ROOT / "specs/zoo/mobilenet_v2.yaml", scale="x0_5")
    assert "# The scale x0_5's variables.\nWIDTH_MULT = 0.5\n" in source
    assert "def make_divisible(" in source
    model = shapecheck.build_module(shapecheck.load_spec(str(ROOT / "specs/zoo/mobilenet_v2.yaml"),
                                                         scale="x0_5"), device="meta")
    assert sum(p.numel() for p in model.parameters()) == \
        shapecheck.plan(str(ROOT / "specs/zoo/mobilenet_v2.yaml"), scale="x0_5").params


@pytest.mark.parametrize("path", SPECS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_spec_builds_and_matches_its_plan(path):
    """build_module checks every layer's shape and the parameter count on the meta device; the
    source stays within the line length."""
    plan = shapecheck.plan(str(path))
    generated = generate(plan)
    assert all(len(line) <= 100 for line in generated.source.splitlines())
    model = shapecheck.build_module(plan, device="meta")
    assert sum(p.numel() for p in model.parameters()) == plan.params


def test_instances_that_cannot_share_a_class_are_split():
    """mbconv with and without its expansion conv (e = 1) are two classes."""
    source = _source(ROOT / "specs/zoo/efficientnet.yaml")
    assert "class Mbconv(nn.Sequential):" in source and "class Mbconv2(nn.Sequential):" in source
