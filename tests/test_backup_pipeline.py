"""The backup's fast path, part by part: chunking Arrow content without copies, the read-ahead threads,
the hashing O_DIRECT file sink, pooled ADBC connections and bulk blob batches from real databases.

The end-to-end behaviour (archives that verify and restore, kill -9, disk full) is in test_backup.py;
these tests pin the pieces whose edge cases an end-to-end run rarely reaches.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from decom.archive.filehash import read_whole, sha256_file, sha256_files
from decom.archive.sink import BLOCK, HashingSink
from decom.read_ahead import read_ahead
from decom.stages.backup_chunks import CHUNK, ROW_GROUP_BYTES, pieces_from_stream, pieces_from_values


def _rows(n: int) -> list[dict[str, str]]:
    return [{"document_id": f"d{i}", "version_id": f"v{i}"} for i in range(n)]


def _reassemble(pieces: list) -> tuple[dict[str, bytes], dict[str, dict]]:
    """Bytes per version from the chunk rows (checking each chunk's hash and offset), and the entries."""
    chunks: dict[str, list[tuple[int, int, bytes]]] = {}
    entries = {}
    for piece in pieces:
        if piece.table is not None:
            for row in piece.table.to_pylist():
                assert hashlib.sha256(row["bytes"]).hexdigest() == row["chunk_sha256"]
                assert len(row["bytes"]) <= CHUNK
                chunks.setdefault(row["version_id"], []).append((row["chunk_index"], row["offset"], row["bytes"]))
        for entry in piece.versions:
            entries[entry["version_id"]] = entry
    content = {}
    for version, parts in chunks.items():
        parts.sort()
        assert [p[0] for p in parts] == list(range(len(parts))), f"{version}: chunk indexes not 0..n-1"
        position = 0
        for _, offset, data in parts:
            assert offset == position
            position += len(data)
        content[version] = b"".join(p[2] for p in parts)
    return content, entries


SIZES = [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17, 0, 7 * CHUNK]


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary()])
def test_whole_versions_are_cut_into_1_mib_chunks_with_exact_hashes_and_missing_ones_marked(kind) -> None:
    blobs = [os.urandom(size) for size in SIZES]
    values: list[bytes | None] = [*blobs[:4], None, *blobs[4:]]
    rows = _rows(len(values))
    pieces = list(pieces_from_values(rows, pa.array(values, kind), "content/part-000001.parquet"))
    content, entries = _reassemble(pieces)
    assert [e["version_id"] for p in pieces for e in p.versions] == [r["version_id"] for r in rows], "order kept"
    for row, value in zip(rows, values, strict=True):
        entry = entries[row["version_id"]]
        if value is None:
            assert entry == {"document_id": row["document_id"], "version_id": row["version_id"], "missing": True}
            assert row["version_id"] not in content
            continue
        assert content[row["version_id"]] == value
        assert entry["size"] == len(value) and entry["sha256"] == hashlib.sha256(value).hexdigest()
        assert entry["chunks"] == max(1, -(-len(value) // CHUNK))
    assert all(p.table is None or p.table.num_rows for p in pieces)
    assert max(p.content_bytes for p in pieces) < ROW_GROUP_BYTES + CHUNK, "row groups stay bounded"


def test_a_slice_of_a_larger_array_and_an_array_of_nulls_only() -> None:
    blobs = [os.urandom(1000 + i) for i in range(10)]
    array = pa.array(blobs, pa.binary()).slice(3, 4)  # offset into the buffers
    content, entries = _reassemble(list(pieces_from_values(_rows(4), array, "p")))
    assert [content[f"v{i}"] for i in range(4)] == blobs[3:7]
    nulls = list(pieces_from_values(_rows(3), pa.nulls(3, pa.binary()), "p"))
    assert [p.table for p in nulls] == [None]
    assert [e.get("missing") for e in nulls[0].versions] == [True, True, True]


def test_a_streamed_version_matches_the_whole_version_path_exactly() -> None:
    for size in (0, 5, CHUNK, ROW_GROUP_BYTES, ROW_GROUP_BYTES + CHUNK + 3):
        data = os.urandom(size)
        row = {"document_id": "d", "version_id": "v"}
        streamed = list(pieces_from_stream(row, io.BytesIO(data), "p"))
        whole = list(pieces_from_values([row], pa.array([data], pa.binary()), "p"))
        assert _reassemble(streamed) == _reassemble(whole), f"size {size}"
        assert sum(len(p.versions) for p in streamed) == 1


def test_read_ahead_hands_over_items_and_errors_and_releases_its_source_when_stopped_early() -> None:
    closed = threading.Event()

    def source():
        try:
            yield from range(1000)
        finally:
            closed.set()

    with read_ahead(source(), 2, "test-reader") as items:
        assert [next(items) for _ in range(3)] == [0, 1, 2]
    assert closed.wait(5), "the source generator was closed on stop"
    assert not any(t.name == "test-reader" for t in threading.enumerate())

    def failing():
        yield 1
        raise OSError("disk gone")

    items = read_ahead(failing(), 2, "test-reader")
    assert next(items) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(items)
    assert list(read_ahead(iter(range(5)), 1, "test-reader")) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, BLOCK - 1, BLOCK,
                                  BLOCK + 1, 3 * BLOCK + 4096 * 3 + 5])
