"""Hostile and broken specs: every command answers with exit 0, 1 or 2 and a clear message.

Never a Python traceback, never a hang, never a file torn or code run. The fuzz tests run
plan, check, render and build in-process (shapecheck.cli.main) on mutations of the real specs
under specs/ and on generated documents, each command under a time limit; a few subprocess
runs prove that nothing reaches stderr as a traceback and that memory stays bounded.
Hostile writes and training data are in test_hostile_io.py."""

from __future__ import annotations

import builtins
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SPECS
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shapecheck.cli import main
from shapecheck.core import loader
from shapecheck.core.layers import KINDS

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_GRAPHVIZ = importlib.util.find_spec("graphviz") is not None
HAVE_DOT = shutil.which("dot") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="build needs torch")
needs_dot = pytest.mark.skipif(not (HAVE_GRAPHVIZ and HAVE_DOT), reason="needs Graphviz's dot")

SPEC_TEXTS = {p.name: p.read_text(encoding="utf-8") for p in sorted(SPECS.glob("*.yaml"))}
TRACEBACK = "Traceback (most recent call last)"
LIMIT_S = 10.0  # per command; a warm command takes milliseconds, a meta build of VGG-16 0.2 s
SVG = "{http://www.w3.org/2000/svg}"
# SHAPECHECK_FUZZ_SCALE=50 runs fifty times the examples (a longer hunt than CI's minute).
SCALE = float(os.environ.get("SHAPECHECK_FUZZ_SCALE", "1"))

SMALL = """\
name: small
input: {shape: [1, 8, 8]}
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 3}
  - relu
  - flatten
  - {type: linear, name: fc, out_features: 3}
"""


# ---------------------------------------------------------------- running the CLI


