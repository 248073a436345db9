"""SHA-256 of archive files as they are on disk, many at once.

Large files are read with O_DIRECT into one page-aligned buffer: the bytes come from the disk,
not from a cached copy, and reading an archive does not fill the page cache with data nobody
reads twice. Filesystems without O_DIRECT (tmpfs) are read normally. Files are hashed on a few
threads (reads and hashlib release the GIL), in the order given.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

SMALL = 1 << 20          # files up to this size are hashed with one ordinary read
BLOCK = 8 << 20


def open_direct(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """os.open with O_DIRECT (past the page cache) where the filesystem supports it, else without."""
    try:
        return os.open(path, flags | getattr(os, "O_DIRECT", 0), mode)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return os.open(path, flags, mode)


def sha256_file(path: str, size: int) -> str:
    """The file's SHA-256 (`size` is its size from stat: it picks the way to read it)."""
    if size <= SMALL:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read(SMALL + 1)).hexdigest()
    fd = open_direct(path, os.O_RDONLY)
    digest = hashlib.sha256()
    buffer = mmap.mmap(-1, BLOCK)
    try:
        view = memoryview(buffer)
        while count := os.readv(fd, [buffer]):
            digest.update(view[:count])
        view.release()
    finally:
        os.close(fd)
        buffer.close()
    return digest.hexdigest()


def sha256_files(files: Sequence[tuple[str, int]], threads: int = 2) -> Iterator[str | OSError]:
    """The SHA-256 of each (path, size), in order; an OSError in place of a file that cannot be read."""
    def one(item: tuple[str, int]) -> str | OSError:
        try:
            return sha256_file(*item)
        except OSError as exc:
            return exc

    if threads <= 1 or sum(1 for _, size in files if size > SMALL) < 2:
        yield from map(one, files)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sha256") as pool:
        yield from pool.map(one, files, chunksize=1 if len(files) < 256 else 64)


_reuse = threading.local()


def read_whole(path: str, size: int) -> tuple[pa.Buffer, str]:
    """The file in memory (page-aligned, read with O_DIRECT where the filesystem has it) and its SHA-256:
    full verification hashes and decrypts from one read of the disk. The buffer is the calling
    thread's and is overwritten by its next call: use the result before reading the next file.

    A file of several blocks is hashed one block behind the reading, on a helper thread (reads and
    hashlib release the GIL): 15 parts of 64 MiB took 1.9 s read then hashed, block by block, where
    the reads alone took 1.0 s and the hashing ~0.9 s."""
    fd = open_direct(path, os.O_RDONLY)
    digest = hashlib.sha256()
    needed = -(-size // 4096) * 4096 + 4096  # one block more: room to notice a file that grew since stat
    buffer = getattr(_reuse, "buffer", None)
    if buffer is None or len(buffer) < needed:
        # one buffer per thread, reused for the next file: fresh memory costs a page fault per 4 KiB
        buffer = _reuse.buffer = mmap.mmap(-1, needed)
    view = memoryview(buffer)
    length = 0
    behind = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256-behind") if needed > BLOCK else None
    hashed: list[Future[None]] = []
    try:
        while length < needed and (count := os.readv(fd, [view[length:min(length + BLOCK, needed)]])):
            block = view[length:length + count]
            if behind is None:
                digest.update(block)
            else:  # one worker: the blocks are hashed in the order they were read
                hashed.append(behind.submit(digest.update, block))
            length += count
            if count % 4096:  # a short read is the end of the file (O_DIRECT reads whole blocks)
                break
    finally:
        os.close(fd)
        if behind is not None:
            behind.shutdown(wait=True)  # every block hashed, or given up, before the buffer is reused
    for future in hashed:
        future.result()
    del hashed
    view.release()
    return pa.py_buffer(buffer)[:length], digest.hexdigest()
