"""The fast way through versions.jsonl: Arrow parses it in batches and checks whole columns at once.

Reading the list entry by entry (json.loads, then the checks, in Python) took ~9 of the 10 s of a
quick verification at 1,000,000 versions. Here Arrow's JSON reader turns each block of lines into
columns, and order, hashes, sizes and parts are checked column-wise; only the Merkle leaves are
computed one entry at a time. This path can only say "every entry is well-formed": as soon as a
block does not parse (Arrow is stricter than json.loads in places, e.g. lone surrogates, integers
beyond 64 bits) or a check fails, it gives up and verify reads the list entry by entry again, which
names what is wrong and where. So it must never accept what the entry-by-entry checks refuse:
tests/test_version_scan.py compares the two on generated lists. decom restore chooses its versions
the same way, falling back to the entry-by-entry reader just as verify does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from decom.archive.expected_index import ExpectedIndex
from decom.archive.manifest import VERSION_LIST, MerkleRoot, leaves_of
from decom.archive.manifest_versions import ENTRY_SCHEMA

BLOCK = 1 << 20


@dataclass
class Scanned:
    """A version list every entry of which passed: its count, Merkle root and, when asked for, the
    missing versions' keys (a full verification's content checks name them)."""

    count: int
    root: str
    missing: set[tuple[str, str]] = field(default_factory=set)


def _file_matches(path: Path, record: Mapping[str, Any]) -> bool:
    """The file has the recorded size, SHA-256 and number of lines, each line "{...}" and ended by "\\n".
    Arrow's JSON reader is given nothing else: pyarrow 26 crashes (SIGSEGV) on a stream whose first
    value is `null` (apache/arrow#47409), and a signed list is still no reason to feed it other shapes."""
    digest, size, lines, opened, closed, last = hashlib.sha256(), 0, 0, 0, 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
            size += len(block)
            lines += block.count(b"\n")
            opened += block.count(b"\n{") + (last == b"\n" and block[:1] == b"{")
            closed += block.count(b"}\n") + (last == b"}" and block[:1] == b"\n")
            last = block[-1:]
    return bool(size == record["size"] and digest.hexdigest() == record["sha256"] and lines == record["entries"]
                and opened == closed == lines and last == b"\n")


def _all(mask: pa.Array) -> bool:
    """Every value true (a null counts as false; no value at all is fine)."""
    return bool(pc.all(pc.fill_null(mask, False)).as_py() is not False)


def _well_formed(batch: pa.RecordBatch, content_paths: pa.Array) -> bool:
    """No null id; every present version with a 64-hex-digit SHA-256, a size, a number of chunks and
    a listed content part."""
    if batch.column("document_id").null_count or batch.column("version_id").null_count:
        return False
    present = batch.filter(pc.invert(pc.fill_null(batch.column("missing"), False)))
    if present.column("size").null_count or present.column("chunks").null_count:
        return False
    return _all(pc.match_substring_regex(present.column("sha256"), "^[0-9a-f]{64}$")) \
        and _all(pc.is_in(present.column("part"), value_set=content_paths))


def _ordered(batch: pa.RecordBatch, previous: tuple[str, str] | None) -> bool:
    """Keys strictly increasing by (document_id, version_id), compared by UTF-8 bytes (the code point
    order the format asks for), within the batch and from the key before it."""
    documents, versions = batch.column("document_id"), batch.column("version_id")
    if previous is not None and batch.num_rows and (documents[0].as_py(), versions[0].as_py()) <= previous:
        return False
    if batch.num_rows < 2:
        return True
    left, right = documents.slice(0, batch.num_rows - 1), documents.slice(1)
    later = pc.greater(versions.slice(1), versions.slice(0, batch.num_rows - 1))
    return _all(pc.or_(pc.less(left, right), pc.and_(pc.equal(left, right), later)))


def scan(archive_dir: Path, record: Mapping[str, Any], content_paths: set[str],
         keep: Callable[[pa.RecordBatch], None] | None, *, merkle: bool = True) -> Scanned | None:
    """Check versions.jsonl against its `version_list` `record` and every entry as verify does; None
    when anything is amiss (the file, a block Arrow will not parse, an entry): then the caller reads
    it entry by entry to report what. `keep`: given the present versions of each batch as it is read
    (ExpectedIndex.SCHEMA's columns, the SHA-256 in hex), for a full verification or the choice of a
    restore, which also get the missing ones' keys; batches given before a None are to be dropped.
    `merkle=False` leaves the root out (Scanned.root is ""): a restore trusts the list by its signed
    SHA-256, and the leaves, hashed one entry at a time, were two thirds of the scan's time."""
    path = archive_dir / VERSION_LIST
    try:
        if not _file_matches(path, record):
            return None
        if record["entries"] == 0:   # an empty file, which Arrow's reader refuses as "an empty stream"
            return Scanned(0, MerkleRoot().hexdigest() if merkle else "")
        reader = pj.open_json(path, read_options=pj.ReadOptions(block_size=BLOCK, use_threads=True),
                              parse_options=pj.ParseOptions(explicit_schema=ENTRY_SCHEMA,
                                                            unexpected_field_behavior="ignore"))
        listed = pa.array(sorted(content_paths), pa.string())
        root, count, previous = MerkleRoot(), 0, None
        scanned = Scanned(0, "")
        for batch in reader:
            if not _well_formed(batch, listed) or not _ordered(batch, previous):
                return None
            count += batch.num_rows
            missing = pc.fill_null(batch.column("missing"), False)
            if merkle:
                documents, versions = batch.column("document_id").to_pylist(), batch.column("version_id").to_pylist()
                root.add_leaves(leaves_of(documents, versions, missing.to_pylist(), batch.column("sha256").to_pylist()))
            if batch.num_rows:
                previous = (batch.column("document_id")[-1].as_py(), batch.column("version_id")[-1].as_py())
            if keep is not None:
                keep(batch.filter(pc.invert(missing)).select(ExpectedIndex.SCHEMA.names))
                gone = batch.filter(missing)
                scanned.missing.update(zip(gone.column("document_id").to_pylist(),
                                           gone.column("version_id").to_pylist(), strict=True))
    except (OSError, ValueError, pa.ArrowException):   # ArrowInvalid is a ValueError, as is a bad UTF-8
        return None
    if count != record["entries"]:   # blank lines, or two entries on one line
        return None
    scanned.count, scanned.root = count, root.hexdigest() if merkle else ""
    return scanned