class Hang(BaseException):
    """A command ran past its time limit (a BaseException: no `except Exception` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield  # the elapsed time is still checked
        return

    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return (f"shapecheck {' '.join(self.argv)} -> exit {self.code} in {self.seconds:.2f} s\n"
                f"--- stdout\n{self.out[-2000:]}\n--- stderr\n{self.err[-2000:]}")


def cli(*argv, limit: float = LIMIT_S) -> Result:
    """Run the CLI in-process; a traceback escapes as the exception itself and fails the test."""
    args = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with time_limit(limit), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return Result(args, code, out.getvalue(), err.getvalue(), time.perf_counter() - start)


def assert_clean(r: Result, limit: float = LIMIT_S) -> Result:
    """Exit 0, 1 or 2; no traceback; in time; a failure says why (a diagnostic on stdout, or
    a failure of the run on stderr)."""
    assert r.code in (0, 1, 2), str(r)
    assert TRACEBACK not in r.out + r.err, str(r)
    assert r.seconds < limit, str(r)
    if r.code != 0:
        assert re.search(r"\berror\b", r.out + r.err), f"exit {r.code} without an error message\n{r}"
    return r


def run_all(folder: Path, spec: str | bytes, *, build: bool = True) -> dict[str, Result]:
    """Every command on one spec text, each checked with assert_clean."""
    path = folder / "spec.yaml"
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    else:
        path.write_bytes(spec.encode("utf-8", "surrogatepass"))
    results = {
        "plan": cli("plan", path),
        "check": cli("check", path),
        "render": cli("render", path, "-o", folder / "net.dot"),
    }
    if build and HAVE_TORCH:
        target = folder / "net_model.py"
        before = target.read_bytes() if target.exists() else None
        results["build"] = r = cli("build", path, "-o", target)
        if r.code != 0:  # nothing written, the last good file kept
            assert (target.read_bytes() if target.exists() else None) == before, str(r)
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    for r in results.values():
        assert_clean(r)
    # plan and check agree; render exits as plan does (it draws invalid specs too).
    plan_code = results["plan"].code
    assert results["check"].code == plan_code, f"{results['plan']}\n{results['check']}"
    assert results["render"].code == plan_code, f"{results['plan']}\n{results['render']}"
    if "build" in results:
        assert results["build"].code == plan_code or (plan_code, results["build"].code) == (0, 1)
    return results


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory):
    """Import torch, graphviz and the meta kernels once, outside the time limits."""
    folder = tmp_path_factory.mktemp("warm")
    spec = folder / "small.yaml"
    spec.write_text(SMALL, encoding="utf-8")
    if HAVE_TORCH:
        cli("build", spec, "-o", folder / "small_model.py", limit=300)
    if HAVE_GRAPHVIZ:
        cli("render", spec, "-o", folder / "small.dot", limit=60)


# ---------------------------------------------------------------- fuzz: mutated real specs

VALUE = re.compile(r"(?<=[:\[,] )[^\s,{}\[\]#:][^,{}\[\]#:\n]*?(?=\s*[,}\]\n#])")
WRONG_VALUES = [
    "-1", "0", "1000000000000", "3.5", "'3'", "[1, 2, 3]", "[]", "{a: 1}", "{}", "null", "~",
    "true", ".nan", "-.inf", "''", "conv2d", "residual", "*nope", "&a 1", "!!binary aGk=",
    "!!python/object/apply:os.system ['echo PWNED']", "[[[[1]]]]", "2001-01-01", "0x1F", "1e400",
    "'\\u202e'", '"\\x00"', "{type: residual, body: [relu]}", "[relu, relu]", "same", "N",
    "9223372036854775808", "-9223372036854775809", "99999999999999999999999", "'a\"\"\"b'",
]


@st.composite
def mutated_spec(draw) -> str | bytes:
    """A real spec with 1-3 edits: lines deleted, duplicated or moved, values swapped or of the
    wrong type, indentation changed; then perhaps random bytes or a truncation."""
    text = SPEC_TEXTS[draw(st.sampled_from(sorted(SPEC_TEXTS)), label="spec")]
    for _ in range(draw(st.integers(1, 3))):
        lines = text.splitlines(keepends=True)
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "move", "indent", "swap", "wrong"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "move":
            line = lines.pop(i)
            lines.insert(draw(st.integers(0, len(lines))), line)
        elif op == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "  ", "\t", "    "])) + lines[i].lstrip(" ")
        text = "".join(lines)
        values = list(VALUE.finditer(text))
        if op in ("swap", "wrong") and values:
            a = draw(st.sampled_from(values))
            if op == "swap":
                b = draw(st.sampled_from(values))
                (a, b) = sorted((a, b), key=lambda m: m.start())
                if a.end() <= b.start():
                    text = (text[:a.start()] + b.group() + text[a.end():b.start()] + a.group()
                            + text[b.end():])
            else:
                text = text[:a.start()] + draw(st.sampled_from(WRONG_VALUES)) + text[a.end():]
    data = text.encode("utf-8")
    tail = draw(st.sampled_from(["none", "none", "bytes", "truncate"]))
    if tail == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=12)) + data[at:]
        return data
    if tail == "truncate":
        return data[:draw(st.integers(0, len(data)))]
    return text


@needs_dot
@settings(max_examples=int(90 * SCALE), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=mutated_spec())
@example(spec=SPEC_TEXTS["lecture_cnn.yaml"].replace("layers:\n", "layers: &l\n").replace(
    "  - relu\n  - flatten", "  - {type: residual, body: *l}\n  - flatten", 1))
@example(spec=SPEC_TEXTS["lenet5.yaml"].replace("  ", "\t", 1))
def test_mutated_real_specs(workdir, spec):
    run_all(workdir, spec)


# ---------------------------------------------------------------- fuzz: generated documents

TYPES = sorted(KINDS) + ["Conv2d", "nn.Linear", "MaxPool2d", "maxpool", "conv", "", "Residual"]
FIELDS = ["out_channels", "in_channels", "kernel_size", "stride", "padding", "dilation", "groups",
          "bias", "out_features", "in_features", "num_features", "p", "start_dim", "end_dim",
          "dim", "output_size", "ceil_mode", "padding_mode", "name", "negative_slope", "kernal"]
SMALL_INTS = st.integers(-2, 12)
SCALARS = st.one_of(
    SMALL_INTS, SMALL_INTS, st.sampled_from([2**31, 2**63, 10**12, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.sampled_from(TYPES + ["same", "valid", "zeros", "N", "conv1", "relu1"]),
    st.text(max_size=8),
)


PLAIN_LAYER = st.one_of(
    st.sampled_from(TYPES),
    st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES)},
        optional={f: st.one_of(SCALARS, st.lists(SMALL_INTS, max_size=3)) for f in FIELDS},
    ),
)


def _with_blocks(children):
    block = st.one_of(
        st.fixed_dictionaries({"type": st.just("residual"), "body": children},
                              optional={"shortcut": children, "name": SCALARS}),
        st.fixed_dictionaries({"type": st.just("concat"),
                               "branches": st.lists(children, max_size=3)}),
    )
    return st.lists(st.one_of(PLAIN_LAYER, PLAIN_LAYER, block), max_size=5)


LAYERS = st.recursive(st.lists(PLAIN_LAYER, max_size=5), _with_blocks, max_leaves=12)
SPEC_DOCS = st.fixed_dictionaries(
    {"input": st.one_of(
        st.fixed_dictionaries({"shape": st.lists(st.one_of(st.integers(1, 40), SCALARS),
                                                 min_size=2, max_size=4)},
                              optional={"batch": SCALARS}),
        SCALARS),
     "layers": st.one_of(LAYERS, SCALARS)},
    optional={"name": SCALARS, "description": st.text(max_size=40),
              "train": st.dictionaries(st.sampled_from(["dataset", "epochs", "loss", "lr"]),
                                       SCALARS, max_size=2),
              "x-extra": SCALARS, "kernel_size": SCALARS},
)


@needs_dot
@settings(max_examples=int(70 * SCALE), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=SPEC_DOCS, flow=st.booleans(), unicode=st.booleans())
def test_generated_specs(workdir, doc, flow, unicode):
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=unicode, sort_keys=False)
    run_all(workdir, text)


@settings(max_examples=int(60 * SCALE), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.text(max_size=300), st.binary(max_size=300),
                      st.text(alphabet="{}[]:,-&*!|>'\"#%@` \n\tabc01<=?", max_size=120)))
def test_random_text_and_bytes(workdir, data):
    run_all(workdir, data, build=False)


# ---------------------------------------------------------------- subprocesses: stderr, memory


MEMORY_LIMIT = 1 << 30  # address space for one command; a plan of any spec takes ~40 MiB
# `python -m shapecheck ARGV` with the limit set first (in the child: no preexec_fn, which is
# not safe once torch has started threads in this process).
LIMITED = ("import resource, runpy, sys; "
           "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1]))); "
           "sys.argv = ['shapecheck', *sys.argv[2:]]; "
           "runpy.run_module('shapecheck', run_name='__main__', alter_sys=True)")


def run_subprocess(argv, cwd: Path, limit: float = 120) -> subprocess.CompletedProcess:
    """`shapecheck ARGV` in a fresh Python under a 1 GiB address-space limit: more memory than
    that is a MemoryError, which would be a traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-c", LIMITED, str(MEMORY_LIMIT), *map(str, argv)],
                          cwd=cwd, env=env, capture_output=True, encoding="utf-8",
                          timeout=limit, check=False)


