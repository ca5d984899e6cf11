"""A restored database against what was captured at dump time, every comparison but the tables' data.

- the set of schema objects: what the archive's table of contents (``pg_restore --list``) says
  exists against what the restored catalog holds (tables, views, materialized views, sequences,
  indexes, constraints, functions, triggers, policies, row-level security, types, domains,
  schemas), both ways;
- every sequence's value and ``is_called`` against ``manifest.sequences``, and the number of
  large objects;
- every table's rows and checksum through :mod:`dbprotect.core.verify.tables`.

Any difference is a problem naming the table or object and what differs. Used by restore
verification (rung 3), drills, on-call restores and the warm copy alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbprotect.core.pg.tools import connect
from dbprotect.core.store.manifest import Manifest
from dbprotect.core.verify.tables import TableVerifier

ObjectKey = tuple[str, str | None, str]  # (kind, schema or None, name)


#: Object kinds compared between the archive's TOC and the restored catalog.
COMPARED_KINDS = frozenset({
    "TABLE", "FOREIGN TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "INDEX", "CONSTRAINT",
    "FK CONSTRAINT", "FUNCTION", "PROCEDURE", "TRIGGER", "POLICY", "ROW SECURITY", "TYPE", "DOMAIN",
    "SCHEMA",
})


# Every TOC description that starts with the word of a compared kind, so the longest match wins
# ("TABLE DATA public t" is data, not a TABLE in a schema called DATA).
_DESCS = sorted(COMPARED_KINDS | {
    "TABLE DATA", "TABLE ATTACH", "INDEX ATTACH", "SEQUENCE SET", "SEQUENCE OWNED BY",
    "MATERIALIZED VIEW DATA", "FOREIGN DATA WRAPPER", "TYPE SHELL", "SHELL TYPE", "SCHEMA DATA",
}, key=len, reverse=True)


def parse_toc_listing(listing: str) -> set[ObjectKey]:
    """The compared objects in a ``pg_restore --list`` listing.

    A line is ``ID; TABLEOID OID DESC SCHEMA TAG OWNER``, all space-separated although
    descriptions, schema and tag may contain spaces; schemas are resolved against the SCHEMA
    entries of the same listing, so ``TABLE Odd Schema Mixed Case postgres`` parses right.
    """
    rows = []
    for line in listing.splitlines():
        if not line or line.startswith(";"):
            continue
        parts = line.split(" ", 3)
        if len(parts) < 4:
            continue
        text = parts[3]
        desc = next((d for d in _DESCS if text.startswith(d + " ")), None)
        if desc in COMPARED_KINDS:
            rest = text[len(desc) + 1:]  # type: ignore[arg-type]
            if not rest.endswith(" "):
                rest = rest.rsplit(" ", 1)[0]  # the owner
            rows.append((desc, rest.rstrip()))
    schemas = {rest.removeprefix("- ") for desc, rest in rows if desc == "SCHEMA"}
    known = sorted(schemas | {"public", "pg_catalog", "-"}, key=len, reverse=True)
    found: set[ObjectKey] = set()
    for desc, rest in rows:
        schema = next((s for s in known if rest.startswith(s + " ")), None)
        if schema is None:
            schema, _, tag = rest.partition(" ")
        else:
            tag = rest[len(schema) + 1:]
        key: ObjectKey = (desc, None if schema == "-" else schema, tag)
        if not (desc == "SCHEMA" and tag == "public"):
            found.add(key)
    return found


# Each row: kind, schema, name, strict (names as text: a UNION typed ``name`` would cut them at 63
# bytes). Each row: kind, schema, name, strict. A strict object must be in the archive; a non-strict one
# (CHECK constraints, dumped inline with their table unless NOT VALID) only satisfies the
# archive's entry if it lists one.
_CATALOG_OBJECTS = """
WITH ns AS (
  SELECT oid, nspname FROM pg_namespace
  WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%'
    AND nspname NOT LIKE 'pg\\_temp%'
), ext AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e')
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, ns.nspname::text, c.relname::text, true
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_class'::regclass AND ext.objid = c.oid)
UNION ALL
SELECT 'ROW SECURITY', ns.nspname, c.relname, true
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace WHERE c.relrowsecurity
UNION ALL
SELECT 'INDEX', ns.nspname, c.relname, true
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN ns ON ns.oid = c.relnamespace
 WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                     AND k.contype IN ('p', 'u', 'x'))
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_class'::regclass AND ext.objid = i.indrelid)
UNION ALL
SELECT CASE k.contype WHEN 'f' THEN 'FK CONSTRAINT' ELSE 'CONSTRAINT' END, ns.nspname,
       coalesce(t.relname, ty.typname) || ' ' || k.conname,
       k.contype IN ('p', 'u', 'x') OR (k.contype = 'f' AND k.conparentid = 0)
  FROM pg_constraint k
  LEFT JOIN pg_class t ON t.oid = k.conrelid LEFT JOIN pg_type ty ON ty.oid = k.contypid
  JOIN ns ON ns.oid = coalesce(t.relnamespace, ty.typnamespace)
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, ns.nspname,
       p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')', true
  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
 WHERE p.prokind IN ('f', 'p', 'w')
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_proc'::regclass AND ext.objid = p.oid)
UNION ALL
SELECT 'TRIGGER', ns.nspname, c.relname || ' ' || tg.tgname, true
  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN ns ON ns.oid = c.relnamespace
 WHERE NOT tg.tgisinternal AND tg.tgparentid = 0
