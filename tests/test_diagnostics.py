"""One test per diagnostic code: a spec file that triggers it, and the code, layer, line and
hint a user would read."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import shapecheck
from shapecheck.core.diagnostics import CODES, InputError

HEAD = "input: {shape: [1, 28, 28]}\nlayers:\n"


def diagnose(tmp_path, text: str, name: str = "net.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return shapecheck.plan(path)


def only(plan, code: str):
    found = [d for d in plan.diagnostics if d.code == code]
    assert len(found) == 1, [(d.code, d.message) for d in plan.diagnostics]
    return found[0]


def input_error(tmp_path, data: bytes | str, name: str = "net.yaml"):
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(InputError) as info:
        shapecheck.plan(path)
    return info.value.diagnostic


# --- SC0xx: not readable as a spec ------------------------------------------------------


def test_sc001_missing_file_directory_and_not_utf8(tmp_path):
    with pytest.raises(InputError) as info:
        shapecheck.plan(tmp_path / "nope.yaml")
    assert info.value.diagnostic.code == "SC001"
    assert "no such file" in info.value.diagnostic.message
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(InputError) as info:
        shapecheck.plan(tmp_path / "dir.yaml")
    assert "directory" in info.value.diagnostic.message
    d = input_error(tmp_path, b"input: \xff\xfe\n")
    assert d.code == "SC001" and "UTF-8" in d.message


def test_sc004_a_file_past_the_limit_is_refused_with_its_size(tmp_path):
    from shapecheck.core.schema_errors import MAX_BYTES

    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_BYTES + 1))
    with pytest.raises(InputError) as info:
        shapecheck.plan(path)
    d = info.value.diagnostic
    assert d.code == "SC004"
    assert d.message == (f"the file is {MAX_BYTES + 1:,} bytes; specs are limited to "
                         f"{MAX_BYTES:,} bytes")


def test_sc002_not_yaml_points_at_the_problem(tmp_path):
    d = input_error(tmp_path, "input: {shape: [1, 28, 28]}\nlayers: [relu\n")
    assert d.code == "SC002"
    assert d.line == 3


@pytest.mark.parametrize(("text", "line"), [
    ("name: t\n\tinput: {shape: [1, 8, 8]}\nlayers: [relu]\n", 2),
    ("name: t\ninput:\n\tshape: [1, 8, 8]\nlayers: [relu]\n", 3),
    ("input: {shape: [1, 8, 8]}\nlayers:\n  -\t{type: relu}\n", 3),
])
def test_sc002_a_tab_where_yaml_reads_structure_says_so(tmp_path, text, line):
    d = input_error(tmp_path, text)
    assert d.code == "SC002" and d.line == line
    assert d.hint == "YAML does not allow tabs for indentation: indent with spaces"


def test_sc002_other_yaml_errors_get_no_tab_hint(tmp_path):
    d = input_error(tmp_path, "name: 'a\tb'\ninput: {shape: [1, 28, 28]}\nlayers: [relu\n")
    assert d.code == "SC002" and d.hint is None


@pytest.mark.parametrize("text", ["- relu\n- flatten\n", "just a string\n", "a: 1\n"])
def test_sc003_not_a_spec_in_one_line(tmp_path, text):
    d = input_error(tmp_path, text)
    assert d.code == "SC003"
    assert "not a shapecheck spec" in d.message


def test_sc003_empty_file(tmp_path):
    assert input_error(tmp_path, "").code == "SC003"


def test_sc004_python_tag_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    d = input_error(tmp_path, f"input: !!python/object/apply:os.system ['touch {marker}']\n")
    assert d.code == "SC004" and "python/object" in d.message
    assert not marker.exists()


def test_sc004_alias_bomb(tmp_path):
    rows = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        rows.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    rows += ["input: *h", "layers: *h"]
    d = input_error(tmp_path, "\n".join(rows) + "\n")
    assert d.code == "SC004" and "expands" in d.message


# --- SC1xx: schema -----------------------------------------------------------------------


def test_sc101_unknown_type_with_did_you_mean(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - relu\n  - {type: maxpool, kernel_size: 2}\n")
    d = only(plan, "SC101")
    assert (d.layer, d.line, d.column) == (1, 4, 5)
    assert d.hint == "did you mean 'maxpool2d'?"
    assert not plan.valid and plan.layers == []


def test_sc102_misspelt_field_is_one_error(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - {type: conv2d, out_channels: 4, kernal_size: 5}\n")
    d = only(plan, "SC102")
    assert d.layer == 0 and d.line == 3
    assert d.hint == "did you mean 'kernel_size'?"
    assert len(plan.diagnostics) == 1  # not also "kernel_size is missing"


def test_sc102_unknown_top_level_key(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - relu\nlayer: []\n")
    d = only(plan, "SC102")
    assert d.line == 4 and d.hint == "did you mean 'layers'?"


@pytest.mark.parametrize(
    "layer, field",
    [
        ("{type: conv2d, out_channels: 0, kernel_size: 3}", "out_channels"),
        ("{type: conv2d, out_channels: 4, kernel_size: '3'}", "kernel_size"),
        ("{type: conv2d, out_channels: 4, kernel_size: [3, 3, 3]}", "kernel_size"),
        ("{type: conv2d, out_channels: 4, kernel_size: 3, padding: sme}", "padding"),
        ("{type: conv2d, out_channels: 4, kernel_size: 3, bias: 'no'}", "bias"),
        ("{type: dropout, p: 1.5}", "p"),
    ],
)
def test_sc103_wrong_types_and_values(tmp_path, layer, field):
    d = only(diagnose(tmp_path, HEAD + f"  - {layer}\n"), "SC103")
    assert d.layer == 0 and d.line == 3 and field in d.message


def test_sc103_input_shape(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [1, 28]}\nlayers: [relu]\n")
    d = only(plan, "SC103")
    assert d.line == 1
    # the key path names the field once; a layer's field follows the layer's label
    assert d.message == "input.shape: must be [channels, height, width], got [1, 28]"


def test_sc104_missing_required(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: conv2d, kernel_size: 3}\n"), "SC104")
    assert d.layer == 0 and d.line == 3 and "out_channels" in d.message
    d = only(diagnose(tmp_path, "layers: [relu]\n"), "SC104")
    assert "input" in d.message
    d = only(diagnose(tmp_path, "input: {shape: [1, 28, 28]}\nlayers: []\n"), "SC104")
    assert "empty" in d.message
    d = only(diagnose(tmp_path, HEAD + "  - relu:\n"), "SC104")  # a colon too many
    assert d.line == 3 and d.hint == "write `- relu` without the colon, or `- {type: relu}`"


def test_sc105_name_not_identifier(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: relu, name: 1st-relu}\n"), "SC105")
    assert d.layer == 0 and d.line == 3 and d.hint == "use a name such as 'net_1st_relu'"


def test_sc106_duplicate_name(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - {type: relu, name: act}\n  - {type: tanh, name: act}\n")
    d = only(plan, "SC106")
    assert (d.layer, d.line) == (1, 4)
    assert d.message == "layer 1: the name 'act' is already used by layer 0"


def test_sc106_names_a_template_gives_twice_are_one_diagnostic_with_both_places(tmp_path):
    """A stage whose two inner uses make the same names (a repeat of 1 adds no index): one
    SC106 at the stage's use, naming the template chain and the layer that has the name."""
    plan = diagnose(tmp_path, """\
input: {shape: [8, 16, 16]}
templates:
  plain:
    layers: [{type: conv2d, name: expand, out_channels: 8, kernel_size: 1}, {type: batchnorm2d, name: bn}]
  res:
    type: residual
    body: [{type: conv2d, name: expand, out_channels: 8, kernel_size: 1}, {type: batchnorm2d, name: bn}]
  stage:
    params: {n: 2}
    layers: [{use: plain}, {use: res, repeat: $n - 1}]
layers:
  - {use: stage, name: s1}
""")
    d = only(plan, "SC106")
    assert d.line == 12 and d.path == (2, "body", 0)
    assert d.message.startswith("layer 2/body/0: the name 's1_expand' is already used by layer 0 "
                                "(in template res at ")
    assert "used in template stage at" in d.message
    assert d.message.endswith("; the same for 1 more name the template gives")
    assert "their own `name:`" in d.hint


