"""The handover package: what the successor needs to carry on each open case without the old system.

`stages/<stage>/package/cases/<case_id>.json` per open case: the case, its tasks, the audit history
of its document, and its documents with every version's SHA-256 and the archive that holds them.
`stages/<stage>/package/index.csv`: one line per case, for the successor to import.

Content hashes and archive ids come from the last backup stage before the handover, when it has
run: its `archive.json` names the archive, whose manifest (checked against the SHA-256 the backup
recorded) lists each version's hash. Otherwise they come from the inventory's content hashes and
`archive_id` stays empty. The package is rebuilt whole by a redo, each file written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from decom.engine import StageContext
from decom.errors import UserError
from decom.fileio import TMP_MARK, atomic_path, write_json
from decom.stages.handover_rules import Snapshot, id_order

INDEX_COLUMNS = ("case_id", "case_type", "title", "state", "new_owner_login", "due_at", "document_ids", "archive_id",
                 "content_sha256", "previous_owner_login", "past_due", "record")
FORMAT, FORMAT_VERSION = "decom-handover-case", 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def file_name(identifier: str) -> str:
    """A file name for an id: the id itself when it is safe, else a readable form plus a short hash."""
    safe = _UNSAFE.sub("_", identifier)
    if safe == identifier and not identifier.startswith("."):
        return identifier
    return f"{safe.lstrip('.')}-{hashlib.sha256(identifier.encode()).hexdigest()[:8]}"


# -- where the hashes come from ------------------------------------------------------------------------

def _earlier_stages(ctx: StageContext) -> list[Any]:
    names = [s.name for s in ctx.plan.spec.stages]
    return list(ctx.plan.spec.stages[:names.index(ctx.stage_name)])


def backup_record(ctx: StageContext) -> tuple[str, dict[str, Any]] | None:
    for spec in reversed(_earlier_stages(ctx)):
        path = ctx.state_dir / "stages" / spec.name / "archive.json"
        if spec.kind == "backup" and path.exists():
            return spec.name, json.loads(path.read_text(encoding="utf-8"))
    return None


def content_source_name(ctx: StageContext) -> str:
    backup = backup_record(ctx)
    if backup is not None:
        return f"the archive {backup[1]['archive_id']} of backup stage {backup[0]!r}"
    planned = [s.name for s in _earlier_stages(ctx) if s.kind == "backup"]
    if planned:
        return f"the archive backup stage {planned[-1]!r} writes"
    inventories = [s.name for s in _earlier_stages(ctx) if s.kind == "inventory"]
    if inventories:
        return f"the content hashes of inventory stage {inventories[-1]!r} (no archive id: no backup before it)"
    return "nowhere: no inventory or backup runs before the handover, so hashes stay empty"


def content_hashes(ctx: StageContext) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """(version_id -> {sha256, missing}, the archive or None) from the backup if it ran, else the inventory."""
    from decom.archive.manifest import read_manifest
    from decom.archive.version_list import checked_entries

    backup = backup_record(ctx)
    if backup is not None:
        stage, record = backup
        manifest, data = read_manifest(Path(record["archive_dir"]))
        if hashlib.sha256(data).hexdigest() != record["manifest_sha256"]:
            raise UserError(f"the manifest of archive {record['archive_id']} in {record['archive_dir']} is not the one "
                            f"backup stage {stage!r} wrote (SHA-256 differs); verify the archive with `decom verify`")
        versions = {str(v["version_id"]): {"sha256": v.get("sha256"), "missing": bool(v.get("missing"))}
                    for v in checked_entries(Path(record["archive_dir"]), manifest)}
        return versions, {"archive_id": record["archive_id"], "manifest_sha256": record["manifest_sha256"],
                          "backup_stage": stage}
    hashes: dict[str, dict[str, Any]] = {}
    for spec in _earlier_stages(ctx):
        folder = ctx.state_dir / "stages" / spec.name / "content"
        if spec.kind == "inventory" and folder.is_dir():
            for part in sorted(folder.glob("part-*.parquet")):
                for row in pq.read_table(part, columns=["version_id", "sha256", "present"]).to_pylist():
                    hashes[str(row["version_id"])] = {"sha256": row["sha256"], "missing": not row["present"]}
    return hashes, None


# -- reading the source --------------------------------------------------------------------------------

def _matching(ctx: StageContext, entity: str, column: str, values: set[str],
              extra: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of an entity whose `column` is one of `values` (filtered batch by batch, never all in memory)."""
    if entity not in ctx.adapter.entities() or not values:
        return
    wanted = pa.array(sorted(values), type=pa.string())
    for batch in ctx.adapter.read(entity):
        mask = pc.is_in(batch.column(column).cast(pa.string()), value_set=wanted)
        for name, value in (extra or {}).items():
            mask = pc.and_(mask, pc.equal(batch.column(name), value))
        yield from batch.filter(pc.fill_null(mask, False)).to_pylist()


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _current_hash(versions: list[dict[str, Any]]) -> str:
    if not versions:
        return ""
    current = [v for v in versions if v["is_current"]] or [max(versions, key=lambda v: v["version_no"] or 0)]
    return "missing" if current[0]["missing"] else str(current[0]["sha256"] or "")


# -- the step ------------------------------------------------------------------------------------------

