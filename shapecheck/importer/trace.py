"""A module traced with torch.fx into steps (steps.py), each with its shapes and its line.

The tracer runs the forward on proxies, so no data is needed; modules with a layer kind are
kept whole (leaves), every other module is traced through, whatever its class (a helper class
of build, a user's BasicBlock, an nn.Sequential built in a loop). Each node is stamped with the
module whose forward made it and the innermost line of the user's code that called it. The
traced graph is then run once on the meta device (nothing allocated) to learn every tensor's
shape, and each node becomes a step: a layer (ops.py), a merge (+, *, torch.cat), a chunk, or
nothing at all (sizes, `.contiguous()`, nn.Identity).
"""

from __future__ import annotations

import builtins
import inspect
import linecache
import math
import operator
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from . import ops
from .steps import (
    ADD,
    CAT,
    CHUNK,
    INPUT,
    LAYER,
    MUL,
    OTHER,
    OUTPUT,
    PART,
    ImportFailure,
    Source,
    Step,
)
from .structure import identifier

BATCH = 2  # the traced batch: not 1, so that a size that follows the batch is told from a 1

_NOT_USER_CODE = (os.path.dirname(torch.__file__) + os.sep,
                  os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)
_NAMESPACES = (("F", F), ("torch", torch), ("torch.fft", torch.fft),
               ("torch.linalg", torch.linalg), ("torch.special", torch.special),
               ("operator", operator), ("builtins", builtins), ("math", math))


def _source(file: str, line: int) -> Source:
    return Source(file, line, linecache.getline(file, line).strip())


def _user_source(frame, stop) -> Source | None:
    """The innermost frame outside torch and shapecheck, below the frame ``stop`` that started
    the trace: the user's line that made a node."""
    while frame is not None and frame is not stop:
        file = frame.f_code.co_filename
        if not os.path.abspath(file).startswith(_NOT_USER_CODE) or file.startswith("<"):
            return _source(file, frame.f_lineno)
        frame = frame.f_back
    return None


def failure_source(error: BaseException) -> Source | None:
    """The innermost line of the user's code in an exception's traceback; for a syntax error,
    the line it names (its traceback ends in the import machinery)."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return _source(error.filename, error.lineno)
    found, tb = None, error.__traceback__
    while tb is not None:
        file = tb.tb_frame.f_code.co_filename
        if (not os.path.abspath(file).startswith(_NOT_USER_CODE) or file.startswith("<")) \
                and not file.startswith("<frozen "):
            found = _source(file, tb.tb_lineno)
        tb = tb.tb_next
    return found


def first_line(error: BaseException) -> str:
    # A syntax error's own text repeats its file and line, which failure_source gives.
    text = error.msg if isinstance(error, SyntaxError) and error.msg else str(error)
    text = text.strip().split("\n")[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self._scopes = [("", "")]  # (qualified name, class) of each module entered
        self._start = None  # the frame of trace(): the user's code runs below it

    def trace(self, root, concrete_args=None):
        self._start = sys._getframe()
        return super().trace(root, concrete_args)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return ops.module_kind(m) is not None or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        self._scopes.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._scopes.pop()

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["shapecheck_scope"], node.meta["shapecheck_class"] = self._scopes[-1]
        node.meta["shapecheck_source"] = _user_source(sys._getframe(1), self._start)
        return node

    def iter(self, obj):
        # `for c in x.chunk(n, dim=1)` (or zip with the chunks, as build's Split does): the
        # pieces of a chunk with a literal count are known without data.
        node = obj.node
        if node.op in ("call_method", "call_function") and _call_name(node) in ops.CHUNKS:
            count = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
            if isinstance(count, int):
                return iter([obj[i] for i in range(count)])
        return super().iter(obj)


def _call_name(node: fx.Node) -> str:
    """A call as "F.relu", "torch.cat", "operator.add" or "Tensor.view"."""
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    short = getattr(target, "__name__", None)
    for prefix, namespace in _NAMESPACES:
        if short and getattr(namespace, short, None) is target:
            return f"{prefix}.{short}"
    for prefix, namespace in _NAMESPACES:
        for name, value in vars(namespace).items():
            if value is target:
                return f"{prefix}.{name}"
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__qualname__', short or repr(target))}"


def trace(model: torch.nn.Module, input_shape: tuple[int, ...]
          ) -> tuple[list[Step], Step, Any]:
    """The steps of ``model``'s forward on an input of ``input_shape`` (C, H, W), in order,
    the step it returns, and the key it returns that step under where the forward returns a
    dict of one tensor ({'out': x}), else None. Raises ImportFailure."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except ImportFailure:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the user's forward does while traced
        where = failure_source(e)
        at = f" at {where.quoted()}" if where else ""
        if isinstance(e, fx.proxy.TraceError) and "control flow" in str(e):
            raise ImportFailure(
                f"data-dependent control flow{at}: the forward decides on a tensor's values, "
                "which torch.fx cannot trace without data") from None
        raise ImportFailure(f"torch.fx cannot trace the forward{at}: {first_line(e)}"
                            ) from None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    required = [n.target for n in placeholders if not n.args]
    if len(required) != 1:
        raise ImportFailure(f"the forward takes {len(required)} tensor arguments "
                            f"({', '.join(required)}): import traces a forward of one tensor")
    # The graph is interpreted on the traced module itself. An fx.GraphModule would compile
    # the graph to Python source, which fails on a submodule named like a keyword
    # (add_module("class", ...) gives `self.class(x)`): the graph needs no source to run.
    module = tracer.root
    results = _run(module, graph, (BATCH, *input_shape))
    return _Converter(module, graph, results).convert()


