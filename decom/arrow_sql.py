"""Arrow-native bulk reads: mapping queries straight into Arrow batches, cast to the canonical schema.

For PostgreSQL the ADBC driver streams query results over COPY BINARY into Arrow, with no
Python object per value; the row-by-row SQLAlchemy path is ~10× slower on large tables and
stays the fallback (other databases, driver missing, DECOM_NO_ADBC=1). Casting is vectorized;
only columns Arrow cannot cast (text dates, epoch integers) fall back to decom.coerce.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import URL

from decom.coerce import to_arrow
from decom.errors import first_line


def adbc_uri(url: URL) -> str | None:
    """A libpq URI for ADBC when the URL is PostgreSQL and the ADBC driver is installed, else None."""
    if os.environ.get("DECOM_NO_ADBC") or url.get_backend_name() != "postgresql":
        return None
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return None
    plain = url.set(drivername="postgresql")
    return plain.render_as_string(hide_password=False)


class AdbcError(Exception):
    """A driver error, with the driver's first message line."""


class AdbcPool:
    """ADBC connections kept open for many queries (a connection costs tens of milliseconds: the
    driver reads the server's type catalogue). One connection serves one thread at a time; the
    entity reads, the parts snapshot and the content fetches of a run share the pool."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._warming: threading.Thread | None = None

    def warm_up(self, connections: int) -> None:
        """Open `connections` more connections on a background thread, into the pool, while the caller
        does other work. A failure is left for the next connection in the foreground to report."""

        def connect() -> None:
            for _ in range(connections):
                try:
                    conn = self._new()
                except Exception:  # noqa: BLE001  reported by the foreground connection that needs one
                    return
                with self._lock:
                    if not self._closed:
                        self._idle.append(conn)
                        continue
                conn.close()
                return

        with self._lock:
            if self._warming is None and not self._closed:
                self._warming = threading.Thread(target=connect, name="adbc-warm-up", daemon=True)
                self._warming.start()

    def _connect(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new()

    def _new(self) -> Any:
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as pg

        try:
            return pg.connect(self.uri)
        except adbc_driver_manager.Error as exc:
            raise AdbcError(first_line(exc)) from None

    @contextmanager
    def session(self) -> Iterator[Callable[[str], pa.Table]]:
        """Yields a function running a query into an Arrow table, on a connection of the pool."""
        import adbc_driver_manager

        conn = self._connect()
        healthy = True

        def query(sql: str) -> pa.Table:
            nonlocal healthy
            try:
                with conn.cursor() as cursor:
                    cursor.execute(sql)
                    return cursor.fetch_arrow_table()
            except adbc_driver_manager.Error as exc:
                healthy = False
                raise AdbcError(first_line(exc)) from None

        try:
            yield query
        except BaseException:
            healthy = False
            raise
        finally:
            self._release(conn, healthy)

    def stream(self, sql: str, batch_rows: int) -> tuple[list[str], Iterator[pa.RecordBatch]]:
        """(column names, batches of at most `batch_rows`) of a query, streamed over COPY BINARY on a
        pooled connection (taken now, so a connection error is raised here). The connection goes back
        to the pool once every batch has been read, and is closed if the reading fails or stops early."""
        import adbc_driver_manager

        conn = self._connect()
        try:
            cursor = conn.cursor()
            cursor.execute(sql)
            reader = cursor.fetch_record_batch()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, adbc_driver_manager.Error):
                raise AdbcError(first_line(exc)) from None
            raise

        def batches() -> Iterator[pa.RecordBatch]:
            finished = False
            try:
                for batch in reader:
                    for start in range(0, batch.num_rows, batch_rows):
                        yield batch.slice(start, batch_rows)
                finished = True
            except adbc_driver_manager.Error as exc:
                raise AdbcError(first_line(exc)) from None
            finally:
                cursor.close()
                self._release(conn, finished)

        return [n.lower() for n in reader.schema.names], batches()

    def _release(self, conn: Any, healthy: bool) -> None:
        if healthy:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            warming = self._warming
        if warming is not None:
            warming.join()  # its connections land in the pool, then are closed below
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _cast(array: pa.Array, target: pa.DataType) -> pa.Array:
    source = array.type
    if source == target:
        return array
    if pa.types.is_null(source):
        return pa.nulls(len(array), type=target)
    if pa.types.is_dictionary(source):
        return _cast(array.dictionary_decode(), target)
    if pa.types.is_boolean(target) and (pa.types.is_integer(source) or pa.types.is_decimal(source)):
        return pc.not_equal(array, pa.scalar(0, type=source))
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(source):
        # A naive legacy timestamp means UTC (docs/canonical-model.md); Arrow keeps the value as is.
        return array.cast(target)
    if pa.types.is_timestamp(target) and pa.types.is_date(source):
        return array.cast(pa.timestamp("us")).cast(target)
    simple = (pa.types.is_string(target) and (pa.types.is_integer(source) or pa.types.is_large_string(source))) or (
        pa.types.is_integer(target) and (pa.types.is_integer(source) or pa.types.is_decimal(source)))
    if simple:
        return array.cast(target)
    return to_arrow(array.to_pylist(), target)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch with exactly the canonical columns and types; columns the query lacks become NULL."""
    names = [n.lower() for n in batch.schema.names]
    arrays: list[Any] = []
    for field in schema:
        if field.name in names:
            arrays.append(_cast(batch.column(names.index(field.name)), field.type))
        else:
            arrays.append(pa.nulls(batch.num_rows, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
