"""Raw card numbers (PANs) replaced at the edge by a keyed hash, before anything stores them.

Callers should send a card token. When a `card_id` looks like a card number anyway (13 to 19
digits, spaces and dashes allowed, passing the Luhn check), the server keeps only
"tok_" + the first 32 hex digits of HMAC-SHA256(key, digits). The hash is keyed because
an issuer range holds only about a billion valid numbers: an unkeyed hash of each is
computed in minutes, which would turn every token back into its number. It is computed on
the digits alone so that "4111 1111 1111 1111" and "4111111111111111" are one card.

The token depends only on the key and the digits: every process and every restart that
uses the same key gives a card the same token, which the feature state relies on. A
numeric card id that happens to pass the Luhn check is tokenised too, consistently, which
costs nothing but readability.
"""

from __future__ import annotations

import hashlib
import hmac

TOKEN_PREFIX = "tok_"
_TOKEN_HEX_DIGITS = 32  # 128 bits: no collision among any realistic number of cards
_MIN_DIGITS = 13
_MAX_DIGITS = 19
# Luhn doubles every second digit from the right: each digit to the digit sum of its double.
_DOUBLED = str.maketrans("0123456789", "0246813579")


def _digits_of_card_number(text: str) -> str | None:
    """The digits of `text` if it is shaped like a card number, else None (Luhn unchecked)."""
    if len(text) < _MIN_DIGITS:
        return None  # the common case, a short token, leaves here
    digits = text.replace(" ", "").replace("-", "")
    if _MIN_DIGITS <= len(digits) <= _MAX_DIGITS and digits.isascii() and digits.isdigit():
        return digits
    return None


def _passes_luhn(digits: str) -> bool:
    """Whether the ASCII digit string `digits` has a valid Luhn check digit."""
    doubled = digits[-2::-2].translate(_DOUBLED)
    # Summing ASCII codes, less "0" once per digit, saves an int() per digit.
    total = sum(digits[-1::-2].encode()) + sum(doubled.encode()) - ord("0") * len(digits)
    return total % 10 == 0


def looks_like_card_number(text: str) -> bool:
    """Whether `text` is 13-19 digits (spaces and dashes allowed) with a valid Luhn digit."""
    digits = _digits_of_card_number(text)
    return digits is not None and _passes_luhn(digits)


class CardTokenizer:
    """Replaces card numbers by stable keyed tokens; leaves every other card id alone.

    Safe to share between threads: each call works on its own copy of the keyed hash.
    """

    def __init__(self, key: bytes) -> None:
        """Tokens are keyed with `key`, which must be the same in every worker and restart."""
        if not key:
            raise ValueError("the card token key must not be empty")
        # The key is absorbed once; each token copies this state instead of re-keying.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def token(self, card_id: str) -> str:
        """`card_id` unchanged, or "tok_" + a keyed hash of its digits if it is a card number."""
        digits = _digits_of_card_number(card_id)
        if digits is None or not _passes_luhn(digits):
            return card_id
        mac = self._keyed.copy()
        mac.update(digits.encode("ascii"))
        return TOKEN_PREFIX + mac.hexdigest()[:_TOKEN_HEX_DIGITS]
