"""Continuous protection: base backups taken with ``pg_basebackup`` and the WAL stream, for restores to a time.

PostgreSQL ships the engine (``pg_basebackup --incremental``, ``pg_receivewal``, ``pg_combinebackup``,
``pg_verifybackup``); this package only pipes what those tools produce through the same zstd → age
→ SHA-256 → store stream as the logical backups, and checks the server is set up so that this is safe.
No Dagster import here.
"""
