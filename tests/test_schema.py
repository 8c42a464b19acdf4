"""The JSON Schema of spec files: generated from the models, shipped in the repository, and
accepting exactly the form shapecheck accepts on the specs we have."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from conftest import ROOT, SPECS

from shapecheck.cli import main
from shapecheck.outputs.schema import schema_text

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = json.loads(schema_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
ALL_SPECS = sorted(SPECS.rglob("*.yaml"))  # the zoo too (templates, scales)


def errors(data) -> list[tuple[list, str]]:
    return [(list(e.path), e.message) for e in VALIDATOR.iter_errors(data)]


def test_the_shipped_copy_is_the_generated_schema(capsys):
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert out == schema_text()
    assert (ROOT / "shapecheck.schema.json").read_text(encoding="utf-8") == out, \
        "run: shapecheck schema > shapecheck.schema.json"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: str(p.relative_to(SPECS)))
def test_every_spec_validates(path):
    assert errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


LECTURE = yaml.safe_load((SPECS / "lecture_cnn.yaml").read_text(encoding="utf-8"))


def broken(change) -> dict:
    data = copy.deepcopy(LECTURE)
    change(data)
    return data


@pytest.mark.parametrize("change, where", [
    (lambda d: d["layers"][0].update(kernel_size="5"), ["layers", 0, "kernel_size"]),
    (lambda d: d["layers"][0].update(kernel_size=[5, 5, 5]), ["layers", 0, "kernel_size"]),
    (lambda d: d["layers"][0].update(out_channels=0), ["layers", 0, "out_channels"]),
    (lambda d: d["layers"][0].update(bias="no"), ["layers", 0, "bias"]),
    (lambda d: d["layers"][0].update(strid=2), ["layers", 0]),
    (lambda d: d["layers"].__setitem__(2, "rleu"), ["layers", 2]),
    (lambda d: d["layers"].__setitem__(2, {"type": "Conv3d"}), ["layers", 2, "type"]),
    (lambda d: d["layers"].__setitem__(2, {"type": "linear"}), ["layers", 2]),
    (lambda d: d["input"].update(shape=[1, 28]), ["input", "shape"]),
    (lambda d: d.update(layer=[]), []),
    (lambda d: d["train"].update(epochs=-1), ["train", "epochs"]),
    (lambda d: d["layers"].__setitem__(0, {"type": "residual", "body": [{"type": "relu",
                                                                         "p": 1}]}),
     ["layers", 0, "body", 0]),
])
def test_specs_with_wrong_types_fail(change, where):
    found = errors(broken(change))
    assert found, "the schema accepted it"
    assert where in [path for path, _ in found], found


def test_type_names_in_any_case_and_with_nn():
    data = broken(lambda d: d["layers"][0].update(type="nn.Conv2d"))
    data["layers"][2] = "ReLU"
    assert errors(data) == []


TEMPLATED = """\
name: tmpl
scales:
  small: {w: 8}
  big: {w: 16}
default_scale: small
input: {shape: [3, 32, 32]}
templates:
  conv_bn:
    params: {out: 32, stride: 1}
    layers:
      - {type: conv2d, out_channels: $out, kernel_size: 3, padding: 1, stride: $stride}
      - batchnorm2d
  block:
    params: {width: 8}
    type: residual
    body: [{type: conv2d, out_channels: $width, kernel_size: 3, padding: 1}]
layers:
  - {use: conv_bn, out: $w}
  - {use: block, name: stage, repeat: 2, width: $w}
  - {type: conv2d, out_channels: $w * 2, kernel_size: [3, $w // 8], padding: 1}
  - {type: adaptiveavgpool2d, output_size: 1}
  - flatten
  - {type: linear, out_features: 10}
"""


def test_templates_scales_and_expressions_validate():
    import shapecheck

    assert shapecheck.plan(TEMPLATED).valid
    data = yaml.safe_load(TEMPLATED)
    assert errors(data) == []
    data["layers"][1]["repeat"] = 0
    data["layers"][2]["kernel_size"] = "3"
    found = [path for path, _ in errors(data)]
    assert ["layers", 1, "repeat"] in found and ["layers", 2, "kernel_size"] in found


def test_when_on_a_layer_a_use_and_a_group_validates():
    data = yaml.safe_load(TEMPLATED)
    data["layers"][0]["when"] = "$w > 8"
    data["layers"][2]["when"] = True
    data["layers"].insert(3, {"when": "$w != 1", "layers": ["relu", {"type": "relu6"}]})
    assert errors(data) == []
    data["layers"][2]["when"] = 3
    data["layers"][3]["name"] = "x"  # a group holds `when:` and `layers:` only
    found = [path for path, _ in errors(data)]
    assert ["layers", 2, "when"] in found and ["layers", 3] in found
