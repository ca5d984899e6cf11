"""Type-aware reading of a column's text: every text-like value it holds, by *base* type.

The leak check must not trust a column's type name: ``contact_email`` may be a domain over
``text``, ``text[][]`` holds text two levels down, a composite type holds text in its fields,
``hstore`` in its keys and values, ``json``/``jsonb`` in its leaves. :func:`column_leaves` resolves
a column's type through the catalog (domains to their base type, arrays to their element type at
any depth, composite types to their fields, recursively) and returns one SQL query whose rows are
the column's distinct text-like leaves. PostgreSQL does the flattening (``unnest`` flattens every
dimension, ``jsonb_path_query`` walks every level), so Python only sees leaves.

Text-like: the string category (``text``, ``varchar``, ``bpchar``, ``name``, ``citext``...),
``xml``, ``json``/``jsonb`` string and number leaves and object keys (at every level), ``hstore``
keys and values, ``bytea`` (its escaped form: text stored as bytes stays readable) and ``tsvector`` (its
lexemes in the order of their positions: the text it was made from, as far as its parser kept it). Not
text-like: numbers, dates, booleans, ``uuid``, ``inet``, enums (their labels are schema, not data).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

#: Composite types nested deeper than this are not followed (PostgreSQL forbids self-containment,
#: so this only bounds pathological schemas).
MAX_DEPTH = 12


@dataclass(frozen=True)
class PgType:
    oid: int
    name: str
    schema: str
    kind: str        # typtype: b base, c composite, d domain, e enum, r range, m multirange, p pseudo
    category: str    # typcategory: S string, A array, U user-defined...
    base: int        # typbasetype (domains)
    element: int     # typelem (arrays)
    relation: int    # typrelid (composite types)


class TypeCatalog:
    """The types of one database, read once; attributes of composite types on demand."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self._types = {row[0]: PgType(*row) for row in conn.execute(
            "SELECT t.oid::int, t.typname::text, n.nspname::text, t.typtype::text, t.typcategory::text, "
            "t.typbasetype::int, t.typelem::int, t.typrelid::int "
            "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace").fetchall()}
        self._fields: dict[int, list[tuple[str, int]]] = {}

    def type(self, oid: int) -> PgType | None:
        return self._types.get(oid)

    def fields(self, relation: int) -> list[tuple[str, int]]:
        found = self._fields.get(relation)
        if found is None:
            found = self._fields[relation] = [(str(name), int(oid)) for name, oid in self._conn.execute(
                "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum", (relation,)).fetchall()]
        return found

    def column_type(self, table: str, column: str) -> int:
        schema, _, name = table.partition(".")
        row = self._conn.execute(
            "SELECT a.atttypid FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
            "AND a.attname = %s AND NOT a.attisdropped", (schema, name, column)).fetchone()
        return int(row[0]) if row else 0


