"""Where a plan problem is (the line of each key in the TOML text) and how to word it.

`tomllib` returns plain dicts with no positions. This module re-reads the text with a small
lenient scanner and records, for every key path it sees, the 1-based line where it first
appears. A key path is a tuple of table keys and array indexes, e.g. ``("stages", 1,
"batch_files")`` for the `batch_files` key of the second ``[[stages]]`` table.

What it understands:

* ``[table]`` and ``[[array.of.tables]]`` headers, dotted and quoted (``"a.b"``, ``'x'``) keys;
  each ``[[name]]`` header opens the next index of that array, and ``[name.sub]`` after it
  belongs to the latest element, as in TOML;
* ``key = value`` lines, including dotted keys (``a.b = 1`` records ``a`` and ``a.b``);
* values: basic, literal and multi-line strings (so their contents are never taken for keys),
  arrays spanning lines (each element gets ``path + (index,)``), inline tables (their keys
  are recorded under the key that holds them), comments and bare scalars.

Limits (documented, deliberate):

* Only the first occurrence of a path is kept; the text is assumed to be what `tomllib`
  accepted, so duplicates do not happen in practice.
* Escapes in quoted keys are decoded with `tomllib` itself; a key it cannot decode keeps its
  raw spelling and simply will not be found.
* On text that is not valid TOML the scanner never raises: it gives up on the rest of the
  current line and carries on with the next one, so positions may then be approximate.
* Keys created implicitly (``[a.b]`` creates ``a``) point at the header that created them.

`word_error` turns a pydantic validation error into the key path and a sentence a plan author
understands ("expected an integer, got string '500'").
"""

from __future__ import annotations

import bisect
import difflib
import re
import tomllib
from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any

from pydantic_core import ErrorDetails

KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = frozenset(",]}#\n\r")


