"""Connection strings: their secrets, masking for display, and the one-line reason a connection failed.

Two defences, always both:

* by *value*: :func:`register_dsn` finds every string that could be the DSN's password — what
  libpq parses and what a lenient reading finds when libpq cannot parse it (an unencoded ``#`` or
  ``%`` in a URI, an unbalanced quote in the keyword form) — and registers it with
  :mod:`dbprotect.core.redact`, which removes it from everything printed, logged or stored;
* by *pattern*: :func:`mask_dsn` shows a DSN with its password replaced by ``****``, and
  :func:`scrub_text` masks every DSN-looking password in free text.

Both URI (``postgresql://user:pw@host/db``) and keyword (``host=... password=...``) forms are
handled, because users paste both. For display, prefer :func:`server_label` (database and host,
no user, no password) to a masked DSN: a log line or an audit record names the database and the
host, never a DSN.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote, unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from dbprotect.core.redact import REDACTED, redact, register

MASK = REDACTED

#: ``password=value`` in the keyword form; a quoted value may be unterminated (masked to the end).
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)
_URI_IN_TEXT = re.compile(r"postgres(?:ql)?://[^\s'\"<>]+")
#: An age identity (its Bech32 human-readable part in upper case, then the key): masked wherever it
#: appears. Written as ``AGE-SECRET-KEY`` + ``-1…`` so the source never holds a whole key prefix.
_AGE_SECRET = re.compile("AGE-SECRET-" + r"KEY-1[0-9A-Z]+")
_PIECES = re.compile(r"[@/:?#&]")


def _uri_userinfo_end(rest: str) -> int:
    """Where the userinfo of a URI (the text after ``scheme://``) ends: the index of its ``@``, or -1.

    libpq takes the first ``@`` before a ``/``; an unencoded ``@``, ``/`` or ``?`` in a password
    moves that. For masking, the widest reading wins: the last ``@`` before the query, or the
    last ``@`` at all when none comes before a ``?`` (the password may hold the ``?``).
    """
    question = rest.find("?")
    if question >= 0 and "@" in rest[:question]:
        return rest.rfind("@", 0, question)
    return rest.rfind("@")


def _keyword_password_values(dsn: str) -> list[str]:
    """Every ``password=`` value of a keyword DSN, read leniently (an unbalanced quote runs to the end)."""
    values: list[str] = []
    for match in re.finditer(r"password\s*=\s*", dsn, re.IGNORECASE):
        rest = dsn[match.end():]
        if rest.startswith("'"):
            raw, unescaped, i = [], [], 1
            while i < len(rest) and rest[i] != "'":
                if rest[i] == "\\" and i + 1 < len(rest):
                    raw.append(rest[i:i + 2])
                    unescaped.append(rest[i + 1])
                    i += 2
                    continue
                raw.append(rest[i])
                unescaped.append(rest[i])
                i += 1
            values += ["".join(raw), "".join(unescaped)]
        else:
            values.append(re.split(r"\s", rest, maxsplit=1)[0])
    return values


def dsn_passwords(dsn: str) -> set[str]:
    """Every string that could be ``dsn``'s password, however odd its form (see the module doc)."""
    candidates: set[str] = set()
    try:
        password = conninfo_to_dict(dsn).get("password")
        if password:
            candidates.add(str(password))
    except (psycopg.Error, ValueError, TypeError):
        pass  # libpq cannot parse it: the lenient readings below still find the password
    if is_uri(dsn):
        rest = dsn.split("://", 1)[1]
        ends = {_uri_userinfo_end(rest), rest.find("@")}
        for end in ends:
            if end > 0 and ":" in rest[:end]:
                raw = rest[:end].split(":", 1)[1]
                candidates |= {raw, unquote(raw)}
                candidates |= set(_PIECES.split(raw))
        query = rest.split("?", 1)[1] if "?" in rest else ""
        for match in re.finditer(r"(?:^|&)password=([^&]*)", query, re.IGNORECASE):
            candidates |= {match.group(1), unquote(match.group(1))}
    else:
        candidates |= set(_keyword_password_values(dsn))
    return {c for c in candidates if c}


def is_uri(dsn: str) -> bool:
    """Whether libpq reads ``dsn`` as a URI: by its scheme, as libpq does. A ``://`` elsewhere (a keyword
    form whose database name or password holds one) is a keyword DSN."""
    return dsn.lower().startswith(("postgresql://", "postgres://"))


def register_dsn(dsn: str) -> str:
    """Register ``dsn``'s password(s) (and ``$PGPASSWORD``, which libpq also uses) as secrets; return ``dsn``."""
    register(*dsn_passwords(dsn), os.environ.get("PGPASSWORD"))
    return dsn


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``****``; safe to print.

    The password is registered as a secret on the way, so that whatever later echoes it (libpq's
    own error text) is redacted too.
    """
    register_dsn(dsn)
    if not is_uri(dsn):
        return redact(_KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, dsn))
    scheme, rest = dsn.split("://", 1)
    at = _uri_userinfo_end(rest)
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        userinfo = f"{user}:{MASK}" if password else user + colon
        rest = f"{userinfo}@{rest[at + 1:]}"
    if "?" in rest:
        head, _, query = rest.partition("?")
        rest = f"{head}?{_QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, query)}"
    return redact(f"{scheme}://{rest}")


def scrub_text(text: str, *, name_servers: bool = False) -> str:
    """Free text with every registered secret removed, then every DSN-looking password and age
    secret key masked: the last step before anything is printed, logged or stored.

    ``name_servers``: a URI DSN is replaced by its :func:`server_label` (database and host, no
    user) instead of being shown masked: what an audit record or a Dagster log line says.
    """
    text = redact(text)
    show = server_label if name_servers else mask_dsn

    def replace(match: re.Match[str]) -> str:
        uri = match.group(0)
        dsn = uri.rstrip(".,;:)]")  # the sentence's punctuation, not the DSN's
        return show(dsn) + uri[len(dsn):]

    text = _URI_IN_TEXT.sub(replace, text)
    text = _KEYWORD_PASSWORD.sub(lambda match: match.group(1) + MASK, text)
    return _AGE_SECRET.sub(MASK, text)


def scrub_value(value: Any, *, name_servers: bool = False) -> Any:
    """A JSON-like value with :func:`scrub_text` applied to every string in it, keys included."""
    if isinstance(value, str):
        return scrub_text(value, name_servers=name_servers)
    if isinstance(value, dict):
        return {scrub_value(k, name_servers=name_servers): scrub_value(v, name_servers=name_servers)
                for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_value(v, name_servers=name_servers) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub_value(v, name_servers=name_servers) for v in value)
    return value


def server_label(dsn: str) -> str:
    """``database 'shop' on db.example.com:5432``: what a log line or an audit record says about a
    DSN, with no user and no password (an unparseable DSN is named as such, never shown)."""
    try:
        params = conninfo_to_dict(dsn)
    except (psycopg.Error, ValueError, TypeError):
        return "an unparseable DSN"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = params.get("port")
    where = f"{host}:{port}" if port else host
    dbname = params.get("dbname")
    return redact(f"database {str(dbname)!r} on {where}" if dbname else f"server {where}")


def _split_uri(dsn: str) -> tuple[str, str, str]:
    """A URI DSN as libpq reads it: (``scheme://userinfo@host``, the database path, ``?query`` or '').

    Not :func:`urllib.parse.urlsplit`: it takes a ``#`` in a password for a fragment, libpq does not.
    """
    scheme, rest = dsn.split("://", 1)
    stop = re.search(r"[@/]", rest)
    start = stop.end() if stop and stop.group() == "@" else 0
    host_end = re.search(r"[/?]", rest[start:])
    if host_end is None:
        return dsn, "", ""
    head = f"{scheme}://{rest[:start + host_end.start()]}"
    tail = rest[start + host_end.start():]
    path, question, query = tail.partition("?")
    return head, path, question + query


#: ``dbname=value`` in the keyword form: a quoted value (backslash escapes) or a bare word.
_KEYWORD_DBNAME = re.compile(r"(?:^|(?<=\s))dbname\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _keyword_value(raw: str) -> str:
    """A keyword-form value as libpq reads it: quotes removed, ``\\'`` and ``\\\\`` unescaped."""
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def quote_keyword_value(value: str) -> str:
    """``value`` quoted as libpq's keyword form needs it: always in single quotes, ``'`` and ``\\`` escaped.

    Quoting every value (libpq accepts a quoted value anywhere) is what keeps spaces, quotes,
    backslashes and ``=`` in a database name from splitting the DSN into other keywords.
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dbname_of(dsn: str) -> str | None:
    """The database name a DSN points at, when it says so."""
    if is_uri(dsn):
        return unquote(_split_uri(dsn)[1].lstrip("/")) or None
    try:
        return conninfo_to_dict(dsn).get("dbname") or None
    except (psycopg.Error, ValueError, TypeError):
        match = _KEYWORD_DBNAME.search(dsn)
        return _keyword_value(match.group(1)) if match else None


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database (for scratch and admin connections)."""
    if is_uri(dsn):
        head, _path, query = _split_uri(dsn)
        return f"{head}/{quote(dbname, safe='')}{query}"
    replacement = f"dbname={quote_keyword_value(dbname)}"
    if _KEYWORD_DBNAME.search(dsn):
        return _KEYWORD_DBNAME.sub(lambda _match: replacement, dsn)
    return f"{dsn} {replacement}".strip()


def connection_failure_reason(exc: BaseException) -> str:
    """The first meaningful line of a libpq error, without secrets.

    libpq messages can span several lines ("connection to server at ... failed: FATAL: ...");
    the user needs the reason, on one line. libpq echoes parts of the connection string in some
    messages (``invalid percent-encoded token: "<password>"``): registered secrets are removed.
    """
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    for line in lines:
        if "FATAL:" in line or "failed:" in line:
            reason = line
    return scrub_text(reason)
