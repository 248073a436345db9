"""Restore document versions from an archive, without the source system.

The manifest's signature is checked first against a signer key trusted from elsewhere; every
archive file read is checked against the manifest's size and SHA-256 before it is decrypted; every
restored version is checked against the manifest's SHA-256 and size before it gets its final name.
Each version lands at `<to>/<document_id>/<version_no>-<file_name>`, written under a temporary name
and linked into place, so an existing file is never overwritten and a failed restore leaves no
half-written file.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from decom.archive.keys import fingerprint
from decom.archive.manifest import (
    FORMAT,
    MANIFEST,
    SIGNATURE,
    VERSION_LIST,
    manifest_bytes,
    not_a_manifest,
    signature_problem,
)
from decom.archive.manifest_index import split_versions
from decom.archive.pme import ArchiveKeyError, open_encrypted, read_all
from decom.archive.verify import check_signer
from decom.archive.version_list import checked_entries, version_source
from decom.archive.version_scan import scan
from decom.errors import ArchiveIntegrityError, UserError
from decom.fileio import fsync_dir
from decom.progress import QUIET, Progress

NAME_BYTES = 200
DATA_BATCH_ROWS = 65_536  # rows of a data file read at once (content parts keep read_all's 64)
_TMP = ".restore-tmp-"


def safe_name(text: object, fallback: str) -> str:
    """One path component: no separators, no `..`, no control characters, at most 200 UTF-8 bytes."""
    name = "".join("_" if ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(text or ""))
    while ".." in name:
        name = name.replace("..", "_")
    name = name.strip()
    if name in ("", "."):
        name = fallback
    while len(name.encode()) > NAME_BYTES:
        name = name[:-1]
    return name


@dataclass(slots=True)
class _Target:
    """One version to restore. `restore --all` holds one per version of the archive (1,000,000 and
    more), so it keeps only what the manifest says of its content, and its hasher and file exist
    only from its first chunk to its last."""

    document_id: str
    version_id: str
    sha256: str                    # what the manifest says: hash, size in bytes, chunks
    size: int
    chunks: int
    part: str
    path: str
    tmp: str | None = None
    handle: IO[bytes] | None = None
    digest: Any = None
    written: int = 0               # what arrived so far: bytes and chunks
    arrived: int = 0
    done: bool = False             # checked and given its final name


def _read_manifest_head(archive: Path) -> tuple[dict[str, Any], str, int | None, bytes]:
    """As read_manifest, without decoding the versions: (top level, text, where `versions` starts, bytes)."""
    data = manifest_bytes(archive)
    try:
        text = data.decode("utf-8")
        head, at = split_versions(text)
    except (ValueError, UnicodeDecodeError):
        raise not_a_manifest(archive / MANIFEST, data) from None
    if head.get("format") != FORMAT:
        raise UserError(f"{archive / MANIFEST} is not a decom archive manifest")
    return head, text, at, data


class _Archive:
    def __init__(self, archive: Path, private: X25519PrivateKey, signer: Ed25519PublicKey | str) -> None:
        self.dir = archive
        if not archive.is_dir():
            raise UserError(f"{archive} is not a folder")
        self.manifest, self._text, self._versions_at, raw = _read_manifest_head(archive)
        reason = signature_problem(archive, raw, check_signer(signer), self.manifest)
        del raw
        if reason is not None:
            raise ArchiveIntegrityError(f"refusing to restore from {archive}: {SIGNATURE}: {reason}")
        self.id = str(self.manifest.get("archive_id"))
        self.private = private
        mine = fingerprint(private.public_key())
        recipients = self.manifest.get("recipients") or []
        if mine not in recipients:
            raise UserError(f"wrong key: {mine} is not a recipient of {archive} "
                            f"(recipients: {', '.join(map(str, recipients))})")
        self.files = {f["path"]: f for f in self.manifest.get("files", []) if isinstance(f, dict)}

    def versions(self) -> Iterator[dict[str, Any]]:
        """The archive's version entries, decoded one at a time (a dict each only while looked at);
        ArchiveIntegrityError once read to the end if the list is not the one the manifest signs."""
        yield from checked_entries(self.dir, self.manifest, self._text, self._versions_at)

    def forget_versions(self) -> None:
        self._text, self._versions_at = "", None

    def open(self, path: str) -> pq.ParquetFile:
        """Open a listed file after checking its size and SHA-256 against the manifest."""
        entry = self.files.get(path)
        if entry is None:
            raise ArchiveIntegrityError(f"{self.dir}: the manifest lists no {path}")
        file = self.dir / path
        try:
            size = file.stat().st_size
            with file.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except FileNotFoundError:
            raise ArchiveIntegrityError(f"{self.dir}: {path} is missing") from None
        if size != entry["size"] or digest != entry["sha256"]:
            raise ArchiveIntegrityError(f"{self.dir}: {path} does not match the manifest (size {size} vs "
                                        f"{entry['size']}, SHA-256 {digest} vs {entry['sha256']}); run decom verify")
        try:
            return open_encrypted(file, self.private, self.id, path)
        except ArchiveKeyError as exc:
            if exc.kind == "wrong_key":
                raise UserError(f"{self.dir}: {path}: wrong key: {exc}") from None
            raise ArchiveIntegrityError(f"{self.dir}: {path}: {exc}") from None

    def rows(self, entity: str, columns: list[str], key: str, values: set[str]) -> Iterator[pa.RecordBatch]:
        """The rows of a data file whose `key` is one of `values`, in batches (never the whole file)."""
        for batch in read_all(self.open(f"data/{entity}.parquet"), columns, batch_size=DATA_BATCH_ROWS):
            yield _matching(batch, key, values)


def _matching(batch: pa.RecordBatch, key: str, values: set[str]) -> pa.RecordBatch:
    """The rows of `batch` whose `key` is in `values`. A Python set, not pc.is_in: is_in builds its
    hash table of `values` again for every batch, and `restore --all` of 1,000,000 versions spent
    over 10 minutes on that before writing a file (data/versions.parquet read 64 rows at a time)."""
    return batch.filter(pa.array([k in values for k in batch.column(key).to_pylist()], pa.bool_()))


def _documents_of_cases(archive: _Archive, case_ids: list[str]) -> set[str]:
    found = {r["case_id"]: r["document_id"]
             for batch in archive.rows("cases", ["case_id", "document_id"], "case_id", set(case_ids))
             for r in batch.to_pylist()}
    unknown = [c for c in case_ids if c not in found]
    if unknown:
        raise UserError(f"case(s) not in the archive: {', '.join(unknown[:10])}")
    return {d for c in case_ids if (d := found[c]) is not None}


Chosen = tuple[str, str, str, int, int, str]  # document id, version id, SHA-256, size, chunks, part


def _chosen(entry: dict[str, Any], parts: dict[str, str]) -> Chosen:
    """What restoring needs of a manifest entry, as a tuple (a dict of six keys took ~1 KB a version);
    the parts' names are shared, not one copy per version."""
    part = str(entry.get("part"))
    return (str(entry.get("document_id")), str(entry.get("version_id")), str(entry.get("sha256")),
            int(entry.get("size") or 0), int(entry.get("chunks") or 0), parts.setdefault(part, part))


