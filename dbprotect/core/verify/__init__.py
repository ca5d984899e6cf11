"""dbprotect.core.verify.integrity."""