class _Recorder(fx.Interpreter):
    """Runs the traced graph once, keeping each node's result: a shape, shapes, or a value."""

    def __init__(self, module: torch.nn.Module, graph: fx.Graph, input_shape: tuple[int, ...]):
        super().__init__(module, graph=graph)
        # torch.fx would append the graph node, a traceback and a link to any error's message
        self.extra_traceback = False
        self.input_shape = input_shape
        self.results: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:  # noqa: BLE001 - the user's module fails on this input
            where = n.meta.get("shapecheck_source")
            at = f" at {where.quoted()}" if where else ""
            shape = "×".join(map(str, self.input_shape))
            raise ImportFailure(f"the module fails on an input of {shape}{at}"
                                f"{self._in_layer(n)}: {first_line(e)}") from None
        self.results[n] = _summary(result)
        return result

    def _in_layer(self, n: fx.Node) -> str:
        """' in features.0 (Conv2d: in_channels 3, but 1 arrive)' for a failing layer; the
        meta device's own messages do not say what arrived."""
        if n.op != "call_module":
            return ""
        layer = self.module.get_submodule(n.target)
        text = f" in {n.target} ({type(layer).__name__}"
        arrived = self.results.get(n.args[0]) if n.args else None
        if isinstance(arrived, _Shape) and len(arrived) >= 2:
            for field, size in (("in_channels", arrived[1]), ("in_features", arrived[-1])):
                want = getattr(layer, field, None)
                if isinstance(want, int) and want != size:
                    text += f": {field} {want}, but {size} arrive{'s' * (size == 1)}"
                    break
        return text + ")"


def _summary(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _Shape(value.shape)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor)
                                                         for v in value):
        return [_Shape(v.shape) for v in value]
    if isinstance(value, torch.Size):
        return tuple(value)
    return value


class _Shape(tuple):
    """A tensor's shape, told apart from a tuple of sizes that the forward computes."""


def _run(module: torch.nn.Module, graph: fx.Graph, shape: tuple[int, ...]) -> dict:
    recorder = _Recorder(module, graph, shape)
    with torch.no_grad(), torch.device("meta"):
        recorder.run(torch.empty(shape))
    return recorder.results


