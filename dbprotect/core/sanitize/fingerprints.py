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
BLAKE2b under HMAC-SHA256(masking key, "dbprotect fingerprint v1")), 64 bits, kept
in a Bloom filter (:class:`FingerprintFilter`, `rbloom`_: a Rust Bloom filter, bounded memory for
tens of millions of fingerprints). Raw values are never kept. A Bloom filter answers "maybe" for
values never added with a known false-positive rate, which the check prints: a false positive can
only make the check fail, never pass.

Short forms are not fingerprinted (:data:`MIN_FORM`): a 5-character word collides by chance with
unrelated data (a city, a product code); the detectors cover short e-mail-like and phone-like values.

.. _rbloom: https://github.com/KenanHanke/rbloom
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Set

from rbloom import Bloom

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
#: The Bloom filter's design false-positive rate (per lookup, at its capacity).
FALSE_POSITIVE_RATE = 1e-9

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
_IPV4 = re.compile(r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:/[0-9]{1,2})?$")
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


def _digits(text: str) -> str:
    if text.isascii():
        return text.encode().translate(None, _NON_DIGIT_BYTES).decode()
    return "".join(ch for ch in text if ch.isdigit())


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
        found += [digits[cc:] for cc in (1, 2, 3) if len(digits) - cc >= MIN_DIGITS]
    elif digits.startswith("0") and len(digits) - 1 >= MIN_DIGITS:
        found.append(digits[1:])
    return found


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
    if not digits:
        minimum = (MIN_PROSE if len(folded) < MIN_PROSE else MIN_FREE_TEXT) if free_text else MIN_FORM
        return {folded} if len(folded) >= minimum else set()
    minimum = MIN_FREE_TEXT if free_text else MIN_FORM
    found = {folded} if len(folded) >= minimum else set()
    if len(digits) < len(folded) and "@" not in folded:  # IBANs, IDs: letters and digits, grouped
        # ASCII: deleting bytes is a C loop; str.translate looks every character up in a dict.
        compact = (folded.encode().translate(None, _SEPARATOR_BYTES).decode() if is_ascii
                   else folded.translate(_SEPARATOR_TABLE))
        if compact != folded and len(compact) >= minimum and compact != digits:
            found.add(compact)
    if len(digits) >= MIN_DIGITS:
        found.update(digit_forms(text, digits))
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
    found = [text] if len(text) >= MIN_FORM else []
    if len(digits) < MIN_DIGITS or len(digits) > 19:
        return found
    found.append(digits)
    if digits.startswith("00"):
        digits = digits[2:]
        found.append(digits)
    found += [digits[cc:] for cc in (1, 2, 3) if len(digits) - cc >= MIN_DIGITS]
    return found


_NON_DIGIT_BUT_NUL = bytes(i for i in range(1, 256) if not 48 <= i <= 57)
#: An ASCII value made only of these can have a form that is all digits (after ``+``): see forms_of_many.
_TAIL_CHARS = _PHONE_BODY + "+"


def forms_of_many(texts: list[str], *, free_text: bool = False, tails: list[str] | None = None) -> list[str]:
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
    # Whitespace collapsed over the whole batch, then trimmed at each value's ends (one space at most).
    collapsed = " ".join(joined.lower().split()).replace(" \0", "\0").replace("\0 ", "\0")
    folded_all = collapsed.split("\0")
    digits_all = joined.encode().translate(None, _NON_DIGIT_BUT_NUL).decode().split("\0")
    compact_all = collapsed.encode().translate(None, _SEPARATOR_BYTES).decode().split("\0")
    minimum = MIN_FREE_TEXT if free_text else MIN_FORM
    if free_text:  # no digit: prose only (MIN_PROSE); with a digit: MIN_FREE_TEXT (as forms decides)
        found += [f for f, d in zip(folded_all, digits_all, strict=True)
                  if len(f) >= (MIN_FREE_TEXT if d else MIN_PROSE)]
    else:
        found += [f for f in folded_all if len(f) >= MIN_FORM]
    found += [c for f, d, c in zip(folded_all, digits_all, compact_all, strict=True)
              if d and len(d) < len(f) and len(c) >= minimum and c != f and c != d and "@" not in f]
    for text, digits in zip(plain, digits_all, strict=True):
        if len(digits) >= MIN_DIGITS:
            some = digit_forms(text, digits)
            found += some
            # An all-digit form is a digit form, or holds a "+" (folded, compact), or is folded digits too long
            # for digit forms (20+); an IPv4 address or a decimal without "+" has none (its tail would only
            # fill the filter).
            if tails is not None and (some or "+" in text or len(digits) > 19) and not text.strip(_TAIL_CHARS):
                tails.append(digits[-MIN_DIGITS:])
    return found


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


