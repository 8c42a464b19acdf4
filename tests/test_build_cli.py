"""`shapecheck build` (source, --train) and `shapecheck eval`, through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shapecheck.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
LECTURE = SPECS / "lecture_cnn.yaml"

INVALID = """\
name: too_small
input: {shape: [1, 8, 8]}
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 5}
  - {type: conv2d, out_channels: 4, kernel_size: 5}
"""

NOT_A_CLASSIFIER = """\
name: features
input: {shape: [1, 8, 8]}
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 3}
  - relu
"""

SMALL = """\
name: small_net
description: A small net for the tests
input: {shape: [1, 8, 8]}
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 3}
  - relu
  - flatten
  - {type: linear, name: fc, out_features: 3}
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _source(spec=LECTURE, **kwargs) -> str:
    import shapecheck
    from shapecheck.emit.codegen import generate_source

    return generate_source(shapecheck.plan(spec, **kwargs))


# ---------------------------------------------------------------- source


def test_default_output_is_stem_model_py(cwd, capsys):
    pytest.importorskip("torch")
    assert main(["build", str(LECTURE)]) == 0
    out = cwd / "lecture_cnn_model.py"
    assert out.read_text(encoding="utf-8") == _source()
    assert capsys.readouterr().out == (
        "wrote lecture_cnn_model.py: class LectureCnn, 8,490 parameters\n")


