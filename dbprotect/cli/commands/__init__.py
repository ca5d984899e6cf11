"""dbprotect.cli.app.commands."""
