"""``dbprotect keygen``: an age key pair without the ``age`` tool (pyrage), for a deployment's keys.

The docker-compose deployment mounts its keys from ``deploy/keys/``; making one must not need
``age-keygen`` on the host. The private key is written once, mode 0600, never over an existing
file; only the public key is printed (it goes into ``keys.raw.recipients``).
"""

from __future__ import annotations

from pathlib import Path

import click

from dbprotect.cli.ui.render import Ui, common_options
from dbprotect.core.crypto import write_key_file
from dbprotect.core.errors import EXIT_OK, Refusals, RefusedError


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@common_options
@click.pass_obj
def keygen(ui: Ui, path: Path) -> int:
    """Write a new age key pair to PATH (mode 0600) and print its public key.

    \b
    dbprotect keygen deploy/keys/raw-backups.agekey
    Put the printed public key (age1...) in keys.raw.recipients of dbprotect.yaml and point the
    identity variable at the file: DBPROTECT_RAW_IDENTITY=@/path/to/raw-backups.agekey.
    Never overwrites a file (exit 9): a lost private key is every backup made for it lost.
    """
    if path.exists() or path.is_symlink():
        raise RefusedError(f"refused: {path} exists; a key file is never overwritten", hint="choose a new path",
                           refusal=Refusals.KEY_FILE_EXISTS)
    try:
        recipient = write_key_file(path)
    except FileExistsError:
        raise RefusedError(f"refused: {path} exists; a key file is never overwritten", hint="choose a new path",
                           refusal=Refusals.KEY_FILE_EXISTS) from None
    if ui.json:
        ui.emit({"path": str(path), "public_key": recipient, "mode": "0600"})
    else:
        click.echo(recipient)
        click.echo(f"private key written to {path} (mode 0600); the line above is its public key", err=True)
    return EXIT_OK
