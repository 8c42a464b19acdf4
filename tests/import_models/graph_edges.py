"""Small forwards at the edges of graph import: a tensor squared, a tuple of outputs, a size
given as the pair (x.size(2), x.size(3))."""

import torch.nn.functional as F
from torch import nn


class Square(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
    def forward(self, x):
        y = self.conv(x)
        return y * y + y

class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    def forward(self, x):
        a = self.a(x)
        return a, self.b(a)

class SizePair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    def forward(self, x):
        y = self.a(x)
        return F.interpolate(y, size=(x.size(2), x.size(3)), mode="nearest")