def test_sc107_duplicate_yaml_key(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - {type: linear, out_features: 10, out_features: 3}\n")
    d = only(plan, "SC107")
    assert (d.layer, d.line, d.column) == (0, 3, 38)


def test_sc108_unknown_template_or_parameter(tmp_path):
    spec = ("input: {shape: [1, 8, 8]}\ntemplates:\n  block: {params: {c: 4}, layers: [relu]}\n"
            "layers:\n  - {use: blok}\n  - {use: block, d: 1}\n")
    plan = diagnose(tmp_path, spec)
    d = only(plan, "SC108")
    assert (d.line, d.hint) == (5, "did you mean 'block'?")


def test_sc109_expression(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: conv2d, out_channels: $c, kernel_size: 3}\n"),
             "SC109")
    assert d.line == 3 and "$c is not defined" in d.message


def test_sc110_template_cycle(tmp_path):
    spec = ("input: {shape: [1, 8, 8]}\ntemplates:\n  a: {layers: [{use: a}]}\n"
            "layers: [{use: a}]\n")
    assert "a → a" in only(diagnose(tmp_path, spec), "SC110").message


def test_sc111_unknown_scale(tmp_path):
    spec = ("input: {shape: [1, 8, 8]}\nscales: {small: {w: 1}}\ndefault_scale: smal\n"
            "layers: [relu]\n")
    d = only(diagnose(tmp_path, spec), "SC111")
    assert d.line == 3 and d.hint == "did you mean 'small'?"


