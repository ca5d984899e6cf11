"""dbprotect.core.config.model."""
