"""Rows of the demo EDM kept in memory: organisation, folders, documents with their files, and rights.

`activity.py` adds signatures, cases, audit events and the deliberate defects on top of this.
All times are naive datetimes meaning UTC, whole seconds (MariaDB DATETIME keeps no fractions).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from decom.demo import texts
from decom.demo.schema import TABLE_NAMES

Row = dict[str, Any]

SHARED_ACCOUNTS = (("office_shared", "Общий ящик канцелярии", "KANC"),
                   ("scanner", "Сканер-станция приёмной", "MIN"))


def between(rng: random.Random, earliest: datetime, latest: datetime) -> datetime:
    """A random whole-second moment in [earliest, latest]."""
    span = max(int((latest - earliest).total_seconds()), 0)
    return earliest.replace(microsecond=0) + timedelta(seconds=rng.randint(0, span))


@dataclass
class DemoData:
    """Everything the generator decided, before it is written to a database and a folder."""

    freeze: datetime
    rows: dict[str, list[Row]] = field(default_factory=lambda: {name: [] for name in TABLE_NAMES})
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> bytes to write
    # staff id -> admin | shared | disabled | dormant | never | regular
    roles: dict[int, str] = field(default_factory=dict)
    group_ids: dict[str, int] = field(default_factory=dict)  # group name -> id
    dept_group: dict[str, int] = field(default_factory=dict)  # dept code -> its group's id
    year_folder: dict[tuple[str, int], int] = field(default_factory=dict)  # (doc kind, year) -> folder id
    root_folder: dict[str, int] = field(default_factory=dict)  # doc kind -> root folder id
    special_path_versions: list[int] = field(default_factory=list)  # versions stored under non-Latin names
    missing_refs: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    zero_byte_refs: list[str] = field(default_factory=list)
    checksum_mismatch_refs: list[str] = field(default_factory=list)
    mismatched_signature_ids: list[int] = field(default_factory=list)
    everyone_readable: list[int] = field(default_factory=list)  # document ids with a rule for everyone

    @property
    def start(self) -> datetime:
        """When the system went live: about ten years before the freeze point."""
        return datetime(self.freeze.year - 9, 1, 9, 9, 0)

    @property
    def md5_since(self) -> datetime:
        """Files stored before this upgrade carry no checksum."""
        return datetime(self.freeze.year - 7, 6, 1)

    def users_active_at(self, moment: datetime) -> list[Row]:
        """Accounts that existed and had logged in by `moment` and were still in use then."""
        return [u for u in self.rows["staff"]
                if u["created"] <= moment and u["last_login"] is not None and moment <= u["last_login"]]


def _user(data: DemoData, login: str, fio: str, dept_id: int, role: str, last_login: datetime | None,
          created: datetime, is_admin: bool = False) -> None:
    staff = data.rows["staff"]
    taken = {u["login"] for u in staff}
    base, n = login, 1
    while login in taken:
        n += 1
        login = f"{base}{n}"
    user_id = len(staff) + 1
    staff.append({"id": user_id, "login": login, "fio": fio, "email": f"{login}@mincifra-demo.example",
                  "dept_id": dept_id, "is_admin": int(is_admin), "blocked": int(role == "disabled"),
                  "last_login": last_login, "created": created})
    data.roles[user_id] = role


_NAME_CYCLE = ("ru", "uk", "ru", "zh", "ru", "ru", "zh", "uk", "en", "ru", "ru", "uk")


class _People:
    """Hands out distinct people, cycling through Russian, Ukrainian, Chinese and English names."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pools: dict[str, list[tuple[str, str]]] = {
            "uk": [(f"{s} {f} {p}", f"{texts.translit(s)}.{texts.translit(f[0])}")
                   for s, f, p in texts.UK_PEOPLE],
            "zh": list(texts.ZH_PEOPLE), "en": list(texts.EN_PEOPLE)}
        for pool in self.pools.values():
            rng.shuffle(pool)
        self.seen: set[str] = set()

    def next(self, index: int) -> tuple[str, str]:
        pool = self.pools.get(_NAME_CYCLE[index % len(_NAME_CYCLE)])
        if pool:
            return pool.pop()
        while True:
            fio, login = texts.russian_person(self.rng)
            if fio not in self.seen:
                self.seen.add(fio)
                return fio, login


