"""The third hostile-input pass, for the commands that need no torch: names that would become
Python identifiers, work that grew faster than the input, tracebacks, forged terminal lines and
wrong answers in `plan`, `check`, `expand` and `solve`. Emitting the source `build` writes needs
no torch either; importing it does, and is tested in test_hostile.py."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from conftest import SPECS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import assert_clean, cli

import shapecheck
from shapecheck.commands.check import MAX_CHECKED_LAYERS
from shapecheck.core import expressions, templates
from shapecheck.core.inputsizes import MAX_STEPS, solve
from shapecheck.emit.codegen import InternalError, generate_source

LIMIT_S = 10.0  # each command, on a loaded 2-core machine; they used to run for minutes

SMALL = """\
name: small
input: {shape: [1, 8, 8]}
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 3}
  - relu
  - flatten
  - {type: linear, name: fc, out_features: 3}
"""


def write(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(r, code: str, exit_code: int, *words: str) -> None:
    assert_clean(r, limit=LIMIT_S)
    assert r.code == exit_code, str(r)
    assert f"error[{code}]" in r.out, str(r)
    for word in words:
        assert word in r.out, str(r)


# ---------------------------------------------------------------- names


# Every place a spec names something that build writes as a Python name.
NAMED = """\
name: {spec}
input: {{shape: [1, 8, 8]}}
scales:
  {scale}: {{{variable}: 2}}
templates:
  {template}:
    params: {{{param}: 4}}
    layers:
      - {{type: conv2d, name: {layer}, out_channels: ${param} * ${variable}, kernel_size: 3}}
      - relu
layers:
  - {{use: {template}, name: {use}, {param}: 3}}
  - flatten
  - {{type: linear, name: fc, out_features: 3}}
"""
PLAIN = {"spec": "net", "scale": "s1", "variable": "w", "template": "unit", "param": "c",
         "layer": "conv", "use": "stem"}


def named(**names: str) -> str:
    return NAMED.format(**{**PLAIN, **names})


@pytest.mark.parametrize("place", sorted(PLAIN))
@pytest.mark.parametrize("name, why", [
    ("class", "a Python keyword"), ("lambda", "a Python keyword"), ("None", "a Python keyword"),
    ("__class__", "Python's own"), ("__init__", "Python's own"),
    ("ñu", "letters, digits and _"), ("conv-bn", "letters, digits and _"),
], ids=["class", "lambda", "None", "__class__", "__init__", "non-ascii", "hyphen"])
def test_names_that_cannot_be_python_names_are_refused_when_read(tmp_path, place, name, why):
    if place in ("param", "variable") and not re.fullmatch(r"[A-Za-z_]\w*", name):
        pytest.skip("an expression's $name is ASCII: the spec fails on the expression first")
    spec = write(tmp_path, named(**{place: json.dumps(name)}))
    for r in (cli("plan", spec), cli("check", spec), cli("expand", spec)):
        refused(r, "SC105", 1, "is not a Python identifier", why, "hint: use a name such as")


def test_a_use_name_that_is_not_a_string_is_refused(tmp_path):
    for value in ("null", "5", "[a]"):
        spec = write(tmp_path, named(use=value))
        refused(cli("plan", spec), "SC105", 1, "the use's name")


def test_template_names_that_would_be_one_class_are_refused(tmp_path):
    text = named().replace("templates:\n", "templates:\n  Unit_: {type: relu}\n")
    refused(cli("plan", write(tmp_path, text)), "SC106", 1, "'Unit_' and 'unit' differ only in "
            "case or underscores: both would be the class Unit", "hint: rename one of them")


@pytest.mark.parametrize("param", ["Unit", "Residual", "Concat2"])
def test_a_parameter_named_like_a_class_build_writes_is_refused(tmp_path, param):
    # Inside the class of a template that uses `unit`, an argument `Unit` would hide its class.
    refused(cli("plan", write(tmp_path, named(param=param))), "SC105", 1,
            f"the parameter {param!r} has the name of a class build writes")


def test_every_helper_class_begins_with_a_capital():
    # The parameter check asks for the helpers' names (defining every kind) only for a
    # parameter that begins with a capital, as these do.
    from shapecheck.core.layers import KINDS

    helpers = [kind.helper for kind in KINDS.values() if kind.helper]
    assert helpers and all(name[:1].isupper() for name in helpers), helpers


def test_variables_that_differ_only_in_case_stay_distinct():
    text = named(param="a").replace("{w: 2}", "{w: 1, W: 2, _: 3}").replace(
        "$a * $w", "$a + $w * 10 + $W * 100 + $_")
    plan = shapecheck.plan(text)
    assert plan.valid and plan.layers[0].output_shape[1] == 3 + 10 + 200 + 3
    tree = ast.parse(generate_source(plan))
    constants = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign)}
    assert sorted(constants.values()) == [1, 2, 3] and len(constants) == 3
    unit = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Unit")
    out = next(k.value for k in ast.walk(unit) if isinstance(k, ast.keyword)
               and k.arg == "out_channels")
    # The emitted arithmetic gives the planned channels: each variable its own constant.
    assert eval(compile(ast.Expression(out), "out", "eval"), {**constants, "a": 3}) == 216


# Names chosen to collide with what the emitted module holds: keywords, soft keywords, the
# module's own names and classes, nn.Module's attributes, case twins, digits, dunders.
HOSTILE_NAMES = [
    "class", "None", "True", "match", "case", "_", "_1", "type", "self", "self_", "x", "nn",
    "torch", "math", "super", "range", "int", "make_divisible", "in_channels", "index",
    "forward", "training", "__x", "p__x", "__init__", "__class__", "Residual", "Concat",
    "Sequential", "Net", "Unit", "unit", "Stage", "stage", "W", "w", "WIDTH", "width", "Width",
    "V_", "ñ", "conv-bn", "a b", "1x",
]
SLOTS = ["spec", "scale", "variable", "variable2", "inner", "p1", "p2", "layer", "outer",
         "use", "use2", "fc"]
DEFAULTS = {"spec": "small", "scale": "s1", "variable": "w", "variable2": "v", "inner": "unit",
            "p1": "c", "p2": "k", "layer": "conv", "outer": "stage", "use": "first",
            "use2": "a", "fc": "fc"}
NESTED = """\
name: {spec}
input: {{shape: [1, 8, 8]}}
scales:
  {scale}: {{{variable}: 2, {variable2}: 1}}
