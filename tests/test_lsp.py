"""`shapecheck lsp`: the features as functions of a text (shapecheck/lsp/features.py), then the
server itself over real stdio, driven by a small JSON-RPC client, and in Neovim."""

from __future__ import annotations

import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, SPECS

from shapecheck.core.diagnostics import CODES
from shapecheck.core.layers import KINDS
from shapecheck.core.loader import MAX_BYTES
from shapecheck.lsp import features
from shapecheck.lsp.document import Checked
from shapecheck.outputs.table import explanation

LECTURE = (SPECS / "lecture_cnn.yaml").read_text(encoding="utf-8")
RESNET50 = (SPECS / "zoo" / "resnet50.yaml").read_text(encoding="utf-8")
FC = "  - {type: linear, name: fc, out_features: 10}"
# The lecture net with its flatten left out and a stale in_features: SC204 at the fc.
NO_FLATTEN = LECTURE.replace("  - flatten\n", "").replace(
    FC, "  - {type: linear, name: fc, in_features: 100, out_features: 10}")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.split("\n")) if needle in line)


def apply(text: str, edits) -> str:
    """The text with the edits made (their ranges all refer to the text before any)."""
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    for edit in sorted(edits, key=lambda e: e.range[:2], reverse=True):
        sl, sc, el, ec = edit.range
        text = text[:offsets[sl] + sc] + edit.text + text[offsets[el] + ec:]
    return text


# --- the features, from text ----------------------------------------------------------------

def test_diagnostics_are_plans_at_their_line_and_column_with_the_hint():
    checked = Checked(NO_FLATTEN, "net.yaml")
    [problem] = features.problems(checked)
    fc = line_of(NO_FLATTEN, "name: fc")
    assert problem.code == "SC204" and problem.severity == "error"
    assert problem.range[:2] == (fc, 4)  # the entry's `{`, as plan's net.yaml:LINE:5
    assert problem.message == checked.diagnostics[0].message
    assert problem.hint.startswith("add flatten before fc: it gives 320 features")


def test_inlay_hints_are_the_output_shapes_of_the_table():
    hints = features.inlay_hints(Checked(LECTURE, "specs/lecture_cnn.yaml"))
    lines = LECTURE.split("\n")
    shown = [(lines[h.line].strip(), h.label) for h in hints]
    assert shown == [
        ("- {type: conv2d, name: conv1, out_channels: 10, kernel_size: 5}", "→ 64×10×24×24"),
        ("- {type: maxpool2d, kernel_size: 2}", "→ 64×10×12×12"),
        ("- relu", "→ 64×10×12×12"),
        ("- {type: Conv2d, out_channels: 20, kernel_size: 5}", "→ 64×20×8×8"),
        ("- {type: maxpool2d, kernel_size: 2}", "→ 64×20×4×4"),
        ("- relu", "→ 64×20×4×4"),
        ("- flatten", "→ 64×320"),
        (FC.strip(), "→ 64×10"),
    ]
    assert all(h.character == len(lines[h.line]) for h in hints)  # at the end of the line


def test_a_template_body_shows_its_first_use_and_a_use_its_output():
    checked = Checked(RESNET50, "resnet50.yaml")
    at = {h.line: h.label for h in features.inlay_hints(checked)}
    conv3 = line_of(RESNET50, "name: conv3, out_channels: $width * 4")
    assert at[conv3] == "→ N×256×56×56"  # layer1's first block
    assert at[line_of(RESNET50, "name: layer2")] == "→ N×512×28×28"
    assert at[line_of(RESNET50, "name: layer4")] == "→ N×2048×7×7"
    assert at[line_of(RESNET50, "name: fc")] == "→ N×1000"


def test_a_failing_layer_is_marked_and_the_skipped_ones_have_no_hint():
    text = LECTURE.replace("kernel_size: 5}", "kernel_size: 50}", 1)
    hints = features.inlay_hints(Checked(text))
    assert [h.label for h in hints] == ["✗ fails here"]


