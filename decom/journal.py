"""Append-only, hash-chained journal of every action: the evidence later stages hand to auditors.

One JSON object per line. Each entry carries the SHA-256 of the previous entry's line, so an
edited, removed or reordered entry breaks the chain at that point. Entries are written with
one write() and fsync(), so a crash leaves at most one partial last line, which the next
writer cuts off (and says so in the journal).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from decom.errors import UserError

GENESIS = "0" * 64


def operator_name() -> str:
    """Who is running decom: DECOM_OPERATOR if set (a person behind a service account), else the login."""
    explicit = os.environ.get("DECOM_OPERATOR")
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class JournalCheck:
    entries: int
    head: str
    problem: str | None  # None when the chain is intact

    @property
    def ok(self) -> bool:
        return self.problem is None


class Journal:
    """The journal file of one plan's state folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._repaired = 0
        self._host = socket.gethostname()
        self._operator = operator_name()

    def _tail(self) -> tuple[int, str]:
        """(next sequence number, hash of the last complete line); cuts a torn last line."""
        if not self.path.exists():
            return 0, GENESIS
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            torn = len(data) - cut
            with self.path.open("r+b") as handle:
                handle.truncate(cut)
                handle.flush()
                os.fsync(handle.fileno())
            data = data[:cut]
            self._repaired = torn
        lines = data.splitlines()
        if not lines:
            return 0, GENESIS
        last = lines[-1]
        try:
            seq = int(json.loads(last)["seq"]) + 1
        except (ValueError, KeyError, TypeError):
            raise UserError(f"journal {self.path}: last entry is not valid JSON; the journal was altered") from None
        return seq, _line_hash(last)

    def append(self, event: str, **details: Any) -> dict[str, Any]:
        """Write one entry and make it durable before returning it."""
        self._repaired = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seq, prev = self._tail()
        if self._repaired:
            _, prev = self._write(seq, prev, "journal_repaired",
                                  {"torn_bytes_removed": self._repaired,
                                   "reason": "the previous writer stopped in the middle of an entry"})
            seq += 1
        entry, _ = self._write(seq, prev, event, details)
        return entry

    def _write(self, seq: int, prev: str, event: str, details: dict[str, Any]) -> tuple[dict[str, Any], str]:
        entry = {
            "seq": seq,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "operator": self._operator,
            "host": self._host,
            "pid": os.getpid(),
            "event": event,
            "details": details,
            "prev": prev,
        }
        line = _canonical(entry) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry, _line_hash(line)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_bytes().splitlines() if line.strip()]

    def verify(self) -> JournalCheck:
        """Check the whole chain; the problem names the first entry that does not fit."""
        if not self.path.exists():
            return JournalCheck(0, GENESIS, None)
        prev, count = GENESIS, 0
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A crash in the middle of a write; the next writer cuts it off and journals that.
            data = data[: data.rfind(b"\n") + 1]
        for number, line in enumerate(data.splitlines(), start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                return JournalCheck(count, prev, f"line {number}: not valid JSON")
            if entry.get("prev") != prev:
                return JournalCheck(count, prev, f"line {number} (seq {entry.get('seq')}): previous-hash link "
                                                 "does not match; an entry before it was changed or removed")
            if entry.get("seq") != count:
                return JournalCheck(count, prev, f"line {number}: sequence {entry.get('seq')} where {count} "
                                                 "was expected")
            prev, count = _line_hash(line), count + 1
        return JournalCheck(count, prev, None)

    def head(self) -> str:
        return self.verify().head
