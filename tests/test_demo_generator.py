"""The demo legacy EDM: what build_demo reports (DemoFacts) is what the database and the disk hold,
and the shipped SQL mapping reads it into canonical columns on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from decom.demo.generator import DemoFacts, DemoSpec, build_demo, demo_facts_to_dict, generate
from decom.demo.schema import TABLE_NAMES
from decom.errors import UserError
from decom.model import ENTITIES, ENTITY_NAMES

MAPPING_PATH = Path(__file__).resolve().parent.parent / "adapters" / "demo_mapping.toml"
SPEC = DemoSpec(documents=60)
PG_ADMIN_URL = os.environ.get("DECOM_TEST_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB_ADMIN_URL = os.environ.get("DECOM_TEST_MARIADB_ADMIN_URL",
                                   "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4")


@dataclass
class Demo:
    url: str
    root: Path
    facts: DemoFacts
    engine: sa.Engine

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    base = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{base / 'legacy.db'}"
    facts = build_demo(url, base / "files", SPEC)
    engine = sa.create_engine(url)
    yield Demo(url, base / "files", facts, engine)
    engine.dispose()


@pytest.fixture(scope="module")
def mapping() -> dict[str, Any]:
    with MAPPING_PATH.open("rb") as handle:
        return tomllib.load(handle)


def files_on_disk(root: Path) -> dict[str, int]:
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            found[full.relative_to(root).as_posix()] = full.stat().st_size
    return found


def as_datetime(value: Any) -> datetime | None:
    """A DATETIME as drivers return it for a text() query (SQLite gives ISO text)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def table_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar_one()
                for name in TABLE_NAMES}


def assert_counts_match_facts(counts: dict[str, int], facts: DemoFacts) -> None:
    assert counts["doc_card"] == facts.documents
    assert counts["doc_file"] == facts.versions
    assert counts["staff"] == facts.users
    assert counts["staff_group"] == facts.groups
    assert counts["folder"] == facts.folders
    assert counts["access_rule"] == facts.permissions
    assert counts["esign"] == facts.signatures
    assert counts["proc_case"] == facts.cases_open + facts.cases_closed
    assert counts["proc_task"] == facts.tasks
    assert counts["audit_log"] == facts.events
    assert counts["contragent"] == facts.counterparties


def run_mapping_query(engine: sa.Engine, entity: str, query: str) -> tuple[list[str], list[Any]]:
    """The entity query wrapped the way the generic adapter runs it (ordered by the entity key)."""
    order = ", ".join(f"q.{column}" for column in ENTITIES[entity].key)
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM ({query.strip().rstrip(';')}) q ORDER BY {order}"))
        return [c.lower() for c in result.keys()], list(result)


def assert_mapping_reads_canonical_columns(engine: sa.Engine, mapping: dict[str, Any],
                                           facts: DemoFacts) -> None:
    expected_rows = {"documents": facts.documents, "versions": facts.versions, "users": facts.users,
                     "groups": facts.groups, "folders": facts.folders, "permissions": facts.permissions,
                     "signatures": facts.signatures, "cases": facts.cases_open + facts.cases_closed,
                     "tasks": facts.tasks, "events": facts.events, "counterparties": facts.counterparties}
    for entity, table in mapping["entities"].items():
        assert entity in ENTITY_NAMES
        columns, rows = run_mapping_query(engine, entity, table["query"])
        spec = ENTITIES[entity]
        unknown = set(columns) - set(spec.columns)
        assert not unknown, f"{entity}: non-canonical {unknown}"
        assert set(spec.required) <= set(columns), f"{entity}: missing {set(spec.required) - set(columns)}"
        assert len(columns) == len(set(columns))
        if entity in expected_rows:
            assert len(rows) == expected_rows[entity], entity


# --- the facts describe the database and the disk ------------------------------------------------------


def test_table_counts_equal_the_facts(demo: Demo) -> None:
    assert_counts_match_facts(table_counts(demo.engine), demo.facts)
    assert demo.facts.documents == SPEC.documents
    assert demo.facts.users >= 12
    assert demo.facts.cases_open > 0 and demo.facts.cases_closed > 0


