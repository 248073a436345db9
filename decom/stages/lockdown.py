"""Lock-down actions of the access audit: disable selected accounts, or make the system read-only.

Each action goes through the adapter (probe, perform, probe) and is journaled with its before
and after state. The before states of a step are saved to a file *before* the first change, so
a step redone after a crash still knows what the system looked like originally, and
`decom undo` can put it back until the point of no return.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from decom.adapter import LegacyAdapter
from decom.engine import StageContext, Step
from decom.errors import UserError
from decom.fileio import write_json
from decom.findings import Finding

DISABLE = "disable_user"
REVOKE_WRITE = "revoke_write"
BATCH = 500


def _plain(value: Any) -> Any:
    """A probed value as JSON keeps it: integers stay integers so restore binds the same type."""
    if isinstance(value, Decimal):
        return int(value) if value == int(value) else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def _key(target: Mapping[str, Any]) -> str:
    return json.dumps(dict(target), sort_keys=True, default=str)


def selected_accounts(ctx: StageContext, users: Iterable[Mapping[str, Any]],
                      findings: Iterable[Finding]) -> list[dict[str, Any]]:
    """Active accounts the plan's lockdown table selects, each with the reasons, in login order."""
    spec = ctx.stage_spec.lockdown
    reasons: dict[str, list[str]] = {}
    for login in spec.disable_logins:
        reasons.setdefault(login, []).append("named in the plan")
    wanted = {f"{kind}_account" if kind in ("dormant", "shared", "departed") else kind for kind in spec.disable}
    for finding in findings:
        if finding.kind in wanted and finding.subject.startswith("user:"):
            reasons.setdefault(finding.subject[len("user:"):], []).append(finding.kind)
    by_login = {str(u["login"]): u for u in users}
    unknown = sorted(login for login in spec.disable_logins if login not in by_login)
    if unknown:
        raise UserError(f"stage {ctx.stage_name}: lockdown.disable_logins names unknown account(s): "
                        f"{', '.join(unknown)}")
    chosen = []
    for login in sorted(reasons):
        user = by_login.get(login)
        if user is None or not user.get("is_active") or login in spec.keep_logins:
            continue
        chosen.append({"user_id": str(user["user_id"]), "login": login, "reasons": sorted(set(reasons[login]))})
    return chosen


def _write_rights(ctx: StageContext) -> list[dict[str, Any]]:
    """Every write/admin permission row of the source, as revoke_write targets, in a stable order."""
    rows: list[dict[str, Any]] = []
    for batch in ctx.adapter.read("permissions"):
        for row in batch.to_pylist():
            if row["access"] in ("write", "admin"):
                rows.append({k: row[k] for k in ("object_type", "object_id", "principal_type", "principal_id")})
    return sorted(rows, key=_key)


def _require(adapter: LegacyAdapter, action: str, what: str) -> None:
    if action not in adapter.actions():
        raise UserError(f"the source adapter cannot {what}: its mapping has no [actions.{action}]")


def blockers(ctx: StageContext) -> list[str]:
    """What would stop the lock-down from running, for the dry run."""
    spec = ctx.stage_spec.lockdown
    problems = []
    needs = [(DISABLE, "disable accounts", bool(spec.disable or spec.disable_logins)),
             (REVOKE_WRITE, "revoke write rights", spec.read_only)]
    for action, what, wanted in needs:
        if wanted and action not in ctx.adapter.actions():
            problems.append(f"lock-down wants to {what} but the source adapter has no [actions.{action}]")
    return problems


def describe(ctx: StageContext, users: Iterable[Mapping[str, Any]], findings: Iterable[Finding]) -> list[str]:
    """The lock-down actions `decom run` would take, one line each (accounts named; rights counted)."""
    lines = [f"disable account {a['login']} (user {a['user_id']}): {', '.join(a['reasons'])}"
             for a in selected_accounts(ctx, users, findings)]
    if ctx.stage_spec.lockdown.read_only:
        lines.append(f"make the system read-only: set {len(_write_rights(ctx))} write/admin permission "
                     "entries to read")
    return lines


def _apply(ctx: StageContext, action: str, targets: list[dict[str, Any]], name: str) -> dict[str, Any]:
    folder = ctx.stage_dir / "lockdown"
    before_path = folder / f"{name}.before.json"
    saved = json.loads(before_path.read_text(encoding="utf-8")) if before_path.exists() else {}
    before: dict[str, Any] = saved.get("before", {})
    for target in targets:
        if _key(target) not in before:  # first sight of this target: the original state
            before[_key(target)] = _plain(ctx.adapter.probe(action, target))
    write_json(before_path, {"action": action, "before": before})
    ctx.crashpoint("inside")
    changes = []
    for target in targets:
        changed = ctx.adapter.perform(action, target)
        after = _plain(ctx.adapter.probe(action, target))
        change = {"target": target, "before": before[_key(target)], "after": after, "rows_changed": changed}
        ctx.record("lockdown_action", action=action, **change)
        changes.append(change)
    record = folder / f"{name}.json"
    write_json(record, {"action": action, "changes": changes})
    return {"file": str(record.relative_to(ctx.state_dir)), "action": action, "targets": len(targets),
            "rows_changed": sum(c["rows_changed"] for c in changes)}


def steps(ctx: StageContext, users: Iterable[Mapping[str, Any]], findings: Iterable[Finding]) -> Iterator[Step]:
    spec = ctx.stage_spec.lockdown
    accounts = selected_accounts(ctx, users, findings)
    if accounts:
        _require(ctx.adapter, DISABLE, "disable accounts")
        targets = [{"user_id": a["user_id"]} for a in accounts]
        yield Step("lockdown:disable-accounts", f"disable {len(accounts)} account(s)",
                   partial(_apply, action=DISABLE, targets=targets, name="disable-accounts"),
                   {"logins": [a["login"] for a in accounts]})
    if spec.read_only:
        _require(ctx.adapter, REVOKE_WRITE, "revoke write rights")
        rights = _write_rights(ctx)
        for index in range(0, len(rights), BATCH):
            part = rights[index:index + BATCH]
            name = f"read-only-{index // BATCH:04d}"
            yield Step(f"lockdown:{name}", f"set {len(part)} write/admin rights to read",
                       partial(_apply, action=REVOKE_WRITE, targets=part, name=name),
                       {"first": index, "targets": len(part)})


def saved_before_states(stage_dir: Path, step_id: str) -> tuple[str, list[dict[str, Any]]] | None:
    """(action, [{target, before}]) saved by a lock-down step before its first change, or None.

    Undo uses this rather than the step's record, so a step that crashed half-way is undone too.
    """
    path = stage_dir / "lockdown" / f"{step_id.removeprefix('lockdown:')}.before.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return str(saved["action"]), [{"target": json.loads(key), "before": value}
                                  for key, value in saved["before"].items()]