def test_sc112_names_read_before_they_exist(tmp_path):
    plan = diagnose(tmp_path, HEAD + (
        "  - {type: conv2d, name: enc1, out_channels: 4, kernel_size: 3, padding: 1}\n"
        "  - {type: conv2d, out_channels: 4, kernel_size: 1, from: enc2}\n"
        "  - {type: conv2d, out_channels: 4, kernel_size: 1, from: later}\n"
        "  - {type: add, from: [enc1]}\n"
        "  - {type: relu, from: [enc1, prev]}\n"
        "  - {type: upsample, size: {like: nowhere}}\n"
        "  - {type: conv2d, name: later, out_channels: 4, kernel_size: 1}\n"
        "outputs: [enc1, gone]\n"))
    found = [(d.code, d.line) for d in plan.errors]
    assert found == [("SC112", 4), ("SC112", 5), ("SC112", 6), ("SC112", 7), ("SC112", 8),
                     ("SC112", 10)], found
    by_line = {d.line: d for d in plan.errors}
    assert "no layer before this one is named 'enc2'" in by_line[4].message
    assert by_line[4].hint == "did you mean 'enc1'?"
    assert "'later' is layer 6, after this one" in by_line[5].message
    assert "add merges two or more tensors" in by_line[6].message
    assert "relu takes one input, but `from:` lists 2" in by_line[7].message
    assert "'nowhere'" in by_line[8].message and "outputs" in by_line[10].message
    # the reserved names
    reserved = diagnose(tmp_path, HEAD + "  - {type: relu, name: input}\n"
                        "  - {type: add, from: [input, prev]}\n")
    d = only(reserved, "SC112")
    assert d.line == 3 and "`input` means the spec's input" in d.message
    # inside a block, a branch reads its block's input
    nested = diagnose(tmp_path, HEAD + "  - type: residual\n    body:\n"
                      "      - {type: relu, from: input}\n")
    d = only(nested, "SC112")
    assert d.path == (0, "body", 0) and d.line == 5 and "block" in d.message