UNION ALL
SELECT 'POLICY', ns.nspname, c.relname || ' ' || pol.polname, true
  FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid JOIN ns ON ns.oid = c.relnamespace
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, ns.nspname, t.typname, true
  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
 WHERE (t.typtype IN ('e', 'r', 'd')
        OR (t.typtype = 'c' AND (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c'))
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_type'::regclass AND ext.objid = t.oid)
UNION ALL
SELECT 'SCHEMA', NULL, ns.nspname, true FROM ns
 WHERE ns.nspname <> 'public'
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_namespace'::regclass AND ext.objid = ns.oid)
"""


@dataclass(frozen=True)
class CatalogObjects:
    strict: set[ObjectKey]
    optional: set[ObjectKey]

    @property
    def all(self) -> set[ObjectKey]:
        return self.strict | self.optional


def catalog_objects(conn: psycopg.Connection) -> CatalogObjects:
    """The compared objects of the database ``conn`` is connected to, named as pg_dump names them.

    Function signatures are rendered with ``search_path`` set to pg_catalog only, as pg_dump does,
    so that types outside pg_catalog are schema-qualified on both sides.
    """
    strict: set[ObjectKey] = set()
    optional: set[ObjectKey] = set()
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        for kind, schema, name, is_strict in conn.execute(_CATALOG_OBJECTS):
            (strict if is_strict else optional).add((kind, schema, name))
    return CatalogObjects(strict, optional)


def describe_object(key: ObjectKey) -> str:
    kind, schema, name = key
    return f"{kind.lower()} {schema}.{name}" if schema else f"{kind.lower()} {name}"


def compare_objects(expected: set[ObjectKey], restored: CatalogObjects) -> list[str]:
    """Objects the archive lists that did not come back, and objects that came from nowhere."""
    missing = sorted(expected - restored.all, key=str)
    unexpected = sorted(restored.strict - expected, key=str)
    problems = [f"{describe_object(key)}: in the archive, missing after restore" for key in missing]
    problems += [f"{describe_object(key)}: in the restored database, not in the archive" for key in unexpected]
    return problems


def compare_sequences(conn: psycopg.Connection, manifest: Manifest) -> list[str]:
    problems = []
    for name, recorded in sorted(manifest.sequences.items()):
        row = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(%s)", (name,)).fetchone()
        if row is None:
            problems.append(f"sequence {name}: missing after restore")
            continue
        value, is_called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(row[0], row[1]))).fetchone()  # type: ignore[misc]
        if int(value) != int(recorded["value"]) or bool(is_called) != bool(recorded["is_called"]):
            problems.append(f"sequence {name}: restored at {value} (is_called {is_called}), manifest says "
                            f"{recorded['value']} (is_called {recorded['is_called']})")
    return problems


def compare_large_objects(conn: psycopg.Connection, manifest: Manifest) -> list[str]:
    expected = int(manifest.large_objects.get("count", 0))
    row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    found = int(row[0]) if row else 0
    return [] if found == expected else [f"large objects: {found} restored, manifest says {expected}"]


def verify_restored_database(dsn: str, manifest: Manifest, expected_objects: set[ObjectKey], *,
                             tables: TableVerifier | None = None, workers: int | None = None,
                             server_major: int | None = None,
                             pg_bin_dir: str | None = None) -> tuple[list[str], int]:
    """Every comparison against the restored database; returns (problems, objects compared).

    ``tables`` is a running :class:`TableVerifier` that may already have verified tables during
    the restore; without one, the tables are verified here over ``workers`` connections. The
    schema, sequence and large-object comparisons run meanwhile on this thread.
    """
    with contextlib.ExitStack() as stack:
        if tables is None:
            tables = stack.enter_context(TableVerifier(dsn, manifest, workers=workers, server_major=server_major,
                                                       pg_bin_dir=pg_bin_dir))
        with connect(dsn, autocommit=True, application_name="dbprotect-verify") as conn:
            restored = catalog_objects(conn)
            problems = compare_objects(expected_objects, restored)
            problems += compare_sequences(conn, manifest)
            problems += compare_large_objects(conn, manifest)
        problems += tables.finish()
    return problems, len(expected_objects)


