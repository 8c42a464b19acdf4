"""A classification split scored while training: its batches shared out over the ranks, the
results put back together in batch order, so N processes give the one-process numbers bit
for bit (each batch is the same computation; the sums are taken in the same order).

A streamed split (an image folder read from disk) is read by the run's DataLoader workers,
a batch at a time, as training reads it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import loss_function
from .data import LazyImages
from .distributed import World


def score_split(module: nn.Module, x: Any, y: torch.Tensor, loss_name: str, batch: int,
                num_classes: int, world: World, workers: int = 0
                ) -> tuple[float, float, float | None]:
    """Mean loss (the plain loss: no weights, no smoothing), accuracy and, with 10 or more
    classes, top-5 accuracy over a split; every rank gets the same numbers."""
    n = x.shape[0]
    mine = share(n, batch, world)
    with_top5 = num_classes >= 10
    rows: list[tuple[int, float, int, int]] = []
    was_training = module.training
    module.eval()
    loss_fn = loss_function(loss_name)
    try:
        with torch.no_grad():
            losses, hits, hits5 = [], [], []
            for xb, yb in _batches(x, y, [(k * batch, min(n, (k + 1) * batch)) for k in mine],
                                   workers):
                out = module(xb)
                losses.append(loss_fn(out, yb, reduction="sum"))
                # argmax, not topk's first column: topk orders ties in no promised way.
                hits.append((out.argmax(1) == yb).sum())
                hits5.append((out.topk(5, 1).indices == yb[:, None]).any(1).sum()
                             if with_top5 else hits[-1])
            if mine:  # one transfer for the rank's batches
                values = torch.stack([torch.stack(losses).double(), torch.stack(hits).double(),
                                      torch.stack(hits5).double()], 1).cpu().tolist()
                rows = [(k, *v) for k, v in zip(mine, values)]
    finally:
        module.train(was_training)
    everything = sorted(r for part in world.gather(rows) for r in part)
    # The one-process sum: float32 batch sums, added in float64 in batch order.
    loss_sum = float(torch.tensor([r[1] for r in everything], dtype=torch.float32)
                     .to(torch.float64).sum())
    correct = sum(int(r[2]) for r in everything)
    top5 = sum(int(r[3]) for r in everything)
    return loss_sum / n, correct / n, (top5 / n if with_top5 else None)


def share(n: int, batch: int, world: World) -> list[int]:
    """The batches (their indices) this rank scores: every world-size-th, from its rank."""
    return [k for k in range(-(-n // batch)) if k % world.size == world.rank]


def _batches(x: Any, y: torch.Tensor, spans: list[tuple[int, int]], workers: int):
    if not isinstance(x, LazyImages):
        for lo, hi in spans:
            yield x[lo:hi], y[lo:hi]
        return
    loader = torch.utils.data.DataLoader(
        x.ds, batch_sampler=[list(range(lo, hi)) for lo, hi in spans], num_workers=workers,
        pin_memory=x.device is not None and x.device.type == "cuda")
    for xb, _ in loader:
        lo, hi = spans.pop(0)
        xb = xb.to(x.device) if x.device is not None else xb
        yield xb, y[lo:hi]
