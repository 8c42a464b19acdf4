"""yamlfast: the line-by-line reader of plain YAML gives exactly what the event reader gives
(data of the same types, places in the same order, the same duplicate keys), or declines.
Checked on every YAML file of the project, the benchmarks' generated specs, generated spec-like
YAML within and around its subset, and real specs with a character changed."""

from __future__ import annotations

import random
import re

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import specgen
from shapecheck.core import yamlfast, yamlread
from shapecheck.core.diagnostics import InputError

YAML_FILES = sorted(p for top in ROOT.iterdir()  # (not in .git, .venv ...)
                    for p in ([top] if top.is_file() else [] if top.name.startswith(".")
                              else top.rglob("*"))
                    if p.suffix in (".yaml", ".yml"))
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def assert_same(ours, theirs) -> None:
    """Equal, of the same types all the way down, dicts in the same order."""
    assert type(ours) is type(theirs), (ours, theirs)
    if isinstance(ours, dict):
        assert list(ours) == list(theirs)
        for key in ours:
            assert_same(ours[key], theirs[key])
    elif isinstance(ours, list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same(a, b)
    elif isinstance(ours, float):
        assert repr(ours) == repr(theirs)  # nan, -0.0
    else:
        assert ours == theirs


def events(text: str):
    """The event reader's result, or its refusal."""
    try:
        return yamlread.read_events(text, "spec.yaml")
    except InputError as e:
        return e.diagnostic


def check(text: str) -> bool:
    """Assert the fast reader declines `text` or gives what the event reader gives, read
    twice (the second time from its caches); whether it read it."""
    text = text.lstrip("\ufeff")
    first, again = yamlfast.read(text), yamlfast.read(text)
    assert (first is None) == (again is None)
    if first is None:
        return False
    expected = events(text)
    assert isinstance(expected, tuple), f"read, though the event reader refuses: {expected}"
    for fast in (first, again):
        data, positions, duplicates = fast
        assert_same(data, expected[0])
        assert list(positions.items()) == list(expected[1].items())
        assert duplicates == expected[2]
    assert first[0] is not again[0] or not isinstance(first[0], (dict, list))
    return True


# ---------------------------------------------------------------- real YAML


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_of_the_project(path):
    check(path.read_text(encoding="utf-8"))


def test_the_yaml_in_the_docs():
    blocks = [block for path in DOCS for block in
              re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)]
    assert len(blocks) > 10
    assert sum(check(block) for block in blocks) > len(blocks) // 2


def test_the_benchmarks_specs_are_read_here_and_read_alike(tmp_path):
    chain = specgen.write_chain(tmp_path / "chain.yaml", 2000)
    templated = specgen.write_templated(tmp_path / "templated.yaml", 50)
    variants = specgen.write_variants(tmp_path / "variants", 39)  # each spec at 3 scales
    for path in [chain, templated, *variants]:
        assert check(path.read_text(encoding="utf-8")), path.name  # not declined


def test_the_chain_is_read_here_not_by_the_event_reader(tmp_path, monkeypatch):
    text = specgen.write_chain(tmp_path / "chain.yaml", 1000).read_text(encoding="utf-8")
    expected = yamlread.read_events(text)

    def no_events(*args):
        raise AssertionError("the event reader was asked")

    monkeypatch.setattr(yamlread, "read_events", no_events)
    data, positions, duplicates = yamlread.read(text)
    assert data == expected[0] and positions == expected[1] and duplicates == []
    assert positions[("layers", 998)] == (1004, 5)
    assert positions[("layers", 998, "padding")] == (1004, 53)


