"""Ed25519 signatures of model manifests: who published a version, checked before it is served.

The manifest lists every file's SHA-256, so one signature over its exact bytes covers the
whole artifact: thresholds, feature list and golden sample, which no checksum covers, and
through the checksums every model file. `fraud-train` signs (`training.registry.signing`)
and writes the signature beside the manifest:

    <version>/manifest.sig   {"algorithm": "ed25519", "key_id": "...", "signature": "<base64>"}

The signature is not listed in the manifest (it signs the manifest), so signing a version
published before signing existed adds a file and changes none.

A key is known by its id, derived from the public key itself (`key_id`), so a signature
cannot claim another key's name: the server looks the id up among the public keys it
trusts (`SignaturePolicy`), refuses a revoked id whatever else is configured, and verifies.
Plain `cryptography` Ed25519 rather than Sigstore's `model-signing`: the keys stay offline
with the issuer (no transparency log or OIDC identity to reach from inside a
cardholder-data network), and the manifest already is the list of file digests that
`model-signing` would build.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_FILE = "manifest.sig"
SIGNATURE_ALGORITHM = "ed25519"
KEY_ID_PREFIX = "ed25519-"
PUBLIC_KEY_BYTES = 32

SignatureRefusal = Literal["unsigned", "bad_signature", "unknown_key", "revoked_key"]


class SignatureError(Exception):
    """A signature the policy refuses; `reason` says which check failed."""

    def __init__(self, message: str, *, reason: SignatureRefusal) -> None:
        super().__init__(message)
        self.reason: SignatureRefusal = reason


def key_id(public_key: bytes) -> str:
    """The id of a raw 32-byte Ed25519 public key: a prefix of its SHA-256."""
    return KEY_ID_PREFIX + hashlib.sha256(public_key).hexdigest()[:16]


def parse_public_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """A public key as `fraud-train keys generate` prints it (base64 of the 32 raw bytes)
    and its id; ValueError if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as error:
        raise ValueError(f"not a base64 Ed25519 public key: {error}") from error
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, this one is {len(raw)}"
        )
    return key_id(raw), Ed25519PublicKey.from_public_bytes(raw)


def signature_document(key: str, signature: bytes) -> bytes:
    """The content of `SIGNATURE_FILE` for `signature` made by key id `key`."""
    document = {
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": key,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Signature:
    """A parsed `SIGNATURE_FILE`."""

    key_id: str
    signature: bytes

    @classmethod
    def parse(cls, content: bytes) -> Signature:
        """SignatureError (bad_signature) if `content` is not a signature document."""
        try:
            document = json.loads(content)
            if not isinstance(document, dict) or document.get("algorithm") != "ed25519":
                raise ValueError(f"algorithm must be {SIGNATURE_ALGORITHM!r}")
            key = document["key_id"]
            signature = base64.b64decode(document["signature"], validate=True)
            if not isinstance(key, str):
                raise ValueError("key_id must be a string")
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            raise SignatureError(
                f"{SIGNATURE_FILE} is not a signature: {error}", reason="bad_signature"
            ) from error
        return cls(key, signature)


@dataclass(frozen=True)
class SignaturePolicy:
    """Which manifest signatures a server accepts.

    With trusted keys, every version must be signed by one of them. Without (development),
    a version is served whoever signed it, or nobody: the signer is not checked, and the
    server says so when it serves one. A revoked key id is refused either way.
    """

    trusted: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    revoked: frozenset[str] = frozenset()

    @classmethod
    def from_settings(
        cls, trusted_keys: Iterable[str], revoked_keys: Iterable[str]
    ) -> SignaturePolicy:
        """The policy of the `models.trusted_keys` public keys and `models.revoked_keys` ids;
        ValueError for a key that does not parse."""
        return cls(dict(parse_public_key(text) for text in trusted_keys), frozenset(revoked_keys))

    @property
    def required(self) -> bool:
        """Whether every version must carry a trusted signature."""
        return bool(self.trusted)

    def check(self, manifest: bytes, signature_file: bytes | None) -> str | None:
        """The id of the trusted key that signed `manifest`, or None when the policy does
        not require one; SignatureError when it refuses."""
        if signature_file is None:
            if self.required:
                raise SignatureError(
                    f"unsigned ({SIGNATURE_FILE} missing) and this server only serves "
                    "versions signed by a trusted key: sign it with `fraud-train registry sign`",
                    reason="unsigned",
                )
            return None
        signature = Signature.parse(signature_file)
        if signature.key_id in self.revoked:
            raise SignatureError(f"signed by revoked key {signature.key_id}", reason="revoked_key")
        if not self.required:
            return None
        public_key = self.trusted.get(signature.key_id)
        if public_key is None:
            raise SignatureError(
                f"signed by key {signature.key_id}, which this server does not trust "
                f"(trusted: {', '.join(sorted(self.trusted))})",
                reason="unknown_key",
            )
        try:
            public_key.verify(signature.signature, manifest)
        except InvalidSignature as error:
            raise SignatureError(
                f"the signature of key {signature.key_id} does not match the manifest: the "
                "manifest was changed after signing, or the signature belongs to another one",
                reason="bad_signature",
            ) from error
        return signature.key_id


UNCHECKED = SignaturePolicy()
