"""`shapecheck build SPEC`: the PyTorch module as Python source; with --train, also trained.

The source is written to `-o FILE` (default: `<stem>_model.py` in the current folder; `-o -`
prints it). It is checked first: the module is built on the meta device and its forward pass
must give every layer the planned shape. A file that shapecheck did not write is never
overwritten without --force. A module whose parameters would not fit in the memory available
here is refused before anything is created (--no-memory-check writes its source anyway).

--train trains the module with the spec's `train:` section, each flag overriding its field;
the run folder gets the weights, a checkpoint, metrics, curves and the same source.

--onnx FILE also exports the module to ONNX (commands/export.py), checked before it is written:
the freshly built one, or with --train the trained one (model.pt). Without -o, only FILE is
written. With --train, the untrained module is exported first (and not written), so that a layer
torch.onnx cannot export stops the command before training, not after; with --nproc, rank 0
exports.

Exit codes: 0 done; 1 the spec is invalid, its parameters would not fit in memory (or its
tensors are larger than torch can address), it cannot be trained (its output is neither
(N, classes) nor (N, K, H, W), or not what train.task asks), training failed (a NaN loss,
no such device) or shapecheck found an internal error; 2 usage or input error (no such
spec, a file that is not ours in the way, a bad flag value, no dataset, a dataset that
cannot be read or does not fit the spec, a run folder that cannot be written, a damaged
checkpoint, or a resume its checkpoint cannot continue: another architecture, optimizer
or dataset); 130 interrupted by Ctrl-C, 143 stopped by SIGTERM, 138 by SIGUSR1 (training
keeps an exact checkpoint: continue with --resume).
torch is imported only when the command runs."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import memory
from ..core.atomic import (
    FolderBusyError,
    atomic_write,
    folder_problem,
    replace_problem,
    same_file,
)
from ..core.loader import SpecError, load_spec
from ..core.memory import human_bytes
from ..core.planner import plan as make_plan
from ..core.spec import default_name
from ..outputs.report import printable
from . import EXIT_INPUT, EXIT_INVALID, EXIT_OK, add_shape_overrides, fail, print_diagnostics

if TYPE_CHECKING:
    from ..core.trainspec import TrainSpec

EXIT_INTERRUPTED = 130

TRAIN_FLAGS = ["--data", "--data-format", "--task", "--loss", "--optimizer", "--lr", "--momentum",
               "--weight-decay", "--epochs", "--batch-size", "--seed", "--device", "--out",
               "--val-fraction", "--patience", "--precision", "--threads", "--workers", "--nproc",
               "--master-port", "--backend", "--init"]
TRAIN_SWITCHES = ["--drop-last", "--deterministic", "--tensorboard", "--compile", "--no-sync-bn",
                  "--init-skip-head"]
# Bytes per parameter while training, besides the weights themselves: the gradient, plus the
# optimizer's state (SGD's momentum buffer; Adam's two moments).
_STATE_COPIES = {"sgd": 0, "adam": 2, "adamw": 2, "rmsprop": 1}


def _int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _port(text: str) -> int:
    """--master-port: a TCP port a process may listen on (1 to 65535; 0 would be any port)."""
    value = _int(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, at most 65535, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "build", help="write the network as PyTorch source (and train it with --train)",
        description="Write the network as a PyTorch nn.Module: a class named after the spec, "
        "every layer with its arguments spelled out, forward() with the shape after each step. "
        "The module is checked against the plan first. An invalid spec writes nothing (exit 1).")
    p.add_argument("spec", metavar="SPEC", help="spec file (YAML)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write the source; '-' prints it. Default: <SPEC stem>_model.py "
                   "in the current folder (with --train: only the run folder gets it)")
    p.add_argument("--force", action="store_true",
                   help="overwrite FILE (and the --onnx file) even if shapecheck did not write it")
    p.add_argument("--onnx", metavar="FILE",
                   help="also export the module to ONNX, checked with onnxruntime (with --train: "
                   "the trained one; without -o, only this file is written)")
    p.add_argument("--no-memory-check", action="store_true",
                   help="write the source even if its parameters would not fit in the memory "
                   "available here (building the module here would fail; --train still checks)")
    add_shape_overrides(p)
    t = p.add_argument_group(
        "training", "--train trains with the spec's train: section; each flag below overrides "
        "its field. Paths in the spec are relative to the spec's folder, paths given here to "
        "the current folder.")
    t.add_argument("--train", action="store_true", help="train the module after building it")
    t.add_argument("--data", metavar="PATH",
                   help="dataset: an IDX folder, an .npz file, an image folder, or 'synthetic', "
                   "'mnist-seg', 'mnist-sr' (made from the shipped digits)")
    t.add_argument("--data-format", choices=["idx", "npz", "folder", "synthetic", "mnist-seg",
                                             "mnist-sr"],
                   help="the dataset's format (default: detected from PATH)")
    t.add_argument("--task", choices=["classify", "segment", "regress"], type=str.lower,
                   help="default: from the output's shape, (N, K) classify, (N, K, H, W) "
                   "segment (regress with --loss mse or l1)")
    t.add_argument("--loss", choices=["cross_entropy", "nll_loss", "mse", "l1"], type=str.lower)
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "rmsprop"], type=str.lower)
    t.add_argument("--lr", type=float, metavar="LR", help="learning rate")
    t.add_argument("--momentum", type=float, metavar="M", help="SGD momentum")
    t.add_argument("--weight-decay", type=float, metavar="WD")
    t.add_argument("--epochs", type=_int(1), metavar="E")
    t.add_argument("--batch-size", type=_int(1), metavar="B", help="training batch size")
    t.add_argument("--seed", type=_int(0), metavar="S")
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], type=str.lower,
                   help="auto (default): cuda, then mps, then cpu")
    t.add_argument("--out", metavar="DIR",
                   help="run folder (default: the spec's train.output, else runs/<name>)")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from the run folder's checkpoint.pt")
    again.add_argument("--fresh", action="store_true",
                       help="start the run again, replacing the weights and checkpoint of the "
                       "previous run in the run folder (without --resume or --fresh, training "
                       "refuses to replace them)")
    t.add_argument("--val-fraction", type=_fraction, metavar="F",
                   help="hold out this fraction of the training split for validation "
                   "(chooses model_best.pt; needed by --patience)")
    t.add_argument("--patience", type=_int(1), metavar="P",
                   help="stop after P epochs without a better validation accuracy")
    t.add_argument("--drop-last", action="store_true", default=None,
                   help="skip each epoch's last batch when it is smaller than the others")
    t.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic algorithms only (torch.use_deterministic_algorithms, "
                   "cuDNN flags); a resume keeps the run's thread count")
    t.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard event files to RUN/tensorboard (needs the "
                   "tensorboard package)")
    t.add_argument("--precision", choices=["32", "bf16", "fp16"], type=str.lower,
                   help="32 (default), or autocast to bf16 or fp16 (fp16 with a GradScaler)")
    t.add_argument("--threads", type=_int(1), metavar="N",
                   help="torch's intra-op threads (default: one per core, fewer when the load "
                   "average says other processes share them); 1 is often faster for small "
                   "nets on a busy machine")
    t.add_argument("--workers", type=_int(0), metavar="N",
                   help="image folders: read the images from disk while training, by N "
                   "processes (0: by the training process), instead of holding them in memory")
    t.add_argument("--compile", action="store_true", default=None,
                   help="run the module through torch.compile (helps large models on GPUs; "
                   "costs compile time)")
    t.add_argument("--nproc", type=_int(1), metavar="N",
                   help="train with N processes (DistributedDataParallel, started with "
                   "torch.distributed.run): one per GPU, or gloo on the CPU. train.batch_size "
                   "is the global batch")
    t.add_argument("--master-port", type=_port, metavar="PORT",
                   help="with --nproc: the port (1 to 65535) the processes meet on (default: a "
                   "free one)")
    t.add_argument("--backend", choices=["auto", "gloo", "nccl"], type=str.lower,
                   help="distributed backend (default auto: nccl on CUDA, gloo on the CPU)")
    t.add_argument("--no-sync-bn", action="store_true", default=None,
                   help="with --nproc: keep each process's own BatchNorm statistics (by "
                   "default they are those of the global batch, as in one process: "
                   "SyncBatchNorm)")
    t.add_argument("--init", metavar="PATH",
                   help="start a new run from these weights: a run folder, its model.pt, a "
                   "checkpoint.pt or a state-dict file; keys and shapes are checked against "
                   "the plan first")
    t.add_argument("--init-skip-head", action="store_true", default=None,
                   help="with --init: leave the last layer with parameters (the classifier "
                   "head) freshly initialised, e.g. for another number of classes")
    p.set_defaults(run=run)


_fail = partial(fail, "build")


def _note(message: str) -> None:
    from ..outputs.report import OUTPUT

    if not OUTPUT.quiet:
        print(f"note: {printable(message)}", file=sys.stderr)


def _destination(args: argparse.Namespace) -> Path | str | None:
    """Where the source goes: a path, '-' for stdout, or None (--train without -o)."""
    if args.output == "-":
        return "-"
    if args.output is not None:
        return Path(args.output)
    if args.train or args.onnx is not None:
        return None
    return Path(f"{default_name(Path(args.spec).stem)}_model.py")


def _check_destination(out: Path, force: bool, spec: Path) -> str | None:
    """Why ``out`` cannot be written, or None."""
    from ..emit.codegen import is_generated

    problem = replace_problem(out, force=force, ours=is_generated, inputs=[spec],
                              kind=" as a module's source")
    if problem is not None:
        if out.is_dir() and not out.is_symlink():
            problem += f" such as {str(out / 'net_model.py')!r}"
        return problem
    return folder_problem(out)


def run(args: argparse.Namespace) -> int:
    given = [flag for flag in TRAIN_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
    given += [flag for flag in TRAIN_SWITCHES if getattr(args, flag[2:].replace("-", "_"))]
    given += ["--resume"] if args.resume else []
    if given and not args.train:
        return _fail(f"{', '.join(given)} only apply with --train")
    if args.init_skip_head and args.init is None:
        return _fail("--init-skip-head only applies with --init PATH")
    if args.init is not None and args.resume:
        return _fail("--init starts a new run from weights; --resume continues the run "
                     "folder's checkpoint: give one of them")
    destination = _destination(args)
    if isinstance(destination, Path):
        problem = _check_destination(destination, args.force, Path(args.spec))
        if problem:
            return _fail(problem)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 exports
    if args.onnx is not None and isinstance(destination, Path) and same_file(destination,
                                                                              args.onnx):
        return _fail(f"-o {destination} and --onnx {args.onnx} name the same file (through a "
                     "link, or as the same path); nothing was written")
    if args.onnx is not None and main:
        from .export import onnx_destination_problem

        problem = onnx_destination_problem(args.onnx, force=args.force, inputs=[args.spec])
        if problem:
            return _fail(problem)

    spec_path = Path(args.spec)
    # With -o -, stdout holds the module's source and nothing else: diagnostics go to stderr.
    findings = sys.stderr if destination == "-" else None
    try:
        spec = load_spec(spec_path, scale=args.scale)
    except SpecError as e:
        print_diagnostics(e.diagnostics, findings)
        return EXIT_INVALID
    train_spec = _train_spec(spec.train, args) if args.train else None
    if train_spec is not None and not isinstance(train_spec, str):
        # The plan's lints then speak of the run as it will train: a loss given by a flag,
        # or the default one, even where the spec has no train: section (SC302).
        spec.train = train_spec
    p = make_plan(spec, batch=args.batch, input_shape=args.input)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 shows them for all
        print_diagnostics(p.diagnostics, findings)
    if not p.valid:
        return EXIT_INVALID

    if isinstance(train_spec, str):
        return _fail(train_spec)
    if train_spec is not None:
        from ..core.trainspec import resolve_task

        if len(p.outputs) > 1:
            names = ", ".join(name for name, _ in p.outputs)
            return _fail(f"{p.name} returns several tensors ({names}); training takes a "
                         "network with one output: list one under `outputs:`", EXIT_INVALID)
        task = resolve_task(p.output_shape, p.batch, train_spec)
        if isinstance(task, str):
            return _fail(f"{p.name} {task}", EXIT_INVALID)
        # Fixed from here on: run.json and eval read the task the run trained.
        train_spec = train_spec.model_copy(update={"task": task[0]})

    from ..emit.build import check_fits, instantiate
    from ..emit.codegen import BuildError, InternalError, TooLargeError, generate

    # Refused before anything is generated or built, even on the meta device.
    available = memory.available_memory()
    if train_spec is not None:
        try:
            check_fits(p.param_bytes * _training_copies(train_spec),
                       f"training {p.name} (weights, gradients and optimizer state of "
                       f"{p.params:,} parameters)")
        except TooLargeError as e:
            return _fail(str(e), EXIT_INVALID)
    elif not args.no_memory_check and available is not None and p.param_bytes > available:
        return _fail(f"the {p.params:,} parameters of {p.name} need {p.param_bytes:,} bytes "
                     f"({human_bytes(p.param_bytes)}), more than the {available:,} bytes of "
                     "memory available here, so building the module here would fail; nothing "
                     "was written (--no-memory-check writes the source anyway)", EXIT_INVALID)
    try:
        generated = generate(p, batch=args.batch)
        model = instantiate(p, generated, device="meta")  # the check against the plan
    except InternalError as e:
        return _fail(f"internal error (please report it): {e}", EXIT_INVALID)
    except TooLargeError as e:
        return _fail(str(e), EXIT_INVALID)
    del model
    for old, new in generated.renamed:
        _note(f"layer {old} is the attribute {new} in the module ({old} is an nn.Module "
              "attribute)")
    exported = None
    # --nproc: the processes it starts export (rank 0), not the one that starts them.
    launching = args.train and (args.nproc or 1) > 1 and "WORLD_SIZE" not in os.environ
    if args.onnx is not None and main and not launching:
        from .export import export_module

        try:
            model = instantiate(p, generated, check=False)  # checked on the meta device above
        except TooLargeError as e:
            return _fail(str(e), EXIT_INVALID)
        exported = export_module(model, p, generated, _fail)
        del model
        if isinstance(exported, int):
            return exported

    if destination == "-":
        sys.stdout.write(generated.source)
        sys.stdout.flush()
    elif destination is not None:
        try:
            atomic_write(destination, generated.source)
        except OSError as e:
            return _fail(f"cannot write {destination}: {e.strerror or e}")
        if not args.quiet:
            print(f"wrote {printable(destination)}: class {generated.class_name}, "
                  f"{p.params:,} parameters")
        if not args.train and available is not None and p.param_bytes > available:
            _note(f"its parameters need {p.param_bytes:,} bytes ({human_bytes(p.param_bytes)}),"
                  f" more than the {available:,} bytes of memory available here: building it "
                  "on this machine will fail")

    if train_spec is None:
        if exported is None:
            return EXIT_OK
        from .export import write_onnx

        return write_onnx(exported, args.onnx, _fail,
                          stream=sys.stderr if destination == "-" else None)
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(p, train_spec, spec_path, args)
    try:
        return _train(p, generated, train_spec, spec_path, args)
    except BuildError as e:
        return _fail(str(e), EXIT_INVALID)


def _test_scores(m, task: str | None) -> str:
    """The test scores of an epoch's metrics, in words, by task."""
    if task == "segment":
        return f"test pixel accuracy {m.test_acc:.2%}, mIoU {m.test_miou or 0:.2%}"
    if task == "regress":
        return "test PSNR " + (f"{m.test_psnr:.2f} dB" if m.test_psnr is not None else "inf")
    return f"test accuracy {m.test_acc:.2%}"


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _train_spec(spec_train: TrainSpec | None, args: argparse.Namespace) -> TrainSpec | str:
    """The spec's train: section with the flags applied, or why it cannot train."""
    from pydantic import ValidationError

    from ..core.trainspec import NAMED_DATASETS, apply_overrides

    data = args.data
    if data is not None and data not in NAMED_DATASETS:
        data = os.path.abspath(os.path.expanduser(data))  # relative to the current folder
    try:
        result = apply_overrides(
            spec_train, data=data, data_format=args.data_format, task=args.task, loss=args.loss,
            optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
            weight_decay=args.weight_decay, epochs=args.epochs, batch_size=args.batch_size,
            seed=args.seed, device=args.device, output=None, val_fraction=args.val_fraction,
            patience=args.patience, drop_last=args.drop_last,
            deterministic=args.deterministic, tensorboard=args.tensorboard,
            precision=args.precision, workers=args.workers,
            sync_bn=False if args.no_sync_bn else None)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(part) for part in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return "bad training settings: " + "; ".join(problems)
    if result.dataset is None:
        return ("nothing to train on: the spec has no train.dataset; give --data PATH "
                "(or --data synthetic)")
    return result