def looks_like_email(text: str) -> bool:
    return "@" in text and _EMAIL.search(text) is not None


def looks_like_phone(text: str) -> bool:
    """A phone number as people write it (international, NANP, with a bracketed area code); 8-15 digits."""
    stripped = text.strip()
    if not any(p.match(stripped) for p in _PHONE_PATTERNS):
        return False
    return 8 <= sum(ch.isdigit() for ch in stripped) <= 15 or stripped.startswith("(")


def looks_like_card(text: str) -> bool:
    """A payment card number: 13-19 digits (spaces or dashes between groups), issuer digit 2-6, Luhn-valid.

    A leading ``+`` or ``00`` makes it a phone number, never a card.
    """
    stripped = text.strip()
    if not _CARD.match(stripped):
        return False
    digits = "".join(ch for ch in stripped if ch.isdigit())
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


#: What the fingerprint key is derived for (HMAC-SHA256 of this under the masking key): a label of its own,
#: so the key masks nothing and no masking output is a fingerprint. "v1": changing the derivation or the
#: hash changes every fingerprint, so a new scheme takes a new label.
FINGERPRINT_KEY_LABEL = b"dbprotect fingerprint v1"


def fingerprint_key(masking_key: bytes) -> bytes:
    """The fingerprint key: HMAC-SHA256(masking key, :data:`FINGERPRINT_KEY_LABEL`)."""
    return hmac.digest(masking_key, FINGERPRINT_KEY_LABEL, "sha256")


class Fingerprinter:
    """Keyed 64-bit fingerprints of normalized forms, under a key derived from the masking key.

    Each form is MACed with keyed BLAKE2b (a PRF, hashlib's C code, 8-byte digest) under
    :func:`fingerprint_key`: whoever lacks the masking key cannot compute a fingerprint, so a
    dictionary of known e-mails or phone numbers tested against a filter reveals nothing, and the
    same masking key gives the same fingerprint in every process (issue 12: "HMAC with the masking
    key"; decided by the lead in session 5 over the interpreter's per-process SipHash key, which
    could never be compared across processes). BLAKE2b rather than HMAC-SHA256: one compression
    per short form instead of four, measured 3.6x cheaper per form; keyed BLAKE2b is a PRF by
    design (RFC 7693: its key input replaces HMAC). The per-form cost is one ``copy`` of
    the keyed state (no key schedule per form), one ``update`` and one ``digest``.
    """

    def __init__(self, key: bytes) -> None:
        base = hashlib.blake2b(key=fingerprint_key(key), digest_size=8)
        fresh = base.copy
        from_bytes = int.from_bytes

        def of(form: str) -> int:
            mac = fresh()
            mac.update(form.encode("utf-8", "surrogatepass"))
            return from_bytes(mac.digest())

        #: Fingerprint of one form (a str, encoded UTF-8).
        self.of: Callable[[str], int] = of
        self._fresh = fresh

    def of_many(self, found: list[str]) -> list[int]:
        """The fingerprints of ``found`` (forms), as :attr:`of` gives them one by one.

        Why: ``map(of, ...)`` paid a Python frame and an ``encode`` per form; here one ``encode`` of
        the batch joined by NUL (split in C) and a loop without a call frame (measured ~25% less per
        form). A batch holding a NUL (the separator would be ambiguous) goes form by form.
        """
        joined = "\0".join(found)
        if joined.count("\0") != len(found) - 1:
            return list(map(self.of, found))
        fresh = self._fresh
        from_bytes = int.from_bytes
        out = []
        append = out.append
        for data in joined.encode("utf-8", "surrogatepass").split(b"\0") if found else ():
            mac = fresh()
            mac.update(data)
            append(from_bytes(mac.digest()))
        return out

    def part(self, text: str) -> int | None:
        """The fingerprint of a value as a name part (its own domain), or None when it is not one word."""
        word = name_part(text)
        return None if word is None else self.of("\0part\0" + word)

    def all(self, text: str, *, free_text: bool = False) -> list[int]:
        return list(map(self.of, forms(text, free_text=free_text)))

    def many(self, texts: list[str], *, free_text: bool = False) -> list[int]:
        """The fingerprints of every form of every value of ``texts`` (:func:`forms_of_many`), flat."""
        return self.of_many(forms_of_many(texts, free_text=free_text))


