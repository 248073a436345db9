"""The verifier's view of manifest.json, read without a Python dict per version.

`json.loads` of a manifest holds every version entry as a dict at once (~1 KB each with its strings:
~100 MB at 100,000 versions, the verifier's only memory that grows with the archive). Here the
top-level object is decoded value by value and the `versions` array is only located; its entries
are then decoded one at a time (`entries`), each let go once checked, and what the content checks
need is kept as Arrow columns (`ExpectedIndex`, ~150 bytes a version).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from decom.archive.verify_files import Expected

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    return match.end() if match else at


def entries(text: str, start: int) -> Iterator[tuple[Any, int]]:
    """(entry, position after it) for each entry of the JSON array whose '[' is at `start`, decoded
    one at a time. ValueError when the array is malformed."""
    at = _skip(text, start + 1)
    if text.startswith("]", at):
        return
    while True:
        item, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        yield item, at
        if text.startswith(",", at):
            at = _skip(text, at + 1)
        elif not text.startswith("]", at):
            raise ValueError(f"expected ',' or ']' at {at}")
        else:
            return


def _array_end(text: str, start: int) -> int:
    """The position after the ']' of the array whose '[' is at `start` (its entries are decoded and dropped)."""
    closing = _skip(text, start + 1)  # where ']' is when the array is empty
    for _, after in entries(text, start):
        closing = after
    return closing + 1


def split_versions(text: str) -> tuple[dict[str, Any], int | None]:
    """The top-level object of `text` without its `versions` array, and the position of that array's
    '[' (None when there is no such array; a `versions` that is not an array stays in the object).
    Duplicate keys: the last one counts, as with json.loads. ValueError when `text` is not exactly
    one JSON object."""
    at = _skip(text, 0)
    if not text.startswith("{", at):
        raise ValueError("not a JSON object")
    top: dict[str, Any] = {}
    versions: int | None = None
    at = _skip(text, at + 1)
    closed = text.startswith("}", at)
    at += 1 if closed else 0
    while not closed:
        key, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if not isinstance(key, str) or not text.startswith(":", at):
            raise ValueError(f"expected a key and ':' at {at}")
        at = _skip(text, at + 1)
        if key == "versions" and text.startswith("[", at):
            versions, at = at, _array_end(text, at)
            top.pop("versions", None)
        else:
            top[key], at = _DECODER.raw_decode(text, at)
            versions = None if key == "versions" else versions
        at = _skip(text, at)
        if text.startswith(",", at):
            at = _skip(text, at + 1)
        elif text.startswith("}", at):
            at, closed = at + 1, True
        else:
            raise ValueError(f"expected ',' or '}}' at {at}")
    if _skip(text, at) != len(text):
        raise ValueError("extra data after the object")
    return top, versions


class ExpectedIndex:
    """What each content part must hold, as Arrow columns sorted by part (built with `add`, then
    `finish`); `for_part` gives one part's versions as the content check wants them. SHA-256 is
    kept as its 32 bytes, not 64 hex digits: the largest column, halved."""

    _FLUSH = 8192
    SCHEMA = pa.schema([("part", pa.string()), ("document_id", pa.string()), ("version_id", pa.string()),
                        ("sha256", pa.binary(32)), ("size", pa.int64()), ("chunks", pa.int64())])

    def __init__(self) -> None:
        self._columns: list[list[Any]] = [[] for _ in self.SCHEMA]
        self._batches: list[pa.RecordBatch] = []
        self._table = self.SCHEMA.empty_table().drop_columns(["part"])
        self._bounds: dict[str, tuple[int, int]] = {}

    def add(self, part: str, key: tuple[str, str], expected: Expected) -> None:
        """Add one version; `expected.sha256` must be 64 lowercase hex digits (verify checks it first)."""
        sha256, size, chunks = expected
        for column, value in zip(self._columns, (part, *key, bytes.fromhex(sha256), size, chunks), strict=True):
            column.append(value)
        if len(self._columns[0]) >= self._FLUSH:
            self._flush()

    def add_batches(self, batches: list[pa.RecordBatch]) -> None:
        """Add versions already as columns (SCHEMA's names and types), as version_scan.py reads them;
        empties `batches`, so that only the index holds them when it is sorted."""
        self._flush()
        at = self.SCHEMA.get_field_index("sha256")
        while batches:
            batch = batches.pop(0)
            digests = pa.array(map(bytes.fromhex, batch.column(at).to_pylist()), pa.binary(32), size=batch.num_rows)
            self._batches.append(batch.set_column(at, self.SCHEMA.field(at), digests).cast(self.SCHEMA))

    def _flush(self) -> None:
        if self._columns[0]:
            self._batches.append(pa.RecordBatch.from_arrays(
                [pa.array(c, f.type) for c, f in zip(self._columns, self.SCHEMA, strict=True)], schema=self.SCHEMA))
            self._columns = [[] for _ in self.SCHEMA]

    def finish(self) -> None:
        """Sort by part. The part's path is then only kept as each part's run of rows (`_bounds`),
        not once a version (~31 bytes a version)."""
        self._flush()
        table = pa.Table.from_batches(self._batches, schema=self.SCHEMA).combine_chunks()
        self._batches = []  # one contiguous copy, then one sorted copy: taking from many chunks costs more
        order = pc.sort_indices(table, [("part", "ascending")])
        parts = table.column("part").chunk(0).take(order) if table.num_rows else pa.array([], pa.string())
        self._table = table.drop_columns(["part"]).take(order)
        del table
        if len(parts):
            runs = pc.run_end_encode(parts)
            first = 0
            for part, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
                self._bounds[part], first = (first, end), end

    def for_part(self, part: str) -> dict[tuple[str, str], Expected]:
        first, end = self._bounds.get(part, (0, 0))
        rows = self._table.slice(first, end - first).to_pydict()
        return {(d, v): Expected(h.hex(), s, c) for d, v, h, s, c in zip(
            rows["document_id"], rows["version_id"], rows["sha256"], rows["size"], rows["chunks"], strict=True)}

    def part_of(self, key: tuple[str, str]) -> str | None:
        """The part the manifest assigns a version to (None: not listed); a scan, for findings only."""
        table = self._table
        rows = pc.indices_nonzero(pc.and_(pc.equal(table.column("document_id"), key[0]),
                                          pc.equal(table.column("version_id"), key[1])))
        if not len(rows):
            return None
        row = rows[0].as_py()
        return next(part for part, (first, end) in self._bounds.items() if first <= row < end)
