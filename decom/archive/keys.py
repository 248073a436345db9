"""Archive keys: X25519 recipients, Ed25519 signers, and the envelope that wraps a file's data key.

docs/archive-format.md section 2 is the contract: a data key is wrapped for each recipient with
X25519 + HKDF-SHA256 + AES-256-GCM, authenticated together with the binding (archive id, path),
so a file moved elsewhere cannot be opened as if it belonged there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from decom.errors import UserError

WRAP_ALG = "X25519-HKDF-SHA256-A256GCM"
WRAP_INFO = b"decom archive key wrap v1"


class KeyNotRecipient(Exception):
    """The private key given is not among the file's recipients ("wrong key")."""


class BindingMismatch(Exception):
    """The wrapped key does not authenticate for the expected archive and path (moved or altered)."""


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _raw(public: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: X25519PublicKey | Ed25519PublicKey) -> str:
    prefix = "x25519" if isinstance(public, X25519PublicKey) else "ed25519"
    return f"{prefix}:{hashlib.sha256(_raw(public)).hexdigest()}"


def public_pem(public: X25519PublicKey | Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# --- loading and generating ------------------------------------------------------------------------

def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_public(path: Path, kind: type[X25519PublicKey] | type[Ed25519PublicKey]) -> Any:
    what = "recipient public key" if kind is X25519PublicKey else "signer public key"
    try:
        key = serialization.load_pem_public_key(_read(path, what))
    except ValueError:
        raise UserError(f"{what} {path} is not a PEM public key") from None
    if not isinstance(key, kind):
        wanted = "X25519" if kind is X25519PublicKey else "Ed25519"
        raise UserError(f"{what} {path} is a {type(key).__name__.removeprefix('_')}, not an {wanted} key")
    return key


def load_private(path: Path, kind: type[X25519PrivateKey] | type[Ed25519PrivateKey],
                 passphrase: str | None = None) -> Any:
    what = "private key" if kind is X25519PrivateKey else "signing key"
    try:
        key = serialization.load_pem_private_key(_read(path, what), passphrase.encode() if passphrase else None)
    except TypeError:
        raise UserError(f"{what} {path} is protected by a passphrase; give it") from None
    except ValueError:
        raise UserError(f"{what} {path} is not a PEM private key, or the passphrase is wrong") from None
    if not isinstance(key, kind):
        wanted = "X25519" if kind is X25519PrivateKey else "Ed25519"
        raise UserError(f"{what} {path} is not an {wanted} private key")
    return key


def generate(kind: str, out_prefix: Path) -> tuple[Path, Path]:
    """Write <prefix>.key (private, mode 0600) and <prefix>.pub; refuse to overwrite either."""
    private: X25519PrivateKey | Ed25519PrivateKey
    if kind == "recipient":
        private = X25519PrivateKey.generate()
    elif kind == "signing":
        private = Ed25519PrivateKey.generate()
    else:
        raise UserError(f"key kind must be 'recipient' or 'signing', not {kind!r}")
    key_path, pub_path = out_prefix.with_name(out_prefix.name + ".key"), out_prefix.with_name(out_prefix.name + ".pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise UserError(f"{path} already exists; not overwriting a key")
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    pub_path.write_text(public_pem(private.public_key()), encoding="utf-8")
    return key_path, pub_path


# --- the envelope ----------------------------------------------------------------------------------

def _kek(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=ephemeral + recipient, info=WRAP_INFO).derive(shared)


def wrap(data_key: bytes, recipients: list[X25519PublicKey], binding: dict[str, str],
         check: X25519PublicKey | None = None) -> str:
    """The wrapped-key JSON for a file's data key (section 2 of docs/archive-format.md)."""
    aad = canonical_json(binding)
    entries = []
    for recipient, is_check in [(r, False) for r in recipients] + ([(check, True)] if check else []):
        ephemeral = X25519PrivateKey.generate()
        epk, rpk = _raw(ephemeral.public_key()), _raw(recipient)
        nonce = os.urandom(12)
        ct = AESGCM(_kek(ephemeral.exchange(recipient), epk, rpk)).encrypt(nonce, data_key, aad)
        entry: dict[str, Any] = {"fp": fingerprint(recipient), "epk": base64.b64encode(epk).decode(),
                 "nonce": base64.b64encode(nonce).decode(), "ct": base64.b64encode(ct).decode()}
        if is_check:
            entry["check"] = True
        entries.append(entry)
    return json.dumps({"v": 1, "alg": WRAP_ALG, "binding": binding, "recipients": entries}, sort_keys=True)


def recipients_of(wrapped: str) -> list[str]:
    """Fingerprints a wrapped key was made for (check keys left out)."""
    return [e["fp"] for e in json.loads(wrapped)["recipients"] if not e.get("check")]


def unwrap(wrapped: str, private: X25519PrivateKey, expected_binding: dict[str, str]) -> bytes:
    """The data key, if `private` is a recipient and the binding authenticates; else a precise exception."""
    document = json.loads(wrapped)
    mine = fingerprint(private.public_key())
    entry = next((e for e in document.get("recipients", []) if e.get("fp") == mine), None)
    if entry is None:
        raise KeyNotRecipient(mine)
    epk = base64.b64decode(entry["epk"])
    kek = _kek(private.exchange(X25519PublicKey.from_public_bytes(epk)), epk, _raw(private.public_key()))
    try:
        return AESGCM(kek).decrypt(base64.b64decode(entry["nonce"]), base64.b64decode(entry["ct"]),
                                   canonical_json(expected_binding))
    except InvalidTag:
        raise BindingMismatch(json.dumps(document.get("binding"), sort_keys=True)) from None
