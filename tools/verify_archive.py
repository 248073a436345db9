#!/usr/bin/env python3
"""Independent verifier for decom archives, written from docs/archive-format.md alone.

It deliberately does not import decom: an auditor can read this one file next to the format
document and check an archive with stock pyarrow and cryptography.

    python tools/verify_archive.py ARCHIVE --signer-key SIGNER.pub [--key-file RECIPIENT.key] [--full]

Prints one `FAIL <file>: <what>` line per problem and a final `OK` or `FAIL` line.
Exit status: 0 intact, 1 a problem found, 2 wrong usage (unreadable key file, not an archive).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CONTENT_COLUMNS = ["document_id", "version_id", "chunk_index", "offset", "bytes", "chunk_sha256"]
KEY_WRAP_INFO = b"decom archive key wrap v1"


class Usage(Exception):
    """Not a verification finding: the command line or its files are wrong (exit 2)."""


# --- sections 2, 5, 6, 7: the primitives -------------------------------------------------------------

def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def raw_public(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(key: X25519PublicKey | Ed25519PublicKey) -> str:
    kind = "x25519" if isinstance(key, X25519PublicKey) else "ed25519"
    return kind + ":" + hashlib.sha256(raw_public(key)).hexdigest()


def merkle(versions: list[dict[str, Any]]) -> str:
    nodes = []
    for v in versions:
        value = "missing" if v.get("missing") else v["sha256"]
        nodes.append(hashlib.sha256(
            b"decom-leaf\x00" + "\x00".join([v["document_id"], v["version_id"], value]).encode()).digest())
    if not nodes:
        return hashlib.sha256(b"decom-empty").hexdigest()
    while len(nodes) > 1:
        pairs = zip(nodes[::2], nodes[1::2], strict=False)
        upper = [hashlib.sha256(b"decom-node\x00" + left + right).digest() for left, right in pairs]
        nodes = upper + ([nodes[-1]] if len(nodes) % 2 else [])
    return nodes[0].hex()


class Unwrapper(pe.KmsClient):  # type: ignore[misc]
    """A KMS client that unwraps a file's data key per section 2, with the binding the reader expects."""

    def __init__(self, private: X25519PrivateKey, archive_id: str, path: str) -> None:
        super().__init__()
        self.private, self.binding = private, {"archive_id": archive_id, "file": path}
        self.failure: str | None = None

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        raise NotImplementedError("this verifier only reads")

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        try:
            document = json.loads(wrapped_key)
            mine = key_fingerprint(self.private.public_key())
            entries = [e for e in document["recipients"] if e.get("fp") == mine]
            if not entries:
                self.failure = f"wrong key: {mine} is not among this file's recipients"
                raise ValueError(self.failure)
            entry = entries[0]
            ephemeral = base64.b64decode(entry["epk"])
            shared = self.private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
            kek = HKDF(algorithm=SHA256(), length=32, salt=ephemeral + raw_public(self.private.public_key()),
                       info=KEY_WRAP_INFO).derive(shared)
            return AESGCM(kek).decrypt(base64.b64decode(entry["nonce"]), base64.b64decode(entry["ct"]),
                                       canonical(self.binding))
        except InvalidTag:
            self.failure = ("its data key does not authenticate for this archive and path "
                            "(moved, swapped, from another archive, or altered)")
            raise ValueError(self.failure) from None
        except (ValueError, KeyError, TypeError) as exc:
            self.failure = self.failure or f"its wrapped key is damaged ({type(exc).__name__})"
            raise ValueError(self.failure) from None


