"""yamlread: YAML text to data, positions and duplicate keys in one pass over libyaml's events.
The data is checked against PyYAML's safe loader, the positions against its composer's marks;
then what the reader refuses."""

from __future__ import annotations

import datetime

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shapecheck.core import yamlread
from shapecheck.core.diagnostics import Diagnostic, InputError
from shapecheck.core.yamlread import read


def refused(text: str) -> Diagnostic:
    with pytest.raises(InputError) as e:
        read(text, "spec.yaml")
    return e.value.diagnostic


def assert_same(ours, theirs, ordered: bool = True) -> None:
    """Equal, and of the same types all the way down (1 == True == 1.0 in Python)."""
    assert type(ours) is type(theirs), (ours, theirs)
    if isinstance(ours, dict):
        assert list(ours) == list(theirs) if ordered else ours.keys() == theirs.keys()
        for key in ours:
            assert_same(ours[key], theirs[key], ordered)
    elif isinstance(ours, list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same(a, b, ordered)
    else:
        assert ours == theirs


def composed_positions(text: str) -> dict:
    """Where PyYAML's composer puts every mapping key and sequence item (no aliases)."""
    positions = {}

    def walk(node, loc):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                positions[loc + (key.value,)] = (key.start_mark.line + 1,
                                                 key.start_mark.column + 1)
                walk(value, loc + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                positions[loc + (i,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
                walk(item, loc + (i,))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    positions[()] = (root.start_mark.line + 1, root.start_mark.column + 1)
    walk(root, ())
    return positions


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=12), st.sampled_from(["1", "0x1F", "yes", "~", "<<", "=", "1_000", ".inf",
                                           "2001-12-14", "conv2d", ""]),
    st.dates(), st.datetimes(),
)
DATA = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=25)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=DATA, flow=st.sampled_from([False, True, None]), unicode=st.booleans())
def test_data_and_positions_as_pyyaml(data, flow, unicode):
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=unicode, sort_keys=False)
    ours, positions, duplicates = read(text)
    assert_same(ours, yaml.safe_load(text))
    assert positions == composed_positions(text)
    assert duplicates == []


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(shared=st.one_of(st.lists(DATA, max_size=3),
                        st.dictionaries(st.text(max_size=8), DATA, max_size=3)))
def test_an_alias_is_the_very_value_it_names(shared):
    text = yaml.safe_dump({"a": shared, "b": [shared, {"c": shared}]})  # &id001 ... *id001
    data = read(text)[0]
    assert data["a"] is data["b"][0] is data["b"][1]["c"]
    assert_same(data, yaml.safe_load(text))


@pytest.mark.parametrize("text", [
    "a: 0x1F\nb: 1_000\nc: -12\nd: +3\ne: 017\nf: 0b101\ng: 1:30\nh: 0o17\n",
    "a: .inf\nb: -.INF\nc: 1.5\nd: 1.0e+3\ne: 1e3\nf: 6.8523015e+5\ng: 1:30.5\n",
    "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: y\ng: ~\nh: null\ni:\nj: ''\n",
    "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\nc: 2001-12-14 21:59:43.10\n",
    "a: '1'\nb: 1\nc: \"1\"\nd: ! 1\ne: !!str 1\nf: !!int '1'\ng: !!float 1\nh: !!bool yes\n",
    "a: |\n  one\n  two\nb: >\n  folded\n  text\nc: \"tab\\there\"\n",
    "- &a {x: 1}\n- {<<: *a, y: 2}\n- {<<: [*a, {x: 3, z: 4}], y: 5}\n- {x: 6, <<: *a}\n",
])
def test_scalars_and_merges_as_pyyaml(text):
    # (PyYAML puts merged keys first, the reader after the mapping's own.)
    assert_same(read(text)[0], yaml.safe_load(text), ordered="<<" not in text)


def test_keys_are_the_text_written():
    # As numbers and bools, `1:`, `1.0:` and `true:` would be one key (1 == 1.0 == True).
    data, positions, duplicates = read("1: a\n1.0: b\ntrue: c\n~: d\n'1': e\n")
    assert data == {"1": "e", "1.0": "b", "true": "c", "~": "d"}
    assert duplicates == [((), "1", 5, 1)]
    assert positions[("1",)] == (5, 1)


