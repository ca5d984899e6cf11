"""Connection strings: masking for display, and the one-line reason a connection failed.

Every DSN that is printed, logged, put in metadata or in an error goes through :func:`mask_dsn`
first. Both URI (``postgresql://user:pw@host/db``) and keyword (``host=... password=...``) forms
are handled, because users paste both.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "****"

_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``****``; safe to print."""
    if "://" not in dsn:
        return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, dsn)
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            user, _, password = userinfo.partition(":")
            userinfo = f"{user}:{MASK}" if password else f"{user}:"
        netloc = f"{userinfo}@{hostinfo}"
    query = parts.query
    if query:
        pairs = [(k, MASK if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="/:*")  # keep the mask readable
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dbname_of(dsn: str) -> str | None:
    """The database name a DSN points at, when it says so."""
    if "://" in dsn:
        path = urlsplit(dsn).path.lstrip("/")
        return unquote(path) or None
    match = re.search(r"dbname\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    return match.group(1).strip("'") if match else None


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database (for scratch and admin connections)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    if re.search(r"dbname\s*=", dsn):
        return re.sub(r"dbname\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", f"dbname={dbname}", dsn)
    return f"{dsn} dbname={dbname}"


def connection_failure_reason(exc: BaseException) -> str:
    """The first meaningful line of a libpq error, without secrets.

    libpq messages can span several lines ("connection to server at ... failed: FATAL: ...");
    the user needs the reason, on one line.
    """
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    for line in lines:
        if "FATAL:" in line or "failed:" in line:
            reason = line
    reason = _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, reason)
    return reason
