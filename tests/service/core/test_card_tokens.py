"""Tests for service.core.card_tokens: keyed tokens named by their key, and the previous
key's tokens during a rotation."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from service.core.card_tokens import CardTokenizer

KEY = b"test key, not a secret"
OTHER_KEY = b"another test key, not a secret"
# Public test numbers of the card schemes: 16, 15, 16 and 13 digits, all Luhn-valid.
VISA = "4111111111111111"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
VISA_13 = "4222222222222"
TOKEN = re.compile(r"k1:[0-9a-f]{32}")


@pytest.mark.parametrize("card_id", ["card000123", "4111111111111112", "", "x" * 200])
def test_other_card_ids_pass_through(card_id: str) -> None:
    """A card id holding no card number is returned unchanged."""
    assert CardTokenizer(KEY).token(card_id) == card_id


@pytest.mark.parametrize("number", [VISA, AMEX, DISCOVER, VISA_13])
def test_card_numbers_become_tokens_named_by_their_key(number: str) -> None:
    """A card number becomes "k1:" + 32 hex digits containing neither it nor its last four."""
    token = CardTokenizer(KEY).token(number)
    assert TOKEN.fullmatch(token)
    assert number not in token
    assert number[-4:] not in token


def test_every_form_of_one_card_gives_one_token() -> None:
    """Grouped, dotted, inside track 1 or track 2 data: one card, one token (track data is
    reduced to its PAN)."""
    tokenizer = CardTokenizer(KEY)
    forms = (
        VISA,
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111.1111.1111.1111",
        f"%B{VISA}^CARDHOLDER/TEST^2512101000000123456?",
        f";{VISA}=25121010000012345678?",
    )
    assert {tokenizer.token(form) for form in forms} == {tokenizer.token(VISA)}


def test_tokens_depend_on_the_key_its_id_and_the_card() -> None:
    """Another key, another id or another card gives another token; the id leads it."""
    token = CardTokenizer(KEY).token(VISA)
    assert token != CardTokenizer(OTHER_KEY).token(VISA)
    assert token != CardTokenizer(KEY).token(DISCOVER)
    renamed = CardTokenizer(KEY, "k2").token(VISA)
    assert renamed.startswith("k2:")
    assert renamed.removeprefix("k2:") == token.removeprefix("k1:")


def test_the_legacy_id_writes_tokens_as_releases_before_key_ids() -> None:
    """Key id "tok": "tok_" + the same hash, as tokens were written before key ids."""
    assert CardTokenizer(KEY, "tok").token(VISA) == "tok_" + CardTokenizer(KEY).token(VISA)[3:]


def test_tokens_are_stable_across_processes() -> None:
    """A fresh interpreter with the same key gives the same token (no per-process salt)."""
    code = (
        "from service.core.card_tokens import CardTokenizer;"
        f"print(CardTokenizer({KEY!r}).token({VISA!r}))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert output.strip() == CardTokenizer(KEY).token(VISA)


def test_the_previous_token_is_the_one_the_previous_key_gave() -> None:
    """During a rotation the tokenizer gives the card's token under the previous key, for a
    card number only; without a previous key, none."""
    rotating = CardTokenizer(OTHER_KEY, "k2", previous_key=KEY, previous_key_id="k1")
    assert rotating.rotating
    assert rotating.token(VISA) == CardTokenizer(OTHER_KEY, "k2").token(VISA)
    assert rotating.previous_token("4111 1111 1111 1111") == CardTokenizer(KEY).token(VISA)
    assert rotating.previous_token("card-42") is None
    assert not CardTokenizer(KEY).rotating
    assert CardTokenizer(KEY).previous_token(VISA) is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"key": b""}, "must not be empty"),
        ({"key": KEY, "key_id": "K1"}, "lower-case letters or digits"),
        ({"key": KEY, "key_id": "k1:"}, "lower-case letters or digits"),
        ({"key": KEY, "previous_key": KEY}, "go together"),
        ({"key": KEY, "previous_key": OTHER_KEY, "previous_key_id": "k1"}, "must differ"),
        ({"key": KEY, "previous_key": b"", "previous_key_id": "k0"}, "must not be empty"),
    ],
)
def test_bad_keys_and_ids_are_refused(arguments: dict[str, object], message: str) -> None:
    """An empty key would make tokens an unkeyed hash; an id must be a plain name, and the
    previous key needs its own."""
    with pytest.raises(ValueError, match=message):
        CardTokenizer(**arguments)  # type: ignore[arg-type]
