"""Inventory stage: what the system holds, what content is missing or orphaned, and a hash of every object.

Steps: freeze point, one export per canonical entity (Parquet in the state folder), content
hashing in batches of versions, signature digests, orphan scan, summary. Hashes are streamed,
never a whole file in memory, and kept for the backup and final checks to compare against.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from decom.engine import StageContext, StagePlan, Step
from decom.errors import UserError
from decom.fileio import atomic_path, write_table
from decom.stages import inventory_summary

CHUNK = 1 << 20

CONTENT_SCHEMA = pa.schema([
    ("version_id", pa.string()), ("document_id", pa.string()), ("content_ref", pa.string()),
    ("present", pa.bool_()), ("recorded_size", pa.int64()), ("actual_size", pa.int64()),
    ("sha256", pa.string()), ("recorded_checksum", pa.string()), ("checksum_algo", pa.string()),
    ("checksum_ok", pa.bool_()), ("size_ok", pa.bool_()), ("error", pa.string()),
])


def tables_dir(ctx: StageContext) -> Path:
    return ctx.stage_dir / "tables"


def _freeze(ctx: StageContext) -> dict[str, Any]:
    freeze_at = ctx.stage_spec.freeze_at or datetime.now(UTC)
    max_event_id = None
    if "events" in ctx.adapter.entities():
        value = ctx.adapter.aggregate("events", "event_id", "max")
        max_event_id = int(value) if value is not None else None
    return {"freeze_at": freeze_at.astimezone(UTC).isoformat(), "max_event_id": max_event_id,
            "freeze_basis": "plan" if ctx.stage_spec.freeze_at else "time the inventory ran"}


def _export(ctx: StageContext, entity: str) -> dict[str, Any]:
    from decom.model import ENTITIES

    path = tables_dir(ctx) / f"{entity}.parquet"
    rows = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, ENTITIES[entity].schema, compression="zstd") as writer:
            for batch in ctx.adapter.read(entity):
                writer.write_batch(batch)
                rows += batch.num_rows
        ctx.crashpoint("inside")
    return {"entity": entity, "rows": rows, "file": str(path.relative_to(ctx.state_dir))}


def _versions(ctx: StageContext) -> pa.Table:
    cache = ctx.cache
    if "versions" not in cache:
        cache["versions"] = pq.read_table(tables_dir(ctx) / "versions.parquet")
    return cache["versions"]


def _hash_one(ctx: StageContext, row: dict[str, Any], bar: Any) -> dict[str, Any]:
    algo = (row.get("checksum_algo") or "").lower()
    recorded = row.get("checksum")
    result: dict[str, Any] = {
        "version_id": row["version_id"], "document_id": row["document_id"], "content_ref": row["content_ref"],
        "recorded_size": row["size_bytes"], "recorded_checksum": recorded, "checksum_algo": algo or None,
        "present": False, "actual_size": None, "sha256": None, "checksum_ok": None, "size_ok": None,
        "error": None,
    }
    sha256 = hashlib.sha256()
    other = hashlib.new(algo) if recorded and algo in {"md5", "sha1"} else None
    size = 0
    try:
        with ctx.adapter.open_content(row) as stream:
            while block := stream.read(CHUNK):
                sha256.update(block)
                if other is not None:
                    other.update(block)
                size += len(block)
                bar.update(len(block))
    except FileNotFoundError as exc:
        result["error"] = f"missing: {exc.filename or exc}"
        return result
    except OSError as exc:
        result["error"] = f"unreadable: {exc.strerror or exc}"
        return result
    digest = sha256.hexdigest()
    result.update(present=True, actual_size=size, sha256=digest)
    if row["size_bytes"] is not None:
        result["size_ok"] = row["size_bytes"] == size
    if recorded:
        mine = digest if algo == "sha256" else other.hexdigest() if other is not None else None
        result["checksum_ok"] = None if mine is None else mine.lower() == str(recorded).strip().lower()
    return result


def _hash_batch(ctx: StageContext, index: int, start: int, stop: int) -> dict[str, Any]:
    rows = _versions(ctx).slice(start, stop - start).to_pylist()
    bar = ctx.cache.get("bar")
    results = [_hash_one(ctx, row, bar) for row in rows]
    path = ctx.stage_dir / "content" / f"part-{index:05d}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(results, schema=CONTENT_SCHEMA), tmp, compression="zstd")
        ctx.crashpoint("inside")
    return {
        "part": index, "file": str(path.relative_to(ctx.state_dir)), "files": len(results),
        "bytes": sum(r["actual_size"] or 0 for r in results),
        "missing": sum(1 for r in results if not r["present"]),
        "checksum_mismatches": sum(1 for r in results if r["checksum_ok"] is False),
    }


def _content_table(ctx: StageContext) -> pa.Table:
    """The hashing results of the parts this run's plan defines (stale parts of another batch size ignored)."""
    parts = [ctx.state_dir / out["file"] for step, out in sorted(ctx.outputs.items()) if step.startswith("content:")]
    if not parts:
        return CONTENT_SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(p) for p in parts)