templates:
  {inner}:
    params: {{{p1}: 4, {p2}: 1}}
    type: residual
    body: [{{type: conv2d, name: {layer}, out_channels: ${p1r}, kernel_size: 3, padding: 1}}]
    shortcut: [{{type: conv2d, out_channels: ${p1r} * ${p2r}, kernel_size: 1}}]
  {outer}:
    params: {{{p1}: 4, {p2}: 2}}
    layers:
      - {{use: {inner}, {p1}: ${p1r} * ${variabler}, name: {use2}}}
      - {{use: {inner}, {p1}: ${p1r} + ${p2r} * ${variable2r}}}
layers:
  - {{use: {outer}, name: {use}, {p1}: 3}}
  - {{use: {outer}, {p1}: 2, {p2}: 3, repeat: 2}}
  - {{use: {inner}, {p1}: 5}}
  - flatten
  - {{type: linear, name: {fc}, out_features: 3}}
"""


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.fixed_dictionaries({slot: st.one_of(st.just(DEFAULTS[slot]),
                                              st.sampled_from(HOSTILE_NAMES))
                              for slot in SLOTS}))
def test_a_spec_plan_accepts_always_emits_source_that_compiles(names):
    """The invariant: whatever names a spec uses, either `plan` refuses it with a diagnostic,
    or the module `build` writes for it is written without an internal error and compiles."""
    text = NESTED.format(**{k: json.dumps(v) for k, v in names.items()},
                         **{k + "r": v for k, v in names.items()})
    try:
        plan = shapecheck.plan(text)
    except shapecheck.InputError:
        return
    if not plan.valid:
        assert plan.errors and all(d.code.startswith("SC") for d in plan.errors)
        return
    try:
        source = generate_source(plan)
    except InternalError as e:  # pragma: no cover - what this test is for
        pytest.fail(f"{names}: {e}")
    compile(source, "model.py", "exec")  # duplicate arguments, say, are found only here


def test_parameters_that_python_renames_alike_stay_apart():
    """`self` is written `self_`, which another parameter may already be."""
    text = named(param="self").replace("{self: 4}", "{self: 4, self_: 1}").replace(
        "$self * $w", "$self * $w + $self_")
    text = text.replace("self: 3}", "self: 3, self_: 2}").replace(
        "  - flatten", "  - {use: unit, self: 2, self_: 5}\n  - flatten")
    source = generate_source(shapecheck.plan(text))
    compile(source, "model.py", "exec")
    assert re.search(r"def __init__\(self, in_channels: int, self__: int = 4, self_: int = 1\)",
                     source), source


# ---------------------------------------------------------------- work bounded by the input


def test_a_repeat_of_uses_that_make_nothing_is_refused(tmp_path):
    """A template whose body is `repeat: 0` makes no layers, so no layer was counted: 20,000
    repeats of 50 such uses ran for minutes."""
    uses = ", ".join(["{use: empty, repeat: 20000}"] * 50)
    text = f"""\
