"""The backup's content parts, keys, freeze-point checks and dry run.

A reader thread fetches content (Arrow batches from the adapter, or streams), cuts it into 1 MiB
chunks and hashes it (decom/stages/backup_chunks.py); the step's thread encrypts and writes each
piece as one row group of about 16 MiB. Versions larger than 4 MiB stream and are never held whole.
"""

from __future__ import annotations

import io
import json
import os
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from decom.archive.content_part import CONTENT_SCHEMA
from decom.engine import StageContext, StagePlan
from decom.errors import UserError
from decom.fileio import TMP_MARK, write_json
from decom.read_ahead import ReadAhead, read_ahead
from decom.stages.backup_chunks import ROW_GROUP_BYTES, Piece, pieces_from_stream, pieces_from_values

LIST_LIMIT = 100


# --- keys ------------------------------------------------------------------------------------------

def recipients(ctx: StageContext) -> list[Any]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    from decom.archive.keys import load_public

    if "recipients" not in ctx.cache:
        ctx.cache["recipients"] = [load_public(ctx.plan.resolve(p), X25519PublicKey)
                                   for p in ctx.plan.spec.archive.recipients]
    return list(ctx.cache["recipients"])


def recipient_fingerprints(ctx: StageContext) -> list[str]:
    from decom.archive.keys import fingerprint

    return [fingerprint(r) for r in recipients(ctx)]


def signing_key(ctx: StageContext) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from decom.archive.keys import load_private

    archive = ctx.plan.spec.archive
    if archive.signing_key_file is None:
        raise UserError(f"{ctx.plan.path}: the backup stage needs archive.signing_key_file")
    passphrase = ctx.plan.secret(archive.signing_key_passphrase, None, "archive.signing_key_passphrase")
    return load_private(ctx.plan.resolve(archive.signing_key_file), Ed25519PrivateKey, passphrase)


# --- the freeze point ------------------------------------------------------------------------------

def freeze_point(ctx: StageContext) -> dict[str, Any] | None:
    """The inventory's recorded freeze point, if this plan has an inventory that ran."""
    for stage in ctx.plan.spec.stages:
        if stage.kind == "inventory":
            summary = ctx.state_dir / "stages" / stage.name / "summary.json"
            if summary.exists():
                freeze = json.loads(summary.read_text(encoding="utf-8"))["freeze"]
                return {"freeze_at": freeze.get("freeze_at"), "max_event_id": freeze.get("max_event_id")}
    return None


class ChangedAfterFreeze:
    """Counts rows of an entity created or modified after the freeze point while they stream past."""

    COLUMNS = {"documents": ("created_at", "modified_at"), "versions": ("created_at",),
               "events": ("occurred_at",), "cases": ("created_at", "closed_at")}

    def __init__(self, ctx: StageContext, entity: str) -> None:
        freeze = freeze_point(ctx)
        self.moment = datetime.fromisoformat(freeze["freeze_at"]) if freeze and freeze.get("freeze_at") else None
        self.columns = self.COLUMNS.get(entity, ())
        self.key = entity[:-1] + "_id" if entity != "events" else "event_id"
        self.count, self.ids = 0, []  # type: int, list[str]

    def see(self, batch: pa.RecordBatch) -> None:
        if self.moment is None or not self.columns:
            return
        moment = pa.scalar(self.moment, type=pa.timestamp("us", tz="UTC"))
        mask = None
        for column in self.columns:
            after = pc.fill_null(pc.greater(batch.column(column), moment), False)
            mask = after if mask is None else pc.or_(mask, after)
        changed = batch.filter(mask)
        self.count += changed.num_rows
        if len(self.ids) < LIST_LIMIT and self.key in batch.schema.names:
            self.ids += [str(v) for v in changed.column(self.key).to_pylist()][: LIST_LIMIT - len(self.ids)]

    def outputs(self) -> dict[str, Any]:
        return {"changed_after_freeze": self.count, "changed_after_freeze_ids": self.ids} if self.moment else {}


