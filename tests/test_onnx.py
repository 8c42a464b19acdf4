"""ONNX export: `shapecheck build --onnx` and `shapecheck export RUN --onnx`, checked with the
real onnx, onnxruntime and torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import numpy as np
from onnx import numpy_helper

from shapecheck.cli import main
from shapecheck.core.planner import plan as make_plan
from shapecheck.emit.build import build_module
from shapecheck.emit.onnx import (
    OPSET,
    OnnxExportError,
    destination_problem,
    export_onnx,
    is_shapecheck_onnx,
)

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
LECTURE = SPECS / "lecture_cnn.yaml"

SMALL = """\
name: small_net
input: {shape: [1, 8, 8], batch: N}
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 3, bias: false}
  - {type: batchnorm2d}
  - relu
  - flatten
  - {type: linear, name: fc, out_features: 3}
"""

# torch.onnx has no ONNX function for an adaptive max pool whose output does not divide its
# input; the one before it (16 -> 8) exports.
UNEXPORTABLE = """\
name: odd_pool
input: {shape: [8, 16, 16], batch: N}
layers:
  - {type: adaptivemaxpool2d, name: evenpool, output_size: [8, 8]}
  - {type: conv2d, out_channels: 8, kernel_size: 1}
  - {type: adaptivemaxpool2d, name: oddpool, output_size: [5, 3]}
  - flatten
  - {type: linear, out_features: 3}
"""

# torch.onnx exports avg_pool2d's divisor_override as a plain average (ONNX's AveragePool has
# no divisor): a graph that runs, with the planned shapes, and computes something else.
WRONG = """\
name: divisor
input: {shape: [4, 9, 9], batch: N}
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 1}
  - {type: avgpool2d, name: pool, kernel_size: 3, stride: 2, divisor_override: 2}
  - relu
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _module_with_onnx_weights(spec: Path, path: Path, **plan_args):
    """The spec's module, holding the weights the ONNX file holds (its initializers are named
    after the state_dict keys)."""
    module = build_module(make_plan(spec, **plan_args)).eval()
    initializers = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
                    for i in onnx.load(str(path)).graph.initializer}
    module.load_state_dict({k: initializers[k] for k in module.state_dict()})
    return module


def _max_diff(session, module, x) -> float:
    with torch.no_grad():
        want = module(x).numpy()
    got = session.run(["output"], {"input": x.numpy()})[0]
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)))


# ---------------------------------------------------------------- build --onnx


