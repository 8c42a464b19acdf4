"""The third hostile pass, on the torch side: flags torch cannot take, modules torch.fx cannot
compile, hand-edited run folders, launchers killed outright, impossible tensors in ONNX files,
folders and files that are not shapecheck's, two outputs that are one file, and the exit codes
of refused resumes and damaged run folders. Real torch, real files, real processes."""

from __future__ import annotations

import importlib.util
import keyword
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_hostile import TRACEBACK, assert_clean, cli, warm  # noqa: F401 - warm: autouse
from test_hostile_io import needs_dot, needs_torch
from test_hostile_more import POSIX, SMALL, TRAIN, snapshot, spec, train

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


# ---------------------------------------------------------------- hand-edited run folders


@pytest.fixture(scope="module")
def adam_run(tmp_path_factory) -> Path:
    """One real run folder (1 epoch of synthetic data, Adam: its state has a tensor per
    parameter), shared by the tests that copy it."""
    folder = tmp_path_factory.mktemp("adam")
    r = train(spec(folder, TRAIN), "--optimizer", "adam", "--threads", "1",
              "--out", folder / "run")
    assert r.code == 0, str(r)
    return folder / "run"


def copy_run(run: Path, to: Path) -> Path:
    to.mkdir()
    for f in run.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (to / f.name).write_bytes(f.read_bytes())
    return to


def _first_weight(c):
    c["model"][next(iter(c["model"]))] = "abc"


def _state(c, key, value):
    c["optimizer"]["state"][0][key] = value


CHECKPOINT_CASES = {
    "epoch a string": (lambda c: c.update(epoch="1"), "epoch"),
    "step a float": (lambda c: c.update(step=1.5), "step"),
    "model a list": (lambda c: c.update(model=[1, 2]), "model"),
    "a weight replaced by a string": (_first_weight, "model."),
    "rng a string": (lambda c: c["rng"].update(torch="abc"), "rng.torch"),
    "rng of floats": (lambda c: c["rng"].update(torch=c["rng"]["torch"].float()), "rng.torch"),
    "no optimizer": (lambda c: c.pop("optimizer"), "optimizer: missing"),
    "optimizer a string": (lambda c: c.update(optimizer="adam"), "optimizer"),
    "param_groups a dict": (lambda c: c["optimizer"].update(param_groups={}), "param_groups"),
    "params of strings": (lambda c: c["optimizer"]["param_groups"][0].update(params=["a"]),
                          "params"),
    "a moment of another shape": (lambda c: _state(c, "exp_avg", __import__("torch").zeros(7)),
                                  "exp_avg of parameter 0 has shape [7]"),
    "a moment replaced by a string": (lambda c: _state(c, "exp_avg", "abc"), "optimizer"),
    "metrics of strings": (lambda c: c.update(metrics=["x"]), "metrics.0"),
    "metrics missing an epoch": (lambda c: c.update(metrics=[]), "metrics holds 0 epochs"),
    "a metric a string": (lambda c: c["metrics"][0].update(test_acc="high"), "test_acc"),
    "input_shape an int": (lambda c: c.update(input_shape=5), "input_shape"),
    "num_classes a string": (lambda c: c.update(num_classes="3"), "num_classes"),
    "mean a string": (lambda c: c.update(mean="zero"), "mean"),
    "std too long": (lambda c: c.update(std=[1.0, 1.0]), "std has 2 values"),
    "train a list": (lambda c: c.update(train=[]), "train"),
    "batch_size a string": (lambda c: c["train"].update(batch_size="big"), "batch_size"),
    "dataset a list": (lambda c: c.update(dataset=["mnist"]), "dataset"),
    "world_size a string": (lambda c: c.update(world_size="2"), "world_size"),
    "rng_ranks of another count": (lambda c: c.update(rng_ranks=c["rng_ranks"] * 2),
                                   "rng_ranks holds 2"),
    "threads zero": (lambda c: c.update(threads=0), "threads"),
    "mid-epoch without its sums": (lambda c: c.update(epoch=0, step=1, metrics=[]), "partial"),
    "a step past the epoch": (lambda c: c.update(epoch=0, step=99, metrics=[], partial={
        "loss_sum": 1.0, "correct": 1, "seen": 2, "train_s": 0.1}), "past the 1 steps"),
    "an unknown key": (lambda c: c.update(surprise=1), "surprise"),
    "not a dict": (lambda c: [c], "not a shapecheck checkpoint"),
}


