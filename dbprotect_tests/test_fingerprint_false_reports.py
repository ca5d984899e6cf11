"""The check prints its false-positive question as a build sees it (issue 12, performance): the filter's
rate per lookup, the lookups it made reading the copy back, and the false reports expected from both;
and a value keyed by the same masking key in another ``Fingerprinter`` is still found."""

from __future__ import annotations

import os

import psycopg

from dbprotect.core.sanitize.checks import CheckResult, no_pii_leaked
from dbprotect.core.sanitize.coverage import source_columns
from dbprotect.core.sanitize.fingerprints import Fingerprinter, FingerprintFilter, forms
from dbprotect.core.sanitize.rules import parse_rules

COPY = ("CREATE TABLE notes (id int, body text);"
        "INSERT INTO notes SELECT i, 'ticket reference ' || i || ' closed' FROM generate_series(1, 50) i;")
RULES = "version: 1\ntables:\n  public.notes: {id: keep, body: keep}\n"
KEY = os.urandom(32)


def _check(dst_dsn: str, production: FingerprintFilter, fingerprinter: Fingerprinter) -> CheckResult:
    with psycopg.connect(dst_dsn, autocommit=True) as dst:
        return no_pii_leaked(dst, source_columns(dst), parse_rules(RULES), [], fingerprinter, production)


def test_clean_copy_prints_lookups_and_expected_false_reports(make_db) -> None:
    dst = make_db(COPY)
    production = FingerprintFilter(1000)
    production.add(map(Fingerprinter(KEY).of, forms("someone.else@corp.example.com")))
    check = _check(dst, production, Fingerprinter(KEY))
    assert check.ok, check.detail
    # 50 ids of 1-2 digits have no form; each note two: folded, and compact (letters and digits).
    assert check.metrics["fingerprint_lookups"] == 100
    rate = check.metrics["filter_false_positive_rate"]
    assert check.metrics["expected_false_reports"] == rate * 100
    assert "100 lookups read back" in check.detail and "false reports expected" in check.detail


def test_a_leak_is_found_by_another_fingerprinter_of_the_same_masking_key(make_db) -> None:
    """Production fingerprinted by one Fingerprinter, the copy checked by another of the same key (as
    another process would): the kept value is found; under another key it is not."""
    dst = make_db(COPY)
    production = FingerprintFilter(1000)
    production.add(map(Fingerprinter(KEY).of, forms("Ticket reference 7 closed")))
    check = _check(dst, production, Fingerprinter(bytes(KEY)))
    assert not check.ok and "public.notes.body (keep): 1 value(s) equal personal values of production" in check.detail
    assert _check(dst, production, Fingerprinter(os.urandom(32))).ok
