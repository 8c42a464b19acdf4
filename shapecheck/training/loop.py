"""The training loop: ``train()`` runs the epochs, checkpoints, resumes and stops."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import nn

from shapecheck.atomic import atomic_write, temp_name_prefix
from shapecheck.data import MemoryLimitError, load_dataset
from shapecheck.trainspec import OptimizerSpec, TrainSpec

from .base import (
    TrainError,
    _capital,
    _last_layer,
    _loss_fn,
    _plural,
    _predict,
    _rng_state,
    _set_rng_state,
    default_loss,
    select_device,
)
from .data import (
    _absolute_dataset,
    _check_batches,
    _check_output,
    _class_weights,
    _epoch_seed,
    augment,
    epoch_loader,
    stream_folder,
)
from .distributed import World, backend_for, setup, teardown, world_from_env
from .runfolder import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_VERSION,
    CURVES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RUN_FILE,
    RUN_FILES,
    SOURCE_FILE,
    EpochMetrics,
    TrainResult,
    _architecture_diff,
    _log_tensorboard,
    _out_dir,
    _read_checkpoint,
    _save_torch,
    _tensorboard,
    _tensorboard_available,
    _update_run_info,
    _write_curves,
    _write_metrics,
)

# Steps between two looks at the losses (each look is one device sync).
CHECK_EVERY = 25
PROGRESS_INTERVAL_S = 0.1
# Redraw curves.png at most this often while training; always at the end.
CURVES_INTERVAL_S = 5.0


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


class _InterruptFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps."""

    def __init__(self, distributed: bool = False) -> None:
        self.set = False
        self._old: dict[int, Any] = {}
        # A distributed rank gets Ctrl-C twice (from the terminal and passed on by the
        # launcher), and SIGTERM when the launcher stops it: neither may cut the checkpoint
        # the ranks agreed on short. The launcher's SIGKILL is the hard stop.
        self._distributed = distributed

    def __enter__(self) -> _InterruptFlag:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():
            sigs = [signal.SIGINT] + ([signal.SIGTERM] if self._distributed else [])
            for sig in sigs:
                old = signal.getsignal(sig)
                if old is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set and not self._distributed:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


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
    threads: int | None = None,
    backend: str = "auto",
    compile: bool = False,
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

    ``threads`` sets torch's intra-op threads for the run. Under torchrun (``WORLD_SIZE``
    in the environment) each process trains its share with DistributedDataParallel
    (``backend`` auto: gloo on the CPU, nccl on CUDA; see ``distributed``); rank 0 alone
    writes the run folder and logs. ``compile`` runs the module through torch.compile.
    """
    before = torch.get_num_threads()
    world = world_from_env()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with _deterministic(spec.deterministic):
            return _train(module, spec, name=name, input_shape=input_shape,
                          num_classes=num_classes, base_dir=base_dir, out_dir=out_dir,
                          model_source=model_source, resume=resume,
                          log=log if world.main else _quiet, progress=progress,
                          reinit=reinit, world=world, backend=backend, compile=compile)
    finally:
        torch.set_num_threads(before)  # --threads or a deterministic resume changed it
        teardown(world)


def _quiet(line: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for the run."""


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


