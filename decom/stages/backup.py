"""Backup stage: the source's tables and content into an encrypted, signed Parquet archive.

Steps: open (archive id and folder), a snapshot of the versions split into parts of bounded
size, one encrypted file per entity (while the first content part is already being read), one
encrypted content part per step, the signed manifest, and a quick verification. Each file is
written under a temporary name, test-decrypted, fsynced and renamed before its step is marked
done: a crash costs at most one file's work.
"""

from __future__ import annotations

import uuid
from array import array
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
from decom.fileio import atomic_path, file_sha256, write_json
from decom.stages import backup_content as content


def _archive_dir(ctx: StageContext) -> Path:
    return Path(ctx.outputs["open"]["archive_dir"])


def _open(ctx: StageContext) -> dict[str, Any]:
    target = ctx.plan.archive_target()
    if target is None:
        raise UserError(f"{ctx.plan.path}: the backup stage needs archive.target")
    archive_id = uuid.uuid4().hex
    created = datetime.now(UTC)
    folder = target / f"{ctx.plan.spec.plan.name}-{created:%Y%m%d}-{archive_id[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise UserError(f"cannot create the archive folder {folder}: {exc.strerror}") from None
    return {"archive_id": archive_id, "archive_dir": str(folder), "created_at": created.isoformat(),
            "recipients": content.recipient_fingerprints(ctx)}


def _entity(ctx: StageContext, entity: str) -> dict[str, Any]:
    from decom.archive.pme import encrypted_file
    from decom.model import ENTITIES

    opened = ctx.outputs["open"]
    path = f"data/{entity}.parquet"
    changed = content.ChangedAfterFreeze(ctx, entity)
    with encrypted_file(_archive_dir(ctx), path, ENTITIES[entity].schema, content.recipients(ctx),
                        opened["archive_id"], before_commit=lambda: ctx.crashpoint("inside")) as (writer, done):
        for batch in ctx.adapter.read(entity):
            changed.see(batch)
            writer.write(batch)
    return {"kind": "data", "entity": entity, **vars(done[0]), **changed.outputs()}


PARTS_SCHEMA = pa.schema([("version_id", pa.string()), ("document_id", pa.string()), ("content_ref", pa.string()),
                          ("size_bytes", pa.int64()), ("part", pa.int32())])


PART_VERSIONS = 50_000  # a part's step holds ~1 KB a version: tiny versions must not fill 64 MiB alone


def _snapshot(ctx: StageContext) -> dict[str, Any]:
    """Freeze the list of versions and their split into parts (at most part_mb of recorded content
    and PART_VERSIONS versions each), so a resumed run cuts the same parts. Read and written a batch
    at a time, each part its own row group (what part_rows reads), so that nothing is held per version."""
    limit = ctx.stage_spec.part_mb << 20
    listed = pa.schema(list(PARTS_SCHEMA)[:-1])
    path = ctx.stage_dir / "parts.parquet"
    part, size_in_part, count_in_part, count, total = 1, 0, 0, 0, 0
    current: list[pa.RecordBatch] = []   # the rows of `part` so far
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, PARTS_SCHEMA, compression="zstd") as writer:
        for batch in ctx.adapter.read("versions"):
            batch = batch.select(listed.names).cast(listed)
            numbers, first = array("i"), 0
            for row, size in enumerate(pc.fill_null(batch.column("size_bytes"), 0).to_pylist()):
                if count_in_part and (size_in_part + size > limit or count_in_part >= PART_VERSIONS):
                    current.append(_numbered(batch.slice(first, row - first), numbers))
                    writer.write_table(pa.Table.from_batches(current, PARTS_SCHEMA), row_group_size=count_in_part)
                    part, size_in_part, count_in_part, current, numbers, first = part + 1, 0, 0, [], array("i"), row
                size_in_part += size
                count_in_part += 1
                total += size
                numbers.append(part)
            current.append(_numbered(batch.slice(first), numbers))
            count += batch.num_rows
        if count_in_part:
            writer.write_table(pa.Table.from_batches(current, PARTS_SCHEMA), row_group_size=count_in_part)
        writer.close()
        ctx.crashpoint("inside")
    return {"file": str(path.relative_to(ctx.state_dir)), "versions": count, "parts": part if count else 0,
            "bytes": total, "sha256": file_sha256(path)}


