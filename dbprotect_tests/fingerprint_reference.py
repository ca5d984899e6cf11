"""The reference normalization (as first written, plus the IPv4 rule): the optimized
:func:`dbprotect.core.sanitize.fingerprints.forms` must equal it on every input (property test)."""

from __future__ import annotations

import re
import unicodedata

from dbprotect.core.sanitize.fingerprints import MIN_DIGITS, MIN_FORM, MIN_FREE_TEXT, MIN_PROSE

_DECIMAL = re.compile(r"^[+-]?[0-9]*\.[0-9]+$")
_IPV4 = re.compile(r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:/[0-9]{1,2})?$")
_SEPARATOR_TABLE = {ord(ch): None for ch in " \t\n\r\f\v-./()"}
_NON_DIGIT_BYTES = bytes(i for i in range(256) if not 48 <= i <= 57)
_TITLES = {"mr", "mrs", "ms", "miss", "mx", "dr", "prof"}
_PHONE_SHAPE = re.compile(r"^(\+|00)?[0-9\s\-./()]+$")


def fold(text: str) -> str:
    """Case- and accent-folded, whitespace collapsed and trimmed."""
    if text.isascii():
        return " ".join(text.lower().split())
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return " ".join(text.casefold().split())


def _digits(text: str) -> str:
    if text.isascii():
        return text.encode().translate(None, _NON_DIGIT_BYTES).decode()
    return "".join(ch for ch in text if ch.isdigit())


def digit_forms(text: str, digits: str | None = None) -> list[str]:
    """A phone-like value's digits: as written, without a country prefix, without a trunk 0."""
    digits = _digits(text) if digits is None else digits
    if len(digits) < MIN_DIGITS or len(digits) > 19:
        return []
    stripped = text.strip()
    if not _PHONE_SHAPE.match(stripped) or _DECIMAL.match(stripped) or _IPV4.match(stripped):
        return []
    found = [digits]
    international = stripped.startswith("+") or digits.startswith("00")
    if digits.startswith("00"):
        digits = digits[2:]
        found.append(digits)
    if international:
        found += [digits[cc:] for cc in (1, 2, 3) if len(digits) - cc >= MIN_DIGITS]
    elif digits.startswith("0") and len(digits) - 1 >= MIN_DIGITS:
        found.append(digits[1:])
    return found


def _length(form: str) -> int:
    """Characters, a wide one (East Asian width W or F) counting two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in form)


def forms(text: str, *, free_text: bool = False) -> set[str]:
    """Every normalized form of one value that is long enough to be fingerprinted (``free_text``: see
    :data:`MIN_FREE_TEXT`; digit forms of phone numbers and cards count whatever the column)."""
    folded = fold(text)
    digits = _digits(text)
    minimum = MIN_FORM
    if free_text:
        minimum = MIN_FREE_TEXT if digits or _length(folded) >= MIN_PROSE else MIN_PROSE
    found = {folded} if _length(folded) >= minimum else set()
    if digits and len(digits) < len(folded) and "@" not in folded:  # IBANs, IDs: letters and digits, grouped
        compact = folded.translate(_SEPARATOR_TABLE)
        if compact != folded and _length(compact) >= minimum and compact != digits:
            found.add(compact)
    if len(digits) >= MIN_DIGITS:
        found.update(digit_forms(text, digits))
    if not free_text and not digits and "@" not in folded:  # a name in either order: its words sorted
        words = [w for w in re.findall(r"[^\W\d_]+", folded) if _length(w) > 1 and w not in _TITLES]
        ordered = " ".join(sorted(words))
        if 2 <= len(words) <= 4 and ordered != folded and _length(ordered) >= MIN_FORM:
            found.add(ordered)
    # Digits of any script or width, read as ASCII digits (compatibility forms folded first).
    view = "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in unicodedata.normalize("NFKC", text))
    if view != text:
        found.update(digit_forms(view))
    # "+" and nine or more ASCII digits is one number with its digits: fingerprinted as the digits.
    return {form[1:] if re.fullmatch(rf"\+[0-9]{{{MIN_DIGITS},}}", form) else form for form in found}


