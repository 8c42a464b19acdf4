"""YAML text to Python data in one pass over libyaml's events: the data as PyYAML's safe
loader builds it, the (line, column) of every mapping key and sequence item, and the keys
given twice. Refuses what a spec never needs: tags beyond plain data, deep nesting, aliases
that contain themselves or expand to too many nodes.

No node tree is made: composing one costs about three times the parsing, and the tree loses
where each alias stood. Making Python objects for libyaml's events costs most of the rest:
`read` first gives the text to yamlfast, which reads the plain YAML most specs are written in
line by line, to the same result, and leaves anything else to the event reader here."""

from __future__ import annotations

import yaml
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    StreamEndEvent,
)

from . import yamlfast
from .diagnostics import Diagnostic, InputError

MAX_NODES = 1_000_000  # after expanding aliases: stops alias and merge-key bombs
MAX_DEPTH = 100

_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP, _MERGE = (
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp",
                                       "merge"))
_SAFE_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP, _MERGE,
              "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}

# libyaml's parser where PyYAML was built with it; both give the same events.
_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_resolver = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()
# The value of each plain scalar written without a tag (or with just `!`): a spec repeats the
# same few (conv2d, 3, relu ...), and resolving one runs the resolver's regexes. Long ones are
# rare and not kept.
_plain: dict[str, object] = {}
_NONE = object()  # not in _plain
_MERGE_KEY = object()  # the key `<<`

Duplicate = tuple[tuple, str, int, int]  # (mapping's location, key, line, column)


def read(text: str, source: str | None = None) -> tuple[object, dict, list[Duplicate]]:
    """(data, {location: (line, column)} of every key and item, the keys given twice);
    InputError if the text is not YAML or is refused. A location is a tuple of keys and
    indexes from the root, e.g. ("layers", 3, "kernel_size"); the root's is ()."""
    text = text.lstrip("\ufeff")
    # The plain YAML specs are written in is read line by line, the rest from libyaml's
    # events: both give the same.
    return yamlfast.read(text) or read_events(text, source)


def read_events(text: str, source: str | None = None) -> tuple[object, dict, list[Duplicate]]:
    """What `read` returns, from libyaml's events: for any text."""
    text = text.lstrip("\ufeff")

    def refuse(message: str, mark=None, code="SC004", hint=None) -> InputError:
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        return InputError(Diagnostic("error", code, message, line=line, column=col, file=source,
                                     hint=hint))

    try:
        return _Reader(_Parser(text).get_event, refuse).document()
    except yaml.reader.ReaderError as e:  # a NUL or another control character
        raise _reader_error(e, text, source) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if "nesting depth" in str(e.problem):  # libyaml's own limit
            raise refuse(f"the YAML is nested more than {MAX_DEPTH} levels deep", mark) from None
        raise refuse(f"not valid YAML: {e.problem or e.context}", mark, "SC002",
                     _TAB_HINT if mark and _tab_at(text, mark) else None) from None
    except (ValueError, yaml.YAMLError) as e:  # e.g. an impossible date
        raise refuse(f"not valid YAML: {e}", None, "SC002") from None
    except RecursionError:
        raise refuse("the YAML is nested too deeply") from None


_TAB_HINT = "YAML does not allow tabs for indentation: indent with spaces"


def _tab_at(text: str, mark) -> bool:
    """Whether the line a parse error points at has a tab in its indentation or at the error
    (a YAML tab is fine inside values, never where the structure is read)."""
    lines = text.split("\n")
    if mark.line >= len(lines):
        return False
    line = lines[mark.line]
    indent = line[:len(line) - len(line.lstrip(" \t"))]
    return "\t" in indent or line[mark.column:mark.column + 1] == "\t"


def _reader_error(e: yaml.reader.ReaderError, text: str, source: str | None) -> InputError:
    """One line with the position, for the character the YAML reader refuses. libyaml counts
    the position in UTF-8 bytes, the pure-Python reader in characters."""
    at = e.position
    if _Parser is not yaml.SafeLoader:
        at = len(text.encode("utf-8")[:at].decode("utf-8", "ignore"))
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    char = text[at] if at < len(text) else "\x00"
    return InputError(Diagnostic(
        "error", "SC002", f"not valid YAML: the control character U+{ord(char):04X} is not "
        "allowed in YAML text", line=line, column=column, file=source,
        hint="remove it (YAML allows tabs and line ends, no other control characters)"))


def _tag(event) -> str:
    """A scalar's tag, resolved as PyYAML does where none is written (or only `!`)."""
    if event.tag is None or event.tag == "!":
        return _resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
    return event.tag


def _remember(event, value) -> None:
    """Keep the value of a plain scalar for the next time it is read (`implicit[0]`: plain and
    without a tag, or with the tag `!`, which PyYAML resolves the same)."""
    if event.implicit[0] and len(event.value) < 100 and len(_plain) < 10_000:
        _plain[event.value] = value