def _is_batch_size(node: Any) -> bool:
    """``x.size(0)``, ``x.size()[0]`` or ``x.shape[0]``: a size that follows the batch."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim == 0
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        base = node.args[0]
        return isinstance(base, fx.Node) and (
            (base.op == "call_method" and base.target == "size" and len(base.args) == 1
             and not base.kwargs)
            or (base.op == "call_function" and base.target is builtins.getattr
                and base.args[1] == "shape"))
    return False


class _Converter:
    def __init__(self, module: torch.nn.Module, graph: fx.Graph, results: dict):
        self.module = module
        self.graph = graph
        self.results = results
        self.steps: list[Step] = []
        self.of: dict[fx.Node, Step] = {}
        self.names: set[str] = set()
        self.joined: list[tuple[Step, list[Step]]] = []  # each cat, with the inputs it wrote
        self.skip: set[fx.Node] = set()  # nodes already taken into a step (a channel shuffle)

    def convert(self) -> tuple[list[Step], Step, Any]:
        output = next(n for n in self.graph.nodes if n.op == "output")
        live = {output}
        for node in reversed(list(self.graph.nodes)):
            if node in live:
                live.update(node.all_input_nodes)
        for node in self.graph.nodes:
            if node in live and node.op != "output":
                self.node(node)
        returned, key = output.args[0], None
        if isinstance(returned, dict) and len(returned) == 1:  # {'out': tensor}
            ((key, returned),) = returned.items()
        elif isinstance(returned, (dict, tuple, list)) and len(returned) > 1:
            return self.steps, self.outputs(output, returned), None
        return self.steps, self.returned(output, returned, key), key

    def returned(self, output: fx.Node, value: Any, key: Any) -> Step:
        """The step a forward returns (under ``key`` in its dict, where it returns one)."""
        if not isinstance(value, fx.Node) or value not in self.of:
            what = (f"a {type(value).__name__}" if not isinstance(value, fx.Node)
                    else "a value")
            held = f" under {key!r}" if key is not None else ""
            raise ImportFailure(f"the forward returns {what}{held}{self._at(output)}: a spec's "
                                "outputs are tensors its layers make")
        step = self.of[value]
        if step.kind == INPUT:
            held = f" under {key!r}" if key is not None else ""
            raise ImportFailure(f"the forward returns its input{held}{self._at(output)}: a "
                                "spec's outputs are tensors its layers make")
        return step

    def outputs(self, output: fx.Node, returned: Any) -> Step:
        """Several returned tensors (an FPN's levels, {'out': …, 'aux': …}): one OUTPUT step
        reading them all, which becomes the spec's `outputs:`."""
        keys = list(returned) if isinstance(returned, dict) else None
        values = list(returned.values()) if isinstance(returned, dict) else list(returned)
        steps = [self.returned(output, v, k) for v, k in zip(values, keys or [None] * len(values))]
        if len(set(map(id, steps))) != len(steps):
            raise ImportFailure(f"the forward returns one tensor twice{self._at(output)}: a "
                                "spec's outputs are distinct layers")
        step = Step(OUTPUT, steps, "the outputs", where=output.meta.get("shapecheck_source"),
                    order=len(self.steps), keys=keys)
        for source in steps:
            source.users.append(step)
        self.steps.append(step)
        return step

    # ------------------------------------------------------------ helpers

    def _at(self, node: fx.Node) -> str:
        where = node.meta.get("shapecheck_source")
        return f" at {where.quoted()}" if where else ""

    def _fail(self, node: fx.Node, what: str, why: str) -> ImportFailure:
        return ImportFailure(f"{what}{self._at(node)}: {why}")

    def add(self, node: fx.Node, kind: str, inputs: list[Step], what: str, **fields) -> Step:
        result = self.results.get(node)
        step = Step(kind, inputs, what, where=node.meta.get("shapecheck_source"),
                    scope=node.meta.get("shapecheck_scope", ""),
                    scope_class=node.meta.get("shapecheck_class", ""), order=len(self.steps),
                    shape=tuple(result) if isinstance(result, _Shape) else None, **fields)
        for source in inputs:
            source.users.append(step)
        self.steps.append(step)
        self.of[node] = step
        return step

    def tensor(self, node: fx.Node, arg: Any, what: str) -> Step:
        if isinstance(arg, fx.Node) and arg in self.of:
            return self.of[arg]
        raise self._fail(node, what, f"it needs a tensor here, and gets {_describe(arg)}")

    def name(self, qualname: str) -> str | None:
        base = identifier(qualname)
        if base is None:
            return None
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"  # a module called again: pooling, pooling_1
        self.names.add(name)
        return name

    # ------------------------------------------------------------ nodes

    def node(self, node: fx.Node) -> None:
        if node in self.skip:
            return
        if node.op == "placeholder":
            if not node.args:
                self.add(node, INPUT, [], "the input")
            return
        result = self.results.get(node)
        if node.op == "get_attr":
            self.add(node, OTHER, [], f"self.{node.target}")
            return
        if node.op == "call_module":
            self.call_module(node)
            return
        name = _call_name(node)
        if name in ops.CHUNKS:
            self.chunk(node, name)
            return
        if not isinstance(result, _Shape):
            if isinstance(result, list):
                raise self._fail(node, ops.shown(name), "it gives several tensors, which no "
                                 "layer passes on (x.chunk(n, dim=1) into a torch.cat is a "
                                 "split block)")
            return  # a size or another value: it matters only where a layer reads it
        self.call(node, name)

    def call_module(self, node: fx.Node) -> None:
        module = self.module.get_submodule(node.target)
        kind = ops.module_kind(module)
        what = f"self.{node.target}"
        cls = type(module)
        shown = (f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn")
                 else cls.__name__)
        if kind is None:
            raise self._fail(node, f"{what} ({shown})", "it has no layer type in shapecheck")
        if len(node.args) != 1 or node.kwargs:
            raise self._fail(node, f"{what} ({shown})", "it is called with more than the "
                             "tensor: a layer takes one tensor")
        source = self.tensor(node, node.args[0], what)
        if kind.type_name() == "identity":
            self.of[node] = source  # nothing to plan: the tensor passes through
            return
        try:
            entry = ops.module_entry(module, kind)
        except ops.Unsupported as e:
            raise self._fail(node, f"{what} ({shown})", str(e)) from None
        name = self.name(node.target)
        if name:
            entry = {"type": entry["type"], "name": name, **entry}
        self.add(node, LAYER, [source], what, entry=entry, module=node.target)

    def chunk(self, node: fx.Node, name: str) -> None:
        x = self.tensor(node, node.args[0], ops.shown(name))
        count = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        rank = len(self.results[node.args[0]])
        if not isinstance(count, int) or not isinstance(dim, int) or dim % rank != 1:
            raise self._fail(node, ops.shown(name), "a split cuts the channels: "
                             "x.chunk(n, dim=1) with a number n")
        step = self.add(node, CHUNK, [x], ops.shown(name), entry={"chunks": count})
        for user in node.users:  # its pieces
            if user.op == "call_function" and user.target is operator.getitem:
                self.add(user, PART, [step], f"piece {user.args[1]} of {step.what}",
                         part=user.args[1])

    def call(self, node: fx.Node, name: str) -> None:
        if node.op == "call_function" and node.target is operator.getitem \
                and node.args[0] in self.of and self.of[node.args[0]].kind == CHUNK:
            return  # a piece of a chunk, made with it
        shown = ops.shown(name)
        if name in ops.PASS_THROUGH:
            self.of[node] = self.tensor(node, node.args[0], shown)
        elif name in ops.ADDS or name in ops.MULTIPLIES:
            self.merge(node, name, ADD if name in ops.ADDS else MUL)
        elif name in ops.CATS:
            self.cat(node, name)
        elif name in ops.RESHAPES:
            self.reshape(node, name)
        elif name in ops.MEANS:
            self.mean(node, name)
        else:
            self.layer(node, name)

    def layer(self, node: fx.Node, name: str) -> None:
        shown = ops.shown(name)
        if not node.args:
            raise self._fail(node, shown, "it has no layer type in shapecheck")
        source = self.tensor(node, node.args[0], shown)
        args, kwargs, owner, like = node.args[1:], dict(node.kwargs), None, None
        if name in ops.PARAMETER_ARGS:
            args, kwargs, owner = self.own_parameters(node, name, args, kwargs)
        if name in ops.SIZED:
            args, kwargs, like = self.sized_like(node, args, kwargs)
        if name in ops.CALLS and _has_node((*args, *kwargs.values())):
            raise self._fail(node, shown, "an argument is computed in the forward (a spec "
                             "holds numbers)" + ("; a size may be another tensor's H×W, "
                                                 "size=other.shape[-2:]"
                                                 if name in ops.SIZED else ""))
        try:
            entry = ops.call_entry(name, (None, *args), kwargs)
        except ops.Unsupported as e:
            raise self._fail(node, shown, str(e)) from None
        name = self.name(owner) if owner else None
        if name:  # the module that holds its parameters (ConvNeXt's LayerNorm2d) names it
            entry = {"type": entry["type"], "name": name, **entry}
        if like is not None:  # named once the spec's layers are known (structure.py)
            entry["size"] = {"like": None}
        self.add(node, LAYER, [source, *([like] if like else [])], shown, entry=entry,
                 like=like)

    def sized_like(self, node: fx.Node, args: tuple, kwargs: dict):
        """F.interpolate's arguments with a size taken from a tensor (``size=other.shape[-2:]``,
        ``size=(y.size(2), y.size(3))``) replaced by a number, and that tensor's step; or the
        arguments as they are and None."""
        try:
            bound = inspect.signature(ops.CALLS[_call_name(node)]).bind(None, *args, **kwargs)
        except TypeError:
            return args, kwargs, None  # call_entry says what is wrong
        size = bound.arguments.get("size")
        tensor = _height_and_width_of(size, self.results)
        if tensor is None or tensor not in self.of:
            return args, kwargs, None
        bound.arguments["size"] = 1  # any size, so that the other arguments are checked
        return bound.args[1:], bound.kwargs, self.of[tensor]

    def own_parameters(self, node: fx.Node, name: str, args: tuple, kwargs: dict):
        """The call's arguments with each parameter it passes (F.layer_norm's weight=
        self.weight) as True: the layer's own parameters, which the spec's layer makes. Also
        the qualified name of the module holding the first one ("" for the root)."""
        shown = ops.shown(name)
        try:
            bound = inspect.signature(ops.CALLS[name]).bind(None, *args, **kwargs)
        except TypeError as e:
            raise self._fail(node, shown, f"its arguments are not those of {name}: {e}"
                             ) from None
        owner = None
        for field in ops.PARAMETER_ARGS[name]:
            value = bound.arguments.get(field)
            if isinstance(value, fx.Node):
                if self._parameter(value) is None:
                    what = f"self.{value.target}" if value.op == "get_attr" else \
                        f"a tensor computed in the forward ({value.name})"
                    raise self._fail(node, shown, f"its {field} is {what}, which is no "
                                     "parameter (nn.Parameter) of the module: the layer the "
                                     f"spec makes holds its own {field}")
                owner = value.target.rpartition(".")[0] if owner is None else owner
                bound.arguments[field] = True
        return bound.args[1:], bound.kwargs, owner

    def _parameter(self, node: fx.Node):
        """The nn.Parameter that a get_attr node reads, or None."""
        if node.op != "get_attr":
            return None
        try:
            return self.module.get_parameter(node.target)
        except AttributeError:
            return None

    def merge(self, node: fx.Node, name: str, kind: str) -> None:
        shown = ops.shown(name)
        args = list(node.args[:2])
        extra = {k: v for k, v in node.kwargs.items() if not (k == "alpha" and v == 1)}
        if len(node.args) > 2 or extra:
            raise self._fail(node, shown, "only a plain a + b or a * b of two tensors "
                             "makes a block")
        if kind == MUL and self.layer_scale(node, shown, args):
            return
        if not all(isinstance(a, fx.Node) and a in self.of for a in args):
            number = next(a for a in args if not (isinstance(a, fx.Node) and a in self.of))
            raise self._fail(node, shown, f"it {'adds' if kind == ADD else 'multiplies by'} "
                             f"{_describe(number)}, and a spec has no layer for that (a "
                             "residual adds two paths, a gate multiplies by a computed gate)")
        self.add(node, kind, [self.of[a] for a in args], shown)

    def layer_scale(self, node: fx.Node, shown: str, args: list) -> bool:
        """``self.gamma * x`` with a parameter of one value per channel of x, shaped to
        broadcast over them (ConvNeXt's (C, 1, 1) layer_scale): a layerscale layer."""
        params = [a for a in args if isinstance(a, fx.Node) and self._parameter(a) is not None]
        if len(params) != 1:
            return False
        (tensor,) = [a for a in args if a is not params[0]]
        if not isinstance(tensor, fx.Node) or tensor not in self.of \
                or self.of[tensor].kind not in (INPUT, LAYER, ADD, MUL, CAT, PART):
            return False
        x, weight = self.results[tensor], tuple(self.results[params[0]])
        aligned = (1,) * (len(x) - len(weight)) + weight
        if not (2 <= len(x) and len(x) - 1 <= len(weight) <= len(x) and aligned[1] == x[1]
                and all(size == 1 for i, size in enumerate(aligned) if i != 1)):
            return False
        entry = {"type": "layerscale"}
        name = self.name(params[0].target)
        if name:
            entry["name"] = name
        self.add(node, LAYER, [self.of[tensor]], shown, entry=entry)
        return True

    def cat(self, node: fx.Node, name: str) -> None:
        shown = ops.shown(name)
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)):
            raise self._fail(node, shown, "it joins a list of tensors written in the call")
        inputs = [self.tensor(node, t, shown) for t in tensors]
        rank = len(self.results[node])
        if not isinstance(dim, int) or dim % rank != 1:
            raise self._fail(node, shown, f"it joins on dim {dim}; a concat block joins on "
                             "the channels (dim=1)")
        if len(inputs) == 1:
            self.of[node] = inputs[0]  # the tensor itself
            return
        # DenseNet joins all features so far, again and again: cat([x, f1, f2]) after
        # cat([x, f1]) is cat([cat([x, f1]), f2]), which nests as one concat in another.
        joined = [(step, written) for step, written in self.joined
                  if len(written) < len(inputs) and written == inputs[:len(written)]]
        written = inputs
        if joined:
            step, prefix = max(joined, key=lambda pair: len(pair[1]))
            inputs = [step, *inputs[len(prefix):]]
        self.joined.append((self.add(node, CAT, inputs, shown), written))

    def reshape(self, node: fx.Node, name: str) -> None:
        """x.view(x.size(0), -1) and its kin are a flatten; a view that splits the channels
        into groups, swapped back by a transpose and a view, a channel shuffle; other reshapes
        have no layer."""
        shown = ops.shown(name)
        source = self.tensor(node, node.args[0], shown)
        sizes = _sizes(node)
        before, after = self.results[node.args[0]], self.results[node]
        if _splits_channels(before, after):
            self.channel_shuffle(node, shown, source, sizes)
            return
        flat = math.prod(before[1:])

        def value(arg):
            return self.results.get(arg) if isinstance(arg, fx.Node) else arg

        batch_ok = len(sizes) == 2 and (sizes[0] == -1 or _is_batch_size(sizes[0]))
        rest_ok = len(sizes) == 2 and (sizes[1] == -1 and sizes[0] != -1
                                       or value(sizes[1]) == flat)
        if not (batch_ok and rest_ok and tuple(after) == (before[0], flat)):
            written = ", ".join("-1" if s == -1 else (s.name if isinstance(s, fx.Node)
                                                      else repr(s)) for s in sizes)
            raise self._fail(node, f"{shown[:-1]}{written})", "only a reshape to (batch, -1) "
                             "has a layer (flatten); the batch must be x.size(0) or -1")
        self.add(node, LAYER, [source], shown, entry={"type": "flatten"})

    def channel_shuffle(self, node: fx.Node, shown: str, source: Step, sizes: list) -> None:
        """ShuffleNet's view(n, g, c // g, h, w), transpose(1, 2), (contiguous,) view(n, -1, h,
        w): one channelshuffle layer of g groups. The steps after the first view are taken
        here, and skipped when the walk reaches them."""
        before, groups = self.results[node.args[0]], self.results[node][1]
        why = (f"a view that splits the {before[1]} channels into {groups} groups is a channel "
               "shuffle only when a transpose(1, 2) and a view back to N×C×H×W follow it")
        if not (sizes[0] == -1 or _is_batch_size(sizes[0])):
            raise self._fail(node, shown, f"{why}, and its batch is x.size(0) or -1")
        swap = _only_user(node)
        if swap is None or not _swaps_1_2(swap):
            raise self._fail(node, shown, why)
        last = _only_user(swap)
        while last is not None and _call_name(last) in ops.PASS_THROUGH:
            last = _only_user(last)
        if last is None or _call_name(last) not in (*ops.RESHAPES, *ops.FLATTENS) \
                or self.results.get(last) != before:
            raise self._fail(node, shown, why)
        if _call_name(last) in ops.RESHAPES and \
                not (_sizes(last)[0] == -1 or _is_batch_size(_sizes(last)[0])):
            raise self._fail(last, ops.shown(_call_name(last)), f"{why}, and its batch is "
                             "x.size(0) or -1")
        taken = [swap]
        while taken[-1] is not last:
            taken.append(_only_user(taken[-1]))
        self.skip.update(taken)
        self.add(last, LAYER, [source], shown, entry={"type": "channelshuffle", "groups": groups})

    def mean(self, node: fx.Node, name: str) -> None:
        """x.mean((2, 3), keepdim=True) is a global average pool; without keepdim, a flatten
        follows."""
        shown = ops.shown(name)
        source = self.tensor(node, node.args[0], shown)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        rank = len(self.results[node.args[0]])
        dims = [dims] if isinstance(dims, int) else dims
        if rank != 4 or not isinstance(dims, (list, tuple)) or \
                sorted(d % 4 for d in dims if isinstance(d, int)) != [2, 3] or \
                node.kwargs.get("dtype") is not None:
            raise self._fail(node, shown, "only the mean over H and W (dims 2 and 3) of an "
                             "N×C×H×W tensor has a layer (adaptiveavgpool2d)")
        pool = {"type": "adaptiveavgpool2d", "output_size": 1}
        if keep:
            self.add(node, LAYER, [source], shown, entry=pool)
            return
        # Two layers for one call: the pool's shape is the mean's with H and W kept.
        result = self.results[node]
        self.results[node] = _Shape((*result, 1, 1))
        pooled = self.add(node, LAYER, [source], shown, entry=pool)
        self.results[node] = result
        self.add(node, LAYER, [pooled], shown, entry={"type": "flatten"})


