"""Ed25519 signatures over a model pack's digest (docs/model-pack.md, "Signature").

The ML team signs a pack with ``edge-export sign PACK --key PRIVATE``; that writes
``PACK/signature.json``::

    {"digest": "<pack digest>", "key_id": "<16 hex>", "signature": "<base64>", "signed_at": "..."}

The signature covers the pack digest (sha256 over every file of the folder), so one signature
vouches for the manifest, the seal-checked networks and every test image together; the
signature file itself is left out of the digest like the seal.  A worker with
``[pack] trusted_keys`` refuses a pack that is unsigned, signed by a key it does not trust, or
changed after signing (the recorded digest is not the digest of the folder as it is now).
Each refusal is a :class:`~edge_worker.errors.PackError` naming the pack folder.

Keys are raw Ed25519 keys in PEM files (PKCS#8 private, SubjectPublicKeyInfo public), read
and written through ``cryptography``; the worker never needs the private key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_worker.errors import ConfigError, PackError
from edge_worker.packs.pack import SIGNATURE_FILE

__all__ = ["SIGNATURE_FILE", "generate_keys", "key_id", "load_trusted_keys", "sign_digest",
           "verify_signature", "write_signature"]
#: What the signature covers: a fixed prefix, so a pack signature is never valid for anything else.
_CONTEXT = b"edge-worker/model-pack-signature@1\n"


def key_id(public: Ed25519PublicKey) -> str:
    """The short id of a public key: the first 16 hex digits of sha256 over its raw 32 bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _message(digest: str) -> bytes:
    return _CONTEXT + digest.encode("ascii")


def generate_keys(out: Path, name: str = "pack-signing") -> tuple[Path, Path]:
    """Write a new key pair into ``out``: ``NAME.key`` (private, mode 0600, never overwritten)
    and ``NAME.pub``.  Returns (private path, public path); raises ``FileExistsError`` when
    the private key file is already there."""
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL: never replace a key the team already signs with; 0600 from the first byte.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key; raises ``ValueError`` for anything else."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key; raises ``ValueError`` for anything else."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def load_trusted_keys(paths: Sequence[str]) -> dict[str, Ed25519PublicKey]:
    """The configured ``pack.trusted_keys`` as ``{key id: key}``; a missing or unreadable key
    file is a config mistake and raises :class:`ConfigError` naming it."""
    keys: dict[str, Ed25519PublicKey] = {}
    for i, name in enumerate(paths):
        try:
            key = load_public_key(Path(name))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"pack.trusted_keys[{i}]: {exc}") from exc
        keys[key_id(key)] = key
    return keys


def sign_digest(digest: str, key: Ed25519PrivateKey) -> dict[str, str]:
    """The signature record for a pack digest (the content of ``signature.json``)."""
    return {
        "digest": digest,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(_message(digest))).decode("ascii"),
        "signed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_signature(root: Path, record: dict[str, str]) -> Path:
    """Write ``record`` as ``root/signature.json`` (temporary file, then rename); returns it."""
    path = root / SIGNATURE_FILE
    tmp = root / f".{SIGNATURE_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def verify_signature(root: Path, digest: str, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Check ``root/signature.json`` against the pack's current ``digest`` and the trusted keys.

    Returns the signing key id; raises :class:`PackError` naming ``root`` when the pack is
    unsigned, the signature file is unreadable, the key is not trusted, the pack changed after
    signing, or the signature does not verify.  With no trusted keys nothing is required and
    an empty string is returned.
    """
    if not trusted:
        return ""
    path = root / SIGNATURE_FILE
    if not path.is_file():
        raise PackError(f"pack {root}: unsigned ({SIGNATURE_FILE} missing) and trusted keys are set")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        signed_digest, kid = str(record["digest"]), str(record["key_id"])
        signature = base64.b64decode(str(record["signature"]), validate=True)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise PackError(f"pack {root}: unreadable {SIGNATURE_FILE}: {exc}") from exc
    key = trusted.get(kid)
    if key is None:
        raise PackError(f"pack {root}: signed by key {kid}, which is not among the trusted keys "
                        f"({', '.join(sorted(trusted))})")
    if signed_digest != digest:
        raise PackError(f"pack {root}: changed after signing (signed digest {signed_digest[:12]}, "
                        f"folder digest {digest[:12]})")
    try:
        key.verify(signature, _message(digest))
    except InvalidSignature as exc:
        raise PackError(f"pack {root}: the signature by key {kid} does not verify") from exc
    return kid
