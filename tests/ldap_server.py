"""A throw-away OpenLDAP server (the Debian slapd package) for the access-audit tests. Never a mock.

`start_slapd` writes a slapd.conf with the mdb backend, the core/cosine/nis/inetorgperson schemas
and a tiny test schema (`nsAccountLock` as 389 Directory Server keeps it and `userAccountControl` as
Active Directory keeps it, on an auxiliary class), loads an LDIF offline with slapadd, and runs
`slapd -d 0` in the foreground on a free loopback port. Tests bind as a read-only service account
(no rootdn is configured) whose password is generated per server and stored only as a salted SHA-1
hash ({SSHA}). A small size limit makes a search that does not page fail, so the tests prove that
the client pages.

If slapd is not installed, the caller fails the test (scripts/services.sh installs it): never a skip.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from tls_files import make_tls_files

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SIZE_LIMIT = 40  # entries per search without paging; the fixtures hold more than this

BASE_DN = "dc=decom-test,dc=example"
PEOPLE_DN = f"ou=people,{BASE_DN}"
READER_DN = f"cn=decom-reader,ou=services,{BASE_DN}"  # the bind identity a plan would use

# Real attribute OIDs (Netscape/389 DS and Microsoft), a UUID-based OID (2.25.x) for the test class.
TEST_SCHEMA = """\
attributetype ( 2.16.840.1.113730.3.1.610 NAME 'nsAccountLock'
  DESC 'account locked (389 Directory Server, FreeIPA)'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  DESC 'Active Directory account flags; bit 0x2 is ACCOUNTDISABLE'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
objectclass ( 2.25.207691178358119360434036152187375201633 NAME 'decomTestAccount'
  DESC 'test only: carries the account-lock attributes of other directory servers'
  SUP top AUXILIARY MAY ( nsAccountLock $ userAccountControl ) )
"""


class SlapdUnavailable(RuntimeError):
    """slapd is not installed or did not start; the fixture turns this into pytest.fail."""


@dataclass(frozen=True)
class Person:
    """One directory entry under ou=people."""

    uid: str
    cn: str
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. {"nsAccountLock": "TRUE"}


@dataclass
class LdapServer:
    url: str
    base_dn: str
    bind_dn: str
    password: str
    folder: Path
    process: subprocess.Popen[bytes]
    ldaps_url: str | None = None  # with tls=True: ldaps:// on a second port (ldap:// then offers StartTLS)
    ca_file: Path | None = None   # with tls=True: the throw-away CA that signed the server certificate

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def ssha(password: str) -> str:
    """The {SSHA} form slapd accepts for rootpw: base64(SHA-1(password + salt) + salt)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _ldif_line(name: str, value: str) -> str:
    """`name: value`, or `name:: base64` when LDIF needs it (non-ASCII, leading space/colon/<)."""
    plain = value.isascii() and value == value.strip() and not value.startswith((":", "<")) and "\n" not in value
    if plain:
        return f"{name}: {value}"
    return f"{name}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}"


def build_ldif(people: Iterable[Person], password: str) -> str:
    blocks = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: decom-test\no: decom test",
        f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services",
        f"dn: {READER_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n"
        f"cn: decom-reader\nuserPassword: {ssha(password)}",
        f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people",
        f"dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups",
    ]
    for person in people:
        lines = [_ldif_line("dn", f"uid={person.uid},{PEOPLE_DN}"), "objectClass: inetOrgPerson",
                 "objectClass: shadowAccount", "objectClass: decomTestAccount", _ldif_line("uid", person.uid),
                 _ldif_line("cn", person.cn), _ldif_line("sn", person.cn.split()[0] if person.cn.split() else "x")]
        lines += [_ldif_line(name, value) for name, value in person.extra.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(folder: Path, paged_total: int | str, tls: tuple[Path, Path, Path] | None) -> Path:
    (folder / "db").mkdir()
    (folder / "decom-test.schema").write_text(TEST_SCHEMA, encoding="utf-8")
    includes = [SCHEMA_DIR / f"{name}.schema" for name in ("core", "cosine", "nis", "inetorgperson")]
    includes.append(folder / "decom-test.schema")
    conf = folder / "slapd.conf"
    conf.write_text("\n".join([
        *(f"include {path}" for path in includes),
        f"modulepath {MODULE_DIR}",
        "moduleload back_mdb",
        f"pidfile {folder / 'slapd.pid'}",
        f"argsfile {folder / 'slapd.args'}",
        f"sizelimit size.soft={SIZE_LIMIT} size.hard={SIZE_LIMIT} size.prtotal={paged_total}",
        *([f"TLSCACertificateFile {tls[0]}", f"TLSCertificateFile {tls[1]}", f"TLSCertificateKeyFile {tls[2]}"]
          if tls else []),
        "database mdb",
        "maxsize 33554432",
        f'suffix "{BASE_DN}"',
        f"directory {folder / 'db'}",
        "access to attrs=userPassword by anonymous auth by * none",
        "access to * by * read",
        "",
    ]), encoding="utf-8")
    return conf


def _wait_until_answering(process: subprocess.Popen[bytes], port: int, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log.read_text(encoding="utf-8", errors="replace").strip()[-2000:]
            raise SlapdUnavailable(f"slapd exited with {process.returncode}: {said}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SlapdUnavailable(f"slapd did not answer on 127.0.0.1:{port} within {seconds:.0f}s")


def start_slapd(folder: Path, people: Sequence[Person], *, paged_total: int | str = "unlimited",
                tls: bool = False, attempts: int = 3) -> LdapServer:
    """A running slapd holding `people`; the caller stops it (LdapServer.stop).

    `paged_total` caps the entries a paged search may return (slapd's size.prtotal): a small number
    makes the server cut a listing short. `tls` adds a certificate from a throw-away CA: StartTLS on
    the ldap:// port and an ldaps:// port.
    """
    if not (os.access(SLAPD, os.X_OK) and os.access(SLAPADD, os.X_OK)):
        raise SlapdUnavailable(f"{SLAPD} is not installed (run `make services`: it installs the Debian "
                               "package slapd)")
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    tls_files = make_tls_files(folder) if tls else None
    conf = _write_config(folder, paged_total, tls_files)
    ldif = folder / "data.ldif"
    ldif.write_text(build_ldif(people, password), encoding="utf-8")
    loaded = subprocess.run([SLAPADD, "-q", "-f", str(conf), "-l", str(ldif)], capture_output=True, text=True,
                            timeout=60)
    if loaded.returncode != 0:
        raise SlapdUnavailable(f"slapadd failed: {loaded.stderr.strip()}")
    last_error = ""
    for _ in range(attempts):  # the free port may be taken between choosing it and slapd binding it
        port = _free_port()
        url = f"ldap://127.0.0.1:{port}"
        ldaps_url = f"ldaps://127.0.0.1:{_free_port()}" if tls else None
        listen = " ".join(f"{u}/" for u in (url, ldaps_url) if u)
        log = folder / "slapd.log"
        with log.open("wb") as sink:  # a file, not a pipe: a full pipe would stall slapd
            process = subprocess.Popen([SLAPD, "-h", listen, "-f", str(conf), "-d", "0"],
                                       stdout=subprocess.DEVNULL, stderr=sink)
        try:
            _wait_until_answering(process, port, log, 15)
        except SlapdUnavailable as exc:
            last_error = str(exc)
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            continue
        return LdapServer(url, BASE_DN, READER_DN, password, folder, process, ldaps_url,
                          tls_files[0] if tls_files else None)
    raise SlapdUnavailable(last_error)


# -- the demo's directory ------------------------------------------------------------------------------

LDAP_PASSWORD_ENV = "DECOM_TEST_LDAP_PASSWORD"  # the fixture sets it; plans reference ${DECOM_TEST_LDAP_PASSWORD}
PAST_SHADOW_EXPIRE = 19000  # 2022-01-08
DIRECTORY_ONLY = 60  # people in the directory but not in the EDM: with them the directory exceeds SIZE_LIMIT


@dataclass(frozen=True)
class DemoDirectory:
    """A running directory for a demo EDM and what the audit must find in it."""

    server: LdapServer
    missing: tuple[str, ...]   # active EDM logins without an entry: departed_account
    disabled: dict[str, str]   # active EDM login -> the attribute that locks its entry: directory_disabled

    def stage_text(self, *, url: str | None = None, password_env: str = LDAP_PASSWORD_ENV, extra: str = "") -> str:
        """The [stages.ldap] table for the access audit stage just before it in the plan text."""
        return f"""
[stages.ldap]
url = "{url or self.server.url}"
base_dn = "{self.server.base_dn}"
bind_dn = "{self.server.bind_dn}"
bind_password = "${{{password_env}}}"
login_attribute = "uid"
user_filter = "(objectClass=inetOrgPerson)"
timeout_seconds = 5
{extra}"""


def demo_accounts(db_url: str) -> list[tuple[str, str, bool]]:
    """(login, full name, active) of every account of a demo EDM, read from its own tables."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [(str(login), str(fio), not blocked) for login, fio, blocked
                    in conn.execute(sa.text("SELECT login, fio, blocked FROM staff ORDER BY id"))]
    finally:
        engine.dispose()


def demo_people(accounts: Sequence[tuple[str, str, bool]], facts: Any) -> tuple[list[Person], tuple[str, ...],
                                                                                   dict[str, str]]:
    """Directory entries for the demo's accounts (login, full name, active in the EDM), chosen from its facts.

    Two active logins get no entry (one regular, one dormant), three active regular ones are locked,
    each by another attribute; admins, shared and never-logged-in accounts carry attributes that do
    NOT lock (a future shadowExpire, userAccountControl 512, nsAccountLock FALSE, an upper-case uid),
    and the EDM's own disabled accounts are locked or missing, which is no finding.
    """
    active = {login for login, _, is_active in accounts if is_active}
    special = {*facts.admin_logins, *facts.shared_logins, *facts.dormant_logins, *facts.never_logged_in_logins}
    regular = sorted(active - special)
    if len(regular) < 4 or not facts.dormant_logins or len(facts.disabled_logins) < 2:
        raise ValueError("the demo is too small for the directory fixture (needs 4 regular active accounts)")
    missing = (regular[0], facts.dormant_logins[0], facts.disabled_logins[1])
    future = (date.today() - date(1970, 1, 1)).days + 3650
    attributes: dict[str, dict[str, str]] = {
        regular[1]: {"nsAccountLock": "TRUE"},
        regular[2]: {"shadowExpire": str(PAST_SHADOW_EXPIRE)},
        regular[3]: {"userAccountControl": "514"},
        facts.admin_logins[0]: {"shadowExpire": str(future), "userAccountControl": "512"},
        facts.admin_logins[-1]: {"nsAccountLock": "FALSE"},
        facts.disabled_logins[0]: {"nsAccountLock": "TRUE"},
    }
    people = []
    for login, full_name, _ in accounts:
        if login in missing:
            continue
        uid = login.upper() if login == facts.never_logged_in_logins[0] else login
        people.append(Person(uid, full_name, attributes.get(login, {})))
    people += [Person(f"dir-only-{i:03d}", f"Directory Only {i}") for i in range(DIRECTORY_ONLY)]
    disabled = {login: next(iter(attributes[login])) for login in regular[1:4]}
    return people, tuple(sorted(missing[:2])), disabled


def start_demo_directory(folder: Path, db_url: str, facts: Any, *, tls: bool = False) -> DemoDirectory:
    """A running slapd holding the directory of the demo EDM at `db_url` (see demo_people)."""
    people, missing, disabled = demo_people(demo_accounts(db_url), facts)
    return DemoDirectory(start_slapd(folder, people, tls=tls), missing, disabled)