def test_sc113_when_and_the_incoming_shape(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [8, 16, 16]}\ntemplates:\n  t:\n"
                    "    params: {t: 6}\n    layers: [{type: relu, when: $t}]\n"
                    "layers: [relu, {use: t}]\n")
    d = only(plan, "SC113")
    assert d.line == 6 and "when: must be true or false, got 6" in d.message  # at the use
    flat = diagnose(tmp_path, HEAD + "  - flatten\n"
                    "  - {type: linear, out_features: $in_h}\n")
    d = only(flat, "SC113")
    assert d.line == 4 and "$in_h" in d.message


# --- SC2xx: PyTorch would fail here ------------------------------------------------------


def test_sc201_kernel_larger_than_input_gives_smallest_input(tmp_path):
    plan = diagnose(tmp_path, HEAD + """\
      - {type: conv2d, out_channels: 10, kernel_size: 5}
      - {type: maxpool2d, kernel_size: 2}
      - {type: conv2d, out_channels: 20, kernel_size: 5}
      - {type: maxpool2d, kernel_size: 2}
      - {type: conv2d, out_channels: 20, kernel_size: 5}
    """)
    d = only(plan, "SC201")
    assert (d.layer, d.line) == (4, 7)
    assert "at least 32×32" in d.hint
    # Layers before the failure keep their shapes; the failing one has none.
    assert plan.layers[3].output_shape == ("N", 20, 4, 4)
    assert plan.layers[4].status == "failed" and plan.layers[4].output_shape is None


def test_sc202_pool_output_zero(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [1, 3, 3]}\nlayers:\n"
                    "  - {type: maxpool2d, kernel_size: 2}\n  - {type: maxpool2d, kernel_size: 2}\n")
    d = only(plan, "SC202")
    assert d.layer == 1 and d.line == 4 and "at least 4×4" in d.hint


def test_sc203_in_channels(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: conv2d, in_channels: 3, out_channels: 4, "
                      "kernel_size: 3}\n"), "SC203")
    assert d.layer == 0 and d.hint.startswith("set in_channels: 1")


def test_sc204_linear_before_flatten_hints_flatten(tmp_path):
    plan = diagnose(tmp_path, HEAD + """\
      - {type: conv2d, out_channels: 10, kernel_size: 5}
      - {type: maxpool2d, kernel_size: 2}
      - {type: conv2d, out_channels: 20, kernel_size: 5}
      - {type: maxpool2d, kernel_size: 2}
      - {type: linear, name: fc, in_features: 320, out_features: 10}
    """)
    d = only(plan, "SC204")
    assert (d.layer, d.line) == (4, 7)
    assert d.hint == "add flatten before fc: it gives 320 features"


def test_sc204_wrong_in_features_hints_the_right_one(tmp_path):
    plan = diagnose(tmp_path, HEAD + """\
      - {type: conv2d, out_channels: 20, kernel_size: 5}
      - {type: maxpool2d, kernel_size: 6}
      - flatten
      - {type: linear, in_features: 300, out_features: 10}
    """)
    d = only(plan, "SC204")
    assert d.layer == 3 and "in_features: 320" in d.hint and "20 × 4 × 4" in d.hint


def test_sc205_num_features(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - {type: conv2d, out_channels: 8, kernel_size: 3, "
                    "bias: false}\n  - {type: batchnorm2d, num_features: 16}\n")
    d = only(plan, "SC205")
    assert d.layer == 1 and d.hint.startswith("set num_features: 8")


def test_sc206_groups(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [6, 8, 8]}\nlayers:\n"
                    "  - {type: conv2d, out_channels: 9, kernel_size: 3, groups: 2}\n")
    d = only(plan, "SC206")
    assert d.layer == 0 and d.hint == "groups that divide both: 3, 1"


