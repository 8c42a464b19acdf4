"""The YAML that specs are written in, read line by line without libyaml: a fast path for
yamlread.read, which uses it first.

Contract: `read(text)` returns exactly what yamlread's event reader returns for `text` (the
same data, of the same types, scalars resolved by the very same code, yamlread._scalar and its
_plain cache; the same positions, in the same order; the same duplicate keys), or None, and
then the event reader reads the text. It returns None for anything outside a strict subset,
so every refusal and every error, with its line and column, stays the event reader's:

- one document, its root a block mapping or a block sequence; `\n` the only line end and the
  space the only white space; no character Python deems unprintable (so no tab, CR, NEL,
  line separator, BOM, control character or surrogate); no line starting `---` or `...`;
- block mappings and sequences by indentation: `key: value`, `key:` with its value on the
  next lines (more indented, or a sequence at the key's own indentation), `- value`,
  `- key: value` and `- - value` (a collection that starts on the item's line), `-` with its
  value on the next lines (never an empty item);
- keys: words of ASCII letters, digits and `_$.~/()+-`, starting as a plain scalar does
  (below), resolved as the event reader resolves them (no merge key `<<`, no `=`);
- plain scalars starting with an ASCII letter or digit or one of `_$.~/(+`, or `-` before a
  letter, digit, `_` or `.`: in a block, up to a comment, without `: ` and not ending in `:`,
  going on over more indented lines of such text (folded with spaces, no blank or comment
  line between); in a flow, without `:` or `#`;
- quoted scalars on one line without escapes (no backslash in "...", no '' in '...');
- flow mappings and sequences closed on the line they open, of such scalars and flows, with
  `key: value` in mappings, no empty entry, no trailing comma;
- comments after a space, comment lines and blank lines anywhere (except inside a plain
  scalar that goes on over lines);
- nodes nested at most _DEPTH deep (well within yamlread.MAX_DEPTH); no anchor, alias, tag,
  block scalar (| or >), `?` key or directive, so no node budget is needed.

What the subset leaves out is no loss: the event reader reads it, as before."""

from __future__ import annotations

import yaml

from . import yamlread  # (which imports this module: its names are looked up when used)

_DEPTH = 64  # deepest node read here; deeper texts go to the event reader (MAX_DEPTH 100)

# (No regular expressions: compiling them would cost every run more than they save.)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_FIRST = frozenset(_ALNUM + "_$.~/(+")  # how a plain scalar of the subset starts
_AFTER_DASH = frozenset(_ALNUM + "_.")  # ... or with `-` before one of these
_KEY_CHARS = _ALNUM + "_$.~/()+-"
_FLOW_STOPS = ",[]{}:#"  # what ends a plain scalar in a flow here

# What a line holds (after its indentation), the first item of its form:
KEY = 0  # (KEY, key, value form or None, the value's offset in the line)
ITEM_EMPTY = 1  # (ITEM_EMPTY,): `-`, its value on the next lines
ITEM_MAP = 2  # (ITEM_MAP, offset of the key, key form): `- key: ...`
ITEM_VAL = 3  # (ITEM_VAL, offset of the value, value form)
ITEM_SEQ = 4  # (ITEM_SEQ, offset of the inner `-`, item form): `- - ...`
TEXT = 5  # (TEXT, text): plain text, only read as the rest of a plain value above it
_ITEMS = (ITEM_EMPTY, ITEM_MAP, ITEM_VAL, ITEM_SEQ)
# A value form: (PLAIN, value, text), a plain scalar that may go on over the next lines;
# (FIXED, value), a quoted scalar or a plain one ended by a comment; (FLOW, recipe).
PLAIN, FIXED, FLOW = 0, 1, 2
# A flow's recipe: (SCALAR, value); (MAP, ((key, offset, recipe), ...), template, depth,
# places); (SEQ, ((offset, recipe), ...), template, depth, places). The offsets count from
# where the outermost flow opens; depth is how many levels it holds below itself. Where every
# entry is a scalar (and no key is given twice) the template is the value, copied for each
# use, and places are ((key or index,), offset) for each entry; else both are None.
SCALAR, MAP, SEQ = 0, 1, 2

# The form of each line's text seen so far: a long spec repeats a few lines many times.
_forms: dict[str, tuple] = {}
_NONE = object()  # not in yamlread._plain


class _Decline(Exception):
    """The text is outside the subset: the event reader reads it."""


def read(text: str) -> tuple[object, dict, list] | None:
    """(data, positions, duplicates) exactly as yamlread's event reader gives them, or None
    where the text is outside the subset read here. `text` has no leading BOM."""
    try:
        return _read(text)
    except _Decline:
        return None


