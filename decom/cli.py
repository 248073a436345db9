"""The `decom` command: typer wiring over decom.api, and the one place errors become exit codes.

Exit codes: 0 done; 1 internal error (a bug: rerun with --debug); 2 user error (plan, input,
environment: one line says what and where); 3 stopped on purpose before the plan was done
(a stage not available yet, blockers in a dry run).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from decom import __version__, api
from decom.errors import UserError
from decom.progress import Progress

app = typer.Typer(
    name="decom", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Retire a legacy EDM system safely and provably: one staged plan file, run with resumable "
         "checkpoints. Exit codes: 0 ok, 1 internal error, 2 user error, 3 stopped before the plan was done.")
keys_app = typer.Typer(no_args_is_help=True, help="Create archive keys: recipients (X25519) and signers (Ed25519).")
demo_app = typer.Typer(no_args_is_help=True, help="Build the demo legacy EDM system (SQLite + content folder).")
app.add_typer(demo_app, name="demo")
app.add_typer(keys_app, name="keys")

_options: dict[str, bool] = {"debug": False, "quiet": False}

PlanArg = Annotated[Path, typer.Argument(help="The plan file (TOML).", show_default=False)]
StateOpt = Annotated[Path | None, typer.Option("--state", help="State folder (default: the plan's state.folder, "
                                                              "else <plan file name>.state beside it).")]


def _progress() -> Progress:
    return Progress(enabled=False) if _options["quiet"] else Progress()


def _echo(text: str = "") -> None:
    typer.echo(text)


def _print_version(value: bool) -> None:
    if value:
        _echo(f"decom {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _options["debug"], _options["quiet"] = debug, quiet


@app.command()
def validate(plan_file: PlanArg) -> None:
    """Check a plan file and print every problem with file, line and key. Exit 2 if any is an error."""
    problems = api.validate(plan_file)
    for problem in problems:
        _echo(f"{problem.severity}: {problem}")
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        _echo(f"{plan_file}: {len(errors)} error(s)")
        raise typer.Exit(2)
    _echo(f"{plan_file}: valid" + (f" ({len(problems)} warning(s))" if problems else ""))


@app.command()
def plan(
    plan_file: PlanArg,
    state: StateOpt = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the report (default: <state>/reports).")] = None,
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Plan only this stage (repeatable).")] = None,
) -> None:
    """Dry run: what every stage would do, with counts, estimates and blockers. Changes nothing.

    Writes plan-report.html (for people; opens offline, prints well), plan-report.md and
    plan-report.json. Exit 3 when there are blockers.
    """
    report = api.plan(plan_file, state=state, out=out, stages=stage, progress=_progress())
    for planned in report.stages:
        marker = "" if planned.available else " (not available yet)"
        _echo(f"{planned.stage}{marker}: {planned.summary}")
        for action in planned.actions:
            _echo(f"  - {action}")
    for blocker in report.blockers:
        _echo(f"BLOCKER: {blocker}")
    if stage:
        _echo(f"planned only: {', '.join(s.stage for s in report.stages)} (--stage)")
    _echo(f"report: {report.html_path}")
    _echo(f"        {report.markdown_path}")
    _echo(f"        {report.json_path}")
    if report.blockers:
        raise typer.Exit(3)


@app.command()
def run(
    plan_file: PlanArg,
    state: StateOpt = None,
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Run only this stage (repeatable).")] = None,
    accept_changed_plan: Annotated[bool, typer.Option(
        "--accept-changed-plan", help="Resume although the plan file changed since the run began "
                                      "(recorded in the journal).")] = False,
) -> None:
    """Execute the pending stages of a plan. After a crash, the same command resumes where it stopped."""
    result = api.run(plan_file, state=state, stages=stage, accept_changed_plan=accept_changed_plan,
                     progress=_progress())
    _echo(f"done: {', '.join(result.stages_done) or 'nothing to do'} "
          f"({result.steps_run} step(s) run, {result.steps_skipped} already done)")
    _echo(f"state: {result.state_dir}")
    _echo(f"journal head: {result.journal_head}")


@app.command()
def status(
    plan_file: PlanArg,
    state: StateOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show stage and step progress from the checkpoint store, and check the journal chain."""
    result = api.status(plan_file, state=state)
    if as_json:
        data: dict[str, Any] = {
            "plan": result.plan_name, "state_dir": str(result.state_dir), "plan_changed": result.plan_changed,
            "stages": [vars(s) for s in result.stages],
            "journal": {"entries": result.journal.entries, "head": result.journal.head,
                        "intact": result.journal.ok, "problem": result.journal.problem},
            "runs": result.runs}
        _echo(json.dumps(data, default=str, indent=2, ensure_ascii=False))
    else:
        _echo(f"plan {result.plan_name}  (state {result.state_dir})")
        if result.plan_changed:
            _echo("  the plan file changed since its run began")
        for s in result.stages:
            extra = f", {s.steps_interrupted} interrupted" if s.steps_interrupted else ""
            extra += f", {s.steps_failed} failed: {s.last_error}" if s.steps_failed else ""
            _echo(f"  {s.name:<16} {s.status:<14} {s.steps_done} step(s) done{extra}")
        chain = "intact" if result.journal.ok else f"BROKEN: {result.journal.problem}"
        _echo(f"journal: {result.journal.entries} entries, chain {chain}")
    if not result.journal.ok:
        raise typer.Exit(1)