def test_sc206_groups_hint_names_depthwise_and_the_largest_divisors(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [144, 8, 8]}\nlayers:\n"
                    "  - {type: conv2d, out_channels: 144, kernel_size: 3, groups: 96}\n")
    hint = only(plan, "SC206").hint
    assert hint.startswith("groups that divide both: 144 (depthwise), 72, 48")
    assert hint.endswith(", 1")


def test_sc207_same_padding_with_stride(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - {type: conv2d, out_channels: 4, kernel_size: 3, "
                    "stride: 2, padding: same}\n")
    d = only(plan, "SC207")
    assert d.layer == 0 and "padding: 1" in d.hint and "14" in d.hint


def test_sc208_pool_padding(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: maxpool2d, kernel_size: 2, padding: 2}\n"),
             "SC208")
    assert d.layer == 0 and d.hint == "use padding: 1 or less"


def test_sc209_conv_after_flatten(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - flatten\n  - {type: conv2d, out_channels: 4, "
                      "kernel_size: 3}\n"), "SC209")
    assert d.layer == 1 and "2-d" in d.message and "flatten" in d.hint


def test_sc210_flatten_dims(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: flatten, start_dim: 3, end_dim: 1}\n"),
             "SC210")
    assert d.layer == 0


def test_sc211_residual_mismatch_hints_the_shortcut(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [64, 56, 56]}\nlayers:\n"
                    "  - type: residual\n    body:\n"
                    "      - {type: conv2d, out_channels: 128, kernel_size: 3, stride: 2, padding: 1}\n")
    d = only(plan, "SC211")
    assert d.layer == 0 and d.line == 3
    assert "kernel_size: 1, stride: 2" in d.hint and "out_channels: 128" in d.hint


def test_sc212_concat_mismatch(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [8, 28, 28]}\nlayers:\n"
                    "  - type: concat\n    branches:\n"
                    "      - [{type: conv2d, out_channels: 4, kernel_size: 1}]\n"
                    "      - [{type: maxpool2d, kernel_size: 2}]\n")
    d = only(plan, "SC212")
    assert d.layer == 0 and "branch 1" in d.message and "branch 1" in d.hint


def test_error_inside_a_block_has_its_path(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [8, 28, 28]}\nlayers:\n"
                    "  - type: residual\n    body:\n      - relu\n"
                    "      - {type: conv2d, in_channels: 3, out_channels: 8, kernel_size: 1}\n")
    d = only(plan, "SC203")
    assert d.layer == 0 and d.path == (0, "body", 1) and d.line == 6
    assert plan.to_dict()["diagnostics"][0]["path"] == [0, "body", 1]


def test_sc213_linear_on_the_batch(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: flatten, start_dim: 0}\n"
                      "  - {type: linear, out_features: 10}\n"), "SC213")
    assert d.layer == 1


def test_sc211_a_residual_that_broadcasts_is_valid(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [16, 8, 8]}\nlayers:\n"
                    "  - type: residual\n    body: [{type: adaptiveavgpool2d, output_size: 1}]\n")
    assert plan.valid and plan.output_shape == ("N", 16, 8, 8)
    assert plan.layers[0].explain == [("body 16×1×1 + identity shortcut 16×8×8 = 16×8×8 "
                                      "(broadcast)")]


def test_sc214_convtranspose_output_padding(tmp_path):
    spec = HEAD + ("  - {type: convtranspose2d, out_channels: 4, kernel_size: 3, stride: 2, "
                   "output_padding: OP}\n")
    d = only(diagnose(tmp_path, spec.replace("OP", "2")), "SC214")
    assert d.layer == 0 and "output_padding: 1 or less" in d.hint
    fixed = diagnose(tmp_path, spec.replace("OP", "1"))
    assert fixed.valid and fixed.output_shape == ("N", 4, 58, 58)  # (28−1)·2 + 2 + 1 + 1


def test_sc215_layernorm_shape(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: layernorm, normalized_shape: [28, 27]}\n"),
             "SC215")
    assert d.layer == 0 and "set normalized_shape: [28, 28]" in d.hint
    assert diagnose(tmp_path, HEAD + "  - {type: layernorm, normalized_shape: [28, 28]}\n").valid