def test_every_document_has_one_to_three_versions_and_one_current(demo: Demo) -> None:
    per_doc = demo.rows("SELECT doc_id, COUNT(*), SUM(is_current), MAX(ver_no) FROM doc_file GROUP BY doc_id")
    assert len(per_doc) == demo.facts.documents
    assert {n for _, n, _, _ in per_doc} <= {1, 2, 3}
    assert all(current == 1 and top == n for _, n, current, top in per_doc)


def test_the_missing_file_is_referenced_but_absent(demo: Demo) -> None:
    assert len(demo.facts.missing_content_refs) == 1
    on_disk = files_on_disk(demo.root)
    referenced = {p for (p,) in demo.rows("SELECT storage_path FROM doc_file")}
    assert referenced - set(on_disk) == set(demo.facts.missing_content_refs)


def test_the_orphan_file_is_on_disk_and_referenced_by_nothing(demo: Demo) -> None:
    assert len(demo.facts.orphan_files) == 1
    referenced = {p for (p,) in demo.rows("SELECT storage_path FROM doc_file")}
    referenced |= {p for (p,) in demo.rows("SELECT sig_path FROM esign")}
    assert set(files_on_disk(demo.root)) - referenced == set(demo.facts.orphan_files)


def test_exactly_one_referenced_file_is_empty(demo: Demo) -> None:
    on_disk = files_on_disk(demo.root)
    empty = {p for (p,) in demo.rows("SELECT storage_path FROM doc_file") if on_disk.get(p) == 0}
    assert empty == set(demo.facts.zero_byte_refs) and len(empty) == 1
    size = demo.scalar("SELECT fsize FROM doc_file WHERE storage_path = :p", p=demo.facts.zero_byte_refs[0])
    assert size == 0


def test_recorded_sizes_and_content_bytes_match_the_disk(demo: Demo) -> None:
    on_disk = files_on_disk(demo.root)
    present = [(p, size) for p, size in demo.rows("SELECT storage_path, fsize FROM doc_file") if p in on_disk]
    assert all(on_disk[p] == size for p, size in present)
    assert sum(on_disk[p] for p, _ in present) == demo.facts.content_bytes
    sizes = [on_disk[p] for p, _ in present if on_disk[p]]
    assert min(sizes) >= 200 and max(sizes) <= 21_000


def test_md5_is_right_except_one_wrong_and_some_never_recorded(demo: Demo) -> None:
    wrong, unrecorded = [], 0
    for path, md5 in demo.rows("SELECT storage_path, md5 FROM doc_file"):
        if md5 is None:
            unrecorded += 1
        elif (demo.root / path).exists() and hashlib.md5((demo.root / path).read_bytes()).hexdigest() != md5:
            wrong.append(path)
    assert wrong == list(demo.facts.checksum_mismatch_refs) and len(wrong) == 1
    assert unrecorded > 0


def test_signatures_verify_and_exactly_one_no_longer_matches_its_file(demo: Demo) -> None:
    sql = ("SELECT e.id, e.digest_sha256, e.sig_path, f.storage_path, c.pubkey_hex, e.kind FROM esign e "
           "JOIN doc_file f ON f.id = e.file_id JOIN sign_cert c ON c.id = e.cert_id")
    rows = demo.rows(sql)
    assert len(rows) == demo.facts.signatures >= 4
    mismatched = []
    for sig_id, digest, sig_path, path, pubkey, _kind in rows:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(pubkey))
        key.verify((demo.root / sig_path).read_bytes(), bytes.fromhex(digest))  # raises if forged
        if hashlib.sha256((demo.root / path).read_bytes()).hexdigest() != digest:
            mismatched.append(str(sig_id))
    assert mismatched == list(demo.facts.mismatched_signature_ids) and len(mismatched) == 1
    assert {kind for *_, kind in rows} == {"detached", "seal"}


