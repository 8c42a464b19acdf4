"""The receptive field of every layer of a planned network, along its two spatial axes (the
input sizes it accepts, ``shapecheck solve``, are in inputsizes.py).

It reads each layer kind's own ``axis_map`` (layers/window.py): how the layer maps the size of
one spatial axis. Nothing here asks which kind a layer is.

Receptive fields follow Araujo, Norris and Sim, "Computing receptive fields of convolutional
neural networks" (Distill, 2019), in input pixels, for one axis:

    r_l = r_{l-1} + (k_l − 1)·d_l · j_{l-1}        the field's size
    j_l = j_{l-1} · s_l                            the jump (effective stride)
    start_l = start_{l-1} + ((k_l − 1)·d_l / 2 − p_l) · j_{l-1}
                                                   the centre of the first unit's field

with r_0 = j_0 = 1 and start_0 = 0 (pixels are numbered from 0; a start of 6.5 lies between
pixels 6 and 7). A block takes the largest field over its paths, and says when its paths
disagree in jump or alignment (start). Normalisation statistics are not counted, as in the paper.
After an upsampling layer the field depends on the unit's position, so it is not computed ("n/a");
after a layer that mixes the whole axis it is the whole input ("global").
"""

from __future__ import annotations

from fractions import Fraction
from functools import partial
from typing import TYPE_CHECKING

from .layers.base import Lines
from .layers.window import (
    SAME,
    Consumed,
    Fixed,
    Fold,
    Scale,
    Transposed,
    Whole,
    Window,
    effective,
    keeps_axes,
)
from .record import Record

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .layers.window import AxisMap
    from .plan import LayerPlan, Plan

AXES = ("H", "W")


# ----------------------------------------------------------------------------------------
# Receptive field


class Field(Record):
    """The receptive field of one axis of a layer's output units, in input pixels (made for
    every layer and axis: a plain class, quicker to define at start-up than a named tuple)."""

    __slots__ = _fields = ("size", "jump", "start")

    def __init__(self, size: int, jump: int, start: Fraction | int):
        self.size, self.jump = size, jump
        self.start = start  # an int; a Fraction only where it is a half (a window of even span)


class NoField(Record):
    """Where no single field describes the units: ``kind`` is "global" (every unit sees the
    whole input) or "n/a" (the field depends on the unit's position)."""

    __slots__ = _fields = ("kind", "why", "learned")

    def __init__(self, kind: str, why: str, learned: bool = False):
        self.kind, self.why = kind, why
        self.learned = learned  # global through weights over every position (a linear after flatten)


AxisField = Field | NoField


# The walk carries the two axes as one tuple (H's field, W's field, H's dim, W's dim): the
# dims are where each axis sits in the tensor (a permute or flatten moves it).
Axes = tuple

# What the walk asks of each layer kind, read once per kind: whether it is a block, whether
# it is a merge, and its axis_map (None where it keeps every axis: activations and the like).
_KINDS: dict[type, tuple] = {}


def _kind(kind: type) -> tuple:
    axis_map = None if kind.axis_map is keeps_axes else kind.axis_map
    facts = _KINDS[kind] = (kind.is_block, kind.is_merge, axis_map)
    return facts


def receptive_fields(plan: Plan) -> None:
    """Set ``receptive_field`` (one AxisField per axis) and the explain lines on every planned
    row of a plan. Rows that were not planned keep None."""
    if plan.input_dims is None or len(plan.input_dims) != 4:
        return
    start = Field(1, 1, 0)  # starts stay ints until a window of even span halves them
    axes = (start, start, 2, 3)
    _walk(plan.layers, axes, {"input": axes})


def _walk(rows: list[LayerPlan], axes: Axes, named: dict[str, Axes] | None = None) -> Axes:
    """The axes after the rows; ``named`` (the top-level list) keeps each row's by name, for
    the rows that read tensors by name."""
    fields = axes[:2]  # the rows whose layer keeps the field share one tuple
    for row in rows:
        if row.status != "ok":
            return axes
        spec = row.spec
        is_block, is_merge, axis_map = _KINDS.get(type(spec)) or _kind(type(spec))
        if row.inputs is not None:  # a layer that reads other tensors (graph.py)
            paths = [named[name] for name in row.inputs]
            axes = _merged(row, paths, row.inputs) if is_merge else paths[0]
        if is_block:
            axes = _block(row, axes)
        elif is_merge or axis_map is None:
            pass
        elif row.like is not None:
            why = f"{row.name} resizes to {row.like}'s size: the field depends on the unit's position"
            h = w = NoField("n/a", why)
            axes = (h, w, axes[2], axes[3])
            row.field_explain = [f"rf: n/a ({why})"]
        elif type(axes[0]) is not Field and type(axes[1]) is not Field:
            pass  # no field on either axis, and none comes back (see _largest): nor do the
            # dims matter any more
        else:
            h, w, dh, dw = axes
            x = row.input_dims
            mh, nh = axis_map(spec, x, dh)
            mw, nw = axis_map(spec, x, dw)
            # both axes stay (norms, channel ops) unless a map says otherwise
            if mh is not SAME or mw is not SAME or nh != dh or nw != dw:
                if mh is mw and h is w:  # a square window on a square field
                    h, h_line = _step(row, h, mh)
                    w, w_line = h, h_line
                else:
                    (h, h_line), (w, w_line) = _step(row, h, mh), _step(row, w, mw)
                axes = (h, w, nh, nw)
                if h_line is not None or w_line is not None:  # most have nothing to explain
                    row.field_explain = Lines(partial(_explain_lines, h_line, w_line))
        if axes[0] is not fields[0] or axes[1] is not fields[1]:
            fields = axes[:2]
        row.receptive_field = fields
        if named is not None:
            named[row.name] = axes
    return axes