def test_sc216_split_with_fewer_chunks_than_branches(tmp_path):
    spec = ("input: {{shape: [{}, 8, 8]}}\nlayers:\n"
            "  - {{type: split, branches: [[], [relu], [relu]]}}\n")
    d = only(diagnose(tmp_path, spec.format(4)), "SC216")
    assert d.layer == 0 and "use 2 branches" in d.hint and "(6)" in d.hint
    assert diagnose(tmp_path, spec.format(6)).valid
    uneven = diagnose(tmp_path, spec.format(7))  # torch.chunk: 3 + 3 + 1
    assert uneven.valid and uneven.layers[0].explain[0].startswith("7×8×8 split into 3 + 3 + 1")


def test_sc217_gate_that_does_not_broadcast(tmp_path):
    spec = ("input: {{shape: [16, 8, 8]}}\nlayers:\n  - type: gate\n    body:\n"
            "      - {{type: adaptiveavgpool2d, output_size: {}}}\n"
            "      - {{type: conv2d, out_channels: {}, kernel_size: 1}}\n      - sigmoid\n")
    d = only(diagnose(tmp_path, spec.format(2, 4)), "SC217")
    assert d.layer == 0 and d.line == 3
    assert "give 16 channels" in d.hint and "output_size: 1" in d.hint
    fixed = diagnose(tmp_path, spec.format(1, 16))
    assert fixed.valid and fixed.output_shape == ("N", 16, 8, 8)


def test_sc218_pixelshuffle_channels(tmp_path):
    d = only(diagnose(tmp_path, "input: {shape: [6, 8, 8]}\nlayers:\n"
                      "  - {type: pixelshuffle, upscale_factor: 2}\n"), "SC218")
    assert d.layer == 0 and "4 or 8 output channels" in d.hint
    d = only(diagnose(tmp_path, "input: {shape: [3, 9, 8]}\nlayers:\n"
                      "  - {type: pixelunshuffle, downscale_factor: 2}\n"), "SC218")
    assert "10×8" in d.hint


def test_sc206_groupnorm_and_channelshuffle_groups(tmp_path):
    d = only(diagnose(tmp_path, "input: {shape: [12, 4, 4]}\nlayers:\n"
                      "  - {type: groupnorm, num_groups: 5}\n"), "SC206")
    assert d.hint == "num_groups that divide them: 12, 6, 4, 3, 2, 1"
    d = only(diagnose(tmp_path, "input: {shape: [12, 4, 4]}\nlayers:\n"
                      "  - {type: channelshuffle, groups: 5}\n"), "SC206")
    assert d.hint.startswith("groups that divide them: 12, 6")


def test_sc210_permute_dims(tmp_path):
    assert only(diagnose(tmp_path, HEAD + "  - {type: permute, dims: [0, 2, 2, 1]}\n"),
                "SC210").layer == 0
    assert only(diagnose(tmp_path, HEAD + "  - {type: permute, dims: [1, 0, 2, 3]}\n"),
                "SC213").layer == 0


def test_upsample_needs_one_of_size_and_scale_factor(tmp_path):
    for fields in ("", "size: 4, scale_factor: 2", "scale_factor: 2, align_corners: true"):
        plan = diagnose(tmp_path, HEAD + f"  - {{type: upsample, {fields}}}\n".replace(", }", "}"))
        assert [d.code for d in plan.errors] == ["SC103"], fields


def test_channels_last_linear_is_not_sc305(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [8, 4, 4]}\nlayers:\n"
                    "  - {type: permute, dims: [0, 2, 3, 1]}\n  - layernorm\n"
                    "  - {type: linear, out_features: 32}\n  - {type: permute, dims: [0, 3, 1, 2]}\n"
                    "  - {type: linear, out_features: 3}\n")
    assert [(d.code, d.layer) for d in plan.warnings] == [("SC305", 4)]
    assert plan.layers[2].explain[0] == "in_features = 8 (channels, moved last by permute1)"