def test_account_kinds_follow_the_documented_rules(demo: Demo) -> None:
    freeze = SPEC.freeze_at.replace(tzinfo=None)
    users = demo.rows("SELECT login, is_admin, blocked, last_login, fio FROM staff")
    last = {login: as_datetime(ll) for login, _, _, ll, _ in users}
    facts = demo.facts
    assert facts.admin_logins == tuple(sorted(u[0] for u in users if u[1])) and len(facts.admin_logins) >= 2
    assert facts.disabled_logins == tuple(sorted(u[0] for u in users if u[2])) and facts.disabled_logins
    year = timedelta(days=365)
    dormant = sorted(u[0] for u in users if not u[2] and last[u[0]] and freeze - last[u[0]] > year)
    assert facts.dormant_logins == tuple(dormant) and dormant
    assert facts.never_logged_in_logins == tuple(sorted(u[0] for u in users if u[3] is None))
    assert facts.never_logged_in_logins
    assert "office_shared" in facts.shared_logins
    groups = [facts.admin_logins, facts.disabled_logins, facts.dormant_logins, facts.never_logged_in_logins,
              facts.shared_logins]
    assert sum(map(len, groups)) == len(set().union(*groups)), "account kinds overlap"
    names = " ".join(u[4] for u in users)
    assert any("\u0400" <= ch <= "\u04ff" for ch in names) and any("\u4e00" <= ch <= "\u9fff" for ch in names)


def test_rights_include_inherited_folder_rules_groups_users_and_everyone(demo: Demo) -> None:
    kinds = {tuple(r) for r in demo.rows("SELECT DISTINCT obj_kind, subj_kind, inherited FROM access_rule")}
    expected = {("F", "G", 0), ("F", "G", 1), ("F", "U", 1), ("D", "U", 0), ("D", "G", 0), ("D", "ALL", 0)}
    assert expected <= kinds
    everyone = demo.rows("SELECT obj_id FROM access_rule WHERE subj_kind = 'ALL'")
    assert tuple(str(i) for i in sorted(i for (i,) in everyone)) == demo.facts.everyone_readable_document_ids
    assert len(everyone) >= 3
    duplicates = demo.rows("SELECT obj_kind, obj_id, subj_kind, subj_id, COUNT(*) FROM access_rule "
                           "GROUP BY obj_kind, obj_id, subj_kind, subj_id HAVING COUNT(*) > 1")
    assert duplicates == []


def test_open_cases_include_past_due_and_ones_held_by_blocked_accounts(demo: Demo) -> None:
    freeze = SPEC.freeze_at.replace(tzinfo=None)
    open_cases = demo.rows("SELECT c.id, c.due, s.blocked FROM proc_case c LEFT JOIN staff s "
                           "ON s.id = c.assignee_id WHERE c.is_closed = 0")
    assert len(open_cases) == demo.facts.cases_open
    assert sum(1 for _, _, blocked in open_cases if blocked == 1) >= 2
    due = [as_datetime(d) for _, d, _ in open_cases]
    assert sum(1 for d in due if d < freeze) >= 2
    without_open_task = demo.rows("SELECT c.id FROM proc_case c WHERE c.is_closed = 0 AND NOT EXISTS "
                                  "(SELECT 1 FROM proc_task t WHERE t.case_id = c.id AND t.state = 'open')")
    assert without_open_task == []
    assert demo.scalar("SELECT COUNT(*) FROM proc_case WHERE is_closed = 1 AND closed IS NULL") == 0


def test_events_span_years_and_a_handful_follow_the_freeze_point(demo: Demo) -> None:
    freeze = SPEC.freeze_at.replace(tzinfo=None)
    rows = demo.rows("SELECT id, ts, action FROM audit_log ORDER BY id")
    events = [(i, as_datetime(ts), a) for i, ts, a in rows]
    assert [e[1] for e in events] == sorted(e[1] for e in events), "ids must follow time"
    after = [e for e in events if e[1] > freeze]
    assert len(after) == demo.facts.events_after_freeze and 1 <= len(after) <= 10
    assert events[0][1].year <= freeze.year - 5
    kinds = {"AUTH_OK", "AUTH_FAIL", "DOC_OPEN", "DOC_GET", "DOC_SAVE", "ACL_SET", "USR_LOCK", "CFG_SET"}
    assert kinds <= {e[2] for e in events}


def test_store_holds_cyrillic_and_chinese_file_names(demo: Demo) -> None:
    names = [p for p in files_on_disk(demo.root) if not p.isascii()]
    assert any("\u0400" <= ch <= "\u04ff" for p in names for ch in p)
    assert any("\u4e00" <= ch <= "\u9fff" for p in names for ch in p)
    assert all(p.startswith(("store/", "signatures/")) for p in files_on_disk(demo.root))


