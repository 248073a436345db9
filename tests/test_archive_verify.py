"""`decom verify` on real backups of the demo: a fresh archive passes, every kind of tampering fails
naming the file and what is wrong, a missing key is told apart from a wrong one, and the Parquet
modular encryption underneath holds up with huge row groups and concurrent writers.

The helpers at the top (make_backups, TAMPERS, DEEP) are shared with test_archive_restore.py and
test_independent_verifier.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import write_plan
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from benchmarks.verify_quick import build as build_many_file_archive
from decom import api
from decom.archive import pme
from decom.archive.expected_index import ExpectedIndex
from decom.archive.keys import canonical_json, fingerprint, generate, load_private, load_public
from decom.archive.manifest import manifest_head, merkle_root, version_lines, write_signed, write_version_list
from decom.archive.verify import verify_archive
from decom.archive.verify_files import CONTENT_COLUMNS
from decom.archive.version_list import archive_versions
from decom.cli import run_cli
from decom.progress import Progress

DOCUMENTS = 150   # the small demo's kind of system, with enough content for two 1 MiB parts
PART1, PART2 = "content/part-000001.parquet", "content/part-000002.parquet"
CONTENT_SCHEMA = pa.schema([("document_id", pa.string()), ("version_id", pa.string()), ("chunk_index", pa.int32()),
                            ("offset", pa.int64()), ("bytes", pa.binary()), ("chunk_sha256", pa.string())])


# --- a real backup of the demo, twice ------------------------------------------------------------------

@dataclass(frozen=True)
class Backups:
    root: Path
    plan: Path
    content: Path
    older: Path             # the first backup of the plan
    newer: Path             # a second backup of the same plan (another state folder)
    recipient_key: Path     # X25519, a recipient
    other_key: Path         # X25519, not a recipient
    signing_key: Path       # Ed25519 that signed both
    signing_pub: Path
    other_signing_key: Path

    @property
    def signer(self) -> Ed25519PublicKey:
        key: Ed25519PublicKey = load_public(self.signing_pub, Ed25519PublicKey)
        return key

    @property
    def private(self) -> X25519PrivateKey:
        key: X25519PrivateKey = load_private(self.recipient_key, X25519PrivateKey)
        return key

    @property
    def signer_fingerprint(self) -> str:
        return fingerprint(self.signer)

    def copy(self, to: Path, which: str = "newer") -> Path:
        shutil.copytree(getattr(self, which), to)
        return to


BACKUP = """
[[stages]]
kind = "backup"
part_mb = 1
"""
ARCHIVE = """[archive]
target = "archives"
recipients = ["keys/auditor.pub"]
signing_key_file = "keys/signing.key"

