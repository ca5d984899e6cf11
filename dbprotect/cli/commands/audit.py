"""The ``audit`` command: print (and with --verify, check) the hash-chained audit log of a backup store."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from dbprotect.cli.ui.render import Ui, common_options, scrub
from dbprotect.core.audit import parse_expected_head
from dbprotect.core.errors import EXIT_OK, IntegrityError
from dbprotect.core.ops import primary_store_names, read_audit_log


@click.command()
@click.option("--store", "store_name", metavar="NAME", help="The storage target whose log to read [default: the "
              "primary store of the configured databases, when they share one].")
@click.option("--database", "-d", metavar="DB", help="Only records about this database.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Only the newest N records.")
@click.option("--verify", "verify_chain", is_flag=True,
              help="Recompute every hash and link; exit 7 when a record was edited, removed or moved.")
@click.option("--expect-head", "expect_head", metavar="SEQ:HASH",
              help="A head printed by an earlier --verify and kept outside the store: the log must still hold it "
              "(catches removal of the newest records). Implies --verify.")
@common_options
@click.pass_obj
def audit(ui: Ui, store_name: str | None, database: str | None, limit: int | None, verify_chain: bool,
          expect_head: str | None) -> int:
    """Print the audit log kept in a backup store: who backed up, verified, copied, deleted or was refused.

    Each record is linked to the one before by its SHA-256 (a hash chain); --verify checks
    the whole chain and names what is wrong, including records removed from or rewritten at
    the end of the log, against the heads the newest backups' manifests recorded.
    """
    expected = None
    if expect_head is not None:
        try:
            expected = parse_expected_head(expect_head)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--expect-head") from None
    config = ui.load()
    if store_name is None:
        primaries = primary_store_names(config)
        if len(primaries) != 1:
            raise click.UsageError(f"the databases use several primary stores ({', '.join(primaries)}): name one "
                                   "with --store")
        store_name = primaries[0]
    reading = read_audit_log(config, store_name, database=database, limit=limit, verify_chain=verify_chain,
                             expect_head=expected)
    report = reading.chain
    document: dict[str, Any] = {"store": reading.store, "uri": reading.uri, "records": [
        {"seq": r.seq, "at": r.at, "actor": r.actor, "action": r.action, "database": r.database,
         "target": r.target, "outcome": r.outcome, "detail": r.detail, "data": r.data, "hash": r.hash}
        for r in reading.records]}
    if report is not None:
        document["chain"] = report.to_dict()
    if not ui.json:
        console = ui.console()
        console.print(f"audit log of {escape(reading.uri)}: {len(reading.records)} record(s)", soft_wrap=True)
        for record in reading.records:
            console.print(escape(scrub(record.line())), soft_wrap=True)
        if report is not None:
            console.print(escape(report.render()), soft_wrap=True)
    if report is not None and not report.ok:
        ui.error_context.update(document)
        raise IntegrityError(f"the audit log in {reading.uri} is broken: "
                             + "; ".join(p.message for p in report.problems[:3]),
                             hint="someone or something changed the store's _audit/ records; compare with a copy "
                             "of the store and investigate before trusting the log")
    if ui.json:
        ui.emit(document)
    return EXIT_OK
