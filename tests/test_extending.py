"""docs/extending.md, done: in a copy of the repository, add an activation (softsign), a layer
with weights (instancenorm2d) and a block (sum, with its own diagnostic code) by the page's
steps, then run the checks that every kind is covered. The files the steps touch are the files
the page lists; the checks fail before the last steps and pass after them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("hypothesis")

PAGE = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")

# The checks that every kind (and code) is covered, as the page names them.
COVERAGE = [
    "tests/test_core.py::test_every_layer_type_is_in_the_torch_oracle_the_generator_and_the_docs",
    "tests/test_core.py::test_blocks_are_derived_from_the_registry",
    "tests/test_core.py::test_the_registry_names_each_kind_by_its_own_type",
    "tests/test_analysis.py::test_every_kind_states_its_axis_map",
    "tests/test_readme.py::test_the_spec_format_summary_states_true_counts",
    "tests/test_readme.py::test_the_code_table_in_the_docs_is_the_registry",
    "tests/test_readme.py::test_every_code_the_package_gives_is_in_the_registry",
    "tests/test_schema.py::test_the_shipped_copy_is_the_generated_schema",
    "tests/test_differential.py::test_generator_draws_every_kind_and_field",
]

SOFTSIGN = '''

@on_first_use
def _make_Softsign():
    class Softsign(_make__Elementwise()):
        type: Literal["softsign"]
        torch_class = "Softsign"
        name_prefix = "softsign"

    return Softsign
'''

INSTANCENORM = '''

class InstanceNorm2d(LayerSpec):
    """Normalises each channel of each sample over its positions."""

    type: Literal["instancenorm2d"]
    num_features: PosInt | None = None
    eps: Number = 1e-5
    momentum: Number | None = 0.1
    affine: Flag = False
    track_running_stats: Flag = False

    torch_class = "InstanceNorm2d"
    family = "norm"
    name_prefix = "inorm"
    inferred_fields = ("num_features",)
    stricter_than_torch = (
        Stricter("SC209", (3,), why="torch takes a 3-d tensor as one unbatched sample"),
        Stricter("SC205", unless=("affine", "track_running_stats"),
                 why="torch only warns where no weight or statistics check the channels"),
    )

    def axis_map(self, x: Dims, dim: int):
        return channel_map(dim, "instancenorm2d")

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        need_rank(x, (4,), "instancenorm2d")
        c = _channels(x, self.num_features, "num_features", "instancenorm2d")
        explain = [f"num_features = channels of the input = {c}"]
        return Inferred(out=x, explain=explain, inferred_args={"num_features": c},
                        **_affine(c, self.affine, explain))
'''

SUM_BLOCK = '''"""sum: every branch gets the block's input; their outputs, of one shape, are added."""

from typing import Any, Literal

from pydantic import Field

from .base import Dims, ShapeError
from .block import Block, chw


class Sum(Block):
    type: Literal["sum"]
    branches: list[list[Any]] = Field(min_length=1)

    name_prefix = "sum"
    lists_field = "branches"
    glyph, merge_word = "Σ", "sum"
    helper = "Sum"
    helper_source = \'\'\'
