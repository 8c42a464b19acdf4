"""The protocol glue: a pygls language server on stdio that answers from features.py.

Each change of a document is checked in a worker thread, the newest text only: while a long
spec is being planned, the server keeps answering (from the last check), and changes typed
meanwhile make one more check, not one each. pygls is the `lsp` extra; torch is never
imported."""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from lsprotocol import types

try:
    from pygls.lsp.server import LanguageServer
except ModuleNotFoundError:  # pygls 1.x
    from pygls.server import LanguageServer

from .. import __version__
from . import features
from .document import LINE_BREAK, Checked

SEVERITY = {"error": types.DiagnosticSeverity.Error, "warning": types.DiagnosticSeverity.Warning}
KINDS = {"type": types.CompletionItemKind.Class, "field": types.CompletionItemKind.Field,
         "template": types.CompletionItemKind.Module,
         "parameter": types.CompletionItemKind.Variable,
         "scale": types.CompletionItemKind.EnumMember, "key": types.CompletionItemKind.Property,
         "code": types.CompletionItemKind.Constant}


class Codec:
    """Positions between the features' code points on a text's lines and the client's code
    units (the position encoding agreed at initialize: UTF-16 unless the client prefers
    another)."""

    def __init__(self, lines: list[str], encoding) -> None:
        self.lines = lines
        self.encoding = str(getattr(encoding, "value", encoding) or "utf-16")

    def _text(self, line: int) -> str:
        return self.lines[line] if 0 <= line < len(self.lines) else ""

    def position(self, line: int, column: int) -> types.Position:
        return types.Position(line, features.units(self._text(line), column, self.encoding))

    def range(self, r: features.Range) -> types.Range:
        return types.Range(self.position(r[0], r[1]), self.position(r[2], r[3]))

    def column(self, position: types.Position) -> int:
        """A request's position as a code-point column."""
        return features.column_of(self._text(position.line), position.character, self.encoding)


class SpecServer(LanguageServer):
    """The documents' checks, by URI: (version, Checked), and the last one whose YAML could
    be read (for completion and go to definition while the text is half-typed)."""

    def __init__(self) -> None:
        super().__init__("shapecheck", __version__)
        self.checked: dict[str, tuple[int | None, Checked]] = {}
        self.readable: dict[str, Checked] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="check")
        self.running: set[str] = set()
        self.dirty: set[str] = set()

    def schedule(self, uri: str) -> None:
        """Check the document's newest text, now or when the check under way ends."""
        if uri in self.running:
            self.dirty.add(uri)
            return
        self.running.add(uri)
        asyncio.ensure_future(self._check(uri))

    async def _check(self, uri: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.dirty.discard(uri)
                if uri not in self.workspace.text_documents:  # closed meanwhile
                    return
                document = self.workspace.get_text_document(uri)
                text, version = document.source, document.version
                path = document.path if uri.startswith("file:") else None
                checked = await loop.run_in_executor(self.pool, check_text, text, path)
                if uri not in self.workspace.text_documents:
                    return
                self.checked[uri] = (version, checked)
                if checked.yaml is not None:
                    self.readable[uri] = checked
                self.publish(uri, version, checked)
                if uri not in self.dirty:
                    return
        finally:
            self.running.discard(uri)

    def codec(self, lines: list[str]) -> Codec:
        return Codec(lines, self.workspace.position_encoding)

    def publish(self, uri: str, version: int | None, checked: Checked) -> None:
        codec = self.codec(checked.lines)
        found = []
        for p in features.problems(checked):
            where = codec.range(p.range)
            related = None
            if p.hint:
                related = [types.DiagnosticRelatedInformation(
                    types.Location(uri, where), f"hint: {p.hint}")]
            found.append(types.Diagnostic(where, p.message, SEVERITY[p.severity], p.code,
                                          source="shapecheck", related_information=related))
        self.send_diagnostics(uri, found, version)
        workspace = self.client_capabilities.workspace
        hints = workspace.inlay_hint if workspace else None
        if hints is not None and hints.refresh_support:
            if hasattr(self, "workspace_inlay_hint_refresh"):
                self.workspace_inlay_hint_refresh(None)
            else:  # pygls 1.x
                self.lsp.send_request(types.WORKSPACE_INLAY_HINT_REFRESH)

    def send_diagnostics(self, uri: str, found: list, version: int | None = None) -> None:
        if hasattr(self, "text_document_publish_diagnostics"):
            self.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(uri, found, version))
        else:  # pygls 1.x
            self.publish_diagnostics(uri, found, version)

    async def current(self, uri: str, wait: float = 2.0) -> Checked | None:
        """The document's last check, once the check under way (if any) has ended: an editor
        asks for hints as it opens a file, before its first check is done. After ``wait``
        seconds, the check before (a long spec's)."""
        deadline = time.monotonic() + wait
        while uri in self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        found = self.checked.get(uri)
        return found[1] if found else None

    def up_to_date(self, uri: str) -> Checked | None:
        """The document's check, only if it is of the text the editor now has."""
        found = self.checked.get(uri)
        if found is None or uri not in self.workspace.text_documents:
            return None
        version, checked = found
        return checked if self.workspace.get_text_document(uri).version == version else None