def _numbered(rows: pa.RecordBatch, numbers: array[int]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([*rows.columns, pa.array(numbers, pa.int32())], schema=PARTS_SCHEMA)


def _manifest(ctx: StageContext) -> dict[str, Any]:
    from decom.archive import manifest_versions
    from decom.archive.manifest import manifest_head, write_signed
    from decom.archive.version_runs import SortedRuns
    from decom.memory import release_free_memory

    for done_with in ("parts", "inventory_hashes"):  # the content parts' lookups: ~100 bytes a version
        ctx.cache.pop(done_with, None)
    release_free_memory()  # what the content pipeline held

    opened = ctx.outputs["open"]
    archive = _archive_dir(ctx)
    steps = [(step, out) for step, out in ctx.outputs.items() if step.startswith(("data:", "content:"))]
    files = [{"seq": seq, "path": out["path"], "kind": out["kind"], "entity": out.get("entity"),
              "rows": out["rows"], "size": out["size"], "sha256": out["sha256"]}
             for seq, (_, out) in enumerate(steps, start=1)]
    content.remove_untracked(archive, {f["path"] for f in files})
    signing_key = content.signing_key(ctx)
    head = manifest_head(
        archive_id=opened["archive_id"], run_id=ctx.run_id, plan_name=ctx.plan.spec.plan.name,
        plan_sha256=ctx.plan.sha256, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=ctx.plan.source_url_redacted(), freeze=content.freeze_point(ctx), signer=signing_key.public_key(),
        recipients=opened["recipients"], files=files,
        counts={out["entity"]: out["rows"] for step, out in steps if step.startswith("data:")})
    runs = SortedRuns(ctx.stage_dir / "manifest-runs")  # each part sorted alone, then merged (version_runs.py)
    try:
        for step, out in steps:
            if step.startswith("content:"):
                runs.add(manifest_versions.read_part_versions(ctx.state_dir / out["file"]))
        head["version_list"], head["merkle_root"] = manifest_versions.write(archive, runs.windows(), runs.count)
    finally:
        runs.close()
    digest = write_signed(archive, head, signing_key)  # after versions.jsonl is durable: it signs its hash
    record = ctx.stage_dir / "archive.json"
    summary = {"archive_id": opened["archive_id"], "archive_dir": str(archive), "manifest_sha256": digest,
               "merkle_root": head["merkle_root"], "signer": head["signer"]["fingerprint"],
               "signer_public_key_pem": head["signer"]["public_key_pem"], "files": len(files),
               "versions": runs.count, "missing": runs.missing, "bytes": sum(f["size"] for f in files)}
    write_json(record, summary, lambda: ctx.crashpoint("inside"))
    return {"file": str(record.relative_to(ctx.state_dir)), **summary}


def _verify(ctx: StageContext) -> dict[str, Any]:
    from decom.archive.verify import verify_archive
    from decom.memory import release_free_memory

    release_free_memory()

    signer = content.signing_key(ctx).public_key()
    result = verify_archive(_archive_dir(ctx), signer=signer, full=False)
    if not result.ok:
        first = result.problems[0]
        raise UserError(f"the archive just written does not verify: {first.file}: {first.what}")
    return {"verified": "quick", **{k: v for k, v in result.checked.items() if isinstance(v, int)}}


def run(ctx: StageContext) -> Iterator[Step]:
    from decom.memory import release_free_memory

    warm_up = getattr(ctx.adapter, "warm_up", None)  # optional: connections opened while the archive starts
    if warm_up is not None:
        warm_up()
    yield Step("open", "create the archive folder and its id", _open)
    entities = ctx.adapter.entities()
    split: dict[str, Any] = {}
    if "versions" in entities:
        yield Step("parts", "snapshot the versions and split their content into parts", _snapshot,
                   {"part_mb": ctx.stage_spec.part_mb})
        # Content parts, manifest and verification belong to this split: a new one (another part_mb,
        # accepted mid-backup) redoes them all, never keeps a part cut from the old one.
        split = {"split": ctx.outputs["parts"].get("sha256")}
        content.inventory_hashes(ctx)  # before the content pipeline holds memory: reading it peaks
        release_free_memory()
        content.read_first_part_early(ctx)  # its fetching and hashing overlap the entity files below
    for entity in entities:
        yield Step(f"data:{entity}", f"write {entity} to data/{entity}.parquet (encrypted)",
                   partial(_entity, entity=entity), {"entity": entity})
    if "versions" in entities:
        total = ctx.outputs["parts"].get("bytes")   # a snapshot from before it was recorded: summed here
        total = int(pc.sum(content.parts_table(ctx).column("size_bytes")).as_py() or 0) if total is None else total
        with ctx.progress.bar(total, "backing up content", unit="B") as bar:
            ctx.cache["bar"] = bar
            for number in range(1, ctx.outputs["parts"]["parts"] + 1):
                yield Step(f"content:{number:06d}", f"write content part {number} (encrypted)",
                           partial(content.write_part, number=number), {"part": number, **split})
    yield Step("manifest", "write and sign the manifest", _manifest, split)
    if ctx.stage_spec.verify_after != "none":
        yield Step("verify", "verify the archive (signature, file hashes, Merkle root)", _verify, split)


def plan(ctx: StageContext) -> StagePlan:
    from decom.stages.backup_content import plan_backup

    return plan_backup(ctx)
