"""Generic SQL adapter: one query per canonical entity plus a content rule, read from a mapping file.

This is how a user retires a system nobody wrote an adapter for; docs/generic-sql-adapter.md
describes the mapping format with a worked example.
"""

from __future__ import annotations

import io
import os
import re
import threading
import tomllib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from decom.adapter import Capability, SourceConfig
from decom.arrow_sql import AdbcError, AdbcPool, adbc_uri, conform
from decom.coerce import CoercionError, to_arrow
from decom.errors import UserError, first_line
from decom.model import ENTITIES

_AGGREGATES = {"sum", "max", "min", "count"}
# Bulk content queries in flight at once, each on its own connection, and the share of the
# requested batch size each asks for: ADBC (PostgreSQL) streams into Arrow and two 16 MiB queries
# keep up; row-by-row drivers (pymysql) wait on round trips, so more, smaller queries.
FETCHERS = {"arrow": 2, "rows": 4}
BATCH_SHARE = {"arrow": 1, "rows": 2}


def redact_url(url: str) -> str:
    """The URL as it may appear in reports and logs: password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _invalid_url(url: str, exc: ArgumentError) -> UserError:
    return UserError(f"database URL {redact_url(url)} is not valid: {exc}")


def create_source_engine(url: str) -> Engine:
    """An engine for a legacy database, with driver problems turned into one clear line."""
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    except NoSuchModuleError as exc:
        raise UserError(f"database URL {redact_url(url)}: no SQLAlchemy dialect for it ({exc})") from None
    except ArgumentError as exc:
        raise _invalid_url(url, exc) from None
    except ModuleNotFoundError as exc:
        raise UserError(
            f"database URL {redact_url(url)}: driver {exc.name!r} is not installed "
            "(install decom with the matching extra, e.g. decom[postgres] or decom[mysql])"
        ) from None
    return engine


class ContentRule:
    """How a content_ref (or signature_ref) becomes bytes: a file under the content root, or a blob query."""

    def __init__(self, table: Mapping[str, Any], where: str, content_root: Path | None) -> None:
        self.kind = table.get("kind", "path")
        self.where = where
        self.content_root = content_root
        self.query = table.get("query")
        # Optional: "SELECT id AS content_ref, data FROM blobs" — fetched for many versions at once.
        self.bulk_query = table.get("bulk_query")
        if self.kind not in {"path", "blob"}:
            raise UserError(f"{where}: kind must be 'path' or 'blob', not {self.kind!r}")
        if self.kind == "blob" and not self.query:
            raise UserError(f"{where}: kind = 'blob' needs a query with a :content_ref parameter")

    def path_of(self, ref: str) -> Path:
        if self.content_root is None:
            raise UserError(f"{self.where}: content is stored as files but the plan gives no source.content_root")
        relative = PurePosixPath(ref.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise UserError(f"{self.where}: content path {ref!r} escapes the content root")
        return self.content_root.joinpath(*relative.parts)

    def open(self, engine: Engine, ref: str) -> BinaryIO:
        if self.kind == "path":
            return self.path_of(ref).open("rb")
        with engine.connect() as conn:
            row = conn.execute(sa.text(self.query), {"content_ref": ref}).first()
        if row is None or row[0] is None:
            raise FileNotFoundError(f"no blob for content_ref {ref!r}")
        return io.BytesIO(bytes(row[0]))


class SqlGenericAdapter:
    """A legacy EDM read through SQL queries that alias its columns to canonical names."""

    name = "sql_generic"

    def __init__(self, config: SourceConfig, mapping_path: Path | None = None) -> None:
        self.config = config
        path = mapping_path or self._mapping_from_options(config)
        self.mapping_path = path
        self.mapping = self._load_mapping(path)
        adapter_table = self.mapping.get("adapter", {})
        try:
            self.capabilities = frozenset(Capability(c) for c in adapter_table.get("capabilities", []))
        except ValueError as exc:
            raise UserError(f"{path}: [adapter] capabilities: {exc}") from None
        self.description = str(adapter_table.get("description", "SQL source"))
        self.queries: dict[str, str] = {}
        for entity, table in self.mapping.get("entities", {}).items():
            if entity not in ENTITIES:
                raise UserError(f"{path}: [entities.{entity}] is not a canonical entity "
                                f"(known: {', '.join(ENTITIES)})")
            if not isinstance(table, dict) or not isinstance(table.get("query"), str):
                raise UserError(f"{path}: [entities.{entity}] needs query = \"SELECT ...\"")
            self.queries[entity] = table["query"].strip().rstrip(";")
        self.content = ContentRule(self.mapping.get("content", {"kind": "path"}), f"{path}: [content]",
                                   config.content_root)
        self.signature_content = ContentRule(self.mapping.get("signature_content", {"kind": "path"}),
                                             f"{path}: [signature_content]", config.content_root)
        try:
            self.url = make_url(config.url)
        except ArgumentError as exc:  # reported when the adapter opens, as before the engine was made lazily
            raise _invalid_url(config.url, exc) from None
        # The SQLAlchemy engine is made on first use: making it imports the dialect's driver
        # (psycopg: ~0.13 s), which a PostgreSQL backup reading through ADBC never uses.
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._adbc: AdbcPool | None = None   # ADBC connections for entity and content reads (PostgreSQL)
        self._adbc_lock = threading.Lock()    # the fetch threads of a part ask for the pool at once

    @property
    def engine(self) -> Engine:
        with self._engine_lock:  # content fetch threads may ask at once
            if self._engine is None:
                self._engine = create_source_engine(self.config.url)
            return self._engine

    @staticmethod
    def _mapping_from_options(config: SourceConfig) -> Path:
        mapping = config.options.get("mapping")
        if not mapping:
            raise UserError("source: the sql_generic adapter needs source.mapping (a mapping TOML file)")
        path = Path(str(mapping))
        return path if path.is_absolute() else config.plan_dir / path

    @staticmethod
    def _load_mapping(path: Path) -> dict[str, Any]:
        try:
            with path.open("rb") as handle:
                return tomllib.load(handle)
        except FileNotFoundError:
            raise UserError(f"mapping file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"mapping file {path}: {exc}") from None

    # --- reading -----------------------------------------------------------------------------

    def describe(self) -> str:
        where = redact_url(self.config.url)
        root = f", content under {self.config.content_root}" if self.config.content_root else ""
        return f"{self.description} ({self.name} adapter, {where}{root})"

    def entities(self) -> tuple[str, ...]:
        return tuple(e for e in ENTITIES if e in self.queries)

    def _query(self, entity: str) -> str:
        if entity not in self.queries:
            raise UserError(f"{self.mapping_path}: no [entities.{entity}] query in the mapping")
        return self.queries[entity]

    def _execute_scalar(self, sql: str, entity: str) -> Any:
        try:
            with self.engine.connect() as conn:
                return conn.execute(sa.text(sql)).scalar()
        except SQLAlchemyError as exc:
            raise self._sql_error(entity, exc) from None

    def _sql_error(self, entity: str, exc: SQLAlchemyError) -> UserError:
        detail = first_line(exc)
        if isinstance(exc, sa.exc.OperationalError) and "connect" in detail.lower():
            return UserError(f"cannot reach the source database {redact_url(self.config.url)}: {detail}")
        where = entity if entity.startswith("actions.") else f"entities.{entity}"
        return UserError(f"{self.mapping_path}: [{where}] query failed on "
                         f"{redact_url(self.config.url)}: {detail}")

    def count(self, entity: str) -> int:
        return int(self._execute_scalar(f"SELECT COUNT(*) FROM ({self._query(entity)}) q", entity) or 0)

    def aggregate(self, entity: str, column: str, func: str) -> Any:
        if func not in _AGGREGATES or column not in ENTITIES[entity].columns:
            raise ValueError(f"unsupported aggregate {func}({column}) on {entity}")
        return self._execute_scalar(f"SELECT {func.upper()}(q.{column}) FROM ({self._query(entity)}) q", entity)

    def breakdown(self, entity: str, by: str, *, year: bool = False, value: str | None = None,
                  join: tuple[str, str] | None = None) -> dict[str, float]:
        """COUNT (or SUM of `value`) per `by` (per year of `by` with year=True), computed by the database.

        join=(entity, key) groups `value` of this entity by `by` of the other entity joined on `key`.
        """
        spec = ENTITIES[entity]
        other = ENTITIES[join[0]] if join else spec
        if by not in other.columns or (value is not None and value not in spec.columns):
            raise ValueError(f"unsupported breakdown of {entity} by {by}")
        source = sa.text(f"({self._query(entity)}) q")
        key: sa.ColumnElement[Any] = sa.literal_column(f"{'j' if join else 'q'}.{by}")
        if year:
            key = sa.extract("year", key)
        measure = sa.func.sum(sa.literal_column(f"q.{value}")) if value else sa.func.count()
        query = sa.select(key.label("k"), measure.label("v"))
        if join:
            query = query.select_from(source).join(sa.text(f"({self._query(join[0])}) j"),
                                                   sa.text(f"j.{join[1]} = q.{join[1]}"))
        else:
            query = query.select_from(source)
        query = query.group_by(key)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise self._sql_error(entity, exc) from None
        return {("(none)" if k is None else str(int(k)) if year else str(k)): float(v or 0) for k, v in rows}

    def read(self, entity: str, batch_rows: int = 10_000) -> Iterator[pa.RecordBatch]:
        spec = ENTITIES[entity]
        order = ", ".join(f"q.{k}" for k in spec.key)
        sql = f"SELECT * FROM ({self._query(entity)}) q ORDER BY {order}"
        uri = adbc_uri(self.url)
        if uri is not None:
            yield from self._read_arrow(entity, uri, sql, max(batch_rows, 65_536))
            return
        try:
            with self.engine.connect().execution_options(stream_results=True) as conn:
                result = conn.execute(sa.text(sql))
                columns = [c.lower() for c in result.keys()]
                self._check_columns(entity, columns)
                while rows := result.fetchmany(batch_rows):
                    yield self._batch(entity, columns, rows)
        except SQLAlchemyError as exc:
            raise self._sql_error(entity, exc) from None

    def _read_arrow(self, entity: str, uri: str, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        schema = ENTITIES[entity].schema
        try:
            columns, batches = self._adbc_pool(uri).stream(sql, batch_rows)
            self._check_columns(entity, columns)
            for batch in batches:
                try:
                    yield conform(batch, schema)
                except (CoercionError, pa.ArrowInvalid) as exc:
                    raise UserError(f"{self.mapping_path}: [entities.{entity}]: {exc}") from None
        except AdbcError as exc:
            detail = str(exc)
            if "connect" in detail.lower():
                raise UserError(f"cannot reach the source database {redact_url(self.config.url)}: {detail}") from None
            raise UserError(f"{self.mapping_path}: [entities.{entity}] query failed on "
                            f"{redact_url(self.config.url)}: {detail}") from None

    def _check_columns(self, entity: str, columns: list[str]) -> None:
        spec = ENTITIES[entity]
        unknown = [c for c in columns if c not in spec.columns]
        if unknown:
            raise UserError(f"{self.mapping_path}: [entities.{entity}] returns non-canonical column(s) "
                            f"{', '.join(unknown)} (canonical: {', '.join(spec.columns)})")
        missing = [c for c in spec.required if c not in columns]
        if missing:
            raise UserError(f"{self.mapping_path}: [entities.{entity}] must return {', '.join(missing)}")

    def _batch(self, entity: str, columns: list[str], rows: list[Any]) -> pa.RecordBatch:
        spec = ENTITIES[entity]
        by_name = dict(zip(columns, zip(*rows, strict=True), strict=True))
        arrays = []
        for field in spec.schema:
            values = by_name.get(field.name, (None,) * len(rows))
            try:
                arrays.append(to_arrow(values, field.type))
            except CoercionError as exc:
                raise UserError(f"{self.mapping_path}: [entities.{entity}] column {field.name}: {exc}") from None
        return pa.RecordBatch.from_arrays(arrays, schema=spec.schema)

    # --- content -----------------------------------------------------------------------------

    def open_content(self, version: Mapping[str, Any]) -> BinaryIO:
        ref = version.get("content_ref")
        if not ref:
            raise FileNotFoundError(f"version {version.get('version_id')} has no content_ref")
        return self.content.open(self.engine, str(ref))

    def open_many(self, versions: Sequence[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], BinaryIO | None]]:
        """(version, stream or None when missing) for many versions, each opened on its own."""
        for version in versions:
            try:
                yield version, self.open_content(version)
            except FileNotFoundError:
                yield version, None

    def content_batches(self, versions: Sequence[Mapping[str, Any]],
                        max_bytes: int) -> Iterator[tuple[Sequence[Mapping[str, Any]], pa.Array]] | None:
        """With [content] bulk_query: the blobs of many versions per query, as Arrow binary arrays.

        Batches hold about `max_bytes` of recorded size (at most 500 versions), a few queries in flight
        on pooled connections (ADBC for PostgreSQL: the bytes go from the wire into Arrow buffers
        untouched). None without a bulk_query: the caller streams each version through open_many.
        """
        if self.content.kind != "blob" or not self.content.bulk_query:
            return None
        return self._blob_batches(versions, max_bytes)

    def _batches_by_size(self, versions: Sequence[Mapping[str, Any]],
                         max_bytes: int) -> Iterator[Sequence[Mapping[str, Any]]]:
        start, size = 0, 0
        for end, version in enumerate(versions):
            if end > start and (size + int(version.get("size_bytes") or 0) > max_bytes or end - start >= 500):
                yield versions[start:end]
                start, size = end, 0
            size += int(version.get("size_bytes") or 0)
        if start < len(versions):
            yield versions[start:]

    def _bulk_sql(self, refs: list[str]) -> Any:
        # Bind ids as integers when they are: the database then uses its index on an integer key.
        values: list[Any] = [int(r) for r in refs] if all(r.isdigit() for r in refs) else refs
        return (sa.select(sa.literal_column("q.content_ref"), sa.literal_column("q.data"))
                .select_from(sa.text(f"({self.content.bulk_query}) q"))
                .where(sa.literal_column("q.content_ref").in_(values)))

    def _bulk_text(self, refs: list[str]) -> str | None:
        """_bulk_sql's text when every ref is an integer, written without SQLAlchemy's compiler, which
        took ~1 ms a batch of 500 (2 s of the fetch threads' CPU at 1,000,000 versions). None otherwise:
        other values are quoted by the compiler."""
        if not all(r.isascii() and r.isdigit() for r in refs):
            return None
        values = ", ".join(str(int(r)) for r in refs)
        return f"SELECT q.content_ref, q.data \nFROM ({self.content.bulk_query}) q \nWHERE q.content_ref IN ({values})"

    def _fetch_batch(self, batch: Sequence[Mapping[str, Any]], uri: str | None) -> pa.Array:
        """The blobs of one batch in its order (null where missing), over a pooled connection."""
        refs = [str(v["content_ref"]) for v in batch if v.get("content_ref")]
        if not refs:
            return pa.nulls(len(batch), pa.binary())
        query = self._bulk_sql(refs)
        if uri is not None:
            sql = self._bulk_text(refs) or str(query.compile(dialect=self.engine.dialect,
                                                              compile_kwargs={"literal_binds": True}))
            with self._adbc_pool(uri).session() as run:
                table = run(sql)
            found, data = table.column(0).to_pylist(), table.column(1)
        else:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            found = [r[0] for r in rows]
            data = pa.array([None if r[1] is None else bytes(r[1]) for r in rows], pa.large_binary())
        wanted = [str(v.get("content_ref")) for v in batch]
        found = [str(ref) for ref in found]
        if found == wanted:  # the usual case (rows come in key order): no copy
            return data
        where = {ref: i for i, ref in enumerate(found)}
        return pc.take(data, pa.array([where.get(ref) for ref in wanted], pa.int64()))

    def _blob_batches(self, versions: Sequence[Mapping[str, Any]],
                      max_bytes: int) -> Iterator[tuple[Sequence[Mapping[str, Any]], pa.Array]]:
        """Batches in order, several queries in flight on their own connections: one connection
        waits on the server's round trips (MariaDB through pymysql, 48 KiB blobs, alone: ~180 MB/s on
        one connection, ~250 MB/s on two, ~310 MB/s on three). In the backup, four queries of 8 MiB
        took 6.1-7.8 s for 983 MB at ~370-450 MiB peak, two of 16 MiB 8.6-8.9 s at 450-490 MiB."""
        uri = adbc_uri(self.url)
        kind = "arrow" if uri is not None else "rows"
        fetchers = FETCHERS[kind]
        batches = list(self._batches_by_size(versions, max_bytes // BATCH_SHARE[kind]))
        pending: deque[tuple[Sequence[Mapping[str, Any]], Future[pa.Array]]] = deque()
        pool = ThreadPoolExecutor(max_workers=fetchers, thread_name_prefix="blob-fetch")
        try:
            for batch in batches:
                pending.append((batch, pool.submit(self._fetch_batch, batch, uri)))
                if len(pending) > fetchers:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        except (SQLAlchemyError, AdbcError) as exc:
            detail = first_line(exc)
            raise UserError(f"{self.mapping_path}: [content] bulk_query failed on {redact_url(self.config.url)}: "
                            f"{detail}") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def open_signature(self, signature: Mapping[str, Any]) -> BinaryIO:
        ref = signature.get("signature_ref")
        if not ref:
            raise FileNotFoundError(f"signature {signature.get('signature_id')} has no signature_ref")
        return self.signature_content.open(self.engine, str(ref))

    def content_files(self) -> Iterator[tuple[str, int]]:
        root = self.config.content_root
        if root is None or self.content.kind != "path":
            return
        if not root.is_dir():
            raise UserError(f"content root {root} is not a folder")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                full = Path(dirpath) / filename
                yield full.relative_to(root).as_posix(), full.stat().st_size

    def content_ref_of_file(self, relative_path: str) -> str | None:
        return relative_path if self.content.kind == "path" else None

    # --- actions (lock-down, reassignment) ----------------------------------------------------

    def actions(self) -> tuple[str, ...]:
        return tuple(sorted(self.mapping.get("actions", {})))

    def _action_sql(self, action: str, key: str) -> str:
        table = self.mapping.get("actions", {}).get(action)
        if not isinstance(table, dict) or not isinstance(table.get(key), str):
            raise UserError(f"{self.mapping_path}: [actions.{action}] needs {key} = \"...\" for this step")
        return str(table[key])

    def _action_params(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any]:
        # Pass only the parameters the statement names: drivers reject unused ones.
        return {k: v for k, v in params.items() if re.search(rf":{re.escape(k)}\b", sql)}

    def probe(self, action: str, params: Mapping[str, Any]) -> Any:
        sql = self._action_sql(action, "probe")
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.text(sql), self._action_params(sql, params)).first()
        except SQLAlchemyError as exc:
            raise self._sql_error(f"actions.{action}", exc) from None
        return None if row is None else row[0]

    def _change(self, action: str, sql: str, params: Mapping[str, Any]) -> int:
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(sa.text(sql), self._action_params(sql, params)).rowcount or 0)
        except SQLAlchemyError as exc:
            raise self._sql_error(f"actions.{action}", exc) from None

    def perform(self, action: str, params: Mapping[str, Any]) -> int:
        return self._change(action, self._action_sql(action, "sql"), params)

    def restore(self, action: str, params: Mapping[str, Any], before: Any) -> int:
        return self._change(action, self._action_sql(action, "restore"), {**params, "before": before})

    def warm_up(self) -> None:
        """The backup is about to read: open the ADBC connections its content fetchers will use in the
        background, so they are ready by the time the parts snapshot and entity files are done
        (each costs ~0.05 s, most of it the driver reading the type catalogue)."""
        uri = adbc_uri(self.url)
        if uri is not None:
            self._adbc_pool(uri).warm_up(FETCHERS["arrow"])

    def _adbc_pool(self, uri: str) -> AdbcPool:
        with self._adbc_lock:  # one pool, or a second one's connections would never be closed
            if self._adbc is None:
                self._adbc = AdbcPool(uri)
            return self._adbc

    def close(self) -> None:
        if self._adbc is not None:
            self._adbc.close()
            self._adbc = None
        if self._engine is not None:
            self._engine.dispose()
