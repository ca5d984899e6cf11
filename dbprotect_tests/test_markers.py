"""Environment markers live in the database's own settings and are read back from any database."""

from __future__ import annotations

import psycopg
import pytest

from dbprotect.core.errors import RefusedError
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import read_marker, require_marker, set_marker


def test_marker_round_trip_and_visible_to_sessions(pg, make_db):
    dsn = make_db()
    name = str(dbname_of(dsn))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        assert read_marker(admin, name) is None
        set_marker(admin, name, "development")
        set_marker(admin, name, "production")  # re-marking replaces, never duplicates
        assert read_marker(admin, name) == "production"
        require_marker(admin, name, "production")
        with pytest.raises(RefusedError, match="is marked 'production', not 'development'"):
            require_marker(admin, name, "development")
        with pytest.raises(ValueError, match="unknown environment"):
            set_marker(admin, name, "prod")
    with psycopg.connect(dsn) as conn:  # new sessions in the database see it too
        assert conn.execute("SELECT current_setting('dbprotect.environment')").fetchone() == ("production",)


def test_unmarked_database_is_refused_with_a_hint(pg, make_db):
    name = str(dbname_of(make_db()))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin, pytest.raises(RefusedError) as caught:
        require_marker(admin, name, "production")
    assert "carries no environment marker" in caught.value.one_line()
    assert "SET dbprotect.environment = 'production'" in (caught.value.hint or "")
