"""How decom's process uses memory: glibc's malloc tuned for streaming, Arrow allocating through it,
and memory that is free again handed back to the operating system between the phases of a long step.

The backup's content parts leave the allocators (glibc's per-thread arenas, Arrow's pool) holding
the buffers of the pipeline after the last part is written; the manifest and the verification that
follow then add their own peak on top (at 5 GB of content: ~390 MiB left held, ~500 MiB peak).
Releasing it first keeps the step's peak that of its largest phase.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from typing import Any

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 32 << 20   # glibc's largest: blocks up to 32 MiB come from the heap, not from mmap
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of a heap before it is given back
ARENA_MAX = 2               # malloc arenas shared by all threads (glibc's default: 8 per core)


def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None  # not glibc (musl): nothing to tune


def tune_allocator() -> bool:
    """Let glibc's malloc reuse the memory that streaming work frees, instead of returning it to the
    kernel and asking for fresh pages for the next batch. Process-wide, so the CLI calls it once at
    start (library users may too). Returns whether it applied (glibc only).

    The ADBC driver builds each fetched batch (8-16 MiB) in buffers it grows with realloc. With
    glibc's defaults those come from mmap and go back with munmap, so every byte fetched lands on a
    page the kernel must find and zero again: about 1 s of CPU per GiB on our 2-core VMs (a 983 MB
    backup, alternating runs: `minflt` 260,000-340,000 -> 107,000, system time 1.75-2.24 s ->
    1.30-1.57 s, peak RSS 421-440 -> 382-403 MiB). More arenas kept more: 4 gave 452 MiB.
    """
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX)))


ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def use_system_pool_for_arrow() -> None:
    """Make Arrow allocate through malloc (its "system" pool) unless the user chose a pool with
    ARROW_DEFAULT_MEMORY_POOL.

    pyarrow's default pool, mimalloc, hands freed memory back to the kernel after a few ms, so the
    Parquet writer's page and encryption buffers landed on fresh (huge) pages that the kernel
    zeroed again for every part: `perf` put 6-7 % of a 983 MB backup's CPU in clear_page_erms.
    Through glibc's malloc tuned above, those buffers are reused. Ten alternating backups: wall
    5.5-6.1 -> 5.0-5.3 s, system time 1.2-1.5 -> 0.83-0.94 s, peak RSS 388-415 -> 335-353 MiB;
    verify --full did not get slower (system time 0.75-1.27 -> 0.71-0.87 s).
    The variable is read when Arrow first makes its default pool, so it is set before pyarrow is
    imported; if it already is, the pool is switched for pyarrow's own calls."""
    if os.environ.setdefault(ARROW_POOL_VARIABLE, "system") == "system" and "pyarrow" in sys.modules:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


_PROCESS: dict[str, Any] = {"owned": False, "frozen": False, "gc_threshold": None}
# Container objects allocated between two young collections while the CLI imports its modules and
# reads the plan (CPython's default: 700). Start-up makes hundreds of thousands of objects and no
# garbage worth a collection: at 700, collections took ~0.05 s of a backup's ~0.45 s start-up
# (12 interleaved runs each, median of imports and plan load 0.447 -> 0.410 s). The old pace comes
# back when the start-up objects are frozen (freeze_startup_objects, at a stage's start).
START_UP_GEN0 = 20_000


def own_process() -> None:
    """The CLI owns its process (a library caller's process is not ours to tune): malloc is tuned,
    Arrow allocates through it, the garbage collector waits longer between young collections while
    modules load (START_UP_GEN0), and stages may freeze start-up objects (freeze_startup_objects).
    Commands without a stage (verify, restore) keep the longer wait: it only delays freeing objects
    in reference cycles, which their streaming code does not make in numbers."""
    _PROCESS["owned"] = True
    if _PROCESS["gc_threshold"] is None:
        _PROCESS["gc_threshold"] = usual = gc.get_threshold()
        gc.set_threshold(START_UP_GEN0, *usual[1:])
    if tune_allocator():
        use_system_pool_for_arrow()


def freeze_startup_objects() -> None:
    """In a process decom owns, the first call moves every object alive (imports, plan, engine) out
    of the garbage collector's reach: they live to the end, and each full collection walked them again
    (a 983 MB backup: 0.118 -> 0.054 s in the collector, on the thread that feeds the writer).
    Later calls do nothing: a stage's context and caches, made after it, stay collectable, so a
    finished stage's reference cycles still go. In a library caller's process it does nothing.
    From here the collector runs at its pace from before own_process."""
    if _PROCESS["owned"] and not _PROCESS["frozen"]:
        _PROCESS["frozen"] = True
        gc.freeze()
        gc.set_threshold(*_PROCESS["gc_threshold"])  # the stage's own objects: the usual pace again


def release_free_memory() -> None:
    """Collect garbage, then ask Arrow's pool and glibc's malloc to return free memory (best effort)."""
    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
