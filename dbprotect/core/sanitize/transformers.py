"""The masking transformers: deterministic, keyed pseudonyms of single column values.

Every transformer is keyed with the masking key (HMAC-SHA256, :func:`hmac.digest`), never a plain
hash of the value: a plain hash of an e-mail address is reversed by hashing a list of known
addresses. Keyed and deterministic means the same input gives the same output in every table and
every run with the same key, so joins on masked columns, foreign keys and unique constraints still
hold in the copy.

Values arrive and leave as ``bytes`` in PostgreSQL's text representation (what ``COPY ... TO
STDOUT`` produces after unescaping); ``None`` stands for SQL NULL. A transformer takes the value
and an ``attempt`` number: the stream asks again with ``attempt + 1`` when an output collides on
a unique column, and the attempt is part of the HMAC message, so the retry is deterministic too.

The output spaces are chosen to be disjoint from real data where possible, so that the
``no_pii_leaked`` check (no masked value equals any production value of its column) can hold:
e-mails go to ``example.com``-style reserved domains, IPv4 to 240.0.0.0/4 (reserved, never a
client address), IPv6 to 2001:db8::/32 (documentation), names are synthetic syllable names.

Example::

    masker = Masker(b"secret key from the environment")
    email = masker.transformer(ColumnRule(transformer="email"))
    email(b"alice@example.org", 0)   # b'u3f1c...@example.com', the same every time
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from dbprotect.core.errors import ConfigError
from dbprotect.core.errors import SanitizeError as _SanitizeFamily
from dbprotect.core.sanitize.fingerprints import OCTET
from dbprotect.core.sanitize.rules import KINDS, ColumnRule

#: A transformer: (value, attempt) -> masked value, or None for NULL.
Transform = Callable[[bytes, int], bytes | None]

#: Transformers whose output never depends on the source value: the "masked value differs from its
#: source" rule does not apply to them (a fixed value may equal a source value by coincidence).
CONSTANT_KINDS = frozenset({"null", "fixed"})
#: Kinds not held to "every masked value differs from its source" row by row: the constant ones,
#: and ``json``, which masks chosen paths and legitimately leaves documents without them as they are.
UNCHANGED_EXEMPT = CONSTANT_KINDS | {"json"}
#: Transformers whose outputs live in a space disjoint from real data: for them the
#: ``no_pii_leaked`` check compares whole columns (no output equals ANY production value), not
#: only each row with its own source. Noise on dates and numbers cannot be disjoint by design.
DISJOINT_KINDS = frozenset({"email", "name", "text", "ip", "hash"})

#: Transformers whose outputs are plain ASCII without COPY's special characters.
SAFE_OUTPUT_KINDS = frozenset({"email", "phone", "name", "ip", "date", "number", "hash", "null"})


_SYLLABLES = (b"ka", b"lo", b"vi", b"ru", b"zen", b"to", b"qua", b"ne", b"zo", b"pel", b"ri", b"dax", b"fe",
              b"gu", b"hol", b"jin", b"lu", b"mor", b"ny", b"qui", b"sev", b"tar", b"vo", b"wy", b"xa", b"yel",
              b"zu", b"bre", b"kla", b"dro", b"fli", b"gor")
_WORDS = (b"lorem", b"ipsum", b"dolor", b"sit", b"amet", b"consectetur", b"adipiscing", b"elit", b"sed", b"do",
          b"eiusmod", b"tempor", b"incididunt", b"ut", b"labore", b"et", b"dolore", b"magna", b"aliqua", b"enim",
          b"ad", b"minim", b"veniam", b"quis", b"nostrud", b"exercitation", b"ullamco", b"laboris", b"nisi",
          b"aliquip", b"ex", b"ea")


class SanitizeError(_SanitizeFamily):
    """A value or rule the sanitizer cannot handle; the message names the column, never the value."""


class Masker:
    """The keyed transformers of one run; one instance per rule spec, shared by every column using it.

    Sharing matters for consistency: when a collision on a unique column forces a retry, the
    remapped output is remembered on the transformer, so the same source value in another table
    (masked by an identical rule) gets the same remapped output.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigError("the masking key is shorter than 16 bytes",
                              hint="generate one with: python -c 'import secrets; print(secrets.token_hex(32))'")
        self._key = key
        self._cache: dict[str, MaskFunction] = {}
        #: ``digest(domain, value)``: HMAC-SHA256 of ``domain NUL value`` under the masking key (a plain
        #: function, not a method: one call frame less per masked value).
        self.digest: Callable[[bytes, bytes], bytes] = _hmac_sha256(key)

    def key_id(self) -> str:
        """A version label for lineage: HMAC of a constant, 12 hex digits (reveals nothing of the key)."""
        return self.digest(b"dbprotect-key-id", b"").hex()[:12]

    def transformer(self, rule: ColumnRule) -> MaskFunction:
        """The (shared) transformer for a rule; ``keep`` rules have none and must not be asked."""
        signature = json.dumps(rule.spec(), sort_keys=True)
        found = self._cache.get(signature)
        if found is None:
            found = self._cache[signature] = MaskFunction(rule.transformer, _build(self, rule), signature,
                                                          output_shape(rule))
        return found


