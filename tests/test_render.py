"""`shapecheck render`: diagrams drawn by the real Graphviz `dot`, read back as SVG and DOT."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ROOT, SPECS

from shapecheck.cli import main
from shapecheck.commands.render import MARK
from shapecheck.core.planner import plan
from shapecheck.outputs.graph import (
    FAILED_FILL,
    FAILED_LINE,
    SKIPPED_FILL,
    SKIPPED_LINE,
    SKIPPED_TEXT,
)
from shapecheck.outputs.table import dims

pytest.importorskip("graphviz")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")

SVG = "{http://www.w3.org/2000/svg}"
ALL_SPECS = sorted(SPECS.glob("*.yaml"))

LECTURE = SPECS / "lecture_cnn.yaml"

# The lecture net with a second conv too large for its 12×12 input: fails at layer 3 (SC201).
TOO_BIG = """\
name: too_big
input: {shape: [1, 28, 28], batch: 64}
layers:
  - {type: conv2d, name: conv1, out_channels: 10, kernel_size: 5}
  - {type: maxpool2d, kernel_size: 2}
  - relu
  - {type: conv2d, name: conv2, out_channels: 20, kernel_size: 15}
  - {type: maxpool2d, kernel_size: 2}
  - relu
  - flatten
  - {type: linear, name: fc, out_features: 10}
"""

# An identity shortcut that cannot be added to a strided body (SC211 at the block), then a
# block the planner never reaches.
BAD_SHORTCUT = """\
input: {shape: [3, 32, 32]}
layers:
  - {type: conv2d, out_channels: 16, kernel_size: 3, padding: 1}
  - type: residual
    name: down
    body:
      - {type: conv2d, out_channels: 32, kernel_size: 3, stride: 2, padding: 1, bias: false}
      - batchnorm2d
  - relu
  - type: concat
    name: later
    branches:
      - [{type: conv2d, name: never, out_channels: 8, kernel_size: 1}]
      - []
  - flatten
  - {type: linear, out_features: 10}
"""

HOSTILE_DESCRIPTION = ('q"uote <b>not bold</b> & &amp; {braces} [x] back\\slash \\N \\G\n'
                       "line two: ünïcödé ⊕ 中文 ]]> -->")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def render(*args) -> int:
    return main(["render", *map(str, args)])


def svg_of(path: Path) -> ET.Element:
    return ET.parse(path).getroot()  # raises if the SVG is not well-formed XML


def texts(element: ET.Element) -> list[str]:
    return [t.text.strip() for t in element.iter(f"{SVG}text") if t.text and t.text.strip()]


def groups(root: ET.Element, kind: str) -> dict[str, ET.Element]:
    """The SVG's node or edge groups by their title (a node id, or 'tail->head')."""
    return {g.find(f"{SVG}title").text: g for g in root.iter(f"{SVG}g") if g.get("class") == kind}


def fill(group: ET.Element) -> str | None:
    shape = group.find(f"{SVG}path")
    if shape is None:
        shape = group.find(f"{SVG}polygon")
    return None if shape is None else shape.get("fill")


def node_id(path) -> str:
    return "n" + "_".join(map(str, path))


def expected_edge_shapes(p) -> dict[str, str | None]:
    """The shape each node passes on, by node id: the plan's own shapes, nothing recomputed."""
    out = {"input": dims(p.input_shape)}
    for layer in p.walk():
        shape = None if layer.output_shape is None else dims(layer.output_shape)
        if layer.family == "block":
            out["m" + node_id(layer.path)[1:]] = shape
            out["b" + node_id(layer.path)[1:]] = dims(layer.input_shape)
        else:
            out[node_id(layer.path)] = shape
    return out


# -- every spec, drawn by dot --------------------------------------------------------------