@app.command()
def undo(
    plan_file: PlanArg,
    stage: Annotated[str, typer.Option("--stage", help="The stage whose lock-down to undo (e.g. access_audit).")],
    state: StateOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be restored.")] = False,
) -> None:
    """Put back what a stage's lock-down changed (accounts, rights), until the point of no return."""
    actions = api.undo(plan_file, stage=stage, state=state, dry_run=dry_run)
    verb = "would restore" if dry_run else "restored"
    for action in actions:
        _echo(f"{verb}: {action.action} {json.dumps(action.target, ensure_ascii=False)} -> {action.restore_to!r}")
    _echo(f"{len(actions)} change(s) {verb}" if actions else "nothing to undo")


@keys_app.command("generate")
def keys_generate(
    kind: Annotated[str, typer.Option(help="recipient (can decrypt archives) or signing (signs manifests).")],
    out: Annotated[Path, typer.Option(help="Path prefix: writes <out>.key (private, mode 0600) and <out>.pub.")],
) -> None:
    """Generate a key pair. Give .pub files to the plan; keep .key files where only their owner reads them."""
    private_path, public_path, fp = api.generate_keys(kind, out)
    _echo(f"private key: {private_path}  (keep it secret; never put it in a plan)")
    _echo(f"public key:  {public_path}")
    _echo(f"fingerprint: {fp}")


ArchiveArg = Annotated[Path, typer.Argument(help="The archive folder (holds manifest.json).", show_default=False)]
SignerKeyOpt = Annotated[Path | None, typer.Option(
    "--signer-key", help="The signer's Ed25519 public key (PEM) you trust, from the decommission records.")]
SignerFpOpt = Annotated[str | None, typer.Option(
    "--signer-fingerprint", help="Or its fingerprint ed25519:<hex>, as the decommission report and journal print it.")]


