"""The library API: every command of the CLI is one function here, and the tests call the same ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from decom import engine
from decom.checkpoint import CheckpointStore
from decom.engine import RunResult, StagePlan
from decom.errors import UserError
from decom.fileio import write_json, write_text
from decom.journal import Journal, JournalCheck
from decom.plan import LoadedPlan, PlanProblem, check_plan, load_plan
from decom.progress import QUIET, Progress
from decom.report.html import render_html
from decom.report.markdown import render_markdown, report_data


def validate(plan_path: Path | str) -> list[PlanProblem]:
    """All problems of a plan file (errors and warnings); raises nothing for a bad plan."""
    return check_plan(plan_path)


def _state_dir(plan: LoadedPlan, state: Path | None) -> Path:
    return plan.state_dir(state)


@dataclass(frozen=True)
class PlanReport:
    stages: list[StagePlan]
    data: dict[str, Any]
    markdown_path: Path
    json_path: Path
    html_path: Path

    @property
    def blockers(self) -> list[str]:
        return list(self.data["blockers"])


def plan(plan_path: Path | str, *, state: Path | None = None, out: Path | None = None,
         progress: Progress = QUIET) -> PlanReport:
    """Dry run: ask every stage what it would do and write the report. Changes nothing in the source."""
    loaded = load_plan(plan_path)
    state_dir = _state_dir(loaded, state)
    stages = engine.plan_stages(loaded, state_dir, progress)
    spec = loaded.spec.plan
    header = {"name": spec.name, "owner": spec.owner, "ticket": spec.ticket, "file": str(loaded.path),
              "sha256": loaded.sha256, "source": loaded.source_url_redacted(),
              "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "warnings": [str(w) for w in loaded.warnings]}
    data = report_data(header, stages)
    out_dir = out or state_dir / "reports"
    markdown_path, json_path = out_dir / "plan-report.md", out_dir / "plan-report.json"
    html_path = out_dir / "plan-report.html"
    write_text(markdown_path, render_markdown(data))
    write_json(json_path, data)
    write_text(html_path, render_html(data))
    return PlanReport(stages, data, markdown_path, json_path, html_path)


def run(plan_path: Path | str, *, state: Path | None = None, stages: list[str] | None = None,
        accept_changed_plan: bool = False, progress: Progress = QUIET) -> RunResult:
    """Execute the plan's pending stages; after a crash the same call resumes where it stopped."""
    loaded = load_plan(plan_path)
    return engine.run_plan(loaded, _state_dir(loaded, state), stages=stages,
                           accept_changed_plan=accept_changed_plan, progress=progress)


@dataclass(frozen=True)
class StageStatus:
    name: str
    kind: str
    status: str  # pending | running | done | not_available
    steps_done: int
    steps_interrupted: int
    steps_failed: int
    last_error: str | None


@dataclass(frozen=True)
class Status:
    plan_name: str
    state_dir: Path
    plan_changed: bool
    stages: list[StageStatus]
    runs: list[dict[str, Any]]
    journal: JournalCheck


def status(plan_path: Path | str, *, state: Path | None = None) -> Status:
    """Stage and step progress from the checkpoint store, and whether the journal chain is intact."""
    loaded = load_plan(plan_path)
    state_dir = _state_dir(loaded, state)
    name = loaded.spec.plan.name
    url = loaded.state_url()
    if url is None and not (state_dir / "checkpoints.sqlite").exists():
        stages = [StageStatus(s.name, s.kind, "pending", 0, 0, 0, None) for s in loaded.spec.stages]
        return Status(name, state_dir, False, stages, [], Journal(state_dir / "journal.jsonl").verify())
    store = CheckpointStore(url) if url else CheckpointStore.in_folder(state_dir)
    try:
        recorded = store.recorded_plan_hash(name)
        stage_states = store.stage_status(name)
        result = []
        for spec in loaded.spec.stages:
            steps = store.steps(name, spec.name)
            failed = [s for s in steps if s.status == "failed"]
            result.append(StageStatus(
                spec.name, spec.kind, stage_states.get(spec.name, "pending"),
                sum(1 for s in steps if s.status == "done"), sum(1 for s in steps if s.status == "running"),
                len(failed), failed[-1].error if failed else None))
        runs = store.runs(name)
    finally:
        store.close()
    return Status(name, state_dir, recorded is not None and recorded != loaded.sha256, result, runs,
                  Journal(state_dir / "journal.jsonl").verify())


def undo(plan_path: Path | str, *, stage: str, state: Path | None = None, dry_run: bool = False) -> list[Any]:
    """Restore what the lock-down steps of `stage` changed (or, with dry_run, list it)."""
    from decom.undo import undo as _undo

    loaded = load_plan(plan_path)
    return _undo(loaded, _state_dir(loaded, state), stage, dry_run=dry_run)


def generate_keys(kind: str, out_prefix: Path) -> tuple[Path, Path, str]:
    """A new key pair: (private key file, public key file, fingerprint). kind: recipient | signing."""
    from cryptography.hazmat.primitives import serialization

    from decom.archive.keys import fingerprint, generate

    private_path, public_path = generate(kind, out_prefix)
    public = serialization.load_pem_public_key(public_path.read_bytes())
    return private_path, public_path, fingerprint(public)  # type: ignore[arg-type]


def verify_journal(plan_path: Path | str, *, state: Path | None = None) -> JournalCheck:
    loaded = load_plan(plan_path)
    return Journal(_state_dir(loaded, state) / "journal.jsonl").verify()


def build_demo(db_url: str, content_root: Path, documents: int = 2000, seed: int | None = None,
               progress: Progress = QUIET) -> Any:
    """Build the demo legacy EDM (database + content folder); returns what was generated."""
    from decom.demo.generator import DemoSpec
    from decom.demo.generator import build_demo as _build

    spec = DemoSpec(documents=documents) if seed is None else DemoSpec(documents=documents, seed=seed)
    if documents < 1:
        raise UserError("--documents must be at least 1")
    return _build(db_url, content_root, spec, progress=progress.enabled)
