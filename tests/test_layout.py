"""The package's layout is its architecture: the core (YAML → spec → plan) imports nothing of
the outputs or of the torch side, the outputs read only the core, and no wing needs another
that needs it back. Every import counts: top-level, inside functions (the lazy ones), and
``import_module`` with a literal name; only ``if TYPE_CHECKING:`` blocks, which never run, are
left out."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "shapecheck"

ENTRY_POINTS = {"__init__.py", "__main__.py", "cli.py"}
# What each wing may import, besides itself.
ALLOWED = {
    "core": set(),
    "outputs": {"core"},
    "emit": {"core", "outputs"},
    "importer": {"core", "outputs", "emit"},
    "training": {"core", "outputs", "emit"},
    "lsp": {"core", "outputs"},
    "commands": {"core", "outputs", "emit", "importer", "training", "lsp"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING"):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports(path: Path) -> list[tuple[str, int]]:
    """Every shapecheck module ``path`` imports, with the line, as absolute dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    skipped = _type_checking_only(tree)
    found = []

    def resolve(name: str, level: int) -> str:
        if not level:
            return name
        base = package.split(".")
        base = base[:len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            target = resolve(node.module or "", node.level)
            found += [(f"{target}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and (getattr(node.func, "id", None) or node.func.attr) == "import_module"
              and node.args):
            arg = node.args[0]
            text = (arg.value if isinstance(arg, ast.Constant) else
                    arg.values[0].value if isinstance(arg, ast.JoinedStr) and arg.values
                    and isinstance(arg.values[0], ast.Constant) else None)
            if isinstance(text, str):
                level = len(text) - len(text.lstrip("."))
                anchor = (_module(path) if level and len(node.args) > 1 else package)
                name = text.lstrip(".")
                target = resolve(name, level) if level else name
                if level and len(node.args) > 1:  # import_module(".x", __name__)
                    target = f"{anchor}.{name}" if path.name == "__init__.py" else target
                found.append((target, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "shapecheck"]


def wing(dotted: str) -> str:
    """The wing of a module: its first package under shapecheck, or 'root'."""
    parts = dotted.split(".")
    if len(parts) < 2:
        return "root"
    return parts[1] if (PACKAGE / parts[1]).is_dir() else "root"


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_root_holds_only_the_entry_points_and_the_wings():
    files = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    assert files == ENTRY_POINTS
    wings = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert wings == set(ALLOWED)


def test_each_wing_imports_only_what_it_stands_on():
    wrong = []
    for path in _sources():
        here = wing(_module(path))
        if here == "root":
            continue
        for target, line in imports(path):
            there = wing(target)
            if there not in (here, "root") and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {target}")
            if here != "commands" and there == "root" and target not in ("shapecheck",
                                                                         "shapecheck.__version__"):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target}")
    assert wrong == []


def test_no_wing_needs_one_that_needs_it_back():
    edges = {w: set() for w in ALLOWED}
    for path in _sources():
        here = wing(_module(path))
        for target, _ in imports(path):
            there = wing(target)
            if here in edges and there in edges and there != here:
                edges[here].add(there)

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n)))
                   for n in edges[start])

    assert [w for w in edges if reaches(w, w)] == []


def test_the_core_stays_free_of_torch():
    heavy = ("torch", "numpy", "graphviz", "matplotlib", "onnx", "pygls")
    found = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            found += [f"{path.name}:{node.lineno}: {n}" for n in names
                      if n.split(".")[0] in heavy]
    assert found == []


def test_the_import_paths_of_earlier_versions_still_work():
    """Users wrote `from shapecheck.layers.conv import Conv2d` and `from shapecheck.train
    import train`: the same objects as in their new places, not copies."""
    from shapecheck.layers import KINDS
    from shapecheck.layers.conv import Conv2d
    from shapecheck.train import RUN_FILES, train

    from shapecheck.core.layers import conv
    from shapecheck.training import loop

    assert Conv2d is conv.Conv2d and KINDS["conv2d"] is conv.Conv2d
    assert train is loop.train and "run.json" in RUN_FILES


def test_reading_a_run_folder_needs_no_torch():
    """The run folder's files are read where torch is not installed (build's checks before
    training, eval's messages): importing shapecheck.training and its runinfo imports none."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import shapecheck.training, shapecheck.training.runinfo\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
