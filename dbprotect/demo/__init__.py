"""dbprotect.demo."""
