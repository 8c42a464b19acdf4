"""Training and evaluating a built module: ``shapecheck build --train`` and ``shapecheck eval``.

``train()`` reads the whole dataset into memory once (``shapecheck.data``),
normalises it once, and runs a plain loop that indexes whole batches from the
preloaded tensors; the loss and accuracy of each step stay on the device and
are only summed every few steps (to check for NaN and to draw the progress
bar), so the loop costs about what a hand-written one does.

The run folder (``runs/<name>/`` unless told otherwise) holds, each file written
atomically (``shapecheck.atomic``), so a kill at any instant leaves the last
complete checkpoint loadable:

- ``model.pt``       the model's ``state_dict`` after the last completed epoch
- ``model_best.pt``  with a validation split: the epoch of the best validation
                     accuracy (ties: lower validation loss)
- ``checkpoint.pt``  model, optimizer, epoch, step within the epoch, RNG states,
                     metrics so far: what ``--resume`` continues from
- ``metrics.csv``    one row per epoch, columns ``METRICS_COLUMNS``
- ``curves.png``     loss and accuracy per epoch (matplotlib, Agg)
- ``model.py``       the emitted model source
- ``run.json``       what ``eval`` needs: input shape, classes, normalisation,
                     the dataset, the train spec, the module's class name; and
                     each resume, with what changed
- ``tensorboard/``   with ``tensorboard: true``: the numbers of metrics.csv as event files

Reproducibility: the seed seeds torch's global RNG and re-initialises the
module's parameters; the data order of epoch e comes from a generator seeded
with (seed, e) alone. A resumed run restores the RNG state, the optimizer and
the position inside the epoch, so with the same spec (and the same number of
threads) it ends with the same weights as a run that was never stopped. A
resume mid-epoch refuses a change of seed, batch size, drop_last or dataset
(the rest of the epoch could not be replayed); at an epoch boundary the change
applies from the next epoch and is named. Ctrl-C is caught between steps: the
current position is saved (an exact mid-epoch checkpoint) and KeyboardInterrupt
is raised again for the caller to exit 130; a second Ctrl-C stops at once,
keeping the last saved checkpoint.

``evaluate()`` rebuilds the module from the run folder's ``model.py`` (or takes
one passed in), loads ``model.pt`` and scores it with the run's normalisation.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import functools
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from shapecheck.atomic import atomic_open, atomic_write, check_regular, temp_name_prefix
from shapecheck.data import DataError, MemoryLimitError, load_dataset, load_split, resolve_path
from shapecheck.report import printable
from shapecheck.runinfo import load_run_info
from shapecheck.trainspec import DatasetSpec, OptimizerSpec, TrainSpec

__all__ = [
    "BEST_FILE",
    "CHECKPOINT_FILE",
    "CURVES_FILE",
    "METRICS_COLUMNS",
    "METRICS_FILE",
    "MODEL_FILE",
    "RUN_FILE",
    "SOURCE_FILE",
    "DataError",
    "EpochMetrics",
    "EvalResult",
    "TrainError",
    "TrainResult",
    "default_loss",
    "evaluate",
    "format_confusion",
    "load_run_module",
    "select_device",
    "train",
]

MODEL_FILE = "model.pt"
BEST_FILE = "model_best.pt"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
SOURCE_FILE = "model.py"
RUN_FILE = "run.json"
RUN_FILES = (MODEL_FILE, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, CURVES_FILE, SOURCE_FILE,
             RUN_FILE)
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_VERSION = 1
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
)

# Steps between two looks at the losses (each look is one device sync).
CHECK_EVERY = 25
PROGRESS_INTERVAL_S = 0.1
# Redraw curves.png at most this often while training; always at the end.
CURVES_INTERVAL_S = 5.0


class TrainError(Exception):
    """Training cannot start or cannot go on. The message says why and what was kept."""


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # fraction, 0..1
    test_loss: float
    test_acc: float
    lr: float
    samples_per_s: float  # training samples per second of the training phase
    seconds: float  # the whole epoch, evaluation included
    val_loss: float | None = None  # None without a validation split
    val_acc: float | None = None


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


@dataclass
class EvalResult:
    accuracy: float  # fraction, 0..1
    loss: float  # mean loss with the run's loss function
    confusion: list[list[int]]  # confusion[true][predicted]
    classes: list[str]
    num_samples: int
    source: str = ""  # what was evaluated, in words

    @property
    def correct(self) -> int:
        return sum(self.confusion[i][i] for i in range(len(self.confusion)))


# ---------------------------------------------------------------- small helpers


def select_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if available, then mps, then cpu. Asking for a missing one is a TrainError."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("device cuda was asked for, but this PyTorch sees no CUDA device")
    if name == "mps" and not mps_ok:
        raise TrainError("device mps was asked for, but it is not available here")
    return torch.device(name)


def _last_layer(module: nn.Module) -> nn.Module:
    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    return leaves[-1] if leaves else module


def default_loss(module: nn.Module) -> str:
    """``nll_loss`` when the module ends in LogSoftmax, else ``cross_entropy``."""
    return "nll_loss" if isinstance(_last_layer(module), nn.LogSoftmax) else "cross_entropy"


def _loss_fn(name: str) -> Callable[..., torch.Tensor]:
    return {"cross_entropy": F.cross_entropy, "nll_loss": F.nll_loss}[name]


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _param_groups(module: nn.Module, o: OptimizerSpec) -> list[dict[str, Any]]:
    """One group, or two when norm weights and biases are kept out of weight decay.

    Each group carries ``decay`` so a resume can re-apply the spec's weight decay."""
    wd = o.effective_weight_decay
    if o.decay_norm_and_bias:
        return [{"params": list(module.parameters()), "weight_decay": wd, "decay": True}]
    plain, exempt = [], []
    for m in module.modules():
        for pname, p in m.named_parameters(recurse=False):
            (exempt if isinstance(m, _NORMS) or pname == "bias" else plain).append(p)
    groups = [{"params": plain, "weight_decay": wd, "decay": True},
              {"params": exempt, "weight_decay": 0.0, "decay": False}]
    return [g for g in groups if g["params"]]


