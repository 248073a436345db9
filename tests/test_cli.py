"""The CLI as a user meets it: help, exit codes, one-line errors, dry run that changes nothing, no secrets."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import socket
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO, write_plan

from decom.cli import run_cli

COMMANDS = [[], ["validate"], ["plan"], ["run"], ["status"], ["demo"], ["demo", "build"], ["adapters"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "decom")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and "--help" in out


def test_version_prints_the_version_without_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    from decom import __version__

    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"decom {__version__}"


def demo_hosts() -> ModuleType:
    """scripts/demo_hosts.py, which prepares and starts the demo plan's host app1."""
    spec = importlib.util.spec_from_file_location("demo_hosts", REPO / "scripts" / "demo_hosts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_copy(folder: Path) -> Path:
    """plans/ copied into `folder` with what make demo-data makes beside it (but no EDM): demo-data/keys/ and
    demo-data/hosts/ (scripts/demo_hosts.py prepare). Returns the copy of plans/demo.toml."""
    import shutil

    from decom.archive.keys import generate

    shutil.copytree(REPO / "plans", folder / "plans", ignore=shutil.ignore_patterns("*.state"))
    generate("recipient", folder / "demo-data" / "keys" / "auditor")
    generate("signing", folder / "demo-data" / "keys" / "signing")
    assert demo_hosts().prepare(folder / "demo-data" / "hosts") == 0
    return folder / "plans" / "demo.toml"


def test_validate_accepts_the_demo_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped demo plan is valid once make demo-data has made its keys and app1's ssh_config and
    known_hosts (here: made beside a copy), whether or not the host can be started."""
    plan = demo_copy(tmp_path)
    assert run_cli(["validate", str(plan)]) == 0
    assert "valid" in capsys.readouterr().out
    # What the static plan names on app1 is where scripts/demo_hosts.py start puts it.
    hosts = demo_hosts()
    text = plan.read_text(encoding="utf-8")
    assert f'"{hosts.HOST_ROOT}/keys/exchange-signing.key"' in text and f"port = {hosts.DAEMON_PORT}" in text
    config = (tmp_path / "demo-data" / "hosts" / "ssh_config").read_text(encoding="utf-8")
    client_key = tmp_path / "demo-data" / "hosts" / "keys" / "id_ed25519"
    assert "Host app1" in config and f"IdentityFile {client_key}" in config


@pytest.mark.timeout(180)
def test_the_demo_plan_runs_all_six_stages_and_records_shutdown_and_final_checks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """make demo with app1 started: a copy of plans/demo.toml on the 2,000-document demo EDM and the real
    sshd host (tests/ssh_hosts.py, through scripts/demo_hosts.py start) runs all six stages in one run,
    and its one signed record holds the shutdown actions and the final checks."""
    hosts = demo_hosts()
    plan = demo_copy(tmp_path)
    folder = tmp_path / "demo-data" / "hosts"
    assert run_cli(["--quiet", "demo", "build", "--out", str(tmp_path / "demo-data")]) == 0
    started = hosts.start(folder)
    out = capsys.readouterr().out
    if started != 0:  # no root, no sshd or a port taken: a failure here, never a skip
        pytest.fail(out.strip() + " (run `make services`, as root)", pytrace=False)
    try:
        assert run_cli(["--quiet", "plan", str(plan)]) == 0, capsys.readouterr().out
        assert "app1: service:edm-web: sudo -n -- sh -c 'kill $(cat" in capsys.readouterr().out
        assert run_cli(["--quiet", "run", str(plan)]) == 0
        assert run_cli(["--quiet", "record", str(plan)]) == 0
    finally:
        assert hosts.stop(folder) == 0
    assert not hosts.HOST_ROOT.exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", hosts.DAEMON_PORT)) != 0, "the demo daemon must be stopped"

    record_dir = tmp_path / "plans" / "demo.state" / "record"
    record = json.loads((record_dir / "record.json").read_bytes())
    assert [r["status"] for r in record["runs"]] == ["done"]
    actions = {a["details"]["action"]: a["details"]["status"] for a in record["shutdown"]["journal_actions"]
               if a["event"] == "shutdown_action"}
    root = hosts.HOST_ROOT
    assert set(actions) == {"service:edm-web", f"cron:{root}/cron.d/edm-sync", f"port:{hosts.DAEMON_PORT}",
                            f"remove_file:{root}/keys/exchange-signing.key"}
    assert actions["service:edm-web"] == actions[f"remove_file:{root}/keys/exchange-signing.key"] == "done"
    assert set(actions.values()) <= {"done", "already_done"}  # the port closes with the service
    [stage] = record["final_checks"]["stages"]
    checks = {c["id"]: c for c in stage["checks"]["checks"]}
    assert {i for i, c in checks.items() if c["status"] == "pass"} == {
        f"port:app1:{hosts.DAEMON_PORT}", f"http:app1:http://127.0.0.1:{hosts.DAEMON_PORT}/",
        f"process:app1:http.server {hosts.DAEMON_PORT}", f"job:app1:{root}/cron.d/edm-sync:disi-sync",
        f"key_file:app1:{root}/keys/exchange-signing.key"}
    # The activity after the freeze the demo plants fails its checks, accepted on the record by the plan.
    assert {i for i, c in checks.items() if c["status"] == "fail" and c["accepted_by"]} == {
        f"logs:app1:{root}/log/access.log", "activity:source"}
    signing_pub = tmp_path / "demo-data" / "keys" / "signing.pub"
    assert run_cli(["--quiet", "verify-record", str(record_dir), "--signer-key", str(signing_pub)]) == 0


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


def test_plan_with_stage_plans_only_those_stages(small_demo, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A host that does not answer is a blocker of the shutdown stage's dry run; `decom plan --stage` (as
    make demo without its host) plans the other stages alone, and says which it left out."""
    from ssh_hosts import free_port

    url, content, _ = small_demo
    (tmp_path / "known_hosts").write_text("", encoding="utf-8")
    (tmp_path / "id_ed25519").write_text("not a key: never read, the host does not answer\n", encoding="utf-8")
    shutdown = f"""
[[stages]]
kind = "shutdown"
known_hosts = "known_hosts"
[[stages.hosts]]
name = "app1"
address = "127.0.0.1"
port = {free_port()}
user = "edm"
key_file = "id_ed25519"
[[stages.hosts.actions]]
kind = "port"
port = 8080
"""
    plan = write_plan(tmp_path, url, content, access_audit=True, extra_stages=shutdown + ACCEPT_MISSING)
    assert run_cli(["--quiet", "plan", str(plan)]) == 3
    assert "BLOCKER: shutdown: " in capsys.readouterr().out

    assert run_cli(["--quiet", "plan", str(plan), "--stage", "inventory", "--stage", "access_audit"]) == 0
    out = capsys.readouterr().out
    assert "BLOCKER" not in out and "planned only: inventory, access_audit (--stage)" in out
    report = json.loads((tmp_path / "test-plan.state" / "reports" / "plan-report.json").read_text(encoding="utf-8"))
    assert [s["stage"] for s in report["stages"]] == ["inventory", "access_audit"] and report["ready"] is True
    assert any("not planned here: shutdown" in w for w in report["plan"]["warnings"])
    assert "not planned here: shutdown" in (tmp_path / "test-plan.state" / "reports" / "plan-report.html").read_text(
        encoding="utf-8")

    assert run_cli(["--quiet", "plan", str(plan), "--stage", "inventroy"]) == 2
    assert "no stage named inventroy (stages: inventory, access_audit, shutdown)" in capsys.readouterr().err


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


def test_an_enabled_progress_bar_is_drawn_on_stderr_and_a_disabled_one_draws_nothing(capsys) -> None:  # type: ignore[no-untyped-def]
    from decom.progress import Progress

    for enabled in (True, False):
        with Progress(enabled=enabled).bar(4 << 20, "backing up content", unit="B") as bar:
            bar.update(2 << 20)
        err = capsys.readouterr().err
        assert ("backing up content" in err and "4.00M" in err) if enabled else err == ""
