"""The archive's versions held as Arrow columns while versions.jsonl is written, not as a dict per version.

A dict per version costs ~1 KB with its strings. As columns a version takes ~100 bytes: the parts'
sidecars are parsed by Arrow, sorted by Arrow (across parts a window at a time: version_runs.py),
and the entries rendered and written a batch at a time. The bytes are exactly those
write_manifest writes from dicts for the same entries, and the Merkle root the same:
tests/test_manifest_writer.py compares them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from decom.archive.manifest import MerkleRoot, leaves_of, write_version_list

# One entry of versions.jsonl (and of a part's sidecar) as columns
ENTRY_SCHEMA = pa.schema([("document_id", pa.string()), ("version_id", pa.string()), ("missing", pa.bool_()),
                          ("size", pa.int64()), ("sha256", pa.string()), ("part", pa.string()),
                          ("chunks", pa.int64())])
_SIDECAR = pa.schema([("versions", pa.list_(pa.struct(list(ENTRY_SCHEMA))))])
# The part's path, the same for every version of a part, as a dictionary: 31 bytes less a version
SCHEMA = ENTRY_SCHEMA.set(5, pa.field("part", pa.dictionary(pa.int32(), pa.string())))
BATCH = 8192


def read_part_versions(sidecar: Path) -> pa.Table:
    """The `versions` of a content part's sidecar (one line of compact JSON, written by the part's
    step) as columns, parsed by Arrow without a Python object per version."""
    data = sidecar.read_bytes()
    table = pj.read_json(pa.py_buffer(data), read_options=pj.ReadOptions(block_size=len(data) + 1),
                         parse_options=pj.ParseOptions(explicit_schema=_SIDECAR, unexpected_field_behavior="ignore"))
    entries = pc.list_flatten(table.column("versions")).combine_chunks()
    versions = pa.Table.from_arrays(entries.flatten(), schema=ENTRY_SCHEMA)
    versions = versions.set_column(5, SCHEMA.field("part"), pc.dictionary_encode(versions.column("part")))
    return versions.set_column(2, "missing", pc.fill_null(versions.column("missing"), False))


def sort_order(versions: pa.Table) -> pa.Array:
    """Row order by (document_id, version_id), compared by code point (UTF-8 bytes sort the same)."""
    return pc.sort_indices(versions, sort_keys=[("document_id", "ascending"), ("version_id", "ascending")])


def _columns(versions: pa.Table, order: pa.Array | None, names: list[str]) -> Iterator[list[list[Any]]]:
    """The named columns in `order` (None: as they are), as Python lists, a batch of rows at a time."""
    selected = versions.select(names)
    for start in range(0, versions.num_rows, BATCH):
        batch = selected.slice(start, BATCH) if order is None else selected.take(order[start:start + BATCH])
        yield [batch.column(name).to_pylist() for name in names]


def lines(versions: pa.Table, order: pa.Array | None, root: MerkleRoot) -> Iterator[bytes]:
    """versions.jsonl's bytes, a batch of entries at a time, in `order` (None: already in order): each
    entry's canonical JSON (keys in code point order, strings escaped as json.dumps does with
    ensure_ascii=False) and "\\n". Each entry's Merkle leaf is added to `root` as its batch is rendered."""
    text = encode_basestring
    for d_ids, v_ids, missing, sizes, hashes, parts, chunks in _columns(versions, order, SCHEMA.names):
        root.add_leaves(leaves_of(d_ids, v_ids, missing, hashes))
        yield "".join(
            f'{{"document_id":{text(d)},"missing":true,"version_id":{text(v)}}}\n' if gone else
            f'{{"chunks":{c},"document_id":{text(d)},"part":{text(p)},"sha256":{text(s)},"size":{z},'
            f'"version_id":{text(v)}}}\n'
            for d, v, gone, z, s, p, c in zip(d_ids, v_ids, missing, sizes, hashes, parts, chunks, strict=True)
        ).encode()


def write(archive_dir: Path, tables: Iterable[pa.Table], count: int) -> tuple[dict[str, Any], str]:
    """Write versions.jsonl from `tables` already in order and together holding `count` versions (as
    SortedRuns.windows gives them): (its version_list record, the Merkle root)."""
    root = MerkleRoot()
    record = write_version_list(archive_dir, (block for table in tables for block in lines(table, None, root)), count)
    return record, root.hexdigest()