ALIASES = """\
x-parts:
  pool: &pool {type: maxpool2d, kernel_size: 3}
  body: &body
    - {type: conv2d, out_channels: 3, kernel_size: 3}
layers:
  - *pool
  - - *pool
  - type: residual
    body: *body
"""


def test_an_alias_is_located_where_it_stands():
    data, positions, _ = read(ALIASES)
    assert data["layers"][0] is data["layers"][1][0] is data["x-parts"]["pool"]
    assert data["layers"][2]["body"] is data["x-parts"]["body"]
    assert positions[("layers", 0)] == (6, 5)
    assert positions[("layers", 1, 0)] == (7, 7)
    assert positions[("layers", 2, "body")] == (9, 11)  # the alias, not the key
    # What the alias names has no places of its own there: they are the alias's.
    assert ("layers", 2, "body", 0) not in positions
    assert positions[("x-parts", "body", 0)] == (4, 7)


def test_merged_keys_and_their_places():
    data, positions, _ = read("x-b: &b {kernel_size: 2, stride: 2}\n"
                              "x-c: &c {stride: 3, padding: 1}\n"
                              "layers:\n"
                              "  - <<: [*b, *c]\n"
                              "    type: maxpool2d\n"
                              "    padding: 0\n")
    # Explicit keys win, then the earlier merge.
    assert data["layers"][0] == {"type": "maxpool2d", "padding": 0, "kernel_size": 2,
                                 "stride": 2}
    assert positions[("layers", 0)] == (4, 5)
    assert positions[("layers", 0, "padding")] == (6, 5)
    assert ("layers", 0, "kernel_size") not in positions  # found at the layer's place


def test_duplicate_keys_are_reported_and_the_last_wins():
    data, positions, duplicates = read("a: 1\nb: {c: 1, c: 2}\na: 3\n")
    assert data == {"a": 3, "b": {"c": 2}}
    assert duplicates == [(("b",), "c", 2, 11), ((), "a", 3, 1)]
    assert positions[("a",)] == (3, 1)


def test_a_bom_and_line_ends():
    assert read("\ufeffa: [1]\r\nb: 2\r\n")[:2] == (
        {"a": [1], "b": 2}, {(): (1, 1), ("a",): (1, 1), ("a", 0): (1, 5), ("b",): (2, 1)})


def test_the_plain_scalar_cache_keeps_quoted_text_text():
    for _ in range(2):  # the second time from the cache
        assert_same(read("- 1\n- '1'\n- yes\n- \"yes\"\n- ~\n- '~'\n")[0],
                    [1, "1", True, "yes", None, "~"])


def test_timestamps():
    assert read("a: 2001-12-14\n")[0]["a"] == datetime.date(2001, 12, 14)


# ---------------------------------------------------------------- refused


def billion_laughs(levels: int) -> str:
    lines = ['l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 25) -> str:
    lines = ["m0: &m0 {a: 1, b: 2}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: [*m{i - 1}, *m{i - 1}]}}"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, line", [
    (billion_laughs(9), 7), (billion_laughs(40), 7), (merge_bomb(), 10),
], ids=["laughs", "deeper-laughs", "merge-bomb"])
def test_alias_bombs(text, line):
    d = refused(text)
    assert d.code == "SC004"
    assert d.message == ("the YAML expands to more than 1,000,000 nodes (aliases repeated "
                         "inside aliases?)")
    assert d.line == line  # l6 (1,111,111 nodes) or m9: the first past the limit


def test_the_node_limit_counts_aliases_at_their_size(monkeypatch):
    monkeypatch.setattr(yamlread, "MAX_NODES", 30)
    read("a: [" + ", ".join(["1"] * 40) + "]\n")  # no alias: as large as the text allows
    read("a: &a [1, 2, 3]\nb: [*a, *a, *a, *a, *a]\n")  # 1 + 4 + 1 + 5 * 4 + 2 nodes
    assert "expands" in refused("a: &a [1, 2, 3]\nb: [*a, *a, *a, *a, *a, *a]\n").message
    assert "expands" in refused("a: &a {x: 1, y: 2, z: 3}\n"
                                "b: [{<<: *a}, {<<: *a}, {<<: *a}, {<<: *a}]\n").message


