"""BatchNorm over the global batch in a distributed run, as one process computes it.

Plain BatchNorm in DDP normalises each rank's share by that share's own statistics, and
keeps rank 0's running statistics: not the one-process run. ``convert`` replaces every
BatchNorm layer with one whose statistics are summed over the ranks: torch's SyncBatchNorm
on CUDA, and on the CPU (gloo, where SyncBatchNorm refuses to run) ``GlobalBatchNorm``
below. The new layers share the old ones' parameters and buffers, so the optimizer, the
state_dict's keys and model.pt stay as they were."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _Sum(torch.autograd.Function):
    """all_reduce as an autograd step: each rank's gradient of the sum is the sum of the
    ranks' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are those of every rank's samples together.

    Mean and variance are taken in two passes (the mean first, then the squared deviations
    from it), each one differentiable all_reduce of per-channel sums, so the gradients are
    those of the one-process layer too."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.running_mean is None):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        totals = _Sum.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _Sum.apply((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                # The running variance is the unbiased one, as nn.BatchNorm keeps it.
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return y


def convert(module: nn.Module, device: torch.device) -> int:
    """Replace ``module``'s BatchNorm layers (in place) with synchronised ones; how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) not in _PLAIN:
                continue
            cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine,
                      child.track_running_stats, device=device)
            # The same tensors, not copies: the optimizer holds these parameters.
            new.weight, new.bias = child.weight, child.bias
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, buf, getattr(child, buf))
            new.train(child.training)
            setattr(parent, name, new)
            count += 1
    return count