def detail(exc: Exception) -> str:
    """The first non-blank line of an error's message, or its type name when it has none."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def open_file(file: Path, private: X25519PrivateKey, archive_id: str, path: str) -> pq.ParquetFile:
    client = Unwrapper(private, archive_id, path)
    factory = pe.CryptoFactory(lambda _config: client)
    properties = factory.file_decryption_properties(pe.KmsConnectionConfig(), pe.DecryptionConfiguration())
    try:
        return pq.ParquetFile(file, decryption_properties=properties, page_checksum_verification=True)
    except (OSError, ValueError, pa.ArrowException) as exc:  # pyarrow passes the client's ValueError through
        raise RuntimeError(client.failure or f"footer does not decrypt ({detail(exc)})") from None


# --- section 8: verifying ---------------------------------------------------------------------------------

class Check:
    def __init__(self, archive: Path, signer: Ed25519PublicKey, private: X25519PrivateKey | None, full: bool):
        self.archive, self.signer, self.private, self.full = archive, signer, private, full
        self.failures: list[tuple[str, str]] = []

    def fail(self, file: str, what: str) -> None:
        self.failures.append((file, what))

    def run(self) -> None:
        try:
            manifest_bytes = (self.archive / "manifest.json").read_bytes()
        except FileNotFoundError:
            if not (self.archive / "manifest.sig").exists() and not any(self.archive.glob("data/*.parquet")) \
                    and not any(self.archive.glob("content/part-*.parquet")):
                raise Usage(f"{self.archive} is not an archive (no manifest.json)") from None
            self.fail("manifest.json", "missing")
            return
        self.signature(manifest_bytes)
        try:
            manifest = json.loads(manifest_bytes)
            files, archive_id = manifest["files"], manifest["archive_id"]
            version = manifest["format_version"]
            if version not in (1, 2):
                self.fail("manifest.json", f"format_version {version!r} is not 1 or 2")
                return
            versions = manifest["versions"] if version == 1 else self.version_list(manifest["version_list"])
        except (ValueError, KeyError, TypeError):
            self.fail("manifest.json", "not a readable manifest")
            return
        self.listing(files, ["versions.jsonl"] if version == 2 else [])
        try:
            if merkle(versions) != manifest.get("merkle_root"):
                self.fail("manifest.json", "merkle_root does not match the versions")
        except (KeyError, TypeError):
            self.fail("manifest.json", "versions are malformed")
            return
        table = [f for f in files if isinstance(f, dict) and f.get("path") == "data/versions.parquet"]
        if table and table[0].get("rows") != len(versions):
            self.fail("manifest.json", f"{len(versions)} versions listed, data/versions.parquet has "
                                       f"{table[0].get('rows')} rows")
        if self.private is None:
            if self.full:
                self.fail("-", "missing key: --full needs a recipient's private key (--key-file)")
            return
        mine = key_fingerprint(self.private.public_key())
        if mine not in manifest.get("recipients", []):
            self.fail("-", f"wrong key: {mine} is not a recipient of this archive")
            return
        for entry in files:
            if (self.archive / entry["path"]).is_file():
                self.decrypt(entry, archive_id, versions)

    def signature(self, manifest_bytes: bytes) -> None:
        try:
            envelope = json.loads((self.archive / "manifest.sig").read_bytes())
            signature = base64.b64decode(envelope["signature"], validate=True)
        except FileNotFoundError:
            self.fail("manifest.sig", "missing")
            return
        except (ValueError, KeyError, TypeError):
            self.fail("manifest.sig", "damaged")
            return
        try:
            self.signer.verify(signature, manifest_bytes)
        except InvalidSignature:
            if envelope.get("fingerprint") == key_fingerprint(self.signer):
                self.fail("manifest.json", "does not match the trusted signer's signature (altered)")
            else:
                self.fail("manifest.sig", f"not signed by the trusted key (claims {envelope.get('fingerprint')})")

    def version_list(self, record: dict[str, Any]) -> list[Any]:
        """Section 4a: versions.jsonl, checked against the manifest's record of it, one entry a line."""
        if record["path"] != "versions.jsonl":
            self.fail("manifest.json", f"version_list names {record['path']!r}, not versions.jsonl")
            return []
        try:
            data = (self.archive / "versions.jsonl").read_bytes()
        except FileNotFoundError:
            self.fail("versions.jsonl", "missing")
            return []
        if len(data) != record["size"]:
            self.fail("versions.jsonl", f"size {len(data)}, manifest says {record['size']} (truncated or extended)")
        elif hashlib.sha256(data).hexdigest() != record["sha256"]:
            self.fail("versions.jsonl", "SHA-256 differs from the manifest")
        lines = data.split(b"\n")   # only the byte 0x0A ends a line
        if lines[-1] == b"":
            lines.pop()
        if len(lines) != record["entries"]:
            self.fail("versions.jsonl", f"{len(lines)} lines, manifest says {record['entries']} entries")
        versions = []
        for number, line in enumerate(lines, start=1):
            try:
                versions.append(json.loads(line))
            except ValueError:
                self.fail("versions.jsonl", f"line {number} is not JSON")
        return versions

    def listing(self, files: list[dict[str, Any]], also: list[str]) -> None:
        listed = {"manifest.json", "manifest.sig", *also}
        for number, entry in enumerate(files, start=1):
            path = entry["path"]
            listed.add(path)
            if entry.get("seq") != number:
                self.fail("manifest.json", f"seq of {path} is {entry.get('seq')}, expected {number}")
            if path.startswith("/") or ".." in path.split("/") or "\\" in path:
                self.fail("manifest.json", f"unsafe path {path!r}")
                continue
            file = self.archive / path
            if not file.is_file():
                self.fail(path, "missing")
                continue
            size = file.stat().st_size
            if size != entry["size"]:
                self.fail(path, f"size {size}, manifest says {entry['size']} (truncated or extended)")
                continue
            digest = hashlib.sha256()
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != entry["sha256"]:
                self.fail(path, "SHA-256 differs from the manifest")
        for folder, _dirs, names in os.walk(self.archive):
            for name in names:
                relative = Path(folder, name).relative_to(self.archive).as_posix()
                if relative not in listed:
                    self.fail(relative, "not listed in the manifest")

    def decrypt(self, entry: dict[str, Any], archive_id: str, versions: list[dict[str, Any]]) -> None:
        assert self.private is not None
        path = entry["path"]
        try:
            parquet = open_file(self.archive / path, self.private, archive_id, path)
        except RuntimeError as exc:
            self.fail(path, str(exc))
            return
        if parquet.metadata.num_rows != entry["rows"]:
            self.fail(path, f"{parquet.metadata.num_rows} rows, manifest says {entry['rows']}")
        if not self.full:
            return
        expected = {(v["document_id"], v["version_id"]): v for v in versions
                    if not v.get("missing") and v.get("part") == path}
        seen: dict[tuple[str, str], list[Any]] = {}   # version -> [sha256 object, size, chunks]
        previous: tuple[str, str] | None = None
        try:
            if entry["kind"] != "content":
                for _batch in parquet.iter_batches(batch_size=65536):
                    pass
                return
            for batch in parquet.iter_batches(batch_size=32, columns=CONTENT_COLUMNS):
                for row in batch.to_pylist():
                    key = (row["document_id"], row["version_id"])
                    data = row["bytes"] or b""
                    if key not in expected:
                        self.fail(path, f"holds chunks of version {key[1]} that the manifest does not put here")
                        expected[key] = {"sha256": None, "size": None, "chunks": None}
                    if key != previous and key in seen:
                        self.fail(path, f"chunks of version {key[1]} are not in consecutive rows")
                    previous = key
                    state = seen.setdefault(key, [hashlib.sha256(), 0, 0])
                    if hashlib.sha256(data).hexdigest() != row["chunk_sha256"]:
                        self.fail(path, f"chunk {row['chunk_index']} of version {key[1]}: chunk_sha256 differs")
                    if row["chunk_index"] != state[2] or row["offset"] != state[1]:
                        self.fail(path, f"chunk {row['chunk_index']} of version {key[1]} is out of order")
                    state[0].update(data)
                    state[1] += len(data)
                    state[2] += 1
        except (OSError, pa.ArrowException) as exc:
            self.fail(path, f"a page does not decrypt or fails its checksum ({detail(exc)})")
            return
        for key, want in expected.items():
            if want["sha256"] is None:
                continue
            if key not in seen:
                self.fail(path, f"lacks version {key[1]} of document {key[0]}")
                continue
            digest, size, chunks = seen[key]
            if (digest.hexdigest(), size, chunks) != (want["sha256"], want["size"], want["chunks"]):
                self.fail(path, f"version {key[1]} of document {key[0]}: content differs from the manifest "
                                f"(SHA-256 {digest.hexdigest()}, {size} bytes, {chunks} chunks)")