def _step(row: LayerPlan, f: AxisField, m: AxisMap) -> tuple[AxisField, str | tuple | None]:
    """The field after the row's layer, which maps its axis by ``m``, and its explain line (a
    window's numbers)."""
    if type(f) is not Field:  # global or n/a stays so
        return f, None
    if type(m) is Window:
        if m.kernel == 1 and m.stride == 1 and m.before == 0:  # the field stays (a 1×1 conv)
            return f, None
        span = m.dilation * (m.kernel - 1)
        jump = f.jump
        start = f.start
        shift = (span - 2 * m.before) * jump  # how far the centre moves, in half pixels
        if shift & 1 == 0 and type(start) is int:  # by whole pixels: no Fraction
            start += shift // 2
        elif shift:  # a Fraction only for a true half
            twice = 2 * start if type(start) is int else start.numerator * 2 // start.denominator
            twice += shift
            start = twice // 2 if twice & 1 == 0 else Fraction(twice, 2)
        new = Field(f.size + span * jump, jump * m.stride, start)
        return new, (f, m, new)
    if isinstance(m, (Scale, Transposed)):
        why = f"{row.name} upsamples: the field depends on the unit's position"
        return NoField("n/a", why), f"rf: n/a ({why})"
    if isinstance(m, (Fixed, Consumed, Whole)):
        why = f"every unit of {row.name} sees the whole input"
        return NoField("global", why, learned=isinstance(m, Consumed)), f"rf: global ({why})"
    assert isinstance(m, Fold)
    return f, None


def _window_line(f: Field, m: Window, new: Field) -> str:
    span = effective(m.kernel, m.dilation) - 1
    half = span // 2 if span % 2 == 0 else Fraction(span, 2)
    k = f"({m.kernel} − 1)" if m.dilation == 1 else f"{m.dilation}·({m.kernel} − 1)"
    return (f"rf = {f.size} + {k} · {f.jump} = {new.size}, jump = {f.jump} · {m.stride} = "
            f"{new.jump}, start = {_num(f.start)} + ({_num(half)} − {m.before}) · {f.jump} = "
            f"{_num(new.start)}")


def _explain_lines(*lines) -> list[str]:
    """The explain lines of the two axes: each a line, None, or a window step's numbers
    (written only now: see Lines)."""
    h, w = (_window_line(*line) if isinstance(line, tuple) else line for line in lines)
    if h == w:
        return [] if h is None else [h]
    return [f"{a}: {line}" for a, line in zip(AXES, (h, w)) if line is not None]


def _block(row: LayerPlan, axes: Axes) -> Axes:
    paths = [_walk(branch, axes) for branch in row.branches]
    keys = row.branch_keys
    if row.spec.merges_input:
        paths.append(axes)
        keys = [*keys, "input"]
    return _merged(row, paths, keys)


def _merged(row: LayerPlan, paths: list[Axes], keys: Sequence[int | str]) -> Axes:
    """The axes where paths merge (a block's branches by key, a merge layer's inputs by
    name)."""
    fields = [[p[0] for p in paths], [p[1] for p in paths]]
    if len(paths) > 1:
        row.field_explain = Lines(partial(_merge_lines, keys, fields))
    return (_largest(fields[0]), _largest(fields[1]), paths[0][2], paths[0][3])


def _largest(fields: list[AxisField]) -> AxisField:
    """The field after a merge: the largest over the paths (Araujo et al.); none where a path
    has none."""
    for kind in ("n/a", "global"):
        for f in fields:
            if isinstance(f, NoField) and f.kind == kind:
                return f
    return max(fields, key=lambda f: f.size)