@needs_dot
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_every_spec_renders_to_svg_with_every_name_and_edge_shape(spec, tmp_path, capsys):
    out = tmp_path / "net.svg"
    assert render(spec, "-o", out) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}"  # after any warning
    root = svg_of(out)
    shown = set(texts(root))
    p = plan(spec)
    for layer in p.walk():
        assert layer.name in shown, layer.name
    assert f"{p.params:,} params · " in " ".join(shown)
    # Every edge carries the shape that leaves its tail, as the plan says.
    shapes = expected_edge_shapes(p)
    edges = groups(root, "edge")
    assert edges
    forks = {"b" + node_id(b.path)[1:]: b for b in p.walk() if b.is_block}
    for title, edge in edges.items():
        tail, head = title.split("->")
        if tail in forks and head.startswith("n"):  # into a branch: what that branch gets
            block = forks[tail]
            key = head[len(tail):].lstrip("_").split("_")[0]
            keys = [str(k) for k in block.branch_keys]
            assert texts(edge) == [dims(block.branch_input_shape(keys.index(key)))], title
        elif tail in forks:  # an empty branch, or the input itself (a gate), to the merge
            block = forks[tail]
            allowed = {dims(block.input_shape)} | {
                dims(block.branch_input_shape(i)) for i in range(len(block.branches))}
            assert texts(edge)[0] in allowed, title
        else:
            assert texts(edge) == [shapes[tail]], title
    assert sorted(os.listdir(tmp_path)) == ["net.svg"]  # no temporary file left behind


@needs_dot
def test_blocks_fork_and_merge_with_identity_shortcuts_straight_to_the_add(tmp_path):
    out = tmp_path / "resnet18.svg"
    assert render(SPECS / "resnet18.yaml", "-o", out) == 0
    edges = groups(svg_of(out), "edge")
    # layer1_0 (index 4) has an identity shortcut: an edge from the block's fork to its ⊕.
    assert "b4->m4" in edges
    # layer2_0 (index 8) has a conv shortcut: two branches leave the fork.
    assert {"b8->n8_body_0", "b8->n8_shortcut_0"} <= set(edges)
    assert "⊕" in texts(svg_of(out))

    out = tmp_path / "inception.svg"
    assert render(SPECS / "inception_block.yaml", "-o", out) == 0
    root = svg_of(out)
    assert {f"b0->n0_{k}_0" for k in range(4)} <= set(groups(root, "edge"))
    assert "‖" in texts(root)


# -- the DOT itself ------------------------------------------------------------------------


def test_lecture_dot_is_as_expected(tmp_path, capsys, expect):
    out = tmp_path / "lecture_cnn.dot"
    assert render(LECTURE, "-o", out) == 0
    source = out.read_text(encoding="utf-8")
    assert str(tmp_path) not in source and str(ROOT) not in source
    expect("lecture_cnn.dot", source)


def test_options_reach_the_drawing(tmp_path):
    out = tmp_path / "lecture.dot"
    assert render(LECTURE, "-o", out, "--rankdir", "LR", "--batch", "8", "--input", "1x32x32") == 0
    source = out.read_text(encoding="utf-8")
    assert "rankdir=LR" in source
    assert "<8×1×32×32>" in source and "<8×20×5×5>" in source


# -- invalid specs -------------------------------------------------------------------------


@needs_dot
def test_invalid_spec_is_drawn_up_to_the_failure(tmp_path, capsys):
    spec = write(tmp_path, "too_big.yaml", TOO_BIG)
    out = tmp_path / "too_big.svg"
    assert render(spec, "-o", out) == 1
    drawn = capsys.readouterr().out
    assert main(["plan", str(spec)]) == 1
    err = drawn.removesuffix(f"wrote {out}\n")
    assert capsys.readouterr().out.endswith(err)  # the diagnostics exactly as plan prints them
    assert "error[SC201]" in err

    root = svg_of(out)
    nodes, edges = groups(root, "node"), groups(root, "edge")
    failing = nodes["n3"]
    assert fill(failing) == FAILED_FILL
    assert failing.find(f"{SVG}path").get("stroke") == FAILED_LINE
    assert any("error SC201" in t for t in texts(failing))
    assert any(t.startswith("hint:") for t in texts(failing))
    for ok in ("n0", "n1", "n2"):
        assert fill(nodes[ok]) not in (FAILED_FILL, SKIPPED_FILL)
    for later in ("n4", "n5", "n6", "n7", "output"):
        assert fill(nodes[later]) == SKIPPED_FILL, later
        assert all(t.get("fill") == SKIPPED_TEXT for t in nodes[later].iter(f"{SVG}text"))
    # The shapes reach the failing layer; the edges after it are grey and carry none.
    assert texts(edges["n2->n3"]) == ["64×10×12×12"]
    for title in ("n3->n4", "n4->n5", "n7->output"):
        assert texts(edges[title]) == []
        assert edges[title].find(f"{SVG}path").get("stroke") == SKIPPED_LINE


