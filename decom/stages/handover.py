"""Handover stage: every open case and task reaches a new owner, and the people concerned are told.

Steps:
- `cases`: snapshot the open cases and tasks with the new owner the plan's rules give each
  (`handover.parquet`, and `people.parquet` with the accounts); the rules are in `handover_rules.py`.
- `check`: refuse to go on while a blocker of the snapshot (no owner, an owner who is disabled or
  unknown, a case past due) is not accepted in the plan's [[accept]]; accepted ones are journaled.
- `reassign:NNNN` (target "reassign"): batches of changes through the adapter's `reassign_case` and
  `reassign_task` actions: probe, perform, probe; each journaled with its before and after state.
  The original states of a batch are saved before its first change, and a resumed batch skips what
  an earlier attempt already changed (the journal says which), so no change is made or journaled twice.
- `package` (target "package"): the successor's package, `handover_package.py`.
- `notices` and, with an SMTP server in the plan, `notices:send`: `notices.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from functools import partial
from typing import Any

from decom.engine import StageContext, StagePlan, Step
from decom.errors import UserError
from decom.fileio import write_json
from decom.stages import handover_package, notices
from decom.stages import handover_rules as rules
from decom.stages.handover_rules import Snapshot
from decom.stages.lockdown import _plain

ACTIONS = {"case": "reassign_case", "task": "reassign_task"}


def _relative(ctx: StageContext, path: Any) -> str:
    return str(path.relative_to(ctx.state_dir))


def _same(value: Any, user_id: str | None) -> bool:
    return value is not None and user_id is not None and str(value) == user_id


# -- the dry run ---------------------------------------------------------------------------------------

def plan(ctx: StageContext) -> StagePlan:
    spec = ctx.stage_spec
    snapshot = rules.take_snapshot(ctx)
    result = StagePlan(ctx.stage_name, "handover", True,
                       f"hand over the open cases and tasks of {ctx.adapter.describe()}")
    if "cases" not in ctx.adapter.entities():
        result.decisions.append("the source gives no cases: there is nothing to hand over")
    result.blockers, result.findings = rules.problems(snapshot)
    result.counts = rules.counts(snapshot)
    reassign, package = "reassign" in spec.target, "package" in spec.target
    result.actions = rules.action_lines(snapshot, reassign, package)
    result.risks.extend(snapshot.notes)
    if reassign:
        result.blockers.extend(_missing_actions(ctx, snapshot))
    else:
        result.decisions.append("target has no \"reassign\": the legacy system keeps the old assignees")
    if package:
        source = handover_package.content_source_name(ctx)
        result.actions.append(f"write the handover package ({len(snapshot.cases)} case record(s) and index.csv) "
                              f"to {ctx.stage_dir / 'package'}; document hashes and archive ids from {source}")
    result.decisions.append(
        "owner rules, first match wins: owners (by the assignee's login); the assignee keeps the case when "
        "active and not selected for lock-down; owners_by_group; owners_by_case_type; default_owner")
    result.decisions.append(f"past due is measured against {snapshot.as_of_basis} "
                            f"({snapshot.as_of.isoformat()})")
    by_owner: dict[str, float] = {}
    for row in snapshot.cases:
        key = row["new_owner_login"] or "(no owner)"
        by_owner[key] = by_owner.get(key, 0.0) + 1
    result.charts = {"open cases by new owner": dict(sorted(by_owner.items(), key=lambda kv: (-kv[1], kv[0])))}
    notices.plan_notices(ctx, snapshot, result)
    return result


def _missing_actions(ctx: StageContext, snapshot: Snapshot) -> list[str]:
    kinds = sorted({row["kind"] for row in snapshot.changes()})
    return [f"handover wants to reassign {kind}s but the source adapter has no [actions.{ACTIONS[kind]}]"
            for kind in kinds if ACTIONS[kind] not in ctx.adapter.actions()]


# -- the steps -----------------------------------------------------------------------------------------

def _cases(ctx: StageContext) -> dict[str, Any]:
    snapshot = rules.take_snapshot(ctx)
    path = snapshot.save(ctx.stage_dir, lambda: ctx.crashpoint("inside"))
    return {"file": _relative(ctx, path), "as_of": snapshot.as_of.isoformat(), "as_of_basis": snapshot.as_of_basis,
            "taken_at": snapshot.taken_at.isoformat(), "notes": snapshot.notes, **rules.counts(snapshot)}


def _snapshot(ctx: StageContext) -> Snapshot:
    if "snapshot" not in ctx.cache:
        ctx.cache["snapshot"] = Snapshot.load(ctx.stage_dir, ctx.outputs["cases"])
    snapshot: Snapshot = ctx.cache["snapshot"]
    return snapshot


def _acceptances(ctx: StageContext) -> list[Any]:
    return [a for a in ctx.plan.spec.accept if a.stage == ctx.stage_name]


def _check(ctx: StageContext) -> dict[str, Any]:
    """The run's gate: the dry run's blockers, judged on the snapshot, each accepted or the run stops."""
    accepted, remaining = [], []
    for text in rules.problems(_snapshot(ctx))[0]:
        match = next((a for a in _acceptances(ctx) if a.match in text), None)
        if match is None:
            remaining.append(text)
        else:
            accepted.append((text, match))
    if remaining:
        raise UserError(f"stage {ctx.stage_name}: {len(remaining)} blocker(s) not accepted in [[accept]] "
                        f"(stage = \"{ctx.stage_name}\"); first: {remaining[0]}")
    for text, match in accepted:
        ctx.record("handover_blocker_accepted", blocker=text, match=match.match, accepted_by=match.by,
                   reason=match.reason)
    return {"accepted": len(accepted)}


def _journaled(ctx: StageContext) -> set[str]:
    """Targets whose change this step already journaled (a torn last line is ignored)."""
    keys: set[str] = set()
    if ctx.journal is None or not ctx.journal.path.exists():
        return keys
    for line in ctx.journal.path.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        details = entry.get("details", {})
        if (entry.get("event") == "handover_action" and details.get("stage") == ctx.stage_name
                and details.get("step") == ctx.current_step):
            keys.add(str(details.get("key")))
    return keys


def _reassign(ctx: StageContext, name: str, targets: list[dict[str, Any]]) -> dict[str, Any]:
    folder = ctx.stage_dir / "reassign"
    before_path = folder / f"{name}.before.json"
    resumed = before_path.exists()
    saved = json.loads(before_path.read_text(encoding="utf-8")) if resumed else {}
    before: dict[str, Any] = saved.get("before", {})
    for target in targets:
        if target["key"] not in before:  # first sight of this target: its original state
            before[target["key"]] = _plain(ctx.adapter.probe(target["action"], target["ident"]))
    write_json(before_path, {"before": before})
    journaled = _journaled(ctx) if resumed else set()
    changes: list[dict[str, Any]] = []
    made = 0
    for target in targets:
        action, ident, key = target["action"], target["ident"], target["key"]
        current = _plain(ctx.adapter.probe(action, ident))
        detail = {"key": key, "action": action, "target": ident, "case_id": target["case_id"],
                  "from_login": target["from"], "to_login": target["to"]}
        if _same(current, target["assignee_id"]):  # an earlier attempt made this change
            if key not in journaled:  # ... and was killed before it journaled it
                ctx.record("handover_action", **detail, before=before[key], after=current, rows_changed=0,
                           recovered=True)
            changes.append({**detail, "before": before[key], "after": current, "rows_changed": 0,
                            "already_done": True})
            continue
        rows = ctx.adapter.perform(action, {**ident, "assignee_id": target["assignee_id"]})
        after = _plain(ctx.adapter.probe(action, ident))
        ctx.record("handover_action", **detail, before=current, after=after, rows_changed=rows)
        if not _same(after, target["assignee_id"]):
            raise UserError(f"{action} of {key} did not take: the adapter's probe shows {after!r} after the change, "
                            f"not {target['assignee_id']!r} ({target['to']}); check [actions.{action}]")
        changes.append({**detail, "before": current, "after": after, "rows_changed": rows})
        made += 1
        if made == 1:
            ctx.crashpoint("inside")  # one change made and journaled, the others not yet
    record = folder / f"{name}.json"
    write_json(record, {"changes": changes})
    return {"file": _relative(ctx, record), "targets": len(targets), "changed": made,
            "already_done": len(targets) - made, "rows_changed": sum(c["rows_changed"] for c in changes)}


def _targets(snapshot: Snapshot) -> list[dict[str, Any]]:
    targets = []
    for row in snapshot.changes():
        ident = {"case_id": row["item_id"]} if row["kind"] == "case" else {"task_id": row["item_id"]}
        targets.append({"key": f"{row['kind']}:{row['item_id']}", "action": ACTIONS[row["kind"]], "ident": ident,
                        "case_id": row["case_id"], "from": row["assignee_login"] or row["candidate_group"],
                        "to": row["new_owner_login"], "assignee_id": row["new_owner_id"]})
    return targets


def run(ctx: StageContext) -> Iterator[Step]:
    spec = ctx.stage_spec
    yield Step("cases", "snapshot the open cases and tasks and give each its new owner", _cases,
               {"target": list(spec.target), "default_owner": spec.default_owner, "owners": dict(spec.owners),
                "owners_by_group": dict(spec.owners_by_group), "owners_by_case_type": dict(spec.owners_by_case_type)})
    yield Step("check", "stop unless every blocker is accepted in [[accept]]", _check,
               {"accept": [{"match": a.match, "by": a.by} for a in _acceptances(ctx)]})
    snapshot = _snapshot(ctx)
    if "reassign" in spec.target:
        targets = _targets(snapshot)
        for action in sorted({t["action"] for t in targets}):
            if action not in ctx.adapter.actions():
                raise UserError(f"the source adapter cannot reassign {action.removeprefix('reassign_')}s: "
                                f"its mapping has no [actions.{action}]")
        size = spec.batch_size
        for first in range(0, len(targets), size):
            part = targets[first:first + size]
            name = f"{first // size:04d}"
            digest = hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()
            yield Step(f"reassign:{name}", f"reassign {len(part)} case(s)/task(s) through the adapter",
                       partial(_reassign, name=name, targets=part),
                       {"first": first, "targets": len(part), "sha256": digest})
    if "package" in spec.target:
        yield Step("package", "write the handover package for the successor", handover_package.write_package,
                   {"content_source": handover_package.content_source_name(ctx)})
    if spec.notices is not None:
        yield from notices.steps(ctx)
