"""concat: every branch gets the block's input; their outputs are joined on channels (dim 1)."""

from typing import Any, Literal

from pydantic import Field

from .base import Dims
from .block import Block, join_channels

__all__ = ["Concat", "join_channels"]  # join_channels is imported from here too


class Concat(Block):
    type: Literal["concat"]
    # Raw entries at first; the loader replaces them with validated layers.
    branches: list[list[Any]] = Field(min_length=1)  # an empty branch is the identity

    name_prefix = "concat"
    lists_field = "branches"
    glyph, merge_word = "‖", "concat"
    helper = "Concat"
    helper_source = '''
class Concat(nn.Module):
    """Every branch gets the same input; their outputs are joined on channels (dim 1)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)
'''

    def merge(self, x: Dims, outs: list[Dims]) -> tuple[Dims, str]:
        return join_channels(outs)

