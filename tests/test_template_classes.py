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


def _matches_expanded(path, x: torch.Tensor, **kwargs) -> torch.nn.Module:
    """The templated build computes what the build of its expanded spec (plain layers)
    computes, with the same weights: tensors are copied over in order, shape for shape."""
    from shapecheck.commands.expand import to_yaml

    templated = shapecheck.build_module(path, device="cpu", **kwargs).eval()
    plain = shapecheck.build_module(to_yaml(shapecheck.load_spec(str(path))), device="cpu",
                                    **kwargs).eval()
    ours, theirs = templated.state_dict(), plain.state_dict()
    assert [v.shape for v in ours.values()] == [v.shape for v in theirs.values()]
    torch.manual_seed(0)
    for key, value in ours.items():
        if value.is_floating_point():  # a variance stays positive
            ours[key] = torch.rand_like(value) + 0.5 if "var" in key else torch.randn_like(value)
    templated.load_state_dict(ours)
    plain.load_state_dict(dict(zip(theirs, ours.values(), strict=True)))
    with torch.no_grad():
        assert torch.allclose(templated(x), plain(x))
    return templated



MBCONV = """\
input: {shape: [16, 32, 32]}
templates:
  se:
    params: {c: $in_channels}
    type: gate
    body:
      - {type: adaptiveavgpool2d, output_size: 1}
      - {type: conv2d, out_channels: $c // 4, kernel_size: 1}
      - relu
      - {type: conv2d, out_channels: $c, kernel_size: 1}
      - hardsigmoid
  mbconv:
    params: {t: 6, out: null, s: 1, se: false}
    layers:
      - when: $t != 1
        layers:
          - {type: conv2d, out_channels: $in_channels * $t, kernel_size: 1, bias: false}
          - batchnorm2d
          - relu6
      - {type: conv2d, out_channels: $in_channels, kernel_size: 3, stride: $s, padding: 1, groups: $in_channels, bias: false}
      - batchnorm2d
      - relu6
      - {use: se, when: $se}
      - {type: conv2d, out_channels: $out, kernel_size: 1, bias: false}
      - batchnorm2d
layers:
  - {use: mbconv, t: 1, out: 16}
  - {use: mbconv, out: 24, s: 2, se: true}
  - {use: mbconv, out: 24, t: 4, repeat: 2}
  - {type: avgpool2d, kernel_size: [$in_h, $in_w]}
  - flatten
  - {type: linear, out_features: 10}
"""


def test_when_and_in_channels_build_and_run(tmp_path):
    """MBConv with its expansion conv and SE under `when:`, depthwise by $in_channels: the
    classes build and compute what the plain layers compute."""
    path = tmp_path / "net.yaml"
    path.write_text(MBCONV, encoding="utf-8")
    model = _matches_expanded(path, torch.randn(2, 16, 32, 32))
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert [(m.in_channels, m.groups) for m in depthwise] == [(16, 16), (96, 96), (96, 96),
                                                              (96, 96)]
    assert sum(p.numel() for p in model.parameters()) == shapecheck.plan(path).params
    # For another input the templates are expanded again: 8 channels, depthwise by 8.
    other = shapecheck.build_module(path, device="cpu", input_shape=(8, 64, 48))
    assert other(torch.randn(1, 8, 64, 48)).shape == (1, 10)
    assert next(m for m in other.modules() if isinstance(m, torch.nn.Conv2d)).groups == 8
    # The classes say $in_channels as the channels that arrive, so they serve other widths.
    source = _source(path)
    assert "groups=in_channels * t," in source and "groups=in_channels," in source
    mbconv = module_from_source(source).Mbconv(32, out=8)  # t = 1: depthwise, then project
    assert mbconv(torch.zeros(1, 32, 8, 8)).shape == (1, 8, 8, 8)


