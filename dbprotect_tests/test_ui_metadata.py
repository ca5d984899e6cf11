"""Metadata that reads well (issue 13, point 3): one meaning per name, time counted once."""

from __future__ import annotations

import dagster as dg

from dbprotect.core.verify.integrity import IntegrityReport, RungResult
from dbprotect.defs.backups.checks import integrity_metadata


def test_verify_seconds_are_the_one_pass_both_rungs_report_not_their_sum() -> None:
    # Both rungs come from one streaming pass; each reports that pass's time.
    report = IntegrityReport("shop", "20260101T000000Z-abcdef", [RungResult("stored", True, "ok", 2.0),
                                                                 RungResult("readable", True, "ok", 2.1)])
    metadata = integrity_metadata(report)
    assert isinstance(metadata["seconds"], dg.FloatMetadataValue)
    assert metadata["seconds"].value == 2.1
    assert not [name for name in metadata if name.endswith("_seconds")]  # no per-rung copy of the same pass
    assert metadata["stored_ok"].value is True and metadata["readable_ok"].value is True


def test_a_report_without_rungs_reports_zero_seconds() -> None:
    assert integrity_metadata(IntegrityReport("shop", "x", []))["seconds"].value == 0.0
