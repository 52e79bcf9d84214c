"""Card numbers (PANs) found in request strings, in the forms people and terminals write them.

A card number is 13 to 19 digits passing the Luhn check, the first not 0 (no issuer's
number starts with 0; zero-padded ids do, and all zeros pass Luhn), written

- plain: `4111111111111111`;
- in groups joined by single spaces, dashes or dots, as cards print them: every group but
  the last of 4 to 6 digits, the last of 1 to 6 (`4111 1111 1111 1111`,
  `4111-1111-1111-1111`, `4111.1111.1111.1111`, `3782 822463 10005`);
- in track data, which begins with it: track 1 (`%B4111111111111111^NAME^2512...?`) and
  track 2 (`;4111111111111111=2512...?`).

A number counts when it stands apart: not glued to a letter or a digit on either side (but
track 1's format code, `B`, before a number that a `^` ends). Within a run of digit groups
("20261206-4111-1111-1111-1111") it may be a stretch of whole groups: the whole run if it is
one, else the longest stretch that is (the first of equals), so the same text always gives
the same digits. Only ASCII digits count: no terminal sends card numbers in other scripts.

Why so strict: ids are refused when they hold a card number (`service.core.validation`),
and a looser rule refuses real ids. About one random UUID in 370 holds 13 to 19 digits
across its dashes that pass Luhn; so does one random 32-digit hex id in 650, between its
letters; a 20-digit order number holds eight stretches of 13 to 19 digits. None of them is
written as above.
Log lines are scrubbed by the loose rule (`replace_card_numbers`): there a false alarm
costs nothing.

`first_card_number` runs on every string field of every request, so it begins with checks
that cost a length comparison for a short id and one pass in C over a longer one (does it
hold a run of 13 characters that are digits or separators?); the Luhn sums and the rest run
only for strings that do.
"""

from __future__ import annotations

import re

MIN_DIGITS = 13
MAX_DIGITS = 19
# The groups of a printed card number: every one but the last of 4 to 6 digits.
_GROUP_DIGITS = range(4, 7)
_LAST_GROUP_DIGITS = range(1, 7)
# Groups a loosely found number spans at most (4-4-4-4-3 is five): a bound on the work a
# long run of short groups (digits spaced one by one) can cause.
_MAX_LOOSE_GROUPS = 6
# Every byte but the ASCII digits: deleting them leaves a string's digits, counted in C.
_NOT_DIGITS = bytes(byte for byte in range(256) if not 0x30 <= byte <= 0x39)
# Every byte to "d" if it is a digit or a separator, else "x": a card number is written in
# 13 "d"s in a row at least. Translating and searching bytes in C beats a regex twice over.
_RUN_BYTES = bytes(0x64 if byte in b"0123456789 .-" else 0x78 for byte in range(256))
_LONG_RUN = b"d" * MIN_DIGITS
# Digit groups joined by single separators; finditer yields each run whole.
_DIGIT_RUN = re.compile(r"[0-9]+(?:[ .-][0-9]+)*")
_SEPARATOR = re.compile(r"[ .-]")
# Luhn doubles every second digit from the right: each digit to the digit sum of its double.
_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")


def passes_luhn(digits: str) -> bool:
    """Whether the ASCII digit string `digits` has a valid Luhn check digit."""
    codes = digits.encode()
    # Summing ASCII codes, less "0" once per digit, saves an int() per digit.
    total = sum(codes[-1::-2]) + sum(codes[-2::-2].translate(_DOUBLED)) - ord("0") * len(codes)
    return total % 10 == 0


def first_card_number(text: str) -> str | None:
    """The digits of the first card number written in `text` as above, or None."""
    if len(text) < MIN_DIGITS or _LONG_RUN not in _encoded(text).translate(_RUN_BYTES):
        return None
    for run in _DIGIT_RUN.finditer(text):
        start, end = run.span()
        if end - start < MIN_DIGITS:
            continue
        glued_before, glued_after = _glued(text, start, end)
        digits = run.group()
        if digits.isdigit():  # plain: the one form most long ids share
            if not (glued_before or glued_after) and _is_card_number(digits):
                return digits
            continue
        found = _printed_in(_SEPARATOR.split(digits), glued_before, glued_after)
        if found is not None:
            return found
    return None


