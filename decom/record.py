"""The decommission record: what was done, by whom and when, signed with the archive signing key.

`decom record` writes three files into one folder:

- `record.json`: canonical JSON (sorted keys, no spaces, UTF-8) of the plan and its hash, every run,
  every stage and step, the archives and their manifest hashes, handover, shutdown and final checks
  (each says when its stage is not in the plan or did not run), the open findings, the accepted
  blockers, and the journal's entry count and head hash;
- `record.sig`: Ed25519 over the exact bytes of record.json, as manifest.sig is for an archive;
- `record.html`: the same content for people, self-contained (decom.record_html).

The record states the journal head *before* its own `record_written` entry (appended afterwards with
the record's SHA-256, which the record cannot contain). `verify_record` checks the signature and that
the journal's chain is intact and its first N entries end in the recorded head; later entries are noted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from decom import __version__
from decom.archive.keys import canonical_json, fingerprint, load_private, load_public, public_pem
from decom.archive.manifest import detached_signature_problem
from decom.checkpoint import CheckpointStore
from decom.errors import UserError
from decom.fileio import atomic_path, file_sha256
from decom.findings import SEVERITIES
from decom.journal import GENESIS, Journal, operator_name
from decom.plan import LoadedPlan

FORMAT, FORMAT_VERSION = "decom-record", 1
RECORD, SIGNATURE, HTML = "record.json", "record.sig", "record.html"
HEAD_NOTE = ("the journal head before this record's own record_written entry, which is appended right after "
             "the record is written and names the record's SHA-256")
_NOT_RUN = {"not_run": "did not run", "not_available": "did not run: not available in this version of decom",
            "running": "started but did not finish"}


@dataclass(frozen=True)
class RecordResult:
    record_dir: Path
    json_path: Path
    sig_path: Path
    html_path: Path
    sha256: str            # of record.json, as journaled in record_written
    record_id: str
    journal_entries: int   # entries before the record's own record_written entry
    journal_head: str
    signer: str            # ed25519:<hex> fingerprint


class RecordCheck(list[str]):
    """The problems verify_record found (empty: the record verifies), with notes and facts for the output."""

    def __init__(self, problems: list[str], notes: list[str], facts: dict[str, Any]) -> None:
        super().__init__(problems)
        self.notes = notes
        self.facts = facts

    @property
    def ok(self) -> bool:
        return not self


# --- collecting ------------------------------------------------------------------------------------

def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):  # SQLite gives them back naive; they were written in UTC
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")
    return None if value is None else str(value)


def _runs(store: CheckpointStore, name: str) -> list[dict[str, Any]]:
    return [{"run_id": r["run_id"], "status": r["status"], "operator": r["operator"], "host": r["host"],
             "pid": r["pid"], "started_at": _iso(r["started_at"]), "finished_at": _iso(r["finished_at"]),
             "plan_sha256": r["plan_sha256"], "message": r["message"]} for r in store.runs(name)]


def _stages(store: CheckpointStore, plan: LoadedPlan) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from decom.checkpoint import stages_table, steps_table

    name = plan.spec.plan.name
    with store.engine.connect() as conn:
        rows = {r["stage"]: r for r in conn.execute(sa.select(stages_table).where(
            stages_table.c.plan_name == name)).mappings().all()}
        run_of = {(stage, step): run for stage, step, run in conn.execute(
            sa.select(steps_table.c.stage, steps_table.c.step_id, steps_table.c.run_id)
            .where(steps_table.c.plan_name == name)).all()}
    steps = store.steps(name)
    names = [s.name for s in plan.spec.stages]
    planned: list[tuple[str, str | None, bool]] = [(s.name, s.kind, True) for s in plan.spec.stages]
    planned += [(stage, None, False) for stage in sorted(set(rows) | {s.stage for s in steps}) if stage not in names]
    result = []
    for stage, kind, in_plan in planned:
        row = rows.get(stage)
        result.append({
            "name": stage, "kind": kind, "in_plan": in_plan, "status": row["status"] if row else "not_run",
            "started_at": _iso(row["started_at"]) if row else None,
            "finished_at": _iso(row["finished_at"]) if row else None,
            "steps": [{"id": s.step_id, "description": s.description, "status": s.status, "attempts": s.attempts,
                       "run_id": run_of.get((stage, s.step_id)), "started_at": _iso(s.started_at),
                       "finished_at": _iso(s.finished_at), "error": s.error} for s in steps if s.stage == stage]})
    return result


def _section(stages: list[dict[str, Any]], kind: str,
             collect: Callable[[dict[str, Any]], tuple[dict[str, Any], bool]]) -> dict[str, Any]:
    """One section per stage kind: for each stage of that kind what `collect` found (and whether it found
    anything), with a note saying when the kind is not in the plan or its stage did not run."""
    mine = [s for s in stages if s["kind"] == kind and s["in_plan"]]
    if not mine:
        return {"in_plan": False, "note": f"no {kind} stage in the plan", "stages": []}
    items, notes = [], []
    for stage in mine:
        found, has_output = collect(stage)
        items.append({"stage": stage["name"], "status": stage["status"], **found})
        ran = stage["status"] == "done" or has_output
        notes.append(f"stage {stage['name']!r}: {stage['status']}" if ran else
                     f"stage {stage['name']!r} {_NOT_RUN.get(stage['status'], stage['status'])}")
    return {"in_plan": True, "note": "; ".join(notes), "stages": items}


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"unreadable": f"{path.name}: {type(exc).__name__}"}


def _archive(state_dir: Path, stage: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    summary = _json_file(state_dir / "stages" / stage["name"] / "archive.json")
    if not isinstance(summary, dict) or "archive_id" not in summary:
        return {"archive": None}, False
    archive = {k: summary.get(k) for k in ("archive_id", "archive_dir", "manifest_sha256", "merkle_root", "signer",
                                           "files", "versions", "missing", "bytes")}
    manifest = Path(str(summary.get("archive_dir"))) / "manifest.json"
    archive["manifest_on_disk"] = (("matches" if file_sha256(manifest) == summary.get("manifest_sha256")
                                    else "differs") if manifest.is_file() else "not found")
    return {"archive": archive}, True


def _steps(store: CheckpointStore, plan_name: str, stage: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    steps = [{"id": s.step_id, "status": s.status, "outputs": s.outputs} for s in store.steps(plan_name, stage["name"])]
    return {"steps": steps}, bool(steps)


def _checks(state_dir: Path, stage: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    checks = _json_file(state_dir / "stages" / stage["name"] / "checks.json")
    return {"checks": checks}, checks is not None


def _shutdown_actions(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: e.get(k) for k in ("seq", "time", "operator", "host", "event", "details")}
            for e in entries if str(e.get("event")).startswith(("shutdown_", "action_"))]


def _handover(state_dir: Path, store: CheckpointStore, plan_name: str,
              stage: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    import pyarrow.parquet as pq

    path = state_dir / "stages" / stage["name"] / "handover.parquet"
    table: dict[str, Any] | None = None
    if path.is_file():
        data = pq.read_table(path)
        table = {"file": str(path.relative_to(state_dir)), "sha256": file_sha256(path), "rows": data.num_rows,
                 "columns": data.column_names}
        for counted in (c for c in ("kind", "rule", "status") if c in data.column_names):
            values = [str(v) for v in data.column(counted).to_pylist()]
            table[f"by_{counted}"] = {v: values.count(v) for v in sorted(set(values))}
        if "new_owner_login" in data.column_names:
            table["without_new_owner"] = data.column("new_owner_login").null_count
    steps, ran = _steps(store, plan_name, stage)
    return {"handover_file": table, **steps}, table is not None or ran


def _findings(state_dir: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    root = state_dir / "stages"
    sources: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for path in sorted(root.rglob("findings.parquet")) if root.is_dir() else []:
        stage, where = path.relative_to(root).parts[0], str(path.relative_to(state_dir))
        try:
            rows = pq.read_table(path, columns=["severity", "kind", "subject", "message"]).to_pylist()
        except (OSError, KeyError, ValueError) as exc:  # pyarrow's errors derive from these
            sources.append({"stage": stage, "file": where, "unreadable": type(exc).__name__})
            continue
        sources.append({"stage": stage, "file": where, "sha256": file_sha256(path), "rows": len(rows)})
        items += [{"stage": stage, **row} for row in rows]
    counts = {s: sum(1 for i in items if i["severity"] == s) for s in SEVERITIES}
    return {"note": "" if sources else "no stage wrote findings", "sources": sources, "counts": counts,
            "items": items}


def _accepted(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """blocker_accepted entries (journaled at every run start) and the handover's, one per acceptance, with the
    runs that journaled it."""
    seen: dict[tuple[str, ...], dict[str, Any]] = {}
    for entry in (e for e in entries if e.get("event") in ("blocker_accepted", "handover_blocker_accepted")):
        d = entry.get("details") or {}
        key = tuple(str(d.get(k)) for k in ("stage", "blocker", "match", "accepted_by", "reason"))
        if key not in seen:
            seen[key] = {"stage": d.get("stage"), "blocker": d.get("blocker"), "match": d.get("match"),
                         "by": d.get("accepted_by"), "reason": d.get("reason"), "first_journaled_at": entry.get("time"),
                         "first_seq": entry.get("seq"), "journaled_by": entry.get("operator"), "runs": []}
        seen[key]["runs"].append(d.get("run_id"))
    return list(seen.values())


def _journal_lines(path: Path) -> list[bytes]:
    """The complete lines of a journal (a torn last line left by a crash is not an entry)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [line for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def _signing_key(plan: LoadedPlan) -> Ed25519PrivateKey:
    archive = plan.spec.archive
    if archive.signing_key_file is None:
        raise UserError(f"{plan.path}: the record is signed with archive.signing_key_file, and the plan has none")
    passphrase = plan.secret(archive.signing_key_passphrase, None, "archive.signing_key_passphrase")
    key: Ed25519PrivateKey = load_private(plan.resolve(archive.signing_key_file), Ed25519PrivateKey, passphrase)
    return key


# --- writing ---------------------------------------------------------------------------------------

def write_record(plan: LoadedPlan, state_dir: Path, out: Path | None = None) -> RecordResult:
    """Collect, sign and write the record, then journal `record_written` (under the plan's run lock)."""
    from decom.engine import open_store
    from decom.lock import RunLock
    from decom.record_html import render_record_html

    name = plan.spec.plan.name
    if plan.state_url() is None and not (state_dir / "checkpoints.sqlite").exists():
        raise UserError(f"plan {name!r} has not run yet (no checkpoint store in {state_dir}); nothing to record")
    signing_key = _signing_key(plan)  # before anything is written: a wrong passphrase leaves no half record
    out_dir = Path(out).expanduser().absolute() if out is not None else state_dir / "record"
    journal = Journal(state_dir / "journal.jsonl")
    store = open_store(plan, state_dir)
    try:
        with RunLock(name, state_dir, store):
            check = journal.verify()
            if not check.ok:
                raise UserError(f"journal {journal.path}: the chain is broken ({check.problem}); a record cannot "
                                "vouch for it")
            entries = [json.loads(line) for line in _journal_lines(journal.path)[: check.entries]]
            stages = _stages(store, plan)
            spec, public = plan.spec.plan, signing_key.public_key()
            record = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "decom_version": __version__,
                "record_id": uuid.uuid4().hex, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "created_by": {"operator": operator_name(), "host": socket.gethostname()},
                "plan": {"name": name, "owner": spec.owner, "ticket": spec.ticket, "description": spec.description,
                         "file": str(plan.path), "sha256": plan.sha256,
                         "recorded_sha256": store.recorded_plan_hash(name),
                         "source": plan.source_url_redacted(), "state_dir": str(state_dir)},
                "runs": _runs(store, name), "stages": stages,
                "archives": _section(stages, "backup", partial(_archive, state_dir)),
                "handover": _section(stages, "handover", partial(_handover, state_dir, store, name)),
                "shutdown": {**_section(stages, "shutdown", partial(_steps, store, name)),
                             "journal_actions": _shutdown_actions(entries)},
                "final_checks": _section(stages, "final_checks", partial(_checks, state_dir)),
                "findings": _findings(state_dir),
                "accepted_blockers": _accepted(entries),
                "journal": {"path": str(journal.path), "entries": check.entries, "head": check.head, "note": HEAD_NOTE},
                "signer": {"alg": "Ed25519", "fingerprint": fingerprint(public), "public_key_pem": public_pem(public)},
            }
            data = canonical_json(record)
            signature = {"alg": "Ed25519", "fingerprint": fingerprint(public),
                         "signature": base64.b64encode(signing_key.sign(data)).decode()}
            digest = hashlib.sha256(data).hexdigest()
            html = render_record_html(json.loads(data), record_sha256=digest, signature=signature)
            paths = out_dir / RECORD, out_dir / SIGNATURE, out_dir / HTML
            for path, content in zip(paths, (data, canonical_json(signature), html.encode()), strict=True):
                with atomic_path(path) as tmp:
                    tmp.write_bytes(content)
            journal.append("record_written", record_id=record["record_id"], sha256=digest, record_dir=str(out_dir),
                           journal_entries=check.entries, journal_head=check.head, signer=fingerprint(public))
    finally:
        store.close()
    return RecordResult(out_dir, *paths, digest, str(record["record_id"]), check.entries, check.head,
                        fingerprint(public))