def _make_optimizer(module: nn.Module, o: OptimizerSpec) -> torch.optim.Optimizer:
    groups = _param_groups(module, o)
    if o.type == "sgd":
        return torch.optim.SGD(groups, lr=o.effective_lr, momentum=o.effective_momentum,
                               nesterov=o.nesterov)
    cls = torch.optim.Adam if o.type == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.effective_lr)


def _apply_hyperparameters(optimizer: torch.optim.Optimizer, o: OptimizerSpec) -> None:
    # A resumed run takes lr and the like from the spec, which may have changed.
    for group in optimizer.param_groups:
        group["lr"] = o.effective_lr
        group["weight_decay"] = o.effective_weight_decay if group.get("decay", True) else 0.0
        if "momentum" in group:
            group["momentum"] = o.effective_momentum
            group["nesterov"] = o.nesterov


def _class_weights(spec: TrainSpec, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    w = spec.class_weights
    if w is None:
        return None
    if w == "balanced":
        # As scikit-learn's "balanced": n / (classes * count); an absent class weighs 0.
        counts = torch.bincount(y.cpu(), minlength=num_classes).double()
        present = int((counts > 0).sum())
        weights = torch.where(counts > 0, y.numel() / (present * counts.clamp(min=1)),
                              torch.zeros_like(counts))
        return weights.float()
    if len(w) != num_classes:
        raise TrainError(f"class_weights has {len(w)} values; the last layer has "
                         f"{num_classes} classes")
    return torch.tensor(w, dtype=torch.float32)


def _epoch_seed(seed: int, epoch: int) -> int:
    # The data order of an epoch depends on (seed, epoch) only, never on what
    # ran before, which is what lets a resumed run replay it exactly.
    return (seed * 1_000_003 + epoch) % (2**63)


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _params_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values()
               if t.is_floating_point())


