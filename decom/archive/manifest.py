"""manifest.json and manifest.sig: what an archive holds, hashed, Merkle-rooted and signed (Ed25519).

Encryption alone does not catch a file swapped, deleted, added or put back from an older archive;
the signed list of files with their SHA-256 and the Merkle root over versions do. The versions
themselves are in versions.jsonl, which the manifest binds by its SHA-256 (version_list.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from decom.archive.keys import canonical_json, fingerprint, public_pem
from decom.errors import UserError
from decom.fileio import atomic_path

MANIFEST, SIGNATURE, VERSION_LIST = "manifest.json", "manifest.sig", "versions.jsonl"
FORMAT, FORMAT_VERSION = "decom-archive", 2
SHA256_HEX = re.compile(r"[0-9a-f]{64}")   # how the manifest writes every SHA-256 (fullmatch)


def recorded_mismatch(size: int, digest: str, recorded_size: Any, recorded_sha256: Any) -> tuple[str, str] | None:
    """(what, kind) when a file's size or SHA-256 differs from what the manifest records of it, else None."""
    if size != recorded_size:
        how = "truncated or replaced" if size < recorded_size else "longer than recorded (appended to or replaced)"
        return f"{how}: {size} bytes on disk, the manifest says {recorded_size}", "size"
    if digest != recorded_sha256:
        return (f"SHA-256 {digest} does not match the manifest's {recorded_sha256} (bit flip, edited, or a file "
                "from another archive)", "sha256")
    return None


_NODE = b"decom-node\x00"   # section 7: node = SHA-256(_NODE + left + right)


def _leaf(version: dict[str, Any]) -> bytes:
    """Section 7's leaf of one manifest entry; KeyError/TypeError when it lacks what a leaf needs."""
    gone = bool(version.get("missing"))
    return leaves_of([version["document_id"]], [version["version_id"]], [gone],
                     [None if gone else str(version["sha256"])])[0]


def _node(left: bytes, right: bytes) -> bytes:
    return sha256(_NODE + left + right).digest()


class MerkleRoot:
    """Section 7's root built as leaves arrive, holding one node per level (log2 n of them) and at
    most SUBTREE leaves not yet placed.

    The section pairs a level's nodes left to right and moves an odd last node up unpaired; merging
    equal-height subtrees as they complete, then the rest right to left, gives the same tree. Leaves
    wait in `_pending` until SUBTREE of them make a complete subtree, which is reduced level by level
    in one go (what adding them one by one would build, at a fraction of the cost), so callers may
    add leaves in batches of any size; the rest are placed one by one when the root is asked for.
    """

    SUBTREE = 1 << 13

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []   # (height, node), heights strictly decreasing
        self._count = 0                             # leaves placed on the stack
        self._pending: list[bytes] = []

    def add(self, version: dict[str, Any]) -> None:
        """Add the leaf of one manifest entry; KeyError/TypeError when it lacks what a leaf needs."""
        self.add_leaves([_leaf(version)])

    def add_leaves(self, leaves: list[bytes]) -> None:
        """Add leaves (section 7's, in list order)."""
        pending = self._pending
        pending.extend(leaves)
        at, size = 0, self.SUBTREE
        while self._count % size and at < len(pending):   # after _place_pending: align to a subtree
            self._push(pending[at], 0)
            at, self._count = at + 1, self._count + 1
        while len(pending) - at >= size:
            level, at = pending[at:at + size], at + size
            while len(level) > 1:
                level = [sha256(_NODE + left + right).digest()   # _node inlined: 1,000,000 calls
                         for left, right in zip(level[::2], level[1::2], strict=True)]
            self._push(level[0], size.bit_length() - 1)
            self._count += size
        del pending[:at]

    def _place_pending(self) -> None:
        for leaf in self._pending:
            self._push(leaf, 0)
            self._count += 1
        self._pending.clear()

    def _push(self, node: bytes, height: int) -> None:
        while self._stack and self._stack[-1][0] == height:
            node, height = _node(self._stack.pop()[1], node), height + 1
        self._stack.append((height, node))

    def hexdigest(self) -> str:
        self._place_pending()
        if not self._stack:
            return hashlib.sha256(b"decom-empty").hexdigest()
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = _node(left, node)
        return node.hex()


def leaves_of(documents: list[str], versions: list[str], missing: list[bool], hashes: list[str | None]) -> list[bytes]:
    """Section 7's leaves of versions given as columns (`missing` true: the content was missing)."""
    return [sha256(f"decom-leaf\x00{d}\x00{v}\x00{'missing' if gone else h}".encode()).digest()
            for d, v, gone, h in zip(documents, versions, missing, hashes, strict=True)]


def merkle_root(versions: list[dict[str, Any]]) -> str:
    """Section 7 of docs/archive-format.md: leaves in manifest order, pairs hashed, odd node moves up."""
    root = MerkleRoot()
    for version in versions:
        root.add(version)
    return root.hexdigest()


