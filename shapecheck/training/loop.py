"""The loop: ``train()`` sets a run up (``setup``, ``resume``), then runs its epochs step by
step, scores each, checkpoints, and stops: at the last epoch, when patience runs out, on
Ctrl-C, on a NaN loss, or when another process of a distributed run is lost."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import nn

from ..core.trainspec import TrainSpec
from .augment import mix
from .base import (
    RunFolderError,
    TrainError,
    capital,
    loss_function,
    plural,
    rng_state,
    select_device,
)
from .checkpoint import Checkpoint, Partial
from .data import (
    absolute_dataset,
    augment,
    check_batches,
    check_output,
    class_weights_for,
    epoch_loader,
    epoch_seed,
)
from .dense import PREDICTIONS_FILE, dense_loss, pixel_hits, score_dense, write_predictions
from .distributed import (
    PeerLostError,
    World,
    lost_peer,
    stop_with_launcher,
    teardown,
    world_from_env,
)
from .ema import EMA_FILE, Ema
from .init import freeze
from .init import load as load_weights
from .request import TrainRequest
from .resume import note_normalisation, read_checkpoint, restore
from .runfolder import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CURVES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    EpochMetrics,
    TrainResult,
    log_tensorboard,
    open_folder,
    resolve_out_dir,
    save_torch,
    start_afresh,
    tensorboard_writer,
    write_curves,
    write_metrics,
)
from .runinfo import RUN_MARK, RunInfo, record_resume, run_folder_problem
from .scoring import score_split
from .setup import (
    Precision,
    Run,
    check_spec,
    choose_device,
    make_optimizer,
    place,
    read_data,
    task_of,
    wrap,
)
from .syncbn import convert as sync_batchnorm

# Steps between two looks at the losses (each look is one device sync).
CHECK_EVERY = 25
PROGRESS_INTERVAL_S = 0.1
# Redraw curves.png at most this often while training; always at the end.
CURVES_INTERVAL_S = 5.0


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _params_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values()
               if t.is_floating_point())


# The signals that stop a run at the next step with an exact checkpoint: Ctrl-C, a
# scheduler's or launcher's SIGTERM, and SIGUSR1, which SLURM sends before its time limit.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1")
                     if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal after saving its checkpoint; ``signum`` says which
    (the command exits 128 + signum, as a process killed by it would)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class _InterruptFlag:
    """Turns the first stop signal into a flag the loop checks between steps."""

    def __init__(self, distributed: bool = False) -> None:
        self.set = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        # A distributed rank gets Ctrl-C twice (from the terminal and passed on by the
        # launcher), and SIGTERM when the launcher stops it: neither may cut the checkpoint
        # the ranks agreed on short. The launcher's SIGKILL is the hard stop.
        self._distributed = distributed

    def __enter__(self) -> _InterruptFlag:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                old = signal.getsignal(sig)
                if old is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set and not self._distributed:  # a second signal: stop now
            raise Stopped(signum)
        self.set = True
        self.signum = self.signum or signum

    def stopped(self) -> Stopped:
        return Stopped(self.signum or signal.SIGINT)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Progress:
    """One status line on a terminal, redrawn in place; silent elsewhere."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled = enabled
        self.stream = stream
        self._width = 0

    def draw(self, epoch: int, epochs: int, step: int, steps: int, loss: float,
             acc: float | None, rate: float) -> None:
        if not self.enabled:
            return
        filled = int(16 * step / max(steps, 1))
        bar = "=" * filled + (">" if filled < 16 else "") + " " * max(0, 15 - filled)
        line = (f"epoch {epoch}/{epochs} [{bar}] {step}/{steps} loss {loss:.4f} "
                + (f"acc {acc:.2%} " if acc is not None else "") + f"{rate:,.0f} samples/s")
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

    def __init__(self, loss_sum: float = 0.0, correct: int = 0, seen: int = 0,
                 pixels: int | None = None) -> None:
        self.loss_sum = loss_sum
        self.correct = correct
        self.seen = seen
        # What the accuracy counts: samples, or a segmentation's pixels (the ignored left out).
        self.pixels = seen if pixels is None else pixels
        self._losses: list[torch.Tensor] = []
        self._hits: list[torch.Tensor] = []
        self._counted: list[torch.Tensor | int] = []
        self._sizes: list[int] = []
        self._first_step = 0

    def add(self, step: int, loss: torch.Tensor, hits: torch.Tensor, size: int,
            counted: torch.Tensor | int | None = None) -> None:
        if not self._losses:
            self._first_step = step
        self._losses.append(loss)
        self._hits.append(hits)
        self._counted.append(size if counted is None else counted)
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
        self.pixels += int(sum(int(c) for c in self._counted))
        self.seen += sum(self._sizes)
        self._losses.clear()
        self._hits.clear()
        self._counted.clear()
        self._sizes.clear()
        return None

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def acc(self) -> float:
        return self.correct / self.pixels if self.pixels else 0.0


# ---------------------------------------------------------------- train


def train(module: nn.Module, spec: TrainSpec, **options: Any) -> TrainResult:
    """Train ``module`` as ``spec`` says and keep the run in a folder; ``options`` are the other
    fields of ``TrainRequest`` (``name``, ``input_shape``, ``num_classes``, ``base_dir``,
    ``out_dir`` and ``model_source`` are required). See ``run_training``."""
    return run_training(TrainRequest(module, spec, **options))


