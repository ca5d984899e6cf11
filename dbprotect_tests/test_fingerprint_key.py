"""Fingerprints are keyed by the masking key (issue 12, decided in session 5): the same masking key and
value give the same fingerprint in every process, another key gives another one, and the fingerprint
key is derived (never the masking key itself, never Python's per-process ``hash``)."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys

from dbprotect.core.sanitize.fingerprints import FINGERPRINT_KEY_LABEL, Fingerprinter, fingerprint_key

KEY = bytes(range(32))
VALUES = ["alice@example.org", "+44 20 7946 0018", "Jane Doe", "DE89370400440532013000"]
CHILD = (
    "import sys; from dbprotect.core.sanitize.fingerprints import Fingerprinter; "
    "f = Fingerprinter(bytes.fromhex(sys.argv[1])); "
    "print(','.join(str(f.of(v)) for v in sys.argv[2:]))"
)


def _in_child(key: bytes, seed: str) -> list[int]:
    """The fingerprints of :data:`VALUES` computed in a fresh interpreter with its own string-hash seed."""
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", CHILD, key.hex(), *VALUES], capture_output=True, text=True,
                         env=env, check=True).stdout
    return [int(v) for v in out.strip().split(",")]


def test_same_masking_key_same_fingerprints_across_processes() -> None:
    here = [Fingerprinter(KEY).of(v) for v in VALUES]
    assert _in_child(KEY, "1") == here
    assert _in_child(KEY, "random") == here  # the interpreter's hash key plays no part


def test_another_masking_key_gives_other_fingerprints() -> None:
    other = bytes(32)
    mine, theirs = Fingerprinter(KEY), Fingerprinter(other)
    assert all(mine.of(v) != theirs.of(v) for v in VALUES)
    assert _in_child(other, "1") == [theirs.of(v) for v in VALUES]


def test_fingerprint_is_keyed_blake2b_under_the_derived_key() -> None:
    """Pinned: a fingerprint is BLAKE2b-128 of the form under HMAC-SHA256(masking key, label "v2"); neither
    the masking key itself nor an unkeyed hash of the form. A batch gives the same fingerprints as two words."""
    derived = hmac.digest(KEY, b"dbprotect fingerprint v2", "sha256")
    assert FINGERPRINT_KEY_LABEL == b"dbprotect fingerprint v2" and fingerprint_key(KEY) == derived
    form = "alice@example.org"
    expected = int.from_bytes(hashlib.blake2b(form.encode(), key=derived, digest_size=16).digest())
    assert Fingerprinter(KEY).of(form) == expected
    assert Fingerprinter(KEY).array_of_many([form, "x"])[0].tolist() == [expected >> 64, expected & (2**64 - 1)]
    assert Fingerprinter(KEY).of_many([form]) == [expected]
    assert expected != int.from_bytes(hashlib.blake2b(form.encode(), key=KEY, digest_size=16).digest())
    assert expected != int.from_bytes(hashlib.blake2b(form.encode(), digest_size=16).digest())
    assert Fingerprinter(KEY).of(form) != hash(form)
