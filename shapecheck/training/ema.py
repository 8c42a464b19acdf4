"""Weight EMA (``ema: {decay}``): an exponential moving average of the weights, kept beside
the run and saved as ``model_ema.pt``.

The same as torch's ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
use_buffers=True)`` updated after every optimizer step: the first update copies the weights,
each later one moves every floating-point tensor of the state dict (parameters and BatchNorm's
running statistics) ``1 - decay`` of the way to the model's; integer buffers are copied."""

from __future__ import annotations

import copy

import torch
from torch import nn

EMA_FILE = "model_ema.pt"


class Ema:
    def __init__(self, decay: float, state: dict[str, torch.Tensor] | None = None) -> None:
        self.decay = decay
        self.state = state  # None until the first optimizer step
        self._module: nn.Module | None = None

    def to(self, device: torch.device) -> Ema:
        if self.state is not None:
            self.state = {k: v.to(device) for k, v in self.state.items()}
        return self

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        current = module.state_dict()
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in current.items()}
            return
        for key, mine in self.state.items():
            if mine.is_floating_point():
                mine.lerp_(current[key].detach(), 1 - self.decay)
            else:
                mine.copy_(current[key])

    def cpu_state(self) -> dict[str, torch.Tensor] | None:
        return None if self.state is None else {k: v.detach().to("cpu", copy=True)
                                                for k, v in self.state.items()}

    def module(self, like: nn.Module) -> nn.Module:
        """A copy of ``like`` holding the averaged weights, for scoring."""
        if self._module is None:
            self._module = copy.deepcopy(like)
        assert self.state is not None
        self._module.load_state_dict(self.state)
        return self._module
