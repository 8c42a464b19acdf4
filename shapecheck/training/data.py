"""The training data as the loop sees it: class weights, the batch check, the dataset entry
kept in the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.trainspec import AugmentSpec, DatasetSpec, TrainSpec
from .augment import (
    erase,
    erasing_boxes,
    resized_crop,
    resized_crop_boxes,
    trivial_augment,
    trivial_draws,
)
from .base import TrainError, rng_state, set_rng_state
from .datasets import list_folder, read_image, resolve_path


def class_weights_for(spec: TrainSpec, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    w = spec.class_weights
    if w is None:
        return None
    if w == "balanced":
        from .dense_datasets import IGNORE_INDEX

        y = y[y != IGNORE_INDEX] if y.ndim > 1 else y  # a mask's pixels, the ignored left out
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


def epoch_seed(seed: int, epoch: int) -> int:
    # The data order of an epoch depends on (seed, epoch) only, never on what
    # ran before, which is what lets a resumed run replay it exactly.
    return (seed * 1_000_003 + epoch) % (2**63)


def check_batches(module: nn.Module, x: torch.Tensor, n: int, bs: int, drop_last: bool,
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
    rng = rng_state(device)
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
        set_rng_state(rng, device)


def check_output(module: nn.Module, x: torch.Tensor, num_classes: int,
                  output_shape: tuple[int, ...] | None = None) -> None:
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
    if output_shape is not None:  # dense: the shape the targets were checked against
        if tuple(out.shape[1:]) != tuple(output_shape):
            raise TrainError(f"the model's output has shape {list(out.shape)}; its targets "
                             f"need (batch, {', '.join(map(str, output_shape))})")
        return
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise TrainError(
            f"the model's output has shape {list(out.shape)}; training a classifier of "
            f"{num_classes} classes needs (batch, {num_classes})")


def absolute_dataset(ds: DatasetSpec, base_dir: Path) -> dict[str, Any]:
    d = ds.model_dump(mode="json", exclude_none=True)
    path = resolve_path(ds, base_dir)
    if path is not None:
        d["path"] = str(path.resolve())
    return d




# ---------------------------------------------------------------- streaming image folders


class FolderImages(torch.utils.data.Dataset):
    """Image files read when asked for: float32 ``(C, H, W)``, normalised, and the label.

    Memory holds the paths, never the images."""

    def __init__(self, files: list[str], labels: np.ndarray, shape: tuple[int, int, int],
                 resize: bool, mean: list[float] | None, std: list[float] | None) -> None:
        self.files, self.labels = files, torch.from_numpy(labels)
        self.shape, self.resize = shape, resize
        c = shape[0]
        self.mean = torch.tensor(mean if mean is not None else [0.0] * c).view(c, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * c).view(c, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        arr = read_image(self.files[i], self.shape, self.resize)
        # A copy: PIL's buffer is read-only, and torch wants to own what it wraps.
        x = torch.from_numpy(np.array(arr.transpose(2, 0, 1))).float().div_(255)
        return x.sub_(self.mean).div_(self.std), self.labels[i]


class LazyImages:
    """Stands where the loop keeps an in-memory split: ``shape[0]`` and slices (read now,
    in this process) for the batch checks and for scoring."""

    def __init__(self, ds: FolderImages, device: torch.device | None = None) -> None:
        self.ds, self.device = ds, device
        self.shape = (len(ds), *ds.shape)

    def to(self, device: torch.device) -> LazyImages:
        return LazyImages(self.ds, device)

    def __getitem__(self, key: slice) -> torch.Tensor:
        x = torch.stack([self.ds[i][0] for i in range(len(self.ds))[key]])
        return x.to(self.device) if self.device is not None else x


@dataclass
class StreamedData:
    """The loop's view of a streamed image folder: as ``shapecheck.training.datasets.Dataset``."""

    x_train: LazyImages
    y_train: torch.Tensor
    x_test: LazyImages
    y_test: torch.Tensor
    x_val: LazyImages | None
    y_val: torch.Tensor | None
    mean: list[float]
    std: list[float]
    classes: list[str]
    source: str
    notes: list[str]
    train_set: FolderImages

    @property
    def num_val(self) -> int:
        return 0 if self.x_val is None else self.x_val.shape[0]

    @property
    def num_test(self) -> int:
        return self.x_test.shape[0]


def stream_folder(spec: DatasetSpec, *, input_shape: tuple[int, int, int], num_classes: int,
                  base_dir: Path, workers: int) -> StreamedData:
    """An image folder as datasets that read from disk. Without mean/std in the entry, one
    pass over the training images (by ``workers`` processes) measures them."""
    lists = list_folder(spec, input_shape=input_shape, num_classes=num_classes,
                        base_dir=base_dir)
    shape = tuple(input_shape)
    mean, std = lists.mean, lists.std
    if mean is None or std is None:
        mean, std = _measure(FolderImages(*lists.train, shape, spec.resize, None, None), workers)

    def make(pair: tuple[list[str], np.ndarray]) -> FolderImages:
        return FolderImages(pair[0], pair[1], shape, spec.resize, mean, std)

    train, test = make(lists.train), make(lists.test)
    val = make(lists.val) if lists.val is not None else None
    return StreamedData(
        x_train=LazyImages(train), y_train=train.labels, x_test=LazyImages(test),
        y_test=test.labels, x_val=LazyImages(val) if val is not None else None,
        y_val=val.labels if val is not None else None, mean=mean, std=std,
        classes=lists.classes, source=lists.source, notes=lists.notes, train_set=train)


