"""The README shows what the tool really prints and documents every diagnostic code."""

from __future__ import annotations

import re

from conftest import ROOT

from shapecheck.cli import main
from shapecheck.diagnostics import CODES

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_code_is_documented_as_in_the_code_table():
    for code, meaning in CODES.items():
        assert f"| {code} | {meaning} |" in README, code


def test_the_lecture_plan_shown_is_what_plan_prints(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    block = re.search(r"```console\n\$ shapecheck plan specs/lecture_cnn.yaml\n(.*?)```",
                      README, re.DOTALL)
    assert block, "the README lost its example"
    assert main(["plan", "specs/lecture_cnn.yaml"]) == 0
    assert capsys.readouterr().out == block.group(1)
