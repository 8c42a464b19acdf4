"""Dense prediction in training and evaluation: the per-pixel losses, the scores of a split
(a confusion matrix over pixels for ``segment``, squared and absolute errors for
``regress``), and ``predictions.png``.

The scores are sums (counts of pixels, sums of errors), so the ranks of a distributed run
each score a share of a split and add their sums: the IoU of the whole split, exactly, not
a mean of the ranks' IoUs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.atomic import atomic_open
from .dense_datasets import IGNORE_INDEX
from .distributed import World

PREDICTIONS_FILE = "predictions.png"
PREDICTIONS_SHOWN = 6
# A fixed palette: background black, then ten distinct colours (matplotlib's tab10), then
# the same ten darker; ignored pixels white.
_TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
PALETTE = [(0, 0, 0)] + _TAB10 + [(r // 2, g // 2, b // 2) for r, g, b in _TAB10]
IGNORED_COLOUR = (255, 255, 255)


def dense_loss(task: str, loss_name: str, weight: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> Callable[..., torch.Tensor]:
    """The training loss of a dense task: (output, target[, reduction]) -> loss."""
    if task == "regress":
        return F.mse_loss if loss_name == "mse" else F.l1_loss
    fn = F.cross_entropy if loss_name == "cross_entropy" else F.nll_loss
    extra = {"label_smoothing": label_smoothing} if label_smoothing else {}

    def loss(output: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return fn(output, y, weight=weight, ignore_index=IGNORE_INDEX, reduction=reduction,
                  **extra)

    return loss


def pixel_hits(output: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels predicted right, pixels that count) of a segmentation batch, on the device."""
    valid = y != IGNORE_INDEX
    return ((output.argmax(1) == y) & valid).sum(), valid.sum()


@dataclass
class DenseScore:
    """A split's scores: its mean loss, and per task the pixel accuracy, mIoU, per-class IoU
    and confusion matrix (segment) or the MSE, MAE and PSNR (regress)."""

    loss: float
    pixel_acc: float | None = None
    miou: float | None = None
    iou: list[float | None] | None = None  # per class; None: the class is in neither
    confusion: list[list[int]] | None = None  # [true][predicted], over pixels
    mse: float | None = None
    mae: float | None = None
    psnr: float | None = None


def iou_of(confusion: torch.Tensor) -> list[float | None]:
    """Per class: true positives / (true + predicted - true positives); None when the class
    is neither in the targets nor in the predictions."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return [float(t / u) if u > 0 else None for t, u in zip(tp, union)]


def mean_iou(iou: Sequence[float | None]) -> float:
    present = [v for v in iou if v is not None]
    return sum(present) / len(present) if present else 0.0


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error, targets in [0, peak]."""
    return 10 * math.log10(peak * peak / mse) if mse > 0 else math.inf


@torch.inference_mode()
def score_dense(module: nn.Module, x: Any, y: torch.Tensor, task: str, loss_name: str,
                batch: int, classes: int, world: World | None = None) -> DenseScore:
    """The scores of a split in eval mode. With a distributed ``world``, each rank scores
    its share of the images and the sums are added over the ranks."""
    was_training = module.training
    module.eval()
    loss_fn = dense_loss(task, loss_name)
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    device = y.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    abs_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(classes * classes, dtype=torch.int64, device=device)
    try:
        # This rank's share: a contiguous 1/size of the split.
        lo, hi = x.shape[0] * rank // size, x.shape[0] * (rank + 1) // size
        for i in range(lo, hi, batch):
            j = min(i + batch, hi)
            out, yb = module(x[i:j]).float(), y[i:j]
            if task == "regress":
                loss_sum += F.mse_loss(out, yb, reduction="sum").double()
                abs_sum += F.l1_loss(out, yb, reduction="sum").double()
                continue
            loss_sum += loss_fn(out, yb, reduction="sum").double()
            valid = yb != IGNORE_INDEX
            confusion += torch.bincount(yb[valid] * classes + out.argmax(1)[valid],
                                        minlength=classes * classes)
    finally:
        module.train(was_training)
    # float64 holds counts exactly up to 2**53 pixels.
    sums = [float(loss_sum), float(abs_sum), *confusion.cpu().double().tolist()]
    if world is not None:
        sums = world.sum(sums)
    if task == "regress":
        n = y.numel()
        mse, mae = sums[0] / n, sums[1] / n
        return DenseScore(loss=mse if loss_name == "mse" else mae, mse=mse, mae=mae,
                          psnr=psnr(mse))
    matrix = torch.tensor(sums[2:], dtype=torch.float64).view(classes, classes).round().long()
    pixels = int(matrix.sum())
    iou = iou_of(matrix)
    return DenseScore(loss=sums[0] / max(pixels, 1),
                      pixel_acc=int(matrix.diagonal().sum()) / max(pixels, 1),
                      miou=mean_iou(iou), iou=iou, confusion=matrix.tolist())


