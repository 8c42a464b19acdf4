"""shapecheck.emit.codegen: the emitted PyTorch source, build_module, the check against the plan, and
that nothing a spec says can become code."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import shapecheck
from shapecheck.core import memory
from shapecheck.emit import build, codegen, pysource
from shapecheck.emit.build import build_module
from shapecheck.emit.codegen import (
    InternalError,
    TooLargeError,
    class_name,
    generate,
    generate_source,
    shape_text,
)

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

ALL_SPECS = sorted(SPECS.glob("*.yaml"))
SMALL = ["lecture_cnn", "lenet5", "inception_block"]


def _import_file(path, name="generated_model"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def _shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _spec(description: str = "", name: str = "net", layers: str | None = None) -> str:
    layers = layers or """
  - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3}
  - relu
  - flatten
  - {type: linear, name: fc, out_features: 3}"""
    text = f"name: {name}\ninput: {{shape: [1, 8, 8]}}\nlayers:{layers}\n"
    if description:
        text += f"description: {json.dumps(description)}\n"
    return text


# ---------------------------------------------------------------- the emitted source


def test_lecture_source(expect):
    expect("lecture_cnn_model.py", generate_source(shapecheck.plan(SPECS / "lecture_cnn.yaml")))


def test_example_file_is_current():
    """examples/lecture_cnn_model.py is what `shapecheck build` writes for the lecture spec."""
    example = (ROOT / "examples" / "lecture_cnn_model.py").read_text(encoding="utf-8")
    assert example == generate_source(shapecheck.plan(SPECS / "lecture_cnn.yaml"))


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.stem)
def test_source_style(path):
    source = generate_source(shapecheck.plan(path))
    lines = source.split("\n")
    assert lines[0].startswith(codegen.MARKER)
    assert source.endswith("\n        return x\n")
    for line in lines:
        assert len(line) <= 100, line
        assert line == line.rstrip(), repr(line)
    p = shapecheck.plan(path)
    tree = ast.parse(source)
    imports = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports == ["import torch", "from torch import nn"]
    assert ast.get_docstring(tree) == (
        f"The spec {p.name} as a PyTorch module, written by shapecheck {shapecheck.__version__}."
    )
    assert f"# {p.params:,} parameters" in source


def test_lecture_reads_like_the_lecture():
    source = generate_source(shapecheck.plan(SPECS / "lecture_cnn.yaml"))
    assert "class LectureCnn(nn.Module):" in source
    assert "self.conv2 = nn.Conv2d(in_channels=10, out_channels=20, kernel_size=5)" in source
    assert "self.fc = nn.Linear(in_features=320, out_features=10)" in source
    assert "x = self.relu2(x)  # (N, 20, 4, 4)" in source
    assert "# x: (N, 1, 28, 28)" in source
    assert "Residual" not in source and "Concat" not in source  # helpers only where used


def test_blocks_source():
    source = generate_source(shapecheck.plan(SPECS / "resnet18.yaml"))
    assert "class Residual(nn.Module):" in source and "class Concat" not in source
    assert "        self.layer2_0 = Residual(\n            body=nn.Sequential(\n" in source
    assert "            shortcut=nn.Identity(),  # (N, 64, 56, 56)\n" in source
    source = generate_source(shapecheck.plan(SPECS / "inception_block.yaml"))
    assert "class Concat(nn.Module):" in source and "class Residual" not in source
    assert "torch.cat([branch(x) for branch in self.branches], dim=1)" in source
    assert "            ),  # (N, 128, 28, 28)\n" in source  # branch 1's output


def test_batch_and_input_in_comments():
    p = shapecheck.plan(SPECS / "lecture_cnn.yaml", batch=32, input_shape=(1, 32, 32))
    source = generate_source(p, batch=32)
    assert "nn.Linear(in_features=500, out_features=10)" in source
    assert "x = self.pool2(x)  # (32, 20, 5, 5)" in source
    source = generate_source(shapecheck.plan(SPECS / "lecture_cnn.yaml", batch="B"))
    assert "x = self.fc(x)  # (B, 10)" in source


def test_shape_text():
    # Batch-factored dims: the first is how many batch rows one sample's row holds.
    assert shape_text((1, 10, 24, 24), "N") == "(N, 10, 24, 24)"
    assert shape_text((4, 10), "N") == "(N*4, 10)"
    assert shape_text((4, 10), "B") == "(B*4, 10)"
    assert shape_text((1, 3), 8) == "(8, 3)"
    assert shape_text((4, 3), 8) == "(32, 3)"
    assert shape_text((1536,), "B") == "(B*1536,)"


@pytest.mark.parametrize(
    ("name", "cls"),
    [("lecture_cnn", "LectureCnn"), ("resnet18", "Resnet18"), ("myNet", "MyNet"),
     ("none", "NoneNet"), ("residual", "ResidualNet"), ("concat", "ConcatNet"), ("_", "Net"),
     ("_1x", "Net1x"), ("a__b", "AB"), ("my-net v2", "MyNetV2"), ("café", "Caf"),
     ("x\nimport os", "XImportOs"), ("ﬁ", "Net")],
)
def test_class_name(name, cls):
    assert class_name(name) == cls


def test_constants():
    def text(value):
        return ast.unparse(pysource.const(value))

    assert text((3, 3)) == "(3, 3)" and text((3,)) == "(3,)"
    assert text(-1) == "-1" and text(-0.5) == "-0.5"
    assert text(float("inf")) == "float('inf')"
    assert text(float("-inf")) == "float('-inf')"
    assert text(float("nan")) == "float('nan')"
    assert text("same") == "'same'" and text("a'\n\"b") == repr("a'\n\"b")
    assert text(None) == "None" and text(False) == "False"
    with pytest.raises(pysource.SourceError):
        pysource.const(object())


@pytest.mark.parametrize("name", ["class", "lambda", "x y", "ﬁ", "x\nimport os", "1x", "", None,
                                  "a.b", "a;b"])
def test_identifiers_are_checked_where_they_enter(name):
    with pytest.raises(pysource.SourceError, match="not a Python identifier"):
        pysource.ident(name)


# ---------------------------------------------------------------- build_module and the file


@pytest.mark.parametrize("stem", SMALL)
def test_emitted_file_matches_build_module(stem, tmp_path):
    p = shapecheck.plan(SPECS / f"{stem}.yaml")
    generated = generate(p)
    path = tmp_path / f"{stem}_model.py"
    path.write_text(generated.source, encoding="utf-8")
    module = _import_file(path)
    from_file = getattr(module, generated.class_name)()
    built = shapecheck.build_module(SPECS / f"{stem}.yaml")
    assert type(built).__name__ == generated.class_name
    assert _shapes(from_file) == _shapes(built)
    assert sum(t.numel() for t in from_file.parameters()) == p.params
    x = torch.zeros(2, *p.input_shape[1:])
    assert from_file(x).shape == built(x).shape == (2, *p.output_shape[1:])


def test_resnet18_keys_on_meta(tmp_path):
    p = shapecheck.plan(SPECS / "resnet18.yaml")
    generated = generate(p)
    path = tmp_path / "resnet18_model.py"
    path.write_text(generated.source, encoding="utf-8")
    module = _import_file(path)
    with torch.device("meta"):
        from_file = module.Resnet18()
    built = build_module(SPECS / "resnet18.yaml", device="meta")
    assert _shapes(from_file) == _shapes(built)
    keys = list(built.state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer1_0.body.0.weight" in keys
    assert "layer2_0.shortcut.0.weight" in keys and "layer2_0.shortcut.1.running_var" in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    # torchvision's resnet18 has 11,689,512 parameters; so does this one
    assert sum(t.numel() for t in built.parameters()) == 11_689_512


def test_inception_keys():
    built = build_module(SPECS / "inception_block.yaml", device="meta")
    keys = list(built.state_dict())
    assert keys[0] == "inception3a.branches.0.0.weight"
    assert "inception3a.branches.3.1.weight" in keys  # branch 4: pool, then the 1x1 conv
    assert built(torch.empty(2, 192, 28, 28, device="meta")).shape == (2, 10)


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.stem)
def test_param_counts_equal_the_plan(path):
    p = shapecheck.plan(path)
    model = build_module(path, device="meta")
    assert sum(t.numel() for t in model.parameters()) == p.params
    assert all(t.device.type == "meta" for t in model.parameters())


def test_build_module_accepts_spec_text_and_overrides():
    model = build_module(_spec(), input_shape=(1, 10, 10))
    assert model.fc.in_features == 4 * 8 * 8
    assert model(torch.zeros(3, 1, 10, 10)).shape == (3, 3)


NESTED = """
name: nested
input: {shape: [3, 16, 16], batch: B}
layers:
  - type: residual
    name: outer
    body:
      - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
      - type: concat
        branches:
          - []
          - [{type: conv2d, out_channels: 4, kernel_size: 1}]
          - - type: residual
              body: [{type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}]
      - {type: conv2d, out_channels: 6, kernel_size: 1}
    shortcut:
      - {type: conv2d, out_channels: 6, kernel_size: 1}
  - {type: flatten, start_dim: 0}
  - relu
