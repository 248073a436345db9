"""The backup writes manifest.json from Arrow columns (decom/archive/manifest_versions.py). Auditors'
verifiers follow docs/archive-format.md, whose reference is canonical JSON of the whole manifest as
one object: the bytes must be identical, whatever the ids hold and however the parts listed them."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from decom.archive import manifest_versions
from decom.archive.keys import canonical_json
from decom.archive.manifest import build_manifest, manifest_head
from decom.fileio import write_json

SIGNER = Ed25519PrivateKey.generate().public_key()
HEAD = {"archive_id": "a" * 32, "run_id": "r1", "plan_name": "ministry «архив» 档案", "plan_sha256": "0" * 64,
        "created_at": "2026-12-02T00:00:00+00:00", "source": "postgresql://edm@db/edm", "freeze": None,
        "signer": SIGNER, "recipients": ["x25519:ab"],
        "files": [{"seq": 2, "path": "content/part-000001.parquet"}, {"seq": 1, "path": "data/documents.parquet"}],
        "counts": {"documents": 3}}

ids = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)  # no lone surrogates: not UTF-8
present = st.fixed_dictionaries({
    "document_id": ids, "version_id": ids, "size": st.integers(0, 1 << 40),
    "sha256": st.text(string.hexdigits[:16], min_size=64, max_size=64),
    "part": st.sampled_from(["content/part-000001.parquet", "content/part-000002.parquet"]),
    "chunks": st.integers(1, 5000)})
missing = st.fixed_dictionaries({"document_id": ids, "version_id": ids, "missing": st.just(True)})


def _columnar(versions: list[dict], parts: int, folder: Path) -> bytes:
    """What the backup does: each part's entries in its sidecar, read back as columns, concatenated,
    sorted, rendered."""
    size = max(1, -(-len(versions) // parts))
    tables = []
    for i in range(0, len(versions), size):
        write_json(folder / f"part-{i}.json", {"versions": versions[i:i + size], "changed_since_inventory": []},
                   compact=True)
        tables.append(manifest_versions.read_part_versions(folder / f"part-{i}.json"))
    table = pa.concat_tables(tables) if tables else manifest_versions.SCHEMA.empty_table()
    order = manifest_versions.sort_order(table)
    head = {**manifest_head(**HEAD), "merkle_root": manifest_versions.merkle_root(table, order)}
    return bytes(manifest_versions.render(head, table, order))


@settings(max_examples=150, deadline=None)
@given(versions=st.lists(st.one_of(present, missing), max_size=40), parts=st.integers(1, 4))
def test_the_columnar_manifest_is_byte_for_byte_the_canonical_one(versions: list[dict], parts: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        columnar = _columnar(versions, parts, Path(folder))
    assert columnar == canonical_json(build_manifest(versions=versions, **HEAD))


@pytest.mark.parametrize("count", [0, 1, manifest_versions.BATCH - 1, manifest_versions.BATCH + 1])
def test_batch_boundaries_change_nothing(count: int, tmp_path: Path) -> None:
    versions = [{"document_id": f"d{i % 977:04d}", "version_id": f"v{i}", "size": i, "sha256": f"{i:064x}",
                 "part": "content/part-000001.parquet", "chunks": 1} if i % 11 else
                {"document_id": f"d{i % 977:04d}", "version_id": f"v{i}", "missing": True}
                for i in range(count, 0, -1)]
    assert _columnar(versions, 3, tmp_path) == canonical_json(build_manifest(versions=versions, **HEAD))


def test_a_head_key_sorting_after_versions_is_refused() -> None:
    table = manifest_versions.SCHEMA.empty_table()
    with pytest.raises(ValueError, match="versions"):
        manifest_versions.render({"zeta": 1}, table, manifest_versions.sort_order(table))
