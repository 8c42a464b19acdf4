"""Training, resuming, stopping and evaluating (shapecheck.training), and atomic writes."""

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

from shapecheck.core.atomic import atomic_open, atomic_write
from shapecheck.core.trainspec import DatasetSpec, TrainSpec
from shapecheck.training import (
    METRICS_COLUMNS,
    TrainError,
    evaluate,
    format_confusion,
    select_device,
    train,
)
from shapecheck.training.datasets import DataError

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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    from shapecheck.training import train
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
    with pytest.raises(TrainError, match="is not a shapecheck checkpoint"):
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


# ---------------------------------------------------------------- batches, splits, resume rules


def bn_net() -> nn.Module:
    # BatchNorm1d refuses a training batch of one sample.
    return nn.Sequential(nn.Conv2d(1, 4, 5), nn.MaxPool2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(144, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def test_a_last_batch_the_network_refuses_is_caught_before_training(tmp_path):
    s = spec(dataset={"format": "synthetic", "train_size": 65, "test_size": 20}, epochs=1)
    with pytest.raises(TrainError, match=r"last batch of each epoch has 1 sample \(65 = 2×32 \+ 1"
                       r"\).*Expected more than 1 value per channel.*drop_last: true"):
        run(bn_net(), s, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    s = spec(dataset={"format": "synthetic", "train_size": 65, "test_size": 20}, epochs=1,
             drop_last=True)
    result, lines = run(bn_net(), s, tmp_path / "run", progress=False)
    assert "batch 32 (last batch dropped)" in lines[-2]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and result.history[0].samples_per_s > 0
    with pytest.raises(TrainError, match="drop_last with batch_size 32 leaves no batch"):
        run(bn_net(), spec(dataset={"format": "synthetic", "train_size": 20, "test_size": 8},
                           drop_last=True), tmp_path / "none")


def write_npz_xy(path: Path, n: int = 240) -> Path:
    # One template per class plus noise, sorted by class as many real files are.
    g = torch.Generator().manual_seed(5)
    templates = torch.rand((10, 28, 28), generator=g)
    y = torch.arange(n) * 10 // n
    x = (templates[y] + 0.3 * torch.rand((n, 28, 28), generator=g)).clamp(0, 1)
    np.savez(path, x=(x * 255).to(torch.uint8).numpy(), y=y.numpy())
    return path


def test_eval_on_the_training_file_scores_only_the_held_out_part(tmp_path):
    data = write_npz_xy(tmp_path / "digits.npz")
    s = spec(dataset={"path": str(data), "test_fraction": 0.25}, epochs=1)
    result, _ = run(LectureCNN(), s, tmp_path / "run")
    ev = evaluate(tmp_path / "run", DatasetSpec(path=str(data)))  # as `eval --data FILE`
    assert ev.num_samples == 60 and ev.accuracy == pytest.approx(result.test_acc)
    assert "held-out part" in ev.source and "the run was trained on this dataset" in ev.source
    every = evaluate(tmp_path / "run", DatasetSpec(path=str(data)), split="all")
    assert every.num_samples == 240 and every.source.startswith("whole dataset: ")
    trained = evaluate(tmp_path / "run", split="train")
    assert trained.num_samples == 180
    # A byte-for-byte copy of the training file holds the trained-on images too.
    copy = tmp_path / "copy" / "digits.npz"
    copy.parent.mkdir()
    copy.write_bytes(data.read_bytes())
    ev = evaluate(tmp_path / "run", DatasetSpec(path=str(copy)))
    assert ev.num_samples == 60 and "held-out part" in ev.source
    # Another file without a split of its own is scored whole, and says so.
    other = write_npz_xy(tmp_path / "other.npz", n=50)
    ev = evaluate(tmp_path / "run", DatasetSpec(path=str(other)))
    assert ev.num_samples == 50 and "all of it: no split" in ev.source


def test_eval_of_a_run_that_stopped_early_says_which_epoch_it_scores(tmp_path):
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run(_CtrlCAt(8 + 3), spec(epochs=2), out)  # in epoch 2: model.pt is epoch 1's
    assert "model.pt holds epoch 1 of the 2 planned" in evaluate(out).source
    run(LectureCNN(), spec(epochs=2), out, resume=True)
    assert "planned" not in evaluate(out).source


def test_resume_mid_epoch_refuses_what_cannot_be_replayed(tmp_path):
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run(_CtrlCAt(8 + 3), spec(epochs=2), out)
    before = (out / "checkpoint.pt").read_bytes()
    for change in ({"batch_size": 16}, {"seed": 4}, {"drop_last": True}):
        key, value = next(iter(change.items()))
        with pytest.raises(TrainError, match=rf"cannot resume at epoch 2, step 3/8 with "
                           rf"{key} {value}: the checkpoint was made with {key} "):
            run(LectureCNN(), spec(epochs=2, **change), out, resume=True)
    with pytest.raises(TrainError, match=r"the dataset differs .*train_size 256 -> 128"):
        run(LectureCNN(), spec(epochs=2, dataset={"format": "synthetic", "train_size": 128,
                                                  "test_size": 64}), out, resume=True)
    with pytest.raises(TrainError, match=r"cannot resume with optimizer.type adam"):
        run(LectureCNN(), spec(epochs=2, optimizer={"type": "adam"}), out, resume=True)
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing lost
    _, lines = run(LectureCNN(), spec(epochs=2), out, resume=True)
    assert f"resuming {out} at epoch 2, step 3/8" in lines
    info = json.loads((out / "run.json").read_text())
    assert [(r["epoch"], r["step"], r["changes"]) for r in info["resumes"]] == [(2, 3, [])]


def test_resume_at_an_epoch_boundary_applies_changes_and_records_them(tmp_path):
    out = tmp_path / "run"
    run(LectureCNN(), spec(epochs=1), out)
    result, lines = run(LectureCNN(), spec(epochs=3, batch_size=16), out, resume=True)
    assert f"resuming {out} after epoch 1" in lines
    note = next(s for s in lines if s.startswith("note: changed since"))
    assert "batch_size 32 -> 16" in note and "epochs 1 -> 3" in note
    assert "they apply from here on" in note
    assert [m.epoch for m in result.history] == [1, 2, 3]
    info = json.loads((out / "run.json").read_text())
    assert info["train"]["batch_size"] == 16
    assert info["resumes"][0]["epoch"] == 1 and info["resumes"][0]["step"] == 0
    assert "batch_size 32 -> 16" in info["resumes"][0]["changes"]


def test_resume_after_the_last_step_of_an_epoch_reports_a_true_rate(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _, lines = run(_CtrlCAt(8), spec(epochs=2), out)  # the 8th of 8 steps
    result, lines = run(LectureCNN(), spec(epochs=2), out, resume=True)
    assert f"resuming {out} at epoch 1, step 8/8" in lines
    assert result.history[0].samples_per_s > 0
    assert not any(" 0 samples/s" in s for s in lines)


def test_messages_count_epochs_and_name_a_smoke_test(tmp_path):
    _, lines = run(LectureCNN(), spec(epochs=1), tmp_path / "run")
    start = next(s for s in lines if s.startswith("training "))
    assert ", 1 epoch, batch 32" in start
    assert any("synthetic data is a smoke test" in s for s in lines)


class _Watch(nn.Sequential):
    """The lecture CNN, noting whether deterministic algorithms are on while it trains."""

    def __init__(self):
        super().__init__(*LectureCNN())
        self.seen: set[bool] = set()

    def forward(self, x):
        self.seen.add(torch.are_deterministic_algorithms_enabled())
        return super().forward(x)


def test_deterministic_sets_the_flags_and_a_resume_keeps_the_thread_count(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    net = _Watch()
    run(net, spec(epochs=2, deterministic=True), tmp_path / "whole")
    assert net.seen == {True} and not torch.are_deterministic_algorithms_enabled()
    assert json.loads((tmp_path / "whole" / "run.json").read_text())["threads"] == 1

    run(LectureCNN(), spec(epochs=1, deterministic=True), tmp_path / "split")
    torch.set_num_threads(2)
    try:
        # threads=2 as --threads 2: left out, a busy machine's load could choose fewer.
        _, lines = run(LectureCNN(), spec(epochs=2, deterministic=True), tmp_path / "split",
                       resume=True, threads=2)
        assert torch.get_num_threads() == 2  # given back afterwards
    finally:
        torch.set_num_threads(1)
    assert "note: using 1 thread, as the run did before: CPU results depend on the thread " \
           "count" in lines
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "model.pt", weights_only=True)
    assert states_equal(a, b)


def test_a_resume_on_another_thread_count_says_the_bits_will_differ(tmp_path):
    run(LectureCNN(), spec(epochs=1), tmp_path / "run")
    torch.set_num_threads(2)
    try:
        _, lines = run(LectureCNN(), spec(epochs=2), tmp_path / "run", resume=True, threads=2)
    finally:
        torch.set_num_threads(1)
    assert any("the run used 1 thread, this process 2" in s and "--deterministic" in s
               for s in lines)


def test_validation_split_chooses_model_best_and_patience_stops(tmp_path):
    from shapecheck.training import BEST_FILE

    out = tmp_path / "run"
    ds = {"format": "synthetic", "train_size": 320, "test_size": 64, "val_fraction": 0.2}
    # A learning rate this small changes nothing a score can see: epoch 1 stays the best.
    s = spec(dataset=ds, epochs=6, patience=2, optimizer={"type": "sgd", "lr": 1e-12})
    result, lines = run(LectureCNN(), s, out)
    assert result.stopped_early and result.best_epoch is not None
    assert len(result.history) == result.best_epoch + 2 < 6
    assert any(s.startswith("stopping early: no better validation accuracy for 2 epochs")
               for s in lines)
    assert "val loss" in next(s for s in lines if s.startswith("epoch 1/6"))
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["val_acc"] != "" for r in rows)
    best = result.history[result.best_epoch - 1]
    ev = evaluate(out, split="val", weights=BEST_FILE)
    assert ev.num_samples == 60 and ev.accuracy == pytest.approx(best.val_acc)  # 6 a class
    # A resume of a run whose patience ran out has nothing to do.
    again, lines = run(LectureCNN(), s, out, resume=True)
    assert len(again.history) == len(result.history) and any("stopped early" in s for s in lines)

    learns = spec(dataset=ds, epochs=3)
    result, _ = run(LectureCNN(), learns, tmp_path / "learns")
    assert result.history[result.best_epoch - 1].val_acc == max(m.val_acc for m in result.history)
    assert (tmp_path / "learns" / BEST_FILE).is_file()
    with pytest.raises(TrainError, match="patience needs a validation split"):
        run(LectureCNN(), spec(patience=2), tmp_path / "nope")


def test_practitioner_options_train(tmp_path):
    from shapecheck.core.trainspec import OptimizerSpec
    from shapecheck.training.setup import param_groups

    s = spec(epochs=1, label_smoothing=0.1, class_weights="balanced", grad_clip=1.0,
             optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                        "weight_decay": 1e-4, "decay_norm_and_bias": False})
    result, _ = run(bn_net(), s, tmp_path / "run")
    plain, _ = run(bn_net(), spec(epochs=1), tmp_path / "plain")
    assert result.history[0].train_loss != plain.history[0].train_loss
    net = bn_net()
    groups = param_groups(net, OptimizerSpec(weight_decay=0.1, decay_norm_and_bias=False))
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(net[0].weight), id(net[4].weight), id(net[7].weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 5
    # The LayerScale build writes is a per-channel gain: no decay either.
    from shapecheck.core.layers.norm import LayerScale as LayerScaleSpec

    helper: dict = {"nn": nn, "torch": torch}
    exec(LayerScaleSpec.helper_source, helper)  # noqa: S102 - shapecheck's own source
    scaled = nn.Sequential(nn.Conv2d(1, 4, 3), helper["LayerScale"](4))
    groups = param_groups(scaled, OptimizerSpec(weight_decay=0.1, decay_norm_and_bias=False))
    assert [len(g["params"]) for g in groups] == [1, 2]
    assert any(p is scaled[1].weight for p in groups[1]["params"])
    with pytest.raises(TrainError, match="class_weights has 3 values"):
        run(LectureCNN(), spec(class_weights=[1, 2, 3]), tmp_path / "w")
    nll = nn.Sequential(*LectureCNN(), nn.LogSoftmax(dim=1))
    with pytest.raises(TrainError, match="label_smoothing needs cross_entropy"):
        run(nll, spec(label_smoothing=0.1), tmp_path / "ls")


def test_tensorboard_logs_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(LectureCNN(), spec(epochs=1), tmp_path / "plain")
    assert not (tmp_path / "plain" / "tensorboard").exists()
    result, _ = run(LectureCNN(), spec(epochs=2, tensorboard=True), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert {"train/loss", "test/acc", "lr"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("test/acc")] == pytest.approx(
        [m.test_acc for m in result.history])


def test_tensorboard_asked_for_without_the_package_stops_before_training(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(TrainError, match=r"pip install 'shapecheck-cnn\[tensorboard\]'"):
        run(LectureCNN(), spec(tensorboard=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_counts_are_spelled_right():
    from shapecheck.training.base import plural

    assert plural(2, "process") == "2 processes"  # once "2 processs"
    assert [plural(n, "epoch") for n in (1, 3)] == ["1 epoch", "3 epochs"]
    assert plural(1, "process") == "1 process" and plural(2, "mismatch") == "2 mismatches"


def test_a_busy_machine_gets_fewer_threads():
    from shapecheck.training.loop import threads_for_load

    assert threads_for_load(load=0.1, cores=2, current=2) is None  # an idle machine
    assert threads_for_load(load=1.9, cores=2, current=2) == 1  # another process on a core
    assert threads_for_load(load=4.0, cores=2, current=2) == 1  # never fewer than one
    assert threads_for_load(load=4.2, cores=16, current=16) == 12
    assert threads_for_load(load=4.2, cores=16, current=8) is None  # already few enough