def run_training(request: TrainRequest) -> TrainResult:
    """Train ``request.module`` as ``request.spec`` says and keep the run in a folder.

    A run folder that holds a previous run's weights or checkpoint is continued with
    ``resume``, or replaced with ``fresh``; with neither, it is left as it is and
    RunFolderError says so. A folder that is not a run folder (runinfo: not empty, and no
    run.json of shapecheck's) is never written, nor are its files removed, unless ``force``.

    Raises DataError (the data cannot be read or does not fit the spec; a
    MemoryLimitError when it does not fit in memory), TrainError (no dataset, no
    device, a bad resume, the model's output or a batch does not fit, a NaN/inf
    loss), and Stopped (a KeyboardInterrupt) after saving a checkpoint on Ctrl-C, SIGTERM
    or SIGUSR1.

    Under torchrun (``WORLD_SIZE`` in the environment) each process trains its share with
    DistributedDataParallel (see ``distributed``); rank 0 alone writes the run folder and
    logs. ``spec.freeze`` names layers whose parameters do not train.
    """
    spec = request.spec
    before = torch.get_num_threads()
    world = world_from_env()
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    elif not world.distributed:  # the launcher gives each rank one thread
        _share_the_cores(spec, request.log)
    try:
        with _deterministic(spec.deterministic), stop_with_launcher(world):
            result = _train(request if world.main else replace(request, log=_quiet), world)
        # Every rank leaves together: a rank that tore its process group down while rank 0
        # still wrote the results could make rank 0 abort at exit (gloo).
        world.barrier()
        return result
    finally:
        torch.set_num_threads(before)  # --threads or a deterministic resume changed it
        teardown(world)


def threads_for_load(load: float, cores: int, current: int) -> int | None:
    """Fewer intra-op threads than ``current`` when the load average says other processes
    hold some of the ``cores`` (a thread per busy core fights them for it, and every parallel
    region then waits for the slowest thread); None to keep ``current``."""
    free = max(1, int(cores - load + 0.5))
    return free if free < current else None


def _share_the_cores(spec: TrainSpec, log: Callable[[str], Any]) -> None:
    if not hasattr(os, "getloadavg"):
        return
    try:
        if select_device(spec.device).type != "cpu":
            return
    except TrainError:
        return  # said later, with the run's other checks
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    load = os.getloadavg()[0]
    fewer = threads_for_load(load, cores, torch.get_num_threads())
    if fewer is not None:
        log(f"note: the load average ({load:.1f}) says other processes share the {cores} "
            f"cores: training with {plural(fewer, 'thread')} instead of "
            f"{torch.get_num_threads()} (--threads N chooses)")
        torch.set_num_threads(fewer)


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


def _train(request: TrainRequest, world: World) -> TrainResult:
    t_call = time.perf_counter()
    run, ckpt = _set_up(request, world)
    if world.main:
        open_folder(run.out)
    if ckpt is not None:
        restore(run, ckpt)
    elif world.main:
        start_afresh(run.out, request.model_source, _run_info(run), request.log)
    loop = _Loop(run, request.progress, request.compile)
    try:
        loop.start()
        loop.run_epochs()
    except RuntimeError as e:
        reason = lost_peer(e) if world.distributed else None
        if reason is None:
            raise
        # This rank's state may be a step ahead of the others', so nothing is saved: the
        # last checkpoint stays as it was.
        raise PeerLostError(f"another process of the run stopped ({reason}); "
                            f"{run.last_good()}"
                            + ("; continue with --resume" if run.history else "")) from None
    return loop.result(t_call)