def _sizes(node: fx.Node) -> list:
    """The sizes a view or reshape asks for, as a list."""
    sizes = list(node.args[1:]) or [node.kwargs.get("shape", node.kwargs.get("size"))]
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = list(sizes[0])
    return sizes


def _splits_channels(before: tuple, after: tuple) -> bool:
    """N×C×H×W viewed as N×g×(C/g)×H×W, the first step of a channel shuffle."""
    return len(before) == 4 and len(after) == 5 and after[0] == before[0] \
        and after[1] * after[2] == before[1] and after[3:] == before[2:]


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _swaps_1_2(node: fx.Node) -> bool:
    """x.transpose(1, 2), torch.transpose(x, 1, 2) or x.permute(0, 2, 1, 3, 4) of a 5-d x."""
    name = _call_name(node)
    if name in ("torch.transpose", "Tensor.transpose", "torch.swapaxes", "Tensor.swapaxes",
                "torch.swapdims", "Tensor.swapdims"):
        dims = [*node.args[1:3], *node.kwargs.values()]
        return len(dims) == 2 and all(isinstance(d, int) for d in dims) \
            and sorted(d % 5 for d in dims) == [1, 2]
    if name in ("torch.permute", "Tensor.permute"):
        dims = node.args[1:] or [node.kwargs.get("dims")]
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        return all(isinstance(d, int) for d in dims) \
            and [d % 5 for d in dims] == [0, 2, 1, 3, 4]
    return False


