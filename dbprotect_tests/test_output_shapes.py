"""Output shapes (issue 12, performance): a batch of masked outputs is decided by one regex when every output has
its transformer's shape and no production form has it. The proof rests on three facts, each tested here so that
it fails when broken: a value of the shape is its own only form; the census finds every production form of the
shape, on every path that fills the set (or the shortcut is off); and a production value equal to an output,
reached through the real fingerprinting of production, is still counted by the stream.
"""

from __future__ import annotations

import os
import re

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from dbprotect.core.sanitize.checks import fingerprint_capacity, no_pii_leaked, production_fingerprints
from dbprotect.core.sanitize.coverage import source_columns
from dbprotect.core.sanitize.fingerprints import (
    Fingerprinter,
    FingerprintFilter,
    WrittenCheck,
    forms,
    forms_of_many,
    shape_census,
    value_fingerprints,
)
from dbprotect.core.sanitize.rules import ColumnRule, parse_rules
from dbprotect.core.sanitize.stream import _decide, sanitize_table
from dbprotect.core.sanitize.transformers import Masker, SanitizeError, output_shape

KEY = os.urandom(32)
FINGERPRINTER = Fingerprinter(KEY)
RULES = {"email": ColumnRule("email"), "email_domain": ColumnRule("email", params=(("domain", "corp-mail.example"),)),
         "ip": ColumnRule("ip"), "date": ColumnRule("date")}
SHAPES = {name: output_shape(rule) for name, rule in RULES.items()}


def test_only_lower_case_plain_domains_have_a_shape() -> None:
    assert all(SHAPES.values()) and SHAPES["email"] != SHAPES["email_domain"]
    assert output_shape(ColumnRule("email", params=(("domain", "Example.COM"),))) is None
    assert output_shape(ColumnRule("name")) is None and output_shape(ColumnRule("phone")) is None


@settings(max_examples=400, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(SHAPES)))
def test_a_value_of_an_output_shape_is_its_own_only_form(data: st.DataObject, name: str) -> None:
    """Anything the shape matches (not only what the transformer writes) is its own only form: so a shape that
    no production form matches rules out every production form."""
    text = data.draw(st.from_regex(SHAPES[name], fullmatch=True))
    assert forms(text) == {text} and forms_of_many([text]) == [text]


@settings(max_examples=200, deadline=None)
@given(value=st.sampled_from(["jane@corp.example.com", "10.0.0.7", "192.168.1.1", "2a00:1450::1", "1980-05-03",
                              "0001-01-01", "9999-12-31"]) | st.text(max_size=20), name=st.sampled_from(sorted(RULES)),
       attempt=st.integers(0, 3))
def test_the_transformers_write_their_shape(value: str, name: str, attempt: int) -> None:
    """The transformers' usual outputs have their shape (a mask suffix or a date's time would only turn the
    shortcut off for that batch: never a wrong answer)."""
    rule = RULES[name]
    if rule.transformer == "ip" and not re.fullmatch(r"[0-9.]+|[0-9a-f:]+", value):
        value = "10.0.0.7"
    if rule.transformer == "date" and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        value = "1980-05-03"
    try:
        out = Masker(KEY).transformer(rule).fn(value.encode(), attempt)
    except SanitizeError:  # a date shifted out of the calendar: the build stops with its own error, nothing written
        assert rule.transformer == "date" and value.startswith(("0001-", "9999-")), value
        return
    assert re.fullmatch(SHAPES[name], out.decode()), out


@settings(max_examples=300, deadline=None)
@given(found=st.lists(st.from_regex(SHAPES["email"], fullmatch=True) | st.from_regex(SHAPES["ip"], fullmatch=True)
                      | st.text(max_size=24) | st.sampled_from(["x" + "u" * 20 + "@example.com", "1980-05-03 ",
                                                              "\0", "a\0b"]), max_size=10))
def test_the_census_finds_exactly_the_shapes_some_form_matches(found: list[str]) -> None:
    shapes = tuple(sorted(set(SHAPES.values())))
    expected = {shape for shape in shapes if any(re.fullmatch(shape, form) for form in found)}
    assert shape_census(found, shapes) == expected