def _same_everywhere(e: Exception) -> bool:
    # A dead peer or a missing device is one rank's story; the rest is seen alike by all.
    text = str(e)
    return not ("another process" in text or "CUDA device" in text)


def _training_copies(train_spec: TrainSpec) -> int:
    """Copies of the parameters training keeps: weights, gradients, optimizer state."""
    states = 2 + _STATE_COPIES[train_spec.optimizer.type]
    if train_spec.optimizer.type in ("sgd", "rmsprop") and \
            train_spec.optimizer.effective_momentum:
        states += 1
    return states


def _where_data_is(train_spec: TrainSpec, spec_path: Path) -> str:
    """Where a relative dataset path is read from, which surprises after copying a spec."""
    path = train_spec.dataset.path if train_spec.dataset is not None else None
    if path is None or Path(path).expanduser().is_absolute():
        return ""
    return (f" (train.dataset.path {path!r} is read from the spec's folder, "
            f"{spec_path.resolve().parent})")


def _options(args: argparse.Namespace):
    """The run's flags, and where its lines go: one line each, paths escaped; none with -q."""
    from ..training.fromplan import RunOptions

    return RunOptions(
        out=Path(args.out) if args.out is not None else None, resume=args.resume,
        fresh=args.fresh, force=args.force, threads=args.threads,
        backend=args.backend or "auto", compile=bool(args.compile), init=args.init,
        init_skip_head=bool(args.init_skip_head),
        log=(lambda line: None) if args.quiet else lambda line: print(printable(line)),
        note=_note, progress=False if args.quiet else None)