def test_hover_on_a_layer_is_its_explain_arithmetic():
    checked = Checked(LECTURE, "specs/lecture_cnn.yaml")
    fc = line_of(LECTURE, "name: fc")
    found = features.hover(checked, fc, 10)
    row = checked.rows[(7,)]
    assert "**fc** · `linear`" in found.markdown
    assert "input `64×320` → output `64×10`" in found.markdown
    assert "weight `10×320` · bias `10` · params 3,210 · MACs 3,200" in found.markdown
    assert "\n".join(explanation(row)) in found.markdown  # what plan --explain prints
    assert "rf: global" in found.markdown
    # a continuation line of a block mapping belongs to its entry; the header to none
    assert features.hover(checked, 0, 0) is None


def test_hover_on_a_use_gives_the_template_parameters_and_the_layers():
    checked = Checked(RESNET50, "resnet50.yaml")
    line = line_of(RESNET50, "name: layer2")
    text = features.hover(checked, line, 10).markdown
    assert "**use `bottleneck`** × 4" in text
    assert "- `width`: default `64`, here `128`" in text
    assert "- `stride`: default `1`, first repeat `2`" in text
    assert "- `shortcut`: default `[]`, first repeat `[{use: downsample, out: 512, stride: 2}]`" \
        in text
    # 4 blocks of 9 layers (the residual and its body's 8), and the first one's downsample (2)
    assert "makes 38 layers" in text
    assert "layer2_0_conv3" in text and "→ N×512×28×28" in text


def test_completion_offers_types_fields_with_defaults_templates_and_scales():
    text = "input: {shape: [1, 28, 28]}\nlayers:\n  - {type: conv2d, \n  - {type: \n  - \n"
    labels = features.completions
    fields = {c.label: c.detail for c in labels(text, 2, 18, None)}
    assert fields["out_channels"] == "required" and fields["stride"] == "default: 1"
    assert fields["padding_mode"] == "default: zeros" and "type" not in fields
    types = [c.label for c in labels(text, 3, 10, None)]
    assert "conv2d" in types and "residual" in types and sorted(types) == sorted(KINDS)
    assert "linear" in [c.label for c in labels(text, 4, 4, None)]
    assert [c.insert for c in labels(text, 3, 10, None)][:2] == [" conv2d", " convtranspose2d"]
    block = "layers:\n  - type: linear\n    out_features: 10\n    \n"
    assert {c.label for c in labels(block, 3, 4, None)} == {"name", "in_features", "bias", "from"}
    known = Checked(RESNET50)
    uses = labels("layers:\n  - {use: }\n", 1, 9, known)
    assert [c.label for c in uses] == ["bottleneck", "downsample"]
    params = labels("layers:\n  - {use: downsample, \n", 1, 22, known)
    assert [c.label for c in params] == ["out", "stride", "name", "repeat", "first", "from"]
    scaled = Checked((SPECS / "zoo" / "efficientnet.yaml").read_text(encoding="utf-8"))
    scales = [c.label for c in labels("default_scale: ", 0, 15, scaled)]
    assert scales == list(scaled.raw(("scales",)))
    ignorable = [c.label for c in labels("ignore: [", 0, 9, None)]
    assert ignorable == [code for code in CODES if code.startswith("SC3")]
    assert "SC301" in ignorable and "SC201" not in ignorable


def test_go_to_definition_from_a_use_to_its_template():
    checked = Checked(RESNET50)
    line = line_of(RESNET50, "name: layer3")
    target = features.definition(RESNET50, line, 12, checked)
    bottleneck = line_of(RESNET50, "  bottleneck:")
    assert target == (bottleneck, 2, bottleneck, 12)
    assert features.definition(RESNET50, 0, 0, checked) is None


