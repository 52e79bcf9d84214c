"""Signing keys and manifest signatures, the write side of `service.model.signatures`.

A key pair is two files: `<name>.key`, the Ed25519 private key (PKCS#8 PEM, mode 0600,
kept offline with whoever publishes models), and `<name>.pub`, the public key as one line
of base64, which is what a server lists in `models.trusted_keys`. The key id every
signature carries is derived from the public key, so it needs no file of its own.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.model.artifact import MANIFEST_FILE
from service.model.registry import RegistryError
from service.model.signatures import SIGNATURE_FILE, SignaturePolicy, key_id, signature_document
from training.durable_files import fsync_path

PRIVATE_KEY_SUFFIX = ".key"
PUBLIC_KEY_SUFFIX = ".pub"


@dataclass(frozen=True)
class SigningKey:
    """A private key and the id of its public half."""

    key_id: str
    private_key: Ed25519PrivateKey

    @property
    def public_text(self) -> str:
        """The public key as `models.trusted_keys` lists it."""
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")

    @property
    def policy(self) -> SignaturePolicy:
        """A policy that trusts this key alone: to check a signature just made."""
        return SignaturePolicy.from_settings([self.public_text], [])

    @classmethod
    def of(cls, private_key: Ed25519PrivateKey) -> SigningKey:
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(key_id(raw), private_key)


def generate_key_pair(directory: Path, name: str) -> tuple[SigningKey, Path, Path]:
    """A new key pair written to `directory` as `<name>.key` (0600) and `<name>.pub`; the
    key and both paths. RegistryError rather than overwrite an existing key."""
    if not name or Path(name).name != name or name.startswith("."):
        raise RegistryError(f"key name {name!r} must be a plain file name")
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{name}{PRIVATE_KEY_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_KEY_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise RegistryError(f"{path} exists: keys are never overwritten; choose another name")
    key = SigningKey.of(Ed25519PrivateKey.generate())
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(private_path, pem, mode=0o600)
    _write_new(public_path, f"{key.public_text}\n".encode("ascii"), mode=0o644)
    fsync_path(directory)
    return key, private_path, public_path


def load_signing_key(path: Path) -> SigningKey:
    """The private key in `path`; RegistryError saying why if it is not one."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise RegistryError(f"signing key {path}: {error.strerror}") from error
    try:
        private_key = serialization.load_pem_private_key(content, password=None)
    except (ValueError, TypeError) as error:
        raise RegistryError(f"signing key {path}: not an unencrypted PEM key ({error})") from error
    if not isinstance(private_key, Ed25519PrivateKey):
        raise RegistryError(f"signing key {path}: not an Ed25519 key")
    return SigningKey.of(private_key)


def write_signature(artifact_dir: Path, key: SigningKey) -> None:
    """Sign the manifest of `artifact_dir` with `key`: the signature is written aside,
    fsynced and renamed into place, replacing any earlier one."""
    manifest = (artifact_dir / MANIFEST_FILE).read_bytes()
    document = signature_document(key.key_id, key.private_key.sign(manifest))
    target = artifact_dir / SIGNATURE_FILE
    aside = artifact_dir / f".{SIGNATURE_FILE}.tmp"
    try:
        _write_new(aside, document, mode=0o644, replace=True)
        aside.replace(target)
    finally:
        aside.unlink(missing_ok=True)
    fsync_path(artifact_dir)


def _write_new(path: Path, content: bytes, *, mode: int, replace: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    descriptor = os.open(path, flags, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