def _choose(archive: _Archive, document_ids: list[str], case_ids: list[str], everything: bool) -> list[Chosen]:
    """The manifest's versions to restore. Only those are kept: the manifest of a large archive lists
    millions of versions."""
    wanted = None if everything else set(document_ids) | (_documents_of_cases(archive, case_ids) if case_ids
                                                          else set())
    found = _scanned(archive, wanted)
    if found is None:  # format 1, or a list the fast reader will not take: entry by entry
        found = _read_one_by_one(archive, wanted)
    archive.forget_versions()
    chosen, known = found
    unknown = [d for d in document_ids if d not in known]
    if unknown:
        raise UserError(f"document(s) with no version in the archive: {', '.join(unknown[:10])}")
    return chosen


def _scanned(archive: _Archive, wanted: set[str] | None) -> tuple[list[Chosen], set[str]] | None:
    """(the present versions of the `wanted` documents, or all when None; the wanted documents the list
    names, none when None) by Arrow's reader with verify's checks of every entry but the Merkle root (version_scan.py):
    at 1,000,000 versions ~1 s where entry by entry took ~3.5 s. None when that reader gives up, or
    the archive has no versions.jsonl."""
    try:  # verify's own test of which list an archive has: versions.jsonl with a usable record, or not
        if version_source(archive.dir, archive.manifest).file != VERSION_LIST:
            return None
    except ValueError:
        return None   # the entry-by-entry reader reports it
    parts: dict[str, str] = {}
    chosen: list[Chosen] = []

    def keep(batch: pa.RecordBatch) -> None:
        if wanted is not None:
            batch = _matching(batch, "document_id", wanted)
        columns = [batch.column(name).to_pylist() for name in ("document_id", "version_id", "sha256", "size",
                                                                "chunks", "part")]
        chosen.extend((d, v, h, z, c, parts.setdefault(p, p)) for d, v, h, z, c, p in zip(*columns, strict=True))

    content = {path for path, entry in archive.files.items() if entry.get("kind") == "content"}
    scanned = scan(archive.dir, archive.manifest["version_list"], content, keep, merkle=False)
    if scanned is None:
        return None
    if wanted is None:  # everything: no document was asked for by name (and --all holds no set of them all)
        return chosen, set()
    return chosen, {c[0] for c in chosen} | {d for d, _ in scanned.missing if d in wanted}