class Sum(nn.Module):
    """Every branch gets the same input; their outputs, of one shape, are added."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)
\'\'\'

    def merge(self, x: Dims, outs: list[Dims]) -> tuple[Dims, str]:
        for i, out in enumerate(outs[1:], start=1):
            if out != outs[0]:
                raise ShapeError("{code}", f"branch {{i}} gives {{chw(out)}} but branch 0 gives "
                                 f"{{chw(outs[0])}}: sum adds tensors of one shape")
        return outs[0], " + ".join(chw(o) for o in outs) + f" = {{chw(outs[0])}}"
'''

ORACLE_SUM = '''

class Sum(_Block):
    """Every branch gets the same input; the outputs are stacked and added."""

    def join(self, x: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(outs).sum(0)


_BLOCKS["sum"] = Sum
BLOCK_TYPES = tuple(_BLOCKS)
'''

GENERATOR = '''
    def instancenorm2d(self, kind, x, depth, keep):
        raw = {}
        right = int(x.shape[1]) if x is not None and x.dim() >= 2 else None
        self.declared(raw, "num_features", right, 1, 8)
        self.opt(raw, "eps", st.sampled_from([1e-5, 0.001]), 2)
        self.opt(raw, "momentum", st.sampled_from([0.1, None]), 2)
        self.opt(raw, "affine", st.booleans(), 5)
        self.opt(raw, "track_running_stats", st.booleans(), 3)
        return raw

    def sum(self, kind, x, depth, keep):
        return {"branches": [self.layers(x, self.draw(st.integers(0, 2)), depth + 1, True)[0]
                             for _ in range(self.draw(st.integers(1, 3)))]}

'''

# The new kinds against torch, through the differential test's own comparison, and built.
AGAINST_TORCH = '''
import test_differential as td
import yaml

import shapecheck


def _spec(layers):
    return {"input": {"shape": [4, 6, 6], "batch": 2}, "layers": layers}


def test_the_new_kinds_plan_as_torch_runs_them():
    conv = {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}
    for layers in (["softsign", {"type": "instancenorm2d", "affine": True}],
                   [{"type": "sum", "branches": [[conv], [], ["softsign"]]}],
                   [{"type": "sum", "branches": [[conv], [{"type": "maxpool2d",
                                                           "kernel_size": 2}]]}],
                   [{"type": "instancenorm2d", "num_features": 3, "affine": True}],
                   [{"type": "flatten", "start_dim": 2}, "instancenorm2d"]):
        td.check_against_torch(_spec(layers))


def test_a_spec_with_the_new_kinds_builds():
    spec = _spec(["softsign", {"type": "instancenorm2d", "affine": True},
                  {"type": "sum", "branches": [["relu"], []]}])
    plan = shapecheck.plan(yaml.safe_dump(spec))
    assert plan.valid and plan.params == 8
    assert sum(p.numel() for p in shapecheck.build_module(plan).parameters()) == 8
'''


def listed(section: str) -> set[str]:
    """The files a section of the page says to touch: its bold `paths`."""
    start = PAGE.index(f"## {section}\n")
    end = PAGE.find("\n## ", start + 1)
    return set(re.findall(r"\*\*`([^`]+)`\*\*", PAGE[start:end if end > 0 else None]))


class Copy:
    """A copy of the repository (the package, its tests, docs and specs) where steps are done."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in ("shapecheck", "tests", "docs", "specs"):
            shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.png", "*.svg", "*.html", "expected", "import_models"))
        for name in ("README.md", "shapecheck.schema.json", "pyproject.toml"):
            shutil.copy(ROOT / name, root / name)
        self.touched: set[str] = set()

    def edit(self, path: str, change) -> None:
        file = self.root / path
        before = file.read_text(encoding="utf-8") if file.exists() else ""
        after = change(before)
        assert after != before, f"the step changes nothing in {path}"
        file.write_text(after, encoding="utf-8")
        self.touched.add(path)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(self.root), "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run([sys.executable, *args], cwd=self.root, env=env, check=False,
                              capture_output=True, text=True, timeout=300)
        assert not check or done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    def pytest(self, *tests: str) -> subprocess.CompletedProcess:
        return self.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests,
                        check=False)


def insert(anchor: str, text: str, after: bool = False):
    def change(source: str) -> str:
        assert source.count(anchor) == 1, anchor
        return source.replace(anchor, anchor + text if after else text + anchor)
    return change


