"""Named inputs: a layer of the spec's own list may read earlier tensors by name.

``from: enc1`` gives a layer the output of layer ``enc1`` instead of the previous layer's;
merge layers (``add``, ``mul``, ``cat``) take ``from: [a, b, …]``; ``upsample`` may take its
size from another tensor (``size: {like: input}``). Two names are reserved in these places:
``input`` (the spec's input) and ``prev`` (the previous layer's output). A name may also be a
template use's ``name:`` (its last layer's output). The spec's outputs are its last layer, or
those listed under ``outputs:``.

This module reads and checks the names (SC112) and finds the named outputs nothing reads
(SC307); the planner, the receptive field, ``solve`` and ``build`` follow them."""

from __future__ import annotations

from typing import Any

INPUT = "input"  # the spec's input tensor
PREV = "prev"  # the previous layer's output
RESERVED = (INPUT, PREV)


class Like:
    """A size taken from another tensor's height and width (``size: {like: NAME}``). A plain
    class: a frozen dataclass compiled its methods at every start-up."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Like) and other.name == self.name

    def __hash__(self) -> int:
        return hash((Like, self.name))

    def __repr__(self) -> str:
        return f"Like(name={self.name!r})"

    def __str__(self) -> str:
        return f"like {self.name}"


def graph_error(loc: tuple, message: str, hint: str | None = None, value: Any = None) -> dict:
    """A pydantic-style error dict the loader reports as SC112 at ``loc``."""
    return {"type": "graph", "loc": loc, "msg": message, "hint": hint, "input": value}


def read_from(value: Any, loc: tuple, top_level: bool) -> tuple[tuple[str, ...] | None,
                                                                 dict | None]:
    """The names a ``from:`` value holds (one name, or a list of them), or an error."""
    if not top_level:
        return None, graph_error(loc, "`from:` is allowed only in the spec's own `layers:` list; "
                                 "a branch takes its block's input",
                                 "move the layer out of the block, or give the block `from:`")
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) and n.isidentifier() and n.isascii()
                            for n in names):
        return None, graph_error(loc, f"`from:` must be a layer name or a list of them, got "
                                 f"{value!r}", "e.g. `from: enc1` or `from: [prev, enc1]`", value)
    return tuple(names), None


def read_like(value: Any) -> Like | None:
    """A ``{like: NAME}`` mapping as a Like, or None when ``value`` is not one."""
    if isinstance(value, dict) and list(value) == ["like"]:
        name = value["like"]
        if isinstance(name, str) and name.isidentifier() and name.isascii():
            return Like(name)
    return None


def uses_names(layers: list, outputs: list | None) -> bool:
    """Whether a spec reads any tensor by name (else it is a plain chain, as before)."""
    return bool(outputs) or any(layer.inputs is not None or layer.is_merge or _like(layer)
                                for layer in layers)


def _like(layer) -> Like | None:
    # The model's fields are in its __dict__: a getattr of a kind without `size` would go
    # through pydantic's __getattr__ and an AttributeError, for every layer of every spec.
    size = layer.__dict__.get("size")
    return size if isinstance(size, Like) else None


def like_of(layer) -> str | None:
    """The name of the tensor whose size a layer takes (``size: {like: NAME}``), or None."""
    like = _like(layer)
    return like.name if like is not None else None


def check(layers: list, outputs: list | None, aliases: dict[str, int]) -> list[dict]:
    """SC112 errors (as error dicts) for names that are not defined before they are read, for a
    merge with fewer than two inputs, and for ``from:`` lists on layers that take one input.
    ``aliases`` maps a template use's name to its last layer's index."""
    errors = []
    defined: dict[str, int] = {}
    for i, layer in enumerate(layers):
        loc = ("layers", i)
        names = layer.inputs
        is_merge = layer.is_merge
        if names is not None:
            for name in names:
                problem = _undefined(name, i, defined, aliases, layers)
                if problem:
                    errors.append(graph_error((*loc, "from"), problem[0], problem[1], name))
            if not is_merge and len(names) != 1:
                errors.append(graph_error((*loc, "from"), f"{layer.type} takes one input, "
                                          f"but `from:` lists {len(names)}",
                                          "join them first with an add, mul or cat layer"))
        if is_merge and len(names or ()) < 2:
            errors.append(graph_error((*loc, "from") if names else loc,
                                      f"{layer.type} merges two or more tensors: give them "
                                      "as `from: [a, b]`", "e.g. `from: [prev, enc1]`"))
        like = _like(layer)
        if like is not None and like.name != PREV:
            problem = _undefined(like.name, i, defined, aliases, layers)
            if problem:
                errors.append(graph_error((*loc, "size"), problem[0], problem[1], like.name))
        if layer.name in RESERVED:  # `from: input` would not mean this layer
            errors.append(graph_error((*loc, "name"), f"a layer named {layer.name!r} cannot be "
                                      f"read by name: `{layer.name}` means "
                                      + ("the spec's input" if layer.name == INPUT else
                                         "the previous layer") + " in `from:`",
                                      f"rename it, e.g. {layer.name}_"))
        defined[layer.name] = i
    for j, name in enumerate(outputs or ()):
        if name in RESERVED or (name not in defined and name not in aliases):
            close = _close(name, defined)
            errors.append(graph_error(("outputs", j), f"`outputs:` names {name!r}, which is not "
                                      "a layer of the spec's own list",
                                      close if close.startswith("did") else "name layers of "
                                      "the spec's own `layers:` list (or template uses)"))
    return errors


def _undefined(name: str, i: int, defined: dict, aliases: dict,
               layers: list) -> tuple[str, str | None] | None:
    """Why ``name`` cannot be read by layer ``i``, with a hint; None when it can."""
    if name == INPUT or name == PREV:
        return None
    if name in defined or aliases.get(name, i) < i:
        return None
    later = next((j for j in range(i, len(layers)) if layers[j].name == name), None)
    if later is None and name in aliases:
        later = aliases[name]
    if later is not None:
        what = "itself" if later == i else f"layer {later}, after this one"
        return (f"{name!r} is {what}: a layer can only read tensors made before it",
                "name an earlier layer (a network has no cycles)")
    return f"no layer before this one is named {name!r}", _close(name, defined)


def _close(name: str, defined: dict) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(defined), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"name an earlier layer, or `{INPUT}` (the spec's input) or `{PREV}` (the previous layer)"


def unused(rows: list, outputs: list[int]) -> list[tuple]:
    """(row, code, message, hint) for each planned top-level row whose output nothing reads:
    not the next layer (it reads another tensor), no ``from:`` or ``like``, and not one of the
    ``outputs`` (indexes; the last layer is always an output)."""
    index = {row.name: row.index for row in rows}
    read = {*outputs, len(rows) - 1}
    for row in rows:
        if row.inputs is None:
            read.add(row.index - 1)
        else:
            read |= {index.get(name, -1) for name in row.inputs}
        if row.like is not None:
            read.add(index.get(row.like, -1))
    message = ("nothing reads this layer's output: the next layer reads another tensor "
               "(`from:`), and no `from:`, `like` or `outputs:` names it")
    hint = "read it with `from:` where it is needed, list it under `outputs:`, or remove it"
    return [(row, "SC307", message, hint) for row in rows if row.index not in read]
