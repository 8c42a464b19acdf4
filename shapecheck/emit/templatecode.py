"""The layers `build` writes, and templates as classes.

Every spec's layers are written here (for a spec without templates, each value is a literal).

Each template becomes one nn.Module class with the template's parameters as constructor
arguments (a ``layers:`` template an ``nn.Sequential``, a one-layer template a subclass of its
layer's module), and repeats become loops, as torchvision's resnet.py is written:

    self.layer1 = nn.Sequential(
        Bottleneck(64, width=64, shortcut=Downsample(64, out=256)),
        *(Bottleneck(256, width=64) for _ in range(2)),
    )

A class is written from the instances the plan holds, not from the template's text alone:
each value in it is chosen so that it gives every instance's planned value. In order of
preference a value is the template's own expression in Python (``width * 4``), the channels
that arrive or an earlier value it equals in every instance, a parameter it equals, a literal
where all instances agree, or else one more constructor argument. A branch whose layers differ
between instances (a projection shortcut on a stage's first block only) becomes an argument
that takes a module. Instances that cannot share a class are split into classes that can, or
written in full. codegen's module check then confirms every layer against the plan.
"""

from __future__ import annotations

import ast
import keyword
import re
from dataclasses import dataclass, field
from typing import Any

from ..core.expressions import FUNCTIONS as EXPRESSION_FUNCTIONS
from ..core.expressions import ExpressionError, evaluate, parse_expression, variable_name
from ..core.templates import template_class
from . import pysource as src

MISSING = object()  # no value: a repeat that an instance does not have
# Constructor arguments that carry the channels (or features) flowing through a class, which
# later layers' inferred arguments may reuse.
FLOW_KEYS = ("in_channels", "out_channels", "num_features", "num_channels", "in_features",
             "out_features")
FUNCTIONS = {"ceil": "math.ceil", "floor": "math.floor"}  # expression functions -> Python
OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)  # as expressions have
RESERVED = {"self", "nn", "torch", "math", "make_divisible", "range", "super", "min", "max",
            "round", "int", "abs", "float", "in_channels", "in_features", "_"}


class Unshareable(Exception):
    """These instances cannot be written as one class."""


class Retry(Exception):
    """A template's instances are now written in full: write again from the top."""


@dataclass(eq=False)
class Layer:
    plan: Any  # a LayerPlan
    depth: int  # how many template instances enclose it


@dataclass(eq=False)
class Use:
    made: Any  # templates.Made
    layers: list  # the LayerPlans it made, in order

    @property
    def key(self) -> tuple:
        return (self.made.start, self.made.depth)


@dataclass(eq=False)
class Run:
    uses: list[Use]  # consecutive repeats of one use


@dataclass
class Arg:
    name: str
    vector: list  # its value in each instance
    kind: str  # "input", "param", "extra" or "module"
    default: Any = MISSING
    source: str | None = None  # the template parameter it is


@dataclass(eq=False)
class ClassCode:
    name: str
    template: str
    uses: list[Use]
    one_layer: bool
    args: list[Arg] = field(default_factory=list)
    # (layer position in the instance, branch key) -> argument, for branches given as modules
    module_branches: dict[tuple, str] = field(default_factory=dict)
    node: ast.ClassDef | None = None

    def __post_init__(self) -> None:
        self.index = {u.key: i for i, u in enumerate(self.uses)}

    def value(self, use: Use, arg: Arg):
        """The argument's value for one of the instances."""
        return arg.vector[self.index[use.key]]


def _same(a: Any, b: Any) -> bool:
    return a is MISSING or b is MISSING or (type(a) is bool) == (type(b) is bool) and a == b


def _all_same(vector: list) -> bool:
    values = [v for v in vector if v is not MISSING]
    return all(_same(values[0], v) for v in values[1:]) if values else True


def _first(vector: list) -> Any:
    return next((v for v in vector if v is not MISSING), None)