def _set_up(request: TrainRequest, world: World) -> tuple[Run, Checkpoint | None]:
    """The run before its folder is touched, and the checkpoint it resumes from: whatever
    refuses the run (the spec, the device, the checkpoint, the data, the model's output or
    batches) does so before a file is written."""
    r = request
    module, spec, log, init = r.module, r.spec, r.log, r.init
    input_shape, num_classes, base_dir = r.input_shape, r.num_classes, Path(r.base_dir)
    if spec.dataset is None:
        raise TrainError("no dataset: give train.dataset in the spec (or --data)")
    if init is not None and r.resume:
        raise TrainError("--init starts a new run from weights; --resume continues the run "
                         "folder's checkpoint: give one of them")
    out = resolve_out_dir(spec, r.name, base_dir, r.out_dir)
    # Rank 0 writes the folder; it alone checks it (the others would see its first files).
    if world.main and (problem := run_folder_problem(out, r.force,
                                                     replace=r.resume or r.fresh)):
        raise RunFolderError(problem)
    device = choose_device(spec, world, r.backend)
    task, output_shape = task_of(module, spec, input_shape)
    dense = task != "classify"
    loss_name = check_spec(module, spec, device, log, task)
    dataset_entry = absolute_dataset(spec.dataset, base_dir)
    ckpt = read_checkpoint(out, module, input_shape, num_classes) if r.resume else None
    loaded = read_data(module, spec, input_shape=input_shape, num_classes=num_classes,
                       base_dir=base_dir, log=log, task=task, output_shape=output_shape)
    if ckpt is not None:
        note_normalisation(ckpt, loaded, log)
    data = place(module, loaded, spec, device, fresh=ckpt is None and r.reinit)
    if init is not None:
        load_weights(module, init)
        log(f"starting from the weights of {init.source}" + (
            f"; {', '.join(init.skipped)} left at {'their' if len(init.skipped) > 1 else 'its'}"
            " fresh initialisation (--init-skip-head)" if init.skipped else ""))
    if spec.freeze:
        frozen = freeze(module, spec.freeze)
        log(f"note: {', '.join(spec.freeze)} frozen: {frozen:,} of "
            f"{sum(p.numel() for p in module.parameters()):,} parameters do not train")
    check_output(module, data.x_train[:2], num_classes, output_shape if dense else None)
    if spec.drop_last and spec.accumulate > 1 and \
            data.x_train.shape[0] < spec.batch_size * spec.accumulate:
        raise TrainError(f"drop_last with batch_size {spec.batch_size} × accumulate "
                         f"{spec.accumulate} leaves no step: the training split has "
                         f"{data.x_train.shape[0]} samples")
    check_batches(module, data.x_train, data.x_train.shape[0], spec.batch_size,
                   spec.drop_last, device, world.size)
    class_weights = class_weights_for(spec, loaded.y_train, num_classes)
    run = Run(spec=spec, name=r.name, world=world, device=device, out=out, log=log,
              module=module, loss_name=loss_name, data=data,
              class_weights=class_weights.to(device) if class_weights is not None else None,
              dataset_entry=dataset_entry, input_shape=input_shape, num_classes=num_classes,
              optimizer=make_optimizer(module, spec.optimizer),
              precision=Precision.of(spec, device), task=task,
              output_shape=output_shape if dense else None,
              init_from=init.source if init is not None else None)
    return run, ckpt