def manifest_head(*, archive_id: str, run_id: str, plan_name: str, plan_sha256: str, created_at: str,
                  source: str, freeze: dict[str, Any] | None, signer: Ed25519PublicKey, recipients: list[str],
                  files: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
    """Every key of a manifest but `version_list` and `merkle_root` (section 4)."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "archive_id": archive_id, "run_id": run_id,
        "plan_name": plan_name, "plan_sha256": plan_sha256, "created_at": created_at, "source": source,
        "freeze": freeze,
        "signer": {"alg": "Ed25519", "public_key_pem": public_pem(signer), "fingerprint": fingerprint(signer)},
        "recipients": recipients, "files": sorted(files, key=lambda f: f["seq"]), "counts": counts,
    }


def write_manifest(archive_dir: Path, *, versions: list[dict[str, Any]], signing_key: Ed25519PrivateKey,
                   **head: Any) -> str:
    """Write versions.jsonl, manifest.json and manifest.sig from entries held as dicts; the manifest's
    SHA-256. The reference for what the backup writes from columns (manifest_versions.py), and how
    tests write the manifest of an archive they altered."""
    versions = sorted(versions, key=lambda v: (v["document_id"], v["version_id"]))
    listed = write_version_list(archive_dir, [version_lines(versions)], len(versions))
    manifest = {**manifest_head(**head), "version_list": listed, "merkle_root": merkle_root(versions)}
    return write_signed(archive_dir, manifest, signing_key)


def version_lines(versions: Iterable[Mapping[str, Any]]) -> bytes:
    """The bytes of versions.jsonl for entries already in order: each entry's canonical JSON and "\\n"."""
    return b"".join(canonical_json(dict(v)) + b"\n" for v in versions)


def write_version_list(archive_dir: Path, blocks: Iterable[bytes | bytearray], count: int) -> dict[str, Any]:
    """Write versions.jsonl from `blocks` (whole lines, `count` of them) durably and atomically; its
    `version_list` record for the manifest (section 4a)."""
    digest, size = hashlib.sha256(), 0
    with atomic_path(archive_dir / VERSION_LIST) as tmp, tmp.open("wb") as out:
        for block in blocks:
            out.write(block)
            digest.update(block)
            size += len(block)
    return {"path": VERSION_LIST, "entries": count, "size": size, "sha256": digest.hexdigest()}


def write_signed(archive_dir: Path, manifest: dict[str, Any], signing_key: Ed25519PrivateKey) -> str:
    """Write manifest.json (canonical JSON) then manifest.sig, each atomically; returns the manifest's SHA-256."""
    data = canonical_json(manifest)
    signature = {"alg": "Ed25519", "fingerprint": fingerprint(signing_key.public_key()),
                 "signature": base64.b64encode(signing_key.sign(data)).decode()}
    with atomic_path(archive_dir / MANIFEST) as tmp:
        tmp.write_bytes(data)
    with atomic_path(archive_dir / SIGNATURE) as tmp:
        tmp.write_bytes(canonical_json(signature))
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(archive_dir: Path) -> bytes:
    path = archive_dir / MANIFEST
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: {archive_dir} is not a decom archive") from None


def not_a_manifest(path: Path, data: bytes) -> UserError:
    """The error for bytes that do not parse as a manifest: not JSON at all, or JSON of another shape."""
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return UserError(f"{path} is not valid JSON")
    return UserError(f"{path} is not a decom archive manifest")


def read_manifest(archive_dir: Path) -> tuple[dict[str, Any], bytes]:
    data = manifest_bytes(archive_dir)
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise not_a_manifest(archive_dir / MANIFEST, data) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{archive_dir / MANIFEST} is not a decom archive manifest")
    return manifest, data


def detached_signature_problem(signature_file: Path, data: bytes, embedded_pem: Any,
                               trusted: Ed25519PublicKey | str, *, owner: str, signed_file: str,
                               prefix: str = "") -> str | None:
    """None when `signature_file` (a detached Ed25519 signature) signs `data` with the trusted key; else why not.

    `trusted` is a public key, or a fingerprint: then the signer key embedded in the signed document
    (`embedded_pem`) is used if its fingerprint is the trusted one. `owner` ("manifest", "record") and
    `signed_file` name the document in messages; `prefix` starts the "signed by another key" message.
    """
    try:
        signature = json.loads(signature_file.read_bytes())
        raw = base64.b64decode(signature["signature"], validate=True)
    except FileNotFoundError:
        return f"{signature_file.name} is missing"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
        return f"{signature_file.name} is damaged"
    if isinstance(trusted, Ed25519PublicKey):
        key = trusted
    else:
        try:
            loaded = serialization.load_pem_public_key(str(embedded_pem).encode()) if embedded_pem else None
        except (ValueError, TypeError, UnicodeDecodeError):
            loaded = None
        if loaded is None:
            return f"the {owner}'s signer key is unreadable"
        if not isinstance(loaded, Ed25519PublicKey) or fingerprint(loaded) != trusted.lower():
            return f"{prefix}signed by {signature.get('fingerprint')}, not by the trusted key {trusted}"
        key = loaded
    try:
        key.verify(raw, data)
    except InvalidSignature:
        if signature.get("fingerprint") != fingerprint(key):
            return f"{prefix}signed by {signature.get('fingerprint')}, not by the trusted key {fingerprint(key)}"
        return f"the signature does not match {signed_file}: the {owner} or its signature was altered"
    return None


def signature_problem(archive_dir: Path, manifest_bytes: bytes, trusted: Ed25519PublicKey | str,
                      parsed: Mapping[str, Any] | None = None) -> str | None:
    """None when manifest.sig signs these bytes with the trusted key (or fingerprint); else why not.
    A fingerprint needs the signer key the manifest embeds: taken from `parsed` (the manifest's top
    level, when the caller has read it without its versions), else from json.loads of the bytes."""
    embedded = None
    if not isinstance(trusted, Ed25519PublicKey):
        if parsed is None:
            try:
                parsed = json.loads(manifest_bytes)
            except (ValueError, UnicodeDecodeError):
                parsed = None
        signer = parsed.get("signer") if isinstance(parsed, Mapping) else None
        embedded = signer.get("public_key_pem") if isinstance(signer, Mapping) else None
    return detached_signature_problem(archive_dir / SIGNATURE, manifest_bytes, embedded, trusted,
                                      owner="manifest", signed_file=MANIFEST)
