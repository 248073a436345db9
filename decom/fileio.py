"""Writing outputs so that a crash leaves either the old state or the new one, never half a file.

Write under a temporary name in the same folder, fsync, rename over the final name, fsync the
folder. A temporary file left by a crash is never mistaken for a result: readers look only at
final names, and the next writer of that name removes it.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from decom.errors import UserError

TMP_MARK = ".tmp-"


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_error(path: Path, exc: OSError) -> UserError:
    if exc.errno == errno.ENOSPC:
        return UserError(f"disk full while writing {path}; nothing was kept of it; free space and run again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path}: {exc.strerror}")
    return UserError(f"cannot write {path}: {exc.strerror or exc}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes `path` durably, on failure it vanishes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(path.parent, exc) from None
    for stale in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        stale.unlink(missing_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, before_commit: Callable[[], None] | None = None, *,
               compact: bool = False) -> None:
    """Write JSON atomically: indented for people, or `compact` (one line, json's C encoder, several
    times faster) for large records that only decom reads back, such as a backup part's versions."""
    indent, separators = (None, (",", ":")) if compact else (2, None)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=indent, separators=separators, sort_keys=True,
                                  default=str) + "\n", encoding="utf-8")
        if before_commit is not None:
            before_commit()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_table(path: Path, table: pa.Table, before_commit: Callable[[], None] | None = None) -> None:
    """Write a Parquet file atomically; `before_commit` runs once it is complete under its temporary name."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        if before_commit is not None:
            before_commit()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