def test_counterparties_have_cyrillic_names_and_tax_ids(demo: Demo) -> None:
    rows = demo.rows("SELECT name, inn FROM contragent")
    assert rows and all(any("\u0400" <= ch <= "\u04ff" for ch in name) for name, _ in rows)
    assert all(len(inn) == 10 and inn.isdigit() for _, inn in rows)


def test_facts_convert_to_json(demo: Demo) -> None:
    as_dict = demo_facts_to_dict(demo.facts)
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["orphan_files"] == list(demo.facts.orphan_files)


# --- the shipped mapping ---------------------------------------------------------------------------


def test_every_mapping_query_returns_canonical_columns(demo: Demo, mapping: dict[str, Any]) -> None:
    assert set(mapping["entities"]) == set(ENTITY_NAMES)
    assert_mapping_reads_canonical_columns(demo.engine, mapping, demo.facts)


def test_mapping_translates_codes_to_canonical_values(demo: Demo, mapping: dict[str, Any]) -> None:
    def column(entity: str, name: str) -> list[Any]:
        columns, rows = run_mapping_query(demo.engine, entity, mapping["entities"][entity]["query"])
        return [row[columns.index(name)] for row in rows]

    assert set(column("permissions", "access")) == {"read", "write", "admin"}
    assert set(column("permissions", "principal_type")) == {"user", "group", "everyone"}
    assert set(column("permissions", "object_type")) == {"document", "folder"}
    assert set(column("cases", "status")) == {"open", "closed"}
    assert set(column("tasks", "status")) <= {"open", "done", "cancelled"}
    assert set(column("signatures", "kind")) <= {"detached", "seal", "embedded"}
    pairs = zip(column("versions", "checksum"), column("versions", "checksum_algo"), strict=True)
    assert all((algo == "md5") == (checksum is not None) for checksum, algo in pairs)
    assert set(column("users", "last_login_known")) == {1}
    assert None not in column("events", "action") and None not in column("events", "object_type")


def test_mapping_actions_change_and_probe_one_row(mapping: dict[str, Any], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'actions.db'}"
    build_demo(url, tmp_path / "files", DemoSpec(documents=20))
    engine = sa.create_engine(url)
    actions = mapping["actions"]
    with engine.begin() as conn:
        conn.execute(sa.text(actions["disable_user"]["sql"]), {"user_id": "3"})
        assert conn.execute(sa.text(actions["disable_user"]["probe"]), {"user_id": "3"}).scalar() == 1
        for kind, subject in (("G", "group"), ("ALL", "everyone"), ("U", "user")):
            obj_kind, obj_id, subj_id = conn.execute(sa.text(
                "SELECT obj_kind, obj_id, subj_id FROM access_rule WHERE subj_kind = :k AND mode <> 'R'"),
                {"k": kind}).first()
            params = {"object_type": "document" if obj_kind == "D" else "folder", "object_id": str(obj_id),
                      "principal_type": subject, "principal_id": None if subj_id is None else str(subj_id)}
            before = conn.execute(sa.text("SELECT COUNT(*) FROM access_rule WHERE mode = 'R'")).scalar()
            conn.execute(sa.text(actions["revoke_write"]["sql"]), params)
            assert conn.execute(sa.text(actions["revoke_write"]["probe"]), params).scalar() == "R"
            after = conn.execute(sa.text("SELECT COUNT(*) FROM access_rule WHERE mode = 'R'")).scalar()
            assert after == before + 1
        conn.execute(sa.text(actions["reassign_case"]["sql"]), {"case_id": "2", "assignee_id": "5"})
        assert conn.execute(sa.text(actions["reassign_case"]["probe"]), {"case_id": "2"}).scalar() == 5
        conn.execute(sa.text(actions["reassign_task"]["sql"]), {"task_id": "2", "assignee_id": "5"})
        assert conn.execute(sa.text(actions["reassign_task"]["probe"]), {"task_id": "2"}).scalar() == 5
    engine.dispose()


# --- building -----------------------------------------------------------------------------------------


def test_same_spec_builds_the_same_database_and_files(tmp_path: Path) -> None:
    spec = DemoSpec(documents=25, seed=7)
    snapshots = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.db"
        facts = build_demo(url, tmp_path / name, spec)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            tables = {t: conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY 1, 2")).fetchall()
                      for t in TABLE_NAMES}
        engine.dispose()
        digests = {p: hashlib.sha256((tmp_path / name / p).read_bytes()).hexdigest()
                   for p in files_on_disk(tmp_path / name)}
        snapshots.append((facts, tables, digests))
    assert snapshots[0] == snapshots[1]
    assert generate(DemoSpec(documents=25, seed=8)).rows["doc_card"] != generate(spec).rows["doc_card"]


