"""The access audit on the demo EDM: findings equal the generator's facts, exports, the directory cross-check
against a real slapd (tests/ldap_server.py), failures as one clear line, no secret anywhere, and the same
result from PostgreSQL and MariaDB as from SQLite."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import write_plan
from ldap_server import LDAP_PASSWORD_ENV, Person, SlapdUnavailable, start_demo_directory, start_slapd

from decom import api, engine
from decom.cli import run_cli
from decom.demo.generator import DemoFacts, DemoSpec, build_demo
from decom.errors import UserError
from decom.findings import FINDINGS_SCHEMA
from decom.plan import load_plan
from decom.progress import Progress
from decom.remote.ldap import DirectoryConfig, check_logins
from decom.stages.access_analysis import EVERYONE_SCHEMA, PERMISSIONS_SCHEMA, USERS_SCHEMA

SPEC = DemoSpec(documents=60)  # the same world as the small_demo fixture
ACCOUNT_KINDS = {"admin_account": "medium", "dormant_account": "medium", "never_logged_in": "low",
                 "shared_account": "high", "departed_account": "high", "directory_disabled": "high"}
STAGE = "stages/access_audit"


def audit(folder: Path, url: str, content: Path, extra: str = "", **kwargs: Any) -> Path:
    """Run only the access audit of a demo plan; return the state folder."""
    plan = write_plan(folder, url, content, access_audit=True, extra_stages=extra, **kwargs)
    state = folder / "audit.state"
    api.run(plan, state=state, stages=["access_audit"])
    return state


def rows(state: Path, name: str) -> list[dict[str, Any]]:
    return pq.read_table(state / STAGE / "exports" / f"{name}.parquet").to_pylist()


def subjects(findings: list[dict[str, Any]], kind: str) -> list[str]:
    return sorted(f["subject"] for f in findings if f["kind"] == kind)


def users_of(logins: tuple[str, ...] | list[str]) -> list[str]:
    return sorted(f"user:{login}" for login in logins)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, DemoFacts]:
    folder = tmp_path_factory.mktemp("audit")
    url = f"sqlite:///{folder / 'legacy.sqlite'}"
    facts = build_demo(url, folder / "content", SPEC)
    return folder, audit(folder, url, folder / "content"), facts


# -- the demo's facts ----------------------------------------------------------------------------------

def test_findings_equal_the_demo_facts(audited: tuple[Path, Path, DemoFacts]) -> None:
    _, state, facts = audited
    findings = rows(state, "findings")
    assert subjects(findings, "admin_account") == users_of(facts.admin_logins)
    assert subjects(findings, "dormant_account") == users_of(facts.dormant_logins)
    assert subjects(findings, "never_logged_in") == users_of(facts.never_logged_in_logins)
    assert subjects(findings, "shared_account") == users_of(facts.shared_logins)
    assert subjects(findings, "everyone_readable") == sorted(f"document:{d}" for d in
                                                             facts.everyone_readable_document_ids)
    assert not subjects(findings, "departed_account") and not subjects(findings, "directory_disabled")
    assert {f["kind"] for f in findings} <= {*ACCOUNT_KINDS, "everyone_readable"}
    flagged = {f["subject"] for f in findings if f["subject"].startswith("user:")}
    assert not flagged & set(users_of(facts.disabled_logins)), "a disabled account is no finding by itself"
    for finding in findings:
        evidence = json.loads(finding["evidence"])
        if finding["kind"] == "everyone_readable":
            assert finding["severity"] == "high"
            assert evidence["document_id"] == finding["subject"].removeprefix("document:")
            assert evidence["object_type"] == "document" and evidence["object_id"] == evidence["document_id"]
            assert evidence["inherited"] is False and evidence["access"] in ("read", "write")
        else:
            assert finding["severity"] == ACCOUNT_KINDS[finding["kind"]]
            assert finding["subject"] == f"user:{evidence['login']}" and evidence["user_id"]
    dormant = [json.loads(f["evidence"]) for f in findings if f["kind"] == "dormant_account"]
    assert all(e["idle_days"] > 365 and e["as_of"] == "2026-11-20T18:00:00+00:00" for e in dormant)


def test_exports_are_csv_and_parquet_with_the_documented_columns(audited: tuple[Path, Path, DemoFacts]) -> None:
    _, state, facts = audited
    exports = state / STAGE / "exports"
    documented = {"users": USERS_SCHEMA, "permissions": PERMISSIONS_SCHEMA, "findings": FINDINGS_SCHEMA}
    assert sorted(p.name for p in exports.iterdir()) == sorted(f"{n}.{ext}" for n in documented for ext in
                                                                ("csv", "parquet"))
    for name, schema in documented.items():
        table = pq.read_table(exports / f"{name}.parquet")
        assert table.schema.names == schema.names, name
        with (exports / f"{name}.csv").open(encoding="utf-8", newline="") as handle:
            read = list(csv.DictReader(handle))
        assert list(read[0]) == schema.names and len(read) == table.num_rows, name
    users = {u["login"]: u for u in rows(state, "users")}
    assert len(users) == facts.users
    everyone = len(facts.everyone_readable_document_ids)
    for login, user in users.items():
        assert user["status"] == ("disabled" if login in facts.disabled_logins else "active")
        assert user["documents_everyone"] == (0 if login in facts.disabled_logins else everyone)
        assert user["documents_reachable"] >= max(user[f"documents_{v}"] for v in
                                                  ("direct", "group", "role", "inherited", "everyone"))
        assert user["last_login_text"] == ("never" if login in facts.never_logged_in_logins
                                           else user["last_login"].isoformat())
    assert all(users[login]["is_admin"] for login in facts.admin_logins)
    assert "inherited" in users[facts.admin_logins[0]]["rights_via"]
    permissions = rows(state, "permissions")
    keys = [(p["user_id"], p["document_id"], p["access"], p["via"]) for p in permissions]
    assert len(keys) == len(set(keys)), "one row per (user, document, access, via)"
    assert {p["via"] for p in permissions} <= {"direct", "group", "role", "inherited"}  # everyone: not per user
    assert len(permissions) < facts.users * facts.documents
    open_docs = pq.read_table(state / STAGE / "everyone.parquet")
    assert open_docs.schema.names == EVERYONE_SCHEMA.names
    assert sorted(open_docs.column("document_id").to_pylist()) == sorted(facts.everyone_readable_document_ids)


def test_dry_run_lists_findings_risks_chart_and_the_lockdown_it_would_take(
        audited: tuple[Path, Path, DemoFacts], tmp_path: Path) -> None:
    folder, state, facts = audited
    database = folder / "legacy.sqlite"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    lockdown = '\n[stages.lockdown]\ndisable = ["dormant", "shared"]\nkeep_logins = ["scanner"]\n'
    plan = write_plan(tmp_path, f"sqlite:///{database}", folder / "content", access_audit=True, extra_stages=lockdown)
    stages = engine.plan_stages(load_plan(plan), tmp_path / "s", Progress(False))
    audit_plan = next(s for s in stages if s.kind == "access_audit")
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before, "the dry run changed the source"
    assert not audit_plan.blockers
    ran = rows(state, "findings")
    assert [f.as_row() for f in audit_plan.findings] == ran
    assert audit_plan.counts["users"] == facts.users
    assert audit_plan.counts["active"] == facts.users - len(facts.disabled_logins)
    assert audit_plan.counts["documents"] == facts.documents
    assert audit_plan.counts["documents_open_to_everyone"] == len(facts.everyone_readable_document_ids)
    assert f"{len(facts.shared_logins)} shared accounts" in audit_plan.risks
    assert f"{len(facts.dormant_logins)} dormant accounts" in audit_plan.risks
    assert audit_plan.charts["findings by kind"]["admin_account"] == len(facts.admin_logins)
    lockdown_lines = " ".join(audit_plan.actions)
    for login in (*facts.dormant_logins, "office_shared"):
        assert login in lockdown_lines
    assert not any("scanner" in line and "disable" in line for line in audit_plan.actions)


# -- the directory ---------------------------------------------------------------------------------------

def test_directory_cross_check_finds_exactly_the_missing_and_the_disabled_logins(
        ldap_server: Any, small_demo: tuple[str, Path, DemoFacts], tmp_path: Path) -> None:
    url, content, facts = small_demo
    state = audit(tmp_path, url, content, ldap_server.stage_text())
    findings = rows(state, "findings")
    assert subjects(findings, "departed_account") == users_of(ldap_server.missing)
    assert subjects(findings, "directory_disabled") == users_of(list(ldap_server.disabled))
    for finding in findings:
        if finding["kind"] == "directory_disabled":
            evidence = json.loads(finding["evidence"])
            assert evidence["reason"].startswith(ldap_server.disabled[evidence["login"]] + "=")
            assert evidence["dn"].startswith("uid=") and evidence["directory"] == ldap_server.server.url
    # the other findings do not change with a directory
    assert subjects(findings, "dormant_account") == users_of(facts.dormant_logins)
    directory = {r["login"]: r for r in pq.read_table(state / STAGE / "directory.parquet").to_pylist()}
    assert len(directory) == facts.users
    assert directory[facts.never_logged_in_logins[0]]["status"] == "present"  # upper-case uid in the directory
    assert directory[facts.admin_logins[0]]["status"] == "present"  # future shadowExpire, userAccountControl 512
    assert directory[facts.disabled_logins[0]]["status"] == "disabled"  # locked in both: no finding

    plan = write_plan(tmp_path, url, content, access_audit=True, extra_stages=ldap_server.stage_text())
    report = api.plan(plan, state=state)
    audit_plan = next(s for s in report.stages if s.kind == "access_audit")
    assert not audit_plan.blockers
    assert [f.as_row() for f in audit_plan.findings] == findings
    assert audit_plan.counts["directory_missing"] == len(ldap_server.missing) + 1  # + a disabled EDM account

    password = ldap_server.server.password.encode()
    leaks = [p for p in state.rglob("*") if p.is_file() and password in p.read_bytes()]
    assert not leaks, f"the bind password was written to {leaks}"


def test_a_bind_password_file_works_and_stays_out_of_the_state_folder(
        ldap_server: Any, small_demo: tuple[str, Path, DemoFacts], tmp_path: Path) -> None:
    url, content, _ = small_demo
    secret_file = tmp_path / "ldap.secret"
    secret_file.write_text(ldap_server.server.password + "\n", encoding="utf-8")
    text = ldap_server.stage_text().replace(f'bind_password = "${{{LDAP_PASSWORD_ENV}}}"',
                                            f'bind_password_file = "{secret_file.name}"')
    state = audit(tmp_path, url, content, text)
    assert subjects(rows(state, "findings"), "departed_account") == users_of(ldap_server.missing)
    password = ldap_server.server.password.encode()
    assert not [p for p in state.rglob("*") if p.is_file() and password in p.read_bytes()]


def test_paged_search_reads_past_the_size_limit_and_a_cut_listing_is_an_error(
        ldap_server: Any, tmp_path: Path) -> None:
    server = ldap_server.server
    config = DirectoryConfig(server.url, server.base_dn, server.bind_dn, server.password,
                             user_filter="(objectClass=inetOrgPerson)")
    logins = [f"dir-only-{i:03d}" for i in range(60)] + ["nobody-here"]
    statuses = check_logins(config, logins, page_size=7)
    assert [s.status for s in statuses] == ["present"] * 60 + ["missing"]

    people = [Person(f"p{i:03d}", f"Person {i}") for i in range(50)]
    try:
        capped = start_slapd(tmp_path / "capped", people, paged_total=20)
    except SlapdUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        cut = DirectoryConfig(capped.url, capped.base_dn, capped.bind_dn, capped.password)
        with pytest.raises(UserError, match="stopped the listing after 20 entries"):
            check_logins(cut, ["p000"], page_size=10)
    finally:
        capped.stop()


def test_ldaps_and_starttls_check_the_certificate_against_ca_file(
        small_demo: tuple[str, Path, DemoFacts], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, content, facts = small_demo
    try:
        directory = start_demo_directory(tmp_path / "slapd", url, facts, tls=True)
    except SlapdUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    server = directory.server
    assert server.ldaps_url and server.ca_file
    monkeypatch.setenv(LDAP_PASSWORD_ENV, server.password)
    try:
        shutil.copy(server.ca_file, tmp_path / "directory-ca.pem")  # ca_file is relative to the plan
        ldaps = directory.stage_text(url=server.ldaps_url, extra='ca_file = "directory-ca.pem"\n')
        findings = rows(audit(tmp_path, url, content, ldaps), "findings")
        assert subjects(findings, "departed_account") == users_of(directory.missing)
        assert subjects(findings, "directory_disabled") == users_of(list(directory.disabled))

        base = DirectoryConfig(server.url, server.base_dn, server.bind_dn, server.password)
        start_tls = replace(base, start_tls=True, ca_file=server.ca_file)
        assert [s.status for s in check_logins(start_tls, [*directory.missing, *directory.disabled])] == \
            ["missing"] * len(directory.missing) + ["disabled"] * len(directory.disabled)
        for untrusted in (replace(base, start_tls=True), replace(base, url=server.ldaps_url)):
            with pytest.raises(UserError, match=r"TLS certificate of the LDAP directory .* is not trusted "
                                                r"\(self-signed certificate in certificate chain\); set ldap.ca_file"):
                check_logins(untrusted, ["x"])
        wrong_name = replace(base, url=server.ldaps_url.replace("127.0.0.1", "localhost"), ca_file=server.ca_file)
        with pytest.raises(UserError, match="not issued for that host name"):
            check_logins(wrong_name, ["x"])
    finally:
        server.stop()


def blocker_lines(out: str, text: str) -> list[str]:
    """The BLOCKER lines of `decom plan` that contain `text`."""
    return [line for line in out.splitlines() if line.startswith("BLOCKER") and text in line]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_directory_is_a_blocker_in_plan_and_one_line_exit_2_in_run(
        small_demo: tuple[str, Path, DemoFacts], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = small_demo
    monkeypatch.setenv(LDAP_PASSWORD_ENV, "not-used-" + secrets.token_hex(4))
    where = f"ldap://127.0.0.1:{_closed_port()}"
    ldap = (f'\n[stages.ldap]\nurl = "{where}"\nbase_dn = "dc=example"\nbind_dn = "cn=reader,dc=example"\n'
            f'bind_password = "${{{LDAP_PASSWORD_ENV}}}"\ntimeout_seconds = 2\n')
    plan = write_plan(tmp_path, url, content, access_audit=True, extra_stages=ldap)
    assert run_cli(["--quiet", "plan", str(plan), "--state", str(tmp_path / "s")]) == 3
    out = capsys.readouterr().out
    assert blocker_lines(out, f"directory check: cannot reach the LDAP directory {where}: connection refused")
    assert run_cli(["--quiet", "run", str(plan), "--state", str(tmp_path / "s"), "--stage", "access_audit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"decom: error: cannot reach the LDAP directory {where}: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_wrong_bind_password_is_one_clear_line_that_does_not_contain_it(
        ldap_server: Any, small_demo: tuple[str, Path, DemoFacts], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url, content, _ = small_demo
    wrong = "Wrong-" + secrets.token_urlsafe(12)
    monkeypatch.setenv("DECOM_TEST_WRONG_LDAP_PASSWORD", wrong)
    text = ldap_server.stage_text(password_env="DECOM_TEST_WRONG_LDAP_PASSWORD")
    plan = write_plan(tmp_path, url, content, access_audit=True, extra_stages=text)
    state = tmp_path / "s"
    assert run_cli(["--quiet", "run", str(plan), "--state", str(state), "--stage", "access_audit"]) == 2
    err = capsys.readouterr().err
    assert err == (f"decom: error: the LDAP directory {ldap_server.server.url} refused the bind as "
                   f"{ldap_server.server.bind_dn}: invalid credentials (check ldap.bind_dn and "
                   "ldap.bind_password)\n")
    assert run_cli(["--quiet", "plan", str(plan), "--state", str(state)]) == 3
    out = capsys.readouterr().out
    assert blocker_lines(out, "directory check: the LDAP directory") and wrong not in out
    for secret in (wrong, ldap_server.server.password):
        assert not [p for p in state.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# -- other databases -------------------------------------------------------------------------------------

@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_postgresql_and_mariadb_give_the_same_audit_as_sqlite(audited: tuple[Path, Path, DemoFacts], server: str,
                                                               tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _, sqlite_state, _ = audited
    url = request.getfixturevalue(server)
    build_demo(url, tmp_path / "content", SPEC)
    state = audit(tmp_path, url, tmp_path / "content")
    for name in ("findings", "users", "permissions"):
        assert rows(state, name) == rows(sqlite_state, name), name
    assert (state / STAGE / "exports" / "findings.csv").read_bytes() == \
        (sqlite_state / STAGE / "exports" / "findings.csv").read_bytes()


def test_csv_exports_keep_non_latin_text(audited: tuple[Path, Path, DemoFacts]) -> None:
    _, state, _ = audited
    text = (state / STAGE / "exports" / "users.csv").read_text(encoding="utf-8")
    names = [row["full_name"] for row in csv.DictReader(io.StringIO(text))]
    assert any("\u4e00" <= ch <= "\u9fff" for name in names for ch in name)
    assert any("а" <= ch <= "я" for name in names for ch in name.lower())