@app.command()
def verify(
    archive_dir: ArchiveArg,
    full: Annotated[bool, typer.Option("--full", help="Decrypt every page and re-hash every document version "
                                                      "(needs --key-file). Past 262,144 versions its index goes to "
                                                      "temporary files in TMPDIR, ~100 bytes a version.")] = False,
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="A recipient's X25519 private key (PEM): also checks footers and row counts.")] = None,
    signer_key: SignerKeyOpt = None,
    signer_fingerprint: SignerFpOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check an archive against its signed manifest, without the source. Exit 0 intact, 1 a problem found.

    Quick (default): signature, size and SHA-256 of every file, no unlisted file, Merkle root; with a
    key file also every footer and row count. Full: also decrypts every page and re-hashes every
    document version.
    """
    result = api.verify(archive_dir, signer_key=signer_key, signer_fingerprint=signer_fingerprint,
                        key_file=key_file, full=full, progress=_progress())
    checked = result.checked
    if as_json:
        _echo(json.dumps({"archive": str(archive_dir), "ok": result.ok, "mode": checked.get("mode"),
                          "problems": [vars(p) for p in result.problems], "checked": checked},
                         indent=2, ensure_ascii=False))
    else:
        for problem in result.problems:
            _echo(f"FAIL {problem.file}: {problem.what}")
        what = (f"{checked['files']} file(s), {checked['bytes']:,} bytes, {checked['versions']} version(s)"
                + (f", {checked['rows']:,} rows decrypted" if checked.get("footers") else ""))
        verdict = "OK" if result.ok else f"FAILED: {len(result.problems)} problem(s)"
        _echo(f"{verdict}: {archive_dir} ({checked.get('mode')} verification; {what})")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def restore(
    archive_dir: ArchiveArg,
    to: Annotated[Path, typer.Option("--to", help="Folder to restore into; existing files are never overwritten.")],
    key_file: Annotated[Path, typer.Option("--key-file", help="A recipient's X25519 private key (PEM).")],
    signer_key: SignerKeyOpt = None,
    signer_fingerprint: SignerFpOpt = None,
    document: Annotated[list[str] | None, typer.Option("--document", help="A document id (repeatable).")] = None,
    case: Annotated[list[str] | None, typer.Option("--case", help="Every document of a case (repeatable).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every document version in the archive.")] = False,
) -> None:
    """Restore document versions from an archive as <to>/<document_id>/<version_no>-<file name>.

    The signature is checked first; every version is checked against the manifest's SHA-256.
    """
    paths = api.restore(archive_dir, to=to, key_file=key_file, signer_key=signer_key,
                        signer_fingerprint=signer_fingerprint, document_ids=document or [], case_ids=case or [],
                        everything=everything, progress=_progress())
    for path in paths:
        _echo(f"restored: {path}")
    _echo(f"{len(paths)} version(s) restored into {to}, each matching the signed manifest's SHA-256")


@app.command()
def record(
    plan_file: PlanArg,
    state: StateOpt = None,
    out: Annotated[Path | None, typer.Option(help="Folder for record.json, record.sig and record.html "
                                                  "(default: <state>/record).")] = None,
) -> None:
    """Write the signed decommission record: runs, stages, archives, findings, accepted blockers, journal head.

    Signed with the plan's archive.signing_key_file. The record states the journal head before its own
    `record_written` entry, which is journaled right after with the record's SHA-256.
    """
    result = api.record(plan_file, state=state, out=out)
    _echo(f"record: {result.json_path}  (SHA-256 {result.sha256})")
    _echo(f"        {result.sig_path}  (signed by {result.signer})")
    _echo(f"        {result.html_path}")
    _echo(f"journal: {result.journal_entries} entries, head {result.journal_head} (before record_written)")


@app.command("verify-record")
def verify_record(
    record_dir: Annotated[Path, typer.Argument(help="The record folder (holds record.json and record.sig).",
                                               show_default=False)],
    signer_key: SignerKeyOpt = None,
    signer_fingerprint: SignerFpOpt = None,
    journal: Annotated[Path | None, typer.Option(
        "--journal", help="The journal to check against the record (default: the path the record names).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check a decommission record's signature and the journal against it. Exit 0 ok, 1 a problem found.

    A journal that merely continued after the record passes, with a note, when its first entries still
    end in the recorded head.
    """
    if (signer_key is None) == (signer_fingerprint is None):
        raise UserError("say which signer to trust: --signer-key PUB or --signer-fingerprint ed25519:..., one of them")
    check = api.verify_record(record_dir, signer=signer_key if signer_key is not None else signer_fingerprint,
                              journal=journal)
    if as_json:
        _echo(json.dumps({"ok": check.ok, "problems": list(check), "notes": check.notes,
                          **check.facts}, indent=2, ensure_ascii=False))
    else:
        for problem in check:
            _echo(f"FAIL {problem}")
        for note in check.notes:
            _echo(f"note: {note}")
        facts = check.facts
        journal_text = (f"journal {facts['journal_checked']} checked" if facts.get("journal_checked")
                        else "journal not checked")
        verdict = "OK" if check.ok else f"FAILED: {len(check)} problem(s)"
        _echo(f"{verdict}: {record_dir} (plan {facts.get('plan')}, signed by {facts.get('signer')}; "
              f"{facts.get('journal_entries')} journal entries, head {facts.get('journal_head')}; {journal_text})")
    if not check.ok:
        raise typer.Exit(1)


@demo_app.command("build")
def demo_build(
    out: Annotated[Path, typer.Option(help="Folder for legacy.sqlite and content/.")] = Path("demo-data"),
    db: Annotated[str | None, typer.Option(help="Build into this database URL instead of SQLite.")] = None,
    documents: Annotated[int, typer.Option(help="How many documents.")] = 2000,
) -> None:
    """Generate the demo legacy EDM: database + content folder with every problem a real one has."""
    if db is None:
        out.mkdir(parents=True, exist_ok=True)
    url = db or f"sqlite:///{(out / 'legacy.sqlite').resolve()}"
    facts = api.build_demo(url, out / "content", documents=documents, progress=_progress())
    _echo(f"demo EDM built: {facts.documents} documents, {facts.versions} versions, {facts.users} users "
          f"in {url if db is None else '(database given)'}; content under {out / 'content'}")


@app.command("adapters")
def adapters_list() -> None:
    """List the installed source adapters."""
    from decom.adapter import adapter_names

    for name in adapter_names():
        _echo(name)


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this; `main` exits with it)."""
    try:
        app(args=argv, prog_name="decom")  # standalone: usage errors print and exit 2 by themselves
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UserError as exc:
        print(f"decom: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("decom: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else is a bug in decom
        if _options["debug"] or "--debug" in (argv or sys.argv):
            traceback.print_exc()
        print(f"decom: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def main() -> None:
    from decom.memory import own_process

    own_process()  # malloc reuses what streaming frees; stages may freeze start-up objects (decom/memory.py)
    sys.exit(run_cli())
