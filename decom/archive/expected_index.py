"""What each content part must hold, for the full verification's content checks.

The index is what a full verification keeps of every version (~90 bytes a version as Arrow
columns: the ids, the SHA-256 as 32 bytes, size and chunks). Kept whole in memory it would grow
with the archive (over 400 MiB at 5,000,000 versions). So the content parts, in manifest order,
are split into ranges of about ROWS_IN_MEMORY versions each (from the entry count the manifest
records), and when there is more than one range each range's rows go to its own temporary Arrow
file as the list is read. The content pass, which checks parts in manifest order, then loads one
range at a time (two at a range's edge, where the two checking threads may straddle it): memory is
flat in the number of versions. An archive of up to ROWS_IN_MEMORY versions (or of format
version 1, whose entry count is not recorded) keeps its one range in memory and writes nothing.

The temporary files are in a folder under the system's temporary folder (TMPDIR), removed by
`close`; they hold nothing that versions.jsonl does not already show in clear.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from decom.archive.verify_files import Expected
from decom.errors import UserError
from decom.memory import release_free_memory

Key = tuple[str, str]


class _Range:
    """One range of parts: rows waiting to be written, and the file they go to once there are any."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.file = ""
        self.pending: list[pa.RecordBatch] = []
        self.rows = 0
        self.writer: pa.ipc.RecordBatchFileWriter | None = None   # open while the list is read
        self.written = False


class _Loaded:
    """A range's rows sorted by part, and each part's run of rows (the path is not kept per version)."""

    def __init__(self, table: pa.Table) -> None:
        self.bounds: dict[str, tuple[int, int]] = {}
        table = table.combine_chunks()  # one contiguous copy, then one sorted copy: cheaper to take from
        order = pc.sort_indices(table, [("part", "ascending")])
        parts = table.column("part").chunk(0).take(order) if table.num_rows else pa.array([], pa.string())
        self.table = table.drop_columns(["part"]).take(order)
        del table
        if len(parts):
            runs = pc.run_end_encode(parts)
            first = 0
            for part, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
                self.bounds[part], first = (first, end), end

    def part_of(self, key: Key) -> str | None:
        rows = pc.indices_nonzero(pc.and_(pc.equal(self.table.column("document_id"), key[0]),
                                          pc.equal(self.table.column("version_id"), key[1])))
        if not len(rows):
            return None
        row = rows[0].as_py()
        return next(part for part, (first, end) in self.bounds.items() if first <= row < end)