def test_the_archive_file_sink_writes_every_byte_and_hashes_what_it_wrote(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    target = tmp_path / "part.parquet"
    sink = HashingSink(target)
    position, step = 0, 1
    while position < size:  # uneven writes, as a Parquet writer makes them
        step = step * 7 % 1_000_003 + 1
        sink.write(data[position:position + step])
        position += step
    assert sink.tell() == size
    sink.close()
    sink.sync_and_close()
    assert target.read_bytes() == data
    assert sink.written == size and sink.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_sink_after_another_holds_only_its_own_bytes(tmp_path: Path) -> None:
    """Sinks reuse the buffers of closed ones: nothing of an earlier file may reach a later one."""
    first = b"\xaa" * (2 * BLOCK + 12_345)
    sink = HashingSink(tmp_path / "first")
    sink.write(first)
    sink.close()
    sink.sync_and_close()
    for name, data in [("short", b"\x01" * 100), ("empty", b""), ("aligned", b"\x02" * BLOCK)]:
        later = HashingSink(tmp_path / name)
        later.write(data)
        later.close()
        later.sync_and_close()
        assert (tmp_path / name).read_bytes() == data
        assert later.hexdigest() == hashlib.sha256(data).hexdigest()
    failed = HashingSink(tmp_path / "failed")  # a sink given up halfway also hands its buffers on
    failed.write(b"\x03" * (BLOCK + 1))
    failed.abort()
    again = HashingSink(tmp_path / "again")
    again.write(b"\x04" * 5000)
    again.close()
    again.sync_and_close()
    assert (tmp_path / "again").read_bytes() == b"\x04" * 5000


def test_file_hashes_come_back_in_order_with_an_error_in_place_of_an_unreadable_file(tmp_path: Path) -> None:
    files = []
    for i, size in enumerate([10, 3 << 20, 0, 5 << 20, 9 << 20]):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(size))
        files.append((str(path), size))
    files.insert(2, (str(tmp_path / "gone"), 2 << 20))
    results = list(sha256_files(files))
    for (path, size), result in zip(files, results, strict=True):
        if path.endswith("gone"):
            assert isinstance(result, FileNotFoundError)
        else:
            assert result == hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha256_file(path, size)


