"""Templates, repeat and scales: expanded into plain layer entries before any layer is validated.

    scales:                     # named sets of variables; --scale NAME picks one
      x1_0: {width_mult: 1.0}
    default_scale: x1_0
    templates:
      bottleneck:               # one layer (here a residual block) ...
        params: {width: 64, stride: 1, shortcut: []}
        type: residual
        body: [{type: conv2d, name: conv1, out_channels: $width, kernel_size: 1}, ...]
        shortcut: $shortcut
      conv_bn:                  # ... or a sequence of layers, inlined where used
        params: {out: 32}
        layers: [{type: conv2d, out_channels: $out, kernel_size: 3}, batchnorm2d]
    layers:
      - {use: bottleneck, name: layer1, repeat: 3, width: 64, first: {stride: 2}}

A string holding ``$`` is an expression (expressions.py), evaluated where it stands: in a
template with that use's parameters, elsewhere with the scale's variables. ``$index`` is the
repeat's index. Every expanded entry remembers the YAML place it was written and the chain of
uses that made it (``Expansion.where``), so that errors name both."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import TYPE_CHECKING, Any, NamedTuple

from .expressions import ExpressionError, evaluate, is_expression, show
from .layers import KINDS, block_of
from .layers.base import name_problem

TOP_KEYS = ("templates", "scales", "default_scale")
# How deep templates may use templates, and blocks hold blocks, once expanded: beyond what any
# network needs, within what planning and `build` handle (a spec's own YAML is limited to 100
# levels, which allows about as many blocks in blocks).
MAX_TEMPLATE_DEPTH = 50
MAX_BLOCK_DEPTH = 50
# Values an expansion may copy: each use copies its parameters and the variables it sees into
# every instance it makes, so a large list (an alias of one) or a scale of thousands of
# variables would cost their size times the instances. Far above what a network needs (a
# 20,000-layer expansion copies about 200,000).
MAX_VALUES = 2_000_000
# Scales a spec may declare: `check` plans each one (EfficientNet has 8).
MAX_SCALES = 1_000
USE_KEYS = ("use", "name", "repeat", "first", "from")

if TYPE_CHECKING:
    from .incoming import Incoming


class Site(NamedTuple):
    """A place a template was used: its name and the YAML location of the `use:` entry."""

    template: str
    loc: tuple


class TemplateError(Exception):
    """A template, a use of one, a scale or an expression is wrong (exit code 1)."""

    def __init__(self, code: str, message: str, loc: tuple, hint: str | None = None,
                 chain: tuple[Site, ...] = ()):
        super().__init__(message)
        self.code, self.message, self.loc, self.hint, self.chain = code, message, loc, hint, chain


@dataclass(frozen=True)
class Made:
    """One repeat of one use of a template: what `build` needs to write it as a call of the
    template's class."""

    template: str
    params: dict  # the template's parameters for this repeat (`first:` applied)
    start: tuple  # the location of the first entry it made in the expanded spec
    count: int  # how many entries it made there (1 for a one-layer template)
    site: tuple  # the YAML location of the `use:` entry, shared by all its repeats
    index: int  # which repeat
    name: str | None  # the use's `name:`, if it has one
    depth: int  # how many uses enclose it
    written: dict  # the use's parameters as written (`first:` applied), expressions unevaluated
    instance: str | None  # the instance's name, which its layers' names start with


@dataclass
class TemplateCode:
    """What `build` needs to write each template as a class: every instance, with ``start``
    as a layer path, and the layer entries as the templates write them (keyed by layer path)."""

    made: list[Made]
    written: dict[tuple, dict]
    variables: dict  # the scale's variables
    lines: dict[str, int]  # template name -> the line it is defined on
    defaults: dict[str, dict]  # template name -> its parameters' defaults
    one_layer: set[str]  # templates written with `type:` (one layer), not `layers:`
    scale: str | None  # the scale expanded at


@dataclass
class Expansion:
    data: dict  # the spec with plain layers, without templates and scales
    # New location of every layer entry -> (the YAML location it was written at, the uses that
    # made it, innermost first).
    where: dict[tuple, tuple[tuple, tuple[Site, ...]]] = field(default_factory=dict)
    # The names of the incoming shape it read ($in_channels …): then it holds only for the
    # input it was expanded for.
    sized: frozenset = frozenset()
    # New location of a layer entry -> the arithmetic that made its values, for `expand`.
    notes: dict[tuple, list[Callable[[], str]]] = field(default_factory=dict)  # written on use
    scale: str | None = None
    variables: dict = field(default_factory=dict)  # the scale's variables
    made: list[Made] = field(default_factory=list)  # every template instance, in order
    defaults: dict[str, dict] = field(default_factory=dict)  # template name -> its defaults
    one_layer: set[str] = field(default_factory=set)  # templates written with `type:`
    # Location of an entry a template made -> the entry as the template writes it (expressions
    # unevaluated), so that `build` can write the template's class with its parameters.
    written: dict[tuple, dict] = field(default_factory=dict)