# --- verifying -------------------------------------------------------------------------------------

def _signature_problem(record_dir: Path, data: bytes, record: Any, trusted: Ed25519PublicKey | str) -> str | None:
    signer = record.get("signer") if isinstance(record, dict) else None
    embedded = signer.get("public_key_pem") if isinstance(signer, dict) else None
    problem = detached_signature_problem(record_dir / SIGNATURE, data, embedded, trusted, owner="record",
                                         signed_file=RECORD, prefix=f"{SIGNATURE} is ")
    if problem is not None:
        return problem
    key = trusted if isinstance(trusted, Ed25519PublicKey) else None
    signed_by = fingerprint(key) if key is not None else str(trusted).lower()
    named = signer.get("fingerprint") if isinstance(signer, dict) else None
    if named != signed_by:
        return f"{RECORD} names the signer {named}, but it was signed by {signed_by}"
    return None


def _journal_problems(path: Path, recorded: dict[str, Any], digest: str, notes: list[str]) -> list[str]:
    count, head = recorded.get("entries"), str(recorded.get("head"))
    if not isinstance(count, int) or count < 0:
        return [f"{RECORD} states no journal entry count"]
    check = Journal(path).verify()
    problems = [] if check.ok else [f"journal {path}: the chain is broken: {check.problem}"]
    lines = _journal_lines(path)
    if len(lines) < count:
        return [*problems, f"journal {path} was truncated: it has {len(lines)} entries, the record states {count}"]
    actual = hashlib.sha256(lines[count - 1]).hexdigest() if count else GENESIS
    if actual != head:
        problems.append(f"journal {path} was edited: its head at entry {count} is {actual}, the record states "
                        f"{head}")
    if len(lines) > count:
        try:
            following = json.loads(lines[count])
        except ValueError:
            following = {}
        own = following.get("event") == "record_written" and (following.get("details") or {}).get("sha256") == digest
        more = len(lines) - count - (1 if own else 0)
        if more:
            notes.append(f"journal continued after the record ({more} more entr{'y' if more == 1 else 'ies'}"
                         + (" after the record's own record_written entry)" if own else ")"))
        else:
            notes.append("the journal ends with this record's own record_written entry")
    return problems


