"""Hand memory that is free again back to the operating system between the phases of a long step.

The backup's content parts leave the allocators (glibc's per-thread arenas, Arrow's pool) holding
the buffers of the pipeline after the last part is written; the manifest and the verification that
follow then add their own peak on top (at 5 GB of content: ~390 MiB left held, ~500 MiB peak).
Releasing it first keeps the step's peak that of its largest phase.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

import pyarrow as pa


def release_free_memory() -> None:
    """Collect garbage, then ask Arrow's pool and glibc's malloc to return free memory (best effort)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc (musl): nothing to trim