"""


def test_nested_blocks_and_a_flattened_batch():
    p = shapecheck.plan(NESTED)
    generated = generate(p)
    assert generated.module_names[(0, "body", 1, 2, 0, "body", 0)] == (
        "outer.body.1.branches.2.0.body.0")
    assert "                    nn.Identity(),  # (B, 8, 16, 16)\n" in generated.source
    assert "x = self.flatten1(x)  # (B*1536,)" in generated.source
    model = build_module(p)  # a Plan is accepted too
    assert list(model.state_dict())[4] == "outer.body.1.branches.2.0.body.0.weight"
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2 * 1536,)


def test_build_module_refuses_an_invalid_spec():
    bad = _spec(layers="\n  - {type: conv2d, out_channels: 4, kernel_size: 30}")
    with pytest.raises(shapecheck.SpecError) as e:
        build_module(bad)
    assert e.value.diagnostics[0].code == "SC201"


def test_build_module_refuses_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 10_000)
    allocated = []
    monkeypatch.setattr(build, "module_from_source",
                        lambda *a, **k: allocated.append(1))  # must not even get here
    with pytest.raises(TooLargeError) as e:
        build_module(SPECS / "lenet5.yaml", check=False)
    assert "246,824 bytes" in str(e.value) and "10,000 bytes" in str(e.value)
    assert isinstance(e.value, MemoryError)


def test_build_module_on_meta_skips_the_memory_check(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 10)
    assert build_module(SPECS / "vgg16.yaml", device="meta") is not None


# ---------------------------------------------------------------- the check against the plan


def test_check_catches_a_shape_the_plan_got_wrong():
    p = shapecheck.plan(SPECS / "lecture_cnn.yaml")
    generated = generate(p)
    p.layers[3].output_dims = (1, 20, 9, 9)  # as if the planner had a bug
    with pytest.raises(InternalError) as e:
        build.instantiate(p, generated, device="meta")
    message = str(e.value)
    assert "conv2" in message and "(64, 20, 9, 9)" in message and "(64, 20, 8, 8)" in message


def test_check_catches_a_parameter_count_the_plan_got_wrong():
    p = shapecheck.plan(SPECS / "lecture_cnn.yaml")
    generated = generate(p)
    p.layers[0].params += 1
    with pytest.raises(InternalError, match="8,491.*8,490"):
        build.instantiate(p, generated, device="meta")


def test_check_reports_torch_failures():
    p = shapecheck.plan(SPECS / "lecture_cnn.yaml")
    generated = generate(p)
    generated.source = generated.source.replace("in_features=320", "in_features=321")
    with pytest.raises(InternalError, match="torch fails"):
        build.instantiate(p, generated, device="meta")


# ---------------------------------------------------------------- nothing a spec says is code

HOSTILE = [
    '"""\nimport os\nopen(MARKER, "w").close()\n"""',
    "'''\nimport os\nopen(MARKER, 'w').close()\n'''",
    'ends with a quote"',
    'ends with a backslash \\',
    'two quotes "" and three """ and four """"',
    "\\nimport os\\nopen(MARKER, 'w').close()",
    "line\r\nimport os; open(MARKER, 'w').close()\rcarriage",
    "nul \x00 bell \x07 sep \u2028 para \u2029 bidi \u202e\u2066 tab\there",
    '\\"""\nopen(MARKER, "w").close()\n#',
    'a long line, " and "" and \\ and \t, ' * 8 + '"""\nopen(MARKER, "w").close()\n"""',
]


