"""The handover stage: who takes each open case, what stops the run, reassignment through the adapter,
resume after kill -9, and the successor's package."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import decom_cmd, write_plan

from decom import api
from decom.cli import run_cli
from decom.journal import Journal

FREEZE = datetime(2026, 11, 20, 18, 0)
GROUP = "Регистраторы"


def _engine_do(url: str, statements: list[tuple[str, dict[str, Any]]]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for sql, params in statements:
            conn.execute(sa.text(sql), params)
    engine.dispose()


def _query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql), params)]
    engine.dispose()
    return rows


def holders(url: str) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    """(kind, id) -> (assignee id, group id) of every case and task, as strings."""
    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    result = {}
    for kind, table in (("case", "proc_case"), ("task", "proc_task")):
        for row_id, assignee, group in _query(url, f"SELECT id, assignee_id, group_id FROM {table}"):
            result[(kind, str(row_id))] = (text(assignee), text(group))
    return result


class Scenario:
    """The small demo's five open cases, each given one situation a handover must deal with.

    c0 held by disabled D1, mapped to R1 (reassigned, past due); c1 held by disabled D2, mapped to an
    unknown login; c2 waiting in a group mapped to D1 (a disabled new owner); c3 held by L, whom the
    lock-down disables, with no rule (no owner); c4 held by the active R2 (kept). Open tasks follow
    their case's holder.
    """

    def __init__(self, url: str, facts: Any) -> None:
        self.url = url
        staff = {str(login): str(user_id) for user_id, login in _query(url, "SELECT id, login FROM staff")}
        special = {*facts.admin_logins, *facts.disabled_logins, *facts.dormant_logins,
                   *facts.never_logged_in_logins, *facts.shared_logins}
        regular = sorted(login for login in staff if login not in special)
        assert len(regular) >= 4 and len(facts.disabled_logins) >= 2
        self.ids = staff
        self.d1, self.d2 = facts.disabled_logins[0], facts.disabled_logins[1]
        self.r1, self.r2, self.locked = regular[0], regular[1], regular[2]
        self.cases = [str(c) for (c,) in _query(url, "SELECT id FROM proc_case WHERE is_closed = 0 ORDER BY id")][:5]
        group_id = _query(url, "SELECT id FROM staff_group WHERE name = :n", n=GROUP)[0][0]
        hold = [(staff[self.d1], None), (staff[self.d2], None), (None, group_id), (staff[self.locked], None),
                (staff[self.r2], None)]
        statements = []
        for index, (case_id, (assignee, group)) in enumerate(zip(self.cases, hold, strict=True)):
            due = FREEZE - timedelta(days=10) if index == 0 else FREEZE + timedelta(days=10)
            params = {"a": assignee, "g": group, "c": int(case_id), "due": due}
            statements.append(("UPDATE proc_case SET assignee_id = :a, group_id = :g, due = :due "
                               "WHERE id = :c", params))
            statements.append(("UPDATE proc_task SET assignee_id = :a, group_id = :g, due = :due "
                               "WHERE case_id = :c AND state = 'open'", params))
        _engine_do(url, statements)
        self.tasks = {str(c): [str(t) for (t,) in _query(url, "SELECT id FROM proc_task WHERE case_id = :c AND "
                                                               "state = 'open' ORDER BY id", c=int(c))]
                      for c in self.cases}

    def stages(self, *, batch_size: int = 200, target: str = '["reassign", "package"]', accept: bool = False,
               notices: str = "", unknown: str = "ghost.user", group_owner: str | None = None,
               default_owner: str | None = None) -> str:
        default = f'default_owner = "{default_owner}"' if default_owner else ""
        text = f'''
[[stages]]
kind = "access_audit"
dormant_days = 365
shared_account_patterns = ["shared", "^scanner$"]

[stages.lockdown]
disable_logins = ["{self.locked}"]

[[stages]]
kind = "handover"
target = {target}
batch_size = {batch_size}
{default}

[stages.owners]
"{self.d1}" = "{self.r1}"
"{self.d2}" = "{unknown}"

[stages.owners_by_group]
"{GROUP}" = "{group_owner or self.d1}"
{notices}'''
        if accept:
            for match in ("has no new owner", "new owner ghost.user is not an account", f"new owner {self.d1} is "
                          "disabled", "past due"):
                text += f'''
[[accept]]
stage = "handover"
match = "{match}"
by = "Test Lead"
reason = "checked by hand in the test"
'''
        return text

    def expected_changes(self) -> dict[tuple[str, str], tuple[str | None, str | None]]:
        """What the reassignment must change: c0 and its tasks to R1, c2 and its tasks to D1 (group cleared)."""
        changes = {}
        for case_id, login in ((self.cases[0], self.r1), (self.cases[2], self.d1)):
            changes[("case", case_id)] = (self.ids[login], None)
            for task_id in self.tasks[case_id]:
                changes[("task", task_id)] = (self.ids[login], None)
        return changes


@pytest.fixture
def scenario(small_demo) -> Scenario:  # type: ignore[no-untyped-def]
    url, _content, facts = small_demo
    return Scenario(url, facts)


def handover_plan(tmp_path: Path, small_demo: Any, scenario: Scenario, **options: Any) -> Path:
    url, content, _ = small_demo
    return write_plan(tmp_path, url, content, extra_stages=scenario.stages(**options))


def actions_of(journal: Journal) -> list[dict[str, Any]]:
    return [e["details"] for e in journal.entries() if e["event"] == "handover_action"]


# -- the dry run ---------------------------------------------------------------------------------------

def test_dry_run_lists_reassignments_and_every_kind_of_blocker_and_changes_nothing(
        small_demo, scenario: Scenario, tmp_path: Path) -> None:
    plan = handover_plan(tmp_path, small_demo, scenario)
    before = holders(scenario.url)
    report = api.plan(plan)
    assert holders(scenario.url) == before, "the dry run changed the legacy system"

    stage = next(s for s in report.stages if s.stage == "handover")
    c0, c1, c2, c3, c4 = scenario.cases
    actions = "\n".join(stage.actions)
    assert f"reassign case {c0} (" in actions and f"from {scenario.d1} to {scenario.r1}" in actions
    assert f"reassign case {c2} (" in actions and f"from group {GROUP} to {scenario.d1}" in actions
    for task in scenario.tasks[c0]:
        assert f"reassign task {task} (" in actions
    assert f"hand case {c1} (" in actions and "to ghost.user in the package only" in actions
    assert f"case {c4} (" not in actions, "an active holder keeps the case"

    blockers = stage.blockers
    assert any(b.startswith(f"case {c3} (") and "has no new owner" in b
               and f"held by {scenario.locked}, selected for lock-down" in b for b in blockers), blockers
    assert any(b.startswith("new owner ghost.user is not an account") and f'owners["{scenario.d2}"]' in b
               for b in blockers)
    assert any(b.startswith(f"new owner {scenario.d1} is disabled") and f"case(s) {c2}" in b for b in blockers)
    assert any("1 open case(s) are past due at the freeze point (2026-11-20)" in b and c0 in b for b in blockers)
    assert len(blockers) == 4
    assert stage.counts["open_cases"] == 5 and stage.counts["past_due_cases"] == 1
    assert stage.counts["reassignments"] == 2 + len(scenario.tasks[c0]) + len(scenario.tasks[c2])
    kinds = {f.kind for f in stage.findings}
    assert {"handover_no_owner", "handover_owner_unknown", "handover_owner_disabled", "case_past_due"} <= kinds
    assert report.blockers and not report.data["ready"]


def test_a_complete_rule_set_leaves_no_owner_blocker(small_demo, scenario: Scenario, tmp_path: Path) -> None:
    url, content, _ = small_demo
    stages = scenario.stages(unknown=scenario.r2, group_owner=scenario.r1, default_owner=scenario.r2)
    plan = write_plan(tmp_path, url, content, extra_stages=stages)
    stage = next(s for s in api.plan(plan).stages if s.stage == "handover")
    assert [b for b in stage.blockers if "past due" not in b] == []
    assert f"reassign case {scenario.cases[3]} (" in "\n".join(stage.actions)


# -- the run -------------------------------------------------------------------------------------------

def test_run_refuses_while_blockers_remain_and_passes_once_each_is_accepted(
        small_demo, scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = small_demo
    plan = handover_plan(tmp_path, small_demo, scenario)
    before = holders(url)
    assert run_cli(["--quiet", "run", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "stage handover: 4 blocker(s) not accepted in [[accept]]" in err and err.count("\n") == 1
    assert holders(url) == before, "a refused handover changed cases"

    write_plan(tmp_path, url, content, extra_stages=scenario.stages(accept=True))  # the same file, now accepting
    assert run_cli(["--quiet", "run", str(plan), "--accept-changed-plan"]) == 0

    journal = Journal(tmp_path / "test-plan.state" / "journal.jsonl")
    accepted = [e for e in journal.entries() if e["event"] == "handover_blocker_accepted"]
    assert len(accepted) == 4
    assert all(e["details"]["accepted_by"] == "Test Lead" and e["operator"] for e in accepted)
    assert any("ghost.user" in e["details"]["blocker"] for e in accepted)
    assert journal.verify().ok

    after = holders(url)
    changed = {key: value for key, value in after.items() if before[key] != value}
    assert changed == scenario.expected_changes()
    logged = actions_of(journal)
    assert sorted(d["key"] for d in logged) == sorted(f"{k}:{i}" for k, i in changed)
    for entry in logged:
        kind, _, item = entry["key"].partition(":")
        assert str(entry["before"]) == str(before[(kind, item)][0]) and str(entry["after"]) == changed[(kind, item)][0]
        assert entry["rows_changed"] == 1


@pytest.mark.parametrize("point", ["reassign:*@inside", "reassign:*@written"])
def test_kill_9_inside_the_reassignment_resumes_without_doing_anything_twice(
        small_demo, scenario: Scenario, tmp_path: Path, point: str) -> None:
    url, _, _ = small_demo
    plan = handover_plan(tmp_path, small_demo, scenario, batch_size=2, accept=True)
    before = holders(url)
    killed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], capture_output=True, text=True,
                            env={**os.environ, "DECOM_TEST_CRASHPOINT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = Journal(tmp_path / "test-plan.state" / "journal.jsonl")
    assert len(actions_of(journal)) >= 1, "the kill came before any change"

    assert run_cli(["--quiet", "run", str(plan)]) == 0
    assert {k: v for k, v in holders(url).items() if before[k] != v} == scenario.expected_changes()
    keys = [d["key"] for d in actions_of(journal)]
    assert len(keys) == len(set(keys)) == len(scenario.expected_changes()), keys
    assert not any(d.get("recovered") for d in actions_of(journal))
    done = [e["details"]["step"] for e in journal.entries() if e["event"] == "step_done"]
    assert len(done) == len(set(done))
    assert journal.verify().ok
    first = json.loads((tmp_path / "test-plan.state" / "stages" / "handover" / "reassign" / "0000.json")
                       .read_text(encoding="utf-8"))
    assert [c.get("already_done", False) for c in first["changes"]] == (
        [True, False] if point.endswith("inside") else [True, True])


def test_postgresql_source_is_reassigned_like_sqlite(pg_url: str, tmp_path: Path) -> None:
    from decom.demo.generator import DemoSpec, build_demo

    content = tmp_path / "content"
    facts = build_demo(pg_url, content, DemoSpec(documents=60))
    scenario = Scenario(pg_url, facts)
    plan = write_plan(tmp_path, pg_url, content, extra_stages=scenario.stages(accept=True, batch_size=3))
    before = holders(pg_url)
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    assert {k: v for k, v in holders(pg_url).items() if before[k] != v} == scenario.expected_changes()
    index = list(csv.DictReader((tmp_path / "test-plan.state" / "stages" / "handover" / "package" / "index.csv")
                                .open(encoding="utf-8")))
    assert [row["case_id"] for row in index] == scenario.cases
    assert run_cli(["--quiet", "run", str(plan)]) == 0  # a rerun does nothing again
    assert len(actions_of(Journal(tmp_path / "test-plan.state" / "journal.jsonl"))) == len(scenario.expected_changes())


# -- the package ---------------------------------------------------------------------------------------

def _with_backup(tmp_path: Path, stages: str) -> str:
    from decom.archive.keys import generate

    generate("recipient", tmp_path / "keys" / "auditor")
    generate("signing", tmp_path / "keys" / "signing")
    backup = '\n[[stages]]\nkind = "backup"\nverify_after = "none"\n'
    keys = tmp_path / "keys"
    archive = (f'\n[archive]\ntarget = "{tmp_path / "archives"}"\nrecipients = ["{keys / "auditor.pub"}"]\n'
               f'signing_key_file = "{keys / "signing.key"}"\n')
    head, _, tail = stages.partition("\n[[stages]]\nkind = \"handover\"")
    return head + backup + "\n[[stages]]\nkind = \"handover\"" + tail + archive


@pytest.mark.parametrize("backup", [True, False], ids=["after-backup", "inventory-only"])
def test_package_index_lists_every_open_case_with_its_new_owner_and_document_hashes(
        small_demo, scenario: Scenario, tmp_path: Path, backup: bool) -> None:
    url, content, _ = small_demo
    stages = scenario.stages(target='["package"]', accept=True)
    plan = write_plan(tmp_path, url, content, extra_stages=_with_backup(tmp_path, stages) if backup else stages)
    before = holders(url)
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    assert holders(url) == before, "target package alone must not reassign anything"

    state = tmp_path / "test-plan.state"
    package = state / "stages" / "handover" / "package"
    rows = list(csv.DictReader((package / "index.csv").open(encoding="utf-8")))
    assert [r["case_id"] for r in rows] == scenario.cases
    owners = {r["case_id"]: r["new_owner_login"] for r in rows}
    c0, c1, c2, c3, c4 = scenario.cases
    assert owners == {c0: scenario.r1, c1: "ghost.user", c2: scenario.d1, c3: "", c4: scenario.r2}
    archive_id = json.loads((state / "stages" / "backup" / "archive.json").read_text())["archive_id"] if backup else ""
    current = dict(_query(url, "SELECT doc_id, storage_path FROM doc_file WHERE is_current = 1"))
    for row in rows:
        record = json.loads((package / row["record"]).read_text(encoding="utf-8"))
        assert record["case"]["case_id"] == row["case_id"] and record["case"]["new_owner"]["login"] == (
            row["new_owner_login"] or None)
        (document,) = record["documents"]
        assert row["document_ids"] == document["document_id"]
        assert row["archive_id"] == archive_id and document["archive_id"] == (archive_id or None)
        path = content / current[int(document["document_id"])]
        expected = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
        assert row["content_sha256"] == expected
        assert [t["task_id"] for t in record["tasks"] if t["status"] == "open"] == scenario.tasks[row["case_id"]]
        events = _query(url, "SELECT COUNT(*) FROM audit_log WHERE obj_kind = 'D' AND obj_id = :d",
                        d=int(document["document_id"]))[0][0]
        assert len(record["history"]) == events
    assert {p.name for p in (package / "cases").iterdir()} == {f"{c}.json" for c in scenario.cases}