def billion_laughs(levels: int = 9) -> str:
    lines = ['x-l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"x-l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\ninput: {shape: [1, 8, 8]}\nlayers: [relu]\n"


def huge_channels(channels: int = 10**12) -> str:
    return (f"input: {{shape: [{channels}, 8, 8]}}\nlayers:\n"
            f"  - {{type: conv2d, out_channels: {channels}, kernel_size: 3}}\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
@pytest.mark.parametrize("command, text, code", [
    ("plan", billion_laughs(), 2),
    ("check", "x-a: &a [relu, *a]\ninput: {shape: [1, 8, 8]}\nlayers: *a\n", 2),
    ("render", "input: {shape: [1, 8, 8]}\nlayers:\n\t- relu\n", 2),
    ("build", huge_channels(), 1),
    ("plan", "\x00\x01\x02 not yaml \ufffe", 2),
], ids=["alias-bomb", "recursive-alias", "tab", "huge-build", "control-bytes"])
def test_subprocess_no_traceback_bounded_memory(tmp_path, command, text, code):
    spec = tmp_path / "hostile spec.yaml"
    spec.write_bytes(text.encode("utf-8", "surrogatepass"))
    extra = {"render": ["-o", "out.dot"], "build": ["-o", "out_model.py"]}.get(command, [])
    start = time.perf_counter()
    done = run_subprocess([command, spec, *extra], tmp_path)
    assert done.returncode == code, done.stderr
    assert TRACEBACK not in done.stdout + done.stderr
    # a diagnostic on stdout, or (build's memory refusal) a failure of the run on stderr
    lines = (done.stdout or done.stderr).strip().splitlines()
    assert lines and "error" in lines[0], done.stdout + done.stderr
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "out_model.py").exists() and not (tmp_path / "out.dot").exists()


# ---------------------------------------------------------------- YAML


def refused(r: Result, code: str, *words: str) -> None:
    assert_clean(r, limit=2.0)
    assert r.code == (2 if code < "SC100" else 1), str(r)
    assert f"error[{code}]" in r.out, str(r)
    for word in words:
        assert word in r.out + r.err, str(r)


def every_command(spec: Path, folder: Path):
    """plan, check, render and build of a spec that fails: build writes nothing, and render
    writes nothing where the spec cannot be read (an invalid spec is drawn, up to its error)."""
    yield cli("plan", spec)
    yield cli("check", spec)
    drawn = cli("render", spec, "-o", folder / "out.dot")
    yield drawn
    assert (folder / "out.dot").exists() == (drawn.code == 1)
    if HAVE_TORCH:
        yield cli("build", spec, "-o", folder / "out_model.py")
        assert not (folder / "out_model.py").exists()
    (folder / "out.dot").unlink(missing_ok=True)


def write(folder: Path, text: str | bytes, name: str = "spec.yaml") -> Path:
    path = folder / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def merge_bomb(levels: int = 25) -> str:
    lines = ["x-m0: &m0 {a: 1, b: 2}"]
    for i in range(1, levels + 1):
        lines.append(f"x-m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: [*m{i - 1}, *m{i - 1}]}}")
    return "\n".join(lines) + "\ninput: {shape: [1, 8, 8]}\nlayers: [relu]\n"


@pytest.mark.parametrize("text", [billion_laughs(), billion_laughs(30), merge_bomb()],
                         ids=["billion-laughs", "deeper-laughs", "merge-key-bomb"])
def test_alias_and_merge_bombs_are_refused_quickly(tmp_path, text):
    spec = write(tmp_path, text)
    for r in every_command(spec, tmp_path):
        refused(r, "SC004", "expands to more than 1,000,000 nodes")


def test_aliases_that_do_not_explode_are_fine(tmp_path):
    spec = write(tmp_path, "x-conv: &c {type: conv2d, out_channels: 4, kernel_size: 3}\n"
                           "x-base: &b {kernel_size: 2}\n"
                           "input: {shape: [1, 16, 16]}\n"
                           "layers: [*c, relu, {<<: *b, type: maxpool2d}, *c, flatten]\n")
    r = assert_clean(cli("plan", spec, "--format", "json"))
    assert r.code == 0 and json.loads(r.out)["output_shape"] == ["N", 4 * 5 * 5]


@pytest.mark.parametrize("text", [
    "input: {shape: [1, 8, 8]}\nlayers: &l [relu, {type: residual, body: *l}]\n",
    "input: {shape: [1, 8, 8]}\nlayers:\n  - &b {type: residual, body: [relu, *b]}\n",
    "input: {shape: &s [1, 8, *s]}\nlayers: [relu]\n",
    "x-m: &m {k: 1, <<: *m}\ninput: {shape: [1, 8, 8]}\nlayers: [relu]\n",
], ids=["layers-in-body", "block-in-itself", "shape-in-itself", "merge-itself"])
def test_recursive_aliases_are_refused(tmp_path, text):
    # Regression: a layer list that holds itself used to end in a RecursionError traceback.
    spec = write(tmp_path, text)
    for r in every_command(spec, tmp_path):
        refused(r, "SC004", "alias refers to a node that contains it")


@pytest.mark.parametrize("text, where", [
    ("[" * 5000 + "]" * 5000, "nested"),
    ("input: {shape: [1, 8, 8]}\nlayers: [relu]\nx-deep: " + "{a: " * 150 + "1" + "}" * 150,
     "nested more than 100 levels"),
    ("input: {shape: [1, 8, 8]}\nlayers: [relu]\nx-deep:\n"
     + "".join(" " * i + "- \n" for i in range(0, 300, 2)), "nested more than 100 levels"),
], ids=["flow-lists", "flow-maps", "block-lists"])
def test_deep_nesting_is_refused(tmp_path, text, where):
    spec = write(tmp_path, text)
    for r in every_command(spec, tmp_path):
        refused(r, "SC004", where)


def test_deep_blocks_within_the_limit_work(tmp_path):
    body = "relu"
    for _ in range(40):
        body = "{type: residual, body: [" + body + "]}"
    spec = write(tmp_path, "input: {shape: [1, 8, 8]}\nlayers: [" + body + "]\n")
    assert_clean(cli("plan", spec))
    assert run_all(tmp_path, spec.read_text(), build=HAVE_TORCH)["plan"].code == 0


def test_very_long_lines(tmp_path):
    long_description = "x" * 3_000_000  # one line, under the size limit
    spec = write(tmp_path, f"description: {long_description}\ninput: {{shape: [1, 8, 8]}}\n"
                           "layers: [relu]\n")
    assert assert_clean(cli("plan", spec), limit=5).code == 0
    spec = write(tmp_path, "input: {shape: [1, 8, 8]}\nlayers: [{type: conv2d, out_channels: "
                           + "9" * 100_000 + ", kernel_size: 3}]\n")
    r = assert_clean(cli("plan", spec), limit=5)  # Python refuses the digits, or it is too big
    assert r.code in (1, 2) and "error[SC" in r.out


def test_huge_file_is_refused_before_reading(tmp_path):
    spec = tmp_path / "huge.yaml"
    with spec.open("wb") as f:
        f.write(b"input: {shape: [1, 8, 8]}\nlayers: [relu]\n")
        f.truncate(loader.MAX_BYTES + 1)  # sparse: no time or disk spent
    for r in every_command(spec, tmp_path):
        refused(r, "SC004", f"{loader.MAX_BYTES + 1:,} bytes")
    # YAML text given to the API directly is limited too.
    import shapecheck

    with pytest.raises(shapecheck.InputError) as e:
        shapecheck.plan("layers: []\n" + "#" * loader.MAX_BYTES)
    assert e.value.diagnostic.code == "SC004"


@pytest.mark.parametrize("tagged", [
    "!!python/object/apply:os.system ['touch PWNED']",
    "!!python/object/new:builtins.exec ['open(\"PWNED\", \"w\")']",
    "!!python/name:os.system",
    "!!python/tuple [1, 2]",
    "!<tag:yaml.org,2002:python/object/apply:os.system> ['touch PWNED']",
    "!custom 3",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!omap [{a: 1}]",
], ids=lambda t: t.split()[0])
def test_unsafe_and_unknown_tags_are_refused(tmp_path, monkeypatch, tagged):
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, f"input: {{shape: [1, 8, 8]}}\nlayers:\n  - {tagged}\n")
    for r in every_command(spec, tmp_path):
        refused(r, "SC004", "is not allowed in a spec")
        assert ":3:5:" in r.out + r.err
    assert not (tmp_path / "PWNED").exists()


