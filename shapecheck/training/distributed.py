"""Distributed data parallel: the processes of one run, and starting them.

A run is distributed when torch's launcher (``torchrun``, or ``build --train --nproc N``,
which calls the same code: ``torch.distributed.run``) has set ``WORLD_SIZE`` and ``RANK``
in the environment. Each process then trains a DistributedDataParallel copy of the module:
gloo on the CPU, nccl on CUDA. ``batch_size`` is the global batch: every step, the global
batch of the one-process run is cut into ``WORLD_SIZE`` shares (rank r takes every
WORLD_SIZE-th sample, as DistributedSampler does), and each share's loss is weighted so that
the averaged gradient is the one-process run's. So the run takes the same number of
optimizer steps, over the same batches, whatever the number of processes.

Rank 0 alone writes the run folder and prints; every rank reads the checkpoint to resume.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from .base import TrainError

# How long a rank waits for the others at a collective before giving up: long enough for
# a slow checkpoint write on rank 0, short enough that a lost peer does not hang the run.
TIMEOUT = _dt.timedelta(minutes=5)


@dataclass(frozen=True)
class World:
    """The processes of a run. ``size`` 1: one process, no torch.distributed at all."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (float64, on the CPU: gloo's home)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one: all ranks stop at the same step."""
        if not self.distributed:
            return flag
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


class PeerLostError(TrainError):
    """Another process of the run stopped, so this one cannot go on."""


def lost_peer(e: RuntimeError) -> str | None:
    """What a collective's error says of a process that died or hung up, in one short line;
    None when the error is something else."""
    text = str(e)
    if not (isinstance(e, dist.DistError)
            or any(w in text.lower() for w in ("gloo", "nccl", "connection", "peer"))):
        return None
    line = text.splitlines()[0] if text else type(e).__name__
    # gloo's lines start with its source file: "[.../pair.cc:537] Read error ...".
    line = re.sub(r"^\[[^\]]*\]\s*", "", line).split(". ")[0]
    return line[:160]


