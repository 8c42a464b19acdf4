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

A forward that is no such tree (a skip into a later merge, a product of two computed tensors,
an upsample to another tensor's size, several outputs) is written as a graph instead: the
spec's own list holds its layers, its merges (``add``, ``mul``, ``cat``) and the blocks that are
still closed (nothing outside reads a tensor inside them), in the forward's order, each reading
by name (``from:``) where it does not read the item before it. What even that cannot hold (the
pieces of a chunk used apart) is an ImportFailure naming the operation and its line.
"""

from __future__ import annotations

import keyword
from collections import Counter
from dataclasses import dataclass
from functools import reduce

from .steps import ADD, CAT, CHUNK, INPUT, LAYER, MUL, OUTPUT, PART, ImportFailure, Source, Step


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
    inputs: str | None = None  # in a graph: the name it reads (`from:`), if not the item before
    pinned: bool = False  # in a graph: read by name or reading by name, so never a template use


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


def nest(steps: list[Step], output: Step) -> tuple[list, list[str] | None]:
    """The spec's layers for the traced steps (in graph order) returning ``output``: a tree of
    blocks where the forward is one, else a graph. Also the names of the spec's `outputs:`,
    where the forward returns several tensors (else None)."""
    inputs = [s for s in steps if s.kind == INPUT]
    graph = _Graph(steps, output)
    if output.kind == INPUT:
        raise ImportFailure("the forward returns its input unchanged: there is no layer to "
                            "import")
    region = _closure(output, inputs[0], None)
    tree = output.kind != OUTPUT and not any(s.like for s in region)
    try:
        items = _series(graph, inputs[0], output, region) if tree else None
    except ImportFailure:
        items = None
    if items is not None:
        _name_blocks(items)
        return items, None
    return _GraphWriter(graph, inputs[0], output, region).write()


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
    """The block of ``branches`` merged by ``join``, where it is one: see _held."""
    if not _held(branches, join):
        raise ImportFailure(f"{join.what}{join.at()} joins tensors from elsewhere in the "
                            "network: a skip, not a block")
    return Nest(type_name, branches, join, join.where, join.scope, join.scope_class)


def _held(branches: list, join: Step) -> bool:
    """Whether a merge and its branches make a block: the module whose forward merges holds
    every layer of the branches (a BasicBlock, an Inception module, build's Residual), or
    they are all one other module's that is not around the merge (DenseNet's next layer joins
    the features of the one before). A merge of tensors from further away (a U-Net's decoder
    joining the encoder's output) is a skip, and so is a merge by build's own Add, Mul or Cat
    module: the spec writes those as a graph."""
    from ..core.layers import KINDS

    if join.scope_class in {k.helper for k in KINDS.values() if k.is_merge}:
        return False

    def under(path: str, scope: str) -> bool:
        return not scope or path == scope or path.startswith(scope + ".")

    def paths(items) -> list[str]:
        return [p for item in items for p in (
            [q for _, branch in item.branches for q in paths(branch)] if isinstance(item, Nest)
            else [item.step.module or item.step.scope])]

    held = [p for _, branch in branches for p in paths(branch)]
    if all(under(p, join.scope) for p in held):
        return True
    common = held[0].split(".")
    for path in held[1:]:
        parts = path.split(".")
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    owner = ".".join(common)
    return bool(owner) and not under(join.scope, owner)


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


class _GraphWriter:
    """The top-level items of a forward that is no tree of blocks, in the forward's order."""

    def __init__(self, graph: _Graph, start: Step, exit_: Step, region: set[Step]):
        self.graph, self.start, self.exit, self.region = graph, start, exit_, region
        self.items: list = []
        self.taken: set[Step] = set()
        # Keyed by each item's own step, never by id(item): an add folded into the next one
        # is dropped, and its id may come back as a later item's.
        self.sources: dict[Step, list[Step]] = {}  # item's step -> the steps it reads
        self.merges: set[Step] = set()  # the steps of the merge items

    def write(self) -> tuple[list, list[str] | None]:
        self.blocks_from(self.start)
        for step in sorted(self.region, key=lambda s: s.order):
            if step in self.taken or step is self.exit and step.kind == OUTPUT:
                continue
            self.taken.add(step)
            self.leaf(step)
            self.blocks_from(step)
        _name_blocks(self.items)
        return self.items, self.resolve()

    def leaf(self, step: Step) -> None:
        if step.kind in (CHUNK, PART):
            chunk = step if step.kind == CHUNK else step.inputs[0]
            raise ImportFailure(f"the pieces of {chunk.what}{chunk.at()} are used apart: a "
                                "split block gives each piece its own branch and joins them "
                                "with torch.cat(dim=1), and a spec has no layer for one piece")
        if step.kind == LAYER:
            item = Leaf(dict(step.entry), step)
            self.sources[item.step] = list(step.inputs)
        else:  # a merge: add, mul, cat
            item = Leaf({"type": step.kind}, step)
            sources = list(step.inputs)
            last = self.items[-1] if self.items else None
            if step.kind in (ADD, MUL) and isinstance(last, Leaf) and last.step in self.merges \
                    and last.step is sources[0] and last.step.kind == step.kind \
                    and self.graph.users(last.step) == [step]:
                # (a + b) + c, as build's Add sums three: one add of three
                self.items.pop()
                self.merges.discard(last.step)
                sources = self.sources.pop(last.step) + sources[1:]
            self.sources[item.step] = sources
            self.merges.add(item.step)
        self.items.append(item)

    def blocks_from(self, fork: Step) -> None:
        """The blocks that start at ``fork`` (and at the end of each), where one is closed."""
        while True:
            found = self.block_at(fork)
            if found is None:
                return
            block, end, steps = found
            self.taken |= steps
            self.sources[block.step] = [fork]
            self.items.append(block)
            fork = end

    def block_at(self, fork: Step):
        """The largest closed block that reads ``fork``: (block, its last step, its steps),
        or None."""
        users = [u for u in self.graph.users(fork) if u in self.region and u not in self.taken]
        if len(users) == 1 and users[0].kind == CHUNK:
            block, end = _split(self.graph, users[0], self.region)
            return block, end, _closure(end, fork, None)
        if len(users) < 2:
            return None
        meets = {reduce(self.graph.meet, users)}
        meets |= {self.graph.meet(a, b) for i, a in enumerate(users) for b in users[i + 1:]}
        for join in sorted(meets, key=lambda s: -s.order):
            if join.kind not in (ADD, MUL, CAT) or join not in self.region:
                continue
            try:
                block, end = _block(self.graph, fork, join, self.region)
                steps = _closure(end, fork, None)
            except ImportFailure:
                continue
            inner = steps - {end}
            if all(u in steps for s in inner for u in self.graph.users(s)) \
                    and not steps & self.taken:
                return block, end, steps
        return None

    def resolve(self) -> list[str] | None:
        """Writes each item's `from:` and `like`, naming the items they read; the names of
        the `outputs:`."""
        named: dict[Step, object] = {}  # a step -> the item whose output it is
        for item in self.items:
            named[item.step] = item
        taken = {i.entry["name"] for i in flatten(self.items)
                 if isinstance(i, Leaf) and i.entry.get("name")}
        taken |= {i.name for i in flatten(self.items) if isinstance(i, Nest) and i.name}
        # A module whose forward makes one layer (build's Add, Cat, UpsampleLike …) names it.
        made = Counter(i.step.scope for i in flatten(self.items) if isinstance(i, Leaf))
        for item in self.items:
            scope = item.step.scope
            name = identifier(scope) if scope and made[scope] == 1 else None
            if isinstance(item, Leaf) and "name" not in item.entry and name \
                    and name not in taken:
                taken.add(name)
                item.entry = {"type": item.entry["type"], "name": name,
                              **{k: v for k, v in item.entry.items() if k != "type"}}

        def name_of(step: Step, previous) -> str:
            if step.kind == INPUT:
                return "input"
            item = named[step]
            name = item.entry.get("name") if isinstance(item, Leaf) else item.name
            if name is None and item is previous:
                return "prev"
            if name is None:
                kind = item.entry["type"] if isinstance(item, Leaf) else item.type
                base = identifier(f"{step.scope}.{kind}" if step.scope else kind) or kind
                name, k = base, 0
                while name in taken:
                    k += 1
                    name = f"{base}_{k}"
                taken.add(name)
                if isinstance(item, Leaf):
                    item.entry = {"type": item.entry["type"], "name": name,
                                  **{k: v for k, v in item.entry.items() if k != "type"}}
                else:
                    item.name = name
            if isinstance(item, Nest):
                item.pinned = True
            return name

        previous_step = self.start
        for index, item in enumerate(self.items):
            previous = self.items[index - 1] if index else None
            sources = self.sources[item.step]
            like = item.step.like if isinstance(item, Leaf) else None
            if item.step in self.merges:
                self._set(item, "from", [name_of(s, previous) for s in sources])
            elif sources[0] is not previous_step:
                self._set(item, "from", name_of(sources[0], None))
            if like is not None:
                item.entry["size"] = {"like": name_of(like, None)}
            previous_step = item.step
        if self.exit.kind != OUTPUT:
            return None
        return [name_of(s, None) for s in self.exit.inputs]

    @staticmethod
    def _set(item, key: str, value) -> None:
        if isinstance(item, Nest):
            item.inputs = value
            item.pinned = True
            return
        entry = item.entry
        head = {k: entry[k] for k in ("type", "name") if k in entry}
        item.entry = {**head, key: value, **{k: v for k, v in entry.items() if k not in head}}


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