def test_tag_on_a_key_is_refused(tmp_path):
    spec = write(tmp_path, "input: {shape: [1, 8, 8]}\n!!python/str layers: [relu]\n")
    refused(cli("plan", spec), "SC004")


@pytest.mark.parametrize("text, line", [
    ("input: {shape: [1, 8, 8]}\nlayers: [relu]\ninput: {shape: [3, 8, 8]}\n", 3),
    (("input: {shape: [1, 8, 8]}\nlayers:\n  - {type: conv2d, out_channels: 4, kernel_size: 3,"
      " out_channels: 8}\n"), 3),
    ("input: {shape: [1, 8, 8], shape: [1, 9, 9]}\nlayers: [relu]\n", 1),
], ids=["top-level", "in-a-layer", "in-input"])
def test_duplicate_keys_are_errors(tmp_path, text, line):
    spec = write(tmp_path, text)
    for r in every_command(spec, tmp_path):
        refused(r, "SC107", "given twice")
        assert f"spec.yaml:{line}:" in r.out + r.err


def _json_plan(spec: Path) -> dict:
    r = assert_clean(cli("plan", spec, "--format", "json"))
    assert r.code == 0, str(r)
    return json.loads(r.out)


@pytest.mark.parametrize("variant", ["bom", "crlf", "bom+crlf", "cr"])
def test_bom_and_line_ends_plan_as_without(tmp_path, variant):
    text = SPEC_TEXTS["resnet18.yaml"]
    plain = _json_plan(write(tmp_path, text, "plain.yaml"))
    if "crlf" in variant:
        text = text.replace("\n", "\r\n")
    if variant == "cr":
        text = text.replace("\n", "\r")
    if "bom" in variant:
        text = "\ufeff" + text
    other = _json_plan(write(tmp_path, text, "plain.yaml"))
    assert other == plain  # the same lines and columns too
    assert _json_plan(write(tmp_path, text, "other.yaml"))["layers"] == plain["layers"]


