"""Kill `decom run` with SIGKILL at many points and resume: the end state must equal an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import decom_cmd, write_plan

from decom import api
from decom.journal import Journal


def run_decom(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*decom_cmd(), *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def outputs_of(state: Path) -> dict[str, object]:
    """Every result file of the state folder, read back as data (Parquet as rows, JSON as objects)."""
    found: dict[str, object] = {}
    for path in sorted((state / "stages").rglob("*")):
        if not path.is_file():
            continue
        key = str(path.relative_to(state))
        if path.suffix == ".parquet":
            found[key] = pq.read_table(path).to_pylist()
        elif path.suffix == ".json":
            found[key] = json.loads(path.read_text(encoding="utf-8"))
        else:
            found[key] = path.read_bytes()
    return found


def step_ids(plan: Path, state: Path) -> list[tuple[str, str]]:
    from decom.checkpoint import CheckpointStore

    store = CheckpointStore.in_folder(state)
    try:
        steps = store.steps("test-plan")
        assert all(s.status == "done" for s in steps), [(s.step_id, s.status) for s in steps]
        return [(s.stage, s.step_id) for s in steps]
    finally:
        store.close()


@pytest.fixture
def reference(small_demo, tmp_path: Path):  # type: ignore[no-untyped-def]
    url, content, facts = small_demo
    plan = write_plan(tmp_path, url, content, access_audit=True)
    state = tmp_path / "reference.state"
    api.run(plan, state=state)
    return plan, state, facts


CRASH_POINTS = [
    "freeze@done",               # between the first and second step
    "export:documents@start",    # marked running, nothing written
    "export:versions@inside",    # Parquet written under its temporary name
    "export:users@written",      # output renamed into place, done mark not committed
    "content:00000@done",        # between two hashing batches
    "content:00001@inside",      # inside a hashing batch
    "content:00002@written",
    "signatures@inside",
    "orphans@written",
    "summary@start",
    "analyse@inside",            # access audit: permissions export under its temporary name
    "analyse@done",              # between the audit's analysis and its findings
    "findings@written",          # findings exported, done mark not committed
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_resume_after_sigkill_gives_the_same_outputs_as_an_uninterrupted_run(reference, point: str,
                                                                                tmp_path: Path) -> None:
    plan, reference_state, _ = reference
    state = tmp_path / "crashed.state"
    killed = run_decom("--quiet", "run", str(plan), "--state", str(state),
                       env={"DECOM_TEST_CRASHPOINT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    status = api.status(plan, state=state)
    assert "running" in [stage.status for stage in status.stages]

    resumed = run_decom("--quiet", "run", str(plan), "--state", str(state))
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout

    assert outputs_of(state) == outputs_of(reference_state)
    assert step_ids(plan, state) == step_ids(plan, reference_state)
    assert not [p for p in state.rglob("*") if ".tmp-" in p.name], "a temporary file was left behind"

    journal = Journal(state / "journal.jsonl")
    assert journal.verify().ok
    done_steps = [e["details"]["step"] for e in journal.entries() if e["event"] == "step_done"]
    assert len(done_steps) == len(set(done_steps)), "a finished step was run twice"
    assert set(done_steps) == {step for _, step in step_ids(plan, reference_state)}


def test_content_hashes_cover_every_version_exactly_once_after_a_resume(reference, tmp_path: Path) -> None:
    plan, _, facts = reference
    state = tmp_path / "crashed.state"
    run_decom("--quiet", "run", str(plan), "--state", str(state),
              env={"DECOM_TEST_CRASHPOINT": "content:00001@inside"})
    assert run_decom("--quiet", "run", str(plan), "--state", str(state)).returncode == 0
    parts = sorted((state / "stages" / "inventory" / "content").glob("part-*.parquet"))
    version_ids = [v for p in parts for v in pq.read_table(p).column("version_id").to_pylist()]
    assert len(version_ids) == len(set(version_ids)) == facts.versions


def test_external_sigkill_at_an_arbitrary_moment_then_resume(reference, tmp_path: Path) -> None:
    plan, reference_state, _ = reference
    state = tmp_path / "killed.state"
    process = subprocess.Popen([*decom_cmd(), "--quiet", "run", str(plan), "--state", str(state)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = state / "journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_text().count('"step_done"') >= 4:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    resumed = run_decom("--quiet", "run", str(plan), "--state", str(state))
    assert resumed.returncode == 0, resumed.stderr
    assert outputs_of(state) == outputs_of(reference_state)
    assert Journal(journal).verify().ok


def test_a_second_concurrent_run_refuses_and_a_killed_run_does_not_leave_the_lock_stuck(
        small_demo, tmp_path: Path) -> None:
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content)
    state = tmp_path / "plan.state"
    pause_file = tmp_path / "paused"
    first = subprocess.Popen([*decom_cmd(), "--quiet", "run", str(plan), "--state", str(state)],
                             env={**os.environ, "DECOM_TEST_CRASHPOINT": "content:00000@inside:pause",
                                  "DECOM_TEST_PAUSE_FILE": str(pause_file)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not pause_file.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert pause_file.exists(), "the first run never reached its pause point"

        second = run_decom("--quiet", "run", str(plan), "--state", str(state))
        assert second.returncode == 2
        assert f"already being run by pid {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait(timeout=30)

    third = run_decom("--quiet", "run", str(plan), "--state", str(state))
    assert third.returncode == 0, third.stderr


def test_changed_plan_refuses_to_resume_until_accepted_and_the_acceptance_is_journaled(
        small_demo, tmp_path: Path) -> None:
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content)
    state = tmp_path / "plan.state"
    run_decom("--quiet", "run", str(plan), "--state", str(state), env={"DECOM_TEST_CRASHPOINT": "content:*@inside"})
    plan.write_text(plan.read_text(encoding="utf-8") + "\n# batch size reviewed by the owner\n", encoding="utf-8")

    refused = run_decom("--quiet", "run", str(plan), "--state", str(state))
    assert refused.returncode == 2
    assert "plan changed since its run began" in refused.stderr
    assert "--accept-changed-plan" in refused.stderr

    accepted = run_decom("--quiet", "run", str(plan), "--state", str(state), "--accept-changed-plan")
    assert accepted.returncode == 0, accepted.stderr
    events = [e["event"] for e in Journal(state / "journal.jsonl").entries()]
    assert events.count("plan_change_accepted") == 1


@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_a_shared_checkpoint_store_locks_across_state_folders(small_demo, server: str, tmp_path: Path,
                                                              request: pytest.FixtureRequest) -> None:
    """A team shares one server checkpoint store: a run from another folder or machine must see the lock."""
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content, state_url=request.getfixturevalue(server))
    pause_file = tmp_path / "paused"
    first = subprocess.Popen([*decom_cmd(), "--quiet", "run", str(plan), "--state", str(tmp_path / "a")],
                             env={**os.environ, "DECOM_TEST_CRASHPOINT": "export:users@start:pause",
                                  "DECOM_TEST_PAUSE_FILE": str(pause_file)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not pause_file.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert pause_file.exists()
        second = run_decom("--quiet", "run", str(plan), "--state", str(tmp_path / "b"))
        assert second.returncode == 2
        assert "already being run" in second.stderr
    finally:
        first.kill()
        first.wait(timeout=30)
    resumed = run_decom("--quiet", "run", str(plan), "--state", str(tmp_path / "a"))
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout
