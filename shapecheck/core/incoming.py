"""The incoming shape inside templates: ``$in_channels``, ``$in_h`` and ``$in_w``.

A depthwise conv's ``groups: $in_channels`` needs the channels that arrive where it stands.
Templates are expanded before the spec is planned, so a spec whose expressions read these
names has its shape worked out entry by entry as it is expanded (the planner's own rules, on
the raw entries: planner.plan_entry). Specs that do not read them never get here.

Where an expression stands: at a layer's field, that layer's input; at a use's values and its
template's parameter defaults, the use's input. A repeat sees what the one before it gives, a
branch what its block gives it, and a layer of the spec's own list that reads by name
(``from:``) the tensor it names."""

from __future__ import annotations

import re
from typing import Any

from .layers import Context, ShapeError
from .planner import branch_entries, merge_entry, plan_entry
from .templates import TemplateError

_NAME = re.compile(r"\$(in_channels|in_h|in_w)\b")


class Incoming:
    """The shape where expansion stands, as (dims, planner context); None where an entry
    before it fails (``failed`` is then that entry's error as planning reports it, or
    ``unknown`` says why there is no shape)."""

    def __init__(self, shape: Any):
        self.shape: tuple | None = None
        self.failed: TemplateError | None = None
        self.unknown = ""
        # Which of the names the expressions read, and "features" where $in_channels read the
        # features after a flatten (which the height and width make).
        self.read: set[str] = set()
        # The top-level tensors a later layer may read by name (`from:`, graph.py): "input",
        # the named layers of the spec's own list, and the named uses (their last layer).
        self.tensors: dict[str, tuple | None] = {}
        self._written: dict[str, list[str]] = {}  # the names each expression text holds
        # The shape after an entry, and the shapes a block's branches get, by the entry and
        # the shape before it (_key): each instance of a template plans the same entries from
        # the same shapes.
        self._planned: dict[tuple, tuple] = {}
        self._branched: dict[tuple, dict] = {}
        if (isinstance(shape, (list, tuple)) and len(shape) == 3
                and all(type(v) is int and v > 0 for v in shape)):
            self.shape = self.tensors["input"] = ((1, *shape), Context())
        else:  # (the loader reports the input itself)
            self.unknown = "the spec's input shape is not three positive integers"

    def names(self, text: str, env: dict, loc: tuple, chain: tuple) -> dict:
        """$in_channels (channels or features), $in_h and $in_w here, for the expression
        ``text`` (read in ``env``, whose own names come first)."""
        if self.shape is None:
            if self.failed is not None:
                raise self.failed
            raise TemplateError("SC113", "the incoming shape ($in_channels, $in_h, $in_w) is "
                                f"not known here: {self.unknown}", loc,
                                "fix that first: the shape is worked out layer by layer", chain)
        written = self._written.get(text)
        if written is None:  # (a template's expressions are read at each of its instances)
            written = self._written[text] = _NAME.findall(text)
        read = [n for n in written if n not in env]
        self.read.update(read)
        x = self.shape[0]
        if "in_channels" in read and len(x) != 4:
            self.read.add("features")
        names = {"in_channels": x[1]} if len(x) >= 2 else {}
        if len(x) == 4:
            names.update(in_h=x[2], in_w=x[3])
        for name in read:
            if name not in names:
                raise TemplateError("SC113", f"${name} is not known here: the tensor that "
                                    f"arrives is {'×'.join(map(str, x[1:])) or 'a scalar'}, "
                                    "without " + ("a height and width" if name != "in_channels"
                                                  else "channels"), loc, None, chain)
        return names

    def after_layer(self, entry: Any, src: tuple, chain: tuple, top: bool) -> None:
        """The shape after a layer (not block) entry just made; ``top``: in the spec's own
        list, where it may read tensors by name."""
        if self.shape is None:
            return
        key = None if top else _key(entry, self.shape)  # (what a top entry reads may differ)
        named = self._named() if top else None
        self.shape = self._worked_out(self._planned, key,
                                      lambda: plan_entry(entry, *self.shape, named),
                                      "layer", src, chain)

    def branches(self, block: Any, item: dict, src: tuple, chain: tuple) -> dict:
        """The shape each branch of a block entry gets, by its place in the entry."""
        if self.shape is None:
            return {}
        key = _key(item, self.shape, block)
        inputs = self._worked_out(self._branched, key,
                                  lambda: branch_entries(block, item, *self.shape),
                                  "block", src, chain)
        return {} if inputs is None else inputs

    def after_block(self, block: Any, item: dict, outs: dict, src: tuple, chain: tuple) -> None:
        """The shape after a block entry, from its branches' (by their place); ``shape`` is
        the block's input again."""
        if self.shape is None:
            return
        if any(out is None for out in outs.values()):
            self.shape = None  # a branch failed: its error stays the one to report
            return
        given = {place: out[0] for place, out in outs.items()}
        key = _key(item, self.shape, block, tuple(given.items()))
        self.shape = self._worked_out(self._planned, key,
                                      lambda: merge_entry(block, item, *self.shape, given),
                                      "block", src, chain)

    def _worked_out(self, table: dict, key: tuple | None, work, what: str, src: tuple,
                    chain: tuple):
        """``work()``, kept in ``table`` by ``key`` (None: not kept), as every instance of a
        template plans the same entries from the same shapes; None where it fails (_lose).
        Failures are not kept."""
        if key is not None:
            known = table.get(key)
            if known is not None:
                return known
        try:
            found = work()
        except (ShapeError, ValueError) as e:
            self._lose(e, what, src, chain)
            return None
        if key is not None:
            table[key] = found
        return found

    def reads_from(self, value: Any, src: tuple) -> None:
        """The shape a top-level entry with ``from: value`` gets: the tensor it names first,
        as the planner gives it."""
        names = value if isinstance(value, list) else [value]
        name = names[0] if names else None
        known = self._named()
        if isinstance(name, str) and known.get(name) is not None:
            self.shape = known[name]
        elif self.shape is not None:
            self.shape, self.failed = None, None
            self.unknown = (f"the layer at {_loc_text(src)} reads `from: {name}`, whose shape "
                            "is not followed (name the layer it reads: the layers that a "
                            "template writes and unnamed layers are not)")

    def record(self, name: Any) -> None:
        """The shape here is the tensor ``name`` (a top-level layer's or use's)."""
        if isinstance(name, str):
            self.tensors[name] = self.shape

    def _named(self) -> dict:
        """The tensors a layer of the spec's own list may read by name."""
        return {**self.tensors, "prev": self.shape}

    def _lose(self, error: Exception, what: str, src: tuple, chain: tuple) -> None:
        """No shape after the entry at ``src``. A shape error is reported as planning reports
        it, at that entry, where a template reads the shape after it; an entry that breaks the
        schema is named (the loader reports it, once expansion is done)."""
        self.shape = None
        self.failed = None
        if isinstance(error, ShapeError):
            self.failed = TemplateError(error.code, f"{error.message} (a template after it "
                                        "reads the incoming shape, which this leaves unknown)",
                                        src, error.hint, chain)
        self.unknown = f"the {what} at {_loc_text(src)}, before it, {error}"


