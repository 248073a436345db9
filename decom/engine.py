"""Run a plan's stages as checkpointed steps, resume after a crash, and plan them without changing anything.

A stage module offers `plan(ctx) -> StagePlan` (read-only) and `run(ctx) -> Iterator[Step]`.
The engine pulls one step at a time: a step already done is skipped and its recorded outputs
handed back; any other step is marked running, executed, and marked done with its outputs.
Because the generator sees earlier outputs before yielding the next step, a stage may decide
its later steps from earlier results (e.g. one hashing step per batch of exported versions).
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from decom.adapter import LegacyAdapter, open_adapter
from decom.checkpoint import CheckpointStore
from decom.errors import IncompleteError, UserError
from decom.findings import Finding
from decom.journal import Journal, operator_name
from decom.memory import freeze_startup_objects
from decom.plan import AVAILABLE_STAGE_KINDS, LoadedPlan
from decom.progress import Progress

CRASHPOINT_ENV = "DECOM_TEST_CRASHPOINT"


@dataclass
class Step:
    """One idempotent unit of work. `action` returns JSON-able outputs recorded with the done mark."""

    id: str
    description: str
    action: Callable[[StageContext], dict[str, Any]]
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StagePlan:
    """What a stage would do, for the dry-run report. Nothing in it may come from changing anything."""

    stage: str
    kind: str
    available: bool
    summary: str
    actions: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    estimates: dict[str, Any] = field(default_factory=dict)
    blockers: list[str] = field(default_factory=list)
    risks: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # Blockers the plan accepts ([[accept]]): "<blocker> — accepted by <by>: <reason>"
    accepted: list[str] = field(default_factory=list)
    # Charts for the report: title -> {label: value}, e.g. {"documents per year": {"2019": 156, ...}}
    charts: dict[str, dict[str, float]] = field(default_factory=dict)


class StageModule(Protocol):
    def plan(self, ctx: StageContext) -> StagePlan: ...
    def run(self, ctx: StageContext) -> Iterator[Step]: ...


def crashpoint(step_id: str, point: str) -> None:
    """Fault injection for the resume tests: stop at a named point of a named step.

    DECOM_TEST_CRASHPOINT="<step-id glob>@<point>[:pause]" where point is start (marked running,
    nothing done), inside (the step's output written under its temporary name), written (output in
    place, not yet marked done) or done (marked done, next step not begun). The process kills itself
    with SIGKILL there, or with ":pause" touches DECOM_TEST_PAUSE_FILE and waits to be killed.
    Unset in normal use.
    """
    spec = os.environ.get(CRASHPOINT_ENV)
    if not spec or "@" not in spec:
        return
    pattern, wanted = spec.rsplit("@", 1)
    wanted, _, action = wanted.partition(":")
    if wanted != point or not fnmatch.fnmatchcase(step_id, pattern):
        return
    if action == "pause":
        Path(os.environ["DECOM_TEST_PAUSE_FILE"]).write_text(str(os.getpid()))
        time.sleep(600)
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class StageContext:
    """Everything a stage may use. Outputs of this stage's finished steps are in `outputs`."""

    plan: LoadedPlan
    stage_name: str
    stage_spec: Any
    state_dir: Path
    progress: Progress
    _adapter: LegacyAdapter | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    current_step: str = ""
    journal: Journal | None = None
    run_id: str = ""
    on_close: list[Callable[[], None]] = field(default_factory=list)   # e.g. stop a read-ahead thread

    def record(self, event: str, **details: Any) -> None:
        """Journal an action of the current step (a dry run has no journal and records nothing)."""
        if self.journal is not None:
            self.journal.append(event, run_id=self.run_id, stage=self.stage_name, step=self.current_step, **details)

    @property
    def stage_dir(self) -> Path:
        return self.state_dir / "stages" / self.stage_name

    @property
    def adapter(self) -> LegacyAdapter:
        if self._adapter is None:
            self._adapter = open_adapter(self.plan.source_config())
        return self._adapter

    def crashpoint(self, point: str) -> None:
        crashpoint(self.current_step, point)

    def close(self) -> None:
        while self.on_close:
            self.on_close.pop()()
        if self._adapter is not None:
            self._adapter.close()
            self._adapter = None


def stage_module(kind: str) -> StageModule | None:
    """The module implementing a stage kind, or None when it is not available yet."""
    if kind not in AVAILABLE_STAGE_KINDS:
        return None
    from decom import stages

    found: StageModule = stages.module(kind)
    return found