@pytest.mark.parametrize("description", HOSTILE)
def test_hostile_descriptions_stay_text(description, tmp_path):
    marker = tmp_path / "ran"
    text = description.replace("MARKER", repr(str(marker)))
    p = shapecheck.plan(_spec(text))
    assert p.valid, p.diagnostics
    generated = generate(p, source_name=f"x{text}.yaml")
    path = tmp_path / "model.py"
    path.write_text(generated.source, encoding="utf-8")
    module = _import_file(path)
    assert not marker.exists()
    assert [type(n).__name__ for n in ast.parse(generated.source).body] == [
        "Expr", "Import", "ImportFrom", "ClassDef"]
    cls = next(n for n in ast.parse(generated.source).body if isinstance(n, ast.ClassDef))
    raw = ast.get_docstring(cls, clean=False).split("\n\n    Input (N, 1, 8, 8)")[0]
    first, *rest = raw.split("\n")
    doc = "\n".join([first, *(line.removeprefix("    ") for line in rest)])
    if all(len(line) < 90 for line in text.split("\n")):
        assert doc == "\n".join(line.rstrip(" ") for line in text.strip().split("\n"))
    else:  # long lines are wrapped at spaces
        assert doc.replace("\n", " ").split(" ") == text.strip().replace("\n", " ").split(" ")
    assert max(len(line) for line in generated.source.split("\n")[1:]) <= 100
    assert module.Net()(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    assert generated.source.split("\n")[0].startswith(codegen.MARKER)
    assert len(generated.source.split("\n")[0].splitlines()) == 1


def test_hostile_descriptions_through_build_module(tmp_path):
    marker = tmp_path / "ran"
    text = f'"""\nopen({str(marker)!r}, "w").close()\n"""'
    model = build_module(_spec(text))
    assert not marker.exists()
    assert type(model).__name__ == "Net"


def test_names_that_clash_with_module_attributes(tmp_path):
    layers = """
  - {type: conv2d, name: forward, out_channels: 4, kernel_size: 3}
  - {type: relu, name: training}
  - {type: flatten, name: _modules}
  - {type: linear, name: __x, out_features: 3}
  - {type: identity, name: forward_}
  - {type: identity, name: to}
  - {type: identity, name: _parameters}"""
    p = shapecheck.plan(_spec(layers=layers))
    generated = generate(p)
    assert dict(generated.renamed) == {"forward": "forward__", "training": "training_",
                                       "_modules": "_modules_", "__x": "layer__x",
                                       "to": "to_", "_parameters": "_parameters_"}
    model = build_module(_spec(layers=layers))
    assert model.training is True and callable(model.forward)
    assert list(model.state_dict()) == ["forward__.weight", "forward__.bias", "layer__x.weight",
                                        "layer__x.bias"]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_non_finite_numbers_are_written_as_calls():
    layers = """
  - {type: conv2d, out_channels: 4, kernel_size: 3}
  - {type: leakyrelu, negative_slope: .inf}
  - flatten
  - {type: linear, out_features: 3}"""
    p = shapecheck.plan(_spec(layers=layers))
    source = generate_source(p)
    assert "nn.LeakyReLU(negative_slope=float('inf'))" in source
    assert build_module(_spec(layers=layers)).lrelu1.negative_slope == float("inf")


@pytest.mark.parametrize("spec", ["lecture_cnn", "zoo/efficientnet", "zoo/convnext_tiny"])
def test_audit_refuses_anything_unexpected(spec):
    good = generate_source(shapecheck.plan(SPECS / f"{spec}.yaml"))
    init = "        super().__init__()\n"
    bad = ["import os\n", "from os import system\n", "print('hi')\n",
           "x = __import__('os')\n", "exec('1')\n", "import torch as nn\n",
           "class A(nn.Module):\n    def __init__(self):\n        import os\n",
           "class A(nn.Module):\n    @property\n    def forward(self):\n        return x\n",
           "class A(object):\n    pass\n",
           good.replace("nn.Conv2d(", "nn.Conv2d(eval('1'), ", 1),
           good.replace("return x", "return open('f')", 1),
           good.replace("return x", "x = x.__class__\n        return x", 1),
           good.replace(init, init + "        _r = nn.ReLU\n        nn.ReLU = exec\n"
                        "        nn.ReLU('print(1)')\n", 1),
           good.replace(init, init + "        self.a = [nn.ReLU() for nn.ReLU in [exec]]\n", 1),
           good.replace(init, init + "        self.a = (lambda: 1)()\n", 1),
           good.replace(init, init + "        self.a = nn.ReLU.__init__\n", 1)]
    assert all(text != good for text in bad)
    for text in bad:
        with pytest.raises(pysource.SourceError, match="build never writes"):
            codegen.audit(ast.parse(text))
    codegen.audit(ast.parse(good))


def test_hostile_file_names_stay_text_in_template_docstrings(tmp_path):
    marker = tmp_path / "ran"
    payload = f'x"""\nopen({str(marker)!r}, "w").close()\n"""\\'
    p = shapecheck.plan(SPECS / "zoo" / "mobilenet_v2.yaml", scale="x0_5")
    generated = generate(p, source_name=payload)
    tree = ast.parse(generated.source)
    docs = [ast.get_docstring(n, clean=False) for n in tree.body if isinstance(n, ast.ClassDef)
            and n.name not in codegen.HELPERS]
    assert any(doc.startswith(f"The template conv_bn ({payload}, line ") for doc in docs)
    path = tmp_path / "model.py"
    path.write_text(generated.source, encoding="utf-8")
    _import_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("text", ["a\nimport os", "b\r\nexec('1')", "c\u2028d", "coding: latin-1"])
def test_comments_hold_one_line(text):
    stmt = ast.Assign(targets=[ast.Name(id="X", ctx=ast.Store())], value=pysource.const(1))
    stmt.leading = [text]
    lines = pysource.statement_lines(pysource.with_comment(stmt, text), 0)
    assert len(lines) == 2 and lines[0].startswith("# ") and "  # " in lines[1]
    assert ast.dump(ast.parse("\n".join(lines))) == ast.dump(ast.parse("X = 1"))
    assert "coding:" not in "\n".join(lines)


def test_a_layout_that_adds_code_is_refused():
    tree = ast.parse("X = 1")
    with pytest.raises(pysource.SourceError, match="does not read back"):
        pysource.check_render("X = 1\nimport os\n", tree)


def _all_specs():
    import yaml

    for path in sorted(SPECS.glob("*.yaml")) + sorted((SPECS / "zoo").glob("*.yaml")):
        scales = yaml.safe_load(path.read_text(encoding="utf-8")).get("scales") or {}
        for scale in [None, *scales]:
            yield pytest.param(path, scale, id=f"{path.parent.name}/{path.stem}"
                               + (f"@{scale}" if scale else ""))


@pytest.mark.parametrize(("path", "scale"), list(_all_specs()))
def test_emitted_source_of_every_spec(path, scale, expect):
    """The module each spec builds, as it reads; a change to it is seen in review."""
    p = shapecheck.plan(path, scale=scale)
    name = f"{path.parent.name}_{path.stem}" + (f"_{scale}" if scale else "")
    expect(f"emitted/{name}.py", generate_source(p))


def test_scale_variables_that_differ_only_in_case_stay_distinct(tmp_path):
    spec = tmp_path / "case_vars.yaml"
    spec.write_text("""\
input: {shape: [3, 16, 16]}
scales: {s: {w: 2, W: 3}}
templates:
  cb:
    params: {k: 3, W_2: 1}
    layers:
      - {type: conv2d, out_channels: $w * 4, kernel_size: $k, padding: 1}
      - {type: conv2d, out_channels: $W * 4 + $W_2, kernel_size: 1}
layers:
  - {use: cb}
  - {use: cb, k: 1, W_2: 2}
""", encoding="utf-8")
    p = shapecheck.plan(spec, scale="s")
    source = generate_source(p)
    assert "W = 2\nW_3 = 3\n" in source  # clear of the parameter W_2 too
    model = build_module(p)  # checked against the plan, layer by layer
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == [
        8, 13, 8, 14]
