"""dbprotect.core.backup.stream."""