# --- SC3xx: warnings ---------------------------------------------------------------------


def test_sc301_pool_on_odd_size(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [1, 25, 25]}\nlayers:\n"
                    "  - {type: maxpool2d, kernel_size: 2}\n")
    d = only(plan, "SC301")
    assert d.severity == "warning" and d.layer == 0 and "1 row and 1 column" in d.message
    assert "ceil_mode" in d.hint and plan.valid


def test_sc302_softmax_with_cross_entropy(tmp_path):
    net = HEAD + "  - flatten\n  - {type: linear, out_features: 10}\n  - softmax\n"
    named = only(diagnose(tmp_path, net + "train: {loss: cross_entropy}\n"), "SC302")
    assert named.layer == 2 and named.line == 5
    # cross_entropy by default (no loss named): the same diagnostic.
    assert only(diagnose(tmp_path, net + "train: {epochs: 1}\n"), "SC302") == named
    assert "SC302" not in [d.code for d in diagnose(tmp_path, net).diagnostics]  # not trained
    logsoftmax = net.replace("  - softmax", "  - logsoftmax")
    assert not [d for d in diagnose(tmp_path, logsoftmax + "train: {epochs: 1}\n").diagnostics
                if d.code == "SC302"]  # its default loss is nll_loss
    d = only(diagnose(tmp_path, logsoftmax + "train: {loss: cross_entropy}\n"), "SC302")
    assert d.hint == "remove logsoftmax1: train on the raw scores (logits), or use loss: nll_loss"


def test_sc303_conv_bias_before_batchnorm(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - {type: conv2d, out_channels: 8, kernel_size: 3}\n"
                    "  - batchnorm2d\n")
    d = only(plan, "SC303")
    assert d.layer == 0 and d.hint == "set bias: false on the conv"


def test_sc304_even_kernel_same_padding(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - {type: conv2d, out_channels: 8, kernel_size: 4, "
                    "padding: same}\n")
    d = only(plan, "SC304")
    assert d.layer == 0 and plan.layers[0].output_shape == ("N", 8, 28, 28)


def test_sc305_linear_on_4d(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - {type: linear, out_features: 10}\n")
    d = only(plan, "SC305")
    assert d.layer == 0 and plan.layers[0].output_shape == ("N", 1, 28, 10)


def test_sc219_sizes_beyond_any_float(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: upsample, scale_factor: 1.0e+300}\n"
                      "  - {type: upsample, scale_factor: 1.0e+300}\n"), "SC219")
    assert d.layer == 1 and "1.8e308" in d.message
    # exact sizes below that still plan (torch's own int64 limit is build's to enforce)
    plan = diagnose(tmp_path, HEAD + "  - {type: upsample, scale_factor: 1.0e+100}\n")
    assert plan.valid and plan.output_shape[-1] == int(28 * 1.0e100)


def test_sc306_small_receptive_field(tmp_path):
    # 3×3 convs see 5×5 of 28×28, and the pool only averages the positions
    plan = diagnose(tmp_path, HEAD + "  - {type: conv2d, out_channels: 8, kernel_size: 3}\n"
                    "  - {type: conv2d, out_channels: 8, kernel_size: 3}\n"
                    "  - {type: adaptiveavgpool2d, output_size: 1}\n")
    d = only(plan, "SC306")
    assert d.layer == 1 and "5×5 pixels of the 28×28 input" in d.message
    # a linear over every position joins them: no warning
    joined = diagnose(tmp_path, HEAD + "  - {type: conv2d, out_channels: 8, kernel_size: 3}\n"
                      "  - flatten\n  - {type: linear, out_features: 10}\n")
    assert not joined.warnings


def test_sc306_large_receptive_field(tmp_path):
    plan = diagnose(tmp_path, "input: {shape: [1, 4, 4]}\nlayers:\n" +
                    "  - {type: conv2d, out_channels: 1, kernel_size: 3, padding: 1}\n" * 40)
    d = only(plan, "SC306")
    assert d.layer == 39 and "81×81 pixels, more than 16 times the 4×4 input" in d.message