# --- content parts ---------------------------------------------------------------------------------

def inventory_hashes(ctx: StageContext) -> pa.ChunkedArray | None:
    """The inventory's SHA-256 of each version in the parts table, row by row (null where it has
    none); None when no inventory of the plan hashed content (then nothing is held per version).

    Computed once per stage as one Arrow column beside the parts table: ~70 bytes a version, where a
    dict of version id to hash took ~200 (200 MB at 1,000,000 versions, held through every part).
    Reading the inventory's files takes about three times that for a moment, so the backup computes
    it before the content pipeline starts, then returns what the reading held (release_free_memory).
    When two inventories hashed a version, the later one counts."""
    if "inventory_hashes" not in ctx.cache:
        tables = []
        for stage in ctx.plan.spec.stages:
            folder = ctx.state_dir / "stages" / stage.name / "content"
            if stage.kind == "inventory" and folder.is_dir():
                tables += [pq.read_table(part, columns=["version_id", "sha256"])
                           for part in sorted(folder.glob("part-*.parquet"))]
        hashes = None
        if tables:
            ids = parts_table(ctx).column("version_id")
            inventory = pa.concat_tables(tables)
            sha = inventory.column("sha256").cast(pa.string())
            inventory = inventory.filter(pc.and_(pc.is_valid(sha), pc.not_equal(sha, "")))
            inventory = inventory.take(pa.array(range(inventory.num_rows - 1, -1, -1), pa.int64()))  # later first
            found = pc.index_in(ids, value_set=inventory.column("version_id").cast(pa.string()).combine_chunks())
            hashes = inventory.column("sha256").cast(pa.string()).take(found)
        ctx.cache["inventory_hashes"] = hashes
    cached: pa.ChunkedArray | None = ctx.cache["inventory_hashes"]
    return cached


def _changed_since_inventory(ctx: StageContext, number: int, versions: list[dict[str, Any]]) -> list[str]:
    """Versions of part `number` whose SHA-256 differs from the one the inventory recorded."""
    hashes = inventory_hashes(ctx)
    if hashes is None:
        return []
    parts = parts_table(ctx)
    mine = pc.equal(parts.column("part"), number)
    recorded = {v: h for v, h in zip(parts.column("version_id").filter(mine).to_pylist(),
                                     hashes.filter(mine).to_pylist(), strict=True) if h}
    return [v["version_id"] for v in versions
            if v.get("sha256") and recorded.get(v["version_id"], v["sha256"]) != v["sha256"]]


SMALL_VERSION = 4 << 20   # versions up to this size are read whole and batched; larger ones stream
PREFETCH = 2              # pieces (about one row group each) chunked and hashed ahead of the writer
EARLY_PREFETCH = 4        # for part 1 while the entity files are written: the default 64 MiB part
FETCH_AHEAD = 1           # batches fetched from the source ahead of the hashing
OPEN_THREADS = 2          # batches of files opened and read at once (4 spent twice the system time: GIL hand-offs)
OPEN_BATCH_BYTES = 1 << 20  # a batch holds about this much (recorded sizes), or OPEN_BATCH_VERSIONS versions
OPEN_BATCH_VERSIONS = 256   # one hand-over between threads per file cost ~40 us of futex wake-ups and locks
PIECE_VERSIONS = 4096     # files per piece (row group) at most: tiny files would make 16 MiB hold ~100,000