class ExpectedIndex:
    """Built with `add` / `add_batch`, then `finish`; `for_part` gives one part's versions as the
    content check wants them (safe from several threads), `part_of` where a version belongs (for
    findings). `close` removes the temporary files. `parts`: the content parts in manifest order;
    `entries`: how many versions the list holds, when the manifest records it."""

    ROWS_IN_MEMORY = 1 << 18
    _FLUSH = 8192
    SCHEMA = pa.schema([("part", pa.string()), ("document_id", pa.string()), ("version_id", pa.string()),
                        ("sha256", pa.binary(32)), ("size", pa.int64()), ("chunks", pa.int64())])

    def __init__(self, parts: Sequence[str] = (), entries: int | None = None) -> None:
        self._columns: list[list[Any]] = [[] for _ in self.SCHEMA]
        wanted = math.ceil(entries / self.ROWS_IN_MEMORY) if entries else 1
        per_range = max(1, math.ceil(len(parts) / max(1, wanted)))
        self._parts = pa.array(parts, pa.string())
        self._per_range = per_range
        count = max(1, math.ceil(len(parts) / per_range))
        self._folder: tempfile.TemporaryDirectory[str] | None = None   # made on the first write
        self._ranges = [_Range(n) for n in range(count)]
        self._loaded: OrderedDict[int, _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def spilled(self) -> bool:
        """Whether the ranges go to temporary files (more than one range); nothing is written until
        versions are added, so a quick verification, which adds none, makes no folder."""
        return len(self._ranges) > 1

    def _guard(self, write: Callable[[], None]) -> None:
        try:
            write()
        except OSError as exc:
            folder = self._folder.name if self._folder else tempfile.gettempdir()
            raise UserError(f"cannot write the full verification's temporary index in {folder}: "
                            f"{exc.strerror or exc} (TMPDIR sets the folder; it needs about 100 bytes a "
                            "version)") from None

    # --- building ----------------------------------------------------------------------------------

    def add(self, part: str, key: Key, expected: Expected) -> None:
        """Add one version; `expected.sha256` must be 64 lowercase hex digits (verify checks it first)."""
        sha256, size, chunks = expected
        for column, value in zip(self._columns, (part, *key, bytes.fromhex(sha256), size, chunks), strict=True):
            column.append(value)
        if len(self._columns[0]) >= self._FLUSH:
            self._flush()

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Add versions already as columns (SCHEMA's names and types, SHA-256 as hex), as
        version_scan.py reads them."""
        at = self.SCHEMA.get_field_index("sha256")
        digests = pa.array(map(bytes.fromhex, batch.column(at).to_pylist()), pa.binary(32), size=batch.num_rows)
        self._route(batch.set_column(at, self.SCHEMA.field(at), digests).cast(self.SCHEMA))

    def _flush(self) -> None:
        if self._columns[0]:
            self._route(pa.RecordBatch.from_arrays(
                [pa.array(c, f.type) for c, f in zip(self._columns, self.SCHEMA, strict=True)], schema=self.SCHEMA))
            self._columns = [[] for _ in self.SCHEMA]

    def _route(self, batch: pa.RecordBatch) -> None:
        """Each row to its part's range."""
        if len(self._ranges) == 1:
            self._ranges[0].pending.append(batch)
            return
        where = pc.divide(pc.index_in(batch.column("part"), value_set=self._parts), self._per_range)
        if where.null_count:  # a part not listed: verify reports such entries and never adds them
            batch, where = batch.filter(pc.is_valid(where)), where.drop_null()
        order = pc.sort_indices(where)
        batch, runs = batch.take(order), pc.run_end_encode(where.take(order))
        first = 0
        for number, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
            spill = self._ranges[number]
            spill.pending.append(batch.slice(first, end - first))
            spill.rows, first = spill.rows + end - first, end
            if spill.rows >= self._FLUSH:
                self._write(spill)

    def _write(self, spill: _Range) -> None:
        def write() -> None:
            if self._folder is None:
                self._folder = tempfile.TemporaryDirectory(prefix="decom-verify-index-")
            if spill.writer is None:
                spill.file = os.path.join(self._folder.name, f"range-{spill.number}.arrow")
                spill.writer, spill.written = pa.ipc.new_file(spill.file, self.SCHEMA), True
            spill.writer.write_table(pa.Table.from_batches(spill.pending, self.SCHEMA).combine_chunks())
        self._guard(write)
        spill.pending, spill.rows = [], 0

    def finish(self) -> None:
        """No more versions: the last rows are written, the files closed (or the one range sorted)."""
        self._flush()
        if len(self._ranges) == 1:
            self._loaded[0] = _Loaded(pa.Table.from_batches(self._ranges[0].pending, self.SCHEMA))
            self._ranges[0].pending = []
            return
        for spill in self._ranges:
            if spill.pending:
                self._write(spill)
            if spill.writer is not None:
                self._guard(spill.writer.close)
                spill.writer = None

    def close(self) -> None:
        """Remove the temporary files (the index is then empty)."""
        for spill in self._ranges:
            if spill.writer is not None:  # finish() was not reached (an error); the folder goes anyway
                with contextlib.suppress(OSError):
                    spill.writer.close()
                spill.writer = None
        self._loaded.clear()
        if self._folder is not None:
            self._folder.cleanup()

    # --- reading -----------------------------------------------------------------------------------

    def _range_of(self, part: str) -> int | None:
        if len(self._ranges) == 1:
            return 0
        found = pc.index_in(pa.scalar(part, pa.string()), value_set=self._parts).as_py()
        return None if found is None else found // self._per_range

    def _read(self, number: int) -> _Loaded:
        spill = self._ranges[number]
        if not spill.written:
            return _Loaded(self.SCHEMA.empty_table())
        with pa.memory_map(spill.file) as source:
            return _Loaded(pa.ipc.open_file(source).read_all())

    def _load(self, number: int) -> _Loaded:
        """The range's rows, from memory or its file; the two most recently used ranges stay loaded."""
        with self._lock:
            loaded = self._loaded.get(number)
            if loaded is None:
                loaded = self._read(number)
                self._loaded[number] = loaded
                if len(self._loaded) > 2:
                    self._loaded.popitem(last=False)
                    release_free_memory()  # else each range's columns leave holes in the heap
            self._loaded.move_to_end(number)
            return loaded

    def for_part(self, part: str) -> dict[Key, Expected]:
        number = self._range_of(part)
        if number is None:
            return {}
        loaded = self._load(number)
        first, end = loaded.bounds.get(part, (0, 0))
        rows = loaded.table.slice(first, end - first).to_pydict()
        return {(d, v): Expected(h.hex(), s, c) for d, v, h, s, c in zip(
            rows["document_id"], rows["version_id"], rows["sha256"], rows["size"], rows["chunks"], strict=True)}

    def _every_range(self) -> Iterator[_Loaded]:
        for number in range(len(self._ranges)):
            with self._lock:
                loaded = self._loaded.get(number)
            yield loaded if loaded is not None else self._read(number)

    def part_of(self, key: Key) -> str | None:
        """The part the manifest assigns a version to (None: not listed); a scan, for findings only."""
        return next((part for loaded in self._every_range() if (part := loaded.part_of(key)) is not None), None)