def _height_and_width_of(size: Any, results: dict) -> fx.Node | None:
    """The 4-d tensor whose H×W ``size`` is: ``t.shape[-2:]``, ``t.size()[2:]``, or the pair
    ``(t.size(2), t.shape[3])``; None for anything else."""

    def source(node, sliced: bool):
        """t of ``t.shape`` / ``t.size()`` (sliced) or of ``t.size(d)`` / ``t.shape[d]``."""
        if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
            return None, None
        if node.op == "call_method" and node.target == "size" and len(node.args) == 2 \
                and not sliced:
            return node.args[0], node.args[1]
        if node.op == "call_function" and node.target is operator.getitem:
            base, index = node.args
            whole = isinstance(base, fx.Node) and (
                (base.op == "call_method" and base.target == "size" and len(base.args) == 1)
                or (base.op == "call_function" and base.target is builtins.getattr
                    and base.args[1] == "shape"))
            if whole:
                return base.args[0], index
        return None, None

    def is_4d(t) -> bool:
        shape = results.get(t)
        return isinstance(shape, _Shape) and len(shape) == 4

    if isinstance(size, fx.Node):
        tensor, index = source(size, True)
        if isinstance(index, slice) and index.stop is None and index.step is None \
                and index.start in (-2, 2) and is_4d(tensor):
            return tensor
        return None
    if isinstance(size, (list, tuple)) and len(size) == 2:
        (t1, d1), (t2, d2) = source(size[0], False), source(size[1], False)
        if t1 is not None and t1 is t2 and is_4d(t1) and isinstance(d1, int) \
                and isinstance(d2, int) and (d1 % 4, d2 % 4) == (2, 3):
            return t1
    return None


def _has_node(value: Any) -> bool:
    found = []
    fx.node.map_arg(value, lambda n: found.append(n))
    return bool(found)


def _describe(value: Any) -> str:
    if isinstance(value, fx.Node):
        return f"a value computed by {value.name}"
    return f"the number {value!r}" if isinstance(value, (int, float)) else repr(value)