def _plain(value: Any) -> Any:
    """A parameter's value as a constructor argument can take it (lists of numbers as
    tuples), or None for what cannot be one (a list of layers)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(value)
    return None


def _type(vector: list) -> list:
    """The kinds of an argument with these values, for its annotation: ``["int"]``, or a tuple's
    element kinds as a tuple (``[("int", "int")]``)."""
    values = [v for v in vector if v is not MISSING]
    kinds: list = []
    for v in values:
        kind = ("bool" if isinstance(v, bool) else "int" if isinstance(v, int) else
                "float" if isinstance(v, float) else "str" if isinstance(v, str) else
                tuple("int" if isinstance(x, int) else "float" for x in v)
                if isinstance(v, tuple) else "object")
        if kind not in kinds:
            kinds.append(kind)
    if set(kinds) == {"int", "float"}:
        return ["float"]
    return kinds


def _python_name(name: str) -> str:
    """A template parameter as an argument: clear of keywords, the names the classes use, and
    of name mangling (``__x`` inside a class would read as ``_Class__x``)."""
    if name.startswith("__"):
        name = "p" + name
    return name + "_" if name in RESERVED or keyword.iskeyword(name) else name


def _python_names(params) -> dict[str, str]:
    """Each of a template's parameters as an argument (_python_name), clear of each other too:
    ``self`` becomes ``self__`` where the template also has ``self_``."""
    names = {p: p for p in params if _python_name(p) == p}
    taken = set(names)
    for p in params:
        if p not in names:
            name = _python_name(p)
            while name in taken:
                name += "_"
            names[p] = name
            taken.add(name)
    return names


class Instances:
    """The template instances of a plan, as items: plain layers and runs of repeats."""

    def __init__(self, code):
        self.code = code  # None for a spec without templates: then every item is a Layer
        self.by_start = {(m.start, m.depth): m for m in code.made} if code else {}
        self.inline: set[tuple] = set()  # instances written in full

    def items(self, layers: list, depth: int) -> list:
        out: list = []
        i = 0
        while i < len(layers):
            made = self.by_start.get((layers[i].path, depth))
            if made is None:
                out.append(Layer(layers[i], depth))
                i += 1
                continue
            use = Use(made, layers[i:i + made.count])
            i += made.count
            # A one-layer template of a plain layer reads best as that layer (nn.Conv2d(...)).
            plain = made.template in self.code.one_layer and not use.layers[0].is_block
            if plain or use.key in self.inline:
                out += self.items(use.layers, depth + 1)
                continue
            last = out[-1] if out else None
            if (isinstance(last, Run) and last.uses[-1].made.site == made.site
                    and made.index == last.uses[-1].made.index + 1):
                last.uses.append(use)
            else:
                out.append(Run([use]))
        return out

    def content(self, use: Use) -> list:
        return self.items(use.layers, use.made.depth + 1)

    def branches(self, layer: Layer) -> list[tuple[Any, list]]:
        plan = layer.plan
        return [(key, self.items(branch, layer.depth))
                for key, branch in zip(plan.branch_keys, plan.branches)]

    def skeleton(self, items: list) -> tuple:
        """What instances must share to be written as one class."""
        out = []
        for item in items:
            if isinstance(item, Run):
                out.append(("use", item.uses[0].made.template, item.uses[0].made.site))
            elif item.plan.is_block:
                out.append((item.plan.type, tuple(item.plan.spec.helper_extra()),
                            tuple((k, self.skeleton(b)) for k, b in self.branches(item))))
            else:
                out.append((item.plan.type, tuple(item.plan.torch_kwargs)))
        return tuple(out)


def relative(plan, use: Use) -> tuple:
    """A layer's place inside the instance that made it."""
    k = len(use.layers[0].path) - 1
    return (plan.path[k] - use.layers[0].path[k], *plan.path[k + 1:])


