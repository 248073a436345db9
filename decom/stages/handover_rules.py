"""Who takes each open case and task: the handover's snapshot, its owner rules, blockers and findings.

The dry run and the run share this module. `take_snapshot` reads the source and applies the plan's
rules; `blockers` and `findings` judge the result. The run stores the snapshot (`cases` step), so a
resumed run judges what its first attempt saw, not a source it has since changed.

Rules, first match wins, for a case:
1. `owners`: the current assignee's login is mapped explicitly;
2. the current assignee keeps the case when the account is active and not selected for lock-down;
3. `owners_by_group`: the case's candidate group, by group name;
4. `owners_by_case_type`: the case's type;
5. `default_owner`.
An open task follows the same order with its own assignee, then takes its case's new owner, then
goes on with its own candidate group, its case's type and the default owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from decom.engine import StageContext
from decom.errors import UserError
from decom.findings import Finding

TS = pa.timestamp("us", tz="UTC")
ITEMS_SCHEMA = pa.schema([
    ("kind", pa.string()), ("item_id", pa.string()), ("case_id", pa.string()), ("case_type", pa.string()),
    ("title", pa.string()), ("task_name", pa.string()), ("state", pa.string()), ("document_id", pa.string()),
    ("assignee_id", pa.string()), ("assignee_login", pa.string()), ("assignee_status", pa.string()),
    ("candidate_group_id", pa.string()), ("candidate_group", pa.string()), ("due_at", TS), ("created_at", TS),
    ("past_due", pa.bool_()), ("new_owner_login", pa.string()), ("new_owner_id", pa.string()),
    ("new_owner_status", pa.string()), ("rule", pa.string()), ("rule_key", pa.string()), ("change", pa.bool_()),
])
PEOPLE_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("login", pa.string()), ("full_name", pa.string()), ("email", pa.string()),
    ("status", pa.string()), ("lockdown", pa.string()), ("documents_owned", pa.int64()),
])
# Account states: active, disabled, lockdown (selected for lock-down by an access audit before the
# handover: already disabled, or about to be) and unknown (no such login in the source).
USABLE = "active"
RULE_NAMES = ("owners", "kept", "owners_by_group", "owners_by_case_type", "default_owner", "case", "none")
TITLE_WIDTH = 60
LIST_IDS = 10


def short(text: str | None, width: int = TITLE_WIDTH) -> str:
    value = " ".join((text or "").split())
    return value if len(value) <= width else value[:width - 1] + "…"


def id_order(value: str | None) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the others as text."""
    text = value or ""
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


@dataclass
class Snapshot:
    """Open cases and tasks with their new owners (ITEMS_SCHEMA rows) and the people concerned."""

    as_of: datetime                  # what "past due" is measured against
    as_of_basis: str                 # "the freeze point" or "the time of the snapshot"
    taken_at: datetime
    items: list[dict[str, Any]]
    people: list[dict[str, Any]]     # every account of the source (PEOPLE_SCHEMA rows)
    notes: list[str] = field(default_factory=list)

    @property
    def cases(self) -> list[dict[str, Any]]:
        return [row for row in self.items if row["kind"] == "case"]

    @property
    def tasks(self) -> list[dict[str, Any]]:
        return [row for row in self.items if row["kind"] == "task"]

    def changes(self) -> list[dict[str, Any]]:
        """Rows the reassignment changes: a new owner who is an account, other than the holder."""
        return [row for row in self.items if row["change"]]

    def save(self, folder: Path, before_commit: Any) -> Path:
        from decom.fileio import write_table

        write_table(folder / "people.parquet", pa.Table.from_pylist(self.people, schema=PEOPLE_SCHEMA),
                    before_commit)
        target = folder / "handover.parquet"
        write_table(target, pa.Table.from_pylist(self.items, schema=ITEMS_SCHEMA), before_commit)
        return target

    @classmethod
    def load(cls, folder: Path, outputs: Mapping[str, Any]) -> Snapshot:
        return cls(datetime.fromisoformat(outputs["as_of"]), str(outputs["as_of_basis"]),
                   datetime.fromisoformat(outputs["taken_at"]), pq.read_table(folder / "handover.parquet").to_pylist(),
                   pq.read_table(folder / "people.parquet").to_pylist(), list(outputs.get("notes", [])))


# -- reading the source ------------------------------------------------------------------------------

