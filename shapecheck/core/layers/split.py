"""split: branch i gets the i-th slice of the channels, as ``x.chunk(n, dim=1)`` gives it
(ShuffleNetV2); the branch outputs are joined on channels. An empty branch passes its slice
through."""

from typing import Any, Literal

from pydantic import Field

from .base import Dims, ShapeError
from .block import Block, chw
from .concat import join_channels


class Split(Block):
    type: Literal["split"]
    # Raw entries at first; the loader replaces them with validated layers.
    branches: list[list[Any]] = Field(min_length=1)

    name_prefix = "split"
    lists_field = "branches"
    glyph, merge_word = "‖", "split, then concat"
    helper = "Split"
    helper_source = '''
class Split(nn.Module):
    """Branch i gets the i-th of x.chunk(n, dim=1); the outputs are joined on channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(len(self.branches), dim=1)
        return torch.cat([branch(c) for branch, c in zip(self.branches, chunks)], dim=1)
'''

    def slices(self, x: Dims) -> list[int]:
        """The channels of each chunk, as torch.chunk cuts them: ceil(C/n) each, the last one
        smaller. torch.chunk may give fewer than n chunks (4 channels in 3 gives 2 + 2)."""
        if len(x) < 2:
            raise ShapeError("SC209", "split cuts dim 1 (channels), but a 1-d tensor arrives",
                             "flatten with start_dim: 1 (the default) keeps the batch dimension")
        c, n = x[1], len(self.branches)
        size = -(-c // n)
        chunks = -(-c // size)
        if chunks < n:
            raise ShapeError("SC216", f"x.chunk({n}, dim=1) cuts {c} channels into {chunks} "
                             f"chunk{'s' * (chunks > 1)} of at most {size}, not {n}",
                             f"use {chunks} branches, or give the layer before it a multiple "
                             f"of {n} channels ({c + (-c) % n})")
        return [size] * (chunks - 1) + [c - size * (chunks - 1)]

    def branch_inputs(self, x: Dims) -> list[Dims]:
        return [(x[0], s, *x[2:]) for s in self.slices(x)]

    def merge(self, x: Dims, outs: list[Dims]) -> tuple[Dims, str]:
        out, joined = join_channels(outs)
        parts = " + ".join(map(str, self.slices(x)))
        return out, f"{chw(x)} split into {parts} channels; {joined}"
