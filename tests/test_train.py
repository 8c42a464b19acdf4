"""Training, resuming, stopping and evaluating (shapecheck.train), and atomic writes."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from shapecheck.atomic import atomic_open, atomic_write
from shapecheck.data import DataError
from shapecheck.train import (
    METRICS_COLUMNS,
    TrainError,
    evaluate,
    format_confusion,
    select_device,
    train,
)
from shapecheck.trainspec import DatasetSpec, TrainSpec

ROOT = Path(__file__).resolve().parent.parent
MNIST_5K = next(
    (p for p in (ROOT / "examples" / "data" / "mnist-5k", Path("/work/shared/data/mnist-5k"))
     if (p / "train-images-idx3-ubyte.gz").exists()),
    None,
)

# The lecture CNN, written as the source a run folder keeps, so evaluate() can rebuild it.
LECTURE_SOURCE = textwrap.dedent("""\
    from torch import nn


    class LectureCNN(nn.Sequential):
        def __init__(self):
            super().__init__(
                nn.Conv2d(1, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
                nn.Conv2d(10, 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
                nn.Flatten(), nn.Linear(320, 10),
            )
    """)
_ns: dict = {}
exec(LECTURE_SOURCE, _ns)  # noqa: S102 - our own constant source
LectureCNN = _ns["LectureCNN"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small nets on a shared machine: one thread is as fast and far steadier.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec(**kw) -> TrainSpec:
    d = {
        "dataset": {"format": "synthetic", "train_size": 256, "test_size": 64},
        "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.5},
        "epochs": 2, "batch_size": 32, "seed": 3, "device": "cpu",
    }
    d.update(kw)
    return TrainSpec.model_validate(d)


def run(module, s: TrainSpec, out: Path, **kw):
    lines: list[str] = []
    kw.setdefault("log", lines.append)
    result = train(module, s, name="lecture_cnn", input_shape=(1, 28, 28), num_classes=10,
                   base_dir=ROOT, out_dir=out, model_source=LECTURE_SOURCE, **kw)
    return result, lines


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_synthetic_run_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result, lines = run(LectureCNN(), spec(epochs=3), out)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt", "curves.png", "metrics.csv", "model.pt", "model.py", "run.json"]
    assert result.device == "cpu" and len(result.history) == 3
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.test_acc > 0.5  # 10 classes: chance is 0.1
    epoch_lines = [s for s in lines if s.startswith("epoch ")]
    assert len(epoch_lines) == 3
    assert all(w in epoch_lines[0] for w in ("train loss", "test loss", "test acc", "samples/s"))

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == METRICS_COLUMNS and [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["test_acc"]) == pytest.approx(result.test_acc, abs=1e-6)

    fresh = LectureCNN()
    fresh.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 0
    assert {"model", "optimizer", "rng"} <= ckpt.keys()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out / "run.json").read_text())
    assert info["module_class"] == "LectureCNN" and info["loss"] == "cross_entropy"
    assert not list(out.glob(".*.tmp"))


def test_same_seed_same_weights_and_seed_matters(tmp_path):
    a, _ = run(LectureCNN(), spec(epochs=1), tmp_path / "a")
    b, _ = run(LectureCNN(), spec(epochs=1), tmp_path / "b")
    c, _ = run(LectureCNN(), spec(epochs=1, seed=4), tmp_path / "c")
    load = lambda r: torch.load(r.out_dir / "model.pt", weights_only=True)
    assert states_equal(load(a), load(b))
    assert not states_equal(load(a), load(c))


@pytest.mark.skipif(MNIST_5K is None, reason="mnist-5k sample not found")
def test_mnist_slice_learns_and_evaluates(tmp_path):
    s = spec(dataset={"format": "idx", "path": str(MNIST_5K), "train_size": 1500,
                      "test_size": 500},
             optimizer={"type": "sgd", "lr": 0.01, "momentum": 0.5}, batch_size=64, epochs=2)
    result, _ = run(LectureCNN(), s, tmp_path / "run")
    assert result.test_acc > 0.7  # chance is 0.1

    ev = evaluate(tmp_path / "run")  # rebuilt from model.py, on the run's own dataset
    assert ev.num_samples == 500 and ev.accuracy == pytest.approx(result.test_acc)
    assert sum(map(sum, ev.confusion)) == 500 and len(ev.confusion) == 10
    text = format_confusion(ev)
    assert text.startswith(f"accuracy {ev.accuracy:.2%}") and "recall" in text

    # Another dataset entry, with the module given: the run's normalisation still applies.
    other = DatasetSpec(format="idx", path=str(MNIST_5K), test_size=100)
    ev2 = evaluate(tmp_path / "run", other, module=LectureCNN())
    assert ev2.num_samples == 100 and ev2.correct == round(ev2.accuracy * 100)


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    whole, _ = run(LectureCNN(), spec(epochs=2), tmp_path / "whole")
    run(LectureCNN(), spec(epochs=1), tmp_path / "split")
    resumed, lines = run(LectureCNN(), spec(epochs=2), tmp_path / "split", resume=True)
    assert any("resuming" in s for s in lines) and resumed.resumed_from == 1
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert states_equal(a["model"], b["model"])
    assert [m.test_acc for m in whole.history] == [m.test_acc for m in resumed.history]
    assert len((tmp_path / "split" / "metrics.csv").read_text().splitlines()) == 3


class _CtrlCAt(nn.Sequential):
    """The lecture CNN that presses Ctrl-C during its n-th training forward pass."""

    def __init__(self, at: int):
        super().__init__(*LectureCNN())
        self.at, self.calls = at, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():  # a training step, not the batch check
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)


def test_ctrl_c_saves_mid_epoch_and_resume_is_exact(tmp_path):
    whole, _ = run(LectureCNN(), spec(epochs=2), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(_CtrlCAt(8 + 3), spec(epochs=2), tmp_path / "cut")  # 8 steps an epoch
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 3)
    resumed, _ = run(LectureCNN(), spec(epochs=2), tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert states_equal(a, b)
    assert resumed.history[-1].train_loss == pytest.approx(whole.history[-1].train_loss)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


KILL_SCRIPT = textwrap.dedent("""\
    import sys
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[2])
    from test_train import LectureCNN, LECTURE_SOURCE, spec
    from shapecheck.train import train
    torch.set_num_threads(1)
    s = spec(epochs=10_000, batch_size=16)
    train(LectureCNN(), s, name="k", input_shape=(1, 28, 28), num_classes=10,
          base_dir=Path("."), out_dir=Path(sys.argv[1]), model_source=LECTURE_SOURCE,
          log=lambda line: print(line, flush=True))
    """)


def test_sigkill_mid_epoch_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(ROOT / "tests")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 90 s"
            time.sleep(0.05)
        time.sleep(0.35)  # into a later epoch, possibly mid-write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    done = ckpt["epoch"]
    assert done >= 1 and ckpt["step"] == 0
    result, _ = run(LectureCNN(), spec(epochs=done + 1, batch_size=16), out, resume=True)
    assert [m.epoch for m in result.history] == list(range(1, done + 2))
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == done + 1
    LectureCNN().load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert not list(out.glob(".*.tmp"))


def test_nan_from_the_start_names_the_step_and_writes_no_checkpoint(tmp_path):
    with pytest.raises(TrainError, match=r"epoch 1, step \d+.*No epoch had completed"):
        run(LectureCNN(), spec(optimizer={"lr": 1e30}), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_nan_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    run(LectureCNN(), spec(epochs=1), out)
    before = {f: (out / f).read_bytes() for f in ("checkpoint.pt", "model.pt", "metrics.csv")}
    with pytest.raises(TrainError, match=r"epoch 2, step \d+.*last good checkpoint \(epoch 1\)"):
        run(LectureCNN(), spec(epochs=3, optimizer={"lr": 1e30}), out, resume=True)
    assert {f: (out / f).read_bytes() for f in before} == before
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_bad_resumes(tmp_path):
    with pytest.raises(TrainError, match="nothing to resume"):
        run(LectureCNN(), spec(), tmp_path / "none", resume=True)
    run(LectureCNN(), spec(epochs=1), tmp_path / "run")
    wider = nn.Sequential(nn.Conv2d(1, 12, 5), nn.MaxPool2d(2), nn.ReLU(),
                          nn.Conv2d(12, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(320, 10))
    with pytest.raises(TrainError, match=r"different architecture .*0.weight was \[10, 1, 5, 5\], is \[12, 1, 5, 5\]"):
        run(wider, spec(), tmp_path / "run", resume=True)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="cannot read checkpoint"):
        run(LectureCNN(), spec(), tmp_path / "run", resume=True)


def test_data_and_model_mismatches_stop_before_training(tmp_path):
    out = tmp_path / "run"
    grey = tmp_path / "grey.npz"
    np.savez(grey, x_train=np.zeros((8, 28, 28), np.uint8), y_train=np.arange(8),
             x_test=np.zeros((4, 28, 28), np.uint8), y_test=np.arange(4))
    kw = {"name": "x", "base_dir": ROOT, "out_dir": out, "model_source": "",
          "log": lambda _: None}
    with pytest.raises(DataError, match="label 7 is out of range"):
        train(LectureCNN(), spec(dataset=str(grey)), input_shape=(1, 28, 28), num_classes=5,
              **kw)
    with pytest.raises(DataError, match=r"images are 1×28×28 .* input.shape is \[3, 28, 28\]"):
        train(LectureCNN(), spec(dataset=str(grey)), input_shape=(3, 28, 28), num_classes=10,
              **kw)
    seven = nn.Sequential(*list(LectureCNN())[:-1], nn.Linear(320, 7))
    with pytest.raises(TrainError, match=r"output has shape \[2, 7\]"):
        run(seven, spec(), out)
    with pytest.raises(TrainError, match="no dataset"):
        run(LectureCNN(), TrainSpec(), out)
    assert not out.exists()


def test_logsoftmax_net_trains_with_nll_loss(tmp_path):
    net = nn.Sequential(*LectureCNN(), nn.LogSoftmax(dim=1))
    result, _ = run(net, spec(epochs=1), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["loss"] == "nll_loss"
    assert result.history[0].test_loss > 0


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys):
    run(LectureCNN(), spec(epochs=1), tmp_path / "a")
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal
    run(LectureCNN(), spec(epochs=1), tmp_path / "b", progress=True)
    err = capsys.readouterr().err
    assert "\repoch 1/1 [" in err and "8/8" in err and "samples/s" in err


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="cuda"):
            select_device("cuda")


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_whole_files(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write(p, "one")
    atomic_write(p, b"two")
    assert p.read_text() == "two"
    with atomic_open(p, "w") as f:
        f.write("three\n")
    assert p.read_text() == "three\n"
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_failing_midway_keeps_the_old_file(tmp_path):
    p = tmp_path / "model.pt"
    atomic_write(p, b"old contents")
    with pytest.raises(RuntimeError), atomic_open(p) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert p.read_bytes() == b"old contents"

    # torch.save writes the tensor's bytes, then fails to pickle the lambda.
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)), atomic_open(p) as f:
        torch.save({"w": torch.zeros(1000), "f": lambda: 0}, f)
    assert p.read_bytes() == b"old contents"

    with pytest.raises(KeyboardInterrupt), atomic_open(p, "w") as f:
        f.write("new")
        f.flush()
        raise KeyboardInterrupt
    assert p.read_bytes() == b"old contents"
    assert [q.name for q in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_file_permissions_follow_the_umask(tmp_path):
    p = tmp_path / "f"
    atomic_write(p, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
