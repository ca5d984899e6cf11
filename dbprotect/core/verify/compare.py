"""One comparison of a database against a backup: what restore, drill, warm copy and ``dbprotect compare`` use.

What is compared (each difference is one line naming the object and what differs):

- every table's rows and checksum (:mod:`dbprotect.core.verify.tables`), every sequence's value
  and ``is_called``, the large objects' count and *content* digest, every materialized view's
  populated flag and content digest;
- every schema object's *definition*: the target is dumped with ``pg_dump --schema-only`` and
  each entry's SQL digested as the backup digested the archive's own entries in its snapshot
  (:func:`dbprotect.core.backup.content.definition_records`), so a function body, a view, a
  trigger's enabled state, a policy's expressions and roles, constraints (domain CHECKs too),
  indexes, ``UNLOGGED``, comments, privileges and owners are all compared, both ways;
- the set of schema objects named in the archive's table of contents (when the archive was
  read), against the catalog, as a second view of the same thing.

Owners and privileges are compared only where the target keeps them (``owners=True``): a restore
with ``--no-owner --no-acl`` (rung 3, drills: the scratch server need not know the roles) owns
everything as the restoring role, so comparing them would only report noise. The on-call restore,
the warm copy and ``dbprotect compare`` keep and compare them (``compare --no-owners`` for a
database restored by hand without them).

**Database settings** (``settings=True``): the database's own ``ALTER DATABASE … SET`` and
``ALTER ROLE … IN DATABASE … SET`` are part of what an application sees (a ``search_path``, a
``statement_timeout``, an ``app.tenant``), so the backup records them and they are compared where
the target keeps them: ``dbprotect compare`` and the on-call restore, which applies them after the
data (:mod:`dbprotect.core.restore.settings`). What describes the place is not dbprotect's to own
and is never compared: the name, owner, locale, encoding, tablespace, ``CONNECTION LIMIT``,
``ALLOW_CONNECTIONS``, database ACLs, and ``dbprotect.*`` (the environment marker, swap and
warm-copy records). Rung 3 and drills restore into scratch databases that keep no settings.

A manifest written before the definitions were captured compares what it has and says what it
cannot (:attr:`Comparison.unchecked`), as does a target whose server or pg_dump is of another major
than the backup's (each renders definitions its own way).

A materialized view is restored by ``REFRESH``, from the restored tables: one that was stale at
backup time comes back with other rows than production's, and that is reported as a difference
(the restored database does not hold what production held), never passed.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from dbprotect.core.backup.archive import (
    ArchiveInspector,
    TruncatedArchive,
    UnsupportedArchive,
    large_object_term,
    large_objects_digest,
)
from dbprotect.core.backup.content import (
    DUMP_SESSION,
    PRIVILEGE_DESCS,
    definition_records,
    materialized_view_records,
    pin_session,
)
from dbprotect.core.errors import ToolError
from dbprotect.core.pg.markers import owned_database_settings
from dbprotect.core.pg.tools import connect, require_tool_for_server, split_password, tool_env
from dbprotect.core.store.manifest import CatalogRecord, DatabaseSettingsRecord, Manifest
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
    """The large objects' count, and their content digest when the backup recorded one."""
    expected = int(manifest.large_objects.get("count", 0))
    recorded = manifest.catalog.large_objects_digest if manifest.catalog else None
    if recorded is None:
        row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
        found = int(row[0]) if row else 0
        return [] if found == expected else [f"large objects: {found} here, the backup has {expected}"]
    terms, found = 0, 0
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT oid::bigint, sha256(lo_get(oid)) FROM pg_largeobject_metadata")
            for oid, content_sha256 in cur:
                terms += large_object_term(int(oid), bytes(content_sha256))
                found += 1
    except psycopg.Error as exc:
        conn.rollback()
        return [f"large objects: cannot be read here ({' '.join(str(exc).split())[:120]})"]
    problems = [] if found == expected else [f"large objects: {found} here, the backup has {expected}"]
    digest = large_objects_digest(terms)
    if digest != recorded:
        problems.append(f"large objects: content digest {digest} differs from the backup's {recorded}")
    return problems


def compare_materialized_views(conn: psycopg.Connection, catalog: CatalogRecord) -> list[str]:
    """Each recorded materialized view's populated flag and content; ``conn`` pinned as for tables."""
    try:
        found = materialized_view_records(conn)
    except psycopg.Error as exc:
        conn.rollback()
        return [f"materialized views: cannot be read here ({' '.join(str(exc).split())[:120]})"]
    problems = []
    for key, recorded in sorted(catalog.materialized_views.items()):
        here, name = found.get(key), printable(key)
        if here is None:
            problems.append(f"materialized view {name}: in the backup, missing here")
        elif bool(here["populated"]) != recorded.populated:
            state = "populated" if recorded.populated else "not populated"
            problems.append(f"materialized view {name}: {state} in the backup, "
                            f"{'populated' if here['populated'] else 'not populated'} here")
        elif recorded.populated and here["rows"] != recorded.rows:
            problems.append(f"materialized view {name}: {here['rows']} rows here, the backup has {recorded.rows}")
        elif recorded.populated and here["checksum"] != recorded.checksum:
            problems.append(f"materialized view {name}: content checksum {here['checksum']} differs from the "
                            f"backup's {recorded.checksum} ({recorded.rows} rows)")
    return problems


