"""Card numbers replaced at the edge by a keyed token naming its key, before anything stores
them.

Callers should send a card token. When a `card_id` holds a card number anyway (plain, in
groups, or inside track-1 or track-2 data: `service.core.card_data`), the server keeps only
"<key id>:" + the first 32 hex digits of HMAC-SHA256(key, digits), e.g. "k1:3f0c...". The
hash is keyed because an issuer range holds only about a billion valid numbers: an unkeyed
hash of each is computed in minutes, which would turn every token back into its number. It
is computed on the digits alone, so "4111 1111 1111 1111", "4111.1111.1111.1111", the track
data of that card and "4111111111111111" are one card.

The token depends only on the key, its id and the digits: every process and every restart
that uses the same key gives a card the same token, which the feature state relies on. A
card id holding digits that happen to pass the Luhn check is tokenised too, consistently,
which costs nothing but readability.

Key ids name the key a token was made with, so that tokens of two keys never collide and a
rotation can tell them apart. The id `tok` names the tokens of releases before key ids,
written "tok_" + the hash. During a rotation the tokenizer also holds the previous key:
`previous_token` is the token a card had under it, which the feature state reads when the
card has no history under its current token yet (docs/security.md, "Rotating the token key").
"""

from __future__ import annotations

import hashlib
import hmac
import re

from service.core.card_data import first_card_number

DEFAULT_KEY_ID = "k1"
LEGACY_KEY_ID = "tok"
"""The tokens of releases before key ids: "tok_" + the hash rather than "tok:"."""
KEY_ID_PATTERN = r"[a-z0-9]{1,16}"
_KEY_ID = re.compile(KEY_ID_PATTERN)
_TOKEN_HEX_DIGITS = 32  # 128 bits: no collision among any realistic number of cards


class _TokenKey:
    """One key and the prefix of its tokens."""

    __slots__ = ("_keyed", "_prefix")

    def __init__(self, key: bytes, key_id: str) -> None:
        if not key:
            raise ValueError("the card token key must not be empty")
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError(
                f"card token key id {key_id!r} must be 1-16 lower-case letters or digits"
            )
        self._prefix = "tok_" if key_id == LEGACY_KEY_ID else key_id + ":"
        # The key is absorbed once; each token copies this state instead of re-keying.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def token(self, digits: str) -> str:
        mac = self._keyed.copy()
        mac.update(digits.encode("ascii"))
        return self._prefix + mac.hexdigest()[:_TOKEN_HEX_DIGITS]


class CardTokenizer:
    """Replaces card numbers by stable keyed tokens; leaves every other card id alone.

    Safe to share between threads: each call works on its own copy of the keyed hash.
    """

    def __init__(
        self,
        key: bytes,
        key_id: str = DEFAULT_KEY_ID,
        *,
        previous_key: bytes | None = None,
        previous_key_id: str | None = None,
    ) -> None:
        """Tokens are keyed with `key` and named `key_id`: both must be the same in every
        worker, replica and restart. `previous_key` and `previous_key_id`, given together,
        are the key being rotated out. ValueError for an empty key or a malformed id."""
        self._current = _TokenKey(key, key_id)
        self.key_id = key_id
        if (previous_key is None) != (previous_key_id is None):
            raise ValueError("previous_key and previous_key_id go together")
        self._previous: _TokenKey | None = None
        if previous_key is not None and previous_key_id is not None:
            if previous_key_id == key_id:
                raise ValueError(f"the previous key id must differ from {key_id!r}")
            self._previous = _TokenKey(previous_key, previous_key_id)

    @property
    def rotating(self) -> bool:
        """Whether a previous key is held: card histories are being carried over to the
        current key's tokens."""
        return self._previous is not None

    def token(self, card_id: str) -> str:
        """`card_id` unchanged, or the token of the first card number it holds."""
        digits = first_card_number(card_id)
        return card_id if digits is None else self._current.token(digits)

    def previous_token(self, card_id: str) -> str | None:
        """The previous key's token of the card number `card_id` holds; None when no
        previous key is held or `card_id` holds no card number."""
        previous = self._previous
        if previous is None:
            return None
        digits = first_card_number(card_id)
        return None if digits is None else previous.token(digits)
