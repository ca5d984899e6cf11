"""The stream's one-lookup phone test (issue 12, performance): every masked phone is tested against
production by the tail of its digits (:func:`~dbprotect.core.sanitize.fingerprints.phone_tails`)
instead of its five forms. The shortcut may only ever say "known" more often than the five forms do:
each test here shows a production phone in some writing (separators, national, ``00``, full-width
digits, short) is still found through it, on its own and in a real stream, and that the shortcut is
off whenever the filter was filled without the forms it needs.
"""

from __future__ import annotations

import os

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from dbprotect.core.sanitize.checks import no_pii_leaked, production_fingerprints
from dbprotect.core.sanitize.coverage import source_columns
from dbprotect.core.sanitize.fingerprints import (
    Fingerprinter,
    FingerprintFilter,
    WrittenCheck,
    forms,
    forms_of_many,
    phone_tails,
    tail_keys,
    value_fingerprints,
)
from dbprotect.core.sanitize.rules import parse_rules
from dbprotect.core.sanitize.stream import TableStats, sanitize_table
from dbprotect.core.sanitize.transformers import Masker

KEY = os.urandom(32)
FINGERPRINTER = Fingerprinter(KEY)


def _checks(values: list[str]) -> tuple[WrittenCheck, WrittenCheck]:
    """(with the tail shortcut, every form tested) over the same production values."""
    tails, full = FingerprintFilter(1000), FingerprintFilter(1000)
    for value in values:
        tails.add_forms(FINGERPRINTER, list(forms(value)))
        full.add(map(FINGERPRINTER.of, forms(value)))
    assert tails.tails_complete and not full.tails_complete
    return WrittenCheck(FINGERPRINTER, tails, {}), WrittenCheck(FINGERPRINTER, full, {})


_FULLWIDTH = str.maketrans("0123456789+", "".join(map(chr, range(0xFF10, 0xFF1A))) + "\uff0b")  # full-width digits


def _written(core: str, style: int) -> str:
    """One writing of the digits ``core`` as production might hold it."""
    wide = core.translate(_FULLWIDTH)
    return [core, "+" + core, "00" + core, "0" + core, wide, "+" + wide, f"({core[:3]}) {core[3:6]}-{core[6:]}",
            f"{core[:2]} {core[2:6]} {core[6:]}", f"{core[:3]}.{core[3:]}"][style]


@settings(max_examples=400, deadline=None)
@given(st.from_regex(r"\A[0-9]{5,20}\Z"), st.integers(0, 8), st.from_regex(r"\A(00)?[0-9]{0,3}\Z"),
       st.integers(0, 4), st.booleans())
def test_the_tail_never_misses_what_the_forms_find(core: str, style: int, prefix: str, cut: int, flip: bool) -> None:
    """A masked phone made of a production number's digits (any prefix, any cut) is known whenever any of
    its forms is: the shortcut's answer includes every answer of the five forms."""
    digits = prefix + core[cut:]
    if flip:  # a different number sharing the tail, or not: the shortcut may only add "known"
        digits = digits[:-1] + str((int(digits[-1]) + 1) % 10) if digits else digits
    output = ("+" + digits).encode()
    tails, full = _checks([_written(core, style)])
    if full.known(output):
        assert tails.known(output), (core, style, output)


def test_production_phones_in_any_writing_are_known_through_the_tail() -> None:
    production = ["(020) 7946-0018", "0044 161 496 0000", "5550102000".translate(_FULLWIDTH),
                  "+1".translate(_FULLWIDTH) + " 212 555 0147", "1234567"]
    tails, full = _checks(production)
    leaks = [b"+442079460018", b"+4401614960000", b"+00441614960000", b"+15550102000", b"+12125550147",
             b"+001234567"]  # the last: 7 digits after "00", below the tail's length, tested form by form
    for output in leaks:
        assert full.known(output), output
        assert tails.known(output), output
    assert not tails.known(b"+442079460019") and not full.known(b"+442079460019")


def test_a_filter_without_tails_turns_the_shortcut_off() -> None:
    """Fingerprints added without their forms leave no tail: the shortcut would miss the leak, so it is off."""
    _, full = _checks(["(020) 7946-0018"])
    assert full.known(b"+442079460018")
    full.production.tails_complete = True  # what the guard prevents: the tail was never added
    assert not full.known(b"+442079460018")


