"""The final_checks stage against real hosts (sshd), a real PostgreSQL login and a real slapd; log parsing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from conftest import PG_ADMIN_URL
from ssh_hosts import PASSWORD_SUDO_USER, USER, LabHost, SshLab, shutdown_actions

from decom.cli import run_cli
from decom.demo.generator import DemoFacts
from decom.stages import activity

pytestmark = pytest.mark.timeout(90)

FREEZE = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
APP_DB_ENV = "DECOM_TEST_APP_DB_URL"
OUTSIDER = "198.51.100.23"
ACCESS_LOG = "\n".join([
    '10.20.1.5 - - [20/Nov/2026:17:00:00 +0000] "GET /files/old.pdf HTTP/1.1" 200 1234 "-" "Mozilla/5.0"',
    f'{OUTSIDER} - - [20/Nov/2026:19:05:00 +0000] "POST /login HTTP/1.1" 302 0 "-" "curl/8.0"',
    f'{OUTSIDER} - admin [20/Nov/2026:19:05:30 +0000] "POST /admin/settings HTTP/1.1" 200 10 "-" "curl/8.0"',
    *(f'{OUTSIDER} - - [20/Nov/2026:19:06:{i:02d} +0000] "GET /files/doc-{i}.pdf HTTP/1.1" 200 5000 "-" "curl/8.0"'
      for i in range(40)),
]) + "\n"
AUTH_LOG = "\n".join([
    "Nov 20 17:59:00 app1 sshd[100]: Accepted publickey for edm from 10.20.1.5 port 50000 ssh2",
    f"Nov 20 19:00:01 app1 sshd[101]: Accepted publickey for root from {OUTSIDER} port 50001 ssh2",
    "Nov 20 19:01:00 app1 sudo:      edm : TTY=pts/0 ; PWD=/home/edm ; USER=root ; "
    "COMMAND=/usr/sbin/usermod -aG edm-admins intruder",
    "2026-11-20T19:02:00.000000+00:00 app1 sshd[102]: Failed password for invalid user guest from 192.0.2.9 "
    "port 50002 ssh2",
]) + "\n"


@pytest.fixture
def app_login(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A PostgreSQL role the old application logs in with; its URL only in the environment."""
    role = f"decom_app_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'app-secret-{role}'"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable (run `make services`): {exc.orig}", pytrace=False)
    url = sa.engine.make_url(PG_ADMIN_URL).set(username=role, password=f"app-secret-{role}")
    monkeypatch.setenv(APP_DB_ENV, url.render_as_string(hide_password=False))
    try:
        yield role
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def host_connection(lab: SshLab, host: LabHost) -> str:
    return (f'name = "{host.name}"\naddress = "127.0.0.1"\nport = {host.port}\nuser = "{USER}"\n'
            f'key_file = "{lab.client_key}"\nsudo = true\n')


def shutdown_stage(lab: SshLab, host: LabHost, role: str) -> str:
    assert host.daemon is not None
    psql = "psql -h 127.0.0.1 -U postgres -d postgres"
    authorized = host.root / "sshd" / f"authorized_keys.{PASSWORD_SUDO_USER}"
    return f"""
[[stages]]
kind = "shutdown"
known_hosts = "{lab.known_hosts()}"
[[stages.hosts]]
{host_connection(lab, host)}
{shutdown_actions(host, port=False)}
[[stages.hosts.actions]]
kind = "remove_file"
path = "{authorized}"
quarantine_dir = "{host.quarantine}"
[[stages.hosts.actions]]
kind = "db_login"
name = "{role}"
revoke = '''{psql} -c "ALTER ROLE {role} NOLOGIN"'''
probe = '''{psql} -tAc "SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'"'''
revoked_output = "f"
"""


