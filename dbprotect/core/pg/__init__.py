"""dbprotect.core.pg."""
