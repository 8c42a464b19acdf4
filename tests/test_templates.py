"""Templates, repeat, scales and expressions: what they expand to, where their errors point,
and that nothing in them can run code or grow without bound."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

import shapecheck
from shapecheck.cli import main
from shapecheck.core.diagnostics import InputError
from shapecheck.core.expressions import ExpressionError, evaluate, make_divisible

RESNET50 = """\
name: resnet50
input: {shape: [3, 224, 224]}
templates:
  bottleneck:
    params: {width: 64, stride: 1, shortcut: []}
    type: residual
    activation: relu
    body:
      - {type: conv2d, name: conv1, out_channels: $width, kernel_size: 1, bias: false}
      - {type: batchnorm2d, name: bn1}
      - relu
      - {type: conv2d, name: conv2, out_channels: $width, kernel_size: 3, stride: $stride, padding: 1, bias: false}
      - {type: batchnorm2d, name: bn2}
      - relu
      - {type: conv2d, name: conv3, out_channels: $width * 4, kernel_size: 1, bias: false}
      - {type: batchnorm2d, name: bn3}
    shortcut: $shortcut
  stage:
    params: {width: 64, blocks: 3, stride: 2}
    layers:
      - use: bottleneck
        repeat: $blocks
        width: $width
        first:
          stride: $stride
          shortcut:
            - {type: conv2d, name: downsample, out_channels: $width * 4, kernel_size: 1, stride: $stride, bias: false}
            - batchnorm2d
layers:
  - {type: conv2d, name: conv1, out_channels: 64, kernel_size: 7, stride: 2, padding: 3, bias: false}
  - {type: batchnorm2d, name: bn1}
  - relu
  - {type: maxpool2d, kernel_size: 3, stride: 2, padding: 1}
  - {use: stage, name: layer1, width: 64, blocks: 3, stride: 1}
  - {use: stage, name: layer2, width: 128, blocks: 4}
  - {use: stage, name: layer3, width: 256, blocks: 6}
  - {use: stage, name: layer4, width: 512, blocks: 3}
  - {type: adaptiveavgpool2d, output_size: 1}
  - flatten
  - {type: linear, name: fc, out_features: 1000}
"""

SCALED = """\
input: {shape: [3, 64, 64]}
scales:
  x1_0: {width_mult: 1.0, depth_mult: 1.0}
  x0_5: {width_mult: 0.5, depth_mult: 2.0}