def expand(data: dict, scale: str | None, limit: int, input_shape: Any = None) -> Expansion:
    """The plain spec for ``data`` (``input_shape``: the (C, H, W) to expand for, where the
    spec's templates read it; default the spec's own). Raises TemplateError; SC004 (exit 2, as
    the YAML limits) for an expansion past ``limit`` layers or nested past the depths above."""
    templates = data.get("templates") or {}
    if not isinstance(templates, dict):
        raise TemplateError("SC108", "`templates` must be a mapping of names to templates",
                            ("templates",))
    classes = _template_classes(templates)
    variables, chosen = _scale(data, scale)
    expander = _Expander(templates, limit, classes)
    if _reads_shapes(data):  # only such specs work out shapes as they expand
        from .incoming import Incoming

        declared = data.get("input")
        expander.incoming = Incoming(input_shape or (
            declared.get("shape") if isinstance(declared, dict) else None))
    layers = data.get("layers")
    plain = {k: v for k, v in data.items() if k not in TOP_KEYS}
    if isinstance(layers, list):
        plain["layers"] = expander.items(layers, ("layers",), ("layers",), variables, ())
    read = frozenset(expander.incoming.read) if expander.incoming else frozenset()
    return Expansion(plain, expander.where, read, expander.notes, chosen, variables,
                     expander.made, expander.defaults, expander.one_layer, expander.written)


def _reads_shapes(data: dict) -> bool:
    """Whether any expression in the spec reads the incoming shape (a quick look)."""
    stack: list = [data.get("templates"), data.get("layers")]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "$in_" in value:
                return True
        elif isinstance(value, dict):
            stack += value.values()
        elif isinstance(value, list):
            stack += value
    return False


def template_class(name: str) -> str:
    """The class `build` writes for a template: ``conv_bn`` -> ``ConvBn``."""
    base = "".join(p[:1].upper() + p[1:] for p in name.split("_") if p) or "Block"
    return base if base[0].isalpha() else "Block" + base


def _some(names) -> str:
    """The first names of a list, for a hint: a spec may declare thousands."""
    names = list(map(str, names))
    return ", ".join(names[:20]) + (f" … ({len(names):,} in all)" if len(names) > 20 else "")


def check_name(name: Any, what: str, loc: tuple, chain: tuple = ()) -> None:
    """SC105 unless ``name`` can be a name in the code `build` writes (see name_problem)."""
    problem = name_problem(name) if isinstance(name, str) else "not a string"
    if problem is not None:
        from .spec import default_name

        raise TemplateError("SC105", f"{what} {name!r} is not a Python identifier ({problem})",
                            loc, f"use a name such as {default_name(str(name))!r}", chain)


def _template_classes(templates: dict) -> set[str]:
    """The names of the classes `build` writes for the templates, one per template (the
    kinds' helpers are _helper_classes). Template names are checked here: each is a class's
    name, so two that differ only in case or underscores (conv_bn, ConvBn) would be one
    class."""
    classes: dict[str, str] = {}
    for name in templates:
        check_name(name, "the template name", ("templates", name))
        cls = template_class(name)
        if cls in classes:
            raise TemplateError("SC106", f"the templates {classes[cls]!r} and {name!r} differ "
                                f"only in case or underscores: both would be the class {cls}",
                                ("templates", name), "rename one of them")
        classes[cls] = name
    return set(classes)


@cache
def _helper_classes() -> frozenset[str]:
    """The helper classes `build` writes for the kinds that have one (Residual, Concat ...).
    Reading them defines every kind's model, so they are asked for only where a parameter's
    name begins with a capital, as each of theirs does."""
    return frozenset(kind.helper for kind in KINDS.values() if kind.helper)