def _read_one_by_one(archive: _Archive, wanted: set[str] | None) -> tuple[list[Chosen], set[str]]:
    """As _scanned, reading the list an entry at a time; ArchiveIntegrityError at its end when it is
    not the list the manifest signs."""
    parts: dict[str, str] = {}
    known: set[str] = set()
    chosen = []
    for version in archive.versions():
        if wanted is not None:
            if version.get("document_id") not in wanted:
                continue
            known.add(version["document_id"])
        if not version.get("missing"):
            chosen.append(_chosen(version, parts))
    return chosen, known


def _targets(archive: _Archive, chosen: list[Chosen], to: Path) -> list[_Target]:
    """The chosen versions' targets, in the same order. Empties `chosen` as it goes (at 1,000,000
    versions the list and the targets would otherwise both be held)."""
    names: dict[tuple[str, str], tuple[Any, Any]] = {}
    for batch in archive.rows("versions", ["version_id", "document_id", "version_no", "file_name"], "version_id",
                              {c[1] for c in chosen}):
        columns = [batch.column(name).to_pylist() for name in ("document_id", "version_id", "version_no", "file_name")]
        names.update(((d, v), (n, f)) for d, v, n, f in zip(*columns, strict=True))
    targets: list[_Target] = []
    used: set[str] = set()
    existing: list[str] = []
    chosen.reverse()  # popped from the end, in the manifest's order
    while chosen:
        document_id, version_id, sha256, size, chunks, part = chosen.pop()
        number, file_name = names.pop((document_id, version_id), (None, None))
        folder = os.path.join(to, safe_name(document_id, "document"))
        prefix = str(number) if number is not None else safe_name(version_id, "version")
        path = os.path.join(folder, safe_name(f"{prefix}-{safe_name(file_name, 'content')}", "content"))
        if path in used:  # two versions with one number and name, or ids that clean up alike
            path = os.path.join(folder, safe_name(f"{prefix}-{safe_name(version_id, 'v')}-"
                                                  f"{safe_name(file_name, 'content')}", "content"))
        used.add(path)
        if os.path.lexists(path):
            existing.append(path)
        targets.append(_Target(document_id, version_id, sha256, size, chunks, part, path))
    if existing:
        raise UserError(f"{existing[0]} already exists" + (f" (and {len(existing) - 1} more)" if len(existing) > 1
                                                           else "") + "; restore never overwrites: choose another --to")
    return targets