def test_output_file_and_stdout(cwd, capsys):
    pytest.importorskip("torch")
    assert main(["build", str(LECTURE), "-o", "models/net_model.py"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (cwd / "models").mkdir()
    assert main(["build", str(LECTURE), "-o", "models/net_model.py"]) == 0
    assert (cwd / "models/net_model.py").read_text(encoding="utf-8") == _source()
    capsys.readouterr()
    assert main(["build", str(LECTURE), "-o", "-"]) == 0
    assert capsys.readouterr().out == _source()
    assert sorted(p.name for p in cwd.iterdir()) == ["models"]


def test_foreign_file_is_not_overwritten_without_force(cwd, capsys):
    pytest.importorskip("torch")
    mine = _write(cwd / "net_model.py", "# my own model, hands off\nimport torch\n")
    assert main(["build", str(LECTURE), "-o", str(mine)]) == 2
    assert "was not written by shapecheck" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "# my own model, hands off\nimport torch\n"
    assert main(["build", str(LECTURE), "-o", str(mine), "--force"]) == 0
    assert mine.read_text(encoding="utf-8") == _source()
    # a file shapecheck wrote is rewritten without --force
    assert main(["build", str(LECTURE), "-o", str(mine), "--input", "1x32x32"]) == 0
    assert "in_features=500" in mine.read_text(encoding="utf-8")
    assert sorted(p.name for p in cwd.iterdir()) == ["net_model.py"]  # no temp files left


def test_invalid_spec_writes_nothing(cwd, capsys):
    spec = _write(cwd / "too_small.yaml", INVALID)
    assert main(["build", str(spec)]) == 1
    out = capsys.readouterr().out  # diagnostics are the command's output
    assert "error[SC201]" in out and "too_small.yaml:5:5" in out
    assert sorted(p.name for p in cwd.iterdir()) == ["too_small.yaml"]
    assert main(["build", str(spec), "--train", "--data", "synthetic"]) == 1
    assert sorted(p.name for p in cwd.iterdir()) == ["too_small.yaml"]


def test_schema_error_and_missing_file(cwd, capsys):
    spec = _write(cwd / "bad.yaml", "input: {shape: [1, 8, 8]}\nlayers: [{type: conv2d}]\n")
    assert main(["build", str(spec)]) == 1
    assert "error[SC104]" in capsys.readouterr().out
    assert main(["build", "missing.yaml"]) == 2
    assert "no such file" in capsys.readouterr().out
    assert sorted(p.name for p in cwd.iterdir()) == ["bad.yaml"]


def test_batch_and_input_reach_the_comments(cwd, capsys):
    pytest.importorskip("torch")
    assert main(["build", str(LECTURE), "-o", "-", "--batch", "B", "--input", "1x32x32"]) == 0
    source = capsys.readouterr().out
    assert "x = self.pool2(x)  # (B, 20, 5, 5)" in source
    assert "nn.Linear(in_features=500, out_features=10)" in source
    assert main(["build", str(LECTURE), "-o", "-", "--batch", "16"]) == 0
    assert "x = self.fc(x)  # (16, 10)" in capsys.readouterr().out


def test_renamed_layers_are_noted(cwd, capsys):
    pytest.importorskip("torch")
    spec = _write(cwd / "net.yaml", SMALL.replace("name: fc", "name: forward"))
    assert main(["build", str(spec), "-o", "-"]) == 0
    captured = capsys.readouterr()
    assert "self.forward_ = nn.Linear" in captured.out
    assert "note: layer forward is the attribute forward_" in captured.err


def test_big_module_is_written_with_a_note(cwd, capsys, monkeypatch):
    pytest.importorskip("torch")
    from shapecheck.core import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    assert main(["build", str(LECTURE), "--no-memory-check"]) == 0  # the source allocates nothing
    err = capsys.readouterr().err
    assert "its parameters need 33,960 bytes" in err and "1,000 bytes of memory" in err
    assert (cwd / "lecture_cnn_model.py").exists()


def test_internal_error_is_reported_not_written(cwd, capsys, monkeypatch):
    pytest.importorskip("torch")
    from shapecheck.emit import build, codegen

    def disagree(model, plan, generated):
        raise codegen.InternalError("layer 3 (conv2d conv2): the plan says (1,), torch gives (2,)")

    monkeypatch.setattr(build, "check_module", disagree)
    assert main(["build", str(LECTURE)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("shapecheck build: error: internal error (please report it): layer 3")
    assert list(cwd.iterdir()) == []


def test_import_does_not_import_torch():
    code = ("import sys, shapecheck.commands.build, shapecheck.commands.eval, shapecheck.emit.codegen;"
            "from shapecheck.cli import build_parser; build_parser();"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


# ---------------------------------------------------------------- --train, without training


def test_training_flags_need_train(cwd, capsys):
    assert main(["build", str(LECTURE), "--lr", "0.1", "--resume"]) == 2
    assert "--lr, --resume only apply with --train" in capsys.readouterr().err
    assert list(cwd.iterdir()) == []


def test_a_per_pixel_output_trains_per_pixel(cwd, capsys):
    spec = _write(cwd / "features.yaml", NOT_A_CLASSIFIER)
    # (N, 4, 6, 6) segments into 4 classes: it needs masks, which synthetic data has not.
    assert main(["build", str(spec), "--train", "--data", "synthetic"]) == 2
    assert "synthetic data has a label per image; segment needs a target per pixel" in \
        capsys.readouterr().err
    # Asked to classify, it is told what a classifier ends in.
    assert main(["build", str(spec), "--train", "--data", "synthetic", "--task",
                 "classify"]) == 1
    err = capsys.readouterr().err
    assert "cannot be trained with task classify: its output is (N, 4, 6, 6)" in err
    assert "flatten and linear" in err


def test_train_needs_a_dataset(cwd, capsys):
    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "--train"]) == 2
    assert "give --data PATH" in capsys.readouterr().err


def test_softmax_before_cross_entropy_is_one_warning_sc302(cwd, capsys):
    pytest.importorskip("torch")
    _write(cwd / "soft.yaml", SMALL + "  - {type: softmax, dim: 1}\n")
    sc302 = ("soft.yaml:9:5: warning[SC302]: layer 4 (softmax softmax1): the last layer is "
             "softmax, but cross_entropy already applies log-softmax\n"
             "  hint: remove softmax1: train on the raw scores (logits)\n")
    # No train: section: training's default loss, cross_entropy, is the one warned about,
    # once, as the planner prints it.
    assert main(["build", "soft.yaml", "--train", "--data", "synthetic", "--epochs", "1",
                 "--batch-size", "32", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.count("SC302") == 1 and out.startswith(sc302)  # diagnostics: the output
    assert "note: the last layer is Softmax" not in out + err
    # The same diagnostic where the spec names the loss, or leaves it to the default.
    for train in ("train: {loss: cross_entropy}\n", "train: {epochs: 1}\n"):
        _write(cwd / "soft.yaml", SMALL + "  - {type: softmax, dim: 1}\n" + train)
        assert main(["plan", "soft.yaml"]) == 0
        assert capsys.readouterr().out.endswith("\n" + sc302)  # after the table
    # Not trained, a softmax last layer is what inference wants; with nll_loss, no SC302.
    _write(cwd / "soft.yaml", SMALL + "  - {type: softmax, dim: 1}\n")
    assert main(["plan", "soft.yaml"]) == 0
    assert "SC302" not in capsys.readouterr().out
    assert main(["build", "soft.yaml", "--train", "--data", "synthetic", "--epochs", "1",
                 "--loss", "nll_loss", "--out", "nll", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "SC302" not in out + err and "nll_loss expects log-probabilities" in out


def test_bad_training_values(cwd, capsys):
    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "--train", "--data", "synthetic", "--lr", "-1"]) == 2
    assert "bad training settings: optimizer.lr" in capsys.readouterr().err
    assert main(["build", str(spec), "--train", "--data", "synthetic", "--optimizer", "adam",
                 "--momentum", "0.9"]) == 2
    assert "momentum applies to sgd and rmsprop" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["build", str(spec), "--train", "--epochs", "0"])
    assert e.value.code == 2


def test_train_refuses_what_does_not_fit(cwd, capsys, monkeypatch):
    pytest.importorskip("torch")
    from shapecheck.core import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "--train", "--data", "synthetic"]) == 1
    err = capsys.readouterr().err
    # 475 parameters × 4 bytes × (weights + gradients)
    assert "training small_net" in err and "3,800 bytes" in err and "1,000 bytes" in err
    assert not (cwd / "runs").exists()


def test_data_errors_exit_2_and_train_errors_exit_1(cwd, capsys, monkeypatch):
    pytest.importorskip("torch")
    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "--train", "--data", "no/such/folder"]) == 2
    err = capsys.readouterr().err
    assert "shapecheck build: error: dataset not found" in err
    assert str(cwd / "no/such/folder") in err  # --data is taken from the current folder
    assert "Traceback" not in err
    # a resume with no checkpoint to continue: the run folder's fault, an input error too
    assert main(["build", str(spec), "--train", "--data", "synthetic", "--resume",
                 "--out", "runs/none"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_ctrl_c_exits_130(cwd, monkeypatch):
    pytest.importorskip("torch")
    from shapecheck.training import fromplan

    def interrupted(request):
        raise KeyboardInterrupt

    monkeypatch.setattr(fromplan, "run_training", interrupted)
    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "--train", "--data", "synthetic"]) == 130