def test_extending_md_by_doing_it(tmp_path):
    repo = Copy(tmp_path)
    where = repo.run("-c", "import shapecheck; print(shapecheck.__file__)").stdout
    assert where.startswith(str(tmp_path)), where  # the copy, not the package under test

    # A layer type: the model in its family's module, then the registry.
    repo.edit("shapecheck/core/layers/elementwise.py", lambda s: s + SOFTSIGN)
    repo.edit("shapecheck/core/layers/norm.py", lambda s: s + INSTANCENORM)
    # A block: its own module and the registry. Its error is a new code.
    codes = repo.run("-c", "from shapecheck.core.diagnostics import CODES; "
                     "print(max(c for c in CODES if c.startswith('SC2')))").stdout.strip()
    code = f"SC{int(codes[2:]) + 1}"
    repo.edit("shapecheck/core/layers/sum.py", lambda s: SUM_BLOCK.format(code=code))
    repo.edit("shapecheck/core/layers/__init__.py", insert(
        "}  # fmt: skip", '    "softsign": "elementwise.Softsign", '
        '"instancenorm2d": "norm.InstanceNorm2d",\n    "sum": "sum.Sum",\n'))

    # Without the docs, the README, the schema and the tests' part, the checks fail.
    before = repo.pytest(*COVERAGE[:1], COVERAGE[4], COVERAGE[7])
    assert before.returncode == 1, before.stdout[-3000:]
    failed = re.findall(r"^FAILED (\S+)", before.stdout, flags=re.MULTILINE)
    assert failed, before.stdout[-3000:]

    # The rest of the steps, as the page lists them.
    repo.edit("shapecheck/core/diagnostics.py", insert(
        "    # SC3xx", f'    "{code}": "A sum block\'s branches give different shapes.",\n'))
    table = repo.run("-c", "from shapecheck.core.diagnostics import code_table; "
                     "print(code_table(), end='')").stdout

    def new_table(page: str) -> str:
        start = page.index("| code | meaning |")
        return page[:start] + table + page[page.index("\n\n", start) + 1:]

    repo.edit("docs/diagnostics.md", new_table)
    repo.edit("docs/spec.md", insert(
        "| split |", "| softsign | (none) |\n| instancenorm2d | num_features, eps=1e-5, "
        "momentum=0.1, affine=false, track_running_stats=false |\n| sum | branches: every "
        "branch gets the input; their outputs, of one shape, are added |\n"))

    def readme(text: str) -> str:
        text = re.sub(r"(\d+) layer types", lambda m: f"{int(m[1]) + 2} layer types", text)
        return re.sub(r"four blocks \(residual, concat,\s+gate,\s+split\)",
                      "five blocks (residual, concat, gate, split, sum)", text)

    repo.edit("README.md", readme)
    schema = repo.run("-m", "shapecheck", "schema").stdout
    repo.edit("shapecheck.schema.json", lambda s: schema)
    repo.edit("tests/torch_oracle.py", insert("\n\ndef _broadcasts(", ORACLE_SUM))
    repo.edit("tests/test_differential.py", insert("    def _window(self, kind, keep):",
                                                   GENERATOR))
    (tmp_path / "tests" / "test_new_kinds.py").write_text(AGAINST_TORCH, encoding="utf-8")

    after = repo.pytest(*COVERAGE, "tests/test_new_kinds.py")
    assert after.returncode == 0, after.stdout[-4000:]

    # The files touched are the files the page lists, placeholders filled in.
    layers = "shapecheck/core/layers/"
    page = {
        section: {re.sub(r"<\w+>\.py$", "*", path) for path in listed(section)}
        for section in ("A layer type", "A block", "A diagnostic code")}

    def on_page(path: str, section: str) -> bool:
        return path in page[section] or (path.startswith(layers) and f"{layers}*" in page[section])

    for path in repo.touched:
        assert any(on_page(path, section) for section in page), f"{path} is not on the page"
    layer_files = {"shapecheck/core/layers/elementwise.py", "shapecheck/core/layers/norm.py",
                   "shapecheck/core/layers/__init__.py", "docs/spec.md", "README.md",
                   "shapecheck.schema.json", "tests/test_differential.py"}
    assert {p for p in layer_files if not on_page(p, "A layer type")} == set()
    # the oracle needs a module of its own only for a type torch.nn lacks
    assert page["A layer type"] - {f"{layers}*", *layer_files} == {"tests/torch_oracle.py"}
    block_files = {"shapecheck/core/layers/sum.py", "shapecheck/core/layers/__init__.py",
                   "tests/torch_oracle.py", "tests/test_differential.py", "docs/spec.md",
                   "README.md", "shapecheck.schema.json"}
    assert {p for p in block_files if not on_page(p, "A block")} == set()
    assert page["A block"] - {f"{layers}*", *block_files} == set()
    assert page["A diagnostic code"] == {"shapecheck/core/diagnostics.py", "docs/diagnostics.md"}
    assert repo.touched == layer_files | block_files | page["A diagnostic code"]
    # the command the page gives for the code table runs as written
    commands = re.findall(r"`python (-c \"[^`]+\")`", PAGE)
    assert commands
    for command in commands:
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        out = subprocess.run(f"{sys.executable} {command}", shell=True, cwd=tmp_path, env=env,
                             check=False, capture_output=True, text=True)
        assert out.stdout == table, out.stderr