def _read(text: str):
    numbers, indents, forms = [], [], []
    gaps = set()  # the lines (their indexes in forms) after a blank line or a comment
    known, gap = _forms, False
    for number, line in enumerate(text.split("\n"), 1):
        content = line.lstrip(" ")
        if not content or content[0] == "#":
            if not content.isprintable():
                raise _Decline
            gap = True
            continue
        form = known.get(content)
        if form is None:  # (every line but blank and comment ones is checked by _form)
            form = _form(content)
            if len(content) < 300 and len(known) < 20_000:
                known[content] = form
        if gap:
            gaps.add(len(forms))
            gap = False
        numbers.append(number)
        indents.append(len(line) - len(content))
        forms.append(form)
    if not forms:
        raise _Decline  # empty: the event reader says so
    reader = _Reader(numbers, indents, forms, gaps)
    reader.positions[()] = (numbers[0], indents[0] + 1)
    data, end = reader.block(0, (), 0)
    if end != len(forms):
        raise _Decline
    return data, reader.positions, reader.duplicates


# --------------------------------------------------------------------- one line's form


def _form(content: str) -> tuple:
    """The form of a line's text after its indentation (not blank, not a comment)."""
    # Python's printable characters are ones YAML allows too: not a tab, CR, NEL, line or
    # paragraph separator, BOM, control character or surrogate (nor some YAML allows).
    if not content.isprintable() or content.startswith(("---", "...")):
        raise _Decline
    if content[0] == "-" and (len(content) == 1 or content[1] == " "):
        rest = content[1:].lstrip(" ")
        offset = len(content) - len(rest)
        if not rest or rest[0] == "#":
            return (ITEM_EMPTY,)
        if rest[0] == "-" and (len(rest) == 1 or rest[1] == " "):
            return (ITEM_SEQ, offset, _form(rest))
        key = _key_form(rest)
        if key is not None:
            return (ITEM_MAP, offset, key)
        return (ITEM_VAL, offset, _value_form(rest))
    key = _key_form(content)
    if key is not None:
        return key
    text = content.rstrip(" ")
    if _plain_start(text, 0) and " #" not in text and ": " not in text and text[-1] != ":":
        return (TEXT, text)
    raise _Decline


def _key_form(text: str) -> tuple | None:
    """The form of `key: ...`, or None where the text does not start with a key."""
    end = _key_end(text, 0)
    if end < 0 or text[end + 1:end + 2] not in ("", " "):
        return None
    key = _key(text[:end])
    rest = text[end + 1:].lstrip(" ")
    if not rest or rest[0] == "#":
        return (KEY, key, None, 0)
    return (KEY, key, _value_form(rest), len(text) - len(rest))


def _plain_start(text: str, at: int) -> bool:
    """Whether a plain scalar of the subset starts at text[at]."""
    first = text[at:at + 1]
    return first in _FIRST or first == "-" and text[at + 1:at + 2] in _AFTER_DASH


def _key_end(text: str, at: int) -> int:
    """Where the `:` after a key of the subset starting at text[at] is, or -1."""
    end = text.find(":", at)
    if end <= at or text[at:end].strip(_KEY_CHARS) or not _plain_start(text, at):
        return -1
    return end


def _quoted_end(text: str, at: int) -> int:
    """Where the quoted scalar of the subset opening at text[at] ends (after its closing
    quote), or -1: it goes on past the line, or holds an escape."""
    quote = text[at]
    end = text.find(quote, at + 1)
    if end < 0 or (quote == '"' and "\\" in text[at + 1:end]
                   or quote == "'" and text[end + 1:end + 2] == "'"):
        return -1
    return end + 1


def _key(key: str) -> str:
    """A key as the event reader keeps it: the text written, once it resolves to a value."""
    if len(key) > 500:  # (libyaml limits a key's length)
        raise _Decline
    if key not in yamlread._plain:
        _resolve(key)  # declines what the event reader refuses or reports (`<<`, `=` ...)
    return key


def _value_form(text: str) -> tuple:
    """The form of a value written after `key: ` or `- ` (not empty, not a comment)."""
    first = text[0]
    if first == "{" or first == "[":
        recipe, end = _flow(text, 0, 0)
        _end_of_line(text, end)
        return (FLOW, recipe)
    if first == '"' or first == "'":
        end = _quoted_end(text, 0)
        if end < 0:
            raise _Decline
        _end_of_line(text, end)
        return (FIXED, text[1:end - 1])
    if not _plain_start(text, 0):
        raise _Decline  # anchors, aliases, tags, block scalars, `key: - x` ...
    comment = text.find(" #")
    plain = (text if comment < 0 else text[:comment]).rstrip(" ")
    if ": " in plain or plain[-1] == ":":
        raise _Decline  # a mapping where none may start
    value = _resolve(plain)
    return (PLAIN, value, plain) if comment < 0 else (FIXED, value)