def test_smallest_demo_still_has_every_defect(tmp_path: Path) -> None:
    facts = build_demo(f"sqlite:///{tmp_path / 'tiny.db'}", tmp_path / "files", DemoSpec(documents=20))
    for name in ("missing_content_refs", "orphan_files", "zero_byte_refs", "checksum_mismatch_refs",
                 "mismatched_signature_ids"):
        assert len(getattr(facts, name)) == 1, name
    assert facts.users >= 12 and len(facts.admin_logins) >= 2
    assert len(facts.everyone_readable_document_ids) >= 3
    assert facts.events_after_freeze > 0 and facts.dormant_logins and facts.never_logged_in_logins


def test_refuses_a_database_that_already_holds_the_demo(demo: Demo, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="already holds demo tables"):
        build_demo(demo.url, tmp_path / "other", SPEC)
    assert not (tmp_path / "other").exists()


def test_refuses_a_content_root_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not an empty folder"):
        build_demo(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "files", DemoSpec(documents=20))


def test_default_size_builds_into_sqlite(tmp_path: Path) -> None:
    facts = build_demo(f"sqlite:///{tmp_path / 'full.db'}", tmp_path / "files")
    assert facts.documents == 2000 and facts.users == 40 and facts.versions > 3000


# --- real servers: PostgreSQL and MariaDB (these fail, never skip, when the server is down) -----------


@contextmanager
def fresh_database(admin_url: str, create_suffix: str, drop_sql: str) -> Iterator[str]:
    """A new, uniquely named database on a real server, dropped afterwards; its URL."""
    name = f"decom_demo_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}{create_suffix}"))
    except sa.exc.SQLAlchemyError as exc:
        admin.dispose()
        pytest.fail(f"database server {sa.make_url(admin_url).render_as_string()} is not usable: {exc}")
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(drop_sql.format(name=name)))
        admin.dispose()


@pytest.fixture(name="pg_url")
def _fresh_pg_db() -> Iterator[str]:
    with fresh_database(PG_ADMIN_URL, "", "DROP DATABASE IF EXISTS {name} WITH (FORCE)") as url:
        # trust authentication ignores the password; it is there to prove messages never show it
        yield sa.make_url(url).set(password="not-to-be-shown").render_as_string(hide_password=False)


@pytest.fixture(name="mariadb_url")
def _fresh_mariadb_db() -> Iterator[str]:
    with fresh_database(MARIADB_ADMIN_URL, " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                        "DROP DATABASE IF EXISTS {name}") as url:
        yield url


def check_server_build(url: str, root: Path, mapping: dict[str, Any]) -> None:
    facts = build_demo(url, root, SPEC)
    engine = sa.create_engine(url)
    try:
        assert_counts_match_facts(table_counts(engine), facts)
        assert_mapping_reads_canonical_columns(engine, mapping, facts)
        expected = {u["login"]: u["fio"] for u in generate(SPEC).rows["staff"]}
        with engine.connect() as conn:
            stored = dict(conn.execute(sa.text("SELECT login, fio FROM staff")).all())
            folders = {name for (name,) in conn.execute(sa.text("SELECT name FROM folder"))}
        assert stored == expected  # Cyrillic and Chinese survive the round trip unchanged
        assert "国际合作" in folders and "Приказы" in folders
    finally:
        engine.dispose()
    assert files_on_disk(root), "the file store was written"


@pytest.mark.postgres
def test_builds_into_postgresql(pg_url: str, mapping: dict[str, Any], tmp_path: Path) -> None:
    check_server_build(pg_url, tmp_path / "files", mapping)
    with pytest.raises(UserError) as refused:
        build_demo(pg_url, tmp_path / "again", SPEC)
    assert "not-to-be-shown" not in str(refused.value) and "***" in str(refused.value)


@pytest.mark.mariadb
def test_builds_into_mariadb(mariadb_url: str, mapping: dict[str, Any], tmp_path: Path) -> None:
    check_server_build(mariadb_url, tmp_path / "files", mapping)