def _signatures(ctx: StageContext) -> dict[str, Any]:
    signatures = pq.read_table(tables_dir(ctx) / "signatures.parquet").to_pylist()
    content = {r["version_id"]: r for r in _content_table(ctx).select(["version_id", "sha256"]).to_pylist()}
    current: dict[str, str] = {}
    for version in _versions(ctx).select(["document_id", "version_id", "is_current"]).to_pylist():
        if version["is_current"]:
            current[version["document_id"]] = version["version_id"]
    rows = []
    for sig in signatures:
        version_id = sig["version_id"] or current.get(sig["document_id"])
        actual = content.get(version_id, {}).get("sha256") if version_id else None
        recorded = (sig["signed_sha256"] or "").lower() or None
        status = ("no_digest" if recorded is None else "content_missing" if actual is None
                  else "match" if actual == recorded else "mismatch")
        rows.append({"signature_id": sig["signature_id"], "document_id": sig["document_id"],
                     "version_id": version_id, "signed_sha256": recorded, "content_sha256": actual,
                     "status": status})
    schema = pa.schema([(n, pa.string()) for n in
                        ("signature_id", "document_id", "version_id", "signed_sha256", "content_sha256", "status")])
    path = ctx.stage_dir / "signature_check.parquet"
    write_table(path, pa.Table.from_pylist(rows, schema=schema), lambda: ctx.crashpoint("inside"))
    mismatched = [r["signature_id"] for r in rows if r["status"] == "mismatch"]
    return {"file": str(path.relative_to(ctx.state_dir)), "signatures": len(rows),
            "mismatched": len(mismatched), "mismatched_ids": mismatched[:100]}


def _posix(ref: str) -> str:
    return ref.replace("\\", "/")


def _orphans(ctx: StageContext) -> dict[str, Any]:
    # Membership is tested in Arrow: a Python set of millions of references would cost gigabytes.
    refs = [pq.read_table(tables_dir(ctx) / "versions.parquet", columns=["content_ref"]).column("content_ref")]
    signatures = tables_dir(ctx) / "signatures.parquet"
    if signatures.exists():
        refs.append(pq.read_table(signatures, columns=["signature_ref"]).column("signature_ref"))
    referenced = pa.chunked_array([c for column in refs for c in column.chunks], type=pa.string())
    referenced = pc.replace_substring(referenced.drop_null(), "\\", "/")
    files = [(relative, size, ctx.adapter.content_ref_of_file(relative))
             for relative, size in ctx.adapter.content_files()]
    candidates = pa.array([_posix(ref) if ref is not None else None for _, _, ref in files], type=pa.string())
    known = pc.is_in(candidates, value_set=referenced.combine_chunks()).to_pylist() if files else []
    orphans = [{"path": relative, "size": size} for (relative, size, ref), hit in zip(files, known, strict=True)
               if ref is not None and not hit]
    schema = pa.schema([("path", pa.string()), ("size", pa.int64())])
    path = ctx.stage_dir / "orphans.parquet"
    write_table(path, pa.Table.from_pylist(orphans, schema=schema), lambda: ctx.crashpoint("inside"))
    return {"file": str(path.relative_to(ctx.state_dir)), "orphans": len(orphans),
            "orphan_bytes": sum(o["size"] for o in orphans),
            "paths": [o["path"] for o in orphans[:100]]}


def _summary(ctx: StageContext) -> dict[str, Any]:
    summary = inventory_summary.build(ctx, _content_table(ctx))
    from decom.fileio import write_json

    path = ctx.stage_dir / "summary.json"
    write_json(path, summary, lambda: ctx.crashpoint("inside"))
    mismatches = summary.get("content", {}).get("checksum_mismatches", 0)
    if mismatches and ctx.stage_spec.checksum_mismatch == "fail":
        raise UserError(f"inventory: {mismatches} content object(s) do not match the checksum the source "
                        f"recorded (see {path}); the plan says checksum_mismatch = \"fail\"")
    return {"file": str(path.relative_to(ctx.state_dir)), **inventory_summary.headline(summary)}


def run(ctx: StageContext) -> Iterator[Step]:
    spec = ctx.stage_spec
    yield Step("freeze", "record the freeze point (time and highest audit event id)", _freeze)
    entities = ctx.adapter.entities()
    for entity in entities:
        yield Step(f"export:{entity}", f"export {entity} to Parquet in the state folder",
                   partial(_export, entity=entity), {"entity": entity})
    if spec.hash_content and "versions" in entities:
        total = ctx.outputs["export:versions"]["rows"]
        batches = math.ceil(total / spec.batch_files)
        expected = ctx.adapter.aggregate("versions", "size_bytes", "sum") or 0
        with ctx.progress.bar(int(expected), "hashing content", unit="B") as bar:
            ctx.cache["bar"] = bar
            for index in range(batches):
                start, stop = index * spec.batch_files, min(total, (index + 1) * spec.batch_files)
                yield Step(f"content:{index:05d}", f"hash content of versions {start + 1}–{stop}",
                           partial(_hash_batch, index=index, start=start, stop=stop),
                           {"first_row": start, "rows": stop - start})
        if "signatures" in entities:
            yield Step("signatures", "compare signed digests with the content's SHA-256", _signatures)
    if "versions" in entities:
        yield Step("orphans", "find files under the content root that no record references", _orphans)
    yield Step("summary", "aggregate counts, sizes and findings", _summary)


def plan(ctx: StageContext) -> StagePlan:
    from decom.stages.inventory_plan import plan_inventory

    return plan_inventory(ctx)


def hash_speed_bytes_per_second(sample: int = 16 << 20) -> float:
    """SHA-256 throughput of this machine on an in-memory buffer: the basis of duration estimates."""
    data = b"\x5a" * sample
    started = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return sample / max(time.perf_counter() - started, 1e-9)