def _scale(data: dict, asked: str | None) -> tuple[dict, str | None]:
    """The chosen scale's variables and its name."""
    scales = data.get("scales")
    if scales is None:
        if asked is not None:
            raise TemplateError("SC111", f"--scale {asked}: the spec has no `scales`", (),
                                "add `scales: {NAME: {variable: value}}` to the spec")
        return {}, None
    if not isinstance(scales, dict) or not scales or not all(
            isinstance(v, dict) for v in scales.values()):
        raise TemplateError("SC111", "`scales` must map names to variables, e.g. "
                            "{x1_0: {width_mult: 1.0}}", ("scales",))
    if len(scales) > MAX_SCALES:
        raise TemplateError("SC004", f"the spec declares {len(scales):,} scales; specs are "
                            f"limited to {MAX_SCALES:,}", ("scales",))
    for key in scales:
        check_name(key, "the scale name", ("scales", key))
    name = asked or data.get("default_scale") or next(iter(scales))
    if not isinstance(name, str):  # a list or a mapping cannot even be looked up
        raise TemplateError("SC111", f"default_scale must be a scale's name, got {name!r}",
                            ("default_scale",), "scales: " + _some(scales))
    if name not in scales:
        where = ("default_scale",) if asked is None else ()
        close = _close_matches(str(name), list(map(str, scales)), n=1)
        raise TemplateError("SC111", f"unknown scale {name!r}", where,
                            f"did you mean {close[0]!r}?" if close
                            else "scales: " + _some(scales))
    variables = scales[name]
    for key, value in variables.items():
        check_name(key, f"scale {name}: the variable", ("scales", name, key))
        if is_expression(value):
            raise TemplateError("SC111", f"scale {name}: {key} must be a value, not an "
                                "expression", ("scales", name, key))
    return dict(variables), name


# The notes `expand --explain` shows, written only when shown (most runs never do).
def _note(key: str, expression: str, env: dict, result: Any) -> str:
    """``width: $c * 4 = 16 * 4 = 64``"""
    return f"{key}: " + " = ".join(dict.fromkeys([expression.strip(), show(expression, env),
                                                 repr(result)]))


def _use_note(head: str, repeated: bool, index: int, values: dict, raw: dict,
              env: dict) -> str:
    """``stage: use unit × 3, $index 0; c: $w = 16``"""
    if repeated:  # which of the repeats: the $index the template reads
        head += f", $index {index}"
    env = {**env, "index": index}
    notes = [_note(k, str(raw[k]), env, v) for k, v in values.items()
             if not isinstance(v, (list, dict))]
    return "; ".join([head, *notes])