def _save_torch(obj: Any, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def _out_dir(spec: TrainSpec, name: str, base_dir: Path, out_dir: Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if spec.output is not None:
        p = Path(spec.output).expanduser()
        return p if p.is_absolute() else Path(base_dir) / p
    return Path("runs") / name


class _InterruptFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.set = False
        self._old: Any = None
        self._installed = False

    def __enter__(self) -> _InterruptFlag:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if old is not signal.SIG_IGN:
                self._old = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)


class _Progress:
    """One status line on a terminal, redrawn in place; silent elsewhere."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled = enabled
        self.stream = stream
        self._width = 0

    def draw(self, epoch: int, epochs: int, step: int, steps: int, loss: float, acc: float,
             rate: float) -> None:
        if not self.enabled:
            return
        filled = int(16 * step / max(steps, 1))
        bar = "=" * filled + (">" if filled < 16 else "") + " " * max(0, 15 - filled)
        line = (f"epoch {epoch}/{epochs} [{bar}] {step}/{steps} loss {loss:.4f} "
                f"acc {acc:.2%} {rate:,.0f} samples/s")
        # A line that wraps cannot be redrawn in place with \r.
        line = line[:max(20, shutil.get_terminal_size().columns - 1)]
        self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


class _Running:
    """Per-step losses and hits kept as device tensors, summed every few steps."""

    def __init__(self, loss_sum: float = 0.0, correct: int = 0, seen: int = 0) -> None:
        self.loss_sum = loss_sum
        self.correct = correct
        self.seen = seen
        self._losses: list[torch.Tensor] = []
        self._hits: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._first_step = 0

    def add(self, step: int, loss: torch.Tensor, hits: torch.Tensor, size: int) -> None:
        if not self._losses:
            self._first_step = step
        self._losses.append(loss)
        self._hits.append(hits)
        self._sizes.append(size)

    def flush(self) -> tuple[int, float] | None:
        """Sum the pending steps; (step, loss) of the first non-finite loss, if any."""
        if not self._losses:
            return None
        # Summed in float64 on the CPU (MPS has no float64): one transfer per flush.
        losses = torch.stack(self._losses).to("cpu", torch.float64)
        total = float((losses * torch.tensor(self._sizes, dtype=torch.float64)).sum())
        if not math.isfinite(total):
            bad = (~torch.isfinite(losses)).nonzero()
            i = int(bad[0]) if bad.numel() else 0
            return self._first_step + i, float(losses[i])
        self.loss_sum += total
        self.correct += int(torch.stack(self._hits).sum())
        self.seen += sum(self._sizes)
        self._losses.clear()
        self._hits.clear()
        self._sizes.clear()
        return None

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def acc(self) -> float:
        return self.correct / self.seen if self.seen else 0.0


@torch.inference_mode()
def _predict(module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_name: str,
             batch: int) -> tuple[float, torch.Tensor]:
    """(summed loss, predictions) over a whole split, in eval mode."""
    was_training = module.training
    module.eval()
    loss_fn = _loss_fn(loss_name)
    losses, preds = [], []
    try:
        for i in range(0, x.shape[0], batch):
            out = module(x[i:i + batch])
            losses.append(loss_fn(out, y[i:i + batch], reduction="sum"))
            preds.append(out.argmax(1))
    finally:
        module.train(was_training)
    return float(torch.stack(losses).to("cpu", torch.float64).sum()), torch.cat(preds)


# ---------------------------------------------------------------- files of a run


def _write_metrics(path: Path, history: Sequence[EpochMetrics]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRICS_COLUMNS)
    for m in history:
        row = asdict(m)
        w.writerow([row["epoch"]] + ["" if row[c] is None else f"{row[c]:.6g}"
                                     for c in METRICS_COLUMNS[1:]])
    atomic_write(path, buf.getvalue())


def _write_curves(path: Path, history: Sequence[EpochMetrics], title: str) -> bool:
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
    ax2.plot(epochs, [100 * m.train_acc for m in history], "o-", label="train")
    if has_val:
        ax2.plot(epochs, [100 * (m.val_acc or 0) for m in history], "o-", label="validation")
    ax2.plot(epochs, [100 * m.test_acc for m in history], "o-", label="test")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title("accuracy")
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


def _load_tensors(path: Path, what: str) -> Any:
    """torch.load of a file that must hold tensors and plain data only. A pickle of anything
    else is refused unrun, and said to be what it is: not a file shapecheck wrote."""
    try:
        check_regular(path)  # a FIFO would hang torch.load
        with warnings.catch_warnings():  # torch warns about a foreign pickle's protocol
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{path} does not exist") from None
    except OSError as e:
        raise TrainError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: torch raises many kinds
        raise TrainError(f"{path} is not a shapecheck {what}: it cannot be read as plain "
                         f"tensors ({type(e).__name__}); nothing in it was run") from None


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TrainError(f"nothing to resume: {path} does not exist")
    ckpt = _load_tensors(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise TrainError(f"{path} is not a shapecheck checkpoint (version {CHECKPOINT_VERSION})")
    missing = sorted({"model", "optimizer", "rng", "epoch", "step", "metrics", "train",
                      "input_shape", "num_classes", "mean", "std"} - ckpt.keys())
    if missing:
        raise TrainError(f"{path} is not a shapecheck checkpoint (it has no {', '.join(missing)})")
    # Checked here so that a damaged checkpoint is one message, not a traceback from torch.
    rng, names = ckpt["rng"], {f.name for f in fields(EpochMetrics)}
    if not (isinstance(ckpt["model"], dict) and isinstance(ckpt["optimizer"], dict)
            and isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
            and rng["torch"].dtype == torch.uint8
            and all(isinstance(ckpt[k], int) and ckpt[k] >= 0 for k in ("epoch", "step"))
            and isinstance(ckpt["metrics"], list)
            and all(isinstance(m, dict) and m.keys() <= names for m in ckpt["metrics"])):
        raise TrainError(f"{path} is damaged: not a shapecheck checkpoint's layout")
    return ckpt


def _architecture_diff(saved: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
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


# ---------------------------------------------------------------- train


def train(
    module: nn.Module,
    spec: TrainSpec,
    *,
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    base_dir: Path,
    out_dir: Path | None,
    model_source: str,
    resume: bool = False,
    log: Callable[[str], Any] = print,
    progress: bool | None = None,
    reinit: bool = True,
) -> TrainResult:
    """Train ``module`` as ``spec`` says and keep the run in a folder.

    ``input_shape`` is the spec's ``(C, H, W)``, ``num_classes`` the last layer's
    ``out_features``, ``base_dir`` the spec file's folder (relative dataset and
    output paths start there), ``out_dir`` overrides the output folder (default:
    ``spec.output``, else ``runs/<name>``), ``model_source`` is written to
    ``model.py``. ``log`` gets one line per epoch and notes; ``progress`` (default:
    stderr is a terminal) draws a bar on stderr. ``reinit`` re-initialises the
    parameters from the seed on a fresh run (the module's own weights are used
    when False).

    Raises DataError (the data cannot be read or does not fit the spec; a
    MemoryLimitError when it does not fit in memory), TrainError (no dataset, no
    device, a bad resume, the model's output or a batch does not fit, a NaN/inf
    loss), and KeyboardInterrupt after saving a checkpoint on Ctrl-C.
    """
    threads = torch.get_num_threads()
    try:
        with _deterministic(spec.deterministic):
            return _train(module, spec, name=name, input_shape=input_shape,
                          num_classes=num_classes, base_dir=base_dir, out_dir=out_dir,
                          model_source=model_source, resume=resume, log=log,
                          progress=progress, reinit=reinit)
    finally:
        torch.set_num_threads(threads)  # a deterministic resume may have changed it


@contextlib.contextmanager
def _deterministic(on: bool):
    """torch.use_deterministic_algorithms and the cuDNN flags, restored afterwards."""
    if not on:
        yield
        return
    cudnn = torch.backends.cudnn
    old = (torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled(),
           cudnn.deterministic, cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    # cuBLAS is deterministic only with a fixed workspace (PyTorch's reproducibility notes).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        cudnn.deterministic, cudnn.benchmark = old[2], old[3]
        if old[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# What a resume may not change in the middle of an epoch: the rest of its batches
# could not be replayed. At an epoch boundary they apply from the next epoch.
_EPOCH_KEYS = ("seed", "batch_size", "drop_last")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _resume_changes(ckpt: dict[str, Any], spec: TrainSpec, dataset: dict[str, Any],
                    steps_done: int, where: str) -> list[str]:
    """What differs from the checkpoint's spec, in words; TrainError where it cannot apply."""
    old_spec = TrainSpec.model_validate(ckpt["train"])
    old_ds = ckpt.get("dataset")
    if old_ds is not None and old_ds != dataset:
        diff = [f"{k} {_flat(old_ds).get(k)} -> {_flat(dataset).get(k)}"
                for k in sorted(set(_flat(old_ds)) | set(_flat(dataset)))
                if _flat(old_ds).get(k) != _flat(dataset).get(k)]
        raise TrainError(
            f"cannot resume: the dataset differs from the checkpoint's ({'; '.join(diff)}); "
            "the run's splits and normalisation come from its dataset. Keep the dataset, or "
            "start a new run in another folder (--out)")
    old = _flat(old_spec.model_dump(mode="json", exclude={"dataset", "output"}))
    new = _flat(spec.model_dump(mode="json", exclude={"dataset", "output"}))
    changed = [k for k in sorted(old) if old[k] != new.get(k)]
    fixed = [k for k in changed if k in ("optimizer.type", "optimizer.decay_norm_and_bias")]
    if fixed:
        raise TrainError(
            f"cannot resume with {', '.join(f'{k} {new[k]}' for k in fixed)}: the checkpoint's "
            f"optimizer state was made with {', '.join(f'{k} {old[k]}' for k in fixed)}; "
            "start a new run in another folder (--out)")
    if steps_done:
        stuck = [k for k in changed if k in _EPOCH_KEYS]
        if stuck:
            was = ", ".join(f"{k} {old[k]}" for k in stuck)
            raise TrainError(
                f"cannot resume {where} with {', '.join(f'{k} {new[k]}' for k in stuck)}: the "
                f"checkpoint was made with {was}, and the rest of the epoch can only be "
                "replayed with the same. Resume with the same values; a change can apply "
                "from an epoch boundary (the checkpoint of a completed epoch)")
    return [f"{k} {old[k]} -> {new.get(k)}" for k in changed]


