"""The traced graph (a DAG of steps) as the spec's nested series and parallel structure.

A spec is a tree: layers in series, and blocks whose branches all start from one tensor and
meet again in one merge (an add, a product, a concatenation). The graph is turned into that
tree by finding its fork/join regions with post-dominators:

- Walking forward from the input, a step used by one layer continues the series.
- A step used by several steps is a fork. Its join is the first step every path from the fork
  must pass: the nearest common post-dominator of its users. The join must be a merge; each of
  its inputs is one branch, made of the steps between the fork and that input, and those
  branches must not share steps or read tensors from outside the block. Each branch is
  itself a series, nested forks included, so the same walk converts it.
- The merge says which block it is: ``a + b`` a residual (the computed path is the body, the
  other the shortcut; a path that is the fork itself is the identity), ``x * g(x)`` a gate,
  ``torch.cat(dim=1)`` a concat, and a ``x.chunk(n, dim=1)`` whose pieces meet again in a cat
  a split. An activation that is the only user of a residual's add becomes its
  ``activation``.

Anything else (a graph that is not series-parallel, a product of two computed tensors) is an
ImportFailure naming the operation and its line.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from functools import reduce

from .steps import ADD, CAT, CHUNK, INPUT, LAYER, MUL, PART, ImportFailure, Source, Step


@dataclass
class Leaf:
    """One layer of the spec."""

    entry: dict
    step: Step  # the step whose output is the layer's


@dataclass
class Nest:
    """A block of the spec; its branches are lists of Leaf and Nest, by branch key."""

    type: str
    branches: list[tuple[str | int, list]]
    step: Step  # the step whose output is the block's (its merge, or the activation after it)
    where: Source | None
    scope: str  # the module whose forward merges: the block's name, where it makes one
    scope_class: str = ""  # that module's class
    activation: str | None = None
    name: str | None = None


@dataclass
class Use:
    """Blocks written once as a template: ``repeat`` instances named ``name_0`` … (or one
    named ``name``), which stand for ``members``."""

    template: str
    name: str
    repeat: int
    members: list[Nest]


def identifier(qualname: str) -> str | None:
    """A module's qualified name as a layer name (`layer1.0.conv1` -> `layer1_0_conv1`), or
    None where it makes no identifier (`0.3` in a bare nn.Sequential: automatic names read
    better there)."""
    name = qualname.replace(".", "_")
    if not name.isidentifier() or not name.isascii() or keyword.iskeyword(name):
        return None
    if name.startswith("__"):  # Python would mangle it as an attribute
        return None
    return name


class _Graph:
    def __init__(self, steps: list[Step], output: Step):
        self.output = output
        live = {output}
        for step in reversed(steps):  # users come after their inputs
            if step in live:
                live.update(step.inputs)
        self.live = live
        # The immediate post-dominator of every live step, the output being the root.
        self.ipdom: dict[Step, Step | None] = {output: None}
        for step in reversed(steps):
            if step in live and step is not output:
                users = self.users(step)
                self.ipdom[step] = reduce(self.meet, users)

    def users(self, step: Step) -> list[Step]:
        return [u for u in step.users if u in self.live]

    def meet(self, a: Step, b: Step) -> Step:
        """The nearest step that post-dominates both (a post-dominator comes later in order)."""
        while a is not b:
            while a.order < b.order:
                a = self.ipdom[a]
            while b.order < a.order:
                b = self.ipdom[b]
        return a


def nest(steps: list[Step], output: Step) -> list:
    """The spec's layer tree for the traced steps (in graph order) returning ``output``."""
    inputs = [s for s in steps if s.kind == INPUT]
    graph = _Graph(steps, output)
    if output.kind == INPUT:
        raise ImportFailure("the forward returns its input unchanged: there is no layer to "
                            "import")
    region = _closure(output, inputs[0], None)
    items = _series(graph, inputs[0], output, region)
    _name_blocks(items)
    return items


def _closure(end: Step, start: Step, join: Step | None) -> set[Step]:
    """The steps between ``start`` (excluded) and ``end`` (included), found backwards from
    ``end``. Every one must be computed from ``start``: a step that reads another tensor
    (a parameter used directly, a tensor made in forward) is refused here."""
    found, todo = set(), [end] if end is not start else []
    while todo:
        step = todo.pop()
        if step in found:
            continue
        found.add(step)
        if not step.inputs or step.order < start.order:
            where = f" joined by {join.what}{join.at()}" if join is not None else ""
            raise ImportFailure(
                f"{step.what}{step.at()} uses a tensor that does not come from the "
                f"{'block' if join is not None else 'forward'}'s input{where}: only layers "
                "applied to the input, and blocks of them, make a spec")
        todo += [s for s in step.inputs if s is not start]
    return found


def _series(graph: _Graph, entry: Step, exit_: Step, region: set[Step]) -> list:
    """The layers and blocks from ``entry`` (excluded) to ``exit_`` (included)."""
    items: list = []
    current = entry
    while current is not exit_:
        users = [u for u in graph.users(current) if u in region]
        if not users:  # cannot happen for a closure; a guard against a walk past the exit
            raise ImportFailure(f"{current.what}{current.at()}: its result is lost")
        if len(users) == 1 and users[0].kind == LAYER:
            current = users[0]
            items.append(Leaf(current.entry, current))
            continue
        if len(users) == 1 and users[0].kind == CHUNK:
            block, current = _split(graph, users[0], region)
        else:
            join = reduce(graph.meet, users)
            block, current = _block(graph, current, join, region)
        items.append(block)
    return items


