"""The inventory's summary: counts, sizes and breakdowns, computed with Arrow over the exported tables."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from decom.engine import StageContext

LIST_LIMIT = 100


def _table(ctx: StageContext, entity: str) -> pa.Table | None:
    path: Path = ctx.stage_dir / "tables" / f"{entity}.parquet"
    return pq.read_table(path) if path.exists() else None


def _group_count(table: pa.Table, key: str, value: str | None = None) -> dict[str, Any]:
    if table.num_rows == 0:
        return {}
    aggregations = [(key, "count")] if value is None else [(value, "sum")]
    grouped = table.group_by(key).aggregate(aggregations).to_pylist()
    column = f"{key}_count" if value is None else f"{value}_sum"
    pairs = sorted(((str(r[key]) if r[key] is not None else "(none)", r[column] or 0) for r in grouped),
                   key=lambda kv: (-kv[1], kv[0]))
    return dict(pairs)


def build(ctx: StageContext, content: pa.Table) -> dict[str, Any]:
    freeze = ctx.outputs["freeze"]
    summary: dict[str, Any] = {"freeze": freeze, "counts": {}, "content": {}, "documents": {}, "cases": {},
                               "events": {}, "signatures": {}, "orphans": {}}
    for step_id, outputs in ctx.outputs.items():
        if step_id.startswith("export:"):
            summary["counts"][outputs["entity"]] = outputs["rows"]

    documents = _table(ctx, "documents")
    versions = _table(ctx, "versions")
    if documents is not None:
        years = pc.year(documents.column("created_at"))
        with_year = documents.append_column("year", years)
        summary["documents"] = {
            "by_type": _group_count(documents, "doc_type"),
            "by_year": _group_count(with_year, "year"),
            "by_owner": dict(list(_group_count(documents, "owner_id").items())[:LIST_LIMIT]),
            "deleted": int(pc.sum(pc.cast(documents.column("is_deleted").fill_null(False), pa.int64())).as_py()
                           or 0),
        }
    if versions is not None:
        recorded = int(pc.sum(versions.column("size_bytes")).as_py() or 0)
        summary["content"]["recorded_bytes"] = recorded
        if documents is not None:
            joined = versions.select(["document_id", "size_bytes"]).join(
                documents.select(["document_id", "doc_type"]), "document_id")
            summary["documents"]["bytes_by_type"] = _group_count(joined, "doc_type", "size_bytes")

    if content.num_rows:
        present = content.filter(pc.field("present"))
        missing = content.filter(~pc.field("present"))
        zero = present.filter(pc.field("actual_size") == 0)
        size_bad = content.filter(pc.field("size_ok") == False)  # noqa: E712 (Arrow expression)
        checksum_bad = content.filter(pc.field("checksum_ok") == False)  # noqa: E712
        dup_groups = present.group_by("sha256").aggregate([("version_id", "count")])
        dups = dup_groups.filter(pc.field("version_id_count") > 1)
        summary["content"].update({
            "files": content.num_rows,
            "present": present.num_rows,
            "bytes": int(pc.sum(present.column("actual_size")).as_py() or 0),
            "missing": missing.num_rows,
            "missing_refs": missing.column("content_ref").to_pylist()[:LIST_LIMIT],
            "zero_byte": zero.num_rows,
            "zero_byte_refs": zero.column("content_ref").to_pylist()[:LIST_LIMIT],
            "size_mismatches": size_bad.num_rows,
            "size_mismatch_refs": size_bad.column("content_ref").to_pylist()[:LIST_LIMIT],
            "checksum_mismatches": checksum_bad.num_rows,
            "checksum_mismatch_refs": checksum_bad.column("content_ref").to_pylist()[:LIST_LIMIT],
            "checksum_unrecorded": content.filter(pc.field("recorded_checksum").is_null()).num_rows,
            "duplicate_groups": dups.num_rows,
            "duplicate_files": int(pc.sum(dups.column("version_id_count")).as_py() or 0),
        })

    cases = _table(ctx, "cases")
    if cases is not None:
        summary["cases"] = _group_count(cases, "status")
    events = _table(ctx, "events")
    if events is not None:
        summary["events"]["total"] = events.num_rows
        freeze_time = pa.scalar(datetime.fromisoformat(freeze["freeze_at"]), type=pa.timestamp("us", tz="UTC"))
        after = events.filter(pc.field("occurred_at") > freeze_time)
        summary["events"]["after_freeze_time"] = after.num_rows
    if "signatures" in ctx.outputs:
        summary["signatures"] = ctx.outputs["signatures"]
    if "orphans" in ctx.outputs:
        summary["orphans"] = ctx.outputs["orphans"]
    return summary


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The few numbers recorded with the summary step's done mark (the full summary is in summary.json)."""
    content = summary.get("content", {})
    return {
        "counts": summary["counts"],
        "content_files": content.get("files", 0),
        "content_bytes": content.get("bytes", 0),
        "missing": content.get("missing", 0),
        "zero_byte": content.get("zero_byte", 0),
        "checksum_mismatches": content.get("checksum_mismatches", 0),
        "orphans": summary.get("orphans", {}).get("orphans", 0),
        "signature_mismatches": summary.get("signatures", {}).get("mismatched", 0),
        "events_after_freeze_time": summary.get("events", {}).get("after_freeze_time", 0),
    }
