"""Lock-down through the adapter: listed by the dry run, journaled when run, undone exactly by `decom undo`."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import decom_cmd, write_plan

from decom import api
from decom.checkpoint import CheckpointStore
from decom.cli import run_cli
from decom.errors import UserError
from decom.journal import Journal


def audit_stage(lockdown: str) -> str:
    return f'''
[[stages]]
kind = "access_audit"
dormant_days = 365
shared_account_patterns = ["shared", "scanner"]

[stages.lockdown]
{lockdown}
'''


def accounts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT login, blocked FROM staff")).all()
    engine.dispose()
    return {login: int(blocked) for login, blocked in rows}


def rights(url: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, mode FROM access_rule ORDER BY id")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_dry_run_lists_the_accounts_it_would_disable_and_changes_nothing(small_demo, tmp_path: Path) -> None:
    url, content, facts = small_demo
    plan = write_plan(tmp_path, url, content, extra_stages=audit_stage('disable = ["dormant", "shared"]'))
    before = accounts(url)
    report = api.plan(plan)
    assert accounts(url) == before
    actions = " ".join(report.stages[1].actions)
    for login in (*facts.dormant_logins, *facts.shared_logins):
        assert f"disable account {login} " in actions


def test_run_disables_exactly_the_selected_accounts_and_undo_restores_them(small_demo, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    url, content, facts = small_demo
    keep = facts.shared_logins[0]
    named = facts.never_logged_in_logins[0]
    plan = write_plan(tmp_path, url, content, extra_stages=audit_stage(
        f'disable = ["dormant", "shared"]\ndisable_logins = ["{named}"]\nkeep_logins = ["{keep}"]'))
    original = accounts(url)
    assert run_cli(["--quiet", "run", str(plan)]) == 0

    expected = (set(facts.dormant_logins) | set(facts.shared_logins) | {named}) - {keep}
    after = accounts(url)
    assert {login for login, blocked in after.items() if blocked and not original[login]} == expected
    assert after[keep] == original[keep]

    journal = Journal(tmp_path / "test-plan.state" / "journal.jsonl")
    logged = [e["details"] for e in journal.entries() if e["event"] == "lockdown_action"]
    assert len(logged) == len(expected)
    assert all(d["before"] == 0 and d["after"] == 1 for d in logged)

    capsys.readouterr()
    assert run_cli(["undo", str(plan), "--stage", "access_audit", "--dry-run"]) == 0
    assert f"{len(expected)} change(s) would restore" in capsys.readouterr().out
    assert accounts(url) == after, "undo --dry-run changed something"

    assert run_cli(["undo", str(plan), "--stage", "access_audit"]) == 0
    assert accounts(url) == original
    assert [e["event"] for e in journal.entries()].count("undo_action") == len(expected)
    assert journal.verify().ok


@pytest.mark.parametrize("point", ["lockdown:*@inside", "lockdown:*@written"])
def test_read_only_lockdown_killed_mid_step_resumes_and_undo_still_restores_the_original_rights(
        small_demo, tmp_path: Path, point: str) -> None:
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content, extra_stages=audit_stage("read_only = true"))
    original = rights(url)
    killed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], capture_output=True, text=True,
                            env={**os.environ, "DECOM_TEST_CRASHPOINT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    locked = rights(url)
    assert {mode for _, mode in locked} == {"R"}
    assert len(locked) == len(original)

    api.undo(plan, stage="access_audit")
    assert rights(url) == original


def test_undo_refuses_after_the_point_of_no_return(small_demo, tmp_path: Path) -> None:
    url, content, facts = small_demo
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "id_ed25519").write_text("")
    shutdown = ('\n[[stages]]\nkind = "shutdown"\nknown_hosts = "known_hosts"\n[[stages.hosts]]\nname = "app1"\n'
                'address = "127.0.0.1"\nport = 1\nuser = "decom"\nkey_file = "id_ed25519"\n'
                '[[stages.hosts.actions]]\nkind = "service"\nname = "edm-web"\n')
    plan = write_plan(tmp_path, url, content, extra_stages=audit_stage('disable = ["shared"]') + shutdown)
    assert run_cli(["--quiet", "run", str(plan)]) == 2  # the shutdown stage began; its host does not answer
    # The shutdown stage has begun: from here there is no way back.
    store = CheckpointStore.in_folder(tmp_path / "test-plan.state")
    assert store.stage_status("test-plan")["shutdown"] == "running"
    store.close()
    with pytest.raises(UserError, match="point of no return"):
        api.undo(plan, stage="access_audit")
    assert all(accounts(url)[login] == 1 for login in facts.shared_logins)