@pytest.mark.parametrize(("before", "after", "code"), [
    # SC204 with the flatten missing: insert it and set in_features as the hint says
    (NO_FLATTEN, None, "SC204"),
    # SC204 in a block mapping: the value replaced on its own line
    (LECTURE.replace(FC, "  - type: linear\n    in_features: 99\n    out_features: 10"),
     "    in_features: 320\n", "SC204"),
    # SC203: in_channels added after the type, in a flow mapping
    (LECTURE.replace("{type: Conv2d, out_channels: 20", "{type: Conv2d, in_channels: 3, "
                     "out_channels: 20"), "{type: Conv2d, in_channels: 10, out_channels", "SC203"),
    # SC205: num_features set to the channels that arrive
    (LECTURE.replace("  - relu\n", "  - {type: batchnorm2d, num_features: 7}\n", 1),
     "{type: batchnorm2d, num_features: 10}", "SC205"),
    # SC303: bias set to false on the conv
    (LECTURE.replace("  - {type: maxpool2d, kernel_size: 2}\n", "  - batchnorm2d\n", 1),
     "{type: conv2d, bias: false, name: conv1,", "SC303"),
])
def test_a_code_action_makes_the_fix_its_hint_states(before, after, code):
    checked = Checked(before, "net.yaml")
    fixes = [f for f in features.fixes(checked) if f.problem.code == code]
    assert len(fixes) == 1, [f.title for f in features.fixes(checked)]
    fixed = apply(before, fixes[0].edits)
    if after:
        assert after in fixed
    again = Checked(fixed, "net.yaml")
    assert code not in {d.code for d in again.diagnostics}
    assert again.plan is not None and again.plan.valid


def test_a_residual_gets_the_shortcut_its_hint_gives():
    text = ("input: {shape: [16, 32, 32]}\nlayers:\n  - type: residual\n    body:\n"
            "      - {type: conv2d, out_channels: 32, kernel_size: 3, stride: 2, padding: 1}\n")
    [fix] = features.fixes(Checked(text))
    assert fix.problem.code == "SC211" and fix.title.startswith("set shortcut: [")
    fixed = Checked(apply(text, fix.edits))
    assert fixed.plan.valid and fixed.plan.layers[0].output_shape == ("N", 32, 16, 16)


def test_a_template_layer_gets_no_fix_every_use_shares_it():
    text = RESNET50.replace("name: bn3}", "name: bn3, num_features: 7}")
    checked = Checked(text)
    assert "SC205" in {d.code for d in checked.diagnostics}
    assert features.fixes(checked) == []


@pytest.mark.parametrize(("text", "code"), [
    ("layers:\n  - {type: conv2d, out_channels: 3\n", "SC002"),  # half-typed
    ("input: {shape: [1, 28, 28]}\nlayers:\n  - {type: conv2d, out_channels: 3, kern", "SC002"),
    ("\x00\x01\x7fELF\x02binary\x00", "SC002"),  # binary text
    ("layers: [relu]\ninput: {shape: [1, 2, 2]}\nname: \ud800\n", "SC002"),  # a lone surrogate
    ("x" * (MAX_BYTES + 1), "SC004"),  # too large
    ("layers: &a [relu, *a]\n", "SC004"),  # an alias to itself
    ("input: {shape: [1, 8, 8]}\nlayers:\n" + "  - relu\n" * 20_001, "SC004"),
])
def test_bad_input_is_a_diagnostic_and_every_feature_still_answers(text, code):
    checked = Checked(text, "bad.yaml")
    assert checked.crash is None
    assert [p.code for p in features.problems(checked)] == [code]
    assert features.inlay_hints(checked) == []
    assert features.hover(checked, 0, 3) is None and features.fixes(checked) == []
    features.completions(text, 1, 4, checked)
    features.completions(text, 99, 0, checked)
    assert features.definition(text, 0, 0, checked) is None