def _leaf_paths(catalog: TypeCatalog, expr: sql.Composable, oid: int, joins: list[sql.Composable],
                depth: int, counter: list[int]) -> list[tuple[list[sql.Composable], sql.Composable]]:
    """(lateral joins, leaf expression) for every text-like place inside a value of type ``oid``."""
    t = catalog.type(oid)
    if t is None or depth > MAX_DEPTH:
        return []
    if t.kind == "d":
        return _leaf_paths(catalog, expr, t.base, joins, depth + 1, counter)
    if t.category == "A" and t.element:
        counter[0] += 1
        alias = sql.Identifier(f"dbp_a{counter[0]}")
        join = sql.SQL("CROSS JOIN LATERAL unnest({}) AS {}(e)").format(expr, alias)
        return _leaf_paths(catalog, sql.SQL("{}.e").format(alias), t.element, [*joins, join], depth + 1, counter)
    if t.kind == "c" and t.relation:
        found = []
        for field, field_type in catalog.fields(t.relation):
            found += _leaf_paths(catalog, sql.SQL("({}).{}").format(expr, sql.Identifier(field)), field_type,
                                 joins, depth + 1, counter)
        return found
    if t.name in ("json", "jsonb") and t.schema == "pg_catalog":
        counter[0] += 1
        alias = sql.Identifier(f"dbp_j{counter[0]}")
        join = sql.SQL("CROSS JOIN LATERAL jsonb_path_query({}::jsonb, 'strict $.**') AS {}(x)").format(expr, alias)
        leaf = sql.SQL("CASE WHEN jsonb_typeof({a}.x) IN ('string', 'number') THEN {a}.x #>> '{{}}' END").format(
            a=alias)
        # Object keys are data too: {"alice@example.com": {...}} keeps an address in a key.
        keys = sql.Identifier(f"dbp_k{counter[0]}")
        key_join = sql.SQL("CROSS JOIN LATERAL jsonb_object_keys(CASE WHEN jsonb_typeof({a}.x) = 'object' "
                           "THEN {a}.x END) AS {k}(k)").format(a=alias, k=keys)
        return [([*joins, join], leaf), ([*joins, join, key_join], sql.SQL("{}.k").format(keys))]
    if t.name == "hstore" and t.kind == "b":
        counter[0] += 1
        alias = sql.Identifier(f"dbp_h{counter[0]}")
        join = sql.SQL("CROSS JOIN LATERAL unnest({s}.akeys({e}) || {s}.avals({e})) AS {a}(v)").format(
            s=sql.Identifier(t.schema), e=expr, a=alias)
        return [([*joins, join], sql.SQL("{}.v").format(alias))]
    if t.name == "bytea" and t.schema == "pg_catalog":
        return [(joins, sql.SQL("encode({}, 'escape')").format(expr))]
    if t.name == "tsvector" and t.schema == "pg_catalog":
        # A search column keeps the words of the text it was made from, rearranged (its text form sorts the
        # lexemes and adds positions: 'jöhn':1 'smith':2), so that form met no production value. Read as that
        # text again: its lexemes in the order of their first position (one without positions, in its own
        # order), joined by spaces. A name or an e-mail a ``simple`` configuration kept whole is then the value
        # it was; a stemmed word (``english``: "james" -> "jame") stays what the stemmer left.
        return [(joins, sql.SQL("(SELECT string_agg(dbp_l.lexeme, ' ' ORDER BY dbp_l.positions[1], dbp_l.lexeme) "
                                "FROM unnest({}) AS dbp_l)").format(expr))]
    if t.category == "S" or (t.name == "xml" and t.schema == "pg_catalog"):
        return [(joins, sql.SQL("{}::text").format(expr))]
    return []


def leaf_query(catalog: TypeCatalog, table: str, column: str, *, counted: bool = False,
               unique: bool = False) -> sql.Composable | None:
    """One query listing the distinct non-null text-like leaves of ``table.column``; None when it has none.

    ``counted``: a second column says how many times each leaf occurs (findings count rows, not
    distinct values, while Python sees each distinct value once). ``unique``: the column holds each
    value once (:func:`unique_columns`): a scalar column's values are then listed as they are, each
    counted once, without the server grouping them (2 M values: a hash aggregate larger than
    ``work_mem``, spilled to disk); a column with several leaves a row (arrays, JSON) is grouped.
    """
    schema, _, name = table.partition(".")
    paths = _leaf_paths(catalog, sql.SQL("t.{}").format(sql.Identifier(column)),
                        catalog.column_type(table, column), [], 0, [0])
    if not paths:
        return None
    parts = [sql.SQL("SELECT {} AS v FROM {} t {}").format(leaf, sql.Identifier(schema, name), sql.SQL(" ").join(joins))
             for joins, leaf in paths]
    union = sql.SQL(" UNION ALL ").join(parts)
    if counted and unique and len(paths) == 1 and not paths[0][0]:
        return sql.SQL('SELECT v COLLATE "C", 1 FROM ({}) leaves WHERE v IS NOT NULL').format(union)
    # COLLATE "C": distinct by bytes (memcmp), not by the database's collation (strcoll per comparison);
    # equal under a deterministic collation means equal bytes, so the rows are the same, only cheaper.
    if counted:
        return sql.SQL('SELECT v COLLATE "C", count(*) FROM ({}) leaves WHERE v IS NOT NULL GROUP BY 1').format(union)
    return sql.SQL('SELECT DISTINCT v COLLATE "C" FROM ({}) leaves WHERE v IS NOT NULL').format(union)


_UNIQUE_COLUMNS = """
    SELECT a.attname::text FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1
      AND i.indpred IS NULL AND i.indexprs IS NULL
"""


def unique_columns(conn: psycopg.Connection, table: str) -> set[str]:
    """The columns of ``table`` a valid unique index holds alone (no predicate, no expression): each of
    their non-null values is in one row only. Any equality an index uses (a collation, numeric ``1.0 =
    1.00``) is coarser than equal text, so their text forms are distinct too."""
    schema, _, name = table.partition(".")
    return {str(row[0]) for row in conn.execute(_UNIQUE_COLUMNS, (schema, name)).fetchall()}


