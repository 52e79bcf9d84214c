"""Tests for service.core.card_tokens: card-number detection and keyed tokens."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.card_tokens import CardTokenizer, looks_like_card_number

KEY = b"test key, not a secret"
# Public test numbers of the card schemes: 16, 15, 16 and 13 digits, all Luhn-valid.
VISA = "4111111111111111"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
VISA_13 = "4222222222222"
TOKEN = re.compile(r"tok_[0-9a-f]{32}")


def _luhn_sum(digits: str) -> int:
    """The textbook Luhn sum: double every second digit from the right, add digit sums."""
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total


def _completed(body: str) -> str:
    """`body` followed by the check digit that makes it Luhn-valid, whatever its length."""
    return body + str(-_luhn_sum(body + "0") % 10)


@pytest.mark.parametrize(
    "text",
    [
        VISA,
        AMEX,
        DISCOVER,
        VISA_13,
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        " 4111 1111-1111 1111 ",
        _completed("123456789012345678"),  # 19 digits
    ],
)
def test_card_numbers_are_recognised(text: str) -> None:
    """13 to 19 Luhn-valid digits, with spaces or dashes anywhere, look like a card number."""
    assert looks_like_card_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "card000123",
        "tok_0123456789abcdef",
        "4111111111111112",  # wrong check digit
        _completed("12345678901"),  # 12 digits: too short
        _completed("1234567890123456789"),  # 20 digits: too long
        "4111a11111111111",
        "4111.1111.1111.1111",
        "\u0664\u0661\u0661\u0661" * 4,  # Arabic-Indic digits
        "\uff14\uff11\uff11\uff11" * 4,  # full-width digits
    ],
)
def test_other_text_is_not_a_card_number(text: str) -> None:
    """Short or long digit runs, bad check digits, letters and non-ASCII digits are not PANs."""
    assert not looks_like_card_number(text)


@given(st.text(alphabet="0123456789", min_size=13, max_size=19))
def test_digit_strings_are_card_numbers_exactly_when_luhn_valid(digits: str) -> None:
    """Any 13-19 digit string is recognised if and only if the textbook Luhn sum ends in 0."""
    assert looks_like_card_number(digits) == (_luhn_sum(digits) % 10 == 0)


@pytest.mark.parametrize("card_id", ["card000123", "4111111111111112", "", "x" * 200])
def test_other_card_ids_pass_through(card_id: str) -> None:
    """A card id that is not a card number is returned unchanged."""
    assert CardTokenizer(KEY).token(card_id) == card_id


@pytest.mark.parametrize("number", [VISA, AMEX, DISCOVER, VISA_13])
def test_card_numbers_become_tokens_without_their_digits(number: str) -> None:
    """A card number becomes tok_ + 32 hex digits containing neither it nor its last four."""
    token = CardTokenizer(KEY).token(number)
    assert TOKEN.fullmatch(token)
    assert number not in token
    assert number[-4:] not in token


def test_formatting_does_not_change_the_token() -> None:
    """Spaces and dashes are ignored: one card, one token."""
    tokenizer = CardTokenizer(KEY)
    tokens = {
        tokenizer.token(text) for text in (VISA, "4111 1111 1111 1111", "4111-1111-1111-1111")
    }
    assert len(tokens) == 1


def test_tokens_depend_on_the_key_and_the_card() -> None:
    """Another key or another card gives another token."""
    assert CardTokenizer(KEY).token(VISA) != CardTokenizer(b"other key").token(VISA)
    assert CardTokenizer(KEY).token(VISA) != CardTokenizer(KEY).token(DISCOVER)


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


def test_empty_key_is_refused() -> None:
    """An empty key would make tokens an unkeyed hash: ValueError."""
    with pytest.raises(ValueError, match="must not be empty"):
        CardTokenizer(b"")