def test_utf16_is_a_clear_error(tmp_path):
    spec = write(tmp_path, SMALL.encode("utf-16"))
    for r in every_command(spec, tmp_path):
        refused(r, "SC001", "not UTF-8")


def test_tabs_in_indentation_are_a_yaml_error_with_position(tmp_path):
    spec = write(tmp_path, "input: {shape: [1, 8, 8]}\nlayers:\n\t- relu\n")
    for r in every_command(spec, tmp_path):
        refused(r, "SC002", "spec.yaml:3:1:")
    # A tab where YAML allows white space is fine.
    spec = write(tmp_path, "input:\t{shape: [1,\t8, 8]}   \t\nlayers: [relu,\trelu]\t# c\n")
    assert assert_clean(cli("plan", spec)).code == 0


# ---------------------------------------------------------------- sizes


def test_huge_sizes_plan_instantly_and_exactly(tmp_path):
    spec = write(tmp_path, huge_channels() + "  - flatten\n  - {type: linear, out_features: 10}\n")
    r = assert_clean(cli("plan", spec, "--format", "json"), limit=1.0)
    p = json.loads(r.out)
    c = 10**12
    conv = c * c * 9 + c
    linear = (c * 6 * 6) * 10 + 10
    assert p["valid"] and p["totals"]["params"] == conv + linear
    assert p["layers"][0]["macs"] == c * 6 * 6 * c * 9
    assert p["output_shape"] == ["N", 10]

    spec = write(tmp_path, "input: {shape: [1, 1000000000, 1000000000], batch: 1000000000}\n"
                           "layers:\n  - {type: conv2d, out_channels: 8, kernel_size: 3}\n"
                           "  - {type: maxpool2d, kernel_size: 2}\n  - flatten\n")
    r = assert_clean(cli("plan", spec, "--format", "json"), limit=1.0)
    p = json.loads(r.out)
    side = (10**9 - 2) // 2
    assert p["output_shape"] == [10**9, 8 * side * side]
    assert p["layers"][0]["macs"] == 8 * (10**9 - 2) ** 2 * 9
    assert p["totals"]["activation_bytes"] == 4 * 10**9 * (
        8 * (10**9 - 2) ** 2 + 2 * 8 * side * side)
    assert assert_clean(cli("check", spec), limit=1.0).code == 0
    r = assert_clean(cli("plan", spec, "--input", "3x1000000000000x1000000000000"), limit=1.0)
    assert "1000000000×8×999999999998×999999999998" in r.out  # the table, exact too
    assert f"{8 * 27 * 999999999998**2:,}" in r.out


