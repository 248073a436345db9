"""The access audit's pure parts on hand-made data: effective rights, account rules, directory lock flags."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from decom.remote.ldap import disabled_reason
from decom.stages.access_analysis import AccessModel, account_findings, everyone_findings


def test_which_entries_count_as_disabled() -> None:
    today = date(2026, 11, 23)
    days = (today - date(1970, 1, 1)).days
    assert disabled_reason({"userAccountControl": ["514"]}, today) == "userAccountControl=514 (ACCOUNTDISABLE)"
    assert disabled_reason({"useraccountcontrol": [b"66050"]}, today) == "userAccountControl=66050 (ACCOUNTDISABLE)"
    assert disabled_reason({"userAccountControl": ["512"]}, today) is None
    assert disabled_reason({"userAccountControl": ["66048"]}, today) is None  # DONT_EXPIRE_PASSWORD only
    assert disabled_reason({"nsAccountLock": ["TRUE"]}, today) == "nsAccountLock=TRUE"
    assert disabled_reason({"NSACCOUNTLOCK": [b"true"]}, today) == "nsAccountLock=true"
    assert disabled_reason({"nsAccountLock": ["FALSE"]}, today) is None
    assert disabled_reason({"shadowExpire": [str(days)]}, today) is not None  # expires today
    assert disabled_reason({"shadowExpire": [str(days + 1)]}, today) is None
    assert disabled_reason({"shadowExpire": ["-1"]}, today) is None
    assert disabled_reason({"shadowExpire": ["0"]}, today) is None
    assert disabled_reason({"shadowExpire": ["soon"], "uid": ["x"]}, today) is None
    both = disabled_reason({"nsAccountLock": ["TRUE"], "shadowExpire": ["19000"]}, today)
    assert both == "nsAccountLock=TRUE; shadowExpire=19000 (expired 2022-01-08)"


# -- the analysis on hand-made data -----------------------------------------------------------------------

def _user(user_id: str, login: str, **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "login": login, "full_name": extra.pop("full_name", login.title()),
            "is_active": True, "is_admin": False, "last_login": datetime(2026, 11, 1, tzinfo=UTC),
            "last_login_known": True, **extra}


def test_rights_follow_the_folder_tree_groups_roles_and_everyone_without_exploding() -> None:
    users = [_user("1", "ann"), _user("2", "bob"), _user("3", "cid", is_active=False)]
    groups = [{"group_id": "g", "name": "Clerks"}, {"group_id": "r", "name": "Auditors"}]
    memberships = [{"group_id": "g", "user_id": "1"}, {"group_id": "g", "user_id": "3"},
                   {"group_id": "r", "user_id": "2"}, {"group_id": "g", "user_id": "ghost"}]
    folders = [{"folder_id": "root", "parent_id": None}, {"folder_id": "year", "parent_id": "root"},
               {"folder_id": "loop1", "parent_id": "loop2"}, {"folder_id": "loop2", "parent_id": "loop1"}]
    permissions = [
        {"object_type": "folder", "object_id": "root", "principal_type": "group", "principal_id": "g",
         "access": "write", "inherited": False},
        {"object_type": "folder", "object_id": "year", "principal_type": "group", "principal_id": "g",
         "access": "write", "inherited": True},  # the source's own copy of the root's rule
        {"object_type": "document", "object_id": "d1", "principal_type": "user", "principal_id": "1",
         "access": "admin", "inherited": False},
        {"object_type": "document", "object_id": "d1", "principal_type": "role", "principal_id": "r",
         "access": "read", "inherited": False},
        {"object_type": "folder", "object_id": "root", "principal_type": "everyone", "principal_id": None,
         "access": "read", "inherited": False},
        {"object_type": "document", "object_id": "d3", "principal_type": "group", "principal_id": "g",
         "access": "read", "inherited": True},
    ]
    model = AccessModel(users, groups, memberships, permissions, folders)
    documents = [{"document_id": "d1", "folder_id": "year", "title": "One"},
                 {"document_id": "d2", "folder_id": "loop1", "title": "In a folder cycle"},
                 {"document_id": "d3", "folder_id": None, "title": "Loose"}]
    effective = [row for batch in model.effective(documents) for row in batch]
    table = {(r["login"], r["document_id"], r["access"], r["via"]): r["rules"] for r in effective}
    assert table == {
        ("ann", "d1", "write", "inherited"): "folder:root group:g; folder:year group:g",
        ("cid", "d1", "write", "inherited"): "folder:root group:g; folder:year group:g",
        ("ann", "d1", "admin", "direct"): "document:d1 user:1",
        ("bob", "d1", "read", "role"): "document:d1 role:r",
        ("ann", "d3", "read", "inherited"): "document:d3 group:g",
        ("cid", "d3", "read", "inherited"): "document:d3 group:g",
    }
    assert model.everyone == [{"document_id": "d1", "title": "One", "access": "read", "object_type": "folder",
                               "object_id": "root", "inherited": True, "rules": 1}]
    found = everyone_findings(model.everyone)
    assert [(f.kind, f.subject, f.evidence["object_type"], f.evidence["inherited"]) for f in found] == [
        ("everyone_readable", "document:d1", "folder", True)]
    by_login = {u["login"]: u for u in model.user_rows()}
    assert (by_login["ann"]["documents_reachable"], by_login["ann"]["rights_via"]) == (2, "direct, inherited, everyone")
    assert (by_login["bob"]["documents_reachable"], by_login["bob"]["documents_everyone"]) == (1, 1)
    assert (by_login["cid"]["documents_reachable"], by_login["cid"]["status"]) == (2, "disabled")
    assert by_login["ann"]["groups"] == "Clerks" and by_login["bob"]["groups"] == "Auditors"


def test_account_findings_follow_the_rules() -> None:
    as_of = datetime(2026, 11, 20, 18, tzinfo=UTC)
    users = [
        _user("1", "old", last_login=datetime(2025, 11, 20, 17, 59, tzinfo=UTC)),  # 365 days and a minute
        _user("2", "edge", last_login=datetime(2025, 11, 20, 18, tzinfo=UTC)),  # exactly 365 days: not dormant
        _user("3", "nolog", last_login=None, last_login_known=False),  # the system keeps no logins
        _user("4", "fresh", last_login=None),
        _user("5", "kiosk", full_name="Общий ящик приёмной", is_admin=True),
        _user("6", "gone", is_active=False, last_login=None, is_admin=True),
    ]
    found = account_findings(users, as_of=as_of, dormant_days=365, patterns=["^nobody$", "общий"])
    assert sorted((f.kind, f.subject, f.severity) for f in found) == [
        ("admin_account", "user:kiosk", "medium"), ("dormant_account", "user:old", "medium"),
        ("never_logged_in", "user:fresh", "low"), ("shared_account", "user:kiosk", "high")]
    shared = next(f for f in found if f.kind == "shared_account")
    assert shared.evidence["matched"] == "full_name" and shared.evidence["pattern"] == "общий"
    text = {u["login"]: u["last_login_text"] for u in AccessModel(users, [], [], [], []).user_rows()}
    assert text["nolog"] == "unknown" and text["fresh"] == "never"
