"""The input sizes a planned network accepts, along each spatial axis (``shapecheck solve``):
every size for which each layer gets what it needs, found exactly per residue class of the
strides. It reads each layer kind's ``axis_map`` (layers/window.py), as the receptive field
does (analysis.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

from .analysis import AXES, first_true
from .layers.base import INT64_MAX
from .layers.window import Consumed, Fixed, Fold, Scale, Transposed, Whole, Window

if TYPE_CHECKING:
    from .plan import LayerPlan, Plan


@dataclass
class _Trace:
    """What one run along an axis met: constraints as integer expressions of which one must be
    zero, and the facts that hold for a whole residue class."""

    small: bool = False  # some layer gets less than it needs
    zeros: list[list[int]] = field(default_factory=list)
    indivisible: bool = False  # an exact window (pixelunshuffle) does not divide
    unused: list[tuple[str, int]] = field(default_factory=list)
    uneven: list[str] = field(default_factory=list)  # strided layers that do not give n/s
    period: int = 1

    @property
    def met(self) -> bool:
        return not self.small and not self.indivisible and all(0 in z for z in self.zeros)


MAX_PERIOD = 1 << 14  # residue classes solve works through; 2^5 for a ResNet, 2^4 for a U-Net
# Layer steps solve may run: about classes × layers × runs per class. ResNet-50 needs 10^5;
# 14 stride-2 layers (a period of 2^14) need 1.4·10^6, in about a second.
MAX_STEPS = 3_000_000


class Unsolvable(Exception):
    """An axis map the exact solver does not handle (a non-dyadic scale factor)."""


class TooCostly(Unsolvable):
    """Solving would take more steps than MAX_STEPS: refused, as the loader refuses (SC004)."""


def _run(rows: list[LayerPlan], n: int, dim: int, fold_ref: int | None, period: int,
         trace: _Trace, named: dict | None = None) -> tuple[int, int, int | None, int]:
    """Push size n of the axis at ``dim`` through the rows; returns the size, dim, the size the
    spec had where the axis was folded (None while it is not), and the stride product.
    ``named`` (the top-level list) keeps each row's state by name, for rows that read tensors
    by name (graph.py)."""
    for row in rows:
        if row.inputs is not None:
            states = [named[name] for name in row.inputs]
            if not row.spec.is_merge:
                n, dim, fold_ref, period = states[0]
        if row.is_block or row.spec.is_merge:
            if row.is_block:
                outs = [_run(b, n, dim, fold_ref, period, trace) for b in row.branches]
                outs += [(n, dim, fold_ref, period)] if row.spec.merges_input else []
            else:
                outs = states
            n = _merge_sizes([o[0] for o in outs], row.spec.spatial_merge, trace)
            dim, fold_ref = outs[0][1], outs[0][2]
            period = math.lcm(*(o[3] for o in outs))
        elif row.like is not None:
            n = named[row.like][0]
        else:
            n, dim, fold_ref, period = _step(row, n, dim, fold_ref, period, trace)
        if named is not None:
            named[row.name] = (n, dim, fold_ref, period)
    return n, dim, fold_ref, period


def _merge_sizes(sizes: list[int], how: str, trace: _Trace) -> int:
    """The size after a merge, and the equalities it needs of its inputs' sizes: equal, or
    (broadcast) one of them 1."""
    size = sizes[0]
    for other in sizes[1:]:
        if how == "broadcast":
            trace.zeros.append([size - other, size - 1, other - 1])
            size = max(size, other)
        else:
            trace.zeros.append([other - size])
    return size


def _step(row: LayerPlan, n: int, dim: int, fold_ref: int | None, period: int,
          trace: _Trace) -> tuple[int, int, int | None, int]:
    """One layer's step along the axis."""
    m, new_dim = row.spec.axis_map(row.input_dims, dim)
    if fold_ref is not None and not isinstance(m, (Fold, Whole)) and m != Window():
        m = Consumed("after a flatten")
    if isinstance(m, Window):
        if not m.fits(n):
            trace.small = True
        elif m.exact and n % m.stride:
            trace.indivisible = True
        else:
            if m.unused(n):
                trace.unused.append((row.name, m.unused(n)))
            if not m.even(n):
                trace.uneven.append(row.name)
        n = m.out(n)
        period *= m.stride
    elif isinstance(m, Scale):
        f = Fraction(m.factor)
        if f.denominator > 64:
            raise Unsolvable(f"{row.name} scales by {m.factor:g}, which is not a fraction "
                             "with a small power-of-two denominator")
        n = m.out(n)
        if n < 1:  # upsample by 1/2 of a single row: nothing left
            trace.small = True
        period *= f.denominator
    elif isinstance(m, Transposed):
        n = m.out(n)
        if n < 1:
            trace.small = True
    elif isinstance(m, Fixed):
        n = m.size
    elif isinstance(m, Consumed):
        ref = fold_ref if fold_ref is not None else row.input_dims[dim]
        trace.zeros.append([n - ref])
    elif isinstance(m, Fold) and fold_ref is None:
        fold_ref = row.input_dims[dim]
    dim = new_dim
    return n, dim, fold_ref, period


