"""`shapecheck plan` as a user runs it, and the Python API behind it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SPECS

import shapecheck
from shapecheck.cli import main

LECTURE = str(SPECS / "lecture_cnn.yaml")


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_equals_plan_to_dict(capsys):
    code, out, _ = run(capsys, "plan", LECTURE, "--format", "json")
    assert code == 0
    assert json.loads(out) == shapecheck.plan(LECTURE).to_dict()


def test_lecture_numbers(capsys):
    data = json.loads(run(capsys, "plan", LECTURE, "--format", "json")[1])
    assert data["input_shape"] == [64, 1, 28, 28]
    assert [data["layers"][i]["output_shape"][2] for i in (0, 1, 3, 4)] == [24, 12, 8, 4]
    assert data["layers"][3]["weight_shape"] == [20, 10, 5, 5]
    assert data["layers"][6]["output_shape"] == [64, 320]
    assert data["layers"][7]["weight_shape"] == [10, 320]
    assert data["totals"]["params"] == 8490
    assert data["output_shape"] == [64, 10]


def test_batch_and_input_overrides(capsys):
    out = run(capsys, "plan", LECTURE, "--format", "json", "--batch", "N", "--input", "3x32x32")[1]
    data = json.loads(out)
    assert data["input_shape"] == ["N", 3, 32, 32]
    assert data["layers"][6]["output_shape"] == ["N", 500]  # 20 × 5 × 5
    assert data["layers"][0]["weight_shape"] == [10, 3, 5, 5]


def test_bad_override_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", LECTURE, "--input", "3x32"])
    assert info.value.code == 2
    assert "C×H×W" in capsys.readouterr().err


def test_the_json_example_in_the_docs_is_what_plan_gives(capsys, monkeypatch):
    """docs/spec.md shows the lecture net's JSON plan with its first layer: the same keys and
    values as `plan --format json` prints."""
    monkeypatch.chdir(SPECS.parent)
    docs = (SPECS.parent / "docs" / "spec.md").read_text(encoding="utf-8")
    shown = json.loads(docs.split("## The JSON plan")[1].split("```json")[1].split("```")[0])
    real = json.loads(run(capsys, "plan", "specs/lecture_cnn.yaml", "--format", "json")[1])
    assert list(shown) == list(real)
    assert shown["layers"] == real["layers"][:1]
    assert {k: v for k, v in shown.items() if k != "layers"} == \
        {k: v for k, v in real.items() if k != "layers"}


def test_several_files_json_is_a_list(capsys):
    code, out, _ = run(capsys, "plan", LECTURE, str(SPECS / "lenet5.yaml"), "--format", "json")
    assert code == 0
    assert [p["name"] for p in json.loads(out)] == ["lecture_cnn", "lenet5"]


def test_explain_shows_the_arithmetic(capsys):
    out = run(capsys, "plan", LECTURE, "--explain")[1]
    assert "H_out = floor((28 + 2·0 − 1·(5−1) − 1) / 1) + 1 = 24" in out
    assert "in_features = 320 (flatten1: 20 × 4 × 4 = 320)" in out


def test_markdown(capsys):
    out = run(capsys, "plan", LECTURE, "--format", "markdown")[1]
    assert "| 7 | fc       | linear    | 64×10        | 10×320    | 10   |  3,210 |   3,200 |" in out
    # the totals are a list: a Markdown renderer would join plain lines into one paragraph
    totals = out.split("\n\n")[2].splitlines()
    assert totals[:2] == ["- output shape: 64×10", "- params: 8,490 (trainable 8,490)"]
    assert len(totals) == 5 and all(line.startswith("- ") for line in totals)


def test_invalid_spec_exit_1_with_the_diagnostic_after_the_table_on_stdout(capsys, tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("input: {shape: [1, 28, 28]}\nlayers:\n"
                    "  - {type: linear, name: fc, in_features: 320, out_features: 10}\n")
    code, out, err = run(capsys, "plan", str(spec))
    assert code == 1 and err == ""
    table, _, problems = out.partition(f"{spec}:3:5: error[SC204]: layer 0 (linear fc)")
    assert "✗ fails here" in table
    assert problems.splitlines()[1].startswith("  hint: add flatten before fc: it gives 784 features")


def test_invalid_json_keeps_shapes_up_to_the_failure(capsys, tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("input: {shape: [1, 28, 28]}\nlayers:\n  - relu\n"
                    "  - {type: linear, in_features: 3, out_features: 10}\n  - relu\n")
    code, out, _ = run(capsys, "plan", str(spec), "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["valid"] is False and data["output_shape"] is None
    assert data["layers"][0]["output_shape"] == ["N", 1, 28, 28]
    assert data["layers"][1]["output_shape"] is None and data["layers"][2]["input_shape"] is None
    assert data["diagnostics"][0]["layer"] == 1 and data["diagnostics"][0]["line"] == 4


def test_strict_turns_warnings_into_failure(capsys, tmp_path):
    spec = tmp_path / "odd.yaml"
    spec.write_text("input: {shape: [1, 25, 25]}\nlayers:\n  - {type: maxpool2d, kernel_size: 2}\n")
    assert run(capsys, "plan", str(spec))[0] == 0
    assert run(capsys, "plan", str(spec), "--strict")[0] == 1


def test_input_errors_exit_2(capsys, tmp_path):
    code, out, err = run(capsys, "plan", str(tmp_path / "missing.yaml"))
    assert code == 2 and "error[SC001]: no such file" in out and err == ""
    (tmp_path / "list.yaml").write_text("- a\n")
    assert run(capsys, "plan", str(tmp_path / "list.yaml"))[0] == 2


def test_load_spec_from_text_and_path():
    text = "name: tiny\ninput: {shape: [3, 8, 8]}\nlayers: [flatten, {type: linear, out_features: 2}]\n"
    spec = shapecheck.load_spec(text)
    assert spec.name == "tiny" and spec.layers[1].out_features == 2
    assert shapecheck.plan(spec).params == 3 * 8 * 8 * 2 + 2
    assert shapecheck.load_spec(SPECS / "lecture_cnn.yaml").name == "lecture_cnn"
    with pytest.raises(shapecheck.SpecError) as info:
        shapecheck.load_spec("input: {shape: [3, 8, 8]}\nlayers: [relu, {type: nope}]\n")
    assert info.value.diagnostics[0].code == "SC101"


def test_auto_names_are_stable_and_skip_taken_ones():
    spec = shapecheck.load_spec(LECTURE)
    assert [layer.name for layer in spec.layers] == [
        "conv1", "pool1", "relu1", "conv2", "pool2", "relu2", "flatten1", "fc"]


def test_huge_sizes_plan_exactly():
    text = ("input: {shape: [1000000000000, 1000000000, 1000000000]}\nlayers:\n"
            "  - {type: conv2d, out_channels: 1000000000000, kernel_size: 3}\n  - flatten\n")
    plan = shapecheck.plan(text)
    assert plan.valid
    assert plan.layers[0].params == 10**12 * 10**12 * 9 + 10**12
    assert plan.layers[1].output_shape == ("N", 10**12 * (10**9 - 2) ** 2)


def test_planning_never_imports_torch():
    code = (
        "import sys, shapecheck.cli as c, contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    c.main(['plan', {LECTURE!r}, '--explain'])\n"
        f"    c.main(['plan', {str(SPECS / 'resnet18.yaml')!r}, '--format', 'json'])\n"
        "heavy = [m for m in ('torch', 'numpy', 'graphviz', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_extra_is_one_line_not_a_traceback():
    # Run build with torch hidden, as on a machine with the core package only.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from shapecheck.cli import main\n"
        f"sys.exit(main(['build', {LECTURE!r}, '-o', '-']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2
    assert "pip install 'shapecheck-cnn[torch]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_flag_shows_the_commands_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", str(LECTURE), "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: shapecheck plan ") and "unrecognized arguments: --bogus" in err


def test_a_failure_inside_blocks_is_marked_at_its_layer_only(capsys, tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("input: {shape: [3, 8, 8]}\nlayers:\n"
                    "  - type: residual\n    name: outer\n    body:\n"
                    "      - {type: conv2d, name: too_big, out_channels: 3, kernel_size: 9}\n")
    code, out, _ = run(capsys, "plan", str(spec))
    assert code == 1
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("0")}
    assert "✗ fails here" in rows["too_big"]
    assert "✗ fails inside" in rows["outer"] and "fails here" not in rows["outer"]


@pytest.mark.parametrize("argv", [["plan", "a.yaml"], ["plan", "a.yaml", "b.yml", "c"],
                                  ["check", "specs"], ["check", "a.yaml", "b.yaml"]])
def test_a_command_line_of_files_reads_as_argparse_reads_it(argv):
    # `plan FILE...` and `check FILE...` skip building the parser: the same arguments result
    from shapecheck import cli

    fast = cli._plain(argv)
    parsed = cli.build_parser([argv[0]]).parse_args(argv)
    parsed.argv = argv
    assert vars(fast) == {k: v for k, v in vars(parsed).items() if k != "commands"}


@pytest.mark.parametrize("argv", [["plan"], ["plan", "a.yaml", "-q"], ["plan", "-", "a.yaml"],
                                  ["plan", "--", "a.yaml"], ["check"], ["expand", "a.yaml"],
                                  ["--color", "never", "plan", "a.yaml"]])
def test_any_option_goes_through_argparse(argv):
    from shapecheck import cli

    assert cli._plain(argv) is None