def test_lecture_net_with_a_symbolic_batch_runs_at_two_batch_sizes(cwd, capsys):
    assert main(["build", str(LECTURE), "--batch", "N", "--onnx", "net.onnx"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote net.onnx: opset {OPSET}, input (N, 1, 28, 28) → output (N, 10),"
                          " checked with onnxruntime (batch 3, max diff ")
    assert sorted(p.name for p in cwd.iterdir()) == ["net.onnx"]  # no source without -o

    model = onnx.load("net.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.producer_name == "shapecheck"
    assert [o.version for o in model.opset_import if o.domain == ""] == [OPSET]
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert _dims(model.graph.input[0]) == ["N", 1, 28, 28]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert _dims(inferred.graph.output[0]) == ["N", 10]

    module = _module_with_onnx_weights(LECTURE, cwd / "net.onnx", batch="N")
    session = _session(cwd / "net.onnx")
    for batch in (1, 17):
        x = torch.randn(batch, 1, 28, 28)
        assert _max_diff(session, module, x) <= 1e-4


def test_a_numeric_batch_is_fixed_and_the_source_can_come_too(cwd, capsys):
    assert main(["build", str(LECTURE), "-o", "net.py", "--onnx", "net.onnx"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "wrote net.py: class LectureCnn, 8,490 parameters"
    assert lines[1].startswith("wrote net.onnx: opset 18, input (64, 1, 28, 28) → output "
                               "(64, 10), checked with onnxruntime (batch 64, max diff ")
    model = onnx.load("net.onnx")
    assert _dims(model.graph.input[0]) == [64, 1, 28, 28]
    session = _session(cwd / "net.onnx")
    session.run(None, {"input": np.zeros((64, 1, 28, 28), np.float32)})
    with pytest.raises(Exception, match="[Ii]nvalid|[Dd]imension"):
        session.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})


def test_source_on_stdout_keeps_the_report_on_stderr(cwd, capsys):
    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "-o", "-", "--onnx", "small.onnx"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# Generated by shapecheck")
    assert "wrote small.onnx: opset 18, input (N, 1, 8, 8) → output (N, 3)" in captured.err


def test_quiet_export_writes_without_a_word(cwd, capsys):
    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "--onnx", "small.onnx", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert onnx.load("small.onnx").graph.output[0].name == "output"


# The nets of 61 and 138 million parameters are checked at a fixed batch of 1: the check's
# forward passes at 224×224 are most of their time.
AT_BATCH_1 = {"alexnet", "vgg16"}


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_spec_exports_and_checks(spec, tmp_path, capsys):
    out = tmp_path / f"{spec.stem}.onnx"
    batch = ["--batch", "1"] if spec.stem in AT_BATCH_1 else []
    assert main(["build", str(spec), "--onnx", str(out), *batch]) == 0, capsys.readouterr().err
    shape = make_plan(spec, batch=1 if batch else None).output_shape
    assert f"→ output ({', '.join(map(str, shape))}), checked" in capsys.readouterr().out
    assert out.stat().st_size > 0


def test_a_flatten_over_the_batch_keeps_the_plan_shape(tmp_path):
    """The plan's N*8 is ONNX's 8*N: the same product."""
    spec = ("name: rows\ninput: {shape: [8, 4, 4], batch: B}\n"
            "layers:\n  - {type: flatten, start_dim: 0, end_dim: 1}\n")
    p = make_plan(spec)
    exported = export_onnx(build_module(p), input_dims=(8, 4, 4), batch="B",
                           output_shape=p.output_shape)
    assert exported.output_shape == ("B*8", 4, 4) and exported.max_diff == 0.0
    model = onnx.load_from_string(exported.data)
    assert _dims(model.graph.input[0]) == ["B", 8, 4, 4]
    # A file shapecheck wrote may be replaced without --force; another one may not.
    exported.write(tmp_path / "rows.onnx")
    assert is_shapecheck_onnx(tmp_path / "rows.onnx")
    assert destination_problem(tmp_path / "rows.onnx", force=False, inputs=[]) is None
    (tmp_path / "other.onnx").write_bytes(onnx.load_from_string(exported.data).SerializeToString()
                                          .replace(b"shapecheck", b"elsewhere!"))
    assert not is_shapecheck_onnx(tmp_path / "other.onnx")
    assert "was not written by shapecheck" in destination_problem(
        tmp_path / "other.onnx", force=False, inputs=[])


def test_a_frozen_batchnorm_exports_with_its_buffers():
    """frozenbatchnorm2d's weight, bias and statistics are buffers: the graph holds their
    values (random here, not 1 and 0) and onnxruntime computes what torch does."""
    spec = ("name: frozen\ninput: {shape: [3, 8, 8]}\nlayers:\n"
            "  - {type: conv2d, out_channels: 4, kernel_size: 3}\n  - frozenbatchnorm2d\n")
    p = make_plan(spec)
    module = build_module(p).eval()
    assert sum(t.numel() for t in module.parameters()) == p.params == 4 * 3 * 9 + 4
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buffer in module.bn1.named_buffers():
            buffer.copy_(torch.rand(4, generator=generator) + 0.5)
    exported = export_onnx(module, input_dims=(3, 8, 8), batch="N",
                           output_shape=p.output_shape)
    assert exported.output_shape == ("N", 4, 6, 6) and exported.max_diff < 1e-5
    x = torch.randn(2, 3, 8, 8, generator=generator)
    got = ort.InferenceSession(exported.data, providers=["CPUExecutionProvider"]).run(
        ["output"], {"input": x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert np.max(np.abs(got - want)) < 1e-5


# ---------------------------------------------------------------- from a run folder


def test_a_trained_run_exports_its_weights(cwd, capsys):
    """build --train --onnx exports the trained weights; export RUN does the same, and
    --best the best epoch's. onnxruntime gives what the checkpoint gives in torch."""
    from shapecheck.training import load_run_module

    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "--train", "--data", "synthetic", "--epochs", "2",
                 "--batch-size", "64", "--val-fraction", "0.25", "--device", "cpu",
                 "--threads", "1", "--onnx", "trained.onnx"]) == 0
    out = capsys.readouterr().out
    assert "run folder: runs/small_net" in out
    assert out.splitlines()[-1].startswith("wrote trained.onnx: opset 18, input (N, 1, 8, 8) → "
                                           "output (N, 3)")
    run = cwd / "runs" / "small_net"

    assert main(["export", str(run), "--onnx", "again.onnx"]) == 0
    assert capsys.readouterr().out.startswith("wrote again.onnx: opset 18, input (N, 1, 8, 8)")
    assert main(["export", str(run), "--onnx", "best.onnx", "--best", "--batch", "5"]) == 0
    assert "input (5, 1, 8, 8) → output (5, 3)" in capsys.readouterr().out

    x = torch.randn(9, 1, 8, 8)
    trained = load_run_module(run).eval()
    untrained = build_module(make_plan(spec)).eval()
    for name in ("trained.onnx", "again.onnx"):
        session = _session(cwd / name)
        assert _max_diff(session, trained, x) <= 1e-4
        with torch.no_grad():  # the trained weights, not a fresh module's
            assert not np.allclose(session.run(None, {"input": x.numpy()})[0],
                                   untrained(x).numpy(), atol=1e-3)
    best = load_run_module(run, weights="model_best.pt").eval()
    assert _max_diff(_session(cwd / "best.onnx"), best, x[:5]) <= 1e-4


def test_export_errors(cwd, capsys):
    assert main(["export", "runs/none", "--onnx", "x.onnx"]) == 2
    assert "no such run folder: runs/none" in capsys.readouterr().err
    (cwd / "runs/empty").mkdir(parents=True)
    assert main(["export", "runs/empty", "--onnx", "x.onnx"]) == 2
    assert "runs/empty is not a training run folder (run.json is missing)" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit) as info:
        main(["export", "runs/empty"])
    assert info.value.code == 2
    assert "--onnx" in capsys.readouterr().err
    assert not (cwd / "x.onnx").exists()


# ---------------------------------------------------------------- what is refused


def test_a_layer_torch_onnx_cannot_export_is_named_and_nothing_is_written(cwd, capsys):
    spec = _write(cwd / "odd.yaml", UNEXPORTABLE)
    _write(cwd / "odd.onnx", "an older export\n")
    assert main(["build", str(spec), "-o", "odd.py", "--onnx", "odd.onnx", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shapecheck build: error: torch.onnx cannot export the operation "
                          "aten.adaptive_max_pool2d, which layer 2 (adaptivemaxpool2d oddpool) "
                          "uses: ")
    assert err.rstrip().endswith("no ONNX file was written") and "Traceback" not in err
    assert "evenpool" not in err
    assert (cwd / "odd.onnx").read_text(encoding="utf-8") == "an older export\n"
    assert sorted(p.name for p in cwd.iterdir()) == ["odd.onnx", "odd.yaml"]


def test_a_layer_exported_wrongly_is_named_and_nothing_is_written(cwd, capsys):
    spec = _write(cwd / "divisor.yaml", WRONG)
    assert main(["build", str(spec), "--onnx", "divisor.onnx"]) == 2
    err = capsys.readouterr().err
    assert ("error: the ONNX graph of layer 1 (avgpool2d pool) computes something else: "
            "onnxruntime's output of it differs from torch's by up to ") in err
    assert not (cwd / "divisor.onnx").exists()


def test_untrainable_export_stops_before_training(cwd, capsys):
    spec = _write(cwd / "odd.yaml", UNEXPORTABLE.replace(
        "  - {type: adaptivemaxpool2d, name: evenpool, output_size: [8, 8]}\n", ""))
    assert main(["build", str(spec), "--train", "--data", "synthetic", "--epochs", "1",
                 "--device", "cpu", "--onnx", "odd.onnx"]) == 2
    assert "oddpool" in capsys.readouterr().err
    assert not (cwd / "runs").exists() and not (cwd / "odd.onnx").exists()


def test_destinations_that_cannot_be_written(cwd, capsys):
    spec = _write(cwd / "small.yaml", SMALL)
    _write(cwd / "mine.onnx", "not shapecheck's\n")
    (cwd / "folder").mkdir()
    cases = {
        "mine.onnx": "mine.onnx exists and was not written by shapecheck as an ONNX file; it "
                     "was left untouched (use --force to overwrite it)",
        "folder": "folder is a folder; give a file name",
        "missing/x.onnx": "the folder 'missing' does not exist (create it first)",
        "small.yaml/x.onnx": "cannot use small.yaml/x.onnx: Not a directory",
        str(spec): "is the command's input",
    }
    for path, message in cases.items():
        assert main(["build", str(spec), "--onnx", path]) == 2, path
        assert message in capsys.readouterr().err, path
    assert main(["build", str(spec), "-o", "same", "--onnx", "./same"]) == 2
    assert "-o same and --onnx ./same name the same file" in capsys.readouterr().err
    assert (cwd / "mine.onnx").read_text(encoding="utf-8") == "not shapecheck's\n"
    assert sorted(p.name for p in cwd.iterdir()) == ["folder", "mine.onnx", "small.yaml"]


def test_a_write_that_fails_is_one_message(cwd, capsys):
    if sys.platform != "linux":
        pytest.skip("needs Linux's /proc, where no file can be created")
    spec = _write(cwd / "small.yaml", SMALL)
    assert main(["build", str(spec), "--onnx", "/proc/small.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shapecheck build: error: cannot write /proc/small.onnx: ")
    assert "Traceback" not in err and not list(Path("/proc").glob(".small.onnx.*"))


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("hidden", ["onnx", "onnxruntime", "onnxscript"])
def test_a_missing_package_is_the_install_hint_and_nothing_is_written(cwd, hidden):
    done = _run_python(
        f"import sys; sys.modules[{hidden!r}] = None\n"
        "from shapecheck.cli import main\n"
        f"sys.exit(main(['build', {str(LECTURE)!r}, '-o', 'net.py', '--onnx', 'net.onnx']))\n",
        cwd)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"shapecheck build: error: needs {hidden}: pip install "
                           "'shapecheck-cnn[onnx]' (in a clone of the repository: pip install "
                           "'.[onnx]')\n")
    assert list(cwd.iterdir()) == []


def test_plan_and_check_never_import_torch_or_onnx(cwd):
    done = _run_python(
        "import sys, contextlib, io\n"
        "from shapecheck.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main(['plan', {str(LECTURE)!r}])\n"
        f"    main(['check', {str(SPECS)!r}])\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'onnxscript')))\n",
        cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


def test_export_onnx_refuses_what_it_cannot_check():
    p = make_plan(LECTURE, batch="N")
    with pytest.raises(OnnxExportError, match=r"gives the output \(N, 10\), the plan says "
                                              r"\(N, 11\)"):
        export_onnx(build_module(p), input_dims=(1, 28, 28), batch="N",
                    output_shape=("N", 11))
