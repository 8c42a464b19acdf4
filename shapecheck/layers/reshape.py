"""flatten: merges dims start_dim..end_dim into one, as nn.Flatten (start_dim=1 keeps the batch)."""

import math
from typing import Literal

from .base import Context, Dims, Inferred, Int, LayerSpec, ShapeError, fmt, times


def wrap_dim(dim: int, ndim: int, what: str) -> int:
    if not -ndim <= dim < ndim:
        raise ShapeError(
            "SC210",
            f"{what}={dim} is out of range for a {ndim}-d tensor (valid: {-ndim} to {ndim - 1})",
            f"use a {what} between {-ndim} and {ndim - 1}",
        )
    return dim % ndim


class Flatten(LayerSpec):
    type: Literal["flatten"]
    start_dim: Int = 1
    end_dim: Int = -1

    torch_class = "Flatten"
    family = "reshape"
    name_prefix = "flatten"
    starts_classifier = True

    def settings(self) -> str:
        return "" if (self.start_dim, self.end_dim) == (1, -1) else f"{self.start_dim}..{self.end_dim}"

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        start = wrap_dim(self.start_dim, len(x), "start_dim")
        end = wrap_dim(self.end_dim, len(x), "end_dim")
        if start > end:
            raise ShapeError(
                "SC210",
                f"start_dim={self.start_dim} comes after end_dim={self.end_dim} "
                f"on a {len(x)}-d tensor",
                "use start_dim: 1, end_dim: -1 to flatten everything but the batch",
            )
        merged = math.prod(x[start : end + 1])
        out = (*x[:start], merged, *x[end + 1 :])
        shown = ["N" if i == 0 else str(x[i]) for i in range(start, end + 1)]
        line = f"dims {start}..{end}: {' × '.join(shown)} = {fmt(merged)}" if start > 0 else \
            f"dims {start}..{end}: {' × '.join(shown)}"
        return Inferred(out=out, explain=[line],
                        features_from=f"{self.name}: {times(x[start:end + 1])} = {fmt(merged)}")
