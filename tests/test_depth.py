"""--depth for `plan` and `render`, and `render` saying when Graphviz shrinks a bitmap."""

from __future__ import annotations

import shutil
import struct

import pytest
from conftest import SPECS

from shapecheck.cli import main

RESNET = SPECS / "resnet18.yaml"
UNET = SPECS / "unet.yaml"


def table_rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("--"))
    return lines[start + 1: lines.index("", start)]


def test_plan_depth_collapses_blocks_with_their_totals(capsys):
    assert main(["plan", str(RESNET)]) == 0
    full = table_rows(capsys.readouterr().out)
    assert main(["plan", str(RESNET), "--depth", "1"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 23 < len(full)
    block = next(r for r in rows if r.split()[1] == "layer2_0")
    assert "residual (7 layers)" in block and "230,144" in block and "N×128×28×28" in block
    assert not any(r.startswith(" ") or "/" in r.split()[0] for r in rows)


def test_plan_depth_keeps_the_levels_above(capsys):
    assert main(["plan", str(UNET), "--depth", "2"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert any("skip2" in r and "concat (18 layers)" in r for r in rows)
    assert not any("enc3" in r for r in rows)
    assert any("enc2" in r for r in rows)


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_depth_must_be_positive(value, capsys):
    with pytest.raises(SystemExit):
        main(["plan", str(RESNET), "--depth", value])
    assert "expected a positive int" in capsys.readouterr().err


needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")


@needs_dot
def test_render_depth_draws_a_block_as_one_node(tmp_path, capsys):
    pytest.importorskip("graphviz")
    out = tmp_path / "r.dot"
    assert main(["render", str(RESNET), "--depth", "1", "-o", str(out)]) == 0
    dot = out.read_text()
    assert "n4 [label=<<B>layer1_0</B>" in dot and "residual · 5 layers" in dot
    assert "n4_body" not in dot and "cluster_4" not in dot
    assert "peripheries=2" in dot


def png_size(path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


@needs_dot
def test_render_says_when_graphviz_shrinks_a_png(tmp_path, capsys):
    pytest.importorskip("graphviz")
    tall = tmp_path / "tall.yaml"
    tall.write_text("input: {shape: [3, 64, 64]}\nlayers:\n" + "".join(
        "  - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n" for _ in range(300)))
    out = tmp_path / "tall.png"
    assert main(["render", str(tall), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Graphviz shrank it" in err and "--depth" in err and "tall.svg" in err
    assert max(png_size(out)) == 32767
    small = tmp_path / "resnet.png"
    assert main(["render", str(RESNET), "--depth", "1", "-o", str(small)]) == 0
    assert "shrank" not in capsys.readouterr().err
    assert max(png_size(small)) < 32767
