"""The run folder: file names, per-epoch metrics, metrics.csv, curves.png and TensorBoard
events, each written atomically. checkpoint.pt is ``checkpoint.Checkpoint``'s, run.json
``runinfo.RunInfo``'s."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.atomic import atomic_open, atomic_write, check_regular, temp_name_prefix
from ..core.trainspec import TrainSpec
from .base import RunFolderError, TrainError
from .runinfo import RunInfo

MODEL_FILE = "model.pt"
BEST_FILE = "model_best.pt"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
SOURCE_FILE = "model.py"
RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.png"
RUN_FILES = (MODEL_FILE, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, CURVES_FILE, SOURCE_FILE,
             RUN_FILE, PREDICTIONS_FILE)
TENSORBOARD_DIR = "tensorboard"
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "samples_per_s",
    "seconds",
    # Filled with 10 or more classes only; last, so the columns before keep their places.
    "val_top5",
    "test_top5",
)
# The columns of a dense task's metrics.csv, and the EpochMetrics field each holds: a
# segmentation run's accuracy is its pixel accuracy.
DENSE_COLUMNS = {
    "segment": (("epoch", "epoch"), ("train_loss", "train_loss"),
                ("train_pixel_acc", "train_acc"), ("val_loss", "val_loss"),
                ("val_pixel_acc", "val_acc"), ("val_miou", "val_miou"),
                ("test_loss", "test_loss"), ("test_pixel_acc", "test_acc"),
                ("test_miou", "test_miou"), ("lr", "lr"), ("samples_per_s", "samples_per_s"),
                ("seconds", "seconds")),
    "regress": (("epoch", "epoch"), ("train_loss", "train_loss"), ("val_loss", "val_loss"),
                ("val_psnr", "val_psnr"), ("test_loss", "test_loss"),
                ("test_psnr", "test_psnr"), ("lr", "lr"), ("samples_per_s", "samples_per_s"),
                ("seconds", "seconds")),
}


def metrics_columns(task: str = "classify") -> tuple[tuple[str, str], ...]:
    """(column of metrics.csv, EpochMetrics field) for a run of ``task``."""
    if task in DENSE_COLUMNS:
        return DENSE_COLUMNS[task]
    return tuple((c, c) for c in METRICS_COLUMNS)


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # fraction, 0..1 (segment: of the pixels; regress: 0)
    test_loss: float
    test_acc: float
    lr: float
    samples_per_s: float  # training samples per second of the training phase
    seconds: float  # the whole epoch, evaluation included
    val_loss: float | None = None  # None without a validation split
    val_acc: float | None = None
    val_top5: float | None = None  # top-5 accuracy, with 10 or more classes
    test_top5: float | None = None
    val_miou: float | None = None  # segment: mean IoU over the classes present
    test_miou: float | None = None
    val_psnr: float | None = None  # regress: PSNR in dB, targets in [0, 1]
    test_psnr: float | None = None
    ema_test_loss: float | None = None  # ema: the averaged weights' test scores
    ema_test_acc: float | None = None


@dataclass
class TrainResult:
    out_dir: Path
    device: str
    history: list[EpochMetrics]
    seconds: float  # wall time of this call
    resumed_from: int | None = None  # completed epochs in the checkpoint resumed from
    best_epoch: int | None = None  # the epoch in model_best.pt (with a validation split)
    stopped_early: bool = False  # patience ran out

    @property
    def best(self) -> EpochMetrics | None:
        return self.history[self.best_epoch - 1] if self.best_epoch else None

    @property
    def final(self) -> EpochMetrics | None:
        return self.history[-1] if self.history else None

    @property
    def test_acc(self) -> float | None:
        return self.history[-1].test_acc if self.history else None

    @property
    def test_loss(self) -> float | None:
        return self.history[-1].test_loss if self.history else None


def save_torch(obj: Any, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def resolve_out_dir(spec: TrainSpec, name: str, base_dir: Path, out_dir: Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if spec.output is not None:
        p = Path(spec.output).expanduser()
        return p if p.is_absolute() else Path(base_dir) / p
    return Path("runs") / name


# ---------------------------------------------------------------- files of a run


def open_folder(out: Path) -> None:
    """The run folder, made if missing, without the temp files a killed run may have left."""
    out.mkdir(parents=True, exist_ok=True)
    for f in RUN_FILES:
        for stale in out.glob(temp_name_prefix(f) + "*.tmp"):
            stale.unlink(missing_ok=True)


def start_afresh(out: Path, model_source: str, run_info: RunInfo,
                 log: Callable[[str], Any]) -> None:
    """A new run in ``out``: run.json is written (first: it marks the folder as a run folder,
    runinfo.RUN_MARK), the previous run's results go, and model.py is written."""
    run_info.write(out)
    old = [f for f in (MODEL_FILE, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, CURVES_FILE,
                       PREDICTIONS_FILE)
           if (out / f).exists()]
    if old:
        log(f"note: starting afresh in {out}; removing the previous run's {', '.join(old)}")
        for f in old:
            (out / f).unlink()
    atomic_write(out / SOURCE_FILE, model_source)


