"""The library API: every command of the CLI is one function here, and the tests call the same ones.

Each function imports what it needs when called: an auditor's `decom verify` then loads only the
archive modules (~0.3 s), not the engine, SQLAlchemy and the plan models (~0.6 s more).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from decom.errors import UserError
from decom.progress import QUIET, Progress

if TYPE_CHECKING:
    from decom.archive.verify import VerifyResult
    from decom.engine import RunResult, StagePlan
    from decom.journal import JournalCheck
    from decom.plan import LoadedPlan, PlanProblem
    from decom.record import RecordCheck, RecordResult


def validate(plan_path: Path | str) -> list[PlanProblem]:
    """All problems of a plan file (errors and warnings); raises nothing for a bad plan."""
    from decom.plan import check_plan

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
         stages: list[str] | None = None, progress: Progress = QUIET) -> PlanReport:
    """Dry run: ask every stage (or only the named `stages`) what it would do and write the report.
    Changes nothing in the source."""
    from decom import engine
    from decom.fileio import write_json, write_text
    from decom.plan import load_plan
    from decom.report.html import render_html
    from decom.report.markdown import render_markdown, report_data

    loaded = load_plan(plan_path)
    state_dir = _state_dir(loaded, state)
    planned = engine.plan_stages(loaded, state_dir, progress, only=stages)
    spec = loaded.spec.plan
    warnings = [str(w) for w in loaded.warnings]
    left_out = [s.name for s in loaded.spec.stages if s.name not in {p.stage for p in planned}]
    if left_out:
        warnings.append(f"dry run of some stages only (--stage); not planned here: {', '.join(left_out)}")
    header = {"name": spec.name, "owner": spec.owner, "ticket": spec.ticket, "file": str(loaded.path),
              "sha256": loaded.sha256, "source": loaded.source_url_redacted(),
              "generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "warnings": warnings}
    data = report_data(header, planned)
    out_dir = out or state_dir / "reports"
    markdown_path, json_path = out_dir / "plan-report.md", out_dir / "plan-report.json"
    html_path = out_dir / "plan-report.html"
    write_text(markdown_path, render_markdown(data))
    write_json(json_path, data)
    write_text(html_path, render_html(data))
    return PlanReport(planned, data, markdown_path, json_path, html_path)


def run(plan_path: Path | str, *, state: Path | None = None, stages: list[str] | None = None,
        accept_changed_plan: bool = False, progress: Progress = QUIET) -> RunResult:
    """Execute the plan's pending stages; after a crash the same call resumes where it stopped."""
    from decom import engine
    from decom.plan import load_plan

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
    from decom.checkpoint import CheckpointStore
    from decom.journal import Journal
    from decom.plan import load_plan

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
    from decom.plan import load_plan
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
    from decom.journal import Journal
    from decom.plan import load_plan

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


def _trusted_signer(signer_key: Path | None, signer_fingerprint: str | None) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from decom.archive.keys import load_public
    from decom.archive.verify import check_signer

    if signer_key is not None and signer_fingerprint is not None:
        raise UserError("give the signer's key (--signer-key) or its fingerprint (--signer-fingerprint), not both")
    if signer_key is not None:
        return load_public(Path(signer_key), Ed25519PublicKey)
    if signer_fingerprint is not None:
        return check_signer(signer_fingerprint)
    raise UserError("say which signer to trust: pass the signer's public key (--signer-key PUB) or its fingerprint "
                    "(--signer-fingerprint ed25519:...) as printed in the decommission report or journal")


def _recipient_key(key_file: Path | None) -> Any:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from decom.archive.keys import load_private

    return None if key_file is None else load_private(Path(key_file), X25519PrivateKey)


def verify(archive_dir: Path | str, *, signer_key: Path | None = None, signer_fingerprint: str | None = None,
           key_file: Path | None = None, full: bool = False, progress: Progress = QUIET) -> VerifyResult:
    """Verify an archive against its signed manifest, without the source (docs/archive-format.md section 8).

    Returns a decom.archive.verify.VerifyResult; integrity findings are its problems, never exceptions.
    """
    from decom.archive.verify import verify_archive

    signer = _trusted_signer(signer_key, signer_fingerprint)
    return verify_archive(Path(archive_dir), signer=signer, private_key=_recipient_key(key_file), full=full,
                          progress=progress)


def restore(archive_dir: Path | str, *, to: Path, key_file: Path, signer_key: Path | None = None,
            signer_fingerprint: str | None = None, document_ids: list[str] | tuple[str, ...] = (),
            case_ids: list[str] | tuple[str, ...] = (), everything: bool = False,
            progress: Progress = QUIET) -> list[Path]:
    """Restore document versions from an archive into `to`, each checked against the signed manifest."""
    from decom.archive.restore import restore as _restore

    if everything and (document_ids or case_ids):
        raise UserError("--all restores everything; do not combine it with --document or --case")
    if not (everything or document_ids or case_ids):
        raise UserError("say what to restore: --document ID, --case ID (each repeatable) or --all")
    signer = _trusted_signer(signer_key, signer_fingerprint)
    return _restore(Path(archive_dir), private_key=_recipient_key(key_file), signer=signer, to=Path(to),
                    document_ids=document_ids, case_ids=case_ids, everything=everything, progress=progress)


def record(plan_path: Path | str, *, state: Path | None = None, out: Path | None = None) -> RecordResult:
    """Write the signed decommission record (record.json, record.sig, record.html; default <state>/record).

    Signed with the plan's archive.signing_key_file. Journals `record_written` with the record's SHA-256
    after the record is written: the journal head in the record is the one before that entry.
    """
    from decom.plan import load_plan
    from decom.record import write_record

    loaded = load_plan(plan_path)
    return write_record(loaded, _state_dir(loaded, state), out)


def verify_record(record_dir: Path | str, *, signer: Any, journal: Path | None = None) -> RecordCheck:
    """Problems with a decommission record (empty list: it verifies); `.notes` and `.facts` ride along.

    signer: the trusted Ed25519 public key, a public key file (Path) or a fingerprint "ed25519:<hex>".
    journal: the journal to check against the record (default: the path the record names, if it exists).
    """
    from decom.record import verify_record as _verify_record

    return _verify_record(Path(record_dir), signer, Path(journal) if journal is not None else None)