def _hmac_sha256(key: bytes) -> Callable[[bytes, bytes], bytes]:
    """``(domain, value) -> HMAC-SHA256(key, domain NUL value)``, as cheap per value as the stdlib allows.

    The key schedule is done once and copied per value. Copying OpenSSL's HMAC context costs about a
    microsecond (OpenSSL 3, measured: half of each HMAC, the stream's largest cost); the stdlib's
    own HMAC (:class:`hmac.HMAC` over a hash constructor it cannot hand to OpenSSL) keeps the two
    keyed SHA-256 states, whose copies cost a fifth of that. Those states are the stdlib's, not
    ours; the result is tested against :func:`hmac.digest` here, and the OpenSSL context is used
    whenever they are missing or differ (a Python whose ``hmac`` is built otherwise).
    """
    python_hmac = hmac.HMAC(key, digestmod=lambda data=b"": hashlib.sha256(data))
    inner, outer = getattr(python_hmac, "_inner", None), getattr(python_hmac, "_outer", None)
    if inner is not None and outer is not None:
        inner_copy, outer_copy = inner.copy, outer.copy

        def two_states(domain: bytes, value: bytes) -> bytes:
            mac = inner_copy()
            mac.update(domain + b"\0" + value)
            result = outer_copy()
            result.update(mac.digest())
            return result.digest()

        probe = b"dbprotect hmac self-test"
        if two_states(probe, probe) == hmac.digest(key, probe + b"\0" + probe, "sha256"):
            return two_states
    base = hmac.new(key, digestmod=hashlib.sha256)
    context = getattr(base, "_hmac", None) or base

    def one_context(domain: bytes, value: bytes) -> bytes:
        mac = context.copy()
        mac.update(domain + b"\0" + value)
        return mac.digest()
    return one_context


class MaskFunction:
    """One transformer with its collision remaps (source value -> output chosen after a retry)."""

    __slots__ = ("cache", "fn", "kind", "remaps", "safe", "shape", "signature")

    def __init__(self, kind: str, fn: Transform, signature: str, shape: str | None = None) -> None:
        self.kind = kind
        self.fn = fn
        self.signature = signature
        #: :func:`output_shape`: a regex that the transformer's usual outputs match, each its own only form.
        self.shape = shape
        self.remaps: dict[bytes, bytes | None] = {}
        #: First-attempt outputs of recently seen values (a speed-up for repetitive columns: dates, names).
        self.cache: dict[bytes, bytes | None] = {}
        #: Outputs never contain a tab, newline, carriage return or backslash: no COPY escaping needed.
        self.safe = kind in SAFE_OUTPUT_KINDS


def _build(masker: Masker, rule: ColumnRule) -> Transform:
    options = rule.options()
    builder = _BUILDERS.get(rule.transformer)
    if builder is None:
        raise ConfigError(f"unknown transformer {rule.transformer!r}", hint=f"use one of: {', '.join(KINDS)}")
    try:
        return builder(masker, options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"transformer {rule.transformer!r}: bad options {options}: {exc}") from None


