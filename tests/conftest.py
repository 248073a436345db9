"""Shared fixtures: fresh databases on the real servers, demo systems, plan files.

Every database a test uses is created with a unique name and dropped afterwards. A server that
does not answer fails the test (scripts/services.sh, run by `make test`, starts them): a missing
service is never a skip.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("DECOM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIA_ADMIN_URL = os.environ.get("DECOM_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/mysql")
REPO = Path(__file__).resolve().parent.parent


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _admin_engine(url: str, what: str) -> sa.Engine:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"{what} is not reachable at {url} (run `make services`): {exc.orig}", pytrace=False)
    return engine


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    admin = _admin_engine(PG_ADMIN_URL, "PostgreSQL")
    name = _unique("decom_t")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """URL of a fresh, empty MariaDB database (utf8mb4), dropped after the test."""
    admin = _admin_engine(MARIA_ADMIN_URL, "MariaDB")
    name = _unique("decom_t")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    try:
        url = sa.engine.make_url(MARIA_ADMIN_URL).set(database=name).update_query_dict({"charset": "utf8mb4"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


# The access audit as the demo needs it: the generator's dormant rule (365 days) and its shared accounts.
ACCESS_AUDIT_STAGE = """
[[stages]]
kind = "access_audit"
dormant_days = 365
shared_account_patterns = ["shared", "^scanner$"]
"""


def write_plan(folder: Path, url: str, content_root: Path, *, name: str = "test-plan",
               extra_stages: str = "", batch_files: int = 25, state_url: str | None = None,
               access_audit: bool = False) -> Path:
    """A plan file for a demo system, with the inventory stage, the access audit if asked (before any
    extra stage text) and any extra stage text."""
    state = f'\n[state]\nurl = "{state_url}"\n' if state_url else ""
    if access_audit:
        extra_stages = ACCESS_AUDIT_STAGE + extra_stages
    text = f'''[plan]
name = "{name}"
owner = "Test Operator"
ticket = "TEST-1"

[source]
adapter = "demo"
url = "{url}"
content_root = "{content_root}"
{state}
[[stages]]
kind = "inventory"
batch_files = {batch_files}
freeze_at = 2026-11-20T18:00:00Z
{extra_stages}'''
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small_demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A small demo EDM in SQLite: (url, content_root, facts)."""
    from decom.demo.generator import DemoSpec, build_demo

    url = f"sqlite:///{tmp_path / 'legacy.sqlite'}"
    content = tmp_path / "content"
    facts = build_demo(url, content, DemoSpec(documents=60))
    return url, content, facts


def decom_cmd() -> list[str]:
    """The decom console entry as a subprocess command, using this interpreter."""
    return [sys.executable, "-c", "from decom.cli import main; main()"]


@pytest.fixture
def ldap_server(small_demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A throw-away slapd on a free loopback port holding the small demo's directory (tests/ldap_server.py).

    Yields a DemoDirectory: the server (url, base_dn, bind_dn, password), the active logins it lacks
    and the ones it locks. The bind password is generated per server and given to the test only through
    the environment variable DECOM_TEST_LDAP_PASSWORD. Without slapd installed the test fails.
    """
    from ldap_server import LDAP_PASSWORD_ENV, SlapdUnavailable, start_demo_directory

    url, _content, facts = small_demo
    try:
        directory = start_demo_directory(tmp_path / "slapd", url, facts)
    except SlapdUnavailable as exc:
        pytest.fail(f"{exc} (run `make services`)", pytrace=False)
    monkeypatch.setenv(LDAP_PASSWORD_ENV, directory.server.password)
    try:
        yield directory
    finally:
        directory.server.stop()


@pytest.fixture
def ssh_lab(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Three throw-away hosts (app1, app2, db1), each a real sshd on a free loopback port with a running
    daemon, a cron file and a signing key under /tmp/decomhost-*/ (tests/ssh_hosts.py). Without sshd
    installed the test fails (run `make services`)."""
    from ssh_hosts import SshdUnavailable, start_lab

    try:
        lab = start_lab(tmp_path / "ssh")
    except SshdUnavailable as exc:
        pytest.fail(f"{exc} (run `make services`)", pytrace=False)
    try:
        yield lab
    finally:
        lab.close()