def write_metrics(path: Path, history: Sequence[EpochMetrics], task: str = "classify") -> None:
    columns = metrics_columns(task)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c for c, _ in columns])
    for m in history:
        row = asdict(m)
        w.writerow([row["epoch"]] + ["" if row[f] is None else f"{row[f]:.6g}"
                                     for _, f in columns[1:]])
    atomic_write(path, buf.getvalue())


def write_curves(path: Path, history: Sequence[EpochMetrics], title: str,
                  task: str = "classify") -> bool:
    """curves.png; False when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    epochs = [m.epoch for m in history]
    # Figure + the Agg canvas directly: no pyplot, so no global backend to switch.
    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [m.train_loss for m in history], "o-", label="train")
    has_val = any(m.val_loss is not None for m in history)
    if has_val:
        ax1.plot(epochs, [m.val_loss for m in history], "o-", label="validation")
    ax1.plot(epochs, [m.test_loss for m in history], "o-", label="test")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("loss")
    ax1.legend()
    if task == "regress":
        if has_val:
            ax2.plot(epochs, [m.val_psnr or 0 for m in history], "o-", label="validation")
        ax2.plot(epochs, [m.test_psnr or 0 for m in history], "o-", label="test")
        ax2.set_ylabel("PSNR (dB)")
        ax2.set_title("PSNR")
    elif task == "segment":
        ax2.plot(epochs, [100 * m.train_acc for m in history], "o-", label="train pixel acc")
        if has_val:
            ax2.plot(epochs, [100 * (m.val_miou or 0) for m in history], "o-",
                     label="validation mIoU")
        ax2.plot(epochs, [100 * m.test_acc for m in history], "o-", label="test pixel acc")
        ax2.plot(epochs, [100 * (m.test_miou or 0) for m in history], "o--", label="test mIoU")
        ax2.set_ylabel("%")
        ax2.set_title("pixel accuracy and mean IoU")
    else:
        ax2.plot(epochs, [100 * m.train_acc for m in history], "o-", label="train")
        if has_val:
            ax2.plot(epochs, [100 * (m.val_acc or 0) for m in history], "o-",
                     label="validation")
        ax2.plot(epochs, [100 * m.test_acc for m in history], "o-", label="test")
        if any(m.test_top5 is not None for m in history):
            ax2.plot(epochs, [100 * (m.test_top5 or 0) for m in history], "o--",
                     label="test top-5")
        ax2.set_ylabel("accuracy (%)")
        ax2.set_title("accuracy")
    ax2.set_xlabel("epoch")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    # Fixed margins: tight_layout would double the cost of a small plot.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return True


def load_tensors(path: Path, what: str) -> Any:
    """torch.load of a file that must hold tensors and plain data only. A pickle of anything
    else is refused unrun, and said to be what it is: not a file shapecheck wrote."""
    try:
        check_regular(path)  # a FIFO would hang torch.load
        with warnings.catch_warnings():  # torch warns about a foreign pickle's protocol
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist") from None
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: torch raises many kinds
        raise RunFolderError(f"{path} is not a shapecheck {what}: it cannot be read as plain "
                             f"tensors ({type(e).__name__}); nothing in it was run") from None


def architecture_diff(saved: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    own = module.state_dict()
    diffs = []
    for k in own.keys() - saved.keys():
        diffs.append(f"{k} is new")
    for k in saved.keys() - own.keys():
        diffs.append(f"{k} is gone")
    for k in own.keys() & saved.keys():
        if tuple(own[k].shape) != tuple(saved[k].shape):
            diffs.append(f"{k} was {list(saved[k].shape)}, is {list(own[k].shape)}")
    return sorted(diffs)


def tensorboard_writer(out: Path) -> Any:
    """A SummaryWriter in out/tensorboard; TrainError when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError("tensorboard: true needs the tensorboard package: "
                         "pip install 'shapecheck-cnn[tensorboard]'") from None
    return SummaryWriter(log_dir=str(out / TENSORBOARD_DIR))


def check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise TrainError("tensorboard: true needs the tensorboard package: "
                         "pip install 'shapecheck-cnn[tensorboard]'") from None


def log_tensorboard(writer: Any, m: EpochMetrics) -> None:
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "lr", "samples_per_s", "val_miou", "test_miou", "val_psnr", "test_psnr"):
        value = getattr(m, key)
        if value is not None:
            writer.add_scalar(key.replace("_", "/", 1) if key[:4] in ("trai", "val_", "test")
                              else key, value, m.epoch)
    writer.flush()