input: {{shape: [1, 8, 8]}}
templates:
  nothing: {{type: relu}}
  empty:
    layers: [{{use: nothing, repeat: 0}}]
  many:
    layers: [{uses}]
layers:
  - {{use: many, repeat: 20000}}
  - relu
"""
    spec = write(tmp_path, text)
    for r in (cli("plan", spec), cli("check", spec), cli("expand", spec)):
        refused(r, "SC004", 2, "expands to more than 20,000 layers")


def test_a_use_that_makes_nothing_still_plans(tmp_path):
    text = named().replace("  - flatten", "  - {use: unit, c: 2, repeat: 0}\n  - flatten")
    assert shapecheck.plan(text).valid


def test_large_values_copied_into_every_instance_are_refused(tmp_path):
    """A 90,000-value alias given to each of 10,000 instances was copied 10,000 times."""
    big = "[" + ", ".join(["[1, 2, 3, 4, 5, 6, 7, 8]"] * 10000) + "]"
    for use in ("{use: t, repeat: 10000, junk: *big}", "{use: t, repeat: 10000}"):
        text = f"""\
x-big: &big {big}
input: {{shape: [1, 8, 8]}}
templates:
  t: {{params: {{c: 1, junk: *big}}, type: conv2d, out_channels: $c, kernel_size: 1}}
layers:
  - {use}
  - relu