def _end_of_line(text: str, end: int) -> None:
    """Nothing may follow a flow or a quoted scalar but white space and a comment."""
    rest = text[end:]
    left = rest.lstrip(" ")
    if left and (left[0] != "#" or len(left) == len(rest)):
        raise _Decline


def _resolve(text: str):
    """A plain scalar's value, as the event reader makes it (and remembers it)."""
    plain = yamlread._plain
    value = plain.get(text, _NONE)
    if value is not _NONE:
        return value
    tag = yamlread._resolver.resolve(yaml.ScalarNode, text, (True, False))
    if tag not in yamlread._SAFE_TAGS or tag == yamlread._MERGE:
        raise _Decline  # refused, or an error: the event reader says which
    try:
        value = yamlread._scalar(tag, text)
    except Exception:  # noqa: BLE001 - e.g. 2001-02-30: whatever it is, the event reader's
        raise _Decline from None
    if len(text) < 100 and len(plain) < 10_000:
        plain[text] = value
    return value


def _flow(text: str, at: int, depth: int) -> tuple[tuple, int]:
    """(recipe, where it ends) of the flow mapping or sequence that opens at text[at]."""
    if depth > _DEPTH:
        raise _Decline
    mapping = text[at] == "{"
    close = "}" if mapping else "]"
    entries = []
    at = _skip(text, at + 1)
    if text[at:at + 1] == close:
        return (MAP if mapping else SEQ, (), {} if mapping else [], 1, ()), at + 1
    while True:
        start = at
        if mapping:
            end = _key_end(text, at)
            if end < 0 or text[end + 1:end + 2] != " ":
                raise _Decline
            key = _key(text[at:end])
            at = _skip(text, end + 2)
        first = text[at:at + 1]
        if first == "{" or first == "[":
            recipe, at = _flow(text, at, depth + 1)
        elif first == '"' or first == "'":
            end = _quoted_end(text, at)
            if end < 0:
                raise _Decline
            recipe, at = (SCALAR, text[at + 1:end - 1]), end
        else:
            if not _plain_start(text, at):
                raise _Decline
            end = len(text)
            for stop in _FLOW_STOPS:  # (the first character is none of them)
                found = text.find(stop, at, end)
                if found >= 0:
                    end = found
            recipe, at = (SCALAR, _resolve(text[at:end].rstrip(" "))), end
        entries.append((key, start, recipe) if mapping else (start, recipe))
        at = _skip(text, at)
        after = text[at:at + 1]
        if after == ",":
            at = _skip(text, at + 1)
            if text[at:at + 1] == close:
                raise _Decline  # a trailing comma
        elif after == close:
            break
        else:
            raise _Decline  # `:` or `#` in a plain scalar, a line end ...
    children = [entry[-1] for entry in entries]
    depth_below = 1 + max(child[3] if child[0] else 0 for child in children)
    template = places = None
    if depth_below == 1:
        if not mapping:
            template = [child[1] for child in children]
            places = tuple(((index,), offset) for index, (offset, _) in enumerate(entries))
        elif len({key for key, _, _ in entries}) == len(entries):
            template = {key: recipe[1] for key, _, recipe in entries}
            places = tuple(((key,), offset) for key, offset, _ in entries)
    return (MAP if mapping else SEQ, tuple(entries), template, depth_below, places), at + 1


def _skip(text: str, at: int) -> int:
    while text[at:at + 1] == " ":
        at += 1
    return at


# --------------------------------------------------------------------- the lines' structure