"""


def make_backups(root: Path, documents: int = DOCUMENTS) -> Backups:
    from decom.demo.generator import DemoSpec, build_demo

    url = f"sqlite:///{root / 'legacy.sqlite'}"
    build_demo(url, root / "content", DemoSpec(documents=documents))
    keys = root / "keys"
    generate("recipient", keys / "auditor")
    generate("recipient", keys / "stranger")
    generate("signing", keys / "signing")
    generate("signing", keys / "forger")
    plan = write_plan(root, url, root / "content", extra_stages=BACKUP)
    text = plan.read_text(encoding="utf-8")
    plan.write_text(text.replace("[[stages]]", ARCHIVE + "[[stages]]", 1), encoding="utf-8")
    api.run(plan)
    (older,) = list((root / "archives").iterdir())
    api.run(plan, state=root / "second.state")
    (newer,) = [a for a in (root / "archives").iterdir() if a != older]
    return Backups(root, plan, root / "content", older, newer, keys / "auditor.key", keys / "stranger.key",
                   keys / "signing.key", keys / "signing.pub", keys / "forger.key")


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Backups:
    return make_backups(tmp_path_factory.mktemp("backups"))


# --- tampering ------------------------------------------------------------------------------------------

def manifest_of(archive: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((archive / "manifest.json").read_bytes())
    return data


def flip_bit(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x04
    file.write_bytes(bytes(data))


def swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def data_page_offset(archive: Path, path: str, b: Backups) -> int:
    """An offset inside the encrypted data pages of the `bytes` column of a content part."""
    parquet = pme.open_encrypted(archive / path, b.private, manifest_of(archive)["archive_id"], path)
    column = parquet.metadata.row_group(0).column(CONTENT_COLUMNS.index("bytes"))
    return int(column.data_page_offset + column.total_compressed_size // 2)


def footer_offset(file: Path) -> int:
    """An offset in the middle of the encrypted footer (the file ends: footer, 4-byte length, PARE)."""
    data = file.read_bytes()
    assert data[-4:] == b"PARE"
    length = struct.unpack("<I", data[-8:-4])[0]
    return len(data) - 8 - length // 2


REPLACED = ("sha256", "size")   # a file from elsewhere: its size may or may not differ


@dataclass(frozen=True)
class Expect:
    file: str       # the file the first FAIL line must name
    quick: tuple[str, ...]   # problem kind(s) one of which is reported without a key
    keyed: str      # problem kind reported (too) with the recipient's key in full mode
    words: str      # in that quick message


def truncated(archive: Path, b: Backups) -> Expect:
    file = archive / PART2
    file.write_bytes(file.read_bytes()[:-1000])
    return Expect(PART2, ("size",), "corrupt", "truncated")


def bit_flip_in_data_page(archive: Path, b: Backups) -> Expect:
    flip_bit(archive / PART1, data_page_offset(archive, PART1, b))
    return Expect(PART1, ("sha256",), "corrupt", "does not match the manifest")


def bit_flip_in_footer(archive: Path, b: Backups) -> Expect:
    flip_bit(archive / "data/users.parquet", footer_offset(archive / "data/users.parquet"))
    return Expect("data/users.parquet", ("sha256",), "corrupt", "does not match the manifest")


def bit_flip_in_manifest(archive: Path, b: Backups) -> Expect:
    raw = (archive / "manifest.json").read_bytes()
    flip_bit(archive / "manifest.json", raw.index(b'"plan_name":"') + 14)   # inside a value: still JSON
    return Expect("manifest.json", ("signature",), "signature", "altered")


def manifest_damaged(archive: Path, b: Backups) -> Expect:
    flip_bit(archive / "manifest.json", 0)                                    # '{' becomes something else
    return Expect("manifest.json", ("manifest",), "manifest", "not valid JSON")


def manifest_not_an_object(archive: Path, b: Backups) -> Expect:
    (archive / "manifest.json").write_bytes(json.dumps(archive_versions(archive)).encode())  # valid JSON
    return Expect("manifest.json", ("manifest",), "manifest", "JSON but not a decom archive manifest")


def manifest_reindented(archive: Path, b: Backups) -> Expect:
    """Same content, other bytes (not canonical JSON): read all the same, and the signature no longer fits."""
    (archive / "manifest.json").write_text(json.dumps(manifest_of(archive), indent=1), encoding="utf-8")
    return Expect("manifest.json", ("signature",), "signature", "altered")


def manifest_edited(archive: Path, b: Backups) -> Expect:
    """Put an older file back and edit its size and hash into the manifest: only the signature tells."""
    path = "data/documents.parquet"
    shutil.copyfile(b.older / path, archive / path)
    manifest = manifest_of(archive)
    entry = next(f for f in manifest["files"] if f["path"] == path)
    entry["size"] = (archive / path).stat().st_size
    entry["sha256"] = hashlib.sha256((archive / path).read_bytes()).hexdigest()
    (archive / "manifest.json").write_bytes(canonical_json(manifest))
    return Expect("manifest.json", ("signature",), "signature", "altered")


def signed_by_another_key(archive: Path, b: Backups) -> Expect:
    forger: Ed25519PrivateKey = load_private(b.other_signing_key, Ed25519PrivateKey)
    signature = forger.sign((archive / "manifest.json").read_bytes())
    import base64

    (archive / "manifest.sig").write_bytes(canonical_json({
        "alg": "Ed25519", "fingerprint": fingerprint(forger.public_key()),
        "signature": base64.b64encode(signature).decode()}))
    return Expect("manifest.sig", ("signature",), "signature", "not by the trusted key")


def swapped_with_another_archive(archive: Path, b: Backups) -> Expect:
    other = b.copy(archive.with_name(archive.name + "-other"), "older")
    swap(archive / PART1, other / PART1)
    return Expect(PART1, REPLACED, "binding", "")


def swapped_positions(archive: Path, b: Backups) -> Expect:
    swap(archive / "data/users.parquet", archive / "data/groups.parquet")
    return Expect("data/groups.parquet", ("sha256",), "binding", "files swapped")


def older_file_put_back(archive: Path, b: Backups) -> Expect:
    shutil.copyfile(b.older / "data/events.parquet", archive / "data/events.parquet")
    return Expect("data/events.parquet", REPLACED, "binding", "")


def file_deleted(archive: Path, b: Backups) -> Expect:
    (archive / "data/signatures.parquet").unlink()
    return Expect("data/signatures.parquet", ("missing",), "missing", "missing")


def untracked_file(archive: Path, b: Backups) -> Expect:
    shutil.copyfile(archive / PART2, archive / "content/part-000003.parquet")
    return Expect("content/part-000003.parquet", ("untracked",), "untracked", "not listed in the manifest")


def version_left_out_of_the_manifest(archive: Path, b: Backups) -> Expect:
    """A writer that lost a version: the manifest, consistent in itself (list and Merkle root
    recomputed) and signed with the archive's own key, lists one version fewer than
    data/versions.parquet holds."""
    versions = archive_versions(archive)
    versions.remove(next(v for v in versions if not v.get("missing")))
    resign_with_versions(archive, b, versions)
    return Expect("manifest.json", ("manifest",), "manifest", "data/versions.parquet holds")


def resign_with_versions(archive: Path, b: Backups, versions: list[dict[str, Any]]) -> None:
    """Write `versions` (in order) as the archive's versions.jsonl and re-sign the manifest with the
    archive's own key, as a buggy writer would."""
    manifest = manifest_of(archive)
    manifest["version_list"] = write_version_list(archive, [version_lines(versions)], len(versions))
    manifest["merkle_root"] = merkle_root(versions)
    write_signed(archive, manifest, load_private(b.signing_key, Ed25519PrivateKey))


