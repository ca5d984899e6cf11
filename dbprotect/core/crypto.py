"""age encryption: recipients (public keys), identities (private keys), and key generation.

Backups are encrypted with age X25519 recipients, the standard format, so ``age -d -i key.txt``
decrypts them when dbprotect is unavailable. Public keys live in the configuration; a private key
is read from an environment variable, only at the moment something must be decrypted, and is
never logged or stored in a manifest (only a fingerprint of the public key is).
A private key kept in a file (``@path``) is read only when the file is its owner's alone: one that its
group or others may access is refused, as ssh refuses such a private key.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pyrage

from dbprotect.core.errors import CryptoError, Refusals, RefusedError
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
        return read_identity_file(Path(value[1:]).expanduser(), source=f"${env_var}")
    return parse_identity(value, source=f"${env_var}")


#: Permission bits a file holding a secret key must not have (as ssh refuses a private key): any access
#: by the group or by others.
_GROUP_OR_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def read_identity_file(path: Path, *, source: str | None = None) -> pyrage.x25519.Identity:
    """The identity in the key file ``path``, refused (DBP989) when its group or others may access it.

    Why refuse rather than warn: a key another user can read decrypts every backup, and a warning in a
    restore_command's log is never read. The mode is taken from the opened file itself (``fstat``), so a
    file swapped between the check and the read is still the file checked. ``source`` names where the
    path came from (a variable name), never a value.
    """
    named = f"key file {path}" + (f" (from {source})" if source else "")
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CryptoError(f"{named} cannot be read: {exc.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & _GROUP_OR_OTHERS:
            raise RefusedError(f"{named} is accessible by its group or others (mode {mode:04o}): an age identity "
                               "must be readable by its owner only", refusal=Refusals.IDENTITY_FILE_TOO_OPEN,
                               hint=f"chmod 600 {path}")
        try:
            text = handle.read().decode("utf-8")
        except OSError as exc:
            raise CryptoError(f"{named} cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CryptoError(f"{named} is not a text file: it holds no age identity") from None
    return parse_identity(text, source=source or f"key file {path}")


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
