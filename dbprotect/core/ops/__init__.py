"""dbprotect.core.ops."""