@needs_torch
def test_build_refuses_what_does_not_fit_before_anything_is_built(tmp_path, monkeypatch):
    from shapecheck.emit import build, codegen

    def never(*args, **kwargs):
        raise AssertionError("build generated or built a module that cannot fit")

    monkeypatch.setattr(codegen, "generate", never)
    monkeypatch.setattr(build, "instantiate", never)
    spec = write(tmp_path, huge_channels())
    nbytes = 4 * (10**24 * 9 + 10**12)
    for extra in (["-o", tmp_path / "out_model.py"], ["-o", "-"]):
        r = assert_clean(cli("build", spec, *extra), limit=2.0)
        assert r.code == 1 and r.out == ""
        assert f"need {nbytes:,} bytes" in r.err and "nothing was written" in r.err
        assert "--no-memory-check" in r.err and len(r.err.strip().splitlines()) == 1
    spec = write(tmp_path, huge_channels() + "  - flatten\n  - {type: linear, out_features: 2}\n")
    r = assert_clean(cli("build", spec, "--train", "--data", "synthetic", "--out",
                         tmp_path / "run"), limit=2.0)
    assert r.code == 1 and "training spec" in r.err and "nothing was allocated" in r.err, str(r)
    assert re.search(r"need about \d{1,3}(,\d{3}){8,} bytes", r.err), str(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@needs_torch
def test_build_refuses_by_the_memory_available(tmp_path, monkeypatch):
    # The replacement for a note after writing: refused, unless --no-memory-check.
    from shapecheck.core import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    spec = write(tmp_path, SMALL)  # 475 parameters: 1,900 bytes
    out = tmp_path / "small_model.py"
    r = assert_clean(cli("build", spec, "-o", out))
    assert r.code == 1 and "need 1,900 bytes" in r.err and "1,000 bytes of memory" in r.err
    assert not out.exists()
    r = assert_clean(cli("build", spec, "-o", out, "--no-memory-check"))
    assert r.code == 0 and out.exists()
    assert "note: its parameters need 1,900 bytes" in r.err


@needs_torch
@pytest.mark.parametrize("text, what", [
    (huge_channels(), "the weight of layer 0 (conv2d conv1)"),
    ("input: {shape: [1000, 1000000000, 1000000000]}\nlayers: [relu]\n", "the input"),
    (("input: {shape: [1, 1000000000, 1000000000]}\n"
      "layers: [{type: conv2d, out_channels: 100, kernel_size: 1}]\n"),
     "the output of layer 0 (conv2d conv1)"),
], ids=["weight", "input", "activation"])
def test_build_refuses_tensors_torch_cannot_address(tmp_path, text, what):
    # Regression: these ended in torch's "Storage size calculation overflowed" traceback.
    spec = write(tmp_path, text)
    r = assert_clean(cli("build", spec, "-o", tmp_path / "m.py", "--no-memory-check"), limit=5)
    assert r.code == 1 and what in r.err and "more than torch can address" in r.err, str(r)
    assert not (tmp_path / "m.py").exists()


# ---------------------------------------------------------------- injection

PAYLOAD_LINES = (
    'Ends the docstring: """',
    "<script>alert(1)</script> ]]> <!-- & &amp; {braces} [brackets] \"q\" 'q' #",
    "import builtins; builtins.SHAPECHECK_PWNED = 1",
    "open('pwned', 'w')",
    "'''; builtins.SHAPECHECK_PWNED = 2; '''",
    'back\\slash \\" \\\\""" \\N{BULLET} \\x00 \\',
    "right-to-left \u202e)(pwned_call \u202c zero\u200bwidth",
    "fullwidth \uff02\uff02\uff02 \uff49\uff4d\uff50\uff4f\uff52\uff54 Cyrillic \u0430 look-alike",
    "\x0c form feed \x1b escape \x7f delete \u2028 line separator \r carriage return",
    '"""',
)
PAYLOAD = "\n".join(PAYLOAD_LINES)


def _yaml_string(text: str) -> str:
    # A JSON string is a YAML double-quoted string; YAML wants DEL escaped too.
    return json.dumps(text).replace("\x7f", "\\u007f")


INJECTION_SPEC = f"""\
name: hostile_net
description: {_yaml_string(PAYLOAD)}
input: {{shape: [1, 8, 8]}}
layers:
  - {{type: conv2d, name: conv1, out_channels: 2, kernel_size: 3}}
  - relu
  - flatten
  - {{type: linear, name: forward, out_features: 3}}
"""


@needs_torch
@pytest.mark.skipif(sys.platform == "win32", reason="file names with a newline and quotes")
def test_injected_text_never_runs_in_the_emitted_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The file name goes into the first comment line: a newline, quotes and a PEP 263 encoding
    # declaration there must stay a comment. (Before the fix `coding=utf-7 ` made Python decode
    # the file as UTF-7, and `+ACIAIgAi-` in the description closed the docstring.)
    name = 'net x coding=utf-7 y\n"""\nimport os #.yaml'
    utf7 = "+ACIAIgAi-+AAo-    import builtins+ADs-builtins.SHAPECHECK_PWNED = 3+AAo-    +ACIAIgAi-"
    spec = write(tmp_path, INJECTION_SPEC.replace(_yaml_string(PAYLOAD), _yaml_string(utf7)), name)
    spec2 = write(tmp_path, INJECTION_SPEC, "hostile ünïcödé 模型.yaml")
    for path, out in ((spec, tmp_path / "out one" / "mödel one.py"),
                      (spec2, tmp_path / "out one" / "模型 two.py")):
        out.parent.mkdir(exist_ok=True)
        r = assert_clean(cli("build", path, "-o", out))
        assert r.code == 0, str(r)
        module_spec = importlib.util.spec_from_file_location("hostile_emitted", out)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)  # a real import: bytes, encoding declaration
            assert not hasattr(builtins, "SHAPECHECK_PWNED")
        finally:
            vars(builtins).pop("SHAPECHECK_PWNED", None)
        assert not (tmp_path / "pwned").exists()
        first = out.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# Generated by shapecheck") and "coding=" not in first
        cls = module.HostileNet
        assert [n for n in vars(module) if not n.startswith("__")] == ["torch", "nn", "HostileNet"]
        assert [n for n in vars(cls) if not n.startswith("__")] == ["forward"]
        import torch

        assert tuple(cls()(torch.zeros(2, 1, 8, 8)).shape) == (2, 3)
    # The description reads back from the docstring as it was written.
    doc = cls.__doc__
    for line in ("import builtins; builtins.SHAPECHECK_PWNED = 1", "open('pwned', 'w')",
                 'Ends the docstring: """', 'back\\slash \\" \\\\""" \\N{BULLET}'):
        assert line in doc