class _Rest:
    """A stream whose first bytes were already read: `head`, then the rest of `stream`."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = memoryview(head), stream

    def read(self, size: int) -> bytes:
        out, self.head = bytes(self.head[:size]), self.head[size:]
        while len(out) < size and (more := self.stream.read(size - len(out))):  # full chunks: 1 MiB each
            out += more
        return out

    def __enter__(self) -> _Rest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


def _pieces(ctx: StageContext, rows: list[dict[str, Any]], part: str) -> Iterator[Piece]:
    """The part's content as pieces, in the order of `rows`: Arrow batches from the adapter when it
    offers them (content_batches), else small versions read whole and batched, large ones streamed."""
    bulk = getattr(ctx.adapter, "content_batches", None)
    batches = bulk(rows, ROW_GROUP_BYTES) if bulk is not None else None
    if batches is not None:  # the source answers the next query while this batch is hashed
        with read_ahead(batches, FETCH_AHEAD, "content-fetch") as fetched:
            for batch_rows, blobs in fetched:
                yield from pieces_from_values(batch_rows, blobs, part)
        return
    held: list[Mapping[str, Any]] = []
    values: list[bytes | None] = []
    size = 0
    with closing(_opened(ctx, rows)) as opened:
        for batch in opened:
            for row, data, large in batch:
                if large is not None or size >= ROW_GROUP_BYTES or len(held) >= PIECE_VERSIONS:
                    if held:
                        yield from pieces_from_values(held, pa.array(values, pa.binary()), part)
                    held, values, size = [], [], 0
                if large is not None:
                    yield from pieces_from_stream(row, large, part)
                    continue
                held.append(row)
                values.append(data)
                size += len(data or b"")
    if held:
        yield from pieces_from_values(held, pa.array(values, pa.binary()), part)


Opened = tuple[Mapping[str, Any], bytes | None, BinaryIO | None]


def _opened(ctx: StageContext, rows: list[dict[str, Any]]) -> Generator[list[Opened], None, None]:
    """The versions of `rows` in order, in batches of (version, its bytes, None) when small, (version,
    None, stream) when large, (version, None, None) when missing. Up to OPEN_THREADS + 1 batches are
    opened and read at once, each by one call of the adapter's open_many on a thread of the pool,
    so a cold disk answers several reads at a time and hashing overlaps them (20,000 files of
    48 KiB from a cold page cache: `cat` read them in 2.9 s one at a time, 1.75 s four at a time).
    Batches, not single files, cross between the threads: at 1,000,000 files of 1 KiB, handing each
    over on its own kept the reading thread mostly in futex wake-ups (41 s of system time)."""
    pending: deque[Future[list[Opened]]] = deque()
    pool = ThreadPoolExecutor(max_workers=OPEN_THREADS, thread_name_prefix="content-open")
    try:
        for chunk in _cut(rows):
            pending.append(pool.submit(_open_batch, ctx, chunk))
            if len(pending) > OPEN_THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # stopped early or failed: close the streams of batches nobody will read
        pool.shutdown(wait=True, cancel_futures=True)
        for future in pending:
            if not future.cancelled() and future.exception() is None:
                for _, _, stream in future.result():
                    if stream is not None:
                        stream.close()


def _cut(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """`rows` in runs of about OPEN_BATCH_BYTES of recorded size, at most OPEN_BATCH_VERSIONS each."""
    start, size = 0, 0
    for end, row in enumerate(rows):
        if end > start and (size >= OPEN_BATCH_BYTES or end - start >= OPEN_BATCH_VERSIONS):
            yield rows[start:end]
            start, size = end, 0
        size += int(row.get("size_bytes") or 0)
    if start < len(rows):
        yield rows[start:]


def _open_batch(ctx: StageContext, rows: list[dict[str, Any]]) -> list[Opened]:
    """One batch, read on a pool thread. Small versions are read whole; once the batch holds twice its
    size (the recorded sizes were too small), the rest are handed over as streams, never held."""
    batch: list[Opened] = []
    held = 0
    for row, stream in ctx.adapter.open_many(rows):
        if stream is None:
            batch.append((row, None, None))
        elif held >= 2 * OPEN_BATCH_BYTES:
            batch.append((row, None, stream))
        else:
            try:
                data, large = _read_small(row, stream)
            except FileNotFoundError:
                batch.append((row, None, None))
                continue
            batch.append((row, data, large))
            held += len(data or b"")
    return batch


def _read_small(row: Mapping[str, Any], stream: BinaryIO) -> tuple[bytes | None, BinaryIO | None]:
    try:
        size = os.fstat(stream.fileno()).st_size   # a file: its real size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        size = int(row.get("size_bytes") or 0)     # a blob stream: the recorded size
    if size > SMALL_VERSION:
        return None, stream
    try:
        data = stream.read(size + 1)  # one byte more notices content that grew; never a 4 MiB buffer
        if len(data) > size:
            data += stream.read(SMALL_VERSION + 1 - len(data))
            if len(data) > SMALL_VERSION:  # larger than it said: stream the rest
                return None, _Rest(data, stream)  # type: ignore[return-value]
    except BaseException:
        stream.close()
        raise
    stream.close()
    return data, None


def parts_table(ctx: StageContext) -> pa.Table:
    """The whole parts snapshot (every version, its size and its part), read once per stage: only
    for comparing with an inventory's hashes (~100 bytes a version)."""
    if "parts" not in ctx.cache:
        ctx.cache["parts"] = pq.read_table(ctx.state_dir / ctx.outputs["parts"]["file"])
    parts: pa.Table = ctx.cache["parts"]
    return parts


