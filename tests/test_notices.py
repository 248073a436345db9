"""User notices of the handover: the outbox, and delivery through a real SMTP server on loopback
(aiosmtpd, STARTTLS with a throw-away CA, AUTH LOGIN and PLAIN), sent once even across reruns."""

from __future__ import annotations

import email
import email.policy
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import decom_cmd, write_plan
from test_handover import GROUP, Scenario
from tls_files import make_tls_files

from decom import api
from decom.cli import run_cli
from decom.journal import Journal
from decom.plan import check_plan

PASSWORD_ENV = "DECOM_TEST_SMTP_PASSWORD"
USERNAME = "decom-notices"
SENDER = "records@mincifra-demo.example"


# -- a real SMTP server on loopback ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Mailbox:
    """What the server received: (envelope sender, recipients, raw message) per message; logins by mechanism."""

    port: int
    ca_file: Path | None = None
    password: str = ""
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        ok = auth_data.login == USERNAME.encode() and auth_data.password == self.password.encode()
        self.logins.append((mechanism, auth_data.login.decode()))
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself

    def parsed(self) -> list[Any]:
        return [email.message_from_bytes(raw, policy=email.policy.default) for _, _, raw in self.messages]


@pytest.fixture
def smtp_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start aiosmtpd on a free loopback port: start(tls=..., mechanism="LOGIN"|"PLAIN"|None) -> Mailbox.

    With tls, STARTTLS is required and the client must trust the throw-away CA (plan option ca_file);
    with a mechanism, AUTH is required and only that mechanism is offered. The password is random and
    reaches decom only through the environment variable DECOM_TEST_SMTP_PASSWORD.
    """
    from aiosmtpd.controller import Controller

    controllers: list[Any] = []

    def start(*, tls: bool = True, mechanism: str | None = "LOGIN") -> Mailbox:
        box = Mailbox(_free_port())
        options: dict[str, Any] = {}
        if tls:
            ca, cert, key = make_tls_files(tmp_path / "tls", dns_names=("localhost",))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            options.update(tls_context=context, require_starttls=True)
            box.ca_file = ca
        if mechanism is not None:
            box.password = secrets.token_urlsafe(18)
            monkeypatch.setenv(PASSWORD_ENV, box.password)
            options.update(authenticator=box.authenticate, auth_required=True,
                           auth_exclude_mechanism=[m for m in ("LOGIN", "PLAIN") if m != mechanism])
        controller = Controller(box, hostname="127.0.0.1", port=box.port, **options)
        controller.start()
        controllers.append(controller)
        return box

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def scenario(small_demo) -> Scenario:  # type: ignore[no-untyped-def]
    url, _content, facts = small_demo
    return Scenario(url, facts)


# -- helpers ---------------------------------------------------------------------------------------------

def notices_table(box: Mailbox | None = None, *, template: str | None = None, password: str | None = None) -> str:
    text = f'''
[stages.notices]
from_address = "Канцелярия министерства <{SENDER}>"
subject = "$system: отключение 2026-11-20, ваши дела ($cases_received_count)"
system = "СЭД министерства"
'''
    if template:
        text += f'template = "{template}"\n'
    if box is not None:
        text += f'''
[stages.notices.smtp]
host = "127.0.0.1"
port = {box.port}
starttls = {"true" if box.ca_file else "false"}
'''
        if box.ca_file:
            text += f'ca_file = "{box.ca_file}"\n'
        if box.password or password:
            text += f'username = "{USERNAME}"\npassword = "{password or "${" + PASSWORD_ENV + "}"}"\n'
    return text


def _rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql), params)]
    engine.dispose()
    return rows


def _execute(url: str, sql: str, **params: Any) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


def affected_logins(url: str, scenario: Scenario) -> set[str]:
    """Active accounts (not locked down) owning documents or holding open work, plus the new owners."""
    owners = {str(a) for (a,) in _rows(url, "SELECT DISTINCT author_id FROM doc_card WHERE author_id IS NOT NULL")}
    holding = {str(a) for (a,) in _rows(url, "SELECT assignee_id FROM proc_case WHERE is_closed = 0 AND "
                                             "assignee_id IS NOT NULL UNION SELECT assignee_id FROM proc_task WHERE "
                                             "state = 'open' AND assignee_id IS NOT NULL")}
    active = {str(i): str(login) for i, login in _rows(url, "SELECT id, login FROM staff WHERE blocked = 0")}
    told = {login for user_id, login in active.items()
            if login != scenario.locked and (user_id in owners or user_id in holding)}
    return told | {scenario.r1, scenario.d1}


def recipient(raw: bytes) -> tuple[str, str]:
    """(display name, address) of the To header, decoded as RFC 2047 says: the whitespace between two
    encoded-words is not part of the name (Python's own address parser keeps it; mail clients do not)."""
    header = email.message_from_bytes(raw, policy=email.policy.compat32)["To"]
    name, address = parseaddr(str(header))
    return str(make_header(decode_header(name))), address


def outbox_of(state: Path) -> Path:
    return state / "stages" / "handover" / "outbox"


def everything_in(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


# -- the outbox ------------------------------------------------------------------------------------------

def test_outbox_holds_one_utf8_notice_per_affected_user_and_users_without_email_are_findings(
        small_demo, scenario: Scenario, tmp_path: Path) -> None:
    url, content, _ = small_demo
    _execute(url, "UPDATE staff SET email = NULL WHERE login = :l", l=scenario.r2)
    _execute(url, "UPDATE staff SET fio = :f WHERE login = :l", f="王伟", l=scenario.r1)
    plan = write_plan(tmp_path, url, content, extra_stages=scenario.stages(
        target='["package"]', accept=True, notices=notices_table()))
    stage = next(s for s in api.plan(plan).stages if s.stage == "handover")
    no_email = [f for f in stage.findings if f.kind == "notice_no_email"]
    assert {f.subject for f in no_email} == {f"user:{scenario.r2}", "user:ghost.user"}
    assert all(f.severity == "low" for f in no_email)
    expected = affected_logins(url, scenario)
    assert stage.counts["notices"] == len(expected) - 1

    assert run_cli(["--quiet", "run", str(plan)]) == 0
    outbox = outbox_of(tmp_path / "test-plan.state")
    index = json.loads((outbox / "index.json").read_text(encoding="utf-8"))
    assert {n["login"] for n in index["notices"]} == expected - {scenario.r2}
    assert [p["login"] for p in index["without_email"]] == [scenario.r2]
    assert index["not_accounts"] == ["ghost.user"]
    assert {p.name for p in outbox.glob("*.eml")} == {f"{login}.eml" for login in expected - {scenario.r2}}

    names = dict(_rows(url, "SELECT login, fio FROM staff"))
    for entry in index["notices"]:
        raw = (outbox / entry["file"]).read_bytes()
        raw.decode("ascii")  # every header encoded, the body in base64: safe for any server
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert recipient(raw) == (names[entry["login"]], entry["to"])
        assert message["Message-ID"] == entry["message_id"]
        assert message.get_content_charset() == "utf-8"
        assert message["Subject"].startswith("СЭД министерства: отключение 2026-11-20")
    c0, _c1, c2, _c3, c4 = scenario.cases
    r1 = email.message_from_bytes((outbox / f"{scenario.r1}.eml").read_bytes(), policy=email.policy.default)
    body = r1.get_content()
    assert body.startswith("Dear 王伟,") and f"case {c0} (" in body and f"from {scenario.d1}" in body
    assert "2026-11-20 18:00 UTC" in body
    assert "(1)" in str(r1["Subject"])
    d1 = email.message_from_bytes((outbox / f"{scenario.d1}.eml").read_bytes(), policy=email.policy.default)
    assert f"case {c2} (" in d1.get_content() and f"from {GROUP}" in d1.get_content()
    assert f"case {c4} (" not in d1.get_content()


def test_a_template_with_an_unknown_placeholder_is_a_blocker(small_demo, scenario: Scenario, tmp_path: Path) -> None:
    url, content, _ = small_demo
    (tmp_path / "notice.txt.tmpl").write_text("Здравствуйте, $full_name! $no_such_thing\n", encoding="utf-8")
    plan = write_plan(tmp_path, url, content, extra_stages=scenario.stages(
        accept=True, notices=notices_table(template="notice.txt.tmpl")))
    stage = next(s for s in api.plan(plan).stages if s.stage == "handover")
    assert any("unknown placeholder $no_such_thing" in b for b in stage.blockers), stage.blockers


# -- sending ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_notices_go_through_starttls_and_auth_once_and_a_rerun_sends_nothing(
        small_demo, scenario: Scenario, tmp_path: Path, smtp_server: Any, mechanism: str) -> None:
    url, content, _ = small_demo
    box = smtp_server(tls=True, mechanism=mechanism)
    plan = write_plan(tmp_path, url, content, extra_stages=scenario.stages(
        target='["package"]', accept=True, notices=notices_table(box)))
    report = api.plan(plan)
    assert run_cli(["--quiet", "run", str(plan)]) == 0

    state = tmp_path / "test-plan.state"
    index = json.loads((outbox_of(state) / "index.json").read_text(encoding="utf-8"))
    expected = affected_logins(url, scenario)
    assert len(box.messages) == len(expected) == len(index["notices"])
    assert box.logins == [(mechanism, USERNAME)], "one connection, authenticated with the mechanism offered"
    emails = dict(_rows(url, "SELECT login, email FROM staff"))
    assert sorted(r for _, rcpts, _ in box.messages for r in rcpts) == sorted(emails[login] for login in expected)
    assert {sender for sender, _, _ in box.messages} == {SENDER}
    arrived = {m["Message-ID"]: m for m in box.parsed()}
    assert set(arrived) == {n["message_id"] for n in index["notices"]}
    r1 = next(m for m in arrived.values() if m["To"].addresses[0].addr_spec == emails[scenario.r1])
    assert recipient(r1.as_bytes())[1] == emails[scenario.r1]
    assert str(r1["Subject"]).startswith("СЭД министерства: отключение")
    assert f"case {scenario.cases[0]} (" in r1.get_content()

    journal = Journal(state / "journal.jsonl")
    sent = [e["details"] for e in journal.entries() if e["event"] == "notice_sent"]
    assert sorted(d["message_id"] for d in sent) == sorted(arrived)

    assert run_cli(["--quiet", "run", str(plan)]) == 0
    (outbox_of(state) / "sent.json").unlink()  # even a lost state file does not send again: the journal knows
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    assert len(box.messages) == len(expected), "a rerun sent a notice again"

    assert box.password not in everything_in(state).decode("utf-8", "replace")
    assert box.password not in json.dumps(report.data, ensure_ascii=False)
    assert box.password.encode() not in plan.read_bytes()


def test_a_run_killed_while_sending_resumes_and_sends_each_notice_once(
        small_demo, scenario: Scenario, tmp_path: Path, smtp_server: Any) -> None:
    url, content, _ = small_demo
    box = smtp_server(tls=True, mechanism="PLAIN")
    plan = write_plan(tmp_path, url, content, extra_stages=scenario.stages(
        target='["package"]', accept=True, notices=notices_table(box)))
    killed = subprocess.run([*decom_cmd(), "--quiet", "run", str(plan)], capture_output=True, text=True,
                            env={**os.environ, "DECOM_TEST_CRASHPOINT": "notices:send@inside"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(box.messages) == 1
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    ids = [m["Message-ID"] for m in box.parsed()]
    assert len(ids) == len(set(ids)) == len(affected_logins(url, scenario))


def test_a_wrong_password_stops_the_run_with_one_line_that_does_not_show_it(
        small_demo, scenario: Scenario, tmp_path: Path, smtp_server: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = small_demo
    box = smtp_server(tls=True, mechanism="LOGIN")
    wrong = secrets.token_urlsafe(18)
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    plan = write_plan(tmp_path, url, content, extra_stages=scenario.stages(
        target='["package"]', accept=True, notices=notices_table(box)))
    assert run_cli(["--quiet", "run", str(plan)]) == 2
    err = capsys.readouterr().err
    assert f"refused the login of {USERNAME}" in err and err.count("\n") == 1
    assert wrong not in err and not box.messages
    assert wrong not in everything_in(tmp_path / "test-plan.state").decode("utf-8", "replace")


def test_a_server_that_requires_starttls_refuses_a_plan_without_it_until_the_plan_asks_for_it(
        small_demo, scenario: Scenario, tmp_path: Path, smtp_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = small_demo
    box = smtp_server(tls=True, mechanism=None)
    ca_file, box.ca_file = box.ca_file, None  # the plan says starttls = false
    plan = write_plan(tmp_path, url, content, extra_stages=scenario.stages(
        target='["package"]', accept=True, notices=notices_table(box)))
    assert run_cli(["--quiet", "run", str(plan)]) == 2
    assert "530" in capsys.readouterr().err and not box.messages
    box.ca_file = ca_file
    write_plan(tmp_path, url, content, extra_stages=scenario.stages(
        target='["package"]', accept=True, notices=notices_table(box)))
    assert run_cli(["--quiet", "run", str(plan), "--accept-changed-plan"]) == 0
    assert len(box.messages) == len(affected_logins(url, scenario))


def test_plain_smtp_without_tls_or_auth_when_the_plan_says_so(
        small_demo, scenario: Scenario, tmp_path: Path, smtp_server: Any) -> None:
    url, content, _ = small_demo
    box = smtp_server(tls=False, mechanism=None)
    plan = write_plan(tmp_path, url, content, extra_stages=scenario.stages(
        target='["package"]', accept=True, notices=notices_table(box)))
    assert run_cli(["--quiet", "run", str(plan)]) == 0
    assert len(box.messages) == len(affected_logins(url, scenario))


# -- the plan --------------------------------------------------------------------------------------------

def test_smtp_secrets_are_checked_like_every_other_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DECOM_NO_SUCH_SMTP_PASSWORD", raising=False)
    base = f'''[plan]
name = "p"
owner = "o"

[source]
adapter = "demo"
url = "sqlite:///{tmp_path / 'x.sqlite'}"

[[stages]]
kind = "handover"

[stages.notices]
from_address = "{SENDER}"

[stages.notices.smtp]
host = "mail.example.org"
username = "u"
'''
    cases = {
        'password = "hunter2"': "a secret is written in the plan",
        'password = "${DECOM_NO_SUCH_SMTP_PASSWORD}"': "environment variable DECOM_NO_SUCH_SMTP_PASSWORD is not set",
        'password_file = "nope.txt"': "file not found",
        'ca_file = "nope.pem"': "file not found",
        'starttl = true': "unknown key",
    }
    for line, message in cases.items():
        path = tmp_path / "plan.toml"
        path.write_text(base + line + "\n", encoding="utf-8")
        problems = [p for p in check_plan(path) if p.severity == "error"]
        assert len(problems) == 1 and message in problems[0].message, (line, problems)
        assert problems[0].key.startswith("stages[0].notices.smtp"), problems[0].key
    path.write_text(base + 'password_file = "pw.txt"\nstarttls = false\n', encoding="utf-8")
    (tmp_path / "pw.txt").write_text("secret\n", encoding="utf-8")
    problems = check_plan(path)
    assert [p.severity for p in problems] == ["warning"] and "unencrypted" in problems[0].message
