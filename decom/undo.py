"""`decom undo`: put back what lock-down steps changed, until the point of no return.

Undo restores, for every change of a done lock-down step (newest first), the state the step
saw before it changed anything, journals each restore with before/after, and marks the step
`undone` so a later `decom run` would apply it again. Once a stage that switches things off
(shutdown, final_checks) has started after it, there is no way back and undo refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decom.adapter import open_adapter
from decom.engine import open_store
from decom.errors import UserError
from decom.journal import Journal
from decom.lock import RunLock
from decom.plan import LoadedPlan
from decom.stages.lockdown import saved_before_states

POINT_OF_NO_RETURN_KINDS = frozenset({"shutdown", "final_checks"})
UNDOABLE_PREFIX = "lockdown:"


@dataclass(frozen=True)
class UndoAction:
    step: str
    action: str
    target: dict[str, Any]
    restore_to: Any


def _stage_index(plan: LoadedPlan, stage: str) -> int:
    names = [s.name for s in plan.spec.stages]
    if stage not in names:
        raise UserError(f"{plan.path}: no stage named {stage!r} (stages: {', '.join(names)})")
    return names.index(stage)


def undo(plan: LoadedPlan, state_dir: Path, stage: str, *, dry_run: bool) -> list[UndoAction]:
    """Restore the lock-down changes of `stage`; with dry_run only list them. Returns the actions."""
    index = _stage_index(plan, stage)
    name = plan.spec.plan.name
    store = open_store(plan, state_dir)
    journal = Journal(state_dir / "journal.jsonl")
    try:
        with RunLock(name, state_dir, store):
            statuses = store.stage_status(name)
            for later in plan.spec.stages[index + 1:]:
                if later.kind in POINT_OF_NO_RETURN_KINDS and statuses.get(later.name) not in (None, "not_available"):
                    raise UserError(f"cannot undo {stage}: stage {later.name!r} ({later.kind}) has already started; "
                                    "that is the point of no return")
            stage_dir = state_dir / "stages" / stage
            steps = [s for s in store.steps(name, stage) if s.step_id.startswith(UNDOABLE_PREFIX)
                     and s.status in ("done", "running", "failed")]
            planned: list[UndoAction] = []
            for step in sorted(steps, key=lambda s: s.seq, reverse=True):
                saved = saved_before_states(stage_dir, step.step_id)
                if saved is not None:  # no file: the step stopped before changing anything
                    action_name, changes = saved
                    planned += [UndoAction(step.step_id, action_name, c["target"], c["before"])
                                for c in reversed(changes)]
            if dry_run or not planned:
                return planned
            adapter = open_adapter(plan.source_config())
            try:
                journal.append("undo_started", stage=stage, actions=len(planned))
                for action in planned:
                    rows = adapter.restore(action.action, action.target, action.restore_to)
                    after = adapter.probe(action.action, action.target)
                    journal.append("undo_action", stage=stage, step=action.step, action=action.action,
                                   target=action.target, restored_to=action.restore_to, after=str(after),
                                   rows_changed=rows)
                for step in steps:
                    store.mark_step(name, stage, step.step_id, "undone")
                store.set_stage(name, stage, "undone")
                journal.append("undo_finished", stage=stage, steps=[s.step_id for s in steps])
            finally:
                adapter.close()
            return planned
    finally:
        store.close()
