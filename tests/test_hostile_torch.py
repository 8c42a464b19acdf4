"""The third hostile pass, on the torch side: flags torch cannot take, modules torch.fx cannot
compile, hand-edited run folders, launchers killed outright, impossible tensors in ONNX files,
folders and files that are not shapecheck's, two outputs that are one file, and the exit codes
of refused resumes and damaged run folders. Real torch, real files, real processes."""

from __future__ import annotations

import keyword
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_hostile import TRACEBACK, assert_clean, cli, warm  # noqa: F401 - warm: autouse
from test_hostile_io import needs_torch
from test_hostile_more import SMALL, TRAIN, POSIX, snapshot, spec, train


# ---------------------------------------------------------------- flags: --master-port


@needs_torch
@pytest.mark.parametrize("port", ["0", "70000", "-1", "65536", "abc", "8e3", "9" * 30])
def test_a_master_port_out_of_range_is_a_usage_error(tmp_path, port):
    out = tmp_path / "run"
    r = assert_clean(cli("build", spec(tmp_path, TRAIN), "--train", "--nproc", "2",
                         f"--master-port={port}", "--out", out))
    errors = [line for line in r.err.splitlines() if "error" in line]
    assert r.code == 2 and len(errors) == 1 and "--master-port" in errors[0], str(r)
    assert not out.exists()


# ---------------------------------------------------------------- import: keyword attributes

KEYWORD_MODULES = '''\
import torch
from torch import nn


class Net(nn.Module):
    """Submodules named like keywords: torch.fx would write `self.class(x)`."""

    def __init__(self):
        super().__init__()
        self.add_module("class", nn.Conv2d(1, 4, 3))
        setattr(self, "lambda", nn.ReLU())
        self.add_module("if", nn.Flatten())
        self.register_parameter("None", nn.Parameter(torch.ones(1)))
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        x = getattr(self, "class")(x)
        x = getattr(self, "lambda")(x) * getattr(self, "None")
        return self.fc(getattr(self, "if")(x))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential()
        self.body.add_module("for", nn.Conv2d(1, 4, 3))
        self.body.add_module("__x__", nn.ReLU())

    def forward(self, x):
        return self.body(x)
'''


@needs_torch
@pytest.mark.parametrize("name, layers", [
    ("Net", ["conv2d", "relu", "flatten", "linear"]),
    ("Nested", ["conv2d", "relu"]),
])
def test_modules_named_like_keywords_import_correctly(tmp_path, monkeypatch, name, layers):
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "kw.py").write_text(KEYWORD_MODULES)
    r = assert_clean(cli("import", f"kw.py:{name}", "--input", "1x8x8", "-o", "net.yaml",
                         limit=60), limit=60)
    if name == "Net":  # x * a parameter is no layer of a spec: refused clearly, by its name
        assert r.code == 2 and "self.None" in r.err and "spec" in r.err, str(r)
        (tmp_path / "kw.py").write_text(KEYWORD_MODULES.replace(
            ' * getattr(self, "None")', ""))
        r = assert_clean(cli("import", f"kw.py:{name}", "--input", "1x8x8", "-o", "net.yaml",
                             limit=60), limit=60)
    assert r.code == 0, str(r)
    spec_ = yaml.safe_load((tmp_path / "net.yaml").read_text())
    assert [layer if isinstance(layer, str) else layer["type"]
            for layer in spec_["layers"]] == layers
    # no keyword or dunder became a layer name; the spec plans and builds
    names = [layer["name"] for layer in spec_["layers"]
             if isinstance(layer, dict) and "name" in layer]
    assert all(n.isidentifier() and not keyword.iskeyword(n) and not n.startswith("__")
               for n in names), names
    assert assert_clean(cli("build", "net.yaml", "-o", "net.py", limit=60), limit=60).code == 0
