"""``shapecheck eval``: a run's module rebuilt from its folder and scored on a dataset."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.trainspec import DatasetSpec
from ..outputs.report import printable
from .base import RunFolderError, TrainError, predict, select_device
from .data import check_output
from .datasets import load_split, resolve_path
from .dense import DenseScore, format_iou, score_dense, write_predictions
from .runfolder import BEST_FILE, METRICS_FILE, MODEL_FILE, RUN_FILE, SOURCE_FILE, load_tensors
from .runinfo import RunInfo


@dataclass
class EvalResult:
    accuracy: float  # fraction, 0..1
    loss: float  # mean loss with the run's loss function
    confusion: list[list[int]]  # confusion[true][predicted]
    classes: list[str]
    num_samples: int  # images, or a segmentation's pixels (the ignored left out)
    source: str = ""  # what was evaluated, in words
    task: str = "classify"
    dense: DenseScore | None = None  # a dense task's scores
    images: int = 0  # the images scored

    @property
    def correct(self) -> int:
        return sum(self.confusion[i][i] for i in range(len(self.confusion)))


# ---------------------------------------------------------------- evaluate


def load_run_module(run_dir: Path, prefer: str | None = None,
                    weights: str = MODEL_FILE) -> nn.Module:
    """The module of a run: built from its ``model.py``, weights from ``model.pt``.

    ``model.py`` is executed; the first ``nn.Module`` subclass it defines (the one
    named ``prefer`` first) that can be built without arguments and takes the
    saved weights is used. Raises RunFolderError.
    """
    run_dir = Path(run_dir)
    src, weights_path = run_dir / SOURCE_FILE, run_dir / weights
    for p in (src, weights_path):
        if not p.is_file():
            raise RunFolderError(f"{run_dir} is not a finished training run: {p.name} is missing")
    state = load_tensors(weights_path, "weights file")
    mod_name = f"_shapecheck_run_{abs(hash(str(src.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, src)
    assert spec is not None and spec.loader is not None
    py = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = py
    try:
        spec.loader.exec_module(py)
    except Exception as e:  # noqa: BLE001 - user code
        raise RunFolderError(f"{src} does not run: {type(e).__name__}: {e}") from None
    finally:
        sys.modules.pop(mod_name, None)
    classes = [v for v in vars(py).values() if isinstance(v, type)
               and issubclass(v, nn.Module) and v.__module__ == mod_name]
    classes.sort(key=lambda c: c.__name__ != prefer)
    tried = []
    for cls in classes:
        try:
            m = cls()
            m.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - wrong constructor or weights: try the next
            tried.append(f"{cls.__name__}: {type(e).__name__}")
            continue
        return m
    raise RunFolderError(
        f"{src} defines no nn.Module class that can be built without arguments and takes "
        f"the weights in {weights_path.name}" + (f" (tried {', '.join(tried)})" if tried else ""))


def evaluate(
    run_dir: Path,
    data: DatasetSpec | None = None,
    *,
    base_dir: Path | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 256,
    module: nn.Module | None = None,
    weights: str = MODEL_FILE,
    predictions: Path | None = None,
) -> EvalResult:
    """Accuracy, loss and confusion matrix of a trained run on a dataset.

    ``data`` defaults to the dataset the run was trained on; a relative path in it
    is taken from ``base_dir`` (default: the working directory). ``data`` naming
    the run's own dataset file is read with the run's dataset entry, so ``test``
    is the part held out from training, never the images trained on (``split="all"``
    scores every image). ``split`` is test, val, train or all (``shapecheck.training.datasets``).
    The images are normalised with the run's training mean/std, whatever the
    dataset entry says. ``module`` overrides rebuilding the model from the run's
    ``model.py``; ``weights`` (``model.pt`` or ``model_best.pt``) is loaded into it
    either way. A dense run (segment, regress) is scored per pixel; ``predictions`` names a
    PNG to draw the first images, targets and predictions into. Raises RunFolderError (the
    run folder is damaged), TrainError (no such device), DataError.
    """
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_FILE
    if not info_path.is_file():
        raise RunFolderError(f"{run_dir} is not a training run folder ({RUN_FILE} is missing)")
    info = RunInfo.load(run_dir)  # RunInfoError if damaged
    if weights != MODEL_FILE and not (run_dir / weights).is_file():
        raise RunFolderError(f"{run_dir} has no {weights}" + (
            " (the run had no validation split)" if weights == BEST_FILE else ""))
    if module is None:
        module = load_run_module(run_dir, prefer=info.module_class, weights=weights)
    else:
        try:
            module.load_state_dict(load_tensors(run_dir / weights, "weights file"))
        except RuntimeError as e:
            raise RunFolderError(f"{run_dir / weights} does not fit the module: {e}") from None
    own = info.dataset
    note = ""
    if data is None:
        data, base_dir = own, None
    elif _same_dataset(data, own, base_dir):
        # The file training read: its entry says which images were trained on. Only a
        # smaller test subset may be asked for on top.
        merged = own.model_dump()
        if data.test_size is not None:
            merged["test_size"] = data.test_size
        data, base_dir = DatasetSpec.model_validate(merged), None
        note = ("; the run was trained on this dataset" + (
            ", so only its held-out part is scored (--split all scores every image)"
            if split == "test" else ""))
    num_classes = info.num_classes
    task = info.task
    if task != "classify":
        return _evaluate_dense(module, info, data, base_dir, split, device, batch_size,
                               predictions, note + (f" ({weights})" if weights != MODEL_FILE
                                                    else _unfinished(run_dir, info)))
    x, y, where = load_split(
        data, input_shape=info.input_shape, num_classes=num_classes, mean=info.mean,
        std=info.std, base_dir=base_dir if base_dir is not None else Path.cwd(),
        split=split, classes=info.classes)
    dev = select_device(device)
    module.to(dev)
    x, y = x.to(dev), y.to(dev)
    try:
        check_output(module, x[:2], num_classes)
    except TrainError as e:  # run.json's num_classes is not the model's: the folder's fault
        raise RunFolderError(f"{run_dir / RUN_FILE} does not fit {SOURCE_FILE}: {e}") from None
    loss_sum, preds = predict(module, x, y, info.loss, batch_size)
    confusion = torch.bincount(y * num_classes + preds, minlength=num_classes * num_classes)
    matrix = confusion.view(num_classes, num_classes).cpu().tolist()
    n = int(y.shape[0])
    names = info.classes or [str(i) for i in range(num_classes)]
    return EvalResult(
        accuracy=sum(matrix[i][i] for i in range(num_classes)) / n,
        loss=loss_sum / n, confusion=matrix, classes=list(names), num_samples=n,
        source=(f"whole dataset: {where}" if split == "all" else f"{split} split: {where}")
        + note + (f" ({weights})" if weights != MODEL_FILE else _unfinished(run_dir, info)))


def _evaluate_dense(module: nn.Module, info: RunInfo, data: DatasetSpec,
                    base_dir: Path | None, split: str, device: str, batch_size: int,
                    predictions: Path | None, note: str) -> EvalResult:
    from .dense_datasets import Target, load_dense_split

    task, shape = info.task, info.output_shape
    if not shape:
        raise TrainError(f"run.json of this {task} run has no output_shape")
    x, y, where = load_dense_split(
        data, target=Target(task, tuple(shape)), input_shape=info.input_shape,
        mean=info.mean, std=info.std,
        base_dir=base_dir if base_dir is not None else Path.cwd(), split=split)
    dev = select_device(device)
    module.to(dev)
    x, y = x.to(dev), y.to(dev)
    check_output(module, x[:2], int(shape[0]), tuple(shape))
    score = score_dense(module, x, y, task, info.loss, batch_size,
                        int(shape[0]))
    k = int(shape[0])
    names = info.classes or [str(i) for i in range(k)]
    if predictions is not None:
        write_predictions(predictions, module, x, y, task, names)
    confusion = score.confusion or []
    return EvalResult(
        accuracy=score.pixel_acc or 0.0, loss=score.loss, confusion=confusion,
        classes=list(names), num_samples=sum(map(sum, confusion)) if confusion else y.numel(),
        source=(f"whole dataset: {where}" if split == "all" else f"{split} split: {where}")
        + note, task=task, dense=score, images=int(x.shape[0]))


def format_dense(result: EvalResult) -> str:
    """A dense run's scores: for segment, the per-class IoU table and the confusion matrix
    over pixels; for regress, the errors and PSNR."""
    score = result.dense
    assert score is not None
    where = f"on the {printable(result.source)} ({result.images:,} images)"
    if result.task == "regress":
        psnr = "inf" if score.psnr is None or score.psnr == float("inf") else f"{score.psnr:.2f}"
        return (f"MSE {score.mse:.6f}  MAE {score.mae:.6f}  PSNR {psnr} dB  loss "
                f"{score.loss:.6f}  {where}")
    lines = [(f"pixel accuracy {score.pixel_acc or 0:.2%}  mean IoU {score.miou or 0:.2%}  "
              f"loss {score.loss:.4f}  {where}"), "",
             format_iou(score, [printable(c) for c in result.classes]), "",
             "confusion matrix over pixels:"]
    # The classifier's table, its headline left out (it counts pixels here).
    lines += format_confusion(result).splitlines()[2:]
    return "\n".join(lines)


def _unfinished(run_dir: Path, info: RunInfo) -> str:
    """What model.pt is when the run stopped before its last epoch (interrupted, killed, or
    stopped early): model.pt is written at the end of each epoch, metrics.csv gets a row."""
    try:
        done = len((run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()) - 1
    except (OSError, UnicodeDecodeError):
        return ""
    planned = (info.train or {}).get("epochs")
    if not isinstance(planned, int) or not 0 < done < planned:
        return ""
    return (f"; {MODEL_FILE} holds epoch {done} of the {planned} planned: the run stopped "
            "before its last epoch")


def _same_dataset(data: DatasetSpec, own: DatasetSpec, base_dir: Path | None) -> bool:
    """Whether ``data`` names the file or folder the run was trained on, or a byte-for-byte
    copy of it (whose images are the ones trained on just the same)."""
    if data.format == "synthetic" or own.format == "synthetic":
        return data.format == own.format
    if data.path is None and own.path is None:  # mnist-seg, mnist-sr: the shipped digits
        return data.format == own.format
    mine = resolve_path(data, base_dir if base_dir is not None else Path.cwd())
    theirs = resolve_path(own, None)
    if mine is None or theirs is None or (data.format not in (None, own.format)
                                          and own.format is not None):
        return False
    try:
        return mine.exists() and theirs.exists() and (mine.samefile(theirs)
                                                      or _same_bytes(mine, theirs))
    except OSError:
        return False


def _same_bytes(a: Path, b: Path) -> bool:
    """Two files, or two folders file by file, with the same bytes. Sizes first: a copy's
    bytes are read only when every size matches."""
    if a.is_dir() and b.is_dir():
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        if files != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
            return False
        pairs = [(a / f, b / f) for f in files]
    elif a.is_file() and b.is_file():
        pairs = [(a, b)]
    else:
        return False
    if any(x.stat().st_size != y.stat().st_size for x, y in pairs):
        return False
    return all(_digest(x) == _digest(y) for x, y in pairs)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def format_confusion(result: EvalResult) -> str:
    """The accuracy line and the confusion matrix (rows: true class, columns: predicted)."""
    k = len(result.classes)
    names = [printable(c) for c in result.classes]  # folder names: no newline breaks the table
    cells = [[str(v) for v in row] for row in result.confusion]
    recall = []
    for i in range(k):
        total = sum(result.confusion[i])
        recall.append(f"{result.confusion[i][i] / total:.1%}" if total else "-")
    precision = []
    for j in range(k):
        total = sum(result.confusion[i][j] for i in range(k))
        precision.append(f"{result.confusion[j][j] / total:.1%}" if total else "-")
    head = "true \\ predicted"
    w0 = max(len(head), *(len(n) for n in names), len("precision"))
    w = max(3, *(len(n) for n in names), *(len(c) for row in cells for c in row),
            *(len(p) for p in precision))
    lines = [
        (f"accuracy {result.accuracy:.2%} ({result.correct}/{result.num_samples})  "
         f"loss {result.loss:.4f}  on the {printable(result.source)}"),
        "",
        head.ljust(w0) + "".join(f" {n:>{w}}" for n in names) + "   recall",
    ]
    for name, row, r in zip(names, cells, recall):
        lines.append(name.rjust(w0) + "".join(f" {c:>{w}}" for c in row) + f"   {r:>6}")
    lines.append("precision".rjust(w0) + "".join(f" {p:>{w}}" for p in precision))
    return "\n".join(lines)


