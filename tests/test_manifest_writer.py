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

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decom.archive import manifest_versions
from decom.archive.manifest import VERSION_LIST, MerkleRoot, merkle_root, version_lines
from decom.archive.version_runs import SortedRuns
from decom.errors import UserError
from decom.fileio import write_json

ids = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)  # no lone surrogates: not UTF-8
present = st.fixed_dictionaries({
    "document_id": ids, "version_id": ids, "size": st.integers(0, 1 << 40),
    "sha256": st.text(string.hexdigits[:16], min_size=64, max_size=64),
    "part": st.sampled_from(["content/part-000001.parquet", "content/part-000002.parquet"]),
    "chunks": st.integers(1, 5000)})
missing = st.fixed_dictionaries({"document_id": ids, "version_id": ids, "missing": st.just(True)})


def _columnar(versions: list[dict], parts: int, folder: Path, batch: int = 4096, window: int = 64) -> tuple[bytes, str]:
    """What the backup does: each part's entries in its sidecar, read back as columns, each part
    sorted into a run, the runs merged a window at a time, rendered line by line with the Merkle root."""
    size = max(1, -(-len(versions) // parts))
    runs = SortedRuns(folder / "runs", batch, window)
    for i in range(0, len(versions), size):
        write_json(folder / f"part-{i}.json", {"versions": versions[i:i + size], "changed_since_inventory": []},
                   compact=True)
        runs.add(manifest_versions.read_part_versions(folder / f"part-{i}.json"))
    record, root = manifest_versions.write(folder, runs.windows(), runs.count)
    runs.close()
    assert not (folder / "runs").exists()
    data = (folder / VERSION_LIST).read_bytes()
    assert record["entries"] == len(versions) and record["sha256"] == hashlib.sha256(data).hexdigest()
    return data, root


def _reference(versions: list[dict]) -> tuple[bytes, str]:
    ordered = sorted(versions, key=lambda v: (v["document_id"], v["version_id"]))
    return version_lines(ordered), merkle_root(ordered)


@settings(max_examples=150, deadline=None)
@given(versions=st.lists(st.one_of(present, missing), max_size=40), parts=st.integers(1, 4),
       batch=st.sampled_from([1, 2, 3, 4096]), window=st.integers(1, 3))
def test_the_columnar_version_list_is_byte_for_byte_the_canonical_one(versions: list[dict], parts: int,
                                                                     batch: int, window: int) -> None:
    """Whatever the ids (repeated ones too: their order is the parts' order), however the parts split
    them and however small the runs' batches and the merge's windows."""
    with tempfile.TemporaryDirectory() as folder:
        columnar = _columnar(versions, parts, Path(folder), batch, window)
    assert columnar == _reference(versions)


def test_many_parts_merged_in_many_windows(tmp_path: Path) -> None:
    """Ids that interleave across 9 parts (numbers sort as text), merged in windows of 3 batches of 50."""
    versions = [{"document_id": str(i), "version_id": str(i % 4), "size": i, "sha256": f"{i:064x}",
                 "part": f"content/part-{i // 600 + 1:06d}.parquet", "chunks": 1} for i in range(5000)]
    assert _columnar(versions, 9, tmp_path, batch=50, window=3) == _reference(versions)


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


def test_a_runs_folder_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the backup's state folder should be")
    with pytest.raises(UserError, match=r"cannot write .*state/manifest-runs"):
        SortedRuns(blocked / "manifest-runs")