@needs_torch
def test_a_hand_edited_checkpoint_is_one_clear_message(adam_run, tmp_path):
    """Every field of checkpoint.pt is checked on load: a resume of a damaged checkpoint is one
    line naming the field, exit 2, nothing in the folder changed."""
    import torch

    run = copy_run(adam_run, tmp_path / "run")
    s = spec(tmp_path, TRAIN)
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    for case, (damage, words) in CHECKPOINT_CASES.items():
        ckpt = torch.load(adam_run / "checkpoint.pt", weights_only=True)
        ckpt = damage(ckpt) if case == "not a dict" else (damage(ckpt), ckpt)[1]
        torch.save(ckpt, run / "checkpoint.pt")
        before = snapshot(run)
        r = train(s, "--optimizer", "adam", "--threads", "1", "--epochs", "2", "--out", run,
                  "--resume")
        errors = [line for line in r.err.splitlines() if "error" in line]
        assert r.code == 2 and len(errors) == 1, f"{case}\n{r}"
        assert "checkpoint.pt" in errors[0] and words in errors[0], f"{case}\n{r}"
        assert snapshot(run) == before and "epoch 2/2" not in r.out, case
    # the checkpoint as training wrote it resumes
    torch.save(good, run / "checkpoint.pt")
    r = train(s, "--optimizer", "adam", "--threads", "1", "--epochs", "2", "--out", run,
              "--resume")
    assert r.code == 0 and "epoch 2/2" in r.out, str(r)


def test_the_checkpoint_check_takes_every_metric_a_run_writes():
    """Each metric the loop can write (EpochMetrics, every one set) passes the check; a metric
    the loop never writes, or one of the wrong type, does not."""
    pytest.importorskip("torch")
    from dataclasses import asdict, fields

    from pydantic import ValidationError

    from shapecheck.training.checkpoint import _Metrics
    from shapecheck.training.runfolder import EpochMetrics

    every = EpochMetrics(**{f.name: 1 if f.name == "epoch" else 0.5 for f in fields(EpochMetrics)})
    assert _Metrics.model_validate(asdict(every))
    for bad in ({"made_up": 1.0}, {"test_acc": "high"}, {"epoch": 0}):
        with pytest.raises(ValidationError):
            _Metrics.model_validate({**asdict(every), **bad})


RUN_JSON_CASES = {
    "input_shape of strings": (lambda i: i.update(input_shape=["1", "8", "8"]), "input_shape"),
    "classes a dict": (lambda i: i.update(classes={"a": 1}), "classes"),
    "train a list": (lambda i: i.update(train=[1]), "train"),
    "splits of strings": (lambda i: i.update(splits={"train": "48"}), "splits"),
    "threads a string": (lambda i: i.update(threads="1"), "threads"),
    "world_size zero": (lambda i: i.update(world_size=0), "world_size"),
    "resumes a string": (lambda i: i.update(resumes="twice"), "resumes"),
    "created a number": (lambda i: i.update(created=2024), "created"),
    "dataset a list": (lambda i: i.update(dataset=["synthetic"]), "dataset"),
}


