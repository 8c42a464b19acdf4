"""concat: every branch gets the block's input; their outputs are joined on channels (dim 1)."""

from typing import Any, Literal

from pydantic import Field

from .base import Dims, ShapeError
from .block import Block, chw


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


def join_channels(outs: list[Dims], names: list[str] | None = None) -> tuple[Dims, str]:
    """torch.cat(outs, dim=1): every dim but channels must agree. ``names`` name the inputs in
    messages (default: branch 0, branch 1 …)."""
    labels = names or [""] * len(outs)  # the explain line names only named inputs
    names = names or [f"branch {i}" for i in range(len(outs))]  # as a concat block's
    for name, out in zip(names, outs):
        if len(out) < 2:  # torch.cat(dim=1) raises: there is no dim 1
            raise ShapeError(
                "SC209",
                f"{name} gives a 1-d tensor, but torch.cat joins on dim 1 (channels)",
                "flatten with start_dim: 1 (the default) keeps the batch dimension",
            )
    first = outs[0]
    for name, out in zip(names[1:], outs[1:]):
        if len(out) != len(first) or out[:1] + out[2:] != first[:1] + first[2:]:
            raise ShapeError(
                "SC212",
                f"{name} gives {chw(out)} but {names[0]} gives {chw(first)}: "
                "torch.cat needs every dim but channels to agree",
                f"make {name} keep {chw(first[1:])}: stride 1 and padding (k−1)/2 "
                "on its convs and pools" if len(out) == len(first) == 4 else None,
            )
    channels = sum(out[1] for out in outs)
    out = (first[0], channels, *first[2:])
    parts = " + ".join(f"{label} {chw(o)}".strip() for label, o in zip(labels, outs))
    return out, f"{parts} → {chw(out)} (joined on channels)"