ASTRAL = "  - {type: linear, name: fc, in_features: 99, out_features: 10}  # 🧠 × 🧠"


@pytest.mark.parametrize("text", [
    "on: [push]\njobs:\n  test: {runs-on: ubuntu-latest}\n",  # a CI workflow
    "services:\n  web: {image: nginx}\n", "- a\n- b\n", "", "name: net\n"])
def test_yaml_that_is_not_a_spec_gets_no_diagnostics(text):
    """Editors start the server for every YAML file: only specs get diagnostics."""
    checked = Checked(text, "other.yaml")
    assert [d.code for d in checked.diagnostics] == ["SC003"]  # as `plan` says it
    assert features.problems(checked) == [] and features.inlay_hints(checked) == []


def test_positions_are_code_points_and_the_protocol_counts_its_units():
    checked = Checked(LECTURE.replace(FC, ASTRAL))
    [problem] = [p for p in features.problems(checked) if p.code == "SC204"]
    assert problem.range[3] == len(ASTRAL)
    [hint] = [h for h in features.inlay_hints(checked) if h.line == problem.range[0]]
    assert hint.character == len(ASTRAL)
    # two astral characters (two UTF-16 units, four UTF-8 bytes each) and a × (two bytes)
    assert features.units(ASTRAL, len(ASTRAL)) == len(ASTRAL) + 2
    assert features.units(ASTRAL, len(ASTRAL), "utf-8") == len(ASTRAL.encode("utf-8"))
    assert features.units(ASTRAL, len(ASTRAL), "utf-32") == len(ASTRAL)
    for encoding in ("utf-8", "utf-16", "utf-32"):
        for column in range(len(ASTRAL) + 1):
            assert features.column_of(ASTRAL, features.units(ASTRAL, column, encoding),
                                      encoding) == column


