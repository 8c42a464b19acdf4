"""Augmentations written on torch tensors (torchvision's compiled ops do not load everywhere),
each drawing from a CPU generator so that a resumed run, and every rank of a distributed one,
draws the same: RandomResizedCrop and RandomErasing as torchvision defines them, and
mixup/cutmix with their soft targets.

Per-sample draws are made for the whole global batch (``n`` samples) and the caller's samples
(``mine``: their positions in it) are taken, as ``data.augment`` does for flips and crops."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=g))


def _randint(g: torch.Generator, hi: int) -> int:
    return int(torch.randint(0, hi, (1,), generator=g))


def resized_crop_boxes(g: torch.Generator, n: int, h: int, w: int, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> list[tuple[int, int, int, int]]:
    """torchvision's RandomResizedCrop.get_params for each of ``n`` images: (top, left,
    height, width)."""
    area, log_ratio = h * w, (math.log(ratio[0]), math.log(ratio[1]))
    boxes = []
    for _ in range(n):
        for _ in range(10):
            target = area * _uniform(g, *scale)
            aspect = math.exp(_uniform(g, *log_ratio))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                boxes.append((_randint(g, h - ch + 1), _randint(g, w - cw + 1), ch, cw))
                break
        else:  # the centre crop of the nearest allowed ratio
            in_ratio = w / h
            if in_ratio < min(ratio):
                cw, ch = w, round(w / min(ratio))
            elif in_ratio > max(ratio):
                ch, cw = h, round(h * max(ratio))
            else:
                cw, ch = w, h
            boxes.append(((h - ch) // 2, (w - cw) // 2, ch, cw))
    return boxes


def resized_crop(xb: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Each image cropped to its box and resized back (bilinear, antialiased)."""
    h, w = xb.shape[-2:]
    return torch.cat([F.interpolate(x[None, :, t:t + ch, l:l + cw], size=(h, w),
                                    mode="bilinear", align_corners=False, antialias=True)
                      for x, (t, l, ch, cw) in zip(xb, boxes)])


def erasing_boxes(g: torch.Generator, n: int, h: int, w: int, p: float,
                  scale: tuple[float, float], ratio: tuple[float, float]
                  ) -> list[tuple[int, int, int, int] | None]:
    """torchvision's RandomErasing.get_params for each image, or None (not erased)."""
    area, log_ratio = h * w, (math.log(ratio[0]), math.log(ratio[1]))
    boxes: list[tuple[int, int, int, int] | None] = []
    for _ in range(n):
        box = None
        if _uniform(g, 0, 1) < p:
            for _ in range(10):
                target = area * _uniform(g, *scale)
                aspect = math.exp(_uniform(g, *log_ratio))
                eh, ew = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
                if eh < h and ew < w:
                    box = (_randint(g, h - eh + 1), _randint(g, w - ew + 1), eh, ew)
                    break
        boxes.append(box)
    return boxes


def erase(xb: torch.Tensor, boxes: list, value: float) -> torch.Tensor:
    xb = xb.clone()
    for x, box in zip(xb, boxes):
        if box is not None:
            t, l, eh, ew = box
            x[:, t:t + eh, l:l + ew] = value
    return xb


def mix(xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator, classes: int,
        mixup: float | None, cutmix: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one of them, half the time each when both are given) of the batch with
    itself rolled by one sample: images mixed, and soft targets ``lam·y + (1 − lam)·y'`` with
    lam from Beta(alpha, alpha) (cutmix: the share of the image kept)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
    use_cutmix = cutmix is not None and (mixup is None or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    partner = xb.roll(1, 0)
    if use_cutmix:
        h, w = xb.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        t, b = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        l, r = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        xb = xb.clone()
        xb[:, :, t:b, l:r] = partner[:, :, t:b, l:r]
        lam = 1.0 - (b - t) * (r - l) / (h * w)
    else:
        xb = xb * lam + partner * (1.0 - lam)
    one = F.one_hot(yb, classes).to(xb.dtype)
    return xb, one * lam + one.roll(1, 0) * (1.0 - lam)
