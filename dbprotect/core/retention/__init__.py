"""Retention: how much history to keep (``policy``), what a cleanup deletes and why (``plan``), whether
a store holds what its policy promises (``compliance``), and the sweep (``cleanup``).

Nothing is re-exported here: ``policy`` sits below the configuration, which embeds it, while
``plan`` and ``compliance`` read the catalog, which sits above the configuration. Importing
them from this package would make every ``import dbprotect.core.retention.policy`` pull the
store in, a cycle.
"""