class _Expander:
    def __init__(self, templates: dict, limit: int, classes: set[str]):
        self.templates = templates
        self.limit = limit
        self.classes = classes  # the classes build writes, which no parameter may hide
        self.count = 0
        self.values = 0  # values copied so far, against MAX_VALUES
        self.sizes: dict[int, int] = {}  # a default's size, by id: counted at every instance
        self.where: dict[tuple, tuple[tuple, tuple[Site, ...]]] = {}
        self.notes: dict[tuple, list[Callable[[], str]]] = {}
        self.instances: Counter[str] = Counter()  # automatic instance names per template
        self.made: list[Made] = []
        self.defaults: dict[str, dict] = {}
        self.one_layer: set[str] = set()
        self.written: dict[tuple, dict] = {}
        self.blocks = 0  # how deep in blocks the layer being expanded is
        # A layer entry given as a use's value (a `shortcut:` list), evaluated -> as written:
        # `build` writes it in the class of the template that wrote it, with its expressions.
        self.unevaluated: dict[int, tuple[dict, dict]] = {}
        # The incoming shape where expansion stands, in a spec that reads it ($in_channels).
        self.incoming: Incoming | None = None
        # What every instance of a template shares, worked out at its first: by the id of
        # each list and mapping written under `templates` (which outlive the expansion).
        self.raw = _ids(templates)
        self.forms: dict[int, _Form] = {}  # a layer entry's, by its id
        self.places: dict[int, tuple] = {}  # a layer list's locations, by its id
        self.unless: dict[int, dict] = {}  # an entry with `when:`, without it
        self.single: dict[str, dict] = {}  # a one-layer template's entry, without `params`
        self.kinds: dict[str, Any] = {}  # a `type:` as written -> its block, or None
        self.named: dict[int, bool] = {}  # a template body's names_inside, by its id

    def items(self, items: list, src: tuple, dst: tuple, env: dict, chain: tuple,
              start: int = 0) -> list:
        """Expand a raw layer list written at YAML location ``src``, placed in the list at
        ``dst`` from index ``start`` on."""
        out: list = []
        places = self._places(items, src)
        for i, item in enumerate(items):
            if isinstance(item, dict) and "when" in item:
                if not self.when(item["when"], env, (*src, i, "when"), chain):
                    continue
                item = self._unless(item)
                if "layers" in item and "type" not in item and "use" not in item:  # a group
                    if set(item) != {"layers"} or not isinstance(item["layers"], list):
                        raise TemplateError("SC113", "a `when:` group holds only `layers:`, a "
                                            "list of layers", (*src, i), "write `when:` on a "
                                            "layer or a use, or group layers as "
                                            "{when: …, layers: [...]}", chain)
                    out += self.items(item["layers"], (*src, i, "layers"), dst, env, chain,
                                      start + len(out))
                    continue
            elif isinstance(item, str) and "$" in item:  # `- $pre`: a parameter's layers
                value = self.value(item, env, (*src, i), chain)
                if isinstance(value, list):
                    out += self.items(value, (*src, i), dst, env, chain, start + len(out))
                    continue
                item = value
            if isinstance(item, dict) and "use" in item:
                made = self.use(item, places[i], dst, start + len(out), env, chain)
                if not made:  # costs as a layer does: a repeat of it must count
                    self.count += 1
                    if self.count > self.limit:
                        raise self.too_many((*src, i), chain)
                out += made
                if self.incoming is not None and dst == ("layers",):
                    self.incoming.record(item.get("name"))  # `from:` reads its last layer
            else:
                out.append(self.layer(item, places[i], (*dst, start + len(out)), env, chain))
        return out

    def _places(self, items: list, src: tuple) -> list[tuple]:
        """The YAML location of each entry of a layer list written at ``src``: for a list a
        template writes, the same tuples at every instance."""
        if id(items) not in self.raw:
            return [(*src, i) for i in range(len(items))]
        known = self.places.get(id(items))
        if known is None or known[0] is not src:
            known = self.places[id(items)] = (src, [(*src, i) for i in range(len(items))])
        return known[1]

    def _unless(self, item: dict) -> dict:
        """The entry without its `when:`: for an entry a template writes, one at every
        instance."""
        if id(item) not in self.raw:
            return {k: v for k, v in item.items() if k != "when"}
        made = self.unless.get(id(item))
        if made is None:
            made = self.unless[id(item)] = {k: v for k, v in item.items() if k != "when"}
            self.raw.add(id(made))  # (kept here: its id stays its)
        return made

    def when(self, value: Any, env: dict, loc: tuple, chain: tuple) -> bool:
        result = self.value(value, env, loc, chain)
        if not isinstance(result, bool):
            raise TemplateError("SC113", f"when: must be true or false, got {result!r}", loc,
                                'compare it, as in when: "$expand != 1"', chain)
        return result

    def layer(self, item: Any, src: tuple, dst: tuple, env: dict, chain: tuple) -> Any:
        self.count += 1
        if self.count > self.limit:
            raise self.too_many(src, chain)
        self.where[dst] = (src, chain)
        incoming = self.incoming
        top = incoming is not None and len(dst) == 2 and dst[0] == "layers"  # the spec's list
        if not isinstance(item, dict):
            if not isinstance(item, str) or "$" in item:  # (a type's name is as written)
                item = self.value(item, env, src, chain, dst, "type")
            if incoming is not None:
                incoming.after_layer(item, src, chain, top)
            return item
        if chain:
            given = self.unevaluated.get(id(item))
            self.written[dst] = given[1] if given else item
        form = self.forms.get(id(item))
        if form is None or form.src is not src:
            form = _Form(item, src)
            if id(item) in self.raw:  # written in a template: the same at every instance
                self.forms[id(item)] = form
        if top and "from" in item:
            incoming.reads_from(item["from"], src)
        self.values += len(item)  # its fields are copied below
        if self.values > MAX_VALUES:
            self.spend(0, src, chain)
        if form.refused:
            if form.cut:
                raise _cut_at_comma(item, src, chain)
            if chain:  # as written: the use prefixes it
                check_name(item["name"], "the layer name", (*src, "name"), chain)
        block, fields = form.block, form.fields
        if block is _EVALUATED:  # `type: $kind`
            kind = self.value(item.get("type"), env, (*src, "type"), chain)
            block = block_of({"type": kind})
            fields = _fields(item, block)
        item = item.copy()
        for k in fields:
            v = item[k]
            item[k] = (self.expression(v, env, src, k, chain, dst) if type(v) is str
                       else self.value(v, env, (*src, k), chain, dst, k))
        if block is not None:
            self.blocks += 1
            if self.blocks > MAX_BLOCK_DEPTH:
                raise TemplateError("SC004", f"the expanded spec nests blocks more than "
                                    f"{MAX_BLOCK_DEPTH} deep", src, "a template whose block "
                                    "holds a use of a template that is a block nests them; "
                                    "no network needs so many levels", chain)
            outer, outs = incoming and incoming.shape, {}
            inputs = incoming.branches(block, item, src, chain) if incoming else {}
            branches = form.branches if block is form.block else None
            if branches is None:
                branches = [(suffix, branch, (*src, *suffix))
                            for suffix, branch in block.raw_branches(item)]
                if block is form.block and not form.fields:  # its lists as written
                    form.branches = branches
            for suffix, branch, here in branches:
                if incoming is not None:
                    incoming.shape = inputs.get(suffix)
                expanded = self.items(branch, here, (*dst, *suffix), env, chain)
                _put(item, suffix, expanded)
                outs[suffix] = incoming and incoming.shape
            self.blocks -= 1
            if incoming is not None:
                incoming.shape = outer
                incoming.after_block(block, item, outs, src, chain)
        elif incoming is not None:
            incoming.after_layer(item, src, chain, top)
        if top and not chain:
            incoming.record(item.get("name"))
        return item

    def prefix(self, layer: dict, instance: str, top: bool = False) -> None:
        """Name a template instance's layers after it: the instance's own layer takes its name,
        named layers inside become ``{instance}_{name}``."""
        if top:
            layer["name"] = instance
        elif isinstance(layer.get("name"), str):
            layer["name"] = f"{instance}_{layer['name']}"
        block = self.block_of(layer)
        if block is None:
            return
        branches = [layer.get(f) for f in block.list_fields]
        if block.lists_field and isinstance(layer.get(block.lists_field), list):
            branches += layer[block.lists_field]
        for branch in branches:
            if isinstance(branch, list):
                for child in branch:
                    if isinstance(child, dict):
                        self.prefix(child, instance)

    def names_inside(self, body: Any) -> bool:
        """Whether a template's body may make a layer with a name below its top: where one is
        written, or made by a use, or an expression may give a list of layers (`- $pre`,
        `body: $body`). Worked out once per body, from what is written."""
        known = self.named.get(id(body))
        if known is None:
            known = self.named[id(body)] = (
                _names_below(body) if isinstance(body, dict) else _names_in(body))
        return known

    def block_of(self, entry: dict) -> Any:
        """block_of(entry), by its `type:` as written (a spec writes few, thousands of
        times)."""
        kind = entry.get("type")
        if not isinstance(kind, str):
            return None
        block = self.kinds.get(kind, self)
        if block is self:
            block = self.kinds[kind] = block_of({"type": kind})
        return block

    def too_many(self, loc: tuple, chain: tuple) -> TemplateError:
        return TemplateError("SC004", f"the spec expands to more than {self.limit:,} layers; "
                             f"specs are limited to {self.limit:,}", loc, "a repeat inside a "
                             "repeated template multiplies: check the repeat counts", chain)

    def spend(self, values: int, loc: tuple, chain: tuple) -> None:
        """Count ``values`` copied; SC004 past MAX_VALUES."""
        self.values += values
        if self.values > MAX_VALUES:
            raise TemplateError("SC004", f"expanding the templates copies more than "
                                f"{MAX_VALUES:,} values", loc, "a use copies its values, its "
                                "layers' fields and the variables it sees into every instance: "
                                "pass large lists to fewer uses, and keep scales to the "
                                "variables they need",
                                chain)

    def size(self, value: Any) -> int:
        """How many values a default holds (counted once per object)."""
        if not isinstance(value, (list, dict)):
            return 1
        known = self.sizes.get(id(value))
        if known is None:
            known = 0
            stack = [value]
            while stack:
                part = stack.pop()
                known += 1
                if isinstance(part, (list, dict)):
                    stack += part.values() if isinstance(part, dict) else part
            self.sizes[id(value)] = known
        return known

    def value(self, value: Any, env: dict, loc: tuple, chain: tuple, dst: tuple | None = None,
              key: str | None = None) -> Any:
        """A value with every expression in it evaluated (layer lists inside it included)."""
        if is_expression(value):
            return self.expression(value, env, loc, None, chain, dst, key)
        if isinstance(value, (list, dict)):
            self.spend(len(value), loc, chain)
        if isinstance(value, list):
            return [self.value(v, env, (*loc, i), chain) for i, v in enumerate(value)]
        if isinstance(value, dict):
            result = {k: self.value(v, env, (*loc, k), chain) for k, v in value.items()}
            self.unevaluated[id(result)] = (result, value)  # the result kept: its id stays its
            return result
        return value

    def expression(self, text: str, env: dict, src: tuple, field: Any, chain: tuple,
                   dst: tuple | None = None, key: Any = None) -> Any:
        """The value of an expression written at ``src`` (a layer's, if ``field`` is not None:
        at its ``field``, which is then the note's key)."""
        if field is not None:
            key = field
        if self.incoming is not None and "$in_" in text:  # the spec's own names first
            env = {**self.incoming.names(text, env, _at(src, field), chain), **env}
        try:
            result = evaluate(text, env)
        except ExpressionError as e:
            raise TemplateError("SC109", str(e), _at(src, field), e.hint, chain) from None
        if dst is not None and not isinstance(result, (list, dict)):
            self.notes.setdefault(dst, []).append(partial(_note, key, text, env, result))
        return result

    def use(self, item: dict, src: tuple, dst: tuple, at: int, env: dict, chain: tuple) -> list:
        name = item["use"]
        template = self.templates.get(name) if isinstance(name, str) else None
        if template is None:
            close = _close_matches(str(name), list(map(str, self.templates)), n=1)
            raise TemplateError("SC108", f"unknown template {name!r}", (*src, "use"),
                                f"did you mean {close[0]!r}?" if close else
                                ("templates: " + _some(self.templates)
                                 if self.templates else "define it under `templates:`"), chain)
        if len(chain) >= MAX_TEMPLATE_DEPTH:
            raise TemplateError("SC004", f"templates use templates more than "
                                f"{MAX_TEMPLATE_DEPTH} deep", (*src, "use"), "write the "
                                "innermost ones out, or use fewer levels", chain)
        if any(site.template == name for site in chain):
            cycle = " → ".join([*(s.template for s in reversed(chain)), name])
            raise TemplateError("SC110", f"templates use each other in a cycle: {cycle}",
                                (*src, "use"), "a template cannot use itself, directly or "
                                "through others", chain)
        defaults, body, body_loc, single = self._template(name, template, chain)
        self.defaults[name] = defaults
        if single:
            self.one_layer.add(name)
        args = self._args(name, item, src, defaults, env, chain, index=0)
        first = item.get("first") or {}
        if not isinstance(first, dict):
            raise TemplateError("SC108", "`first` must map parameters to values for the first "
                                "repeat", (*src, "first"), chain=chain)
        first = self._args(name, first, (*src, "first"), defaults, env, chain, index=0,
                           allow_use_keys=False)
        repeat = self.value(item.get("repeat", 1), env, (*src, "repeat"), chain)
        # 0 is allowed: a use that makes no layers, as depth scaling needs (EfficientNet-B0
        # has one block where B1 has two: repeat ceil(n * depth_mult) - 1 is 0 there).
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
            raise TemplateError("SC103", f"repeat must be an integer >= 0, got {repeat!r}",
                                (*src, "repeat"), chain=chain)
        if repeat > self.limit:
            raise self.too_many((*src, "repeat"), chain)
        missing = [p for p, v in {**defaults, **args}.items() if v is None]
        if missing:
            raise TemplateError("SC108", f"template {name} needs a value for "
                                + ", ".join(missing), src, f"add {missing[0]}: … to the use",
                                chain)
        given = item.get("name")
        if "name" in item:  # the instance's name: an attribute, and its layers' names' start
            check_name(given, "the use's name", (*src, "name"), chain)
        site = Site(name, src)
        inner = (site, *chain)  # the uses that made the instances' layers, innermost first
        valued = any(k not in USE_KEYS for k in item)  # else no values, at every repeat
        named = self.names_inside(body)  # else prefixing its instances' names finds none
        head = f"{given or name}: use {name}" + (f" × {repeat}" if repeat > 1 else "")
        later: dict | None = None  # the use's values as written, for every repeat but the first
        out: list = []
        for i in range(repeat):
            if i > 0 and valued:  # the use's values may read $index, the repeat being made
                args = self._args(name, item, src, defaults, env, chain, index=i)
            given_values = {**args, **first} if i == 0 else args
            self.values += len(env) + len(defaults)
            if self.values > MAX_VALUES:
                self.spend(0, src, chain)
            local = {**env, **self._defaults(name, defaults, given_values, env, inner),
                     **given_values, "index": i}
            if isinstance(given, str):
                instance = given if repeat == 1 else f"{given}_{i}"
            elif chain:  # inside a template: the enclosing instance's name comes before it
                instance = str(i) if repeat > 1 else None
            else:
                self.instances[name] += 1
                instance = f"{name}{self.instances[name]}"
            start = (*dst, at + len(out))
            if single:
                produced = [self.layer(body, body_loc, start, local, inner)]
            else:
                produced = self.items(body, body_loc, dst, local, inner, start=at + len(out))
            if not produced:  # a body whose layers `when:` all leaves out: nothing to note
                continue
            if i == 0:
                raw = {**item, **(item.get("first") or {})}
                written = {k: v for k, v in raw.items() if k not in USE_KEYS}
            else:  # (read only: the repeats share them)
                raw = item
                if later is None:
                    later = {k: v for k, v in item.items() if k not in USE_KEYS}
                written = later
            if i == 0 and "from" in item and isinstance(produced[0], dict):
                # the use reads what its `from:` names: its first layer does (graph.py)
                produced[0] = {**produced[0], "from": item["from"]}
            self.made.append(Made(name, {k: local[k] for k in defaults}, start, len(produced),
                                  src, i, given if isinstance(given, str) else None,
                                  len(chain), written, instance))
            if instance is not None and (single or named):
                for layer in produced:
                    if not isinstance(layer, dict):
                        continue
                    if named:
                        self.prefix(layer, instance, top=single)
                    else:  # (only the instance's own layer has a name to give)
                        layer["name"] = instance
            self.notes.setdefault(start, []).insert(0, partial(
                _use_note, head, repeat > 1, i, given_values, raw, env))
            out += produced
        return out

    def _defaults(self, name: str, defaults: dict, given: dict, env: dict, chain: tuple) -> dict:
        """The defaults of the parameters a use leaves out; a default may be an expression of
        the parameters before it (``out: $width * 4``)."""
        values: dict = {}
        for key, default in defaults.items():
            if key in given:
                values[key] = given[key]
            elif is_expression(default):
                loc = ("templates", name, "params", key)
                self.spend(len(env) + len(values), loc, chain)
                values[key] = self.value(default, {**env, **values}, loc, chain)
            else:  # not copied, but `build` reads it at every instance
                self.values += self.size(default) if isinstance(default, (list, dict)) else 1
                if self.values > MAX_VALUES:
                    self.spend(0, ("templates", name, "params", key), chain)
                values[key] = default
        return values

    def _template(self, name: str, template: Any, chain: tuple):
        loc = ("templates", name)
        if not isinstance(template, dict):
            raise TemplateError("SC108", f"template {name} must be a mapping with `type:` or "
                                "`layers:`", loc, chain=chain)
        params = template.get("params") or {}
        if isinstance(params, list) and all(isinstance(p, str) for p in params):
            params = dict.fromkeys(params)
        if not isinstance(params, dict):
            raise TemplateError("SC108", f"template {name}: `params` must map parameter names "
                                "to default values (null: required)", (*loc, "params"),
                                chain=chain)
        for param in params:  # each an argument of the template's class
            check_name(param, f"template {name}: the parameter", (*loc, "params", param), chain)
            names = {param, param.rstrip("0123456789")}
            if names & self.classes or param[:1].isupper() and names & _helper_classes():
                raise TemplateError("SC105", f"template {name}: the parameter {param!r} has "
                                    "the name of a class build writes", (*loc, "params", param),
                                    f"use a name such as {param.lower()!r}", chain)
        if ("type" in template) == ("layers" in template):
            raise TemplateError("SC108", f"template {name} needs either `type:` (one layer) or "
                                "`layers:` (a sequence)", loc, chain=chain)
        if "layers" in template:
            body = template["layers"]
            if not isinstance(body, list) or not body:
                raise TemplateError("SC108", f"template {name}: `layers` must be a non-empty "
                                    "list", (*loc, "layers"), chain=chain)
            return params, body, (*loc, "layers"), False
        body = self.single.get(name)
        if body is None:  # one at every use: what its instances share is worked out once
            body = self.single[name] = {k: v for k, v in template.items() if k != "params"}
            self.raw.add(id(body))
        return params, body, loc, True

    def _args(self, template: str, given: dict, src: tuple, defaults: dict, env: dict,
              chain: tuple, index: int, allow_use_keys: bool = True) -> dict:
        args = {}
        scope = None
        for key, value in given.items():
            if allow_use_keys and key in USE_KEYS:
                continue
            if key not in defaults and isinstance(key, str) and "$" in key:
                raise _cut_at_comma(given, src, chain)
            if key not in defaults:
                close = _close_matches(str(key), list(defaults), n=1, cutoff=0.5)
                names = ", ".join(defaults)
                raise TemplateError(
                    "SC108", f"template {template} has no parameter {key!r}", (*src, key),
                    f"did you mean {close[0]!r}? (parameters: {names})" if close else
                    (f"its parameters: {names}" if defaults else
                     f"{template} takes no parameters"), chain)
            if scope is None:
                self.spend(len(env), src, chain)
                scope = {**env, "index": index}
            args[key] = self.value(value, scope, (*src, key), chain)
        return args


