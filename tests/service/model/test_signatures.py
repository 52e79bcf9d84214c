"""Manifest signatures: what each signature policy accepts and refuses, and why."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.model.signatures import (
    KEY_ID_PREFIX,
    SignatureError,
    SignaturePolicy,
    key_id,
    parse_public_key,
    signature_document,
)

MANIFEST = b'{"version": "20260101T000000Z-00000000", "thresholds": {"review": 0.5}}'


class _Key:
    """A fresh Ed25519 key pair, as text and as a signer."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_text = base64.b64encode(raw).decode()
        self.id = key_id(raw)

    def sign(self, manifest: bytes = MANIFEST) -> bytes:
        return signature_document(self.id, self.private.sign(manifest))


def _trusting(*keys: _Key, revoked: tuple[str, ...] = ()) -> SignaturePolicy:
    return SignaturePolicy.from_settings([key.public_text for key in keys], revoked)


def _refusal(policy: SignaturePolicy, manifest: bytes, signature: bytes | None) -> str:
    with pytest.raises(SignatureError) as refused:
        policy.check(manifest, signature)
    return refused.value.reason


def test_a_trusted_signature_names_its_key() -> None:
    """A manifest signed by a trusted key is accepted, and the key that signed is named."""
    old, new = _Key(), _Key()
    policy = _trusting(old, new)
    assert policy.check(MANIFEST, new.sign()) == new.id
    assert policy.check(MANIFEST, old.sign()) == old.id


def test_the_key_id_is_the_public_keys_own() -> None:
    """A key id is derived from its public key: different keys, different ids."""
    first, second = _Key(), _Key()
    assert first.id.startswith(KEY_ID_PREFIX)
    assert first.id != second.id
    assert parse_public_key(first.public_text)[0] == first.id


@pytest.mark.parametrize(
    ("text", "message"),
    [("not base64!", "not a base64"), (base64.b64encode(b"short").decode(), "32 bytes")],
)
def test_a_malformed_public_key_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SignaturePolicy.from_settings([text], [])


def test_each_refusal_has_its_reason() -> None:
    """Unsigned, edited after signing, signed by another key, by a revoked key, or a
    signature file that is not one: each refused with its own reason."""
    trusted, stranger = _Key(), _Key()
    policy = _trusting(trusted)
    edited = MANIFEST.replace(b"0.5", b"1.0")
    assert _refusal(policy, MANIFEST, None) == "unsigned"
    assert _refusal(policy, edited, trusted.sign()) == "bad_signature"
    assert _refusal(policy, MANIFEST, stranger.sign()) == "unknown_key"
    assert _refusal(policy, MANIFEST, b"{not json") == "bad_signature"
    revoking = _trusting(trusted, revoked=(trusted.id,))
    assert _refusal(revoking, MANIFEST, trusted.sign()) == "revoked_key"


def test_a_signature_claiming_a_trusted_keys_id_must_verify_with_that_key() -> None:
    """The id in a signature only chooses the key to verify with: a forger who writes the
    trusted key's id over its own signature is refused."""
    trusted, forger = _Key(), _Key()
    forged = json.loads(forger.sign())
    forged["key_id"] = trusted.id
    reason = _refusal(_trusting(trusted), MANIFEST, json.dumps(forged).encode())
    assert reason == "bad_signature"


def test_without_trusted_keys_anything_but_a_revoked_key_is_served_unchecked() -> None:
    """Development: no key to check with, so no signer is vouched for (None), but a key
    the operator revoked is still refused."""
    key = _Key()
    assert SignaturePolicy().check(MANIFEST, None) is None
    assert SignaturePolicy().check(MANIFEST, key.sign()) is None
    revoking = SignaturePolicy(revoked=frozenset({key.id}))
    assert _refusal(revoking, MANIFEST, key.sign()) == "revoked_key"
