"""Modules that have no spec: each one's forward does something import must refuse."""

import torch
import torch.nn.functional as F
from torch import nn


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


class Spectrum(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(torch.fft.fft2(x).real)


class Doubling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class CustomOp(nn.Module):
    def forward(self, x):
        return Doubling.apply(x)


class NeedsWidth(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)

    def forward(self, x):
        return self.conv(x)


class ReadsParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, 1, 8, 8))  # per position: no layer scale

    def forward(self, x):
        return x * self.scale


class Crossing(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        a = self.a(x)
        b = self.b(x) + a
        return torch.cat([a + x, b], 1)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x), x


class BufferNorm(nn.Module):
    """F.layer_norm with a buffer as its weight: no layernorm holds that."""

    def __init__(self):
        super().__init__()
        self.register_buffer("gain", torch.ones(3))

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), (3,), self.gain).permute(0, 3, 1, 2)


class FrozenBatchNorm2d(nn.Module):
    """Named as torchvision's, but its weight and bias are parameters: not a frozen norm."""

    def __init__(self, num_features=3, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var + self.eps).rsqrt().reshape(1, -1, 1, 1)
        return x * scale + (self.bias - self.running_mean * self.weight).reshape(1, -1, 1, 1)


class PiecesApart(nn.Module):
    """The pieces of a chunk added, not joined: no split block, and no layer for a piece."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return self.conv(a) + b


class SameTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        return {"a": y, "b": y}


class ComputedSize(nn.Module):
    def forward(self, x):
        h, w = x.shape[-2:]
        return torch.nn.functional.interpolate(x, size=(h * 2, w))
