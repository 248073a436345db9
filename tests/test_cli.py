"""The CLI as a user meets it: help, exit codes, one-line errors, dry run that changes nothing, no secrets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import write_plan

from decom.cli import run_cli

COMMANDS = [[], ["validate"], ["plan"], ["run"], ["status"], ["demo"], ["demo", "build"], ["adapters"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "decom")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and "--help" in out


def test_validate_accepts_the_demo_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped demo plan is valid once make demo has made its keys (here: made in a copy)."""
    import shutil

    from decom.archive.keys import generate

    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "plans", tmp_path / "plans", ignore=shutil.ignore_patterns("*.state"))
    generate("recipient", tmp_path / "demo-data" / "keys" / "auditor")
    generate("signing", tmp_path / "demo-data" / "keys" / "signing")
    assert run_cli(["validate", str(tmp_path / "plans" / "demo.toml")]) == 0
    assert "valid" in capsys.readouterr().out


MALFORMED = {
    "syntax error": ('[plan\nname = "x"\n', "line 1"),
    "unknown key": ('[plan]\nname = "x"\nowner = "o"\nownr = "typo"\n[source]\nadapter = "demo"\n'
                    'url = "sqlite:///x.db"\n[[stages]]\nkind = "inventory"\n', "plan.ownr"),
    "missing required key": ('[plan]\nname = "x"\n[source]\nadapter = "demo"\nurl = "sqlite:///x.db"\n'
                             '[[stages]]\nkind = "inventory"\n', "plan.owner"),
    "wrong type": ('[plan]\nname = "x"\nowner = "o"\n[source]\nadapter = "demo"\nurl = "sqlite:///x.db"\n'
                   '[[stages]]\nkind = "inventory"\nbatch_files = "500"\n', "batch_files"),
    "unknown adapter": ('[plan]\nname = "x"\nowner = "o"\n[source]\nadapter = "dokuwiki"\nurl = "sqlite:///x.db"\n'
                        '[[stages]]\nkind = "inventory"\n', "dokuwiki"),
    "unset env var": ('[plan]\nname = "x"\nowner = "o"\n[source]\nadapter = "demo"\n'
                      'url = "postgresql+psycopg://u:${DECOM_SURELY_UNSET_VAR}@h/db"\n[[stages]]\nkind = "inventory"\n',
                      "DECOM_SURELY_UNSET_VAR"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=str)
def test_malformed_plans_exit_2_with_a_precise_message_for_every_command(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = MALFORMED[case]
    plan = tmp_path / "bad.toml"
    plan.write_text(text, encoding="utf-8")
    for command in ("validate", "plan", "run", "status"):
        assert run_cli([command, str(plan)]) == 2, command
        captured = capsys.readouterr()
        output = captured.out + captured.err
        assert expected in output, (command, output)
        assert str(plan) in output
        assert "Traceback" not in output


ACCEPT_MISSING = """
[[accept]]
stage = "inventory"
match = "missing from the content root"
by = "Records office lead"
reason = "lost before the decommission; paper original kept"
"""


def test_missing_content_is_a_blocker_until_the_plan_accepts_it_on_the_record(
        small_demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, content, facts = small_demo
    plan = write_plan(tmp_path, url, content)
    assert run_cli(["--quiet", "plan", str(plan)]) == 3
    out = capsys.readouterr().out
    assert f"BLOCKER: inventory: 1 referenced content object(s) missing from the content root " \
           f"(first: {facts.missing_content_refs[0]})" in out

    plan.write_text(plan.read_text(encoding="utf-8") + ACCEPT_MISSING, encoding="utf-8")
    assert run_cli(["--quiet", "plan", str(plan)]) == 0
    report = json.loads((tmp_path / "test-plan.state" / "reports" / "plan-report.json").read_text(encoding="utf-8"))
    assert report["blockers"] == []
    assert "accepted by Records office lead" in report["stages"][0]["accepted"][0]
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    journal = (tmp_path / "test-plan.state" / "journal.jsonl").read_text(encoding="utf-8")
    assert '"event":"blocker_accepted"' in journal and "Records office lead" in journal


LOCKDOWN_EVERYTHING = """
[stages.lockdown]
disable = ["dormant", "never_logged_in", "shared"]
read_only = true
"""


def test_plan_is_a_dry_run_that_changes_nothing_in_the_source(small_demo, tmp_path: Path) -> None:
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content, access_audit=True, extra_stages=LOCKDOWN_EVERYTHING + ACCEPT_MISSING)

    def fingerprint() -> dict[str, str]:
        files = [Path(url.removeprefix("sqlite:///")), *sorted(p for p in content.rglob("*") if p.is_file())]
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files} | {
            "tree": ",".join(sorted(str(p) for p in content.rglob("*")))}

    before = fingerprint()
    assert run_cli(["--quiet", "plan", str(plan), "--state", str(tmp_path / "s")]) == 0
    assert fingerprint() == before
    report = json.loads((tmp_path / "s" / "reports" / "plan-report.json").read_text(encoding="utf-8"))
    assert report["ready"] is True
    inventory = report["stages"][0]
    assert inventory["counts"]["documents"] == 60
    lockdown_actions = [a for a in report["stages"][1]["actions"] if a.startswith(("disable account", "make the"))]
    assert len(lockdown_actions) > 3, "the dry run must list the lock-down it would take"
    markdown = (tmp_path / "s" / "reports" / "plan-report.md").read_text(encoding="utf-8")
    assert "# Decommission plan: test-plan" in markdown and "inventory" in markdown
    assert not (tmp_path / "s" / "checkpoints.sqlite").exists(), "a dry run must not start a run"


def test_unreachable_database_is_a_blocker_in_the_plan_and_one_line_error_in_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content = tmp_path / "content"
    content.mkdir()
    plan = write_plan(tmp_path, "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", content)
    assert run_cli(["--quiet", "plan", str(plan)]) == 3
    out = capsys.readouterr().out
    assert "BLOCKER" in out and "cannot reach the source database" in out
    assert run_cli(["--quiet", "run", str(plan)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decom: error: cannot reach the source database postgresql+psycopg://postgres@127.0.0.1:1")
    assert err.count("\n") == 1


def test_a_stage_not_built_yet_stops_the_run_loudly_after_the_stages_before_it(
        small_demo, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import decom.engine

    # Every kind is built now; pretend the handover is not, as a stage of a later kind would be.
    monkeypatch.setattr(decom.engine, "AVAILABLE_STAGE_KINDS", decom.engine.AVAILABLE_STAGE_KINDS - {"handover"})
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content, extra_stages='\n[[stages]]\nkind = "handover"\n')
    assert run_cli(["--quiet", "plan", str(plan)]) == 3
    assert "not available yet" in capsys.readouterr().out
    assert run_cli(["--quiet", "run", str(plan)]) == 3
    err = capsys.readouterr().err
    assert "stage 'handover' (kind handover) is not available yet" in err and "done: inventory" in err
    assert run_cli(["status", str(plan), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["status"]) for s in status["stages"]] == [("inventory", "done"),
                                                                    ("handover", "not_available")]


def test_run_then_status_then_rerun_does_no_work_twice(small_demo, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content)
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    first = capsys.readouterr().out
    assert "0 already done" in first
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    assert "(0 step(s) run, 20 already done)" in capsys.readouterr().out
    assert run_cli(["status", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "inventory" in out and "done" in out and "chain intact" in out


def test_status_exits_1_when_the_journal_was_tampered_with(small_demo, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content)
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    journal = tmp_path / "test-plan.state" / "journal.jsonl"
    lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].replace('"step_started"', '"step_skipped"')
    journal.write_text("".join(lines), encoding="utf-8")
    capsys.readouterr()
    assert run_cli(["status", str(plan)]) == 1
    assert "BROKEN: line 4" in capsys.readouterr().out


def test_secrets_from_the_environment_never_reach_state_journal_or_reports(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from decom.demo.generator import DemoSpec, build_demo

    content = tmp_path / "content"
    build_demo(pg_url, content, DemoSpec(documents=30))
    secret = "s3cret-Parol-口令-7781"
    monkeypatch.setenv("DECOM_T_DB_PASSWORD", secret)
    url_with_secret = pg_url.replace("postgres@", "postgres:${DECOM_T_DB_PASSWORD}@")
    plan = write_plan(tmp_path, url_with_secret, content, extra_stages=ACCEPT_MISSING)
    assert run_cli(["--quiet", "plan", str(plan)]) == 0
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    encoded = secret.encode()
    leaks = [p for p in (tmp_path / "test-plan.state").rglob("*") if p.is_file() and encoded in p.read_bytes()]
    assert leaks == []
    journal = (tmp_path / "test-plan.state" / "journal.jsonl").read_text(encoding="utf-8")
    assert "postgres:***@" in journal
