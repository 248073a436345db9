"""Read-only directory cross-check: is each EDM login present, disabled or missing in LDAP?

One bind (simple, or anonymous without a bind DN), optionally StartTLS, then one paged subtree
search for every entry that has the login attribute, so directories larger than the server's
size limit are read completely. A result cut short by the server is an error, never "missing":
a truncated listing would report people as departed who are not.

An entry counts as disabled when any of these says so (the attribute is named in the result):
`nsAccountLock` true (389 Directory Server, FreeIPA), `shadowExpire` reached (days since
1970-01-01, RFC 2307 shadowAccount), Active Directory `userAccountControl` with bit 0x2
(ACCOUNTDISABLE). The bind password is used for the bind only: it is never logged, and it is
scrubbed from any error message.
"""

from __future__ import annotations

import re
import ssl
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from decom.errors import UserError

with warnings.catch_warnings():
    # ldap3 2.9.1 imports pyasn1's old tagMap/typeMap names, which pyasn1 >= 0.6.1 flags as deprecated
    # (cannatag/ldap3#1159, fixed upstream but not released): harmless, and not the operator's concern.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core import exceptions as ldap_errors

PRESENT, DISABLED, MISSING = "present", "disabled", "missing"
LOCK_ATTRIBUTES = ("nsAccountLock", "shadowExpire", "userAccountControl")
ACCOUNTDISABLE = 0x2
PAGE_SIZE = 500
EPOCH = date(1970, 1, 1)
_SIZE_LIMIT_EXCEEDED = 4
_ERRNO_TEXT = re.compile(r"\[Errno [-\d]+\] ([^'\"\])]+)")
_VERIFY_REASON = re.compile(r"certificate verify failed: ([^(']+)")
_SSL_REASON = re.compile(r"\[SSL: \w+\] ([^(']+)")


@dataclass(frozen=True)
class DirectoryConfig:
    """Where and how to read the directory. `bind_password` is a secret: keep it out of every output."""

    url: str
    base_dn: str
    bind_dn: str | None = None
    bind_password: str | None = None
    login_attribute: str = "uid"
    user_filter: str = "(objectClass=*)"
    start_tls: bool = False
    ca_file: Path | None = None
    timeout_seconds: int = 10

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return (f"DirectoryConfig(url={self.url!r}, base_dn={self.base_dn!r}, bind_dn={self.bind_dn!r}, "
                f"login_attribute={self.login_attribute!r})")


@dataclass(frozen=True)
class DirectoryStatus:
    """What the directory says about one login."""

    login: str
    status: str              # present | disabled | missing
    dn: str | None = None    # the entry (the first, if several carry the login)
    reason: str | None = None  # for disabled: the attribute(s) that said so, e.g. "nsAccountLock=TRUE"


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def disabled_reason(attributes: Mapping[str, Sequence[Any]], today: date) -> str | None:
    """Why an entry is locked, from its attributes (names in any case, values str/bytes/int); None if not."""
    values = {name.lower(): [_text(v).strip() for v in vals] for name, vals in attributes.items()}
    reasons = []
    for value in values.get("nsaccountlock", []):
        if value.lower() == "true":
            reasons.append(f"nsAccountLock={value}")
            break
    for value in values.get("shadowexpire", []):
        try:
            days = int(value)
        except ValueError:
            continue
        if days > 0 and (today - EPOCH).days >= days:  # 0 and -1 mean "never" in practice
            reasons.append(f"shadowExpire={days} (expired {EPOCH + timedelta(days=days)})")
            break
    for value in values.get("useraccountcontrol", []):
        try:
            flags = int(value)
        except ValueError:
            continue
        if flags & ACCOUNTDISABLE:
            reasons.append(f"userAccountControl={flags} (ACCOUNTDISABLE)")
            break
    return "; ".join(reasons) or None


def _scrub(message: str, secret: str | None) -> str:
    line = " ".join(message.split())
    return line.replace(secret, "***") if secret else line


def _socket_reason(exc: Exception, raw: str) -> str:
    found = _ERRNO_TEXT.search(raw)
    if found:
        return found.group(1).strip().lower()
    if "timed out" in raw.lower() or isinstance(exc, ldap_errors.LDAPResponseTimeoutError):
        return "timed out"
    return type(exc).__name__


def _server(config: DirectoryConfig) -> Any:
    tls = None
    if config.url.lower().startswith("ldaps://") or config.start_tls:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED,
                        ca_certs_file=str(config.ca_file) if config.ca_file is not None else None)
    return ldap3.Server(config.url, get_info=ldap3.NONE, tls=tls, connect_timeout=config.timeout_seconds)


def _search_filter(config: DirectoryConfig) -> str:
    user_filter = config.user_filter.strip() or "(objectClass=*)"
    if not user_filter.startswith("("):
        user_filter = f"({user_filter})"
    return f"(&{user_filter}({config.login_attribute}=*))"


