"""The training data as the loop sees it: class weights, the batch check, the dataset entry
kept in the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from shapecheck.data import resolve_path
from shapecheck.trainspec import DatasetSpec, TrainSpec

from .base import TrainError, _rng_state, _set_rng_state


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


def _check_batches(module: nn.Module, x: torch.Tensor, n: int, bs: int, drop_last: bool,
                   device: torch.device, world_size: int = 1) -> None:
    """Every batch size the loop will make goes through the module in training mode.

    BatchNorm, for one, refuses a batch of one sample; better to find out now than
    after a whole epoch's work. Buffers (running statistics) and RNG are restored,
    so the check leaves no trace in the run."""
    if drop_last and n < bs:
        raise TrainError(f"drop_last with batch_size {bs} leaves no batch: the training "
                         f"split has {n} samples")
    last = n % bs
    sizes = sorted({min(bs, n)} | ({last} if last and not drop_last and n > bs else set()))
    if world_size > 1:
        # Each process gets a share of every global batch; none may be left without.
        if min(sizes) < world_size:
            size = min(sizes)
            raise TrainError(
                f"a batch of {size} sample{'s' if size != 1 else ''} cannot be shared by "
                f"{world_size} processes" + (
                    f" (the last batch of each epoch: {n} = {n // bs}×{bs} + {last}); set "
                    "train.drop_last: true (--drop-last) or choose another batch_size"
                    if size == last and size != bs else
                    "; batch_size is the global batch: make it at least the number of processes"))
        sizes = sorted({s // world_size for s in sizes} | {-(-s // world_size) for s in sizes})
        last = -1  # the messages below speak of one process's share
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