def as_format_version_1(archive: Path, b: Backups) -> None:
    """Rewrite a fresh archive as decom wrote it before versions.jsonl (format version 1): the list
    inside manifest.json, signed with the archive's own key."""
    manifest = manifest_of(archive)
    manifest["versions"] = archive_versions(archive)
    del manifest["version_list"]
    manifest["format_version"] = 1
    (archive / "versions.jsonl").unlink()
    write_signed(archive, manifest, load_private(b.signing_key, Ed25519PrivateKey))


def version_list_deleted(archive: Path, b: Backups) -> Expect:
    (archive / "versions.jsonl").unlink()
    return Expect("versions.jsonl", ("missing",), "missing", "missing")


def version_list_entry_edited(archive: Path, b: Backups) -> Expect:
    """A version's recorded hash replaced by that of other bytes, the line still valid JSON."""
    lines = (archive / "versions.jsonl").read_bytes().split(b"\n")
    at = next(i for i, line in enumerate(lines) if b'"sha256"' in line)
    entry = json.loads(lines[at])
    lines[at] = canonical_json({**entry, "sha256": hashlib.sha256(b"other bytes").hexdigest()})
    (archive / "versions.jsonl").write_bytes(b"\n".join(lines))
    return Expect("versions.jsonl", ("sha256",), "sha256", "does not match the manifest")


