"""The backup's content parts, keys, freeze-point checks and dry run.

Content streams in 1 MiB chunks from the adapter into an encrypted part; a version is never held
in memory whole, and a part's buffer is flushed as a row group every 16 MiB.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from decom.engine import StageContext, StagePlan
from decom.errors import UserError
from decom.fileio import TMP_MARK, write_json

CHUNK = 1 << 20
ROW_GROUP_BYTES = 16 << 20
LIST_LIMIT = 100

CONTENT_SCHEMA = pa.schema([
    ("document_id", pa.string()), ("version_id", pa.string()), ("chunk_index", pa.int32()),
    ("offset", pa.int64()), ("bytes", pa.binary()), ("chunk_sha256", pa.string()),
])


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

def _inventory_hashes(ctx: StageContext) -> dict[str, str]:
    if "inventory_hashes" not in ctx.cache:
        hashes: dict[str, str] = {}
        for stage in ctx.plan.spec.stages:
            folder = ctx.state_dir / "stages" / stage.name / "content"
            if stage.kind == "inventory" and folder.is_dir():
                for part in sorted(folder.glob("part-*.parquet")):
                    table = pq.read_table(part, columns=["version_id", "sha256"])
                    hashes.update((v, h) for v, h in zip(table.column("version_id").to_pylist(),
                                                         table.column("sha256").to_pylist(), strict=True) if h)
        ctx.cache["inventory_hashes"] = hashes
    return dict(ctx.cache["inventory_hashes"])


class _PartBuffer:
    """Collects chunk rows into row groups of ~16 MiB and writes them on a writer thread.

    pyarrow encodes and encrypts without the GIL, so writing one row group overlaps reading and
    hashing the next. At most one write is pending: memory stays at about two row groups.
    """

    def __init__(self, writer: Any) -> None:
        self.writer, self.bytes = writer, 0
        self.columns: dict[str, list[Any]] = {n: [] for n in CONTENT_SCHEMA.names}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="content-writer")
        self.pending: Future[None] | None = None

    def add(self, **row: Any) -> None:
        for name, value in row.items():
            self.columns[name].append(value)
        self.bytes += len(row["bytes"])
        if self.bytes >= ROW_GROUP_BYTES:
            self.flush(wait=False)

    def _wait(self) -> None:
        if self.pending is not None:
            self.pending.result()  # re-raises a write error (e.g. disk full) here
            self.pending = None

    def flush(self, wait: bool = True) -> None:
        if self.columns["version_id"]:
            table = pa.table(self.columns, schema=CONTENT_SCHEMA)
            self.columns, self.bytes = {n: [] for n in CONTENT_SCHEMA.names}, 0
            self._wait()
            self.pending = self.pool.submit(self.writer.write, table, table.num_rows)
        if wait:
            self._wait()

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self.pool.shutdown(wait=True)


def _read_version(stream: Any) -> Iterator[tuple[bytes, str]]:
    """(chunk, chunk SHA-256) of one version's stream, in order; one empty chunk for empty content."""
    with stream:
        block = stream.read(CHUNK)
        following = stream.read(CHUNK) if len(block) == CHUNK else b""
        if not following:  # one chunk: its hash is the version's hash, computed once
            yield block, hashlib.sha256(block).hexdigest()
            return
        while block:
            yield block, hashlib.sha256(block).hexdigest()
            block, following = following, stream.read(CHUNK) if following else b""


def _produce(ctx: StageContext, rows: list[dict[str, Any]], out: queue.Queue[Any], stop: threading.Event) -> None:
    """Reader thread: read and hash small versions ahead of the writer (reads and hashing release the GIL).

    Puts (row, chunks, version_sha256): chunks a list for small versions (hash known), a generator
    for large ones (hashed by the writer as it streams them), None when the content is missing.
    """
    try:
        for row, stream in ctx.adapter.open_many(rows):
            if stop.is_set():
                return
            if stream is None:
                out.put((row, None, None))
            elif int(row.get("size_bytes") or 0) <= SMALL_VERSION:
                chunks = list(_read_version(stream))
                out.put((row, chunks, _joined_sha256(chunks)))
            else:
                out.put((row, _read_version(stream), None))
        out.put(_DONE)
    except BaseException as exc:  # hand any failure to the writer thread, which raises it
        out.put(exc)


def _joined_sha256(chunks: list[tuple[bytes, str]]) -> str:
    if len(chunks) == 1:
        return chunks[0][1]
    digest = hashlib.sha256()
    for block, _ in chunks:
        digest.update(block)
    return digest.hexdigest()


_DONE = object()
PREFETCH = 16
SMALL_VERSION = 4 * CHUNK


def _write_version(ctx: StageContext, row: dict[str, Any], chunks: Iterable[tuple[bytes, str]] | None,
                   known_sha: str | None, buffer: _PartBuffer, part: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"document_id": row["document_id"], "version_id": row["version_id"]}
    if chunks is None:
        return {**entry, "missing": True}
    digest = hashlib.sha256() if known_sha is None else None
    offset, index = 0, 0
    bar = ctx.cache.get("bar")
    try:
        for block, chunk_sha in chunks:
            if digest is not None:
                digest.update(block)
            buffer.add(document_id=row["document_id"], version_id=row["version_id"], chunk_index=index,
                       offset=offset, bytes=block, chunk_sha256=chunk_sha)
            offset, index = offset + len(block), index + 1
            if bar is not None:
                bar.update(len(block))
    except FileNotFoundError:
        return {**entry, "missing": True}
    sha = known_sha if digest is None else digest.hexdigest()
    return {**entry, "size": offset, "sha256": sha, "part": part, "chunks": index}


def write_part(ctx: StageContext, number: int) -> dict[str, Any]:
    from decom.archive.pme import encrypted_file

    if "parts" not in ctx.cache:
        ctx.cache["parts"] = pq.read_table(ctx.state_dir / ctx.outputs["parts"]["file"])
    parts: pa.Table = ctx.cache["parts"]
    rows = parts.filter(pc.equal(parts.column("part"), number)).to_pylist()
    opened = ctx.outputs["open"]
    path = f"content/part-{number:06d}.parquet"
    inventory = _inventory_hashes(ctx)
    versions, changed = [], []
    ahead: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()
    reader = threading.Thread(target=_produce, args=(ctx, rows, ahead, stop), daemon=True, name="content-reader")
    reader.start()
    try:
        with encrypted_file(Path(opened["archive_dir"]), path, CONTENT_SCHEMA, recipients(ctx),
                            opened["archive_id"], compression="none", before_commit=lambda: ctx.crashpoint("inside"),
                            proof_columns=["version_id", "chunk_index", "chunk_sha256"]) as (writer, done):
            buffer = _PartBuffer(writer)
            while (item := ahead.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                row, chunks, known_sha = item
                entry = _write_version(ctx, row, chunks, known_sha, buffer, path)
                versions.append(entry)
                known = inventory.get(row["version_id"])
                if known and entry.get("sha256") and known != entry["sha256"]:
                    changed.append(row["version_id"])
            try:
                buffer.flush()
            finally:
                buffer.close()
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue, then let it end
            try:
                ahead.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.05)
    sidecar = ctx.stage_dir / "content" / f"part-{number:06d}.json"
    write_json(sidecar, {"versions": versions, "changed_since_inventory": changed})
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