def write_package(ctx: StageContext) -> dict[str, Any]:
    snapshot = Snapshot.load(ctx.stage_dir, ctx.outputs["cases"])
    cases = snapshot.cases
    people = {p["user_id"]: p for p in snapshot.people}
    by_login = {p["login"]: p for p in snapshot.people}
    login_of = {user_id: p["login"] for user_id, p in people.items()}
    case_ids = {row["case_id"] for row in cases}
    document_ids = {row["document_id"] for row in cases if row["document_id"]}
    open_tasks = {row["item_id"]: row for row in snapshot.tasks}

    tasks: dict[str, list[dict[str, Any]]] = {}
    for task in _matching(ctx, "tasks", "case_id", case_ids):
        task_id = str(task["task_id"])
        held = open_tasks.get(task_id)  # an open task as the snapshot saw it, before any reassignment
        assignee = held["assignee_login"] if held else login_of.get(str(task.get("assignee_id")))
        tasks.setdefault(str(task["case_id"]), []).append({
            "task_id": task_id, "name": task.get("name"), "status": task.get("status"), "assignee_login": assignee,
            "new_owner_login": held["new_owner_login"] if held else None, "due_at": _iso(task.get("due_at")),
            "created_at": _iso(task.get("created_at"))})
    hashes, archive = content_hashes(ctx)
    versions: dict[str, list[dict[str, Any]]] = {}
    for version in _matching(ctx, "versions", "document_id", document_ids):
        known = hashes.get(str(version["version_id"]), {})
        versions.setdefault(str(version["document_id"]), []).append({
            "version_id": str(version["version_id"]), "version_no": version.get("version_no"),
            "file_name": version.get("file_name"), "mime_type": version.get("mime_type"),
            "size_bytes": version.get("size_bytes"), "is_current": bool(version.get("is_current")),
            "sha256": known.get("sha256"), "missing": bool(known.get("missing")),
            "archive_id": archive["archive_id"] if archive and known and not known.get("missing") else None})
    documents = {}
    for doc in _matching(ctx, "documents", "document_id", document_ids):
        doc_id = str(doc["document_id"])
        documents[doc_id] = {
            "document_id": doc_id, "title": doc.get("title"), "doc_type": doc.get("doc_type"),
            "registration_no": doc.get("registration_no"), "status": doc.get("status"),
            "owner_login": login_of.get(str(doc.get("owner_id"))), "created_at": _iso(doc.get("created_at")),
            "modified_at": _iso(doc.get("modified_at")),
            "versions": sorted(versions.get(doc_id, []), key=lambda v: (v["version_no"] or 0, v["version_id"]))}
    history: dict[str, list[dict[str, Any]]] = {}
    for event in _matching(ctx, "events", "object_id", document_ids, {"object_type": "document"}):
        history.setdefault(str(event["object_id"]), []).append({
            "event_id": event["event_id"], "occurred_at": _iso(event["occurred_at"]),
            "user_login": login_of.get(str(event.get("user_id"))), "action": event["action"],
            "source_address": event.get("source_address"), "details": event.get("details")})

    folder = ctx.stage_dir / "package"
    written: set[str] = set()
    index_rows = []
    for row in cases:
        case_id = row["case_id"]
        doc_ids = [row["document_id"]] if row["document_id"] else []
        case_docs = [documents.get(d, {"document_id": d, "versions": [], "not_in_source": True}) for d in doc_ids]
        for doc in case_docs:
            doc["archive_id"] = archive["archive_id"] if archive and doc["versions"] else None
        owner = by_login.get(row["new_owner_login"] or "")
        record = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "plan": ctx.plan.spec.plan.name,
            "snapshot_taken_at": snapshot.taken_at.isoformat(), "archive": archive,
            "case": {
                "case_id": case_id, "case_type": row["case_type"], "title": row["title"], "state": row["state"],
                "status": "open", "document_id": row["document_id"], "created_at": _iso(row["created_at"]),
                "due_at": _iso(row["due_at"]), "past_due": row["past_due"],
                "candidate_group": row["candidate_group"], "previous_owner_login": row["assignee_login"],
                "new_owner": {"login": row["new_owner_login"], "full_name": owner["full_name"] if owner else None,
                              "email": owner["email"] if owner else None, "account": row["new_owner_status"],
                              "rule": row["rule"], "rule_key": row["rule_key"]},
            },
            "tasks": sorted(tasks.get(case_id, []), key=lambda t: id_order(t["task_id"])),
            "documents": case_docs,
            "history": [event for d in doc_ids for event in history.get(d, [])],
        }
        name = f"{file_name(case_id)}.json"
        write_json(folder / "cases" / name, record, lambda: ctx.crashpoint("inside"))
        written.add(name)
        index_rows.append({
            "case_id": case_id, "case_type": row["case_type"] or "", "title": row["title"] or "",
            "state": row["state"] or "", "new_owner_login": row["new_owner_login"] or "",
            "due_at": _iso(row["due_at"]) or "", "document_ids": ";".join(doc_ids),
            "archive_id": archive["archive_id"] if archive and any(d["versions"] for d in case_docs) else "",
            "content_sha256": ";".join(_current_hash(d["versions"]) for d in case_docs),
            "previous_owner_login": row["assignee_login"] or "", "past_due": "yes" if row["past_due"] else "no",
            "record": f"cases/{name}"})
    for stale in (folder / "cases").glob("*") if (folder / "cases").is_dir() else []:
        if stale.name not in written or TMP_MARK in stale.name:
            stale.unlink()  # from an earlier attempt that saw other cases
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(index_rows)
    index = folder / "index.csv"
    with atomic_path(index) as tmp:
        tmp.write_bytes(buffer.getvalue().encode("utf-8"))
    return {"file": str(index.relative_to(ctx.state_dir)), "cases": len(index_rows),
            "documents": len(documents), "events": sum(len(h) for h in history.values()),
            "archive_id": archive["archive_id"] if archive else None}