def part_rows(ctx: StageContext, number: int) -> pa.Table:
    """Part `number`'s rows of the snapshot: its own row group, found by the row groups' statistics,
    without reading the others."""
    if "parts" in ctx.cache:
        parts = parts_table(ctx)
    else:
        snapshot = pq.ParquetFile(ctx.state_dir / ctx.outputs["parts"]["file"])
        column = snapshot.schema_arrow.get_field_index("part")
        groups = []
        for group in range(snapshot.num_row_groups):
            stats = snapshot.metadata.row_group(group).column(column).statistics
            if stats is None or not stats.has_min_max or stats.min <= number <= stats.max:
                groups.append(group)
        parts = snapshot.read_row_groups(groups)
    return parts.filter(pc.equal(parts.column("part"), number))


def _read_part(ctx: StageContext, number: int, ahead: int = PREFETCH) -> ReadAhead[Piece]:
    """Start reading part `number` on its own threads (also used to read the next part early)."""
    rows = part_rows(ctx, number).to_pylist()
    reader = read_ahead(_pieces(ctx, rows, f"content/part-{number:06d}.parquet"), ahead, "content-reader")
    ctx.on_close.append(reader.close)  # a run that stops between parts leaves no reader behind
    return reader


def _sidecar(ctx: StageContext, number: int) -> Path:
    return ctx.stage_dir / "content" / f"part-{number:06d}.json"


def read_first_part_early(ctx: StageContext) -> None:
    """Start reading part 1 now, unless it is already written (a resumed run), so that its fetch
    and hashing overlap the steps before it (the entity files: ~0.4 s for 20,000 versions, on one
    core). It may get further ahead than a later part: no writer is using memory yet."""
    if ctx.outputs["parts"]["parts"] and "next_part" not in ctx.cache and not _sidecar(ctx, 1).exists():
        ctx.cache["next_part"] = (1, _read_part(ctx, 1, EARLY_PREFETCH))


