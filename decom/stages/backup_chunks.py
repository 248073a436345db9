"""Content bytes into the rows of a content part: 1 MiB chunks, their SHA-256, and each version's SHA-256.

The bytes stay in Arrow buffers from the source to the Parquet writer. A batch of versions arrives as
one Arrow binary array (null where the content is missing); splitting a version into chunks only adds
offsets into that array's data buffer, and hashing reads the buffer through memoryviews, so no
content byte is copied into a Python object on the way (hashlib releases the GIL on large inputs).
A version too large to hold whole comes as a stream and is cut into tables of at most one row group.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyarrow as pa

from decom.archive.content_part import CHUNK, CONTENT_SCHEMA

ROW_GROUP_BYTES = 16 << 20


@dataclass
class Piece:
    """Rows for the part file (None when the batch had only missing content) and the versions it completed."""

    table: pa.Table | None
    versions: list[dict[str, Any]]
    content_bytes: int


@dataclass
class _Group:
    """Chunk rows of one row group, pointing into one data buffer."""

    documents: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    indexes: array[int] = field(default_factory=lambda: array("i"))
    offsets: array[int] = field(default_factory=lambda: array("q"))
    hashes: list[str] = field(default_factory=list)
    bounds: list[int] = field(default_factory=list)   # start of each chunk in the data buffer, then the end
    bytes: int = 0

    def add(self, row: Mapping[str, Any], index: int, offset: int, start: int, end: int, sha: str) -> None:
        if not self.bounds:
            self.bounds.append(start)
        self.documents.append(str(row["document_id"]))
        self.versions.append(str(row["version_id"]))
        self.indexes.append(index)
        self.offsets.append(offset)
        self.hashes.append(sha)
        self.bounds.append(end)
        self.bytes += end - start

    def table(self, data: pa.Buffer) -> pa.Table:
        base, end = self.bounds[0], self.bounds[-1]
        relative = array("i", (b - base for b in self.bounds))
        values = pa.Array.from_buffers(pa.binary(), len(self.versions),
                                       [None, pa.py_buffer(relative), data.slice(base, end - base)])
        return pa.table([pa.array(self.documents, pa.string()), pa.array(self.versions, pa.string()),
                         pa.array(self.indexes, pa.int32()), pa.array(self.offsets, pa.int64()), values,
                         pa.array(self.hashes, pa.string())], schema=CONTENT_SCHEMA)


def _as_binary(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_large_binary(values.type) or pa.types.is_binary(values.type):
        return values
    return values.cast(pa.large_binary())  # e.g. a string column: its bytes as they are


def pieces_from_values(rows: Sequence[Mapping[str, Any]], values: pa.Array | pa.ChunkedArray,
                       part: str) -> Iterator[Piece]:
    """Content rows for whole versions: `values[i]` holds every byte of `rows[i]` (null: missing)."""
    values = _as_binary(values)
    if len(values) != len(rows):
        raise ValueError(f"{len(values)} content values for {len(rows)} versions")
    buffers = values.buffers()
    if buffers[1] is None:  # an array of nulls only
        bounds: Sequence[int] = [0] * (len(values) + 1)
    else:
        raw = memoryview(buffers[1])
        wide = raw.cast("q") if pa.types.is_large_binary(values.type) else raw.cast("i")
        bounds = wide[values.offset:values.offset + len(values) + 1]
    data = buffers[2] if buffers[2] is not None else pa.py_buffer(b"")
    view = memoryview(data)
    valid = values.is_valid().to_pylist() if values.null_count else None
    group, done = _Group(), []
    for i, row in enumerate(rows):
        entry: dict[str, Any] = {"document_id": row["document_id"], "version_id": row["version_id"]}
        if valid is not None and not valid[i]:
            done.append({**entry, "missing": True})
            continue
        start, end = bounds[i], bounds[i + 1]
        cuts = range(start, end, CHUNK) if end > start else range(start, start + 1)
        for index, at in enumerate(cuts):
            stop = min(at + CHUNK, end)
            group.add(row, index, at - start, at, stop, hashlib.sha256(view[at:stop]).hexdigest())
            if group.bytes >= ROW_GROUP_BYTES:
                yield Piece(group.table(data), done, group.bytes)
                group, done = _Group(), []
        sha = group.hashes[-1] if len(cuts) == 1 and group.hashes else None
        done.append({**entry, "size": end - start, "part": part, "chunks": len(cuts),
                     "sha256": sha or hashlib.sha256(view[start:end]).hexdigest()})
    if group.versions:
        yield Piece(group.table(data), done, group.bytes)
    elif done:
        yield Piece(None, done, 0)


def pieces_from_stream(row: Mapping[str, Any], stream: BinaryIO, part: str) -> Iterator[Piece]:
    """Content rows for one large version read from a stream, one row group at a time."""
    entry: dict[str, Any] = {"document_id": row["document_id"], "version_id": row["version_id"]}
    digest = hashlib.sha256()
    offset, index = 0, 0
    pending: tuple[pa.Table, int] | None = None  # held back: the last one carries the finished version
    with stream:
        while True:
            blocks, hashes, size = [], [], 0
            while size < ROW_GROUP_BYTES and (block := stream.read(CHUNK)):
                digest.update(block)
                blocks.append(block)
                hashes.append(hashlib.sha256(block).hexdigest())
                size += len(block)
            if not blocks:
                if index:
                    break
                blocks, hashes = [b""], [hashlib.sha256(b"").hexdigest()]  # empty content: one empty chunk
            starts, at = [], offset
            for block in blocks:
                starts.append(at)
                at += len(block)
            table = pa.table([pa.array([str(row["document_id"])] * len(blocks), pa.string()),
                              pa.array([str(row["version_id"])] * len(blocks), pa.string()),
                              pa.array(range(index, index + len(blocks)), pa.int32()),
                              pa.array(starts, pa.int64()), pa.array(blocks, pa.binary()),
                              pa.array(hashes, pa.string())], schema=CONTENT_SCHEMA)
            offset, index = at, index + len(blocks)
            if pending is not None:
                yield Piece(pending[0], [], pending[1])
            pending = (table, size)
            if size < ROW_GROUP_BYTES:
                break
    assert pending is not None
    yield Piece(pending[0], [{**entry, "size": offset, "sha256": digest.hexdigest(), "part": part, "chunks": index}],
                pending[1])
