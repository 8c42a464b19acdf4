"""gate: y = x · body(x), where the body computes a gate from the input, as squeeze-and-
excitation does (adaptiveavgpool2d 1 → conv 1×1 → relu → conv 1×1 → sigmoid gives C×1×1).
The product broadcasts as torch's does."""

from typing import Any, Literal

from pydantic import Field

from .base import Dims, ShapeError
from .block import MIXED_RANKS, Block, broadcast, check_same_rank, chw


class Gate(Block):
    type: Literal["gate"]
    # Raw entries at first; the loader replaces them with validated layers.
    body: list[Any] = Field(min_length=1)

    name_prefix = "gate"
    list_fields = ("body",)
    glyph, merge_word = "⊗", "gate (multiply)"
    merges_input = True
    spatial_merge = "broadcast"
    stricter_than_torch = (MIXED_RANKS,)
    helper = "Gate"
    helper_source = '''
class Gate(nn.Module):
    """y = x · body(x): the body computes a gate from the input (squeeze-and-excitation)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.body(x)
'''

    def merge(self, x: Dims, outs: list[Dims]) -> tuple[Dims, str]:
        (gate,) = outs
        check_same_rank("multiply", gate, x, ("gate", "input"))
        out = broadcast(x, gate)
        if out is not None:
            return out, f"input {chw(x)} × gate {chw(gate)} = {chw(out)}"
        raise ShapeError("SC217", f"the gate gives {chw(gate)}, which cannot multiply the "
                         f"input {chw(x)}", _gate_hint(x, gate))


def _gate_hint(x: Dims, gate: Dims) -> str | None:
    """What the gate must give: one value per channel (C×1×1) or one per value of the input."""
    if len(x) != len(gate) or len(x) < 2:
        return (f"the gate must keep the input's {len(x)} dims: end the body with a layer "
                f"giving {chw(x[:2] + (1,) * (len(x) - 2))} or {chw(x)}")
    fixes = []
    if gate[1] not in (x[1], 1):
        fixes.append(f"make its last layer give {x[1]} channels (one gate per input channel)")
    if len(x) > 2 and any(g not in (n, 1) for g, n in zip(gate[2:], x[2:])):
        fixes.append("pool it to 1×1 (adaptiveavgpool2d with output_size: 1 at the start of "
                     f"the body) or keep {'×'.join(map(str, x[2:]))}")
    return "; ".join(fixes) or None
