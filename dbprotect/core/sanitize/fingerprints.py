"""Keyed fingerprints of personal values in normalized forms, and the detectors for ``keep`` columns.

A leak is rarely byte-identical: production writes ``+44 20 7946 0018``, a kept column holds
``+44-20-7946-0018``; production ``Jane Doe``, the copy ``JANE DOE``. So a value is compared in
every *normalized form* it has (:func:`forms`):

folded
    NFKD, combining marks removed, case-folded, whitespace collapsed and trimmed (e-mails
    lower-cased and trimmed, names case- and accent-folded).
compact
    the folded form without separators (space, ``-``, ``.``, ``/``, ``(``, ``)``) when it holds
    letters and digits: IBANs and document numbers without their grouping.
digits
    for phone-like values and card numbers (not decimals): the digits alone, and without a country
    prefix (1 to 3 digits after ``+`` or ``00``) or a national trunk ``0``, so that ``+1 555 010 2000``
    meets ``(555) 010-2000``.

Each form is fingerprinted under a key derived from the masking key (:class:`Fingerprinter`: keyed
BLAKE2b under HMAC-SHA256(masking key, "dbprotect fingerprint v2")), 128 bits, kept in an exact set
(:class:`FingerprintFilter`: sorted numpy arrays, 8 bytes a fingerprint, bounded memory for tens of
millions). Raw values are never kept. The set answers "yes" for a value never added only when 70 bits
of two fingerprints agree by chance (rate printed by the check): a false positive can only make the
check fail, never pass. Phone tails (:func:`phone_tails`) go to a small `rbloom`_ Bloom filter of
their own: they only decide the stream's retries, where a false positive costs one retry.

Short forms are not fingerprinted (:data:`MIN_FORM`): a 5-character word collides by chance with
unrelated data (a city, a product code); the detectors cover short e-mail-like and phone-like values.
A wide character (a CJK ideograph, kana) counts two (:func:`form_length`): a Japanese or Chinese full name is
three or four of them.

.. _rbloom: https://github.com/KenanHanke/rbloom
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Set
from functools import lru_cache
from typing import Any
from unicodedata import east_asian_width
from urllib.parse import unquote

import numpy as np
from rbloom import Bloom

from dbprotect.core.sanitize.keyset import KeySet

#: Shortest folded form fingerprinted (characters); shorter values collide by chance.
MIN_FORM = 6
#: Shortest digit form fingerprinted: 9 digits (a national number without its trunk 0). Shorter digit
#: strings (coordinates, amounts, local numbers) collide by chance with the tails of real phone numbers.
MIN_DIGITS = 9
#: Free text (the ``text`` transformer's columns: addresses, cities, notes) is fingerprinted when it is
#: this long and holds a digit (a street address), or is :data:`MIN_PROSE` long (a note, a bio): city and
#: company names are shared with other tables by chance ("San Francisco" is a customer's city and a territory).
MIN_FREE_TEXT = 12
MIN_PROSE = 32
#: The phone-tail Bloom filter's design false-positive rate (a false positive costs the stream one retry).
TAIL_FALSE_POSITIVE_RATE = 1e-5

_SEPARATOR_TABLE = {ord(ch): None for ch in " \t\n\r\f\v-./()"}
_SEPARATOR_BYTES = b" \t\n\r\f\v-./()"
_NON_DIGIT_BYTES = bytes(i for i in range(256) if not 48 <= i <= 57)
#: The characters of a phone number's body (``^(\+|00)?[0-9\s\-./()]+$``, ``00`` being digits): ASCII
#: digits, ``-./()`` and whitespace as Python's ``\s`` knows it (ASCII, and Unicode for other text).
_PHONE_BODY = "0123456789-./() \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_PHONE_BODY_UNICODE = _PHONE_BODY + "".join(ch for ch in map(chr, range(0x80, 0x3001)) if ch.isspace())
_DECIMAL = re.compile(r"^[+-]?[0-9]*\.[0-9]+$")
#: An IPv4 address as PostgreSQL writes it (no leading zeros, octets <= 255, optional prefix length): its
#: digits are no phone number ("24.0.123.156" and "240.12.31.56" share them by chance).
#: One IPv4 octet as PostgreSQL prints it: 0-255, no leading zero.
OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: An IPv4 host address as PostgreSQL's ``inet`` prints it: four octets, no leading zero, no prefix length.
IPV4_HOST = rf"{OCTET}\.{OCTET}\.{OCTET}\.{OCTET}"
_IPV4_BODY = IPV4_HOST + r"(?:/[0-9]{1,2})?"
_IPV4 = re.compile(f"^{_IPV4_BODY}$")
#: Values joined by NUL that are all IPv4 addresses as PostgreSQL writes them (an ``inet`` column, as production
#: and the copy give it and as the ip transformer writes it): forms_of_many's shortcut.
_IPV4_BATCH = re.compile(f"(?:{_IPV4_BODY}\0)*{_IPV4_BODY}")
#: Values joined by NUL that are each printable ASCII without upper case or whitespace and hold an "@" (e-mail
#: addresses as they are usually stored, and as the email transformer writes them): forms_of_many's shortcut.
_LOWER_AT_VALUE = r"[!-?\[-~]*@[!-@\[-~]*"  # printable ASCII but A-Z: none before the first "@", then any
_LOWER_AT_BATCH = re.compile(f"(?:{_LOWER_AT_VALUE}\0)*{_LOWER_AT_VALUE}")
#: Values joined by NUL that are each "+" and 9-19 ASCII digits, not "+00" (E.164 phones as production usually
#: stores them and as the phone transformer writes them): forms_of_many's shortcut (:func:`_e164_batch_forms`).
_E164_BATCH = re.compile(r"(?:\+(?!00)[0-9]{9,19}\0)*\+(?!00)[0-9]{9,19}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE_PATTERNS = (
    re.compile(r"^\+[1-9][0-9]{0,3}(?:[\s.\-/]?\(?[0-9]{1,5}\)?){1,6}$"),  # +44 20 7946 0018, +44-20-..., +4420...
    re.compile(r"^00[1-9][0-9]{0,3}(?:[\s.\-/]?\(?[0-9]{1,5}\)?){1,6}$"),   # 0044 20 7946 0018
    re.compile(r"^\(?[0-9]{3}\)?[\s.\-][0-9]{3}[\s.\-][0-9]{4}$"),           # (555) 010-2000, 555.010.2000
    re.compile(r"^\([0-9]{2,5}\)\s?[0-9]{3,4}[\s.\-]?[0-9]{3,4}$"),          # (030) 1234 5678
)
_ASCII_DIGIT = re.compile(r"[0-9]").search
_CARD = re.compile(r"^[2-6][0-9]{3}(?:[\s-]?[0-9]{2,7}){2,4}$")


def fold(text: str) -> str:
    """Case- and accent-folded, whitespace collapsed and trimmed."""
    if text.isascii():
        return " ".join(text.lower().split())
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return " ".join(text.casefold().split())


def ascii_digit_view(text: str) -> str | None:
    """A non-ASCII value as its digits are read: compatibility characters folded (NFKC: full-width digits,
    plus and minus signs and brackets, the ideographic space) and every decimal digit of any script written
    as its ASCII digit; None when that changes nothing (an ASCII value never changes).

    Why: a production phone written ``+81 3 1234 5678`` and a copy holding ``03-1234-5678`` in full-width
    characters (as Japanese and Chinese data entry often writes it) or in Arabic-Indic digits share digits,
    not characters; digit forms and the phone and card detectors read this view, so the writing of the
    digits hides nothing.
    """
    if text.isascii():
        return None
    view = unicodedata.normalize("NFKC", text)
    if not view.isascii():
        view = "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in view)
    return None if view == text else view


def plus_digits(form: str) -> str:
    """A form that is ``+`` and :data:`MIN_DIGITS` or more ASCII digits, as its digits; any other form as it is.

    Why: ``+442079460018`` and ``442079460018`` are one phone number, and a value whose form is the first has the
    second among its digit forms (nearly always: :func:`forms` keeps the mapped one when it has not). So a form is
    fingerprinted without its ``+``, on both sides alike: every match the two forms made is still made (and a
    ``+``-written copy value meets production's digits written without it), and each E.164 phone costs one
    keyed hash and one entry fewer (it had four or five forms; the bench's production phones: 4 -> 3).
    """
    if form[:1] == "+" and len(form) > MIN_DIGITS and form[1:].isdigit() and form.isascii():
        return form[1:]
    return form


def _digits(text: str) -> str:
    if text.isascii():
        return text.encode().translate(None, _NON_DIGIT_BYTES).decode()
    return "".join(ch for ch in text if ch.isdigit())


#: The country prefixes an international number may be written without: 1, 2 or 3 digits.
COUNTRY_PREFIX_CUTS = (1, 2, 3)


def without_country_prefix(digits: str) -> list[str]:
    """An international number's digits without a 1-3 digit country prefix, while nine digits are left (a national
    writing drops the prefix): the one rule of these digit forms, in every path that computes them."""
    return [digits[cut:] for cut in COUNTRY_PREFIX_CUTS if len(digits) - cut >= MIN_DIGITS]


def digit_forms(text: str, digits: str | None = None) -> list[str]:
    """A phone-like value's digits: as written, without a country prefix, without a trunk 0.

    Phone-shaped: an optional ``+`` or ``00``, then only ASCII digits, whitespace and ``-./()``
    (``str.strip`` with that set answers it in C); not a decimal, not an IPv4 address (those two
    regexes run only on values with one or three dots).
    """
    digits = _digits(text) if digits is None else digits
    if len(digits) < MIN_DIGITS or len(digits) > 19:
        return []
    stripped = text.strip()
    body = stripped[1:] if stripped[:1] == "+" else stripped
    if not body or body.strip(_PHONE_BODY if body.isascii() else _PHONE_BODY_UNICODE):
        return []
    dots = stripped.count(".")
    if (dots == 1 and _DECIMAL.match(stripped)) or (dots == 3 and _IPV4.match(stripped)):
        return []
    found = [digits]
    international = stripped[:1] == "+" or digits.startswith("00")
    if digits.startswith("00"):
        digits = digits[2:]
        found.append(digits)
    if international:
        found += without_country_prefix(digits)
    elif digits.startswith("0") and len(digits) - 1 >= MIN_DIGITS:
        found.append(digits[1:])
    return found


#: A word of a name, after folding: letters only (any script).
_NAME_WORD = re.compile(r"[^\W\d_]+")
#: How many words a value has for its word-order form (:func:`name_order_form`): a person's given, middle and
#: family names; fewer is one word (the name-part tier), more is prose.
NAME_WORDS = range(2, 5)
#: Titles a name is written with (mail merges, salutations), left out of its word-order form with its initials.
NAME_TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof"})


def name_order_form(folded: str) -> str | None:
    """The words of a folded value (no digit, no "@": the caller's test) sorted and joined by one space, without
    titles and initials, when 2 to 4 are left and that differs from the value: ``smith, john``, ``mr. john q.
    smith`` and ``john smith`` are one name, written family name first (billing, directory and export files),
    with a title (a mail merge) or a middle initial. Both sides take it, so any writing meets the other (``zoe
    adams`` holds ``adams zoe`` too)."""
    words = [word for word in _NAME_WORD.findall(folded) if form_length(word) > 1 and word not in NAME_TITLES]
    if len(words) not in NAME_WORDS:
        return None
    form = " ".join(sorted(words))
    return form if form != folded and form_length(form) >= MIN_FORM else None


def form_length(form: str) -> int:
    """A form's length as the minimums count it: a wide character (East Asian width W or F: CJK ideographs, kana,
    Hangul's leading jamo; folding has made full-width letters and digits ASCII) counts two, as it carries about
    twice a Latin letter's information. Why: ``山田太郎`` (a full name, four characters) was never fingerprinted,
    so a kept column of production's Japanese names passed; a two-character word (``山田``, also a place) still is
    not."""
    if form.isascii():
        return len(form)
    return len(form) + sum(1 for ch in form if east_asian_width(ch) in "WF")


def forms(text: str, *, free_text: bool = False) -> set[str]:
    """Every normalized form of one value that is long enough to be fingerprinted (``free_text``: see
    :data:`MIN_FREE_TEXT`; digit forms of phone numbers and cards count whatever the column).

    Hot: called for every distinct value on both sides, so ASCII values (nearly all) take C string
    methods inline and a value without digits returns at once. ``dbprotect_tests/fingerprint_reference.py``
    holds the plain version this must equal (property test).
    """
    is_ascii = text.isascii()
    if is_ascii:
        folded = " ".join(text.lower().split())
        digits = text.encode().translate(None, _NON_DIGIT_BYTES).decode()
    else:
        folded = fold(text)
        digits = _digits(text)
    length = len(folded) if is_ascii else form_length(folded)
    if not digits:
        minimum = (MIN_PROSE if length < MIN_PROSE else MIN_FREE_TEXT) if free_text else MIN_FORM
        found = {folded} if length >= minimum else set()
        if not free_text and "@" not in folded and (order := name_order_form(folded)) is not None:
            found.add(order)
        return found
    minimum = MIN_FREE_TEXT if free_text else MIN_FORM
    found = {plus_digits(folded)} if length >= minimum else set()
    if len(digits) < len(folded) and "@" not in folded:  # IBANs, IDs: letters and digits, grouped
        # ASCII: deleting bytes is a C loop; str.translate looks every character up in a dict.
        compact = (folded.encode().translate(None, _SEPARATOR_BYTES).decode() if is_ascii
                   else folded.translate(_SEPARATOR_TABLE))
        if compact != folded and form_length(compact) >= minimum and compact != digits:
            found.add(plus_digits(compact))
    if len(digits) >= MIN_DIGITS:
        found.update(digit_forms(text, digits))
    if not is_ascii and (view := ascii_digit_view(text)) is not None:
        found.update(digit_forms(view))
    return found


def e164_forms(text: str) -> list[str] | None:
    """:func:`forms` of a value written ``+`` and ASCII digits only (the phone transformer's E.164
    output), without its general steps; None for any other value.

    Why: every masked phone is tested against production as it is written (the stream's ``avoid``),
    one value at a time. For this shape :func:`forms` reduces to: the value itself (nothing to fold,
    no separator to compact), and :func:`digit_forms` of an international number: its digits, without
    ``00``, without a 1-3 digit country prefix. A property test holds it equal to :func:`forms`.
    """
    digits = text[1:]
    if text[:1] != "+" or not digits.isdigit() or not digits.isascii():
        return None
    if len(digits) < MIN_DIGITS:
        return [text] if len(text) >= MIN_FORM else []
    if len(digits) > 19:
        return [digits]  # the value, without its "+" (plus_digits)
    found = [digits]  # the value itself is this form (plus_digits)
    if digits.startswith("00"):
        digits = digits[2:]
        found.append(digits)
    found += without_country_prefix(digits)
    return found


_NON_DIGIT_BUT_NUL = bytes(i for i in range(1, 256) if not 48 <= i <= 57)
#: An ASCII value made only of these can have a form that is all digits (after ``+``): see forms_of_many.
_TAIL_CHARS = _PHONE_BODY + "+"


def forms_of_many(texts: list[str], *, free_text: bool = False, tails: list[str] | None = None,
                  tail_forms: list[int] | None = None) -> list[str]:
    """The normalized forms of every value of ``texts``, flat (a form may repeat): the union of
    :func:`forms` over them, computed a batch at a time.

    Why: the per-value cost of :func:`forms` (2-7 µs, mostly interpreter overhead around a few C
    string calls) was the check's cost. Here the ASCII values of a batch are joined with NUL (which
    no PostgreSQL text holds) and lower-cased, whitespace-collapsed, reduced to digits and stripped of
    separators by one C call each over the whole batch; what stays per value is a comprehension
    choosing the forms. Non-ASCII values (and any batch holding a NUL) go through :func:`forms`.
    The property test holds this equal to the reference, batch by batch.

    ``tails``: the :func:`phone_tails` of the forms are appended to it (a superset: a tail may repeat,
    and an ASCII value made only of ``+``, digits and separators leaves its tail even when none of its
    forms is all digits). Why per value: a form that is ``+`` and digits only comes from such a value
    (any other character survives folding and compacting) and every one is a suffix of the value's
    digits, so its tail is theirs; testing each form in Python cost as much as hashing it (measured).

    ``tail_forms`` (with ``tails``): an E.164 value whose last form is its tail (nine digits: a number of
    nine to twelve digits after its prefix, as most are) puts that form's position in the returned list here
    instead of the tail in ``tails``, so the tail's key is read off the form's fingerprint, not hashed again.
    """
    plain = [text for text in texts if text.isascii()]
    found: list[str] = []
    if len(plain) != len(texts):
        for text in texts:
            if not text.isascii():
                some = forms(text, free_text=free_text)
                found.extend(some)
                if tails is not None:
                    tails.extend(phone_tails(some))
    if not plain:
        return found
    joined = "\0".join(plain)
    if joined.count("\0") != len(plain) - 1:  # a value holding a NUL: the separator is ambiguous
        for text in plain:
            some = forms(text, free_text=free_text)
            found.extend(some)
            if tails is not None:
                tails.extend(phone_tails(some))
        return found
    minimum = MIN_FREE_TEXT if free_text else MIN_FORM
    if _IPV4_BATCH.fullmatch(joined):
        # Only IPv4 addresses (one regex over the batch): an address has digits, so its only form is itself
        # (nothing to fold; compacted it is its digits; no digit form: digit_forms' rule), and no tail.
        return found + [text for text in plain if len(text) >= minimum]
    if _E164_BATCH.fullmatch(joined):
        return found + _e164_batch_forms(plain, tails, tail_forms, len(found))
    if not free_text and _LOWER_AT_BATCH.fullmatch(joined):
        # Only lower-case values holding "@", no whitespace (one regex over the batch): folded, each is itself;
        # with "@" there is no compact form, and no digit form or tail (digit_forms needs a phone's characters).
        return found + [text for text in plain if len(text) >= MIN_FORM]
    # Whitespace collapsed over the whole batch, then trimmed at each value's ends (one space at most).
    collapsed = " ".join(joined.lower().split()).replace(" \0", "\0").replace("\0 ", "\0")
    folded_all = collapsed.split("\0")
    digits_all = joined.encode().translate(None, _NON_DIGIT_BUT_NUL).decode().split("\0")
    compact_all = collapsed.encode().translate(None, _SEPARATOR_BYTES).decode().split("\0")
    if free_text:  # no digit: prose only (MIN_PROSE); with a digit: MIN_FREE_TEXT (as forms decides)
        folded_forms = [f for f, d in zip(folded_all, digits_all, strict=True)
                        if len(f) >= (MIN_FREE_TEXT if d else MIN_PROSE)]
    else:
        folded_forms = [f for f in folded_all if len(f) >= MIN_FORM]
    if collapsed[:1] == "+" or "\0+" in collapsed:
        # A folded "+" and 9-19 digits is its value trimmed, phone-shaped: its digits are among the digit forms
        # added below, which is what plus_digits makes of it. Longer: mapped (no digit form holds them).
        folded_forms = [f if f[:1] != "+" or not f[1:].isdigit() or len(f) <= MIN_DIGITS else f[1:]
                        for f in folded_forms if f[:1] != "+" or not f[1:].isdigit() or not MIN_DIGITS < len(f) <= 20]
    found += folded_forms
    if not free_text:  # a name written family name first (name_order_form): values of letters and separators
        found += [order for f, d in zip(folded_all, digits_all, strict=True)
                  if not d and not f.isalpha() and "@" not in f and (order := name_order_form(f)) is not None]
    found += [plus_digits(c) for f, d, c in zip(folded_all, digits_all, compact_all, strict=True)
              if d and len(d) < len(f) and len(c) >= minimum and c != f and c != d and "@" not in f]
    # Digit forms and tails need a value made only of "+", digits and separators (digit_forms: ASCII whitespace
    # is what str.strip() removes): str.strip with that set answers it in C, so an e-mail or an ID holding
    # nine digits among its letters costs no call.
    for text, digits in zip(plain, digits_all, strict=True):
        if len(digits) >= MIN_DIGITS and not text.strip(_TAIL_CHARS):
            if text[:1] == "+" and text[1:] == digits and len(digits) <= 19:
                # E.164 ("+" and digits only: a masked or a production phone), digit_forms inline: its digits,
                # without "00", without a 1-3 digit country prefix (9 digits left at least).
                tail = digits[-MIN_DIGITS:]
                some = [digits]
                if digits.startswith("00"):
                    digits = digits[2:]
                    some.append(digits)
                some += without_country_prefix(digits)
                found += some
                if tails is not None:
                    if tail_forms is not None and len(some[-1]) == MIN_DIGITS:  # the last form is the tail
                        tail_forms.append(len(found) - 1)
                    else:
                        tails.append(tail)
                continue
            if text.count(".") == 3 and _IPV4.match(text.strip()):
                continue  # an IPv4 address: no digit form, no tail (digit_forms' rule, without its call)
            some = digit_forms(text, digits)
            found += some
            # An all-digit form is a digit form, or holds a "+" (folded, compact), or is folded digits too long
            # for digit forms (20+); an IPv4 address or a decimal without "+" has none (its tail would only
            # fill the filter).
            if tails is not None and (some or "+" in text or len(digits) > 19):
                tails.append(digits[-MIN_DIGITS:])
    return found


def _e164_batch_forms(plain: list[str], tails: list[str] | None, tail_forms: list[int] | None,
                      start: int) -> list[str]:
    """forms_of_many of a batch of E.164 phones (:data:`_E164_BATCH`), a list comprehension per form instead of
    a loop over the values: each value's digits (its own form: plus_digits) and its digits without a 1, 2 or
    3 digit country prefix while nine digits are left (digit_forms of an international number), grouped by
    cut. A value's tail (its last nine digits) is its last cut when it has 9-12 digits: its position goes to
    ``tail_forms`` (``start``: where these forms begin in forms_of_many's list), else the tail to ``tails``."""
    digits = [text[1:] for text in plain]
    # without_country_prefix, a cut at a time over the batch
    cuts = [digits, *([d[cut:] for d in digits if len(d) - cut >= MIN_DIGITS] for cut in COUNTRY_PREFIX_CUTS)]
    if tails is not None:
        lengths = np.fromiter(map(len, digits), dtype=np.int64, count=len(digits))
        last_cut = lengths - MIN_DIGITS  # the cut that leaves nine digits: the tail, when it is 0-3
        if tail_forms is None:
            tails.extend(d[-MIN_DIGITS:] for d in digits)
        else:
            offset = start
            for cut, forms_of_cut in enumerate(cuts):
                rank = np.cumsum(lengths - cut >= MIN_DIGITS) - 1  # each value's place among those cut so
                tail_forms.extend((offset + rank[last_cut == cut]).tolist())
                offset += len(forms_of_cut)
            tails.extend(digits[i][-MIN_DIGITS:] for i in np.flatnonzero(last_cut > 3).tolist())
    return [form for forms_of_cut in cuts for form in forms_of_cut]


_WORD = re.compile(r"^[^\W\d_]+(?:['\-][^\W\d_]+)*$")


def name_part(text: str) -> str | None:
    """A single word (a first or last name on its own), folded; None for anything else.

    Name parts are fingerprinted apart from the other forms (:meth:`Fingerprinter.part`): "Madalena"
    is a customer's first name and a song's title, so one shared word is chance, and only a column
    whose values are mostly production's name parts is a finding (:data:`NAME_PART_SHARE`).
    """
    folded = fold(text)
    return folded if 2 <= len(folded) <= 40 and _WORD.match(folded) else None


#: A column is reported for name parts when at least this share of its distinct values (and at least
#: :data:`NAME_PART_MIN` of them) are first or last names of production's people.
NAME_PART_SHARE = 0.5
NAME_PART_MIN = 3


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


#: A run of a phone number's characters (digits, spaces, ``-./()``, a leading ``+``), nine characters or more,
#: standing alone as a token: no word character or ``+-./`` before it, no word character (or ``-./`` and one)
#: after it. Where a phone number written inside prose may be; never a piece of a UUID, a path or a code.
_PHONE_RUN = re.compile(r"(?<![\w+\-./])\+?[0-9(][0-9 \-./()]{7,}[0-9](?!\w|[\-./]\w)")
#: A run that starts with an ISO date (``2024-01-05 10:30``: the date and the hour make ten digits) is a timestamp.
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?![0-9])")


def embedded_phone_runs(text: str) -> list[str]:
    """The phone-shaped runs of :data:`MIN_DIGITS` digits or more inside a longer value (``call 020 7946 0018
    after 5``), never the value itself (:func:`forms` and the detectors take that): digits of any width or
    script read as ASCII (:func:`ascii_digit_view`). A keep column's prose holding a production phone number
    is found through their :func:`digit_forms`, and a run the phone detector knows counts as a phone number.
    Why nine digits: prose is full of shorter references (``00123/245``, a date) the detector's ``00`` rule
    would take for a phone; a phone number with its area code has nine digits or more."""
    view = ascii_digit_view(text) or text
    whole = view.strip()
    return [run for run in _PHONE_RUN.findall(view)
            if run != whole and len(_digits(run)) >= MIN_DIGITS and not _ISO_DATE.match(run)]


#: An IPv4 address inside longer text: four octets standing alone (no digit or dot before, no digit or dotted
#: digit after), as a log line, a URL, ``host:port`` or a ``cidr`` host (``/32``) holds it.
_EMBEDDED_IPV4 = re.compile(rf"(?<![0-9.])({IPV4_HOST})(?![0-9]|\.[0-9])")


def embedded_ipv4(text: str) -> list[str]:
    """The IPv4 addresses inside a longer value (``GET / from 11.2.3.4:443``, ``11.2.3.4/32``), never the value
    itself (:func:`forms` takes that). Why by value and not by a detector: logs hold servers' and proxies'
    addresses too; a keep column holding one of production's personal addresses (an ``ip`` rule's column) is
    found through the address's own form, which is what the ``ip`` column's values were fingerprinted as."""
    whole = text.strip()
    return [address for address in _EMBEDDED_IPV4.findall(text) if address != whole]


#: A base64 or base64url run that encodes a JSON object: it starts as ``{"`` encodes (``eyJ``). A JWT is three
#: such runs (header, payload, signature) joined by dots; session, token and cookie columns hold them.
_ENCODED_JSON = re.compile(r"eyJ[A-Za-z0-9_\-+/]{8,}={0,2}")


def embedded_encoded_json(text: str) -> list[Any]:
    """The JSON objects a value holds base64-encoded (a JWT's header and payload, a cookie, a ``state``
    parameter), decoded: a signed token keeps its claims readable to anyone (``email``, ``name``, ``phone_number``),
    so a kept sessions table holds the people it names. Runs that do not decode to a JSON object are ignored; one
    nested deeper than the parser goes gives the list of its string literals (:func:`json_string_literals`)."""
    found = []
    for run in _ENCODED_JSON.findall(text):
        body = run.rstrip("=")
        try:
            decoded = base64.b64decode(body.replace("-", "+").replace("_", "/") + "=" * (-len(body) % 4),
                                       validate=True)
            text = decoded.decode("utf-8")
            doc = json.loads(text)
        except RecursionError:  # nested deeper than json parses: its strings, read off the text
            found.append(json_string_literals(text))
            continue
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict):
            found.append(doc)
    return found


#: A run of words that may all be capitalized (an ASCII capital, or any other letter than a-z first), separated
#: by whitespace only, each with letters, apostrophes or hyphens, an optional period (an initial, a title) and
#: comma ("Smith, John"). Found by one C search, so a keep column of prose costs Python work only at its runs.
_CAPITALIZED_WORD = r"[^\W\d_a-z][\w'\u2019\-]*\.?,?"
_CAPITALIZED_RUN = re.compile(rf"(?<![\w'\u2019\-.])(?:{_CAPITALIZED_WORD}\s+)+{_CAPITALIZED_WORD}")
#: Longest run of capitalized words looked into, and the longest span of it taken as a name.
_NAME_RUN_WORDS, _NAME_SPAN_WORDS = 8, 5


def embedded_name_spans(text: str) -> list[str]:
    """The spans of two to five capitalized words inside a longer value (``Customer John Smith called``): where a
    name written in prose may be. Every span of each run of capitalized words, so the sentence's first word or a
    title does not hide the name (``Mr. John Q. Smith``: :func:`name_order_form` drops titles and initials);
    never the value itself (:func:`forms` takes that). A span is matched by value against production's names."""
    whole = text.strip()
    spans = []
    for found in _CAPITALIZED_RUN.findall(text):
        runs: list[list[str]] = [[]]
        for word in found.split():  # a non-ASCII word in lower case splits the run
            if word[0].isupper():
                runs[-1].append(word)
            elif runs[-1]:
                runs.append([])
        for run in runs:
            run = run[:_NAME_RUN_WORDS]
            for size in range(2, min(_NAME_SPAN_WORDS, len(run)) + 1):
                spans += [span for start in range(len(run) - size + 1)
                          if (span := " ".join(run[start:start + size]).rstrip(".,")) != whole]
    return spans


#: What every IPv4 address holds: its middle octets between dots. It starts with a literal, so the search skips
#: ahead in C (0.1 µs a value of prose, the full pattern 8.5 µs).
_IPV4_HINT = re.compile(r"\.[0-9]{1,3}\.[0-9]{1,3}\.")


def json_leaves(node: Any, masked: Iterable[list[str]] = (), *, keys: bool = True) -> list[str]:
    """The scalar leaves and (``keys``) object keys of a JSON document (numbers as JSON writes them), outside every
    one of the ``masked`` paths (path parts, ``*`` any key or item, as the json transformer walks them; a path's
    node is masked whole, and the key that holds it is not). Walked with a stack, not by recursion: a document
    nested thousands deep is data too, and must not stop the check."""
    found: list[str] = []
    stack: list[tuple[Any, list[list[str]]]] = [(node, list(masked))]
    while stack:
        node, paths = stack.pop()
        if any(not parts for parts in paths):
            continue
        if isinstance(node, dict):
            for key, child in node.items():
                if keys:
                    found.append(key)
                stack.append((child, [parts[1:] for parts in paths if parts[0] in ("*", key)]))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                stack.append((child, [parts[1:] for parts in paths if parts[0] in ("*", str(index))]))
        elif isinstance(node, str):
            found.append(node)
        elif node is not None and not isinstance(node, bool):
            found.append(json.dumps(node))
    return found


def json_text_leaves(text: str) -> list[str]:
    """The :func:`json_leaves` of a value that is a JSON document written as text (a ``text`` column holding JSON,
    a JSON string leaf holding JSON again), or nothing: such a document rearranges and quotes its values, so a
    production value inside it meets no form of the whole."""
    stripped = text.strip()
    if stripped[:1] not in ("{", "[") or len(stripped) < 2:
        return []
    try:
        return json_leaves(json.loads(stripped))
    except RecursionError:  # nested deeper than json parses: its strings, read off the text
        return json_string_literals(stripped)
    except ValueError:
        return []


#: A JSON string literal: quotes around characters other than a quote or a backslash, or escapes.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def json_string_literals(text: str) -> list[str]:
    """The string literals of JSON text, decoded, without parsing its structure: the leaves and keys of a document
    nested deeper than the parser goes (a value a few thousand brackets deep is data, and its names must still be
    read). Numbers are left out; a literal that does not decode is skipped."""
    found = []
    for literal in _JSON_STRING.findall(text):
        try:
            found.append(json.loads(literal))
        except ValueError:
            continue
    return found


def may_hold_json_text(texts: list[str]) -> bool:
    """Whether any of ``texts`` may be a JSON document written as text (:func:`json_text_leaves`)."""
    return any(text.lstrip()[:1] in ("{", "[") for text in texts if text)


def may_hold_ipv4(texts: list[str]) -> bool:
    """Whether any of ``texts`` may hold an address (:func:`embedded_ipv4`): searches over the batch joined by
    NUL (no address crosses a NUL)."""
    joined = "\0".join(texts)
    return _IPV4_HINT.search(joined) is not None and _EMBEDDED_IPV4.search(joined) is not None


def may_hold_name_spans(texts: list[str]) -> bool:
    """Whether any of ``texts`` may hold a span (:func:`embedded_name_spans`): one search over the batch joined by
    NUL (no run crosses a NUL)."""
    return _CAPITALIZED_RUN.search("\0".join(texts)) is not None


def may_hold_phone_runs(texts: list[str]) -> bool:
    """Whether any of ``texts`` may hold a run (:func:`embedded_phone_runs`): one search over the batch joined
    by NUL (no run crosses a NUL), so a batch of words, codes and short numbers costs no per-value search."""
    joined = "\0".join(texts)
    return _PHONE_RUN.search(ascii_digit_view(joined) or joined) is not None


#: "@" as HTML writes it: a character reference (decimal, hexadecimal) or the named one.
_HTML_AT = re.compile(r"&(?:#0*64|#[xX]0*40|commat);?")


def looks_like_email(text: str) -> bool:
    """Whether ``text`` holds an e-mail address: written, percent-encoded (``%40``) as a link's query holds it
    (unsubscribe, tracking and password-reset links), or with "@" as an HTML character reference (``&#64;``:
    stored pages and message bodies, and addresses hidden from harvesters so)."""
    if "@" in text and _EMAIL.search(text) is not None:
        return True
    if "%40" in text and _EMAIL.search(unquote(text)) is not None:
        return True
    return "&" in text and _HTML_AT.search(text) is not None and _EMAIL.search(html.unescape(text)) is not None


def looks_like_phone(text: str) -> bool:
    """A phone number as people write it (international, NANP, with a bracketed area code); 8-15 digits.
    Digits of any script or width count (:func:`ascii_digit_view`)."""
    stripped = (ascii_digit_view(text) or text).strip()
    if not any(p.match(stripped) for p in _PHONE_PATTERNS):
        return False
    return 8 <= sum(ch.isdigit() for ch in stripped) <= 15 or stripped.startswith("(")


def looks_like_card(text: str) -> bool:
    """A payment card number: 13-19 digits (spaces or dashes between groups), issuer digit 2-6, Luhn-valid.

    A leading ``+`` or ``00`` makes it a phone number, never a card. Digits of any script or width count
    (:func:`ascii_digit_view`).
    """
    stripped = (ascii_digit_view(text) or text).strip()
    if not _CARD.match(stripped):
        return False
    digits = "".join(ch for ch in stripped if ch.isdigit())
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


#: What the fingerprint key is derived for (HMAC-SHA256 of this under the masking key): a label of its own,
#: so the key masks nothing and no masking output is a fingerprint. "v2": 128-bit fingerprints (v1 had 64);
#: changing the derivation or the hash changes every fingerprint, so a new scheme takes a new label.
FINGERPRINT_KEY_LABEL = b"dbprotect fingerprint v2"
#: Bytes of a fingerprint: the set keeps 70 of its bits (:class:`FingerprintFilter`), the rest spare.
FINGERPRINT_BYTES = 16


def fingerprint_key(masking_key: bytes) -> bytes:
    """The fingerprint key: HMAC-SHA256(masking key, :data:`FINGERPRINT_KEY_LABEL`)."""
    return hmac.digest(masking_key, FINGERPRINT_KEY_LABEL, "sha256")


class Fingerprinter:
    """Keyed 128-bit fingerprints of normalized forms, under a key derived from the masking key.

    Each form is MACed with keyed BLAKE2b (a PRF, hashlib's C code, 16-byte digest) under
    :func:`fingerprint_key`: whoever lacks the masking key cannot compute a fingerprint, so a
    dictionary of known e-mails or phone numbers tested against the set reveals nothing, and the
    same masking key gives the same fingerprint in every process (issue 12: "HMAC with the masking
    key"; decided by the lead in session 5 over the interpreter's per-process SipHash key, which
    could never be compared across processes). BLAKE2b rather than HMAC-SHA256: one compression
    per short form instead of four, measured 3.6x cheaper per form; keyed BLAKE2b is a PRF by
    design (RFC 7693: its key input replaces HMAC). The per-form cost is one ``copy`` of
    the keyed state (no key schedule per form), one ``update`` and one ``digest``.

    One fingerprint is an ``int`` (:attr:`of`, big-endian digest); a batch is an ``(n, 2)`` array of
    ``uint64`` (:meth:`array_of_many`: row ``i`` is ``of(found[i]) >> 64`` and ``of(found[i]) & (2**64 - 1)``),
    which the set takes without a Python object per fingerprint.
    """

    def __init__(self, key: bytes, *, derived: bytes | None = None) -> None:
        #: The fingerprint key (:func:`fingerprint_key`), never the masking key: what a worker process
        #: needs to compute the same fingerprints (``Fingerprinter(b"", derived=...)``).
        self.derived_key = fingerprint_key(key) if derived is None else derived
        base = hashlib.blake2b(key=self.derived_key, digest_size=FINGERPRINT_BYTES)
        fresh = base.copy
        from_bytes = int.from_bytes

        def of(form: str) -> int:
            mac = fresh()
            mac.update(form.encode("utf-8", "surrogatepass"))
            return from_bytes(mac.digest())

        #: Fingerprint of one form (a str, encoded UTF-8).
        self.of: Callable[[str], int] = of
        self._fresh = fresh

    def array_of_many(self, found: list[str]) -> np.ndarray:
        """The fingerprints of ``found`` (forms) as an ``(n, 2)`` ``uint64`` array (see the class docstring).

        Why: ``map(of, ...)`` paid a Python frame, an ``encode`` and an ``int`` per form; here one
        ``encode`` of the batch joined by NUL (split in C), a loop without a call frame, and the
        digests joined into one buffer numpy reads as it is. A batch holding a NUL (the separator
        would be ambiguous) is encoded form by form.
        """
        joined = "\0".join(found)
        if joined.count("\0") != len(found) - 1:
            datas = [form.encode("utf-8", "surrogatepass") for form in found]
        else:
            datas = joined.encode("utf-8", "surrogatepass").split(b"\0") if found else []
        return np.frombuffer(self._digests(datas), dtype=">u8").astype(np.uint64).reshape(-1, 2)

    def _digests(self, datas: list[bytes]) -> bytes:
        """The fingerprints of encoded forms, end to end: a loop without a call frame per form."""
        fresh = self._fresh
        digests = []
        append = digests.append
        for data in datas:
            mac = fresh()
            mac.update(data)
            append(mac.digest())
        return b"".join(digests)

    def first_word(self, data: bytes) -> int:
        """The first 64 bits of the fingerprint of an encoded form (``of(form) >> 64``), without the str."""
        return self.first_words([data])[0]

    def first_words(self, datas: list[bytes]) -> list[int]:
        """:meth:`first_word` of each of ``datas``."""
        return np.frombuffer(self._digests(datas), dtype=">u8")[::2].tolist()

    def of_many(self, found: list[str]) -> list[int]:
        """The fingerprints of ``found`` as :attr:`of` gives them one by one (ints)."""
        return [int(hi) << 64 | int(lo) for hi, lo in self.array_of_many(found).tolist()]

    def part(self, text: str) -> int | None:
        """The fingerprint of a value as a name part (its own domain), or None when it is not one word."""
        word = name_part(text)
        return None if word is None else self.of("\0part\0" + word)

    def all(self, text: str, *, free_text: bool = False) -> list[int]:
        return list(map(self.of, forms(text, free_text=free_text)))

    def many(self, texts: list[str], *, free_text: bool = False) -> np.ndarray:
        """The fingerprints of every form of every value of ``texts`` (:func:`forms_of_many`), flat, as
        :meth:`array_of_many` gives them."""
        return self.array_of_many(forms_of_many(texts, free_text=free_text))


def phone_tails(found: Iterable[str]) -> set[str]:
    """The last :data:`MIN_DIGITS` digits of every form that is ASCII digits (after leading ``+``) and at
    least that long.

    Why: the stream tests every masked phone against production (:meth:`WrittenCheck.known`), and an
    E.164 output has up to five forms (the value, its digits, without a 1-3 digit country prefix):
    five keyed hashes and five lookups per phone, the stream's largest check cost (py-spy, 200 k
    users). Every form of such an output is a suffix of it at least :data:`MIN_DIGITS` digits long
    (or the value itself), so every one ends in the output's last 9 digits; a production form equal
    to one of them is digits of that length too (or ``+`` and digits), so it ends in the same 9
    digits and left this tail in the filter. One lookup of the output's tail is therefore a superset
    of the five: it never misses a production value; a tail shared with a different real number
    only costs one deterministic retry.
    """
    tails = set()
    for form in found:
        digits = form.lstrip("+")
        if len(digits) >= MIN_DIGITS and digits.isdigit() and digits.isascii():
            tails.add(digits[-MIN_DIGITS:])
    return tails


def _as_array(fingerprints: np.ndarray | Iterable[int]) -> np.ndarray:
    """Fingerprints as the ``(n, 2)`` ``uint64`` array :meth:`Fingerprinter.array_of_many` gives."""
    if isinstance(fingerprints, np.ndarray):
        return fingerprints
    mask = (1 << 64) - 1
    pairs = [(f >> 64 & mask, f & mask) for f in fingerprints]
    return np.array(pairs, dtype=np.uint64).reshape(-1, 2)


class FingerprintFilter:
    """The production fingerprints: an exact set of 70 bits of each, in memory bounded by 8 bytes an entry.

    Layout: :data:`BUCKETS` sorted ``uint64`` arrays; a fingerprint's first word chooses its array
    (its top :data:`BUCKET_BITS` bits) and its second word is what the array holds. A lookup is a
    binary search (``numpy.searchsorted``, a batch at a time), so a value never added matches only
    when 70 bits agree by chance: at ``n`` entries the false-positive rate is ``n / 2**70`` per
    lookup (1.4e-14 at 16 M). Why not a Bloom filter (the first version, `rbloom`_ at 1e-9): each
    insert and lookup touched ~30 random cache lines, measured 1.1 µs each, the largest share of the
    check; an append here is a copy into an array and a batch lookup ~0.1 µs a fingerprint.

    Fingerprints are appended to ``pending``, spread into their buckets as sorted runs every
    :data:`SPILL_ROWS` (:meth:`_spill`) and merged into one array per bucket when first looked up
    (:meth:`flush`): the transient memory is one bucket's merge (1/64 of the set), not a second copy.

    Phone tails (:func:`phone_tails`) go to :attr:`tails`, a Bloom filter at
    :data:`TAIL_FALSE_POSITIVE_RATE`: only the stream's retry test asks it (:meth:`WrittenCheck.known`).
    ``tails_complete``: every form added so far came with its phone tails (:meth:`add_forms`), so the
    one-lookup phone test is sound; fingerprints added without their forms (:meth:`add`) clear it and
    :meth:`WrittenCheck.known` tests every form.

    The census of the transformers' output shapes (:func:`shape_census`, ``shapes_seen``) is taken on the same
    terms: over every form added, or :meth:`shape_clear` answers no.
    """

    BUCKET_BITS = 6
    BUCKETS = 1 << BUCKET_BITS
    #: Pending fingerprints are spread into their arrays every this many (bounds the unsorted buffer).
    SPILL_ROWS = 1 << 18

    def __init__(self, capacity: int, shapes: Iterable[str] = ()) -> None:
        self.capacity = max(1000, capacity)
        #: Output shapes (:func:`~.transformers.output_shape`) whose census is taken as forms are added
        #: (``shapes_seen``: those some production form fully matches). ``shapes_complete``: every form
        #: added so far came with its census (:meth:`add` clears it), so :meth:`shape_clear` can be trusted.
        self.shapes: tuple[str, ...] = tuple(sorted(set(shapes)))
        self.shapes_seen: set[str] = set()
        self.shapes_complete = True
        # At most one tail a phone, and fingerprint_capacity counts 5 entries a phone.
        self.tails = Bloom(max(1000, self.capacity // 5), TAIL_FALSE_POSITIVE_RATE)
        self.tails_complete = True
        #: The lengths of every form added that is digits with at most a leading "-" (``complete``: every form
        #: added came with its own, :meth:`add` clears it): an integer's text can equal no other form, so the
        #: copy's integer columns are read back only where their length is one of these (checks.copy_findings).
        self.integer_lengths: set[int] = set()
        self.integer_lengths_complete = True
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        #: Per bucket: the second words (one sorted run each after :meth:`flush`).
        self._buckets: list[KeySet] = [KeySet() for _ in range(self.BUCKETS)]
        self._sorted = True

    def _append(self, pairs: np.ndarray) -> None:
        if not len(pairs):
            return
        self._pending.append(pairs)
        self._pending_rows += len(pairs)
        self._sorted = False
        if self._pending_rows >= self.SPILL_ROWS:
            self._spill()

    def _spill(self) -> None:
        """Move the pending pairs into their buckets (second words only), a bucket at a time (each a
        :class:`~.keyset.KeySet`: the transient memory is one bucket's merge)."""
        if not self._pending:
            return
        pairs = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        bucket = (pairs[:, 0] >> np.uint64(64 - self.BUCKET_BITS)).astype(np.uint8)
        # Grouped by bucket in one stable sort (radix, for 8-bit keys) rather than one pass of the batch per bucket.
        order = np.argsort(bucket, kind="stable")
        second = pairs[order, 1]
        ends = np.cumsum(np.bincount(bucket, minlength=self.BUCKETS)).tolist()
        start = 0
        for index, end in enumerate(ends):
            if end > start:
                self._buckets[index].add(second[start:end])
            start = end

    def flush(self) -> None:
        """Merge what was added since the last lookup into place (done by the first lookup otherwise)."""
        if self._sorted:
            return
        self._spill()
        for keys in self._buckets:
            keys.compact()
        self._sorted = True

    def add(self, fingerprints: np.ndarray | Iterable[int]) -> None:
        """Add fingerprints in bulk (ints, or an array from :meth:`Fingerprinter.array_of_many`).

        Their forms are unknown here, so no phone tail is added: the phone shortcut is off from now on.
        """
        self.tails_complete = False
        self.integer_lengths_complete = False
        self.shapes_complete = False
        self._append(_as_array(fingerprints))

    def add_part(self, fingerprint: int) -> None:
        """Add a name part's fingerprint (:meth:`Fingerprinter.part`: its own domain, no form, no tail)."""
        self._append(_as_array([fingerprint]))

    def add_forms(self, fingerprinter: Fingerprinter, found: list[str], tails: Iterable[str] | None = None) -> None:
        """Add the fingerprints of ``found`` (normalized forms) and of their phone tails: ``tails`` when the
        caller has them (:func:`forms_of_many`: at least :func:`phone_tails` of ``found``), else computed."""
        self.add_pairs(fingerprinter.array_of_many(found),
                       tail_keys(fingerprinter, phone_tails(found) if tails is None else tails),
                       integer_shaped_lengths(found), (self.shapes, shape_census(found, self.shapes)))

    def add_pairs(self, pairs: np.ndarray, tail_keys: list[int], integer_lengths: set[int],
                  census: Census | None = None) -> None:
        """Add what :func:`value_fingerprints` computed (possibly in another process). ``census``: the shapes
        tested on those forms and those seen; without it, or without every shape of this set tested, the
        census is incomplete from now on (:meth:`shape_clear` answers no)."""
        if census is None or not set(self.shapes) <= set(census[0]):
            self.shapes_complete = False
        else:
            self.shapes_seen |= census[1]
        self.integer_lengths |= integer_lengths
        self._append(pairs)
        if tail_keys:
            self.tails.update(tail_keys)

    def hits(self, fingerprints: np.ndarray | Iterable[int]) -> np.ndarray:
        """Per fingerprint, whether it is in the set (a boolean array)."""
        pairs = _as_array(fingerprints)
        self.flush()
        found = np.zeros(len(pairs), dtype=bool)
        if not len(pairs):
            return found
        bucket = (pairs[:, 0] >> np.uint64(64 - self.BUCKET_BITS)).astype(np.intp)
        for index in np.unique(bucket).tolist():
            if len(self._buckets[index]):
                where = np.flatnonzero(bucket == index)
                found[where] = self._buckets[index].hits(pairs[where, 1])
        return found

    def __contains__(self, fingerprint: int) -> bool:
        return bool(self.hits([fingerprint])[0])

    def any_of(self, fingerprints: np.ndarray | Iterable[int]) -> bool:
        return bool(self.hits(fingerprints).any())

    def shape_clear(self, shape: str | None) -> bool:
        """Whether no production form fully matches ``shape`` (an output shape, :func:`~.transformers.output_shape`):
        its census was taken over every form added, and nothing matched."""
        return shape is not None and self.shapes_complete and shape in self.shapes and shape not in self.shapes_seen

    def tails_first_word_known(self, first_word: int) -> bool:
        """:meth:`tail_known` of a fingerprint's first word (:meth:`Fingerprinter.first_word`)."""
        return first_word in self.tails

    def tail_known(self, fingerprint: int) -> bool:
        """Whether a phone tail's fingerprint (:func:`tail_keys`) was added (Bloom: may say yes wrongly).
        The filter holds a tail's first 64 bits (a fingerprint's first word, as :meth:`add_forms` adds it)."""
        return fingerprint >> 64 in self.tails

    @property
    def entries(self) -> int:
        """Distinct fingerprints in the set."""
        self.flush()
        return sum(len(keys) for keys in self._buckets)

    def false_positive_rate(self) -> float:
        """Per lookup of a fingerprint never added: the chance one of its bucket's entries has its 64 bits."""
        return self.entries / 2.0 ** (64 + self.BUCKET_BITS)

    @property
    def bytes(self) -> int:
        self.flush()
        return sum(keys.nbytes for keys in self._buckets) + self.tails.size_in_bits // 8


def integer_shaped_lengths(found: list[str]) -> set[int]:
    """The lengths of the forms in ``found`` made of digits, with at most a leading ``-``: the only forms the
    text of an integer can equal (:attr:`FingerprintFilter.integer_lengths`)."""
    lengths = set(map(len, filter(str.isdigit, found)))  # C loops: called on every production form
    joined = "\0".join(found)  # a form starting with "-", found by one C search (a generator cost 0.3 µs a form)
    if joined[:1] == "-" or "\0-" in joined:
        lengths.update(len(form) for form in found if form[:1] == "-" and form[1:].isdigit())
    return lengths


#: The census of output shapes over some production forms: the shapes tested, and those a form fully matched.
Census = tuple[tuple[str, ...], frozenset[str]]
#: What one batch of production values adds to the set: fingerprints, tail keys, integer-shaped form lengths, and
#: the census of output shapes (None when none was taken).
Added = tuple[np.ndarray, list[int], set[int], Census | None]


@lru_cache(maxsize=64)
def _census_pattern(shape: str) -> re.Pattern[str]:
    return re.compile(f"\0(?:{shape})(?=\0)")


def shape_census(found: list[str], shapes: tuple[str, ...]) -> frozenset[str]:
    """The ``shapes`` (regexes) that some form of ``found`` fully matches: one search per shape over the forms
    joined by NUL (no PostgreSQL text holds one; forms that do are tested one by one)."""
    if not shapes or not found:
        return frozenset()
    joined = "\0" + "\0".join(found) + "\0"
    if joined.count("\0") != len(found) + 1:
        return frozenset(shape for shape in shapes if any(re.fullmatch(shape, form) for form in found))
    return frozenset(shape for shape in shapes if _census_pattern(shape).search(joined))


def value_fingerprints(fingerprinter: Fingerprinter, texts: list[str], *, free_text: bool = False,
                       name_part: bool = False, shapes: tuple[str, ...] | None = None) -> Added:
    """What one batch of a personal column's values adds to the production set: the fingerprints of
    their forms (or, ``name_part``, of each one-word value as a name part, :meth:`Fingerprinter.part`),
    the tail keys of their phone tails and the lengths of their integer-shaped forms
    (:meth:`FingerprintFilter.add_forms` says the same in place).

    A pure function of the values and the key, so that worker processes can compute it.
    """
    found: list[str] = []
    tails: list[str] = []
    tail_forms: list[int] = []
    parts: list[int] = []
    if name_part:
        for text in texts:  # one word alone: its own, weaker tier (name_part)
            part = fingerprinter.part(text)
            if part is not None:
                parts.append(part)
            else:
                some = forms(text)
                found.extend(some)
                tails.extend(phone_tails(some))
    else:
        found = forms_of_many(texts, free_text=free_text, tails=tails, tail_forms=tail_forms)
    pairs = fingerprinter.array_of_many(found)
    keys = tail_keys(fingerprinter, tails) + (pairs[tail_forms, 0].tolist() if tail_forms else [])
    if parts:
        pairs = np.concatenate([pairs, _as_array(parts)])
    census = None if shapes is None else (shapes, shape_census(found, shapes))
    return pairs, keys, integer_shaped_lengths(found), census


def tail_keys(fingerprinter: Fingerprinter, tails: Iterable[str]) -> list[int]:
    """What the tail filter holds for ``tails`` (:func:`phone_tails`): the first 64 bits of each distinct
    tail's fingerprint (:meth:`FingerprintFilter.tails_first_word_known` asks it). The tail filter holds
    nothing else and is asked nothing else, so a tail is fingerprinted as the form it is: when it is one of
    its value's forms, its key is that form's (forms_of_many's ``tail_forms``)."""
    keys = list(set(tails))
    return fingerprinter.array_of_many(keys)[:, 0].tolist() if keys else []


def production_value(production: FingerprintFilter, fingerprinter: Fingerprinter, text: str,
                     exempt: Set[int]) -> tuple[bool, int]:
    """Whether a form of ``text`` is in the production set and is not one of ``exempt`` (a column's rule
    constants), and the lookups it took: the value-by-value test of the written check and of the
    read-back alike, used once a batch's fingerprints said "maybe"."""
    return known_forms(production, fingerprinter, list(forms(text)), exempt)


def known_forms(production: FingerprintFilter, fingerprinter: Fingerprinter, found: list[str],
                exempt: Set[int]) -> tuple[bool, int]:
    """Whether one of the forms ``found`` is in the production set and is not one of ``exempt``, and the
    lookups it took (:func:`production_value` for a value's forms; the read-back for the digit forms of
    phone runs inside prose)."""
    fingerprints = fingerprinter.of_many(found) if found else []
    hits = production.hits(fingerprints).tolist()
    return any(hit and f not in exempt for f, hit in zip(fingerprints, hits, strict=True)), len(fingerprints)


_ALL_BUT_NUL_DIGITS_AT = bytes(i for i in range(256) if i and not 48 <= i <= 57 and i != ord("@"))


def all_hold_digit_or_at(texts: list[str]) -> bool:
    """Whether every one of ``texts`` holds an ASCII digit or "@" (so none is a name part: one_word_part),
    answered by C calls over the whole batch: joined by NUL, everything else deleted, no two NULs may meet.
    A value holding a NUL would blur the boundaries: such a batch answers False (each value then asked)."""
    return _joined_hold_digit_or_at("\0".join(texts).encode("utf-8", "surrogatepass"), len(texts))


def all_encoded_hold_digit_or_at(datas: list[bytes]) -> bool:
    """:func:`all_hold_digit_or_at` of UTF-8 bytes (their decoded text holds the same ASCII digits and "@",
    replacement characters or not): the written check asks it of outputs without decoding them."""
    return _joined_hold_digit_or_at(b"\0".join(datas), len(datas))


def _joined_hold_digit_or_at(joined: bytes, count: int) -> bool:
    if joined.count(b"\0") != count - 1:
        return False
    kept = joined.translate(None, _ALL_BUT_NUL_DIGITS_AT)
    return bool(count) and kept[:1] != b"\0" and kept[-1:] != b"\0" and b"\0\0" not in kept and kept != b""


def one_word_part(fingerprinter: Fingerprinter, text: str) -> int | None:
    """:meth:`Fingerprinter.part` of a value, skipping the fold for values holding "@" or an ASCII digit
    (name_part keeps both after folding: never one word): e-mails, phones and IDs cost no second fold."""
    if "@" in text or _ASCII_DIGIT(text):
        return None
    return fingerprinter.part(text)


#: Outputs joined by newlines that are each "+" and digits, at least MIN_DIGITS after a leading "00" and at least
#: MIN_DIGITS otherwise: the values :meth:`WrittenCheck.known` answers by their tail.
_TAILED_E164 = rf"\+(?:00[0-9]{{{MIN_DIGITS},}}|(?!00)[0-9]{{{MIN_DIGITS},}})"
_TAILED_E164_BATCH = re.compile(f"(?:{_TAILED_E164}\n)*{_TAILED_E164}".encode())

#: :meth:`WrittenCheck.verdict`: the value shares a fingerprint with production (not a rule constant).
PRODUCTION_VALUE = 1
#: :meth:`WrittenCheck.verdict`: the value is one word that is a production first or last name.
NAME_PART = 2


class WrittenCheck:
    """The ``no_pii_leaked`` test of one value, applied by the stream to the masked values it writes.

    The final check would read every masked column back from the copy and fingerprint each value;
    the stream already holds those values, so it asks here instead (and the check reads the column
    back only when it cannot prove the copy holds exactly what the stream wrote: see
    :func:`~.checks.copy_findings`). The test is the final check's, form by form: a value is a
    finding when one of its fingerprints is in the production set and is not a rule constant
    of its own column (``exempt``, per (table, column)), or, failing that, when it is a single word
    that is a production name part.
    """

    def __init__(self, fingerprinter: Fingerprinter, production: FingerprintFilter,
                 exempt: dict[tuple[str, str], set[int]]) -> None:
        self.fingerprinter = fingerprinter
        self.production = production
        self.exempt = exempt
        #: Set lookups made so far by :meth:`verdict` and :meth:`verdicts` (at most: a batch's lookups stop at
        #: its first hit): each is a chance of a false report, so the check counts them in its false-report
        #: budget. :meth:`known` is not counted: a false positive there costs a retry, never a report.
        self.lookups = 0

    def known(self, output: bytes) -> bool:
        """Whether any form of ``output`` is in the production set (the stream's retry test; stricter
        than :meth:`verdict`: rule constants are not exempt)."""
        digits = output[1:]
        if (self.production.tails_complete and output[:1] == b"+" and digits.isdigit()
                and len(digits) >= (MIN_DIGITS + 2 if digits.startswith(b"00") else MIN_DIGITS)):
            # Every form of this E.164 value (e164_forms) is it or a suffix of its digits at least
            # MIN_DIGITS long ("00" is cut before the country prefix: 2 more digits needed), so one
            # lookup of its tail answers for all of them (phone_tails). Bytes throughout (bytes.isdigit
            # is ASCII digits only): no decode, no str, per masked phone.
            return self.production.tails_first_word_known(
                self.fingerprinter.first_word(digits[-MIN_DIGITS:]))
        text = output.decode("utf-8", "replace")
        found = e164_forms(text) or list(forms(text))
        return bool(found) and self.production.any_of(self.fingerprinter.array_of_many(found))

    def known_many(self, outputs: list[bytes]) -> list[bool]:
        """:meth:`known` of each of ``outputs``; the E.164 ones (a phone column's, usually all) by one
        batch of tail fingerprints, the others one at a time. A batch that is all E.164 outputs long enough
        for the tail test (one regex over it: a phone transformer's) skips the per-output tests."""
        if self.production.tails_complete and _TAILED_E164_BATCH.fullmatch(b"\n".join(outputs)):
            return list(map(self.production.tails.__contains__,
                            self.fingerprinter.first_words([output[-MIN_DIGITS:] for output in outputs])))
        found = [False] * len(outputs)
        rows: list[int] = []
        tails: list[bytes] = []
        complete = self.production.tails_complete
        for row, output in enumerate(outputs):
            digits = output[1:]
            if (complete and output[:1] == b"+" and digits.isdigit()
                    and len(digits) >= (MIN_DIGITS + 2 if digits.startswith(b"00") else MIN_DIGITS)):
                rows.append(row)
                tails.append(digits[-MIN_DIGITS:])
            else:
                found[row] = self.known(output)
        if rows:
            known = self.production.tails.__contains__
            found_tail = [known(word) for word in self.fingerprinter.first_words(tails)]
            for row, hit in zip(rows, found_tail, strict=True):
                found[row] = hit
        return found

    def verdict(self, output: bytes, exempt: Set[int] = frozenset(), *, known: bool | None = None) -> int:
        """0, :data:`PRODUCTION_VALUE` or :data:`NAME_PART` for one value written in a column whose rule
        constants are ``exempt``.

        ``known=False``: :meth:`known` already answered no for this value, so no form can be a hit.
        """
        text = output.decode("utf-8", "replace")
        if known is not False and self._production_value(text, exempt):
            return PRODUCTION_VALUE
        part = self._part(text)
        if part is None:
            return 0
        self.lookups += 1
        return NAME_PART if part in self.production else 0

    def _production_value(self, text: str, exempt: Set[int]) -> bool:
        found, lookups = production_value(self.production, self.fingerprinter, text, exempt)
        self.lookups += lookups
        return found

    def _part(self, text: str) -> int | None:
        return one_word_part(self.fingerprinter, text)

    def verdicts(self, outputs: list[bytes], exempt: Set[int] = frozenset(), *, cleared: bool = False) -> list[int]:
        """:meth:`verdict` of each of ``outputs`` (written in one column), decided a batch at a time.

        Why: :meth:`verdict` computes a value's forms one value at a time (2-7 µs each, the stream's
        biggest check cost for unique columns such as e-mails). Here the forms of the whole batch are
        fingerprinted by whole-batch C calls (:meth:`Fingerprinter.many`); when none of them is in the
        production set (the usual case) no value of the batch can share a fingerprint with
        production, and each value is asked only its name-part test (``known=False``). Otherwise a value
        is a production value when one of its forms' fingerprints is among the batch's hits that are not
        rule constants: hashed again, never looked up again (a lookup of one value's few fingerprints cost
        ~100 µs of fixed numpy work, so a column whose every batch held one hit, such as a ``fixed`` constant
        that production also holds, crawled). Same answers as :meth:`verdict`, value by value (tested).
        ``cleared``: :meth:`known` already answered no for every one of ``outputs``.
        """
        if cleared and all_encoded_hold_digit_or_at(outputs):
            return [0] * len(outputs)  # no form is production's (known), and none is one word (masked phones)
        texts = [output.decode("utf-8", "replace") for output in outputs]
        hit: set[int] = set()
        if not cleared:
            fingerprints = self.fingerprinter.many(texts)
            self.lookups += len(fingerprints)
            found_in_batch = self.production.hits(fingerprints)
            if found_in_batch.any():
                hit = {high << 64 | low for high, low in fingerprints[found_in_batch].tolist()}.difference(exempt)
        of = self.fingerprinter.of
        found = [PRODUCTION_VALUE if hit and not hit.isdisjoint(map(of, forms(text))) else 0 for text in texts]
        # The name-part test of every value still at 0, in one lookup of the batch.
        if all_hold_digit_or_at(texts):  # e-mails, addresses, phones: never one word (one_word_part)
            return found
        parts = [(i, part) for i, text in enumerate(texts) if not found[i] and (part := self._part(text)) is not None]
        if parts:
            self.lookups += len(parts)
            for (i, _), hit in zip(parts, self.production.hits([part for _, part in parts]).tolist(), strict=True):
                if hit:
                    found[i] = NAME_PART
        return found
