"""Activity after the freeze point: the source's audit events and the hosts' logs, read into findings.

Three readers turn records into `Activity` (when, who, from where, what, and the evidence line):
the adapter's canonical audit events, nginx/apache "combined" access logs, and syslog auth logs
(traditional `Nov 21 10:00:01` or RFC 3339 timestamps; a traditional one has no year or zone, so it
is read as UTC in the year that puts it nearest after the freeze). `findings` keeps what happened
after the freeze and reports, each with its first evidence line:

- logins (an administrator's or root's: high), downloads, permission changes and admin actions;
- bulk downloads: more than N downloads by one client (user or address) within one minute;
- activity from addresses outside the plan's allowed networks.

Failed logins after the freeze are reported as low: attempts, not access.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from decom.findings import Finding, sort_findings

_COMBINED = re.compile(r'(?P<client>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+)'
                       r'[^"]*" (?P<status>\d{3}) ')
_SYSLOG = re.compile(r"(?:(?P<iso>\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:?\d\d))|(?P<old>[A-Z][a-z]{2} [ \d]\d "
                     r"\d\d:\d\d:\d\d)) \S+ (?P<program>[\w./-]+)(?:\[\d+\])?: (?P<message>.*)")
_ACCEPTED = re.compile(r"Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<client>\S+)")
_FAILED = re.compile(r"Failed (?P<method>\S+) for (?:invalid user )?(?P<user>\S+) from (?P<client>\S+)")
_SUDO = re.compile(r"\s*(?P<user>\S+) : .*COMMAND=(?P<command>.*)")
_PERMISSION_TOOLS = re.compile(r"\b(useradd|usermod|userdel|groupadd|groupmod|gpasswd|passwd|chpasswd|chmod|chown|"
                               r"setfacl|visudo)\b")
_ADMIN_EVENTS = frozenset({"config_change", "user_created", "user_disabled", "user_enabled", "user_deleted",
                           "role_change", "admin_action"})
_KINDS = {  # activity kind -> (finding kind, severity, verb)
    "login": ("login_after_freeze", "medium", "logged in"),
    "login_failed": ("failed_login_after_freeze", "low", "failed to log in"),
    "download": ("download_after_freeze", "medium", "downloaded"),
    "permission_change": ("permission_change_after_freeze", "high", "changed permissions"),
    "admin_action": ("admin_action_after_freeze", "high", "took admin actions"),
    "edit": ("edit_after_freeze", "medium", "changed documents"),
}
SIGNIFICANT = frozenset({"critical", "high", "medium"})


@dataclass(frozen=True)
class Activity:
    at: datetime
    actor: str                     # user or login, "-" when unknown
    client: str                    # source address, "" when unknown
    kind: str                      # login, login_failed, download, permission_change, admin_action, edit, other
    admin: bool = False            # done by an administrator (or root)
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Patterns:
    """How requests of a web access log are told apart (regular expressions on the path)."""

    login: str
    download: str
    admin: str
    permission: str


def from_events(rows: Iterable[Mapping[str, Any]], users: Mapping[str, Mapping[str, Any]]) -> Iterator[Activity]:
    """The adapter's canonical audit events (decom.model EVENTS) as activity; `users` by user_id."""
    for row in rows:
        user = users.get(str(row.get("user_id")), {})
        action = str(row.get("action") or "")
        kind = "admin_action" if action in _ADMIN_EVENTS else action if action in _KINDS else "other"
        at = row["occurred_at"]
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        evidence = {"event_id": row.get("event_id"), "occurred_at": at.isoformat(), "user": user.get("login"),
                    "action": action, "object": f"{row.get('object_type')}:{row.get('object_id')}",
                    "source_address": row.get("source_address"), "details": row.get("details")}
        yield Activity(at, str(user.get("login") or row.get("user_id") or "-"), str(row.get("source_address") or ""),
                       kind, bool(user.get("is_admin")), evidence)


def from_access_log(text: str, patterns: Patterns, where: Mapping[str, Any]) -> Iterator[Activity]:
    rules = {name: re.compile(getattr(patterns, name)) for name in ("login", "download", "admin", "permission")}
    for number, line in enumerate(text.splitlines(), 1):
        match = _COMBINED.match(line)
        if not match:
            continue
        try:
            at = datetime.strptime(match["time"], "%d/%b/%Y:%H:%M:%S %z").astimezone(UTC)
        except ValueError:
            continue
        method, path, status = match["method"], match["path"], int(match["status"])
        ok, changes = status < 400, method in ("POST", "PUT", "PATCH", "DELETE")
        if rules["login"].search(path) and method == "POST":
            kind = "login" if ok else "login_failed"
        elif rules["permission"].search(path) and changes and ok:
            kind = "permission_change"
        elif rules["admin"].search(path) and ok:
            kind = "admin_action"
        elif rules["download"].search(path) and method == "GET" and status in (200, 206):
            kind = "download"
        else:
            kind = "other"
        user = match["user"]
        yield Activity(at, user if user != "-" else match["client"], match["client"], kind,
                       kind == "admin_action", {**where, "line_no": number, "line": line[:500]})


