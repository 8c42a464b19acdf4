"""A spec document as the language server sees it: its text checked once (the plan and its
diagnostics, as `plan` gives them), and where each layer and each template use was written.

Pure: no protocol here. Lines and columns are 0-based and count code points; the features
module turns them into the protocol's UTF-16 positions."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import cached_property

from ..core.diagnostics import Diagnostic, InputError
from ..core.layers.base import Origin
from ..core.loader import SpecError, parse
from ..core.plan import LayerPlan, Plan
from ..core.planner import plan
from ..core.spec import Spec

# The line breaks of the protocol (and of YAML's common texts): \n, \r\n and \r.
LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass
class Entry:
    """A layer entry or a template use, where it was written (0-based)."""

    line: int
    column: int
    end_line: int  # its last line: the lines below it that are indented past its column
    row: LayerPlan | None = None  # a layer: its first use, for a layer a template writes
    site: Origin | None = None  # a use of a template
    rows: list[LayerPlan] = field(default_factory=list)  # the layers a use made (first instance)


class Checked:
    """One version of a document, checked. Never raises: a text that cannot be read is a
    diagnostic, and a failure of the checker itself is kept in ``crash``."""

    def __init__(self, text: str, path: str | None = None):
        self.text = text
        self.path = path
        self.lines = LINE_BREAK.split(text)
        self.spec: Spec | None = None
        self.plan: Plan | None = None
        self.diagnostics: list[Diagnostic] = []
        self.crash: str | None = None
        start = time.perf_counter()
        try:
            # parse(), not load_spec(): a one-line text naming a file must stay text
            self.spec = parse(text, path)
            self.plan = plan(self.spec)
            self.diagnostics = self.plan.diagnostics
        except InputError as e:
            self.diagnostics = [e.diagnostic]
        except SpecError as e:
            self.diagnostics = e.diagnostics
        except Exception as e:  # noqa: BLE001 - a bug of the checker must not end the server
            self.crash = f"{type(e).__name__}: {e}"[:300]
        self.seconds = time.perf_counter() - start

    @cached_property
    def yaml(self) -> tuple[object, dict] | None:
        """(data, {YAML location: (1-based line, column)}) of the raw text, read again on
        first use (hover, go to definition, code actions); None where it is not YAML."""
        from ..core import yamlread
        from ..core.loader import MAX_BYTES

        if len(self.text) > MAX_BYTES or any(d.code == "SC004" for d in self.diagnostics):
            return None  # refused by the check (too large, too many layers): not read twice
        try:
            data, positions, _ = yamlread.read(self.text)
        except InputError:  # not YAML (its diagnostic is the check's)
            return None
        return data, positions

    @cached_property
    def located(self) -> dict[tuple[int, int], tuple]:
        """The YAML location of each written node by its 1-based (line, column): the
        outermost node where several start at one place (a mapping and its first key)."""
        found: dict[tuple[int, int], tuple] = {}
        for loc, at in (self.yaml[1] if self.yaml else {}).items():
            found.setdefault(at, loc)
        return found

    def raw(self, loc: tuple):
        """The raw YAML value at a location, or None."""
        value = self.yaml[0] if self.yaml else None
        for key in loc:
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                return None
        return value

    @cached_property
    def rows(self) -> dict[tuple, LayerPlan]:
        """Every planned layer by its path."""
        return {row.path: row for row in self.plan.walk()} if self.plan else {}

    @cached_property
    def entries(self) -> list[Entry]:
        """Every layer entry and template use written in the text, in text order. A template's
        layer stands for its first use; a use in a template, for its first instance."""
        layers: dict[tuple[int, int], Entry] = {}
        uses: dict[tuple[int, int], tuple[tuple, Entry]] = {}
        for row in self.rows.values():
            origin = row.spec.origin
            if origin is None or origin.line is None:
                continue
            at = (origin.line, origin.column)
            if at not in layers:
                layers[at] = self._entry(origin.line, origin.column, row=row)
            chain = origin.used_at
            for k, site in enumerate(chain):
                key = (site.line, site.column)
                outer = tuple((s.line, s.column) for s in chain[k:])
                if key not in uses and site.line is not None:
                    uses[key] = (outer, self._entry(site.line, site.column, site=site))
                if key in uses and uses[key][0] == outer:
                    uses[key][1].rows.append(row)
        found = [*layers.values(), *(entry for _, entry in uses.values())]
        return sorted(found, key=lambda e: (e.line, e.column))

    def _entry(self, line: int, column: int | None, **what) -> Entry:
        line0, col0 = line - 1, (column or 1) - 1
        return Entry(line0, col0, self._end_line(line0, col0), **what)

    def _end_line(self, line: int, column: int) -> int:
        """The last line of an entry that starts at (line, column): the lines after it that
        are indented to its column or further (blank lines and comments within it)."""
        end = line
        for i in range(line + 1, len(self.lines)):
            text = self.lines[i]
            stripped = text.lstrip(" ")
            if not stripped or stripped.startswith("#"):
                continue
            if len(text) - len(stripped) < column:
                break
            end = i
        return end

    def entry_at(self, line: int, column: int) -> Entry | None:
        """The innermost entry written at a 0-based position."""
        best = None
        for entry in self.entries:
            if entry.line > line:
                break
            if entry.end_line < line:
                continue
            if entry.line == line and entry.column > column and best is not None \
                    and best.line == line:
                continue  # a later entry on the same line, after the cursor
            best = entry
        return best

    def use_output(self, entry: Entry) -> LayerPlan | None:
        """The layer whose output is a use's: the last of the outermost layers it made."""
        if not entry.rows:
            return None
        top = min(len(row.path) for row in entry.rows)
        return [row for row in entry.rows if len(row.path) == top][-1]