def version_list_truncated(archive: Path, b: Backups) -> Expect:
    data = (archive / "versions.jsonl").read_bytes()
    (archive / "versions.jsonl").write_bytes(data[:data.rindex(b"\n", 0, -1) + 1])   # the last entry gone
    return Expect("versions.jsonl", ("size",), "size", "truncated")


def version_list_bit_flip(archive: Path, b: Backups) -> Expect:
    flip_bit(archive / "versions.jsonl", 0)                                   # line 1 is no longer JSON
    return Expect("versions.jsonl", ("sha256",), "sha256", "does not match the manifest")


TAMPERS: dict[str, Callable[[Path, Backups], Expect]] = {f.__name__: f for f in (
    truncated, bit_flip_in_data_page, bit_flip_in_footer, bit_flip_in_manifest, manifest_damaged,
    manifest_not_an_object, manifest_reindented, manifest_edited,
    signed_by_another_key, swapped_with_another_archive, swapped_positions, older_file_put_back, file_deleted,
    untracked_file, version_left_out_of_the_manifest, version_list_deleted, version_list_entry_edited,
    version_list_truncated, version_list_bit_flip)}


# --- damage only full verification sees: parts rewritten and the manifest re-signed with the real key ---------

def rewrite_parts(archive: Path, b: Backups, change: Callable[[dict[str, list[dict[str, Any]]]], None]) -> None:
    """Decrypt every content part, let `change` edit the rows, write the parts back properly encrypted and
    re-sign the manifest with the archive's own signing key (a buggy writer, not an outside attacker)."""
    manifest = manifest_of(archive)
    archive_id = manifest["archive_id"]
    parts = {f["path"]: f for f in manifest["files"] if f["kind"] == "content"}
    rows = {}
    for path in parts:
        parquet = pme.open_encrypted(archive / path, b.private, archive_id, path)
        rows[path] = [r for batch in pme.read_all(parquet) for r in batch.to_pylist()]
    before = json.dumps(rows, default=lambda v: v.hex())
    change(rows)
    assert json.dumps(rows, default=lambda v: v.hex()) != before
    recipient = b.private.public_key()
    for path, entry in parts.items():
        with pme.encrypted_file(archive, path, CONTENT_SCHEMA, [recipient], archive_id) as (writer, done):
            writer.write(pa.Table.from_pylist(rows[path], schema=CONTENT_SCHEMA))
        entry.update(size=done[0].size, sha256=done[0].sha256, rows=done[0].rows)
    signing_key: Ed25519PrivateKey = load_private(b.signing_key, Ed25519PrivateKey)
    write_signed(archive, manifest, signing_key)


def bytes_changed_after_hashing(archive: Path, b: Backups) -> Expect:
    """A document whose bytes no longer match its recorded hash (chunk hash recomputed to match)."""
    def change(rows: dict[str, list[dict[str, Any]]]) -> None:
        row = next(r for r in rows[PART1] if r["bytes"])
        row["bytes"] = bytes([row["bytes"][0] ^ 1]) + row["bytes"][1:]
        row["chunk_sha256"] = hashlib.sha256(row["bytes"]).hexdigest()
    rewrite_parts(archive, b, change)
    return Expect(PART1, (), "content", "the document's bytes changed")


def version_in_the_wrong_part(archive: Path, b: Backups) -> Expect:
    """A part that does not hold exactly its versions: one version's chunks moved to the other part."""
    def change(rows: dict[str, list[dict[str, Any]]]) -> None:
        moved = rows[PART1][0]["version_id"]
        rows[PART2] += [r for r in rows[PART1] if r["version_id"] == moved]
        rows[PART1] = [r for r in rows[PART1] if r["version_id"] != moved]
    rewrite_parts(archive, b, change)
    return Expect(PART2, (), "content", f"which the manifest assigns to {PART1}")