def dump_definitions(dsn: str, server_major: int, pg_bin_dir: str | None = None) -> tuple[int, dict[str, str],
                                                                                          dict[str, str]]:
    """``(pg_dump major, definitions, owners)`` of the database at ``dsn``, rendered by ``pg_dump --schema-only``.

    pg_dump runs with the backup's rendering settings (UTC, ISO dates: constants in defaults and
    expressions render alike) and its archive is read by the same reader as a backup's.
    """
    tool = require_tool_for_server("pg_dump", server_major, pg_bin_dir, dsn=dsn)
    target, password = split_password(dsn)
    args = [str(tool.path), "--schema-only", "--format=custom", "--compress=0", "--no-password", f"--dbname={target}"]
    env = tool_env(password, PGTZ=DUMP_SESSION["TimeZone"], PGAPPNAME="dbprotect-compare",
                   PGOPTIONS=f"-c bytea_output={DUMP_SESSION['bytea_output']}")
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        reason = lines[-1].removeprefix("pg_dump: ") if lines else f"exit {proc.returncode}"
        raise ToolError(f"pg_dump --schema-only of the compared database failed: {reason}")
    inspector = ArchiveInspector()
    inspector.feed(proc.stdout)
    try:
        summary = inspector.finish()
    except (TruncatedArchive, UnsupportedArchive) as exc:
        raise ToolError(f"pg_dump --schema-only of the compared database is not readable: {exc}") from None
    definitions, owners = definition_records(summary.toc)
    return tool.major, definitions, owners


