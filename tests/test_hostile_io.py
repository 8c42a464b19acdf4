"""Nothing lost: every file shapecheck writes goes through one atomic-write helper, a write that
fails half-way keeps the old file and leaves no temporary file, a file shapecheck did not write
is not overwritten; and broken training data is one clear error before the first step."""

from __future__ import annotations

import ast
import errno
import gzip
import importlib.util
import os
import shutil
import struct
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT
from test_hostile import TRACEBACK, assert_clean, cli, warm  # noqa: F401 - warm: autouse

from shapecheck.core import atomic

PACKAGE = ROOT / "shapecheck"
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
needs_dot = pytest.mark.skipif(
    importlib.util.find_spec("graphviz") is None or shutil.which("dot") is None,
    reason="needs Graphviz's dot")

SMALL = """\
name: small
input: {shape: [1, 8, 8]}
layers:
  - {type: conv2d, out_channels: 2, kernel_size: 3}
  - relu
  - flatten
  - {type: linear, name: fc, out_features: 3}
"""


# ---------------------------------------------------------------- the guard: one way to write

# Calls that write to a path given to them. Each is allowed only on a file object opened by
# atomic_open, i.e. its target argument is a name bound by `with atomic_open(...) as name`.
_TARGET_ARG = {  # call name -> (position, keyword) of the file argument
    "torch.save": (1, "f"), "save": (0, "fp"), "savefig": (0, "fname"),
    "np.save": (0, "file"), "np.savez": (0, "file"), "np.savez_compressed": (0, "file"),
    "np.savetxt": (0, "fname"), "numpy.save": (0, "file"), "json.dump": (1, "fp"),
    "pickle.dump": (1, "file"), "yaml.dump": (1, "stream"), "yaml.safe_dump": (1, "stream"),
    "to_csv": (0, "path_or_buf"), "tofile": (0, "fid"), "write_png": (1, "fname"),
}
# Calls that write, copy, move or link files however they are called: methods (Path's, and
# graphviz's render), and functions by their full name.
_WRITING_METHODS = {"write_text", "write_bytes", "touch", "symlink_to", "hardlink_to", "rename",
                    "render", "urlretrieve"}
_WRITING_FUNCTIONS = {
    "os.replace", "os.rename", "os.renames", "os.link", "os.symlink", "os.truncate",
    "os.mkfifo", "shutil.copy", "shutil.copy2", "shutil.copyfile", "shutil.copyfileobj",
    "shutil.copytree", "shutil.move", "shutil.make_archive", "tempfile.mkstemp",
    "tempfile.NamedTemporaryFile", "tempfile.TemporaryFile",
}
_WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}


def _name(func: ast.expr) -> str:
    return ast.unparse(func)


