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


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    _options["debug"], _options["quiet"] = debug, quiet
    if version:
        _echo(f"decom {__version__}")
        raise typer.Exit(0)


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
) -> None:
    """Dry run: what every stage would do, with counts, estimates and blockers. Changes nothing.

    Writes plan-report.html (for people; opens offline, prints well), plan-report.md and
    plan-report.json. Exit 3 when there are blockers.
    """
    report = api.plan(plan_file, state=state, out=out, progress=_progress())
    for stage in report.stages:
        marker = "" if stage.available else " (not available yet)"
        _echo(f"{stage.stage}{marker}: {stage.summary}")
        for action in stage.actions:
            _echo(f"  - {action}")
    for blocker in report.blockers:
        _echo(f"BLOCKER: {blocker}")
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
    sys.exit(run_cli())