class _GiveUp(Exception):
    """The scanner met text it does not understand; skip to the next line."""


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path found in `text` to the 1-based line where it first appears."""
    return _Scanner(text).run()


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, else of its nearest enclosing table or key (e.g. its header)."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def render_path(path: KeyPath) -> str:
    """Human form of a key path: ``stages[1].batch_files``, quoting keys that need it."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        out += ("." if out else "") + text
    return out or "-"


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.found: dict[KeyPath, int] = {}
        self.aot_index: dict[KeyPath, int] = {}
        self.table: KeyPath = ()
        self.newlines = [m.start() for m in re.finditer("\n", text)]

    # -- helpers -------------------------------------------------------------------------
    def line_at(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def record(self, path: KeyPath, pos: int) -> None:
        self.found.setdefault(path, self.line_at(pos))

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < self.n else ""

    def skip_space(self, newlines: bool = False) -> None:
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif newlines and c == "#":
                self.skip_to_eol()
            else:
                return

    def skip_to_eol(self) -> None:
        end = self.s.find("\n", self.i)
        self.i = self.n if end < 0 else end

    # -- statements ----------------------------------------------------------------------
    def run(self) -> dict[KeyPath, int]:
        while self.i < self.n:
            start = self.i
            try:
                self.statement()
            except (_GiveUp, RecursionError):
                self.skip_to_eol()
            self.skip_to_eol()  # trailing comment or garbage
            if self.i < self.n:
                self.i += 1  # the newline itself
            if self.i <= start:  # always make progress, whatever the text is
                self.i = start + 1
        return self.found

    def assignment(self, prefix: KeyPath) -> KeyPath:
        """Read `dotted.key =`, record the line of every prefix of the key under `prefix`, return the key."""
        pos = self.i
        keys = self.dotted_key()
        self.skip_space()
        if self.peek() != "=":
            raise _GiveUp
        self.i += 1
        for end in range(1, len(keys) + 1):
            self.record(prefix + keys[:end], pos)
        return keys

    def statement(self) -> None:
        self.skip_space()
        c = self.peek()
        if c in ("", "\n", "\r", "#"):
            return
        if c == "[":
            self.header()
            return
        keys = self.assignment(self.table)
        self.skip_space()
        self.value(self.table + keys)

    def header(self) -> None:
        pos = self.i
        array = self.peek(1) == "["
        self.i += 2 if array else 1
        self.skip_space()
        keys = self.dotted_key()
        self.skip_space()
        closing = "]]" if array else "]"
        if self.s[self.i:self.i + len(closing)] != closing:
            raise _GiveUp
        self.i += len(closing)
        resolved: KeyPath = ()
        for key in keys[:-1] if array else keys:
            resolved += (key,)
            if resolved in self.aot_index:
                resolved += (self.aot_index[resolved],)
            self.record(resolved, pos)
        if array:
            resolved += (keys[-1],)
            index = self.aot_index.get(resolved, -1) + 1
            self.aot_index[resolved] = index
            self.record(resolved, pos)
            resolved += (index,)
            self.record(resolved, pos)
        self.table = resolved

    # -- keys ----------------------------------------------------------------------------
    def dotted_key(self) -> tuple[str, ...]:
        keys = [self.simple_key()]
        while True:
            self.skip_space()
            if self.peek() != ".":
                return tuple(keys)
            self.i += 1
            self.skip_space()
            keys.append(self.simple_key())

    def simple_key(self) -> str:
        c = self.peek()
        if c in ('"', "'"):
            start = self.i
            self.single_line_string(c)
            raw = self.s[start:self.i]
            if c == "'":
                return raw[1:-1]
            try:
                decoded = tomllib.loads(f"k = {raw}")["k"]
            except (tomllib.TOMLDecodeError, KeyError):
                return raw[1:-1]
            return str(decoded)
        match = _BARE_KEY.match(self.s, self.i)
        if not match:
            raise _GiveUp
        self.i = match.end()
        return match.group()

    # -- values --------------------------------------------------------------------------
    def value(self, path: KeyPath) -> None:
        c = self.peek()
        if c in ('"', "'"):
            if self.s.startswith(c * 3, self.i):
                self.multi_line_string(c)
            else:
                self.single_line_string(c)
        elif c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        else:
            start = self.i
            while self.i < self.n and self.s[self.i] not in _SCALAR_END:
                self.i += 1
            if self.i == start:
                raise _GiveUp

    def single_line_string(self, quote: str) -> None:
        self.i += 1
        while self.i < self.n:
            c = self.s[self.i]
            if c == "\n":
                raise _GiveUp
            if c == "\\" and quote == '"':
                self.i += 2
                continue
            self.i += 1
            if c == quote:
                return
        raise _GiveUp

    def multi_line_string(self, quote: str) -> None:
        self.i += 3
        while self.i < self.n:
            if self.s[self.i] == "\\" and quote == '"':
                self.i += 2
                continue
            if self.s.startswith(quote * 3, self.i):
                self.i += 3
                for _ in range(2):  # up to two quotes may sit right before the delimiter
                    if self.peek() == quote:
                        self.i += 1
                return
            self.i += 1
        raise _GiveUp

    def array(self, path: KeyPath) -> None:
        self.i += 1
        index = 0
        while True:
            self.skip_space(newlines=True)
            if self.i >= self.n:
                raise _GiveUp
            if self.peek() == "]":
                self.i += 1
                return
            self.record(path + (index,), self.i)
            self.value(path + (index,))
            index += 1
            self.skip_space(newlines=True)
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != "]":
                raise _GiveUp

    def inline_table(self, path: KeyPath) -> None:
        self.i += 1
        while True:
            self.skip_space(newlines=True)
            if self.peek() == "}":
                self.i += 1
                return
            keys = self.assignment(path)
            self.skip_space()
            self.value(path + keys)
            self.skip_space(newlines=True)
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != "}":
                raise _GiveUp


# -- wording ------------------------------------------------------------------------------------

def _toml_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
                       (dict, "table"), (list, "array"), (datetime, "date-time"), (date, "date"),
                       (time, "time")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _describe(value: Any) -> str:
    if isinstance(value, dict | list):
        return _toml_type(value)
    shown = repr(value) if not isinstance(value, datetime | date | time) else value.isoformat()
    return f"{_toml_type(value)} {shown if len(shown) <= 40 else shown[:37] + '...'}"


_EXPECTED = {
    "int_type": "an integer", "string_type": "a string", "bool_type": "a boolean (true or false)",
    "float_type": "a number", "list_type": "an array", "dict_type": "a table", "model_type": "a table",
    "model_attributes_type": "a table",
    "datetime_type": "a date-time with an offset, e.g. 2026-11-20T18:00:00Z",
}


def word_error(error: ErrorDetails, stage_kinds: tuple[str, ...],
               allowed_keys: Callable[[KeyPath], list[str]]) -> tuple[KeyPath, str]:
    """A pydantic error on a plan as (key path, message); `allowed_keys` feeds 'did you mean'."""
    loc: KeyPath = tuple(error["loc"])
    if len(loc) >= 3 and loc[0] == "stages" and isinstance(loc[1], int) and loc[2] in stage_kinds:
        loc = loc[:2] + loc[3:]  # drop the discriminator tag pydantic adds
    kind, value, ctx = error["type"], error["input"], error.get("ctx") or {}
    if kind == "missing":
        return loc, ("add at least one [[stages]] table" if loc == ("stages",) else "missing required key")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, allowed_keys(loc[:-1]), n=1, cutoff=0.7)
        return loc, f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
    if kind == "union_tag_invalid":
        found = value.get("kind") if isinstance(value, dict) else value
        return loc + ("kind",), f"unknown stage kind {found!r} (known: {', '.join(stage_kinds)})"
    if kind == "union_tag_not_found":
        return loc + ("kind",), f"missing required key (one of: {', '.join(stage_kinds)})"
    if kind == "too_short" and loc == ("stages",):
        return loc, "add at least one [[stages]] table"
    if kind == "list_type" and loc == ("stages",):
        return loc, f"expected [[stages]] tables, got {_describe(value)}"
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {_describe(value)}"
    if kind == "timezone_aware":
        return loc, "needs an offset, e.g. 2026-11-20T18:00:00Z (a local time is ambiguous)"
    if kind == "greater_than_equal":
        return loc, f"must be at least {ctx.get('ge')}, got {_describe(value)}"
    if kind == "less_than_equal":
        return loc, f"must be at most {ctx.get('le')}, got {_describe(value)}"
    if kind == "literal_error":
        return loc, f"must be {ctx.get('expected')}, got {_describe(value)}"
    if kind == "value_error" and "error" in ctx:
        return loc, str(ctx["error"])
    return loc, str(error["msg"])