#: What the shaped transformers write (see :func:`output_shape`); the e-mail's domain is filled in per rule.
_EMAIL_SHAPE = "u[0-9a-f]{20}@"
_IP_SHAPE = rf"2(?:4[0-9]|5[0-5])\.{OCTET}\.{OCTET}\.{OCTET}|2001:db8(?::[0-9a-f]{{1,4}}){{6}}"
_DATE_SHAPE = "[0-9]{4}-[0-9]{2}-[0-9]{2}"
_PLAIN_DOMAIN = re.compile(r"[a-z0-9.-]+")


def output_shape(rule: ColumnRule) -> str | None:
    """A regex (of ASCII text) that the outputs of this rule's transformer match, as a rule of thumb, such that an
    output matching it is its own only normalized form (lower-case, no whitespace, no separator to compact, no
    phone digits): the e-mail's ``u`` + 20 hex digits ``@`` its domain, the ip's reserved IPv4 (240.0.0.0/4)
    and IPv6 documentation (2001:db8::/32) addresses, the date's ``YYYY-MM-DD``. None for other transformers,
    and for an e-mail domain that is not lower-case ASCII.

    Why: the written check asks whether each output equals a production value, a keyed hash and a lookup
    per output. When no production form matches the shape (counted while production is fingerprinted:
    :attr:`~.fingerprints.FingerprintFilter.shapes_seen`), no output of that shape can equal one, and a batch
    of them is decided by one regex (the stream: ``_decide``). Tested: outputs match, and each is its only form.
    """
    options = rule.options()
    if rule.transformer == "email":
        domain = str(options.get("domain", DEFAULT_EMAIL_DOMAIN))
        return _EMAIL_SHAPE + re.escape(domain) if _PLAIN_DOMAIN.fullmatch(domain) else None
    if rule.transformer == "ip":
        return _IP_SHAPE
    if rule.transformer == "date":
        return _DATE_SHAPE
    return None


#: The email transformer's domain when its rule names none.
DEFAULT_EMAIL_DOMAIN = "example.com"


def _suffix(attempt: int) -> bytes:
    return b"" if attempt == 0 else b"\0#" + str(attempt).encode()


def _email(masker: Masker, options: dict[str, Any]) -> Transform:
    domain = str(options.pop("domain", DEFAULT_EMAIL_DOMAIN)).encode()
    _no_more(options)

    def email(value: bytes, attempt: int) -> bytes:
        return b"u" + masker.digest(b"email", value + _suffix(attempt)).hex()[:20].encode() + b"@" + domain
    return email


def _phone(masker: Masker, options: dict[str, Any]) -> Transform:
    keep = int(options.pop("keep_prefix", 2))
    _no_more(options)

    def phone(value: bytes, attempt: int) -> bytes:
        d = masker.digest(b"phone", value + _suffix(attempt))
        number = int.from_bytes(d[:16], "big")
        if value[:1] == b"+" and value[1:].isdigit():  # E.164: + country prefix kept, rest replaced
            n = len(value) - 1 - keep
            out = value[:1 + keep] + b"%0*d" % (n, number % 10**n) if n > 0 else value
        else:  # any other layout: keep separators and the first ``keep`` digits, replace the others
            chars = bytearray(value)
            seen = 0
            for i, ch in enumerate(chars):
                if 48 <= ch <= 57:
                    if seen >= keep:
                        chars[i] = 48 + number % 10
                        number //= 10
                    seen += 1
            out = bytes(chars)
        return out if out != value or attempt > 20 else phone(value, attempt + 1)
    return phone


def _syllable_word(d: bytes, start: int, count: int) -> bytes:
    return b"".join(_SYLLABLES[d[start + i] & 31] for i in range(count)).capitalize()


def _name(masker: Masker, options: dict[str, Any]) -> Transform:
    part = options.pop("part", "full")
    if part not in ("full", "first", "last"):
        raise ValueError("part is one of full, first, last")
    _no_more(options)

    def name(value: bytes, attempt: int) -> bytes:
        d = masker.digest(b"name", value + _suffix(attempt))
        if part == "first":
            return _syllable_word(d, 0, 3)
        if part == "last":
            return _syllable_word(d, 4, 3)
        return _syllable_word(d, 0, 3) + b" " + _syllable_word(d, 4, 3)
    return name