def _branches(graph: _Graph, fork: Step, join: Step) -> list[tuple[set[Step], Step]]:
    """Each input of ``join`` with the steps between ``fork`` and it; they must be disjoint."""
    parts, seen = [], set()
    for tensor in join.inputs:
        steps = _closure(tensor, fork, join)
        if steps & seen:
            shared = min(steps & seen, key=lambda s: s.order)
            raise ImportFailure(
                f"{shared.what}{shared.at()} feeds more than one input of {join.what}"
                f"{join.at()}: the paths from the fork at {fork.what}{fork.at()} cross, so "
                "they make no block (blocks have branches that only meet at their merge)")
        seen |= steps
        parts.append((steps, tensor))
    return parts


def _block(graph: _Graph, fork: Step, join: Step, region: set[Step]) -> tuple[Nest, Step]:
    if join.kind not in (ADD, MUL, CAT):
        raise ImportFailure(f"the paths that start at {fork.what}{fork.at()} meet at "
                            f"{join.what}{join.at()}, which is no merge of a block (+, *, "
                            "torch.cat)")
    lists = [_series(graph, fork, tensor, steps) if tensor is not fork else []
             for steps, tensor in _branches(graph, fork, join)]
    if join.kind == ADD:
        if not lists[0] and not lists[1]:
            raise ImportFailure(f"{join.what}{join.at()} adds a tensor to itself: no residual "
                                "block has an empty body")
        body, shortcut = (lists[1], []) if not lists[0] else lists
        block = _nest("residual", [("body", body), ("shortcut", shortcut)], join)
        return _with_activation(graph, block, region)
    if join.kind == MUL:
        if lists[0] and lists[1] or not lists[0] and not lists[1]:
            raise ImportFailure(
                f"{join.what}{join.at()} multiplies two tensors that are both computed (or "
                "both the same tensor): a gate multiplies its input by a gate computed from "
                "it, x * g(x)")
        body = lists[0] or lists[1]
        return _nest("gate", [("body", body)], join), join
    return _nest("concat", list(enumerate(lists)), join), join


def _split(graph: _Graph, chunk: Step, region: set[Step]) -> tuple[Nest, Step]:
    """x.chunk(n, dim=1), each piece through its own branch, joined by torch.cat(dim=1)."""
    pieces = sorted(graph.users(chunk), key=lambda s: s.part)
    join = reduce(graph.meet, pieces)
    if join.kind != CAT:
        raise ImportFailure(f"the pieces of {chunk.what}{chunk.at()} meet at {join.what}"
                            f"{join.at()}: a split joins them with torch.cat(dim=1)")
    n = chunk.entry["chunks"]
    lists = []
    for k, (steps, tensor) in enumerate(_branches(graph, chunk, join)):
        starts = [s for s in steps if s.kind == PART and s.inputs == [chunk]]
        if [s.part for s in starts] != [k] or len(join.inputs) != n:
            raise ImportFailure(
                f"{join.what}{join.at()} does not join the {n} pieces of {chunk.what}"
                f"{chunk.at()} each once, in order: a split block joins piece i's branch "
                "as the i-th input of the cat")
        start = starts[0]
        lists.append(_series(graph, start, tensor, steps - {start}) if tensor is not start
                     else [])
    return _nest("split", list(enumerate(lists)), join), join


def _nest(type_name: str, branches: list, join: Step) -> Nest:
    return Nest(type_name, branches, join, join.where, join.scope, join.scope_class)


def _with_activation(graph: _Graph, block: Nest, region: set[Step]) -> tuple[Nest, Step]:
    """A residual whose add only feeds a plain activation takes it as its ``activation``."""
    from ..core.layers import KINDS

    users = graph.users(block.step)
    if len(users) == 1 and users[0] in region and users[0].kind == LAYER:
        entry = users[0].entry
        kind = KINDS[entry["type"]]
        plain = set(entry) <= {"type", "name"}
        usable = kind.family == "activation" and bool(kind.torch_class) and not any(
            f.is_required() for name, f in kind.model_fields.items() if name != "type")
        if plain and usable:
            block.activation = entry["type"]
            block.step = users[0]
            return block, users[0]
    return block, block.step


def _name_blocks(items: list) -> None:
    """A block takes the name of the module whose forward merges it (`layer1.0`) where that
    module holds the block's layers; where it does not (DenseNet's next layer joins the
    features of the one before), the module that holds them all. The top-level module's
    merges, and names already taken, get automatic names."""
    taken = {item.entry["name"] for item in flatten(items)
             if isinstance(item, Leaf) and item.entry.get("name")}

    def paths(item) -> list[list[str]]:
        if isinstance(item, Leaf):
            path = item.step.module or item.step.scope
            return [path.split(".") if path else []]
        return [p for _, branch in item.branches for i in branch for p in paths(i)]

    for item in flatten(items):
        if not isinstance(item, Nest):
            continue
        held = paths(item)
        common = held[0] if held else []
        for path in held[1:]:
            n = 0
            while n < min(len(common), len(path)) and common[n] == path[n]:
                n += 1
            common = common[:n]
        scope = item.scope.split(".") if item.scope else []
        owner = scope if scope == common[:len(scope)] else common
        name = identifier(".".join(owner)) if owner else None
        if name and name not in taken:
            item.name = name
            taken.add(name)


def flatten(items: list):
    """Every Leaf and Nest in spec order (a block before its branches), as plan.walk()."""
    for item in items:
        if isinstance(item, Use):
            yield from flatten(item.members)
            continue
        yield item
        if isinstance(item, Nest):
            for _, branch in item.branches:
                yield from flatten(branch)
