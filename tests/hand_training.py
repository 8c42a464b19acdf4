"""A training loop written by hand in plain PyTorch: what shapecheck's loop must equal.

The same data (as shapecheck.training.datasets reads and normalises it), the same initialisation (torch's
seed, then each module's reset_parameters in order) and the same batches (a permutation per
epoch from a generator seeded with (seed, epoch)); everything else is the textbook loop."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
MNIST_5K = ROOT / "examples" / "data" / "mnist-5k"


def lecture_cnn(classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
                         nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(320, classes))


def seeded(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    return model


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(
        (seed * 1_000_003 + epoch) % 2**63))


def batches(n: int, batch: int, seed: int, epoch: int):
    perm = epoch_order(n, seed, epoch)
    for s in range(0, n, batch):
        yield perm[s:s + batch]


def sgd_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch: int,
               seed: int, lr: float, momentum: float = 0.0) -> nn.Module:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                          momentum=momentum)
    return train_epochs(model, opt, x, y, epochs=epochs, batch=batch, seed=seed)


def train_epochs(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor, *, epochs: int, batch: int, seed: int,
                 lr_of_step=None, after_step=None) -> nn.Module:
    """The textbook loop; ``lr_of_step(step)`` sets the rate before each step, and
    ``after_step()`` runs after each."""
    model.train()
    step = 0
    for epoch in range(epochs):
        for idx in batches(x.shape[0], batch, seed, epoch):
            if lr_of_step is not None:
                for g in opt.param_groups:
                    g["lr"] = lr_of_step(step)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if after_step is not None:
                after_step()
            step += 1
    return model


def digits_npz(path: Path, classes: int, n: int) -> Path:
    """The first ``n`` training digits below ``classes`` (and as many test digits), as npz."""

    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(MNIST_5K / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        y = read(f"{prefix}-labels-idx1-ubyte.gz", 8)
        keep = np.flatnonzero(y < classes)[:n]
        parts[f"x_{split}"], parts[f"y_{split}"] = x[keep], y[keep].astype(np.int64)
    np.savez(path, **parts)
    return path