def _blob_adapter(url: str, tmp_path: Path):
    from decom.adapters.sql_generic import SqlGenericAdapter

    from decom.adapter import SourceConfig

    engine = sa.create_engine(url)
    blob_type = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    table = sa.Table("blob_store", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("data", blob_type))
    table.create(engine)
    blobs = {i: os.urandom(i * 1000 + (3 * CHUNK if i == 7 else 0)) for i in range(1, 30)}
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "data": b} for i, b in blobs.items()])
    engine.dispose()
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[adapter]\ncapabilities = ["content_blobs"]\n'
                       '[entities.documents]\nquery = "SELECT id AS document_id FROM blob_store"\n'
                       '[content]\nkind = "blob"\nquery = "SELECT data FROM blob_store WHERE id = :content_ref"\n'
                       'bulk_query = "SELECT id AS content_ref, data FROM blob_store"\n', encoding="utf-8")
    adapter = SqlGenericAdapter(SourceConfig(adapter="sql_generic", url=url, content_root=None, plan_dir=tmp_path),
                                mapping)
    return adapter, blobs


@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_bulk_blob_batches_follow_the_requested_order_bound_their_size_and_mark_missing_refs(
        server: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    adapter, blobs = _blob_adapter(request.getfixturevalue(server), tmp_path)
    try:
        order = [*range(29, 0, -1), 999]  # reverse key order, and a ref with no blob
        versions = [{"version_id": f"v{i}", "document_id": f"d{i}", "content_ref": str(i),
                     "size_bytes": len(blobs.get(i, b""))} for i in order]
        batches = list(adapter.content_batches(versions, 64 * 1024))
        assert len(batches) > 2, "split by recorded size"
        seen = []
        for rows, values in batches:
            assert len(rows) == len(values)
            small = sum(int(r["size_bytes"]) for r in rows)
            assert len(rows) == 1 or small <= 64 * 1024
            seen += [(r["content_ref"], v) for r, v in zip(rows, values.to_pylist(), strict=True)]
        assert [ref for ref, _ in seen] == [str(i) for i in order]
        assert {ref: v for ref, v in seen} == {**{str(i): b for i, b in blobs.items()}, "999": None}
        if server == "pg_url":  # ADBC: connections are pooled (one per query in flight), then reused
            from decom.adapters.sql_generic import FETCHERS

            pool = adapter._adbc
            assert pool is not None and 1 <= len(pool._idle) <= FETCHERS["arrow"]
            first = {id(conn) for conn in pool._idle}
            list(adapter.content_batches(versions[:3], 64 * 1024))
            assert {id(conn) for conn in pool._idle} == first
    finally:
        adapter.close()
    assert adapter._adbc is None


def _sessions(url: str, expected: int) -> int:
    """Server sessions on the test database other than the one asking: `expected` as soon as there
    are that many (a closed client's backend takes a moment to leave), else the count after 5 s."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            for _ in range(100):
                count = int(conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                                 "current_database() AND pid <> pg_backend_pid()")).scalar_one())
                if count == expected:
                    break
                time.sleep(0.05)
        return count
    finally:
        engine.dispose()


def test_connections_opened_ahead_serve_the_content_fetch_and_close_with_the_adapter(
        pg_url: str, tmp_path: Path) -> None:
    from decom.adapters.sql_generic import FETCHERS, SqlGenericAdapter

    adapter, blobs = _blob_adapter(pg_url, tmp_path)
    try:
        adapter.warm_up()
        pool = adapter._adbc
        assert pool is not None and pool._warming is not None
        pool._warming.join()
        assert len(pool._idle) == FETCHERS["arrow"] and _sessions(pg_url, FETCHERS["arrow"]) == FETCHERS["arrow"]
        warmed = {id(conn) for conn in pool._idle}
        versions = [{"version_id": f"v{i}", "document_id": f"d{i}", "content_ref": str(i),
                     "size_bytes": len(b)} for i, b in blobs.items()]
        fetched = [v for _, values in adapter.content_batches(versions, 64 * 1024) for v in values.to_pylist()]
        assert fetched == list(blobs.values())
        assert {id(conn) for conn in pool._idle} == warmed, "the fetchers used the connections opened ahead"
        assert _sessions(pg_url, FETCHERS["arrow"]) == FETCHERS["arrow"]
    finally:
        adapter.close()
    assert _sessions(pg_url, 0) == 0
    again = SqlGenericAdapter(adapter.config, adapter.mapping_path)
    again.warm_up()
    again.close()  # while the connections may still be opening: none is left behind
    assert _sessions(pg_url, 0) == 0


@pytest.mark.parametrize("folder", ["disk", "tmpfs"])
def test_a_file_read_whole_for_full_verification_is_exact_also_when_it_grew(
        tmp_path: Path, folder: str) -> None:
    base = tmp_path if folder == "disk" else Path(tempfile.mkdtemp(dir="/dev/shm"))  # tmpfs: no O_DIRECT
    try:
        for size in (0, 1, 4096, 4097, 9 << 20, (9 << 20) + 5, (25 << 20) + 3):  # several blocks: hashed behind
            data = os.urandom(size)
            path = base / f"f{size}"
            path.write_bytes(data)
            buffer, digest = read_whole(str(path), size)
            assert buffer.to_pybytes() == data and digest == hashlib.sha256(data).hexdigest()
        path.write_bytes(data + b"grown after stat")  # the size given is the stat from before
        buffer, digest = read_whole(str(path), size)
        assert buffer.to_pybytes() == data + b"grown after stat"
        assert digest != hashlib.sha256(data).hexdigest(), "a file that grew never matches its recorded hash"
    finally:
        if folder == "tmpfs":
            shutil.rmtree(base)


def test_allocator_tuning_applies_on_glibc_and_is_a_no_op_elsewhere() -> None:
    """The CLI tunes glibc's malloc at start (decom/memory.py): on glibc every mallopt call must
    succeed (a wrong parameter number returns 0); off Linux it reports that nothing was done."""
    import subprocess
    import sys

    code = "import decom.memory as m; print(m.tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    is_glibc = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"
    assert out == str(is_glibc)


def test_arrow_allocates_through_the_tuned_malloc_in_a_process_the_cli_owns() -> None:
    """Arrow's default pool (mimalloc) gave freed buffers back to the kernel, which zeroed fresh
    pages for every part (decom/memory.py). In the CLI's process on glibc Arrow uses the system pool,
    whether pyarrow is imported after or before; a pool the user chose by ARROW_DEFAULT_MEMORY_POOL
    stays. Where malloc is not tuned (not glibc), Arrow's pool is left as it is."""
    import os
    import subprocess
    import sys

    is_glibc = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    show = "print(pa.default_memory_pool().backend_name)"
    after = f"import decom.memory as m; m.own_process(); import pyarrow as pa; {show}"
    before = f"import pyarrow as pa, decom.memory as m; m.own_process(); {show}"
    library = f"import pyarrow as pa, decom.memory as m; {show}"

    def pool(code: str, **extra: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**env, **extra}).stdout.strip()

    assert pool(library) != "system", "a library caller's process was switched too"
    if not is_glibc:
        assert pool(after) == pool(before) == pool(library), "Arrow's pool changed where malloc is not tuned"
        return
    assert pool(after) == "system"
    assert pool(before) == "system"
    assert pool(after, ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"


def test_start_up_objects_are_frozen_only_in_a_process_the_cli_owns() -> None:
    """Freezing hides objects from the cycle collector for good: fine once for the CLI's start-up,
    not for a program that calls decom as a library (its own cycles would never be collected), and
    not again for a later stage (an earlier stage's cycles would stay). A library caller's collector
    keeps its pace; the CLI's collects less often only until a stage starts."""
    import subprocess
    import sys

    code = ("import gc, decom.memory as m; m.freeze_startup_objects(); library = gc.get_freeze_count(); "
            "pace = gc.get_threshold()[0]; "
            "m.own_process(); start_up = gc.get_threshold()[0]; "
            "m.freeze_startup_objects(); first = gc.get_freeze_count(); stage = gc.get_threshold()[0]; "
            "later = [[i] for i in range(1000)]; m.freeze_startup_objects(); "
            "print(library, pace, first > 0, gc.get_freeze_count() == first, start_up, stage)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    library_pace = out.pop(1)
    assert out[:3] == ["0", "True", "True"], "frozen in a library's process, or a later stage's objects frozen too"
    # The collector waits longer while the CLI starts, and is back at its usual pace for the stage's objects
    assert out[3:] == ["20000", library_pace] and library_pace != "20000"


def test_a_version_is_reported_changed_only_against_the_latest_inventory_hash_of_it(tmp_path: Path) -> None:
    """Two inventories ran (the later one re-hashed v1); the comparison works on Arrow columns now."""
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from decom.stages.backup import PARTS_SCHEMA
    from decom.stages.backup_content import _changed_since_inventory

    ids = ["v1", "v2", "v3", "v4", "v5"]
    pq.write_table(pa.table({"version_id": ids, "document_id": ids, "content_ref": ids, "size_bytes": [1] * 5,
                             "part": [1, 1, 1, 1, 2]}, schema=PARTS_SCHEMA), tmp_path / "parts.parquet")
    for stage, hashes in (("first", {"v1": "old", "v2": "h2", "v5": "h5"}), ("second", {"v1": "h1", "v3": ""})):
        folder = tmp_path / "stages" / stage / "content"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"version_id": list(hashes), "sha256": list(hashes.values())}),
                       folder / "part-00001.parquet")
    stages = [SimpleNamespace(kind="inventory", name="first"), SimpleNamespace(kind="backup", name="backup"),
              SimpleNamespace(kind="inventory", name="second")]
    ctx = SimpleNamespace(cache={}, state_dir=tmp_path, outputs={"parts": {"file": "parts.parquet"}},
                          plan=SimpleNamespace(spec=SimpleNamespace(stages=stages)))
    written = [{"version_id": "v1", "sha256": "h1"},       # the later inventory's hash: unchanged
               {"version_id": "v2", "sha256": "edited"},   # differs: reported
               {"version_id": "v3", "sha256": "h3"},       # the inventory could not hash it: nothing to compare
               {"version_id": "v4", "sha256": "h4"},       # not in any inventory
               {"version_id": "v5", "missing": True}]      # missing now: no hash to compare
    assert _changed_since_inventory(ctx, 1, written) == ["v2"]
    assert _changed_since_inventory(ctx, 2, [{"version_id": "v5", "sha256": "other"}]) == ["v5"]