@needs_dot
def test_failing_merge_is_red_and_an_unreached_block_is_drawn_grey(tmp_path, capsys):
    spec = write(tmp_path, "bad_shortcut.yaml", BAD_SHORTCUT)
    out = tmp_path / "bad.svg"
    assert render(spec, "-o", out) == 1
    assert "error[SC211]" in capsys.readouterr().out
    root = svg_of(out)
    nodes = groups(root, "node")
    assert fill(nodes["m1"]) == FAILED_FILL
    assert any("error SC211" in t for t in texts(nodes["m1"]))
    # The block after the failure was never planned: drawn from the spec, grey, no shapes.
    assert fill(nodes["b3"]) == SKIPPED_FILL
    assert "never" in texts(nodes["n3_0_0"])
    assert fill(nodes["n3_0_0"]) == SKIPPED_FILL
    assert "b3->m3" in groups(root, "edge")  # the empty branch: straight to the merge


@needs_dot
def test_schema_invalid_spec_draws_its_errors(tmp_path, capsys):
    spec = write(tmp_path, "typo.yaml", "input: {shape: [1, 28, 28]}\n"
                 "layers:\n  - {type: conv2d, out_channels: 10, kernal_size: 5}\n")
    out = tmp_path / "typo.svg"
    assert render(spec, "-o", out) == 1
    captured = capsys.readouterr()
    assert "error[SC102]" in captured.out and "Traceback" not in captured.out + captured.err
    assert captured.out.endswith(f"'kernel_size'?\nwrote {out}\n")
    nodes = groups(svg_of(out), "node")
    assert set(nodes) == {"errors"}
    assert fill(nodes["errors"]) == FAILED_FILL
    shown = " ".join(texts(nodes["errors"]))
    assert "SC102" in shown and "kernal_size" in shown


def test_missing_spec_is_an_input_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.svg"
    assert render(tmp_path / "nope.yaml", "-o", out) == 2
    assert "SC001" in capsys.readouterr().out
    assert not out.exists()


# -- escaping ------------------------------------------------------------------------------


@needs_dot
def test_hostile_description_gives_valid_dot_and_svg(tmp_path, capsys):
    spec = tmp_path / "hostile.yaml"
    description = HOSTILE_DESCRIPTION.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    spec.write_text(f'name: hostile\ndescription: "{description}\\u0007"\n'
                    "input: {shape: [1, 8, 8]}\nlayers: [flatten, {type: linear, out_features: 2}]\n",
                    encoding="utf-8")
    assert plan(spec).description == HOSTILE_DESCRIPTION + "\a"

    dot_file = tmp_path / "hostile.dot"
    assert render(spec, "-o", dot_file) == 0
    run = subprocess.run(["dot", "-Tsvg", str(dot_file)], capture_output=True, check=False)
    assert run.returncode == 0, run.stderr
    assert b"Warning" not in run.stderr and b"Error" not in run.stderr, run.stderr

    svg = tmp_path / "hostile.svg"
    assert render(spec, "-o", svg) == 0
    for root in (ET.fromstring(run.stdout), svg_of(svg)):
        shown = "\n".join(texts(root))
        assert 'q"uote <b>not bold</b> & &amp; {braces} [x] back∖slash ∖N ∖G' in shown
        assert "line two: ünïcödé ⊕ 中文 ]]> -->" in shown
        assert "hostile" in shown and "\a" not in shown


