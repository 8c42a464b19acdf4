"""The core's contracts: layers carry their origin, a Spec can be built in Python, rules
return what they know (no side channels), blocks are one abstraction, and the meta-device
check turns any disagreement into a clear InternalError."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

import shapecheck
from shapecheck import Spec
from shapecheck.core.layers import BLOCKS, KINDS, Block
from shapecheck.core.layers.conv import Conv2d
from shapecheck.core.layers.elementwise import ReLU
from shapecheck.core.layers.linear import Linear

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "net.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- origin -------------------------------------------------------------------------------

ALIASES = """\
input: {shape: [3, 32, 32]}
x-parts:
  pool: &pool {type: maxpool2d, kernel_size: 3}
  body: &body
    - {type: conv2d, out_channels: 3, kernel_size: 3, padding: 1}
    - {type: conv2d, out_channels: 3, kernel_size: 3, padding: 1, groups: 2}
layers:
  - {type: conv2d, out_channels: 3, kernel_size: 3}
  - *pool
  - *pool
  - type: residual
    body: *body
"""


def test_a_layer_written_as_an_alias_reports_the_alias_line(tmp_path):
    p = shapecheck.plan(write(tmp_path, ALIASES))
    lines = {row.name: (row.line, row.column) for row in p.walk()}
    assert lines["pool1"] == (9, 5) and lines["pool2"] == (10, 5)
    # Every layer of an aliased body is reported where the alias stands.
    assert lines["conv2"] == lines["conv3"] == (12, 11)
    (error,) = p.errors
    assert (error.code, error.line, error.column, error.path) == ("SC206", 12, 11, (3, "body", 1))
    warning = next(d for d in p.warnings if d.code == "SC301")
    assert (warning.layer, warning.line) == (2, 10)
    as_json = p.to_dict()["diagnostics"]
    assert {(d["code"], d["line"]) for d in as_json} >= {("SC206", 12), ("SC301", 10)}


def test_every_layer_knows_its_file_line_and_column(tmp_path):
    path = write(tmp_path, ALIASES)
    spec = shapecheck.load_spec(path)
    first = spec.layers[0].origin
    assert (first.file, first.line, first.column) == (str(path), 8, 5)
    assert spec.layers[3].body[0].origin.line == 12


def test_github_annotations_read_the_origin(tmp_path, capsys):
    from shapecheck.cli import main

    path = write(tmp_path, ALIASES)
    assert main(["check", str(path), "--format", "github"]) == 1
    out = capsys.readouterr().out
    assert f"::error file={path},line=12,col=11" in out


# --- a Spec built in Python ---------------------------------------------------------------


def lecture_in_python(**input_kw) -> Spec:
    return Spec(
        name="lecture",
        input={"shape": [1, 28, 28], "batch": 64, **input_kw},
        layers=[
            Conv2d(out_channels=10, kernel_size=5),
            {"type": "maxpool2d", "kernel_size": 2},
            "relu",
            {"type": "Conv2d", "out_channels": 20, "kernel_size": 5},
            {"type": "maxpool2d", "kernel_size": 2},
            ReLU(),
            "flatten",
            Linear(name="fc", out_features=10),
        ],
    )


def test_a_spec_built_in_python_plans_like_the_yaml():
    p = shapecheck.plan(lecture_in_python())
    assert p.valid, p.diagnostics
    assert p.params == 8490 and p.output_shape == (64, 10)
    from_yaml = shapecheck.plan(ROOT / "specs" / "lecture_cnn.yaml")
    assert [r.name for r in p.layers] == [r.name for r in from_yaml.layers]
    assert [r.output_shape for r in p.layers] == [r.output_shape for r in from_yaml.layers]
    assert all(r.line is None for r in p.layers)  # nothing was written in a file


def test_a_layer_model_used_twice_is_two_layers():
    relu = ReLU()
    p = shapecheck.plan(Spec(input={"shape": [3, 8, 8]}, layers=[relu, relu, "flatten"]))
    assert p.valid and [r.name for r in p.layers] == ["relu1", "relu2", "flatten1"]
    assert relu.name is None  # the caller's model is left as it was


def test_a_python_spec_with_schema_errors_gives_diagnostics_not_exceptions():
    spec = Spec(input={"shape": [1, 8, 8]},
                layers=[{"type": "conv2d", "out_channels": 0, "kernel_size": 3}, "rleu",
                        {"type": "relu", "name": "a"}, {"type": "relu", "name": "a"}])
    p = shapecheck.plan(spec)
    assert not p.valid
    assert {d.code for d in p.errors} == {"SC103", "SC101"}
    hint = next(d.hint for d in p.errors if d.code == "SC101")
    assert "relu" in hint
    dup = Spec(input={"shape": [1, 8, 8]}, layers=[{"type": "relu", "name": "a"},
                                                   {"type": "relu", "name": "a"}])
    assert [d.code for d in shapecheck.plan(dup).errors] == ["SC106"]


def test_a_spec_built_in_python_builds_a_module():
    pytest.importorskip("torch")
    model = shapecheck.build_module(lecture_in_python())
    assert sum(p.numel() for p in model.parameters()) == 8490


# --- no side channels ---------------------------------------------------------------------


def test_explain_after_a_block_that_changes_the_last_dim(tmp_path):
    p = shapecheck.plan(write(tmp_path, """\
        input: {shape: [1, 8, 8]}
        layers:
          - flatten
          - type: concat
            branches: [[{type: linear, out_features: 10}], [{type: linear, out_features: 20}]]
          - {type: linear, name: head, out_features: 2}
        """))
    branch_fc = p.layers[1].branches[0][0]
    assert branch_fc.explain[0] == "in_features = 64 (flatten1: 1 × 8 × 8 = 64)"
    head = p.layers[2]
    assert head.explain[0] == "in_features = 30 (the last dim of the input)"


def test_explain_keeps_the_flatten_through_layers_that_keep_the_last_dim(tmp_path):
    p = shapecheck.plan(write(tmp_path, """\
        input: {shape: [1, 8, 8]}
        layers: [flatten, relu, dropout, {type: residual, body: [relu]}, {type: linear, out_features: 2}]
        """))
    assert p.layers[-1].explain[0] == "in_features = 64 (flatten1: 1 × 8 × 8 = 64)"


# --- blocks and capabilities --------------------------------------------------------------


def test_blocks_are_derived_from_the_registry():
    assert set(BLOCKS) == {k for k in KINDS.values() if issubclass(k, Block)}
    for block in BLOCKS:
        assert block.is_block and block.helper and block.glyph != "+" and block.merge_word
        assert f"class {block.helper}(nn.Module)" in block.helper_source
        assert block.list_fields or block.lists_field
    assert not any(k.is_block for k in KINDS.values() if not issubclass(k, Block))


def test_the_default_loss_follows_what_the_last_layer_gives(tmp_path):
    def last(kind: str):
        return shapecheck.plan(write(tmp_path, f"""\
            input: {{shape: [1, 8, 8]}}
            layers: [flatten, {{type: linear, out_features: 2}}, {kind}]
            """))

    assert last("logsoftmax").default_loss == "nll_loss"
    assert last("softmax").default_loss == "cross_entropy"
    assert last("relu").default_loss == "cross_entropy"


# --- coverage is enforced -----------------------------------------------------------------


def test_every_layer_type_is_in_the_torch_oracle_the_generator_and_the_docs():
    pytest.importorskip("torch")
    pytest.importorskip("hypothesis")
    import test_differential
    import torch_oracle

    kinds = set(torch_oracle.SEQUENTIAL)  # the merge layers of graph specs: tests/test_graph.py
    assert set(KINDS) - kinds == {name for name, kind in KINDS.items() if kind.is_merge}
    oracle = set(torch_oracle.LAYER_CLASSES) | set(torch_oracle.BLOCK_TYPES)
    assert kinds - oracle == set(), "types the torch oracle cannot check"
    assert kinds - set(test_differential.DRAWN) == set(), "types the differential test never draws"
    kinds = set(KINDS)
    docs = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    table = set()
    for first_cell in re.findall(r"^\| ([a-z0-9, ]+) \|", docs, flags=re.MULTILINE):
        table |= {t.strip() for t in first_cell.split(",")}
    assert kinds - table == set(), "types missing from the layer table in docs/spec.md"


# --- the meta-device check never crashes --------------------------------------------------


def test_a_module_tree_that_does_not_match_the_plan_is_an_internal_error():
    pytest.importorskip("torch")
    import torch

    from shapecheck.emit.build import check_module, module_from_source
    from shapecheck.emit.codegen import InternalError, generate

    p = shapecheck.plan(ROOT / "specs" / "resnet18.yaml")
    generated = generate(p)
    cls = getattr(module_from_source(generated.source), generated.class_name)
    with torch.device("meta"):
        model = cls()
    generated.module_names[(4, "body", 0)] = "layer1_0.nothing.0"
    with pytest.raises(InternalError, match="no submodule 'layer1_0.nothing.0'"):
        check_module(model, p, generated)
    generated.module_names[(4, "body", 0)] = "layer1_0.body.0"
    generated.module_names[(0,)] = "layer1_0.body.0"  # the stem conv is larger
    with pytest.raises(InternalError, match=r"layer 0 \(conv2d conv1.*the plan says"):
        check_module(model, p, generated)


def test_the_registry_names_each_kind_by_its_own_type():
    # KINDS imports a family's module on first use, from a table of type names and classes.
    assert all(kind.type_name() == name for name, kind in KINDS.items())
    assert len(set(KINDS.values())) == len(KINDS)