def _check_batches(module: nn.Module, x: torch.Tensor, n: int, bs: int, drop_last: bool,
                   device: torch.device) -> None:
    """Every batch size the loop will make goes through the module in training mode.

    BatchNorm, for one, refuses a batch of one sample; better to find out now than
    after a whole epoch's work. Buffers (running statistics) and RNG are restored,
    so the check leaves no trace in the run."""
    if drop_last and n < bs:
        raise TrainError(f"drop_last with batch_size {bs} leaves no batch: the training "
                         f"split has {n} samples")
    last = n % bs
    sizes = sorted({min(bs, n)} | ({last} if last and not drop_last and n > bs else set()))
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    rng = _rng_state(device)
    was_training = module.training
    module.train()
    try:
        for size in sizes:
            try:
                with torch.no_grad():
                    module(x[:size])
            except Exception as e:  # noqa: BLE001 - whatever the model raises, say it plainly
                what = f"{type(e).__name__}: {e}".strip()
                if size == last and size != bs:
                    raise TrainError(
                        f"the last batch of each epoch has {size} sample"
                        f"{'s' if size != 1 else ''} ({n} = {n // bs}×{bs} + {last}), and the "
                        f"model fails on it in training mode: {what}. Set train.drop_last: true "
                        "(--drop-last) to skip it, or choose another batch_size") from None
                raise TrainError(f"the model fails on a training batch of {size} in training "
                                 f"mode: {what}") from None
    finally:
        module.train(was_training)
        with torch.no_grad():
            for k, v in module.named_buffers():
                v.copy_(buffers[k])
        _set_rng_state(rng, device)


def _best_epoch(history: Sequence[EpochMetrics]) -> int | None:
    """The epoch (1-based) of the best validation accuracy, ties to the lower loss."""
    scored = [m for m in history if m.val_acc is not None]
    if not scored:
        return None
    return max(scored, key=lambda m: (m.val_acc, -(m.val_loss or 0.0), -m.epoch)).epoch