def _syslog_time(match: re.Match[str], near: datetime) -> datetime | None:
    try:
        if match["iso"]:
            return datetime.fromisoformat(match["iso"].replace("Z", "+00:00")).astimezone(UTC)
        stamp = datetime.strptime(f"{near.year} {match['old']}", "%Y %b %d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    if stamp < near - timedelta(days=180):  # a traditional stamp has no year: the one nearest after `near`
        stamp = stamp.replace(year=stamp.year + 1)
    return stamp


def from_auth_log(text: str, near: datetime, where: Mapping[str, Any]) -> Iterator[Activity]:
    for number, line in enumerate(text.splitlines(), 1):
        match = _SYSLOG.match(line)
        at = _syslog_time(match, near) if match else None
        if match is None or at is None:
            continue
        program, message = match["program"], match["message"]
        evidence = {**where, "line_no": number, "line": line[:500]}
        if (found := _ACCEPTED.search(message)) is not None:
            yield Activity(at, found["user"], found["client"], "login", found["user"] == "root", evidence)
        elif (found := _FAILED.search(message)) is not None:
            yield Activity(at, found["user"], found["client"], "login_failed", False, evidence)
        elif program == "sudo" and (found := _SUDO.match(message)) is not None:
            kind = "permission_change" if _PERMISSION_TOOLS.search(found["command"]) else "admin_action"
            yield Activity(at, found["user"], "", kind, True, evidence)
        elif program in ("useradd", "usermod", "userdel", "groupadd", "gpasswd", "passwd", "chpasswd"):
            yield Activity(at, "-", "", "permission_change", True, evidence)
        elif program == "su" and "session opened for user root" in message:
            yield Activity(at, "-", "", "admin_action", True, evidence)


def _allowed(address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return True  # not an address (a host name, "-"): nothing to judge
    return any(ip in network for network in networks)


def findings(activities: Iterable[Activity], *, freeze: datetime, source: str, allowed_networks: Sequence[str],
             bulk_per_minute: int) -> list[Finding]:
    """What happened after `freeze`, grouped by kind and actor, each finding with its first evidence line."""
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    groups: dict[tuple[str, str], list[Activity]] = defaultdict(list)
    outsiders: dict[str, list[Activity]] = defaultdict(list)
    per_minute: Counter[tuple[str, datetime]] = Counter()
    first_of_minute: dict[tuple[str, datetime], Activity] = {}
    for activity in sorted((a for a in activities if a.at > freeze), key=lambda a: a.at):
        kind = "admin_login" if activity.kind == "login" and activity.admin else activity.kind
        if kind != "other":
            groups[(kind, activity.actor)].append(activity)
        if networks and activity.client and not _allowed(activity.client, networks):
            outsiders[activity.client].append(activity)
        if activity.kind == "download":
            slot = (activity.client or activity.actor, activity.at.replace(second=0, microsecond=0))
            per_minute[slot] += 1
            first_of_minute.setdefault(slot, activity)
    found = []
    for (kind, actor), items in groups.items():
        finding_kind, severity, verb = (("admin_login_after_freeze", "high", "logged in (administrator)")
                                        if kind == "admin_login" else _KINDS[kind])
        times = f" {len(items)} time(s)" if kind != "download" else f" {len(items)} file(s)"
        found.append(Finding(severity, finding_kind, f"user:{actor}",
                             f"{actor} {verb}{times} after the freeze ({source}), first at "
                             f"{items[0].at.isoformat()}", {"source": source, "count": len(items),
                                                             "first": dict(items[0].evidence),
                                                             "last": dict(items[-1].evidence)}))
    for address, items in outsiders.items():
        found.append(Finding("high", "unusual_source_address", f"address:{address}",
                             f"{len(items)} request(s) after the freeze from {address}, outside the allowed "
                             f"networks ({source})", {"source": source, "count": len(items),
                                                     "first": dict(items[0].evidence)}))
    worst: dict[str, tuple[int, datetime]] = {}
    for (client, minute), count in per_minute.items():
        if count > bulk_per_minute and count > worst.get(client, (0, minute))[0]:
            worst[client] = (count, minute)
    for who, (most, start) in worst.items():
        found.append(Finding("high", "bulk_download", f"client:{who}",
                             f"{who} downloaded {most} files within the minute from {start.isoformat()} "
                             f"(threshold {bulk_per_minute} per minute; {source})",
                             {"source": source, "count": most, "minute": start.isoformat(),
                              "first": dict(first_of_minute[(who, start)].evidence)}))
    return sort_findings(found)
