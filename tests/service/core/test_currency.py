"""Tests for service.core.currency: the ISO 4217 minor-unit table."""

from __future__ import annotations

import pytest

from service.core.currency import MINOR_UNIT_EXPONENTS, exponent
from service.core.domain import major_units
from training.simulation.world import CURRENCIES


@pytest.mark.parametrize(
    ("code", "digits"),
    [
        ("EUR", 2),
        ("USD", 2),
        ("GBP", 2),
        ("CHF", 2),
        ("CNY", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("XOF", 0),
        ("ISK", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("TND", 3),
        ("CLF", 4),
        ("UYW", 4),
        ("XCG", 2),
        ("ZWG", 2),
    ],
)
def test_known_exponents(code: str, digits: int) -> None:
    """Currencies with 0, 2, 3 and 4 minor digits, including recent ones, are right."""
    assert exponent(code) == digits


@pytest.mark.parametrize(
    "code",
    ["", "eur", "Eur", " EUR", "EURO", "XXX", "XAU", "XDR", "XTS", "HRK", "ZWL", "ABC"],
)
def test_unknown_withdrawn_and_unit_less_codes_have_no_exponent(code: str) -> None:
    """Lowercase, padded, made-up, withdrawn and metal/test codes are not active currencies."""
    assert exponent(code) is None


def test_every_code_is_three_uppercase_letters_with_a_supported_exponent() -> None:
    """The table holds only alphabetic codes, and exponents that major_units can apply."""
    assert len(MINOR_UNIT_EXPONENTS) > 150
    for code, digits in MINOR_UNIT_EXPONENTS.items():
        assert len(code) == 3
        assert code.isascii()
        assert code.isalpha()
        assert code.isupper()
        assert major_units(10**digits, digits) == 1.0


def test_simulated_histories_use_active_currencies() -> None:
    """Every currency in training's simulated world is known, so its histories can be served."""
    assert all(exponent(code) is not None for code in CURRENCIES)