def _merge_lines(keys: Sequence[int | str], fields: list[list[AxisField]]) -> list[str]:
    """The explain lines of a merge (written only when shown: see Lines)."""
    names = [key if isinstance(key, str) else f"branch {key}" for key in keys]
    return _explain_lines(*[_merge_note(f, names) for f in fields])


def _merge_note(fields: list[AxisField], names: list[str]) -> str | None:
    """How a merge chose its field, and whether the paths disagree in jump or in where their
    fields are centred."""
    if any(isinstance(f, NoField) for f in fields):
        return None
    largest = _largest(fields)
    sizes = ", ".join(f"{n} {f.size}" for n, f in zip(names, fields))
    note = f"rf = max({sizes}) = {largest.size}"
    if len({f.jump for f in fields}) > 1:
        jumps = ", ".join(f"{n} {f.jump}" for n, f in zip(names, fields))
        note = f"{note}; the paths disagree in jump ({jumps})"
    elif len({f.start for f in fields}) > 1:
        starts = ", ".join(f"{n} {_num(f.start)}" for n, f in zip(names, fields))
        note = f"{note}; the paths disagree in alignment (start: {starts})"
    return note


def _num(x: Fraction | int) -> str:
    if isinstance(x, int) or x.denominator == 1:
        return str(int(x))
    return f"{float(x):g}"


def field_json(f: AxisField | None) -> tuple:
    """receptive_field, jump, start for the JSON plan (null where there is no single field)."""
    if not isinstance(f, Field):
        return None, None, None
    start = f.start.numerator if f.start.denominator == 1 else float(f.start)
    return f.size, f.jump, start


def field_text(fields: tuple[AxisField, AxisField] | None) -> str:
    """A table cell: ``14`` (both axes), ``14×10``, ``global`` or ``n/a``."""
    if fields is None:
        return ""
    words = [str(f.size) if isinstance(f, Field) else f.kind for f in fields]
    return words[0] if words[0] == words[1] else "×".join(words)


def field_warning(plan: Plan) -> tuple[tuple, str, str, str] | None:
    """SC306 when the last conv's units see less than a quarter of the input (on H or W) and
    nothing learnt joins the positions after it (the output is still per position, or a pool
    averages them), or when they see more than 16 times the input (almost all padding then).
    The margins are wide on purpose: classic networks end with fields between half and twice
    the input (LeNet-5 14 of 32, VGG-16 196 of 224, ResNet-18 435 of 224), and deep modern
    ones far beyond it (ConvNeXt-Tiny 1,688 and DenseNet-121 2,071 of 224)."""
    if plan.input_dims is None or len(plan.input_dims) != 4:
        return None
    # the last conv; one whose field is global already (after a squeeze-and-excitation gate)
    # or unknown (after upsampling) has nothing to warn about
    last = _last_conv(plan.layers)
    if last is None or not all(isinstance(f, Field) for f in last.receptive_field):
        return None
    h, w = plan.input_dims[2:]
    rf = tuple(f.size for f in last.receptive_field)
    final = plan.layers[-1].receptive_field or ()
    joined = any(isinstance(f, NoField) and f.learned for f in final)
    small = (rf[0] * 4 < h or rf[1] * 4 < w) and not joined
    if not small and not (rf[0] > 16 * h or rf[1] > 16 * w):
        return None
    if not all(isinstance(f, Field) for row in plan.output_rows()
               for f in row.receptive_field or ()) and any(
            row.inputs or row.like for row in plan.layers):
        return None  # a graph whose output is resized: "the last conv" says nothing of it
    shown = f"{rf[0]}×{rf[1]}"
    if small:
        return (last.path, "SC306",
                (f"the last conv's units see {shown} pixels of the {h}×{w} input, less than a "
                 "quarter of it, and no learnt layer joins the positions after it"),
                ("add layers, larger kernels, dilation or strides so they see more of the "
                 "image, or use a smaller input"))
    return (last.path, "SC306",
            (f"the last conv's units see {shown} pixels, more than 16 times the {h}×{w} "
             "input: almost all of each field is padding"),
            "use fewer layers or strides, or a larger input")


def _last_conv(rows: list[LayerPlan]) -> LayerPlan | None:
    """The last conv with a field in walk order (blocks before their contents), looked for
    from the end: it is usually near it."""
    for row in reversed(rows):
        for branch in reversed(row.branches or ()):
            found = _last_conv(branch)
            if found is not None:
                return found
        if row.receptive_field and row.family == "conv":
            return row
    return None


def first_true(ok, lowest: int = 0, limit: int = 1 << 40) -> int | None:
    """The smallest n >= ``lowest`` with ok(n), for ok false up to some n and true after
    (monotone); None if none up to ``limit``. Doubling, then bisection."""
    if ok(lowest):
        return lowest
    hi = max(1, 2 * lowest)
    while not ok(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = max(lowest, hi // 2) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