def _run_info(run: Run) -> RunInfo:
    """run.json of a new run: what ``eval`` needs to rebuild the module and score it."""
    data = run.data.loaded
    return RunInfo(
        shapecheck_run_folder=RUN_MARK[1],
        name=run.name,
        input_shape=run.input_shape,
        num_classes=run.num_classes,
        classes=data.classes,
        mean=data.mean,
        std=data.std,
        loss=run.loss_name,
        task=run.task,
        output_shape=run.output_shape,
        module_class=type(run.module).__name__,
        dataset=run.dataset_entry,
        train=run.spec.model_dump(mode="json"),
        splits={"train": run.n, "val": data.num_val, "test": data.num_test},
        threads=torch.get_num_threads(),
        world_size=run.world.size,
        init=run.init_from,
        torch_version=str(torch.__version__),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


# ---------------------------------------------------------------- the epochs


class _Loop:
    """The epochs of a set-up run, step by step, and what they share besides the ``Run``."""

    def __init__(self, run: Run, progress: bool | None, compile: bool) -> None:
        self.run = run
        self.compile = compile
        spec = run.spec
        self.show = _Progress(run.world.main and (sys.stderr.isatty() if progress is None
                                                  else progress), sys.stderr)
        if run.task == "classify":
            self.train_loss = functools.partial(
                loss_function(run.loss_name), weight=run.class_weights,
                **({"label_smoothing": spec.label_smoothing} if spec.label_smoothing else {}))
        else:
            self.train_loss = dense_loss(run.task, run.loss_name, run.class_weights,
                                         spec.label_smoothing)
        self.eval_batch = max(2 * spec.batch_size, 256)
        self.lr = spec.optimizer.effective_lr  # the rate of the latest step
        self.best_epoch = _best_epoch(run.history, run.task, spec.monitor)
        self.stopped_early = _patience_ran_out(spec, run.history, self.best_epoch, run.task)
        self.model: nn.Module = run.module  # as it trains: in DDP, compiled
        self.interrupt = _InterruptFlag(run.world.distributed)
        self.saved = False  # whether a Ctrl-C has been answered with a checkpoint
        self.writer: Any = None  # made with the first epoch's files: a failed start leaves none
        self.ema = (Ema(spec.ema.decay, run.ema_state).to(run.device)
                    if spec.ema is not None else None)
        self.last_curves = time.perf_counter()

    def start(self) -> None:
        """Every rank sets off together: the headline, then the module as it trains."""
        run, spec = self.run, self.run.spec
        run.world.barrier()  # no rank reads or writes the folder before rank 0 has set it up
        n, bs = run.n, spec.batch_size
        val_part = (f"{run.data.loaded.num_val} validation and "
                    if run.data.x_val is not None else "")
        run.log(f"training {run.name} on {run.device.type}: {n} training, {val_part}"
                f"{run.data.x_test.shape[0]} test images ({run.data.loaded.source}), "
                f"{plural(spec.epochs, 'epoch')}, batch {bs}"
                + (f" × {spec.accumulate} accumulated" if spec.accumulate > 1 else "")
                + f"{' (last batch dropped)' if spec.drop_last and n % (bs * spec.accumulate) else ''}, "
                f"{spec.optimizer.type} lr {self.lr:g}, {run.loss_name}"
                + (f", {run.world.size} processes ({dist.get_backend()})"
                   if run.world.distributed else "")
                + (f", {spec.precision}" if spec.precision != "32" else ""))
        if self.stopped_early:
            run.log(f"nothing to do: the run stopped early at epoch {len(run.history)} "
                    f"(patience {spec.patience}; best epoch {self.best_epoch})")
        elif run.start_epoch >= spec.epochs:
            run.log(f"nothing to do: the checkpoint has {plural(run.start_epoch, 'epoch')}, "
                    f"the spec asks for {spec.epochs}")
        if run.world.distributed and spec.sync_bn:
            synced = sync_batchnorm(run.module, run.device)
            if synced:
                run.log(f"note: {plural(synced, 'BatchNorm layer')} normalised over the global "
                        "batch, as in one process (SyncBatchNorm; --no-sync-bn keeps each "
                        "process's own statistics)")
        self.model = wrap(run.module, run.world, run.device, self.compile)
        self.last_curves = time.perf_counter()

    def run_epochs(self) -> None:
        """The epochs left; on a stop, what can be kept is, and the error says what was."""
        run = self.run
        end = run.start_epoch if self.stopped_early else run.spec.epochs
        try:
            with self.interrupt:
                for epoch in range(run.start_epoch, end):
                    if self._epoch(epoch):
                        break
        except KeyboardInterrupt:
            self.show.clear()
            if not self.saved:
                run.log(f"interrupted; {run.last_good()}")
            self._curves_so_far()
            raise
        except TrainError:
            self._curves_so_far()
            raise
        except RuntimeError as e:
            self.show.clear()
            explained = self._explain(e)
            if explained is None:
                raise
            raise explained from None
        finally:
            if self.writer is not None:
                self.writer.close()

    def result(self, t_call: float) -> TrainResult:
        run = self.run
        if run.world.main and run.history and not (run.out / CURVES_FILE).exists():
            write_curves(run.out / CURVES_FILE, run.history, run.name, run.task)
        if run.world.main and run.history and run.task != "classify":
            write_predictions(run.out / PREDICTIONS_FILE, run.module, run.data.x_test,
                              run.data.y_test, run.task, run.data.loaded.classes)
        return TrainResult(out_dir=run.out, device=str(run.device), history=run.history,
                           seconds=time.perf_counter() - t_call,
                           resumed_from=run.start_epoch if run.resumed else None,
                           best_epoch=self.best_epoch, stopped_early=self.stopped_early)

    # ------------------------------------------------------------ one epoch

    def _epoch(self, epoch: int) -> bool:
        """One epoch: its steps, its scores, its files. True when patience has run out."""
        run, spec, world = self.run, self.run.spec, self.run.world
        t_epoch = time.perf_counter()
        sums, first, before_s = self._sums_at_start(epoch)
        self._steps(epoch, first, sums, t_epoch, before_s)
        self._raise_if_nan(sums, epoch)
        train_s = before_s + time.perf_counter() - t_epoch
        if world.distributed:  # the epoch's sums over every rank
            loss_sum, correct, seen, pixels = world.sum(
                [sums.loss_sum, sums.correct, sums.seen, sums.pixels])
            sums.loss_sum, sums.correct, sums.seen, sums.pixels = (
                loss_sum, int(correct), int(seen), int(pixels))
        run.history.append(self._scores(epoch, sums, train_s, t_epoch))
        self.best_epoch = _best_epoch(run.history, run.task, spec.monitor)
        self._save_epoch(epoch)
        final = epoch + 1 == spec.epochs
        self.stopped_early = _patience_ran_out(spec, run.history, self.best_epoch, run.task)
        if world.main and (final or self.stopped_early or
                           time.perf_counter() - self.last_curves >= CURVES_INTERVAL_S):
            write_curves(run.out / CURVES_FILE, run.history, run.name, run.task)
            self.last_curves = time.perf_counter()
        self.show.clear()
        self._log_epoch(run.history[-1])
        if self.stopped_early:
            watched = "loss" if spec.monitor == "loss" else _WATCHED[run.task]
            run.log(f"stopping early: no better validation {watched} for "
                    f"{plural(spec.patience or 0, 'epoch')}; the best, epoch "
                    f"{self.best_epoch}, is in {BEST_FILE}")
            return True
        if world.any(self.interrupt.set):
            run.log(f"{self._stopped_by()} after epoch {epoch + 1}; checkpoint saved in "
                    f"{run.out} (continue with --resume)")
            self.saved = True
            raise self.interrupt.stopped()
        return False

    def _sums_at_start(self, epoch: int) -> tuple[_Running, int, float]:
        """The epoch's running sums, its first step, and its training seconds so far: those
        of the checkpoint when a resume starts inside this epoch."""
        run = self.run
        if epoch == run.start_epoch and run.partial and run.start_step:
            p = run.partial
            # The sums so far are the run's; rank 0 carries them, the others add.
            sums = (_Running(p.loss_sum, p.correct, p.seen, p.pixels)
                    if run.world.main else _Running())
            return sums, run.start_step, float(p.train_s)
        return _Running(), 0, 0.0

    def _steps(self, epoch: int, first: int, sums: _Running, t_epoch: float,
               before_s: float) -> None:
        """The epoch's steps from ``first`` on, with the progress bar and the NaN checks."""
        run, world, steps = self.run, self.run.world, self.run.steps
        run.module.train()
        next_check = first + CHECK_EVERY
        next_draw = t_epoch + PROGRESS_INTERVAL_S
        seen_here = 0
        for step, xb, yb, size, global_size, parts in self._batches(epoch, first):
            loss, output = self._step(epoch, step, xb, yb, size, global_size, parts)
            # argmax carries no graph; nothing here waits for the device.
            if run.task == "segment":
                hits, counted = pixel_hits(output.detach(), yb)
                sums.add(step, loss.detach().float(), hits, size, counted)
            elif run.task == "regress":  # no accuracy: the scores are the errors
                sums.add(step, loss.detach().float(), torch.zeros((), dtype=torch.int64), size,
                         0)
            else:  # mixed (soft) targets count as their larger share's class
                labels = yb.argmax(1) if yb.is_floating_point() else yb
                sums.add(step, loss.detach().float(), (output.argmax(1) == labels).sum(), size)
            seen_here += global_size
            if world.any(self.interrupt.set):
                self._stop_mid_epoch(epoch, step, sums, before_s, t_epoch)
            every = run.spec.checkpoint_every
            if every and (epoch * steps + step + 1) % every == 0 and step + 1 < steps:
                self._periodic_checkpoint(epoch, step, sums, before_s, t_epoch)
            draw = self.show.enabled and (step + 1 == steps
                                          or time.perf_counter() >= next_draw)
            due = step + 1 >= next_check
            if world.distributed:
                # The NaN check is collective, so its steps must not depend on the clock:
                # the bar is drawn only at those steps.
                due = due or step + 1 == steps
                draw = draw and due
            if draw or due:
                self._raise_if_nan(sums, epoch)
                next_check = step + 1 + CHECK_EVERY
                if draw:
                    now = time.perf_counter()
                    next_draw = now + PROGRESS_INTERVAL_S
                    self.show.draw(epoch + 1, run.spec.epochs, step + 1, steps, sums.loss,
                                   None if run.task == "regress" else sums.acc,
                                   seen_here / max(now - t_epoch, 1e-9))

    def _mine(self, global_size: int) -> tuple[torch.Tensor, list[int]]:
        """This rank's samples of a step's global batch, as positions in it, and how many
        of them fall in each of its ``accumulate`` parts of batch_size samples. Each part is
        shared DistributedSampler's way: every world-size-th sample from the rank's."""
        bs, world = self.run.spec.batch_size, self.run.world
        parts = [torch.arange(lo + world.rank, min(lo + bs, global_size), world.size)
                 for lo in range(0, global_size, bs)]
        return torch.cat(parts), [p.numel() for p in parts]

    def _batches(self, epoch: int, first: int
                 ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, int, int, list[int]]]:
        """(step, images, labels, this rank's batch size, the global batch's size, this
        rank's samples in each accumulated part) for the epoch's steps from ``first`` on, in
        the order (seed, epoch) gives."""
        run, spec, world, data = self.run, self.run.spec, self.run.world, self.run.data
        bs, steps = spec.batch_size * spec.accumulate, run.steps
        perm = torch.randperm(run.n, generator=torch.Generator().manual_seed(
            epoch_seed(spec.seed, epoch)))
        streamed: Any = None
        if data.streamed:
            # The same batches as the in-memory path, read ahead by the workers.
            streamed = iter(epoch_loader(data.loaded.train_set, [
                perm[s * bs:(s + 1) * bs][self._mine(perm[s * bs:(s + 1) * bs].numel())[0]]
                .tolist() for s in range(first, steps)], int(spec.workers or 0),
                run.device.type == "cuda"))
        else:
            perm = perm.to(run.device)
        for step in range(first, steps):
            idx = perm[step * bs:(step + 1) * bs]
            global_size = idx.numel()
            positions, parts = self._mine(global_size)
            if world.distributed or spec.accumulate > 1:
                idx = idx[positions.to(idx.device)]
            if streamed is not None:
                xb, yb = next(streamed)
                xb = xb.to(run.device, non_blocking=True)
                yb = yb.to(run.device, non_blocking=True)
            else:
                # Advanced indexing, not index_select: the latter opens a parallel
                # region per call, which costs dearly when other processes hold the cores.
                xb, yb = data.x_train[idx], data.y_train[idx]
            if spec.augment is not None:
                # Seeds far above any epoch's: draws of their own, one set per global batch
                # whatever the number of processes, each rank taking its samples' draws.
                seed = epoch_seed(spec.seed, 2**40 + epoch * steps + step)
                share = (positions, global_size) if world.distributed else None
                if run.task == "classify":
                    xb = augment(xb, spec.augment, seed, share=share,
                                 norm=(data.loaded.mean, data.loaded.std))
                else:  # the mask or target image moves with its image
                    xb, yb = augment(xb, spec.augment, seed, yb, share=share)
                a = spec.augment
                if a.mixup is not None or a.cutmix is not None:
                    # One draw per global batch; each sample mixed with the one before it in
                    # this rank's share. The targets become soft.
                    g = torch.Generator().manual_seed(
                        epoch_seed(spec.seed, 2**41 + epoch * steps + step))
                    xb, yb = mix(xb, yb, g, run.num_classes, a.mixup, a.cutmix)
            yield step, xb, yb, idx.numel(), global_size, parts

    def _step(self, epoch: int, step: int, xb: torch.Tensor, yb: torch.Tensor, size: int,
              global_size: int, parts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on this rank's ``size`` samples of the global batch, their
        gradients accumulated over its ``parts`` (one forward and backward pass each); (their
        mean loss, the module's output)."""
        run, spec, optimizer = self.run, self.run.spec, self.run.optimizer
        if spec.scheduler is not None:
            self.lr = spec.scheduler.lr_at(epoch * run.steps + step, run.steps, spec.epochs,
                                           spec.optimizer.effective_lr,
                                           [m.val_loss for m in run.history[:epoch]])
            for group in optimizer.param_groups:
                group["lr"] = self.lr
        optimizer.zero_grad(set_to_none=True)
        scaler = run.precision.scaler
        losses, outputs = [], []
        pieces = [p for p in parts if p]
        for i, (xp, yp) in enumerate(zip(xb.split(pieces), yb.split(pieces))):
            last = i == len(pieces) - 1
            # DDP exchanges the gradients once, after the last part.
            no_sync = getattr(self.model, "no_sync", None)
            quiet = no_sync() if no_sync is not None and not last else contextlib.nullcontext()
            with quiet:
                with run.precision.autocast():
                    output = self.model(xp)
                    loss = self.train_loss(output, yp)
                # Each part's mean loss weighted by its share of the global batch: the summed
                # gradients (averaged by DDP over the ranks) are the global batch's mean's.
                share = xp.shape[0] * run.world.size / global_size
                scaled = loss * share if share != 1 else loss
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            losses.append(loss.detach() * xp.shape[0])
            outputs.append(output.detach() if len(pieces) > 1 else output)
        if scaler is not None:
            if spec.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(run.module.parameters(), spec.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            if spec.grad_clip is not None:
                nn.utils.clip_grad_norm_(run.module.parameters(), spec.grad_clip)
            optimizer.step()
        if self.ema is not None:
            self.ema.update(run.module)
        if len(pieces) == 1:
            return loss, outputs[0]
        return torch.stack(losses).sum() / size, torch.cat(outputs)

    def _stop_mid_epoch(self, epoch: int, step: int, sums: _Running, before_s: float,
                        t_epoch: float) -> None:
        """A stop signal between two steps: an exact checkpoint of this position, then
        Stopped."""
        run = self.run
        self._raise_if_nan(sums, epoch)
        if not _params_finite(run.module):
            raise TrainError(f"the weights became NaN or infinite in epoch {epoch + 1}; "
                             f"stopped. {capital(run.last_good())}")
        self._checkpoint(epoch, step + 1, sums, before_s + time.perf_counter() - t_epoch)
        self.show.clear()
        run.log(f"{self._stopped_by()} at epoch {epoch + 1}, step {step + 1}/{run.steps}; "
                f"checkpoint saved in {run.out} (continue with --resume)")
        self.saved = True
        raise self.interrupt.stopped()

    def _stopped_by(self) -> str:
        signum = self.interrupt.signum
        if signum is None or signum == signal.SIGINT:
            return "interrupted"
        return f"stopped by {signal.Signals(signum).name}"

    def _periodic_checkpoint(self, epoch: int, step: int, sums: _Running, before_s: float,
                             t_epoch: float) -> None:
        """checkpoint_every: an exact checkpoint of this position inside a long epoch."""
        self._raise_if_nan(sums, epoch)  # the checkpoint's sums are the flushed ones
        self._checkpoint(epoch, step + 1, sums, before_s + time.perf_counter() - t_epoch)

    # ------------------------------------------------------------ the end of an epoch

    def _scores(self, epoch: int, sums: _Running, train_s: float,
                t_epoch: float) -> EpochMetrics:
        """The epoch's line of metrics.csv: its training sums, then the validation and test
        scores. TrainError when the weights are no longer finite."""
        run, data = self.run, self.run.data
        if run.task != "classify":
            return self._dense_scores(epoch, sums, train_s, t_epoch)
        # Each rank scores its share of the batches; every rank gets the whole split's scores.
        def score(x: Any, y: torch.Tensor) -> tuple[float, float, float | None]:
            return score_split(run.module, x, y, run.loss_name, self.eval_batch,
                               run.num_classes, run.world, int(run.spec.workers or 0))

        test_loss, test_acc, test_top5 = score(data.x_test, data.y_test)
        val_loss = val_acc = val_top5 = None
        if data.x_val is not None and data.y_val is not None:
            val_loss, val_acc, val_top5 = score(data.x_val, data.y_val)
        if not math.isfinite(test_loss) or not _params_finite(run.module):
            self.show.clear()
            raise TrainError(
                f"the weights became NaN or infinite in epoch {epoch + 1} (test loss "
                f"{test_loss}); stopped. {capital(run.last_good())}")
        ema_loss = ema_acc = None
        if self.ema is not None and self.ema.state is not None:
            ema_loss, ema_acc, _ = score_split(
                self.ema.module(run.module), data.x_test, data.y_test, run.loss_name,
                self.eval_batch, run.num_classes, run.world, int(run.spec.workers or 0))
        return EpochMetrics(
            ema_test_loss=ema_loss, ema_test_acc=ema_acc,
            epoch=epoch + 1, train_loss=sums.loss, train_acc=sums.acc,
            test_loss=test_loss, test_acc=test_acc, lr=self.lr,
            # The whole epoch's samples over its training time, a resume's part included.
            samples_per_s=sums.seen / max(train_s, 1e-9),
            seconds=time.perf_counter() - t_epoch,
            val_loss=val_loss, val_acc=val_acc, val_top5=val_top5, test_top5=test_top5)

    def _dense_scores(self, epoch: int, sums: _Running, train_s: float,
                      t_epoch: float) -> EpochMetrics:
        """A dense task's line: each rank scores a share of each split, the sums are added."""
        run, data = self.run, self.run.data
        assert run.output_shape is not None

        def score(x: Any, y: torch.Tensor) -> Any:
            return score_dense(run.module, x, y, run.task, run.loss_name, self.eval_batch,
                               run.output_shape[0], run.world)

        test = score(data.x_test, data.y_test)
        val = score(data.x_val, data.y_val) if data.x_val is not None else None
        if not math.isfinite(test.loss) or not _params_finite(run.module):
            self.show.clear()
            raise TrainError(
                f"the weights became NaN or infinite in epoch {epoch + 1} (test loss "
                f"{test.loss}); stopped. {capital(run.last_good())}")
        return EpochMetrics(
            epoch=epoch + 1, train_loss=sums.loss, train_acc=sums.acc,
            test_loss=test.loss, test_acc=test.pixel_acc or 0.0, lr=self.lr,
            samples_per_s=sums.seen / max(train_s, 1e-9),
            seconds=time.perf_counter() - t_epoch,
            val_loss=val.loss if val is not None else None,
            val_acc=val.pixel_acc if val is not None else None,
            val_miou=val.miou if val is not None else None, test_miou=test.miou,
            val_psnr=_finite_or_none(val.psnr) if val is not None else None,
            test_psnr=_finite_or_none(test.psnr))

    def _save_epoch(self, epoch: int) -> None:
        """The checkpoint, model.pt (and model_best.pt), metrics.csv and TensorBoard events."""
        run = self.run
        # The checkpoint first: if it cannot be written, nothing else moves on.
        self._checkpoint(epoch + 1, 0, None)
        if not run.world.main:
            return
        save_torch(_cpu_state(run.module), run.out / MODEL_FILE)
        if self.ema is not None and self.ema.state is not None:
            save_torch(self.ema.cpu_state(), run.out / EMA_FILE)
        if self.best_epoch == epoch + 1:
            save_torch(_cpu_state(run.module), run.out / BEST_FILE)
        write_metrics(run.out / METRICS_FILE, run.history, run.task)
        if run.spec.tensorboard:
            if self.writer is None:
                self.writer = tensorboard_writer(run.out)
            log_tensorboard(self.writer, run.history[-1])

    def _log_epoch(self, m: EpochMetrics) -> None:
        if self.run.task != "classify":
            self.run.log(f"epoch {m.epoch}/{self.run.spec.epochs}  train loss "
                         f"{m.train_loss:.4f}  {_dense_line(m, 'val')}"
                         f"{_dense_line(m, 'test')}{m.samples_per_s:,.0f} samples/s  "
                         f"({m.seconds:.1f} s)")
            return
        val = (f"val loss {m.val_loss:.4f}  val acc {m.val_acc:.2%}  "
               if m.val_loss is not None and m.val_acc is not None else "")
        top5 = f"top-5 {m.test_top5:.2%}  " if m.test_top5 is not None else ""
        self.run.log(f"epoch {m.epoch}/{self.run.spec.epochs}  train loss {m.train_loss:.4f}  "
                     f"{val}test loss {m.test_loss:.4f}  test acc {m.test_acc:.2%}  {top5}"
                     + (f"EMA test acc {m.ema_test_acc:.2%}  " if m.ema_test_acc is not None
                        else "")
                     + f"{m.samples_per_s:,.0f} samples/s  ({m.seconds:.1f} s)")

    def _checkpoint(self, epoch: int, step: int, sums: _Running | None,
                    train_s: float = 0.0) -> None:
        """checkpoint.pt at (epoch, step); ``sums`` of a step inside the epoch. Collective:
        every rank comes here at the same step; rank 0 writes."""
        run, world = self.run, self.run.world
        rngs = world.gather(rng_state(run.device))
        totals = (world.sum([sums.loss_sum, sums.correct, sums.seen, sums.pixels])
                  if sums is not None else None)
        if not world.main:
            world.barrier()
            return
        scaler = run.precision.scaler
        Checkpoint(
            epoch=epoch,
            step=step,
            model=_cpu_state(run.module),
            optimizer=run.optimizer.state_dict(),
            rng=rngs[0],
            rng_ranks=rngs,
            world_size=world.size,
            scaler=scaler.state_dict() if scaler is not None else None,
            ema=self.ema.cpu_state() if self.ema is not None else None,
            partial=None if totals is None else Partial(
                loss_sum=totals[0], correct=int(totals[1]), seen=int(totals[2]),
                pixels=int(totals[3]), train_s=train_s),
            metrics=[asdict(m) for m in run.history],
            train=run.spec.model_dump(mode="json"),
            dataset=run.dataset_entry,
            threads=torch.get_num_threads(),
            input_shape=run.input_shape,
            num_classes=run.num_classes,
            mean=run.data.loaded.mean,
            std=run.data.loaded.std,
            loss=run.loss_name,
            torch_version=str(torch.__version__),
        ).write(run.out / CHECKPOINT_FILE)
        if run.pending_resume is not None:
            record_resume(run.out, run.pending_resume, run.spec.model_dump(mode="json"))
            run.pending_resume = None
        world.barrier()  # no rank goes on (or exits) before the checkpoint is whole

    # ------------------------------------------------------------ stops

    def _raise_if_nan(self, sums: _Running, epoch: int) -> None:
        bad = sums.flush()
        if self.run.world.any(bad is not None):
            self.show.clear()
            last_good = capital(self.run.last_good())
            if bad is None:
                raise TrainError(f"the loss became NaN or infinite in another process at "
                                 f"epoch {epoch + 1}; training stopped (try a lower lr). "
                                 f"{last_good}")
            step, value = bad
            raise TrainError(
                f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; training "
                f"stopped (try a lower lr). {last_good}")

    def _curves_so_far(self) -> None:
        if self.run.history and self.run.world.main:
            write_curves(self.run.out / CURVES_FILE, self.run.history, self.run.name,
                          self.run.task)

    def _explain(self, e: RuntimeError) -> TrainError | None:
        """A RuntimeError of torch's that has a known cause, in words; None for the rest (and
        for a lost process, which ``_train`` explains)."""
        run = self.run
        if run.world.distributed and lost_peer(e) is not None:
            return None
        text = str(e)
        last_good = capital(run.last_good())
        if self.compile and "_dynamo" in type(e).__module__ + "".join(
                c.__module__ for c in type(e).__mro__):
            return TrainError(f"torch.compile failed on this model "
                              f"({text.splitlines()[0][:200]}); train without --compile. "
                              f"{last_good}")
        if "deterministic" in text:
            return TrainError(f"an operation of this model has no deterministic "
                              f"implementation on {run.device.type}: {text.splitlines()[0]}. "
                              f"Train without --deterministic. {last_good}")
        if "out of memory" in text.lower() or "can't allocate memory" in text:
            return TrainError(f"out of memory on {run.device.type} while training (batch "
                              f"{run.spec.batch_size}): {text.splitlines()[0]}; try a smaller "
                              f"batch_size. {last_good}")
        return None


# ---------------------------------------------------------------- small parts


# What model_best.pt and patience watch, per task.
_WATCHED = {"classify": "accuracy", "segment": "mean IoU", "regress": "loss"}


def _best_epoch(history: Sequence[EpochMetrics], task: str = "classify",
                monitor: str = "score") -> int | None:
    """The epoch (1-based) of the best validation score, ties to the lower loss: accuracy,
    mean IoU (segment), or the loss itself (regress, or ``monitor`` loss)."""
    scored = [m for m in history if m.val_loss is not None]
    if not scored:
        return None
    if task == "regress" or monitor == "loss":
        return min(scored, key=lambda m: (m.val_loss or 0.0, m.epoch)).epoch
    watched = "val_miou" if task == "segment" else "val_acc"
    return max(scored, key=lambda m: (getattr(m, watched) or 0.0, -(m.val_loss or 0.0),
                                      -m.epoch)).epoch


def _finite_or_none(v: float | None) -> float | None:
    # A perfect reconstruction has an infinite PSNR, which metrics.csv leaves blank.
    return v if v is not None and math.isfinite(v) else None


def _dense_line(m: EpochMetrics, split: str) -> str:
    loss = getattr(m, f"{split}_loss")
    if loss is None:
        return ""
    if m.test_miou is not None:  # segment
        return (f"{split} loss {loss:.4f}  {split} pixel acc {getattr(m, f'{split}_acc'):.2%}  "
                f"{split} mIoU {getattr(m, f'{split}_miou'):.2%}  ")
    psnr = getattr(m, f"{split}_psnr")
    return (f"{split} loss {loss:.4f}  {split} PSNR "
            f"{'inf' if psnr is None else f'{psnr:.2f}'} dB  ")


def _patience_ran_out(spec: TrainSpec, history: Sequence[EpochMetrics],
                      best_epoch: int | None, task: str = "classify") -> bool:
    """Whether ``patience`` epochs have passed since the watched value last improved."""
    if spec.patience is None or best_epoch is None:
        return False
    if spec.min_delta == 0 and spec.monitor == "score":
        return len(history) - best_epoch >= spec.patience
    last = _last_improvement(history, task, spec.monitor, spec.min_delta)
    return last is not None and len(history) - last >= spec.patience


def _last_improvement(history: Sequence[EpochMetrics], task: str, monitor: str,
                      min_delta: float) -> int | None:
    """The last epoch that beat the best before it by more than ``min_delta`` (Keras' and
    Lightning's EarlyStopping): the validation loss lower, or the score higher."""
    lower = monitor == "loss" or task == "regress"
    watched = "val_loss" if lower else ("val_miou" if task == "segment" else "val_acc")
    best: float | None = None
    last = None
    for m in history:
        value = getattr(m, watched)
        if value is None:
            continue
        if best is None or (value < best - min_delta if lower else value > best + min_delta):
            best, last = value, m.epoch
    return last
