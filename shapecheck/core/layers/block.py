"""What every block shares: a layer that holds lists of layers (its branches).

A block says, in its own module:
- its YAML keys: ``list_fields`` (fields that hold one layer list each, such as ``body``) and
  ``lists_field`` (a field that holds a list of layer lists, such as ``branches``);
- what input each branch gets (``branch_inputs``: the block's input, or a slice of it);
- how the branch outputs merge (``merge``), with the arithmetic for ``--explain``;
- the helper module ``build`` writes for it (``helper``, ``helper_source``);
- its diagram glyph (``glyph``, ``merge_word``).

The loader, planner, codegen and diagram call these; none of them asks which block it is.
A branch is keyed by the field name (``"body"``) or by its index in ``lists_field`` (0, 1 …).
"""

from typing import Any, ClassVar

from .base import Dims, LayerSpec, ShapeError, Stricter

BranchKey = int | str


class Block(LayerSpec):
    family = "block"
    is_block = True
    torch_class = ""

    list_fields: ClassVar[tuple[str, ...]] = ()
    lists_field: ClassVar[str | None] = None

    glyph: ClassVar[str] = "+"  # the merge node in diagrams
    merge_word: ClassVar[str] = ""  # the legend's word for the glyph
    merges_input: ClassVar[bool] = False  # the merge also takes the block's input (a gate)
    # How the merge treats H and W: "equal" (they must agree, as torch.cat) or "broadcast"
    # (equal, or one of them 1, as an add or a product). The analyses read it.
    spatial_merge: ClassVar[str] = "equal"
    # helper, helper_source (LayerSpec): the module build writes for the block;
    # its branches arrive as nn.Sequential (or nn.Identity for an empty one).

    def branch_lists(self) -> list[tuple[BranchKey, list]]:
        """Every branch, in order, with its key."""
        out: list[tuple[BranchKey, list]] = [(f, getattr(self, f)) for f in self.list_fields]
        if self.lists_field:
            out += list(enumerate(getattr(self, self.lists_field)))
        return out

    @classmethod
    def branch_loc(cls, key: BranchKey) -> tuple:
        """Where a branch sits under the block in the YAML (and in the module tree):
        ``("body",)`` or ``("branches", 2)``."""
        return (key,) if isinstance(key, str) else (cls.lists_field, key)

    @classmethod
    def raw_branches(cls, item: dict) -> list[tuple[tuple, Any]]:
        """The raw branch lists of an unvalidated YAML entry, with their locations."""
        out = [((f,), item.get(f)) for f in cls.list_fields]
        if cls.lists_field and isinstance(item.get(cls.lists_field), list):
            out += [((cls.lists_field, j), b) for j, b in enumerate(item[cls.lists_field])]
        return [(loc, value) for loc, value in out if isinstance(value, list)]

    def with_branches(self, lists: list[list]) -> "Block":
        """A copy holding ``lists`` (in branch_lists order) as its branches."""
        update = dict(zip(self.list_fields, lists))
        if self.lists_field:
            update[self.lists_field] = lists[len(self.list_fields):]
        return self.model_copy(update=update)

    def branch_inputs(self, x: Dims) -> list[Dims]:
        """The tensor each branch gets: by default the block's input, for every branch."""
        return [x] * len(self.branch_lists())

    def merge(self, x: Dims, outs: list[Dims]) -> tuple[Dims, str]:  # pragma: no cover
        """The block's output from its input and the branch outputs, and the explain line.
        Raises ShapeError where torch would."""
        raise NotImplementedError

    def helper_extra(self) -> list[tuple[str, str]]:
        """Further constructor arguments of the helper, each a module made with no arguments,
        as (keyword, torch.nn class): a residual's activation is ("activation", "ReLU")."""
        return []

    def helper_args(self) -> list[tuple[str | None, BranchKey]]:
        """How the helper's constructor takes the branches: ("body", "body") for a keyword,
        (None, 2) for a positional one."""
        return [(key if isinstance(key, str) else None, key) for key, _ in self.branch_lists()]


def chw(x: Dims) -> str:
    return "×".join(map(str, x[1:]))  # 128×28×28, as the table writes shapes


# What check_same_rank refuses and torch runs: the blocks that add or multiply declare it.
MIXED_RANKS = Stricter("SC213", why="tensors of different ranks broadcast by their last dims, "
                       "so torch would line the batch of one up with another dim of the other")


def check_same_rank(what: str, a: Dims, b: Dims, names: tuple[str, str]) -> None:
    """Tensors of different ranks broadcast by their last dims, so the batch of the smaller one
    would line up with another dim of the larger: every sample combined with every other's
    values (SC213), which torch only does silently."""
    if len(a) == len(b):
        return
    small, large = (a, b) if len(a) < len(b) else (b, a)
    small_name, large_name = names if small is a else names[::-1]
    raise ShapeError(
        "SC213",
        f"the {small_name} gives {len(small)} dims (N×{chw(small) or '()'}) and the {large_name} "
        f"{len(large)} (N×{chw(large)}): torch would line the {small_name}'s batch up with dim "
        f"{len(large) - len(small)} of the {large_name} and {what} every sample with every other",
        f"make the {small_name} keep all {len(large)} dims (drop the flatten, or reshape to "
        f"N×{chw(large[:2] + (1,) * (len(large) - 2))})",
    )


def broadcast(a: Dims, b: Dims) -> Dims | None:
    """The shape torch's broadcasting gives for two batch-factored shapes, or None where it
    fails. The ranks and the batch rows (dim 0) must agree: broadcasting across the batch would
    pair samples with other dims, or work only for one batch size."""
    if len(a) != len(b) or a[0] != b[0]:
        return None
    out = [a[0]]
    for m, n in zip(a[1:], b[1:]):
        if m != n and 1 not in (m, n):
            return None
        out.append(max(m, n) if 1 in (m, n) else m)
    return tuple(out)
