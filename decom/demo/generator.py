"""Build the demo legacy EDM: a small ministry's document flow in its own old schema, plus its file store.

The result is deterministic for a given `DemoSpec` (seeded generator, every time derived from the
freeze point), so tests compare what decom finds with `DemoFacts` instead of hard-coded numbers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from tqdm import tqdm

from decom.demo import activity, records
from decom.demo.schema import TABLE_NAMES, metadata
from decom.errors import UserError, first_line

BATCH_ROWS = 1000
MIN_DOCUMENTS = 20
DORMANT_AFTER = timedelta(days=365)


@dataclass(frozen=True)
class DemoSpec:
    """How big the demo is and which random world it is. Same spec, same database and files."""

    documents: int = 2000
    seed: int = 20261120
    freeze_at: datetime = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)


@dataclass(frozen=True)
class DemoFacts:
    """What was generated, for tests and demos to check decom's findings against.

    Ids are strings as in the canonical model. The login lists are disjoint by construction and follow
    these rules: dormant = not blocked, has logged in, last login more than 365 days before the freeze
    point; never logged in = last_login NULL (none of them blocked); disabled = blocked (their last login
    is recent, so they are not dormant). Only documents carry rules for everyone, never folders.
    Signature files live under `signatures/` in the content root and are referenced by signatures,
    not by versions; `orphan_files` are files referenced by neither.
    """

    documents: int
    versions: int
    users: int
    groups: int
    folders: int
    permissions: int
    signatures: int
    cases_open: int
    cases_closed: int
    tasks: int
    events: int
    events_after_freeze: int
    counterparties: int
    content_bytes: int  # bytes of the version files that are referenced and present
    missing_content_refs: tuple[str, ...]  # storage_path values referenced but absent on disk
    orphan_files: tuple[str, ...]  # relative paths on disk that no record references
    zero_byte_refs: tuple[str, ...]
    checksum_mismatch_refs: tuple[str, ...]  # md5 recorded but not the MD5 of the bytes
    mismatched_signature_ids: tuple[str, ...]  # digest no longer matches the bytes of the signed file
    admin_logins: tuple[str, ...]
    disabled_logins: tuple[str, ...]
    dormant_logins: tuple[str, ...]
    never_logged_in_logins: tuple[str, ...]
    shared_logins: tuple[str, ...]
    everyone_readable_document_ids: tuple[str, ...]


def demo_facts_to_dict(facts: DemoFacts) -> dict[str, Any]:
    """The facts as plain JSON-friendly values (tuples become lists)."""
    result: dict[str, Any] = {}
    for f in fields(facts):
        value = getattr(facts, f.name)
        result[f.name] = list(value) if isinstance(value, tuple) else value
    return result


def generate(spec: DemoSpec) -> records.DemoData:
    """Decide every row and file of the demo in memory; nothing is written."""
    if spec.documents < MIN_DOCUMENTS:
        raise UserError(f"the demo needs at least {MIN_DOCUMENTS} documents, not {spec.documents}")
    freeze = spec.freeze_at
    if freeze.tzinfo is not None:
        freeze = freeze.astimezone(UTC).replace(tzinfo=None)
    rng = random.Random(spec.seed)
    data = records.DemoData(freeze=freeze.replace(microsecond=0))
    records.make_org(data, rng, n_users=max(14, min(40, spec.documents // 50)))
    records.make_folders(data, rng)
    records.make_documents(data, rng, spec.documents)
    records.make_rights(data, rng)
    activity.make_signatures(data, rng)
    activity.place_defects(data, rng)
    activity.make_cases(data, rng)
    activity.make_events(data, rng)
    activity.make_counterparties(data, rng)
    activity.fill_counters(data)
    return data


def facts_of(data: records.DemoData) -> DemoFacts:
    rows = data.rows
    staff = rows["staff"]

    def logins(predicate: Any) -> tuple[str, ...]:
        return tuple(sorted(u["login"] for u in staff if predicate(u)))

    version_paths = [v["storage_path"] for v in rows["doc_file"]]
    return DemoFacts(
        documents=len(rows["doc_card"]), versions=len(rows["doc_file"]), users=len(staff),
        groups=len(rows["staff_group"]), folders=len(rows["folder"]), permissions=len(rows["access_rule"]),
        signatures=len(rows["esign"]),
        cases_open=sum(1 for c in rows["proc_case"] if not c["is_closed"]),
        cases_closed=sum(1 for c in rows["proc_case"] if c["is_closed"]),
        tasks=len(rows["proc_task"]), events=len(rows["audit_log"]),
        events_after_freeze=sum(1 for e in rows["audit_log"] if e["ts"] > data.freeze),
        counterparties=len(rows["contragent"]),
        content_bytes=sum(len(data.files[p]) for p in version_paths if p in data.files),
        missing_content_refs=tuple(sorted(data.missing_refs)),
        orphan_files=tuple(sorted(data.orphan_files)),
        zero_byte_refs=tuple(sorted(data.zero_byte_refs)),
        checksum_mismatch_refs=tuple(sorted(data.checksum_mismatch_refs)),
        mismatched_signature_ids=tuple(str(i) for i in sorted(data.mismatched_signature_ids)),
        admin_logins=logins(lambda u: u["is_admin"]),
        disabled_logins=logins(lambda u: u["blocked"]),
        dormant_logins=logins(lambda u: not u["blocked"] and u["last_login"] is not None
                              and data.freeze - u["last_login"] > DORMANT_AFTER),
        never_logged_in_logins=logins(lambda u: u["last_login"] is None),
        shared_logins=logins(lambda u: data.roles[u["id"]] == "shared"),
        everyone_readable_document_ids=tuple(str(i) for i in sorted(data.everyone_readable)),
    )


def build_demo(db_url: str, content_root: Path, spec: DemoSpec = DemoSpec(), *,  # noqa: B008
               progress: bool = False) -> DemoFacts:
    """Create the legacy tables at `db_url`, fill them, write the file store under `content_root`.

    Refuses (UserError) when the demo tables already hold data or the content root is not empty.
    """
    content_root = Path(content_root)
    if content_root.exists() and (not content_root.is_dir() or any(content_root.iterdir())):
        raise UserError(f"content root {content_root} is not an empty folder; "
                        "the demo writes a fresh file store")
    engine = _engine(db_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        _refuse_existing_data(engine, where)
        data = generate(spec)
        total = sum(len(r) for r in data.rows.values()) + len(data.files)
        with tqdm(total=total, desc="demo EDM", unit="row", disable=not progress) as bar:
            try:
                metadata.create_all(engine)
                with engine.begin() as conn:
                    for name in TABLE_NAMES:
                        for batch in _batches(data.rows[name]):
                            conn.execute(metadata.tables[name].insert(), batch)
                            bar.update(len(batch))
            except SQLAlchemyError as exc:
                raise UserError(f"could not write the demo into {where}: {first_line(exc)}") from None
            _write_files(content_root, data.files, bar)
    finally:
        engine.dispose()
    return facts_of(data)


def _engine(db_url: str) -> Engine:
    try:
        return sa.create_engine(db_url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise UserError(f"database URL is not usable: {exc}") from None
    except ModuleNotFoundError as exc:
        raise UserError(f"database driver {exc.name!r} is not installed") from None


def _refuse_existing_data(engine: Engine, where: str) -> None:
    try:
        with engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names()) & set(TABLE_NAMES)
            filled = [name for name in TABLE_NAMES if name in present
                      and conn.execute(sa.select(sa.literal(1)).select_from(metadata.tables[name]).limit(1))
                      .first() is not None]
    except SQLAlchemyError as exc:
        raise UserError(f"cannot use the database {where}: {first_line(exc)}") from None
    if filled:
        raise UserError(f"{where} already holds demo tables with data ({', '.join(filled)}); "
                        "build the demo into an empty database")


def _batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), BATCH_ROWS):
        yield rows[start:start + BATCH_ROWS]


def _write_files(content_root: Path, files: dict[str, bytes], bar: Any) -> None:
    made: set[Path] = set()
    for relative, body in files.items():
        target = content_root.joinpath(*relative.split("/"))
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        target.write_bytes(body)
        bar.update(1)
