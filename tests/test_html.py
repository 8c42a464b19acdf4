"""`shapecheck render net.yaml -o net.html`: one self-contained page, checked as text and in a
real headless Chromium (skipped where none is installed)."""

from __future__ import annotations

import json
import re
import shutil
import struct

import pytest
import yaml
from browser import Browser, chromium
from conftest import SPECS

from shapecheck.cli import main

pytest.importorskip("graphviz")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")
needs_chromium = pytest.mark.skipif(chromium() is None, reason="chromium is not installed "
                                    "(Debian: apt-get install chromium)")

LECTURE = SPECS / "lecture_cnn.yaml"

# The lecture net whose second conv is too large for its 12×12 input: fails at layer 3.
TOO_BIG = LECTURE.read_text().replace("kernel_size: 5}\n  - {type: maxpool2d, kernel_size: 2}\n"
                                      "  - relu\n  - {type: Conv2d, out_channels: 20, "
                                      "kernel_size: 5}",
                                      "kernel_size: 5}\n  - {type: maxpool2d, kernel_size: 2}\n"
                                      "  - relu\n  - {type: Conv2d, out_channels: 20, "
                                      "kernel_size: 13}")

HOSTILE = ('</script><script>document.title="owned"</script> <b>&amp; "quotes" \'single\''
           '\x01\x7f <!-- {{braces}}')


def write_page(tmp_path, text: str | None = None, *args: str):
    spec = LECTURE
    if text is not None:
        spec = tmp_path / "net.yaml"
        spec.write_text(text, encoding="utf-8")
    out = tmp_path / "net.html"
    code = main(["render", str(spec), "-o", str(out), *args])
    return code, out


@needs_dot
def test_the_page_is_self_contained(tmp_path, capsys):
    code, out = write_page(tmp_path)
    assert code == 0
    page = out.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", page)
    assert "url(" not in page and "@import" not in page
    assert page.count("<svg") == 1 and "<?xml" not in page
    assert "rf = 6 + (5 − 1) · 2 = 14" in page  # the arithmetic is in the page's data


def hostile_spec() -> str:
    data = yaml.safe_load(LECTURE.read_text(encoding="utf-8"))
    data["description"] = HOSTILE
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@needs_dot
def test_hostile_text_is_escaped(tmp_path, capsys):
    code, out = write_page(tmp_path, hostile_spec())
    assert code == 0, capsys.readouterr().err
    page = out.read_text(encoding="utf-8")
    assert "</script><script>document.title" not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "\x01" not in page and "\x7f" not in page


@needs_dot
@needs_chromium
def test_clicking_a_row_or_a_node_shows_the_arithmetic(tmp_path, capsys):
    code, out = write_page(tmp_path, None, "--depth", "1")
    assert code == 0
    shot = tmp_path / "clicked.png"
    with Browser() as b:
        b.open(out.as_uri())
        assert b.evaluate("document.title") == "lecture_cnn · shapecheck"
        assert "Click a layer" in b.evaluate("document.getElementById('detail').innerText")
        b.click("tr[data-key='3']")
        detail = b.evaluate("document.getElementById('detail').innerText")
        assert "conv2 (conv2d)" in detail
        assert "rf = 6 + (5 − 1) · 2 = 14" in detail
        assert "H_out = floor((12 + 2·0 − 1·(5−1) − 1) / 1) + 1 = 8" in detail
        assert b.evaluate("document.querySelector('tr.sel').dataset.key") == "3"
        # a node of the diagram: pool2 (path 4), found by its Graphviz title
        b.evaluate("Array.from(document.querySelectorAll('#diagram g.node')).find("
                   "g => g.querySelector('title').textContent === 'n4')"
                   ".setAttribute('data-test', 'pool2')")
        b.click("[data-test='pool2']")
        detail = b.evaluate("document.getElementById('detail').innerText")
        assert "pool2 (maxpool2d)" in detail and "rf = 14 + (2 − 1) · 2 = 16" in detail
        assert b.evaluate("document.querySelector('tr.sel').dataset.key") == "4"
        assert b.evaluate("document.querySelectorAll('#diagram g.node.sel').length") == 1
        b.screenshot(shot)
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])
    assert (width, height) == (1400, 900)


