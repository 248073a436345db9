"""The full verification's index of what each content part must hold (decom/archive/expected_index.py):
the same answers whether it keeps its rows in memory or, for a large archive, in temporary files by
ranges of parts; the files gone once it is closed; one clear error when they cannot be written."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from decom.archive.expected_index import ExpectedIndex
from decom.archive.verify_files import Expected
from decom.errors import UserError

PARTS = [f"content/part-{n:06d}.parquet" for n in range(1, 8)]
Row = tuple[str, tuple[str, str], Expected]
ROWS: list[Row] = [(PARTS[i * 7 % 6], (f"d{i:05d}", f"v{i % 3}"), Expected(f"{i:064x}", i, 1 + i % 4))
                   for i in range(20_000)]   # more than one flush of its columns; part 7 stays empty


@pytest.fixture
def temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def by_part(rows: list[Row], part: str) -> dict[tuple[str, str], Expected]:
    return {key: expected for p, key, expected in rows if p == part}


def built(entries: int | None, rows: list[Row] = ROWS, *, batches: bool = False) -> ExpectedIndex:
    index = ExpectedIndex(PARTS, entries)
    if batches:   # as version_scan.py hands them over: SHA-256 as hex
        for first in range(0, len(rows), 3000):
            chunk = rows[first:first + 3000]
            index.add_batch(pa.RecordBatch.from_pydict({
                "part": [p for p, _, _ in chunk], "document_id": [k[0] for _, k, _ in chunk],
                "version_id": [k[1] for _, k, _ in chunk], "sha256": [e.sha256 for _, _, e in chunk],
                "size": [e.size for _, _, e in chunk], "chunks": [e.chunks for _, _, e in chunk]}))
    else:
        for part, key, expected in rows:
            index.add(part, key, expected)
    index.finish()
    return index


@pytest.mark.parametrize("batches", [False, True], ids=["entry by entry", "in batches"])
@pytest.mark.parametrize("entries", [None, len(ROWS), 4 * ExpectedIndex.ROWS_IN_MEMORY],
                         ids=["count unknown", "in memory", "in files"])
def test_each_part_gets_exactly_its_versions(entries: int | None, batches: bool, temp_folder: Path) -> None:
    index = built(entries, batches=batches)
    assert index.spilled == (entries == 4 * ExpectedIndex.ROWS_IN_MEMORY)
    assert bool(list(temp_folder.iterdir())) == index.spilled   # files only when the index spills
    for part in PARTS:
        assert index.for_part(part) == by_part(ROWS, part)
    assert index.for_part("content/part-000099.parquet") == {}
    assert index.part_of(("d00007", "v1")) == PARTS[7 * 7 % 6]
    assert index.part_of(("d00007", "v2")) is None
    index.close()
    assert list(temp_folder.iterdir()) == []


def test_two_threads_checking_parts_in_order_get_the_right_versions(temp_folder: Path) -> None:
    index = built(10 * ExpectedIndex.ROWS_IN_MEMORY)   # one part a range: the threads straddle ranges
    assert index.spilled
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            assert list(pool.map(index.for_part, PARTS)) == [by_part(ROWS, part) for part in PARTS]
    index.close()


def test_an_index_given_up_before_it_is_finished_leaves_no_files(temp_folder: Path) -> None:
    index = ExpectedIndex(PARTS, 4 * ExpectedIndex.ROWS_IN_MEMORY)
    for part, key, expected in ROWS * 3:   # enough for a range to be written before finish()
        index.add(part, key, expected)
    assert list(temp_folder.iterdir())
    index.close()
    assert list(temp_folder.iterdir()) == []


def test_a_temporary_folder_that_cannot_be_written_is_one_clear_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked / "tmp"))
    index = ExpectedIndex(PARTS, 4 * ExpectedIndex.ROWS_IN_MEMORY)
    with pytest.raises(UserError, match=r"cannot write the full verification's temporary index in .*a-file/tmp: "
                                        r".*TMPDIR"):
        for part, key, expected in ROWS:
            index.add(part, key, expected)
        index.finish()
    index.close()
    ExpectedIndex(PARTS, 4 * ExpectedIndex.ROWS_IN_MEMORY).close()   # none made while no version is added
    small = built(1000)   # a small index needs no folder
    assert small.for_part(PARTS[0]) == by_part(ROWS, PARTS[0])
    small.close()