def open_store(plan: LoadedPlan, state_dir: Path) -> CheckpointStore:
    url = plan.state_url()
    return CheckpointStore(url) if url else CheckpointStore.in_folder(state_dir)


@dataclass
class RunResult:
    run_id: str
    state_dir: Path
    stages_done: list[str]
    steps_run: int
    steps_skipped: int
    journal_head: str


def select_stages(plan: LoadedPlan, names: list[str] | None) -> list[Any]:
    """The plan's stage specs named in `names` (all when None), in plan order; UserError for an unknown name."""
    stages = plan.spec.stages
    if names:
        unknown = sorted(set(names) - {s.name for s in stages})
        if unknown:
            raise UserError(f"{plan.path}: no stage named {', '.join(unknown)} "
                            f"(stages: {', '.join(s.name for s in stages)})")
    return [s for s in stages if names is None or s.name in names]


class Runner:
    """Executes one plan under its lock. Use through decom.api.run."""

    def __init__(self, plan: LoadedPlan, state_dir: Path, store: CheckpointStore, journal: Journal,
                 progress: Progress) -> None:
        self.plan = plan
        self.state_dir = state_dir
        self.store = store
        self.journal = journal
        self.progress = progress
        self.name = plan.spec.plan.name
        self.run_id = uuid.uuid4().hex
        self.steps_run = 0
        self.steps_skipped = 0

    def check_plan_hash(self, accept_changed_plan: bool) -> None:
        recorded = self.store.recorded_plan_hash(self.name)
        if recorded is None or recorded == self.plan.sha256:
            self.store.record_plan_hash(self.name, self.plan.sha256)
            return
        if not accept_changed_plan:
            raise UserError(
                f"{self.plan.path}: the plan changed since its run began (recorded sha256 {recorded[:12]}…, "
                f"now {self.plan.sha256[:12]}…); check the change, then resume with --accept-changed-plan")
        self.journal.append("plan_change_accepted", run_id=self.run_id, previous_sha256=recorded,
                            new_sha256=self.plan.sha256)
        self.store.record_plan_hash(self.name, self.plan.sha256)

    def execute(self, stage_names: list[str] | None) -> list[str]:
        done: list[str] = []
        for spec in select_stages(self.plan, stage_names):
            module = stage_module(spec.kind)
            if module is None:
                self.journal.append("stage_not_available", run_id=self.run_id, stage=spec.name, kind=spec.kind)
                self.store.set_stage(self.name, spec.name, "not_available")
                finished = f"; done: {', '.join(done)}" if done else ""
                raise IncompleteError(
                    f"stage {spec.name!r} (kind {spec.kind}) is not available yet in this version of decom; "
                    f"the run stops before it{finished}")
            self.run_stage(spec, module)
            done.append(spec.name)
        return done

    def run_stage(self, spec: Any, module: StageModule) -> None:
        freeze_startup_objects()  # once, in the CLI's own process, before any stage's own objects exist
        ctx = StageContext(self.plan, spec.name, spec, self.state_dir, self.progress, journal=self.journal,
                           run_id=self.run_id)
        self.store.set_stage(self.name, spec.name, "running")
        self.journal.append("stage_started", run_id=self.run_id, stage=spec.name, kind=spec.kind)
        try:
            for seq, step in enumerate(module.run(ctx)):
                self.run_step(ctx, seq, step)
        finally:
            ctx.close()
        self.store.set_stage(self.name, spec.name, "done")
        self.journal.append("stage_done", run_id=self.run_id, stage=spec.name)

    def run_step(self, ctx: StageContext, seq: int, step: Step) -> None:
        record = self.store.get_step(self.name, ctx.stage_name, step.id)
        if record is not None and record.status == "done" and record.outputs is not None:
            output_file = record.outputs.get("file")
            same_inputs = record.inputs == json.loads(json.dumps(step.inputs, sort_keys=True, default=str))
            if not same_inputs:
                self.journal.append("step_inputs_changed", run_id=self.run_id, stage=ctx.stage_name,
                                    step=step.id, before=record.inputs, now=step.inputs)
            elif output_file is None or (self.state_dir / output_file).exists():
                ctx.outputs[step.id] = record.outputs
                self.steps_skipped += 1
                return
            # Marked done but its output is gone (deleted, or another state folder): redo, never trust it.
            self.journal.append("step_output_missing", run_id=self.run_id, stage=ctx.stage_name, step=step.id,
                                file=output_file)
        ctx.current_step = step.id
        attempt = self.store.begin_step(self.name, ctx.stage_name, step.id, seq, step.description,
                                        step.inputs, self.run_id)
        self.journal.append("step_started", run_id=self.run_id, stage=ctx.stage_name, step=step.id,
                            attempt=attempt, description=step.description, inputs=step.inputs,
                            redo_after_interruption=attempt > 1)
        crashpoint(step.id, "start")
        started = time.monotonic()
        try:
            outputs = step.action(ctx)
        except BaseException as exc:
            message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self.store.fail_step(self.name, ctx.stage_name, step.id, message)
            self.journal.append("step_failed", run_id=self.run_id, stage=ctx.stage_name, step=step.id,
                                error=message)
            raise
        crashpoint(step.id, "written")
        self.store.finish_step(self.name, ctx.stage_name, step.id, outputs)
        self.journal.append("step_done", run_id=self.run_id, stage=ctx.stage_name, step=step.id,
                            seconds=round(time.monotonic() - started, 3), outputs=outputs)
        crashpoint(step.id, "done")
        ctx.outputs[step.id] = outputs
        self.steps_run += 1