@pytest.mark.parametrize("name", [
    "c\u043env",  # Cyrillic о
    "\uff43\uff4f\uff4e\uff56",  # fullwidth conv
    "conv\u202e",  # right-to-left override
    "con\u200bv",  # zero-width space
    "conv1; import os",
    "conv1\nimport os",
    "__import__('os').system('x')",
    "class",
    "ﬁ",  # NFKC-normalised to fi by Python
], ids=["cyrillic", "fullwidth", "rtl", "zwsp", "semicolon", "newline", "call", "keyword",
        "ligature"])
def test_names_that_are_not_plain_identifiers_are_refused(tmp_path, name):
    for text in (SMALL.replace("name: fc", f"name: {_yaml_string(name)}"),
                 SMALL.replace("name: small", f"name: {_yaml_string(name)}")):
        spec = write(tmp_path, text)
        for r in every_command(spec, tmp_path):
            refused(r, "SC105", "not a Python identifier")


@pytest.mark.parametrize("field, value, code", [
    ("type", "conv2d\nimport os", "SC101"),
    ("type", "conv2d'); import os; ('", "SC101"),
    ("padding_mode", "zeros'); __import__('os').system('x'); ('", "SC103"),
    ("padding", "same\u202e", "SC103"),
    ("bias", "__import__('os')", "SC103"),
    ("stride", "1 + __import__('os').getpid()", "SC103"),
], ids=["type-newline", "type-quote", "padding-mode", "padding-rtl", "bias", "stride-expr"])
def test_field_values_holding_code_are_refused(tmp_path, field, value, code):
    text = SMALL.replace("{type: conv2d,", "{type: conv2d, " + f"{field}: {_yaml_string(value)},")
    if field == "type":
        text = SMALL.replace("{type: conv2d,", "{type: " + _yaml_string(value) + ",")
    spec = write(tmp_path, text)
    for r in every_command(spec, tmp_path):
        refused(r, code)


