"""versions.jsonl's entries put in order across parts without holding them all.

Sorting every version at once held them all as columns (~110 bytes a version, twice while they
were copied together: 1,150 MiB at 4,000,000 versions). Instead each part's versions (at most
backup.PART_VERSIONS) are sorted on their own and written to a temporary Arrow file, a "run", in
batches of `batch` rows, and the first key of every batch is kept. Windows of keys are then cut at
every `window`-th of those first keys, in order: a window takes from every run only the batches
whose keys can fall in it, keeps the rows that do, and is sorted. Concatenated, the sorted
windows are the whole list sorted, with equal keys in the order of the parts and rows they came
from (all copies of a key fall in one window), as one stable sort of everything would give.

Memory is a window's rows, about `window` × `batch` (~30 MB by default), plus one batch being read; the
runs take ~110 bytes a version of disk, in the backup's state folder, until `close`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from decom.archive.manifest_versions import SCHEMA, sort_order
from decom.fileio import disk_error

Key = tuple[str, str]


def _at_least(table: pa.Table, key: Key) -> pa.Array:
    d, v = table.column("document_id"), table.column("version_id")
    return pc.or_(pc.greater(d, key[0]), pc.and_(pc.equal(d, key[0]), pc.greater_equal(v, key[1])))


class SortedRuns:
    """`add` each part's versions (SCHEMA), then read `windows` once; `close` removes the runs."""

    def __init__(self, folder: Path, batch: int = 4096, window: int = 64) -> None:
        self.folder, self.batch, self.window = folder, batch, window
        shutil.rmtree(folder, ignore_errors=True)   # what a run killed before `close` left
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise disk_error(folder, exc) from None
        self.runs: list[list[Key]] = []              # the first key of each batch, run by run
        self.count = 0
        self.missing = 0

    def _path(self, run: int) -> Path:
        return self.folder / f"run-{run:06d}.arrow"

    def add(self, versions: pa.Table) -> None:
        """One part's versions, sorted and written as the next run."""
        ordered = versions.take(sort_order(versions)).combine_chunks()   # one chunk: batches cut every `batch` rows
        path = self._path(len(self.runs))
        try:
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
                writer.write_table(ordered.cast(SCHEMA), max_chunksize=self.batch)
        except OSError as exc:
            raise disk_error(path, exc) from None
        starts = pa.array(range(0, ordered.num_rows, self.batch), pa.int64())
        self.runs.append(list(zip(ordered.column("document_id").take(starts).to_pylist(),
                                  ordered.column("version_id").take(starts).to_pylist(), strict=True)))
        self.count += ordered.num_rows
        self.missing += pc.sum(ordered.column("missing")).as_py() or 0

    def _rows(self, run: int, number: int, low: Key | None, high: Key | None) -> pa.Table:
        """The rows of one batch of a run with low <= key < high (None: unbounded), as their own copy."""
        with pa.OSFile(str(self._path(run))) as source:
            table = pa.Table.from_batches([pa.ipc.open_file(source).get_batch(number)])
        masks = ([_at_least(table, low)] if low else []) + ([pc.invert(_at_least(table, high))] if high else [])
        if not masks:
            return table
        return table.filter(masks[0] if len(masks) == 1 else pc.and_(*masks))

    def windows(self) -> Iterator[pa.Table]:
        """Every version, in key order, as consecutive sorted tables."""
        firsts = sorted(key for run in self.runs for key in run)
        bounds: list[Key | None] = [None, *firsts[self.window::self.window], None]
        start = [0] * len(self.runs)     # per run: the first batch that can reach into the window
        for low, high in zip(bounds, bounds[1:], strict=False):
            pieces = []
            for run, keys in enumerate(self.runs):
                number = start[run]
                while number < len(keys) and (high is None or keys[number] < high):
                    # batch `number` holds keys from keys[number] up to keys[number + 1] (inclusive)
                    if low is None or number + 1 == len(keys) or keys[number + 1] >= low:
                        pieces.append(self._rows(run, number, low, high))
                    number += 1
                start[run] = max(start[run], number - 1)   # the last batch read may reach the next window
            window = pa.concat_tables(pieces).combine_chunks() if pieces else SCHEMA.empty_table()
            del pieces
            if window.num_rows:
                yield window.take(sort_order(window))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