def is_text_like(catalog: TypeCatalog, table: str, column: str) -> bool:
    return leaf_query(catalog, table, column) is not None


def base_type(catalog: TypeCatalog, table: str, column: str) -> PgType | None:
    """The column's type with domains resolved (an array of a domain stays an array)."""
    t = catalog.type(catalog.column_type(table, column))
    depth = 0
    while t is not None and t.kind == "d" and depth < MAX_DEPTH:
        t, depth = catalog.type(t.base), depth + 1
    return t


_PLAIN_TEXT_COLUMNS = """
    WITH RECURSIVE resolved(attname, typid, depth) AS (
        SELECT a.attname::text, a.atttypid, 0 FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
      UNION ALL
        SELECT r.attname, t.typbasetype, r.depth + 1 FROM resolved r JOIN pg_type t ON t.oid = r.typid
        WHERE t.typtype = 'd' AND r.depth < 12)
    SELECT r.attname, t.typname::text FROM resolved r JOIN pg_type t ON t.oid = r.typid
    WHERE t.typtype = 'b' AND t.typnamespace = 'pg_catalog'::regnamespace
      AND t.typname IN ('text', 'varchar', 'bpchar', 'inet', 'date')
"""
_PLAIN_TEXT_TYPES = frozenset({"text", "varchar", "bpchar"})


def plain_text_columns(conn: psycopg.Connection, table: str) -> set[str]:
    """The columns of ``table`` that store what COPY gives them as one string: ``text``, ``varchar``,
    ``bpchar``, or a domain over one of them (a domain's checks only reject).

    Read back, such a value is the written string, at most without trailing spaces (``varchar(n)`` and
    ``bpchar`` drop excess spaces; ``bpchar`` pads): every normalized form trims them, so the forms of
    the written value are those the copy holds. Arrays, composites, JSON and other types are
    re-written by their input functions and are left out.
    """
    return {column for column, type_name in _base_types(conn, table) if type_name in _PLAIN_TEXT_TYPES}


def inet_columns(conn: psycopg.Connection, table: str) -> set[str]:
    """The columns of ``table`` of type ``inet`` or a domain over it.

    An IPv4 address written in canonical form (four decimal octets, no leading zero, no mask) is
    stored as that host and read back (``inet_out``) as the very string written; any other input
    (a mask, a leading zero, IPv6) may come back rewritten. The stream checks such a column as
    written only when every written value had that form (:data:`~.stream.CANONICAL_IPV4`).
    """
    return {column for column, type_name in _base_types(conn, table) if type_name == "inet"}


def date_columns(conn: psycopg.Connection, table: str) -> set[str]:
    """The columns of ``table`` of type ``date`` or a domain over it.

    A date written as ``YYYY-MM-DD`` (what the date transformer writes for a date) is stored as that day and
    read back (``date_out``, DateStyle ISO) as the very string written; other input (``1980-5-3``, another
    DateStyle's order) may come back rewritten. The stream checks such a column as written only when its
    session's DateStyle is ISO and every written value had that form (:data:`~.stream.CANONICAL_ISO_DATE`).
    """
    return {column for column, type_name in _base_types(conn, table) if type_name == "date"}


def iso_dates(conn: psycopg.Connection) -> bool:
    """Whether this session prints dates as ``YYYY-MM-DD`` (DateStyle ISO, whatever the field order)."""
    row = conn.execute("SELECT current_setting('DateStyle')").fetchone()
    return row is not None and str(row[0]).upper().startswith("ISO")


def _base_types(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    """(column, base type name) of the columns of ``table`` whose base type is a text type, ``inet`` or ``date``."""
    schema, _, name = table.partition(".")
    return [(str(column), str(type_name)) for column, type_name in
            conn.execute(_PLAIN_TEXT_COLUMNS, (schema, name)).fetchall()]


def copy_bytes_are_textsend(conn: psycopg.Connection) -> bool:
    """Whether this session's server and client encoding are both UTF-8: the sessions in which COPY's
    text is known to be, byte for byte, what the check reads (``textsend``, decoded as UTF-8) and what
    the server stores from a written string. The stream checks values as written only then, and
    production is read by one COPY only then (elsewhere by the per-column queries: COPY and
    ``textsend`` both convert to the client encoding, so the result is the same, tested on a LATIN1
    database; the narrower condition only costs speed)."""
    row = conn.execute("SELECT current_setting('server_encoding'), current_setting('client_encoding')").fetchone()
    return row is not None and tuple(row) == ("UTF8", "UTF8")
