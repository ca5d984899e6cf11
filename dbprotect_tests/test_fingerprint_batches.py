"""The batch normalization (``forms_of_many``) equals the reference normalization value by value.

The check's production filter and its scan of the copy fingerprint whole fetched batches at once; a
batch must yield exactly the union of each value's forms, or a leak could hide in a batch (a form
missing) or a masked copy could fail by chance (a form invented)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from dbprotect.core.sanitize.fingerprints import (
    Fingerprinter,
    FingerprintFilter,
    all_hold_digit_or_at,
    digit_forms,
    e164_forms,
    forms,
    forms_of_many,
    one_word_part,
    phone_tails,
)
from dbprotect_tests import fingerprint_reference

_TEXT = st.text(st.sampled_from("aAéÉöß İ\u0131山田太郎김ｱ" "0123456789+-./()@ \t\n\u00a0\u0301\x1c\x85\u2003\u3000_x٣"
                                "\uff10\uff11\uff19\uff0b\uff0d\uff08\uff09\u0660\u0669\u00b2"),
                max_size=30)
_PHONE_LIKE = st.from_regex(r"\s?(\+|00)?[0-9 .()\-/]{0,4}[0-9]{9,14}[ .]?[0-9]{0,4}\s?", fullmatch=True)
_ASCII = st.text(st.sampled_from("aZ09 \t\x0b\x1c\x1f-./()+@_"), max_size=40)
# forms_of_many takes two shapes without digit_forms' call: "+" and digits only (E.164), and IPv4 addresses.
_E164 = st.from_regex(r"\+(00)?[0-9]{7,21}", fullmatch=True)
_IPV4_LIKE = st.from_regex(r"\s?[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(/[0-9]{1,2})?\s?", fullmatch=True)
# Phone-like values in full-width characters or Arabic-Indic digits (read as their ASCII digits).
_OTHER_DIGITS = st.sampled_from([
    str.maketrans("0123456789+-() ", "".join(map(chr, range(0xFF10, 0xFF1A))) + "\uff0b\uff0d\uff08\uff09\u3000"),
    str.maketrans("0123456789", "".join(map(chr, range(0x0660, 0x066A)))),
])
_PHONE_OTHER_DIGITS = st.builds(str.translate, _PHONE_LIKE | _E164, _OTHER_DIGITS)
# Names of one to five words in either order, with the separators people write (name_order_form), and near misses
# (a digit, an "@", a sixth word).
_NAME_LIKE = st.from_regex(r"\s?(?:(?:Mr|Mrs|Dr|MS|miss)\.? )?[A-Za-z]{1,7}(?:[ ,.\-]{1,2}[A-Za-z]{1,7}){0,5}"
                           r"[0-9@]?\s?", fullmatch=True)
_NAME_OTHER_SCRIPT = st.from_regex(r"[A-Za-zéÖßİ\u0131\u0301山田王伟김]{1,6}"
                                   r"(?:[ ,\u00a0]{1,2}[A-Za-zéÖß\u0301山王伟]{1,6}){1,4}", fullmatch=True)
_VALUE = (_TEXT | _PHONE_LIKE | _ASCII | _E164 | _IPV4_LIKE | _PHONE_OTHER_DIGITS | _NAME_LIKE | _NAME_OTHER_SCRIPT
          | st.text(max_size=30))


def _reference(texts: list[str], free_text: bool) -> set[str]:
    found: set[str] = set()
    for text in texts:
        found |= fingerprint_reference.forms(text, free_text=free_text)
    return found


@settings(max_examples=600, deadline=None)
@given(texts=st.lists(_VALUE, max_size=12), free_text=st.booleans())
def test_batch_forms_equal_the_reference(texts: list[str], free_text: bool) -> None:
    assert set(forms_of_many(texts, free_text=free_text)) == _reference(texts, free_text)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_ASCII | _PHONE_LIKE | _E164 | _IPV4_LIKE | _NAME_LIKE, min_size=1, max_size=12),
       free_text=st.booleans())
def test_ascii_batches_take_the_bulk_path_and_equal_the_reference(texts: list[str], free_text: bool) -> None:
    ascii_only = [t for t in texts if t.isascii()]
    assert set(forms_of_many(ascii_only, free_text=free_text)) == _reference(ascii_only, free_text)


# forms_of_many's e-mail shortcut: batches of lower-case values holding "@", no whitespace (and near misses).
_LOWER_AT = st.from_regex(r"[a-z0-9._%+\-!~]{0,12}@[a-z0-9.\-@+]{0,14}", fullmatch=True)
_NEAR_LOWER_AT = st.from_regex(r"[a-zA-Z0-9 +\-]{0,6}@?[a-z0-9.\t\x1c\x7f]{0,8}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_LOWER_AT, min_size=1, max_size=12), other=st.lists(_NEAR_LOWER_AT, max_size=1),
       free_text=st.booleans())
def test_batches_of_lower_case_addresses_take_the_email_shortcut_and_equal_the_reference(
        texts: list[str], other: list[str], free_text: bool) -> None:
    """Batches of e-mail-like values (digits, "+", a second "@", nine digits and more), with at most one near
    miss (upper case, whitespace, no "@", DEL) that must send the batch down the general path."""
    batch = texts + other
    tails: list[str] = []
    assert set(forms_of_many(batch, free_text=free_text, tails=tails)) == _reference(batch, free_text)
    assert set(tails) >= phone_tails(_reference(batch, free_text))


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.from_regex(r"\+[0-9]{9,19}", fullmatch=True), min_size=1, max_size=12),
       other=st.lists(_E164 | st.sampled_from(["+44 20 7946 0018", "+0012345678901"]), max_size=1),
       free_text=st.booleans())
def test_batches_of_phones_take_the_e164_shortcut_and_equal_the_reference(texts: list[str], other: list[str],
                                                                         free_text: bool) -> None:
    """Batches of "+" and 9-19 digits (with "00" or not), with at most one value that must send the batch down
    the general path (too short or long, "+00", a space): forms and tails equal the reference's."""
    batch = texts + other
    tails: list[str] = []
    assert set(forms_of_many(batch, free_text=free_text, tails=tails)) == _reference(batch, free_text)
    assert set(tails) >= phone_tails(_reference(batch, free_text))