def final_stage(lab: SshLab, host: LabHost, keeper: str, ldap: str) -> str:
    assert host.daemon is not None
    port = host.daemon.port
    return f"""
[[stages]]
kind = "final_checks"
known_hosts = "{lab.known_hosts()}"
keep_logins = ["{keeper}"]
allowed_networks = ["10.0.0.0/8", "127.0.0.0/8"]
bulk_downloads_per_minute = 20
timeout_seconds = 2
[[stages.hosts]]
{host_connection(lab, host)}
closed_ports = [{port}]
http = ["http://127.0.0.1:{port}/"]
processes = ["http.server {port}"]
jobs = [{{ file = "{host.cron_file}", pattern = "disi-sync" }}]
key_files = ["{host.key_file}"]
logs = [{{ path = "{host.root / 'log/access.log'}", format = "combined" }},
        {{ path = "{host.root / 'log/auth.log'}", format = "auth" }}]
[[stages.db_logins]]
name = "edm_app"
url = "${{{APP_DB_ENV}}}"
[[stages.refused_ssh]]
host = "{host.name}"
user = "{PASSWORD_SUDO_USER}"
key_file = "{lab.client_key}"
{ldap}"""


def checks_of(state: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((state / "stages/final_checks/checks.json").read_text(encoding="utf-8"))
    return {check["id"]: check for check in data["checks"]}


def test_final_checks_fail_with_evidence_before_the_shutdown_and_pass_after_it(
        ssh_lab: SshLab, small_demo: tuple[str, Path, DemoFacts], ldap_server: Any, app_login: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, content, facts = small_demo
    app1 = ssh_lab.hosts["app1"]
    assert app1.daemon is not None
    (app1.root / "log/access.log").write_text(ACCESS_LOG)
    (app1.root / "log/auth.log").write_text(AUTH_LOG)
    keeper = facts.admin_logins[-1]
    logins = json.dumps([*ldap_server.missing, *ldap_server.disabled])
    ldap = ldap_server.stage_text(extra=f"logins = {logins}")
    plan = tmp_path / "final.toml"
    plan.write_text(f"""[plan]
name = "final-test"
owner = "Test Operator"

[source]
adapter = "demo"
url = "{url}"
content_root = "{content}"

[[stages]]
kind = "inventory"
batch_files = 100
freeze_at = 2026-11-20T18:00:00Z
{shutdown_stage(ssh_lab, app1, app_login)}
{final_stage(ssh_lab, app1, keeper, ldap)}
[[accept]]
stage = "final_checks"
match = "after the freeze in"
by = "Security officer"
reason = "reviewed: the test's planted activity"
""", encoding="utf-8")
    state = tmp_path / "final.state"
    assert run_cli(["--quiet", "run", str(plan), "--stage", "inventory"]) == 0

    capsys.readouterr()
    assert run_cli(["--quiet", "run", str(plan), "--stage", "final_checks"]) == 2
    err = capsys.readouterr().err
    assert "check(s) did not pass" in err and f"port:app1:{app1.daemon.port}" in err and "accepted" in err
    assert "app-secret" not in err + (state / "journal.jsonl").read_text()  # the login's password: nowhere
    assert "app-secret" not in (state / "stages/final_checks/checks.json").read_text()
    before = checks_of(state)
    failing = {cid for cid, c in before.items() if c["status"] == "fail" and c["accepted_by"] is None}
    assert failing == {f"port:app1:{app1.daemon.port}", f"http:app1:http://127.0.0.1:{app1.daemon.port}/",
                       f"process:app1:http.server {app1.daemon.port}",
                       f"job:app1:{app1.cron_file}:disi-sync", f"key_file:app1:{app1.key_file}",
                       "db_login:edm_app", f"ssh_refused:app1:{PASSWORD_SUDO_USER}", "users"}
    assert before[f"port:app1:{app1.daemon.port}"]["evidence"]["result"] == "connected"
    assert before[f"http:app1:http://127.0.0.1:{app1.daemon.port}/"]["evidence"]["status"] == 200
    assert any("http.server" in p for p in before[f"process:app1:http.server {app1.daemon.port}"]["evidence"]
               ["processes"])
    assert "disi-sync" in before[f"job:app1:{app1.cron_file}:disi-sync"]["evidence"]["entries"][0]
    assert len(before[f"key_file:app1:{app1.key_file}"]["evidence"]["sha256"]) == 64
    assert keeper not in before["users"]["evidence"]["active"] and before["users"]["evidence"]["kept"] == [keeper]
    assert before[f"ldap:{ldap_server.server.url}"]["status"] == "pass"
    # the activity after the freeze fails its checks, and the plan accepts it on the record
    for cid in (f"logs:app1:{app1.root / 'log/access.log'}", f"logs:app1:{app1.root / 'log/auth.log'}",
                "activity:source"):
        assert before[cid]["status"] == "fail" and before[cid]["accepted_by"].startswith("Security officer")
    table = pq.read_table(state / "stages/final_checks/checks.parquet")
    assert table.num_rows == len(before) and set(table.column("status").to_pylist()) == {"pass", "fail"}

    # The lock-down's result (every account but the keeper disabled), then the shutdown and the checks again.
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE staff SET blocked = 1 WHERE login <> :keeper"), {"keeper": keeper})
    engine.dispose()
    assert run_cli(["--quiet", "run", str(plan)]) == 0, capsys.readouterr().err
    after = checks_of(state)
    assert {c["status"] for c in after.values() if c["accepted_by"] is None} == {"pass"}
    assert after["db_login:edm_app"]["evidence"]["message"].count("not permitted to log in") == 1
    assert after[f"port:app1:{app1.daemon.port}"]["evidence"]["result"] == "refused"


def test_logs_after_the_freeze_give_findings_with_their_evidence_lines(tmp_path: Path) -> None:
    where = {"host": "app1", "file": "/var/log/nginx/access.log"}
    patterns = activity.Patterns(r"(?i)/login", r"(?i)/files/", r"(?i)/admin", r"(?i)/acl")
    items = [*activity.from_access_log(ACCESS_LOG, patterns, where),
             *activity.from_auth_log(AUTH_LOG, FREEZE, {"host": "app1", "file": "/var/log/auth.log"})]
    found = activity.findings(items, freeze=FREEZE, source="app1", allowed_networks=["10.0.0.0/8"],
                              bulk_per_minute=20)
    by_kind = {f.kind: f for f in found}
    admin = by_kind["admin_login_after_freeze"]
    assert admin.subject == "user:root" and admin.severity == "high"
    assert admin.evidence["first"]["line"].startswith("Nov 20 19:00:01 app1 sshd[101]: Accepted publickey for root")
    bulk = by_kind["bulk_download"]
    assert bulk.subject == f"client:{OUTSIDER}" and bulk.evidence["count"] == 40
    assert "GET /files/doc-0.pdf" in bulk.evidence["first"]["line"] and bulk.evidence["first"]["line_no"] == 4
    assert "usermod -aG edm-admins intruder" in by_kind["permission_change_after_freeze"].evidence["first"]["line"]
    assert by_kind["admin_action_after_freeze"].evidence["first"]["line"].count("/admin/settings") == 1
    assert by_kind["unusual_source_address"].subject == f"address:{OUTSIDER}"
    assert by_kind["failed_login_after_freeze"].severity == "low"
    assert by_kind["download_after_freeze"].evidence["count"] == 40
    # nothing from before the freeze: the 17:00 download and the 17:59 login are not reported
    assert all("old.pdf" not in json.dumps(f.evidence) and "10.20.1.5" not in json.dumps(f.evidence) for f in found)


def test_a_host_that_cannot_be_reached_gives_unknown_never_pass(
        ssh_lab: SshLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db1 = ssh_lab.hosts["db1"]
    db1.stop_sshd()
    plan = tmp_path / "down.toml"
    plan.write_text(f"""[plan]
name = "down-test"
owner = "Test Operator"

[source]
adapter = "demo"
url = "sqlite:///legacy.sqlite"

[[stages]]
kind = "final_checks"
known_hosts = "{ssh_lab.known_hosts()}"
users_inactive = false
activity_after_freeze = false
[[stages.hosts]]
{host_connection(ssh_lab, db1)}
closed_ports = [{db1.port}]
processes = ["postgres"]
key_files = ["{db1.key_file}"]
""", encoding="utf-8")
    assert run_cli(["--quiet", "run", str(plan)]) == 2
    assert "2 of 3 check(s) did not pass" in capsys.readouterr().err
    checks = checks_of(tmp_path / "down.state")
    assert checks[f"port:db1:{db1.port}"]["status"] == "pass"  # nothing listens: the SSH port is closed too
    assert checks["process:db1:postgres"]["status"] == "unknown"
    assert "connection refused" in checks[f"key_file:db1:{db1.key_file}"]["summary"]