def _scalar(tag: str, text: str):
    """The Python value of a scalar, as SafeConstructor makes it."""
    if tag == _STR:
        return text
    if tag == _INT:
        if text.isdigit() and (text[0] != "0" or text == "0"):  # (017 is octal in YAML 1.1)
            return int(text)
        return _constructor.construct_yaml_int(yaml.ScalarNode(tag, text))  # 0x1F, 1_000 ...
    if tag == _NULL:
        return None
    if tag == _BOOL:
        value = _constructor.bool_values.get(text.lower())
        if value is None:
            raise ValueError(f"{text!r} is not a bool")
        return value
    if tag == _FLOAT:
        return _constructor.construct_yaml_float(yaml.ScalarNode(tag, text))
    if tag == _TIMESTAMP and _constructor.timestamp_regexp.match(text):
        return _constructor.construct_yaml_timestamp(yaml.ScalarNode(tag, text))
    raise ValueError(f"{text!r} is not a {tag.rpartition(':')[2]}")  # e.g. `!!seq abc`


class _Anchor:
    """What an anchor names: its value, place and expanded size; a scalar's tag and text too.
    A collection's size is None while it is being read: an alias to it then would make the
    data contain itself. A scalar only used as a key so far is not `built`: PyYAML's
    constructor never builds a key as a node, so its first alias builds it."""

    __slots__ = ("built", "mark", "size", "tag", "text", "value")

    def __init__(self, value, mark, size, tag=None, text=None, built=True):
        self.value, self.mark, self.size = value, mark, size
        self.tag, self.text, self.built = tag, text, built