_OCTET = st.integers(0, 255).map(str) | st.from_regex(r"0[0-9]{1,2}|[0-9]{3}", fullmatch=True)
_IPV4_EXACT = st.builds(lambda octets, prefix: ".".join(octets) + prefix, st.lists(_OCTET, min_size=4, max_size=4),
                        st.sampled_from(["", "/24", "/32", "/0", "/123"]))


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_IPV4_EXACT, min_size=1, max_size=12), free_text=st.booleans())
def test_batches_of_addresses_take_the_ipv4_shortcut_and_equal_the_reference(texts: list[str], free_text: bool) -> None:
    """Batches made only of dotted quads (canonical, with leading zeros, octets over 255, prefix lengths): the
    shortcut takes the batch only when every value is an address PostgreSQL writes; forms and tails both equal
    the reference."""
    tails: list[str] = []
    assert set(forms_of_many(texts, free_text=free_text, tails=tails)) == _reference(texts, free_text)
    assert set(tails) >= phone_tails(_reference(texts, free_text))


@settings(max_examples=400, deadline=None)
@given(texts=st.lists(_VALUE | st.sampled_from(["", "\0", "a\0b", "jane", "o'brien", "@", "7"]), max_size=8))
def test_the_batch_answer_skipping_name_parts_is_the_per_value_answer(texts: list[str]) -> None:
    """The written check skips a batch's name-part test only when every value holds an ASCII digit or "@":
    never when one value could be a name part (a false "all" would hide production first names)."""
    each = all("@" in text or re.search(r"[0-9]", text) for text in texts) and bool(texts)
    fingerprinter = Fingerprinter(b"k" * 32)
    if all_hold_digit_or_at(texts):
        assert each and all(one_word_part(fingerprinter, text) is None for text in texts)
    else:
        assert not each or any("\0" in text for text in texts)


@settings(max_examples=300, deadline=None)
@given(text=_PHONE_LIKE | _E164, table=_OTHER_DIGITS)
def test_a_phone_in_other_digits_has_the_digit_forms_of_its_ascii_writing(text: str, table: dict) -> None:
    """The same number in full-width or Arabic-Indic digits: every digit form of the ASCII writing is a form
    of it too (so a production phone kept in either writing meets its fingerprints)."""
    other = text.translate(table)
    digit_forms = set(fingerprint_reference.digit_forms(text))
    assert digit_forms <= set(forms_of_many([other])) and digit_forms <= fingerprint_reference.forms(other)


def test_a_value_holding_nul_does_not_merge_or_split_batch_values() -> None:
    texts = ["alice.smith@example.org", "x\0+44 20 7946 0018", "  Jane   DOE  "]
    assert set(forms_of_many(texts)) == _reference(texts, False)


def test_value_edges_are_trimmed_per_value_not_per_batch() -> None:
    """A space at a value's end next to the separator is trimmed in each value, as one value alone is."""
    texts = ["  bob.jones@example.org ", " ", "", "\t+1 (555) 010-2000\t", "Jane  Doe"]
    assert set(forms_of_many(texts)) == _reference(texts, False)
    assert "+1 (555) 010-2000" in forms_of_many(texts)


def test_a_leak_in_one_value_of_a_batch_is_found_by_the_batch() -> None:
    fingerprinter = Fingerprinter(b"k" * 32)
    production = FingerprintFilter(1000)
    production.add(fingerprinter.all("+44 20 7946 0018"))
    clean = [f"masked{i}@example.net" for i in range(500)]
    assert not production.any_of(fingerprinter.many(clean))
    assert production.any_of(fingerprinter.many([*clean[:250], "0044-20-7946-0018", *clean[250:]]))


def test_a_plus_and_digits_form_is_fingerprinted_as_its_digits() -> None:
    """"+442079460018" is fingerprinted as its digits (one hash fewer a phone): every way of computing forms
    gives the digits and the suffixes, never the "+" form, so the two writings meet each other."""
    expected = {"442079460018", "42079460018", "2079460018", "079460018"}
    assert forms("+442079460018") == expected
    assert set(forms_of_many(["+442079460018", " +442079460018 "])) == expected
    assert set(e164_forms("+442079460018") or []) == expected
    assert forms("tel +442079460018") >= {"tel +442079460018"}  # a longer form keeps its "+"
    twenty = "+" + "1" * 20  # too long for a digit form: its digits stand for it
    assert "1" * 20 in forms(twenty) and "1" * 20 in forms_of_many([twenty]) and twenty not in forms(twenty)


def test_a_value_folding_to_plus_and_digits_meets_production_without_digit_forms_of_its_own() -> None:
    """A combining mark makes a phone no phone shape (no digit form), yet it folds to "+" and digits: that
    fold becomes the digits, so it still meets production's number (dropping the fold would hide it)."""
    marked = "+4\u03032079460018"
    assert not digit_forms(marked)
    assert forms(marked) & forms("+442079460018")
    assert set(forms_of_many([marked])) & set(forms_of_many(["+442079460018"]))