def chunk_hash_wrong(archive: Path, b: Backups) -> Expect:
    def change(rows: dict[str, list[dict[str, Any]]]) -> None:
        rows[PART2][0]["chunk_sha256"] = "0" * 64
    rewrite_parts(archive, b, change)
    return Expect(PART2, (), "content", "does not match its chunk_sha256")


def chunks_not_consecutive(archive: Path, b: Backups) -> Expect:
    """A version's chunks with another version's row between them (format section 3 forbids it)."""
    def change(rows: dict[str, list[dict[str, Any]]]) -> None:
        first = next(i for i, r in enumerate(rows[PART1]) if len(r["bytes"]) > 1)
        row = rows[PART1][first]
        half = len(row["bytes"]) // 2
        head, tail = row["bytes"][:half], row["bytes"][half:]
        rows[PART1][first] = {**row, "bytes": head, "chunk_sha256": hashlib.sha256(head).hexdigest()}
        rows[PART1].insert(first + 2, {**row, "chunk_index": 1, "offset": half, "bytes": tail,
                                       "chunk_sha256": hashlib.sha256(tail).hexdigest()})
    rewrite_parts(archive, b, change)
    return Expect(PART1, (), "content", "consecutive rows")


DEEP: dict[str, Callable[[Path, Backups], Expect]] = {f.__name__: f for f in (
    bytes_changed_after_hashing, version_in_the_wrong_part, chunk_hash_wrong, chunks_not_consecutive)}


def cli_verify(archive: Path, b: Backups, *extra: str) -> list[str]:
    return ["--quiet", "verify", str(archive), "--signer-key", str(b.signing_pub), *extra]


# --- a fresh archive --------------------------------------------------------------------------------------

def test_a_fresh_backup_verifies_quick_and_full(backups: Backups) -> None:
    quick = verify_archive(backups.newer, signer=backups.signer)
    assert quick.ok, quick.problems
    manifest, versions = manifest_of(backups.newer), archive_versions(backups.newer)
    assert quick.checked["files"] == len(manifest["files"]) >= 14        # 12 entities and at least two parts
    assert quick.checked["versions"] == len(versions) == manifest["version_list"]["entries"]
    assert quick.checked["bytes"] == sum(f["size"] for f in manifest["files"])
    keyed = verify_archive(backups.newer, signer=backups.signer_fingerprint, private_key=backups.private)
    assert keyed.ok and keyed.checked["footers"] and keyed.checked["rows"] == sum(f["rows"] for f in manifest["files"])
    full = verify_archive(backups.newer, signer=backups.signer, private_key=backups.private, full=True)
    assert full.ok, full.problems
    assert full.checked["content_bytes"] == sum(v.get("size", 0) for v in versions)
    assert any(v.get("missing") for v in versions)          # the demo's missing file, recorded


