"""dbprotect.core.restore.staged."""