def test_sc307_an_output_nothing_reads(tmp_path):
    layers = HEAD + (
        "  - {type: conv2d, name: stem, out_channels: 4, kernel_size: 3, padding: 1}\n"
        "  - {type: maxpool2d, name: pooled, kernel_size: 2}\n"
        "  - {type: conv2d, name: side, out_channels: 4, kernel_size: 3, padding: 1, "
        "from: stem}\n")
    d = only(diagnose(tmp_path, layers), "SC307")
    assert (d.layer, d.line) == (1, 4) and "nothing reads" in d.message
    listed = diagnose(tmp_path, layers + "outputs: [pooled, side]\n")
    assert not [d for d in listed.diagnostics if d.code == "SC307"]


def test_every_code_is_tested():
    source = Path(__file__).read_text(encoding="utf-8")
    for code in CODES:
        assert f"test_{code.lower()}" in source, f"{code} has no test"


def test_sc004_too_many_layers(tmp_path):
    d = input_error(tmp_path, HEAD + "  - relu\n" * 20_001)
    assert d.code == "SC004" and "20,001 layers" in d.message and d.line == 2


def test_long_user_text_is_cut_in_messages(tmp_path):
    plan = diagnose(tmp_path, HEAD + "  - " + "x" * 100_000 + "\n")
    d = only(plan, "SC101")
    assert len(d.message) <= 300 and d.message.endswith("…")


def test_sc105_hint_for_a_keyword_is_a_valid_name(tmp_path):
    d = only(diagnose(tmp_path, HEAD + "  - {type: relu, name: class}\n"), "SC105")
    assert d.hint == "use a name such as 'class_'"


def test_errors_after_the_first_are_found_from_declared_inputs(tmp_path):
    plan = diagnose(tmp_path, """\
        input: {shape: [3, 32, 32]}
        layers:
          - {type: conv2d, out_channels: 16, kernel_size: 3}
          - {type: conv2d, in_channels: 8, out_channels: 16, kernel_size: 3}
          - flatten
          - {type: linear, in_features: 999, out_features: 10}
          - {type: linear, in_features: 11, out_features: 2}
        """)
    assert [(d.code, d.layer, d.line) for d in plan.errors] == [
        ("SC203", 1, 4), ("SC204", 3, 6), ("SC204", 4, 7)]
    first, second, third = plan.errors
    assert "planning on" not in first.message
    assert second.message.endswith("(found by planning on after the error at layer 1, as if "
                                   "conv2 got the input it declares)")
    assert "12544" in second.hint and "after the error at layer 3" in third.message
    # The rows keep the contract: null shapes after the first failing layer.
    assert all(row.output_shape is None for row in plan.layers[1:])


def test_the_smallest_input_hint_says_nothing_rather_than_something_wrong(tmp_path):
    # ZFNet's fc6 declares 9216 features: only inputs of 213..244 work, so the size at which
    # the convolutions first fit (53) is no answer.
    plan = diagnose(tmp_path, """\
        input: {shape: [3, 40, 40]}
        layers:
          - {type: conv2d, out_channels: 96, kernel_size: 7, stride: 2, padding: 1}
          - {type: maxpool2d, kernel_size: 3, stride: 2, padding: 1}
          - {type: conv2d, out_channels: 256, kernel_size: 5, stride: 2}
          - {type: maxpool2d, kernel_size: 3, stride: 2, padding: 1}
          - {type: conv2d, out_channels: 384, kernel_size: 3, padding: 1}
          - {type: maxpool2d, kernel_size: 3, stride: 2}
          - flatten
          - {type: linear, name: fc6, in_features: 9216, out_features: 4096}
        """)
    error = plan.errors[0]
    assert error.code == "SC202" and error.hint is None
    assert "at least" not in " ".join(d.hint or "" for d in plan.diagnostics)