def test_files_opened_in_batches_come_out_once_each_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are opened and read in batches on several threads (cut by count and by recorded size; a
    large file streams, and so does the rest of a batch whose recorded sizes were far too small):
    every version comes out once, in the order asked, with its exact bytes."""
    from types import SimpleNamespace

    from decom.stages import backup_content

    monkeypatch.setattr(backup_content, "OPEN_BATCH_VERSIONS", 3)
    monkeypatch.setattr(backup_content, "OPEN_BATCH_BYTES", 100)
    monkeypatch.setattr(backup_content, "SMALL_VERSION", 1000)
    sizes = [10, 0, 150, 5, 3000, 7, 20, 2500, 1, 1, 1, 1, 2, 900, 800, 30]
    data = {f"v{i}": os.urandom(size) for i, size in enumerate(sizes)}
    missing = {"v3", "v12"}
    recorded = {"v13": 1, "v14": 1}  # v14 holds 800 bytes, not 1: the rest of its batch (v15) streams
    rows = [{"document_id": f"d{v}", "version_id": v, "size_bytes": recorded.get(v, len(b))} for v, b in data.items()]

    class Folder:
        def open_many(self, versions: list[dict]) -> Iterator[tuple[dict, io.BytesIO | None]]:
            for row in versions:
                yield row, None if row["version_id"] in missing else io.BytesIO(data[row["version_id"]])

    pieces = list(backup_content._pieces(SimpleNamespace(adapter=Folder()), rows, "content/part-000001.parquet"))
    assert [e["version_id"] for p in pieces for e in p.versions] == list(data)
    content, entries = _reassemble(pieces)
    for version, expected in data.items():
        if version in missing:
            assert entries[version]["missing"] and version not in content
        else:
            assert content[version] == expected
            assert (entries[version]["size"], entries[version]["sha256"]) == \
                (len(expected), hashlib.sha256(expected).hexdigest())
