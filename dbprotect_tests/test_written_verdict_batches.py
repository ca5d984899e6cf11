"""Masked outputs decided a batch at a time (issue 12, performance) give the per-value answers.

The stream decides the outputs of a column checked as written in batches
(:meth:`WrittenCheck.verdicts`): when no form of the batch is in the production filter every value
is asked only its name-part test. A batch shortcut that answered "clean" for a batch holding one
production value would be a check that passes wrongly; these tests make it fail.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from dbprotect.core.sanitize.fingerprints import (
    NAME_PART,
    PRODUCTION_VALUE,
    Fingerprinter,
    FingerprintFilter,
    WrittenCheck,
    e164_forms,
    forms,
)
from dbprotect.core.sanitize.stream import _decide

KEY = os.urandom(32)
PRODUCTION = ["jane.doe@corp.example.com", "+44 20 7946 0018", "DE89 3704 0044 0532 0130 00"]
#: A first name of production: fingerprinted as a name part only (its own tier).
FIRST_NAME = "Madalena"


def _check(values: list[str]) -> WrittenCheck:
    fingerprinter = Fingerprinter(KEY)
    found = FingerprintFilter(1000)
    for value in values:
        found.add(map(fingerprinter.of, forms(value)))
    part = fingerprinter.part(FIRST_NAME)
    assert part is not None
    found.add([part])
    return WrittenCheck(fingerprinter, found, {})


def test_one_production_value_in_a_batch_of_clean_outputs_is_found() -> None:
    check = _check(PRODUCTION)
    clean = [f"u{i:020x}@example.com".encode() for i in range(500)]
    for leak in (b"JANE.DOE@corp.example.com", b"442079460018", b"DE89370400440532013000"):
        outputs = [*clean[:250], leak, *clean[250:]]
        verdicts = check.verdicts(outputs)
        assert verdicts[250] == PRODUCTION_VALUE, leak
        assert verdicts.count(PRODUCTION_VALUE) == 1
    assert check.verdicts([*clean, b"madalena"])[-1] == NAME_PART


def test_exempt_rule_constants_are_exempt_in_batches_too() -> None:
    check = _check(["redacted-value"])
    exempt = set(map(check.fingerprinter.of, forms("redacted-value")))
    assert check.verdicts([b"redacted-value", b"x"], exempt) == [0, 0]
    assert check.verdicts([b"redacted-value", b"x"]) == [PRODUCTION_VALUE, 0]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([*PRODUCTION, FIRST_NAME, "MADALENA", "jane doe", "Kalovi Zento",
                                           "+1 (555) 010-2000"]), st.text(max_size=30)), max_size=40))
def test_batch_verdicts_equal_the_per_value_verdicts(texts: list[str]) -> None:
    check = _check(PRODUCTION)
    outputs = [text.encode("utf-8", "surrogatepass") for text in texts]
    assert check.verdicts(outputs) == [check.verdict(output) for output in outputs]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([FIRST_NAME, "madalena", "Kalovi Zento", "+15550102000", "+4479460019"]),
                          st.from_regex(r"\A\+[0-9]{9,14}\Z"), st.binary(max_size=12).map(lambda b: b.hex()),
                          st.text(max_size=20)), max_size=40))
def test_cleared_batch_verdicts_equal_the_per_value_verdicts(texts: list[str]) -> None:
    """Outputs the stream's ``avoid`` test already cleared (masked phones, usually) are decided in one C pass
    when each holds a digit or "@"; a production first name among them is still a name part."""
    check = _check(PRODUCTION)
    outputs = [out for text in texts if not check.known(out := text.encode("utf-8", "surrogatepass"))]
    assert check.verdicts(outputs, cleared=True) == [check.verdict(output, known=False) for output in outputs]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.from_regex(r"\A\+[0-9]{0,24}\Z"), st.from_regex(r"\A\+00[0-9]{0,20}\Z"),
                 st.text(alphabet="+0123456789٣ -", max_size=24)))
def test_e164_shortcut_equals_the_forms_of_the_value(text: str) -> None:
    """The stream's phone test takes a shortcut for ``+digits``; it must give exactly :func:`forms`."""
    shortcut = e164_forms(text)
    if shortcut is not None:
        assert set(shortcut) == forms(text)


def test_a_masked_phone_equal_to_production_in_any_form_is_known() -> None:
    check = _check(["(20) 7946 0018", "0044 161 496 0000"])
    assert check.known(b"+442079460018") and check.known(b"+4401614960000") and check.known(b"+00441614960000")
    assert not check.known(b"+442079460019")


def test_a_cleared_batch_is_decided_whole_only_when_no_output_can_be_a_name_part() -> None:
    """The stream's decision of outputs ``avoid`` cleared skips them as a batch only when each holds a digit or
    "@": a production first name among masked phones still counts, unique column or not."""
    check = _check(PRODUCTION)
    phones = [b"+15550100%03d" % i for i in range(50)]
    for unique in (False, True):
        assert _decide(check, {}, frozenset(), unique, [], phones) == (0, 0, 0)
        assert _decide(check, {}, frozenset(), unique, [], [*phones, b"madalena"]) == (0, 1, 0)
        assert _decide(check, {}, frozenset(), unique, [b"jane.doe@corp.example.com"], phones) == (1, 0, 0)