def printable(name: str) -> str:
    """A name for a one-line difference: control characters (legal in quoted identifiers, and in an
    edited manifest's keys) shown as ``\\xNN`` escapes, never sent to a terminal as they are."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def compare_definitions(catalog: CatalogRecord, definitions: dict[str, str], owners: dict[str, str], *,
                        compare_owners: bool) -> list[str]:
    """Entries missing, extra or defined differently, and (``compare_owners``) owners that differ."""
    def kept(found: dict[str, str]) -> dict[str, str]:
        if compare_owners:
            return found
        return {key: value for key, value in found.items() if key.split(" on ", 1)[0] not in PRIVILEGE_DESCS
                and not key.startswith("DEFAULT ACL ")}

    expected, here = kept(catalog.definitions), kept(definitions)
    problems = []
    for key in sorted(expected.keys() | here.keys()):
        if key not in here:
            problems.append(f"{printable(key)}: in the backup, missing here")
        elif key not in expected:
            problems.append(f"{printable(key)}: here, not in the backup")
        elif expected[key] != here[key]:
            problems.append(f"{printable(key)}: definition differs from the backup's")
    if compare_owners:
        for key in sorted(catalog.owners.keys() & owners.keys()):
            if catalog.owners[key] != owners[key]:
                problems.append(f"{printable(key)}: owned by {printable(owners[key])!r} here, by "
                                f"{printable(catalog.owners[key])!r} in the backup")
    return problems


def settings_by_role(record: DatabaseSettingsRecord) -> dict[str, dict[str, str]]:
    """A record as :func:`~dbprotect.core.pg.markers.owned_database_settings` reads a database (``""``: every role)."""
    return {**({"": record.all_roles} if record.all_roles else {}), **record.roles}


def compare_settings(recorded: DatabaseSettingsRecord, here: dict[str, dict[str, str]]) -> list[str]:
    """Each database setting changed, dropped or added, named with its role; never its value (a
    setting may hold something private, and output never shows it)."""
    expected = settings_by_role(recorded)
    problems = []
    for role in sorted(expected.keys() | here.keys()):
        whose = f" for role {printable(role)!r}" if role else ""
        mine, theirs = expected.get(role, {}), here.get(role, {})
        for name in sorted(mine.keys() | theirs.keys()):
            label = f"database setting {printable(name)}{whose}"
            if name not in theirs:
                problems.append(f"{label}: in the backup, missing here")
            elif name not in mine:
                problems.append(f"{label}: here, not in the backup")
            elif mine[name] != theirs[name]:
                problems.append(f"{label}: value differs from the backup's")
    return problems


@dataclass
class Comparison:
    """A database against a backup: ``differences`` (one line each) and what could not be compared."""

    differences: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    objects: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "differences": self.differences, "unchecked": self.unchecked, "objects": self.objects}


class _DefinitionsDump:
    """``pg_dump --schema-only`` of the target on its own thread, beside the table reads."""

    def __init__(self, dsn: str, server_major: int, pg_bin_dir: str | None) -> None:
        self.result: tuple[int, dict[str, str], dict[str, str]] | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(dsn, server_major, pg_bin_dir),
                                        name="dbprotect-compare-definitions", daemon=True)
        self._thread.start()

    def _run(self, dsn: str, server_major: int, pg_bin_dir: str | None) -> None:
        try:
            self.result = dump_definitions(dsn, server_major, pg_bin_dir)
        except BaseException as exc:  # handed to the thread that waits
            self._failure = exc

    def join(self) -> None:
        """Wait for pg_dump without raising (a failure of the caller's own block is the one to report)."""
        self._thread.join()

    def wait(self) -> tuple[int, dict[str, str], dict[str, str]]:
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        assert self.result is not None
        return self.result


def compare_database(dsn: str, manifest: Manifest, *, expected_objects: set[ObjectKey] | None = None,
                     owners: bool = True, tables: TableVerifier | None = None, workers: int | None = None,
                     pg_bin_dir: str | None = None, settings: bool = False) -> Comparison:
    """THE comparison of the database at ``dsn`` with ``manifest``'s backup (see the module docstring).

    ``expected_objects``: the archive's objects from its table of contents, when the caller read
    the archive (restores do); ``owners``: whether the target keeps owners and privileges;
    ``settings``: whether it keeps the database's own settings (see the module docstring).
    ``tables`` is a running :class:`TableVerifier` that may already have verified tables during a
    restore; without one, the tables are read here over ``workers`` connections. The definitions
    are dumped and the catalog compared meanwhile.
    """
    result = Comparison()
    catalog = manifest.catalog
    with contextlib.ExitStack() as stack, connect(dsn, autocommit=True, application_name="dbprotect-verify") as conn:
        major = conn.info.server_version // 10000
        if tables is None:
            tables = stack.enter_context(TableVerifier(dsn, manifest, workers=workers, server_major=major,
                                                       pg_bin_dir=pg_bin_dir))
        tables.release_all()  # the reads start now, beside everything below
        dump = _DefinitionsDump(dsn, major, pg_bin_dir) if catalog is not None else None
        try:
            if expected_objects is not None:
                result.differences += compare_objects(expected_objects, catalog_objects(conn))
                result.objects = len(expected_objects)
            result.differences += compare_sequences(conn, manifest)
            if settings and catalog is not None and catalog.database_settings is not None:
                result.differences += compare_settings(catalog.database_settings, owned_database_settings(conn))
            elif settings:
                result.unchecked.append(f"database settings: not captured by backup {manifest.backup_id}")
            pin_session(conn, {**DUMP_SESSION, **manifest.checksum.get("session", {})})
            result.differences += compare_large_objects(conn, manifest)
            if catalog is not None:
                result.differences += compare_materialized_views(conn, catalog)
        finally:
            if dump is not None:
                dump.join()
        found = dump.wait() if dump is not None else None
        result.differences += tables.finish()
    if catalog is None:
        result.unchecked.append(
            "definitions, owners, privileges, materialized views and large objects' content: not captured by "
            f"backup {manifest.backup_id} (made by dbprotect {manifest.tool_version}); large objects compared by "
            "count" + (", schema objects by name" if expected_objects is not None else ""))
    elif found is not None:
        dump_major, definitions, found_owners = found
        source_major = int(manifest.source.get("server_major", 0))
        if dump_major != catalog.pg_dump_major:
            result.unchecked.append(f"definitions: rendered by pg_dump {catalog.pg_dump_major} at backup time, "
                                    f"pg_dump {dump_major} here renders SQL differently; not compared")
        elif major != source_major:
            result.unchecked.append(f"definitions: the backup's server was PostgreSQL {source_major}, this one is "
                                    f"{major}; each server renders definitions its own way; not compared")
        else:
            result.differences += compare_definitions(catalog, definitions, found_owners, compare_owners=owners)
            result.objects = max(result.objects, len(catalog.definitions))
    return result


def verify_restored_database(dsn: str, manifest: Manifest, expected_objects: set[ObjectKey], *,
                             tables: TableVerifier | None = None, workers: int | None = None,
                             server_major: int | None = None, pg_bin_dir: str | None = None,
                             owners: bool = False) -> tuple[list[str], int]:
    """:func:`compare_database` of a restored database; returns (problems, objects compared).

    ``owners``: the restore kept owners and privileges (the on-call restore does, rung 3 does not).
    ``server_major`` is kept for callers; the comparison reads the server's own.
    """
    del server_major
    comparison = compare_database(dsn, manifest, expected_objects=expected_objects, owners=owners, tables=tables,
                                  workers=workers, pg_bin_dir=pg_bin_dir)
    return comparison.differences, comparison.objects
