"""The shutdown stage against real sshd hosts (tests/ssh_hosts.py): ordering, idempotence, every fault case."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import decom_cmd
from ssh_hosts import PASSWORD_SUDO_USER, USER, LabHost, SshLab
from ssh_hosts import shutdown_actions as actions

from decom import api
from decom.cli import run_cli
from decom.errors import UserError

pytestmark = pytest.mark.timeout(60)  # a hang (e.g. sudo waiting for a password) fails instead of blocking

# Kills the sshd session the command runs in, after stopping the daemon: the connection drops before
# the exit status comes back.
DROP_CONNECTION = ('p=$$; while [ "$p" -gt 1 ]; do if [ "$(cat /proc/$p/comm)" = sshd ]; then kill -9 "$p"; '
                   'break; fi; p=$(cut -d" " -f4 /proc/$p/stat); done')


def host_table(lab: SshLab, name: str, *, user: str = USER, sudo: bool = True, after: tuple[str, ...] = (),
               key_file: Path | None = None, extra: str = "", body: str | None = None) -> str:
    host = lab.hosts[name]
    return f"""
[[stages.hosts]]
name = "{name}"
address = "127.0.0.1"
port = {host.port}
user = "{user}"
key_file = "{key_file or lab.client_key}"
sudo = {'true' if sudo else 'false'}
after = {json.dumps(list(after))}
{extra}
{actions(host) if body is None else body}"""


def write_plan(folder: Path, lab: SshLab, hosts: str, *, command_timeout: int = 10,
               known_hosts: Path | None = None) -> Path:
    known = known_hosts or lab.known_hosts()
    path = folder / "shutdown.toml"
    path.write_text(f"""[plan]
name = "shutdown-test"
owner = "Test Operator"

[source]
adapter = "demo"
url = "sqlite:///legacy.sqlite"