class _Reader:
    """Reads one document's events depth first, building each value as it goes. `count` is
    the number of nodes below the root read so far, each alias counted at the full size of
    what it names: a collection's expanded size is 1 + the growth of `count` while it is read.

    `node` reads any node; `sequence` and `mapping` read the common scalars (plain, without
    anchor, not too deep) themselves: a call for each would cost more than all the rest."""

    def __init__(self, get_event, refuse):
        self.get_event, self.refuse = get_event, refuse
        self.positions: dict[tuple, tuple[int, int]] = {}
        self.duplicates: list[Duplicate] = []
        self.anchors: dict[str, _Anchor] = {}
        self.count = 0
        self.aliased = False  # bombs need aliases: a big text without any is fine

    def document(self):
        get = self.get_event
        get()  # the stream's start
        if type(get()) is StreamEndEvent:
            raise self.refuse("the file is empty", None, "SC003")
        data = self.node(get(), (), 0, False)
        get()  # the document's end
        event = get()
        if type(event) is not StreamEndEvent:  # as PyYAML's composer says it
            raise self.refuse("not valid YAML: but found another document", event.start_mark,
                              "SC002")
        return data, self.positions, self.duplicates

    def node(self, event, loc: tuple, depth: int, at_alias: bool):
        """The value of the node that starts with `event`, at location `loc`. With `at_alias`,
        a value written as an alias is located at the alias (`- *pool`, `body: *blk`)."""
        cls = type(event)
        if cls is AliasEvent:
            return self.alias(event, loc, depth, at_alias)
        mark = event.start_mark
        if cls is ScalarEvent:
            tag = _tag(event)
            self.place(tag, mark, loc, depth)
            value = _scalar(tag, event.value)
            if event.anchor is not None:
                self.anchor(event, _Anchor(value, mark, 1, tag, event.value))
            _remember(event, value)
            return value
        self.place(event.tag, mark, loc, depth)
        value = {} if cls is MappingStartEvent else []
        anchor = None
        if event.anchor is not None:
            anchor = self.anchor(event, _Anchor(value, mark, None))
        start = self.count
        if cls is MappingStartEvent:
            self.mapping(value, mark, loc, depth + 1)
        else:
            self.sequence(value, loc, depth + 1)
        size = 1 + self.count - start
        if size > MAX_NODES and self.aliased:
            raise self.refuse(f"the YAML expands to more than {MAX_NODES:,} nodes (aliases "
                              "repeated inside aliases?)", mark)
        if anchor is not None:
            anchor.size = size
        return value

    def place(self, tag: str | None, mark, loc: tuple, depth: int) -> None:
        """Refuse a node with a tag beyond plain data (None or `!`: no tag written) or too
        deep; note where it stands."""
        if tag is not None and tag != "!" and tag not in _SAFE_TAGS:
            raise self.refuse(f"the tag {tag} is not allowed in a spec (only plain YAML data)",
                              mark)
        if depth > MAX_DEPTH:
            raise self.refuse(f"the YAML is nested more than {MAX_DEPTH} levels deep", mark)
        self.positions.setdefault(loc, (mark.line + 1, mark.column + 1))

    def named(self, event) -> _Anchor:
        """What an alias names; refused where no anchor has that name."""
        anchor = self.anchors.get(event.anchor)
        if anchor is None:
            raise self.refuse(f"not valid YAML: found undefined alias {event.anchor!r}",
                              event.start_mark, "SC002")
        return anchor

    def alias(self, event, loc: tuple, depth: int, at_alias: bool):
        anchor = self.named(event)
        if not anchor.built:  # a scalar so far only used as a key: read as if it stood here
            self.place(anchor.tag, anchor.mark, loc, depth)
            anchor.value, anchor.built = _scalar(anchor.tag, anchor.text), True
            return anchor.value
        self.aliased = True
        if at_alias:
            self.positions[loc] = (event.start_mark.line + 1, event.start_mark.column + 1)
        if anchor.size is None:  # `layers: &a [relu, {type: residual, body: *a}]`
            raise self.refuse("an alias refers to a node that contains it: the YAML would be "
                              "infinitely deep", anchor.mark)
        self.count += anchor.size - 1  # its parent counts it once
        return anchor.value

    def anchor(self, event, anchor: _Anchor) -> _Anchor:
        if event.anchor in self.anchors:  # as PyYAML's composer says it
            raise self.refuse("not valid YAML: second occurrence", event.start_mark, "SC002")
        self.anchors[event.anchor] = anchor
        return anchor

    def sequence(self, items: list, loc: tuple, depth: int) -> None:
        """Read the items, at `depth`, into `items`."""
        get, positions, plain = self.get_event, self.positions, _plain
        shallow = depth <= MAX_DEPTH
        event = get()
        while type(event) is not SequenceEndEvent:
            item_loc = loc + (len(items),)
            if type(event) is ScalarEvent and event.implicit[0] and event.anchor is None:
                item = plain.get(event.value, _NONE)
                if item is not _NONE and shallow:
                    mark = event.start_mark
                    positions.setdefault(item_loc, (mark.line + 1, mark.column + 1))
                    items.append(item)
                    event = get()
                    continue
            items.append(self.node(event, item_loc, depth, True))
            event = get()
        self.count += len(items)

    def mapping(self, value: dict, mark, loc: tuple, depth: int) -> None:
        """Read the entries, their values at `depth`, into `value`."""
        get, positions, plain = self.get_event, self.positions, _plain
        shallow = depth <= MAX_DEPTH
        merged = []
        entries = 0  # besides those in `value`: merges, keys given twice
        event = get()
        while type(event) is not MappingEndEvent:
            if (type(event) is ScalarEvent and event.implicit[0] and event.anchor is None
                    and (key := event.value) in plain):
                at = event.start_mark
            else:
                key, at = self.key(event)
                if key is _MERGE_KEY:
                    merged.append(self.node(get(), loc, depth, False))
                    entries += 1
                    event = get()
                    continue
            if key in value:
                self.duplicates.append((loc, key, at.line + 1, at.column + 1))
                entries += 1
            key_loc = loc + (key,)
            positions[key_loc] = (at.line + 1, at.column + 1)
            event = get()
            item = _NONE
            if type(event) is ScalarEvent and event.implicit[0] and event.anchor is None:
                item = plain.get(event.value, _NONE)
            # (A scalar value needs no place of its own: its key's is the one noted.)
            if item is _NONE or not shallow:
                item = self.node(event, key_loc, depth, True)
            value[key] = item
            event = get()
        self.count += 2 * (len(value) + entries)  # the keys and their values
        # `<<: *base` (or a list of them): explicit keys win, then earlier merges.
        for source in merged:
            for item in source if isinstance(source, list) else [source]:
                if not isinstance(item, dict):
                    raise self.refuse("a merge key (<<) needs a mapping", mark)
                for k, v in item.items():
                    value.setdefault(k, v)

    def key(self, event) -> tuple[object, object]:
        """(key, mark) of a mapping key, a scalar or an alias to one; _MERGE_KEY for `<<`."""
        if type(event) is ScalarEvent:
            tag, text, mark = _tag(event), event.value, event.start_mark
            if event.anchor is not None:
                self.anchor(event, _Anchor(None, mark, 1, tag, text, built=False))
        elif type(event) is AliasEvent:
            anchor = self.named(event)
            tag, text, mark = anchor.tag, anchor.text, anchor.mark
            if tag is None:  # a collection
                raise self.refuse("keys must be plain scalars in a spec", mark)
        else:
            raise self.refuse("keys must be plain scalars in a spec", event.start_mark)
        if tag == _MERGE:
            return _MERGE_KEY, mark
        if tag not in _SAFE_TAGS:
            raise self.refuse("keys must be plain scalars in a spec", mark)
        value = _scalar(tag, text)  # refuses what cannot be read, e.g. `2001-02-30:`
        if type(event) is ScalarEvent:
            _remember(event, value)
        # A spec's keys are names. As ints and bools, `1:` and `true:` would be one key
        # (1 == True); as the text they were written as, each is its own.
        return text, mark
