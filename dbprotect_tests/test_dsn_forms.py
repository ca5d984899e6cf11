"""DSNs of every form (issue 10, points 5 and 7): database names quoted as libpq does, secrets redacted.

``with_dbname`` on a keyword-form DSN once inserted the name unquoted: a name with a space, a quote
or a backslash broke the DSN or, worse, added keywords of its own (``x host=elsewhere``).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from dbprotect.core.pg.dsn import dbname_of, mask_dsn, scrub_text, server_label, with_dbname

#: Database names PostgreSQL accepts (no NUL), biased towards what breaks quoting.
ODD_NAMES = st.text(alphabet=st.sampled_from([*"ab ='\\\"#%&?/@:\t", "ü", "名"]), min_size=1, max_size=30)
KEYWORD_DSNS = ["host=/tmp user=u password='p w' dbname=old", "host=/tmp dbname='o l d' user=u",
                "host=/tmp user=u", "dbname=x", "  host=/tmp   dbname = 'it\\'s'  port=5433 "]


@settings(max_examples=300, deadline=None)
@given(name=ODD_NAMES, dsn=st.sampled_from(KEYWORD_DSNS))
def test_with_dbname_quotes_any_name_so_libpq_reads_exactly_it(name, dsn):
    out = with_dbname(dsn, name)
    parsed, original = conninfo_to_dict(out), conninfo_to_dict(dsn)
    assert parsed["dbname"] == name
    assert {k: v for k, v in parsed.items() if k != "dbname"} == {k: v for k, v in original.items() if k != "dbname"}
    assert dbname_of(out) == name


@settings(max_examples=200, deadline=None)
@given(name=ODD_NAMES)
def test_with_dbname_on_a_uri_round_trips_any_name(name):
    out = with_dbname("postgresql://u:pw@db.example:5432/old?sslmode=disable&application_name=x", name)
    assert dbname_of(out) == name
    parsed = conninfo_to_dict(out)
    assert parsed["dbname"] == name and parsed["sslmode"] == "disable" and parsed["host"] == "db.example"


SECRET = "S3cr#t%zz'q"
ODD_DSNS = [
    f"postgresql://u:{SECRET}@db.example:5432/shop",                          # unencoded # and %
    f"postgresql://u@db.example/shop?password={SECRET}&sslmode=require",     # password in the query
    f"postgresql://u:{SECRET}@db.example/shop?application_name=a&connect_timeout=5",
    "host=db.example user=u password='S3cr#t%zz\\'q dbname=shop",             # unbalanced quote
    "host=db.example user=u password='S3cr#t%zz\\'q' dbname=shop",            # balanced, escaped quote
    "service=shop user=u password=S3cr#t%zz'q",                               # service file + bare value
]


@pytest.mark.parametrize("dsn", ODD_DSNS)
def test_odd_dsn_forms_never_show_their_password(dsn):
    masked = mask_dsn(dsn)  # registers the secret by value
    leaked_fragment = "S3cr#t"
    for shown in (masked, scrub_text(f"connection to {dsn} failed"), server_label(dsn),
                  mask_dsn(with_dbname(dsn, "other db")), scrub_text(f"at {with_dbname(dsn, 'x')}")):
        assert leaked_fragment not in shown, shown
