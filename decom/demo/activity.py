"""What happened in the demo EDM over the years: signatures, cases and tasks, audit events, counterparties,
and the defects a decommissioning must notice (missing, empty, orphaned, tampered files).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from decom.demo import texts
from decom.demo.records import DemoData, Row, between, version_path

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _certificate(data: DemoData, rng: random.Random, owner: Row | None, subject: str) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    certs = data.rows["sign_cert"]
    certs.append({"id": len(certs) + 1, "owner_id": owner["id"] if owner else None, "subject": subject,
                  "serial": rng.randbytes(8).hex().upper(), "algo": "Ed25519", "pubkey_hex": public.hex(),
                  "valid_from": data.start, "valid_to": data.freeze + timedelta(days=365)})
    return key


def make_signatures(data: DemoData, rng: random.Random) -> None:
    """Detached Ed25519 signatures over the SHA-256 of a version's bytes, some with the ministry's seal."""
    staff = {u["id"]: u for u in data.rows["staff"]}
    signer_group = data.group_ids["Подписанты"]
    signers = [staff[m["staff_id"]] for m in data.rows["staff_group_member"] if m["group_id"] == signer_group]
    keys: dict[int, tuple[int, Ed25519PrivateKey]] = {}
    for signer in signers:
        subject = f"CN={signer['fio']}, O={texts.MINISTRY}, C=RU"
        keys[signer["id"]] = (len(data.rows["sign_cert"]) + 1, _certificate(data, rng, signer, subject))
    seal_subject = f"CN=Электронная печать, OU=电子印章, O={texts.MINISTRY}, C=RU"
    seal_cert_id, seal_key = len(data.rows["sign_cert"]) + 1, _certificate(data, rng, None, seal_subject)
    registrar_ids = {m["staff_id"] for m in data.rows["staff_group_member"]
                     if m["group_id"] == data.group_ids["Регистраторы"]}
    registrars = [u for u in data.rows["staff"]
                  if u["id"] in registrar_ids and u["last_login"] is not None] or signers

    versions: dict[int, list[Row]] = {}
    for version in data.rows["doc_file"]:
        versions.setdefault(version["doc_id"], []).append(version)
    eligible = [d for d in data.rows["doc_card"] if not d["deleted"] and d["state"] != "DRAFT"]
    chosen = sorted(rng.sample(eligible, min(len(eligible), max(4, len(data.rows["doc_card"]) * 12 // 100))),
                    key=lambda d: d["id"])
    for index, doc in enumerate(chosen):
        doc_versions = versions[doc["id"]]
        target = doc_versions[-1] if rng.random() < 0.8 else rng.choice(doc_versions)
        kinds = ["detached"] + (["seal"] if rng.random() < 0.2 else [])
        if rng.random() < 0.1:
            kinds = ["seal"]
        if index < 2:  # every demo, however small, has a sealed document and a singly signed one
            kinds = [["detached", "seal"], ["detached"]][index]
        moment = target["created"]
        for kind in kinds:
            latest = max(moment + HOUR, min(moment + 5 * DAY, data.freeze - HOUR))
            moment = between(rng, moment + HOUR, latest)
            pool = signers if kind == "detached" else registrars
            awake = [u for u in pool if u["created"] <= moment <= (u["last_login"] or moment)]
            signer = rng.choice(awake or pool)
            cert_id, key = (seal_cert_id, seal_key) if kind == "seal" else keys[signer["id"]]
            digest = hashlib.sha256(data.files[target["storage_path"]]).digest()
            sig_id = len(data.rows["esign"]) + 1
            sig_path = f"signatures/{moment.year:04d}/{moment.month:02d}/{sig_id:07d}.sig"
            subject = seal_subject if kind == "seal" else f"CN={signer['fio']}, O={texts.MINISTRY}, C=RU"
            data.files[sig_path] = key.sign(digest)
            data.rows["esign"].append({
                "id": sig_id, "doc_id": doc["id"], "file_id": target["id"], "signer_id": signer["id"],
                "cert_id": cert_id, "signed_at": moment, "kind": kind, "algo": "Ed25519",
                "digest_sha256": digest.hex(), "sig_path": sig_path,
                "cert_subject": subject,
            })


def place_defects(data: DemoData, rng: random.Random) -> None:
    """Exactly one each: tampered signed file, wrong MD5, empty file, missing file, orphan file."""
    sig_count: dict[int, int] = {}
    for sig in data.rows["esign"]:
        sig_count[sig["file_id"]] = sig_count.get(sig["file_id"], 0) + 1
    by_id = {v["id"]: v for v in data.rows["doc_file"]}

    # a signed file edited in place after signing: its stored bytes and MD5 change, the signature does not
    once_signed = [s for s in data.rows["esign"] if sig_count[s["file_id"]] == 1]
    tampered_sig = rng.choice(once_signed)
    version = by_id[tampered_sig["file_id"]]
    body = bytearray(data.files[version["storage_path"]])
    body[len(body) // 2] ^= 0x20
    _replace_bytes(data, version, bytes(body))
    data.mismatched_signature_ids.append(tampered_sig["id"])

    untouchable = set(sig_count) | set(data.special_path_versions)
    candidates = [v for v in data.rows["doc_file"] if v["id"] not in untouchable]
    with_md5 = [v for v in candidates if v["md5"] is not None]
    wrong = rng.choice(with_md5)
    wrong["md5"] = hashlib.md5(data.files[wrong["storage_path"]] + b"\n").hexdigest()
    data.checksum_mismatch_refs.append(wrong["storage_path"])

    rest = [v for v in candidates if v is not wrong]
    empty, missing = rng.sample(rest, 2)
    _replace_bytes(data, empty, b"")
    data.zero_byte_refs.append(empty["storage_path"])
    del data.files[missing["storage_path"]]
    data.missing_refs.append(missing["storage_path"])

    # a version row deleted long ago whose file stayed in the store
    last = rng.choice([v for v in candidates if v["is_current"]])
    moment = min(last["created"] + 2 * DAY, data.freeze - HOUR)
    extension = last["storage_path"].rsplit(".", 1)[1]
    orphan = version_path(moment, last["doc_id"], last["ver_no"] + 1, extension)
    data.files[orphan] = texts.file_body(rng, extension, "черновик, не зарегистрирован")
    data.orphan_files.append(orphan)


def _replace_bytes(data: DemoData, version: Row, body: bytes) -> None:
    data.files[version["storage_path"]] = body
    version["fsize"] = len(body)
    if version["md5"] is not None:
        version["md5"] = hashlib.md5(body).hexdigest()


_CASE_KIND = {"ORD": "approval", "IN": "execution", "OUT": "signing", "CTR": "approval", "MEMO": "review",
              "HR": "approval", "INTL": "signing"}
_CASE_TITLE = {"approval": "Согласование", "execution": "Исполнение", "signing": "Подписание",
               "review": "Рассмотрение", "checkout": "Редактирование"}
_OPEN_STATE = {"approval": "На согласовании", "execution": "На исполнении", "signing": "На подписании",
               "review": "На рассмотрении", "checkout": "Взят на редактирование"}
_CLOSED_STATES = ("Исполнено", "Согласовано", "Отозвано")
_TASK_NAMES = {"approval": ("Согласовать проект", "Учесть замечания", "Утвердить"),
               "execution": ("Рассмотреть", "Исполнить поручение", "Подготовить ответ"),
               "signing": ("Проверить оформление", "Подписать"),
               "review": ("Ознакомиться", "Дать заключение"),
               "checkout": ("Вернуть документ",)}


def make_cases(data: DemoData, rng: random.Random) -> None:
    """Workflow cases on documents with their tasks; some open, past due, or held by blocked accounts."""
    documents = data.rows["doc_card"]
    people = [u for u in data.rows["staff"] if data.roles[u["id"]] != "shared"]
    cases = data.rows["proc_case"]
    for doc in sorted(rng.sample(documents, max(10, len(documents) // 4)), key=lambda d: d["id"]):
        kind = "checkout" if rng.random() < 0.05 else _CASE_KIND[doc["doc_kind"]]
        created = between(rng, doc["created"], max(doc["created"], min(doc["created"] + 10 * DAY,
                                                                        data.freeze - HOUR)))
        awake = [u for u in people if u["created"] <= created <= (u["last_login"] or created)] or people
        on_group = rng.random() < 0.2
        cases.append({"id": len(cases) + 1, "kind": kind, "title": f"{_CASE_TITLE[kind]}: {doc['title']}",
                      "doc_id": doc["id"], "state": "", "is_closed": 0,
                      "assignee_id": None if on_group else rng.choice(awake)["id"],
                      "group_id": data.group_ids["Регистраторы"] if on_group else None,
                      "due": created + timedelta(days=rng.randint(3, 30)), "created": created,
                      "closed": None})
        open_chance = 0.7 if (data.freeze - created).days < 120 else 0.06
        cases[-1]["is_closed"] = int(rng.random() >= open_chance)
    # guarantee the situations a hand-over must deal with, even in a tiny demo
    by_age = sorted(cases, key=lambda c: c["created"])
    for case in reversed(by_age):
        if sum(1 for c in cases if not c["is_closed"]) >= 5:
            break
        case["is_closed"] = 0
    open_cases = [c for c in by_age if not c["is_closed"]]
    for case in open_cases[:2]:
        case["due"] = min(case["created"] + 5 * DAY, data.freeze - 2 * DAY)
    open_cases[-1]["due"] = data.freeze + 14 * DAY
    disabled = [u["id"] for u in data.rows["staff"] if data.roles[u["id"]] == "disabled"]
    for i, case in enumerate(open_cases[1: 3 + len(open_cases) // 20]):
        case["assignee_id"], case["group_id"] = disabled[i % len(disabled)], None
    for case in cases:
        if case["is_closed"]:
            case["closed"] = between(rng, case["created"] + HOUR,
                                     max(case["created"] + HOUR, min(case["created"] + 40 * DAY,
                                                                     data.freeze - HOUR)))
            case["state"] = rng.choice(_CLOSED_STATES)
        else:
            case["state"] = _OPEN_STATE[case["kind"]]
        _make_tasks(data, rng, case, people)


def _make_tasks(data: DemoData, rng: random.Random, case: Row, people: list[Row]) -> None:
    names = _TASK_NAMES[case["kind"]]
    count = rng.randint(1, len(names))
    moment = case["created"]
    tasks = data.rows["proc_task"]
    for i, name in enumerate(names[:count]):
        last = i == count - 1
        if case["is_closed"]:
            state = "cancelled" if last and case["state"] == "Отозвано" else "done"
        else:
            state = "open" if last else "done"
        holder = (case["assignee_id"], case["group_id"]) if last else (rng.choice(people)["id"], None)
        tasks.append({"id": len(tasks) + 1, "case_id": case["id"], "name": name, "state": state,
                      "assignee_id": holder[0], "group_id": holder[1], "due": case["due"], "created": moment})
        latest = case["closed"] or max(case["created"], data.freeze - HOUR)
        moment = min(moment + timedelta(seconds=rng.randint(600, 3 * 86400)), latest)


_EVERYDAY = (("DOC_OPEN", 45), ("DOC_GET", 20), ("AUTH_OK", 15), ("AUTH_OUT", 10), ("DOC_SAVE", 8),
             ("AUTH_FAIL", 2))
_OUTSIDE_IP = "203.0.113.17"


def make_events(data: DemoData, rng: random.Random) -> None:
    """The audit trail, ids in time order; a handful of events happen after the freeze point."""
    freeze = data.freeze
    staff = data.rows["staff"]
    ip = {u["id"]: f"10.{20 + u['dept_id']}.{rng.randint(1, 250)}.{u['id'] % 250 + 1}" for u in staff}
    admins = [u for u in staff if u["is_admin"]]
    shared = next(u for u in staff if data.roles[u["id"]] == "shared")
    blocked = next(u for u in staff if data.roles[u["id"]] == "disabled")
    docs = data.rows["doc_card"]
    late_docs = rng.sample([d["id"] for d in docs], 2)
    after = [  # someone still uses the shared mailbox after the freeze, and a blocked account tries its luck
        (freeze + timedelta(minutes=35), shared, "AUTH_OK", "S", None, _OUTSIDE_IP, "вход выполнен"),
        (freeze + timedelta(minutes=36), shared, "DOC_GET", "D", late_docs[0], _OUTSIDE_IP, ""),
        (freeze + timedelta(minutes=38), shared, "DOC_GET", "D", late_docs[1], _OUTSIDE_IP, ""),
        (freeze + timedelta(hours=2), blocked, "AUTH_FAIL", "S", None, _OUTSIDE_IP,
         "учётная запись заблокирована"),
        (freeze + timedelta(hours=3), admins[0], "AUTH_OK", "S", None, ip[admins[0]["id"]], "вход выполнен"),
        (freeze + timedelta(hours=3, minutes=4), admins[0], "CFG_SET", "S", None, ip[admins[0]["id"]],
         "read_only=1"),
    ]
    shared["last_login"], admins[0]["last_login"] = after[0][0], after[4][0]

    events: list[tuple[datetime, int | None, str, str | None, int | None, str, str]] = []

    def add(moment: datetime, user: Row | None, action: str, kind: str | None, obj: int | None,
            details: str = "", address: str | None = None) -> None:
        uid = user["id"] if user else None
        events.append((moment, uid, action, kind, obj, address or (ip[uid] if uid else "127.0.0.1"), details))

    for user in staff:
        if user["created"] > data.start:  # the first administrators came with the installation
            add(user["created"], admins[0], "USR_ADD", "U", user["id"], f"login={user['login']}")
        if user["last_login"] is not None and user["last_login"] <= freeze:
            add(user["last_login"], user, "AUTH_OK", "S", None, "вход выполнен")
        if data.roles[user["id"]] == "disabled":
            moment = between(rng, user["last_login"] + DAY, min(user["last_login"] + 30 * DAY, freeze - HOUR))
            add(moment, admins[-1], "USR_LOCK", "U", user["id"], "blocked=1")
    staff_by_id = {u["id"]: u for u in staff}
    for version in data.rows["doc_file"]:
        add(version["created"], staff_by_id.get(version["created_by"]), "DOC_SAVE", "D", version["doc_id"],
            f"ver={version['ver_no']}")
    for sig in data.rows["esign"]:
        add(sig["signed_at"], staff_by_id.get(sig["signer_id"]), "DOC_SIGN", "D", sig["doc_id"], sig["kind"])
    rules = data.rows["access_rule"]
    for rule in rng.sample(rules, min(len(rules), 3 + len(docs) // 100)):
        admin = rng.choice(admins)
        moment = between(rng, data.start + DAY, freeze - 2 * DAY)
        add(moment, admin, "ACL_SET", rule["obj_kind"], rule["obj_id"],
            f"{rule['subj_kind']}:{rule['subj_id'] or '*'} mode={rule['mode']}")
    for setting in ("session_timeout=30", "password_min_length=8", "ldap_sync=on"):
        add(between(rng, data.start, freeze - 30 * DAY), admins[-1], "CFG_SET", "S", None, setting)

    created = [d["created"] for d in docs]
    loggers = [u for u in staff if u["last_login"] is not None]
    actions, weights = zip(*_EVERYDAY, strict=True)
    for _ in range(max(200, len(docs) * 4)):
        user = rng.choice(loggers)
        moment = between(rng, user["created"], max(user["created"], min(user["last_login"], freeze - HOUR)))
        action = rng.choices(actions, weights)[0]
        existing = bisect.bisect_right(created, moment)
        if action.startswith("DOC") and existing:
            add(moment, user, action, "D", rng.randrange(existing) + 1)
        else:
            action = action if action.startswith("AUTH") else "AUTH_OK"
            add(moment, user, action, "S", None, "Неверный пароль" if action == "AUTH_FAIL" else "")
    for moment, user, action, kind, obj, address, details in after:
        add(moment, user, action, kind, obj, details, address)
    events.sort(key=lambda e: (e[0], e[2], e[1] or 0, e[4] or 0))
    data.rows["audit_log"] = [
        {"id": i, "ts": ts, "staff_id": uid, "action": action, "obj_kind": kind, "obj_id": obj, "ip": address,
         "details": details or None}
        for i, (ts, uid, action, kind, obj, address, details) in enumerate(events, 1)
    ]


def make_counterparties(data: DemoData, rng: random.Random) -> None:
    rows = data.rows["contragent"]
    names: set[str] = set()
    while len(rows) < max(6, len(data.rows["doc_card"]) // 40):
        name = texts.counterparty_name(rng, len(rows))
        if name in names:
            continue
        names.add(name)
        tax_id = texts.inn(rng)
        rows.append({"id": len(rows) + 1, "name": name, "inn": tax_id,
                     "edo_address": f"2AE{tax_id}-{rng.randbytes(8).hex()}",
                     "active": int(rng.random() < 0.85)})


def fill_counters(data: DemoData) -> None:
    """The application's id counters, as the old system would have left them."""
    counters: list[dict[str, Any]] = []
    for table, rows in data.rows.items():
        if rows and "id" in rows[0]:
            counters.append({"name": table, "next_val": max(r["id"] for r in rows) + 1})
    data.rows["sys_counter"] = counters