def _key(entry: Any, shape: tuple, block: Any = None, outs: tuple = ()) -> tuple | None:
    """What planning an entry from ``shape`` depends on, hashable; None where an entry's value
    is not (a list). Each value's type is part of it (True == 1, yet `groups: true` is
    refused), and a float is its exact bits (-0.0 == 0.0). A block's branches count only by
    their number and lengths: what they give is ``outs``, the shapes they gave."""
    x, ctx = shape
    if isinstance(entry, dict):
        if block is not None:
            entry = {k: _lengths(v, k == block.lists_field) if k in block.list_fields
                     or k == block.lists_field else v for k, v in entry.items()}
        values = tuple(entry.values())
        types = tuple(map(type, values))
        if float in types:
            values = tuple(v.hex() if type(v) is float else v for v in values)
        fields: Any = (tuple(entry), values, types)
    elif isinstance(entry, str):
        fields = entry
    else:
        return None
    key = (fields, x, ctx.features_from, ctx.channels_last, block, outs)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _lengths(value: Any, lists: bool) -> Any:
    """A branch's layer list as its length (a tuple, which YAML does not give), a list of
    branches as theirs; anything else (an error the planner reports) as it is."""
    if not isinstance(value, list):
        return value
    if lists:
        return tuple(_lengths(branch, False) for branch in value)
    return ("layers", len(value))


def _loc_text(loc: tuple) -> str:
    """A YAML location for a message: layers[3].body[1]."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text
