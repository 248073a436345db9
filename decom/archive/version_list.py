"""Reading an archive's list of versions: versions.jsonl in format version 2, inside manifest.json in version 1.

Version 1 held the list in manifest.json, so the writer had to hold it whole to sign it and every
reader had to read it whole to check the signature: ~180 bytes a version, 183 MB of JSON at
1,000,000 versions, on top of the columns the entries were rendered from or are checked against.
Version 2 writes the entries as JSON Lines beside the manifest, a block at a time, and the signed
manifest records the file's path, size, SHA-256 and number of entries (`version_list`), which
binds the list to the signature just as well. Readers stream it a block at a time and compare
what they read with that record at the end (docs/archive-format.md sections 4 and 4a).

`VersionSource` gives either format's entries the same way, to decom verify, restore and the
handover package.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from decom.archive.manifest import FORMAT_VERSION, MANIFEST, SHA256_HEX, VERSION_LIST, read_manifest, recorded_mismatch
from decom.archive.manifest_index import entries
from decom.errors import ArchiveIntegrityError

BLOCK = 1 << 20
NOT_JSON = object()   # an entry (line) that does not decode: the caller reports it where it is


Finding = tuple[str, str, str]   # (file, what, kind), as decom verify reports it


class VersionSource:
    """The entries of an archive's version list, in order, decoded one at a time.

    `file` is where the entries are (manifest.json or versions.jsonl), `where(index)` names one in
    findings. After `entries()` has been run to its end, `findings()` says whether what was read is
    what the signed manifest recorded (always nothing for version 1: its list is the signed bytes).
    """

    file = MANIFEST

    def entries(self) -> Iterator[Any]:
        raise NotImplementedError

    def where(self, index: int) -> str:
        return f"versions[{index}]"

    def findings(self) -> list[Finding]:
        return []


class _Inline(VersionSource):
    """Version 1: the `versions` array inside manifest.json's text, whose '[' is at `at` (None: no array)."""

    def __init__(self, text: str, at: int | None) -> None:
        self._text, self._at = text, at

    def entries(self) -> Iterator[Any]:
        if self._at is None:
            return
        text, at = self._text, self._at
        self._text, self._at = "", None   # read once: the text is let go as soon as it is read
        for entry, _ in entries(text, at):
            yield entry


class _Lines(VersionSource):
    """Version 2: versions.jsonl, read a block at a time and hashed as it is read."""

    file = VERSION_LIST

    def __init__(self, archive_dir: Path, record: Mapping[str, Any]) -> None:
        self._path = archive_dir / VERSION_LIST
        self._record = record
        self._read: tuple[int, str, int] | None = None      # size, SHA-256, lines: once read to the end
        self._error: Finding | None = None

    def where(self, index: int) -> str:
        return f"line {index + 1}"

    def entries(self) -> Iterator[Any]:
        digest, size, lines, tail = hashlib.sha256(), 0, 0, b""
        try:
            handle = self._path.open("rb")
        except FileNotFoundError:
            self._error = (VERSION_LIST, "missing: listed in the manifest (version_list) but not in the archive "
                                         "(deleted?)", "missing")
            return
        except OSError as exc:
            self._error = (VERSION_LIST, f"cannot be read: {exc.strerror}", "missing")
            return
        with handle:
            while block := handle.read(BLOCK):
                digest.update(block)
                size += len(block)
                *whole, tail = (tail + block).split(b"\n")
                for line in whole:
                    lines += 1
                    yield _decode(line)
        if tail:   # no final newline: a truncated file, which its size and hash report too
            lines += 1
            yield _decode(tail)
        self._read = (size, digest.hexdigest(), lines)

    def findings(self) -> list[Finding]:
        if self._error is not None:
            return [self._error]
        if self._read is None:
            raise RuntimeError("findings() before the entries were read to the end")
        size, sha256, lines = self._read
        record = self._record
        mismatch = recorded_mismatch(size, sha256, record["size"], record["sha256"])
        if mismatch is not None:
            return [(VERSION_LIST, *mismatch)]
        if lines != record["entries"]:
            return [(MANIFEST, f"version_list says {record['entries']} entries but {VERSION_LIST} has {lines} "
                               "line(s)", "manifest")]
        return []


def _decode(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return NOT_JSON


def record_problem(record: Any) -> str | None:
    """Why a manifest's `version_list` member is unusable, or None."""
    if not isinstance(record, dict) or record.get("path") != VERSION_LIST:
        return f"version_list is missing or does not name {VERSION_LIST}"
    bad = [key for key in ("entries", "size") if not isinstance(record.get(key), int) or isinstance(record[key], bool)]
    if bad or not isinstance(record.get("sha256"), str) or not SHA256_HEX.fullmatch(record["sha256"]):
        return f"version_list lacks a valid {', '.join(bad) or 'sha256'}"
    return None


def version_source(archive_dir: Path, head: Mapping[str, Any], text: str = "", at: int | None = None) -> VersionSource:
    """The version list of a manifest whose top level is `head`: for version 1 its `versions` array
    (at `at` in the manifest's `text`), for version 2 the versions.jsonl its `version_list` records.
    ValueError (with the reason) when a version 2 manifest's record is unusable."""
    if head.get("format_version") == 1:
        return _Inline(text, at)
    if head.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version is {head.get('format_version')!r}; "
                         f"decom reads versions 1 and {FORMAT_VERSION}")
    problem = record_problem(head.get("version_list"))
    if problem is not None:
        raise ValueError(problem)
    return _Lines(archive_dir, head["version_list"])


def checked_entries(archive_dir: Path, head: Mapping[str, Any], text: str = "", at: int | None = None
                    ) -> Iterator[dict[str, Any]]:
    """Every entry of the version list (objects only), for a reader that trusts the signed manifest
    `head` already (its top level; a version 1 manifest parsed whole may hold its `versions` in it);
    at the end ArchiveIntegrityError when the list is not the one it records."""
    if head.get("format_version") == 1 and isinstance(head.get("versions"), list):
        yield from (v for v in head["versions"] if isinstance(v, dict))
        return
    try:
        source = version_source(archive_dir, head, text, at)
    except ValueError as exc:
        raise ArchiveIntegrityError(f"{archive_dir / MANIFEST}: {exc}") from None
    for entry in source.entries():
        if isinstance(entry, dict):
            yield entry
    for file, what, _ in source.findings():
        raise ArchiveIntegrityError(f"{archive_dir}: {file}: {what}; run decom verify")


def archive_versions(archive_dir: Path) -> list[dict[str, Any]]:
    """Every version entry of an archive, either format version, checked against the manifest's record
    of the list (the manifest's signature is not checked here: decom verify does that)."""
    manifest, _ = read_manifest(archive_dir)
    return list(checked_entries(archive_dir, manifest))
