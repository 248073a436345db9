"""One run of a plan at a time, with a lock that dies with its holder.

Always an flock() on a file in the state folder; when the checkpoint store is a shared server
(PostgreSQL advisory lock, MariaDB/MySQL GET_LOCK) also a session lock there, so runs from other
machines or folders sharing the store are refused too. The kernel or the server releases each
when the process dies, so a crashed run never leaves the plan stuck.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from decom.checkpoint import CheckpointStore
from decom.errors import UserError
from decom.journal import operator_name

SERVER_LOCK_DIALECTS = {"postgresql", "mysql", "mariadb"}


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "operator": operator_name(),
            "since": datetime.now(UTC).isoformat(timespec="seconds")}


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (operator {holder.get('operator')}, "
            f"since {holder.get('since')})")


class RunLock:
    """Context manager: hold the plan's run lock or raise a UserError naming who holds it."""

    def __init__(self, plan_name: str, state_dir: Path, store: CheckpointStore) -> None:
        self.plan_name = plan_name
        self.path = state_dir / "run.lock"
        self.store = store
        self._fd: int | None = None
        self._server_conn: sa.Connection | None = None
        self._server_engine: sa.Engine | None = None

    def _refuse(self, holder: dict[str, Any] | None) -> UserError:
        return UserError(f"plan {self.plan_name!r} is already being run by {_describe(holder)}; "
                         "wait for it to finish (a crashed run releases the lock by itself)")

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refuse(self._read_holder()) from None
        self._fd = fd
        if self.store.dialect in SERVER_LOCK_DIALECTS:
            self._lock_server()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        os.fsync(fd)
        return self

    def _lock_server(self) -> None:
        digest = hashlib.sha256(f"decom:{self.plan_name}".encode()).digest()
        key: int | str
        if self.store.dialect == "postgresql":
            sql, key = "SELECT pg_try_advisory_lock(:key)", int.from_bytes(digest[:8], "big", signed=True)
        else:
            sql, key = "SELECT GET_LOCK(:key, 0)", f"decom:{digest.hex()[:48]}"
        # Its own unpooled connection: closing it must end the session, which releases the lock.
        self._server_engine = sa.create_engine(self.store.url, poolclass=sa.pool.NullPool)
        conn = self._server_engine.connect()
        got = conn.execute(sa.text(sql), {"key": key}).scalar()
        conn.commit()
        if not got:
            conn.close()
            self._server_engine.dispose()
            self._release_file()
            running = [r for r in self.store.runs(self.plan_name) if r["status"] == "running"]
            holder = running[-1] if running else None
            raise self._refuse({"pid": holder["pid"], "host": holder["host"], "operator": holder["operator"],
                                "since": holder["started_at"]} if holder else None)
        self._server_conn = conn

    def _read_holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _release_file(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server_conn is not None:
            self._server_conn.close()  # ending the session releases the server lock
            self._server_conn = None
        if self._server_engine is not None:
            self._server_engine.dispose()
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        self._release_file()