def _measure(ds: FolderImages, workers: int) -> tuple[list[float], list[float]]:
    # Sums in float64 over batches: memory stays one batch, whatever the dataset's size.
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers)
    c = ds.shape[0]
    total, sq, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for x, _ in loader:
        x = x.double()
        total += x.sum(dim=(0, 2, 3))
        sq += (x ** 2).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = ((sq / n - mean ** 2).clamp(min=0) * n / max(n - 1, 1)).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return [float(v) for v in mean], [float(v) for v in std]


def epoch_loader(ds: FolderImages, batches: list[list[int]], workers: int,
                 pin: bool) -> torch.utils.data.DataLoader:
    """The epoch's batches, in the loop's order, read by ``workers`` processes ahead of it."""
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers,
                                       pin_memory=pin, persistent_workers=False)


def augment(xb: torch.Tensor, spec: AugmentSpec, seed: int,
            yb: torch.Tensor | None = None,
            share: tuple[torch.Tensor, int] | None = None,
            norm: tuple[list[float], list[float]] | None = None) -> Any:
    """``xb`` flipped and cropped as ``spec`` says, the draws made from ``seed`` alone (on
    the CPU, whatever the device), so a resumed run draws the same.

    ``share`` (positions, global batch size): ``xb`` holds the samples at ``positions`` of
    the global batch (a rank's share); the draws are made for the whole global batch and
    theirs taken, so each sample is changed as in one process. ``norm`` (mean, std): the
    run's normalisation, which ``trivial`` undoes to work on [0, 1] images.

    With dense targets ``yb`` (masks (B, H, W) or images (B, C, sH, sW)), (xb, yb): each
    target gets its image's flip and crop, scaled by s when it is s times the image's size;
    a mask's padding is ignored (IGNORE_INDEX), a target image's is 0."""
    g = torch.Generator().manual_seed(seed)
    b, w = xb.shape[0], xb.shape[3]
    n, mine = (b, slice(None)) if share is None else (share[1], share[0])
    if spec.flip:
        flip = (torch.rand(n, generator=g) < 0.5)[mine].to(xb.device)
        xb = torch.where(flip.view(b, 1, 1, 1), xb.flip(3), xb)
        if yb is not None:
            yb = torch.where(flip.view(b, *[1] * (yb.ndim - 1)), yb.flip(-1), yb)
    p = spec.crop_padding
    if p:
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=g)[mine]
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=g)[mine]
        xb = _crop(xb, p, dy, dx)
        if yb is not None:
            from .dense_datasets import IGNORE_INDEX

            mask = yb.ndim == 3
            y4 = yb[:, None] if mask else yb
            s = y4.shape[-1] // w  # the target's scale: 1, or 2 for a ×2 super-resolution
            y4 = _crop(y4, p * s, dy * s, dx * s, IGNORE_INDEX if mask else 0)
            yb = y4[:, 0] if mask else y4
    h = xb.shape[2]
    if spec.resized_crop is not None:  # classification only (check_spec)
        boxes = resized_crop_boxes(g, n, h, w, spec.resized_crop.scale, spec.resized_crop.ratio)
        xb = resized_crop(xb, _take(boxes, mine))
    if spec.trivial:
        c = xb.shape[1]
        mean, std = norm if norm is not None else ([0.0] * c, [1.0] * c)
        xb = trivial_augment(xb, _take(trivial_draws(g, n), mine), mean, std)
    if spec.erasing is not None:
        e = spec.erasing
        xb = erase(xb, _take(erasing_boxes(g, n, h, w, e.p, e.scale, e.ratio), mine), e.value)
    return xb if yb is None else (xb, yb)


def _take(draws: list, mine: Any) -> list:
    return draws[mine] if isinstance(mine, slice) else [draws[int(i)] for i in mine]


def _crop(xb: torch.Tensor, p: int, dy: torch.Tensor, dx: torch.Tensor,
          fill: float = 0) -> torch.Tensor:
    """Each image of ``xb`` padded by ``p`` (with ``fill``) and cropped back to its size at
    offsets (dy, dx)."""
    b, _, h, w = xb.shape
    padded = torch.nn.functional.pad(xb, (p, p, p, p), value=fill)
    rows = (dy + torch.arange(h)).to(xb.device)[:, :, None]
    cols = (dx + torch.arange(w)).to(xb.device)[:, None, :]
    batch = torch.arange(b, device=xb.device)[:, None, None]
    # One gather for the whole batch: (b, h, w, c) back to (b, c, h, w).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