def test_specs_other_than_multi_line_flows_are_read_here():
    for path in sorted((ROOT / "specs").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        multi_line_flow = any(line.count("[") + line.count("{") != line.count("]") +
                              line.count("}") for line in text.split("\n")
                              if not line.lstrip().startswith("#"))
        assert check(text) != multi_line_flow, path.name


def test_values_are_built_afresh_each_time():
    text = "layers:\n  - {type: conv2d, kernel_size: [3, 3]}\n  - {type: conv2d}\n"
    one, two = yamlfast.read(text)[0], yamlfast.read(text)[0]
    assert one == two and one["layers"][0] is not two["layers"][0]
    assert one["layers"][0]["kernel_size"] is not two["layers"][0]["kernel_size"]
    assert one["layers"][1] is not two["layers"][1]


# ---------------------------------------------------------------- the subset's edges


@pytest.mark.parametrize("text", [
    "a: 0x1F\nb: 1_000\nc: -12\nd: +3\ne: 017\nf: 0b101\ng: 1:30\nh: 0o17\ni: 190:20:30\n",
    "a: .inf\nb: -.INF\nc: 1.5\nd: 1.0e+3\ne: 1e3\nf: 6.8523015e+5\ng: 1:30.5\nh: .NaN\n",
    "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: y\ng: ~\nh: null\ni:\nj: ''\nk: \"\"\n",
    "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\nc: 2001-12-14 21:59:43.10\n",
    "- 1\n- '1'\n- yes\n- \"yes\"\n- ~\n- '~'\n- [1, '1', yes, \"yes\", ~, '~', -.5, +1]\n",
    "1: a\n1.0: b\ntrue: c\n~: d\n1: e\n",
    "a: 1\nb: {c: 1, c: 2, d: {c: 3, c: 4}}\na: [x]\na: [y, z]\n",
    "description: one line\n  and the next,\n     folded:not a key\nname: x\n",
    "- a: x#b\n  b: http://x.y/z\n  c: $c * 4 + ($k - 1) // 2   # a comment\n",
    "layers:\n- type: residual\n  body:\n  - relu\n  - - a\n    - - b\n  -   # c\n    x: 1\n",
    "  a:\n      - 1\n      -  2\n  b:   {c: [1, [2, {d: e}]], f: []}  \n",
    # (columns count characters: astral ones and combining marks are one each)
    ("a: {b: x\U0001F600y, c: 1}  # \u00e9\nd: [xe\u0301x\U0001F600, z, 1\u00b2]\n"
     "e: x\u4e2d\u6587 text\n  more \U0001F600\n"),
])
def test_quirks_read_here_as_the_event_reader_reads_them(text):
    assert check(text)


@pytest.mark.parametrize("text", [
    "", "# only a comment\n", "a: 1\n---\nb: 2\n", "--- \na: 1\n", "a: 1\n...\n",
    "%YAML 1.1\n---\na: 1\n", "a: &x 1\nb: *x\n", "a: {<<: {b: 1}}\n", "<<: {b: 1}\n",
    "a: !!str 1\n", "a: ! 1\n", "a: |\n  x\n", "a: >\n  x\n", "? a\n: 1\n",
    "a: \"x\\ty\"\n", "a: 'it''s'\n", "a: [1,\n  2]\n", "a: {b: 1\n", "a: [1 # x\n  ]\n",
    "a:\n\tb: 1\n", "a: 1\r\nb: 2\r\n", "a: 1\x85b: 2\n", "a: x\u2028y\n", "a: \x07\n",
    "a: b: c\n", "a: b:\n", "- - \n", "a:\n  -\n", "-\n", "a: 1\n  b: 2\n", "a:\n  b\n",
    "a: x\n\n  y\n", "a: x\n  # c\n  y\n", "a: x # c\n  y\n", "a: 2001-02-30\n", "a: =\n",
    "'a': 1\n", "a : 1\n", "a: [x: 1]\n", "a: {b:1}\n", "a: [1, 2,]\n", "a: [a#b]\n",
    "a: {b: 1:30}\n", "scalar\n", "[1, 2]\n", "- a\nb: 1\n", "a:\n  - x\n  b: 1\n",
    "a: [\"x\"y]\n", "a: [1] x\n", "a: [1]# c\n", "a: " + "[" * 70 + "]" * 70 + "\n",
    "".join(" " * i + "-\n" for i in range(0, 140, 2)) + " " * 140 + "- x\n",
])
def test_what_is_left_to_the_event_reader(text):
    assert yamlfast.read(text.lstrip("\ufeff")) is None


def test_its_depth_is_within_the_event_readers():
    assert yamlfast._DEPTH < yamlread.MAX_DEPTH
    deep = "a:\n" + "".join(" " * (2 * i) + "- \n" for i in range(yamlfast._DEPTH))
    assert yamlfast.read(deep + " " * (2 * yamlfast._DEPTH) + "- x\n") is None
    shallow = "".join(" " * (2 * i) + "-\n" for i in range(yamlfast._DEPTH - 1))
    assert check(shallow + " " * (2 * yamlfast._DEPTH - 2) + "- x\n")


@pytest.mark.parametrize("text, code, where", [
    ("a: 2001-02-30\n", "SC002", (None, None)),
    ("layers:\n  - =\n", "SC004", (2, 5)),
    ("a:\n\tb: 1\n", "SC002", (2, 1)),
    ("a: [1,\n", "SC002", (2, 1)),
])
def test_errors_are_the_event_readers(text, code, where):
    with pytest.raises(InputError) as e:
        yamlread.read(text, "spec.yaml")
    assert e.value.diagnostic == events(text)
    assert (e.value.diagnostic.code, e.value.diagnostic.line, e.value.diagnostic.column) == (
        code, *where)


# ---------------------------------------------------------------- generated YAML

# Scalars the subset reads (YAML 1.1's odd ones among them) and some it leaves out.
WORDS = ["relu", "conv2d", "N", "$c", "$c * 4", "($k - 1) // 2", "a:b", "http://x.y", "a#b",
         "foo bar", "x y  z", "yes", "no", "on", "off", "y", "n", "Yes", "NO", "True", "FALSE",
         "~", "null", "Null", ".inf", "-.inf", ".NaN", "0x1f", "0o7", "012", "1e3", "1.0e+3",
         "+1", "-.5", "1_0", "1_000", "1:30", "1:30.5", "-1:30", "2001-12-14", "0b101", "0",
         "-0", "+0", "1.", ".5", "0.5e-3", "3", "8", "-7", "0x_1F", "190:20:30", "1,5", "a, b",
         "a - b", "caf\u00e9", "x\U0001F600y", "1\u00b2", "a'b", 'a"b', "a!b", "a&b", "a*b",
         "a|b", "a>b", "a%b", "a@b", "a`b", "-a", "...", "/p/q", "(x)", "x)", "_", "$", "a  b",
         "a[0]"]
ODD_WORDS = ["2001-02-30", "=", "<<", "[x]", "{x}", "é", "x\u00a0y", "-", "--", "?a", ":a",
             "a:", ".", "&a x", "*a", "!t x", "|", ">", "%a", "@a", "`a", ",a"]
KEYS = ["type", "name", "out_channels", "kernel_size", "a", "b", "c", "yes", "1", "~", "null",
        "x-parts", "$c", "1_0", "0x1f", "-1", ".5", "on", "+1", "a.b", "a/b", "(x)", "true",
        "y", "2001-12-14"]
ODD_KEYS = ["1:30", "<<", "=", "a b", "é", "2001-02-30", "-", "a#b", "a:b", "'a'", "*a"]
COMMON_KEYS = 12  # the first keys of KEYS, drawn most often (so some are given twice)


class Spec:
    """Spec-like YAML, mostly inside the fast reader's subset, now and then just outside:
    block mappings and sequences at varied indentation (compact, indentless, on the next
    line), flows, quoted and plain scalars (some folded over lines), comments, blank lines,
    trailing spaces, keys given twice."""

    def __init__(self, rnd, odd: float = 0.05):
        self.r, self.odd, self.lines = rnd, odd, []

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def key(self) -> str:
        if self.chance(self.odd):
            return self.r.choice(ODD_KEYS)
        return self.r.choice(KEYS[:COMMON_KEYS] if self.chance(0.85) else KEYS)

    def scalar(self) -> str:
        word = self.r.choice(ODD_WORDS if self.chance(self.odd) else WORDS)
        if self.chance(0.15):
            quote = self.r.choice(["'", '"'])
            if self.chance(self.odd * 4):
                word += self.r.choice(["\\n", "''", "\\\\"])
            return quote + word + quote
        return word

    def flow(self, depth: int = 0) -> str:
        if depth > 3 or self.chance(0.5):
            return self.scalar()
        sep = self.r.choice([",", " ,", ",  ", ", ,"]) if self.chance(self.odd) else ", "
        if self.chance(0.5):
            items = [self.flow(depth + 1) for _ in range(self.r.randint(0, 4))]
            return "[" + sep.join(items) + ("," if self.chance(self.odd) else "") + "]"
        colon = self.r.choice([":", " : ", ":  "]) if self.chance(self.odd) else ": "
        items = [self.key() + colon + self.flow(depth + 1) for _ in range(self.r.randint(0, 4))]
        return "{" + sep.join(items) + "}"

    def tail(self) -> str:
        """What may end a line: spaces, a comment."""
        tail = " " * self.r.randint(1, 3) if self.chance(0.1) else ""
        if self.chance(0.1):
            tail += " " * self.r.randint(0 if self.chance(self.odd) else 1, 2) + "# c: [x]"
        return tail

    def gap(self) -> None:
        while self.chance(0.1):
            self.lines.append(self.r.choice(["", "  ", "# note",
                                             " " * self.r.randint(0, 8) + "# x"]))

    def inline(self) -> str:
        return self.flow(1) if self.chance(0.25) else self.scalar()

    def folded(self, column: int) -> None:
        """More lines of the plain scalar that ends the last line, more indented than
        `column` (now and then not, or not after a plain scalar, or not text)."""
        last = self.lines[-1]
        if not self.chance(self.odd) and (" #" in last or last.rstrip()[-1] in "]}'\""):
            return
        while self.chance(0.3):
            indent = column + self.r.randint(1, 4) - (1 if self.chance(self.odd) else 0)
            self.lines.append(" " * indent + self.r.choice(
                ["and: no", "- x", "# c", "[x]", "&a", "a #b"] if self.chance(self.odd) else
                ["more words", "x", "1", "y z", "a#b", "a:b", "x]", "1:30", "yes"]))

    def mapping(self, column: int, depth: int, first: str | None = None) -> None:
        for n in range(self.r.randint(1, 4)):
            self.gap()
            prefix = first if n == 0 and first is not None else " " * column
            key = self.key()
            if depth < 5 and self.chance(0.35):  # the value on the next lines
                self.lines.append(prefix + key + ":" + self.tail())
                self.gap()
                if self.chance(0.5):
                    inner = column if self.chance(0.5) else column + self.r.randint(1, 3)
                    self.sequence(inner, depth + 1)
                else:
                    step = 0 if self.chance(self.odd) else self.r.randint(1, 3)
                    self.mapping(column + step, depth + 1)
            elif self.chance(0.05):
                self.lines.append(prefix + key + ":" + self.tail())  # null
            else:
                space = " " * self.r.randint(1, 3) if self.chance(0.1) else " "
                self.lines.append(prefix + key + ":" + space + self.inline() + self.tail())
                self.folded(column)

    def sequence(self, column: int, depth: int, first: str | None = None) -> None:
        for n in range(self.r.randint(1, 4)):
            self.gap()
            prefix = first if n == 0 and first is not None else " " * column
            dash = "-" + (" " if self.chance(0.8) else " " * self.r.randint(2, 3))
            inner = len(prefix) + len(dash)
            roll = self.r.random()
            if depth < 5 and roll < 0.25:
                self.mapping(inner, depth + 1, prefix + dash)
            elif depth < 5 and roll < 0.32:
                self.sequence(inner, depth + 1, prefix + dash)
            elif depth < 5 and roll < 0.4:  # `-`, the value on the next lines
                self.lines.append(prefix + "-" + self.tail())
                self.gap()
                nested = self.mapping if self.chance(0.5) else self.sequence
                nested(column + self.r.randint(1, 3), depth + 1)
            elif roll < 0.4 + self.odd:
                self.lines.append(prefix + "-" + self.tail())  # an empty item
            else:
                self.lines.append(prefix + dash + self.inline() + self.tail())
                self.folded(column)

    def text(self) -> str:
        self.gap()
        root = " " * self.r.randint(1, 2) if self.chance(0.05) else ""
        (self.mapping if self.chance(0.85) else self.sequence)(len(root), 0, root or None)
        self.gap()
        return "\n".join(self.lines) + ("" if self.chance(0.1) else "\n")


MUTATIONS = list(" \n-:#{}[],'\"&*!|>?%@`\t\r~.0y") + [
    "- ", ": ", " #", "\n  ", "\n- ", "é", "---", "...", "\u2028", "\x85", "\ufeff", "yes",
    "0x1f", "1_0", "1:30", "<<"]


def mutated(text: str, changes: list[tuple[int, int, str]]) -> str:
    """`text` with each change (where, how, character) made: inserted, removed, replaced."""
    for where, how, char in changes:
        at = where % (len(text) + 1)
        text = text[:at] + (char if how != 1 else "") + text[at + (how != 0):]
    return text


CHANGES = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2),
                             st.sampled_from(MUTATIONS)), min_size=1, max_size=2)
SETTINGS = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(seed=st.integers(0, 2**64), changed=st.integers(0, 3), changes=CHANGES)
def test_generated_yaml_is_read_alike_or_declined(seed, changed, changes):
    # (A seeded generator: hypothesis's own randoms draw 0 so often that few texts are read.)
    text = Spec(random.Random(seed)).text()
    check(mutated(text, changes) if changed == 0 else text)  # a quarter changed


REAL = [p.read_text(encoding="utf-8") for p in YAML_FILES if p.parts[-2] == "specs"]


@SETTINGS
@given(text=st.sampled_from(REAL), changes=CHANGES)
def test_real_specs_with_a_character_changed_are_read_alike_or_declined(text, changes):
    check(mutated(text, changes))


def test_generated_yaml_is_often_read_here():
    """The generator keeps the subset busy: many of its texts are read, not declined."""
    rnd = random.Random(0)
    texts = [Spec(rnd, odd=0).text() for _ in range(200)]
    assert sum(yamlfast.read(text) is not None for text in texts) > 100
