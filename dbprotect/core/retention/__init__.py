"""dbprotect.core.retention.policy."""