def check_text(text: str, path: str | None) -> Checked:
    checked = Checked(text, path)
    _ = checked.yaml  # read here, off the event loop: completion and go to definition need it
    return checked


def make_server() -> SpecServer:
    server = SpecServer()

    @server.feature(types.INITIALIZED)
    def initialized(ls: SpecServer, params) -> None:
        # Import every layer model now, not at the first completion or the first check.
        ls.pool.submit(features.layer_types)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: SpecServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.schedule(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: SpecServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.schedule(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: SpecServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.checked.pop(uri, None)
        ls.readable.pop(uri, None)
        ls.send_diagnostics(uri, [])

    @server.feature(types.TEXT_DOCUMENT_INLAY_HINT,
                    types.InlayHintOptions(resolve_provider=False))
    async def inlay_hint(ls: SpecServer, params: types.InlayHintParams):
        checked = await ls.current(params.text_document.uri)
        if checked is None:
            return []
        r, codec = params.range, ls.codec(checked.lines)
        return [types.InlayHint(codec.position(h.line, h.character), h.label,
                                types.InlayHintKind.Type, tooltip=h.tooltip, padding_left=True)
                for h in features.inlay_hints(checked, r.start.line, r.end.line)]

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    async def hover(ls: SpecServer, params: types.HoverParams):
        checked = await ls.current(params.text_document.uri)
        if checked is None:
            return None
        codec = ls.codec(checked.lines)
        found = features.hover(checked, params.position.line, codec.column(params.position))
        if found is None:
            return None
        return types.Hover(types.MarkupContent(types.MarkupKind.Markdown, found.markdown),
                           codec.range(found.range))

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    def completion(ls: SpecServer, params: types.CompletionParams):
        uri = params.text_document.uri
        text = ls.workspace.get_text_document(uri).source
        column = ls.codec(LINE_BREAK.split(text)).column(params.position)
        found = features.completions(text, params.position.line, column, ls.readable.get(uri))
        return types.CompletionList(False, [
            types.CompletionItem(c.label, kind=KINDS[c.kind], detail=c.detail,
                                 insert_text=c.insert) for c in found])

    @server.feature(types.TEXT_DOCUMENT_DEFINITION)
    def definition(ls: SpecServer, params: types.DefinitionParams):
        uri = params.text_document.uri
        text, known = ls.workspace.get_text_document(uri).source, ls.readable.get(uri)
        column = ls.codec(LINE_BREAK.split(text)).column(params.position)
        found = features.definition(text, params.position.line, column, known)
        return types.Location(uri, ls.codec(known.lines).range(found)) if found else None

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.QuickFix]))
    async def code_action(ls: SpecServer, params: types.CodeActionParams):
        uri = params.text_document.uri
        await ls.current(uri)
        checked = ls.up_to_date(uri)
        if checked is None:  # an edit made for another text would corrupt this one
            return []
        actions, codec = [], ls.codec(checked.lines)
        for fix in features.fixes(checked, params.range.start.line, params.range.end.line):
            problem = types.Diagnostic(codec.range(fix.problem.range), fix.problem.message,
                                       SEVERITY[fix.problem.severity], fix.problem.code,
                                       source="shapecheck")
            edits = [types.TextEdit(codec.range(e.range), e.text) for e in fix.edits]
            actions.append(types.CodeAction(
                fix.title, kind=types.CodeActionKind.QuickFix, diagnostics=[problem],
                is_preferred=True, edit=types.WorkspaceEdit(changes={uri: edits})))
        return actions

    return server


def serve() -> int:
    """Serve on stdin and stdout until the client says exit."""
    import os

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the protocol
    server = make_server()
    server.start_io(stdin, stdout)
    sys.stderr.flush()
    # Not the interpreter's teardown: it would wait for a check still under way.
    os._exit(0)