@dataclass
class Residue:
    """The accepted sizes n = c + period·q (q = 0, 1, …) of one residue class: every q from
    ``first`` on (``points`` None), or only the sizes listed."""

    first: int | None = None  # the smallest accepted size, when every later one is accepted
    points: list[int] | None = None
    unused: list[tuple[str, int]] = field(default_factory=list)
    uneven: list[str] = field(default_factory=list)


@dataclass
class AxisSolution:
    axis: str  # "H" or "W"
    size: int  # the spec's size on this axis
    other: int  # the other axis, held at the spec's size
    period: int
    classes: dict[int, Residue]  # by n mod period

    def accepts(self, n: int) -> bool:
        r = self.classes[n % self.period]
        if r.points is not None:
            return n in r.points
        return r.first is not None and n >= r.first

    def _infinite(self) -> list[int]:
        return [c for c, r in self.classes.items() if r.points is None and r.first is not None]

    @property
    def smallest(self) -> int | None:
        starts = [r.first for r in self.classes.values() if r.points is None and r.first]
        starts += [p for r in self.classes.values() for p in (r.points or [])]
        return min(starts, default=None)

    @property
    def bounded(self) -> bool:
        return not self._infinite()

    def listed_until(self) -> int:
        """From this size on the accepted set is periodic: every size of the infinite classes
        (found from the classes, without planning)."""
        firsts = [self.classes[c].first for c in self._infinite()]
        points = [p for r in self.classes.values() for p in (r.points or [])]
        n = max([*firsts, *(p + 1 for p in points)], default=1)
        if self.bounded:
            return n
        p, residues = self.residues(lambda r: True)
        while n > 1 and self.accepts(n - 1) == ((n - 1) % p in residues):
            n -= 1
        while not self.accepts(n):  # start the rule at a size it accepts
            n += 1
        return n

    def accepted_below(self, limit: int) -> list[int]:
        """The accepted sizes below ``limit``, from the classes (no planning)."""
        out = []
        for r in self.classes.values():
            if r.points is not None:
                out += [p for p in r.points if p < limit]
            elif r.first is not None:
                out += range(r.first, limit, self.period)
        return sorted(out)

    def residues(self, pick) -> tuple[int, list[int]]:
        """The smallest period p and the residues mod p of the infinite classes that ``pick``
        keeps."""
        keep = {c for c in self._infinite() if pick(self.classes[c])}
        for p in (d for d in range(1, self.period + 1) if self.period % d == 0):
            kept = {k % p for k in keep}  # once per divisor: linear in the period, not square
            if all((c in keep) == ((c % p) in kept) for c in range(self.period)):
                return p, sorted(kept)
        return self.period, sorted(keep)


# Errors that come from the input's size alone: the same spec may plan at another size.
SIZE_ERRORS = frozenset({"SC201", "SC202", "SC204", "SC211", "SC212", "SC217", "SC218"})
NEARBY = 64  # sizes tried one above another, after the spec's rounded up to 2, 4, … 1024
# The layers plan_near may plan in all: a few tries for a long network, every size for a U-Net,
# so that a hint never costs much more than the plan it belongs to.
NEAR_LAYER_PLANS = 20_000


