"""Blocks that the module repeats, written once as a template and used by name.

A block can become a template instance only where the template reproduces it exactly: every
named layer inside it is named ``{block}_{name}`` (as a template instance names them), so the
template holds the names without the prefix. Blocks whose templates would be identical share
one, named after the module class that merges them (``BasicBlock`` -> ``basic_block``); a
template is made only where at least two blocks use it. Consecutive uses named ``p_0``,
``p_1`` … ``p_{k-1}`` become one use with ``repeat: k``, which names its instances just so.
Expanding the result gives back every block with its names (``shapecheck expand``).
"""

from __future__ import annotations

import copy
import re

from .structure import Leaf, Nest, Use


def make_templates(items: list, render) -> dict[str, Nest]:
    """Replace repeated blocks in ``items`` (in place) by uses; returns the templates, by
    name, as blocks with names relative to the instance. ``render(nest)`` gives the text that
    tells two templates apart."""
    forms: dict[str, list] = {}  # rendered template -> [template, its blocks]

    def collect(items):
        for item in items:
            if not isinstance(item, Nest):
                continue
            form = None if item.pinned else _relative(item)
            if form is None:
                for _, branch in item.branches:
                    collect(branch)
                continue
            forms.setdefault(render(form), [form, []])[1].append(item)

    collect(items)
    templates: dict[str, Nest] = {}
    chosen: dict[int, str] = {}
    for form, members in forms.values():
        if len(members) < 2:
            continue
        base = _snake(members[0].scope_class) or members[0].type
        name, k = base, 1
        while name in templates:
            k += 1
            name = f"{base}_{k}"
        templates[name] = form
        chosen.update({id(m): name for m in members})
    if templates:
        _replace(items, chosen)
    return templates


def _relative(block: Nest) -> Nest | None:
    """The block as a template: its inner names without the ``{block}_`` prefix, or None where
    a name inside does not carry it."""
    if not block.name:
        return None
    prefix = f"{block.name}_"
    ok = True

    def strip(items):
        nonlocal ok
        out = []
        for item in items:
            if isinstance(item, Leaf):
                entry = dict(item.entry)
                if "name" in entry:
                    if not entry["name"].startswith(prefix):
                        ok = False
                    entry["name"] = entry["name"].removeprefix(prefix)
                out.append(Leaf(entry, item.step))
            else:
                inner = copy.copy(item)
                if inner.name is not None:
                    if not inner.name.startswith(prefix):
                        ok = False
                    inner.name = inner.name.removeprefix(prefix)
                inner.branches = [(key, strip(branch)) for key, branch in item.branches]
                out.append(inner)
        return out

    form = copy.copy(block)
    form.name = None
    form.branches = [(key, strip(branch)) for key, branch in block.branches]
    return form if ok else None


def _replace(items: list, chosen: dict[int, str]) -> None:
    for i, item in enumerate(items):
        if isinstance(item, Nest):
            if id(item) in chosen:
                items[i] = Use(chosen[id(item)], item.name, 1, [item])
            else:
                for _, branch in item.branches:
                    _replace(branch, chosen)
    # p_0, p_1 … p_{k-1} in a row: one use with repeat k
    i = 0
    while i < len(items):
        item = items[i]
        match = re.fullmatch(r"(\w+)_0", item.name) if isinstance(item, Use) else None
        if match:
            run = [item]
            while (i + len(run) < len(items) and isinstance(items[i + len(run)], Use)
                   and items[i + len(run)].template == item.template
                   and items[i + len(run)].name == f"{match.group(1)}_{len(run)}"):
                run.append(items[i + len(run)])
            if len(run) > 1:
                items[i:i + len(run)] = [Use(item.template, match.group(1), len(run),
                                             [u.members[0] for u in run])]
        i += 1


def _snake(name: str) -> str:
    """BasicBlock -> basic_block."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    return text if text.isidentifier() and text.isascii() else ""
