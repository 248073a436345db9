"""What a content part holds (docs/archive-format.md, section 3): one row per chunk of a version,
in these columns and this order, each chunk at most CHUNK bytes. The backup writes this schema
and the verifier and restore check against it, so both sides read it from here."""

from __future__ import annotations

import pyarrow as pa

CHUNK = 1 << 20

CONTENT_SCHEMA = pa.schema([
    ("document_id", pa.string()), ("version_id", pa.string()), ("chunk_index", pa.int32()),
    ("offset", pa.int64()), ("bytes", pa.binary()), ("chunk_sha256", pa.string()),
])
