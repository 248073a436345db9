"""Tables of the demo legacy EDM ("СЭД министерства", schema v3), as SQLAlchemy Core metadata.

The schema deliberately does not look like the canonical model: short legacy names, 0/1 flags in
SMALLINT columns, one-letter codes, ids handed out by the application (no sequences, no foreign keys,
as in many systems that started on MyISAM). The same metadata creates the tables on SQLite,
PostgreSQL and MariaDB; on MariaDB every table is utf8mb4 so Cyrillic and Chinese survive.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()

_MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_unicode_ci",
}


def _id() -> Column[int]:
    # Ids come from the application's own counter table (sys_counter), never from the database.
    return Column("id", Integer, primary_key=True, autoincrement=False)


def _flag(name: str, default: int = 0) -> Column[int]:
    return Column(name, SmallInteger, nullable=False, server_default=str(default))


sys_counter = Table(
    "sys_counter", metadata,
    Column("name", String(32), primary_key=True),
    Column("next_val", BigInteger, nullable=False),
    **_MYSQL,
)

dept = Table(
    "dept", metadata, _id(),
    Column("code", String(16), nullable=False),
    Column("name", String(255), nullable=False),
    **_MYSQL,
)

staff = Table(
    "staff", metadata, _id(),
    Column("login", String(64), nullable=False, unique=True),
    Column("fio", String(255)),
    Column("email", String(255)),
    Column("dept_id", Integer),
    _flag("is_admin"),
    _flag("blocked"),
    Column("last_login", DateTime),
    Column("created", DateTime, nullable=False),
    **_MYSQL,
)

staff_group = Table(
    "staff_group", metadata, _id(),
    Column("name", String(255), nullable=False),
    Column("kind", String(16), nullable=False),  # 'dept' | 'role' | 'workgroup'
    **_MYSQL,
)

staff_group_member = Table(
    "staff_group_member", metadata,
    Column("group_id", Integer, primary_key=True, autoincrement=False),
    Column("staff_id", Integer, primary_key=True, autoincrement=False),
    **_MYSQL,
)

folder = Table(
    "folder", metadata, _id(),
    Column("parent_id", Integer),  # NULL for a root
    Column("name", String(255), nullable=False),
    Column("full_path", String(1000)),  # denormalised "/Приказы/2024", kept by the application
    Column("owner_id", Integer),
    Column("created", DateTime, nullable=False),
    **_MYSQL,
)

dict_doc_kind = Table(
    "dict_doc_kind", metadata,
    Column("code", String(16), primary_key=True),
    Column("name", String(255), nullable=False),
    **_MYSQL,
)

doc_card = Table(
    "doc_card", metadata, _id(),
    Column("reg_no", String(64)),  # NULL while a draft is not registered
    Column("title", String(1000), nullable=False),
    Column("doc_kind", String(16), nullable=False),  # -> dict_doc_kind.code
    Column("folder_id", Integer),
    Column("author_id", Integer),
    Column("created", DateTime, nullable=False),
    Column("modified", DateTime),
    Column("state", String(8), nullable=False),  # DRAFT REG WORK ARCH CANC
    _flag("deleted"),
    Index("ix_doc_card_folder", "folder_id"),
    **_MYSQL,
)

doc_file = Table(
    "doc_file", metadata, _id(),
    Column("doc_id", Integer, nullable=False),
    Column("ver_no", Integer, nullable=False),
    Column("orig_name", String(500)),
    Column("mime", String(128)),
    Column("fsize", BigInteger),
    Column("md5", String(32)),  # NULL for files stored before checksums were introduced (2019)
    Column("storage_path", String(1000), nullable=False),  # relative to the file store root
    Column("created", DateTime, nullable=False),
    Column("created_by", Integer),
    _flag("is_current"),
    Index("ix_doc_file_doc", "doc_id"),
    **_MYSQL,
)

access_rule = Table(
    "access_rule", metadata, _id(),
    Column("obj_kind", String(1), nullable=False),  # 'D' document, 'F' folder
    Column("obj_id", Integer, nullable=False),
    Column("subj_kind", String(3), nullable=False),  # 'U' user, 'G' group, 'ALL' everyone
    Column("subj_id", Integer),  # NULL for 'ALL'
    Column("mode", String(3), nullable=False),  # 'R' | 'RW' | 'ADM'
    _flag("inherited"),  # 1: copied down from a parent folder's rule
    Index("ix_access_rule_obj", "obj_kind", "obj_id"),
    **_MYSQL,
)

sign_cert = Table(
    "sign_cert", metadata, _id(),
    Column("owner_id", Integer),
    Column("subject", String(500), nullable=False),
    Column("serial", String(64), nullable=False),
    Column("algo", String(32), nullable=False),
    Column("pubkey_hex", String(128), nullable=False),  # raw Ed25519 public key
    Column("valid_from", DateTime, nullable=False),
    Column("valid_to", DateTime, nullable=False),
    **_MYSQL,
)

esign = Table(
    "esign", metadata, _id(),
    Column("doc_id", Integer, nullable=False),
    Column("file_id", Integer, nullable=False),
    Column("signer_id", Integer),
    Column("cert_id", Integer),
    Column("signed_at", DateTime, nullable=False),
    Column("kind", String(16), nullable=False),  # 'detached' | 'seal'
    Column("algo", String(32), nullable=False),
    Column("digest_sha256", String(64), nullable=False),  # of the bytes that were signed
    Column("sig_path", String(1000)),  # detached signature file, relative to the file store root
    Column("cert_subject", String(500)),
    **_MYSQL,
)

proc_case = Table(
    "proc_case", metadata, _id(),
    Column("kind", String(32), nullable=False),
    Column("title", String(1000)),
    Column("doc_id", Integer),
    Column("state", String(64), nullable=False),
    _flag("is_closed"),
    Column("assignee_id", Integer),
    Column("group_id", Integer),
    Column("due", DateTime),
    Column("created", DateTime, nullable=False),
    Column("closed", DateTime),
    **_MYSQL,
)

proc_task = Table(
    "proc_task", metadata, _id(),
    Column("case_id", Integer, nullable=False),
    Column("name", String(255), nullable=False),
    Column("state", String(16), nullable=False),  # 'open' | 'done' | 'cancelled'
    Column("assignee_id", Integer),
    Column("group_id", Integer),
    Column("due", DateTime),
    Column("created", DateTime, nullable=False),
    Index("ix_proc_task_case", "case_id"),
    **_MYSQL,
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", DateTime, nullable=False),
    Column("staff_id", Integer),
    Column("action", String(32), nullable=False),
    Column("obj_kind", String(1)),  # 'D' 'F' 'U' 'S' (system)
    Column("obj_id", Integer),
    Column("ip", String(45)),
    Column("details", Text),
    Index("ix_audit_log_ts", "ts"),
    **_MYSQL,
)

contragent = Table(
    "contragent", metadata, _id(),
    Column("name", String(500), nullable=False),
    Column("inn", String(12)),
    Column("edo_address", String(64)),
    _flag("active", 1),
    **_MYSQL,
)

TABLE_NAMES: tuple[str, ...] = tuple(metadata.tables)
"""Every legacy table, in creation order."""
