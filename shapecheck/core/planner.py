"""The planner: threads the shape through the layers (and blocks), collecting diagnostics.

Shape-threading stops at the first layer that cannot work: that layer is marked failed, the
ones after it keep null shapes, exactly as PyTorch would stop at the first exception."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from . import graph
from .analysis import field_warning, first_true, receptive_fields
from .diagnostics import Diagnostic, merge_repeats, more_uses
from .layers import Block, Context, LayerSpec, Origin, ShapeError
from .layers.base import Dims
from .lint import lint
from .loader import SpecError, SpecFile, check_names, gc_paused, load_spec, looks_like_path
from .plan import LayerPlan, Plan
from .schema_errors import Locator, duplicate_names, schema_diagnostics
from .spec import LayerErrors, Spec, default_name, walk

# Errors that mean "the input is too small for the stack": they get the smallest input as hint.
_TOO_SMALL = {"SC201", "SC202"}
MAX_LATER = 10  # errors reported after the first, by planning on with declared inputs
# The smallest-input search plans the spec ~160 times: above this many layers it is skipped.
MAX_HINT_LAYERS = 5_000


class _Failure:
    __slots__ = ("error", "row")

    def __init__(self, row: LayerPlan, error: ShapeError):
        self.row, self.error = row, error


def plan(
    spec: Spec | SpecFile | str | os.PathLike,
    *,
    batch: int | str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    scale: str | None = None,
) -> Plan:
    """Plan a spec (a Spec, a file path or YAML text; ``scale`` picks one of its scales). A spec
    that breaks the schema gives an invalid Plan with its diagnostics; unreadable input raises
    InputError."""
    if isinstance(spec, SpecFile):  # read once, planned at each of its scales
        try:
            spec = spec.at(scale)
        except SpecError as e:
            return _unread(e, spec.source, batch)
    elif not isinstance(spec, Spec):
        is_path = isinstance(spec, os.PathLike) or looks_like_path(spec)
        source = os.fspath(spec) if is_path else None
        try:
            spec = load_spec(Path(spec) if is_path else spec, scale=scale)
        except SpecError as e:
            return _unread(e, source, batch)
    elif not spec.completed:
        problems = _complete(spec)
        if problems:
            return Plan(spec.name or "net", spec.description, spec.source, batch or "N", None,
                        [], problems)
    with gc_paused():
        try:
            result = _Planner(spec, batch, input_shape).plan()
        except SpecError as e:  # expanded again for this input, its templates fail
            return _unread(e, spec.source, batch)
    if any(d.code in MERGE_ERRORS for d in result.errors):
        result = _with_sizes_hint(result, spec, batch)
    return result


# A merge whose inputs disagree (a U-Net's skip after an odd size was floored on the way down)
# is fixed by the input size, not by the layers: its hint says which sizes work.
MERGE_ERRORS = frozenset({"SC211", "SC212"})


def _with_sizes_hint(result: Plan, spec: Spec, batch) -> Plan:
    """The plan with its merge errors' hints (and the unused-rows warnings', whose ceil_mode
    would not make the branches agree) naming the input sizes that work, from solve."""
    from .inputsizes import TooCostly, Unsolvable, plan_near, sizes_hint, solve

    c = result.input_dims[1] if result.input_dims else None
    near = plan_near(result, lambda h, w: _replan(spec, batch, (c, h, w)))
    if near is None:
        return result
    try:
        solutions = solve(near, spec_plan=result)
    except (Unsolvable, TooCostly):
        return result
    hint = sizes_hint(solutions)
    result.diagnostics = [d.replace(hint=hint) if d.code in MERGE_ERRORS or d.code == "SC301"
                          else d for d in result.diagnostics]
    return result


# What a template reads that follows the input's height and width: $in_h, $in_w, and
# $in_channels after a flatten (incoming.py).
SIZE_NAMES = frozenset({"in_h", "in_w", "features"})


def _expanded_for(spec: Spec, shape: tuple) -> Spec:
    """The spec for the input ``shape``: expanded again where its templates read what differs
    from the input it was expanded for. Raises SpecError."""
    declared = tuple(spec.input.shape)
    read = spec.sized
    if (shape[0] != declared[0] and read & {"in_channels", "features"}
            or shape[1:] != declared[1:] and read & SIZE_NAMES):
        return spec.at_input(shape)
    return spec


def _replan(spec: Spec, batch, input_shape: tuple) -> Plan:
    """The spec planned at another input, without the hints."""
    try:
        return _Planner(spec, batch, input_shape).plan()
    except SpecError as e:
        return _unread(e, spec.source, batch)


def _unread(error: SpecError, source: str | None, batch) -> Plan:
    """The invalid Plan of a spec that does not follow the schema."""
    name = default_name(Path(source).stem) if source else "net"
    return Plan(name, None, source, batch or "N", None, [], error.diagnostics)


def _complete(spec: Spec) -> list[Diagnostic]:
    """Complete a Spec built in Python; its schema problems as diagnostics (no lines)."""
    raw = list(spec.layers)
    try:
        duplicates = spec.complete()
    except LayerErrors as e:
        return schema_diagnostics(e.errors, {"layers": raw}, Locator({}, spec.source),
                                  spec.source)
    problems = duplicate_names(duplicates, spec, lambda path: (None, None), spec.source)
    errors = check_names(spec)
    if errors:
        problems += schema_diagnostics(errors, {"layers": raw}, Locator({}, spec.source),
                                       spec.source)
    return problems


def _template_line(d: Diagnostic, rows: dict) -> tuple | None:
    """Where a template writes the layer a warning is about (None for errors, and for layers
    written in the spec's own list): the key under which its uses' warnings are one."""
    row = rows.get(d.path or (d.layer,)) if not d.is_error else None
    origin = row.spec.origin if row is not None else None
    return (d.code, origin.line, origin.column) if origin is not None and origin.used_at else None


class _Planner:
    def __init__(self, spec: Spec, batch, input_shape, hints: bool = True):
        self.input = tuple(input_shape or spec.input.shape)
        if spec.at_input is not None:
            spec = _expanded_for(spec, self.input)
        self.spec = spec
        self.batch = batch if batch is not None else spec.input.batch
        self.hints = hints
        self.failure: _Failure | None = None
        self.warnings: list[tuple[LayerPlan, str, str, str | None]] = []
        # A spec that reads tensors by name (graph.py) keeps each top-level output by name.
        self.graph = graph.uses_names(spec.layers, spec.outputs)
        self.names = {layer.name for layer in spec.layers} if self.graph else set()

    def _outputs(self, rows: list[LayerPlan]) -> tuple[tuple[str, int], ...]:
        """The spec's `outputs:` as (name, top-level index); a use's name is its last layer."""
        index = {row.name: row.index for row in rows} | self.spec.aliases
        return tuple((name, index[name]) for name in self.spec.outputs or ())

    def _tensors(self, x: Dims) -> dict | None:
        """The named tensors at the start (the spec's input), for a spec that reads by name."""
        return {graph.INPUT: (x, Context())} if self.graph else None

    def plan(self) -> Plan:
        x: Dims = (1, *self.input)
        tensors = self._tensors(x)
        rows, _, _ = self._plan_list(self.spec.layers, x, (), Context(), tensors=tensors)
        diagnostics = [self._diagnostic("warning", row, code, msg, hint)
                       for row, code, msg, hint in self.warnings]
        if self.failure:
            f = self.failure
            hint = f.error.hint
            if hint is None and f.error.code in _TOO_SMALL and self.hints:
                hint = self._smallest_input_hint()
            diagnostics.append(self._diagnostic("error", f.row, f.error.code, f.error.message, hint))
            diagnostics += self._later_errors(f, rows)
        train = self.spec.train
        result = Plan(
            name=self.spec.name,
            description=self.spec.description,
            source=self.spec.source,
            batch=self.batch,
            input_dims=x,
            layers=rows,
            diagnostics=diagnostics,
            loss=train.loss if train else None,
            scale=self.spec.scale,
            scales=self.spec.scales,
            templates=self.spec.template_code,
            outputs=self._outputs(rows),
            sized=bool(self.spec.sized & SIZE_NAMES),
        )
        receptive_fields(result)
        found = lint(result, has_train=train is not None)
        if self.graph and result.valid:
            found += [(row.path, *w) for row, *w in
                      graph.unused(result.layers, [i for _, i in result.outputs])]
        if result.valid and (w := field_warning(result)):
            found.append(w)
        # the rows by path place the diagnostics: most plans have none
        rows_by_path = ({row.path: row for row in result.walk()}
                        if found or result.diagnostics else {})
        result.diagnostics += [
            self._diagnostic("warning", rows_by_path[path], code, msg, hint)
            for path, code, msg, hint in found
        ]
        if self.spec.ignore:
            result.diagnostics = [d for d in result.diagnostics
                                  if d.is_error or d.code not in self.spec.ignore]
        result.diagnostics = merge_repeats(
            ((_template_line(d, rows_by_path), d) for d in result.diagnostics), more_uses)
        result.diagnostics.sort(key=lambda d: (d.line or 0, d.column or 0, d.severity))
        return result

    def _plan_list(self, layers: list[LayerSpec], x: Dims, prefix: tuple, ctx: Context,
                   start: int = 0, tensors: dict | None = None):
        """Plan layers one after another (the first being number ``start`` of its list);
        returns their rows, the output and its context. ``tensors`` holds the named outputs
        (name -> dims, context) of a spec that reads by name; the top-level list adds to it."""
        rows = []
        for i, layer in enumerate(layers, start):
            row = self._row(i, (*prefix, i), layer)
            rows.append(row)
            if self.failure:  # skipped: null shapes, but a block keeps its branches
                if layer.is_block:
                    self._plan_branches(row, layer, x, [x] * len(layer.branch_lists()), ctx)
                continue
            if tensors is None:
                x, ctx = self._plan_layer(row, layer, x, ctx)
                continue
            if layer.inputs is not None:
                row.inputs = tuple(self._resolve(name, i) for name in layer.inputs)
                if not layer.is_merge:
                    x, ctx = tensors[row.inputs[0]]
            if (like := graph.like_of(layer)) is not None:
                row.like = self._resolve(like, i)
            x, ctx = self._plan_layer(row, layer, x, ctx, tensors)
            tensors[row.name] = (x, ctx)
        return rows, x, ctx

    def _resolve(self, name: str, i: int) -> str:
        """The top-level layer (or ``input``) a name read by layer ``i`` stands for: ``prev``
        is the layer before, a template use's name its last layer."""
        layers = self.spec.layers
        if name == graph.PREV:
            return layers[i - 1].name if i else graph.INPUT
        at = self.spec.aliases.get(name)
        return layers[at].name if at is not None and name not in self.names else name

    def _row(self, i: int, path: tuple, layer: LayerSpec) -> LayerPlan:
        # (by position: matching keywords among its 26 parameters took a good part of a row;
        # its line and column are the layer's origin's, looked up when asked)
        return LayerPlan(i, path, layer.name, layer.type, layer, None, None, "skipped",
                         self.batch)

    def _plan_layer(self, row: LayerPlan, layer: LayerSpec, x: Dims, ctx: Context,
                    tensors: dict | None = None):
        row.input_dims = x
        try:
            if layer.is_block:
                out, inferred = self._plan_block(row, layer, x, ctx), None
            else:
                if tensors is not None:  # a size from another tensor, or a merge's inputs
                    if row.like is not None:
                        layer = layer.resized_like(tensors[row.like][0])
                    if layer.is_merge:
                        named = [(name, tensors[name][0]) for name in row.inputs]
                        row.input_dims = named[0][1]
                        row.merged_dims = [dims for _, dims in named]
                try:
                    inferred = (layer.infer_many(named) if layer.is_merge and tensors is not None
                                else layer.infer(x, ctx))
                except OverflowError:  # e.g. upsample: a size times a scale beyond any float
                    raise _too_large() from None
                out = inferred.out
                if max(out, default=0) > MAX_DIM:
                    raise _too_large()
                row.weight_shape, row.bias_shape = inferred.weight, inferred.bias
                row.params, row.macs, row.explain = inferred.params, inferred.macs, inferred.explain
                row.inferred_args = inferred.inferred_args
                row.activation_values = math.prod(out)
                if inferred.warnings:
                    self.warnings += [(row, *w) for w in inferred.warnings]
        except ShapeError as e:
            row.status = "failed"
            if self.failure is None:  # a block's child may have failed first
                self.failure = _Failure(row, e)
            return x, ctx
        if self.failure:  # a child inside this block failed
            row.status = "failed"
            return x, ctx
        row.status = "ok"
        row.output_dims = out
        return out, ctx.after(x, out, inferred)

    def _plan_block(self, row: LayerPlan, block: Block, x: Dims, ctx: Context) -> Dims:
        try:
            inputs = block.branch_inputs(x)
        except ShapeError as e:  # the block fails before its branches: they are skipped
            self.failure = _Failure(row, e)
            inputs = [x] * len(block.branch_lists())
        outs = self._plan_branches(row, block, x, inputs, ctx)
        # A block's params and MACs are its children's, also where the block fails.
        children = [r for branch in row.branches for r in branch]
        row.params = sum(r.params for r in children)
        row.macs = sum(r.macs for r in children)
        if self.failure:
            return x
        out, merge = block.merge(x, outs)
        _computable(out)
        row.activation_values = sum(r.activation_values for r in children) + math.prod(out)
        row.explain = [merge]
        return out

    def _plan_branches(self, row: LayerPlan, block: Block, x: Dims, inputs: list[Dims],
                       ctx: Context) -> list[Dims]:
        """Plan every branch from its input; after a failure the rest are skipped. A branch
        keeps what is known of the last dim while its input ends as the block's does."""
        row.branches, row.branch_keys, outs = [], [], []
        row.branch_inputs = inputs
        for (key, layers), branch_x in zip(block.branch_lists(), inputs):
            branch_ctx = ctx if branch_x[-1:] == x[-1:] else Context()
            sub, out, _ = self._plan_list(layers, branch_x, (*row.path, key), branch_ctx)
            row.branches.append(sub)
            row.branch_keys.append(key)
            outs.append(out)
        return outs

    def _diagnostic(self, severity, row: LayerPlan, code: str, message: str, hint) -> Diagnostic:
        path = row.path
        subject = f"layer {'/'.join(map(str, path))} ({row.type} {row.name})"
        origin = row.spec.origin or Origin(self.spec.source)
        return Diagnostic(severity, code, f"{subject}: {message}{origin.context}", path[0],
                          path if len(path) > 1 else None, *origin.reported, hint,
                          file=origin.file, subject=subject)

    def _later_errors(self, first: _Failure, rows: list[LayerPlan]) -> list[Diagnostic]:
        """The errors after the first, where the failing layer declares the input it expects
        (a linear's in_features, a conv's in_channels): planning goes on from there as if that
        input had arrived. Only top-level layers; the rows keep the first error's null shapes,
        as the JSON contract says."""
        found: list[Diagnostic] = []
        failed = first
        while failed is not None and len(failed.row.path) == 1 and len(found) < MAX_LATER:
            x = failed.row.input_dims
            declared = failed.row.spec.declared_input(x) if x is not None else None
            if declared is None or declared == x:
                break
            try:
                out = failed.row.spec.infer(declared, Context()).out
            except ShapeError:
                break
            after = failed.row.path[0] + 1
            trial = _Planner(self.spec, self.batch, self.input, hints=False)
            tensors = None
            if self.graph:  # the tensors made before, and the failing layer's as declared
                tensors = {graph.INPUT: ((1, *self.input), Context())}
                tensors |= {r.name: (r.output_dims, Context()) for r in rows[:after]
                            if r.output_dims is not None}
                tensors[failed.row.name] = (out, Context())
            trial._plan_list(self.spec.layers[after:], out, (), Context(), start=after,
                             tensors=tensors)
            note = (f" (found by planning on after the error at layer {failed.row.path[0]}, "
                    f"as if {failed.row.name} got the input it declares)")
            failed = trial.failure
            if failed is not None:
                found.append(self._diagnostic("error", failed.row, failed.error.code,
                                              failed.error.message + note, failed.error.hint))
        return found

    def _smallest_input_hint(self) -> str | None:
        if sum(1 for _ in walk(self.spec.layers)) > MAX_HINT_LAYERS:
            return None
        _, h, w = self.input
        big = 1 << 40
        min_h = first_true(lambda s: self._fits(s, big), lowest=1)
        min_w = first_true(lambda s: self._fits(big, s), lowest=1)
        if min_h is None or min_w is None:
            return None
        need = (max(h, min_h), max(w, min_w))
        if not self._valid_at(*need):  # a later layer fails there too: say nothing wrong
            return None
        return (f"this stack needs an input of at least {need[0]}×{need[1]} (this one is {h}×{w}); "
                "or use smaller kernels/strides, or add padding")

    def _trial(self, h: int, w: int) -> _Failure | None:
        """The first failure at an input of h×w, or None."""
        try:
            trial = _Planner(self.spec, 1, (self.input[0], h, w), hints=False)
        except SpecError as e:  # its templates fail for this input: taken as too small, so
            # that no size is claimed to work that was not planned
            return _Failure(None, ShapeError("SC202", e.diagnostics[0].message))
        x = (1, self.input[0], h, w)
        trial._plan_list(trial.spec.layers, x, (), Context(), tensors=trial._tensors(x))
        return trial.failure

    def _valid_at(self, h: int, w: int) -> bool:
        return self._trial(h, w) is None

    def _fits(self, h: int, w: int) -> bool:
        failure = self._trial(h, w)
        return failure is None or failure.error.code not in _TOO_SMALL


def _computable(out: Dims) -> None:
    """Sizes are exact ints at any size (10**30 plans, and build says it is too large for
    torch), but layer after layer (upsample, convtranspose2d, flatten) they could grow past any
    float, which a scale multiplies, and past what can be printed (4,300 digits)."""
    if max(out, default=0) > MAX_DIM:
        raise _too_large()


def _too_large() -> ShapeError:
    return ShapeError("SC219", "a dimension of the output would be larger than 1.8e308, beyond "
                      "what can be computed (torch's own limit is 2**63 - 1)",
                      "use a smaller scale, stride or input")


MAX_DIM = int(sys.float_info.max)  # about 1.8e308


# --- the incoming shape inside templates ---------------------------------------------------


def plan_entry(entry, x: Dims, ctx: Context,
               tensors: dict | None = None) -> tuple[Dims, Context]:
    """The output of one raw, expanded layer (not block) entry from ``x``, as planning gives
    it, for the templates that read the incoming shape ($in_channels). ``tensors``: the
    (dims, context) of the names a layer of the spec's own list may read (`from:`). Raises the
    ShapeError planning would report, or ValueError for an entry that breaks the schema."""
    from .layers import parse_layers

    layers, errors = parse_layers([entry], ("layers",))
    if errors:
        raise ValueError("does not follow the schema")
    if layers[0].is_block:
        raise ValueError("is a block")  # (blocks are merged from their branches)
    planner = _Planner.__new__(_Planner)
    planner.batch, planner.failure, planner.warnings = 1, None, []
    layer = layers[0]
    row = planner._row(0, (0,), layer)
    if layer.is_merge and not layer.inputs:
        raise ValueError("merges no tensors it names")  # (SC112 is the loader's)
    names = (*(layer.inputs or ()), *filter(None, [graph.like_of(layer)]))
    if names and (tensors is None or any(tensors.get(n) is None for n in names)):
        raise ValueError(f"reads {', '.join(names)}, whose shape is not followed")
    if layer.is_merge or names:
        row.inputs, row.like = layer.inputs, graph.like_of(layer)
        out, ctx = planner._plan_layer(row, layer, x, ctx, tensors)
    else:
        out, ctx = planner._plan_layer(row, layer, x, ctx)
    if planner.failure is not None:
        raise planner.failure.error
    return out, ctx


def merge_entry(block: type[Block], entry: dict, x: Dims, ctx: Context,
                outs: dict[tuple, Dims]) -> tuple[Dims, Context]:
    """The output of a raw block entry whose branches gave ``outs`` (by their place in the
    entry, as raw_branches gives it), as plan_entry."""
    try:
        model = block.model_construct(**entry)
        inputs = model.branch_inputs(x)
        # A branch the entry leaves out is empty: it passes its input through.
        given = [outs.get(_branch_place(model, key), b)
                 for (key, _), b in zip(model.branch_lists(), inputs)]
        out, _ = model.merge(x, given)
    except (TypeError, AttributeError, ValueError, KeyError, IndexError):
        raise ValueError("does not follow the schema") from None
    _computable(out)
    return out, ctx.after(x, out)


def branch_entries(block: type[Block], entry: dict, x: Dims, ctx: Context) -> dict:
    """The (input, context) of each branch of a raw block entry whose branches are not yet
    expanded, by its place in the entry: a split's chunks, the block's input for the others."""
    try:
        model = block.model_construct(**entry)
        inputs = model.branch_inputs(x)
        keys = [_branch_place(model, key) for key, _ in model.branch_lists()]
    except (TypeError, AttributeError, ValueError, KeyError, IndexError):
        raise ValueError("does not follow the schema") from None
    return {key: (b, ctx if b[-1:] == x[-1:] else Context()) for key, b in zip(keys, inputs)}


def _branch_place(block: Block, key) -> tuple:
    """Where a branch stands in its block's entry: ("body",) or ("branches", 1)."""
    return (key,) if isinstance(key, str) else (block.lists_field, key)