def _boxes(b) -> dict:
    """The table's box, its scroll sizes, the last column's right edge and the diagram's box."""
    return json.loads(b.evaluate("""JSON.stringify((() => {
        const t = document.getElementById('table'), d = document.getElementById('diagram');
        const last = [...t.querySelectorAll('th')].pop().getBoundingClientRect();
        return {table: t.getBoundingClientRect(), scroll: t.scrollWidth, client: t.clientWidth,
                last: last.right, diagram: d.getBoundingClientRect()};
    })())"""))


@needs_dot
@needs_chromium
@pytest.mark.parametrize("name", ["resnet50", "unet", "inception_v3"])
def test_every_column_is_in_view_at_1280px(name, tmp_path, capsys):
    """Nested nets make wide rows: at 1280 px the table shows every column (the diagram goes
    below it when both do not fit side by side), and never runs under the diagram."""
    out = tmp_path / f"{name}.html"
    assert main(["render", str(SPECS / "zoo" / f"{name}.yaml"), "-o", str(out)]) == 0
    with Browser(width=1280, height=900) as b:
        b.open(out.as_uri())
        box = _boxes(b)
    assert box["scroll"] <= box["client"]
    assert box["last"] <= box["table"]["right"] <= 1280
    beside = box["diagram"]["left"] >= box["table"]["right"]
    below = box["diagram"]["top"] >= box["table"]["bottom"]
    assert beside or below


@needs_dot
@needs_chromium
def test_a_table_wider_than_the_window_scrolls_in_its_own_box(tmp_path, capsys):
    out = tmp_path / "resnet50.html"
    assert main(["render", str(SPECS / "zoo" / "resnet50.yaml"), "-o", str(out)]) == 0
    with Browser(width=800, height=900) as b:
        b.open(out.as_uri())
        box = _boxes(b)
        assert box["scroll"] > box["client"] and box["table"]["right"] <= 800
        b.evaluate("document.getElementById('table').scrollLeft = 10000")
        assert _boxes(b)["last"] <= box["table"]["right"]


@needs_dot
@needs_chromium
def test_an_invalid_spec_opens_on_the_failing_layer(tmp_path, capsys):
    code, out = write_page(tmp_path, TOO_BIG)
    assert code == 1
    with Browser() as b:
        b.open(out.as_uri())
        assert b.evaluate("document.body.dataset.selected") == "3"
        detail = b.evaluate("document.getElementById('detail').innerText")
        assert "error SC201" in detail and "hint: this stack needs an input of at least" in detail
        assert b.evaluate("document.querySelector('tr.sel').className") == "failed sel"


def test_only_the_failing_layer_is_marked_not_the_blocks_around_it(tmp_path, capsys):
    spec = """
input: {shape: [3, 8, 8]}
layers:
  - type: concat
    name: outer
    branches:
      - [{type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}]
      - - type: concat
          name: inner
          branches:
            - [{type: conv2d, name: too_big, out_channels: 4, kernel_size: 9}]
            - [identity]
"""
    code, out = write_page(tmp_path, spec)
    assert code == 1
    page = out.read_text(encoding="utf-8")
    marked = {key: status for status, key in re.findall(r'<tr class="(\w+)" data-key="([^"]+)"',
                                                         page)}
    assert marked["0/1/0/0/0"] == "failed"  # too_big
    assert marked["0"] == marked["0/1/0"] == "holds"  # outer, inner
    data = json.loads(re.search(r'id="plan-data">(.*?)</script>', page, re.DOTALL).group(1))
    assert data["open"] == "0/1/0/0/0"
    assert data["layers"]["0"]["status"] == "holds"


@needs_dot
@needs_chromium
def test_hostile_text_shows_as_text_in_the_browser(tmp_path, capsys):
    spec = hostile_spec()
    code, out = write_page(tmp_path, spec)
    assert code == 0, capsys.readouterr().err
    with Browser() as b:
        b.open(out.as_uri())
        assert b.evaluate("document.title") != "owned"
        shown = b.evaluate("document.querySelector('.description').textContent")
        assert shown == HOSTILE.replace("\x01", "\ufffd").replace("\x7f", "\ufffd")
        assert b.evaluate("document.scripts.length") == 2