def load_key(path: str, loader: Any, kind: type, what: str) -> Any:
    try:
        key = loader(Path(path).read_bytes())
    except OSError as exc:
        raise Usage(f"cannot read {what} {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise Usage(f"{what} {path} is not a usable PEM key ({exc})") from None
    if not isinstance(key, kind):
        raise Usage(f"{what} {path} is not an {kind.__name__.removesuffix('PublicKey').removesuffix('PrivateKey')} key")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a decom archive following docs/archive-format.md only.")
    parser.add_argument("archive", type=Path)
    parser.add_argument("--signer-key", required=True, help="the trusted signer's Ed25519 public key (PEM)")
    parser.add_argument("--key-file", help="a recipient's X25519 private key (PEM, unencrypted)")
    parser.add_argument("--full", action="store_true", help="decrypt every page and re-hash every version")
    args = parser.parse_args(argv)
    try:
        signer = load_key(args.signer_key, serialization.load_pem_public_key, Ed25519PublicKey, "signer key")
        private = None if args.key_file is None else load_key(
            args.key_file, lambda data: serialization.load_pem_private_key(data, None), X25519PrivateKey, "key file")
        if not args.archive.is_dir():
            raise Usage(f"{args.archive} is not a folder")
        check = Check(args.archive, signer, private, args.full)
        check.run()
    except Usage as exc:
        print(f"verify_archive: {exc}", file=sys.stderr)
        return 2
    for file, what in check.failures:
        print(f"FAIL {file}: {what}")
    mode = "full" if args.full else "quick" + (" with key" if private else "")
    if check.failures:
        print(f"FAIL {args.archive}: {len(check.failures)} problem(s) ({mode})")
        return 1
    print(f"OK {args.archive} ({mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
