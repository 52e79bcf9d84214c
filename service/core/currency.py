"""ISO 4217 currencies: which alphabetic codes are active and how many minor-unit digits each has.

Requests carry amounts in minor units (cents for EUR), and the feature engine reads major
units, so the exponent decides what an amount means: 1000 is 10.00 EUR, 1000 JPY, or
1.000 KWD. A wrong exponent would silently scale every amount of a currency, so the table
is written out in full rather than guessed.

Source: ISO 4217 list one (current currency and funds), as maintained by SIX for ISO, as of
2026. Codes with no minor unit in that list (gold, silver, SDR, bond-market units, XTS, XXX)
are left out: no card transaction is denominated in them. Codes withdrawn by a later
amendment (e.g. HRK 2023, SLL and ZWL 2024, ANG 2025, BGN 2026) are left out too, so a
caller still sending one learns it from INVALID_ARGUMENT rather than mis-scaled features.
"""

from __future__ import annotations

from types import MappingProxyType

_CODES_BY_EXPONENT = (
    (0, "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"),
    (
        2,
        "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP BYN "
        "BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
        "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR "
        "KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV "
        "MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR "
        "SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH "
        "USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG",
    ),
    (3, "BHD IQD JOD KWD LYD OMR TND"),
    (4, "CLF UYW"),
)

MINOR_UNIT_EXPONENTS: MappingProxyType[str, int] = MappingProxyType(
    {code: exponent for exponent, codes in _CODES_BY_EXPONENT for code in codes.split()}
)
"""Active ISO 4217 alphabetic code to its number of minor-unit digits (EUR 2, JPY 0)."""


def exponent(code: str) -> int | None:
    """Minor-unit digits of currency `code` (exact, uppercase); None if it is not active."""
    return MINOR_UNIT_EXPONENTS.get(code)