def _collective_device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def world_from_env() -> World:
    """The World torchrun's environment describes (one process when there is none)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise TrainError("WORLD_SIZE, RANK and LOCAL_RANK must be integers "
                         "(they are set by torchrun)") from None
    return World(size=size, rank=rank, local_rank=local)


def backend_for(device: torch.device, asked: str = "auto") -> str:
    if asked == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if asked == "nccl" and device.type != "cuda":
        raise TrainError(f"the nccl backend needs CUDA devices; this run trains on "
                         f"{device.type}. Use --backend gloo (or auto), or --device cuda on a "
                         "machine with GPUs")
    return asked


def setup(world: World, device: torch.device, backend: str) -> torch.device:
    """Join the process group; the device of this rank (cuda:LOCAL_RANK on GPUs)."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise TrainError(f"{world.local_rank + 1} processes on this machine but only "
                             f"{count} CUDA device{'s' if count != 1 else ''}: start at most "
                             f"{count} per machine")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type == "mps":
        raise TrainError("distributed training runs on cpu (gloo) or cuda (nccl), not mps")
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as e:
            raise TrainError(f"cannot join the other processes ({backend}): "
                             f"{str(e).splitlines()[0]}") from None
    return device


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def stop_with_launcher(world: World, interval: float = 0.2) -> Iterator[None]:
    """A rank whose launcher is gone stops, as on the launcher's SIGTERM: the ranks agree on a
    step, rank 0 saves its checkpoint, and each exits, releasing the run folder's lock. A
    launcher killed outright (SIGKILL, or a signal it could not pass on) never tells its ranks,
    which would otherwise train on, holding the folder, with no one to report to. The rank
    sees its parent change (it is re-parented when the launcher dies)."""
    if not world.distributed or not hasattr(os, "getppid"):
        yield
        return
    # The launcher's pid as it gave it: a launcher that died before this line is seen too.
    parent = int(os.environ.get(LAUNCHER_PID) or os.getppid())
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread
                return

    watcher = threading.Thread(target=watch, name="shapecheck-launcher-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


def launcher_gone() -> bool:
    """Whether this rank was started by ``build --nproc``'s launcher, which has since died."""
    pid = os.environ.get(LAUNCHER_PID)
    return bool(pid) and hasattr(os, "getppid") and os.getppid() != int(pid)


def exit_orphaned(code: int) -> NoReturn:
    """End a rank whose launcher is gone, now, its output flushed (the OS releases the run
    folder's lock). Left to Python's teardown, a rank whose process group lost its launcher
    (which hosts the group's rendezvous store) could wait in torch's destructors forever, and
    no launcher is left to end it."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# ---------------------------------------------------------------- launching


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return True
    return False


def check_launch(nproc: int, device: str, backend: str, port: int | None) -> None:
    """What makes ``--nproc`` fail, found before any process starts. Raises TrainError."""
    if device in ("cuda", "auto") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if nproc > count:
            raise TrainError(f"--nproc {nproc} is more than the {count} CUDA device"
                             f"{'s' if count != 1 else ''} here: one process per GPU")
    elif device == "cuda":
        raise TrainError("device cuda was asked for, but this PyTorch sees no CUDA device")
    elif backend == "nccl":
        raise TrainError("the nccl backend needs CUDA devices, and this PyTorch sees none: "
                         "use --backend gloo (or auto) to train on the CPU")
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        if nproc > cores:
            raise TrainError(f"--nproc {nproc} is more than the {cores} CPU core"
                             f"{'s' if cores != 1 else ''} here: each process needs one")
    if port is not None and not 0 < port < 65536:
        raise TrainError(f"--master-port must be a TCP port from 1 to 65535, got {port}")
    if port is not None and port_in_use(port):
        raise TrainError(f"port {port} is already in use; give another --master-port, or "
                         "leave it out to take a free one")


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line without the launcher's own flags: what each worker runs."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--nproc", "--master-port"):
            skip = True
            continue
        if a.startswith(("--nproc=", "--master-port=")):
            continue
        out.append(a)
    return out


# Set by ``launch`` for its workers. A worker that loses another process then exits quietly
# with EXIT_PEER_LOST (seen by the launcher only), and the launcher, which knows which
# process stopped and how, says it once.
LAUNCHED = "SHAPECHECK_LAUNCHED"
LAUNCHER_PID = "SHAPECHECK_LAUNCHER_PID"
EXIT_PEER_LOST = 3
# Signals whose default is to end a process, besides those torch's launcher passes on
# (SIGTERM, SIGINT, SIGHUP, SIGQUIT): the launcher turns each into a SIGTERM for its ranks, so
# that they stop with a checkpoint instead of training on without it.
_OTHER_STOPS = ("SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGXFSZ",
                "SIGIO", "SIGPWR", "SIGSTKFLT")


def _stop_signals() -> list[int]:
    found = [getattr(signal, name) for name in _OTHER_STOPS if hasattr(signal, name)]
    if hasattr(signal, "SIGRTMIN"):
        found += range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
    return found


@contextlib.contextmanager
def _passed_on_as_sigterm(received: list[int]) -> Iterator[None]:
    """While the block runs, each of ``_stop_signals`` that has no handler of its own stops the
    run as SIGTERM does (torch's launcher sends its ranks the signal it got); the signal is
    appended to ``received``."""
    from torch.distributed.elastic.multiprocessing import SignalException

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        raise SignalException(f"got signal {signum}", sigval=signal.SIGTERM)

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _stop_signals():
            try:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    old[sig] = signal.signal(sig, stop)
            except (OSError, ValueError):  # one the platform will not let be caught
                continue
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@dataclass
class LaunchResult:
    code: int  # the exit code for the command
    message: str | None  # what to tell the user, if the workers could not


def launch(argv: Sequence[str], nproc: int, port: int | None, out_dir: Path) -> LaunchResult:
    """Run ``python -m shapecheck ARGV`` in ``nproc`` processes with torch.distributed.run.

    Rank 0's exit code is the command's. A rank that dies (a signal, or an exit while the
    others trained) is named, with the checkpoint that is kept."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    port = port if port is not None else free_port()
    # torchrun would set 1 itself, with a warning on every start; --threads overrides it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The launcher passes these on to every rank, which saves the step they agree on and
    # exits; SIGUSR1 (SLURM's warning before its time limit) is not among torch's own.
    signals = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    args = parse_args([
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port",
        str(port), "--max-restarts", "0", "--monitor-interval", "0.2",
        "--signals-to-handle", signals,
        "-m", "shapecheck", *worker_argv(argv)])
    # torch's own log lines about a failed worker (pids, SIGTERMs sent) would tell the
    # story below a second time; LOGLEVEL set by hand keeps them.
    log = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    level = log.level
    if "LOGLEVEL" not in os.environ:
        log.setLevel(logging.CRITICAL)
    os.environ[LAUNCHED] = "1"
    os.environ[LAUNCHER_PID] = str(os.getpid())
    received: list[int] = []
    try:
        with _passed_on_as_sigterm(received):
            torchrun(args)
    except SignalException as e:
        # Ctrl-C, SIGTERM or SIGUSR1 (or another signal) reached the launcher; it passed the
        # signal on, and each rank saved the checkpoint of the step they agreed on.
        return LaunchResult(128 + int(received[-1] if received else e.sigval), None)
    except ChildFailedError as e:
        return _failed(e.failures, out_dir)
    finally:
        os.environ.pop(LAUNCHED, None)
        os.environ.pop(LAUNCHER_PID, None)
        log.setLevel(level)
    return LaunchResult(0, None)


def _failed(failures: dict[int, Any], out_dir: Path) -> LaunchResult:
    """What the command says and returns when ranks failed (torch's ProcessFailure each)."""
    main = failures.get(0)
    if main is not None and 0 < main.exitcode != EXIT_PEER_LOST and \
            all(f.exitcode > 0 for f in failures.values()):
        return LaunchResult(main.exitcode, None)  # rank 0 said why
    # The rank to name is the first that failed of itself: not one the launcher stopped
    # (SIGTERM), nor one that stopped because it had lost the other.
    rank, f = min(failures.items(), key=lambda kv: (
        kv[1].exitcode in (-signal.SIGTERM, EXIT_PEER_LOST), kv[1].timestamp, kv[0]))
    how = (f"was killed by {signal.Signals(-f.exitcode).name}" if f.exitcode < 0
           else f"exited with code {f.exitcode}")
    return LaunchResult(1, f"rank {rank} {how}; the run stopped on every rank. "
                        f"{kept(out_dir)}")


def kept(out_dir: Path) -> str:
    """What a stopped run leaves to resume from, in words."""
    from .checkpoint import Checkpoint
    from .runfolder import CHECKPOINT_FILE

    path = out_dir / CHECKPOINT_FILE
    if not path.is_file():
        return "No epoch had completed, so there is no checkpoint."
    try:
        ckpt = Checkpoint.load(path)
        where = (f"epoch {ckpt.epoch + 1}, step {ckpt.step}" if ckpt.step
                 else f"after epoch {ckpt.epoch}")
    except Exception:  # noqa: BLE001 - the message must not fail for want of the detail
        where = "its last save"
    return (f"The last good checkpoint ({where}) is kept in {out_dir}: continue with "
            "--resume and the same --nproc.")