def test_a_warm_recheck_is_fast():
    """The figures in docs/editors.md: a check of the text (parse, plan, lint) warm."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.specgen import write_chain

    Checked(LECTURE)
    lecture = min(_seconds(lambda: Checked(LECTURE, "lecture_cnn.yaml")) for _ in range(20))
    chain = write_chain(Path(os.environ.get("TMPDIR", "/tmp")) / "lsp_chain_1000.yaml", 1000)
    text = chain.read_text(encoding="utf-8")
    long = min(_seconds(lambda: Checked(text, str(chain))) for _ in range(3))
    print(f"warm check: lecture_cnn {lecture * 1000:.1f} ms, 1,000 layers {long * 1000:.0f} ms")
    assert lecture < 0.05 and long < 0.5  # generous: a few ms and tens of ms measured


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


# --- the server over stdio ------------------------------------------------------------------

class Client:
    """A JSON-RPC client of the server's stdio, as an editor is: requests get their answer,
    notifications (publishDiagnostics) are kept in order."""

    def __init__(self, *python_args: str):
        self.process = subprocess.Popen(
            [sys.executable, *python_args, "-m", "shapecheck", "lsp"], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages: queue.Queue = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.published: list[dict] = []
        self.stderr = b""
        self.stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self.stderr_thread.start()

    def _read(self) -> None:
        out = self.process.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line == b"\r\n":
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.messages.put(json.loads(out.read(length)))

    def _read_stderr(self) -> None:
        self.stderr = self.process.stderr.read()

    def send(self, method: str, params=None, *, request: bool = False) -> int | None:
        message = {"jsonrpc": "2.0", "method": method, "params": params}
        if request:
            self.next_id += 1
            message["id"] = self.next_id
        body = json.dumps(message).encode("utf-8")
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()
        return message.get("id")

    def request(self, method: str, params=None, timeout: float = 30):
        wanted = self.send(method, params, request=True)
        while True:
            message = self.messages.get(timeout=timeout)
            if message.get("id") == wanted and "method" not in message:
                assert "error" not in message, message
                return message["result"]
            self._notified(message)

    def _notified(self, message) -> None:
        if message.get("method") == "textDocument/publishDiagnostics":
            self.published.append(message["params"])
        elif "id" in message and "method" in message:  # a request to the client: answer it
            body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": None})
            self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body.encode())
            self.process.stdin.flush()

    def diagnostics(self, uri: str, version: int, timeout: float = 30) -> list[dict]:
        """The diagnostics published for this version of the document."""
        deadline = time.monotonic() + timeout
        while True:
            for params in self.published:
                if params["uri"] == uri and params.get("version") == version:
                    return params["diagnostics"]
            self._notified(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))

    def open(self, uri: str, text: str) -> None:
        self.send("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "yaml", "version": 1, "text": text}})

    def change(self, uri: str, version: int, text: str) -> None:
        self.send("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"text": text}]})

    def close(self) -> int:
        assert self.request("shutdown") is None
        self.send("exit")
        return self.process.wait(timeout=30)


def started(capabilities: dict) -> Client:
    pytest.importorskip("pygls")
    c = Client()
    c.request("initialize", {"processId": os.getpid(), "rootUri": None,
                             "capabilities": capabilities})
    c.send("initialized", {})
    return c


@pytest.fixture
def client():
    c = started({"workspace": {"inlayHint": {"refreshSupport": True}}})
    yield c
    if c.process.poll() is None:
        c.process.kill()
        c.process.wait()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_positions_are_in_the_encoding_the_client_asked_for(encoding):
    c = started({"general": {"positionEncodings": [encoding]}})
    try:
        uri = "untitled:net.yaml"
        c.open(uri, LECTURE.replace(FC, ASTRAL))
        [found] = [d for d in c.diagnostics(uri, 1) if d["code"] == "SC204"]
        end = features.units(ASTRAL, len(ASTRAL), encoding)
        assert found["range"]["end"]["character"] == end
        line = found["range"]["end"]["line"]
        hints = c.request("textDocument/inlayHint", {"textDocument": {"uri": uri}, "range": {
            "start": at(line, 0), "end": at(line, end)}})
        assert [h["position"] for h in hints] == [at(line, end)]
        # a hover asked for at the last character, in the client's units, finds the layer
        hover = c.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                 "position": at(line, end - 1)})
        assert hover["contents"]["value"].startswith("**fc**")
        assert c.close() == 0
    finally:
        if c.process.poll() is None:
            c.process.kill()


def at(line: int, character: int) -> dict:
    return {"line": line, "character": character}


def test_the_server_over_stdio(client, tmp_path):
    uri = (tmp_path / "net.yaml").as_uri()
    doc = {"uri": uri}
    client.open(uri, LECTURE)
    assert client.diagnostics(uri, 1) == []
    client.change(uri, 2, NO_FLATTEN)
    [found] = client.diagnostics(uri, 2)
    fc = line_of(NO_FLATTEN, "name: fc")
    assert found["code"] == "SC204" and found["severity"] == 1 and found["source"] == "shapecheck"
    assert found["range"]["start"] == at(fc, 4)
    assert found["relatedInformation"][0]["message"].startswith("hint: add flatten before fc")

    hover = client.request("textDocument/hover", {"textDocument": doc, "position": at(fc - 1, 8)})
    assert hover["contents"]["kind"] == "markdown"
    assert "relu2" in hover["contents"]["value"]
    hints = client.request("textDocument/inlayHint", {"textDocument": doc, "range": {
        "start": at(0, 0), "end": at(fc, 0)}})
    assert [h["label"] for h in hints][:2] == ["→ 64×10×24×24", "→ 64×10×12×12"]
    assert all(h["position"]["line"] <= fc for h in hints)
    items = client.request("textDocument/completion", {"textDocument": doc,
                                                       "position": at(fc, 12)})
    assert "linear" in [i["label"] for i in items["items"]]
    actions = client.request("textDocument/codeAction", {
        "textDocument": doc, "range": {"start": at(fc, 0), "end": at(fc, 0)},
        "context": {"diagnostics": [found]}})
    [action] = actions
    assert action["title"] == "add flatten before fc, set in_features: 320"
    assert action["kind"] == "quickfix"
    edits = action["edit"]["changes"][uri]
    fixed = apply(NO_FLATTEN, [features.Edit((e["range"]["start"]["line"],
                                              e["range"]["start"]["character"],
                                              e["range"]["end"]["line"],
                                              e["range"]["end"]["character"]), e["newText"])
                               for e in edits])
    client.change(uri, 3, fixed)
    assert client.diagnostics(uri, 3) == []
    assert client.close() == 0


def test_bad_input_never_stops_the_server(client):
    uri = "untitled:bad.yaml"
    client.open(uri, "layers: [")
    assert [d["code"] for d in client.diagnostics(uri, 1)] == ["SC002"]
    bad = ["\x00\x1b[2J binary", "input: {shape: [1, 8, 8]}\nlayers: [" + "relu, " * 30_000 + "]",
           "x" * (MAX_BYTES + 10), "layers:\n  - {type: conv2d, out_channels: 3", "\ud800"]
    for version, text in enumerate(bad, 2):
        client.change(uri, version, text)
        assert len(client.diagnostics(uri, version)) == 1
        # every request is still answered
        client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                              "position": at(0, 1)})
        client.request("textDocument/inlayHint", {"textDocument": {"uri": uri}, "range": {
            "start": at(0, 0), "end": at(5, 0)}})
        client.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                   "position": at(1, 20)})
    client.change(uri, 99, LECTURE)
    assert client.diagnostics(uri, 99) == []
    assert client.close() == 0


def test_the_server_ends_when_the_editor_goes_away(client):
    """An editor that dies closes the server's stdin without `exit`: the server ends."""
    client.open("untitled:a.yaml", LECTURE)
    client.diagnostics("untitled:a.yaml", 1)
    client.process.stdin.close()
    assert client.process.wait(timeout=30) == 0


