"""The backup writes versions.jsonl and the Merkle root from Arrow columns (decom/archive/manifest_versions.py).
Auditors' verifiers follow docs/archive-format.md, whose reference is each entry's canonical JSON on a
line, sorted: the bytes and the root must be those of write_manifest's reference path from dicts,
whatever the ids hold and however the parts listed them."""

from __future__ import annotations

import hashlib
import runpy
import string
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decom.archive import manifest_versions
from decom.archive.manifest import MerkleRoot, merkle_root, version_lines
from decom.fileio import write_json

ids = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)  # no lone surrogates: not UTF-8
present = st.fixed_dictionaries({
    "document_id": ids, "version_id": ids, "size": st.integers(0, 1 << 40),
    "sha256": st.text(string.hexdigits[:16], min_size=64, max_size=64),
    "part": st.sampled_from(["content/part-000001.parquet", "content/part-000002.parquet"]),
    "chunks": st.integers(1, 5000)})
missing = st.fixed_dictionaries({"document_id": ids, "version_id": ids, "missing": st.just(True)})


def _columnar(versions: list[dict], parts: int, folder: Path) -> tuple[bytes, str]:
    """What the backup does: each part's entries in its sidecar, read back as columns, concatenated,
    sorted, rendered line by line with the Merkle root."""
    size = max(1, -(-len(versions) // parts))
    tables = []
    for i in range(0, len(versions), size):
        write_json(folder / f"part-{i}.json", {"versions": versions[i:i + size], "changed_since_inventory": []},
                   compact=True)
        tables.append(manifest_versions.read_part_versions(folder / f"part-{i}.json"))
    table = pa.concat_tables(tables) if tables else manifest_versions.SCHEMA.empty_table()
    root = MerkleRoot()
    data = b"".join(manifest_versions.lines(table, manifest_versions.sort_order(table), root))
    return data, root.hexdigest()


def _reference(versions: list[dict]) -> tuple[bytes, str]:
    ordered = sorted(versions, key=lambda v: (v["document_id"], v["version_id"]))
    return version_lines(ordered), merkle_root(ordered)


@settings(max_examples=150, deadline=None)
@given(versions=st.lists(st.one_of(present, missing), max_size=40), parts=st.integers(1, 4))
def test_the_columnar_version_list_is_byte_for_byte_the_canonical_one(versions: list[dict], parts: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        columnar = _columnar(versions, parts, Path(folder))
    assert columnar == _reference(versions)


@pytest.mark.parametrize("count", [0, 1, manifest_versions.BATCH - 1, manifest_versions.BATCH + 1])
def test_batch_boundaries_change_nothing(count: int, tmp_path: Path) -> None:
    versions = [{"document_id": f"d{i % 977:04d}", "version_id": f"v{i}", "size": i, "sha256": f"{i:064x}",
                 "part": "content/part-000001.parquet", "chunks": 1} if i % 11 else
                {"document_id": f"d{i % 977:04d}", "version_id": f"v{i}", "missing": True}
                for i in range(count, 0, -1)]
    assert _columnar(versions, 3, tmp_path) == _reference(versions)


@pytest.mark.parametrize("count", [0, 1, 8191, 8192, 8193, 2 * 8192 + 5, 3 * 8192 + 1])
@pytest.mark.parametrize("batch", [1, 7, 5000, 8192, 20_000])
def test_the_merkle_root_does_not_depend_on_how_leaves_are_batched(count: int, batch: int) -> None:
    """Leaves wait until a whole subtree of 8,192 can be reduced at once; the root must be the one
    section 7 defines (tools/verify_archive.py computes it level by level, as written there)."""
    tool = runpy.run_path(str(Path(__file__).resolve().parent.parent / "tools" / "verify_archive.py"))
    versions = [{"document_id": f"d{i}", "version_id": "v", "sha256": f"{i:064x}"} for i in range(count)]
    leaves = [hashlib.sha256(f"decom-leaf\x00d{i}\x00v\x00{i:064x}".encode()).digest() for i in range(count)]
    root = MerkleRoot()
    for start in range(0, count, batch):
        root.add_leaves(leaves[start:start + batch])
        if start == batch:   # the root asked for midway places the waiting leaves; adding goes on after
            assert root.hexdigest() == tool["merkle"](versions[:start + batch])
    assert root.hexdigest() == tool["merkle"](versions)