class _Directory:
    """One bound connection; every ldap3 failure becomes a one-line UserError naming the URL."""

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config
        self.conn: Any = None

    def fail(self, exc: Exception) -> UserError:
        config, where = self.config, f"the LDAP directory {self.config.url}"
        raw = _scrub(str(exc), config.bind_password)  # only the library's text could ever echo the password
        if isinstance(exc, ldap_errors.LDAPInvalidCredentialsResult | ldap_errors.LDAPBindError):
            who = f"as {config.bind_dn}" if config.bind_dn else "anonymously"
            text = f"{where} refused the bind {who}: invalid credentials (check ldap.bind_dn and ldap.bind_password)"
        elif "doesn't match any name" in raw:
            text = f"the TLS certificate of {where} is not issued for that host name (use the name it is issued for)"
        elif "CERTIFICATE_VERIFY_FAILED" in raw:
            found = _VERIFY_REASON.search(raw)
            reason = f" ({found.group(1).strip()})" if found else ""
            text = (f"the TLS certificate of {where} is not trusted{reason}; set ldap.ca_file to the CA "
                    "certificate that signed it")
        elif isinstance(exc, ldap_errors.LDAPStartTLSError | ssl.SSLError) or "[SSL" in raw:
            found = _SSL_REASON.search(raw)
            text = f"TLS with {where} failed: {found.group(1).strip() if found else type(exc).__name__}"
        elif "invalid server address" in raw:
            text = f"cannot reach {where}: the host name does not resolve"
        elif isinstance(exc, ldap_errors.LDAPSocketOpenError | ldap_errors.LDAPSocketReceiveError
                        | ldap_errors.LDAPSocketSendError | ldap_errors.LDAPSessionTerminatedByServerError
                        | ldap_errors.LDAPResponseTimeoutError | ldap_errors.LDAPSocketCloseError | OSError):
            text = f"cannot reach {where}: {_socket_reason(exc, raw)}"
        elif isinstance(exc, ldap_errors.LDAPNoSuchObjectResult):
            text = f"{where} has no entry {config.base_dn!r} (check ldap.base_dn)"
        elif isinstance(exc, ldap_errors.LDAPInvalidFilterError):
            text = f"ldap.user_filter is not a valid LDAP filter: {config.user_filter!r}"
        elif isinstance(exc, ldap_errors.LDAPInsufficientAccessRightsResult):
            text = f"{where} does not let {config.bind_dn or 'an anonymous client'} search {config.base_dn!r}"
        else:
            text = f"{where} failed: {type(exc).__name__}: {raw[:200]}"
        return UserError(" ".join(text.split()))

    def __enter__(self) -> _Directory:
        config = self.config
        if config.bind_dn and not config.bind_password:  # an "unauthenticated bind" would pass unchecked
            raise UserError(f"ldap.bind_password is empty: the LDAP directory {config.url} needs the password of "
                            f"{config.bind_dn} (or remove bind_dn to bind anonymously)")
        try:
            self.conn = ldap3.Connection(
                _server(config), user=config.bind_dn, password=config.bind_password if config.bind_dn else None,
                auto_bind=ldap3.AUTO_BIND_NONE, read_only=True, raise_exceptions=True, auto_referrals=False,
                receive_timeout=config.timeout_seconds, check_names=False, return_empty_attributes=False)
            with warnings.catch_warnings():  # ldap3 checks the host name with ssl.match_hostname (deprecated)
                warnings.filterwarnings("ignore", r"ssl\.match_hostname", DeprecationWarning)
                self.conn.open()
                if config.start_tls:
                    self.conn.start_tls()
            self.conn.bind()
        except (ldap_errors.LDAPException, OSError) as exc:
            self.close()
            raise self.fail(exc) from None
        return self

    def entries(self, page_size: int) -> Iterable[tuple[str, dict[str, list[bytes]]]]:
        config = self.config
        attributes = [config.login_attribute, *LOCK_ATTRIBUTES]
        count = 0
        try:
            pages = self.conn.extend.standard.paged_search(
                config.base_dn, _search_filter(config), search_scope=ldap3.SUBTREE, attributes=attributes,
                paged_size=page_size, generator=True)
            for item in pages:
                if item.get("type") == "searchResEntry":
                    count += 1
                    yield str(item.get("dn") or ""), dict(item.get("raw_attributes") or {})
            result = self.conn.result or {}
        except (ldap_errors.LDAPException, OSError) as exc:
            raise self.fail(exc) from None
        if result.get("result") == _SIZE_LIMIT_EXCEEDED:
            raise UserError(f"the LDAP directory {config.url} stopped the listing after {count} entries (size "
                            "limit); raise the limit for the bind account or narrow ldap.user_filter / base_dn")

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.unbind()
            except (ldap_errors.LDAPException, OSError):
                pass
            self.conn = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_logins(config: DirectoryConfig, logins: Iterable[str], *, today: date | None = None,
                 page_size: int = PAGE_SIZE) -> list[DirectoryStatus]:
    """The directory's word on each login, in the given order. Logins compare case-insensitively.

    Raises UserError (one line, naming the URL, never the password) when the directory cannot be
    reached, refuses the bind, or cuts the listing short.
    """
    today = today or datetime.now(UTC).date()
    found: dict[str, list[tuple[str, str | None]]] = {}  # login (lower case) -> [(dn, disabled reason)]
    login_key = config.login_attribute.lower()
    with _Directory(config) as directory:
        for dn, raw in directory.entries(page_size):
            lowered = {name.lower(): values for name, values in raw.items()}
            reason = disabled_reason(raw, today)
            for value in lowered.get(login_key, []):
                found.setdefault(_text(value).strip().lower(), []).append((dn, reason))
    statuses = []
    for login in logins:
        entries = found.get(login.strip().lower())
        if not entries:
            statuses.append(DirectoryStatus(login, MISSING))
            continue
        enabled = [dn for dn, reason in entries if reason is None]
        if enabled:
            statuses.append(DirectoryStatus(login, PRESENT, enabled[0]))
        else:
            statuses.append(DirectoryStatus(login, DISABLED, entries[0][0], entries[0][1]))
    return statuses
