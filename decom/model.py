"""The canonical EDM model: the entities every adapter yields, as Arrow schemas.

Adapters translate their system's tables into these record batches; every stage after that
works on this model only. `docs/canonical-model.md` explains each field.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Entity:
    """One canonical entity: its name, Arrow schema, key column and the columns a source must give."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    required: tuple[str, ...]
    description: str

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, dtype) for name, dtype in fields])


ENTITIES: dict[str, Entity] = {}


def _entity(name: str, key: tuple[str, ...], required: tuple[str, ...], description: str,
            *fields: tuple[str, pa.DataType]) -> Entity:
    entity = Entity(name, _schema(*fields), key, required, description)
    ENTITIES[name] = entity
    return entity


FOLDERS = _entity(
    "folders", ("folder_id",), ("folder_id", "name"),
    "Folders, cabinets or spaces that hold documents; parent_id NULL for a root.",
    ("folder_id", pa.string()), ("parent_id", pa.string()), ("name", pa.string()),
    ("path", pa.string()), ("owner_id", pa.string()), ("created_at", TS),
)

DOCUMENTS = _entity(
    "documents", ("document_id",), ("document_id", "title"),
    "Document cards: the registered document, independent of its file versions.",
    ("document_id", pa.string()), ("title", pa.string()), ("doc_type", pa.string()),
    ("registration_no", pa.string()), ("folder_id", pa.string()), ("owner_id", pa.string()),
    ("created_at", TS), ("modified_at", TS), ("status", pa.string()), ("is_deleted", pa.bool_()),
)

VERSIONS = _entity(
    "versions", ("version_id",), ("version_id", "document_id", "version_no"),
    "File versions: where each document's bytes live. content_ref is resolved by the adapter's "
    "content rule (a path under the content root, or a key for a blob query).",
    ("version_id", pa.string()), ("document_id", pa.string()), ("version_no", pa.int32()),
    ("file_name", pa.string()), ("mime_type", pa.string()), ("size_bytes", pa.int64()),
    ("checksum", pa.string()), ("checksum_algo", pa.string()), ("content_ref", pa.string()),
    ("created_at", TS), ("created_by", pa.string()), ("is_current", pa.bool_()),
)

USERS = _entity(
    "users", ("user_id",), ("user_id", "login"),
    "Accounts of the legacy system. last_login NULL means the system does not know or it never happened; "
    "last_login_known says which.",
    ("user_id", pa.string()), ("login", pa.string()), ("full_name", pa.string()), ("email", pa.string()),
    ("department", pa.string()), ("is_active", pa.bool_()), ("is_admin", pa.bool_()),
    ("last_login", TS), ("last_login_known", pa.bool_()), ("created_at", TS),
)

GROUPS = _entity(
    "groups", ("group_id",), ("group_id", "name"),
    "Groups, roles or departments that rights are granted to.",
    ("group_id", pa.string()), ("name", pa.string()), ("kind", pa.string()),
)

MEMBERSHIPS = _entity(
    "memberships", ("group_id", "user_id"), ("group_id", "user_id"),
    "Which user belongs to which group.",
    ("group_id", pa.string()), ("user_id", pa.string()),
)

PERMISSIONS = _entity(
    "permissions", ("object_type", "object_id", "principal_type", "principal_id", "access"),
    ("object_type", "object_id", "principal_type", "access"),
    "ACL entries. object_type: document | folder | system. principal_type: user | group | role | everyone. "
    "access: read | write | admin (each implies the ones before). inherited: granted on a parent.",
    ("object_type", pa.string()), ("object_id", pa.string()), ("principal_type", pa.string()),
    ("principal_id", pa.string()), ("access", pa.string()), ("inherited", pa.bool_()),
)

SIGNATURES = _entity(
    "signatures", ("signature_id",), ("signature_id", "document_id"),
    "Electronic signatures and seals. signed_sha256 is the digest of the bytes that were signed; "
    "signature_ref locates a detached signature file like content_ref does.",
    ("signature_id", pa.string()), ("document_id", pa.string()), ("version_id", pa.string()),
    ("signer_id", pa.string()), ("signed_at", TS), ("kind", pa.string()), ("algorithm", pa.string()),
    ("signed_sha256", pa.string()), ("signature_ref", pa.string()), ("certificate_subject", pa.string()),
)

CASES = _entity(
    "cases", ("case_id",), ("case_id", "status"),
    "Cases, workflow runs and check-outs in flight or finished. status: open | closed.",
    ("case_id", pa.string()), ("case_type", pa.string()), ("title", pa.string()), ("status", pa.string()),
    ("state", pa.string()), ("assignee_id", pa.string()), ("candidate_group_id", pa.string()),
    ("due_at", TS), ("created_at", TS), ("closed_at", TS), ("document_id", pa.string()),
)

TASKS = _entity(
    "tasks", ("task_id",), ("task_id", "case_id", "status"),
    "Tasks inside a case (review, approve, sign). status: open | done | cancelled.",
    ("task_id", pa.string()), ("case_id", pa.string()), ("name", pa.string()), ("status", pa.string()),
    ("assignee_id", pa.string()), ("candidate_group_id", pa.string()), ("due_at", TS), ("created_at", TS),
)

EVENTS = _entity(
    "events", ("event_id",), ("event_id", "occurred_at", "action"),
    "Audit events. event_id orders them; the freeze point is a time and/or the highest event_id.",
    ("event_id", pa.int64()), ("occurred_at", TS), ("user_id", pa.string()), ("action", pa.string()),
    ("object_type", pa.string()), ("object_id", pa.string()), ("source_address", pa.string()),
    ("details", pa.string()),
)

COUNTERPARTIES = _entity(
    "counterparties", ("counterparty_id",), ("counterparty_id", "name"),
    "Exchange counterparties (other organisations documents travel to and from).",
    ("counterparty_id", pa.string()), ("name", pa.string()), ("tax_id", pa.string()),
    ("exchange_address", pa.string()), ("is_active", pa.bool_()),
)

ENTITY_NAMES: tuple[str, ...] = tuple(ENTITIES)
