"""Verify an archive without the source system: docs/archive-format.md section 8.

Quick (no key needed): the signature against a signer key trusted from elsewhere, every listed file
present with its size and SHA-256, nothing unlisted, `seq` 1..n, versions.jsonl as the manifest
records it (its entries well-formed and in order: version_scan.py, else version_list.py entry by
entry to name a fault) and the Merkle root over them (format version 1: the `versions` array).
With a recipient's private key also every footer (which proves the file's key binding) and its row
count. Full (key needed): every page decrypted (its AES-GCM tag checked), every chunk hash, every
version reassembled and compared with the manifest, and every content part holding exactly the
versions the manifest assigns to it.

Every problem names the file it is about (relative to the archive; "-" for the archive as a whole)
and has a kind, for scripts:

    signature    manifest.sig missing, damaged, by another key, or not matching manifest.json
    manifest     manifest.json damaged or inconsistent (seq, paths, versions, Merkle root), or an
                 entry of versions.jsonl malformed
    missing      a listed file is not there
    untracked    a file is there that the manifest does not list
    size, sha256 a file's bytes differ from what the manifest records
    missing_key  a check needs a recipient's private key and none was given
    wrong_key    the key given is not a recipient (of the archive, or of this file)
    binding      the file's key is bound to another archive or path (moved, swapped, put back)
    corrupt      a footer or page does not decrypt or fails its checksum
    rows         a file holds another number of rows than the manifest says
    content      reassembled content differs from the manifest (chunk, version, part)

Quick verification hashes files in blocks. Full verification reads each file once, two files at a
time, and holds a file of up to 256 MiB in memory (content parts are 64 MiB by default) to hash and
decrypt it from that one read; larger files are read twice. Pages are decrypted in batches and each
version is hashed as its chunks stream past (decom/archive/verify_files.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from decom.archive.expected_index import ExpectedIndex
from decom.archive.filehash import sha256_files
from decom.archive.keys import fingerprint
from decom.archive.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SHA256_HEX,
    SIGNATURE,
    VERSION_LIST,
    MerkleRoot,
    recorded_mismatch,
    signature_problem,
)
from decom.archive.manifest_index import split_versions
from decom.archive.pme import ArchiveKeyError, open_encrypted
from decom.archive.verify_files import Expected, check_file, footer_findings, version_name
from decom.archive.version_list import NOT_JSON, VersionSource, version_source
from decom.archive.version_scan import scan
from decom.errors import UserError
from decom.memory import release_free_memory
from decom.progress import QUIET, Progress

FORMAT_VERSIONS = (1, FORMAT_VERSION)   # version 1 archives (versions inside manifest.json) stay readable
_CONTENT_PATH = re.compile(r"content/part-[0-9]{6}\.parquet")
_DATA_PATH = re.compile(r"data/([A-Za-z0-9_][A-Za-z0-9._-]*)\.parquet")
_SIGNER_FP = re.compile(r"ed25519:[0-9a-f]{64}")


@dataclass(frozen=True)
class Problem:
    file: str   # relative to the archive, or "manifest.json" / "manifest.sig" / "-"
    what: str
    kind: str

    def __str__(self) -> str:
        return f"{self.file}: {self.what}"


@dataclass
class VerifyResult:
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, Any] = field(default_factory=dict)   # files, rows, versions, bytes (+ mode, footers)

    @property
    def ok(self) -> bool:
        return not self.problems


VERSIONS_FILE = "data/versions.parquet"


def check_signer(signer: Ed25519PublicKey | str) -> Ed25519PublicKey | str:
    """The trusted signer as given, or UserError for a fingerprint that is not `ed25519:<64 hex>`."""
    if isinstance(signer, Ed25519PublicKey):
        return signer
    text = signer.strip().lower()
    if not _SIGNER_FP.fullmatch(text):
        raise UserError(f"signer fingerprint {signer!r} is not of the form ed25519:<64 hex digits> "
                        "(the decommission report and the journal print it)")
    return text


def _is_text(value: Any) -> bool:
    """A string that can be written as UTF-8 (json.loads lets a lone surrogate such as "\\ud800" through)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _safe_path(path: str) -> bool:
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/")) and path not in (MANIFEST, SIGNATURE)