def _tensorboard(out: Path) -> Any:
    """A SummaryWriter in out/tensorboard; TrainError when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError("tensorboard: true needs the tensorboard package: "
                         "pip install 'shapecheck-cnn[tensorboard]'") from None
    return SummaryWriter(log_dir=str(out / TENSORBOARD_DIR))


def _tensorboard_available() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise TrainError("tensorboard: true needs the tensorboard package: "
                         "pip install 'shapecheck-cnn[tensorboard]'") from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _update_run_info(path: Path, entry: dict[str, Any], spec: TrainSpec) -> None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # run.json is for eval; a resume must not fail for want of it
    info.setdefault("resumes", []).append(entry)
    info["train"] = spec.model_dump(mode="json")
    atomic_write(path, json.dumps(info, indent=2) + "\n")


def _train(
    module: nn.Module,
    spec: TrainSpec,
    *,
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    base_dir: Path,
    out_dir: Path | None,
    model_source: str,
    resume: bool,
    log: Callable[[str], Any],
    progress: bool | None,
    reinit: bool,
) -> TrainResult:
    t_call = time.perf_counter()
    if spec.dataset is None:
        raise TrainError("no dataset: give train.dataset in the spec (or --data)")
    base_dir = Path(base_dir)
    out = _out_dir(spec, name, base_dir, out_dir)
    device = select_device(spec.device)
    loss_name = spec.loss or default_loss(module)
    last = _last_layer(module)
    if loss_name == "nll_loss" and not isinstance(last, nn.LogSoftmax):
        log(f"note: nll_loss expects log-probabilities, but the last layer is "
            f"{type(last).__name__}")
    if isinstance(last, nn.Softmax):
        log("note: the last layer is Softmax; cross_entropy applies log-softmax itself, "
            "so a Softmax before it slows learning (use logsoftmax with nll_loss, or drop it)")
    if spec.label_smoothing and loss_name != "cross_entropy":
        raise TrainError(f"label_smoothing needs cross_entropy; this run's loss is {loss_name} "
                         "(the last layer is LogSoftmax): give loss: cross_entropy and drop "
                         "the logsoftmax layer")
    if spec.patience is not None and (spec.dataset.val_fraction is None):
        raise TrainError("patience needs a validation split: give the dataset a val_fraction "
                         "(e.g. 0.1); the test split drives no decision")
    if spec.tensorboard:
        _tensorboard_available()
    dataset_entry = _absolute_dataset(spec.dataset, base_dir)

    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = _read_checkpoint(out / CHECKPOINT_FILE)
        diffs = _architecture_diff(ckpt["model"], module)
        if diffs or list(ckpt["input_shape"]) != list(input_shape) \
                or ckpt["num_classes"] != num_classes:
            detail = "; ".join(diffs[:5]) or (
                f"input {ckpt['input_shape']} -> {list(input_shape)}, "
                f"classes {ckpt['num_classes']} -> {num_classes}")
            raise TrainError(
                f"cannot resume: {out / CHECKPOINT_FILE} was made by a different "
                f"architecture ({detail})")

    # Weights, gradients and optimizer state, counted with the data in one memory check.
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    copies = 2 + (2 if spec.optimizer.type != "sgd" else int(bool(
        spec.optimizer.effective_momentum)))
    data = load_dataset(spec.dataset, input_shape=input_shape, num_classes=num_classes,
                        base_dir=base_dir, extra_bytes=param_bytes * copies,
                        extra_what="the weights, gradients and optimizer state")
    for note in data.notes:
        log(f"note: {note}")
    if data.source == "synthetic":
        log("note: synthetic data is a smoke test: it shows that the model trains and the "
            "run folder is written; its accuracy says nothing about real data")
    if ckpt is not None and not torch.allclose(
            torch.tensor(ckpt["mean"] + ckpt["std"]), torch.tensor(data.mean + data.std),
            rtol=1e-4, atol=1e-6):
        log("note: the training data's mean/std differ from the checkpoint's; "
            "has the dataset changed?")

    torch.manual_seed(spec.seed)
    if ckpt is None and reinit:
        _reinit(module)
    try:
        module.to(device)
        x_train, y_train = data.x_train.to(device), data.y_train.to(device)
        x_test, y_test = data.x_test.to(device), data.y_test.to(device)
        x_val = data.x_val.to(device) if data.x_val is not None else None
        y_val = data.y_val.to(device) if data.y_val is not None else None
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "memory" not in str(e).lower():
            raise
        raise MemoryLimitError(f"the data does not fit on {device.type}: "
                               f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
    _check_output(module, x_train[:2], num_classes)
    n = x_train.shape[0]
    bs = spec.batch_size
    steps = n // bs if spec.drop_last else math.ceil(n / bs)
    _check_batches(module, x_train, n, bs, spec.drop_last, device)
    class_weights = _class_weights(spec, data.y_train, num_classes)
    if class_weights is not None:
        class_weights = class_weights.to(device)

    out.mkdir(parents=True, exist_ok=True)
    for f in RUN_FILES:  # temp files a killed run may have left behind
        for stale in out.glob(temp_name_prefix(f) + "*.tmp"):
            stale.unlink(missing_ok=True)

    optimizer = _make_optimizer(module, spec.optimizer)
    pending_resume: dict[str, Any] | None = None
    history: list[EpochMetrics] = []
    start_epoch, start_step = 0, 0
    partial: dict[str, Any] | None = None
    if ckpt is not None:
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step"])
        if start_step:
            was = TrainSpec.model_validate(ckpt["train"])  # the steps as the run counted them
            was_steps = n // was.batch_size if was.drop_last else math.ceil(n / was.batch_size)
            where = f"at epoch {start_epoch + 1}, step {start_step}/{was_steps}"
        else:
            where = f"after epoch {start_epoch}"
        changes = _resume_changes(ckpt, spec, dataset_entry, start_step, where)
        module.load_state_dict(ckpt["model"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise TrainError(f"cannot resume: the optimizer's state does not fit ({e}); was "
                             "the optimizer type or decay_norm_and_bias changed?") from None
        _apply_hyperparameters(optimizer, spec.optimizer)
        _set_rng_state(ckpt["rng"], device)
        partial = ckpt.get("partial")
        history = [EpochMetrics(**m) for m in ckpt["metrics"]]
        log(f"resuming {out} {where}")
        if changes:
            log(f"note: changed since the checkpoint: {'; '.join(changes)}"
                + ("; they apply from here on, so the run differs from one that had them "
                   "from the start" if any(c.split()[0] in _EPOCH_KEYS for c in changes)
                   else ""))
        saved_threads = ckpt.get("threads")
        if saved_threads is not None and saved_threads != torch.get_num_threads() \
                and device.type == "cpu":
            if spec.deterministic:
                torch.set_num_threads(int(saved_threads))
                log(f"note: using {_plural(int(saved_threads), 'thread')}, as the run did "
                    "before: CPU results depend on the thread count")
            else:
                log(f"note: the run used {_plural(int(saved_threads), 'thread')}, this "
                    f"process {torch.get_num_threads()}; the weights will differ in the last "
                    "bits from an uninterrupted run (--deterministic keeps the count)")
        # Recorded in run.json with the first checkpoint it writes: a resume that fails
        # before then leaves the run folder as it was.
        pending_resume = {
            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "epoch": start_epoch + (1 if start_step else 0),
            "step": start_step,
            "changes": changes,
            "threads": torch.get_num_threads(),
        }
    else:
        old = [f for f in (MODEL_FILE, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, CURVES_FILE)
               if (out / f).exists()]
        if old:
            log(f"note: starting afresh in {out}; removing the previous run's "
                f"{', '.join(old)}")
            for f in old:
                (out / f).unlink()
        atomic_write(out / SOURCE_FILE, model_source)
        run_info = {
            "name": name,
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "classes": data.classes,
            "mean": data.mean,
            "std": data.std,
            "loss": loss_name,
            "module_class": type(module).__name__,
            "dataset": dataset_entry,
            "train": spec.model_dump(mode="json"),
            "splits": {"train": n, "val": data.num_val, "test": data.num_test},
            "threads": torch.get_num_threads(),
            "torch_version": str(torch.__version__),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write(out / RUN_FILE, json.dumps(run_info, indent=2) + "\n")

    show = _Progress(sys.stderr.isatty() if progress is None else progress, sys.stderr)
    train_loss_fn = functools.partial(_loss_fn(loss_name), weight=class_weights,
                                      **({"label_smoothing": spec.label_smoothing}
                                         if spec.label_smoothing else {}))
    eval_batch = max(2 * bs, 256)
    lr = spec.optimizer.effective_lr
    val_part = f"{data.num_val} validation and " if x_val is not None else ""
    log(f"training {name} on {device.type}: {n} training, {val_part}{x_test.shape[0]} test "
        f"images ({data.source}), {_plural(spec.epochs, 'epoch')}, batch {bs}"
        f"{' (last batch dropped)' if spec.drop_last and n % bs else ''}, "
        f"{spec.optimizer.type} lr {lr:g}, {loss_name}")
    best_epoch = _best_epoch(history)
    stopped_early = _patience_ran_out(spec, history, best_epoch)
    if stopped_early:
        log(f"nothing to do: the run stopped early at epoch {len(history)} (patience "
            f"{spec.patience}; best epoch {best_epoch})")
    elif start_epoch >= spec.epochs:
        log(f"nothing to do: the checkpoint has {_plural(start_epoch, 'epoch')}, the spec asks "
            f"for {spec.epochs}")
    last_curves = time.perf_counter()
    writer: Any = None  # made with the first epoch's files, so a failed start leaves none

    def checkpoint(epoch: int, step: int, run: _Running | None, train_s: float = 0.0) -> None:
        _save_torch({
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "step": step,
            "model": _cpu_state(module),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(device),
            "partial": None if run is None else {
                "loss_sum": run.loss_sum, "correct": run.correct, "seen": run.seen,
                "train_s": train_s},
            "metrics": [asdict(m) for m in history],
            "train": spec.model_dump(mode="json"),
            "dataset": dataset_entry,
            "threads": torch.get_num_threads(),
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "mean": data.mean,
            "std": data.std,
            "loss": loss_name,
            "torch_version": str(torch.__version__),
        }, out / CHECKPOINT_FILE)
        nonlocal pending_resume
        if pending_resume is not None:
            _update_run_info(out / RUN_FILE, pending_resume, spec)
            pending_resume = None

    def last_good() -> str:
        done = len(history)
        return (f"the last good checkpoint (epoch {done}) is kept in {out}" if done
                else "no epoch had completed, so no checkpoint was written")

    saved = False  # whether a Ctrl-C has been answered with a checkpoint
    try:
        with _InterruptFlag() as interrupt:
            for epoch in range(start_epoch, spec.epochs if not stopped_early else start_epoch):
                t_epoch = time.perf_counter()
                first = start_step if (epoch == start_epoch and partial) else 0
                before_s = 0.0  # training seconds spent in this epoch before a resume
                if first:
                    assert partial is not None
                    before_s = float(partial.get("train_s", 0.0))
                    run = _Running(partial["loss_sum"], partial["correct"], partial["seen"])
                else:
                    run = _Running()
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(
                    _epoch_seed(spec.seed, epoch))).to(device)
                module.train()
                next_check = first + CHECK_EVERY
                next_draw = t_epoch + PROGRESS_INTERVAL_S
                seen_here = 0
                for step in range(first, steps):
                    idx = perm[step * bs:(step + 1) * bs]
                    # Advanced indexing, not index_select: the latter opens a parallel
                    # region per call, which costs dearly when other processes hold the cores.
                    xb, yb = x_train[idx], y_train[idx]
                    optimizer.zero_grad(set_to_none=True)
                    output = module(xb)
                    loss = train_loss_fn(output, yb)
                    loss.backward()
                    if spec.grad_clip is not None:
                        nn.utils.clip_grad_norm_(module.parameters(), spec.grad_clip)
                    optimizer.step()
                    # argmax carries no graph; nothing here waits for the device.
                    run.add(step, loss.detach(), (output.argmax(1) == yb).sum(), idx.numel())
                    seen_here += idx.numel()
                    if interrupt.set:
                        _raise_if_nan(run, epoch, show, last_good)
                        if not _params_finite(module):
                            raise TrainError(
                                f"the weights became NaN or infinite in epoch {epoch + 1}; "
                                f"stopped. {_capital(last_good())}")
                        checkpoint(epoch, step + 1, run,
                                   before_s + time.perf_counter() - t_epoch)
                        show.clear()
                        log(f"interrupted at epoch {epoch + 1}, step {step + 1}/{steps}; "
                            f"checkpoint saved in {out} (continue with --resume)")
                        saved = True
                        raise KeyboardInterrupt
                    draw = show.enabled and (step + 1 == steps
                                             or time.perf_counter() >= next_draw)
                    if draw or step + 1 >= next_check:
                        _raise_if_nan(run, epoch, show, last_good)
                        next_check = step + 1 + CHECK_EVERY
                        if draw:
                            now = time.perf_counter()
                            next_draw = now + PROGRESS_INTERVAL_S
                            show.draw(epoch + 1, spec.epochs, step + 1, steps, run.loss, run.acc,
                                      seen_here / max(now - t_epoch, 1e-9))
                _raise_if_nan(run, epoch, show, last_good)
                train_s = before_s + time.perf_counter() - t_epoch
                test_loss, test_acc = _score(module, x_test, y_test, loss_name, eval_batch)
                val_loss = val_acc = None
                if x_val is not None and y_val is not None:
                    val_loss, val_acc = _score(module, x_val, y_val, loss_name, eval_batch)
                if not math.isfinite(test_loss) or not _params_finite(module):
                    show.clear()
                    raise TrainError(
                        f"the weights became NaN or infinite in epoch {epoch + 1} (test loss "
                        f"{test_loss}); stopped. {_capital(last_good())}")
                history.append(EpochMetrics(
                    epoch=epoch + 1, train_loss=run.loss, train_acc=run.acc,
                    test_loss=test_loss, test_acc=test_acc, lr=lr,
                    # The whole epoch's samples over its training time, a resume's part included.
                    samples_per_s=run.seen / max(train_s, 1e-9),
                    seconds=time.perf_counter() - t_epoch,
                    val_loss=val_loss, val_acc=val_acc))
                best_epoch = _best_epoch(history)
                # The checkpoint first: if it cannot be written, nothing else moves on.
                checkpoint(epoch + 1, 0, None)
                _save_torch(_cpu_state(module), out / MODEL_FILE)
                if best_epoch == epoch + 1:
                    _save_torch(_cpu_state(module), out / BEST_FILE)
                _write_metrics(out / METRICS_FILE, history)
                if spec.tensorboard:
                    if writer is None:
                        writer = _tensorboard(out)
                    _log_tensorboard(writer, history[-1])
                final = epoch + 1 == spec.epochs
                stopped_early = _patience_ran_out(spec, history, best_epoch)
                if final or stopped_early or \
                        time.perf_counter() - last_curves >= CURVES_INTERVAL_S:
                    _write_curves(out / CURVES_FILE, history, name)
                    last_curves = time.perf_counter()
                show.clear()
                m = history[-1]
                val = (f"val loss {m.val_loss:.4f}  val acc {m.val_acc:.2%}  "
                       if m.val_loss is not None and m.val_acc is not None else "")
                log(f"epoch {m.epoch}/{spec.epochs}  train loss {m.train_loss:.4f}  {val}"
                    f"test loss {m.test_loss:.4f}  test acc {m.test_acc:.2%}  "
                    f"{m.samples_per_s:,.0f} samples/s  ({m.seconds:.1f} s)")
                if stopped_early:
                    log(f"stopping early: no better validation accuracy for "
                        f"{_plural(spec.patience or 0, 'epoch')}; the best, epoch {best_epoch}, "
                        f"is in {BEST_FILE}")
                    break
                if interrupt.set:
                    log(f"interrupted after epoch {epoch + 1}; checkpoint saved in {out} "
                        "(continue with --resume)")
                    saved = True
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        show.clear()
        if not saved:
            log(f"interrupted; {last_good()}")
        if history:
            _write_curves(out / CURVES_FILE, history, name)
        raise
    except TrainError:
        if history:
            _write_curves(out / CURVES_FILE, history, name)
        raise
    except RuntimeError as e:
        show.clear()
        text = str(e)
        if "deterministic" in text:
            raise TrainError(f"an operation of this model has no deterministic implementation "
                             f"on {device.type}: {text.splitlines()[0]}. Train without "
                             f"--deterministic. {_capital(last_good())}") from None
        if "out of memory" in text.lower() or "can't allocate memory" in text:
            raise TrainError(f"out of memory on {device.type} while training (batch {bs}): "
                             f"{text.splitlines()[0]}; try a smaller batch_size. "
                             f"{_capital(last_good())}") from None
        raise
    finally:
        if writer is not None:
            writer.close()
    if history and not (out / CURVES_FILE).exists():
        _write_curves(out / CURVES_FILE, history, name)
    return TrainResult(out_dir=out, device=str(device), history=history,
                       seconds=time.perf_counter() - t_call,
                       resumed_from=start_epoch if ckpt is not None else None,
                       best_epoch=best_epoch, stopped_early=stopped_early)


def _patience_ran_out(spec: TrainSpec, history: Sequence[EpochMetrics],
                      best_epoch: int | None) -> bool:
    return (spec.patience is not None and best_epoch is not None
            and len(history) - best_epoch >= spec.patience)


def _score(module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_name: str,
           batch: int) -> tuple[float, float]:
    """Mean loss (the plain loss: no weights, no smoothing) and accuracy over a split."""
    loss_sum, preds = _predict(module, x, y, loss_name, batch)
    return loss_sum / x.shape[0], float((preds == y).sum()) / x.shape[0]


def _log_tensorboard(writer: Any, m: EpochMetrics) -> None:
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "lr", "samples_per_s"):
        value = getattr(m, key)
        if value is not None:
            writer.add_scalar(key.replace("_", "/", 1) if key[:4] in ("trai", "val_", "test")
                              else key, value, m.epoch)
    writer.flush()


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _raise_if_nan(run: _Running, epoch: int, show: _Progress,
                  last_good: Callable[[], str]) -> None:
    bad = run.flush()
    if bad is not None:
        show.clear()
        step, value = bad
        raise TrainError(
            f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; training "
            f"stopped (try a lower lr). {_capital(last_good())}")


def _check_output(module: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as e:  # noqa: BLE001 - whatever the model raises, say it plainly
        raise TrainError(
            f"the model fails on a batch of shape {list(x.shape)}: {type(e).__name__}: {e}"
        ) from None
    finally:
        module.train(was_training)
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise TrainError(
            f"the model's output has shape {list(out.shape)}; training a classifier of "
            f"{num_classes} classes needs (batch, {num_classes})")


def _absolute_dataset(ds: DatasetSpec, base_dir: Path) -> dict[str, Any]:
    d = ds.model_dump(mode="json", exclude_none=True)
    path = resolve_path(ds, base_dir)
    if path is not None:
        d["path"] = str(path.resolve())
    return d


# ---------------------------------------------------------------- evaluate


def load_run_module(run_dir: Path, prefer: str | None = None,
                    weights: str = MODEL_FILE) -> nn.Module:
    """The module of a run: built from its ``model.py``, weights from ``model.pt``.

    ``model.py`` is executed; the first ``nn.Module`` subclass it defines (the one
    named ``prefer`` first) that can be built without arguments and takes the
    saved weights is used. Raises TrainError.
    """
    run_dir = Path(run_dir)
    src, weights_path = run_dir / SOURCE_FILE, run_dir / weights
    for p in (src, weights_path):
        if not p.is_file():
            raise TrainError(f"{run_dir} is not a finished training run: {p.name} is missing")
    state = _load_tensors(weights_path, "weights file")
    mod_name = f"_shapecheck_run_{abs(hash(str(src.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, src)
    assert spec is not None and spec.loader is not None
    py = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = py
    try:
        spec.loader.exec_module(py)
    except Exception as e:  # noqa: BLE001 - user code
        raise TrainError(f"{src} does not run: {type(e).__name__}: {e}") from None
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
    raise TrainError(
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
) -> EvalResult:
    """Accuracy, loss and confusion matrix of a trained run on a dataset.

    ``data`` defaults to the dataset the run was trained on; a relative path in it
    is taken from ``base_dir`` (default: the working directory). ``data`` naming
    the run's own dataset file is read with the run's dataset entry, so ``test``
    is the part held out from training, never the images trained on (``split="all"``
    scores every image). ``split`` is test, val, train or all (``shapecheck.data``).
    The images are normalised with the run's training mean/std, whatever the
    dataset entry says. ``module`` overrides rebuilding the model from the run's
    ``model.py``; ``weights`` (``model.pt`` or ``model_best.pt``) is loaded into it
    either way. Raises TrainError, DataError.
    """
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_FILE
    if not info_path.is_file():
        raise TrainError(f"{run_dir} is not a training run folder ({RUN_FILE} is missing)")
    info = load_run_info(run_dir).model_dump(mode="json")  # RunInfoError if damaged
    if weights != MODEL_FILE and not (run_dir / weights).is_file():
        raise TrainError(f"{run_dir} has no {weights}"
                         + (" (the run had no validation split)" if weights == BEST_FILE else ""))
    if module is None:
        module = load_run_module(run_dir, prefer=info.get("module_class"), weights=weights)
    else:
        try:
            module.load_state_dict(_load_tensors(run_dir / weights, "weights file"))
        except RuntimeError as e:
            raise TrainError(f"{run_dir / weights} does not fit the module: {e}") from None
    own = DatasetSpec.model_validate(info["dataset"])
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
    num_classes = int(info["num_classes"])
    x, y, where = load_split(
        data, input_shape=info["input_shape"], num_classes=num_classes, mean=info["mean"],
        std=info["std"], base_dir=base_dir if base_dir is not None else Path.cwd(),
        split=split, classes=info.get("classes"))
    dev = select_device(device)
    module.to(dev)
    x, y = x.to(dev), y.to(dev)
    _check_output(module, x[:2], num_classes)  # run.json's num_classes may not be the model's
    loss_sum, preds = _predict(module, x, y, info.get("loss", "cross_entropy"), batch_size)
    confusion = torch.bincount(y * num_classes + preds, minlength=num_classes * num_classes)
    matrix = confusion.view(num_classes, num_classes).cpu().tolist()
    n = int(y.shape[0])
    names = info.get("classes") or [str(i) for i in range(num_classes)]
    return EvalResult(
        accuracy=sum(matrix[i][i] for i in range(num_classes)) / n,
        loss=loss_sum / n, confusion=matrix, classes=list(names), num_samples=n,
        source=(f"whole dataset: {where}" if split == "all" else f"{split} split: {where}")
        + note + (f" ({weights})" if weights != MODEL_FILE else ""))


def _same_dataset(data: DatasetSpec, own: DatasetSpec, base_dir: Path | None) -> bool:
    """Whether ``data`` names the file or folder the run was trained on."""
    if data.format == "synthetic" or own.format == "synthetic":
        return data.format == own.format
    mine = resolve_path(data, base_dir if base_dir is not None else Path.cwd())
    theirs = resolve_path(own, None)
    if mine is None or theirs is None or (data.format not in (None, own.format)
                                          and own.format is not None):
        return False
    try:
        return mine.exists() and theirs.exists() and mine.samefile(theirs)
    except OSError:
        return False


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
