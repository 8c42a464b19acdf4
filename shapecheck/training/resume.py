"""Continuing a run from its checkpoint: which checkpoint fits, what may change since, and
the state put back (model, optimizer, RNG, the position inside the epoch)."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.trainspec import TrainSpec
from .base import RunFolderError, plural, set_rng_state
from .checkpoint import Checkpoint
from .runfolder import CHECKPOINT_FILE, architecture_diff
from .setup import Run, apply_hyperparameters

# What a resume may not change in the middle of an epoch: the rest of its batches
# could not be replayed. At an epoch boundary they apply from the next epoch.
_EPOCH_KEYS = ("seed", "batch_size", "drop_last", "accumulate")


def read_checkpoint(out: Path, module: nn.Module, input_shape: tuple[int, int, int],
                    num_classes: int) -> Checkpoint:
    """The run folder's checkpoint, refused when another architecture made it."""
    ckpt = Checkpoint.load(out / CHECKPOINT_FILE)
    diffs = architecture_diff(ckpt.model, module)
    if diffs or list(ckpt.input_shape) != list(input_shape) \
            or ckpt.num_classes != num_classes:
        detail = "; ".join(diffs[:5]) or (
            f"input {list(ckpt.input_shape)} -> {list(input_shape)}, "
            f"classes {ckpt.num_classes} -> {num_classes}")
        raise RunFolderError(
            f"cannot resume: {out / CHECKPOINT_FILE} was made by a different "
            f"architecture ({detail})")
    return ckpt


def note_normalisation(ckpt: Checkpoint, data: Any, log: Callable[[str], Any]) -> None:
    if not torch.allclose(torch.tensor(ckpt.mean + ckpt.std),
                          torch.tensor(data.mean + data.std), rtol=1e-4, atol=1e-6):
        log("note: the training data's mean/std differ from the checkpoint's; "
            "has the dataset changed?")


def restore(run: Run, ckpt: Checkpoint) -> None:
    """Put the checkpoint's state back into ``run``, saying what differs from it."""
    run.resumed = True
    run.start_epoch, run.start_step = ckpt.epoch, ckpt.step
    where = _position(ckpt, run)
    changes = _resume_changes(ckpt, run.spec, run.dataset_entry, run.start_step, where)
    _load_states(run, ckpt)
    saved_world = ckpt.world_size
    if saved_world != run.world.size:
        run.log(f"note: the run trained in {plural(saved_world, 'process')}, this one in "
                f"{run.world.size}; the batches are the same, but sums in another order "
                "differ in the last bits")
    run.partial = ckpt.partial
    run.ema_state = ckpt.ema
    run.history = ckpt.history
    run.log(f"resuming {run.out} {where}")
    if changes:
        run.log(f"note: changed since the checkpoint: {'; '.join(changes)}"
                + ("; they apply from here on, so the run differs from one that had them "
                   "from the start" if any(c.split()[0] in _EPOCH_KEYS for c in changes)
                   else ""))
    _match_threads(run, ckpt.threads)
    run.pending_resume = {
        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "epoch": run.start_epoch + (1 if run.start_step else 0),
        "step": run.start_step,
        "changes": changes,
        "threads": torch.get_num_threads(),
        "world_size": run.world.size,
    }


def _position(ckpt: Checkpoint, run: Run) -> str:
    """Where the checkpoint stands, in words; its steps as the run counted them."""
    if not run.start_step:
        return f"after epoch {run.start_epoch}"
    was = ckpt.spec
    n = run.n
    bs = was.batch_size * was.accumulate
    was_steps = n // bs if was.drop_last else math.ceil(n / bs)
    if run.start_step > was_steps:
        raise RunFolderError(f"cannot resume: {run.out / CHECKPOINT_FILE} is damaged: its step "
                             f"{run.start_step} is past the {was_steps} steps of an epoch")
    return f"at epoch {run.start_epoch + 1}, step {run.start_step}/{was_steps}"