@needs_dot
def test_hostile_name_is_a_schema_error_drawn_safely(tmp_path, capsys):
    spec = write(tmp_path, "evil.yaml", 'name: "a\\"b<c>&{d}\\\\"\ninput: {shape: [1, 8, 8]}\n'
                 "layers: [flatten, {type: linear, name: \"x<y>\", out_features: 2}]\n")
    out = tmp_path / "evil.svg"
    assert render(spec, "-o", out) == 1
    assert "SC105" in capsys.readouterr().out
    shown = "\n".join(texts(svg_of(out)))
    assert "SC105" in shown and "x<y>" in shown


# -- output paths and formats --------------------------------------------------------------


def test_output_into_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert render(LECTURE, "-o", tmp_path / "no" / "such" / "net.svg") == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("args, message", [
    (["-o", "net.jpg"], "cannot tell the format"),
    (["-o", "net.png", "--format", "svg"], "asks for png but --format asks for svg"),
    (["-o", "."], "is a folder"),
])
def test_unusable_output_is_a_usage_error(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert render(LECTURE, *args) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF"),
                                        ("dot", b"digraph lecture_cnn {")])
def test_default_output_is_the_spec_stem_in_the_current_folder(fmt, magic, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert render(LECTURE, *(["--format", fmt] if fmt != "svg" else [])) == 0
    assert capsys.readouterr().out == f"wrote lecture_cnn.{fmt}\n"
    assert (tmp_path / f"lecture_cnn.{fmt}").read_bytes().startswith(magic)
    assert os.listdir(tmp_path) == [f"lecture_cnn.{fmt}"]


# -- without Graphviz ----------------------------------------------------------------------


def cli(*args, env_path: str | None = None, code: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if env_path is not None:
        env["PATH"] = env_path
    command = [sys.executable, *(["-c", code] if code else ["-m", "shapecheck"]), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60, check=False)


def test_without_dot_the_dot_file_is_written_with_how_to_install(tmp_path):
    no_dot = tmp_path / "bin"
    no_dot.mkdir()
    out = tmp_path / "net.svg"
    previous = f"<!-- {MARK} -->the previous drawing"  # render's own file
    out.write_text(previous)
    run = cli("render", str(LECTURE), "-o", str(out), env_path=str(no_dot))
    assert run.returncode == 2, run.stderr
    assert run.stdout == f"wrote {tmp_path / 'net.dot'}\n"
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    for how in ("apt-get install graphviz", "brew install graphviz",
                "conda install -c conda-forge graphviz"):
        assert how in run.stderr
    assert (tmp_path / "net.dot").read_text(encoding="utf-8").startswith("digraph lecture_cnn {")
    assert out.read_text() == previous  # untouched

    run = cli("render", str(LECTURE), "-o", str(tmp_path / "only.dot"), env_path=str(no_dot))
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert (tmp_path / "only.dot").exists()


def test_without_the_graphviz_package_one_line_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['graphviz'] = None\n"
            "from shapecheck.cli import main; sys.exit(main(sys.argv[1:]))")
    run = cli("render", str(LECTURE), "-o", str(tmp_path / "net.svg"), code=code)
    assert run.returncode == 2
    assert run.stderr.strip() == ("shapecheck render: error: drawing needs the graphviz package: "
                                  "pip install 'shapecheck-cnn[render]' (in a clone of the "
                                  "repository: pip install '.[render]')")
    assert os.listdir(tmp_path) == []


def test_plan_never_imports_graphviz():
    code = textwrap.dedent("""\
        import contextlib, io, sys
        from shapecheck.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["plan", sys.argv[1]])
        print("graphviz" in sys.modules)
    """)
    run = cli(str(LECTURE), code=code)
    assert run.stdout.strip() == "False", run.stderr
