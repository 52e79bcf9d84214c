"""Tests for service.core.card_data: card numbers found in every common written form, alone,
inside other text and inside track data; ids that only look like digits (UUIDs, hex ids,
order numbers) never taken for one; log text scrubbed by the looser rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.card_data import (
    first_card_number,
    holds_card_number,
    passes_luhn,
    replace_card_numbers,
)

# Public test numbers of the card schemes: 16, 15, 16, 13 and 19 digits, all Luhn-valid.
VISA = "4111111111111111"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
VISA_13 = "4222222222222"


def luhn_sum(digits: str) -> int:
    """The textbook Luhn sum: double every second digit from the right, add digit sums."""
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total


def completed(body: str) -> str:
    """`body` followed by the check digit that makes it Luhn-valid, whatever its length."""
    return body + str(-luhn_sum(body + "0") % 10)


NINETEEN = completed("601100000000000000")


def grouped(number: str, separator: str, sizes: tuple[int, ...] = (4, 4, 4, 4)) -> str:
    """`number` written in groups of `sizes` digits (the rest in a last group)."""
    groups, start = [], 0
    for size in sizes:
        if start < len(number):
            groups.append(number[start : start + size])
            start += size
    if start < len(number):
        groups.append(number[start:])
    return separator.join(groups)


def track_1(number: str) -> str:
    return f"%B{number}^CARDHOLDER/TEST^2512101000000123456?"


def track_2(number: str) -> str:
    return f";{number}=25121010000012345678?"


NUMBERS = [VISA, AMEX, DISCOVER, VISA_13, NINETEEN]


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize(
    "form",
    [
        lambda number: number,
        lambda number: grouped(number, " "),
        lambda number: grouped(number, "-"),
        lambda number: grouped(number, "."),
        lambda number: grouped(number, " ", (4, 6, 5)),
        track_1,
        track_2,
        lambda number: f"term-{number}",
        lambda number: f"order {grouped(number, '.')} paid",
        lambda number: f"20261206-{grouped(number, '-')}",
    ],
    ids=[
        "plain",
        "spaced",
        "dashed",
        "dotted",
        "amex-groups",
        "track-1",
        "track-2",
        "after-a-prefix",
        "inside-a-sentence",
        "after-a-date-group",
    ],
)
def test_card_numbers_are_found_in_every_common_form(number: str, form: object) -> None:
    """The number's digits come back, whatever the form, and replacing removes them all."""
    assert callable(form)
    text = form(number)
    assert first_card_number(text) == number
    assert holds_card_number(text)
    redacted = replace_card_numbers(text, "[CARD]")
    assert "[CARD]" in redacted
    assert number not in redacted.replace(" ", "").replace("-", "").replace(".", "")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "card000123",
        "k1:0123456789abcdef0123456789abcdef",
        "4111111111111112",  # wrong check digit
        completed("12345678901"),  # 12 digits: too short
        completed("1234567890123456789"),  # 20 digits, glued: an order number, not a card
        "4111a11111111111",
        "4111  1111  1111  1111",  # two separators: four short numbers
        "\u0664\u0661\u0661\u0661" * 4,  # Arabic-Indic digits
        "\uff14\uff11\uff11\uff11" * 4,  # full-width digits
        "550e8400-e29b-41d4-a716-446655440000",  # a UUID
        "0.5000000000000001",  # a float: 17 digits, fails Luhn
        "0000000000000000",  # zero-padding passes Luhn, but no issuer number starts with 0
        "00000000-0000-0000-ab54-a98ceb1f0ad2",  # a UUID of small number
        "0" + VISA[1:],
    ],
)
def test_other_text_holds_no_card_number(text: str) -> None:
    """Short or glued digit runs, bad check digits, letters and non-ASCII digits are not PANs;
    replacing changes nothing."""
    assert first_card_number(text) is None
    assert replace_card_numbers(text, "[CARD]") == text


@pytest.mark.parametrize(
    "text",
    [
        f"T{VISA}",  # glued to a letter
        f"{VISA}x",
        f"abc{grouped(VISA, '-')}def",
        "1e5f" + VISA + "a9",  # inside a hex id
        f"12345678-{VISA[:4]}-{VISA[4:8]}-{VISA[8:12]}",  # printed groups of 8, 4, 4, 4
        f"{VISA[:4]}-{VISA[4:]}",  # 4 then 12: not how cards are printed
    ],
)
def test_numbers_not_written_as_cards_are_not_found_but_are_scrubbed(text: str) -> None:
    """A number glued to letters, or grouped unlike any card, is no card number at the edge
    (ids of that shape are real ids); a log line is scrubbed of it all the same."""
    assert first_card_number(text) is None
    assert VISA not in replace_card_numbers(text, "[CARD]").replace("-", "")


@settings(max_examples=2_000)
@given(st.uuids(), st.binary(min_size=8, max_size=20))
def test_uuids_and_hex_ids_never_hold_a_card_number(uuid: object, raw: bytes) -> None:
    """Random UUIDs and hex ids, however many digits they hold, are never taken for card
    numbers (one UUID in 370 would be, were groups and letters ignored)."""
    assert first_card_number(str(uuid)) is None
    assert first_card_number(raw.hex()) is None


@given(st.text(alphabet="0123456789", min_size=13, max_size=19))
def test_digit_strings_are_card_numbers_exactly_when_luhn_valid(digits: str) -> None:
    """Any 13-19 digit string is one if and only if the textbook Luhn sum ends in 0 and it
    does not start with 0."""
    assert passes_luhn(digits) == (luhn_sum(digits) % 10 == 0)
    assert holds_card_number(digits) == (luhn_sum(digits) % 10 == 0 and digits[0] != "0")


@given(st.text(max_size=64))
def test_a_card_number_apart_is_found_whatever_surrounds_it(text: str) -> None:
    """A card number with a space on each side is found whatever text is around it, and
    scrubbed from it."""
    assert holds_card_number(f"{text} {VISA} {text}")
    assert VISA not in replace_card_numbers(f"{text} {VISA} {text}", "#")


def test_two_card_numbers_are_both_replaced_the_first_reported() -> None:
    """Every card number is replaced; the first is the one reported."""
    text = f"{AMEX} then {grouped(VISA, '.')}"
    assert first_card_number(text) == AMEX
    assert replace_card_numbers(text, "#") == "# then #"


def test_a_lone_surrogate_is_just_another_character() -> None:
    """Text no UTF-8 encoder accepts (a lone surrogate, as a repr may hold) is searched and
    scrubbed like any other."""
    text = "\ud800" * 20 + f" {VISA}"
    assert first_card_number(text) == VISA
    assert replace_card_numbers(text, "#") == "\ud800" * 20 + " #"