class _Verifier:
    def __init__(self, archive: Path, signer: Ed25519PublicKey | str, private: X25519PrivateKey | None,
                 full: bool, progress: Progress) -> None:
        self.archive, self.signer, self.private, self.full, self.progress = archive, signer, private, full, progress
        self.result = VerifyResult(checked={"mode": "full" if full else "quick", "files": 0, "rows": 0,
                                            "versions": 0, "bytes": 0, "footers": False})
        self.manifest: dict[str, Any] = {}
        self.files: list[dict[str, Any]] = []        # well-formed entries of manifest["files"]
        self.present: set[str] = set()               # listed paths whose file exists
        self.text = ""                               # manifest.json decoded, until its versions are read
        self.versions_at: int | None = None          # where its versions array starts in `text`
        self.expected = ExpectedIndex()              # what each content part must hold (expected_index.py)
        self.missing_versions: set[tuple[str, str]] = set()
        self.version_file: str | None = None         # versions.jsonl (format version 2), once it is known

    def problem(self, file: str, what: str, kind: str) -> None:
        self.result.problems.append(Problem(file, what, kind))

    # --- the manifest and its signature --------------------------------------------------------------

    def load(self) -> bytes | None:
        """manifest.json's bytes, or None (reported) when there is none."""
        if not self.archive.is_dir():
            raise UserError(f"{self.archive} is not a folder")
        if not (self.archive / MANIFEST).is_file():
            if not (self.archive / SIGNATURE).exists() and not any(self.archive.glob("data/*.parquet")) \
                    and not any(self.archive.glob("content/part-*.parquet")):
                raise UserError(f"{self.archive} is not a decom archive: it has no {MANIFEST}")
            self.problem(MANIFEST, "missing: the archive has no manifest, nothing in it can be trusted", "missing")
            return None
        return (self.archive / MANIFEST).read_bytes()

    def parse(self, raw: bytes) -> None:
        """Decode the manifest's top level; its versions are read later, one entry at a time."""
        try:
            text = raw.decode("utf-8")
            manifest, self.versions_at = split_versions(text)  # no dict per version (manifest_index.py)
        except (ValueError, UnicodeDecodeError):
            try:
                json.loads(raw)
                why = "it is JSON but not a decom archive manifest"
            except (ValueError, UnicodeDecodeError):
                why = "it is not valid JSON"
            self.problem(MANIFEST, f"damaged: {why} (altered or bit flip)", "manifest")
            return
        if manifest.get("format") != FORMAT:
            self.problem(MANIFEST, "damaged: it is JSON but not a decom archive manifest (altered or bit flip)",
                         "manifest")
            return
        self.manifest, self.text = manifest, text

    def signature(self, raw: bytes) -> None:
        # the top level parsed already gives the signer key, without a second parse of every version
        reason = signature_problem(self.archive, raw, self.signer, self.manifest or None)
        if reason is None:
            return
        trusted = self.signer if isinstance(self.signer, str) else fingerprint(self.signer)
        try:
            claimed = json.loads((self.archive / SIGNATURE).read_bytes()).get("fingerprint")
        except (OSError, ValueError, UnicodeDecodeError, AttributeError):
            claimed = None
        if claimed == trusted and (self.archive / SIGNATURE).is_file():
            # the trusted key's signature, over other bytes: the manifest (or the signature) was altered
            self.problem(MANIFEST, f"altered: it does not match the signature in {SIGNATURE} by the trusted key "
                                   f"{trusted} (manifest.json or the signature was changed)", "signature")
        else:
            self.problem(SIGNATURE, reason, "signature")

    def structure(self) -> None:
        m = self.manifest
        if m.get("format_version") not in FORMAT_VERSIONS:
            self.problem(MANIFEST, f"format_version is {m.get('format_version')!r}; this verifier reads "
                                   f"versions {' and '.join(map(str, FORMAT_VERSIONS))}", "manifest")
        if not isinstance(m.get("archive_id"), str) or not m.get("archive_id"):
            self.problem(MANIFEST, "archive_id is missing", "manifest")
        files = m.get("files")
        if not isinstance(files, list):
            self.problem(MANIFEST, "files is missing or not a list", "manifest")
            files = []
        seen: set[str] = set()
        for index, entry in enumerate(files):
            where = f"files[{index}]"
            if not isinstance(entry, dict):
                self.problem(MANIFEST, f"{where} is not an object", "manifest")
                continue
            path = entry.get("path")
            if not isinstance(path, str) or not _safe_path(path):
                self.problem(MANIFEST, f"{where} has an unsafe or empty path {path!r}", "manifest")
                continue
            if entry.get("seq") != index + 1:
                self.problem(MANIFEST, f"{where} ({path}) has seq {entry.get('seq')!r}, expected {index + 1}: "
                                       "seq must run 1..n without gaps", "manifest")
            if path in seen:
                self.problem(MANIFEST, f"{path} is listed twice", "manifest")
                continue
            seen.add(path)
            bad = [key for key, kind in (("size", int), ("rows", int), ("sha256", str)) if
                   not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool)]
            if bad or not SHA256_HEX.fullmatch(str(entry.get("sha256"))):
                self.problem(MANIFEST, f"{where} ({path}) lacks a valid {', '.join(bad) or 'sha256'}", "manifest")
                continue
            kind, match = entry.get("kind"), _DATA_PATH.fullmatch(path)
            if kind == "content" and not _CONTENT_PATH.fullmatch(path):
                self.problem(MANIFEST, f"{where}: content file {path} is not content/part-NNNNNN.parquet", "manifest")
            elif kind == "data" and (match is None or match.group(1) != entry.get("entity")):
                self.problem(MANIFEST, f"{where}: data file {path} is not data/<entity>.parquet for its "
                                       f"entity {entry.get('entity')!r}", "manifest")
            elif kind not in ("data", "content"):
                self.problem(MANIFEST, f"{where} ({path}) has kind {kind!r}, not data or content", "manifest")
            self.files.append(entry)

    def version_list(self) -> None:
        if self.manifest.get("format_version") == FORMAT_VERSION:
            self.version_file = VERSION_LIST  # part of the archive even when the manifest's record of it is bad
        if self.manifest.get("format_version") == 1 and self.versions_at is None:
            self.problem(MANIFEST, "versions is missing or not a list", "manifest")
            return
        try:
            source = version_source(self.archive, self.manifest, self.text, self.versions_at)
        except ValueError as exc:
            if self.manifest.get("format_version") in FORMAT_VERSIONS:  # else structure() said so already
                self.problem(MANIFEST, str(exc), "manifest")
            return
        self.text = ""  # the source holds it until read: then it goes, before the index is sorted
        parts = [f["path"] for f in self.files if f.get("kind") == "content"]
        content_paths = set(parts)
        # format 2 records how many entries there are (version_source checked it): it sizes the index
        entries = self.manifest["version_list"]["entries"] if source.file == VERSION_LIST else None
        self.expected = ExpectedIndex(parts, entries)
        scanned = scan(self.archive, self.manifest["version_list"], content_paths,
                       self.expected.add_batch if self.full else None) if source.file == VERSION_LIST else None
        root: str | None
        if scanned is not None:  # the file as recorded, every entry well-formed (version_scan.py)
            count, root, found = scanned.count, scanned.root, []
            self.missing_versions = scanned.missing
        else:
            self.expected.close()  # what the fast path gave it before it gave up
            self.expected = ExpectedIndex(parts, entries)
            count, root = self.entries(source, content_paths)
            found = source.findings()
        self.expected.finish()
        self.result.checked["versions"] = count
        for file, what, kind in found:
            self.problem(file, what, kind)
        if any(kind == "missing" for _, _, kind in found):
            return  # nothing was read: the counts and the root below would only repeat that
        table = next((f for f in self.files if f.get("path") == VERSIONS_FILE), None)
        if table is not None and table.get("rows") != count:
            self.problem(MANIFEST, f"versions lists {count} version(s) but {VERSIONS_FILE} holds {table.get('rows')} "
                                   "row(s): each version row must have exactly one entry", "manifest")
        if root is None:
            return
        if root != self.manifest.get("merkle_root"):
            self.problem(MANIFEST, f"merkle_root {self.manifest.get('merkle_root')!r} does not match the root "
                                   f"{root} recomputed from versions", "manifest")

    def entries(self, source: VersionSource, content_paths: set[str]) -> tuple[int, str | None]:
        """Read the list entry by entry, reporting each malformed one: (entries, Merkle root or None
        when an entry lacks what a leaf needs)."""
        previous: tuple[str, str] | None = None
        merkle: MerkleRoot | None = MerkleRoot()
        count = 0
        for index, v in enumerate(source.entries()):  # one entry at a time
            count += 1
            try:
                if merkle is not None:
                    merkle.add(v)
            except (KeyError, TypeError, AttributeError, ValueError):
                merkle = None  # reported below as a malformed entry (ValueError: an id not UTF-8 encodable)
            where = source.where(index)
            if v is NOT_JSON:
                self.problem(source.file, f"{where} is not valid JSON (altered or bit flip)", "manifest")
                continue
            if not isinstance(v, dict) or not _is_text(v.get("document_id")) or not _is_text(v.get("version_id")):
                self.problem(source.file, f"{where} lacks document_id or version_id (as Unicode text)", "manifest")
                continue
            key = (v["document_id"], v["version_id"])
            if previous is not None and key <= previous:
                self.problem(source.file, f"{where} ({version_name(key)}) is out of order or repeated: versions "
                                          "must be sorted by (document_id, version_id)", "manifest")
            previous = key
            if v.get("missing"):
                if self.full:
                    self.missing_versions.add(key)
                continue
            if not SHA256_HEX.fullmatch(str(v.get("sha256"))) or not isinstance(v.get("size"), int) \
                    or not isinstance(v.get("chunks"), int):
                self.problem(source.file, f"{where} ({version_name(key)}) lacks a valid sha256, size or chunks",
                             "manifest")
                continue
            if not isinstance(v.get("part"), str) or v["part"] not in content_paths:
                self.problem(source.file, f"{where} ({version_name(key)}) is assigned to {v.get('part')!r}, which "
                                          "is not a listed content file", "manifest")
                continue
            if self.full:  # only the content checks read the index: a quick run keeps no entry
                self.expected.add(v["part"], key, Expected(v["sha256"], v["size"], v["chunks"]))
        return count, merkle.hexdigest() if merkle is not None else None

    # --- the files on disk ---------------------------------------------------------------------------

    def on_disk(self) -> list[tuple[dict[str, Any], str, int]]:
        """(entry, file, size) of each listed file that exists; the others are reported missing."""
        base = os.fspath(self.archive)
        found: list[tuple[dict[str, Any], str, int]] = []
        for entry in self.files:
            path = entry["path"]
            file = os.path.join(base, path)   # plain strings: 10,000 files must take well under a second
            try:
                found.append((entry, file, os.stat(file).st_size))
            except FileNotFoundError:
                self.problem(path, "missing: listed in the manifest but not in the archive (deleted?)", "missing")
            except OSError as exc:
                self.problem(path, f"cannot be read: {exc.strerror}", "missing")
        return found

    def hashes(self, on_disk: list[tuple[dict[str, Any], str, int]], digests: Iterable[str | OSError | None]) -> None:
        by_hash = {f["sha256"]: f["path"] for f in self.files}
        for (entry, _, size), digest in zip(on_disk, digests, strict=True):
            path = entry["path"]
            if isinstance(digest, OSError):
                self.problem(path, f"cannot be read: {digest.strerror}", "missing")
                continue
            self.present.add(path)
            self.result.checked["files"] += 1
            self.result.checked["rows"] += entry["rows"]
            self.result.checked["bytes"] += size
            mismatch = recorded_mismatch(size, str(digest), entry["size"], entry["sha256"])
            if mismatch is None:
                continue
            other = by_hash.get(str(digest))
            if other is not None and other != path:
                self.problem(path, f"SHA-256 {digest} does not match the manifest's {entry['sha256']}; it is the "
                                   f"file the manifest lists as {other} (files swapped)", "sha256")
            else:
                self.problem(path, *mismatch)

    def untracked(self) -> None:
        listed = {f["path"] for f in self.files} | {MANIFEST, SIGNATURE} | ({self.version_file} - {None})
        base = os.fspath(self.archive)
        for root, dirs, names in os.walk(base):
            dirs.sort()
            folder = os.path.relpath(root, base).replace(os.sep, "/")
            for name in sorted(names):
                rel = name if folder == "." else f"{folder}/{name}"
                if rel not in listed:
                    self.problem(rel, "not listed in the manifest (an untracked file does not belong to an archive)",
                                 "untracked")

    # --- with a key: footers, row counts, pages, content -------------------------------------------

    def key_problem(self) -> tuple[str, str] | None:
        """Why the key given cannot serve this verification (what, kind), or None (also when a quick
        verification has no key: it then checks no footer)."""
        if self.private is None:
            if self.full:
                return ("missing key: full verification decrypts every file; give a recipient's private key "
                        "(--key-file)", "missing_key")
            return None
        mine = fingerprint(self.private.public_key())
        recipients = self.manifest.get("recipients")
        if isinstance(recipients, list) and mine not in recipients:
            return (f"wrong key: {mine} is not a recipient of this archive (recipients: "
                    f"{', '.join(map(str, recipients))})", "wrong_key")
        return None

    def key_usable(self) -> bool:
        problem = self.key_problem()
        if problem is not None:
            self.problem("-", *problem)
        return problem is None and self.private is not None

    def open(self, path: str) -> pq.ParquetFile | None:
        assert self.private is not None
        try:
            return open_encrypted(self.archive / path, self.private, str(self.manifest.get("archive_id")), path)
        except ArchiveKeyError as exc:
            self.problem(path, str(exc), exc.kind)
            return None

    def footers(self) -> None:
        self.result.checked["footers"] = True
        self.result.checked["rows"] = 0
        for entry in self.files:
            path = entry["path"]
            if path not in self.present:
                continue
            parquet = self.open(path)
            if parquet is None:
                continue
            self.result.checked["rows"] += parquet.metadata.num_rows
            for what, kind in footer_findings(parquet, entry):
                self.problem(path, what, kind)

    def placed(self, key: tuple[str, str]) -> str | None:
        """Where the manifest puts a version: its part, "missing", or None when it does not list it."""
        if key in self.missing_versions:
            return "missing"
        return self.expected.part_of(key)

    def full_pass(self, on_disk: list[tuple[dict[str, Any], str, int]]) -> None:
        """Every file read once, on two threads: hashed, footer and pages decrypted, content checked.
        Findings are reported as the quick checks order them: hashes, untracked files, footers, pages."""
        assert self.private is not None
        archive_id = str(self.manifest.get("archive_id"))
        with self.progress.bar(sum(size for _, _, size in on_disk), "verifying archive", unit="B") as bar, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify") as pool:
            checks = list(pool.map(lambda item: check_file(
                Path(item[1]), item[2], item[0], self.private, archive_id,  # type: ignore[arg-type]
                self.expected.for_part(item[0]["path"]), self.placed, bar), on_disk))
        self.hashes(on_disk, [c.digest for c in checks])
        self.untracked()
        self.result.checked["footers"] = True
        self.result.checked["rows"] = 0
        content_bytes = 0
        for (entry, _, _), check in zip(on_disk, checks, strict=True):
            if entry["path"] not in self.present:
                continue
            self.result.checked["rows"] += check.rows
            content_bytes += check.content_bytes
            for what, kind in check.footer:
                self.problem(entry["path"], what, kind)
        for (entry, _, _), check in zip(on_disk, checks, strict=True):
            for what, kind in check.pages if entry["path"] in self.present else ():
                self.problem(entry["path"], what, kind)
        self.result.checked["content_bytes"] = content_bytes

    def run(self) -> VerifyResult:
        try:
            return self.checks()
        finally:
            self.expected.close()   # its temporary files, if any

    def checks(self) -> VerifyResult:
        held = [raw] if (raw := self.load()) is not None else []
        del raw
        if held:
            self.parse(held[0])
            self.signature(held.pop())  # then the bytes go: ~180 bytes a version, as much as the text
        if not self.manifest:
            return self.result
        self.structure()
        self.version_list()
        on_disk = self.on_disk()
        if self.full and self.private is not None and self.key_problem() is None:
            release_free_memory()  # the manifest's text, before two files are read at once
            self.full_pass(on_disk)
            return self.result
        self.hashes(on_disk, sha256_files([(file, size) for _, file, size in on_disk]))
        self.untracked()
        if self.key_usable():
            self.footers()
        return self.result


def verify_archive(archive_dir: Path | str, *, signer: Ed25519PublicKey | str,
                   private_key: X25519PrivateKey | None = None, full: bool = False,
                   progress: Progress = QUIET) -> VerifyResult:
    """Check an archive against its signed manifest (docs/archive-format.md section 8).

    `signer` is the trusted Ed25519 public key, or its fingerprint "ed25519:<hex>" from the
    decommission report or journal. Raises UserError only when `archive_dir` is not an archive at all;
    every integrity finding is a Problem in the result.
    """
    return _Verifier(Path(archive_dir), check_signer(signer), private_key, full, progress).run()