def _best_epoch(history: Sequence[EpochMetrics]) -> int | None:
    """The epoch (1-based) of the best validation accuracy, ties to the lower loss."""
    scored = [m for m in history if m.val_acc is not None]
    if not scored:
        return None
    return max(scored, key=lambda m: (m.val_acc, -(m.val_loss or 0.0), -m.epoch)).epoch


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
    world: World,
    backend: str,
    compile: bool,
) -> TrainResult:
    t_call = time.perf_counter()
    if spec.dataset is None:
        raise TrainError("no dataset: give train.dataset in the spec (or --data)")
    base_dir = Path(base_dir)
    out = _out_dir(spec, name, base_dir, out_dir)
    device = select_device(spec.device)
    if world.distributed:
        device = setup(world, device, backend_for(device, backend))
    if spec.precision != "32" and device.type == "mps":
        raise TrainError(f"precision {spec.precision} is for cpu and cuda; train on mps in 32")
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
    streamed = spec.workers is not None
    data: Any
    if streamed:
        data = stream_folder(spec.dataset, input_shape=input_shape, num_classes=num_classes,
                             base_dir=base_dir, workers=int(spec.workers or 0))
    else:
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
    _check_batches(module, x_train, n, bs, spec.drop_last, device, world.size)
    class_weights = _class_weights(spec, data.y_train, num_classes)
    if class_weights is not None:
        class_weights = class_weights.to(device)

    if world.main:
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
        # Each rank draws its own dropout masks: a resume with the same number of
        # processes gives each its own generator back.
        rngs = ckpt.get("rng_ranks")
        _set_rng_state(rngs[world.rank] if rngs and len(rngs) == world.size else ckpt["rng"],
                       device)
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != world.size:
            log(f"note: the run trained in {_plural(saved_world, 'process')}, this one in "
                f"{world.size}; the batches are the same, but sums in another order differ "
                "in the last bits")
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
            "world_size": world.size,
        }
    elif world.main:
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
            "world_size": world.size,
            "torch_version": str(torch.__version__),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write(out / RUN_FILE, json.dumps(run_info, indent=2) + "\n")

    world.barrier()  # no rank reads or writes the folder before rank 0 has set it up
    show = _Progress(world.main and (sys.stderr.isatty() if progress is None else progress),
                     sys.stderr)
    train_loss_fn = functools.partial(_loss_fn(loss_name), weight=class_weights,
                                      **({"label_smoothing": spec.label_smoothing}
                                         if spec.label_smoothing else {}))
    eval_batch = max(2 * bs, 256)
    lr = spec.optimizer.effective_lr
    val_part = f"{data.num_val} validation and " if x_val is not None else ""
    log(f"training {name} on {device.type}: {n} training, {val_part}{x_test.shape[0]} test "
        f"images ({data.source}), {_plural(spec.epochs, 'epoch')}, batch {bs}"
        f"{' (last batch dropped)' if spec.drop_last and n % bs else ''}, "
        f"{spec.optimizer.type} lr {lr:g}, {loss_name}"
        + (f", {world.size} processes ({dist.get_backend()})" if world.distributed else "")
        + (f", {spec.precision}" if spec.precision != "32" else ""))
    best_epoch = _best_epoch(history)
    stopped_early = _patience_ran_out(spec, history, best_epoch)
    if stopped_early:
        log(f"nothing to do: the run stopped early at epoch {len(history)} (patience "
            f"{spec.patience}; best epoch {best_epoch})")
    elif start_epoch >= spec.epochs:
        log(f"nothing to do: the checkpoint has {_plural(start_epoch, 'epoch')}, the spec asks "
            f"for {spec.epochs}")
    # fp16 needs its loss scaled against underflow; bf16 has fp32's range and needs none.
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
    scaler = torch.amp.GradScaler(device.type) if spec.precision == "fp16" else None
    if scaler is not None and ckpt is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    schedule = spec.scheduler

    def autocast() -> Any:
        return (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())

    model: nn.Module = module
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        model = torch.compile(model)
    last_curves = time.perf_counter()
    writer: Any = None  # made with the first epoch's files, so a failed start leaves none

    def checkpoint(epoch: int, step: int, run: _Running | None, train_s: float = 0.0) -> None:
        # Collective: every rank comes here at the same step; rank 0 writes.
        rngs = world.gather(_rng_state(device))
        sums = world.sum([run.loss_sum, run.correct, run.seen]) if run is not None else None
        if not world.main:
            world.barrier()
            return
        _save_torch({
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "step": step,
            "model": _cpu_state(module),
            "optimizer": optimizer.state_dict(),
            "rng": rngs[0],
            "rng_ranks": rngs,
            "world_size": world.size,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "partial": None if sums is None else {
                "loss_sum": sums[0], "correct": int(sums[1]), "seen": int(sums[2]),
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
        world.barrier()  # no rank goes on (or exits) before the checkpoint is whole

    def last_good() -> str:
        done = len(history)
        return (f"the last good checkpoint (epoch {done}) is kept in {out}" if done
                else "no epoch had completed, so no checkpoint was written")

    saved = False  # whether a Ctrl-C has been answered with a checkpoint
    try:
        with _InterruptFlag(world.distributed) as interrupt:
            for epoch in range(start_epoch, spec.epochs if not stopped_early else start_epoch):
                t_epoch = time.perf_counter()
                first = start_step if (epoch == start_epoch and partial) else 0
                before_s = 0.0  # training seconds spent in this epoch before a resume
                if first:
                    assert partial is not None
                    before_s = float(partial.get("train_s", 0.0))
                    # The sums so far are the run's; rank 0 carries them, the others add.
                    run = _Running(partial["loss_sum"], partial["correct"], partial["seen"]) \
                        if world.main else _Running()
                else:
                    run = _Running()
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(
                    _epoch_seed(spec.seed, epoch)))
                batches: Any = None
                if streamed:
                    # The same batches as the in-memory path, read ahead by the workers.
                    batches = iter(epoch_loader(data.train_set, [
                        perm[s * bs:(s + 1) * bs][world.rank::world.size].tolist()
                        for s in range(first, steps)], int(spec.workers or 0),
                        device.type == "cuda"))
                else:
                    perm = perm.to(device)
                module.train()
                next_check = first + CHECK_EVERY
                next_draw = t_epoch + PROGRESS_INTERVAL_S
                seen_here = 0
                for step in range(first, steps):
                    idx = perm[step * bs:(step + 1) * bs]
                    share = idx.numel()
                    if world.distributed:
                        # This rank's share of the global batch, DistributedSampler's way.
                        idx = idx[world.rank::world.size]
                    # Advanced indexing, not index_select: the latter opens a parallel
                    # region per call, which costs dearly when other processes hold the cores.
                    if batches is not None:
                        xb, yb = next(batches)
                        xb = xb.to(device, non_blocking=True)
                        yb = yb.to(device, non_blocking=True)
                    else:
                        xb, yb = x_train[idx], y_train[idx]
                    if spec.augment is not None:
                        # Seeds far above any epoch's: draws of their own.
                        xb = augment(xb, spec.augment, _epoch_seed(spec.seed, 2**40 + (
                            epoch * steps + step) * world.size + world.rank))
                    if schedule is not None:
                        lr = schedule.lr_at(epoch * steps + step, steps, spec.epochs,
                                            spec.optimizer.effective_lr)
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                    optimizer.zero_grad(set_to_none=True)
                    with autocast():
                        output = model(xb)
                        loss = train_loss_fn(output, yb)
                    # DDP averages the ranks' gradients; weighting each share by its size
                    # makes that average the global batch's mean, as in one process.
                    scaled = loss * (idx.numel() * world.size / share) \
                        if world.distributed else loss
                    if scaler is not None:
                        scaler.scale(scaled).backward()
                        if spec.grad_clip is not None:
                            scaler.unscale_(optimizer)
                            nn.utils.clip_grad_norm_(module.parameters(), spec.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        scaled.backward()
                        if spec.grad_clip is not None:
                            nn.utils.clip_grad_norm_(module.parameters(), spec.grad_clip)
                        optimizer.step()
                    # argmax carries no graph; nothing here waits for the device.
                    run.add(step, loss.detach().float(), (output.argmax(1) == yb).sum(),
                            idx.numel())
                    seen_here += share
                    if world.any(interrupt.set):
                        _raise_if_nan(run, epoch, show, last_good, world)
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
                    due = step + 1 >= next_check
                    if world.distributed:
                        # The NaN check is collective, so its steps must not depend on
                        # the clock: the bar is drawn only at those steps.
                        due = due or step + 1 == steps
                        draw = draw and due
                    if draw or due:
                        _raise_if_nan(run, epoch, show, last_good, world)
                        next_check = step + 1 + CHECK_EVERY
                        if draw:
                            now = time.perf_counter()
                            next_draw = now + PROGRESS_INTERVAL_S
                            show.draw(epoch + 1, spec.epochs, step + 1, steps, run.loss, run.acc,
                                      seen_here / max(now - t_epoch, 1e-9))
                _raise_if_nan(run, epoch, show, last_good, world)
                train_s = before_s + time.perf_counter() - t_epoch
                if world.distributed:  # the epoch's sums over every rank
                    run.loss_sum, run.correct, run.seen = world.sum(
                        [run.loss_sum, run.correct, run.seen])
                # Every rank holds the same weights, so each scores alike; no exchange needed.
                test_loss, test_acc, test_top5 = _score(module, x_test, y_test, loss_name,
                                                        eval_batch, num_classes)
                val_loss = val_acc = val_top5 = None
                if x_val is not None and y_val is not None:
                    val_loss, val_acc, val_top5 = _score(module, x_val, y_val, loss_name,
                                                         eval_batch, num_classes)
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
                    val_loss=val_loss, val_acc=val_acc, val_top5=val_top5,
                    test_top5=test_top5))
                best_epoch = _best_epoch(history)
                # The checkpoint first: if it cannot be written, nothing else moves on.
                checkpoint(epoch + 1, 0, None)
                if world.main:
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
                if world.main and (final or stopped_early or
                                   time.perf_counter() - last_curves >= CURVES_INTERVAL_S):
                    _write_curves(out / CURVES_FILE, history, name)
                    last_curves = time.perf_counter()
                show.clear()
                m = history[-1]
                val = (f"val loss {m.val_loss:.4f}  val acc {m.val_acc:.2%}  "
                       if m.val_loss is not None and m.val_acc is not None else "")
                top5 = f"top-5 {m.test_top5:.2%}  " if m.test_top5 is not None else ""
                log(f"epoch {m.epoch}/{spec.epochs}  train loss {m.train_loss:.4f}  {val}"
                    f"test loss {m.test_loss:.4f}  test acc {m.test_acc:.2%}  {top5}"
                    f"{m.samples_per_s:,.0f} samples/s  ({m.seconds:.1f} s)")
                if stopped_early:
                    log(f"stopping early: no better validation accuracy for "
                        f"{_plural(spec.patience or 0, 'epoch')}; the best, epoch {best_epoch}, "
                        f"is in {BEST_FILE}")
                    break
                if world.any(interrupt.set):
                    log(f"interrupted after epoch {epoch + 1}; checkpoint saved in {out} "
                        "(continue with --resume)")
                    saved = True
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        show.clear()
        if not saved:
            log(f"interrupted; {last_good()}")
        if history and world.main:
            _write_curves(out / CURVES_FILE, history, name)
        raise
    except TrainError:
        if history and world.main:
            _write_curves(out / CURVES_FILE, history, name)
        raise
    except RuntimeError as e:
        show.clear()
        text = str(e)
        if world.distributed and (isinstance(e, dist.DistError) or any(
                w in text.lower() for w in ("gloo", "nccl", "connection", "peer"))):
            # A peer died or hung up: this rank's state may be a step ahead of the
            # others', so nothing is saved; the last checkpoint stays as it was.
            first_line = text.splitlines()[0] if text else type(e).__name__
            raise TrainError(f"another process of the run stopped ({first_line[:160]}); "
                             f"{last_good()}") from None
        if compile and "_dynamo" in type(e).__module__ + "".join(
                c.__module__ for c in type(e).__mro__):
            raise TrainError(f"torch.compile failed on this model ({text.splitlines()[0][:200]})"
                             f"; train without --compile. {_capital(last_good())}") from None
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
    if world.main and history and not (out / CURVES_FILE).exists():
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
           batch: int, num_classes: int) -> tuple[float, float, float | None]:
    """Mean loss (the plain loss: no weights, no smoothing), accuracy and, with 10 or more
    classes, top-5 accuracy over a split."""
    top5: list[int] | None = [] if num_classes >= 10 else None
    loss_sum, preds = _predict(module, x, y, loss_name, batch, top5)
    n = x.shape[0]
    return loss_sum / n, float((preds == y).sum()) / n, (top5[0] / n if top5 else None)


def _raise_if_nan(run: _Running, epoch: int, show: _Progress,
                  last_good: Callable[[], str], world: World) -> None:
    bad = run.flush()
    if world.any(bad is not None):
        show.clear()
        if bad is None:
            raise TrainError(f"the loss became NaN or infinite in another process at epoch "
                             f"{epoch + 1}; training stopped (try a lower lr). "
                             f"{_capital(last_good())}")
        step, value = bad
        raise TrainError(
            f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; training "
            f"stopped (try a lower lr). {_capital(last_good())}")