def run_plan(plan: LoadedPlan, state_dir: Path, *, stages: list[str] | None = None,
             accept_changed_plan: bool = False, progress: Progress) -> RunResult:
    from decom.lock import RunLock

    store = open_store(plan, state_dir)
    journal = Journal(state_dir / "journal.jsonl")
    try:
        with RunLock(plan.spec.plan.name, state_dir, store):
            runner = Runner(plan, state_dir, store, journal, progress)
            runner.check_plan_hash(accept_changed_plan)
            store.start_run(runner.run_id, runner.name, plan.sha256, operator_name(), socket.gethostname(),
                            os.getpid())
            journal.append("run_started", run_id=runner.run_id, plan=runner.name, plan_file=str(plan.path),
                           plan_sha256=plan.sha256, source=plan.source_url_redacted(),
                           stages=[s.name for s in plan.spec.stages], only=stages)
            for accepted in plan.spec.accept:
                journal.append("blocker_accepted", run_id=runner.run_id, stage=accepted.stage,
                               match=accepted.match, accepted_by=accepted.by, reason=accepted.reason)
            try:
                done = runner.execute(stages)
            except IncompleteError as exc:
                store.finish_run(runner.run_id, "incomplete", str(exc))
                journal.append("run_incomplete", run_id=runner.run_id, reason=str(exc))
                raise
            except BaseException as exc:
                reason = str(exc) if isinstance(exc, UserError) else type(exc).__name__
                store.finish_run(runner.run_id, "failed", reason)
                journal.append("run_failed", run_id=runner.run_id, reason=reason)
                raise
            store.finish_run(runner.run_id, "done")
            entry = journal.append("run_finished", run_id=runner.run_id, stages_done=done,
                                   steps_run=runner.steps_run, steps_skipped=runner.steps_skipped)
            del entry
            return RunResult(runner.run_id, state_dir, done, runner.steps_run, runner.steps_skipped,
                             journal.head())
    finally:
        store.close()


def apply_acceptances(plan: LoadedPlan, stage: StagePlan) -> None:
    """Move the blockers the plan accepts into `accepted`, naming who accepted them and why."""
    remaining = []
    for blocker in stage.blockers:
        accepted = [a for a in plan.spec.accept if a.stage == stage.stage and a.match in blocker]
        if accepted:
            stage.accepted.append(f"{blocker} — accepted by {accepted[0].by}: {accepted[0].reason}")
        else:
            remaining.append(blocker)
    stage.blockers = remaining


def plan_stages(plan: LoadedPlan, state_dir: Path, progress: Progress,
                only: list[str] | None = None) -> list[StagePlan]:
    """Every stage's read-only plan (or only the stages named in `only`). A stage that cannot be planned
    reports that as a blocker."""
    results: list[StagePlan] = []
    shared_adapter: LegacyAdapter | None = None
    try:
        for spec in select_stages(plan, only):
            module = stage_module(spec.kind)
            if module is None:
                results.append(StagePlan(spec.name, spec.kind, False,
                                         "not available yet in this version of decom",
                                         blockers=[f"stage {spec.name!r} (kind {spec.kind}) is not available "
                                                   "yet: `decom run` stops before it"]))
                continue
            ctx = StageContext(plan, spec.name, spec, state_dir, progress, shared_adapter)
            try:
                stage_plan = module.plan(ctx)
            except UserError as exc:
                stage_plan = StagePlan(spec.name, spec.kind, True, "cannot be planned", blockers=[str(exc)])
            apply_acceptances(plan, stage_plan)
            results.append(stage_plan)
            shared_adapter = ctx._adapter
    finally:
        if shared_adapter is not None:
            shared_adapter.close()
    return results
