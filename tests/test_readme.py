"""The README shows what the tool really prints; docs/diagnostics.md documents every code."""

from __future__ import annotations

import re

from conftest import ROOT

from shapecheck.cli import main
from shapecheck.core.diagnostics import CODES, code_table

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_code_table_in_the_docs_is_the_registry():
    """docs/diagnostics.md's table is CODES as code_table() writes it: no row missing, extra,
    reworded or out of order."""
    page = (ROOT / "docs" / "diagnostics.md").read_text(encoding="utf-8")
    start = page.index("| code | meaning |")
    assert page[start:page.index("\n\n", start) + 1] == code_table()


def test_every_code_the_package_gives_is_in_the_registry():
    """A code written anywhere in the package (a diagnostic it can give) is documented."""
    used = set()
    for path in (ROOT / "shapecheck").rglob("*.py"):
        used |= set(re.findall(r"\bSC\d{3}\b", path.read_text(encoding="utf-8")))
    assert sorted(used - set(CODES)) == []


def test_the_lecture_plan_shown_is_what_plan_prints(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    block = re.search(r"```console\n\$ shapecheck plan specs/lecture_cnn.yaml\n(.*?)```",
                      README, re.DOTALL)
    assert block, "the README lost its example"
    assert main(["plan", "specs/lecture_cnn.yaml"]) == 0
    assert capsys.readouterr().out == block.group(1)


def test_the_python_examples_run_and_give_what_their_comments_say(monkeypatch):
    """Each ```python block that uses shapecheck runs; an expression whose comment is a Python literal must evaluate
    to it."""
    import ast

    monkeypatch.chdir(ROOT)
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.DOTALL)
              if "shapecheck" in b]  # not the excerpts of emitted code
    assert blocks, "the README lost its Python examples"
    checked, namespace = 0, {}  # one session, as a reader would type them
    for block in blocks:
        lines = block.splitlines()
        for stmt in ast.parse(block).body:
            source = "\n".join(lines[stmt.lineno - 1:stmt.end_lineno])
            comment = lines[stmt.end_lineno - 1].partition("  # ")[2].strip()
            try:
                expected = ast.literal_eval(comment)
            except (ValueError, SyntaxError):
                exec(source, namespace)  # noqa: S102 - the README's own example
                continue
            assert isinstance(stmt, ast.Expr), source
            assert eval(source, namespace) == expected, source
            checked += 1
    assert checked >= 3


def test_the_spec_format_summary_states_true_counts():
    from shapecheck import plan
    from shapecheck.core.layers import KINDS

    layer_types = sum(not kind.is_block for kind in KINDS.values())
    assert f"{layer_types} layer types" in README
    blocks = [name for name, kind in KINDS.items() if kind.is_block]
    number = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert f"{number[len(blocks)]} blocks ({', '.join(blocks)})" in " ".join(README.split())
    resnet = re.search(r"```yaml\n(.*?)```", (ROOT / "docs" / "templates.md").read_text(
        encoding="utf-8"), re.DOTALL).group(1)
    lines = len(resnet.splitlines())
    assert f"ResNet-50 is\n{lines} lines" in README
    zoo = len((ROOT / "specs" / "zoo" / "resnet50.yaml").read_text(encoding="utf-8").splitlines())
    assert f"({zoo} in `specs/zoo/resnet50.yaml`)" in README
    assert plan(resnet).params == 25_557_032