#: The domain of phone tails (:func:`phone_tails`) in the filter: never the fingerprint of a form.
TAIL_DOMAIN = "\0tail\0"


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


class FingerprintFilter:
    """A Bloom filter of production fingerprints sized for ``capacity`` entries at :data:`FALSE_POSITIVE_RATE`.

    ``tails_complete``: every form added so far came with its phone tails (:meth:`add_forms`), so the
    one-lookup phone test is sound; fingerprints added without their forms (:meth:`add`) clear it and
    :meth:`WrittenCheck.known` tests every form.
    """

    def __init__(self, capacity: int, rate: float = FALSE_POSITIVE_RATE) -> None:
        self.capacity = max(1000, capacity)
        self.rate = rate
        self.bloom = Bloom(self.capacity, rate)
        self.tails_complete = True

    def add(self, fingerprints: Iterable[int]) -> None:
        """Add fingerprints in bulk: the iterable is consumed inside rbloom (Rust), never listed in Python.

        Their forms are unknown here, so no phone tail is added: the phone shortcut is off from now on.
        """
        self.tails_complete = False
        self.bloom.update(fingerprints)

    def add_part(self, fingerprint: int) -> None:
        """Add a name part's fingerprint (:meth:`Fingerprinter.part`: its own domain, no form, no tail)."""
        self.bloom.add(fingerprint)

    def add_forms(self, fingerprinter: Fingerprinter, found: list[str], tails: Iterable[str] | None = None) -> None:
        """Add the fingerprints of ``found`` (normalized forms) and of their phone tails: ``tails`` when the
        caller has them (:func:`forms_of_many`: at least :func:`phone_tails` of ``found``), else computed."""
        of = fingerprinter.of
        self.bloom.update(fingerprinter.of_many(found))
        self.bloom.update([of(TAIL_DOMAIN + tail) for tail in set(phone_tails(found) if tails is None else tails)])

    def flush(self) -> None:
        """Nothing is buffered (kept for callers that finish with it)."""

    def __contains__(self, fingerprint: int) -> bool:
        return fingerprint in self.bloom

    def any_of(self, fingerprints: Iterable[int]) -> bool:
        return any(map(self.bloom.__contains__, fingerprints))

    @property
    def entries(self) -> int:
        """Distinct fingerprints in the filter (the filter's own estimate)."""
        return round(self.bloom.approx_items)

    def false_positive_rate(self) -> float:
        """The rate at the entries actually held (above the design rate when the capacity was exceeded)."""
        m = self.bloom.size_in_bits
        k = max(1, round(m / self.capacity * math.log(2)))
        return (1 - math.exp(-k * max(self.entries, 1) / m)) ** k

    @property
    def bytes(self) -> int:
        return self.bloom.size_in_bits // 8


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
    finding when one of its fingerprints is in the production filter and is not a rule constant
    of its own column (``exempt``, per (table, column)), or, failing that, when it is a single word
    that is a production name part.
    """

    def __init__(self, fingerprinter: Fingerprinter, production: FingerprintFilter,
                 exempt: dict[tuple[str, str], set[int]]) -> None:
        self.fingerprinter = fingerprinter
        self.production = production
        self.exempt = exempt
        #: Filter lookups made so far (at most: a batch's lookups stop at its first hit): each is a
        #: chance of a false report, so the check counts them in its false-report budget.
        self.lookups = 0

    def known(self, output: bytes) -> bool:
        """Whether any form of ``output`` is in the production filter (the stream's retry test; stricter
        than :meth:`verdict`: rule constants are not exempt)."""
        bloom = self.production.bloom
        of = self.fingerprinter.of
        text = output.decode("utf-8", "replace")
        digits = text[1:]
        if (self.production.tails_complete and text[:1] == "+" and digits.isdigit() and digits.isascii()
                and len(digits) >= (MIN_DIGITS + 2 if digits.startswith("00") else MIN_DIGITS)):
            # Every form of this E.164 value (e164_forms) is it or a suffix of its digits at least
            # MIN_DIGITS long ("00" is cut before the country prefix: 2 more digits needed), so one
            # lookup of its tail answers for all of them (phone_tails).
            self.lookups += 1
            return of(TAIL_DOMAIN + digits[-MIN_DIGITS:]) in bloom
        found = e164_forms(text) or forms(text)
        self.lookups += len(found)
        return any(of(form) in bloom for form in found)

    def verdict(self, output: bytes, exempt: Set[int] = frozenset(), *, known: bool | None = None) -> int:
        """0, :data:`PRODUCTION_VALUE` or :data:`NAME_PART` for one value written in a column whose rule
        constants are ``exempt``.

        ``known=False``: :meth:`known` already answered no for this value, so no form can be a hit.
        """
        text = output.decode("utf-8", "replace")
        bloom = self.production.bloom
        if known is not False:
            of = self.fingerprinter.of
            found = forms(text)
            self.lookups += len(found)
            for form in found:
                fingerprint = of(form)
                if fingerprint in bloom and fingerprint not in exempt:
                    return PRODUCTION_VALUE
        if "@" in text or _ASCII_DIGIT(text):
            return 0  # name_part keeps "@" and digits after folding: never one word
        part = self.fingerprinter.part(text)
        if part is None:
            return 0
        self.lookups += 1
        return NAME_PART if part in bloom else 0

    def verdicts(self, outputs: list[bytes], exempt: Set[int] = frozenset(), *, cleared: bool = False) -> list[int]:
        """:meth:`verdict` of each of ``outputs`` (written in one column), decided a batch at a time.

        Why: :meth:`verdict` computes a value's forms one value at a time (2-7 µs each, the stream's
        biggest check cost for unique columns such as e-mails). Here the forms of the whole batch are
        fingerprinted by whole-batch C calls (:meth:`Fingerprinter.many`); when none of them is in the
        production filter (the usual case) no value of the batch can share a fingerprint with
        production, and each value is asked only its name-part test (``known=False``). Otherwise every
        value is decided in full. Same answers as :meth:`verdict`, value by value (tested).
        ``cleared``: :meth:`known` already answered no for every one of ``outputs``.
        """
        fingerprints = [] if cleared else self.fingerprinter.many([output.decode("utf-8", "replace")
                                                                   for output in outputs])
        self.lookups += len(fingerprints)
        maybe = self.production.any_of(fingerprints)
        verdict = self.verdict
        known = None if maybe else False
        return [verdict(output, exempt, known=known) for output in outputs]