def test_the_server_answers_while_a_long_spec_is_checked(client):
    """A check runs beside the protocol: a request is answered before a long check ends, and
    changes typed meanwhile make one more check of the newest text."""
    uri = "untitled:long.yaml"
    long = "input: {shape: [1, 8, 8]}\nlayers:\n" + "  - {type: conv2d, out_channels: 1, " \
        "kernel_size: 3, padding: 1}\n" * 15_000
    client.open(uri, LECTURE)
    client.diagnostics(uri, 1)
    client.change(uri, 2, long)
    items = client.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                       "position": at(3, 4)})
    assert "conv2d" in [i["label"] for i in items["items"]]
    # answered while version 2 was being checked: its diagnostics have not come yet
    assert [p["version"] for p in client.published if p["uri"] == uri] == [1]
    for version in range(3, 8):
        client.change(uri, version, NO_FLATTEN)
    assert [d["code"] for d in client.diagnostics(uri, 7)] == ["SC204"]
    versions = [p["version"] for p in client.published if p["uri"] == uri]
    assert versions[-1] == 7 and len(versions) < 7  # not one check per change
    assert client.close() == 0


def test_a_recheck_over_stdio_takes_milliseconds(client, tmp_path):
    """From didChange sent to the diagnostics received, warm: the figures in docs/editors.md."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.specgen import write_chain

    figures = {}
    chain = write_chain(tmp_path / "chain.yaml", 1000).read_text(encoding="utf-8")
    for name, text, rounds in (("lecture_cnn", LECTURE, 20), ("1,000 layers", chain, 5)):
        uri = f"untitled:{len(figures)}.yaml"
        client.open(uri, text)
        client.diagnostics(uri, 1)
        times = []
        for version in range(2, rounds + 2):
            start = time.perf_counter()
            client.change(uri, version, text + f"# {version}\n")
            client.diagnostics(uri, version)
            times.append(time.perf_counter() - start)
        figures[name] = statistics.median(times)
    print("re-check over stdio, median: " + ", ".join(
        f"{name} {seconds * 1000:.1f} ms" for name, seconds in figures.items()))
    assert figures["lecture_cnn"] < 0.25 and figures["1,000 layers"] < 1.0
    assert client.close() == 0


def test_the_server_never_imports_torch(tmp_path):
    pytest.importorskip("pygls")
    c = Client("-X", "importtime")
    c.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    c.send("initialized", {})
    uri = "untitled:net.yaml"
    c.open(uri, RESNET50)
    c.diagnostics(uri, 1)
    c.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": at(27, 4)})
    c.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": at(29, 8)})
    assert c.close() == 0
    c.stderr_thread.join(30)
    loaded = {line.split("|")[-1].strip() for line in c.stderr.decode().splitlines()}
    assert {"shapecheck.lsp.server", "shapecheck.core.planner"} <= loaded, c.stderr[-2000:]
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "numpy", "graphviz")}


# An import system without the lsp extra, as a plain install has it.
WITHOUT_PYGLS = """import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pygls", "lsprotocol"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from shapecheck.cli import main
sys.exit(main(["lsp"]))
"""


def test_without_pygls_the_command_says_what_to_install():
    code = WITHOUT_PYGLS
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("shapecheck lsp: error: needs pygls: pip install "
                                  "'shapecheck-cnn[lsp]'")


# --- in a real editor -----------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvim") is None, reason="needs Neovim")
def test_neovim_shows_the_diagnostics_and_the_shapes(tmp_path):
    """Neovim, headless, starts the server on a spec as docs/editors.md sets it up; its
    diagnostics (vim.diagnostic.get) and the inlay hints are what the server gives."""
    pytest.importorskip("pygls")
    spec = tmp_path / "net.yaml"
    spec.write_text(LECTURE.replace("  - flatten\n", ""), encoding="utf-8")
    out = tmp_path / "seen.txt"
    env = {**os.environ, "SPEC": str(spec), "OUT": str(out), "PYTHON": sys.executable,
           "HOVER_LINE": str(line_of(LECTURE, "name: conv1") + 1), "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path)}
    init = ROOT / "tests" / "nvim_lsp.lua"
    subprocess.run(["nvim", "--headless", "-i", "NONE", "-u", str(init)], cwd=ROOT, env=env, timeout=90, check=True, capture_output=True)
    seen = out.read_text(encoding="utf-8").splitlines()
    fc = line_of(LECTURE, "name: fc")  # 1-based: the line of fc once the flatten is gone
    assert seen == [
        "diagnostics arrived: true",
        (f"diagnostic {fc}:5 SC305 layer 6 (linear fc): linear on a 4-d tensor acts on the "
         "last dim (4) only"),
        *(f"hint {fc - 6 + i} {shape}" for i, shape in enumerate([
            "→ 64×10×24×24", "→ 64×10×12×12", "→ 64×10×12×12", "→ 64×20×8×8", "→ 64×20×4×4",
            "→ 64×20×4×4", "→ 64×20×4×10"])),
        "hover **conv1** · `conv2d` · layer 0",
    ]


def test_a_failure_of_the_checker_is_a_diagnostic_not_the_end(monkeypatch):
    """No text is known to break the checker; a bug is simulated to see what the user gets."""
    from shapecheck.lsp import document

    def broken(spec):
        raise RuntimeError("a bug")

    monkeypatch.setattr(document, "plan", broken)
    checked = Checked(LECTURE)
    [problem] = features.problems(checked)
    assert problem.code is None and problem.range[0] == 0
    assert problem.message.startswith("shapecheck could not check this text (RuntimeError: a bug)")
    assert features.inlay_hints(checked) == [] and features.hover(checked, 9, 6) is None
