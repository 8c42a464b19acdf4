"""`shapecheck export RUN --onnx FILE`: a trained run's module as an ONNX file.

RUN is the folder `shapecheck build --train` wrote (runs/<name>). The module is rebuilt from its
model.py with the weights of model.pt (model_best.pt with --best), as `eval` does, exported with
torch.onnx and checked (shapecheck.onnx_export) before FILE is written. The batch axis is
dynamic, named N (--batch names another symbol, or fixes a size). `build --onnx` uses the same
functions for a freshly built module and for the run it has just trained.

Exit codes: 0 written; 2 usage or input error (no such run folder, a damaged run folder:
run.json, model.py or the weights missing or not loading, no model_best.pt for --best, a FILE
that cannot be written or is not ours, onnx not installed, a layer that torch.onnx cannot
export or exports wrongly, tensors the memory here cannot hold).
torch and onnx are imported only when the command runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..outputs.report import OUTPUT, printable
from . import EXIT_OK, batch_size, fail

Fail = Callable[..., int]


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="a trained run as an ONNX file",
                       description="Export a run folder written by `shapecheck build --train` to "
                       "ONNX. The file is checked before it is written: onnx.checker, ONNX shape "
                       "inference against the run's output shape, and onnxruntime against torch "
                       "on a random input.")
    p.add_argument("run_dir", metavar="RUN", help="the run folder, e.g. runs/lecture_cnn")
    p.add_argument("--onnx", metavar="FILE", required=True, help="the ONNX file to write")
    p.add_argument("--best", action="store_true",
                   help="export model_best.pt (the best validation epoch) instead of model.pt")
    p.add_argument("--batch", type=batch_size, default="N", metavar="B",
                   help="the batch axis: a symbol makes it dynamic (default: N), an int fixes it")
    p.add_argument("--force", action="store_true",
                   help="overwrite FILE even if shapecheck did not write it")
    p.set_defaults(run=run)


_fail = partial(fail, "export")


def onnx_destination_problem(path: str, *, force: bool, inputs: list[Path]) -> str | None:
    """Why --onnx FILE cannot be written, or None. Also imports onnx, onnxruntime and
    onnxscript: a missing one is a ModuleNotFoundError before any work is done."""
    from ..emit.onnx import destination_problem, require_onnx

    problem = destination_problem(Path(path), force=force, inputs=inputs)
    if problem is None:
        require_onnx()
    return problem


def export_module(model, plan, generated, fail: Fail):
    """The checked OnnxModel of a module built from ``plan`` (layers named as in the spec),
    or the exit code of the failure, reported with ``fail``."""
    from ..emit.onnx import OnnxExportError, export_onnx

    if len(plan.outputs) > 1:
        names = ", ".join(name for name, _ in plan.outputs)
        return fail(f"{plan.name} returns several tensors ({names}); ONNX export takes a network "
                    "with one output: list one under `outputs:`; no ONNX file was written")
    layers = {generated.module_names[layer.path]: layer for layer in plan.walk()}

    def describe(qualname: str) -> str:
        layer = layers.get(qualname)
        if layer is None:
            return f"module {qualname}"
        return f"layer {'/'.join(map(str, layer.path))} ({layer.type} {layer.name})"

    try:
        return export_onnx(model, input_dims=plan.input_dims[1:], batch=plan.batch,
                           output_shape=plan.output_shape, describe=describe)
    except OnnxExportError as e:
        return fail(f"{e}; no ONNX file was written")


def write_onnx(exported, path: str, fail: Fail, *, stream=None) -> int:
    """Write a checked OnnxModel and say so in one line."""
    try:
        exported.write(path)
    except OSError as e:
        return fail(f"cannot write {path}: {e.strerror or e}")
    if not OUTPUT.quiet:
        print(printable(exported.summary(path)), file=stream or sys.stdout)
    return EXIT_OK


def export_run(run_dir: Path, path: str, fail: Fail, *, best: bool = False,
               batch: int | str = "N") -> int:
    """Export the trained module of a run folder to ``path``, checked; an exit code."""
    from ..emit.onnx import OnnxExportError, export_onnx
    from ..training import BEST_FILE, MODEL_FILE, RunFolderError, load_run_module
    from ..training.runinfo import RunInfo, RunInfoError

    try:
        info = RunInfo.load(run_dir)
    except RunInfoError as e:
        return fail(str(e))
    weights = BEST_FILE if best else MODEL_FILE
    if best and not (run_dir / BEST_FILE).is_file():
        return fail(f"{run_dir} has no {BEST_FILE} (the run had no validation split)")
    try:
        model = load_run_module(run_dir, prefer=info.module_class, weights=weights)
    except RunFolderError as e:
        return fail(str(e))
    try:
        # A dense run's output is a map (K, H, W) per image, a classifier's K scores.
        per_image = tuple(info.output_shape) if info.output_shape else (info.num_classes,)
        exported = export_onnx(model, input_dims=info.input_shape, batch=batch,
                               output_shape=(batch, *per_image))
    except OnnxExportError as e:
        return fail(f"{e}; no ONNX file was written")
    return write_onnx(exported, path, fail)


def run(args: argparse.Namespace) -> int:
    from ..training.runinfo import RUN_FILES

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        return _fail(f"no such run folder: {run_dir}")
    problem = onnx_destination_problem(args.onnx, force=args.force,
                                       inputs=[run_dir / name for name in RUN_FILES])
    if problem:
        return _fail(problem)
    return export_run(run_dir, args.onnx, _fail, best=args.best, batch=args.batch)