def _text(masker: Masker, options: dict[str, Any]) -> Transform:
    _no_more(options)

    def text(value: bytes, attempt: int) -> bytes:
        limit = len(value.decode("utf-8", "replace"))  # characters: the output must fit varchar(n)
        words: list[bytes] = []
        size, block = -1, 0
        while size < limit:
            d = masker.digest(b"text", value + _suffix(attempt) + b"\0" + str(block).encode())
            for byte in d:
                words.append(_WORDS[byte & 31])
                size += len(words[-1]) + 1
                if size >= limit:
                    break
            block += 1
        out = b" ".join(words)[:max(limit, 1)]
        return out.rstrip() or b"x"
    return text


def _ip(masker: Masker, options: dict[str, Any]) -> Transform:
    _no_more(options)

    def ip(value: bytes, attempt: int) -> bytes:
        address, slash, mask = value.partition(b"/")
        d = masker.digest(b"ip", address + _suffix(attempt))
        if b":" in address:  # IPv6 -> 2001:db8::/32 (documentation prefix)
            groups = [f"{int.from_bytes(d[i:i + 2], 'big'):x}" for i in range(0, 12, 2)]
            out = ("2001:db8:" + ":".join(groups)).encode()
        else:  # IPv4 -> 240.0.0.0/4 (reserved: never a client's address)
            # The top nibble set to 1111, the next 28 bits from the HMAC, as dotted quads.
            out = b"%d.%d.%d.%d" % (0xF0 | d[0] & 0x0F, d[1], d[2], d[3])
        return out + slash + mask
    return ip


def _date(masker: Masker, options: dict[str, Any]) -> Transform:
    max_days = int(options.pop("max_days", 30))
    if max_days < 1:
        raise ValueError("max_days must be at least 1")
    _no_more(options)

    def shift(value: bytes, attempt: int) -> bytes:
        if value in (b"infinity", b"-infinity"):
            return value
        d = masker.digest(b"date", value[:10])
        offset = int.from_bytes(d[:4], "big") % (2 * max_days)
        offset = offset - max_days if offset < max_days else offset - max_days + 1  # never 0
        try:
            day = date.fromisoformat(value[:10].decode()) + timedelta(days=offset + attempt)
        except (ValueError, OverflowError):
            raise SanitizeError("a date value is not in ISO form (YYYY-MM-DD...) or out of range",
                                hint="set DateStyle to ISO on the source, or use the fixed/null transformer") from None
        return day.isoformat().encode() + value[10:]
    return shift


def _number(masker: Masker, options: dict[str, Any]) -> Transform:
    pct = float(options.pop("pct", 10))
    minimum = options.pop("min", None)
    if not 0 < pct <= 100:
        raise ValueError("pct must be in (0, 100]")
    _no_more(options)

    def number(value: bytes, attempt: int) -> bytes:
        d = masker.digest(b"number", value + _suffix(attempt))
        unit = int.from_bytes(d[:4], "big") / 0xFFFFFFFF * 2 - 1  # [-1, 1]
        text = value.decode()
        whole, dot, frac = text.partition(".")
        if not (whole.lstrip("-").isdigit() and (not dot or frac.isdigit())):
            return value  # NaN, Infinity, exponent forms: left to the unchanged-value check
        x = float(text)
        scale = len(frac)
        step = 10.0 ** -scale
        y = round(x * (1 + unit * pct / 100), scale)
        if y == x:
            y = x + (step if unit >= 0 else -step)
        if minimum is not None and y < float(minimum):
            y = x + step
        return (f"{y:.{scale}f}" if scale else str(int(y))).encode()
    return number


#: The path that names a whole JSON document (its value is masked as one: a string, or the document's text).
WHOLE_DOCUMENT = ("", "$")