def _ids(value: Any) -> set[int]:
    """The ids of the lists and mappings in ``value``, itself included."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        part = stack.pop()
        if isinstance(part, (list, dict)) and id(part) not in seen:
            seen.add(id(part))
            stack += part.values() if isinstance(part, dict) else part
    return seen


_EVALUATED = object()  # a `type:` that is an expression: its block is known per instance


class _Form:
    """What expanding a layer entry written at ``src`` needs to know of it before any value
    is evaluated, the same at each instance of its template."""

    __slots__ = ("block", "branches", "cut", "fields", "refused", "src")

    def __init__(self, item: dict, src: tuple):
        self.src = src
        self.cut = any(isinstance(k, str) and "$" in k for k in item)  # (see _cut_at_comma)
        name = item.get("name")
        # A key holding `$`, or a name no instance may have: an error to raise.
        self.refused = self.cut or isinstance(name, str) and name_problem(name) is not None
        kind = item.get("type")
        if is_expression(kind) or isinstance(kind, (list, dict)):
            self.block, self.fields = _EVALUATED, ()
        else:
            self.block = block_of({"type": kind})
            self.fields = _fields(item, self.block)
        # A block's branches, with their locations, where no value in it is evaluated.
        self.branches: list[tuple] | None = None


def _fields(item: dict, block: Any) -> tuple:
    """The fields of a layer entry whose values hold expressions. A block's layer lists are
    not among them: they are expanded layer by layer, each with its own notes."""
    lists = (*block.list_fields, block.lists_field) if block is not None else ()
    return tuple(k for k, v in item.items() if not (
        k in lists and isinstance(v, list) or not isinstance(v, (str, list, dict))
        or isinstance(v, str) and "$" not in v))  # plain values, the most, as they are


def _names_in(entries: Any) -> bool:
    """Whether expanding a layer list as written may give a layer in it a name."""
    if not isinstance(entries, list):
        return True  # (an expression: any list of layers)
    return any(isinstance(e, str) and "$" in e  # `- $pre`, or a type an expression gives
               or isinstance(e, dict) and ("name" in e or "use" in e or _names_below(e))
               for e in entries)


def _names_below(entry: dict) -> bool:
    """Whether expanding a layer entry as written may name a layer in its branches (or, for
    a `when:` group, in its layers)."""
    if "when" in entry and "layers" in entry and "type" not in entry:
        return _names_in(entry["layers"])
    kind = entry.get("type")
    if not isinstance(kind, str) or "$" in kind:
        return not isinstance(kind, (int, float, bool)) and kind is not None  # (no layer)
    block = block_of({"type": kind})
    if block is None:
        return False
    fields = (*block.list_fields, block.lists_field)
    for key, value in entry.items():
        if key in fields and value is not None and (
                _names_in(value) if key != block.lists_field
                else not isinstance(value, list) or any(map(_names_in, value))):
            return True
    return False


def _at(src: tuple, field: Any) -> tuple:
    """The location of a field of the entry at ``src`` (``field`` None: the entry's own)."""
    return src if field is None else (*src, field)


def _cut_at_comma(entry: dict, src: tuple, chain: tuple) -> TemplateError:
    """SC109 for a key holding `$`: in a flow mapping a comma ended the value before it
    (``{out: max(8, $c)}`` reads as ``out: "max(8"`` and a key ``"$c)"``)."""
    keys = list(entry)
    key = next(k for k in keys if isinstance(k, str) and "$" in k)
    before = keys[keys.index(key) - 1] if keys.index(key) > 0 else None
    cut = entry.get(before) if before is not None else None
    if isinstance(cut, str) and cut.count("(") > cut.count(")"):
        text = f"{cut}, {key}" + ("" if entry[key] is None else f": {entry[key]}")
        return TemplateError("SC109", f"{before}: {cut!r} is cut short and {key!r} is no "
                             "field: inside {…} a comma ends the value",
                             (*src, key), f'quote the expression: {before}: "{text}"', chain)
    return TemplateError("SC109", f"{key!r} cannot be a key: a $name stands in a value",
                         (*src, key), "inside {…} a comma ends the value: quote an expression "
                         'that holds one, out: "max(8, $c)"', chain)


def _put(item: dict, suffix: tuple, value: list) -> None:
    if len(suffix) == 1:
        item[suffix[0]] = value
    else:
        key, index = suffix
        item[key] = list(item[key])
        item[key][index] = value


__all__ = ["Expansion", "Made", "Site", "TemplateCode", "TemplateError", "expand"]


def _close_matches(word: str, choices: list[str], n: int, cutoff: float = 0.6) -> list[str]:
    """difflib's close matches; difflib is imported only when a spec has a mistake."""
    import difflib

    return difflib.get_close_matches(word, choices, n=n, cutoff=cutoff)