def test_spec_paths_are_relative_to_the_spec(cwd, capsys, monkeypatch):
    pytest.importorskip("torch")
    from dataclasses import fields

    from shapecheck.training import TrainError, fromplan

    seen = {}

    def fake_train(request):
        seen.update({f.name: getattr(request, f.name) for f in fields(request)})
        raise TrainError("stop here")

    monkeypatch.setattr(fromplan, "run_training", fake_train)
    spec = _write(cwd / "specs/small.yaml",
                  SMALL + "train:\n  dataset: {path: ../data/mnist}\n  epochs: 3\n")
    assert main(["build", str(spec.relative_to(cwd)), "--train", "--epochs", "1",
                 "--out", "here"]) == 1
    assert "stop here" in capsys.readouterr().err
    assert Path(seen["base_dir"]).resolve() == (cwd / "specs").resolve()
    assert seen["spec"].dataset.path == "../data/mnist" and seen["spec"].epochs == 1
    assert seen["out_dir"] == Path("here")
    assert seen["num_classes"] == 3 and seen["input_shape"] == (1, 8, 8)
    assert seen["model_source"] == _source(spec)
    assert type(seen["module"]).__name__ == "SmallNet"


# ---------------------------------------------------------------- end to end


def test_train_and_eval_end_to_end(cwd, capsys):
    """build --train in a subprocess, as a user runs it; then eval on its run folder."""
    pytest.importorskip("torch")
    spec = _write(cwd / "small.yaml", SMALL)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "shapecheck", "build", "small.yaml", "--train", "--data",
         "synthetic", "--epochs", "1", "--batch-size", "32", "--device", "cpu"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "test accuracy" in done.stdout and "shapecheck eval runs/small_net" in done.stdout
    run = cwd / "runs" / "small_net"
    for name in ("model.pt", "checkpoint.pt", "metrics.csv", "curves.png", "model.py"):
        assert (run / name).is_file(), name
    assert (run / "model.py").read_text(encoding="utf-8") == _source(spec)
    assert not (cwd / "small_net_model.py").exists()  # with --train, only the run folder

    assert main(["eval", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("accuracy ") and "true \\ predicted" in out and "precision" in out
    assert main(["eval", str(run), "--data", "synthetic", "--device", "cpu"]) == 0
    assert "synthetic" in capsys.readouterr().out


def test_eval_errors(cwd, capsys):
    assert main(["eval", "runs/none"]) == 2
    assert "no such run folder: runs/none" in capsys.readouterr().err
    (cwd / "runs/empty").mkdir(parents=True)
    pytest.importorskip("torch")
    assert main(["eval", "runs/empty"]) == 2
    assert "runs/empty is not a training run folder (run.json is missing)" in (
        capsys.readouterr().err)
    assert main(["eval", "runs/empty", "--data-format", "npz"]) == 2
    assert "--data-format needs --data" in capsys.readouterr().err


def test_training_options_through_the_cli(cwd, capsys):
    pytest.importorskip("torch")
    spec = _write(cwd / "small.yaml", SMALL.replace("shape: [1, 8, 8]}",
                                                    "shape: [1, 8, 8], batch: 16}"))
    assert main(["build", str(spec), "--drop-last", "--patience", "2"]) == 2
    assert "--patience, --drop-last only apply with --train" in capsys.readouterr().err
    assert main(["build", str(spec), "--train", "--data", "synthetic", "--epochs", "2",
                 "--batch-size", "32", "--val-fraction", "0.25", "--patience", "3",
                 "--drop-last", "--deterministic", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "note: input.batch is 16 but training uses train.batch_size 32" in captured.err
    assert "best validation accuracy" in captured.out and "model_best.pt" in captured.out
    assert "synthetic data: a smoke test" in captured.out
    run = cwd / "runs" / "small_net"
    assert main(["eval", str(run), "--best", "--split", "val", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "on the val split: synthetic training data (validation part) (model_best.pt)" in out
    assert main(["eval", str(run), "--split", "all", "--device", "cpu"]) == 0
    assert "/640)" in capsys.readouterr().out  # 512 training and 128 test images


def test_unreadable_data_says_where_it_looked_and_leaves_no_folder(cwd, capsys):
    pytest.importorskip("torch")
    spec = cwd / "net.yaml"
    spec.write_text((ROOT / "specs" / "lecture_cnn.yaml").read_text(encoding="utf-8"),
                    encoding="utf-8")  # a copy: its relative dataset path no longer reaches
    assert main(["build", str(spec), "--train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "no MNIST IDX files found" in err
    assert f"is read from the spec's folder, {cwd.resolve()}" in err
    assert sorted(p.name for p in cwd.iterdir()) == ["net.yaml"]