def test_spliced_layers_build_and_run(tmp_path):
    """`- $pre` in a residual's body, given different layers by each use."""
    path = tmp_path / "pre.yaml"
    path.write_text("""\
input: {shape: [8, 16, 16]}
templates:
  block:
    params: {pre: [], c: 8}
    type: residual
    activation: relu
    body:
      - $pre
      - {type: conv2d, out_channels: $c, kernel_size: 3, padding: 1, bias: false}
      - batchnorm2d
layers:
  - {use: block}
  - {use: block, pre: [{type: conv2d, out_channels: 8, kernel_size: 1}, relu]}
  - {use: block, name: stage, pre: [batchnorm2d], repeat: 2}
""", encoding="utf-8")
    model = _matches_expanded(path, torch.randn(2, 8, 16, 16))
    assert [type(m).__name__ for m in model.stage[0].body] == ["BatchNorm2d", "Conv2d",
                                                              "BatchNorm2d"]


def test_repeats_of_one_use_that_need_two_classes(tmp_path):
    """`first:` gives the first repeat another layer type (`{type: $pre}` in a shortcut) and
    the uses differ in their residual's activation: each repeat is written with its own
    class (this was a KeyError in build)."""
    path = tmp_path / "two.yaml"
    path.write_text("""\
input: {shape: [8, 16, 16]}
templates:
  res:
    params: {act: relu, pre: relu}
    type: residual
    activation: $act
    body: [{type: conv2d, out_channels: 8, kernel_size: 1}]
    shortcut: [{type: $pre}]
layers:
  - {use: res, act: relu6}
  - {use: res, repeat: 2, first: {pre: identity}}
  - {use: res, pre: batchnorm2d, first: {pre: dropout}}
""", encoding="utf-8")
    _matches_expanded(path, torch.randn(2, 8, 16, 16))


def test_a_layer_type_parameter_in_a_residual_body_builds(tmp_path):
    """`{type: $pre}` in a residual's body with two values: the body becomes a module
    argument, without a default, beside `c`, which has one. Python wants it before `c` (build
    wrote it after, and its source failed with "non-default argument follows default
    argument")."""
    path = tmp_path / "pre.yaml"
    path.write_text("""\
input: {shape: [8, 16, 16]}
templates:
  res:
    params: {pre: relu, c: 8}
    type: residual
    body:
      - {type: $pre}
      - {type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}
    shortcut: [{type: conv2d, out_channels: $c, kernel_size: 1}]
layers:
  - {use: res}
  - {use: res, pre: gelu, c: 16}
""", encoding="utf-8")
    namespace = module_from_source(_source(path))
    params = inspect.signature(namespace.Res.__init__).parameters
    assert list(params) == ["self", "in_channels", "body", "c"] and params["c"].default == 8
    _matches_expanded(path, torch.randn(2, 8, 16, 16))
    res = namespace.Res(4, body=torch.nn.Sequential(torch.nn.SiLU(),
                                                    torch.nn.Conv2d(4, 8, 3, padding=1)))
    assert res(torch.zeros(1, 4, 16, 16)).shape == (1, 8, 16, 16)


def test_in_channels_after_named_inputs_builds_and_runs(tmp_path):
    """Depthwise convs by $in_channels after a cat and a layer that reads `from:` another:
    the module computes what the plain layers compute, and for another input as well."""
    path = tmp_path / "net.yaml"
    path.write_text("""\
input: {shape: [3, 16, 16]}
templates:
  dw:
    layers: [{type: conv2d, out_channels: $in_channels, kernel_size: 3, padding: 1, groups: $in_channels}, relu]
layers:
  - {type: conv2d, name: stem, out_channels: 8, kernel_size: 3, padding: 1}
  - {type: maxpool2d, kernel_size: 2}
  - {use: dw}
  - {type: upsample, size: {like: stem}}
  - {type: cat, from: [prev, stem]}
  - {use: dw}
  - {type: conv2d, from: stem, out_channels: 4, kernel_size: 1}
  - {use: dw}
""", encoding="utf-8")
    model = _matches_expanded(path, torch.randn(2, 3, 16, 16))
    assert [m.groups for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == \
        [1, 8, 16, 1, 4]
    other = shapecheck.build_module(path, device="cpu", input_shape=(3, 20, 12))
    assert other(torch.randn(1, 3, 20, 12)).shape == (1, 4, 20, 12)