@needs_torch
def test_a_hand_edited_run_json_is_one_clear_message(adam_run, tmp_path):
    import json

    run = copy_run(adam_run, tmp_path / "run")
    good = json.loads((run / "run.json").read_text())
    s = spec(tmp_path, TRAIN)
    for case, (damage, words) in RUN_JSON_CASES.items():
        info = json.loads(json.dumps(good))
        damage(info)
        (run / "run.json").write_text(json.dumps(info))
        before = snapshot(run)
        for r in (assert_clean(cli("eval", run, limit=60), limit=60),
                  train(s, "--optimizer", "adam", "--epochs", "2", "--out", run, "--resume")):
            errors = [line for line in r.err.splitlines() if "error" in line]
            assert r.code == 2 and len(errors) == 1, f"{case}\n{r}"
            assert "run.json" in errors[0] and words in errors[0], f"{case}\n{r}"
        assert snapshot(run) == before, case
    # --force trains there anyway: a resume then keeps its record in a list of its own
    info = {**good, "resumes": "twice"}
    (run / "run.json").write_text(json.dumps(info))
    r = train(s, "--optimizer", "adam", "--threads", "1", "--epochs", "2", "--out", run,
              "--resume", "--force")
    assert r.code == 0, str(r)
    resumes = json.loads((run / "run.json").read_text())["resumes"]
    assert isinstance(resumes, list) and len(resumes) == 1


# ---------------------------------------------------------------- exit codes


EVAL_DAMAGE = {
    "no model.py": (lambda run: (run / "model.py").unlink(), "model.py is missing"),
    "no model.pt": (lambda run: (run / "model.pt").unlink(), "model.pt is missing"),
    "model.pt of text": (lambda run: (run / "model.pt").write_text("weights"),
                         "not a shapecheck weights file"),
    "model.py that raises": (lambda run: (run / "model.py").write_text("raise SystemError('x')\n"),
                             "does not run"),
    "model.py of another net": (lambda run: (run / "model.py").write_text(
        "from torch import nn\n\nclass Net(nn.Linear):\n    def __init__(self):\n"
        "        super().__init__(3, 3)\n"), "defines no nn.Module class"),
}


@needs_torch
@pytest.mark.parametrize("case", sorted(EVAL_DAMAGE))
def test_eval_of_a_damaged_run_folder_is_an_input_error(adam_run, tmp_path, case):
    """docs/diagnostics.md: exit 1 is an invalid spec; a damaged run folder is an input (2)."""
    run = copy_run(adam_run, tmp_path / "run")
    damage, words = EVAL_DAMAGE[case]
    damage(run)
    r = assert_clean(cli("eval", run, limit=60), limit=60)
    assert r.code == 2 and words in r.err and TRACEBACK not in r.err, str(r)
    if importlib.util.find_spec("onnx") is not None:  # export rebuilds the module as eval does
        r = assert_clean(cli("export", run, "--onnx", tmp_path / "net.onnx", limit=60), limit=60)
        assert r.code == 2 and words in r.err and not (tmp_path / "net.onnx").exists(), str(r)


@needs_torch
def test_a_refused_resume_is_an_input_error(adam_run, tmp_path):
    run = copy_run(adam_run, tmp_path / "run")
    s = spec(tmp_path, TRAIN)
    before = snapshot(run)
    for flags, words in ((["--optimizer", "sgd"], "optimizer.type sgd"),
                         (["--optimizer", "adam", "--data", "synthetic"], "dataset differs"),
                         (["--optimizer", "adam", "--input", "1x9x9"], "different architecture")):
        r = train(s, *flags, "--epochs", "2", "--out", run, "--resume")
        assert r.code == 2 and words in r.err, str(r)
        assert snapshot(run) == before


# ---------------------------------------------------------------- the --nproc launcher killed

MNIST = ROOT / "examples" / "data" / "mnist-5k"
TINY_MNIST = f"""\
name: tiny
input: {{shape: [1, 28, 28]}}
layers:
  - {{type: conv2d, out_channels: 4, kernel_size: 5, stride: 2}}
  - relu
  - flatten
  - {{type: linear, out_features: 10}}
train:
  dataset: {{format: idx, path: {str(MNIST)!r}, train_size: 300, test_size: 100}}
  epochs: 100000
  batch_size: 32
"""