"""
        spec = write(tmp_path, text)
        for r in (cli("plan", spec), cli("check", spec)):
            refused(r, "SC004", 2, f"copies more than {templates.MAX_VALUES:,} values")


def test_a_layer_of_many_fields_repeated_is_refused(tmp_path):
    fields = ", ".join(f"k{i}: 1" for i in range(50000))
    text = ("input: {shape: [1, 8, 8]}\ntemplates:\n  t: {type: relu, " + fields + "}\n"
            "layers:\n  - {use: t, repeat: 20000}\n")
    refused(cli("plan", write(tmp_path, text)), "SC004", 2, "copies more than")


def test_thousands_of_variables_seen_by_every_instance_are_refused(tmp_path):
    variables = ", ".join(f"v{i}: {i}" for i in range(5000))
    text = named().replace("{w: 2}", "{w: 2, " + variables + "}").replace(
        "name: stem, c: 3}", "c: 3, repeat: 5000}")
    refused(cli("plan", write(tmp_path, text)), "SC004", 2, "copies more than")


def _scales(count: int, repeat: int = 1) -> str:
    scales = "".join(f"  s{i}: {{w: {i % 4 + 1}}}\n" for i in range(count))
    return (f"input: {{shape: [1, 8, 8]}}\nscales:\n{scales}templates:\n"
            "  t: {params: {c: 1}, type: conv2d, out_channels: $c, kernel_size: 1}\n"
            f"layers:\n  - {{use: t, repeat: {repeat}, c: $w}}\n  - relu\n")


def test_check_of_many_scales_reads_the_file_once(tmp_path):
    """check planned each scale from the file again: 3,000 scales of one layer took 53 s."""
    r = assert_clean(cli("check", write(tmp_path, _scales(templates.MAX_SCALES))))
    assert r.code == 0, str(r)
    refused(cli("check", write(tmp_path, _scales(3000))), "SC004", 2,
            "the spec declares 3,000 scales; specs are limited to 1,000")


def test_check_refuses_to_plan_every_scale_of_a_large_network(tmp_path):
    spec = write(tmp_path, _scales(100, repeat=10000))
    refused(cli("check", spec), "SC004", 2, f"would plan more than {MAX_CHECKED_LAYERS:,} layers",
            "--scale NAME")
    assert cli("check", spec, "--scale", "s7").code == 0  # one scale is checked as before


def _strided(count: int, rows: int = 0) -> str:
    conv = "  - {type: conv2d, out_channels: 1, kernel_size: [3, 1], stride: [2, 1], " \
           "padding: [1, 0]}\n"
    return (f"input: {{shape: [1, {2 ** count}, 8]}}\nlayers:\n" + conv * count
            + "  - relu\n" * rows)


def test_solve_of_a_large_period_is_linear_in_it(tmp_path):
    """The shortest description of the residues was found in time square in the period (2^12
    classes: half a minute); it is now linear."""
    r = assert_clean(cli("solve", write(tmp_path, _strided(12))))
    assert r.code == 0 and "H ≡ 0 (mod 4096)" in r.out, str(r)


def test_solve_refuses_what_would_take_too_many_steps(tmp_path):
    spec = write(tmp_path, _strided(14, rows=2000))
    refused(cli("solve", spec), "SC004", 2, f"solve runs at most {MAX_STEPS:,}")
    r = cli("solve", spec, "--format", "json")
    assert r.code == 2 and json.loads(r.out)["diagnostics"][0]["code"] == "SC004"


def test_solve_upto_lists_from_the_classes_and_is_bounded(tmp_path):
    r = assert_clean(cli("solve", SPECS / "lecture_cnn.yaml", "--format", "json",
                         "--upto", "1000000"))
    assert json.loads(r.out)["axes"][0]["accepted"] == [28, 29, 30, 31]
    r = assert_clean(cli("solve", SPECS / "unet.yaml", "--format", "json", "--upto", "1000000"))
    assert json.loads(r.out)["axes"][0]["accepted"][:3] == [16, 32, 48]
    for far in ("1000001", "1000000000000", "-5", "1e6"):
        r = cli("solve", SPECS / "lecture_cnn.yaml", "--format", "json", "--upto", far)
        assert r.code == 2 and "--upto" in r.err and "1,000,000" in r.err, str(r)


# ---------------------------------------------------------------- tracebacks


@pytest.mark.parametrize("expression, words", [
    ("make_divisible($c, 0)", "divides by zero"),
    ("make_divisible($c, 0.0)", "divides by zero"),
    ("max(1, $c // ($c - $c))", "divides by zero"),
    ("-+" * 240 + "$c", "nests more than 50 levels deep"),
    ("$c - " + "-" * 400 + "1", "nests more than 50 levels deep"),
    ("+".join(["$c"] * 160), "nests more than 50 levels deep"),
], ids=["make-divisible", "make-divisible-float", "nested", "unary", "minus", "sum"])
def test_expressions_that_broke_evaluation_or_unparse_are_sc109(tmp_path, expression, words):
    text = named(param="c").replace("$c * $w", json.dumps(expression))
    spec = write(tmp_path, text)
    for r in (cli("plan", spec), cli("check", spec), cli("expand", spec)):
        refused(r, "SC109", 1, words)


def test_round_to_any_number_of_digits_is_instant():
    for digits, expected in ((-10**18, 0), (10**18, 5), (-400, 0), (0, 5)):
        assert expressions.evaluate(f"round($c, {digits})", {"c": 5}) == expected
    assert expressions.evaluate("round($c, -1)", {"c": 15}) == 20


def test_an_expression_within_the_depth_limit_is_written_as_python():
    text = named(param="c").replace("$c * $w", json.dumps("-" * 44 + "$c * $w"))
    plan = shapecheck.plan(text)
    assert plan.valid
    compile(generate_source(plan), "model.py", "exec")


@pytest.mark.parametrize("value", ["[s1]", "{s1: 1}", "[[1, 2]]", "5"])
def test_a_default_scale_that_is_not_a_name_is_sc111(tmp_path, value):
    spec = write(tmp_path, named() + f"default_scale: {value}\n")
    for r in (cli("plan", spec), cli("check", spec), cli("expand", spec)):
        refused(r, "SC111", 1, "default_scale must be a scale's name", "hint: scales: s1")


# ---------------------------------------------------------------- forged terminal lines

FORGED = "x\n\x1b[2Jforged: error[SC000]: \u202eok"


def _no_forged_line(r) -> None:
    text = r.out + r.err
    assert "\x1b" not in text and "\u202e" not in text, str(r)
    assert not any(line.startswith(("\\x1b", "forged")) for line in text.splitlines()), str(r)


def test_file_names_are_escaped_in_titles_headers_and_solve(tmp_path):
    spec = write(tmp_path, named(), name=FORGED + ".yaml")
    for argv in (["plan", spec], ["plan", spec, "--format", "markdown"], ["expand", spec],
                 ["expand", spec, "--explain"], ["solve", spec], ["check", spec]):
        r = assert_clean(cli(*argv))
        assert r.code == 0, str(r)
        _no_forged_line(r)
        if argv[0] != "check":
            assert "x\\n\\x1b[2Jforged: error[SC000]: \\u202eok" in r.out, str(r)


def test_a_file_name_is_escaped_when_solve_gives_up(tmp_path):
    spec = write(tmp_path, "input: {shape: [1, 64, 64]}\nlayers:\n"
                 "  - {type: upsample, scale_factor: 0.3333333333333333}\n", FORGED + ".yaml")
    r = assert_clean(cli("solve", spec))
    assert r.code == 2 and "not solved" in r.out, str(r)
    _no_forged_line(r)


def test_expand_explain_keeps_a_note_on_its_line(tmp_path):
    # A line break inside an expression (a YAML string may hold one) stays in its comment.
    text = named(param="c").replace("$c * $w", json.dumps("($c *\n$w)"))
    r = assert_clean(cli("expand", write(tmp_path, text), "--explain"))
    assert r.code == 0 and "# out_channels: ($c *\\n$w) = (3 *\\n2) = 6" in r.out, str(r)
    expanded = write(tmp_path, r.out, "expanded.yaml")
    assert shapecheck.plan(expanded).valid  # still YAML that plans


# ---------------------------------------------------------------- wrong answers


def test_expand_keeps_the_warnings_the_spec_accepts(tmp_path):
    text = (SMALL.replace("kernel_size: 3}", "kernel_size: 3, bias: true}\n  - batchnorm2d")
            + "ignore: [SC303]\n")
    spec = write(tmp_path, text)
    assert shapecheck.plan(spec).warnings == []
    r = assert_clean(cli("expand", spec))
    assert "ignore: [SC303]" in r.out
    again = shapecheck.plan(write(tmp_path, r.out, "expanded.yaml"))
    assert again.valid and again.warnings == []


def test_solve_finds_sizes_beyond_two_to_the_forty(tmp_path):
    """A kernel of 3·10^12 rows: solve stopped looking at 2^40 and said "accepts no size"."""
    spec = write(tmp_path, "input: {shape: [1, 3000000000000, 8]}\nlayers:\n"
                 "  - {type: conv2d, out_channels: 1, kernel_size: [3000000000000, 1]}\n")
    r = assert_clean(cli("solve", spec))
    assert "accepts no size" not in r.out and "smallest: 3000000000000" in r.out, str(r)
    h_axis, _ = solve(shapecheck.plan(spec))
    for n in (2999999999999, 3000000000000, 3000000000001):
        assert h_axis.accepts(n) == shapecheck.plan(spec, input_shape=(1, n, 8)).valid


def test_solve_agrees_with_the_planner_where_an_upsample_leaves_nothing():
    text = ("input: {shape: [4, 19, 9]}\nlayers:\n  - {type: upsample, scale_factor: 0.5}\n"
            "  - {type: avgpool2d, kernel_size: 2, stride: 3, padding: 1}\n")
    h_axis, _ = solve(shapecheck.plan(text))
    for n in range(1, 40):
        assert h_axis.accepts(n) == shapecheck.plan(text, input_shape=(4, n, 9)).valid, n


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_solve_accepts_the_size_every_spec_is_planned_at(path):
    plan = shapecheck.plan(path)
    for axis, size in zip(solve(plan), plan.input_dims[2:]):
        assert axis.accepts(size) and axis.smallest is not None


# ---------------------------------------------------------------- exit codes


def test_exit_codes_follow_the_documented_rule(tmp_path):
    valid, invalid = write(tmp_path, SMALL), write(tmp_path, named(use="class"), "bad.yaml")
    third = write(tmp_path, "input: {shape: [1, 64, 64]}\nlayers:\n"
                  "  - {type: upsample, scale_factor: 0.3333333333333333}\n", "third.yaml")
    missing = tmp_path / "missing.yaml"
    for command in ("plan", "check", "expand", "solve"):
        assert cli(command, valid).code == 0, command
        assert cli(command, invalid).code == 1, command
        assert cli(command, missing).code == 2, command
    # solve of a valid spec that it cannot solve exactly: the spec is not invalid
    assert cli("solve", third).code == 2
    assert cli("plan", third).code == 0
