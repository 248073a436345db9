"""The manifest's `versions` held as Arrow columns while it is written, not as a dict per version.

A dict per version costs ~1 KB with its strings, and json.dumps of the whole manifest adds the text
on top. As columns a version takes ~100 bytes: the parts' sidecars are parsed by Arrow, sorted by
Arrow, and the entries rendered a batch at a time into the manifest's bytes, which must be whole in
memory for Ed25519 (about 180 bytes a version). The bytes are exactly those of
canonical_json(build_manifest(...)) for the same entries: tests/test_manifest_writer.py compares them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from decom.archive.keys import canonical_json
from decom.archive.manifest import MerkleRoot, leaf_of

SCHEMA = pa.schema([("document_id", pa.string()), ("version_id", pa.string()), ("missing", pa.bool_()),
                    ("size", pa.int64()), ("sha256", pa.string()), ("part", pa.string()),
                    ("chunks", pa.int64())])
_SIDECAR = pa.schema([("versions", pa.list_(pa.struct(list(SCHEMA))))])
BATCH = 8192


def read_part_versions(sidecar: Path) -> pa.Table:
    """The `versions` of a content part's sidecar (one line of compact JSON, written by the part's
    step) as columns, parsed by Arrow without a Python object per version."""
    data = sidecar.read_bytes()
    table = pj.read_json(pa.py_buffer(data), read_options=pj.ReadOptions(block_size=len(data) + 1),
                         parse_options=pj.ParseOptions(explicit_schema=_SIDECAR, unexpected_field_behavior="ignore"))
    entries = pc.list_flatten(table.column("versions")).combine_chunks()
    versions = pa.Table.from_arrays(entries.flatten(), schema=SCHEMA)
    return versions.set_column(2, "missing", pc.fill_null(versions.column("missing"), False))


def sort_order(versions: pa.Table) -> pa.Array:
    """Row order by (document_id, version_id), compared by code point (UTF-8 bytes sort the same)."""
    return pc.sort_indices(versions, sort_keys=[("document_id", "ascending"), ("version_id", "ascending")])


def _columns(versions: pa.Table, order: pa.Array, names: list[str]) -> Iterator[list[list[Any]]]:
    """The named columns in `order`, as Python lists, a batch of rows at a time."""
    selected = versions.select(names)
    for start in range(0, len(order), BATCH):
        batch = selected.take(order[start:start + BATCH])
        yield [batch.column(name).to_pylist() for name in names]


def merkle_root(versions: pa.Table, order: pa.Array) -> str:
    root = MerkleRoot()
    for documents, ids, missing, hashes in _columns(versions, order, ["document_id", "version_id", "missing",
                                                                       "sha256"]):
        root.add_leaves([leaf_of(document, version, None if gone else sha)
                         for document, version, gone, sha in zip(documents, ids, missing, hashes, strict=True)])
    return root.hexdigest()


def render(head: Mapping[str, Any], versions: pa.Table, order: pa.Array) -> bytearray:
    """Canonical JSON of `head` with `versions` (in `order`) added under the key "versions", which sorts
    after every other key of a manifest, so the entries can be appended at the end of the object.
    Each entry is its canonical JSON: keys in code point order, strings escaped as json.dumps does
    with ensure_ascii=False."""
    if not head or max(head) >= "versions":
        raise ValueError("the manifest's other keys must sort before 'versions'")
    data = bytearray(canonical_json(dict(head))[:-1])
    data += b',"versions":['
    text = encode_basestring
    for start, columns in zip(range(0, len(order), BATCH), _columns(versions, order, SCHEMA.names), strict=True):
        entries = [f'{{"document_id":{text(d)},"missing":true,"version_id":{text(v)}}}' if gone else
                   f'{{"chunks":{c},"document_id":{text(d)},"part":{text(p)},"sha256":{text(s)},"size":{z},'
                   f'"version_id":{text(v)}}}'
                   for d, v, gone, z, s, p, c in zip(*columns, strict=True)]
        if start:
            data += b","
        data += ",".join(entries).encode()
    data += b"]}"
    return data