def _alive(pid: int) -> bool:
    """Whether any thread of the process still runs. Its main thread shows Z (a zombie) as soon
    as it has exited, while the others may still be tearing down, holding its files (and so
    the run folder's lock): every thread is asked."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
    return any(state not in ("Z", "X") for state in states)


@needs_torch
@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason="no mnist-5k")
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks in /proc")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity")
                    else True, reason="two processes need two cores")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGRTMIN+1"])
def test_ranks_stop_and_release_the_folder_when_the_launcher_is_killed(tmp_path, how):
    """A real 2-process gloo run on 300 digits. The launcher killed outright (SIGKILL), or by a
    signal torch's launcher does not pass on (a real-time one), used to leave its ranks
    training on, holding the run folder's lock. Now they stop at an agreed step with a
    checkpoint, and the folder is free."""
    from test_distributed import worker_pids

    from shapecheck.core.atomic import folder_lock
    from shapecheck.training.checkpoint import Checkpoint

    sig = signal.SIGKILL if how == "SIGKILL" else signal.SIGRTMIN + 1
    out = tmp_path / "run"
    s = spec(tmp_path, TINY_MNIST, "tiny.yaml")
    logs = [open(tmp_path / name, "w+") for name in ("out.txt", "err.txt")]  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "shapecheck", "build", str(s), "--train",
                             "--nproc", "2", "--threads", "1", "--out", str(out)],
                            stdout=logs[0], stderr=logs[1], cwd=tmp_path)
    ranks: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists():  # an epoch is done: both ranks train
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        ranks = worker_pids(proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(proc.pid, sig)
        proc.wait(timeout=120)
        deadline = time.monotonic() + 120
        while any(_alive(pid) for pid in ranks.values()):
            assert time.monotonic() < deadline, (
                "the ranks still run 120 s after the launcher: "
                + " ".join(Path(f"/proc/{pid}/status").read_text().split("\n")[2]
                           for pid in ranks.values() if _alive(pid))
                + (tmp_path / "out.txt").read_text()[-300:] + (tmp_path / "err.txt").read_text())
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in ranks.values():  # only the ranks this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for f in logs:
            f.close()
    said, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), said + err
    assert TRACEBACK not in err and "checkpoint saved in" in said, said + err
    with folder_lock(out, "test"):  # free: no rank holds it
        pass
    ckpt = Checkpoint.load(out / "checkpoint.pt")  # whole, every field as written
    assert ckpt.world_size == 2


# ---------------------------------------------------------------- ONNX: impossible tensors

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "onnx", "onnxruntime",
                                                      "onnxscript")), reason="needs onnx")
HUGE_INPUT = """\
name: huge
input: {shape: [3, 100000, 100000]}
layers:
  - {type: conv2d, out_channels: 2, kernel_size: 3, stride: 1000}
  - {type: adaptiveavgpool2d, output_size: 1}
  - flatten
  - {type: linear, out_features: 3}
