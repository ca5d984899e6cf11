"""Secrets removed by *value* from every text dbprotect prints, logs or stores.

Masking by pattern (:func:`dbprotect.core.pg.dsn.mask_dsn`) recognises the DSN forms it was
written for; a password with an unencoded ``#`` or ``%``, a keyword DSN with an unbalanced quote,
or libpq echoing a fragment of the connection string in its own error text
(``invalid percent-encoded token: "..."``) slipped past it. So every secret dbprotect resolves is
registered here, where it is resolved (a DSN read from its variable, ``PGPASSWORD``, an age
identity, the masking key, an S3 secret key), and :func:`redact` removes each from a text before
that text leaves the process: the CLI's stderr and ``--json``, audit records, error messages and
Dagster's logs, metadata and failures. This comes in addition to pattern masking, never instead.

The registry is per process and only grows: a secret seen once stays a secret. It holds the
values themselves (they are in this process's memory anyway) and never writes them anywhere.
Secrets shorter than :data:`MIN_SECRET_LENGTH` are not removed by value: replacing every ``ab``
in every message would garble all output while protecting nothing a guess would not find; pattern
masking still covers them inside a DSN.

This module imports nothing from dbprotect, so every layer (errors included) may use it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from urllib.parse import quote

REDACTED = "****"
MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()
#: The registered secrets and their escaped spellings, longest first (so a secret that contains
#: another is removed whole); rebuilt on registration, read without the lock.
_ordered: tuple[str, ...] = ()


def _spellings(secret: str) -> set[str]:
    """The ways a secret can appear in output: as is, JSON- or repr-escaped, percent-encoded,
    and backslash-escaped as in a keyword DSN's quoted value."""
    spellings = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
        secret.replace("\\", "\\\\").replace("'", "\\'"),
    }
    return {s for s in spellings if len(s) >= MIN_SECRET_LENGTH}


def register(*secrets: str | bytes | None) -> None:
    """Remember each secret (and its escaped spellings) so that :func:`redact` removes it.

    ``None``, empty and too-short values are ignored, so a caller may pass whatever it resolved.
    """
    global _ordered
    new: set[str] = set()
    for secret in secrets:
        if isinstance(secret, bytes):
            secret = secret.decode("utf-8", errors="replace")
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            continue
        for text in (secret, secret.strip()):
            new |= _spellings(text)
    with _lock:
        if new <= _secrets:
            return
        _secrets.update(new)
        _ordered = tuple(sorted(_secrets, key=lambda s: (-len(s), s)))


def register_all(secrets: Iterable[str | bytes | None]) -> None:
    register(*secrets)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``****``."""
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def contains_secret(text: str) -> bool:
    """Whether ``text`` holds any registered secret (for a last check before something is kept)."""
    return any(secret in text for secret in _ordered)


def forget_all() -> None:
    """Empty the registry: for tests only (a real process never forgets a secret)."""
    global _ordered
    with _lock:
        _secrets.clear()
        _ordered = ()


__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "contains_secret", "forget_all", "redact", "register",
           "register_all"]