[[stages]]
kind = "shutdown"
known_hosts = "{known}"
connect_timeout = 5
command_timeout = {command_timeout}
{hosts}""", encoding="utf-8")
    return path


def journal(plan: Path, state: str = "shutdown.state") -> list[dict[str, Any]]:
    lines = (plan.parent / state / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def events(plan: Path, name: str, state: str = "shutdown.state") -> list[dict[str, Any]]:
    return [entry["details"] for entry in journal(plan, state) if entry["event"] == name]


def untouched(host: LabHost, key: bytes | None = None) -> bool:
    from ssh_hosts import CRON_TEXT

    assert host.daemon is not None
    return (host.daemon.running() and host.cron_file.read_text() == CRON_TEXT and host.key_file.exists()
            and (key is None or host.key_file.read_bytes() == key))


def run_error(plan: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert run_cli(["--quiet", "run", str(plan)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


# -- the normal path ------------------------------------------------------------------------------------

def test_dry_run_sends_no_mutating_command_and_lists_exactly_what_run_sends(ssh_lab: SshLab, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1") + host_table(ssh_lab, "db1", after=("app1",)))
    keys = {name: ssh_lab.hosts[name].key_file.read_bytes() for name in ("app1", "db1")}
    subprocess.run(["ssh-keygen", "-H", "-f", str(ssh_lab.folder / "known_hosts")], check=True, capture_output=True)
    assert "127.0.0.1" not in (ssh_lab.folder / "known_hosts").read_text()  # hashed [host]:port entries work too
    report = api.plan(plan)
    stage = report.stages[0]
    assert stage.blockers == [] and stage.counts["hosts"] == 2
    assert all(untouched(ssh_lab.hosts[name], keys[name]) for name in ("app1", "db1"))
    # three commands per host: the port action only verifies
    assert [line.split(": ", 1)[0] for line in stage.actions] == ["app1"] * 3 + ["db1"] * 3
    assert any("kill $(cat" in line and line.startswith("app1: service:edm-web: sudo -n -- sh -c ")
               for line in stage.actions)

    api.run(plan)
    sent = [f"{e['host']}: {e['action']}: {e['command']}" for e in events(plan, "shutdown_command_sent")]
    assert sent == stage.actions


def test_run_switches_everything_off_journals_before_and_after_and_a_rerun_does_nothing(
        ssh_lab: SshLab, tmp_path: Path) -> None:
    app1, db1 = ssh_lab.hosts["app1"], ssh_lab.hosts["db1"]
    key_sha = hashlib.sha256(app1.key_file.read_bytes()).hexdigest()
    hosts = host_table(ssh_lab, "app1") + host_table(ssh_lab, "db1", after=("app1",),
                                                     body=actions(db1, key_mode="shred"))
    plan = write_plan(tmp_path, ssh_lab, hosts)
    result = api.run(plan)
    assert result.stages_done == ["shutdown"]

    for host in (app1, db1):
        assert host.daemon is not None and not host.daemon.running()
        assert "disi-sync" not in host.cron_file.read_text() and "logrotate" in host.cron_file.read_text()
        assert not host.key_file.exists()
    quarantined = list(app1.quarantine.iterdir())
    assert [p.name for p in quarantined] == [f"exchange-signing.key.{key_sha[:16]}"]
    assert hashlib.sha256(quarantined[0].read_bytes()).hexdigest() == key_sha
    assert not db1.quarantine.exists()  # shredded, not moved

    probes = events(plan, "shutdown_probe")
    before = [p for p in probes if p["host"] == "app1" and p["action"].startswith("remove_file")]
    assert [p["phase"] for p in before] == ["before", "after"]
    assert before[0]["state"]["sha256"] == key_sha and before[1]["state"]["exists"] is False
    cron = next(p for p in probes if p["action"].startswith("cron") and p["phase"] == "before")
    assert len(cron["state"]["matching"]) == 1 and "disi-sync --once" in cron["state"]["matching"][0]
    assert "_text" not in cron["state"]  # the whole cron file is not journaled
    statuses = json.loads((tmp_path / "shutdown.state/stages/shutdown/results.json").read_text())
    assert {a["action"].split(":")[0]: a["status"] for a in statuses["hosts"][0]["actions"]} == {
        "service": "done", "cron": "done", "port": "already_done", "remove_file": "done"}  # the port closed with it
    assert json.loads((tmp_path / "shutdown.state/stages/shutdown/before.json").read_text())[
        f"app1/remove_file:{app1.key_file}"]["sha256"] == key_sha

    again = api.run(plan)  # same state: the step is done
    assert again.steps_run == 0 and again.steps_skipped == 1
    fresh = api.run(plan, state=tmp_path / "fresh.state")  # a new state folder: the step runs, every probe says done
    assert fresh.steps_run == 1
    assert events(plan, "shutdown_command_sent", "fresh.state") == []
    assert {e["status"] for e in events(plan, "shutdown_action", "fresh.state")} == {"already_done"}


def test_hosts_follow_their_dependencies_and_a_failed_host_holds_back_only_its_dependents(
        ssh_lab: SshLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app1, app2 = ssh_lab.hosts["app1"], ssh_lab.hosts["app2"]
    stubborn = actions(app1, stop="true", port=False)  # "stops" but the daemon keeps running
    hosts = (host_table(ssh_lab, "db1", after=("app1", "app2"))  # listed first, runs last
             + host_table(ssh_lab, "app1", body=stubborn)
             + host_table(ssh_lab, "app2", extra=f'host_key_fingerprint = "{app2.fingerprint}"'))
    plan = write_plan(tmp_path, ssh_lab, hosts, known_hosts=ssh_lab.known_hosts("app1", "db1"))
    err = run_error(plan, capsys)
    assert "app1: service:edm-web: failed: edm-web is still running" in err
    assert "db1: skipped (waits for app1)" in err
    connected = [e["host"] for e in events(plan, "shutdown_host_connected")]
    assert connected == ["app1", "app2", "db1"]
    acted = list(dict.fromkeys(e["host"] for e in events(plan, "shutdown_action")))
    assert acted == ["app1", "app2"]  # every action of app1 has a result; app2 went ahead; db1 waits
    assert len([e for e in events(plan, "shutdown_action") if e["host"] == "app1"]) == 3
    assert app2.daemon is not None and not app2.daemon.running() and not app2.key_file.exists()
    assert untouched(ssh_lab.hosts["db1"])
    assert app1.daemon is not None and app1.daemon.running() and not app1.key_file.exists()


# -- fault cases -------------------------------------------------------------------------------------------

def test_unknown_host_key_is_refused_naming_host_and_fingerprint(
        ssh_lab: SshLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app1 = ssh_lab.hosts["app1"]
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1") + host_table(ssh_lab, "app2"),
                      known_hosts=ssh_lab.known_hosts("app2"))
    err = run_error(plan, capsys)
    assert "host app1" in err and "not pinned" in err and app1.fingerprint in err and "nothing was changed" in err
    assert untouched(app1) and untouched(ssh_lab.hosts["app2"])  # app2 is fine, but nothing starts
    assert api.plan(plan).stages[0].blockers[0].startswith(f"host app1 ({USER}@127.0.0.1:{app1.port})")


def test_changed_host_key_is_refused_naming_both_fingerprints(
        ssh_lab: SshLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app1 = ssh_lab.hosts["app1"]
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1"))
    pinned = app1.fingerprint
    app1.stop_sshd()
    app1.new_host_key()
    app1.start_sshd()
    err = run_error(plan, capsys)
    assert "host app1" in err and "HOST KEY MISMATCH" in err and pinned in err and app1.fingerprint in err
    assert untouched(app1)
    # the same with the fingerprint pinned in the plan instead of known_hosts
    (tmp_path / "pinned").mkdir()
    plan = write_plan(tmp_path / "pinned", ssh_lab,
                      host_table(ssh_lab, "app1", extra=f'host_key_fingerprint = "{pinned}"'))
    assert pinned in run_error(plan, capsys)


def test_a_refused_key_is_an_auth_failure(ssh_lab: SshLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1", key_file=ssh_lab.stranger_key))
    err = run_error(plan, capsys)
    assert f"refused the key for user {USER}" in err and "host app1" in err
    assert untouched(ssh_lab.hosts["app1"])


def test_sudo_asking_for_a_password_fails_fast_without_a_prompt(
        ssh_lab: SshLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1", user=PASSWORD_SUDO_USER))
    err = run_error(plan, capsys)
    assert f"sudo asks user {PASSWORD_SUDO_USER} for a password" in err and "NOPASSWD" in err
    assert untouched(ssh_lab.hosts["app1"])


def test_host_down_is_refused_before_anything_changes(
        ssh_lab: SshLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ssh_lab.hosts["db1"].stop_sshd()
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1") + host_table(ssh_lab, "db1", after=("app1",)))
    err = run_error(plan, capsys)
    assert "host db1 (127.0.0.1:" in err and "connection refused" in err
    assert untouched(ssh_lab.hosts["app1"])


def test_connection_dropped_after_the_command_is_an_unknown_outcome_that_resume_probes(
        ssh_lab: SshLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app1 = ssh_lab.hosts["app1"]
    body = actions(app1, stop=f"{app1.stop_command}; {DROP_CONNECTION}")
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1", body=body))
    err = run_error(plan, capsys)
    assert "service:edm-web: unknown: the connection was lost" in err and "the next run probes it" in err
    assert [e["action"] for e in events(plan, "shutdown_unknown_outcome")] == ["service:edm-web"]
    pending = json.loads((tmp_path / "shutdown.state/stages/shutdown/pending.json").read_text())
    assert list(pending) == ["app1/service:edm-web"]
    assert app1.daemon is not None and not app1.daemon.running()  # it did stop; decom could not know
    assert app1.key_file.exists()  # the rest of the host waited

    api.run(plan)  # resume: probe first, find it stopped, never send the stop again
    resolved = events(plan, "shutdown_unknown_resolved")
    assert [(e["action"], e["goal_reached"]) for e in resolved] == [("service:edm-web", True)]
    sent = [e["action"] for e in events(plan, "shutdown_command_sent")]
    assert sent.count("service:edm-web") == 1
    assert not app1.key_file.exists()
    assert json.loads((tmp_path / "shutdown.state/stages/shutdown/pending.json").read_text()) == {}


def test_command_timeout_is_an_unknown_outcome(ssh_lab: SshLab, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    app1 = ssh_lab.hosts["app1"]
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1", body=actions(app1, stop="sleep 4")),
                      command_timeout=1)
    err = run_error(plan, capsys)
    assert "service:edm-web: unknown: no exit status within 1s (command_timeout)" in err
    assert untouched(app1)


def test_crash_after_the_intent_is_written_resumes_by_probing(ssh_lab: SshLab, tmp_path: Path) -> None:
    app1 = ssh_lab.hosts["app1"]
    plan = write_plan(tmp_path, ssh_lab, host_table(ssh_lab, "app1"))
    env = {**os.environ, "DECOM_TEST_CRASHPOINT": "shutdown@inside"}
    done = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], env=env, capture_output=True, timeout=60)
    assert done.returncode == -9
    pending = json.loads((tmp_path / "shutdown.state/stages/shutdown/pending.json").read_text())
    assert list(pending) == ["app1/service:edm-web"] and untouched(app1)  # written, never sent

    api.run(plan)
    assert [(e["action"], e["goal_reached"]) for e in events(plan, "shutdown_unknown_resolved")] == [
        ("service:edm-web", False)]
    assert app1.daemon is not None and not app1.daemon.running() and not app1.key_file.exists()


def test_dependency_cycle_is_a_plan_error(ssh_lab: SshLab, tmp_path: Path) -> None:
    hosts = host_table(ssh_lab, "app1", after=("db1",)) + host_table(ssh_lab, "db1", after=("app1",))
    plan = write_plan(tmp_path, ssh_lab, hosts)
    with pytest.raises(UserError, match=r"form a cycle: app1 -> db1 -> app1"):
        api.run(plan)


def test_a_host_can_come_from_ssh_config(ssh_lab: SshLab, tmp_path: Path) -> None:
    app1 = ssh_lab.hosts["app1"]
    config = tmp_path / "ssh_config"
    config.write_text(f"Host app1\n  HostName 127.0.0.1\n  Port {app1.port}\n  User {USER}\n"
                      f"  IdentityFile {ssh_lab.client_key}\n")
    plan = write_plan(tmp_path, ssh_lab, f'ssh_config = "{config}"\n[[stages.hosts]]\nname = "app1"\nsudo = true\n'
                      + actions(app1))
    stage = api.plan(plan).stages[0]
    assert stage.blockers == [] and len(stage.actions) == 3 and untouched(app1)


def test_systemd_and_sysv_services_are_stopped_disabled_and_verified_from_their_probed_state() -> None:
    from decom.plan_remote import ServiceAction, TimerAction
    from decom.remote.actions import make_action

    unit = make_action(ServiceAction(kind="service", name="directum-disi"))
    running = {"active": "active", "enabled": "enabled"}
    assert unit.commands(running) == ["systemctl stop -- directum-disi", "systemctl disable -- directum-disi"]
    assert unit.verify(running) == "directum-disi is still active"
    assert unit.commands({"active": "inactive", "enabled": "disabled"}) == []
    assert unit.verify({"active": "failed", "enabled": "masked"}) is None
    timer = make_action(TimerAction(kind="timer", name="disi-sync"))
    assert timer.label == "timer:disi-sync" and timer.commands({"active": "inactive", "enabled": "enabled"}) == [
        "systemctl disable -- disi-sync.timer"]
    sysv = make_action(ServiceAction(kind="service", name="edm", manager="sysv"))
    assert sysv.commands({"running": True, "status_exit": 0}) == ["/etc/init.d/edm stop"]
    assert sysv.commands({"running": False, "status_exit": 3}) == []


def test_authentication_through_the_ssh_agent(ssh_lab: SshLab, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        subprocess.run(["ssh-add", "-q", str(ssh_lab.client_key)], check=True, capture_output=True)
        body = host_table(ssh_lab, "app1").replace(f'key_file = "{ssh_lab.client_key}"', "agent = true")
        stage = api.plan(write_plan(tmp_path, ssh_lab, body)).stages[0]
        assert stage.blockers == [] and len(stage.actions) == 3
    finally:
        agent.terminate()
        agent.wait(10)