class Context:
    """Chooses the nodes of values inside one class (or the main module, where every value is a
    constant): ``vector`` holds a value's value in each of the class's instances."""

    def __init__(self, writer, cls: ClassCode | None):
        self.writer = writer
        self.cls = cls
        self.flow: list[tuple[ast.expr, list]] = []  # channel-like values written so far
        self.last_call: dict[str, ast.expr] = {}  # argument -> value, of the call written last
        self.params: list[Arg] = []
        self.input: Arg | None = None  # the channels (or features) that arrive
        if cls is None:
            return
        code = writer.instances.code
        defaults = code.defaults[cls.template]
        python_names = _python_names(defaults)
        for name, default in defaults.items():
            vector = [_plain(u.made.params.get(name)) for u in cls.uses]
            if all(v is not None for v in vector):
                pyname = python_names[name]
                # An expression default (`out: $width * 4`) makes the argument required.
                default = None if isinstance(default, str) and "$" in default else _plain(default)
                self.params.append(Arg(pyname, vector, "param",
                                       MISSING if default is None else default, name))
        first = [u.layers[0].input_dims for u in cls.uses]
        if all(d is not None and len(d) >= 2 for d in first):
            name = "in_channels" if all(len(d) >= 3 for d in first) else "in_features"
            self.input = Arg(name, [d[1] for d in first], "input")
            self.flow.append((src.name(name), self.input.vector))

    # ------------------------------------------------------------ arguments

    def use_arg(self, arg: Arg) -> ast.Name:
        if self.cls is not None and arg not in self.cls.args:
            self.cls.args.append(arg)
        return src.name(arg.name)

    def new_arg(self, hint: str, vector: list, kind: str = "extra", default=MISSING) -> Arg:
        taken = {a.name for a in self.cls.args} | {p.name for p in self.params} | RESERVED
        name, n = hint, 2
        while name in taken:
            name, n = f"{hint}{n}", n + 1
        arg = Arg(name, vector, kind, default)
        self.cls.args.append(arg)
        return arg

    # ------------------------------------------------------------ values

    def value(self, vector: list, raw: Any = None, inferred: bool = False,
              hint: str = "value", arriving: list | None = None) -> ast.expr:
        """``arriving``: the channels that arrive at the layer, in each instance, which
        ``$in_channels`` in ``raw`` reads."""
        if self.cls is None:
            return src.const(vector[0])
        if isinstance(raw, str) and "$" in raw:
            node = self.translate(raw, vector, arriving)
            if node is not None:
                return node
        if _all_same(vector) and not inferred:
            return src.const(_first(vector))
        if inferred:
            for node, seen in reversed(self.flow):
                if all(map(_same, seen, vector)):
                    if self.input is not None and _is_name(node, self.input.name):
                        self.use_arg(self.input)
                    return node
        if not _all_same(vector):
            for p in self.params:
                if all(map(_same, p.vector, vector)):
                    return self.use_arg(p)
            for p in self.params:
                derived = self.derived(p, vector)
                if derived is not None:
                    return derived
        if _all_same(vector):
            return src.const(_first(vector))
        return self.use_arg(self.new_arg(hint, vector))

    def derived(self, p: Arg, vector: list) -> ast.expr | None:
        if _type(p.vector) != ["int"] or _type(vector) != ["int"]:
            return None
        # ± 1 first: the count of the repeats after the first is the repeat count − 1, and
        # n // 2 fits the counts of n = 1 and 2 as well.
        forms = [(ast.Sub(), 1, lambda v: v - 1), (ast.Add(), 1, lambda v: v + 1)]
        forms += [(ast.Mult(), k, lambda v, k=k: v * k) for k in range(2, 9)]
        forms += [(ast.FloorDiv(), k, lambda v, k=k: v // k) for k in range(2, 9)]
        for op, k, f in forms:
            if all(w is MISSING or f(v) == w for v, w in zip(p.vector, vector)):
                return ast.BinOp(left=self.use_arg(p), op=op, right=src.const(k))
        return None

    def translate(self, raw: str, vector: list, arriving: list | None = None) -> ast.expr | None:
        """The template's expression in Python, where it gives every instance's value.
        ``$in_channels`` is the value written last that says the arriving channels."""
        code = self.writer.instances.code
        params = {a.source: a for a in self.params}
        names = set(re.findall(r"\$([A-Za-z_]\w*)", raw))
        incoming = None
        if "in_channels" in names and "in_channels" not in {*params, *code.variables}:
            incoming = self.flowing(arriving) if arriving is not None else None
            if incoming is None:
                return None
        if not names or not all(n in params or n in code.variables or n == "in_channels"
                                and incoming is not None for n in names):
            return None
        for i, (use, want) in enumerate(zip(self.cls.uses, vector)):
            if want is MISSING:
                continue
            env = {**code.variables, **use.made.params, "index": use.made.index}
            if incoming is not None:
                env["in_channels"] = arriving[i]
            try:
                got = evaluate(raw, env)
            except ExpressionError:
                return None
            if not _same(got, want):
                return None
        try:
            tree = parse_expression(raw)
        except ExpressionError:
            return None

        def rebuild(node: ast.expr) -> ast.expr:
            # Only what an expression may hold is rebuilt, as new nodes.
            if isinstance(node, ast.Constant) and type(node.value) in (int, float):
                return src.const(node.value)
            if isinstance(node, ast.Name) and variable_name(node.id) is not None:
                variable = variable_name(node.id)
                if variable in params:
                    return self.use_arg(params[variable])
                if variable == "in_channels" and incoming is not None:
                    return incoming
                return src.name(self.writer.constant(variable))
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
                return ast.UnaryOp(op=type(node.op)(), operand=rebuild(node.operand))
            if isinstance(node, ast.BinOp) and isinstance(node.op, OPERATORS):
                return ast.BinOp(left=rebuild(node.left), op=type(node.op)(),
                                 right=rebuild(node.right))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in EXPRESSION_FUNCTIONS and not node.keywords):
                function = FUNCTIONS.get(node.func.id, node.func.id)
                if function.startswith("math."):
                    self.writer.needs.add("math")
                elif function == "make_divisible":
                    self.writer.needs.add("make_divisible")
                return src.call(src.dotted(function), [rebuild(a) for a in node.args])
            raise Untranslatable

        try:
            return rebuild(tree.body)
        except (Untranslatable, RecursionError):
            return None

    def flowing(self, channels: list) -> ast.expr | None:
        """The value written last that gives these channels in every instance: the channels
        arriving at a layer, as the class says them (``in_channels``, ``width * 4``)."""
        for node, seen in reversed(self.flow):
            if all(map(_same, seen, channels)):
                if self.input is not None and _is_name(node, self.input.name):
                    self.use_arg(self.input)
                return node
        return None

    def flows(self, key: str, node: ast.expr, vector: list) -> None:
        if key in FLOW_KEYS:
            self.flow.append((node, vector))


class Untranslatable(Exception):
    """An expression holds what a class cannot say in Python: its values are written instead."""


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


class ClassWriter:
    """Writes a module's layers where templates made them: the main class's attributes, and a
    class per template. ``owner`` is codegen's writer (shapes, module names, attribute names)."""

    def __init__(self, owner, instances: Instances):
        self.owner = owner
        self.instances = instances
        self.classes: dict[tuple, ClassCode] = {}  # instance key -> its class
        self.order: list[ClassCode] = []  # nested classes before the classes that use them
        self.names: set[str] = set()
        self.needs: set[str] = set()  # "math", "make_divisible"
        self.constants: dict[str, Any] = {}  # scale variables the classes read, by constant
        self.constant_names: dict[str, str] = {}  # scale variable -> its constant
        self._uses: dict[str, list[Use]] | None = None

    def constant(self, variable: str) -> str:
        """The module-level constant that holds a scale variable: WIDTH_MULT for width_mult;
        variables that differ only in case get constants of their own."""
        if variable not in self.constant_names:
            base = variable.upper()
            if not base.isupper():  # `_`, `_1`: a constant reads as one by its capitals
                base = "V" + base
            name, n = base, 2
            # Clear of the classes, and of the arguments that would hide it inside them.
            params = {p for d in self.instances.code.defaults.values()
                      for p in _python_names(d).values()}
            taken = {*self.constants, *self.names, *self.owner.taken_names, *params}
            while name in taken:
                name, n = f"{base}_{n}", n + 1
            self.constant_names[variable] = name
            self.constants[name] = self.instances.code.variables[variable]
        return self.constant_names[variable]

    # ------------------------------------------------------------ classes

    def class_of(self, use: Use) -> ClassCode:
        cls = self.classes.get(use.key)
        if cls is not None:
            return cls
        same = self.uses_of(use.made.template)
        groups: dict[tuple, list[Use]] = {}
        for u in same:
            groups.setdefault(self.instances.skeleton(self.instances.content(u)), []).append(u)
        # One class for all (branches that differ become arguments), else one per skeleton;
        # instances that still cannot share a class are written in full.
        for attempt in ([same], list(groups.values())):
            try:
                made = [self.write_class(group) for group in attempt]
            except Unshareable:
                continue
            for cls in made:
                for u in cls.uses:
                    self.classes[u.key] = cls
            return self.classes[use.key]
        self.instances.inline.update(u.key for u in same)
        raise Retry

    def uses_of(self, template: str) -> list[Use]:
        if self._uses is None:
            self._uses = {}
            self._collect(self.instances.items(self.owner.plan.layers, 0))
        return self._uses[template]

    def _collect(self, items: list) -> None:
        for item in items:
            if isinstance(item, Run):
                for use in item.uses:
                    self._uses.setdefault(use.made.template, []).append(use)
                    self._collect(self.instances.content(use))
            elif item.plan.is_block:
                for _, branch in self.instances.branches(item):
                    self._collect(branch)

    def class_name(self, template: str) -> str:
        base = template_class(template)
        name, n = base, 2
        while name in self.names or name in self.owner.taken_names or name in self.constants:
            name, n = f"{base}{n}", n + 1
        self.names.add(name)
        return name

    def write_class(self, uses: list[Use]) -> ClassCode:
        template = uses[0].made.template
        code = self.instances.code
        cls = ClassCode("", template, uses, template in code.one_layer)
        ctx = Context(self, cls)
        contents = [self.instances.content(u) for u in uses]
        if cls.one_layer:
            if any(len(c) != 1 or not isinstance(c[0], Layer) for c in contents):
                raise Unshareable
            self.check_column([c[0] for c in contents])
            base, args = self.layer_call(ctx, [c[0] for c in contents])
            body = src.call(src.super_init(), args, layout=src.SPLIT)
        else:
            base = src.dotted("nn.Sequential")
            body = src.call(src.super_init(), self.write_items(ctx, contents), layout=src.EXPLODE)
        cls.name = self.class_name(template)
        line = code.lines.get(template)
        where = self.owner.source_name
        origin = f" ({where}, line {line})" if where and line else ""
        init = ast.FunctionDef(name="__init__", args=self.signature(cls),
                               body=[ast.Expr(value=body)], decorator_list=[],
                               returns=ast.Constant(None))
        cls.node = ast.ClassDef(name=src.ident(cls.name), bases=[base], keywords=[],
                                body=[src.docstring(f"The template {template}{origin}."), init],
                                decorator_list=[])
        self.order.append(cls)
        return cls

    def signature(self, cls: ClassCode) -> ast.arguments:
        rank = {"input": 0, "extra": 1, "param": 2, "module": 3}
        # Python wants the arguments with defaults last.
        cls.args.sort(key=lambda a: (a.default is not MISSING, rank[a.kind]))
        args, defaults = [ast.arg(arg="self")], []
        for a in cls.args:
            if a.kind == "module":
                annotation = src.dotted("nn.Module")
                if a.default is None:
                    annotation = ast.BinOp(left=annotation, op=ast.BitOr(),
                                           right=ast.Constant(None))
            else:
                annotation = _annotation(a.vector)
            args.append(ast.arg(arg=src.ident(a.name), annotation=annotation))
            if a.default is not MISSING:
                defaults.append(src.const(a.default))
        return ast.arguments(posonlyargs=[], args=args, kwonlyargs=[], kw_defaults=[],
                             defaults=defaults)

    # ------------------------------------------------------------ writing

    def check_column(self, column: list) -> None:
        """The same layer in every instance, else they cannot share a class."""
        kinds = {(i.plan.type, () if i.plan.is_block else tuple(i.plan.torch_kwargs))
                 for i in column}
        if len(kinds) != 1:
            raise Unshareable

    def write_items(self, ctx: Context, parallel: list[list], comments: bool = True) -> list:
        """The arguments of an nn.Sequential: each item, the same in every instance."""
        if len({len(items) for items in parallel}) != 1:
            raise Unshareable
        items: list = []
        for column in zip(*parallel):
            if all(isinstance(item, Run) for item in column):
                items += self.write_run(ctx, list(column))
            elif all(isinstance(item, Layer) for item in column):
                self.check_column(column)
                plan = column[0].plan
                func, args = self.layer_call(ctx, list(column))
                # In the main class the shape goes next to the layers that change it.
                comment = ""
                if ctx.cls is None and comments and plan.output_dims != plan.input_dims:
                    comment = self.owner.shape(plan.output_dims)
                items.append(src.call(func, args, layout=src.SPLIT, comment=comment))
            else:
                raise Unshareable
        return items

    def layer_call(self, ctx: Context, column: list[Layer]) -> tuple[ast.expr, list]:
        """(callable, arguments) of one layer."""
        first = column[0].plan
        if not first.is_block:
            args = []
            arriving = [layer.plan.input_dims[1] if layer.plan.input_dims is not None
                        and len(layer.plan.input_dims) >= 2 else MISSING for layer in column]
            for key in first.torch_kwargs:
                vector = [layer.plan.torch_kwargs[key] for layer in column]
                raw = self.owner.written(first).get(key)
                node = ctx.value(vector, raw, key in first.inferred_args, key, arriving)
                ctx.flows(key, node, vector)
                args.append(src.kw(key, node))
            return self.owner.kind_func(first), args
        block = first.spec
        self.owner.uses.add(block.helper)
        if len({tuple(layer.plan.spec.helper_extra()) for layer in column}) != 1:
            raise Unshareable
        branches = [dict(self.instances.branches(layer)) for layer in column]
        args: list = []
        for word, key in block.helper_args():
            parallel = [b[key] for b in branches]
            if ctx.cls is None or len({self.instances.skeleton(p) for p in parallel}) == 1:
                index = first.branch_keys.index(key)
                args.append(_argument(word, self.branch(ctx, parallel, first, index)))
                continue
            rel = relative(first, ctx.cls.uses[0])
            name = ctx.cls.module_branches.get((rel, key))
            empty = any(not items for items in parallel)
            if name is None:
                hint = key if isinstance(key, str) else f"branch{key}"
                name = ctx.new_arg(hint, parallel, "module", None if empty else MISSING).name
                ctx.cls.module_branches[(rel, key)] = name
            given: ast.expr = src.name(name)
            if empty:  # nn.Identity() if body is None else body
                given = ast.IfExp(test=ast.Compare(left=src.name(name), ops=[ast.Is()],
                                                   comparators=[ast.Constant(None)]),
                                  body=src.call(src.dotted("nn.Identity")), orelse=given)
            args.append(_argument(word, given))
        args += [src.kw(word, src.call(src.dotted(f"nn.{torch_class}")))
                 for word, torch_class in block.helper_extra()]
        return src.name(block.helper), args

    def branch(self, ctx: Context, parallel: list[list], block, index: int) -> ast.Call:
        """A branch of a block: an nn.Sequential of its items, or nn.Identity() if empty."""
        main = ctx.cls is None
        if not parallel[0]:
            shape = self.owner.shape(block.branch_inputs[index]) if main else ""
            return src.call(src.dotted("nn.Identity"), comment=shape)
        shape = self.owner.shape(block.branches[index][-1].output_dims) if main else ""
        return src.call(src.dotted("nn.Sequential"), self.write_items(ctx, parallel),
                        layout=src.EXPLODE, comment=shape)

    def write_run(self, ctx: Context, column: list[Run]) -> list:
        """Repeats of one use: the first, then the rest in a loop where they agree."""
        cls = self.class_of(column[0].uses[0])
        if any(self.class_of(u) is not cls for run in column for u in run.uses):
            raise Unshareable
        prints = [[self.fingerprint(cls, u) for u in run.uses] for run in column]
        counts = [len(run.uses) for run in column]
        firsts = [run.uses[0] for run in column]
        if all(p.count(p[0]) == len(p) for p in prints):
            items = self.repeat(ctx, cls, firsts, counts)
            said = dict(ctx.last_call)
        elif all(p[1:].count(p[1]) == len(p) - 1 for p in prints if len(p) > 1):
            items = self.repeat(ctx, cls, firsts, [1] * len(column))
            said = dict(ctx.last_call)
            rest = [run.uses[1] if len(run.uses) > 1 else None for run in column]
            if any(rest):
                items += self.repeat(ctx, cls, rest, [c - 1 for c in counts])
        elif len(set(counts)) == 1:
            items = []
            for i in range(counts[0]):
                items += self.repeat(ctx, cls, [run.uses[i] for run in column],
                                     [1] * len(column))
                said = dict(ctx.last_call) if i == 0 else said
        else:
            raise Unshareable
        out = [run.uses[-1].layers[-1].output_dims for run in column]
        first_out = [use.layers[-1].output_dims for use in firsts]
        if ctx.cls is not None and out == first_out and all(len(d) >= 2 for d in out):
            channels = [d[1] for d in out]
            for a in cls.args:  # the argument that says the channels coming out
                if a.name in said and [cls.value(u, a) for u in firsts] == channels:
                    ctx.flow.append((said[a.name], channels))
                    break
        return items

    def repeat(self, ctx: Context, cls: ClassCode, uses: list, counts: list[int]) -> list:
        """``Cls(...)``, or ``*(Cls(...) for _ in range(n))``, as an nn.Sequential item."""
        if _all_same(counts) and _first(counts) == 0:
            return []
        node = self.call(ctx, cls, uses)
        if _all_same(counts) and _first(counts) == 1:
            return [node]
        n = ctx.value(counts, None, False, f"{cls.template}_repeats")
        loop = ast.comprehension(target=ast.Name(id="_", ctx=ast.Store()),
                                 iter=src.call(src.name("range"), [n]), ifs=[], is_async=0)
        return [ast.Starred(value=ast.GeneratorExp(elt=node, generators=[loop]),
                            ctx=ast.Load())]

    def fingerprint(self, cls: ClassCode, use: Use) -> str:
        """What a call of ``cls`` for ``use`` is made of: equal for calls that read the same."""
        return repr([_print(cls.value(use, a)) for a in cls.args])

    def call(self, ctx: Context, cls: ClassCode, uses: list) -> ast.Call:
        """A call of ``cls`` for ``uses``: one instance of ``cls`` per instance of ctx's class,
        None where that one has no such repeat."""
        parts: list = []
        ctx.last_call = {}
        for a in cls.args:
            vector = [cls.value(u, a) if u is not None else MISSING for u in uses]
            if a.kind == "module":
                if all(v is MISSING or not v for v in vector):
                    continue
                parts.append(src.kw(a.name, self.module_arg(ctx, vector)))
                continue
            raw = next((u.made.written.get(a.source) for u in uses if u is not None), None)
            if (raw is None and a.default is not MISSING
                    and all(_same(v, a.default) for v in vector)):
                continue  # the template's default, not written at the use
            node = ctx.value(vector, raw, a.kind == "input", a.name)
            ctx.last_call[a.name] = node
            parts.append(node if a.kind == "input" else src.kw(a.name, node))
        return src.call(src.name(cls.name), parts, layout=src.SPLIT)

    def module_arg(self, ctx: Context, parallel: list) -> ast.Call:
        """A branch given to a class as a module: the one instance it holds, or a Sequential."""
        parallel = [[] if p is MISSING else p for p in parallel]
        if len({bool(p) for p in parallel}) != 1:
            raise Unshareable
        items = parallel[0]
        if len(items) == 1 and isinstance(items[0], Run) and len(items[0].uses) == 1:
            node = self.call(ctx, self.class_of(items[0].uses[0]),
                             [p[0].uses[0] for p in parallel])
            node.layout = src.INLINE
            return node
        return src.call(src.dotted("nn.Sequential"),
                        self.write_items(ctx, parallel, comments=False), layout=src.EXPLODE)

    def main(self, attrs: dict[int, str]) -> tuple[list[ast.stmt], list[tuple]]:
        """The main class's ``__init__`` statements, and the steps of its ``forward``: each an
        attribute and the first and last of the top-level rows it computes."""
        ctx = Context(self, None)
        init: list[ast.stmt] = []
        forward: list[tuple] = []
        items = self.instances.items(self.owner.plan.layers, 0)
        self.owner.attrs_used = {attrs[i.plan.index] for i in items if isinstance(i, Layer)}
        for item in items:
            if isinstance(item, Layer):
                attr = attrs[item.plan.index]
                func, args = self.layer_call(ctx, [item])
                init.append(_set(attr, src.call(func, args, layout=src.SPLIT)))
                self.map_layer(item, attr, None)
                forward.append((attr, item.plan, item.plan))
                continue
            first = item.uses[0]
            cls = self.class_of(first)
            if len(item.uses) > 1 and first.made.name:
                attr = self.owner.attribute(first.made.name)
                init.append(_set(attr, src.call(src.dotted("nn.Sequential"),
                                                self.write_run(ctx, [item]),
                                                layout=src.EXPLODE)))
                for i, use in enumerate(item.uses):
                    self.map_use(use, f"{attr}.{i}")
                named = [(attr, item.uses[0].layers[0], item.uses[-1].layers[-1])]
            else:
                named = []
                for use in item.uses:  # repeats of one use may differ in class (`first:`)
                    cls = self.class_of(use)
                    attr = (attrs[use.layers[0].index] if cls.one_layer
                            else self.owner.attribute(use.made.instance or use.made.template))
                    init.append(_set(attr, self.call(ctx, cls, [use])))
                    self.map_use(use, attr)
                    named.append((attr, use.layers[0], use.layers[-1]))
            forward += named
        return init, forward

    # ------------------------------------------------------------ module names

    def map_items(self, items: list, prefix: str, where: tuple | None) -> None:
        """Module names for the items of an nn.Sequential at ``prefix``; ``where`` is the
        (class, instance) they are written in, None in the main class."""
        pos = 0
        for item in items:
            if isinstance(item, Layer):
                self.map_layer(item, f"{prefix}.{pos}", where)
                pos += 1
                continue
            for use in item.uses:
                self.map_use(use, f"{prefix}.{pos}")
                pos += 1

    def map_use(self, use: Use, qualname: str) -> None:
        cls = self.class_of(use)
        content = self.instances.content(use)
        if cls.one_layer:
            self.map_layer(content[0], qualname, (cls, use))
        else:
            self.map_items(content, qualname, (cls, use))

    def map_layer(self, layer: Layer, qualname: str, where: tuple | None) -> None:
        plan = layer.plan
        self.owner.module_names[plan.path] = qualname
        if not plan.is_block:
            return
        for key, items in self.instances.branches(layer):
            at = f"{qualname}.{'.'.join(map(str, plan.spec.branch_loc(key)))}"
            arg = None
            if where is not None:
                cls, use = where
                arg = cls.module_branches.get((relative(plan, use), key))
            if not items:
                continue
            if (arg is not None and len(items) == 1 and isinstance(items[0], Run)
                    and len(items[0].uses) == 1):
                self.map_use(items[0].uses[0], at)
            else:
                self.map_items(items, at, where)

    def module_statements(self) -> list[ast.stmt]:
        """The scale's variables that the classes read, as module constants."""
        stmts: list[ast.stmt] = []
        for i, (constant, value) in enumerate(self.constants.items()):
            stmt = ast.Assign(targets=[ast.Name(id=src.ident(constant), ctx=ast.Store())],
                              value=src.const(value))
            if i == 0:
                stmt.leading = [f"The scale {self.instances.code.scale}'s variables."]
            stmts.append(stmt)
        return stmts


def _argument(keyword: str | None, value: ast.expr):
    """A helper's argument: by keyword, or positional where ``keyword`` is None."""
    return src.kw(keyword, value) if keyword else value


def _set(attr: str, value: ast.expr) -> ast.Assign:
    """``self.attr = value``."""
    target = ast.Attribute(value=src.name("self"), attr=src.ident(attr), ctx=ast.Store())
    return ast.Assign(targets=[target], value=value)


def _annotation(vector: list) -> ast.expr:
    """The annotation for an argument with these values: ``int``, ``tuple[int, int]`` …"""
    def one(kind) -> ast.expr:
        if isinstance(kind, str):
            return src.name(kind)
        items = [src.name(k) for k in kind]
        inside = items[0] if len(items) == 1 else ast.Tuple(elts=items, ctx=ast.Load())
        return ast.Subscript(value=src.name("tuple"), slice=inside, ctx=ast.Load())

    kinds = [one(kind) for kind in _type(vector)] or [src.name("object")]
    node = kinds[0]
    for kind in kinds[1:]:
        node = ast.BinOp(left=node, op=ast.BitOr(), right=kind)
    return node


def _print(value) -> Any:
    """A value of a call's argument, as plain data (a module argument's layers in full)."""
    if isinstance(value, list):
        return [_print(v) for v in value]
    if isinstance(value, Layer):
        return _print(value.plan)
    if isinstance(value, Run):
        return [_print(u.layers) for u in value.uses]
    if hasattr(value, "torch_kwargs"):  # a LayerPlan
        kwargs = {} if value.is_block else value.torch_kwargs
        return (value.type, repr(kwargs), [_print(b) for b in value.branches or []])
    return repr(value)