def test_phone_tails_are_the_last_nine_digits_of_long_digit_forms() -> None:
    assert phone_tails(["+442079460018", "442079460018", "2079460018", "1234567", "+4420 7946", "٤٤٢٠٧٩٤٦٠٠١٨"]) == {
        "079460018"}


def test_fingerprinting_a_batch_at_once_equals_one_by_one() -> None:
    found = ["jane.doe@corp.example.com", "", "ümlaut straße", "\ud800lone", "a\0b", "+442079460018"]
    assert FINGERPRINTER.of_many(found) == list(map(FINGERPRINTER.of, found))
    assert FINGERPRINTER.of_many([f for f in found if "\0" not in f]) == [
        FINGERPRINTER.of(f) for f in found if "\0" not in f]
    assert FINGERPRINTER.of_many([]) == []


PEOPLE = ("CREATE TABLE people (id int, phone text);"
          "INSERT INTO people SELECT i, '+442079460' || lpad(i::text, 3, '0') FROM generate_series(1, 60) i;")
RULES = "version: 1\ntables:\n  public.people: {id: keep, phone: phone}\n"


def test_a_stream_retries_every_phone_equal_to_production_in_another_writing(make_db) -> None:
    """Real PostgreSQL: production holds the stream's own first outputs, written nationally with dashes;
    the second stream (same key) must retry each of them, and no output it writes is production's in
    any form (tested form by form)."""
    src, scratch, dst = make_db(PEOPLE), make_db("CREATE TABLE people (id int, phone text);"), \
        make_db("CREATE TABLE people (id int, phone text);")
    rules = parse_rules(RULES)
    with psycopg.connect(src) as conn:
        columns = source_columns(conn)
        production = production_fingerprints(conn, columns, rules, FINGERPRINTER, 10_000)
    assert production.tails_complete

    def stream(target: str, filter_: FingerprintFilter) -> tuple[list[str], int]:
        with psycopg.connect(src) as conn, psycopg.connect(target) as out:
            stats = sanitize_table(conn, out, "public.people", columns["public.people"], rules, Masker(KEY),
                                   written=WrittenCheck(FINGERPRINTER, filter_, {}))
            out.commit()
            return [row[0] for row in out.execute("SELECT phone FROM people ORDER BY id")], stats.retries

    first, _ = stream(scratch, production)
    national = ["0" + phone[3:5] + "-" + phone[5:9] + "-" + phone[9:] for phone in first]  # +4420.. -> 020-....
    for value in national:
        production.add_forms(FINGERPRINTER, list(forms(value)))
    second, retries = stream(dst, production)
    assert retries >= len(first)
    _, every_form = _checks([*national, *(f"+442079460{i:03d}" for i in range(1, 61))])
    assert not any(every_form.known(phone.encode()) for phone in second)
    assert all(every_form.known(phone.encode()) for phone in first)  # the counter-case: the first outputs are known


def test_lookups_are_counted_and_the_streams_enter_the_false_report_budget(make_db) -> None:
    """The retry test (known) never enters the false-report budget (a false positive there costs a retry);
    the written check's lookups do, and the stream's are added to those read back."""
    tails, full = _checks(["(020) 7946-0018"])
    tails.known(b"+442079460019")
    full.known(b"+442079460019")
    assert (tails.lookups, full.lookups) == (0, 0)
    tails.verdicts([b"+442079460019", b"Madalena"])
    # The phone's four forms (its digits, without a 1-3 digit prefix); the word's folded form and its name part.
    assert tails.lookups == 4 + 1 + 1
    dst = make_db("CREATE TABLE notes (id int, body text);"
                  "INSERT INTO notes SELECT i, 'ticket reference ' || i || ' closed' FROM generate_series(1, 50) i;")
    rules = parse_rules("version: 1\ntables:\n  public.notes: {id: keep, body: keep}\n")
    with psycopg.connect(dst, autocommit=True) as conn:
        check = no_pii_leaked(conn, source_columns(conn), rules, [TableStats("public.other", lookups=10_000)],
                              FINGERPRINTER, tails.production)
    assert check.ok and check.metrics["in_stream_lookups"] == 10_000
    rate = check.metrics["filter_false_positive_rate"]
    assert check.metrics["expected_false_reports"] == rate * (check.metrics["fingerprint_lookups"] + 10_000)
    assert "10,000 in the stream" in check.detail and "budget 1e-06" in check.detail


