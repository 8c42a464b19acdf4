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


# ---------------------------------------------------------------- TrivialAugment

# torchvision's TrivialAugmentWide: (op, magnitudes over 31 bins, signed).
_BINS = 31
TRIVIAL_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
               "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
               "autocontrast", "equalize")


def _magnitudes(op: str) -> tuple[torch.Tensor | None, bool]:
    if op in ("shear_x", "shear_y", "brightness", "color", "contrast", "sharpness"):
        return torch.linspace(0.0, 0.99, _BINS), True
    if op in ("translate_x", "translate_y"):
        return torch.linspace(0.0, 32.0, _BINS), True
    if op == "rotate":
        return torch.linspace(0.0, 135.0, _BINS), True
    if op == "posterize":
        return 8 - (torch.arange(_BINS) / ((_BINS - 1) / 6)).round().int(), False
    if op == "solarize":
        return torch.linspace(1.0, 0.0, _BINS), False
    return None, False


def trivial_draws(g: torch.Generator, n: int) -> list[tuple[str, float]]:
    """For each of ``n`` images, TrivialAugmentWide's draw: one op, one magnitude, a sign."""
    draws = []
    for _ in range(n):
        op = TRIVIAL_OPS[_randint(g, len(TRIVIAL_OPS))]
        mags, signed = _magnitudes(op)
        m = float(mags[_randint(g, _BINS)]) if mags is not None else 0.0
        if signed and _randint(g, 2):
            m = -m
        draws.append((op, m))
    return draws


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 3:
        return (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    return x.mean(0, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * a + (1.0 - factor) * b).clamp(0, 1)


def _warp(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``x`` (C, H, W) sampled at ``source`` (H, W, 2: column, row of each output pixel),
    nearest, black outside."""
    h, w = x.shape[-2:]
    grid = torch.stack([(2 * source[..., 0] + 1) / w - 1, (2 * source[..., 1] + 1) / h - 1], -1)
    return F.grid_sample(x[None], grid[None].to(x.dtype), mode="nearest", padding_mode="zeros",
                         align_corners=False)[0]


def _geometric(x: torch.Tensor, op: str, m: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                torch.arange(w, dtype=torch.float64), indexing="ij")
    if op == "shear_x":  # about the top-left corner, as torchvision
        src = torch.stack([cols - m * rows, rows], -1)
    elif op == "shear_y":
        src = torch.stack([cols, rows - m * cols], -1)
    elif op == "translate_x":
        src = torch.stack([cols - int(m), rows], -1)
    elif op == "translate_y":
        src = torch.stack([cols, rows - int(m)], -1)
    else:  # rotate m degrees counter-clockwise about the centre
        a = math.radians(m)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        dy, dx = rows - cy, cols - cx
        src = torch.stack([cx + math.cos(a) * dx - math.sin(a) * dy,
                           cy + math.sin(a) * dx + math.cos(a) * dy], -1)
    return _warp(x, src.to(x.device))


def _equalize(x: torch.Tensor) -> torch.Tensor:
    # PIL's ImageOps.equalize, per channel, on the 8-bit levels.
    out = []
    for c in (x * 255).round().clamp(0, 255).long():
        hist = torch.bincount(c.flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(hist.sum()) - int(nonzero[-1])) // 255 if nonzero.numel() else 0
        if step == 0:
            out.append(c.to(x.dtype) / 255)
            continue
        lut = ((torch.cumsum(hist, 0) + step // 2) // step).clamp(0, 255)
        lut = torch.cat([torch.zeros(1, dtype=lut.dtype, device=lut.device), lut[:-1]])
        out.append(lut[c].to(x.dtype) / 255)
    return torch.stack(out)


def trivial_op(x: torch.Tensor, op: str, m: float) -> torch.Tensor:
    """One TrivialAugmentWide op on an image ``x`` (C, H, W) with values in [0, 1]."""
    if op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _geometric(x, op, m)
    if op == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + m)
    if op == "color":
        return _blend(x, _gray(x).expand_as(x), 1 + m)
    if op == "contrast":
        return _blend(x, _gray(x).mean().expand_as(x), 1 + m)
    if op == "sharpness":
        k = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device)
        smooth = F.conv2d(x[:, None], (k / 13)[None, None], padding=1)[:, 0].clamp(0, 1)
        smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]
        smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
        return _blend(x, smooth, 1 + m)
    if op == "posterize":
        levels = (x * 255).round().clamp(0, 255).to(torch.uint8)
        mask = 0xFF ^ (2 ** (8 - int(m)) - 1)
        return (levels & mask).to(x.dtype) / 255
    if op == "solarize":
        return torch.where(x >= m, 1.0 - x, x)
    if op == "autocontrast":
        lo = x.amin(dim=(-2, -1), keepdim=True)
        hi = x.amax(dim=(-2, -1), keepdim=True)
        scale = torch.where(hi > lo, 1.0 / (hi - lo), torch.ones_like(hi))
        return ((x - torch.where(hi > lo, lo, torch.zeros_like(lo))) * scale).clamp(0, 1)
    if op == "equalize":
        return _equalize(x)
    return x


def trivial_augment(xb: torch.Tensor, draws: list[tuple[str, float]], mean: list[float],
                    std: list[float]) -> torch.Tensor:
    """Each normalised image back in [0, 1] (the run's mean and std), changed by its draw,
    and normalised again."""
    c = xb.shape[1]
    m = torch.tensor(mean if len(mean) == c else mean * c, dtype=xb.dtype,
                     device=xb.device).view(c, 1, 1)
    s = torch.tensor(std if len(std) == c else std * c, dtype=xb.dtype,
                     device=xb.device).view(c, 1, 1)
    out = [(trivial_op((x * s + m).clamp(0, 1), op, mag) - m) / s
           for x, (op, mag) in zip(xb, draws)]
    return torch.stack(out)
