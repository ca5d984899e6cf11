"""Each blocking check of a sanitized copy can fail: the test that makes it fail, on real PostgreSQL.

A check that cannot fail is a green light painted on. ``no_pii_leaked``'s leak cases are in
``test_privacy_proof.py``; here: JSON object keys (issue 12, point 2), a masked value equal to its
source, ``row_counts_match`` (a table missing from the copy or from the manifest) and
``constraints_hold`` (a constraint missing or not valid in the copy), plus the optimized
normalization against its plain reference.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbprotect.core.sanitize.checks import constraints_hold, row_counts_match
from dbprotect.core.sanitize.fingerprints import Fingerprinter, forms
from dbprotect.core.store.manifest import Manifest, TableRecord
from dbprotect_tests import fingerprint_reference
from dbprotect_tests.test_privacy_proof import build, leak_detail  # noqa: F401  (build: a fixture)


@pytest.mark.slow
def test_email_in_a_json_object_key_of_a_keep_column_fails(build, tmp_path: Path) -> None:  # noqa: F811
    detail = leak_detail(build(
        "CREATE TABLE inbox (id int PRIMARY KEY, seen jsonb);"
        "INSERT INTO inbox SELECT id, jsonb_build_object('flags', jsonb_build_object(lower(email), 1)) FROM people;",
        {"inbox": {"id": "keep", "seen": "keep"}}), tmp_path)
    assert "public.inbox.seen (keep): 300 value(s) equal personal values of production" in detail, detail
    assert "public.inbox.seen (keep): 300 value(s) hold an e-mail address" in detail, detail


@pytest.mark.slow
def test_masked_value_equal_to_its_source_fails(build, tmp_path: Path) -> None:  # noqa: F811
    """``number`` leaves NaN as it is (it cannot add noise to it): the row-by-row rule must catch it."""
    detail = leak_detail(build(
        "CREATE TABLE scores (id int PRIMARY KEY, score numeric);"
        "INSERT INTO scores SELECT i, CASE WHEN i <= 3 THEN 'NaN'::numeric ELSE i END FROM generate_series(1, 10) i;",
        {"scores": {"id": "keep", "score": "number"}}), tmp_path)
    assert "public.scores.score: 3 masked value(s) equal their source value" in detail, detail


def _manifest(rows: dict[str, int]) -> Manifest:
    return Manifest.model_construct(tables={t: TableRecord.model_construct(rows=n) for t, n in rows.items()})


def test_row_counts_match_fails_on_a_missing_table_a_missing_record_and_a_wrong_count(make_db) -> None:
    dst = make_db("CREATE TABLE a (id int); INSERT INTO a VALUES (1), (2); CREATE TABLE b (id int);")
    with psycopg.connect(dst, autocommit=True) as conn:
        assert row_counts_match(conn, _manifest({"public.a": 2, "public.b": 0}), ["public.a", "public.b"]).ok
        wrong = row_counts_match(conn, _manifest({"public.a": 3, "public.b": 0}), ["public.a", "public.b"])
        assert not wrong.ok and "public.a: 2 rows, the source backup has 3" in wrong.detail
        missing = row_counts_match(conn, _manifest({"public.a": 2, "public.b": 0, "public.c": 5}),
                                   ["public.a", "public.b", "public.c"])
        assert not missing.ok and "public.c: missing from the copy" in missing.detail
        unlisted = row_counts_match(conn, _manifest({"public.a": 2}), ["public.a", "public.b"])
        assert not unlisted.ok and "public.b: 0 rows, the source backup's manifest does not list it" in unlisted.detail


CONSTRAINED = ("CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE);"
               "CREATE TABLE child (id int PRIMARY KEY, parent_id int);"
               "INSERT INTO parent VALUES (1, 'a'); INSERT INTO child VALUES (1, 1);")


def test_constraints_hold_fails_on_a_missing_or_not_valid_constraint(make_db) -> None:
    """The build's post-data restore stops at a violated constraint, so this check guards what that step
    could skip silently: a constraint that never arrived, or one that arrived NOT VALID."""
    src = make_db(CONSTRAINED + "ALTER TABLE child ADD CONSTRAINT child_parent FOREIGN KEY (parent_id) "
                  "REFERENCES parent (id);")
    same = make_db(CONSTRAINED + "ALTER TABLE child ADD CONSTRAINT child_parent FOREIGN KEY (parent_id) "
                   "REFERENCES parent (id);")
    lacking = make_db(CONSTRAINED)
    unvalidated = make_db(CONSTRAINED + "ALTER TABLE child ADD CONSTRAINT child_parent FOREIGN KEY (parent_id) "
                          "REFERENCES parent (id) NOT VALID;")
    with psycopg.connect(src, autocommit=True) as s:
        with psycopg.connect(same, autocommit=True) as d:
            assert constraints_hold(s, d).ok
        with psycopg.connect(lacking, autocommit=True) as d:
            result = constraints_hold(s, d)
            assert not result.ok and "missing child child_parent (f)" in result.detail, result.detail
        with psycopg.connect(unvalidated, autocommit=True) as d:
            result = constraints_hold(s, d)
            assert not result.ok and "not valid: child child_parent (f)" in result.detail, result.detail


_TEXT = st.text(st.sampled_from("aAéÉöß İ\u0131" "0123456789+-./()@ \t\u00a0\u0301\x1c\x85\u2003\u3000_x٣"),
                max_size=30)
_PHONE_LIKE = st.from_regex(r"\s?(\+|00)?[0-9 .()\-/]{0,4}[0-9]{9,14}[ .]?[0-9]{0,4}\s?", fullmatch=True)


@settings(max_examples=2000, deadline=None)
@given(text=_TEXT | _PHONE_LIKE | st.text(max_size=30), free_text=st.booleans())
def test_optimized_forms_equal_the_reference(text: str, free_text: bool) -> None:
    assert forms(text, free_text=free_text) == fingerprint_reference.forms(text, free_text=free_text)


def test_ipv4_addresses_are_not_phone_numbers() -> None:
    """Masked IPv4 addresses (240/4) shared digits with real ones: "24.0.123.156" vs "240.12.31.56"."""
    fingerprint = Fingerprinter(b"k" * 32)
    assert not set(fingerprint.all("24.0.123.156")) & set(fingerprint.all("240.12.31.56"))
    assert set(fingerprint.all("020.794.600.18")) & set(fingerprint.all("+44 20 7946 0018"))  # not an address


def test_seen_outputs_never_forget_an_output_as_they_grow() -> None:
    """Unique columns remember outputs as 64-bit keys in an exact set (bounded memory): no false negative, ever,
    across growth (runs merged as they are added)."""
    from dbprotect.core.sanitize.stream import SeenOutputs

    seen = SeenOutputs()
    outputs = [f"user{i}@example.invalid".encode() for i in range(10_000)]
    for output in outputs:
        seen.add(output)
    assert all(output in seen for output in outputs)
    assert sum(f"other{i}".encode() in seen for i in range(100_000)) == 0


@pytest.mark.slow
def test_masking_that_breaks_a_not_valid_foreign_key_fails_constraints_hold(build) -> None:  # noqa: F811
    """A NOT VALID foreign key is restored NOT VALID: nothing checks the masked rows against it but this check."""
    result = build(
        "CREATE UNIQUE INDEX people_email ON people (email);"
        "CREATE TABLE notes (id int PRIMARY KEY, author text);"
        "INSERT INTO notes SELECT id, email FROM people;"
        "ALTER TABLE notes ADD CONSTRAINT notes_author FOREIGN KEY (author) REFERENCES people (email) NOT VALID;",
        {"notes": {"id": "keep", "author": "hash"}})
    check = {c.name: c for c in result.checks}["constraints_hold"]
    assert not check.ok and not result.ok and result.artifact_id is None
    assert "violated by the masked data (NOT VALID, the source satisfies it): notes notes_author (f)" in check.detail
