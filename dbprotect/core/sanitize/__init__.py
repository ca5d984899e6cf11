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
"""

from dbprotect.core.sanitize.build import SanitizeResult, build_sanitized_copy, sanitized_name
from dbprotect.core.sanitize.checks import BLOCKING_CHECKS
from dbprotect.core.sanitize.coverage import CoverageError, require_coverage
from dbprotect.core.sanitize.promote import newest_promotable, promote_dev_copy
from dbprotect.core.sanitize.rules import ColumnRule, RuleSet, load_rules, parse_rules
from dbprotect.core.sanitize.transformers import Masker, SanitizeError

__all__ = [
    "BLOCKING_CHECKS", "ColumnRule", "CoverageError", "Masker", "RuleSet", "SanitizeError", "SanitizeResult",
    "build_sanitized_copy", "load_rules", "newest_promotable", "parse_rules", "promote_dev_copy",
    "require_coverage", "sanitized_name",
]