def test_the_shortcut_is_off_unless_every_form_added_came_with_its_census() -> None:
    shape = SHAPES["email"]
    found = FingerprintFilter(1000, shapes=[shape])
    found.add_pairs(*value_fingerprints(FINGERPRINTER, ["jane@corp.example.com"], shapes=found.shapes))
    assert found.shape_clear(shape) and not found.shape_clear(SHAPES["ip"]) and not found.shape_clear(None)
    found.add_pairs(*value_fingerprints(FINGERPRINTER, ["u" + "0" * 20 + "@example.com"], shapes=found.shapes))
    assert not found.shape_clear(shape)  # seen
    for fill in ("add", "no_census", "other_shapes"):
        other = FingerprintFilter(1000, shapes=[shape])
        if fill == "add":
            other.add([FINGERPRINTER.of("jane@corp.example.com")])
        elif fill == "no_census":
            other.add_pairs(*value_fingerprints(FINGERPRINTER, ["jane@corp.example.com"]))
        else:
            other.add_pairs(*value_fingerprints(FINGERPRINTER, ["jane@corp.example.com"], shapes=(SHAPES["ip"],)))
        assert not other.shape_clear(shape), fill
    other = FingerprintFilter(1000, shapes=[shape])
    other.add_forms(FINGERPRINTER, ["u" + "1" * 20 + "@example.com"])  # the JSON path: its census too
    assert not other.shape_clear(shape)


def test_a_batch_of_the_shape_is_decided_without_a_lookup_and_the_others_still_count() -> None:
    """A batch all of the shape: decided by the regex (no lookup). One output off the shape sends the batch the
    usual way, where a production value and a production first name are still found."""
    shape = SHAPES["email"]
    found = FingerprintFilter(1000, shapes=[shape])
    found.add_pairs(*value_fingerprints(FINGERPRINTER, ["jane@corp.example.com"], shapes=found.shapes))
    found.add_pairs(*value_fingerprints(FINGERPRINTER, ["Madalena"], name_part=True, shapes=found.shapes))
    check = WrittenCheck(FINGERPRINTER, found, {})
    clear = re.compile(f"(?:(?:{shape})\n)*".encode())
    outputs = [b"u%020x@example.com" % i for i in range(50)]
    assert _decide(check, {}, frozenset(), True, outputs, [], None, clear) == (0, 0, 0) and check.lookups == 0
    assert _decide(check, {}, frozenset(), True, [*outputs, b"jane@corp.example.com"], [], None, clear) == (1, 0, 0)
    assert _decide(check, {}, frozenset(), False, [*outputs, b"madalena"], [], None, clear) == (0, 1, 0)
    assert check.lookups > 0


TABLES = ("CREATE TABLE people (id int, email text);"
          "CREATE TABLE former (id int, email text);")
SOURCE = TABLES + "INSERT INTO people SELECT i, 'person' || i || '@corp.example.com' FROM generate_series(1, 40) i;"
RULES_YAML = ("version: 1\ntables:\n  public.people: {id: keep, email: email}\n"
              "  public.former: {id: keep, email: email}\n")


def _build(src_dsn: str, dst_dsn: str) -> tuple[dict[str, list[int]], bool, str]:
    rules = parse_rules(RULES_YAML)
    with psycopg.connect(src_dsn) as src, psycopg.connect(dst_dsn) as dst:
        columns = source_columns(src)
        production = production_fingerprints(src, columns, rules, FINGERPRINTER,
                                             fingerprint_capacity(columns, rules, {}))
        stats = sanitize_table(src, dst, "public.people", columns["public.people"], rules, Masker(KEY),
                               written=WrittenCheck(FINGERPRINTER, production, {}))
        dst.commit()
    with psycopg.connect(dst_dsn, autocommit=True) as dst:
        check = no_pii_leaked(dst, {"public.people": columns["public.people"]}, rules, [stats], FINGERPRINTER,
                              production)
    return stats.written, check.ok, check.detail


def test_production_holding_the_outputs_is_found_through_the_real_census(make_db) -> None:
    """Production's ``former`` table holds, as personal e-mails, exactly what the stream writes for ``people``:
    the census of the real fingerprinting sees the shape, so every output is looked up and counted."""
    src, scratch, dst = make_db(SOURCE), make_db(TABLES), make_db(TABLES)
    written, ok, _ = _build(src, scratch)
    assert written == {"email": [0, 0, 0]} and ok
    with psycopg.connect(scratch) as conn:
        outputs = [row[0] for row in conn.execute("SELECT email FROM people")]
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("INSERT INTO former SELECT i, e FROM unnest(%s::text[]) WITH ORDINALITY AS t(e, i)", (outputs,))
    written, ok, detail = _build(src, dst)
    assert written == {"email": [40, 0, 0]}
    assert not ok and "public.people.email: 40 value(s) equal personal values of production" in detail
