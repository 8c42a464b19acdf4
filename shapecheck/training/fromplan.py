"""Training a planned network, as ``shapecheck build --train`` asks: the run folder chosen,
checked and locked, the module built from its emitted source, ``--init`` weights read and
checked against the plan, then ``run_training``; or, with ``--nproc``, the same command
launched in several processes. The command parses the flags and turns what comes back (a
result, or an exception) into its messages and exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.atomic import LOCK_FILE, folder_lock
from ..core.trainspec import TrainSpec
from ..emit.build import instantiate
from .base import RunFolderError
from .distributed import LaunchResult, check_launch, exit_orphaned, launch, launcher_gone
from .init import check_weights, read_weights
from .loop import run_training
from .request import TrainRequest
from .runfolder import TrainResult
from .runinfo import run_folder_problem


@dataclass(frozen=True)
class RunOptions:
    """What the command line asks of a run besides the spec: ``out`` (the run folder: else
    the spec's train.output, else runs/<name>), ``resume``, ``fresh``, ``force``, ``threads``,
    ``backend``, ``compile``, ``init`` (a path to start from) with ``init_skip_head``; and
    where the run's lines go: ``log`` (one line per epoch), ``note`` (the notes before
    training) and ``progress`` (the bar; None: when stderr is a terminal)."""

    out: Path | None = None
    resume: bool = False
    fresh: bool = False
    force: bool = False
    threads: int | None = None
    backend: str = "auto"
    compile: bool = False
    init: str | None = None
    init_skip_head: bool = False
    log: Callable[[str], Any] = print
    note: Callable[[str], Any] = print
    progress: bool | None = None


def _main() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run


def run_folder(plan: Any, train_spec: TrainSpec, spec_path: Path, options: RunOptions) -> Path:
    """The run folder: --out, else the spec's train.output (which must stay inside the spec's
    own folder: a spec does not choose where files go outside it), else runs/<name>.
    RunFolderError says why it cannot be used."""
    if options.out is not None:
        out = Path(options.out)
    elif train_spec.output is not None:
        home = spec_path.resolve().parent
        out = home / Path(train_spec.output).expanduser()
        if not out.resolve().is_relative_to(home):
            raise RunFolderError(
                f"the spec's train.output {train_spec.output!r} is outside the spec's "
                f"folder {home}; a spec may only write under its own folder (give --out "
                "DIR on the command line to write there)")
    else:
        out = Path("runs") / plan.name
    if not _main():
        return out  # under torchrun, rank 0 checks the folder (and holds its lock)
    if problem := run_folder_problem(out, options.force):
        raise RunFolderError(problem)
    return out


def launch_plan(plan: Any, train_spec: TrainSpec, spec_path: Path, options: RunOptions, *,
                argv: list[str], nproc: int, master_port: int | None) -> LaunchResult:
    """--nproc N: the same command (``argv``) in N processes, started by
    torch.distributed.run. TrainError when they cannot start (RunFolderError: the folder)."""
    check_launch(nproc, train_spec.device, options.backend, master_port)
    out = run_folder(plan, train_spec, spec_path, options)
    return launch(argv, nproc, master_port, out)


def train_plan(plan: Any, generated: Any, train_spec: TrainSpec, spec_path: Path,
               options: RunOptions) -> TrainResult:
    """Train the module ``generated`` from ``plan`` in its run folder, holding the folder's
    lock. A folder this made and the run left empty is removed again.

    Raises what ``run_training`` raises; besides, RunFolderError (the folder cannot be used),
    FolderBusyError (another run holds it), WeightsFileError and WeightsMismatchError (--init),
    and OSError (the folder cannot be written)."""
    out_dir = run_folder(plan, train_spec, spec_path, options)
    main = _main()
    if main and isinstance(plan.batch, int) and plan.batch != train_spec.batch_size:
        options.note(f"input.batch is {plan.batch} but training uses train.batch_size "
                     f"{train_spec.batch_size} (input.batch only sizes the plan)")
    module = instantiate(plan, generated, check=False)  # checked on the meta device before
    init = None
    if options.init is not None:
        # Under torchrun every rank reads the weights; rank 0 alone says what is wrong.
        weights = read_weights(Path(options.init))
        init = check_weights(module, weights, options.init,
                             skip_head=options.init_skip_head,
                             describe=_describer(plan, generated, spec_path))
    if train_spec.freeze:  # spec names; a layer renamed in the module has its attribute's
        renamed = dict(generated.renamed)
        train_spec = train_spec.model_copy(update={
            "freeze": [renamed.get(n, n) for n in train_spec.freeze]})
    if train_spec.loss is None:  # the plan's rule, the one its lints use; mse to regress
        train_spec = train_spec.model_copy(update={
            "loss": "mse" if train_spec.task == "regress" else plan.default_loss})
    holder = (f"shapecheck build (pid {os.getpid()}, started "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
    # The folders this run makes: removed again if the run writes nothing into them.
    made = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    try:
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
        # One run at a time in a folder; checked again under the lock, as another run may
        # have written the folder in between. Under torchrun, rank 0 holds it for the run.
        with folder_lock(out_dir, holder) if main else contextlib.nullcontext():
            replace = options.resume or options.fresh
            if main and (problem := run_folder_problem(out_dir, options.force, replace)):
                raise RunFolderError(problem)
            return run_training(TrainRequest(
                module, train_spec, name=plan.name, input_shape=plan.input_dims[1:],
                num_classes=int(plan.output_shape[1]), base_dir=spec_path.resolve().parent,
                out_dir=out_dir, model_source=generated.source, resume=options.resume,
                fresh=options.fresh or options.force, force=options.force, log=options.log,
                progress=options.progress, threads=options.threads, backend=options.backend,
                compile=options.compile, init=init))
    except KeyboardInterrupt as e:
        if launcher_gone():  # the checkpoint is saved; nothing is left to wait for
            exit_orphaned(128 + getattr(e, "signum", signal.SIGINT))
        raise
    finally:
        if main:
            for folder in made:  # innermost first: runs/NAME, then runs
                if not _remove_if_unused(folder):
                    break


def _describer(plan: Any, generated: Any, spec_path: Path) -> Callable[[str], str]:
    """A module path in words, as the spec has it: 'layer fc (linear, net.yaml line 18)'."""
    layers = {generated.module_names[layer.path]: layer for layer in plan.walk()
              if layer.path in generated.module_names}

    def describe(qualname: str) -> str:
        name = qualname
        while name and name not in layers:  # a parameter of a layer's own submodule
            name = name.rpartition(".")[0]
        layer = layers.get(name)
        if layer is None:
            return f"module {qualname}" if qualname else "the module itself"
        line = f", {spec_path.name} line {layer.line}" if layer.line else ""
        return f"layer {layer.name} ({layer.type}{line})"

    return describe


def _remove_if_unused(folder: Path) -> bool:
    """A folder this run made and left empty, or holding only its lock (the data could not
    be read, say), is removed again: a failed start leaves nothing behind. Whether it was."""
    try:
        if os.listdir(folder) == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
        folder.rmdir()  # fails unless empty
        return True
    except OSError:
        return False