def verify_record(record_dir: Path, signer: Ed25519PublicKey | str | Path, journal: Path | None = None) -> RecordCheck:
    """Check record.sig against the trusted signer (key, key file or fingerprint) and the journal against the record."""
    from decom.archive.verify import check_signer
    from decom.record_html import rendering_differs

    trusted = load_public(signer, Ed25519PublicKey) if isinstance(signer, Path) else check_signer(signer)
    try:
        data = (record_dir / RECORD).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{record_dir / RECORD} does not exist: {record_dir} is not a decommission record") from None
    except OSError as exc:
        raise UserError(f"cannot read {record_dir / RECORD}: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    problems: list[str] = []
    notes: list[str] = []
    try:
        record: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        problems.append(f"{RECORD} is not a decom decommission record (damaged or altered)")
        record = {}
    problem = _signature_problem(record_dir, data, record, trusted)
    if problem:
        problems.append(problem)
    recorded = record.get("journal") if isinstance(record.get("journal"), dict) else {}
    facts = {"record_dir": str(record_dir), "sha256": digest, "record_id": record.get("record_id"),
             "plan": (record.get("plan") or {}).get("name"), "created_at": record.get("created_at"),
             "signer": (record.get("signer") or {}).get("fingerprint"), "journal_entries": recorded.get("entries"),
             "journal_head": recorded.get("head"), "journal_checked": None}
    path = journal if journal is not None else (Path(recorded["path"]) if recorded.get("path") else None)
    if journal is not None and not journal.is_file():
        raise UserError(f"journal {journal} does not exist")
    if path is not None and path.is_file() and recorded:
        facts["journal_checked"] = str(path)
        problems += _journal_problems(path, recorded, digest, notes)
    elif recorded:
        notes.append(f"the journal was not checked: {path} not found (pass --journal)")
    html = record_dir / HTML
    if not html.is_file():
        notes.append(f"{HTML} is missing ({RECORD} is the signed record)")
    elif record and not problem:
        differs = rendering_differs(html.read_text(encoding="utf-8", errors="replace"), record, record_sha256=digest,
                                    signature=json.loads((record_dir / SIGNATURE).read_bytes()))
        if differs and record.get("decom_version") == __version__:
            problems.append(f"{HTML} does not show what {RECORD} holds: {HTML} was altered")
        elif differs is not False:
            notes.append(f"{HTML} was rendered by decom {record.get('decom_version')}; not compared")
    return RecordCheck(problems, notes, facts)