def _svg_tree(path: Path) -> ET.ElementTree:
    tree = ET.parse(path)  # raises on anything that is not well-formed XML
    allowed = {"svg", "g", "title", "polygon", "polyline", "path", "ellipse", "text"}
    tags = {el.tag.removeprefix(SVG) for el in tree.iter()}
    assert tags <= allowed, tags - allowed  # no <script>, no element from a label
    return tree


@needs_dot
def test_injected_text_keeps_dot_and_svg_valid(tmp_path):
    folder = tmp_path / "out dir é"
    folder.mkdir()
    # a valid net, and one that fails at a layer whose error text is drawn into the node
    failing = INJECTION_SPEC.replace("kernel_size: 3", "kernel_size: 30")
    for i, text in enumerate((INJECTION_SPEC, failing)):
        spec = write(tmp_path, text, f"spec {i} ü.yaml")
        r = assert_clean(cli("render", spec, "-o", folder / f"net {i} 模型.svg"))
        assert r.code == i, str(r)
        tree = _svg_tree(folder / f"net {i} 模型.svg")
        drawn = " ".join("".join(el.itertext()) for el in tree.iter(f"{SVG}text"))
        assert "import builtins; builtins.SHAPECHECK_PWNED = 1" in drawn
        assert "<script>alert(1)</script>" in drawn  # drawn as text, not markup
        assert_clean(cli("render", spec, "-o", folder / f"net {i}.dot"))
        dot = (folder / f"net {i}.dot").read_text(encoding="utf-8")
        assert "<script>" not in dot and "&lt;script&gt;" in dot
        done = subprocess.run(["dot", "-Tsvg", folder / f"net {i}.dot"], capture_output=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr


@needs_dot
def test_xml_noncharacters_in_the_description_still_draw(tmp_path):
    spec = write(tmp_path, SMALL.replace("name: small", 'name: small\ndescription: "a\\uFFFEb"'))
    r = assert_clean(cli("render", spec, "-o", tmp_path / "net.svg"))
    assert r.code == 0, str(r)
    _svg_tree(tmp_path / "net.svg")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names")
def test_paths_with_spaces_and_non_ascii_work_everywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "my specs ü 模型"
    folder.mkdir()
    spec = write(folder, SMALL.replace("name: small\n", ""), "lecture net ünï 模型 (v2).yaml")
    out = tmp_path / "out put é"
    out.mkdir()
    assert assert_clean(cli("plan", spec)).code == 0
    assert assert_clean(cli("check", folder)).code == 0
    assert assert_clean(cli("check", spec)).code == 0
    assert assert_clean(cli("render", spec, "-o", out / "diagram é.dot")).code == 0
    if HAVE_DOT and HAVE_GRAPHVIZ:
        assert assert_clean(cli("render", spec, "-o", out / "diagram 模型.svg")).code == 0
        _svg_tree(out / "diagram 模型.svg")
    if HAVE_TORCH:
        r = assert_clean(cli("build", spec, "-o", out / "mödel 模型.py"))
        assert r.code == 0, str(r)
        module_spec = importlib.util.spec_from_file_location("m", out / "mödel 模型.py")
        module_spec.loader.exec_module(importlib.util.module_from_spec(module_spec))
        # the default output name comes from the spec's stem, in the current folder
        from shapecheck.core.spec import default_name

        assert assert_clean(cli("build", spec)).code == 0
        assert (tmp_path / f"{default_name(spec.stem)}_model.py").is_file()
