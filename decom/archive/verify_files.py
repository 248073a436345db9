"""Full verification of one archive file: its SHA-256, footer, every page, and for a content part
every chunk and version (docs/archive-format.md section 8, steps 4-7).

A file up to IN_MEMORY bytes is read from disk once: hashed as it is read, then decrypted from
memory. Files are checked on two threads (reads, hashing and decryption release the GIL); each
check collects its findings, which the verifier reports in manifest order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from decom.archive.content_part import CHUNK, CONTENT_SCHEMA
from decom.archive.filehash import read_whole, sha256_file
from decom.archive.pme import ArchiveKeyError, open_encrypted
from decom.errors import first_line

CONTENT_COLUMNS = CONTENT_SCHEMA.names
IN_MEMORY = 256 << 20   # larger files are hashed in one pass and decrypted in a second
_PER_FILE = 10          # content problems reported per file before "and N more"
_DATA_BATCH = 65_536    # rows per batch when decrypting a data file
_CONTENT_BATCH = 16     # rows per batch of a content part (16 chunks: at most 16 MiB)

Finding = tuple[str, str]   # (what, kind) about this file
Key = tuple[str, str]       # (document_id, version_id)


class Expected(NamedTuple):
    """What the manifest records of a version a content part holds."""

    sha256: str
    size: int
    chunks: int


@dataclass
class FileCheck:
    """What checking one file found."""

    digest: str | OSError | None = None          # None: not hashed here
    rows: int = 0
    footer: list[Finding] = field(default_factory=list)
    pages: list[Finding] = field(default_factory=list)
    content_bytes: int = 0


def footer_findings(parquet: pq.ParquetFile, entry: dict[str, Any]) -> list[Finding]:
    found: list[Finding] = []
    rows = parquet.metadata.num_rows
    if rows != entry["rows"]:
        found.append((f"holds {rows} rows, the manifest says {entry['rows']}", "rows"))
    if entry.get("kind") == "content" and parquet.schema_arrow.names != CONTENT_COLUMNS:
        found.append((f"columns {parquet.schema_arrow.names} are not the content schema {CONTENT_COLUMNS}",
                      "content"))
    return found


def check_file(file: Path, size: int, entry: dict[str, Any], private: X25519PrivateKey, archive_id: str,
               expected: dict[Key, Expected], placed: Callable[[Key], str | None], bar: Any) -> FileCheck:
    """Hash, open and decrypt one listed file (full verification)."""
    path = entry["path"]
    check = FileCheck()
    source: Path | pa.BufferReader = file
    try:
        if size <= IN_MEMORY:
            data, check.digest = read_whole(str(file), size)
            source = pa.BufferReader(data)
        else:
            check.digest = sha256_file(str(file), size)
    except OSError as exc:
        check.digest = exc
        bar.update(size)
        return check
    try:
        parquet = open_encrypted(source, private, archive_id, path, checksums=False)  # GCM + SHA-256 cover it
    except ArchiveKeyError as exc:
        check.footer.append((str(exc), exc.kind))
        bar.update(size)
        return check
    check.rows = parquet.metadata.num_rows
    check.footer = footer_findings(parquet, entry)
    _Reader(check, entry, parquet, bar).run(expected, placed)
    return check


class _Reader:
    """Decrypts one file page by page; for a content part, reassembles and checks its versions."""

    def __init__(self, check: FileCheck, entry: dict[str, Any], parquet: pq.ParquetFile, bar: Any) -> None:
        self.check, self.entry, self.parquet, self.bar = check, entry, parquet, bar
        self.total_rows = max(parquet.metadata.num_rows, 1)
        self.rows = 0
        self.advanced = 0
        self.reported = 0

    def problem(self, what: str) -> None:
        self.reported += 1
        if self.reported <= _PER_FILE:
            self.check.pages.append((what, "content"))

    def advance(self, rows: int) -> None:
        self.rows += rows
        target = self.entry["size"] * min(self.rows, self.total_rows) // self.total_rows
        self.bar.update(target - self.advanced)
        self.advanced = target

    def run(self, expected: dict[Key, Expected], placed: Callable[[Key], str | None]) -> None:
        try:
            if self.entry.get("kind") == "content":
                self.content(expected, placed)
            else:
                for batch in self.batches(_DATA_BATCH):
                    self.advance(batch.num_rows)
        except ArchiveKeyError as exc:
            self.check.pages.append((str(exc), exc.kind))
        finally:
            self.bar.update(self.entry["size"] - self.advanced)
        if self.reported > _PER_FILE:
            self.check.pages.append((f"and {self.reported - _PER_FILE} more content problem(s)", "content"))

    def batches(self, size: int) -> Any:
        try:
            yield from self.parquet.iter_batches(batch_size=size)
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveKeyError("corrupt", f"a page does not decrypt or fails its checksum "
                                             f"({first_line(exc)})") from None

    def content(self, expected: dict[Key, Expected], placed: Callable[[Key], str | None]) -> None:
        assembled: dict[tuple[str, str], _Assembly] = {}
        strays: set[tuple[str, str]] = set()
        current: _Assembly | None = None
        if self.parquet.schema_arrow.names != CONTENT_COLUMNS:
            return  # the footer check reported it
        for batch in self.batches(_CONTENT_BATCH):
            names = [batch.column(i).to_pylist() for i in (0, 1, 2, 3, 5)]
            chunks = _views(batch.column(4))
            for document_id, version_id, index, offset, chunk_sha, data in zip(*names, chunks, strict=True):
                key = (document_id, version_id)
                if key not in expected:
                    if key not in strays:
                        strays.add(key)
                        elsewhere = placed(key)
                        self.problem(f"holds {version_name(key)}, which the manifest " + (
                            "does not list" if elsewhere is None else "records as missing in the source"
                            if elsewhere == "missing" else f"assigns to {elsewhere}"))
                    continue
                state = assembled.setdefault(key, _Assembly())
                if state is not current:
                    if current is not None:
                        current.close()
                    current = state
                    if state.closed:
                        self.problem(f"{version_name(key)}: chunk {index} is not in the rows right after the version's "
                                     "other chunks (section 3: a version's chunks are consecutive rows)")
                sha = hashlib.sha256(data).hexdigest()
                if sha != chunk_sha:
                    self.problem(f"{version_name(key)}: chunk {index} does not match its chunk_sha256")
                if index != state.chunks or offset != state.size:
                    self.problem(f"{version_name(key)}: chunk {index} at offset {offset} is out of place "
                                 f"(expected chunk {state.chunks} at offset {state.size})")
                if len(data) > CHUNK:
                    self.problem(f"{version_name(key)}: chunk {index} holds {len(data)} bytes, more than 1 MiB")
                state.add(data, sha)
            self.advance(batch.num_rows)
        for key, want in expected.items():
            found = assembled.get(key)
            if found is None:
                self.problem(f"lacks {version_name(key)}, which the manifest assigns to it")
                continue
            state = found
            self.check.content_bytes += state.size
            if state.chunks != want.chunks:
                self.problem(f"{version_name(key)}: {state.chunks} chunk(s), the manifest says {want.chunks}")
            if state.size != want.size:
                self.problem(f"{version_name(key)}: {state.size} bytes reassembled, the manifest says {want.size}")
            digest = state.hexdigest()
            if digest is not None and digest != want.sha256:
                self.problem(f"{version_name(key)}: the reassembled content's SHA-256 {digest} does not "
                             f"match the manifest's {want.sha256} (the document's bytes changed)")


def version_name(key: tuple[str, str]) -> str:
    """How a problem names a version (built only when there is a problem to report)."""
    return f"version {key[1]} of document {key[0]}"


def _views(column: pa.Array) -> list[memoryview]:
    """Each value of a binary column as a memoryview into its data buffer (no copy; null: empty)."""
    buffers = column.buffers()
    if buffers[2] is None or buffers[1] is None:
        return [memoryview(b"")] * len(column)
    raw = memoryview(buffers[1])
    bounds = (raw.cast("q") if pa.types.is_large_binary(column.type) else raw.cast("i"))[
        column.offset:column.offset + len(column) + 1]
    data = memoryview(buffers[2])
    valid = column.is_valid().to_pylist() if column.null_count else None
    return [data[bounds[i]:bounds[i + 1]] if valid is None or valid[i] else memoryview(b"")
            for i in range(len(column))]


class _Assembly:
    """One version's chunks as they stream past: size, count, and the SHA-256 of their concatenation.

    For a one-chunk version that is the chunk's own hash, so its bytes are hashed once; the chunk is
    kept (a view into its batch) only until the next version's rows begin, as chunks of a version
    are consecutive rows. A version whose chunks are not has no digest here (reported as such).
    """

    __slots__ = ("size", "chunks", "closed", "_first", "_first_sha", "_digest", "_broken")  # one a version of a part

    def __init__(self) -> None:
        self.size = 0
        self.chunks = 0
        self.closed = False
        self._first: memoryview | None = None
        self._first_sha = ""
        self._digest: Any = None
        self._broken = False

    def add(self, data: memoryview, sha: str) -> None:
        if self.chunks == 0:
            self._first, self._first_sha = data, sha
        elif self._digest is not None:
            self._digest.update(data)
        elif self._first is not None:
            self._digest = hashlib.sha256(self._first)
            self._digest.update(data)
            self._first = None
        else:  # the first chunk's bytes are gone: rows of another version came between
            self._broken = True
        self.size += len(data)
        self.chunks += 1

    def close(self) -> None:
        """The rows of another version begin: let go of the first chunk's bytes."""
        self.closed = True
        self._first = None

    def hexdigest(self) -> str | None:
        if self._broken:
            return None
        return str(self._digest.hexdigest()) if self._digest is not None else self._first_sha