def _rows(ctx: StageContext, entity: str, keep: Any = None) -> Iterator[dict[str, Any]]:
    if entity not in ctx.adapter.entities():
        return
    for batch in ctx.adapter.read(entity):
        for row in batch.to_pylist():
            if keep is None or keep(row):
                yield row


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def as_of_point(ctx: StageContext, taken_at: datetime) -> tuple[datetime, str]:
    """The inventory's freeze_at when the plan names one, else the moment of the snapshot."""
    for stage in ctx.plan.spec.stages:
        freeze_at = getattr(stage, "freeze_at", None) if stage.kind == "inventory" else None
        if isinstance(freeze_at, datetime):
            return freeze_at.astimezone(UTC), "the freeze point"
    return taken_at, "the time of the snapshot"


def lockdown_selection(ctx: StageContext, users: list[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """login -> "<audit stage>: <reasons>" for accounts an access audit before this stage disables.

    After the audit ran, its findings export decides (the very list its lock-down used); before, the
    dry run judges the same account findings itself, without the directory.
    """
    from decom.stages import lockdown
    from decom.stages.access_analysis import account_findings
    from decom.stages.access_audit import freeze_point, read_findings

    chosen: dict[str, str] = {}
    notes: list[str] = []
    names = [s.name for s in ctx.plan.spec.stages]
    for spec in ctx.plan.spec.stages[:names.index(ctx.stage_name)]:
        if spec.kind != "access_audit" or not (spec.lockdown.disable or spec.lockdown.disable_logins):
            continue
        audit = StageContext(ctx.plan, spec.name, spec, ctx.state_dir, ctx.progress, ctx.adapter)
        exports = ctx.state_dir / "stages" / spec.name / "exports"
        if (exports / "findings.parquet").exists() and (exports / "users.parquet").exists():
            audited: list[dict[str, Any]] = pq.read_table(exports / "users.parquet").to_pylist()
            found = read_findings(exports / "findings.parquet")
        else:
            audited, found = users, account_findings(users, as_of=freeze_point(ctx)[0],
                                                     dormant_days=spec.dormant_days,
                                                     patterns=spec.shared_account_patterns)
            if {"departed", "directory_disabled"} & set(spec.lockdown.disable):
                notes.append(f"accounts the directory check of stage {spec.name!r} disables are known only "
                             "once that stage has run")
        try:
            selected = lockdown.selected_accounts(audit, audited, found)
        except UserError:
            continue  # an unknown login in disable_logins: the audit's own dry run reports it
        for account in selected:
            chosen.setdefault(account["login"], f"{spec.name}: {', '.join(account['reasons'])}")
    return chosen, notes


class Rules:
    """The plan's owner rules over the source's accounts."""

    def __init__(self, spec: Any, people: Iterable[Mapping[str, Any]]) -> None:
        self.spec = spec
        self.by_id = {str(p["user_id"]): p for p in people}
        self.by_login = {str(p["login"]): p for p in people}

    def status(self, login: str | None) -> str | None:
        if login is None:
            return None
        person = self.by_login.get(login)
        return "unknown" if person is None else str(person["status"])

    def owner(self, assignee: str | None, group: str | None, case_type: str | None,
              case_owner: tuple[str, str, str | None] | None = None) -> tuple[str | None, str, str | None]:
        """(new owner login, rule, rule key) for one holder; `case_owner` is the case's, for a task."""
        spec = self.spec
        if assignee is not None and assignee in spec.owners:
            return spec.owners[assignee], "owners", assignee
        if assignee is not None and self.status(assignee) == USABLE:
            return assignee, "kept", assignee
        if case_owner is not None and case_owner[0] is not None:
            return case_owner[0], "case", case_owner[2]
        if group is not None and group in spec.owners_by_group:
            return spec.owners_by_group[group], "owners_by_group", group
        if case_type is not None and case_type in spec.owners_by_case_type:
            return spec.owners_by_case_type[case_type], "owners_by_case_type", case_type
        if spec.default_owner:
            return spec.default_owner, "default_owner", None
        return None, "none", None

    def row(self, kind: str, item: Mapping[str, Any], case: Mapping[str, Any], groups: Mapping[str, str],
            as_of: datetime, case_owner: tuple[str, str, str | None] | None = None) -> dict[str, Any]:
        assignee_id = _text(item.get("assignee_id"))
        holder = self.by_id.get(assignee_id) if assignee_id is not None else None
        assignee = str(holder["login"]) if holder is not None else None
        group_id = _text(item.get("candidate_group_id"))
        group = groups.get(group_id, group_id) if group_id is not None else None
        login, rule, key = self.owner(assignee, group, _text(case.get("case_type")), case_owner)
        owner = self.by_login.get(login) if login is not None else None
        owner_id = str(owner["user_id"]) if owner is not None else None
        due = item.get("due_at")
        change = rule != "kept" and owner_id is not None and (owner_id != assignee_id or group_id is not None)
        return {
            "kind": kind, "item_id": str(item["task_id" if kind == "task" else "case_id"]),
            "case_id": str(item["case_id"]), "case_type": _text(case.get("case_type")),
            "title": _text(case.get("title")), "task_name": _text(item.get("name")) if kind == "task" else None,
            "state": _text(case.get("state")), "document_id": _text(case.get("document_id")),
            "assignee_id": assignee_id, "assignee_login": assignee if holder is not None else None,
            "assignee_status": ("unknown" if assignee_id is not None and holder is None else self.status(assignee)),
            "candidate_group_id": group_id, "candidate_group": group, "due_at": due,
            "created_at": item.get("created_at"), "past_due": due is not None and due < as_of,
            "new_owner_login": login, "new_owner_id": owner_id, "new_owner_status": self.status(login),
            "rule": rule, "rule_key": key, "change": change,
        }


def take_snapshot(ctx: StageContext) -> Snapshot:
    """Read the open cases and tasks and the accounts, and give each case and task its new owner."""
    taken_at = datetime.now(UTC).replace(microsecond=0)
    as_of, basis = as_of_point(ctx, taken_at)
    users = list(_rows(ctx, "users"))
    locked, notes = lockdown_selection(ctx, users)
    owned: dict[str, float] = {}
    if "documents" in ctx.adapter.entities():
        owned = ctx.adapter.breakdown("documents", "owner_id")
    people = []
    for user in users:
        login = str(user["login"])
        status = "lockdown" if login in locked else "disabled" if user.get("is_active") is False else USABLE
        people.append({"user_id": str(user["user_id"]), "login": login, "full_name": _text(user.get("full_name")),
                       "email": _text(user.get("email")), "status": status, "lockdown": locked.get(login),
                       "documents_owned": int(owned.get(str(user["user_id"]), 0))})
    groups = {str(g["group_id"]): str(g["name"]) for g in _rows(ctx, "groups")}
    cases = {str(c["case_id"]): c for c in _rows(ctx, "cases")}
    rules = Rules(ctx.stage_spec, people)
    items: list[dict[str, Any]] = []
    owners: dict[str, tuple[str, str, str | None]] = {}
    for case_id in sorted((k for k, c in cases.items() if c.get("status") == "open"), key=id_order):
        row = rules.row("case", cases[case_id], cases[case_id], groups, as_of)
        owners[case_id] = (row["new_owner_login"], row["rule"], row["rule_key"])
        items.append(row)
    tasks = sorted(_rows(ctx, "tasks", lambda t: t.get("status") == "open"), key=lambda t: id_order(str(t["task_id"])))
    for task in tasks:
        case = cases.get(str(task["case_id"]), {})
        items.append(rules.row("task", task, case, groups, as_of, owners.get(str(task["case_id"]))))
    return Snapshot(as_of, basis, taken_at, items, people, notes)


# -- judging the result ---------------------------------------------------------------------------------

def label(row: Mapping[str, Any]) -> str:
    """`case 12 (approval, "title")` or `task 40 (Утвердить) of case 12`."""
    if row["kind"] == "task":
        return f"task {row['item_id']} ({short(row['task_name'], 40)}) of case {row['case_id']}"
    return f"case {row['item_id']} ({row['case_type'] or 'no type'}, \"{short(row['title'])}\")"


def holder(row: Mapping[str, Any]) -> str:
    """Who has the item now, in words that do not change once the lock-down has run."""
    login, status = row["assignee_login"], row["assignee_status"]
    if login is not None:
        return {"lockdown": f"held by {login}, selected for lock-down",
                "disabled": f"held by the disabled account {login}"}.get(status, f"held by {login}")
    if row["assignee_id"] is not None:
        return f"held by user id {row['assignee_id']}, not an account of the source"
    if row["candidate_group"] is not None:
        return f"waiting in group {row['candidate_group']}"
    return "assigned to nobody"


def _named_by(rows: Iterable[Mapping[str, Any]]) -> str:
    sources = []
    for row in rows:
        rule, key = row["rule"], row["rule_key"]
        text = {"owners": f'owners["{key}"]', "owners_by_group": f'owners_by_group["{key}"]',
                "owners_by_case_type": f'owners_by_case_type["{key}"]', "default_owner": "default_owner"}.get(rule)
        if text and text not in sources:
            sources.append(text)
    return ", ".join(sources) or "the case rules"


def _ids(values: list[str]) -> str:
    ordered = sorted(set(values), key=id_order)
    more = f" and {len(ordered) - LIST_IDS} more" if len(ordered) > LIST_IDS else ""
    return ", ".join(ordered[:LIST_IDS]) + more


def _gets(rows: Sequence[Mapping[str, Any]]) -> str:
    cases = [r["item_id"] for r in rows if r["kind"] == "case"]
    tasks = [r["item_id"] for r in rows if r["kind"] == "task"]
    parts = [f"case(s) {_ids(cases)}" if cases else "", f"task(s) {_ids(tasks)}" if tasks else ""]
    return " and ".join(p for p in parts if p)


OWNER_PROBLEMS = {
    "unknown": ("handover_owner_unknown", "is not an account of the legacy system"),
    "disabled": ("handover_owner_disabled", "is disabled in the legacy system"),
    "lockdown": ("handover_owner_locked", "is selected for lock-down"),
}


def problems(snapshot: Snapshot) -> tuple[list[str], list[Finding]]:
    """(blockers, findings), most serious first: no owner, owners who cannot take work, cases past due.

    One blocker per case without an owner and per new owner who cannot take work; one blocker for
    all the cases past due (each is a finding of its own).
    """
    blockers: list[str] = []
    findings: list[Finding] = []
    ownerless = {r["case_id"] for r in snapshot.cases if r["new_owner_login"] is None}
    for row in snapshot.items:
        if row["new_owner_login"] is not None or (row["kind"] == "task" and row["case_id"] in ownerless):
            continue
        text = (f"{label(row)} has no new owner: {holder(row)}; name one in owners, owners_by_group, "
                "owners_by_case_type or default_owner")
        blockers.append(text)
        findings.append(Finding("high", "handover_no_owner", f"{row['kind']}:{row['item_id']}", text, {
            "case_id": row["case_id"], "assignee": row["assignee_login"], "group": row["candidate_group"]}))
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for row in snapshot.items:
        if row["new_owner_status"] in OWNER_PROBLEMS and row["rule"] != "kept":
            by_owner.setdefault(row["new_owner_login"], []).append(row)
    for login in sorted(by_owner):
        rows = by_owner[login]
        status = rows[0]["new_owner_status"]
        kind, what = OWNER_PROBLEMS[status]
        if status == "lockdown":
            reason = next((p["lockdown"] for p in snapshot.people if p["login"] == login), None)
            what += f" ({reason})" if reason else ""
        text = f"new owner {login} {what} (named by {_named_by(rows)}; gets {_gets(rows)})"
        blockers.append(text)
        findings.append(Finding("high", kind, f"user:{login}", text, {
            "login": login, "cases": [r["item_id"] for r in rows if r["kind"] == "case"],
            "tasks": [r["item_id"] for r in rows if r["kind"] == "task"]}))
    late = [row for row in snapshot.cases if row["past_due"]]
    when = f"{snapshot.as_of_basis} ({snapshot.as_of.date().isoformat()})"
    for row in late:
        days = (snapshot.as_of - row["due_at"]).days
        findings.append(Finding("medium", "case_past_due", f"case:{row['item_id']}",
                                f"{label(row)} is past due: due {row['due_at'].date().isoformat()}, "
                                f"{days} day(s) before {when}",
                                {"due_at": row["due_at"].isoformat(), "as_of": snapshot.as_of.isoformat(),
                                 "days": days, "new_owner": row["new_owner_login"]}))
    if late:
        blockers.append(f"{len(late)} open case(s) are past due at {when}: "
                        f"case(s) {_ids([r['item_id'] for r in late])}")
    return blockers, findings


def action_lines(snapshot: Snapshot, reassign: bool, package: bool) -> list[str]:
    """One line per case or task that changes hands."""
    lines = []
    for row in snapshot.items:
        login = row["new_owner_login"]
        if login is None or row["rule"] == "kept" or (row["assignee_login"] == login and not row["change"]):
            continue
        source = row["assignee_login"] or (f"group {row['candidate_group']}" if row["candidate_group"] else "nobody")
        why = "not an account of the legacy system" if row["new_owner_id"] is None else "target has no reassign"
        if reassign and row["change"]:
            lines.append(f"reassign {label(row)} from {source} to {login}")
        elif package:
            lines.append(f"hand {label(row)} from {source} to {login} in the package only ({why})")
        else:
            lines.append(f"cannot hand {label(row)} from {source} to {login}: {why}")
    return lines


def counts(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "open_cases": len(snapshot.cases), "open_tasks": len(snapshot.tasks),
        "past_due_cases": sum(1 for r in snapshot.cases if r["past_due"]),
        "past_due_tasks": sum(1 for r in snapshot.tasks if r["past_due"]),
        "cases_kept": sum(1 for r in snapshot.cases if r["rule"] == "kept"),
        "cases_to_new_owner": sum(1 for r in snapshot.cases if r["new_owner_login"] and r["rule"] != "kept"),
        "cases_without_owner": sum(1 for r in snapshot.cases if r["new_owner_login"] is None),
        "reassignments": len(snapshot.changes()),
    }
