"""GSM8K-style answer checking: find the final number in a text and compare numbers by value.

GSM8K reference solutions end with "#### <number>"; model answers usually do not, so the last
number in the text stands in for it. Pure module: standard library only.
"""

from __future__ import annotations

import re

# A sign only when it is not a hyphen after a digit ("pages 3-5" ends in 5, not -5); thousands
# groups only in threes ("1,234"), so "12,34" reads as two numbers.
_NUMBER = re.compile(r"(?<![\d.])([-+]?)(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?")
_MARK = "####"


def _normalise(sign: str, whole: str, frac: str) -> str:
    """One canonical spelling per value: no commas, no leading or trailing zeros, no '-0'."""
    whole = whole.replace(",", "").lstrip("0") or "0"
    frac = frac.rstrip("0").rstrip(".")
    text = whole + frac
    return text if sign != "-" or text == "0" else "-" + text


def extract_final_number(text: str) -> str | None:
    """The number after the last '####' if there is one, else the last number in `text`.

    Returns the normalised form ("1,234.50" -> "1234.5", "7.0" -> "7", "-0" -> "0"), or None
    when there is no number (or '####' is followed by none).
    """
    if _MARK in text:
        found = _NUMBER.search(text.rsplit(_MARK, 1)[1])
    else:
        found = next(reversed(list(_NUMBER.finditer(text))), None)
    return _normalise(*found.groups(default="")) if found else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Whether two texts end in the same number (each reduced with `extract_final_number`)."""
    if a is None or b is None:
        return False
    na = extract_final_number(a)
    return na is not None and na == extract_final_number(b)
