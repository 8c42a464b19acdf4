"""What the loop, the run folder and evaluation share: the error type, devices, losses, RNG."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class TrainError(Exception):
    """Training cannot start or cannot go on. The message says why and what was kept."""


class RunFolderError(TrainError):
    """The run folder cannot be used as asked: a file in it is damaged or not shapecheck's, or
    its checkpoint does not fit the run (another architecture, optimizer or dataset). An input
    error (exit 2): the spec may be fine; the folder, or what was asked of it, is not."""


# ---------------------------------------------------------------- small helpers


def select_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if available, then mps, then cpu. Asking for a missing one is a TrainError."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("device cuda was asked for, but this PyTorch sees no CUDA device")
    if name == "mps" and not mps_ok:
        raise TrainError("device mps was asked for, but it is not available here")
    return torch.device(name)


def last_layer(module: nn.Module) -> nn.Module:
    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    return leaves[-1] if leaves else module


def default_loss(module: nn.Module) -> str:
    """``nll_loss`` when the module ends in LogSoftmax, else ``cross_entropy``."""
    return "nll_loss" if isinstance(last_layer(module), nn.LogSoftmax) else "cross_entropy"


def loss_function(name: str) -> Callable[..., torch.Tensor]:
    return {"cross_entropy": F.cross_entropy, "nll_loss": F.nll_loss}[name]


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


@torch.inference_mode()
def predict(module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_name: str,
             batch: int, top5: list[int] | None = None) -> tuple[float, torch.Tensor]:
    """(summed loss, predictions) over a whole split, in eval mode.

    With a list ``top5``, the count of samples whose class is among the five highest
    scores is appended to it."""
    was_training = module.training
    module.eval()
    loss_fn = loss_function(loss_name)
    losses, preds, hits5 = [], [], []
    try:
        for i in range(0, x.shape[0], batch):
            out = module(x[i:i + batch])
            losses.append(loss_fn(out, y[i:i + batch], reduction="sum"))
            # argmax, not topk's first column: topk orders ties in no promised way.
            preds.append(out.argmax(1))
            if top5 is not None:
                hits5.append((out.topk(5, 1).indices == y[i:i + batch, None]).any(1).sum())
    finally:
        module.train(was_training)
    if top5 is not None:
        top5.append(int(torch.stack(hits5).sum()))
    return float(torch.stack(losses).to("cpu", torch.float64).sum()), torch.cat(preds)


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}{'es' if word.endswith(('s', 'sh', 'x', 'tch')) else 's'}"


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