def _mode_writes(value: ast.expr) -> bool:
    """Whether an open() mode argument may write (a mode that is not a literal may)."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return any(c in value.value for c in "wax+")
    return True


def direct_writes(source: str, filename: str = "<source>") -> list[str]:
    """`file:line: call` for every place in the source that writes a file other than through
    shapecheck.core.atomic."""
    tree = ast.parse(source, filename)
    atomic_names = {
        item.optional_vars.id
        for node in ast.walk(tree) if isinstance(node, (ast.With, ast.AsyncWith))
        for item in node.items
        if isinstance(item.context_expr, ast.Call)
        and _name(item.context_expr.func).split(".")[-1] == "atomic_open"
        and isinstance(item.optional_vars, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        short = name.split(".")[-1]
        bad = False
        if name in _WRITING_FUNCTIONS or (
                isinstance(node.func, ast.Attribute) and short in _WRITING_METHODS):
            bad = True
        elif short == "open" and name != "os.open":
            # open(path, mode) / io.open / gzip.open(path, mode) / Path.open(mode)
            modes = [kw.value for kw in node.keywords if kw.arg == "mode"]
            if name in ("open", "io.open", "gzip.open", "bz2.open", "lzma.open", "codecs.open"):
                modes += node.args[1:2]
            else:
                modes += [a for a in node.args[:2] if isinstance(a, ast.Constant)
                          and isinstance(a.value, str) and len(a.value) <= 3]
            bad = any(_mode_writes(m) for m in modes)
        elif name == "os.open" or name == "os.fdopen":
            flags = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "")
                     for arg in node.args[1:] for n in ast.walk(arg)}
            bad = name == "os.fdopen" or bool(flags & _WRITE_FLAGS)
        elif name in _TARGET_ARG or short in _TARGET_ARG:
            pos, kw = _TARGET_ARG.get(name, _TARGET_ARG.get(short))
            target = next((k.value for k in node.keywords if k.arg == kw), None)
            if target is None and len(node.args) > pos:
                target = node.args[pos]
            # No target: the call returns its text (yaml.safe_dump(value)) and writes nothing.
            bad = target is not None and not (
                isinstance(target, ast.Name) and target.id in atomic_names)
        if bad:
            found.append((node.lineno, node.col_offset, ast.unparse(node)[:80]))
    return [f"{filename}:{line}: {call}" for line, _, call in sorted(found)]


def test_every_write_in_the_package_goes_through_atomic():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "core" / "atomic.py":
            continue
        rel = path.relative_to(ROOT).as_posix()
        found += direct_writes(path.read_text(encoding="utf-8"), rel)
    assert found == [], "write these through shapecheck.core.atomic:\n" + "\n".join(found)


def test_the_guard_finds_direct_writes():
    source = textwrap.dedent('''
        import os, shutil, torch, json
        from pathlib import Path
        from shapecheck.core.atomic import atomic_open, atomic_write

        def bad(p, obj, fig, mode):
            open(p, "w").write("x")                  # 7
            Path(p).write_text("x")                  # 8
            Path(p).write_bytes(b"x")                # 9
            torch.save(obj, p)                       # 10
            fig.savefig(p)                           # 11
            shutil.copy(p, p + ".bak")               # 12
            with Path(p).open("a") as f: pass        # 13
            os.replace(p, p + ".old")                # 14
            json.dump(obj, open(p, "w"))             # 15 (twice)
            open(p, mode)                            # 16
            fd = os.open(p, os.O_WRONLY | os.O_CREAT)  # 17
            graph.render(p)                          # 18

        def good(p, obj, fig):
            with open(p, "rb") as f: f.read()
            Path(p).read_text()
            with atomic_open(p) as f:
                torch.save(obj, f)
            with atomic_open(p, "wb") as out:
                fig.savefig(out, format="png")
            atomic_write(p, "text")
            "a-b".replace("-", "_")
            os.open(p, os.O_RDONLY)
            print(json.dumps(obj))
    ''')
    lines = [int(hit.split(":")[1]) for hit in direct_writes(source)]
    assert lines == [7, 8, 9, 10, 11, 12, 13, 14, 15, 15, 16, 17, 18]


# ---------------------------------------------------------------- a write that fails half-way


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def _fail_after_data(monkeypatch, exc: BaseException):
    """The temporary file holds the data, then the disk fills up (or Ctrl-C comes) at fsync."""
    real = os.fsync

    def fsync(fd):
        real(fd)
        raise exc

    monkeypatch.setattr(atomic.os, "fsync", fsync)


def _fail_at_rename(monkeypatch, exc: BaseException):
    def replace(src, dst):
        raise exc

    monkeypatch.setattr(atomic.os, "replace", replace)


FAILURES = {
    "disk-full": (_fail_after_data, OSError(errno.ENOSPC, "No space left on device"), 2),
    "rename-refused": (_fail_at_rename, PermissionError(errno.EACCES, "Permission denied"), 2),
    "interrupted": (_fail_after_data, KeyboardInterrupt(), 130),
}


def test_atomic_write_keeps_the_old_file_on_any_failure(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    for make, exc, _ in FAILURES.values():
        with monkeypatch.context() as m:
            make(m, exc)
            with pytest.raises(type(exc)):
                atomic.atomic_write(target, b"new" * 100_000)
        assert target.read_bytes() == b"old"
        assert _leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["data.bin"]
    atomic.atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["data.bin"]


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("command", ["build", "render-dot", "render-svg"])
def test_a_failed_write_keeps_the_old_output(tmp_path, monkeypatch, command, failure):
    if command == "build" and not HAVE_TORCH:
        pytest.skip("build needs torch")
    if command == "render-svg" and (importlib.util.find_spec("graphviz") is None
                                    or shutil.which("dot") is None):
        pytest.skip("needs Graphviz's dot")
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL, encoding="utf-8")
    out = tmp_path / {"build": "small_model.py", "render-dot": "small.dot",
                      "render-svg": "small.svg"}[command]
    argv = [command.split("-")[0], spec, "-o", out]
    assert cli(*argv).code == 0
    old = out.read_bytes()
    spec.write_text(SMALL.replace("out_channels: 2", "out_channels: 5"), encoding="utf-8")
    make, exc, code = FAILURES[failure]
    make(monkeypatch, exc)
    r = cli(*argv)
    assert r.code == code, str(r)
    assert TRACEBACK not in r.out + r.err
    assert ("interrupted" if code == 130 else f"cannot write {out}") in r.err
    assert out.read_bytes() == old  # the old file, whole
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert cli(*argv).code == 0 and out.read_bytes() != old


@needs_torch
def test_a_failed_checkpoint_keeps_the_last_good_run(tmp_path, monkeypatch):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL, encoding="utf-8")
    run = tmp_path / "run"
    base = ["build", spec, "--train", "--data", "synthetic", "--out", run]
    r = cli(*base, "--epochs", "1", limit=120)
    assert r.code == 0, str(r)
    # The lock (.shapecheck.lock) names its last holder; the run's own files must not change.
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".shapecheck.lock"}
    assert {"checkpoint.pt", "model.pt", "metrics.csv", "run.json", "model.py"} <= set(before)
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "checkpoint.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    r = cli(*base, "--epochs", "2", "--resume", limit=120)
    assert r.code == 2, str(r)
    assert "cannot write the run" in r.err and "No space left on device" in r.err
    assert TRACEBACK not in r.out + r.err and len(r.err.strip().splitlines()) == 1
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".shapecheck.lock"}
    assert after == before  # every file of epoch 1 as it was, no temp file
    monkeypatch.undo()
    assert cli(*base, "--epochs", "2", "--resume", limit=120).code == 0


@needs_torch
def test_a_run_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    # Regression: --out naming a file ended in a FileExistsError traceback.
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL, encoding="utf-8")
    (tmp_path / "a file").write_text("mine", encoding="utf-8")
    for out in ("a file", "a file/run"):
        r = assert_clean(cli("build", spec, "--train", "--data", "synthetic", "--epochs", "1",
                             "--out", tmp_path / out, limit=60), limit=60)
        assert r.code == 2 and r.err.startswith("shapecheck build: error: cannot write the run")
    assert (tmp_path / "a file").read_text(encoding="utf-8") == "mine"


# ---------------------------------------------------------------- files that are not ours


@needs_torch
def test_build_does_not_overwrite_what_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL, encoding="utf-8")
    mine = "# my model\n# Generated by shapecheck? no: by hand\n"
    cases = {
        "hand.py": mine,
        "empty.py": "",
        "bom.py": "\ufeff# Generated by shapecheck 0.1.0\n",  # the marker must start the file
        "spaced.py": " # Generated by shapecheck 0.1.0\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        r = assert_clean(cli("build", spec, "-o", name))
        assert r.code == 2 and "was not written by shapecheck" in r.err and "--force" in r.err
        assert (tmp_path / name).read_text(encoding="utf-8") == text
    # the default output name is protected too
    (tmp_path / "small_model.py").write_text(mine, encoding="utf-8")
    assert assert_clean(cli("build", spec)).code == 2
    assert (tmp_path / "small_model.py").read_text(encoding="utf-8") == mine
    # a folder is not a file
    (tmp_path / "folder.py").mkdir()
    r = assert_clean(cli("build", spec, "-o", "folder.py"))
    assert r.code == 2 and "is a folder" in r.err
    # with --force the file is replaced, atomically
    assert assert_clean(cli("build", spec, "-o", "hand.py", "--force")).code == 0
    assert (tmp_path / "hand.py").read_text(encoding="utf-8").startswith("# Generated by")
    assert _leftovers(tmp_path) == []


@needs_torch
@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symlinks")
def test_build_through_a_symlink_never_touches_its_target(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL, encoding="utf-8")
    target = tmp_path / "precious.py"
    target.write_text("# precious, by hand\n", encoding="utf-8")
    link = tmp_path / "link_model.py"
    link.symlink_to(target)
    r = assert_clean(cli("build", spec, "-o", link))
    assert r.code == 2 and "was not written by shapecheck" in r.err
    assert assert_clean(cli("build", spec, "-o", link, "--force")).code == 0
    assert target.read_text(encoding="utf-8") == "# precious, by hand\n"
    assert not link.is_symlink() and link.read_text(encoding="utf-8").startswith("# Generated")


# ---------------------------------------------------------------- training data, end to end

IDX = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _idx(shape: tuple[int, ...], magic: int | None = None, fill: int = 0) -> bytes:
    magic = 0x0800 | len(shape) if magic is None else magic
    count = 1
    for d in shape:
        count *= d
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in shape)
    if len(shape) == 1:
        return header + bytes(i % 3 for i in range(count))
    return header + bytes([fill]) * count


def _idx_folder(folder: Path, n: int = 30, size: int = 8, **replace: bytes | None) -> Path:
    folder.mkdir(parents=True)
    files = {"train_x": _idx((n, size, size)), "train_y": _idx((n,)),
             "test_x": _idx((n // 3, size, size)), "test_y": _idx((n // 3,)), **replace}
    for key, data in files.items():
        if data is not None:
            (folder / (IDX[key] + ".gz")).write_bytes(gzip.compress(data))
    return folder


def _image_folder(folder: Path, size: int = 8, extra: dict[str, bytes] | None = None) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b", "c"):
            d = folder / split / label
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("L", (size, size), color=i * 40).save(d / f"{i}.png")
    for rel, data in (extra or {}).items():
        (folder / rel).write_bytes(data)
    return folder


def _truncated(folder: Path) -> Path:
    p = _idx_folder(folder) / (IDX["train_x"] + ".gz")
    p.write_bytes(p.read_bytes()[:40])
    return folder


def _corrupt(folder: Path) -> Path:
    p = _idx_folder(folder) / (IDX["train_y"] + ".gz")
    data = bytearray(p.read_bytes())
    data[12:24] = b"\xff" * 12
    p.write_bytes(bytes(data))
    return folder


DATA_CASES = {
    "truncated-gzip": (_truncated, "truncated or corrupt gzip"),
    "corrupt-gzip": (_corrupt, "truncated or corrupt gzip"),
    "wrong-idx-magic": (lambda f: _idx_folder(f, train_x=_idx((30, 8, 8), magic=0x0999)),
                        "magic number"),
    "label-count": (lambda f: _idx_folder(f, train_y=_idx((29,))), "29 labels"),
    "image-size": (lambda f: _idx_folder(f, size=9), "1×9×9"),
    "empty": (lambda f: _idx_folder(f, train_x=_idx((0, 8, 8)), train_y=_idx((0,))),
              "the dataset is empty"),
    "missing-split": (lambda f: _idx_folder(f, test_x=None, test_y=None), "missing split"),
    "not-an-image": (lambda f: _image_folder(f, extra={"train/a/notes.txt": b"hello"}),
                     "not a readable image"),
    "image-size-in-folder": (lambda f: _image_folder(f, size=9), "image is 9×9"),
    "empty-folder": (lambda f: f.mkdir() or f, "the dataset is empty"),
    "not-a-dataset": (lambda f: (f.with_suffix(".txt").write_text("x"), f.with_suffix(".txt"))[1],
                      "cannot tell the dataset format"),
    "no-such-path": (lambda f: f, "dataset not found"),
}


@needs_torch
@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_broken_training_data_is_one_clear_error_before_training(tmp_path, case):
    if "folder" in case or case == "not-an-image":
        pytest.importorskip("PIL")
    make, words = DATA_CASES[case]
    data = make(tmp_path / "data é")
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL, encoding="utf-8")
    r = assert_clean(cli("build", spec, "--train", "--data", data, "--epochs", "1", "--out",
                         tmp_path / "run", limit=60), limit=60)
    assert r.code == 2, str(r)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shapecheck build: error: "), str(r)
    assert words in lines[0], str(r)
    assert "epoch" not in r.out + r.err and not (tmp_path / "run").exists()  # no step taken