default_scale: x1_0
templates:
  conv_bn:
    params: {out: 32, k: 3, s: 1}
    layers:
      - {type: conv2d, name: conv, out_channels: $out, kernel_size: $k, stride: $s, padding: ($k - 1) // 2, bias: false}
      - batchnorm2d
      - relu6
layers:
  - {use: conv_bn, name: stem, out: "make_divisible(32 * $width_mult, 8)", s: 2}
  - {use: conv_bn, name: blocks, repeat: "ceil(2 * $depth_mult)", out: "make_divisible((16 + 8 * $index) * $width_mult, 8)"}
  - {type: adaptiveavgpool2d, output_size: 1}
  - flatten
  - {type: linear, out_features: 10}
"""


def write(tmp_path, text: str, name: str = "net.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def only_error(plan):
    assert len(plan.errors) == 1, [(d.code, d.message) for d in plan.errors]
    return plan.errors[0]


# --- expressions --------------------------------------------------------------------------


def test_expressions_compute_what_torchvision_computes():
    env = {"width": 64, "width_mult": 0.5, "k": 3}
    assert evaluate("$width * 4", env) == 256
    assert evaluate("($k - 1) // 2", env) == 1
    assert evaluate("make_divisible(32 * $width_mult, 8)", env) == 16
    assert evaluate("max(8, min($width, 16))", env) == 16
    assert evaluate("ceil(3 * 1.1)", env) == 4
    assert evaluate("$width", env) == 64 and evaluate("$k", {"k": [1, 2]}) == [1, 2]
    # torchvision's _make_divisible: never more than 10% below the value
    assert [make_divisible(v, 8) for v in (16 * 0.75, 96 * 0.35, 1280 * 1.4, 3)] == [16, 32,
                                                                                     1792, 8]


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "$width.__class__", "(lambda: 1)()", "$width ** 99",
    "'a' * 3", "open('/etc/passwd')", "[1, 2]", "$width if 1 else 2", "print(1)",
])
def test_expressions_allow_only_arithmetic(text):
    with pytest.raises(ExpressionError):
        evaluate(text, {"width": 64})


def test_expression_errors_say_why():
    with pytest.raises(ExpressionError, match=r"did you mean \$width"):
        evaluate("$widht * 2", {"width": 64})
    with pytest.raises(ExpressionError, match="divides by zero"):
        evaluate("$width // 0", {"width": 64})
    with pytest.raises(ExpressionError, match="too large"):
        evaluate("$w * $w * $w * $w * $w", {"w": 2**100})
    with pytest.raises(ExpressionError, match="not a number"):
        evaluate("$s * 2", {"s": [1]})
    # a quoted expression missing its ")" is told so, not to quote it (the cut-at-a-comma hint)
    with pytest.raises(ExpressionError) as info:
        evaluate("max($c, 16", {"c": 8})
    assert info.value.hint == "a `(` is not closed: add its `)`"


# --- templates and repeat -----------------------------------------------------------------


def test_resnet50_from_templates_equals_torchvision(tmp_path):
    p = shapecheck.plan(write(tmp_path, RESNET50))
    assert p.valid, [d.message for d in p.diagnostics]
    assert p.params == 25_557_032  # torchvision's resnet50
    names = [row.name for row in p.layers]
    assert names[4:8] == ["layer1_0", "layer1_1", "layer1_2", "layer2_0"]
    assert names[-4:-3] == ["layer4_2"]
    first = p.layers[7]  # layer2_0: stride 2 and a projection only on the first repeat
    assert first.branches[1][0].name == "layer2_0_downsample"
    assert first.branches[0][3].spec.stride == 2 and p.layers[8].branches[0][3].spec.stride == 1
    assert p.layers[8].branches[1] == []  # identity shortcut after the first
    assert first.explain == ["body 512×28×28 + shortcut 512×28×28 = 512×28×28, then relu"]
    assert len(RESNET50.splitlines()) <= 50


def test_errors_inside_templates_name_both_places(tmp_path):
    broken = RESNET50.replace("kernel_size: 3, stride: $stride, padding: 1",
                              "kernel_size: 3, stride: $stride, padding: 0")
    path = write(tmp_path, broken)
    error = only_error(shapecheck.plan(path))
    assert (error.code, error.layer, error.line, error.column) == ("SC211", 4, 34, 5)
    assert error.message.endswith(f"(in template bottleneck at {path}:4:3, used in template "
                                  f"stage at {path}:21:9)")
    schema = RESNET50.replace("{type: batchnorm2d, name: bn3}", "{type: batchnorm2d, nmae: x}")
    error = only_error(shapecheck.plan(write(tmp_path, schema)))
    assert (error.code, error.line) == ("SC102", 34) and "did you mean 'name'" in error.hint
    assert f"in template bottleneck at {path}:16:29" in error.message  # the key
    assert error.message.endswith("the same in 15 more uses of the template")


def test_a_default_may_be_an_expression_of_the_parameters_before_it(tmp_path):
    path = write(tmp_path, textwrap.dedent("""\
        input: {shape: [16, 8, 8]}
        templates:
          block:
            params: {width: 16, out: $width * 4}
            layers: [{type: conv2d, out_channels: $width, kernel_size: 1},
                     {type: conv2d, out_channels: $out, kernel_size: 1}]
        layers:
          - {use: block, width: 8}          # out = 32
          - {use: block, width: 4, out: 10} # given
          - {use: block}                    # out = 64
        """))
    plan = shapecheck.plan(path)
    assert [layer.output_dims[1] for layer in plan.layers] == [8, 32, 4, 10, 16, 64]
    broken = path.read_text(encoding="utf-8").replace("$width * 4", "$wdth * 4")
    error = only_error(shapecheck.plan(write(tmp_path, broken)))
    assert (error.code, error.line) == ("SC109", 8) and "did you mean $width" in error.message
    assert error.message.endswith(f"(in template block at {tmp_path / 'net.yaml'}:4:25)")  # the key


def test_an_unknown_name_in_a_template_points_at_the_use_and_the_template(tmp_path, capsys):
    path = write(tmp_path, RESNET50.replace("out_channels: $width * 4, kernel_size: 1, bias",
                                            "out_channels: $widht * 4, kernel_size: 1, bias"))
    assert main(["plan", str(path)]) == 1
    err = capsys.readouterr().out
    assert f"{path}:34:5: error[SC109]: $widht is not defined here (did you mean $width?" in err
    assert "(in template bottleneck at" in err


@pytest.mark.parametrize(("change", "code", "hint"), [
    ("{use: stage, name: layer2, width: 128, blocks: 4}", "SC108", None),
    ("{use: stag, name: layer2}", "SC108", "did you mean 'stage'?"),
    ("{use: stage, name: layer2, widht: 128}", "SC108",
     "did you mean 'width'? (parameters: width, blocks, stride)"),
    ("{use: stage, name: layer2, out_channels: 128}", "SC108",
     "its parameters: width, blocks, stride"),
    ("{use: stage, name: layer2, repeat: -1}", "SC103", None),
])
def test_uses_that_cannot_expand(tmp_path, change, code, hint):
    text = RESNET50.replace("{use: stage, name: layer2, width: 128, blocks: 4}", change)
    if change.startswith("{use: stage, name: layer2, width: 128"):
        text = text.replace("params: {width: 64, blocks: 3, stride: 2}",
                            "params: {width: 64, blocks: 3, stride: null}")
    error = only_error(shapecheck.plan(write(tmp_path, text)))
    assert (error.code, error.line) == (code, 35)
    if hint:
        assert error.hint == hint
    if "parameters" in (hint or ""):  # the message names the template the use calls
        assert error.message.startswith("template stage has no parameter ")


@pytest.mark.parametrize(("value", "hint"), [
    ("$c / 2", "`/` gives a float: use `//` or int(...)"),
    ("c * 2", "an expression names its parameters with `$`, as in `$c * 2`"),
])
def test_a_width_that_is_no_integer_says_how_to_make_one(tmp_path, value, hint):
    path = write(tmp_path, f"""\
        input: {{shape: [3, 32, 32]}}
        templates:
          cb:
            params: {{c: 16}}
            layers: [{{type: conv2d, out_channels: {value}, kernel_size: 3}}]
        layers: [{{use: cb, c: 32}}]
        """)
    d = only_error(shapecheck.plan(path))
    assert d.code == "SC103" and "out_channels: must be an integer" in d.message
    assert hint in d.hint


def test_a_warning_in_a_template_is_one_warning_for_all_its_uses(tmp_path):
    """A conv bias before batchnorm written once in a template used three times: one SC303, at
    the first use, counting the others; a warning outside the template stays its own."""
    path = write(tmp_path, """\
        input: {shape: [3, 32, 32]}
        templates:
          cbr:
            params: {c: 8}
            layers: [{type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}, batchnorm2d, relu]
        layers:
          - {use: cbr, name: a}
          - {use: cbr, name: b, c: 16}
          - {use: cbr, name: c, c: 32}
          - {type: conv2d, out_channels: 8, kernel_size: 1}
          - batchnorm2d
        """)
    warnings = [d for d in shapecheck.plan(path).diagnostics if d.code == "SC303"]
    assert [d.line for d in warnings] == [7, 10]
    assert warnings[0].message.endswith("; the same in 2 more uses of the template")
    assert "the same in" not in warnings[1].message


def test_templates_that_use_each_other_in_a_cycle(tmp_path):
    p = shapecheck.plan(write(tmp_path, """\
        input: {shape: [3, 8, 8]}
        templates:
          a: {layers: [relu, {use: b}]}
          b: {type: residual, body: [{use: a}]}
        layers: [{use: a}]
        """))
    error = only_error(p)
    assert error.code == "SC110" and "a → b → a" in error.message


def test_an_expansion_bomb_is_refused_quickly(tmp_path):
    path = write(tmp_path, """\
        input: {shape: [3, 8, 8]}
        templates:
          t1: {layers: [relu], params: {}}
          t2: {layers: [{use: t1, repeat: 1000}]}
          t3: {layers: [{use: t2, repeat: 1000}]}
        layers: [{use: t3, repeat: 1000000000}]
        """)
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        shapecheck.plan(path)
    d = info.value.diagnostic
    assert d.code == "SC004" and "expands to more than 20,000" in d.message
    assert d.line == 6 and "repeat inside a repeated template multiplies" in d.hint
    assert time.perf_counter() - start < 30  # bounded by the layer limit, not the expansion


def _nested(levels: int, inner: str) -> str:
    for _ in range(levels):
        inner = "{type: residual, body: [" + inner + "]}"
    return inner


def _chain(n: int, block: bool) -> str:
    """Templates t0 … t(n-1), each using the next: residuals (blocks in blocks) or lists."""
    lines = ["input: {shape: [8, 16, 16]}", "templates:"]
    for i in range(n):
        inner = f"{{use: t{i + 1}}}" if i < n - 1 else \
            "{type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}"
        lines += [f"  t{i}:", *(["    type: residual", f"    body: [{inner}]"] if block
                                  else [f"    layers: [{inner}]"])]
    return "\n".join([*lines, "layers: [{use: t0}, flatten, {type: linear, out_features: 10}]"])


@pytest.mark.parametrize("block", [True, False])
def test_templates_nested_too_deep_are_refused_in_one_line(tmp_path, block):
    """Templates using templates 1,000 deep: SC004 at the use in the spec, exit 2, no
    RecursionError; the chain of uses shortened to its ends."""
    path = tmp_path / "deep.yaml"
    path.write_text(_chain(1000, block), encoding="utf-8")
    with pytest.raises(InputError) as info:
        shapecheck.plan(path)
    d = info.value.diagnostic
    assert d.code == "SC004" and d.line == (3003 if block else 2003)  # the use in `layers`
    assert d.message.startswith("templates use templates more than 50 deep (in template t49 at")
    assert "… 47 more uses, used in template t0 at" in d.message
    assert d.message.count("used in template") == 2
    assert main(["check", str(path)]) == 2


def test_blocks_nested_too_deep_by_templates_are_refused(tmp_path):
    """Three templates of 20 blocks in blocks each, one inside the next: 60 levels."""
    path = write(tmp_path, "input: {shape: [8, 16, 16]}\ntemplates:\n" + "".join(
        f"  {t}:\n    layers: [{_nested(20, inner)}]\n"
        for t, inner in (("a", "{use: b}"), ("b", "{use: c}"), ("c", "relu")))
        + "layers: [{use: a}]\n")
    with pytest.raises(InputError) as info:
        shapecheck.plan(path)
    d = info.value.diagnostic
    assert d.code == "SC004" and "nests blocks more than 50 deep" in d.message
    assert "(in template c at" in d.message and "used in template a at" in d.message


def test_templates_nested_to_the_limit_plan_and_build(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(_chain(49, True), encoding="utf-8")
    plan = shapecheck.plan(path)
    assert plan.valid and plan.params == (8 * 8 * 9 + 8) + (8 * 16 * 16 * 10 + 10)  # conv, fc
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        module = shapecheck.build_module(path)
    assert sum(p.numel() for p in module.parameters()) == plan.params


# --- scales -------------------------------------------------------------------------------


def test_scales_change_widths_and_depths(tmp_path, capsys):
    path = write(tmp_path, SCALED)
    default = shapecheck.plan(path)
    half = shapecheck.plan(path, scale="x0_5")
    assert default.scale == "x1_0" and half.scale == "x0_5" and half.scales == ("x1_0", "x0_5")
    convs = [r for r in half.walk() if r.type == "conv2d"]
    assert [r.spec.out_channels for r in convs] == [16, 8, 16, 16, 24]  # ceil(2 × 2) repeats
    assert [r.name for r in convs] == ["stem_conv", "blocks_0_conv", "blocks_1_conv",
                                       "blocks_2_conv", "blocks_3_conv"]
    assert [r.spec.out_channels for r in default.walk() if r.type == "conv2d"] == [32, 16, 24]
    assert main(["plan", str(path), "--scale", "x2"]) == 1
    err = capsys.readouterr().out
    assert "error[SC111]: unknown scale 'x2'" in err and "scales: x1_0, x0_5" in err
    assert main(["plan", str(path), "--scale", "x0_5", "--format", "json"]) == 0
    assert '"scale": "x0_5"' in capsys.readouterr().out


def test_a_scale_for_a_spec_without_scales(tmp_path, capsys):
    path = write(tmp_path, "input: {shape: [1, 8, 8]}\nlayers: [relu]\n")
    assert main(["plan", str(path), "--scale", "x1_0"]) == 1
    assert "SC111" in capsys.readouterr().out


def test_a_flow_mapping_cut_at_a_comma_gets_a_quoting_hint(tmp_path):
    text = SCALED.replace('out: "make_divisible(32 * $width_mult, 8)"',
                          "out: make_divisible(32 * $width_mult, 8)")
    error = only_error(shapecheck.plan(write(tmp_path, text)))
    assert error.code == "SC109" and "quote the expression" in error.hint


# --- expand -------------------------------------------------------------------------------


def test_expand_round_trips(tmp_path, capsys):
    for text, scale in ((RESNET50, None), (SCALED, "x0_5"), (MBCONV, None)):
        path = write(tmp_path, text)
        args = ["expand", str(path)] + (["--scale", scale] if scale else [])
        assert main(args) == 0
        expanded = write(tmp_path, capsys.readouterr().out, "expanded.yaml")
        assert "use:" not in expanded.read_text() and "$" not in expanded.read_text()
        original, again = shapecheck.plan(path, scale=scale), shapecheck.plan(expanded)
        assert again.valid
        for a, b in zip(original.walk(), again.walk(), strict=True):
            assert (a.name, a.type, a.output_shape, a.params, a.macs) == \
                (b.name, b.type, b.output_shape, b.params, b.macs)
        assert original.to_dict()["totals"] == again.to_dict()["totals"]


def test_expand_explain_shows_the_arithmetic(tmp_path, capsys):
    assert main(["expand", str(write(tmp_path, SCALED)), "--scale", "x0_5", "--explain"]) == 0
    out = capsys.readouterr().out
    assert ("# stem: use conv_bn; out: make_divisible(32 * $width_mult, 8) = "
            "make_divisible(32 * 0.5, 8) = 16; s: 2") in out
    assert "# padding: ($k - 1) // 2 = (3 - 1) // 2 = 1" in out
    # each repeat says which it is, as the $index the template reads
    assert ("# blocks: use conv_bn × 4, $index 1; out: make_divisible((16 + 8 * $index) * "
            "$width_mult, 8) = make_divisible((16 + 8 * 1) * 0.5, 8) = 16") in out


# --- residual activation, build -----------------------------------------------------------


def test_a_residual_activation_is_built_and_runs(tmp_path):
    torch = pytest.importorskip("torch")
    path = write(tmp_path, """\
        input: {shape: [4, 6, 6]}
        layers:
          - type: residual
            activation: relu
            body: [{type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}]
        """)
    from shapecheck.emit.codegen import generate_source

    source = generate_source(shapecheck.plan(path))
    assert "activation=nn.ReLU()," in source
    model = shapecheck.build_module(path, device="cpu")
    x = torch.randn(2, 4, 6, 6)
    block = model.res1
    expected = torch.relu(block.body(x) + x)
    assert torch.equal(model(x), expected) and (model(x) >= 0).all()


@pytest.mark.parametrize("activation", ["conv2d", "prelu"])
def test_a_residual_activation_must_be_an_activation(tmp_path, activation):
    """One without weights: the block's params are its branches' (prelu has a weight)."""
    p = shapecheck.plan(write(tmp_path, f"""\
        input: {{shape: [4, 6, 6]}}
        layers: [{{type: residual, activation: {activation}, body: [relu]}}]
        """))
    error = only_error(p)
    assert error.code == "SC103" and "relu" in error.message and "prelu," not in error.message


def test_check_checks_every_scale(tmp_path, capsys):
    # At x0_5 the grouped conv gets 12 channels, which 8 groups do not divide.
    text = SCALED.replace("  - {type: adaptiveavgpool2d, output_size: 1}\n",
                          "  - {type: conv2d, out_channels: \"make_divisible(24 * $width_mult, 4)\", "
                          "kernel_size: 1, groups: 8}\n  - {type: adaptiveavgpool2d, output_size: 1}\n")
    path = write(tmp_path, text)
    assert shapecheck.plan(path).valid
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "error[SC206]" in out and out.count("[scale x0_5]") == 1
    assert main(["check", str(path), "--scale", "x1_0"]) == 0
    capsys.readouterr()


def test_repeat_zero_makes_no_layers(tmp_path):
    """A depth-scaled stage may have no repeats at one scale (EfficientNet-B0's n = 1 stages:
    ceil(1 * depth_mult) - 1 is 0 there, 1 at B1)."""
    text = SCALED.replace('repeat: "ceil(2 * $depth_mult)"', 'repeat: "ceil(2 * $depth_mult) - 2"')
    plan = shapecheck.plan(write(tmp_path, text))
    assert plan.valid and not any(layer.name.startswith("blocks") for layer in plan.layers)
    assert any(layer.name.startswith("blocks") for layer in
               shapecheck.plan(write(tmp_path, text), scale="x0_5").layers)


def test_a_named_use_names_the_layers_it_makes(tmp_path):
    """`{use: down, name: enc1}` shows as enc1 in plan, render and the page (build writes
    self.enc1): its unnamed layers take the name first. The other layers keep their names,
    so a module's weight keys do not change."""
    text = """\
        input: {shape: [3, 32, 32]}
        templates:
          down:
            params: {c: 8}
            layers:
              - {type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}
              - relu
              - {type: conv2d, name: squeeze, out_channels: $c, kernel_size: 1}
        layers:
          - {use: down, name: enc1, c: 8}
          - {use: down, c: 16}
          - {type: conv2d, out_channels: 4, kernel_size: 1}
        """
    named = shapecheck.plan(write(tmp_path, text))
    assert [layer.name for layer in named.layers] == [
        "enc1_conv1", "enc1_relu1", "enc1_squeeze", "conv2", "relu2", "down1_squeeze", "conv3"]
    unnamed = shapecheck.plan(write(tmp_path, text.replace(", name: enc1", ""), "plain.yaml"))
    assert [unnamed.layers[i].name for i in (3, 4, 6)] == ["conv2", "relu2", "conv3"]


# --- spliced layers, when:, the incoming shape --------------------------------------------

MBCONV = """\
input: {shape: [16, 32, 32]}
templates:
  se:                                # squeeze-and-excitation: c is the channels that arrive
    params: {c: $in_channels, squeeze: 4}
    type: gate
    body:
      - {type: adaptiveavgpool2d, output_size: 1}
      - {type: conv2d, out_channels: $c // $squeeze, kernel_size: 1}
      - relu
      - {type: conv2d, out_channels: $c, kernel_size: 1}
      - hardsigmoid
  mbconv:
    params: {t: 6, out: null, s: 1, se: false}
    layers:
      - when: $t != 1                # the expansion conv, only where there is one
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
  - {use: mbconv, out: 24, t: 4}
  - {type: avgpool2d, kernel_size: [$in_h, $in_w]}
  - flatten
  - {type: linear, out_features: 10}
"""


def test_in_channels_is_the_channels_that_arrive_where_the_expression_stands(tmp_path):
    """A depthwise conv's groups: $in_channels is its own input's channels; in a parameter's
    default it is those arriving at the use (the SE's c); $in_h, $in_w are the size there."""
    plan = shapecheck.plan(write(tmp_path, MBCONV))
    assert plan.valid, [d.message for d in plan.diagnostics]
    convs = [r for r in plan.walk() if r.type == "conv2d"]
    depthwise = [r for r in convs if r.spec.kernel_size == 3]
    assert [(r.input_dims[1], r.spec.groups) for r in depthwise] == [(16, 16), (96, 96), (96, 96)]
    # t = 1 has no expansion conv; t = 6 and 4 expand 16 and 24 channels
    assert [r.spec.out_channels for r in convs if r.spec.kernel_size == 1
            and r.input_dims[2] > 1] == [16, 96, 24, 96, 24]
    se = next(r for r in plan.walk() if r.type == "gate")
    assert [r.output_dims[1] for r in se.branches[0][1:4:2]] == [24, 96]
    pool = next(r for r in plan.walk() if r.type == "avgpool2d")
    assert pool.spec.kernel_size == (16, 16) and pool.output_dims[2:] == (1, 1)
    assert plan.params == 16_232 + 24 * 10 + 10


def test_the_incoming_shape_follows_another_input(tmp_path, capsys):
    """Planned at another --input the templates are expanded again for it: groups follow the
    channels and the pool the size. solve cannot follow $in_h and says so."""
    path = write(tmp_path, MBCONV)
    plan = shapecheck.plan(path, input_shape=(8, 64, 48))
    assert plan.valid
    first = next(r for r in plan.walk() if r.type == "conv2d")
    assert (first.spec.groups, first.spec.out_channels) == (8, 8)
    pool = next(r for r in plan.walk() if r.type == "avgpool2d")
    assert pool.spec.kernel_size == (32, 24) and pool.output_dims[2:] == (1, 1)
    assert main(["solve", str(path)]) == 2
    assert "its templates read the incoming height or width" in capsys.readouterr().out
    # Without $in_h and $in_w, solve works as for any spec.
    fixed = write(tmp_path, MBCONV.replace("kernel_size: [$in_h, $in_w]", "kernel_size: 16"),
                  "fixed.yaml")
    assert main(["solve", str(fixed)]) == 0
    capsys.readouterr()


def test_the_incoming_shape_after_a_layer_that_fails(tmp_path):
    """A template reads $in_channels after a layer that fails: that layer's own error, at its
    line, as planning reports it; after an entry that breaks the schema, SC113 names it."""
    text = """\
        input: {shape: [16, 8, 8]}
        templates:
          dw:
            layers: [{type: conv2d, out_channels: $in_channels, kernel_size: 3, groups: $in_channels}]
        layers:
          - {type: conv2d, out_channels: 16, kernel_size: 9}
          - {use: dw}
        """
    error = only_error(shapecheck.plan(write(tmp_path, text)))
    assert (error.code, error.line) == ("SC201", 6)
    assert error.message.startswith("kernel 9×9 (effective 9 with dilation 1) is larger than")
    assert "a template after it reads the incoming shape" in error.message
    broken = text.replace("kernel_size: 9}", "kernel_size: 1, colour: red}")
    error = only_error(shapecheck.plan(write(tmp_path, broken)))
    assert (error.code, error.line) == ("SC113", 7)
    assert "not known here: the layer at layers[0], before it, does not follow the schema" \
        in error.message


def test_a_parameter_s_layers_are_spliced_into_a_body(tmp_path):
    """`- $pre` in a body: the use's list of layers stands there (none for the default [])."""
    path = write(tmp_path, """\
        input: {shape: [8, 16, 16]}
        templates:
          block:
            params: {pre: [], c: 8}
            type: residual
            body:
              - $pre
              - {type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}
        layers:
          - {use: block}
          - {use: block, pre: [{type: conv2d, out_channels: 8, kernel_size: 1}, relu]}
          - {use: block, pre: [batchnorm2d], repeat: 2}
        """)
    plan = shapecheck.plan(path)
    assert plan.valid, [d.message for d in plan.diagnostics]
    bodies = [[r.type for r in layer.branches[0]] for layer in plan.layers]
    assert bodies == [["conv2d"], ["conv2d", "relu", "conv2d"], ["batchnorm2d", "conv2d"],
                      ["batchnorm2d", "conv2d"]]
    assert plan.params == 584 + (72 + 584) + 2 * (16 + 584)


@pytest.mark.parametrize(("when", "kept"), [
    ('"$t != 1"', True), ('"$t == 1"', False), ('"$t > 1 and not $se"', True),
    ('"$t < 1 or $se"', False), ("true", True), ("false", False), ("$se", False),
])
def test_when_keeps_or_leaves_out_a_layer_a_use_or_a_group(tmp_path, when, kept):
    path = write(tmp_path, f"""\
        input: {{shape: [8, 16, 16]}}
        templates:
          act: {{layers: [relu6]}}
          t:
            params: {{t: 6, se: false}}
            layers:
              - {{type: conv2d, out_channels: 8, kernel_size: 1, when: {when}}}
              - {{use: act, when: {when}}}
              - when: {when}
                layers: [batchnorm2d, relu]
              - {{type: conv2d, out_channels: 4, kernel_size: 1}}
        layers: [{{use: t}}]
        """)
    plan = shapecheck.plan(path)
    assert plan.valid
    types = [r.type for r in plan.layers]
    assert types == (["conv2d", "relu6", "batchnorm2d", "relu", "conv2d"] if kept else ["conv2d"])


@pytest.mark.parametrize(("entry", "message"), [
    ('{type: relu, when: "$t"}', "when: must be true or false, got 6"),
    ("{when: true, layers: [relu], name: x}", "a `when:` group holds only `layers:`"),
    ("{when: true, layers: relu}", "a `when:` group holds only `layers:`"),
])
def test_a_when_that_is_not_true_or_false_is_sc113(tmp_path, entry, message):
    path = write(tmp_path, f"""\
        input: {{shape: [8, 16, 16]}}
        templates:
          t:
            params: {{t: 6}}
            layers: [{entry}]
        layers: [relu, {{use: t}}]
        """)
    error = only_error(shapecheck.plan(path))
    assert (error.code, error.line) == ("SC113", 6) and message in error.message


def test_comparisons_and_tests_in_expressions():
    env = {"t": 6, "se": True, "c": 16}
    assert evaluate("$t != 1", env) is True and evaluate("1 < $t <= 6", env) is True
    assert evaluate("$t == 1 or not $se", env) is False
    assert evaluate("$se and max($c, 8) > 8", env) is True
    with pytest.raises(ExpressionError, match="not true or false"):
        evaluate("$c and $se", env)
    with pytest.raises(ExpressionError, match="true or false, not a number"):
        evaluate("($t > 1) * 2", env)


@pytest.mark.parametrize(("entry", "quoted"), [
    ("{type: conv2d, out_channels: max(8, $c), kernel_size: 1}", 'out_channels: "max(8, $c)"'),
    ("{use: inner, width: max(8, $c)}", 'width: "max(8, $c)"'),
])
def test_a_comma_before_the_dollar_gets_the_quoting_hint_too(tmp_path, entry, quoted):
    """In {…} `max(8, $c)` reads as a value "max(8" and a key "$c)": the hint says to quote."""
    path = write(tmp_path, f"""\
        input: {{shape: [8, 16, 16]}}
        templates:
          inner:
            params: {{width: 8}}
            layers: [{{type: conv2d, out_channels: $width, kernel_size: 1}}]
          t:
            params: {{c: 16}}
            layers: [{entry}]
        layers: [{{use: t}}]
        """)
    error = only_error(shapecheck.plan(path))
    assert (error.code, error.line) == ("SC109", 9)
    assert "is cut short" in error.message and error.hint == f"quote the expression: {quoted}"


def test_in_channels_inside_blocks_is_what_each_branch_gets(tmp_path):
    """A split's branches get its chunks, a residual's and a concat's the block's input; after
    a block, what it gives (a residual without `shortcut:` included)."""
    path = write(tmp_path, """\
        input: {shape: [16, 8, 8]}
        templates:
          dw:
            layers: [{type: conv2d, out_channels: $in_channels, kernel_size: 3, padding: 1, groups: $in_channels}]
        layers:
          - {type: split, branches: [[{use: dw}], [{type: conv2d, out_channels: 4, kernel_size: 1}, {use: dw}]]}
          - {type: residual, body: [{use: dw}], shortcut: [{use: dw}]}
          - {type: residual, body: [{use: dw}]}
          - {type: concat, branches: [[{use: dw}], [{type: conv2d, out_channels: 4, kernel_size: 1}]]}
          - {use: dw}
        """)
    plan = shapecheck.plan(path)
    assert plan.valid
    groups = [r.spec.groups for r in plan.walk() if r.type == "conv2d" and r.spec.kernel_size == 3]
    assert groups == [8, 4, 12, 12, 12, 12, 16]


def test_each_repeat_sees_what_the_one_before_gives(tmp_path):
    path = write(tmp_path, """\
        input: {shape: [4, 8, 8]}
        templates:
          b:
            params: {c: 8}
            layers: [{type: conv2d, out_channels: $c, kernel_size: 1}]
        layers:
          - {use: b, repeat: 3, c: $in_channels * 2}
          - flatten
          - {type: linear, out_features: $in_channels // 2}
          - {type: linear, out_features: 3, when: $in_h > 1}
        """)
    error = only_error(shapecheck.plan(path))  # after the flatten there is no height
    assert (error.code, error.line) == ("SC113", 10)
    assert error.message == "$in_h is not known here: the tensor that arrives is 1024, without " \
        "a height and width"
    plan = shapecheck.plan(write(tmp_path, path.read_text().replace(", when: $in_h > 1", "")))
    assert [r.output_dims[1] for r in plan.layers] == [8, 16, 32, 2048, 1024, 3]


GRAPH = """\
input: {shape: [3, 16, 16]}
templates:
  dw:
    layers: [{type: conv2d, out_channels: $in_channels, kernel_size: 3, padding: 1, groups: $in_channels}, relu]
  cbr:
    params: {c: 8}
    layers: [{type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}, relu]
layers:
  - {type: conv2d, name: stem, out_channels: 8, kernel_size: 3, padding: 1}
  - {use: cbr, name: enc, c: 16}
  - {type: maxpool2d, kernel_size: 2}
  - {use: dw}
  - {type: upsample, size: {like: enc}}
  - {type: cat, name: joined, from: [prev, enc]}
  - {use: dw}
  - {type: conv2d, from: stem, out_channels: 4, kernel_size: 1}
  - {use: dw}
  - {type: conv2d, from: joined, out_channels: $in_channels // 2, kernel_size: 1}
  - {type: add, from: [prev, enc]}
  - {use: dw}
"""


def test_in_channels_follows_named_inputs(tmp_path):
    """After a layer that reads by name (`from:`, a merge, `size: {like: …}`), the channels
    that arrive are those of the tensor it reads or makes: a named layer's, a use's last."""
    plan = shapecheck.plan(write(tmp_path, GRAPH))
    assert plan.valid, [d.message for d in plan.diagnostics]
    groups = [r.spec.groups for r in plan.layers if r.type == "conv2d" and r.spec.groups > 1]
    assert groups == [16, 32, 4, 16]
    assert plan.layers[13].spec.out_channels == 16  # from joined: 32 // 2
    # a layer read by a name the expansion does not follow (an automatic name)
    text = GRAPH.replace("from: stem,", "from: enc_conv1,")
    error = only_error(shapecheck.plan(write(tmp_path, text, "auto.yaml")))
    assert error.code == "SC113" and "reads `from: enc_conv1`, whose shape is not followed" \
        in error.message


def test_features_after_a_flatten_follow_the_size(tmp_path, capsys):
    """$in_channels after a flatten is C×H×W: another size expands the templates again, and
    solve says it cannot follow; channels alone are the same at every size."""
    path = write(tmp_path, """\
        input: {shape: [4, 8, 8]}
        templates:
          head:
            layers: [flatten, {type: linear, out_features: $in_channels // 4}]
        layers:
          - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1, groups: $in_channels}
          - {use: head}
        """)
    assert shapecheck.plan(path).params == (8 * 9 + 8) + (512 * 128 + 128)
    assert shapecheck.plan(path, input_shape=(4, 4, 4)).layers[-1].output_dims == (1, 32)
    assert main(["solve", str(path)]) == 2
    assert "$in_channels after a flatten" in capsys.readouterr().out
    channels_only = write(tmp_path, path.read_text().replace("$in_channels // 4", "10"), "c.yaml")
    assert main(["solve", str(channels_only)]) == 0
    capsys.readouterr()


def test_a_use_that_when_leaves_empty_makes_nothing(tmp_path, capsys):
    """A use whose layers `when:` all leaves out makes no layer and no note, and build
    writes the other uses as usual."""
    path = write(tmp_path, """\
        input: {shape: [8, 8, 8]}
        templates:
          opt:
            params: {on: false}
            layers: [{type: relu, when: $on}]
        layers:
          - {use: opt, name: a}
          - {use: opt, name: b, on: true, repeat: 2}
          - {type: conv2d, out_channels: 4, kernel_size: 1}
        """)
    assert [r.name for r in shapecheck.plan(path).layers] == ["b_0_relu1", "b_1_relu2", "conv1"]
    assert main(["expand", str(path), "--explain"]) == 0
    assert "# a: use opt" not in capsys.readouterr().out
    torch = pytest.importorskip("torch")
    model = shapecheck.build_module(path, device="cpu")
    assert model(torch.randn(1, 8, 8, 8)).shape == (1, 4, 8, 8)


@pytest.mark.parametrize("written, escaped", [
    # an expression and a `when:` key, written out and as double-quoted escapes
    ('out_channels: "$c"', 'out_channels: "\\x24c"'),
    ("when: false", '"wh\\x65n": false'),
])
def test_an_escaped_dollar_or_key_counts_as_written(written, escaped):
    """The loader skips its walk for templates when the text has no `$`, `use` or `when`:
    an escape writes them without those characters, and must be seen all the same."""
    def plan_of(field: str):
        return shapecheck.plan(textwrap.dedent(f"""\
            input: {{shape: [3, 8, 8]}}
            layers:
              - {{type: conv2d, kernel_size: 3, out_channels: 2, {field}}}
            """).replace(", out_channels: 2, out_channels", ", out_channels"))

    ours, theirs = plan_of(escaped), plan_of(written)
    assert [(d.code, d.message) for d in ours.diagnostics] == \
        [(d.code, d.message) for d in theirs.diagnostics]
    assert [r.output_shape for r in ours.layers] == [r.output_shape for r in theirs.layers]