# ---------------------------------------------------------------- predictions.png


def _colour(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) class indices as (H, W, 3) uint8 in the fixed palette."""
    table = torch.tensor(PALETTE + [IGNORED_COLOUR], dtype=torch.uint8)
    idx = mask.long().clone()
    idx[(idx < 0) | (idx >= len(PALETTE))] = len(PALETTE)  # ignored, or beyond the palette
    return table[idx]


def _grey(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) as (H, W) or (H, W, 3), stretched to [0, 1] for display."""
    img = img.float()
    img = img[0] if img.shape[0] not in (3,) else img.permute(1, 2, 0)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else img * 0


@torch.inference_mode()
def write_predictions(path: Path, module: nn.Module, x: Any, y: torch.Tensor, task: str,
                      classes: Sequence[str] | None = None,
                      shown: int = PREDICTIONS_SHOWN) -> bool:
    """predictions.png: the first ``shown`` images of a split, their targets and the
    module's predictions (masks in the fixed palette). False without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return False
    n = min(shown, x.shape[0])
    was_training = module.training
    module.eval()
    try:
        xb = x[:n]
        out = module(xb).float().cpu()
    finally:
        module.train(was_training)
    xb, yb = xb.cpu(), y[:n].cpu()
    rows = ("image", "target" if task == "regress" else "mask", "prediction")
    fig = Figure(figsize=(1.6 * n + 0.4, 5.4 if task == "segment" else 5.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, n, squeeze=False)
    for j in range(n):
        if task == "segment":
            shown_row = [_grey(xb[j]), _colour(yb[j]), _colour(out[j].argmax(0))]
        else:
            shown_row = [_grey(xb[j]), _grey(yb[j]), _grey(out[j].clamp(0, 1))]
        for i, img in enumerate(shown_row):
            ax = axes[i][j]
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1 if img.dtype != torch.uint8
                      else 255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(rows[i])
    if task == "segment":
        k = out.shape[1]
        names = list(classes) if classes is not None and len(classes) == k else \
            [str(c) for c in range(k)]
        handles = [Patch(color=[v / 255 for v in PALETTE[c % len(PALETTE)]], label=names[c])
                   for c in range(k)]
        fig.legend(handles=handles, loc="lower center", ncol=min(k, 6), fontsize=7,
                   frameon=False)
        fig.subplots_adjust(left=0.06, right=0.99, top=0.97, bottom=0.16, wspace=0.05,
                            hspace=0.05)
    else:
        fig.subplots_adjust(left=0.06, right=0.99, top=0.97, bottom=0.02, wspace=0.05,
                            hspace=0.05)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return True


def format_iou(score: DenseScore, classes: Sequence[str]) -> str:
    """The per-class IoU table, then the confusion matrix over pixels."""
    assert score.iou is not None and score.confusion is not None
    names = [str(c) for c in classes]
    w0 = max(len("class"), *(len(n) for n in names))
    pixels = [sum(row) for row in score.confusion]
    lines = [f"{'class'.ljust(w0)}      IoU   pixels"]
    for name, iou, px in zip(names, score.iou, pixels):
        lines.append(f"{name.ljust(w0)}  {'-' if iou is None else f'{iou:7.2%}':>7}  {px:>7}")
    lines.append(f"{'mean'.ljust(w0)}  {score.miou or 0:7.2%}")
    return "\n".join(lines)