@pytest.mark.parametrize("text, where", [
    ("layers: &l [relu, {type: residual, body: *l}]\n", (1, 9)),
    ("layers:\n  - &b {type: residual, body: [relu, *b]}\n", (2, 5)),
    ("shape: &s [1, 8, *s]\n", (1, 8)),
    ("x-m: &m {k: 1, <<: *m}\n", (1, 6)),
])
def test_an_alias_inside_what_it_names(text, where):
    d = refused(text)
    assert d.code == "SC004" and "an alias refers to a node that contains it" in d.message
    assert (d.line, d.column) == where


@pytest.mark.parametrize("text, where", [
    ("x: " + "[" * 101 + "]" * 101, (1, 104)),
    ("x: " + "{a: " * 101 + "1" + "}" * 101, (1, 404)),
    ("x:\n" + "".join(" " * i + "-\n" for i in range(0, 202, 2)), (102, 201)),
    ("[" * 5000 + "]" * 5000, (1, 1001)),  # libyaml's own limit
])
def test_deep_nesting(text, where):
    d = refused(text)
    assert (d.code, d.message) == ("SC004", "the YAML is nested more than 100 levels deep")
    assert (d.line, d.column) == where


def test_nesting_up_to_the_limit():
    data = read("[" * 100 + "1" + "]" * 100)[0]
    for _ in range(99):
        (data,) = data
    assert data == [1]


@pytest.mark.parametrize("tagged", [
    "!!python/object/apply:os.system ['touch PWNED']", "!!python/name:os.system",
    "!<tag:yaml.org,2002:python/tuple> [1]", "!custom 3", "!!binary aGVsbG8=", "!!set {a}",
    "!!omap [{a: 1}]", "=",
])
def test_tags_beyond_plain_data(tagged):
    d = refused(f"layers:\n  - {tagged}\n")
    assert d.code == "SC004" and "is not allowed in a spec (only plain YAML data)" in d.message
    assert (d.line, d.column) == (2, 5)


@pytest.mark.parametrize("text, where", [
    ("? [a]\n: 1\n", (1, 3)),
    ("{a: 1}: 2\n", (1, 1)),
    ("!!python/str a: 1\n", (1, 1)),
    ("x: &x [a]\n*x : 1\n", (1, 4)),
])
def test_keys_must_be_plain_scalars(text, where):
    d = refused(text)
    assert (d.code, d.message) == ("SC004", "keys must be plain scalars in a spec")
    assert (d.line, d.column) == where


@pytest.mark.parametrize("text, where", [
    ("a: {<<: 3}\n", (1, 4)),
    ("a: &a [1]\nb: {<<: *a}\n", (2, 4)),
    ("a: &a {x: 1}\nb:\n  <<: [*a, 2]\n", (3, 3)),
])
def test_a_merge_needs_mappings(text, where):
    d = refused(text)
    assert (d.code, d.message) == ("SC004", "a merge key (<<) needs a mapping")
    assert (d.line, d.column) == where


@pytest.mark.parametrize("text, message, where", [
    ("a: 1\n---\nb: 2\n", "not valid YAML: but found another document", (2, 1)),
    ("a: *x\n", "not valid YAML: found undefined alias 'x'", (1, 4)),
    ("a: &x 1\nb: &x 2\n", "not valid YAML: second occurrence", (2, 4)),
    ("a: [1\n", "not valid YAML: did not find expected ',' or ']'", (2, 1)),
    ("a: é\nb: [é, \x07]\n",
     "not valid YAML: the control character U+0007 is not allowed in YAML text", (2, 8)),
    ("a: !!int x\n", "not valid YAML: invalid literal for int() with base 10: 'x'", None),
    ("a: !!bool maybe\n", "not valid YAML: 'maybe' is not a bool", None),
    ("a: !!timestamp soon\n", "not valid YAML: 'soon' is not a timestamp", None),
    ("a: 2001-02-30\n", "not valid YAML: day is out of range for month", None),
])
def test_not_valid_yaml(text, message, where):
    d = refused(text)
    assert (d.code, d.message, d.file) == ("SC002", message, "spec.yaml")
    assert (d.line, d.column) == (where or (None, None))


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\ufeff"])
def test_empty(text):
    assert refused(text).code == "SC003"


def test_an_empty_document_is_null():
    assert read("---\n")[0] is None