"""
# The input fits (3×2000×2000 floats, 48 MB a sample); the first layer's output does not.
HUGE_LAYER = HUGE_INPUT.replace("100000, 100000", "2000, 2000").replace(
    "out_channels: 2, kernel_size: 3, stride: 1000", "out_channels: 10000000, kernel_size: 1")


@needs_onnx
@pytest.mark.parametrize("text, least", [
    (HUGE_INPUT, 5 * 3 * 10**10 * 4),  # the inputs at batch 2 and 3
    (HUGE_LAYER, 3 * 10**7 * 4 * 10**6 * 4),  # the conv's output at batch 3
])
def test_an_export_that_cannot_fit_is_refused_before_allocating(tmp_path, text, least):
    s = spec(tmp_path, text, "huge.yaml")
    r = assert_clean(cli("build", s, "--onnx", tmp_path / "net.onnx", "-o", tmp_path / "net.py",
                         "--no-memory-check", limit=60), limit=60)
    assert r.code == 2 and "exporting needs at least" in r.err, str(r)
    needed = int(r.err.split("needs at least ")[1].split(" bytes")[0].replace(",", ""))
    assert needed >= least, str(r)
    assert "nothing was allocated" in r.err and r.seconds < 30
    assert not (tmp_path / "net.onnx").exists() and not (tmp_path / "net.py").exists()


@needs_onnx
def test_exporting_a_run_with_an_impossible_input_is_refused(adam_run, tmp_path):
    import json

    run = copy_run(adam_run, tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "input_shape": [1, 10**6, 10**6]}))
    r = assert_clean(cli("export", run, "--onnx", tmp_path / "net.onnx", limit=60), limit=60)
    assert r.code == 2 and "exporting needs at least" in r.err, str(r)
    assert not (tmp_path / "net.onnx").exists()


@needs_onnx
def test_an_onnx_file_declaring_huge_tensors_is_never_parsed(tmp_path):
    """shapecheck reads an existing ONNX file only to tell whether it wrote it (its first 32
    bytes): a file declaring a 2⁴⁰×2⁴⁰ initializer is refused as not ours, in no time."""
    import onnx
    from onnx import TensorProto, helper

    big = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    init = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**40, 2**40])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [big],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              initializer=[init])
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, producer_name="someone"), path)
    before = path.read_bytes()
    r = assert_clean(cli("build", spec(tmp_path), "--onnx", path, limit=60), limit=60)
    assert r.code == 2 and "not written by shapecheck" in r.err and r.seconds < 10, str(r)
    assert path.read_bytes() == before


# ---------------------------------------------------------------- two outputs, one file


@needs_onnx
@POSIX
def test_two_outputs_that_are_one_file_are_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = spec(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "c").symlink_to("a/net.py")  # a link to the file itself, dangling for now
    cases = [("a/net.py", "b/net.py"), ("b/net.py", "a/net.py"), ("a/net.py", "c"),
             ("a/../a/net.py", "b/./net.py")]
    for out, onnx_out in cases:
        r = assert_clean(cli("build", s, "-o", out, "--onnx", onnx_out, "--force", limit=60),
                         limit=60)
        assert r.code == 2 and "name the same file" in r.err, str(r)
        assert os.listdir(tmp_path / "a") == [], (out, onnx_out)
    # hard links: two names of one existing file
    assert assert_clean(cli("build", s, "-o", "a/net.py", limit=60), limit=60).code == 0
    os.link(tmp_path / "a" / "net.py", tmp_path / "hard.onnx")
    before = (tmp_path / "a" / "net.py").read_bytes()
    r = assert_clean(cli("build", s, "-o", "a/net.py", "--onnx", "hard.onnx", "--force",
                         limit=60), limit=60)
    assert r.code == 2 and "name the same file" in r.err, str(r)
    assert (tmp_path / "a" / "net.py").read_bytes() == before
    # two files: both written
    r = assert_clean(cli("build", s, "-o", "a/net.py", "--onnx", "b/net.onnx", limit=120),
                     limit=120)
    assert r.code == 0 and sorted(os.listdir(tmp_path / "a")) == ["net.onnx", "net.py"], str(r)


# ---------------------------------------------------------------- data loss: not a run folder


def _foreign(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@needs_torch
def test_a_folder_without_shapecheck_s_run_json_is_never_written_nor_emptied(adam_run, tmp_path):
    """Only an empty folder, or one whose run.json carries shapecheck's mark, is a run folder:
    a run.json that merely validates, or a model.py that starts with "# Generated by
    shapecheck", does not make a folder of someone's files a run folder, and --fresh removes
    nothing from it."""
    import json

    import shapecheck
    from shapecheck import training

    s = spec(tmp_path, TRAIN)
    info = json.loads((adam_run / "run.json").read_text())
    assert info.pop("shapecheck_run_folder") == 1  # what training writes
    yours = {"model.pt": "my weights", "checkpoint.pt": "my checkpoint",
             "metrics.csv": "my numbers\n", "notes.txt": "mine"}
    folders = {
        "valid run.json, no mark": _foreign(tmp_path / "a", {**yours,
                                                              "run.json": json.dumps(info)}),
        "a model.py that looks like ours": _foreign(tmp_path / "b", {
            **yours, "model.py": "# Generated by shapecheck 0.1.0 (I copied this line)\n"}),
        "the mark of another value": _foreign(tmp_path / "c", {
            **yours, "run.json": json.dumps({**info, "shapecheck_run_folder": "yes"})}),
    }
    for case, folder in folders.items():
        before = snapshot(folder)
        for flags in ([], ["--fresh"], ["--resume"]):
            r = train(s, "--optimizer", "adam", "--out", folder, *flags)
            assert r.code == 2 and "not a shapecheck run folder" in r.err, f"{case} {flags}\n{r}"
            assert snapshot(folder) == before, f"{case} {flags}"
        # the Python API keeps the same rule, --fresh's fresh=True included
        plan = shapecheck.plan(s)
        with pytest.raises(training.RunFolderError, match="not a shapecheck run folder"):
            training.train(shapecheck.build_module(s), shapecheck.load_spec(s).train,
                           name=plan.name, input_shape=plan.input_dims[1:],
                           num_classes=plan.output_shape[-1], base_dir=tmp_path,
                           out_dir=folder, model_source="", fresh=True, log=lambda _: None,
                           progress=False)
        assert snapshot(folder) == before, case
    # --force trains there: the user said so
    r = train(s, "--optimizer", "adam", "--out", tmp_path / "a", "--force")
    assert r.code == 0 and (tmp_path / "a" / "notes.txt").read_text() == "mine", str(r)
    written = json.loads((tmp_path / "a" / "run.json").read_text())
    assert written["shapecheck_run_folder"] == 1
    # a folder with only the marked run.json (a run killed at its start) is a run folder
    start = _foreign(tmp_path / "d", {"run.json": (adam_run / "run.json").read_text()})
    assert train(s, "--optimizer", "adam", "--out", start).code == 0


# ---------------------------------------------------------------- data loss: render's mark


@needs_dot
def test_render_takes_for_its_own_only_files_with_its_mark_in_its_place(tmp_path, monkeypatch):
    """A file that mentions "Generated by shapecheck" (as render's mark did before it had a
    token), even one quoting the whole mark somewhere else, is not render's: refused without
    --force. What render wrote, in every format, it replaces."""
    from shapecheck.commands.render import MARK

    monkeypatch.chdir(tmp_path)
    s = spec(tmp_path, SMALL, "net.yaml")
    mentions = {
        "old.svg": "<svg><!-- Generated by shapecheck --></svg>",
        "page.html": '<html><meta name="generator" content="Generated by shapecheck"></html>',
        "about.html": f"<html><p>This page was {MARK}.</p></html>",
        "quoted.svg": f"<svg><text>{MARK}</text></svg>",
        "label.dot": f'digraph g {{ a [label="{MARK}"] }}',
        "middle.pdf": f"%PDF-1.4\n% {MARK}\n%%EOF\nmore of my document\n",
        "notes.dot": "// Generated by shapecheck, then edited by hand\ndigraph g {}",
    }
    for name, text in mentions.items():
        (tmp_path / name).write_text(text)
        r = assert_clean(cli("render", s, "-o", name))
        assert r.code == 2 and "not written by shapecheck" in r.err, f"{name}\n{r}"
        assert (tmp_path / name).read_text() == text, name
    for fmt in ("svg", "png", "pdf", "dot", "html"):
        for _ in range(2):  # written, then recognised and replaced
            r = assert_clean(cli("render", s, "-o", f"mine.{fmt}", limit=60), limit=60)
            assert r.code == 0, f"{fmt}\n{r}"
