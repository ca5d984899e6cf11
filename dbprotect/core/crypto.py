"""age encryption: recipients (public keys), identities (private keys), and key generation.

Backups are encrypted with age X25519 recipients, the standard format, so ``age -d -i key.txt``
decrypts them when dbprotect is unavailable. Public keys live in the configuration; a private key
is read from an environment variable, only at the moment something must be decrypted, and is
never logged or stored in a manifest (only a fingerprint of the public key is).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import pyrage

from dbprotect.core.errors import CryptoError
from dbprotect.core.redact import register


def fingerprint(recipient: str) -> str:
    """A short, stable name for a public key: ``sha256:`` + 16 hex digits of its text."""
    return "sha256:" + hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def parse_recipients(recipients: list[str]) -> list[pyrage.x25519.Recipient]:
    parsed = []
    for text in recipients:
        try:
            parsed.append(pyrage.x25519.Recipient.from_str(text.strip()))
        except Exception:
            raise CryptoError(
                f"{text[:16]}... is not a valid age X25519 recipient",
                hint="generate one with 'age-keygen' or 'dbprotect demo'",
            ) from None
    return parsed


def parse_identity(text: str, *, source: str) -> pyrage.x25519.Identity:
    """Parse an identity; ``source`` names where it came from (a variable name, never the value)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    register(*lines)  # the secret key line(s): redacted from all output
    if not lines:
        raise CryptoError(f"{source} holds no age identity")
    try:
        return pyrage.x25519.Identity.from_str(lines[0])
    except Exception:
        raise CryptoError(
            f"{source} does not hold a valid age identity (a secret key line written by age-keygen)",
            hint="put the private key itself, or '@/path/to/key.txt', in the variable",
        ) from None


def load_identity(env_var: str, environ: Mapping[str, str] | None = None) -> pyrage.x25519.Identity:
    """The identity named by ``env_var``: the key itself, or ``@path`` to a key file."""
    environ = os.environ if environ is None else environ
    value = environ.get(env_var)
    register(value)
    if not value:
        raise CryptoError(  # a missing key is a key problem (exit 8, as the README's table says)
            f"${env_var} is not set: the age identity is needed to decrypt backups",
            hint=f"put the secret key line from age-keygen in {env_var}, or @/path/to/key.txt",
        )
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CryptoError(f"${env_var} points at {path}, which cannot be read: {exc.strerror}") from None
    return parse_identity(value, source=f"${env_var}")


def identity_recipient(identity: pyrage.x25519.Identity) -> str:
    return str(identity.to_public())


def generate_keypair() -> tuple[str, str]:
    """A new (identity, recipient) pair as age text."""
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def write_key_file(path: Path) -> str:
    """Create an age key file readable only by its owner (as ``age-keygen -o``); return the recipient."""
    identity, recipient = generate_keypair()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"# created by dbprotect\n# public key: {recipient}\n{identity}\n")
    return recipient
