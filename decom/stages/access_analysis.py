"""The access audit's analysis, free of I/O: effective rights per user and document, and the findings.

Rights reach a document through a rule on the document itself (`direct` for a user, `group`, `role`),
through a rule on its folder or any folder above it (`inherited`; a document rule the source marks
as inherited counts the same), through a system-wide rule, or through a rule for `everyone`. Rules
for groups and roles reach the members listed in `memberships`.

Effective permissions have one row per (user, document, access, via), with the rules behind it.
Rules for everyone are never multiplied by the users: such a document is listed once (and becomes
one `everyone_readable` finding), and counted into each active user's reachable documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from decom.findings import Finding
from decom.model import TS

ACCESS_LEVELS = ("read", "write", "admin")
VIA_KINDS = ("direct", "group", "role", "inherited", "everyone")
_VIA_OF_PRINCIPAL = {"user": "direct", "group": "group", "role": "role"}
BATCH_ROWS = 20_000

USERS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("login", pa.string()), ("full_name", pa.string()), ("department", pa.string()),
    ("status", pa.string()), ("is_active", pa.bool_()), ("is_admin", pa.bool_()),
    ("last_login", TS), ("last_login_known", pa.bool_()), ("last_login_text", pa.string()),
    ("groups", pa.string()), ("documents_reachable", pa.int64()),
    *((f"documents_{via}", pa.int64()) for via in VIA_KINDS),
    ("rights_via", pa.string()),
])
"""One row per account. last_login_text: the time, "never", or "unknown" where the system keeps none."""

PERMISSIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("login", pa.string()), ("document_id", pa.string()), ("access", pa.string()),
    ("via", pa.string()), ("rules", pa.string()),
])
"""Effective permissions. via: direct | group | role | inherited. rules: "<object> <principal>; ..." behind it."""

EVERYONE_SCHEMA = pa.schema([
    ("document_id", pa.string()), ("title", pa.string()), ("access", pa.string()), ("object_type", pa.string()),
    ("object_id", pa.string()), ("inherited", pa.bool_()), ("rules", pa.int64()),
])
"""Documents open to everyone: the strongest rule (object it is on, inherited or not) and how many apply."""


@dataclass(frozen=True)
class Rule:
    object_type: str
    object_id: str | None
    principal_type: str
    principal_id: str | None
    access: str
    inherited: bool

    @property
    def label(self) -> str:
        where = self.object_type if self.object_id is None else f"{self.object_type}:{self.object_id}"
        return f"{where} {self.principal_type}:{self.principal_id}"


def _rank(access: str) -> int:
    return ACCESS_LEVELS.index(access) if access in ACCESS_LEVELS else -1


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class AccessModel:
    """Rules, folders and memberships in memory; documents are streamed through `effective`."""

    def __init__(self, users: Sequence[Mapping[str, Any]], groups: Iterable[Mapping[str, Any]],
                 memberships: Iterable[Mapping[str, Any]], permissions: Iterable[Mapping[str, Any]],
                 folders: Iterable[Mapping[str, Any]]) -> None:
        self.users = {str(u["user_id"]): u for u in users}
        self.active = {uid for uid, u in self.users.items() if u.get("is_active") is not False}
        names = {str(g["group_id"]): str(g.get("name") or g["group_id"]) for g in groups}
        self.members: dict[str, list[str]] = {}
        groups_of: dict[str, set[str]] = {}
        for m in memberships:
            group, user = str(m["group_id"]), str(m["user_id"])
            if user in self.users:
                self.members.setdefault(group, []).append(user)
                groups_of.setdefault(user, set()).add(names.get(group, group))
        self.groups_of = {user: "; ".join(sorted(found)) for user, found in groups_of.items()}
        self.parent = {str(f["folder_id"]): _text(f.get("parent_id")) for f in folders}
        self.rules_on: dict[tuple[str, str | None], list[Rule]] = {}
        self.rules = 0
        for p in permissions:
            rule = Rule(str(p["object_type"]), _text(p.get("object_id")), str(p["principal_type"]),
                        _text(p.get("principal_id")), str(p["access"]), bool(p.get("inherited")))
            key = (rule.object_type, None if rule.object_type == "system" else rule.object_id)
            self.rules_on.setdefault(key, []).append(rule)
            self.rules += 1
        self._folder_chain: dict[str | None, tuple[Rule, ...]] = {None: ()}
        # Counters filled while `effective` runs.
        self.documents = 0
        self.reach: dict[str, int] = {}
        self.reach_via: dict[tuple[str, str], int] = {}
        self.explicit_on_everyone: dict[str, int] = {}
        self.everyone: list[dict[str, Any]] = []
        self.permission_rows = 0

    def _folder_rules(self, folder: str | None) -> tuple[Rule, ...]:
        """Rules on a folder and every folder above it (a cycle in parent_id stops the walk)."""
        if folder in self._folder_chain:
            return self._folder_chain[folder]
        chain: list[str] = []
        seen: set[str] = set()
        current: str | None = folder
        while current is not None and current not in self._folder_chain and current not in seen:
            seen.add(current)
            chain.append(current)
            current = self.parent.get(current)
        inherited = self._folder_chain.get(current, ()) if current not in seen else ()
        for name in reversed(chain):
            inherited = tuple(self.rules_on.get(("folder", name), ())) + inherited
            self._folder_chain[name] = inherited
        return self._folder_chain[folder]

    def _users_of(self, rule: Rule) -> list[str]:
        if rule.principal_type == "user":
            return [rule.principal_id] if rule.principal_id in self.users else []
        if rule.principal_type in ("group", "role"):
            return self.members.get(rule.principal_id or "", [])
        return []

    def _document(self, document: Mapping[str, Any]) -> list[dict[str, Any]]:
        doc_id = str(document["document_id"])
        applying: list[tuple[Rule, bool]] = [(r, True) for r in self._folder_rules(_text(document.get("folder_id")))]
        applying += [(r, r.inherited) for r in self.rules_on.get(("document", doc_id), ())]
        applying += [(r, False) for r in self.rules_on.get(("system", None), ())]
        grants: dict[tuple[str, str, str], set[str]] = {}
        open_rules: list[tuple[Rule, bool]] = []
        for rule, inherited in applying:
            if rule.principal_type == "everyone":
                open_rules.append((rule, inherited))
                continue
            via = "inherited" if inherited else _VIA_OF_PRINCIPAL.get(rule.principal_type)
            if via is None:
                continue
            for user in self._users_of(rule):
                grants.setdefault((user, rule.access, via), set()).add(rule.label)
        reached = {user for user, _, _ in grants}
        for user in reached:
            self.reach[user] = self.reach.get(user, 0) + 1
        for user, via in {(user, via) for user, _, via in grants}:
            self.reach_via[(user, via)] = self.reach_via.get((user, via), 0) + 1
        if open_rules:
            rule, inherited = max(open_rules, key=lambda item: (_rank(item[0].access), not item[1]))
            self.everyone.append({"document_id": doc_id, "title": _text(document.get("title")),
                                  "access": rule.access, "object_type": rule.object_type,
                                  "object_id": rule.object_id, "inherited": inherited, "rules": len(open_rules)})
            for user in reached:
                self.explicit_on_everyone[user] = self.explicit_on_everyone.get(user, 0) + 1
        return [{"user_id": user, "login": str(self.users[user]["login"]), "document_id": doc_id,
                 "access": access, "via": via, "rules": "; ".join(sorted(labels))}
                for (user, access, via), labels in sorted(grants.items(),
                                                          key=lambda item: (item[0][0], _rank(item[0][1]), item[0][2]))]

    def effective(self, documents: Iterable[Mapping[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """Effective permission rows (PERMISSIONS_SCHEMA) in batches, documents in the order given."""
        batch: list[dict[str, Any]] = []
        for document in documents:
            self.documents += 1
            batch.extend(self._document(document))
            if len(batch) >= BATCH_ROWS:
                self.permission_rows += len(batch)
                yield batch
                batch = []
        if batch:
            self.permission_rows += len(batch)
            yield batch

    def user_rows(self) -> list[dict[str, Any]]:
        """One row per account (USERS_SCHEMA); call after `effective` has been consumed."""
        open_docs = len(self.everyone)
        rows = []
        for user_id, user in self.users.items():
            active = user_id in self.active
            everyone = open_docs if active else 0
            counts = {via: self.reach_via.get((user_id, via), 0) for via in VIA_KINDS if via != "everyone"}
            counts["everyone"] = everyone
            reachable = self.reach.get(user_id, 0) + everyone - (self.explicit_on_everyone.get(user_id, 0)
                                                                 if active else 0)
            last_login, known = user.get("last_login"), user.get("last_login_known")
            text = last_login.isoformat() if last_login is not None else "never" if known else "unknown"
            rows.append({
                "user_id": user_id, "login": str(user["login"]), "full_name": user.get("full_name"),
                "department": user.get("department"), "status": "active" if active else "disabled",
                "is_active": active, "is_admin": bool(user.get("is_admin")), "last_login": last_login,
                "last_login_known": known, "last_login_text": text, "groups": self.groups_of.get(user_id, ""),
                "documents_reachable": reachable, **{f"documents_{via}": n for via, n in counts.items()},
                "rights_via": ", ".join(via for via in VIA_KINDS if counts[via]),
            })
        return rows


# -- findings --------------------------------------------------------------------------------------

def _account(user: Mapping[str, Any]) -> dict[str, Any]:
    return {"user_id": str(user["user_id"]), "login": str(user["login"]), "full_name": user.get("full_name")}


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None if value is None else str(value)


def account_findings(users: Iterable[Mapping[str, Any]], *, as_of: datetime, dormant_days: int,
                     patterns: Sequence[str], directory: Mapping[str, Mapping[str, Any]] | None = None,
                     directory_url: str | None = None) -> list[Finding]:
    """Findings about active accounts. `directory`: login -> {status, reason, dn} when LDAP was checked."""
    compiled = [(pattern, re.compile(pattern, re.IGNORECASE)) for pattern in patterns]
    findings: list[Finding] = []
    for user in users:
        if user.get("is_active") is False:
            continue  # a disabled account is in the users export; it is not a finding by itself
        login, subject, account = str(user["login"]), f"user:{user['login']}", _account(user)
        if user.get("is_admin"):
            findings.append(Finding("medium", "admin_account", subject,
                                    f"{login} has system-wide administration rights",
                                    {**account, "groups": user.get("groups") or ""}))
        last_login = user.get("last_login")
        if user.get("last_login_known") is True and last_login is not None:
            idle = as_of - last_login
            if last_login < as_of - timedelta(days=dormant_days):
                findings.append(Finding(
                    "medium", "dormant_account", subject,
                    f"{login} is active but last logged in {idle.days} days before {as_of.date()}",
                    {**account, "last_login": _iso(last_login), "as_of": _iso(as_of), "idle_days": idle.days,
                     "dormant_days": dormant_days}))
        elif user.get("last_login_known") is True:
            findings.append(Finding("low", "never_logged_in", subject, f"{login} is active but has never logged in",
                                    {**account, "last_login": None, "created_at": _iso(user.get("created_at"))}))
        for pattern, regex in compiled:
            field = "login" if regex.search(login) else "full_name" if regex.search(user.get("full_name") or "") else ""
            if field:
                findings.append(Finding("high", "shared_account", subject,
                                        f"{login} looks like a shared account ({field} matches {pattern!r})",
                                        {**account, "pattern": pattern, "matched": field}))
                break
        entry = (directory or {}).get(login)
        if directory is not None and entry is not None:
            where = {"directory": directory_url, "dn": entry.get("dn")}
            if entry.get("status") == "missing":
                findings.append(Finding("high", "departed_account", subject,
                                        f"{login} is active in the EDM but has no entry in the directory",
                                        {**account, **where}))
            elif entry.get("status") == "disabled":
                findings.append(Finding("high", "directory_disabled", subject,
                                        f"{login} is active in the EDM but disabled in the directory "
                                        f"({entry.get('reason')})", {**account, **where,
                                                                      "reason": entry.get("reason")}))
    return findings


def everyone_findings(rows: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """One `everyone_readable` finding per document open to everyone (EVERYONE_SCHEMA rows)."""
    findings = []
    for row in rows:
        where = row["object_type"] if row["object_id"] is None else f"{row['object_type']} {row['object_id']}"
        how = "inherited from" if row["inherited"] and row["object_type"] != "document" else "set on"
        findings.append(Finding(
            "high", "everyone_readable", f"document:{row['document_id']}",
            f"document {row['document_id']} is open to everyone ({row['access']}), rule {how} {where}",
            {"document_id": str(row["document_id"]), "title": row.get("title"), "principal_type": "everyone",
             "access": row["access"], "object_type": row["object_type"], "object_id": row["object_id"],
             "inherited": bool(row["inherited"]), "rules": int(row.get("rules") or 1)}))
    return findings


KIND_RISKS = {
    "admin_account": ("active admin account", "active admin accounts"),
    "dormant_account": ("dormant account", "dormant accounts"),
    "never_logged_in": ("active account that never logged in", "active accounts that never logged in"),
    "shared_account": ("shared account", "shared accounts"),
    "departed_account": ("active account with no directory entry (departed)",
                         "active accounts with no directory entry (departed)"),
    "directory_disabled": ("account active in the EDM but disabled in the directory",
                           "accounts active in the EDM but disabled in the directory"),
    "everyone_readable": ("document open to everyone", "documents open to everyone"),
}


def count_by_kind(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(KIND_RISKS, 0)
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    return counts


def risk_lines(findings: Iterable[Finding]) -> list[str]:
    """One line per kind found, e.g. "3 shared accounts"."""
    lines = []
    for kind, count in count_by_kind(findings).items():
        if count:
            one, many = KIND_RISKS.get(kind, (kind, kind))
            lines.append(f"{count} {one if count == 1 else many}")
    return lines