def _publish(target: _Target) -> None:
    """Give a verified temporary file its final name, never replacing a file that appeared meanwhile."""
    assert target.tmp is not None
    try:
        os.link(target.tmp, target.path)
    except FileExistsError:
        raise UserError(f"{target.path} appeared while restoring; restore never overwrites") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(target.path):  # a filesystem without hard links: check, then rename
            raise UserError(f"{target.path} appeared while restoring; restore never overwrites") from None
        os.rename(target.tmp, target.path)
    else:
        os.unlink(target.tmp)
    target.tmp = None
    fsync_dir(Path(target.path).parent)


def _start(target: _Target) -> IO[bytes]:
    path = Path(target.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:NAME_BYTES - 30]}{_TMP}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    target.tmp = str(tmp)
    target.handle = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    target.digest = hashlib.sha256()
    return target.handle


def _finish(archive: _Archive, part: str, target: _Target) -> None:
    label = f"{part}: version {target.version_id} of document {target.document_id}"
    if target.handle is None:
        raise ArchiveIntegrityError(f"{archive.dir}: {label} is not in its part")
    target.handle.flush()
    os.fsync(target.handle.fileno())
    target.handle.close()
    target.handle = None
    got = target.digest.hexdigest()
    target.digest = None
    if got != target.sha256 or target.written != target.size or target.arrived != target.chunks:
        raise ArchiveIntegrityError(f"{archive.dir}: {label}: restored {target.written} bytes with SHA-256 {got} in "
                                    f"{target.arrived} chunk(s); the manifest says {target.size} bytes, "
                                    f"{target.sha256}, {target.chunks} chunk(s)")
    _publish(target)
    target.done = True


def _restore_part(archive: _Archive, part: str, targets: list[_Target], bar: Any) -> None:
    by_key = {(t.document_id, t.version_id): t for t in targets}
    wanted = {t.version_id for t in targets}
    for batch in read_all(archive.open(part)):
        for row in _matching(batch, "version_id", wanted).to_pylist():
            target = by_key.get((row["document_id"], row["version_id"]))
            if target is None:
                continue
            data = row["bytes"] or b""
            if row["chunk_index"] != target.arrived or row["offset"] != target.written \
                    or hashlib.sha256(data).hexdigest() != row["chunk_sha256"]:
                raise ArchiveIntegrityError(f"{archive.dir}: {part}: chunk {row['chunk_index']} of version "
                                            f"{row['version_id']} is damaged or out of place")
            if target.done:
                raise ArchiveIntegrityError(f"{archive.dir}: {part}: version {row['version_id']} has more chunks "
                                            f"than the manifest's {target.chunks}")
            handle = target.handle or _start(target)
            handle.write(data)
            target.digest.update(data)
            target.written += len(data)
            target.arrived += 1
            bar.update(len(data))
            if target.arrived == target.chunks:  # its last chunk: close it now, not at the
                _finish(archive, part, target)   # part's end (50,000 files open: EMFILE)
    for target in targets:
        if not target.done:
            _finish(archive, part, target)


def restore(archive_dir: Path | str, *, private_key: X25519PrivateKey, signer: Ed25519PublicKey | str, to: Path,
            document_ids: Iterable[str] = (), case_ids: Iterable[str] = (), everything: bool = False,
            progress: Progress = QUIET) -> list[Path]:
    """Write the chosen versions under `to`, each checked against the signed manifest; the paths written.

    Versions the source had no content for (`missing` in the manifest) are not written.
    """
    documents, cases = list(document_ids), list(case_ids)
    if not (documents or cases or everything):
        raise UserError("say what to restore: one or more document ids, case ids, or everything")
    archive = _Archive(Path(archive_dir), private_key, signer)
    targets = _targets(archive, _choose(archive, documents, cases, everything), Path(to))
    by_part: dict[str, list[_Target]] = {}
    for target in targets:
        by_part.setdefault(target.part, []).append(target)
    try:
        with progress.bar(sum(t.size for t in targets), "restoring", unit="B") as bar:
            for part in sorted(by_part):
                _restore_part(archive, part, by_part[part], bar)
    finally:
        for target in targets:
            if target.handle is not None:
                target.handle.close()
            if target.tmp is not None:
                with suppress(FileNotFoundError):
                    os.unlink(target.tmp)
    return [Path(t.path) for t in targets]
