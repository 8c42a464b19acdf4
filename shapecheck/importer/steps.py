"""The traced forward as the importer sees it: a graph of steps, each with the line of source
that made it. Torch-free: the tracer (trace.py) makes the steps, structure.py nests them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# What a step does.
INPUT = "input"  # the forward's tensor argument
LAYER = "layer"  # one layer of the spec (a module or a function call), one tensor in
ADD = "add"  # a + b: the join of a residual
MUL = "mul"  # a * b: the join of a gate
CAT = "cat"  # torch.cat([...], dim=1): the join of a concat or a split
CHUNK = "chunk"  # x.chunk(n, dim=1): the fork of a split
PART = "part"  # one of a chunk's pieces
OTHER = "other"  # a tensor the importer cannot place (a parameter read in forward); fails if used
OUTPUT = "output"  # the tensors a forward returns, where it returns several (a dict, a tuple)
MERGES = (ADD, MUL, CAT)


class ImportFailure(Exception):
    """The module cannot be imported as a spec; the message names the operation and the line."""


@dataclass(frozen=True)
class Source:
    """Where a step was made: the innermost frame of the user's own code."""

    file: str
    line: int
    text: str = ""  # the source line, stripped

    def __str__(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"

    def quoted(self) -> str:
        """'model.py:14 (`x = F.relu(x)`)'."""
        return f"{self}" + (f" (`{self.text}`)" if self.text else "")


@dataclass(eq=False)
class Step:
    kind: str
    inputs: list[Step]
    what: str  # the call as the source writes it, for messages: "self.conv1", "torch.cat"
    where: Source | None = None
    entry: dict[str, Any] | None = None  # LAYER: its spec entry
    part: int = 0  # PART: which piece of its chunk
    scope: str = ""  # qualified name of the module whose forward made the step
    scope_class: str = ""  # that module's class name
    module: str = ""  # LAYER of a module: its qualified name
    order: int = 0  # position in the traced graph (a topological order)
    shape: tuple[int, ...] | None = None  # the output at the traced batch
    users: list[Step] = field(default_factory=list)
    # LAYER of F.interpolate(x, size=other.shape[-2:]): the tensor whose H×W it takes (also
    # the last of its inputs, so that the graph sees it read)
    like: Step | None = None
    keys: list[Any] | None = None  # OUTPUT: the dict's keys (None for a tuple)

    def at(self) -> str:
        """' at model.py:14 (`x = F.relu(x)`)', or '' where the line is unknown."""
        return f" at {self.where.quoted()}" if self.where else ""
