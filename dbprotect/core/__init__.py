"""The rules of dbprotect, in plain Python: no Dagster import anywhere below this folder.

Layers, top to bottom (tested by ``dbprotect_tests/test_layers.py``):

* :mod:`dbprotect.core.ops` — the only entry points that take a configuration; the CLI, the
  Dagster definitions and the demo call these. Nothing else in core imports ``ops``.
* the engines, one package per domain: :mod:`~dbprotect.core.backup`, :mod:`~dbprotect.core.verify`,
  :mod:`~dbprotect.core.restore`, :mod:`~dbprotect.core.retention`, :mod:`~dbprotect.core.sanitize`,
  :mod:`~dbprotect.core.schema`, :mod:`~dbprotect.core.continuous` (base backups, WAL, point-in-time
  restore), with :mod:`~dbprotect.core.copy` and :mod:`~dbprotect.core.audit`.
  They receive resolved stores, keys and DSNs, never a configuration to dig in.
* the foundations: :mod:`~dbprotect.core.store`, :mod:`~dbprotect.core.pg`, :mod:`~dbprotect.core.config`,
  :mod:`~dbprotect.core.crypto`, :mod:`~dbprotect.core.errors`, :mod:`~dbprotect.core.redact` (which imports
  nothing from dbprotect).

Package ``__init__`` modules re-export nothing (except ``ops``, the top): importing a submodule
runs its package's ``__init__``, so re-exports there are how import cycles start.
"""
