"""Sanitized development copies (issue 5): masking rules, transformers, the coverage gate, the
sanitizing COPY stream, the blocking PII checks and promotion into development.

Modules, in the order data flows through them::

    rules.py         the YAML rule file: keep or a transformer per column
    transformers.py  keyed (HMAC-SHA256) deterministic pseudonyms; COPY text escaping
    coverage.py      every source column has a rule, or nothing runs
    starter.py       a starter rule file guessed from names and sampled values (review: true)
    stream.py        COPY out -> transform -> COPY in, unique collisions resolved
    checks.py        no_pii_leaked, constraints_hold, row_counts_match
    build.py         newest verified backup -> scratch -> sanitized database -> artifact (dev key)
    promote.py       newest artifact that passed every check -> development database

The config-level entry points (build, promote, coverage check) are in :mod:`dbprotect.core.ops.sanitize`.
"""