def _launch(p, train_spec: TrainSpec, spec_path: Path, args) -> int:
    """--nproc N: the same command in N processes (training.fromplan.launch_plan)."""
    from ..training import RunFolderError, TrainError
    from ..training.fromplan import launch_plan

    try:
        result = launch_plan(p, train_spec, spec_path, _options(args), argv=args.argv,
                             nproc=args.nproc, master_port=args.master_port)
    except RunFolderError as e:
        return _fail(str(e))
    except TrainError as e:
        return _fail(str(e), EXIT_INVALID)
    if result.message:
        _fail(result.message, result.code)
    return result.code


def _train(p, generated, train_spec: TrainSpec, spec_path: Path, args) -> int:
    """--train (training.fromplan.train_plan): what comes back, in words and an exit code."""
    from ..training import (
        BEST_FILE,
        CURVES_FILE,
        MODEL_FILE,
        DataError,
        MemoryLimitError,
        RunFolderError,
        TrainError,
    )
    from ..training.distributed import EXIT_PEER_LOST, LAUNCHED, PeerLostError
    from ..training.fromplan import train_plan
    from ..training.init import WeightsFileError, WeightsMismatchError

    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run
    try:
        result = train_plan(p, generated, train_spec, spec_path, _options(args))
    except WeightsFileError as e:
        return _fail(str(e), EXIT_INPUT) if main else EXIT_INPUT
    except WeightsMismatchError as e:  # one line per layer that does not fit
        return fail("build", str(e), EXIT_INVALID, keep="\n") if main else EXIT_INVALID
    except FolderBusyError as e:
        return _fail(f"the run folder {e.filename} is {e.strerror}; wait for it to finish, or "
                     "give another --out")
    except KeyboardInterrupt as e:
        # Ctrl-C 130; SIGTERM 143 and SIGUSR1 138, as a process those signals killed.
        return 128 + getattr(e, "signum", EXIT_INTERRUPTED - 128)
    except MemoryLimitError as e:
        return _fail(str(e), EXIT_INVALID) if main else EXIT_INVALID
    except DataError as e:
        return _fail(str(e) + _where_data_is(train_spec, spec_path), EXIT_INPUT) if main \
            else EXIT_INPUT
    except PeerLostError as e:
        if os.environ.get(LAUNCHED):
            return EXIT_PEER_LOST  # build --nproc names the process that stopped, once
        return _fail(str(e) if main else f"rank {os.environ.get('RANK')}: {e}", EXIT_INVALID)
    except RunFolderError as e:
        # The run folder, or what was asked of it (a resume another optimizer cannot
        # continue): an input error. Every rank reads the same folder; rank 0 says it.
        return _fail(str(e), EXIT_INPUT) if main else EXIT_INPUT
    except TrainError as e:
        # Every rank meets the same setup errors; rank 0 speaks for them. Errors of one
        # rank alone (its device) are printed with its rank.
        if main:
            return _fail(str(e), EXIT_INVALID)
        if not _same_everywhere(e):
            _fail(f"rank {os.environ.get('RANK')}: {e}", EXIT_INVALID)
        return EXIT_INVALID
    except OSError as e:  # the run folder: --out names a file, no permission, disk full ...
        where = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        return _fail(f"cannot write the run: {where}", EXIT_INPUT)
    if not main or args.quiet:
        return EXIT_OK
    out = result.out_dir
    final = result.final
    if final is not None:
        task = train_spec.task
        print(f"done in {result.seconds:.1f} s: {_test_scores(final, task)}, test loss "
              f"{final.test_loss:.4f} after {final.epoch} epoch{'s' if final.epoch != 1 else ''}"
              + (" (stopped early)" if result.stopped_early else ""))
        best = result.best
        if best is not None and train_spec.task != "classify":
            print(f"best validation epoch {best.epoch} ({BEST_FILE}; its "
                  f"{_test_scores(best, task)})")
        elif best is not None and best.val_acc is not None:
            print(f"best validation accuracy {best.val_acc:.2%} at epoch {best.epoch} "
                  f"({BEST_FILE}; its test accuracy {best.test_acc:.2%})")
        if train_spec.dataset is not None and train_spec.dataset.format == "synthetic":
            print("synthetic data: a smoke test of the model and the loop, not a measure of "
                  "the model")
    print(f"run folder: {printable(out)} ({MODEL_FILE}, {CURVES_FILE}, ...); evaluate it with: "
          f"shapecheck eval {printable(shlex.quote(str(out)))}")
    if args.onnx is not None:
        from .export import export_run

        return export_run(Path(out), args.onnx, _fail, batch=p.batch)
    return EXIT_OK