def write_part(ctx: StageContext, number: int) -> dict[str, Any]:
    """One encrypted content part. Reading the next part starts once this one's content is written,
    so it overlaps this part's fsync, test decrypt and checkpoint (a crash loses only that read)."""
    from decom.archive.pme import encrypted_file

    early = ctx.cache.pop("next_part", None)
    if early is not None and early[0] != number:
        early[1].close()
        early = None
    pieces = early[1] if early is not None else _read_part(ctx, number)
    opened = ctx.outputs["open"]
    path = f"content/part-{number:06d}.parquet"
    versions: list[dict[str, Any]] = []
    bar = ctx.cache.get("bar")
    try:
        with encrypted_file(Path(opened["archive_dir"]), path, CONTENT_SCHEMA, recipients(ctx),
                            opened["archive_id"], compression="none", before_commit=lambda: ctx.crashpoint("inside"),
                            proof_columns=["version_id", "chunk_index", "chunk_sha256"],
                            statistics=[name for name in CONTENT_SCHEMA.names if name != "bytes"]) as (writer, done):
            for piece in pieces:
                if piece.table is not None:
                    writer.write(piece.table, row_group_size=piece.table.num_rows)
                versions += piece.versions
                if bar is not None:
                    bar.update(piece.content_bytes)
            if number < ctx.outputs["parts"]["parts"]:
                ctx.cache["next_part"] = (number + 1, _read_part(ctx, number + 1))
    except BaseException:
        if "next_part" in ctx.cache:
            ctx.cache.pop("next_part")[1].close()
        raise
    finally:
        pieces.close()
    changed = _changed_since_inventory(ctx, number, versions)
    sidecar = _sidecar(ctx, number)
    write_json(sidecar, {"versions": versions, "changed_since_inventory": changed}, compact=True)
    return {"kind": "content", **vars(done[0]), "file": str(sidecar.relative_to(ctx.state_dir)),
            "versions": len(versions), "missing": sum(1 for v in versions if v.get("missing")),
            "content_bytes": sum(v.get("size", 0) for v in versions),
            "changed_since_inventory": len(changed), "changed_since_inventory_ids": changed[:LIST_LIMIT]}


def remove_untracked(archive: Path, tracked: set[str]) -> None:
    """Remove parts of an earlier layout (e.g. another part size) and temporaries left by a crash."""
    for folder in ("data", "content"):
        for path in sorted((archive / folder).glob("*")) if (archive / folder).is_dir() else []:
            relative = f"{folder}/{path.name}"
            if relative not in tracked and (path.suffix == ".parquet" or TMP_MARK in path.name):
                path.unlink()


# --- dry run ---------------------------------------------------------------------------------------

def plan_backup(ctx: StageContext) -> StagePlan:
    from decom.stages.inventory import hash_speed_bytes_per_second

    adapter = ctx.adapter
    result = StagePlan(ctx.stage_name, "backup", True, f"encrypted Parquet archive of {adapter.describe()}")
    target = ctx.plan.archive_target()
    entities = adapter.entities()
    result.counts["entities"] = len(entities)
    try:
        fingerprints = recipient_fingerprints(ctx)
        signer = signing_key(ctx).public_key()
    except UserError as exc:
        result.blockers.append(str(exc))
        return result
    from decom.archive.keys import fingerprint

    result.actions.append(f"create a new archive folder under {target}")
    result.actions.append(f"write {len(entities)} encrypted tables (data/<entity>.parquet), AES-GCM, encrypted "
                          f"footer, readable by {len(fingerprints)} recipient(s): {', '.join(fingerprints)}")
    if "versions" in entities:
        files = adapter.count("versions")
        recorded = int(adapter.aggregate("versions", "size_bytes", "sum") or 0)
        parts = max(1, -(-recorded // (ctx.stage_spec.part_mb << 20))) if files else 0
        result.counts.update({"versions": files, "content_bytes_recorded": recorded, "content_parts": parts})
        result.actions.append(f"stream {files:,} content objects ({recorded:,} bytes) into about {parts} encrypted "
                              f"parts of up to {ctx.stage_spec.part_mb} MiB, each test-decrypted before it counts")
        speed = hash_speed_bytes_per_second()
        result.estimates["archive_bytes"] = recorded
        result.estimates["backup_seconds"] = round(recorded / (speed / 2), 1)
        result.estimates["basis"] = (f"hashing and encrypting at half this machine's SHA-256 speed "
                                     f"({speed / 2e6:.0f} MB/s); a slower source or disk lowers it")
    result.actions.append(f"sign the manifest with Ed25519 key {fingerprint(signer)}")
    if ctx.stage_spec.verify_after != "none":
        result.actions.append("verify the archive (signature, file hashes, Merkle root)")
    if target is not None and not _writable(target):
        result.blockers.append(f"archive target {target} cannot be created or written")
    return result


def _writable(target: Path) -> bool:
    import os

    probe = target
    while not probe.exists():
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