def plan_near(plan: Plan, replan: Callable[[int, int], Plan]) -> Plan | None:
    """For a plan whose only errors come from its input's size, the spec planned (by
    ``replan(h, w)``) at a size near its own that works: the spec's H and W rounded up to a
    multiple of 2, 4, … 1024, then each of the next NEARBY sizes, as many as NEAR_LAYER_PLANS
    layers allow. None where the errors are of another kind, or no size tried works."""
    if plan.valid or plan.input_dims is None or len(plan.input_dims) != 4 or not all(
            d.code in SIZE_ERRORS for d in plan.errors):
        return None
    h, w = plan.input_dims[2:]
    tries = max(1, NEAR_LAYER_PLANS // max(1, sum(1 for _ in plan.walk())))
    tried = set()
    rounded = [(-(-h // m) * m, -(-w // m) * m) for m in (1 << k for k in range(1, 11))]
    for size in [*rounded, *((h + d, w + d) for d in range(1, NEARBY + 1))]:
        if size in tried:
            continue
        if len(tried) == tries:
            break
        tried.add(size)
        near = replan(*size)
        if near.valid:
            return near
    return None


def sizes_hint(solutions: list[AxisSolution]) -> str:
    """What an input must be, in a hint: 'this network needs H and W ≡ 0 (mod 4): 28 or 32'."""
    parts = []
    for s in solutions:
        p, residues = s.residues(lambda r: True)
        rule = _congruence(s.axis, p, residues).strip() or f"{s.axis} ≥ {s.smallest}"
        below = [n for n in range(s.size, max(0, s.size - 4 * s.period) , -1) if s.accepts(n)]
        above = [n for n in range(s.size, s.size + 4 * s.period + 1) if s.accepts(n)]
        near = " or ".join(str(n) for n in dict.fromkeys([*below[:1], *above[:1]]))
        parts.append((rule, near))
    if len(parts) == 2 and parts[0][1] == parts[1][1] and parts[0][0][1:] == parts[1][0][1:]:
        rule, near = parts[0]
        parts = [(f"H and W{rule[1:]}", near)]
    return "this network needs " + "; ".join(f"{rule}: {near}" if near else rule
                                             for rule, near in parts)


def solve(plan: Plan, spec_plan: Plan | None = None) -> list[AxisSolution]:
    """The input sizes the network accepts, for H and for W (the other held at the spec's).

    Every window layer maps size n to floor((n + a) / s) + b, so over one residue class
    n = c + L·q, with L the product of the strides along each path (their lcm over paths),
    every size inside the network is an affine function of q. Then a layer that needs a large
    enough input holds from some q on (found by bisection), an equality that the merge or a
    weight needs (two branch sizes, in_features) holds for every q, at one q, or never (two
    runs find its line), and divisibility and unused rows are the same for the whole class.
    Raises Unsolvable for an axis map that breaks this (a scale factor such as 1/3).

    ``spec_plan``: the spec's own (failing) plan, where ``plan`` is plan_near's: the answers
    then say the spec's sizes, not the ones planned."""
    if plan.sized:
        raise Unsolvable("its templates read the incoming height or width ($in_h, $in_w, or "
                         "$in_channels after a flatten), so its layers change with the input "
                         "size")
    if plan.input_dims is None or len(plan.input_dims) != 4 or not plan.valid:
        raise Unsolvable("solve needs a spec that plans at its own input size (fix its errors "
                         "first, or give --input)")
    solutions = [_solve_axis(plan, i) for i in range(2)]
    if spec_plan is not None:
        for s in solutions:
            s.size = spec_plan.input_dims[2 + AXES.index(s.axis)]
    return solutions


def _solve_axis(plan: Plan, i: int) -> AxisSolution:
    dim = 2 + i
    size, other = plan.input_dims[dim], plan.input_dims[5 - dim]

    def run(n: int) -> _Trace:
        trace = _Trace()
        named = {"input": (n, dim, None, 1)}
        trace.period = _run(plan.layers, n, dim, None, 1, trace, named)[3]
        return trace

    period = run(size).period
    if period > MAX_PERIOD:
        raise Unsolvable(f"the strides multiply to {period:,} on {AXES[i]}: more residue classes "
                         f"than solve works through (at most {MAX_PERIOD:,})")
    # Each class runs the layers about twice per bit of the sizes it searches (bisection).
    rows = sum(1 for _ in plan.walk())
    steps = period * rows * (2 * max(1, (size // period).bit_length()) + 4)
    if steps > MAX_STEPS:
        raise TooCostly(f"solving {AXES[i]} would take about {steps:,} layer steps ({period:,} "
                        f"residue classes of {rows:,} layers); solve runs at most {MAX_STEPS:,}")
    # Sizes go as far as torch's int64: a kernel of 3·10^12 rows accepts sizes beyond 2^40.
    limit = (INT64_MAX - period) // period
    classes = {}
    for c in range(period):
        base = c or period  # sizes start at 1

        def at(q: int, base=base) -> _Trace:
            return run(base + period * q)

        u = first_true(lambda q: not at(q).small, limit=limit)
        if u is None:
            classes[c] = Residue(points=[])
            continue
        t0, t1 = at(u), at(u + 1)
        residue = Residue(unused=t0.unused, uneven=t0.uneven)
        always = all(any(a == 0 and b == 0 for a, b in zip(z0, z1))
                     for z0, z1 in zip(t0.zeros, t1.zeros))
        if t0.indivisible:
            residue.points = []
        elif always:
            residue.first = base + period * u
        else:
            roots = set()
            for z0, z1 in zip(t0.zeros, t1.zeros):
                for a, b in zip(z0, z1):
                    if b != a and a % (a - b) == 0 and a // (a - b) >= 0:
                        roots.add(u + a // (a - b))  # a + (b − a)·k = 0 at k = a / (a − b)
            residue.points = sorted(base + period * q for q in roots if at(q).met)
            if residue.points:
                t = at((residue.points[0] - base) // period)
                residue.unused, residue.uneven = t.unused, t.uneven
        classes[c] = residue
    return AxisSolution(AXES[i], size, other, period, classes)


def ranges(values: list[int]) -> str:
    """'28–31, 40, 44–45' for a sorted list."""
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}–{values[j]}")
        i = j + 1
    return ", ".join(parts)


def describe(solution: AxisSolution) -> list[str]:
    """The solution in words, for `shapecheck solve`."""
    a = solution.axis
    other = AXES[1 - AXES.index(a)]
    lines = [f"{a} (with {other} = {solution.other}; the spec has {a} = {solution.size}):"]
    if solution.smallest is None:
        return [*lines, "  accepts no size"]
    lines.append(f"  smallest: {solution.smallest}")
    start = solution.listed_until()
    if solution.bounded:
        lines.append(f"  accepts: {ranges(solution.accepted_below(start))} and nothing else")
    else:
        p, residues = solution.residues(lambda r: True)
        below = solution.accepted_below(start)
        rule = _congruence(a, p, residues)
        lines.append(f"  accepts: every {a} ≥ {start}{' with' + rule if rule else ''}"
                     + (f"; below that, {ranges(below)}" if below else ""))
    clean = lambda r: not r.unused
    even = lambda r: not r.uneven
    if not solution.bounded:
        p, residues = solution.residues(even)
        if residues:
            rule = _congruence(a, p, residues)
            lines.append("  every strided layer gives exactly size/stride"
                         + (f" when{rule}" if rule else " at every accepted size"))
        p, residues = solution.residues(lambda r: not clean(r))
        if residues:
            q, kept = solution.residues(clean)
            lines.append(f"  no pixel unused only when{_congruence(a, q, kept)}"
                         if kept else "  every size leaves pixels unused")
            lines.append(f"  (for example {_unused_example(solution, residues, p)})")
        else:
            lines.append("  no accepted size leaves pixels unused")
    else:
        sizes = solution.accepted_below(start)
        wasteful = [n for n in sizes if solution.classes[n % solution.period].unused]
        if wasteful:
            example = _unused_text(solution.classes[wasteful[0] % solution.period].unused,
                                   wasteful[0], a)
            lines.append(f"  leaves pixels unused at {ranges(wasteful)} ({example})")
        else:
            lines.append("  no accepted size leaves pixels unused")
    return lines


def _congruence(axis: str, p: int, residues: list[int]) -> str:
    if p == 1:
        return ""
    if len(residues) == 1:
        return f" {axis} ≡ {residues[0]} (mod {p})"
    if len(residues) * 2 > p:
        others = sorted(set(range(p)) - set(residues))
        return f" {axis} mod {p} is not {', '.join(map(str, others))}"
    return f" {axis} mod {p} is {', '.join(map(str, residues))}"


def _unused_example(solution: AxisSolution, residues: list[int], p: int) -> str:
    start = solution.listed_until()
    for n in range(start, start + solution.period):
        if n % p in residues and solution.accepts(n):
            return _unused_text(solution.classes[n % solution.period].unused, n, solution.axis)
    return ""


def _unused_text(unused: list[tuple[str, int]], n: int, axis: str) -> str:
    word = "row" if axis == "H" else "column"
    parts = [f"{name} {k} {word}{'s' * (k > 1)}" for name, k in unused]
    return f"at {axis} = {n}: " + ", ".join(parts)