def _load_states(run: Run, ckpt: Checkpoint) -> None:
    damaged = f"cannot resume: {run.out / CHECKPOINT_FILE} is damaged"
    try:
        run.module.load_state_dict(ckpt.model)
    except (RuntimeError, TypeError, ValueError) as e:
        raise RunFolderError(f"{damaged}: its model does not load ({_first(e)})") from None
    try:
        run.optimizer.load_state_dict(ckpt.optimizer_state())
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as e:
        raise RunFolderError(f"cannot resume: the optimizer's state does not fit ({_first(e)}); "
                             "was the optimizer type or decay_norm_and_bias changed?") from None
    if problem := _optimizer_state_problem(run.optimizer):
        raise RunFolderError(f"{damaged}: {problem}")
    apply_hyperparameters(run.optimizer, run.spec.optimizer)
    scaler = run.precision.scaler
    try:
        if scaler is not None and ckpt.scaler:
            scaler.load_state_dict(ckpt.scaler)
        set_rng_state(ckpt.rng_state(run.world.rank, run.world.size), run.device)
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        raise RunFolderError(f"{damaged}: {_first(e)}") from None


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _optimizer_state_problem(optimizer: torch.optim.Optimizer) -> str | None:
    """A per-parameter state tensor (a momentum buffer, Adam's moments) that is not the shape
    of its parameter, or not a tensor of numbers: torch would fail on it at the first step."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            for key, value in optimizer.state.get(p, {}).items():
                if not isinstance(value, torch.Tensor):
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        return f"the optimizer's {key} of parameter {i} is not a number"
                    continue
                if value.dim() and tuple(value.shape) != tuple(p.shape):
                    return (f"the optimizer's {key} of parameter {i} has shape "
                            f"{list(value.shape)}, its parameter {list(p.shape)}")
                if not (value.is_floating_point() or value.dim() == 0):
                    return f"the optimizer's {key} of parameter {i} is not floating point"
    return None


def _match_threads(run: Run, saved: int | None) -> None:
    if saved is None or saved == torch.get_num_threads() or run.device.type != "cpu":
        return
    if run.spec.deterministic:
        torch.set_num_threads(int(saved))
        run.log(f"note: using {plural(int(saved), 'thread')}, as the run did "
                "before: CPU results depend on the thread count")
    else:
        run.log(f"note: the run used {plural(int(saved), 'thread')}, this "
                f"process {torch.get_num_threads()}; the weights will differ in the last "
                "bits from an uninterrupted run (--deterministic keeps the count)")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _resume_changes(ckpt: Checkpoint, spec: TrainSpec, dataset: dict[str, Any],
                    steps_done: int, where: str) -> list[str]:
    """What differs from the checkpoint's spec, in words; RunFolderError where it cannot apply."""
    old_spec = ckpt.spec
    old_ds = ckpt.dataset
    if old_ds is not None and old_ds != dataset:
        diff = [f"{k} {_flat(old_ds).get(k)} -> {_flat(dataset).get(k)}"
                for k in sorted(set(_flat(old_ds)) | set(_flat(dataset)))
                if _flat(old_ds).get(k) != _flat(dataset).get(k)]
        raise RunFolderError(
            f"cannot resume: the dataset differs from the checkpoint's ({'; '.join(diff)}); "
            "the run's splits and normalisation come from its dataset. Keep the dataset, or "
            "start a new run in another folder (--out)")
    old = _flat(old_spec.model_dump(mode="json", exclude={"dataset", "output"}))
    new = _flat(spec.model_dump(mode="json", exclude={"dataset", "output"}))
    changed = [k for k in sorted(old) if old[k] != new.get(k)]
    fixed = [k for k in changed if k in ("optimizer.type", "optimizer.decay_norm_and_bias",
                                         "freeze")]
    if fixed:
        raise RunFolderError(
            f"cannot resume with {', '.join(f'{k} {new[k]}' for k in fixed)}: the checkpoint's "
            f"optimizer state was made with {', '.join(f'{k} {old[k]}' for k in fixed)}; "
            "start a new run in another folder (--out)")
    if steps_done:
        stuck = [k for k in changed if k in _EPOCH_KEYS]
        if stuck:
            was = ", ".join(f"{k} {old[k]}" for k in stuck)
            raise RunFolderError(
                f"cannot resume {where} with {', '.join(f'{k} {new[k]}' for k in stuck)}: the "
                f"checkpoint was made with {was}, and the rest of the epoch can only be "
                "replayed with the same. Resume with the same values; a change can apply "
                "from an epoch boundary (the checkpoint of a completed epoch)")
    return [f"{k} {old[k]} -> {new.get(k)}" for k in changed]
