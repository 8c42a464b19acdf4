"""Modules that have no spec: each one's forward does something import must refuse."""

import torch
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