def _tails_form_by_form(found: list[str]) -> set[str]:
    """:func:`phone_tails` as its docstring says it, one form at a time (the reference)."""
    tails = set()
    for form in found:
        digits = form.lstrip("+")
        if len(digits) >= 9 and digits.isdigit() and digits.isascii():
            tails.add(digits[-9:])
    return tails


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.from_regex(r"\A\+{0,2}[0-9]{0,14}\Z"), st.text(alphabet="+0123456789a \0٣", max_size=16)),
                max_size=12))
def test_phone_tails_of_a_batch_hold_every_tail_form_by_form(found: list[str]) -> None:
    """The batch regex never misses a tail (a NUL inside a form may only add one)."""
    assert phone_tails(found) >= _tails_form_by_form(found)
    if not any("\0" in form for form in found):
        assert phone_tails(found) == _tails_form_by_form(found)


_VALUES = st.one_of(st.from_regex(r"\A\+?(00)?[0-9 .()\-]{0,22}\Z"), st.from_regex(r"\A[0-9a-z@.+ ]{0,24}\Z"),
                    st.text(alphabet="+0123456789a٣\uff11\0 -.", max_size=20), st.text(max_size=12))


@settings(max_examples=500, deadline=None)
@given(st.lists(_VALUES, max_size=12), st.booleans())
def test_the_tails_a_batch_leaves_hold_every_tail_of_its_forms(texts: list[str], free_text: bool) -> None:
    """Production adds the tails forms_of_many derives per value: never fewer than the forms' own."""
    tails: list[str] = []
    found = forms_of_many(texts, free_text=free_text, tails=tails)
    assert set(tails) >= _tails_form_by_form(found)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.from_regex(r"\+(00)?[0-9]{5,21}", fullmatch=True) | st.sampled_from(["+442079460018", "x@y.org"]),
                min_size=1, max_size=10)
       | st.lists(st.from_regex(r"\+[0-9]{9,20}", fullmatch=True), min_size=1, max_size=10))  # E.164 batches
def test_tails_read_off_the_forms_fingerprints_are_the_tails_own_keys(values: list[str]) -> None:
    """Production's tail keys, where a tail is a phone's last form, are taken from that form's fingerprint:
    they must be exactly the keys of the tails themselves (a wrong position would leave real numbers unknown
    to the stream's one-lookup test), and each phone is then known in its own writing."""
    _pairs, keys, _lengths, _census = value_fingerprints(FINGERPRINTER, values)
    own = set(tail_keys(FINGERPRINTER, phone_tails(set().union(*map(forms, values)))))
    assert set(keys) >= own
    assert set(keys) <= own | set(tail_keys(FINGERPRINTER, [v.lstrip("+")[-9:] for v in values]))
    found = FingerprintFilter(1000)
    found.add_pairs(*value_fingerprints(FINGERPRINTER, values))
    check = WrittenCheck(FINGERPRINTER, found, {})
    for value in values:
        assert check.known(value.encode()) == bool(forms(value)), value


_PHONES = st.from_regex(r"\+(00)?[0-9]{6,14}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(production=st.lists(_PHONES, min_size=1, max_size=8),
       others=st.lists(_PHONES | st.text(max_size=14), max_size=8), data=st.data())
def test_known_many_equals_known_output_by_output(production: list[str], others: list[str],
                                                  data: st.DataObject) -> None:
    """A batch of outputs (all E.164 or mixed, short or long, with "00") is answered as each output alone is."""
    check = _checks(production)[0]
    pool = [*production, *others]
    drawn = data.draw(st.lists(st.sampled_from(pool), max_size=12))
    outputs = [text.encode("utf-8", "surrogatepass") for text in drawn]
    assert check.known_many(outputs) == [check.known(output) for output in outputs]