def json_path(path: str) -> list[str]:
    """A rule's dotted JSON path as its parts; ``""`` or ``$`` is the whole document (no parts)."""
    return [] if path in WHOLE_DOCUMENT else path.split(".")


def json_path_rules(paths: dict[Any, Any]) -> list[tuple[list[str], ColumnRule]]:
    """A json rule's ``paths`` as (path parts, rule): as the transformer masks them, and as the check reads them
    (production's leaves under them, the copy's leaves outside them)."""
    return [(json_path(str(path)), ColumnRule.parse(spec, where=f"json path {path}")) for path, spec in paths.items()]


def _json(masker: Masker, options: dict[str, Any]) -> Transform:
    paths = options.pop("paths", {})
    _no_more(options)
    if not isinstance(paths, dict) or not paths:
        raise ValueError("paths is a mapping of dotted paths (use * for any key or item) to transformers")
    compiled = [(parts, masker.transformer(rule)) for parts, rule in json_path_rules(paths)
                if rule.transformer != "keep"]

    def apply(node: Any, parts: list[str], fn: MaskFunction) -> Any:
        if not parts:
            if node is None:
                return None
            raw = (node if isinstance(node, str) else json.dumps(node)).encode()
            out = fn.fn(raw, 0)
            if out is None:
                return None
            if isinstance(node, str):
                return out.decode()
            try:
                return json.loads(out)
            except ValueError:
                return out.decode()
        head, rest = parts[0], parts[1:]
        if isinstance(node, dict):
            for key in (list(node) if head == "*" else [head] if head in node else []):
                node[key] = apply(node[key], rest, fn)
        elif isinstance(node, list) and (head == "*" or head.isdigit()):
            for i in (range(len(node)) if head == "*" else [int(head)] if int(head) < len(node) else []):
                node[i] = apply(node[i], rest, fn)
        return node

    def transform(value: bytes, attempt: int) -> bytes:
        doc = json.loads(value)
        for parts, fn in compiled:
            doc = apply(doc, parts, fn)
        return json.dumps(doc, ensure_ascii=False).encode()
    return transform


def _null(masker: Masker, options: dict[str, Any]) -> Transform:
    _no_more(options)
    return lambda value, attempt: None


def _fixed(masker: Masker, options: dict[str, Any]) -> Transform:
    if "value" not in options:
        raise ValueError("fixed needs value:")
    fixed = options.pop("value")
    _no_more(options)
    out = None if fixed is None else str(fixed).encode()
    return lambda value, attempt: out


def _hash(masker: Masker, options: dict[str, Any]) -> Transform:
    form = options.pop("format", "hex")
    length = int(options.pop("length", 32))
    if form not in ("hex", "uuid"):
        raise ValueError("format is hex or uuid")
    _no_more(options)

    def keyed_hash(value: bytes, attempt: int) -> bytes:
        h = masker.digest(b"hash", value + _suffix(attempt)).hex()
        if form == "uuid":
            return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}".encode()
        return h[:length].encode()
    return keyed_hash


def _no_more(options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"unknown option(s): {', '.join(sorted(options))}")


_BUILDERS: dict[str, Callable[[Masker, dict[str, Any]], Transform]] = {
    "email": _email, "phone": _phone, "name": _name, "text": _text, "ip": _ip, "date": _date,
    "number": _number, "json": _json, "null": _null, "fixed": _fixed, "hash": _hash,
}


# -- COPY text format ---------------------------------------------------------------------------

_UNESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.S)
_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_NEEDS_ESCAPE = re.compile(rb"[\\\t\n\r]")


def _unescape_match(match: re.Match[bytes]) -> bytes:
    octal, hexa, char = match.groups()
    if octal:
        return bytes([int(octal, 8) & 255])
    if hexa:
        return bytes([int(hexa, 16)])
    return _SIMPLE.get(char, char)


def copy_unescape(field: bytes) -> bytes:
    """One field of COPY text format as its value (the caller handles ``\\N``)."""
    return _UNESCAPE.sub(_unescape_match, field) if b"\\" in field else field


def copy_escape(value: bytes) -> bytes:
    """A value as one field of COPY text format."""
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return (value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r"))