def test_a_fresh_backup_verifies_through_the_cli(backups: Backups, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(cli_verify(backups.newer, backups)) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    assert run_cli(cli_verify(backups.newer, backups, "--full", "--key-file", str(backups.recipient_key))) == 0
    assert "full verification" in capsys.readouterr().out
    assert run_cli(["--quiet", "verify", str(backups.newer), "--signer-fingerprint", backups.signer_fingerprint,
                    "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["problems"] == [] and report["mode"] == "quick"


def test_verify_needs_a_trusted_signer(backups: Backups, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--quiet", "verify", str(backups.newer)]) == 2
    err = capsys.readouterr().err
    assert "signer's public key" in err and "fingerprint" in err and "decommission report or journal" in err
    assert len(err.strip().splitlines()) == 1
    assert run_cli(["--quiet", "verify", str(backups.newer), "--signer-fingerprint", "ed25519:abc"]) == 2
    assert "ed25519:<64 hex digits>" in capsys.readouterr().err
    assert run_cli(["--quiet", "verify", str(backups.root), "--signer-key", str(backups.signing_pub)]) == 2
    assert "not a decom archive" in capsys.readouterr().err


def test_verify_and_restore_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("verify", "restore"):
        assert run_cli([command, "--help"]) == 0
        assert "--signer-fingerprint" in capsys.readouterr().out


# --- tampering --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", TAMPERS)
def test_tampering_is_caught_naming_the_file(case: str, backups: Backups, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    archive = backups.copy(tmp_path / "archive")
    expect = TAMPERS[case](archive, backups)

    quick = verify_archive(archive, signer=backups.signer)
    assert not quick.ok
    assert any(p.file == expect.file and p.kind in expect.quick and expect.words in p.what
               for p in quick.problems), quick.problems

    full = verify_archive(archive, signer=backups.signer, private_key=backups.private, full=True)
    assert (expect.file, expect.keyed) in {(p.file, p.kind) for p in full.problems}, full.problems

    for extra in ((), ("--full", "--key-file", str(backups.recipient_key))):
        assert run_cli(cli_verify(archive, backups, *extra)) == 1
        out = capsys.readouterr().out
        assert f"FAIL {expect.file}: " in out and "FAILED: " in out.splitlines()[-1], out


def test_files_swapped_within_an_archive_are_both_named(backups: Backups, tmp_path: Path) -> None:
    archive = backups.copy(tmp_path / "archive")
    swap(archive / PART1, archive / PART2)
    result = verify_archive(archive, signer=backups.signer, private_key=backups.private)
    named = {(p.file, p.kind) for p in result.problems}
    assert {(PART1, "sha256"), (PART2, "sha256"), (PART1, "binding"), (PART2, "binding")} <= named
    binding = next(p for p in result.problems if p.file == PART1 and p.kind == "binding")
    assert PART2 in binding.what   # the key says where the file really belongs


@pytest.mark.parametrize("case", DEEP)
def test_content_damage_behind_a_valid_signature_is_caught_by_full_only(
        case: str, backups: Backups, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = backups.copy(tmp_path / "archive")
    expect = DEEP[case](archive, backups)
    assert verify_archive(archive, signer=backups.signer, private_key=backups.private).ok
    full = verify_archive(archive, signer=backups.signer, private_key=backups.private, full=True)
    assert any(p.file == expect.file and p.kind == expect.keyed and expect.words in p.what
               for p in full.problems), full.problems
    assert run_cli(cli_verify(archive, backups, "--full", "--key-file", str(backups.recipient_key))) == 1
    assert f"FAIL {expect.file}: " in capsys.readouterr().out


@pytest.mark.parametrize("case", [None, *DEEP])
def test_full_verification_with_its_index_in_temporary_files_finds_the_same(
        case: str | None, backups: Backups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive too large for the index in memory (here: more than one version, so one range a part)."""
    archive = backups.copy(tmp_path / "archive")
    expect = DEEP[case](archive, backups) if case else None
    in_memory = verify_archive(archive, signer=backups.signer, private_key=backups.private, full=True)
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(ExpectedIndex, "ROWS_IN_MEMORY", 1)
    spilled: list[list[str]] = []
    finish = ExpectedIndex.finish

    def spy(index: ExpectedIndex) -> None:
        finish(index)
        spilled.append(sorted(p.name for p in folder.glob("*/*")) if index.spilled else [])
    monkeypatch.setattr(ExpectedIndex, "finish", spy)
    in_files = verify_archive(archive, signer=backups.signer, private_key=backups.private, full=True)
    assert spilled == [["range-0.arrow", "range-1.arrow"]]   # one range for each of the two parts
    assert list(folder.iterdir()) == []                       # and gone afterwards
    assert in_files.problems == in_memory.problems and in_files.checked == in_memory.checked
    assert in_files.ok == (expect is None)


def test_full_verification_names_a_temporary_folder_it_cannot_write(
        backups: Backups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked / "tmp"))   # as from TMPDIR; like a full disk
    monkeypatch.setattr(ExpectedIndex, "ROWS_IN_MEMORY", 1)
    assert run_cli(cli_verify(backups.newer, backups, "--full", "--key-file", str(backups.recipient_key))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "temporary index" in err and "TMPDIR" in err, err
    assert run_cli(cli_verify(backups.newer, backups)) == 0   # a quick verification keeps no index: no folder


def test_a_part_missing_a_version_is_named(backups: Backups, tmp_path: Path) -> None:
    archive = backups.copy(tmp_path / "archive")
    version_in_the_wrong_part(archive, backups)
    full = verify_archive(archive, signer=backups.signer, private_key=backups.private, full=True)
    assert any(p.file == PART1 and "lacks version" in p.what for p in full.problems), full.problems


def test_a_foreign_signer_embedded_in_the_manifest_fails_against_the_trusted_fingerprint(
        backups: Backups, tmp_path: Path) -> None:
    archive = backups.copy(tmp_path / "archive")
    forger: Ed25519PrivateKey = load_private(backups.other_signing_key, Ed25519PrivateKey)
    manifest = manifest_of(archive)
    manifest["signer"] = manifest_head(
        archive_id="x", run_id="x", plan_name="x", plan_sha256="x", created_at="x", source="x", freeze=None,
        signer=forger.public_key(), recipients=[], files=[], counts={})["signer"]
    write_signed(archive, manifest, forger)
    assert verify_archive(archive, signer=fingerprint(forger.public_key())).ok     # consistent in itself
    result = verify_archive(archive, signer=backups.signer_fingerprint)
    assert [(p.file, p.kind) for p in result.problems] == [("manifest.sig", "signature")]
    assert backups.signer_fingerprint in result.problems[0].what


# --- keys -------------------------------------------------------------------------------------------------

def test_missing_key_and_wrong_key_are_told_apart(backups: Backups, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_archive(backups.newer, signer=backups.signer).ok      # quick needs no key
    missing = verify_archive(backups.newer, signer=backups.signer, full=True)
    stranger: X25519PrivateKey = load_private(backups.other_key, X25519PrivateKey)
    wrong = verify_archive(backups.newer, signer=backups.signer, private_key=stranger)
    assert [(p.file, p.kind) for p in missing.problems] == [("-", "missing_key")]
    assert [(p.file, p.kind) for p in wrong.problems] == [("-", "wrong_key")]
    assert "missing key" in missing.problems[0].what and "--key-file" in missing.problems[0].what
    assert "wrong key" in wrong.problems[0].what and fingerprint(stranger.public_key()) in wrong.problems[0].what

    assert run_cli(cli_verify(backups.newer, backups, "--full")) == 1
    missing_out = capsys.readouterr().out
    assert run_cli(cli_verify(backups.newer, backups, "--key-file", str(backups.other_key))) == 1
    wrong_out = capsys.readouterr().out
    assert "FAIL -: missing key" in missing_out and "FAIL -: wrong key" in wrong_out


def test_a_file_not_encrypted_for_the_key_is_a_wrong_key_for_that_file(backups: Backups, tmp_path: Path) -> None:
    archive = backups.copy(tmp_path / "archive")
    manifest = manifest_of(archive)
    stranger: X25519PrivateKey = load_private(backups.other_key, X25519PrivateKey)
    path = "data/groups.parquet"
    with pme.encrypted_file(archive, path, pa.schema([("x", pa.int64())]), [stranger.public_key()],
                            manifest["archive_id"]) as (writer, _done):
        writer.write(pa.table({"x": [1]}))
    result = verify_archive(archive, signer=backups.signer, private_key=backups.private)
    assert (path, "wrong_key") in {(p.file, p.kind) for p in result.problems}


# --- the progress bar and speed -------------------------------------------------------------------------

class _Bar:
    def __init__(self, total: float | None) -> None:
        self.total, self.done = total, 0.0

    def update(self, n: float = 1) -> None:
        self.done += n

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Recorder(Progress):
    def __init__(self) -> None:
        super().__init__(enabled=True)
        self.bars: list[tuple[str, str, _Bar]] = []

    def bar(self, total: float | None, desc: str, unit: str = "it", **kwargs: Any) -> Any:
        bar = _Bar(total)
        self.bars.append((desc, unit, bar))
        return bar


def test_full_verification_shows_progress_in_bytes(backups: Backups) -> None:
    recorder = _Recorder()
    assert verify_archive(backups.newer, signer=backups.signer, private_key=backups.private, full=True,
                          progress=recorder).ok
    ((_desc, unit, bar),) = recorder.bars
    assert unit == "B" and bar.total == bar.done == sum(f["size"] for f in manifest_of(backups.newer)["files"])


def test_quick_verification_checks_every_one_of_ten_thousand_files(tmp_path: Path) -> None:
    """How fast is benchmarks/verify_quick.py's business (target: under 2 s); this checks that all count."""
    archive, signer = build_many_file_archive(tmp_path, 10_000)  # the benchmark's archive
    result = verify_archive(archive, signer=signer)
    assert result.ok and result.checked["files"] == 10_000, result.problems[:3]
    victim = archive / "content" / "part-007777.parquet"
    victim.write_bytes(victim.read_bytes()[::-1])
    result = verify_archive(archive, signer=signer)
    assert [(p.file, p.kind) for p in result.problems] == [("content/part-007777.parquet", "sha256")]


# --- Parquet modular encryption regressions -----------------------------------------------------------------

def test_pme_one_row_group_of_a_million_small_rows_decrypts(tmp_path: Path) -> None:
    private = X25519PrivateKey.generate()
    rows = 1_000_000
    table = pa.table({"n": pa.array(range(rows), pa.int64()), "s": pa.array([str(i % 97) for i in range(rows)])})
    with pme.encrypted_file(tmp_path, "data/events.parquet", table.schema, [private.public_key()], "a" * 32
                            ) as (writer, done):
        writer.write(table, row_group_size=rows)
    parquet = pme.open_encrypted(tmp_path / "data/events.parquet", private, "a" * 32, "data/events.parquet")
    assert parquet.metadata.num_row_groups == 1 and done[0].rows == rows
    total, count = 0, 0
    for batch in parquet.iter_batches(batch_size=100_000):
        total += pa.compute.sum(batch.column("n")).as_py()
        count += batch.num_rows
    assert (count, total) == (rows, rows * (rows - 1) // 2)


def test_pme_files_written_from_several_threads_at_once_decrypt(tmp_path: Path) -> None:
    private = X25519PrivateKey.generate()
    archive_id = "b" * 32
    start = threading.Barrier(8)

    def write(number: int) -> str:
        path = f"content/part-{number:06d}.parquet"
        rows = [{"document_id": str(number), "version_id": f"{number}.{i}", "chunk_index": 0, "offset": 0,
                 "bytes": bytes([number]) * (1000 + i), "chunk_sha256": ""} for i in range(200)]
        start.wait()
        with pme.encrypted_file(tmp_path, path, CONTENT_SCHEMA, [private.public_key()], archive_id
                                ) as (writer, _done):
            for i in range(0, 200, 20):
                writer.write(pa.Table.from_pylist(rows[i:i + 20], schema=CONTENT_SCHEMA), row_group_size=20)
        return path

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(write, range(1, 9)))

    def read(path: str) -> tuple[str, set[bytes], int]:
        parquet = pme.open_encrypted(tmp_path / path, private, archive_id, path)
        chunks = [r["bytes"] for batch in pme.read_all(parquet) for r in batch.to_pylist()]
        return path, {c[:1] for c in chunks}, len(chunks)

    with ThreadPoolExecutor(8) as pool:
        for number, (_path, firsts, count) in enumerate(pool.map(read, paths), start=1):
            assert firsts == {bytes([number])} and count == 200