def holds_card_number(text: str) -> bool:
    """Whether `text` holds a card number written in any of the forms above."""
    return first_card_number(text) is not None


def replace_card_numbers(text: str, replacement: str) -> str:
    """`text` with every digit run that may hold a card number replaced by `replacement`:
    the loose rule, for log lines, where a false alarm costs nothing. A run counts when it
    is not glued to other digits and some stretch of its groups is 13 to 19 digits passing
    Luhn, however the groups are sized and whatever letters surround it."""
    if len(text) < MIN_DIGITS or len(_encoded(text).translate(None, _NOT_DIGITS)) < MIN_DIGITS:
        return text
    pieces: list[str] = []
    kept_from = 0
    for run in _DIGIT_RUN.finditer(text):
        start, end = run.span()
        if end - start >= MIN_DIGITS and _loosely_in(_SEPARATOR.split(run.group())):
            pieces += (text[kept_from:start], replacement)
            kept_from = end
    if not pieces:
        return text
    pieces.append(text[kept_from:])
    return "".join(pieces)


def _encoded(text: str) -> bytes:
    """`text` as UTF-8, a lone surrogate too (every non-ASCII character is bytes above 127,
    none of them a digit or a separator)."""
    return text.encode("utf-8", "surrogatepass")


def _glued(text: str, start: int, end: int) -> tuple[bool, bool]:
    """Whether the digit run text[start:end] is glued to a letter before it, and after it
    (a run never is to a digit); track 1's `B` before a number a `^` ends does not glue."""
    before = text[start - 1 : start] if start else ""
    after = text[end : end + 1]
    if before == "B" and after == "^":
        return False, False
    return before.isalnum(), after.isalnum()


def _is_card_number(digits: str) -> bool:
    return MIN_DIGITS <= len(digits) <= MAX_DIGITS and digits[0] != "0" and passes_luhn(digits)


def _printed_in(groups: list[str], glued_before: bool, glued_after: bool) -> str | None:
    """The digits of the longest stretch of `groups` (the first of equals) printed as a card
    number and being one: one group of 13 to 19 digits, or groups of 4 to 6 digits but the
    last, of 1 to 6; not the first group if the run is glued before, nor the last if it is
    glued after. None if there is none."""
    if not (glued_before or glued_after) and _printed_whole(groups):
        digits = "".join(groups)  # the longest stretch of all, and the usual case
        if _is_card_number(digits):
            return digits
    found = ""
    ends = len(groups) - 1 if glued_after else len(groups)
    for first in range(1 if glued_before else 0, ends):
        stretch = ""
        for last in range(first, ends):
            group = groups[last]
            stretch += group
            if len(stretch) > MAX_DIGITS:
                break
            single = last == first and len(group) >= MIN_DIGITS
            ends_well = single or len(group) in _LAST_GROUP_DIGITS
            if ends_well and len(stretch) > len(found) and _is_card_number(stretch):
                found = stretch
            if len(group) not in _GROUP_DIGITS:
                break  # no longer stretch can hold this group before its last
    return found or None


def _printed_whole(groups: list[str]) -> bool:
    """Whether `groups`, two or more, are sized as printed on a card."""
    return len(groups[-1]) in _LAST_GROUP_DIGITS and all(
        len(group) in _GROUP_DIGITS for group in groups[:-1]
    )


def _loosely_in(groups: list[str]) -> bool:
    """Whether some stretch of whole `groups` is 13 to 19 digits passing Luhn."""
    for first in range(len(groups)):
        stretch = ""
        for group in groups[first : first + _MAX_LOOSE_GROUPS]:
            stretch += group
            if len(stretch) > MAX_DIGITS:
                break
            if _is_card_number(stretch):
                return True
    return False