def make_org(data: DemoData, rng: random.Random, n_users: int) -> None:
    """Departments, accounts of every kind the access audit must find, groups and memberships."""
    freeze, start = data.freeze, data.start
    for i, (code, name) in enumerate(texts.DEPARTMENTS, 1):
        data.rows["dept"].append({"id": i, "code": code, "name": name})
    dept_id = {code: i for i, (code, _) in enumerate(texts.DEPARTMENTS, 1)}
    personal = n_users - len(SHARED_ACCOUNTS)
    n_disabled, n_dormant, n_never = 2 + personal // 15, 2 + personal // 15, 2
    plan = (["admin"] * (2 + personal // 30) + ["disabled"] * n_disabled + ["dormant"] * n_dormant
            + ["never"] * n_never)
    plan += ["regular"] * (personal - len(plan))
    namer = _People(rng)
    for index, role in enumerate(plan):
        fio, login = namer.next(index)
        dept = "IT" if role == "admin" else rng.choice([code for code, _ in texts.DEPARTMENTS])
        if role == "admin":
            created, last_login = start, between(rng, freeze - timedelta(days=5), freeze - timedelta(hours=1))
        elif role == "disabled":
            last_login = between(rng, freeze - timedelta(days=300), freeze - timedelta(days=30))
            created = between(rng, start, last_login - timedelta(days=200))
        elif role == "dormant":
            last_login = between(rng, freeze - timedelta(days=2000), freeze - timedelta(days=400))
            created = between(rng, start, last_login - timedelta(days=100))
        elif role == "never":
            created = between(rng, freeze - timedelta(days=700), freeze - timedelta(days=30))
            last_login = None
        else:
            last_login = between(rng, freeze - timedelta(days=60), freeze - timedelta(hours=2))
            created = between(rng, start, freeze - timedelta(days=400))
        _user(data, login, fio, dept_id[dept], role, last_login, created, is_admin=role == "admin")
    for login, fio, dept in SHARED_ACCOUNTS:
        last_login = between(rng, freeze - timedelta(days=3), freeze - timedelta(hours=1))
        _user(data, login, fio, dept_id[dept], "shared", last_login, start + timedelta(days=3))

    groups = data.rows["staff_group"]
    for code, name in texts.DEPARTMENTS:
        groups.append({"id": len(groups) + 1, "name": name, "kind": "dept"})
        data.dept_group[code] = len(groups)
    for name, kind in texts.ROLE_GROUPS:
        groups.append({"id": len(groups) + 1, "name": name, "kind": kind})
    data.group_ids = {g["name"]: g["id"] for g in groups}

    members: dict[tuple[int, int], None] = {}
    code_of = {i: code for code, i in dept_id.items()}
    staff = data.rows["staff"]
    for user in staff:
        members[(data.dept_group[code_of[user["dept_id"]]], user["id"])] = None
        if user["is_admin"]:
            members[(data.group_ids["Администраторы СЭД"], user["id"])] = None
        if code_of[user["dept_id"]] == "KANC":
            members[(data.group_ids["Регистраторы"], user["id"])] = None
        if any("\u4e00" <= ch <= "\u9fff" for ch in user["fio"]) or code_of[user["dept_id"]] == "INT":
            members[(data.group_ids["国际合作工作组"], user["id"])] = None
    people = [u for u in staff if data.roles[u["id"]] != "shared"]
    signers = [u for u in people if data.roles[u["id"]] in {"regular", "admin", "disabled"}]
    for user in rng.sample(signers, min(4, len(signers))):
        members[(data.group_ids["Подписанты"], user["id"])] = None
    for user in rng.sample(people, min(5, len(people))):
        members[(data.group_ids["Рабочая группа по цифровизации"], user["id"])] = None
    data.rows["staff_group_member"] = [{"group_id": g, "staff_id": s} for g, s in sorted(members)]


def make_folders(data: DemoData, rng: random.Random) -> None:
    """One root cabinet per document kind, a sub-folder per year inside each."""
    folders = data.rows["folder"]
    owners = [u["id"] for u in data.rows["staff"] if u["is_admin"]]
    for code, _name, root_name, _weight in texts.DOC_KINDS:
        root_id = len(folders) + 1
        folders.append({"id": root_id, "parent_id": None, "name": root_name, "full_path": f"/{root_name}",
                        "owner_id": owners[0], "created": data.start})
        data.root_folder[code] = root_id
        for year in range(data.start.year, data.freeze.year + 1):
            folders.append({"id": len(folders) + 1, "parent_id": root_id, "name": str(year),
                            "full_path": f"/{root_name}/{year}", "owner_id": rng.choice(owners),
                            "created": max(datetime(year, 1, 1, 8, 0), data.start)})
            data.year_folder[(code, year)] = len(folders)


_STATES_OLD = ("ARCH", "ARCH", "ARCH", "REG", "CANC")
_STATES_RECENT = ("REG", "WORK", "WORK", "DRAFT")
_SPECIAL_NAMES = ("Служебная_записка", "合同扫描件", "Протокол_совещания", "会议纪要")


def version_path(created: datetime, doc_id: int, ver_no: int, extension: str, name: str = "") -> str:
    suffix = f"_{name}" if name else ""
    return f"store/{created.year:04d}/{created.month:02d}/{doc_id:07d}-v{ver_no}{suffix}.{extension}"


def make_documents(data: DemoData, rng: random.Random, n_docs: int) -> None:
    """Document cards in year folders, each with one to three file versions written to the store."""
    span = (data.freeze - timedelta(days=1) - data.start).total_seconds()
    # more documents in recent years, as in any growing system
    moments = sorted(data.start + timedelta(seconds=int(span * rng.random() ** 0.7)) for _ in range(n_docs))
    kinds = [k[0] for k in texts.DOC_KINDS]
    weights = [k[3] for k in texts.DOC_KINDS]
    kind_name = {k[0]: k[1] for k in texts.DOC_KINDS}
    formats, format_weights = list(texts.FILE_FORMATS), [f[2] for f in texts.FILE_FORMATS]
    counters: dict[tuple[str, int], int] = {}
    n_special = 2 + n_docs // 400
    special_docs = set(rng.sample(range(1, n_docs + 1), n_special))
    for doc_id, created in enumerate(moments, 1):
        kind = rng.choices(kinds, weights)[0]
        active = data.users_active_at(created) or data.rows["staff"][:1]
        author = rng.choice(active)
        age_days = (data.freeze - created).days
        state = rng.choice(_STATES_RECENT if age_days < 60 else _STATES_OLD)
        counters[(kind, created.year)] = number = counters.get((kind, created.year), 0) + 1
        reg_no = None if state == "DRAFT" else _reg_no(kind, number, created)
        title = texts.document_title(rng, kind, number)
        extension, mime, _ = rng.choices(formats, format_weights)[0]
        n_versions = rng.choices((1, 2, 3), (55, 33, 12))[0]
        moment = created + timedelta(minutes=rng.randint(1, 90))
        for ver_no in range(1, n_versions + 1):
            if ver_no > 1:
                moment = min(moment + timedelta(seconds=rng.randint(3600, 60 * 86400)),
                             data.freeze - timedelta(hours=1))
            version_id = len(data.rows["doc_file"]) + 1
            name = ""
            if doc_id in special_docs and ver_no == 1:
                name = _SPECIAL_NAMES[len(data.special_path_versions) % len(_SPECIAL_NAMES)]
                data.special_path_versions.append(version_id)
            path = version_path(moment, doc_id, ver_no, extension, name)
            header = f"{kind_name[kind]} № {reg_no or 'проект'} от {created:%d.%m.%Y}\n{title}"
            body = texts.file_body(rng, extension, header)
            data.files[path] = body
            editors = data.users_active_at(moment)
            data.rows["doc_file"].append({
                "id": version_id, "doc_id": doc_id, "ver_no": ver_no,
                "orig_name": f"{kind_name[kind]} {(reg_no or 'проект').replace('/', '-')}.{extension}",
                "mime": mime, "fsize": len(body),
                "md5": hashlib.md5(body).hexdigest() if moment >= data.md5_since else None,
                "storage_path": path, "created": moment,
                "created_by": author["id"] if ver_no == 1 or not editors else rng.choice(editors)["id"],
                "is_current": int(ver_no == n_versions),
            })
        data.rows["doc_card"].append({
            "id": doc_id, "reg_no": reg_no, "title": title, "doc_kind": kind,
            "folder_id": data.year_folder[(kind, created.year)], "author_id": author["id"],
            "created": created, "modified": moment, "state": state,
            "deleted": int(rng.random() < 0.02),
        })
    data.rows["dict_doc_kind"] = [{"code": code, "name": name} for code, name, _, _ in texts.DOC_KINDS]


def _reg_no(kind: str, number: int, created: datetime) -> str:
    yy = created.year % 100
    return {"ORD": f"{number}-п", "IN": f"вх-{number}/{yy:02d}", "OUT": f"исх-{number}/{yy:02d}",
            "CTR": f"Д-{created.year}/{number}", "MEMO": f"СЗ-{number}", "HR": f"{number}-к",
            "INTL": f"МС-{number}/{yy:02d}"}[kind]


_FOLDER_GRANTS = {  # doc kind -> (group, mode) granted on its root cabinet and inherited below
    "ORD": (("KANC", "RW"), ("MIN", "R")), "IN": (("Регистраторы", "RW"), ("KANC", "RW")),
    "OUT": (("Регистраторы", "RW"), ("JUR", "R")), "CTR": (("JUR", "RW"), ("FIN", "R")),
    "MEMO": (("KANC", "RW"),), "HR": (("HR", "RW"),), "INTL": (("INT", "RW"), ("国际合作工作组", "R")),
}


def make_rights(data: DemoData, rng: random.Random) -> None:
    """Folder rules (copied down as inherited), document rules, and a few documents open to everyone."""
    rules: dict[tuple[str, int, str, int | None], tuple[str, int]] = {}
    children: dict[int, list[int]] = {}
    for f in data.rows["folder"]:
        if f["parent_id"] is not None:
            children.setdefault(f["parent_id"], []).append(f["id"])

    def folder_rule(root: int, subj_kind: str, subj_id: int, mode: str) -> None:
        rules[("F", root, subj_kind, subj_id)] = (mode, 0)
        for child in children.get(root, []):
            rules[("F", child, subj_kind, subj_id)] = (mode, 1)

    admins_group = data.group_ids["Администраторы СЭД"]
    for kind, root in data.root_folder.items():
        folder_rule(root, "G", admins_group, "ADM")
        for subject, mode in _FOLDER_GRANTS[kind]:
            folder_rule(root, "G", data.dept_group.get(subject) or data.group_ids[subject], mode)
    # personal grants on cabinets, one of them to an account that has since been blocked
    disabled = [u["id"] for u in data.rows["staff"] if data.roles[u["id"]] == "disabled"]
    regular = [u["id"] for u in data.rows["staff"] if data.roles[u["id"]] == "regular"]
    folder_rule(data.root_folder["CTR"], "U", disabled[0], "RW")
    folder_rule(data.root_folder["HR"], "U", rng.choice(regular), "R")

    documents = data.rows["doc_card"]
    users = [u["id"] for u in data.rows["staff"] if data.roles[u["id"]] != "shared"]
    groups = [g["id"] for g in data.rows["staff_group"]]
    for doc in documents:
        if rng.random() < 0.25:
            rules[("D", doc["id"], "U", doc["author_id"])] = ("RW", 0)
        if rng.random() < 0.15:
            rules[("D", doc["id"], "U", rng.choice(users))] = (rng.choice(("R", "R", "RW")), 0)
        if rng.random() < 0.10:
            rules[("D", doc["id"], "G", rng.choice(groups))] = ("R", 0)
    live = [d["id"] for d in documents if not d["deleted"]]
    everyone = sorted(rng.sample(live, min(len(live), 3 + len(documents) // 400)))
    for i, doc_id in enumerate(everyone):
        rules[("D", doc_id, "ALL", None)] = ("RW" if i == 0 else "R", 0)
    data.rows["access_rule"] = [
        {"id": i, "obj_kind": ok, "obj_id": oid, "subj_kind": sk, "subj_id": sid, "mode": mode,
         "inherited": inherited}
        for i, ((ok, oid, sk, sid), (mode, inherited)) in enumerate(rules.items(), 1)
    ]
    data.everyone_readable = everyone