class _Reader:
    """Reads the block structure from the lines' forms, building values and noting places
    in the order the event reader does: a sequence item's place if it has none yet, a key's
    place always (a key given twice is noted where it was given last)."""

    def __init__(self, numbers, indents, forms, gaps):
        self.numbers, self.indents, self.forms, self.gaps = numbers, indents, forms, gaps
        self.positions: dict[tuple, tuple[int, int]] = {}
        self.duplicates: list = []

    def block(self, i: int, loc: tuple, depth: int):
        """(value, next line) of the block collection that starts on line i."""
        form = self.forms[i]
        if form[0] == KEY:
            return self.mapping(i, self.indents[i], loc, depth, form)
        if form[0] in _ITEMS:
            return self.sequence(i, self.indents[i], loc, depth, False, form)
        raise _Decline  # a scalar on a line of its own

    def mapping(self, i: int, column: int, loc: tuple, depth: int, form: tuple):
        """(value, next line) of the block mapping whose keys stand at `column`, the first
        one on line i (`form`: it may follow an item's `- `)."""
        if depth >= _DEPTH:
            raise _Decline
        numbers, indents, forms = self.numbers, self.indents, self.forms
        positions, n = self.positions, len(forms)
        value = {}
        while True:
            _, key, form, offset = form
            line = numbers[i]
            if key in value:
                self.duplicates.append((loc, key, line, column + 1))
            key_loc = loc + (key,)
            positions[key_loc] = (line, column + 1)
            i += 1
            if form is None:  # the value is on the next lines, or null
                if i < n and indents[i] > column:
                    item, i = self.block(i, key_loc, depth + 1)
                elif i < n and indents[i] == column and forms[i][0] in _ITEMS:
                    item, i = self.sequence(i, column, key_loc, depth + 1, True, forms[i])
                else:
                    item = None
            else:
                kind = form[0]
                if kind == FLOW:
                    if depth + 1 + form[1][3] > _DEPTH:
                        raise _Decline
                    item = self.build(form[1], key_loc, line, column + 1 + offset)
                else:
                    item = form[1]
                if i < n and indents[i] > column:
                    if kind != PLAIN:
                        raise _Decline
                    item, i = self.folded(i, column, form[2])
            value[key] = item
            if i == n or indents[i] < column:
                return value, i
            form = forms[i]
            if indents[i] > column or form[0] != KEY:
                raise _Decline

    def sequence(self, i: int, column: int, loc: tuple, depth: int, indentless: bool,
                 form: tuple):
        """(value, next line) of the block sequence whose `-` stand at `column`, the first
        item on line i (`form`: it may follow an item's `- `); `indentless`: the value of a
        key at that same column, which ends at the next key."""
        if depth >= _DEPTH:
            raise _Decline
        numbers, indents, forms = self.numbers, self.indents, self.forms
        positions, n = self.positions, len(forms)
        items = []
        while True:
            kind = form[0]
            line = numbers[i]
            item_loc = loc + (len(items),)
            i += 1
            if kind == ITEM_VAL:
                at = column + 1 + form[1]
                positions.setdefault(item_loc, (line, at))
                form = form[2]
                if form[0] == FLOW:
                    if depth + 1 + form[1][3] > _DEPTH:
                        raise _Decline
                    item = self.build(form[1], item_loc, line, at)
                else:
                    item = form[1]
                if i < n and indents[i] > column:
                    if form[0] != PLAIN:
                        raise _Decline
                    item, i = self.folded(i, column, form[2])
            elif kind == ITEM_MAP:
                positions.setdefault(item_loc, (line, column + 1 + form[1]))
                item, i = self.mapping(i - 1, column + form[1], item_loc, depth + 1, form[2])
            elif kind == ITEM_SEQ:
                positions.setdefault(item_loc, (line, column + 1 + form[1]))
                item, i = self.sequence(i - 1, column + form[1], item_loc, depth + 1, False,
                                        form[2])
            else:  # ITEM_EMPTY: the value is on the next lines
                if i == n or indents[i] <= column:
                    raise _Decline  # an empty item
                positions.setdefault(item_loc, (numbers[i], indents[i] + 1))
                item, i = self.block(i, item_loc, depth + 1)
            items.append(item)
            if i == n or indents[i] < column:
                return items, i
            form = forms[i]
            if indents[i] > column:
                raise _Decline
            if form[0] not in _ITEMS:
                if indentless and form[0] == KEY:
                    return items, i
                raise _Decline

    def folded(self, i: int, column: int, text: str):
        """(value, next line) of a plain scalar that goes on over the lines from i, more
        indented than `column`: its lines joined by spaces."""
        indents, forms, gaps, n = self.indents, self.forms, self.gaps, len(self.forms)
        parts = [text]
        while i < n and indents[i] > column:
            if i in gaps or forms[i][0] != TEXT:
                raise _Decline
            parts.append(forms[i][1])
            i += 1
        return _resolve(" ".join(parts)), i

    def build(self, recipe: tuple, loc: tuple, line: int, column: int):
        """The value of a flow collection at `loc`, opening at (line, column)."""
        positions = self.positions
        kind, entries, template, _, places = recipe
        if template is not None:  # scalars only: the places, then a copy
            if kind == MAP:
                for key, offset in places:
                    positions[loc + key] = (line, column + offset)
            else:
                setdefault = positions.setdefault
                for index, offset in places:
                    setdefault(loc + index, (line, column + offset))
            return template.copy()
        if kind == MAP:
            value = {}
            for key, offset, child in entries:
                if key in value:
                    self.duplicates.append((loc, key, line, column + offset))
                key_loc = loc + (key,)
                positions[key_loc] = (line, column + offset)
                value[key] = (child[1] if child[0] == SCALAR
                              else self.build(child, key_loc, line, column))
            return value
        setdefault = positions.setdefault
        items = []
        for offset, child in entries:
            item_loc = loc + (len(items),)
            setdefault(item_loc, (line, column + offset))
            items.append(child[1] if child[0] == SCALAR
                         else self.build(child, item_loc, line, column))
        return items
